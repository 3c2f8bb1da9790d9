//! The coordinator's watch over the market (specs/reputation.md): it turns
//! the evidence its books hold into signed `ReputationReport`s, and raises
//! signed `Alert`s when a rule fires:
//!
//! | rule | severity | audience | when |
//! |---|---|---|---|
//! | `reputation.low` | warning | the supplier, and each customer with an open lease on it | a supplier's score falls below 8000 |
//! | `reputation.critical` | critical | the same | below 5000 |
//! | `usage.implausible_power` | warning | operators, and the lease's customer | an attestation claims a GPU at 50 % or more utilisation drawing under 20 W on average |
//! | `escrow.low` | warning | the lease's customer | a settlement leaves less than 10 % of a running lease's escrow |
//! | `peer.banned` | warning | operators | the node banned a peer or an address (invalid signatures, malformed or replayed messages, requests past the rate limit); once per ban |
//! | `certificate.conflict` | critical | operators | a certificate conflicts with one applied (more than f faulty coordinators) |
//! | `deposit.large` | warning | operators | a deposit above `deposit_alert_above` is applied or held for approval |
//!
//! Alerts are stored in the ledger, logged and gossiped on the reputation
//! topic; delivery to people is another component's job. Each is raised
//! only from messages whose signatures (and, for attestations, whose
//! chain) are verified, and at most once per rule, audience and subject in
//! [`ALERT_WINDOW_MS`] ([`AlertLimiter`]).

use std::collections::{BTreeMap, BTreeSet};

use rigmesh_ledger::reputation::{self, Side, SCALE};
use rigmesh_ledger::{Cause, Ledger};
use rigmesh_protocol::{
    Alert, Audience, Id, Keypair, PublicKey, ReputationReport, Role, Severity, Signed, UnixMillis,
    UsageAttestation, PROTOCOL_VERSION,
};

/// Score below which a supplier's customers are warned.
pub const LOW_SCORE_BP: u16 = 8_000;
/// Score below which the warning is critical.
pub const CRITICAL_SCORE_BP: u16 = 5_000;
/// Share of the escrow (basis points) under which a running lease's
/// customer is warned.
pub const LOW_ESCROW_BP: u64 = 1_000;

/// What the watch remembers between rounds.
#[derive(Debug, Default)]
pub struct Watch {
    published: BTreeMap<(PublicKey, u8), (u16, UnixMillis)>,
    banned: BTreeSet<Vec<u8>>,
}

/// How often an unchanged score is reported again.
const REPUBLISH_MS: u64 = 3_600_000;

fn alert(
    key: &Keypair,
    (severity, audience, rule): (Severity, Audience, &str),
    about: Option<PublicKey>,
    subject: Option<Id>,
    message: String,
    now: UnixMillis,
) -> Option<Signed<Alert>> {
    let mut text = message;
    text.truncate(rigmesh_protocol::messages::reputation::MAX_ALERT_MESSAGE_LEN);
    Signed::sign(
        Alert {
            version: PROTOCOL_VERSION,
            issuer: key.public(),
            severity,
            audience,
            rule: rule.into(),
            about,
            subject,
            message: text,
            created_at: now,
        },
        key,
    )
    .map_err(|err| tracing::warn!(%err, rule, "could not sign an alert"))
    .ok()
}

/// Stores and logs an alert; returns it for gossip.
pub fn raise(ledger: &Ledger, alert: Signed<Alert>) -> Signed<Alert> {
    let b = &alert.body;
    match b.severity {
        Severity::Critical => {
            tracing::error!(rule = %b.rule, about = ?b.about.map(|a| a.to_string()), "{}", b.message)
        }
        _ => {
            tracing::warn!(rule = %b.rule, about = ?b.about.map(|a| a.to_string()), "{}", b.message)
        }
    }
    let id = alert.id().unwrap_or(Id::ZERO);
    if let Err(err) = ledger.put_alert(&alert, &Cause::new(b.issuer, id, b.created_at)) {
        tracing::warn!(%err, "could not store an alert");
    }
    alert
}

impl Watch {
    /// One round: reports for changed scores, score alerts, ban alerts.
    pub fn round(
        &mut self,
        key: &Keypair,
        epoch: u64,
        ledger: &Ledger,
        bans: &[(Vec<u8>, String)],
        now: UnixMillis,
    ) -> (Vec<Signed<ReputationReport>>, Vec<Signed<Alert>>) {
        let mut reports = Vec::new();
        let mut alerts = Vec::new();
        let evidence = match ledger.all_evidence(now) {
            Ok(e) => e,
            Err(err) => {
                tracing::warn!(%err, "could not read reputation evidence");
                Vec::new()
            }
        };
        for (account, side, e) in evidence {
            if !e.has_record() {
                continue;
            }
            let lost = ledger
                .dispute_record(&account, side, now)
                .unwrap_or_default();
            let score = reputation::penalised(reputation::score(side, &e), lost.lost);
            let slot = (account, side.tag());
            let before = self.published.get(&slot).copied();
            let due = match before {
                None => true,
                Some((old, at)) => old != score || now.since(at) >= REPUBLISH_MS,
            };
            if !due {
                continue;
            }
            let count = |v: u64| u32::try_from(v / SCALE).unwrap_or(u32::MAX);
            let report = Signed::sign(
                ReputationReport {
                    version: PROTOCOL_VERSION,
                    coordinator: key.public(),
                    epoch,
                    subject: account,
                    role: match side {
                        Side::Supplier => Role::Supplier,
                        Side::Customer => Role::Customer,
                    },
                    score_bp: score,
                    completed_leases: count(e.completed_leases),
                    disputes_lost: lost.lost_count(),
                    missed_windows: count(e.short),
                    refused_leases: count(e.refused_leases),
                    fingerprint_changes: count(e.fingerprint_changes),
                    period_start: now.minus_ms(4 * reputation::HALF_LIFE_MS),
                    period_end: now,
                    created_at: now,
                },
                key,
            );
            match report {
                Ok(report) => reports.push(report),
                Err(err) => tracing::warn!(%err, "could not sign a reputation report"),
            }
            self.published.insert(slot, (score, now));
            if side == Side::Supplier {
                let crossed = |threshold: u16| {
                    score < threshold && before.is_none_or(|(old, _)| old >= threshold)
                };
                let rule = if crossed(CRITICAL_SCORE_BP) {
                    Some((Severity::Critical, "reputation.critical"))
                } else if crossed(LOW_SCORE_BP) {
                    Some((Severity::Warning, "reputation.low"))
                } else {
                    None
                };
                if let Some((severity, rule)) = rule {
                    let text = format!(
                        "supplier {account} scores {score} of 10000 ({} of {} windows disputed, {} short)",
                        count(e.disputed),
                        count(e.windows),
                        count(e.short)
                    );
                    alerts.extend(alert(
                        key,
                        (severity, Audience::Supplier, rule),
                        Some(account),
                        None,
                        text.clone(),
                        now,
                    ));
                    for (lease, customer) in open_leases_of(ledger, &account) {
                        alerts.extend(alert(
                            key,
                            (severity, Audience::Customer, rule),
                            Some(customer),
                            Some(lease),
                            format!("your lease {lease}: {text}"),
                            now,
                        ));
                    }
                }
            }
        }
        for (peer, reason) in bans {
            if self.banned.insert(peer.clone()) {
                alerts.extend(alert(
                    key,
                    (Severity::Warning, Audience::Operators, "peer.banned"),
                    None,
                    None,
                    format!("{} banned: {reason}", peer_text(peer)),
                    now,
                ));
            }
        }
        // One alert per ban: a peer or address stays remembered while its
        // ban lasts, and a later ban of it raises a new alert.
        self.banned
            .retain(|remembered| bans.iter().any(|(peer, _)| peer == remembered));
        (reports, alerts)
    }
}

/// `peer <id>` or `address <ip>` (a ban names either).
fn peer_text(peer: &[u8]) -> String {
    crate::network::Offender::from_bytes(peer)
        .map_or_else(|| format!("peer {}", hex::encode(peer)), |o| o.to_string())
}

/// Open leases (funded, not closed) whose supplier is `supplier`.
fn open_leases_of(ledger: &Ledger, supplier: &PublicKey) -> Vec<(Id, PublicKey)> {
    ledger
        .open_leases_of_supplier(supplier)
        .unwrap_or_default()
        .into_iter()
        .map(|(lease, book)| (lease, book.customer))
        .collect()
}

/// Alerts for attestations that claim busy GPUs at implausibly low power.
pub fn check_attestations(
    key: &Keypair,
    attestations: &[Signed<UsageAttestation>],
    now: UnixMillis,
) -> Vec<Signed<Alert>> {
    let mut out = Vec::new();
    for a in attestations {
        for (seq, gpu, util, watts) in reputation::implausible_power(&a.body) {
            let text = format!(
                "lease {} window {seq}: GPU {gpu} claims {}.{:02} % utilisation at {watts} W",
                a.body.lease,
                util / 100,
                util % 100
            );
            for (audience, about) in [
                (Audience::Operators, Some(a.body.supplier)),
                (Audience::Customer, Some(a.body.customer)),
            ] {
                out.extend(alert(
                    key,
                    (Severity::Warning, audience, "usage.implausible_power"),
                    about,
                    Some(a.body.lease),
                    text.clone(),
                    now,
                ));
            }
        }
    }
    out
}

/// An alert when a settlement left a running lease's escrow below 10 %.
pub fn check_escrow(
    key: &Keypair,
    ledger: &Ledger,
    lease: &Id,
    now: UnixMillis,
) -> Option<Signed<Alert>> {
    let book = ledger.lease_book(lease).ok()??;
    if book.closed || book.amount.units() <= 0 {
        return None;
    }
    let left = book.available().ok()?;
    let left_bp =
        u64::try_from(left.units()).ok()? * 10_000 / u64::try_from(book.amount.units()).ok()?;
    (left_bp < LOW_ESCROW_BP).then(|| {
        alert(
            key,
            (Severity::Warning, Audience::Customer, "escrow.low"),
            Some(book.customer),
            Some(*lease),
            format!(
                "lease {lease}: {left} of the {} escrowed is left",
                book.amount
            ),
            now,
        )
    })?
}

/// An alert for a certificate that conflicts with what is applied.
pub fn conflict(
    key: &Keypair,
    subject: Option<Id>,
    detail: &str,
    now: UnixMillis,
) -> Option<Signed<Alert>> {
    alert(
        key,
        (
            Severity::Critical,
            Audience::Operators,
            "certificate.conflict",
        ),
        None,
        subject,
        detail.to_string(),
        now,
    )
}

/// An alert for a deposit above the alert threshold, applied or held.
pub fn large_deposit(
    key: &Keypair,
    deposit: &Signed<rigmesh_protocol::Deposit>,
    held: bool,
    now: UnixMillis,
) -> Option<Signed<Alert>> {
    let d = &deposit.body;
    let id = deposit.id().ok()?;
    let state = if held {
        "held for a second admin's approval"
    } else {
        "applied"
    };
    alert(
        key,
        (Severity::Warning, Audience::Operators, "deposit.large"),
        Some(d.account),
        Some(id),
        format!(
            "deposit {id} of {} to {} by admin {} (reference {:?}) {state}",
            d.amount, d.account, d.admin, d.reference
        ),
        now,
    )
}

/// One alert per rule, audience, account and subject in this window.
pub const ALERT_WINDOW_MS: u64 = 600_000;

/// Most alert keys remembered; past it, new keys are dropped (with a
/// log line) until old ones leave the window.
const MAX_ALERT_KEYS: usize = 4096;

/// Rule, audience, account, subject; and the text for an alert that names
/// neither account nor subject (a ban names its peer only there).
type AlertKey = (String, u8, Option<PublicKey>, Option<Id>, Option<String>);

/// Deduplicates and rate-limits alerts: an alert whose rule, audience,
/// account and subject were raised within [`ALERT_WINDOW_MS`] is dropped,
/// and the memory of keys is bounded.
#[derive(Debug, Default)]
pub struct AlertLimiter {
    last: BTreeMap<AlertKey, UnixMillis>,
    dropped: u64,
}

impl AlertLimiter {
    /// True if `alert` may be raised now (and remembers it).
    pub fn admit(&mut self, alert: &Alert, now: UnixMillis) -> bool {
        let key: AlertKey = (
            alert.rule.clone(),
            alert.audience as u8,
            alert.about,
            alert.subject,
            (alert.about.is_none() && alert.subject.is_none()).then(|| alert.message.clone()),
        );
        if let Some(at) = self.last.get(&key) {
            if now < at.plus_ms(ALERT_WINDOW_MS) {
                self.dropped += 1;
                return false;
            }
        }
        if self.last.len() >= MAX_ALERT_KEYS && !self.last.contains_key(&key) {
            self.last.retain(|_, at| now < at.plus_ms(ALERT_WINDOW_MS));
            if self.last.len() >= MAX_ALERT_KEYS {
                self.dropped += 1;
                tracing::warn!(rule = %alert.rule, "too many distinct alerts in the window; dropped one");
                return false;
            }
        }
        self.last.insert(key, now);
        true
    }

    /// Alerts dropped as repeats or over the bound.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod limiter_tests {
    use super::*;
    use rigmesh_protocol::samples;

    fn an_alert(rule: &str, about: Option<PublicKey>, message: &str) -> Alert {
        Alert {
            version: PROTOCOL_VERSION,
            issuer: samples::coordinators()[0].public(),
            severity: Severity::Warning,
            audience: Audience::Operators,
            rule: rule.into(),
            about,
            subject: Some(Id([7; 32])),
            message: message.into(),
            created_at: UnixMillis(0),
        }
    }

    #[test]
    fn one_alert_per_rule_and_subject_in_the_window() {
        let mut limiter = AlertLimiter::default();
        let victim = Some(samples::supplier().public());
        let t = UnixMillis(1_000);
        assert!(limiter.admit(&an_alert("usage.implausible_power", victim, "a"), t));
        for n in 0..100 {
            let text = format!("window {n}");
            assert!(!limiter.admit(&an_alert("usage.implausible_power", victim, &text), t));
        }
        assert_eq!(limiter.dropped(), 100);
        // Another rule or subject is another alert; the same one again
        // after the window too.
        assert!(limiter.admit(&an_alert("escrow.low", victim, "a"), t));
        assert!(limiter.admit(&an_alert("usage.implausible_power", None, "a"), t));
        assert!(limiter.admit(
            &an_alert("usage.implausible_power", victim, "a"),
            t.plus_ms(ALERT_WINDOW_MS)
        ));
        // Alerts that name no one differ by their text (one per banned peer).
        let mut ban = an_alert("peer.banned", None, "peer A banned");
        ban.subject = None;
        assert!(limiter.admit(&ban, t));
        assert!(!limiter.admit(&ban, t));
        ban.message = "peer B banned".into();
        assert!(limiter.admit(&ban, t));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rigmesh_ledger::{Coordinator, CoordinatorConfig, FeeRate, SettlementEvidence};
    use rigmesh_protocol::samples::{self, T0};
    use rigmesh_protocol::{Certificate, Credits, Deposit};

    fn at(ms: u64) -> UnixMillis {
        T0.plus_ms(ms)
    }

    /// The sample set's rules: a 1 % fee, the sample admin key.
    pub(crate) fn config() -> CoordinatorConfig {
        CoordinatorConfig {
            set: samples::coordinator_set().unwrap(),
            fee_rate: FeeRate::from_ppm(10_000).unwrap(),
            unacked_timeout_ms: 120_000,
            admins: vec![samples::admin().public()],
            review: Default::default(),
            skew_ms: 30_000,
            release_grace_ms: 600_000,
        }
    }

    /// A coordinator's ledger after a settlement whose only window the
    /// customer disputed: the supplier's score falls to 0.
    fn disputed_settlement(dir: &std::path::Path) -> (Ledger, Keypair) {
        let ledger = Ledger::open(dir).unwrap();
        let keys = samples::coordinators();
        let config = config();
        let me = keys[0].clone();
        let rules = Coordinator::new(&ledger, &me, &config);
        let deposit = Signed::sign(
            Deposit {
                version: PROTOCOL_VERSION,
                epoch: samples::EPOCH,
                admin: samples::admin().public(),
                account: samples::customer().public(),
                amount: "50".parse().unwrap(),
                reference: "test".into(),
                created_at: T0,
            },
            &samples::admin(),
        )
        .unwrap();
        rules.apply_deposit(&deposit, at(70_000)).unwrap();
        rules
            .apply_escrow(&samples::escrow_certificate().unwrap(), at(70_000))
            .unwrap();
        let mut body = samples::settlement_request().unwrap().body;
        body.billable_gpu_ms = 0;
        body.supplier_amount = Credits::ZERO;
        body.fee = Credits::ZERO;
        // The window's charge, held for review.
        body.held = Credits::from_units(72_625);
        let request = Signed::sign(body, &samples::supplier()).unwrap();
        let agreement = samples::lease_agreement().unwrap();
        let attestations = [samples::usage_attestation().unwrap()];
        let mut dispute = samples::usage_dispute().unwrap().body;
        dispute.reason = rigmesh_protocol::DisputeReason::NotDelivered;
        let disputes = [Signed::sign(dispute, &samples::customer()).unwrap()];
        let evidence = SettlementEvidence {
            request: &request,
            agreement: &agreement,
            attestations: &attestations,
            previous: None,
            acks: &[],
            disputes: &disputes,
            terminations: &[],
        };
        let votes: Vec<_> = keys
            .iter()
            .take(3)
            .map(|k| {
                Coordinator::new(&ledger, k, &config)
                    .vote_settlement(&evidence, at(70_000))
                    .unwrap()
            })
            .collect();
        let certificate = Certificate::assemble(request, &votes).unwrap();
        rules.apply_settlement(&certificate, at(70_000)).unwrap();
        (ledger, me)
    }

    #[test]
    fn a_falling_score_is_reported_and_alerts_the_supplier_and_its_customers() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, me) = disputed_settlement(dir.path());
        let mut watch = Watch::default();
        let (reports, alerts) = watch.round(&me, samples::EPOCH, &ledger, &[], at(80_000));
        let supplier = samples::supplier().public();
        let report = reports
            .iter()
            .find(|r| r.body.subject == supplier)
            .expect("a report about the supplier");
        assert_eq!(report.body.score_bp, 0, "its one window was disputed");
        assert_eq!(
            report.body.disputes_lost, 0,
            "the dispute is not decided yet"
        );
        assert!(report.verify_record().is_ok());
        let rules: Vec<(&str, Audience)> = alerts
            .iter()
            .map(|a| (a.body.rule.as_str(), a.body.audience))
            .collect();
        assert!(
            rules.contains(&("reputation.critical", Audience::Supplier)),
            "{rules:?}"
        );
        assert!(
            rules.contains(&("reputation.critical", Audience::Customer)),
            "the customer's lease is still open: {rules:?}"
        );
        // An unchanged score is neither reported nor alerted again soon.
        let (reports, alerts) = watch.round(&me, samples::EPOCH, &ledger, &[], at(90_000));
        assert!(reports.is_empty() && alerts.is_empty());
    }

    #[test]
    fn a_certified_resolution_moves_the_held_amount_and_counts_a_lost_dispute() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, me) = disputed_settlement(dir.path());
        let lease = samples::lease_agreement().unwrap().id().unwrap();
        let case = ledger.dispute_case(&lease, 0).unwrap().expect("a case");
        assert_eq!(case.held, Credits::from_units(72_625));
        let customer = samples::customer().public();
        let supplier = samples::supplier().public();
        let balance = |key| ledger.balance(&rigmesh_ledger::Account::User(key)).unwrap();
        let before = balance(customer);
        let config = config();
        let resolve = |share: i64, against, signer: &Keypair| {
            Signed::sign(
                rigmesh_protocol::DisputeResolution {
                    version: PROTOCOL_VERSION,
                    epoch: samples::EPOCH,
                    admin: signer.public(),
                    lease,
                    supplier,
                    customer,
                    settlement_seq: 0,
                    held: Credits::from_units(72_625),
                    supplier_share: Credits::from_units(share),
                    against,
                    note: "the rig's logs show the GPU was unreachable".into(),
                    created_at: at(90_000),
                },
                signer,
            )
            .unwrap()
        };
        let rules = Coordinator::new(&ledger, &me, &config);
        // Anyone but an admin key is refused.
        let forged = resolve(
            0,
            rigmesh_protocol::DecidedAgainst::Supplier,
            &samples::supplier(),
        );
        let refusal = rules.vote_resolution(&forged, at(90_000)).unwrap_err();
        assert_eq!(refusal.code, "not_admin");
        let resolution = resolve(
            0,
            rigmesh_protocol::DecidedAgainst::Supplier,
            &samples::admin(),
        );
        let keys = samples::coordinators();
        let votes: Vec<_> = keys
            .iter()
            .take(3)
            .map(|k| {
                Coordinator::new(&ledger, k, &config)
                    .vote_resolution(&resolution, at(90_000))
                    .unwrap()
            })
            .collect();
        // A second, different resolution of the same case gets no vote.
        let other = resolve(
            72_625,
            rigmesh_protocol::DecidedAgainst::Customer,
            &samples::admin(),
        );
        assert_eq!(
            rules.vote_resolution(&other, at(90_000)).unwrap_err().code,
            "conflicting_request"
        );
        let certificate = Certificate::assemble(resolution, &votes).unwrap();
        assert!(matches!(
            rules.apply_resolution(&certificate, at(91_000)).unwrap(),
            rigmesh_ledger::Applied::Applied
        ));
        assert!(matches!(
            rules.apply_resolution(&certificate, at(92_000)).unwrap(),
            rigmesh_ledger::Applied::AlreadyApplied
        ));
        assert_eq!(
            balance(customer),
            before.checked_add(Credits::from_units(72_625)).unwrap(),
            "everything held comes back to the customer"
        );
        let totals = ledger.totals().unwrap();
        assert_eq!(totals.disputed, Credits::ZERO);
        ledger.check_books().unwrap();
        let resolved = ledger.dispute_case(&lease, 0).unwrap().unwrap();
        assert!(resolved.resolution.is_some());
        let mut watch = Watch::default();
        let (reports, _) = watch.round(&me, samples::EPOCH, &ledger, &[], at(95_000));
        let report = reports
            .iter()
            .find(|r| r.body.subject == supplier)
            .expect("a report about the supplier");
        assert_eq!(report.body.disputes_lost, 1);
        let customer_report = reports
            .iter()
            .find(|r| r.body.subject == customer)
            .expect("a report about the customer");
        assert_eq!(customer_report.body.disputes_lost, 0);
    }

    #[test]
    fn bans_and_implausible_power_raise_alerts_once() {
        let me = samples::coordinators()[0].clone();
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut watch = Watch::default();
        let bans = [(vec![1, 2, 3], "3 invalid signatures".to_string())];
        let (_, alerts) = watch.round(&me, 1, &ledger, &bans, at(0));
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].body.rule, "peer.banned");
        assert!(alerts[0].body.message.contains("3 invalid signatures"));
        let (_, again) = watch.round(&me, 1, &ledger, &bans, at(5_000));
        assert!(again.is_empty(), "a ban is reported once");
        let address = crate::network::Offender::Address([10, 0, 0, 9].into()).to_bytes();
        let both = [bans[0].clone(), (address, "flood".to_string())];
        let (_, alerts) = watch.round(&me, 1, &ledger, &both, at(6_000));
        assert_eq!(alerts.len(), 1, "only the new ban, of an address");
        assert!(alerts[0]
            .body
            .message
            .starts_with("address 10.0.0.9 banned"));
        // Once a ban is over, a new ban of the same peer is a new alert.
        let _ = watch.round(&me, 1, &ledger, &[], at(7_000));
        let (_, again) = watch.round(&me, 1, &ledger, &bans, at(8_000));
        assert_eq!(again.len(), 1);

        let honest = samples::usage_attestation().unwrap();
        assert!(check_attestations(&me, std::slice::from_ref(&honest), at(0)).is_empty());
        let mut body = honest.body.clone();
        if let Some(gpu) = body.gpus.first_mut() {
            gpu.energy_mj = 60_000;
        }
        let faked = Signed::sign(body, &samples::supplier()).unwrap();
        let alerts = check_attestations(&me, &[faked], at(0));
        let audiences: Vec<Audience> = alerts.iter().map(|a| a.body.audience).collect();
        assert_eq!(audiences, vec![Audience::Operators, Audience::Customer]);
        assert!(alerts
            .iter()
            .all(|a| a.body.rule == "usage.implausible_power"));
    }
}
