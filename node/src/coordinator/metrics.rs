//! Prometheus metrics of a coordinator: requests by kind and outcome,
//! refusals by code, how long answers take, how many wait, certificates
//! applied, money moved, alerts raised, how its books' group commit
//! shares flushes (writes per flush, writers queued behind one), the
//! rounds of the check of its books and audit chain, and how many other
//! members it is connected to.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rigmesh_protocol::rpc::{CertificateFrame, CoordinatorRequest, CoordinatorResponse};

/// Labels: what was asked and how it was answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    /// The request's kind (`escrow`, `settle`, `resolve`, ...).
    pub request: String,
    /// `vote`, `applied`, `pending`, `refused`, `busy` or `answered`.
    pub outcome: String,
}

/// Label: a refusal's code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The code (`payout_mismatch`, `insufficient_balance`, ...).
    pub code: String,
}

/// Label: a kind of certificate or movement.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind.
    pub kind: String,
}

/// Label: an alert's rule.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    /// The rule.
    pub rule: String,
}

/// A coordinator's metrics. Cheap to clone: every field is a shared handle.
#[derive(Clone, Debug)]
pub struct CoordinatorMetrics {
    /// Requests answered, by kind and outcome.
    pub requests: Family<RequestLabel, Counter>,
    /// Refusals, by code.
    pub refusals: Family<CodeLabel, Counter>,
    /// Seconds from admission to answer.
    pub answer_seconds: Histogram,
    /// Requests admitted and not answered yet (answering or waiting).
    pub in_flight: Gauge,
    /// Certificates and deposits applied here, by kind.
    pub applied: Family<KindLabel, Counter>,
    /// Micro-credits moved by what was applied, by kind of movement.
    pub moved_micro: Family<KindLabel, Counter>,
    /// Alerts raised, by rule.
    pub alerts: Family<RuleLabel, Counter>,
    /// Write batches of the books made durable by one flush (the group
    /// commit's batch size; its count is the number of flushes).
    pub commit_batch: Histogram,
    /// Writers waiting for the books' flush when one began (the group
    /// commit's queue depth).
    pub commit_queue: Histogram,
    /// Journal entries of this member compared with another member
    /// (specs/settlement.md 10.1), each counted once.
    pub books_compared: Counter,
    /// Journal entries posted at least one comparison period ago and not
    /// asked about yet: how far the books comparison is behind.
    pub books_compare_behind: Gauge,
    /// Seconds a round of the check of the books and audit chain took.
    pub integrity_round_seconds: Histogram,
    /// Journal entries the check's rounds replayed (new ones and older
    /// ones walked again).
    pub integrity_entries: Counter,
    /// Audit records the check's rounds walked (new and older).
    pub integrity_records: Counter,
    /// Walks of the whole history again that arrived where they began.
    pub integrity_history_walks: Counter,
    /// 1 while the last round found the books or the chain broken.
    pub integrity_failing: Gauge,
    /// Finally settled leases whose vote locks and evidence were taken
    /// away after the grace.
    pub closed_leases_compacted: Counter,
    /// Keys those compactions deleted.
    pub closed_lease_keys_deleted: Counter,
    /// Other members of the set this node was connected to at the last
    /// look of its watch over them (`coordinator.unreachable`).
    pub members_connected: Gauge,
}

impl CoordinatorMetrics {
    /// Creates the metrics and registers them under `rigmesh_coordinator_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = CoordinatorMetrics {
            requests: Family::default(),
            refusals: Family::default(),
            answer_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            in_flight: Gauge::default(),
            applied: Family::default(),
            moved_micro: Family::default(),
            alerts: Family::default(),
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            commit_queue: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            books_compared: Counter::default(),
            books_compare_behind: Gauge::default(),
            integrity_round_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            integrity_entries: Counter::default(),
            integrity_records: Counter::default(),
            integrity_history_walks: Counter::default(),
            integrity_failing: Gauge::default(),
            closed_leases_compacted: Counter::default(),
            closed_lease_keys_deleted: Counter::default(),
            members_connected: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("rigmesh_coordinator");
        r.register(
            "requests",
            "Coordinator requests answered, by kind and outcome",
            metrics.requests.clone(),
        );
        r.register(
            "refusals",
            "Coordinator requests refused, by code",
            metrics.refusals.clone(),
        );
        r.register(
            "answer_seconds",
            "Seconds from admitting a request to answering it",
            metrics.answer_seconds.clone(),
        );
        r.register(
            "in_flight",
            "Requests admitted and not yet answered",
            metrics.in_flight.clone(),
        );
        r.register(
            "applied",
            "Certificates and deposits applied, by kind",
            metrics.applied.clone(),
        );
        r.register(
            "moved_micro",
            "Micro-credits moved by what was applied, by kind of movement",
            metrics.moved_micro.clone(),
        );
        r.register("alerts", "Alerts raised, by rule", metrics.alerts.clone());
        r.register(
            "commit_batch_writes",
            "Write batches of the books made durable by one flush",
            metrics.commit_batch.clone(),
        );
        r.register(
            "commit_queue_writers",
            "Writers waiting for the books' flush when one began",
            metrics.commit_queue.clone(),
        );
        r.register(
            "books_compared_entries",
            "Journal entries of this member compared with at least one other member",
            metrics.books_compared.clone(),
        );
        r.register(
            "books_compare_behind_entries",
            "Journal entries posted a comparison period ago and not yet compared",
            metrics.books_compare_behind.clone(),
        );
        r.register(
            "integrity_round_seconds",
            "Seconds a round of the check of the books and audit chain took",
            metrics.integrity_round_seconds.clone(),
        );
        r.register(
            "integrity_entries",
            "Journal entries replayed by the check's rounds, new and walked again",
            metrics.integrity_entries.clone(),
        );
        r.register(
            "integrity_records",
            "Audit records walked by the check's rounds, new and walked again",
            metrics.integrity_records.clone(),
        );
        r.register(
            "integrity_history_walks",
            "Walks of the books' whole history again that arrived where they began",
            metrics.integrity_history_walks.clone(),
        );
        r.register(
            "integrity_failing",
            "1 while the last round of the check found the books or the audit chain broken",
            metrics.integrity_failing.clone(),
        );
        r.register(
            "closed_leases_compacted",
            "Finally settled leases whose vote locks and evidence were deleted after the grace",
            metrics.closed_leases_compacted.clone(),
        );
        r.register(
            "closed_lease_keys_deleted",
            "Keys of finally settled leases' vote locks and evidence deleted",
            metrics.closed_lease_keys_deleted.clone(),
        );
        r.register(
            "members_connected",
            "Other members of the set connected at the last look of the watch over them",
            metrics.members_connected.clone(),
        );
        metrics
    }

    /// Records one group flush of the books.
    pub fn flushed(&self, flush: rigmesh_ledger::GroupFlush) {
        self.commit_batch.observe(flush.writes as f64);
        self.commit_queue.observe(flush.waiting as f64);
    }

    /// Counts one answer to a request of kind `request` (see
    /// [`request_kind`]; `malformed` when it did not decode, `unread` when
    /// it was answered busy before being read).
    pub fn answered(&self, request: &'static str, response: &CoordinatorResponse) {
        let outcome = match response {
            CoordinatorResponse::Vote(_) => "vote",
            CoordinatorResponse::Applied => "applied",
            CoordinatorResponse::Pending(_) => "pending",
            CoordinatorResponse::Refused(reason) => {
                self.refusals
                    .get_or_create(&CodeLabel {
                        code: refusal_code(reason),
                    })
                    .inc();
                if reason.starts_with("busy") {
                    "busy"
                } else {
                    "refused"
                }
            }
            _ => "answered",
        };
        self.requests
            .get_or_create(&RequestLabel {
                request: request.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts a certificate or deposit applied here, and the money it moved.
    pub fn applied(&self, frame: &CertificateFrame) {
        let (kind, moves): (&str, Vec<(&str, i64)>) = match frame {
            CertificateFrame::Escrow(c) => {
                ("escrow", vec![("escrow", c.message.body.amount.units())])
            }
            CertificateFrame::Settlement(c) => {
                let r = &c.message.body;
                (
                    "settlement",
                    vec![
                        ("supplier", r.supplier_amount.units()),
                        ("fee", r.fee.units()),
                        ("refund", r.refund.units()),
                        ("dispute_hold", r.held.units()),
                    ],
                )
            }
            CertificateFrame::Withdrawal(c) => (
                "withdrawal",
                vec![("withdrawal", c.message.body.amount.units())],
            ),
            CertificateFrame::Deposit(d) => ("deposit", vec![("deposit", d.body.amount.units())]),
            CertificateFrame::Release(c) => {
                let r = &c.message.body;
                (
                    "release",
                    vec![
                        ("supplier", r.supplier_amount.units()),
                        ("fee", r.fee.units()),
                        ("refund", r.refund.units()),
                    ],
                )
            }
            CertificateFrame::Resolution(c) => {
                let r = &c.message.body;
                (
                    "resolution",
                    vec![
                        ("dispute_payment", r.supplier_share.units()),
                        (
                            "dispute_refund",
                            r.held.units().saturating_sub(r.supplier_share.units()),
                        ),
                    ],
                )
            }
        };
        self.applied
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
        for (movement, micro) in moves {
            if let Ok(micro) = u64::try_from(micro) {
                if micro > 0 {
                    self.moved_micro
                        .get_or_create(&KindLabel {
                            kind: movement.into(),
                        })
                        .inc_by(micro);
                }
            }
        }
    }

    /// Counts an alert raised.
    pub fn alert(&self, rule: &str) {
        self.alerts
            .get_or_create(&RuleLabel {
                rule: bounded_label(rule),
            })
            .inc();
    }
}

/// The kind of a request, as a label.
pub fn request_kind(request: &CoordinatorRequest) -> &'static str {
    match request {
        CoordinatorRequest::Escrow { .. } => "escrow",
        CoordinatorRequest::Settle(_) => "settle",
        CoordinatorRequest::Deposit(_) => "deposit",
        CoordinatorRequest::Withdraw { .. } => "withdraw",
        CoordinatorRequest::Apply(_) => "apply",
        CoordinatorRequest::Account(_) | CoordinatorRequest::AccountOf(_) => "account",
        CoordinatorRequest::Terminate(_) => "terminate",
        CoordinatorRequest::Release(_) => "release",
        CoordinatorRequest::CompleteDebit { .. } => "complete_debit",
        CoordinatorRequest::Locked { .. } => "locked",
        CoordinatorRequest::Decide(_) => "decide",
        CoordinatorRequest::Held(_) => "held",
        CoordinatorRequest::Resolve(_) => "resolve",
        CoordinatorRequest::Case { .. } => "case",
        CoordinatorRequest::Posted { .. } => "posted",
    }
}

/// A refusal's code: the text before its first `:`, when it is a short
/// word of `[a-z_]`; `other` otherwise (labels stay few and bounded).
fn refusal_code(reason: &str) -> String {
    let code = reason.split(':').next().unwrap_or_default();
    if !code.is_empty()
        && code.len() <= 40
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        code.to_string()
    } else {
        "other".to_string()
    }
}

/// `text` as a label: at most 64 bytes of `[a-z0-9._]`, else `other`.
fn bounded_label(text: &str) -> String {
    if !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
    {
        text.to_string()
    } else {
        "other".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes_and_rules_stay_bounded_labels() {
        assert_eq!(
            refusal_code("payout_mismatch: computed 3"),
            "payout_mismatch"
        );
        assert_eq!(refusal_code("Something odd"), "other");
        assert_eq!(refusal_code(&"a".repeat(200)), "other");
        assert_eq!(
            bounded_label("usage.implausible_power"),
            "usage.implausible_power"
        );
        assert_eq!(bounded_label("Évil\nlabel"), "other");
    }

    #[test]
    fn answers_and_money_are_counted() {
        let mut registry = Registry::default();
        let m = CoordinatorMetrics::register(&mut registry);
        m.answered(
            "settle",
            &CoordinatorResponse::Refused("payout_mismatch: x".into()),
        );
        m.answered(
            "settle",
            &CoordinatorResponse::Refused("busy: retry".into()),
        );
        m.applied(&CertificateFrame::Deposit(
            rigmesh_protocol::samples::deposit().unwrap(),
        ));
        m.flushed(rigmesh_ledger::GroupFlush {
            writes: 5,
            waiting: 4,
        });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                r#"rigmesh_coordinator_requests_total{request="settle",outcome="refused"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"rigmesh_coordinator_requests_total{request="settle",outcome="busy"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"rigmesh_coordinator_refusals_total{code="payout_mismatch"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"rigmesh_coordinator_applied_total{kind="deposit"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("rigmesh_coordinator_moved_micro_total{kind=\"deposit\"}"),
            "{text}"
        );
        assert!(
            text.contains("rigmesh_coordinator_commit_batch_writes_sum 5.0"),
            "{text}"
        );
        assert!(
            text.contains("rigmesh_coordinator_commit_queue_writers_count 1"),
            "{text}"
        );
    }
}
