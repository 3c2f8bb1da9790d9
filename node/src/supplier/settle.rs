//! The supplier's settlement worker (specs/settlement.md section 8): for
//! each funded lease it keeps the attestation chain and the customer's
//! answers, and asks the coordinators to pay consecutive ranges of decided
//! windows. A window is decided once it is acked, disputed, or past the
//! unacknowledged timeout; the payout is the one every coordinator
//! computes ([`rigmesh_ledger::billing::payout`]).
//!
//! Partial settlements run every `settle_every` decided windows while the
//! lease runs and always leave the newest window for the final settlement,
//! which covers the rest once the lease has ended and refunds what the
//! escrow still holds.
//!
//! The state of each lease (agreement, escrow certificate, how far it is
//! settled, the last certificate) is written to `<dir>/<lease>.json` after
//! every change, and the attestations and the customer's answers are in
//! the node's gossip store, so a supplier that restarts settles what was
//! metered before it stopped: its leases count as ended (metering does not
//! resume) and get their final settlement.
//!
//! Leases settle side by side: each request goes out as a task of its own
//! (at most [`MAX_IN_FLIGHT`] at once, one per lease), so a lease whose
//! coordinators are slow or unreachable holds up no other, and state files
//! are written on blocking threads, never on the async executor.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rigmesh_ledger::billing::{self, FeeRate};
use rigmesh_ledger::disputes::{answer, Answer};
use rigmesh_ledger::MarketStore;
use rigmesh_protocol::rpc::{CertificateFrame, CoordinatorRequest, SettlementBundle};
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{
    Credits, EscrowCertificate, Id, Keypair, LeaseAgreement, SettlementCertificate,
    SettlementRequest, Signed, UnixMillis, UsageAck, UsageAttestation, UsageDispute,
    PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::leases::ClosedLeases;
use super::runtime::SupplierLease;
use crate::quorum::{NoQuorum, Quorum};

/// Most windows one settlement request carries (bounds the request size).
pub const MAX_WINDOWS_PER_REQUEST: usize = 200;

/// Margin added to the unacknowledged timeout before a window is counted
/// as accepted, so coordinators with a slightly slower clock agree.
const TIMEOUT_MARGIN_MS: u64 = 1_000;

/// What the worker hears from the supplier runtime.
#[derive(Debug)]
pub enum SettleEvent {
    /// A lease was funded: its agreement and escrow certificate.
    Funded(Box<Signed<LeaseAgreement>>, Box<EscrowCertificate>),
    /// A window was attested.
    Attested(Box<Signed<UsageAttestation>>),
    /// The lease's metering is over (its end, or a termination).
    Finished(Id),
    /// The customer topped the lease's escrow up (a raised cap).
    ToppedUp(Box<EscrowCertificate>),
}

/// Settlement terms shared with the coordinators.
#[derive(Debug, Clone, Copy)]
pub struct SettleTerms {
    /// The epoch's fee rate.
    pub fee_rate: FeeRate,
    /// The epoch's unacknowledged timeout.
    pub unacked_timeout_ms: u64,
    /// Settle every this many decided windows during a lease.
    pub settle_every: u64,
}

/// What the supplier has been paid for a lease, by certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    /// The lease's terms, for a lease that outlived a restart.
    #[serde(skip)]
    pub terms: Option<(rigmesh_protocol::PublicKey, Vec<u16>, Credits, UnixMillis)>,
    /// Settlement certificates applied, in order (their subject ids).
    pub certificates: Vec<Id>,
    /// Windows paid for.
    pub windows: u64,
    /// Credited to the supplier.
    pub earned: Credits,
    /// Paid as fees.
    pub fees: Credits,
    /// Refunded to the customer at the end.
    pub refunded: Credits,
    /// True once the final settlement is certified.
    pub closed: bool,
    /// Why the last attempt did not certify, if it did not.
    pub last_error: Option<String>,
}

/// Per-lease settlements, handed from the settlement worker to the
/// supplier's view: the worker writes a lease's summary each time its
/// settlement moves, and the view takes only the leases that moved since
/// it last looked, so neither reads every lease the supplier ever had.
#[derive(Debug, Clone, Default)]
pub struct SettledBook(Arc<Mutex<SettledEntries>>);

#[derive(Debug, Default)]
struct SettledEntries {
    /// The leases not taken since they were finally settled.
    by_lease: BTreeMap<Id, Settled>,
    /// The leases written since the view last took them.
    moved: BTreeSet<Id>,
}

impl SettledBook {
    fn entries(&self) -> std::sync::MutexGuard<'_, SettledEntries> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes `lease`'s summary (a new one starts empty) and marks it as
    /// moved.
    pub fn update(&self, lease: Id, change: impl FnOnce(&mut Settled)) {
        let mut entries = self.entries();
        change(entries.by_lease.entry(lease).or_default());
        entries.moved.insert(lease);
    }

    /// The summaries of the leases that moved since the last call. A
    /// finally settled lease leaves the book as it is taken: nothing more
    /// is written of it.
    pub fn take_moved(&self) -> Vec<(Id, Settled)> {
        let mut entries = self.entries();
        let moved = std::mem::take(&mut entries.moved);
        let mut taken = Vec::with_capacity(moved.len());
        for lease in moved {
            let closed = entries.by_lease.get(&lease).is_some_and(|s| s.closed);
            let summary = if closed {
                entries.by_lease.remove(&lease)
            } else {
                entries.by_lease.get(&lease).cloned()
            };
            if let Some(summary) = summary {
                taken.push((lease, summary));
            }
        }
        taken
    }

    /// How many leases the book holds: those not finally settled, and
    /// those finally settled but not taken yet.
    pub fn len(&self) -> usize {
        self.entries().by_lease.len()
    }

    /// Whether the book holds no lease.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What survives a restart of one lease's settlement.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    agreement: String,
    escrow: String,
    settlement_seq: u64,
    next_window: u64,
    paid: Credits,
    earlier: Option<String>,
    finished: bool,
    closed: bool,
    inflight: Option<String>,
    summary: Settled,
    /// Escrow top-ups (certificate bytes, hex) after the first escrow.
    #[serde(default)]
    top_ups: Vec<String>,
}

#[derive(Debug)]
struct LeaseState {
    agreement: Signed<LeaseAgreement>,
    escrow: EscrowCertificate,
    attestations: Vec<Signed<UsageAttestation>>,
    acks: BTreeMap<u64, Signed<UsageAck>>,
    disputes: BTreeMap<u64, Signed<UsageDispute>>,
    settlement_seq: u64,
    next_window: u64,
    paid: Credits,
    earlier: Option<SettlementCertificate>,
    finished: bool,
    closed: bool,
    retry_at: UnixMillis,
    inflight: Option<Signed<SettlementRequest>>,
    summary: Settled,
    /// Top-ups of the escrow, by certificate subject.
    top_ups: BTreeMap<Id, EscrowCertificate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    Pay(u64),
    /// Held for review: the window's billable GPU-ms.
    Held(u64),
    Open,
}

impl LeaseState {
    fn status(
        &self,
        a: &Signed<UsageAttestation>,
        terms: &SettleTerms,
        now: UnixMillis,
    ) -> Decided {
        let seq = a.body.seq;
        let id = a.id().unwrap_or(Id::ZERO);
        // The rule every coordinator applies (rigmesh_ledger::disputes).
        match answer(
            id,
            self.acks.get(&seq).map(|k| &k.body),
            self.disputes.get(&seq).map(|d| &d.body),
        ) {
            Answer::Acked | Answer::Refuted => return Decided::Pay(a.body.billable_gpu_ms),
            Answer::Held => return Decided::Held(a.body.billable_gpu_ms),
            Answer::None => {}
        }
        if now
            >= a.body
                .window_end
                .plus_ms(terms.unacked_timeout_ms + TIMEOUT_MARGIN_MS)
        {
            Decided::Pay(a.body.billable_gpu_ms)
        } else {
            Decided::Open
        }
    }

    /// The next request to send, if one is due: the range of decided
    /// windows, whether it is final, and the billable GPU-ms.
    fn due(
        &self,
        terms: &SettleTerms,
        now: UnixMillis,
    ) -> Option<(usize, usize, bool, (u64, u64))> {
        if self.closed {
            return None;
        }
        let first = usize::try_from(self.next_window).ok()?;
        let pending = self.attestations.get(first..)?;
        let decided = pending
            .iter()
            .take_while(|a| self.status(a, terms, now) != Decided::Open)
            .count();
        if self.finished && decided == pending.len() && decided > 0 {
            let take = decided.min(MAX_WINDOWS_PER_REQUEST);
            let last = take == decided;
            let gpu_ms = self.billable(first, take, terms, now);
            return Some((first, take, last, gpu_ms));
        }
        // While the lease runs, keep the newest window for the final one.
        let usable = decided.min(pending.len().saturating_sub(1));
        if usable as u64 >= terms.settle_every.max(1) {
            let take = usable.min(MAX_WINDOWS_PER_REQUEST);
            return Some((first, take, false, self.billable(first, take, terms, now)));
        }
        None
    }

    /// The GPU-ms of a range that are paid and that are held for review.
    fn billable(
        &self,
        first: usize,
        take: usize,
        terms: &SettleTerms,
        now: UnixMillis,
    ) -> (u64, u64) {
        self.attestations
            .iter()
            .skip(first)
            .take(take)
            .map(|a| match self.status(a, terms, now) {
                Decided::Pay(ms) => (ms, 0),
                Decided::Held(ms) => (0, ms),
                Decided::Open => (0, 0),
            })
            .fold((0u64, 0u64), |(p, h), (a, b)| {
                (p.saturating_add(a), h.saturating_add(b))
            })
    }
}

impl LeaseState {
    /// The lease's id and its state file's contents.
    fn encode(&self) -> Result<(Id, Vec<u8>), String> {
        let saved = Saved {
            agreement: hex::encode(self.agreement.to_bytes().map_err(|e| e.to_string())?),
            escrow: hex::encode(self.escrow.to_bytes().map_err(|e| e.to_string())?),
            settlement_seq: self.settlement_seq,
            next_window: self.next_window,
            paid: self.paid,
            earlier: self
                .earlier
                .as_ref()
                .map(|c| c.to_bytes().map(hex::encode))
                .transpose()
                .map_err(|e| e.to_string())?,
            finished: self.finished,
            closed: self.closed,
            inflight: self
                .inflight
                .as_ref()
                .map(|r| r.to_bytes().map(hex::encode))
                .transpose()
                .map_err(|e| e.to_string())?,
            summary: self.summary.clone(),
            top_ups: self
                .top_ups
                .values()
                .map(|c| c.to_bytes().map(hex::encode))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?,
        };
        let lease = self.agreement.id().map_err(|e| e.to_string())?;
        let text = serde_json::to_vec_pretty(&saved).map_err(|e| e.to_string())?;
        Ok((lease, text))
    }

    fn load(saved: Saved, store: &MarketStore) -> Result<Self, String> {
        let bytes = |h: &str| hex::decode(h).map_err(|e| e.to_string());
        let agreement = Signed::<LeaseAgreement>::from_bytes(&bytes(&saved.agreement)?)
            .map_err(|e| e.to_string())?;
        let escrow =
            EscrowCertificate::from_bytes(&bytes(&saved.escrow)?).map_err(|e| e.to_string())?;
        let earlier = saved
            .earlier
            .as_deref()
            .map(|h| {
                bytes(h)
                    .and_then(|b| SettlementCertificate::from_bytes(&b).map_err(|e| e.to_string()))
            })
            .transpose()?;
        let lease = agreement.id().map_err(|e| e.to_string())?;
        let customer = escrow.message.body.account;
        let mut attestations: Vec<Signed<UsageAttestation>> = store
            .about_lease::<UsageAttestation>(&lease)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|a| a.signer == agreement.body.supplier)
            .collect();
        attestations.sort_by_key(|a| a.body.seq);
        // Keep the unbroken chain from 0.
        let mut chain = Vec::with_capacity(attestations.len());
        for a in attestations {
            if a.body.seq == chain.len() as u64 {
                chain.push(a);
            }
        }
        let acks = store
            .about_lease::<UsageAck>(&lease)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|a| a.body.customer == customer)
            .map(|a| (a.body.seq, a))
            .collect();
        let disputes = store
            .about_lease::<UsageDispute>(&lease)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|d| d.body.customer == customer)
            .map(|d| (d.body.seq, d))
            .collect();
        Ok(LeaseState {
            agreement,
            escrow,
            attestations: chain,
            acks,
            disputes,
            settlement_seq: saved.settlement_seq,
            next_window: saved.next_window,
            paid: saved.paid,
            earlier,
            // Metering does not resume after a restart: the lease has ended.
            finished: true,
            closed: saved.closed,
            retry_at: UnixMillis(0),
            inflight: saved
                .inflight
                .as_deref()
                .map(|h| {
                    bytes(h).and_then(|b| {
                        Signed::<SettlementRequest>::from_bytes(&b).map_err(|e| e.to_string())
                    })
                })
                .transpose()?,
            summary: saved.summary,
            top_ups: saved
                .top_ups
                .iter()
                .map(|h| {
                    let certificate = bytes(h).and_then(|b| {
                        EscrowCertificate::from_bytes(&b).map_err(|e| e.to_string())
                    })?;
                    let subject = certificate.subject().map_err(|e| e.to_string())?;
                    Ok((subject, certificate))
                })
                .collect::<Result<_, String>>()?,
        })
    }

    /// The whole escrow: the first certificate's and every top-up's.
    fn escrowed(&self) -> Option<Credits> {
        self.top_ups
            .values()
            .try_fold(self.escrow.message.body.amount, |total, c| {
                total.checked_add(c.message.body.amount)
            })
    }

    /// Takes `certificate` as a top-up of this lease's escrow if it is one:
    /// certified by a quorum of `set`, for this lease and supplier, from
    /// its customer, and not the first escrow. True when it was new.
    fn top_up(
        &mut self,
        certificate: EscrowCertificate,
        set: &rigmesh_protocol::CoordinatorSet,
    ) -> bool {
        let order = &certificate.message.body;
        let first = &self.escrow.message.body;
        let Ok(subject) = certificate.subject() else {
            return false;
        };
        if order.lease != first.lease
            || order.account != first.account
            || order.supplier != first.supplier
            || self.escrow.subject().ok() == Some(subject)
            || self.top_ups.contains_key(&subject)
            || certificate.verify(set).is_err()
        {
            return false;
        }
        self.top_ups.insert(subject, certificate);
        true
    }
}

/// What a supplier's settlement state files hold at start.
#[derive(Debug, Default)]
struct Restored {
    /// The leases not finally settled, whose settlement resumes: with
    /// their evidence read back from the store.
    open: BTreeMap<Id, LeaseState>,
    /// Those finally settled whose state file was still there (written
    /// before the lease history, or archiving failed): moved to the
    /// history, their files removed, nothing read of their evidence.
    archived: Vec<Id>,
}

fn restore(dir: &Path, store: &MarketStore, history: &ClosedLeases) -> Restored {
    let mut out = Restored::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let saved = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_slice::<Saved>(&text).map_err(|e| e.to_string()));
        let restored = saved.and_then(|saved| {
            if saved.closed {
                let closed = closed_summary(saved)?;
                history.insert(&closed).map_err(|e| e.to_string())?;
                std::fs::remove_file(&path).map_err(|e| e.to_string())?;
                out.archived.push(closed.lease);
                Ok(())
            } else {
                let state = LeaseState::load(saved, store)?;
                let lease = state.agreement.id().map_err(|e| e.to_string())?;
                tracing::info!(%lease, windows = state.attestations.len(), "resuming the settlement of a lease");
                out.open.insert(lease, state);
                Ok(())
            }
        });
        if let Err(err) = restored {
            tracing::warn!(path = %path.display(), %err, "unreadable settlement state");
        }
    }
    out
}

/// A finally settled lease's saved state as the supplier's history keeps
/// it: its agreement is decoded for the terms, and nothing is read from
/// the store (its evidence may be compacted already), so what was
/// attested is not counted.
fn closed_summary(saved: Saved) -> Result<SupplierLease, String> {
    let bytes = hex::decode(&saved.agreement).map_err(|e| e.to_string())?;
    let agreement = Signed::<LeaseAgreement>::from_bytes(&bytes).map_err(|e| e.to_string())?;
    closed_lease(&agreement, &[], saved.summary)
}

/// A finally settled lease as the supplier's history keeps it: its
/// terms, what `attestations` attest, and its settlement.
fn closed_lease(
    agreement: &Signed<LeaseAgreement>,
    attestations: &[Signed<UsageAttestation>],
    mut summary: Settled,
) -> Result<SupplierLease, String> {
    let lease = agreement.id().map_err(|e| e.to_string())?;
    let (customer, gpus, price, ends_at) = terms_of(agreement);
    let billable_gpu_ms = attestations
        .iter()
        .fold(0u64, |sum, a| sum.saturating_add(a.body.billable_gpu_ms));
    summary.terms = None;
    Ok(SupplierLease {
        lease,
        customer,
        gpus,
        price_per_gpu_hour: price,
        ends_at,
        windows_attested: attestations.len() as u64,
        billable_gpu_ms,
        earned: billing::charge(price, billable_gpu_ms).map_err(|e| e.to_string())?,
        settled: Some(summary),
    })
}

/// How long a finally settled lease that could not be moved to the lease
/// history waits before the worker tries again.
const ARCHIVE_RETRY_MS: u64 = 10_000;

/// What came of moving a finally settled lease to the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moved {
    /// In the history, its state file removed.
    Done,
    /// Writing failed (the history or the file): worth trying again.
    Failed,
    /// Its record cannot be made from its state (its earnings out of
    /// range): trying again cannot help, its state file stays.
    Unrecordable,
}

/// Moves a finally settled lease to the supplier's history, then removes
/// its state file, on a blocking thread. When writing fails the file
/// stays: the worker tries again ([`archive_pending`]), and a restart
/// moves it too. A second try replaces what the first wrote, so nothing
/// is counted twice.
async fn archive(state: &LeaseState, saved: &SettleStore, lease: &Id) -> Moved {
    let closed = match closed_lease(&state.agreement, &state.attestations, state.summary.clone()) {
        Ok(closed) => closed,
        Err(err) => {
            tracing::warn!(%lease, %err, "the finally settled lease is not archived");
            return Moved::Unrecordable;
        }
    };
    let (history, path) = (
        saved.history.clone(),
        saved.dir.join(format!("{lease}.json")),
    );
    let done = tokio::task::spawn_blocking(move || {
        history.insert(&closed).map_err(|e| e.to_string())?;
        std::fs::remove_file(&path).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|done| done);
    match done {
        Ok(()) => Moved::Done,
        Err(err) => {
            tracing::warn!(%lease, %err, retry_in_ms = ARCHIVE_RETRY_MS, "the finally settled lease is not archived; trying again");
            Moved::Failed
        }
    }
}

/// Moves a finally settled lease to the history ([`archive`]); true when
/// it may leave the worker (moved, or never recordable). When writing
/// failed it stays, to be tried again [`ARCHIVE_RETRY_MS`] after `now`.
async fn archive_or_wait(
    state: &mut LeaseState,
    saved: &SettleStore,
    lease: &Id,
    now: UnixMillis,
) -> bool {
    match archive(state, saved, lease).await {
        Moved::Done | Moved::Unrecordable => true,
        Moved::Failed => {
            state.retry_at = now.plus_ms(ARCHIVE_RETRY_MS);
            false
        }
    }
}

/// Tries again to move the finally settled leases whose move failed (the
/// closed ones still in `leases`) once their wait is over; those that may
/// leave ([`archive_or_wait`]) leave `leases`. Returns how many left.
async fn archive_pending(
    leases: &mut BTreeMap<Id, LeaseState>,
    saved: &SettleStore,
    now: UnixMillis,
) -> usize {
    let due: Vec<Id> = leases
        .iter()
        .filter(|(_, state)| state.closed && now >= state.retry_at)
        .map(|(lease, _)| *lease)
        .collect();
    let mut left = 0;
    for lease in due {
        let Some(state) = leases.get_mut(&lease) else {
            continue;
        };
        if archive_or_wait(state, saved, &lease, now).await {
            leases.remove(&lease);
            left += 1;
        }
    }
    left
}

fn terms_of(
    agreement: &Signed<LeaseAgreement>,
) -> (rigmesh_protocol::PublicKey, Vec<u16>, Credits, UnixMillis) {
    let a = &agreement.body;
    (
        a.proposal.body.customer,
        a.gpu_indices.clone(),
        a.proposal.body.price_per_gpu_hour,
        a.ends_at,
    )
}

/// Where the worker keeps its state, and what it reads attestations from.
#[derive(Debug, Clone)]
pub struct SettleStore {
    /// Directory of the per-lease state files.
    pub dir: PathBuf,
    /// The node's gossip store.
    pub market: Arc<MarketStore>,
    /// The supplier's notifications (payouts, dispute cases).
    pub alerts: crate::notify::AlertSink,
    /// Where finally settled leases go.
    pub history: Arc<ClosedLeases>,
}

/// Notifies the supplier about one of its leases.
fn tell(
    alerts: &crate::notify::AlertSink,
    key: &Keypair,
    severity: rigmesh_protocol::Severity,
    rule: &str,
    lease: Id,
    message: String,
) {
    alerts.raise(&crate::notify::own_alert(
        key.public(),
        rigmesh_protocol::Audience::Supplier,
        severity,
        rule,
        Some(lease),
        message,
    ));
}

/// Most settlement requests one supplier has out at once, each its own
/// task asking every coordinator; a lease that is due while this many are
/// out waits for the next tick. One lease never has two out.
pub const MAX_IN_FLIGHT: usize = 16;

/// The settlement worker's metrics (the supplier's `/metrics`).
#[derive(Debug, Clone)]
pub struct SettleMetrics {
    /// Seconds from a request's first sending to its certificate, retries
    /// included.
    pub seconds: Histogram,
    /// Settlements certified.
    pub certified: Counter,
    /// Attempts that gathered no quorum (each is retried).
    pub failed: Counter,
    /// Requests out at the coordinators now.
    pub in_flight: Gauge,
}

impl Default for SettleMetrics {
    fn default() -> Self {
        SettleMetrics {
            seconds: Histogram::new(exponential_buckets(0.002, std::f64::consts::SQRT_2, 34)),
            certified: Counter::default(),
            failed: Counter::default(),
            in_flight: Gauge::default(),
        }
    }
}

impl SettleMetrics {
    /// Registers the worker's metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = SettleMetrics::default();
        registry.register(
            "rigmesh_supplier_settlement_seconds",
            "Seconds from a settlement request's first sending to its certificate, retries included",
            m.seconds.clone(),
        );
        registry.register(
            "rigmesh_supplier_settlements",
            "Settlements certified for this supplier",
            m.certified.clone(),
        );
        registry.register(
            "rigmesh_supplier_settlement_attempts_failed",
            "Settlement attempts that gathered no quorum (each is retried)",
            m.failed.clone(),
        );
        registry.register(
            "rigmesh_supplier_settlements_in_flight",
            "Settlement requests out at the coordinators now",
            m.in_flight.clone(),
        );
        m
    }
}

/// Writes a lease's state file (its whole contents, then a rename) on a
/// blocking thread, so the disk never holds up the async executor.
async fn persist(state: &LeaseState, dir: &Path) -> Result<(), String> {
    let (lease, text) = state.encode()?;
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join(format!("{lease}.json"));
        let tmp = dir.join(format!("{lease}.json.tmp"));
        std::fs::write(&tmp, text).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// [`persist`], logging a failure: the state in memory stands, and the
/// next change writes it again.
async fn save(state: &LeaseState, dir: &Path, lease: &Id) {
    if let Err(err) = persist(state, dir).await {
        tracing::warn!(%lease, %err, "could not save the settlement state");
    }
}

/// What a submission task hands back.
struct Outcome {
    lease: Id,
    request: Signed<SettlementRequest>,
    result: Result<SettlementCertificate, NoQuorum>,
}

/// Runs the worker until `stop` turns true.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    key: Keypair,
    quorum: Quorum,
    terms: SettleTerms,
    network: crate::network::NodeHandle,
    mut events: mpsc::Receiver<SettleEvent>,
    settled: SettledBook,
    saved: SettleStore,
    metrics: SettleMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let restored = {
        let (dir, market, history) = (
            saved.dir.clone(),
            saved.market.clone(),
            saved.history.clone(),
        );
        tokio::task::spawn_blocking(move || restore(&dir, &market, &history))
            .await
            .unwrap_or_default()
    };
    if !restored.archived.is_empty() {
        tracing::info!(
            leases = restored.archived.len(),
            "finally settled leases moved to the lease history"
        );
    }
    let mut leases = restored.open;
    for (lease, state) in &leases {
        publish_summary(&settled, lease, state);
    }
    let mut accepted = network.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(1000));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Submissions out now, by task; and when each lease's request was
    // first sent (for the latency metric; a restart starts it again).
    let mut running: JoinSet<Outcome> = JoinSet::new();
    let mut busy: HashMap<tokio::task::Id, Id> = HashMap::new();
    let mut first_sent: HashMap<Id, Instant> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                metrics.in_flight.set(running.len() as i64);
                let outcome = match done {
                    Ok((task, outcome)) => {
                        busy.remove(&task);
                        outcome
                    }
                    Err(err) => {
                        // A submission that panicked: its lease is tried
                        // again on a later tick with the request it saved.
                        if let Some(lease) = busy.remove(&err.id()) {
                            tracing::warn!(%lease, %err, "settlement submission failed");
                            if let Some(state) = leases.get_mut(&lease) {
                                state.retry_at = UnixMillis::now().plus_ms(3_000);
                            }
                        }
                        continue;
                    }
                };
                let lease = outcome.lease;
                let Some(state) = leases.get_mut(&lease) else { continue };
                match outcome.result {
                    Ok(cert) => {
                        metrics.certified.inc();
                        if let Some(at) = first_sent.remove(&lease) {
                            metrics.seconds.observe(at.elapsed().as_secs_f64());
                        }
                        state.certified(&outcome.request, &cert);
                        let r = &cert.message.body;
                        let entry = &mut state.summary;
                        entry.certificates.push(cert.subject().unwrap_or(Id::ZERO));
                        entry.windows = r.last_window + 1;
                        entry.earned = entry.earned.checked_add(r.supplier_amount).unwrap_or(entry.earned);
                        entry.fees = entry.fees.checked_add(r.fee).unwrap_or(entry.fees);
                        entry.refunded = entry.refunded.checked_add(r.refund).unwrap_or(entry.refunded);
                        entry.closed = r.final_settlement;
                        entry.last_error = None;
                        save(state, &saved.dir, &lease).await;
                        // A lease whose move fails stays, closed, until a
                        // tick moves it.
                        let unmoved = state.summary.closed
                            && !archive_or_wait(state, &saved, &lease, UnixMillis::now()).await;
                        publish_summary(&settled, &lease, state);
                        tell(
                            &saved.alerts,
                            &key,
                            rigmesh_protocol::Severity::Info,
                            "payout.certified",
                            lease,
                            format!(
                                "lease {lease}: windows {}..={} settled, {} paid to you",
                                r.first_window, r.last_window, r.supplier_amount
                            ),
                        );
                        if !r.held.is_zero() {
                            tell(
                                &saved.alerts,
                                &key,
                                rigmesh_protocol::Severity::Warning,
                                "dispute.held",
                                lease,
                                format!(
                                    "lease {lease}: the customer disputed windows of settlement {}; {} is held until an operator decides",
                                    r.settlement_seq, r.held
                                ),
                            );
                        }
                        tracing::info!(%lease, seq = r.settlement_seq, windows = %format!("{}..={}", r.first_window, r.last_window), supplier = %r.supplier_amount, fee = %r.fee, refund = %r.refund, held = %r.held, final_settlement = r.final_settlement, "settled");
                        if state.closed && !unmoved {
                            leases.remove(&lease);
                        }
                    }
                    Err(err) => {
                        metrics.failed.inc();
                        tracing::warn!(%lease, %err, "settlement not certified; retrying");
                        if may_rebuild(&err) {
                            state.inflight = None;
                        }
                        state.retry_at = UnixMillis::now().plus_ms(3_000);
                        state.summary.last_error = Some(err.to_string());
                        save(state, &saved.dir, &lease).await;
                        publish_summary(&settled, &lease, state);
                    }
                }
            }
            Some(event) = events.recv() => match event {
                SettleEvent::Funded(agreement, escrow) => {
                    if let Ok(lease) = agreement.id() {
                        settled.update(lease, |entry| entry.terms = Some(terms_of(&agreement)));
                        let state = LeaseState {
                            agreement: *agreement,
                            escrow: *escrow,
                            attestations: Vec::new(),
                            acks: BTreeMap::new(),
                            disputes: BTreeMap::new(),
                            settlement_seq: 0,
                            next_window: 0,
                            paid: Credits::ZERO,
                            earlier: None,
                            finished: false,
                            closed: false,
                            retry_at: UnixMillis(0),
                            inflight: None,
                            summary: Settled::default(),
                            top_ups: BTreeMap::new(),
                        };
                        save(&state, &saved.dir, &lease).await;
                        leases.insert(lease, state);
                    }
                }
                SettleEvent::Attested(a) => {
                    if let Some(state) = leases.get_mut(&a.body.lease) {
                        if a.body.seq == state.attestations.len() as u64 {
                            state.attestations.push(*a);
                        }
                    }
                }
                SettleEvent::ToppedUp(certificate) => {
                    let lease = certificate.message.body.lease;
                    if let Some(state) = leases.get_mut(&lease) {
                        if state.top_up(*certificate, quorum.set()) {
                            save(state, &saved.dir, &lease).await;
                        }
                    }
                }
                SettleEvent::Finished(lease) => {
                    if let Some(state) = leases.get_mut(&lease) {
                        state.finished = true;
                        save(state, &saved.dir, &lease).await;
                    }
                }
            },
            message = accepted.recv() => {
                let Ok(message) = message else { continue };
                match message.message {
                    WireMessage::UsageAck(ack) => {
                        if let Some(state) = leases.get_mut(&ack.body.lease) {
                            if ack.body.customer == state.escrow.message.body.account {
                                state.acks.insert(ack.body.seq, ack);
                            }
                        }
                    }
                    // A top-up the customer could not hand over arrives
                    // by gossip.
                    WireMessage::EscrowCertificate(certificate) => {
                        let lease = certificate.message.body.lease;
                        if let Some(state) = leases.get_mut(&lease) {
                            if state.top_up(certificate, quorum.set()) {
                                save(state, &saved.dir, &lease).await;
                            }
                        }
                    }
                    WireMessage::UsageDispute(dispute) => {
                        if let Some(state) = leases.get_mut(&dispute.body.lease) {
                            if dispute.body.customer == state.escrow.message.body.account {
                                state.disputes.insert(dispute.body.seq, dispute);
                            }
                        }
                    }
                    WireMessage::ResolutionCertificate(c) if c.message.body.supplier == key.public() => {
                        let r = &c.message.body;
                        tell(
                            &saved.alerts,
                            &key,
                            rigmesh_protocol::Severity::Info,
                            "dispute.decided",
                            r.lease,
                            format!(
                                "lease {}: the dispute of settlement {} is decided: {} of the {} held is paid to you ({})",
                                r.lease, r.settlement_seq, r.supplier_share, r.held, r.note
                            ),
                        );
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                let now = UnixMillis::now();
                archive_pending(&mut leases, &saved, now).await;
                let out: HashSet<Id> = busy.values().copied().collect();
                for (lease, state) in leases.iter_mut() {
                    if running.len() >= MAX_IN_FLIGHT {
                        break;
                    }
                    if now < state.retry_at || state.closed || out.contains(lease) {
                        continue;
                    }
                    // A request some coordinators voted for is sent again
                    // unchanged until it is certified: their locks allow
                    // no other at its settlement sequence number.
                    let request = match state.inflight.clone() {
                        Some(request) => request,
                        None => {
                            let Some((first, take, last, gpu_ms)) = state.due(&terms, now) else { continue };
                            match build_request(&key, &quorum, &terms, state, first, take, last, gpu_ms, now) {
                                Ok(request) => {
                                    state.inflight = Some(request.clone());
                                    // Written before it is sent: a restart
                                    // sends this request again, not another.
                                    save(state, &saved.dir, lease).await;
                                    request
                                }
                                Err(err) => {
                                    tracing::warn!(%lease, %err, "could not build a settlement request");
                                    state.retry_at = now.plus_ms(3_000);
                                    continue;
                                }
                            }
                        }
                    };
                    let bundle = state.bundle(&request);
                    first_sent.entry(*lease).or_insert_with(Instant::now);
                    let task = running.spawn(submit(quorum.clone(), *lease, request, bundle));
                    busy.insert(task.id(), *lease);
                }
                metrics.in_flight.set(running.len() as i64);
            }
        }
    }
}

/// Whether a request that did not certify may be replaced by a new one at
/// the same settlement sequence number. Only members that answered with a
/// reason are known to hold no vote for it; one whose answer was lost (a
/// timeout, a dropped connection, this node stopping) may have voted and
/// is then locked on this request, so a rebuilt one (other windows, another
/// time) would never gather a quorum. The request is kept, and sent again
/// unchanged, unless a quorum refused it.
fn may_rebuild(err: &NoQuorum) -> bool {
    err.refused >= err.need
}

fn publish_summary(settled: &SettledBook, lease: &Id, state: &LeaseState) {
    settled.update(*lease, |entry| {
        let terms = entry.terms.take();
        *entry = state.summary.clone();
        entry.terms = terms.or_else(|| Some(terms_of(&state.agreement)));
    });
}

#[allow(clippy::too_many_arguments)]
fn build_request(
    key: &Keypair,
    quorum: &Quorum,
    terms: &SettleTerms,
    state: &LeaseState,
    first: usize,
    take: usize,
    last: bool,
    (gpu_ms, held_gpu_ms): (u64, u64),
    now: UnixMillis,
) -> Result<Signed<SettlementRequest>, String> {
    let head = take
        .checked_sub(1)
        .and_then(|n| first.checked_add(n))
        .and_then(|i| state.attestations.get(i))
        .ok_or("nothing to settle")?;
    let available = state
        .escrowed()
        .and_then(|escrowed| escrowed.checked_sub(state.paid))
        .ok_or("escrow overdrawn")?;
    let p = &state.agreement.body.proposal.body;
    let payout = billing::payout_holding(
        p.price_per_gpu_hour,
        gpu_ms,
        held_gpu_ms,
        available,
        terms.fee_rate,
        last,
    )
    .map_err(|e| e.to_string())?;
    Signed::sign(
        SettlementRequest {
            version: PROTOCOL_VERSION,
            lease: state.agreement.id().map_err(|e| e.to_string())?,
            supplier: key.public(),
            customer: p.customer,
            settlement_seq: state.settlement_seq,
            epoch: quorum.set().epoch(),
            escrow: state.escrow.subject().map_err(|e| e.to_string())?,
            first_window: first as u64,
            last_window: head.body.seq,
            attestation_head: head.id().map_err(|e| e.to_string())?,
            billable_gpu_ms: payout.billable_gpu_ms,
            supplier_amount: payout.supplier,
            fee: payout.fee,
            refund: payout.refund,
            held: payout.held,
            final_settlement: last,
            created_at: now,
        },
        key,
    )
    .map_err(|e| e.to_string())
}

impl LeaseState {
    /// What goes with `request` to the coordinators: the attestations of
    /// its windows and the one before them, the customer's acks and
    /// disputes of those windows, the agreement, the escrow certificate
    /// and the lease's last settlement certificate.
    fn bundle(&self, request: &Signed<SettlementRequest>) -> SettlementBundle {
        let r = &request.body;
        let first = usize::try_from(r.first_window).unwrap_or(usize::MAX);
        let count =
            usize::try_from(r.last_window.saturating_sub(r.first_window) + 1).unwrap_or(usize::MAX);
        let mut attestations =
            Vec::with_capacity(count.saturating_add(1).min(1 + MAX_WINDOWS_PER_REQUEST));
        if let Some(previous) = first.checked_sub(1).and_then(|i| self.attestations.get(i)) {
            attestations.push(previous.clone());
        }
        attestations.extend(self.attestations.iter().skip(first).take(count).cloned());
        let seqs = r.first_window..=r.last_window;
        SettlementBundle {
            request: request.clone(),
            agreement: self.agreement.clone(),
            escrow: Some(self.escrow.clone()),
            attestations,
            acks: self
                .acks
                .range(seqs.clone())
                .map(|(_, a)| a.clone())
                .collect(),
            disputes: self.disputes.range(seqs).map(|(_, d)| d.clone()).collect(),
            earlier: self.earlier.iter().cloned().collect(),
        }
    }

    /// Advances the lease past `request`, now certified as `cert`.
    fn certified(&mut self, request: &Signed<SettlementRequest>, cert: &SettlementCertificate) {
        let r = &request.body;
        self.settlement_seq += 1;
        self.next_window = r.last_window + 1;
        self.paid = self
            .paid
            .checked_add(r.supplier_amount)
            .and_then(|p| p.checked_add(r.fee))
            .and_then(|p| p.checked_add(r.held))
            .unwrap_or(self.paid);
        self.closed = r.final_settlement;
        self.earlier = Some(cert.clone());
        self.inflight = None;
    }
}

/// Sends `request` with its evidence to every coordinator and, once a
/// quorum certifies it, hands the certificate to all of them. Runs as a
/// task of its own, so leases settle side by side.
async fn submit(
    quorum: Quorum,
    lease: Id,
    request: Signed<SettlementRequest>,
    bundle: SettlementBundle,
) -> Outcome {
    let result = match quorum
        .certify(&request, &CoordinatorRequest::Settle(Box::new(bundle)))
        .await
    {
        Ok(cert) => {
            quorum
                .deliver(CertificateFrame::Settlement(Box::new(cert.clone())))
                .await;
            Ok(cert)
        }
        Err(err) => Err(err),
    };
    Outcome {
        lease,
        request,
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_quorum(votes: usize, refused: usize) -> NoQuorum {
        NoQuorum {
            votes,
            need: 3,
            refused,
            refusals: BTreeMap::new(),
        }
    }

    #[test]
    fn a_request_whose_answers_were_lost_is_sent_again_unchanged() {
        // Every answer lost (the node stopping, timeouts): members may have
        // voted and be locked on it.
        assert!(!may_rebuild(&no_quorum(0, 0)));
        // Two refused, two unheard from: those two may be locked on it.
        assert!(!may_rebuild(&no_quorum(0, 2)));
        assert!(!may_rebuild(&no_quorum(1, 2)));
    }

    #[test]
    fn a_request_a_quorum_refused_is_rebuilt() {
        assert!(may_rebuild(&no_quorum(0, 3)));
        assert!(may_rebuild(&no_quorum(1, 3)));
    }
}

#[cfg(test)]
mod restore_tests {
    use super::*;
    use rigmesh_ledger::MarketRecord;
    use rigmesh_protocol::{samples, wire::WireMessage};

    fn state(agreement: Signed<LeaseAgreement>, closed: bool) -> LeaseState {
        LeaseState {
            agreement,
            escrow: samples::escrow_certificate().unwrap(),
            attestations: Vec::new(),
            acks: BTreeMap::new(),
            disputes: BTreeMap::new(),
            settlement_seq: u64::from(closed),
            next_window: u64::from(closed),
            paid: Credits::ZERO,
            earlier: None,
            finished: closed,
            closed,
            retry_at: UnixMillis(0),
            inflight: None,
            summary: Settled {
                windows: u64::from(closed),
                earned: Credits::from_units(7_000),
                closed,
                ..Settled::default()
            },
            top_ups: BTreeMap::new(),
        }
    }

    /// A supplier restarting resumes its open leases with their evidence,
    /// and shows its finally settled ones from their saved summaries,
    /// without reading their evidence from the store.
    #[tokio::test]
    async fn a_restart_reads_the_evidence_of_the_open_leases_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = MarketStore::temporary().unwrap();
        // The sample lease is the open one; another is closed. The store
        // holds evidence of both.
        let open = samples::lease_agreement().unwrap();
        let mut body = open.body.clone();
        body.created_at = body.created_at.plus_ms(1);
        let closed = Signed::sign(body, &samples::supplier()).unwrap();
        let attestation = samples::usage_attestation().unwrap();
        let ack = samples::usage_ack().unwrap();
        let mut other = attestation.body.clone();
        other.lease = closed.id().unwrap();
        let other = Signed::sign(other, &samples::supplier()).unwrap();
        let records: Vec<MarketRecord> = [
            WireMessage::UsageAttestation(attestation.clone()),
            WireMessage::UsageAck(ack),
            WireMessage::UsageAttestation(other),
        ]
        .iter()
        .map(|m| MarketRecord::of(m, m.id().unwrap(), m.to_bytes().unwrap()))
        .collect();
        store.store(&records).unwrap();
        persist(&state(open.clone(), false), dir.path())
            .await
            .unwrap();
        persist(&state(closed.clone(), true), dir.path())
            .await
            .unwrap();
        std::fs::write(dir.path().join("broken.json"), b"{").unwrap();

        let history = ClosedLeases::in_memory().unwrap();
        let before = store.lease_messages_read();
        let restored = restore(dir.path(), &store, &history);
        let read = store.lease_messages_read() - before;
        assert_eq!(
            read, 2,
            "the open lease's attestation and ack, nothing else"
        );
        let lease = open.id().unwrap();
        let resumed = restored.open.get(&lease).unwrap();
        assert_eq!(resumed.attestations, vec![attestation]);
        assert_eq!(resumed.acks.len(), 1);
        assert_eq!(restored.open.len(), 1);
        // The closed one moved to the lease history, its file gone; the
        // open one's file stays.
        let id = closed.id().unwrap();
        assert_eq!(restored.archived, vec![id]);
        assert!(!dir.path().join(format!("{id}.json")).exists());
        assert!(dir.path().join(format!("{lease}.json")).exists());
        let kept = history.get(&id).unwrap().unwrap();
        let settled = kept.settled.as_ref().unwrap();
        assert!(settled.closed);
        assert_eq!(settled.earned, Credits::from_units(7_000));
        let (customer, gpus, price, ends_at) = terms_of(&closed);
        assert_eq!(
            (
                kept.customer,
                kept.gpus.clone(),
                kept.price_per_gpu_hour,
                kept.ends_at
            ),
            (customer, gpus, price, ends_at)
        );
        assert_eq!(history.totals().settled, Credits::from_units(7_000));
        // A second start finds only the open lease.
        let again = restore(dir.path(), &store, &history);
        assert!(again.archived.is_empty());
        assert_eq!(again.open.len(), 1);
        assert_eq!(history.len(), 1);
    }

    /// A finally settled lease's record counts what its attestations
    /// attest, at the lease price.
    #[test]
    fn a_closed_lease_counts_its_attested_windows() {
        let agreement = samples::lease_agreement().unwrap();
        let attestation = samples::usage_attestation().unwrap();
        let mut second = attestation.body.clone();
        second.seq += 1;
        let second = Signed::sign(second, &samples::supplier()).unwrap();
        let summary = Settled {
            earned: Credits::from_units(9),
            closed: true,
            terms: Some(terms_of(&agreement)),
            ..Settled::default()
        };
        let kept = closed_lease(&agreement, &[attestation.clone(), second], summary).unwrap();
        let gpu_ms = attestation.body.billable_gpu_ms * 2;
        assert_eq!(kept.windows_attested, 2);
        assert_eq!(kept.billable_gpu_ms, gpu_ms);
        assert_eq!(
            kept.earned,
            billing::charge(agreement.body.proposal.body.price_per_gpu_hour, gpu_ms).unwrap()
        );
        assert_eq!(kept.settled.unwrap().terms, None);
    }

    /// A lease history whose writes fail while `failing` is set, as a
    /// full or failing disk makes them.
    struct FailingHistory {
        inner: rigmesh_ledger::MemoryStore,
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    impl FailingHistory {
        fn check(&self) -> rigmesh_ledger::Result<()> {
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(rigmesh_ledger::Error::Storage(sled::Error::Io(
                    std::io::Error::other("no space left on device"),
                )));
            }
            Ok(())
        }
    }

    impl rigmesh_ledger::Store for FailingHistory {
        fn get(
            &self,
            tree: rigmesh_ledger::store::TreeName,
            key: &[u8],
        ) -> rigmesh_ledger::Result<Option<Vec<u8>>> {
            self.inner.get(tree, key)
        }
        fn put(
            &self,
            tree: rigmesh_ledger::store::TreeName,
            key: &[u8],
            value: &[u8],
        ) -> rigmesh_ledger::Result<()> {
            self.check()?;
            self.inner.put(tree, key, value)
        }
        fn delete(
            &self,
            tree: rigmesh_ledger::store::TreeName,
            key: &[u8],
        ) -> rigmesh_ledger::Result<()> {
            self.check()?;
            self.inner.delete(tree, key)
        }
        fn write(&self, batch: &rigmesh_ledger::Batch) -> rigmesh_ledger::Result<()> {
            self.check()?;
            self.inner.write(batch)
        }
        fn scan(
            &self,
            tree: rigmesh_ledger::store::TreeName,
            range: rigmesh_ledger::store::KeyRange,
            direction: rigmesh_ledger::store::Direction,
        ) -> rigmesh_ledger::store::RawScan<'_> {
            self.inner.scan(tree, range, direction)
        }
        fn flush(&self) -> rigmesh_ledger::Result<()> {
            self.check()?;
            self.inner.flush()
        }
        fn is_empty(&self) -> rigmesh_ledger::Result<bool> {
            self.inner.is_empty()
        }
    }

    /// A finally settled lease whose move to the history fails (a full
    /// disk) stays with the worker, its state file kept, and is moved by
    /// a later tick once the disk takes writes again: no restart needed,
    /// and its earnings are counted once.
    #[tokio::test]
    async fn a_failed_move_to_the_history_is_tried_again_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let history = Arc::new(
            ClosedLeases::over(Box::new(FailingHistory {
                inner: rigmesh_ledger::MemoryStore::new(),
                failing: Arc::clone(&failing),
            }))
            .unwrap(),
        );
        let saved = SettleStore {
            dir: dir.path().to_path_buf(),
            market: Arc::new(MarketStore::temporary().unwrap()),
            alerts: crate::notify::AlertSink::default(),
            history: Arc::clone(&history),
        };
        let agreement = samples::lease_agreement().unwrap();
        let lease = agreement.id().unwrap();
        let closed = state(agreement, true);
        persist(&closed, dir.path()).await.unwrap();
        let file = dir.path().join(format!("{lease}.json"));

        failing.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(archive(&closed, &saved, &lease).await, Moved::Failed);
        let mut leases = BTreeMap::from([(lease, closed)]);
        let now = UnixMillis::now();
        assert_eq!(archive_pending(&mut leases, &saved, now).await, 0);
        assert!(leases.contains_key(&lease), "kept for another try");
        assert!(file.exists(), "its state file stays");
        assert!(history.get(&lease).unwrap().is_none());
        assert_eq!(leases[&lease].retry_at, now.plus_ms(ARCHIVE_RETRY_MS));

        // The disk takes writes again: nothing moves before the wait is
        // over, then the next tick moves it.
        failing.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            archive_pending(&mut leases, &saved, now.plus_ms(1)).await,
            0
        );
        assert!(leases.contains_key(&lease));
        let later = now.plus_ms(ARCHIVE_RETRY_MS);
        assert_eq!(archive_pending(&mut leases, &saved, later).await, 1);
        assert!(leases.is_empty());
        assert!(!file.exists());
        let kept = history.get(&lease).unwrap().unwrap();
        assert!(kept.settled.as_ref().unwrap().closed);
        assert_eq!(history.len(), 1);
        assert_eq!(history.totals().settled, Credits::from_units(7_000));

        // A restart finds nothing left to move.
        let store = MarketStore::temporary().unwrap();
        assert!(restore(dir.path(), &store, &history).archived.is_empty());
        assert_eq!(history.totals().settled, Credits::from_units(7_000));
    }
}
