//! The customer role at run time: answers `bid`s from the local API by
//! taking the best matching offer now (proposal -> agreement with the
//! supplier over request-response, then escrow when coordinators are
//! configured) or, when asked to wait, by standing the bid until an offer
//! meets it; then watches the lease: every attestation that arrives by
//! gossip is checked and answered with a signed ack or dispute, each window
//! is recorded, spend is tracked against the lease's and the account's
//! caps, and budget alerts are raised. At a cap the node stops paying
//! further windows and signs a termination for the supplier. A bid's talk
//! with the supplier and the coordinators runs in a task of its own, one
//! bid at a time ([`super::inflight`]), and so does each termination and
//! escrow release (`super::chores`), so a slow or silent supplier or
//! coordinator holds up no acknowledgement; every change of state is made
//! in this task.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use libp2p::PeerId;
use rigmesh_ledger::MarketStore;
use rigmesh_protocol::rpc::{LeaseRequest, LeaseResponse};
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{
    Alert, Clock, Credits, Id, Keypair, LeaseAgreement, LeaseProposal, NodeBinding, PublicKey,
    Signed, UnixMillis, UsageAttestation, PROTOCOL_VERSION,
};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

use super::book::BookQuery;
use super::budget::Decision;
use super::chores::{Chores, Done, EndFor, Net, Release};
use super::inflight::{
    Agreed, BidDone, BidQueue, Caller, CallerWatch, Finished, Purpose, Queued, SlotDone, TopUp,
    TopUpsDone, MAX_QUEUED_BIDS,
};
use super::records::{
    AlertRecord, CustomerRecords, DisputeNote, LeaseRecord, WindowRecord, WindowStatus,
};
use super::report::{self, AccountReport, BudgetReport, LeaseState};
use super::spending::{BudgetChange, Spending};
use super::standing::{sign_bid, wait_of, BidState, StandingBids};
use super::usage::{LeaseWatch, Verdict};
use super::CustomerConfig;
use crate::network::{NodeHandle, Protocol};

/// How often standing bids are looked after (waits ended, publications
/// retried, the book searched again after a meeting offer arrived).
const STANDING_TICK_MS: u64 = 250;

/// Every this many ticks (2 s), running leases are checked against the
/// store for attestations gossip delivered but this task did not see,
/// and leases settled longer than the keep ago are let go.
const CATCH_UP_TICKS: u64 = 8;

/// How long a missing attestation is waited for before the watch goes on
/// from a later one.
const GAP_GRACE_MS: u64 = 3_000;

/// A running lease whose supplier attests nothing for this many windows
/// (and at least [`SILENCE_MIN_MS`]) is ended: the supplier is gone.
const SILENT_WINDOWS: u64 = 10;

/// The shortest silence that ends a lease.
const SILENCE_MIN_MS: u64 = 10_000;

/// How often an escrow release is asked for again while it is refused.
const RELEASE_RETRY_MS: u64 = 5_000;

/// How long a stopping node waits for its terminations under way: one
/// reaches the coordinators, then the supplier, each request within the
/// network's 10 s timeout.
const STOP_CHORES_WAIT: Duration = Duration::from_secs(25);

pub use super::commands::{
    BidError, BidOutcome, BidRequest, CustomerCommand, LeaseStatus, RequestError,
};

fn request_failed(err: crate::error::Error) -> RequestError {
    tracing::warn!(%err, "customer records");
    RequestError::Failed(err.to_string())
}

fn unread(err: tokio::task::JoinError) -> RequestError {
    tracing::warn!(%err, "a report was not read");
    RequestError::Failed(format!("the report was not read: {err}"))
}

struct Lease {
    gpu_model: String,
    agreement: Signed<LeaseAgreement>,
    watch: LeaseWatch,
    stopped_at_cap: bool,
    /// The escrow certified for the lease (its amount, once restarted from
    /// the records).
    escrowed: Option<Credits>,
    /// The customer ended it (`rigmesh end`) and the supplier took the
    /// termination: only the window then in progress is still answered.
    ended: bool,
    escrow: Option<rigmesh_protocol::EscrowCertificate>,
    /// What the final settlement paid out of the escrow, once certified.
    settled: Option<Credits>,
    /// When this node learnt of the final settlement (or resumed the
    /// lease finally settled); it is let go once the keep
    /// ([`Customer::keeping_settled_for`]) has passed since.
    settled_at: Option<UnixMillis>,
    /// Since when the next window's attestation is missing while later
    /// ones are here.
    gap_since: Option<UnixMillis>,
    /// When the supplier was last heard of on this lease (an attestation
    /// in the chain, or the lease's start here).
    last_heard: UnixMillis,
    /// When an escrow release was last asked for.
    release_tried: Option<UnixMillis>,
}

impl Lease {
    /// What the lease costs as the coordinators decide it: what the final
    /// settlement paid once it is certified; before, what the acked
    /// windows cost, never more than the escrow, since no coordinator pays
    /// past it.
    fn spent(&self) -> Credits {
        match (self.settled, self.escrowed) {
            (Some(paid), _) => paid,
            (None, Some(escrow)) => self.watch.spent().min(escrow),
            (None, None) => self.watch.spent(),
        }
    }

    /// Whether the lease still runs: not past its last window and not
    /// finally settled.
    fn running(&self) -> bool {
        self.settled.is_none() && !self.watch.finished()
    }
}

/// Where a lease this run watches is; the one place its state is decided,
/// so `leases`, `usage` and `account` say the same.
fn live_state(lease: &Lease) -> LeaseState {
    if lease.stopped_at_cap {
        LeaseState::StoppedAtCap
    } else if lease.ended || lease.watch.finished() {
        LeaseState::Ended
    } else {
        LeaseState::Running
    }
}

/// The leases of `leases` finally settled at least `keep` ms before
/// `now`, leaving out those `busy` names.
fn settled_before(
    leases: &BTreeMap<Id, Lease>,
    now: UnixMillis,
    keep: u64,
    busy: impl Fn(&Id) -> bool,
) -> Vec<Id> {
    leases
        .iter()
        .filter(|(_, l)| l.settled_at.is_some_and(|at| now.since(at) >= keep))
        .filter(|(id, _)| !busy(id))
        .map(|(id, _)| *id)
        .collect()
}

fn failed<E: std::fmt::Display>(e: E) -> BidError {
    BidError::Failed(e.to_string())
}

/// The peer an account's newest unexpired binding names, read from that
/// account's own bindings (at most its quota), not from every binding.
fn peer_of(store: &MarketStore, account: &PublicKey, now: UnixMillis) -> Result<PeerId, BidError> {
    store
        .by_author::<NodeBinding>(account, now)
        .map_err(failed)?
        .into_iter()
        .filter(|b| b.body.account == *account && b.body.expires_at > now)
        .max_by_key(|b| b.body.created_at)
        .and_then(|b| PeerId::from_bytes(&b.body.peer_id).ok())
        .ok_or_else(|| BidError::Failed(format!("no node binding known for supplier {account}")))
}

/// The customer role's state: its key, the market it reads, its leases,
/// caps and standing bids, and the records that keep them across restarts.
pub struct Customer {
    key: Keypair,
    store: Arc<MarketStore>,
    /// The live offers, held in memory: a bid reads them here, never by
    /// scanning the store.
    book: Arc<crate::orderbook::OrderBook>,
    network: NodeHandle,
    quorum: Option<crate::quorum::Quorum>,
    /// The coordinator set's terms (fee, grace period), to build escrow
    /// releases.
    rules: Option<rigmesh_ledger::CoordinatorConfig>,
    records: Arc<CustomerRecords>,
    leases: BTreeMap<Id, Lease>,
    spending: Spending,
    standing: StandingBids,
    /// The notifier, when notifications are configured.
    alerts_to: crate::notify::AlertSink,
    /// Where the hourly spend and GPU-hours of acked windows go.
    series: crate::trends::SeriesWriter,
    /// The bid whose network part runs in its own task, and those waiting
    /// behind it.
    bids: BidQueue,
    /// A cap was raised while a bid was in flight: the running leases'
    /// escrows are topped up once it ends (a top-up is a debit of the
    /// account too, and its amount depends on the bid's escrow).
    top_up_due: bool,
    /// Terminations and escrow releases under way in tasks of their own.
    chores: Chores,
    /// The node's stop signal, once [`run`] has it: no bid is started
    /// after it turns true, even by a step that was under way when it did.
    stopping: Option<watch::Receiver<bool>>,
    /// The reports being read in tasks of their own, at most
    /// [`REPORTS_AT_ONCE`].
    reports: Arc<tokio::sync::Semaphore>,
    /// Where the reports read and refused are counted.
    report_metrics: super::inflight::BidQueueMetrics,
    /// How long a finally settled lease stays among the leases the node
    /// watches (`GET /v1/leases`), in ms; its record answers for it after
    /// that (the account and usage reports), as after a restart.
    keep_settled_ms: u64,
}

/// A report's place among the [`REPORTS_AT_ONCE`]; given back when the
/// report is answered (or its task ends otherwise).
struct ReportSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    reading: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for ReportSlot {
    fn drop(&mut self) {
        self.reading.dec();
    }
}

/// Most reports (leases, usage, budget, account) read at once; one asked
/// beyond them is answered busy.
pub const REPORTS_AT_ONCE: usize = 4;

impl std::fmt::Debug for Customer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Customer")
            .field("account", &self.key.public())
            .field("leases", &self.leases.len())
            .finish_non_exhaustive()
    }
}

impl Customer {
    /// The customer of account `key`, with its records in `records_dir`
    /// (created on first start); leases are escrowed through `quorum` when
    /// a coordinator set is configured. Fails when the records cannot be
    /// opened or read: a node must not spend without the caps its user set.
    pub fn open(
        key: Keypair,
        store: Arc<MarketStore>,
        book: Arc<crate::orderbook::OrderBook>,
        network: NodeHandle,
        quorum: Option<crate::quorum::Quorum>,
        records_dir: &Path,
    ) -> crate::error::Result<Self> {
        let records = CustomerRecords::open(records_dir)?;
        Self::with_records(key, store, book, network, quorum, records)
    }

    /// The customer over already opened records.
    pub fn with_records(
        key: Keypair,
        store: Arc<MarketStore>,
        book: Arc<crate::orderbook::OrderBook>,
        network: NodeHandle,
        quorum: Option<crate::quorum::Quorum>,
        records: CustomerRecords,
    ) -> crate::error::Result<Self> {
        let spending = Spending::new(key.clone(), records.caps()?, &records.spends_by_lease())?;
        Ok(Customer {
            key,
            store,
            book,
            network,
            quorum,
            rules: None,
            records: Arc::new(records),
            leases: BTreeMap::new(),
            spending,
            standing: StandingBids::default(),
            alerts_to: crate::notify::AlertSink::default(),
            series: crate::trends::SeriesWriter::off(),
            bids: BidQueue::default(),
            top_up_due: false,
            chores: Chores::default(),
            stopping: None,
            reports: Arc::new(tokio::sync::Semaphore::new(REPORTS_AT_ONCE)),
            report_metrics: super::inflight::BidQueueMetrics::default(),
            keep_settled_ms: CustomerConfig::default()
                .keep_settled_secs
                .saturating_mul(1000),
        })
    }

    /// The customer's records, shared with the tasks that read them.
    pub fn records(&self) -> Arc<CustomerRecords> {
        Arc::clone(&self.records)
    }
}

impl Customer {
    /// Gets escrows back from suppliers that never settle, on the terms of
    /// the coordinator set (`rules`).
    pub fn with_rules(mut self, rules: rigmesh_ledger::CoordinatorConfig) -> Self {
        self.rules = Some(rules);
        self
    }

    /// Hands the alerts it raises (budget, lease ended, settlement) to
    /// `sink` as well as keeping them.
    pub fn with_alerts(mut self, sink: crate::notify::AlertSink) -> Self {
        self.alerts_to = sink;
        self
    }

    /// Records the spend and GPU time of each acked window, by the hour
    /// its window ends in, in `series`.
    pub fn with_series(mut self, series: crate::trends::SeriesWriter) -> Self {
        self.series = series;
        self
    }

    /// Keeps a finally settled lease among the leases the node watches
    /// for `secs` (`[customer] keep_settled_secs`) before letting it go.
    pub fn keeping_settled_for(mut self, secs: u64) -> Self {
        self.keep_settled_ms = secs.saturating_mul(1000);
        self
    }

    /// Counts the bid queue's depth and waits, and the reports read and
    /// refused, into `metrics`.
    pub fn with_bid_metrics(mut self, metrics: super::inflight::BidQueueMetrics) -> Self {
        self.report_metrics = metrics.clone();
        self.bids = BidQueue::new(metrics);
        self
    }

    /// Tells the customer's user about its own lease (never gossiped).
    /// Notifies the customer about its account (no lease).
    fn notify_account(&self, severity: rigmesh_protocol::Severity, rule: &str, message: String) {
        self.alerts_to.raise(&crate::notify::own_alert(
            self.key.public(),
            rigmesh_protocol::Audience::Customer,
            severity,
            rule,
            None,
            message,
        ));
    }

    fn notify(&self, severity: rigmesh_protocol::Severity, rule: &str, lease: Id, message: String) {
        self.alerts_to.raise(&crate::notify::own_alert(
            self.key.public(),
            rigmesh_protocol::Audience::Customer,
            severity,
            rule,
            Some(lease),
            message,
        ));
    }
}

/// Runs the customer role until `stop` turns true, answering `commands`
/// from the local API. A bid's talk with the supplier and the coordinators
/// runs in its own task (see [`super::inflight`]), so attestations are
/// answered while it waits; its outcome comes back here, where every
/// change of state is made.
pub async fn run(
    mut customer: Customer,
    mut commands: mpsc::Receiver<CustomerCommand>,
    mut stop: watch::Receiver<bool>,
) {
    let mut accepted = customer.network.subscribe();
    customer.stopping = Some(stop.clone());
    customer.resume().await;
    let mut tick = tokio::time::interval(Duration::from_millis(STANDING_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            biased;
            changed = stop.changed() => {
                let stopping = changed.is_err() || *stop.borrow();
                if stopping {
                    customer.stop_bids().await;
                    customer.stop_chores().await;
                    if let Err(err) = customer.records.off_executor(|r| r.flush()).await {
                        tracing::warn!(%err, "customer records not flushed");
                    }
                    return;
                }
            }
            Some(done) = customer.bids.done() => match done {
                SlotDone::Bid(finished) => customer.bid_finished(*finished).await,
                SlotDone::TopUps(done) => customer.top_ups_finished(done).await,
            },
            Some(command) = commands.recv() => customer.command(command).await,
            Some(done) = customer.chores.next() => customer.chore_done(done).await,
            message = accepted.recv() => match message {
                Ok(message) => customer.on_message(&message.message).await,
                // Messages were missed: one of them may have been an offer
                // a standing bid waits for.
                // Attestations among them are read back from the store.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "customer fell behind the accepted messages");
                    customer.standing.something_arrived();
                    customer.catch_up_all().await;
                }
                // The sender lives in the network handle this task holds.
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    customer.stop_bids().await;
                    return;
                }
            },
            _ = tick.tick() => {
                customer.look_after_standing_bids().await;
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(CATCH_UP_TICKS) {
                    customer.catch_up_all().await;
                    customer.end_silent_leases().await;
                    customer.release_unsettled().await;
                    customer.forget_settled(UnixMillis::now()).await;
                }
            }
        }
    }
}

/// Stores and gossips `message`; true when it reached peers.
async fn publish(network: &NodeHandle, message: &WireMessage, what: &str) -> bool {
    match network.publish(message).await {
        Ok(()) => true,
        Err(err) => {
            tracing::debug!(%err, what, "stored; not gossiped yet");
            false
        }
    }
}

/// Keeps budget alerts and hands them to the notifier. They stay on this
/// node: spend and caps are the account's own business, never gossiped.
async fn raise(
    records: &Arc<CustomerRecords>,
    alerts_to: &crate::notify::AlertSink,
    alerts: Vec<Signed<Alert>>,
) {
    alerts_to.raise_all(&alerts);
    if alerts.is_empty() {
        return;
    }
    let kept = records
        .off_executor(move |records| {
            for alert in &alerts {
                if let Err(err) =
                    AlertRecord::of(alert).and_then(|record| records.put_alert(&record))
                {
                    tracing::warn!(%err, "budget alert not recorded");
                }
            }
            Ok(())
        })
        .await;
    if let Err(err) = kept {
        tracing::warn!(%err, "budget alerts not recorded");
    }
}

fn record_of(lease: &Lease) -> LeaseRecord {
    let a = &lease.agreement.body;
    LeaseRecord {
        lease: lease.watch.lease(),
        supplier: a.supplier,
        gpu_model: lease.gpu_model.clone(),
        gpus: a.gpu_indices.clone(),
        price_per_gpu_hour: a.proposal.body.price_per_gpu_hour,
        hours: a.proposal.body.hours,
        window_ms: a.window_ms(),
        starts_at: a.starts_at,
        ends_at: a.ends_at,
        spent: lease.spent(),
        billable_gpu_ms: lease.watch.paid_gpu_ms(),
        acked_windows: lease.watch.acked_windows(),
        disputed_windows: lease.watch.dispute_count(),
        stopped_at_cap: lease.stopped_at_cap,
        escrowed: lease.escrowed,
        agreement: lease.agreement.to_bytes().ok().map(hex::encode),
        ended: lease.ended,
        contested: lease.watch.contested().cloned(),
        finally_settled: lease.settled.is_some(),
    }
}

/// Ends a lease at a budget cap: no further window is paid; the caller
/// stores the lease and hands the supplier a signed termination, so it
/// attests the window under way as the last one. Returns the
/// termination's detail.
fn stop_at_cap(lease: &mut Lease, cap: Credits, account: bool) -> String {
    let which = if account {
        "the account's"
    } else {
        "the lease's"
    };
    let id = lease.watch.lease();
    tracing::warn!(lease = %id, %cap, "{which} budget cap reached: ending the lease after this window");
    lease.stopped_at_cap = true;
    // The window under way is still answered, so the supplier is paid for
    // it on the customer's word rather than by the timeout.
    lease.watch.end_after_current_window(UnixMillis::now());
    format!("{which} budget cap {cap} reached")
}

/// Stores a lease's summary, on a blocking thread.
async fn store_lease(records: &Arc<CustomerRecords>, record: LeaseRecord) {
    let id = record.lease;
    if let Err(err) = records.off_executor(move |r| r.put_lease(&record)).await {
        tracing::warn!(%err, lease = %id, "lease not recorded");
    }
}

/// Rebuilds the watch of a stored lease that may still be running, from
/// its agreement and the attestations in the store; `None` for a lease
/// without an agreement or whose evidence was compacted.
fn resume_lease(
    store: &MarketStore,
    records: &CustomerRecords,
    key: &Keypair,
    record: &LeaseRecord,
    now: UnixMillis,
) -> Result<Option<Lease>, String> {
    let Some(text) = &record.agreement else {
        return Ok(None);
    };
    // A lease whose evidence this node compacted is finally settled and
    // has no chain left to replay: its record (spend, windows,
    // disputes) and its certificates are what this node says of it.
    if store
        .is_compacted(&record.lease)
        .map_err(|e| e.to_string())?
    {
        return Ok(None);
    }
    let bytes = hex::decode(text).map_err(|e| e.to_string())?;
    let agreement = Signed::<LeaseAgreement>::from_bytes(&bytes).map_err(|e| e.to_string())?;
    let mut watch = LeaseWatch::new(&agreement, key.clone()).map_err(|e| e.to_string())?;
    let answered = records
        .windows(&record.lease, 1)
        .map_err(|e| e.to_string())?
        .first()
        .map_or(0, |w| w.seq.saturating_add(1));
    if let Some(ended) = store
        .about_lease::<rigmesh_protocol::LeaseTermination>(&record.lease)
        .unwrap_or_default()
        .iter()
        .filter(|t| t.signer == key.public())
        .map(|t| t.body.created_at)
        .min()
    {
        watch.end_after_current_window(ended);
    }
    let mut chain = store
        .about_lease::<UsageAttestation>(&record.lease)
        .unwrap_or_default();
    chain.retain(|a| a.body.seq < answered && a.signer == record.supplier);
    chain.sort_by_key(|a| a.body.seq);
    for attestation in &chain {
        // Answered before the restart: only the watch's state is
        // rebuilt, nothing is signed or sent again.
        if attestation.body.seq == watch.next_seq() {
            watch.check(attestation, now).map_err(|e| e.to_string())?;
        }
    }
    watch.contest(record.contested.clone());
    let settlement = crate::receipts::lease_settlement(store, &record.lease);
    let lease = Lease {
        gpu_model: record.gpu_model.clone(),
        agreement,
        watch,
        stopped_at_cap: record.stopped_at_cap,
        escrowed: record.escrowed,
        escrow: None,
        settled: settlement.closed.then_some(settlement.paid),
        settled_at: settlement.closed.then_some(now),
        gap_since: None,
        last_heard: UnixMillis::now(),
        release_tried: None,
        ended: record.ended,
    };
    Ok(Some(lease))
}

/// The bid's wait, or why the bid is invalid, before anything is asked
/// of the network.
fn check_bid(request: &BidRequest) -> Result<Option<u64>, BidError> {
    let wait = wait_of(request)?;
    if let Some(cap) = request.budget {
        if cap.is_negative() || cap.is_zero() {
            return Err(BidError::Invalid(format!(
                "the budget is {cap}; it must be above zero (leave it out for no cap)"
            )));
        }
    }
    Ok(wait)
}

fn reason_of(err: &BidError) -> String {
    match err {
        BidError::NoMatch(why) => why.clone(),
        other => other.to_string(),
    }
}

impl Customer {
    async fn command(&mut self, command: CustomerCommand) {
        let now = UnixMillis::now();
        match command {
            CustomerCommand::Bid(request, reply) => self.bid_command(request, reply).await,
            CustomerCommand::Leases(reply) => {
                let slot = match self.report_slot() {
                    Ok(slot) => slot,
                    Err(busy) => return drop(reply.send(Err(busy))),
                };
                let mut leases: Vec<LeaseStatus> = self.leases.values().map(status_of).collect();
                let store = self.quorum.is_some().then(|| Arc::clone(&self.store));
                tokio::spawn(async move {
                    let result = match store {
                        None => Ok(leases),
                        Some(store) => tokio::task::spawn_blocking(move || {
                            for status in &mut leases {
                                status.settlement =
                                    Some(crate::receipts::lease_settlement(&store, &status.lease));
                            }
                            leases
                        })
                        .await
                        .map_err(unread),
                    };
                    drop(slot);
                    let _ = reply.send(result);
                });
            }
            CustomerCommand::Bids(reply) => {
                let _ = reply.send(self.standing.list(now));
            }
            CustomerCommand::BidStatus(id, reply) => {
                let _ = reply.send(self.standing.status(&id, now));
            }
            CustomerCommand::CancelBid(id, reply) => {
                let result = match self.standing.status(&id, now) {
                    None => Err(RequestError::NotFound(format!("no bid {id} on this node"))),
                    // Its lease is being agreed: cancelling now could leave
                    // a lease nobody asked for.
                    Some(_) if self.bids.standing_in_flight() == Some(id) => {
                        Err(RequestError::Conflict(format!(
                            "bid {id} is being agreed with a supplier right now; ask again in a \
                             moment (it is then leased, or waiting again)"
                        )))
                    }
                    Some(status) if status.state != BidState::Waiting => {
                        Err(RequestError::Conflict(format!(
                            "bid {id} is no longer waiting ({:?})",
                            status.state
                        )))
                    }
                    Some(_) => {
                        tracing::info!(bid = %id, "standing bid cancelled");
                        self.standing
                            .finish(&id, BidState::Cancelled, None, None, now)
                            .ok_or_else(|| RequestError::NotFound(format!("no bid {id}")))
                    }
                };
                let _ = reply.send(result);
            }
            CustomerCommand::Usage(lease, limit, reply) => {
                let slot = match self.report_slot() {
                    Ok(slot) => slot,
                    Err(busy) => return drop(reply.send(Err(busy))),
                };
                let live = self.leases.get(&lease).map(live_state);
                let caps = self.spending.caps().clone();
                let records = Arc::clone(&self.records);
                tokio::spawn(async move {
                    let result = records
                        .off_executor(move |r| {
                            let state = |r: &LeaseRecord| report::state_of(r, live, now);
                            report::usage(r, &caps, &lease, limit, &state)
                        })
                        .await
                        .map_err(request_failed)
                        .and_then(|found| {
                            found.ok_or_else(|| {
                                RequestError::NotFound(format!("no lease {lease} on this node"))
                            })
                        });
                    drop(slot);
                    let _ = reply.send(result);
                });
            }
            CustomerCommand::ForecastAlert(lease, message, reply) => {
                let alert = Signed::sign(
                    Alert {
                        version: PROTOCOL_VERSION,
                        issuer: self.key.public(),
                        severity: rigmesh_protocol::Severity::Warning,
                        audience: rigmesh_protocol::Audience::Customer,
                        rule: "forecast.cap".into(),
                        about: Some(self.key.public()),
                        subject: lease,
                        message,
                        created_at: now,
                    },
                    &self.key,
                );
                match alert {
                    Ok(alert) => {
                        tracing::warn!(message = %alert.body.message, "forecast alert");
                        raise(&self.records, &self.alerts_to, vec![alert]).await;
                        let _ = reply.send(());
                    }
                    Err(err) => tracing::warn!(%err, "forecast alert not signed"),
                }
            }
            CustomerCommand::Budget(reply) => {
                let slot = match self.report_slot() {
                    Ok(slot) => slot,
                    Err(busy) => return drop(reply.send(Err(busy))),
                };
                let report = self.budget_report();
                tokio::spawn(async move {
                    let result = report.await;
                    drop(slot);
                    let _ = reply.send(result);
                });
            }
            CustomerCommand::SetBudget(change, reply) => {
                let result = self.set_budget(change).await;
                let _ = reply.send(result);
            }
            CustomerCommand::Contest(lease, contest, reply) => {
                let result = match self.leases.get_mut(&lease) {
                    None => Err(self.not_watched(&lease)),
                    Some(l) => {
                        l.watch.contest(contest.clone());
                        store_lease(&self.records, record_of(l)).await;
                        Ok(status_of(l))
                    }
                };
                if let (Ok(_), Some(c)) = (&result, &contest) {
                    tracing::warn!(%lease, reason = ?c.reason, detail = %c.detail, "the customer disputes the lease's windows from now on");
                    self.notify(
                        rigmesh_protocol::Severity::Warning,
                        "dispute.opened",
                        lease,
                        format!(
                            "lease {lease}: every window from now on is disputed ({:?}: {}); \
                             the coordinators hold their charge for review",
                            c.reason, c.detail
                        ),
                    );
                }
                let _ = reply.send(result);
            }
            CustomerCommand::EndLease(lease, reply) => {
                let refused = match self.leases.get(&lease) {
                    None => Some(self.not_watched(&lease)),
                    Some(l) if l.stopped_at_cap => Some(RequestError::Conflict(format!(
                        "lease {lease} has already ended: the budget cap stopped it"
                    ))),
                    Some(l) if l.ended => Some(RequestError::Conflict(format!(
                        "lease {lease} has already ended: you ended it; its final settlement \
                         refunds the rest of the escrow"
                    ))),
                    Some(l) if l.watch.finished() => Some(RequestError::Conflict(format!(
                        "lease {lease} has already ended: its time is up"
                    ))),
                    Some(_) => self.chores.under_way(&lease).map(|chore| {
                        RequestError::Conflict(format!(
                            "lease {lease} has its {chore} under way; ask again when it is done"
                        ))
                    }),
                };
                if let Some(err) = refused {
                    let _ = reply.send(Err(err));
                    return;
                }
                // The termination goes out in its own task; its outcome is
                // taken in by `chore_done`, which answers the caller.
                let net = self.net();
                if let Some(l) = self.leases.get(&lease) {
                    let started = self.chores.end(
                        &net,
                        l.agreement.clone(),
                        rigmesh_protocol::TerminationReason::CustomerRequest,
                        "ended by the customer".into(),
                        EndFor::User { at: now, reply },
                    );
                    if let Err(EndFor::User { reply, .. }) = started {
                        let _ = reply.send(Err(RequestError::Failed(format!(
                            "lease {lease}'s termination could not be started"
                        ))));
                    }
                }
            }
            CustomerCommand::Account(ask, reply) => {
                let slot = match self.report_slot() {
                    Ok(slot) => slot,
                    Err(busy) => return drop(reply.send(Err(busy))),
                };
                let report = self.account_report(now, ask);
                tokio::spawn(async move {
                    let result = report.await;
                    drop(slot);
                    let _ = reply.send(result);
                });
            }
        }
    }

    /// A slot to read a report in its own task, or busy when
    /// [`REPORTS_AT_ONCE`] are being read.
    fn report_slot(&self) -> Result<ReportSlot, RequestError> {
        match Arc::clone(&self.reports).try_acquire_owned() {
            Ok(permit) => {
                let reading = self.report_metrics.reports_reading.clone();
                reading.inc();
                Ok(ReportSlot {
                    _permit: permit,
                    reading,
                })
            }
            Err(_) => {
                self.report_metrics.reports_busy.inc();
                Err(RequestError::Busy(format!(
                    "{REPORTS_AT_ONCE} reports are being read already; ask again in a moment"
                )))
            }
        }
    }

    /// The account report, read without this task: the leases as they
    /// stand now, then the records on a blocking thread (the `leases`
    /// that start last), what each coordinator holds, and the `receipts`
    /// most recent receipts from the store.
    fn account_report(
        &self,
        now: UnixMillis,
        ask: super::commands::AccountAsk,
    ) -> impl std::future::Future<Output = Result<AccountReport, RequestError>> + Send + 'static
    {
        let live: BTreeMap<Id, LeaseState> = self
            .leases
            .iter()
            .map(|(id, lease)| (*id, live_state(lease)))
            .collect();
        let caps = self.spending.caps().clone();
        let records = Arc::clone(&self.records);
        let store = Arc::clone(&self.store);
        let quorum = self.quorum.clone();
        let key = self.key.clone();
        let admins = self
            .rules
            .as_ref()
            .map_or_else(Vec::new, |r| r.admins.clone());
        async move {
            let account = key.public();
            let mut report = records
                .off_executor(move |r| report::account(r, &caps, account, &live, now, ask.leases))
                .await
                .map_err(request_failed)?;
            if let Some(quorum) = &quorum {
                report.coordinators = quorum
                    .accounts(&key, account)
                    .await
                    .into_iter()
                    .map(|s| report::CoordinatorView {
                        coordinator: s.coordinator,
                        balance: s.balance,
                        escrowed: s.escrowed,
                        next_seq: s.next_seq,
                    })
                    .collect();
            }
            let set = quorum.map(|q| q.set().clone());
            let found = tokio::task::spawn_blocking(move || {
                crate::receipts::receipts(&store, set.as_ref(), &admins, &account, ask.receipts)
            })
            .await
            .map_err(unread)?;
            report.receipts = found.listed;
            report.receipts_total = found.total;
            Ok(report)
        }
    }

    /// The most a new lease may escrow: its own cap and what the account's
    /// cap leaves after every other lease's escrow (or, once settled, what
    /// it cost). Refuses the bid, before any GPU is taken, when the
    /// account's cap leaves nothing.
    fn escrow_limit(&self, request: &BidRequest) -> Result<Option<Credits>, BidError> {
        let mut limit = request.budget;
        if let Some(cap) = self.spending.caps().account {
            let committed = self.committed()?;
            let left = cap.checked_sub(committed).unwrap_or(Credits::ZERO);
            if left <= Credits::ZERO {
                return Err(BidError::Refused(format!(
                    "the account's budget cap {cap} is taken by what other leases escrowed or spent ({committed}); raise it with `rigmesh budget set --account`"
                )));
            }
            limit = Some(limit.map_or(left, |l| l.min(left)));
        }
        Ok(limit)
    }

    /// Takes in the escrow of a lease this node had ordered but whose
    /// order gathered no quorum at the time (the bid failed, or the node
    /// stopped), now completed (settlement.md 14.2). The lease never ran
    /// here: it is ended at once, the termination held by the
    /// coordinators, and the escrow comes back by release once the grace
    /// period has passed, like any lease its supplier does not settle.
    async fn adopt_escrow(&mut self, completed: crate::quorum::Completed) {
        let (
            rigmesh_protocol::rpc::DebitRequest::Escrow { agreement, .. },
            rigmesh_protocol::rpc::CertificateFrame::Escrow(certificate),
        ) = (completed.debit, completed.certificate)
        else {
            return;
        };
        let Ok(id) = agreement.id() else { return };
        let amount = certificate.message.body.amount;
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.escrowed = Some(amount);
            lease.escrow = Some(*certificate);
            return;
        }
        let Ok(watch) = LeaseWatch::new(&agreement, self.key.clone()) else {
            return;
        };
        tracing::warn!(lease = %id, %amount, "an escrow ordered earlier is certified for a lease that never ran; ending it so that the escrow comes back");
        let net = self.net();
        let _ = self.chores.end(
            &net,
            agreement.clone(),
            rigmesh_protocol::TerminationReason::Other,
            "its escrow was certified after the bid had failed".into(),
            EndFor::Unused,
        );
        let lease = Lease {
            gpu_model: String::new(),
            agreement,
            watch,
            stopped_at_cap: false,
            escrowed: Some(amount),
            ended: true,
            escrow: Some(*certificate),
            settled: None,
            settled_at: None,
            gap_since: None,
            last_heard: UnixMillis::now(),
            release_tried: None,
        };
        store_lease(&self.records, record_of(&lease)).await;
        self.leases.insert(id, lease);
    }

    /// The budget report as the caps stand now, read from the records
    /// on a blocking thread.
    fn budget_report(
        &self,
    ) -> impl std::future::Future<Output = Result<BudgetReport, RequestError>> + Send + 'static
    {
        let caps = self.spending.caps().clone();
        let records = Arc::clone(&self.records);
        async move {
            records
                .off_executor(move |r| report::budget(r, &caps))
                .await
                .map_err(request_failed)
        }
    }

    /// A `bid` from the local API: checked at once, then started when no
    /// bid is in flight, queued behind it otherwise, and answered busy when
    /// the queue is full.
    async fn bid_command(
        &mut self,
        request: BidRequest,
        reply: tokio::sync::oneshot::Sender<Result<BidOutcome, BidError>>,
    ) {
        let wait = match check_bid(&request) {
            Ok(wait) => wait,
            Err(err) => {
                let _ = reply.send(Err(err));
                return;
            }
        };
        if self.bids.busy() {
            if self.bids.refuses_another() {
                tracing::warn!(
                    queued = MAX_QUEUED_BIDS,
                    "the bid queue is full; a bid is answered busy"
                );
                let _ = reply.send(Err(BidError::Busy(format!(
                    "{MAX_QUEUED_BIDS} bids already wait for the one being agreed; try again shortly"
                ))));
            } else {
                self.bids.enqueue(Queued::new(request, reply, wait));
            }
            return;
        }
        self.bids.went_at_once();
        let reply = Caller::new(reply);
        self.start_bid(request, Purpose::Command { reply, wait })
            .await;
        self.start_next().await;
    }

    /// Starts the network part of a bid (an earlier debit completed, the
    /// proposal, the agreement, the escrow) in its own task, with the
    /// escrow limit the account's state allows at this moment; a bid the
    /// account's cap refuses is concluded at once. Only called when no
    /// bid is in flight, so no other escrow can be ordered until it ends.
    async fn start_bid(&mut self, request: BidRequest, purpose: Purpose) {
        let limit = match self.escrow_limit(&request) {
            Ok(limit) => limit,
            Err(err) => {
                self.conclude(request, purpose, Err(err)).await;
                return;
            }
        };
        let key = self.key.clone();
        let store = self.store.clone();
        let book = self.book.clone();
        let network = self.network.clone();
        let quorum = self.quorum.clone();
        let asked = request.clone();
        let caller = match &purpose {
            Purpose::Command { reply, .. } => reply.watch(),
            Purpose::Standing { .. } => CallerWatch::nobody(),
        };
        self.bids.launch(request, purpose, async move {
            let mut orphans = Vec::new();
            if let Some(quorum) = &quorum {
                match quorum.complete_pending(&key).await {
                    Ok(completed) => orphans.extend(completed),
                    Err(err) => {
                        return BidDone {
                            result: Err(BidError::Refused(format!(
                                "escrow not possible now: {err}"
                            ))),
                            orphans,
                        }
                    }
                }
            }
            let result = bid(
                &key,
                &store,
                &book,
                &network,
                quorum.as_ref(),
                &asked,
                limit,
                &caller,
                &mut orphans,
            )
            .await;
            BidDone { result, orphans }
        });
    }

    /// The bid in flight ended: its outcome is taken in, and the next bid
    /// (queued, or a standing bid's look at the book) starts.
    /// The leases running now.
    fn running_leases(&self) -> Vec<Id> {
        self.leases
            .iter()
            .filter(|(_, l)| live_state(l) == LeaseState::Running)
            .map(|(id, _)| *id)
            .collect()
    }

    async fn bid_finished(&mut self, finished: Finished) {
        self.take_in(finished).await;
        self.start_next().await;
    }

    /// Takes in a bid's outcome: escrows completed on the way are adopted,
    /// the lease is recorded and watched, and the caller is answered (or
    /// the bid stands); then the top-ups a raised cap waited for are made.
    async fn take_in(&mut self, finished: Finished) {
        let Finished {
            request,
            purpose,
            done,
        } = finished;
        let result = match done {
            Ok(BidDone { result, orphans }) => {
                for completed in orphans {
                    self.adopt_escrow(completed).await;
                }
                match result {
                    Ok(agreed) => self.start_lease(&request, agreed).await,
                    Err(err) => Err(err),
                }
            }
            Err(err) => {
                tracing::error!(%err, gpu = %request.gpu, "a bid's task ended without an outcome");
                Err(BidError::Failed(format!(
                    "the bid stopped before it was agreed: {err}"
                )))
            }
        };
        self.conclude(request, purpose, result).await;
        if !self.bids.busy() && std::mem::take(&mut self.top_up_due) {
            let running = self.running_leases();
            self.start_top_ups(&running);
        }
    }

    /// Starts the next bid while none is in flight: the local API's
    /// queued bids first, then the standing bids' looks at the book. None
    /// once the node is stopping: a step under way when the stop came (a
    /// tick's publication, a bid's end as the network goes) would start a
    /// queued bid on a network that is gone, where [`Customer::stop_bids`]
    /// answers it that it was not placed.
    async fn start_next(&mut self) {
        while !self.bids.busy() && !self.is_stopping() {
            if let Some(bid) = self.bids.next_queued() {
                let purpose = Purpose::Command {
                    reply: Caller::new(bid.reply),
                    wait: bid.wait,
                };
                self.start_bid(bid.request, purpose).await;
            } else if let Some((id, request, last)) = self.next_standing_look() {
                self.start_bid(request, Purpose::Standing { id, last })
                    .await;
            } else {
                break;
            }
        }
    }

    fn is_stopping(&self) -> bool {
        self.stopping.as_ref().is_some_and(|stop| *stop.borrow())
    }

    /// The node is stopping: queued bids are answered that they were not
    /// placed, and the bid in flight is waited for and taken in, so an
    /// escrow it got is recorded (and watched again after a restart)
    /// rather than left unknown to this node.
    async fn stop_bids(&mut self) {
        for bid in self.bids.drain() {
            let _ = bid.reply.send(Err(BidError::Busy(
                "the node is stopping; the bid was not placed".into(),
            )));
        }
        if self.bids.busy() {
            tracing::info!("stopping: waiting for the bid being agreed");
        }
        if let Some(finished) = self.bids.finished().await {
            self.take_in(finished).await;
        }
        // Top-ups in flight (or started by that bid's end) are waited for
        // too, so the escrow they add is recorded.
        if let Some(done) = self.bids.top_ups_finished().await {
            self.take_in_top_ups(done).await;
        }
    }

    /// Answers a bid's caller, or records a standing bid's look at the
    /// book.
    async fn conclude(
        &mut self,
        request: BidRequest,
        purpose: Purpose,
        result: Result<LeaseStatus, BidError>,
    ) {
        let now = UnixMillis::now();
        match purpose {
            Purpose::Command { reply, wait } => {
                let outcome = match result {
                    Ok(status) => Ok(BidOutcome::Leased(status)),
                    // A bid nobody waits for does not stand.
                    Err(err) if reply.is_gone() => Err(err),
                    Err(err) => self.stand(request, wait, err).await,
                };
                if let Some(unanswered) = reply.answer(outcome) {
                    self.bids.abandoned();
                    self.caller_left(unanswered).await;
                }
            }
            Purpose::Standing { id, last } => match result {
                Ok(lease) => {
                    tracing::info!(bid = %id, lease = %lease.lease, "standing bid leased");
                    self.standing
                        .finish(&id, BidState::Leased, None, Some(lease), now);
                }
                Err(err) if last => {
                    tracing::info!(bid = %id, why = %reason_of(&err), "the wait ended with no lease");
                    self.standing
                        .finish(&id, BidState::NoMatch, Some(reason_of(&err)), None, now);
                }
                Err(err) => self.standing.attempted(&id, reason_of(&err), now),
            },
        }
    }

    /// Stands a bid that leased nothing now, when it may wait.
    async fn stand(
        &mut self,
        request: BidRequest,
        wait: Option<u64>,
        err: BidError,
    ) -> Result<BidOutcome, BidError> {
        let Some(secs) = wait else {
            return Err(err);
        };
        let now = UnixMillis::now();
        let bid = sign_bid(
            &self.key,
            &request,
            now,
            now.plus_ms(secs.saturating_mul(1000)),
        )?;
        let published = publish(&self.network, &WireMessage::Bid(bid.clone()), "bid").await;
        let status = self
            .standing
            .place(&bid, request, reason_of(&err), published, now)?;
        tracing::info!(bid = %status.id, gpu = %status.gpu, count = status.count, wait_secs = secs, why = %reason_of(&err), "nothing matches now; the bid stands");
        Ok(BidOutcome::Waiting(status))
    }

    /// A bid's caller stopped waiting (its request timed out, its
    /// connection closed) before the bid's outcome: a lease it made is
    /// ended at once rather than run for someone who was told nothing
    /// (and who may well bid again), and the user is notified; the
    /// escrow comes back by its final settlement or release. A bid that
    /// came to stand meanwhile stays listed in `bids`, where it can be
    /// cancelled.
    async fn caller_left(&mut self, outcome: Result<BidOutcome, BidError>) {
        let status = match outcome {
            Ok(BidOutcome::Leased(status)) => status,
            Ok(BidOutcome::Waiting(status)) => {
                tracing::info!(bid = %status.id, "a bid's caller left before it was answered; the bid stands");
                return;
            }
            Err(err) => {
                tracing::info!(why = %reason_of(&err), "a bid's caller left before it was answered");
                return;
            }
        };
        let lease = status.lease;
        let now = UnixMillis::now();
        let net = self.net();
        let Some(l) = self.leases.get_mut(&lease) else {
            return;
        };
        tracing::warn!(%lease, "a bid's caller left before it was answered; the lease it made is ended at once");
        let agreement = l.agreement.clone();
        l.watch.end_after_current_window(now);
        l.ended = true;
        store_lease(&self.records, record_of(l)).await;
        let _ = self.chores.end(
            &net,
            agreement,
            rigmesh_protocol::TerminationReason::Other,
            "the bid that made it was not answered: its caller had left".into(),
            EndFor::Unused,
        );
        self.notify(
            rigmesh_protocol::Severity::Warning,
            "lease.ended",
            lease,
            format!(
                "lease {lease} ended at once: the bid that made it was not answered (its request timed out or its connection closed); it stops after the window under way"
            ),
        );
    }

    /// Starts watching a lease its bid agreed, records it and its cap.
    async fn start_lease(
        &mut self,
        request: &BidRequest,
        (agreement, escrow, status): Agreed,
    ) -> Result<LeaseStatus, BidError> {
        let watch = LeaseWatch::new(&agreement, self.key.clone()).map_err(failed)?;
        let lease = Lease {
            gpu_model: status.gpu_model.clone(),
            agreement,
            watch,
            stopped_at_cap: false,
            escrowed: escrow.as_ref().map(|c| c.message.body.amount),
            ended: false,
            escrow,
            settled: None,
            settled_at: None,
            gap_since: None,
            last_heard: UnixMillis::now(),
            release_tried: None,
        };
        store_lease(&self.records, record_of(&lease)).await;
        self.leases.insert(status.lease, lease);
        if let Some(cap) = request.budget {
            let mut caps = self.spending.caps().clone();
            caps.leases.insert(status.lease, cap);
            let kept = caps.clone();
            match self.records.off_executor(move |r| r.put_caps(&kept)).await {
                Ok(()) => {
                    let alerts = self.spending.set_lease(
                        status.lease,
                        Some(cap),
                        Credits::ZERO,
                        UnixMillis::now(),
                    );
                    if let Err(err) = alerts {
                        tracing::warn!(%err, "budget not tracked");
                    }
                }
                Err(err) => tracing::warn!(%err, "the lease's budget was not recorded"),
            }
        }
        Ok(status)
    }

    /// Ends the waits that are over, publishes bids that have not reached
    /// peers yet, and, when no bid is in flight, starts the next look at
    /// the book for a standing bid (while one is, the looks wait for a
    /// later tick or for its end).
    async fn look_after_standing_bids(&mut self) {
        if !self.standing.any_waiting() {
            return;
        }
        let now = UnixMillis::now();
        for (id, request, until) in self.standing.republish_due(now) {
            let published = match sign_bid(&self.key, &request, now, until) {
                Ok(bid) => publish(&self.network, &WireMessage::Bid(bid), "bid").await,
                Err(err) => {
                    tracing::warn!(%err, "could not sign the bid again");
                    false
                }
            };
            self.standing.republished(&id, published, now);
        }
        self.start_next().await;
    }

    /// The next standing bid to look at the book for: one whose wait is
    /// over (a last look, so the reason given is the book as it is now),
    /// else, after a meeting offer arrived, each waiting bid in turn.
    fn next_standing_look(&mut self) -> Option<(Id, BidRequest, bool)> {
        if !self.standing.any_waiting() {
            self.bids.standing_search.clear();
            return None;
        }
        let now = UnixMillis::now();
        if let Some(id) = self.standing.due(now).into_iter().next() {
            if let Some(request) = self.standing.request(&id) {
                return Some((id, request, true));
            }
        }
        if self.standing.take_dirty() {
            self.bids.standing_search = self
                .standing
                .waiting()
                .into_iter()
                .map(|(id, _)| id)
                .collect();
        }
        while let Some(id) = self.bids.standing_search.pop_front() {
            if let Some(request) = self.standing.request(&id) {
                return Some((id, request, false));
            }
        }
        None
    }

    /// Goes on watching the leases that were running when the node
    /// stopped: each is rebuilt from its stored agreement, the windows
    /// already answered are replayed from the store without answering them
    /// again, and the rest are answered now.
    /// The records are read and the leases rebuilt on a blocking thread.
    async fn resume(&mut self) {
        let (store, key) = (Arc::clone(&self.store), self.key.clone());
        let now = UnixMillis::now();
        let resumed = self
            .records
            .off_executor(move |records| {
                let mut resumed = Vec::new();
                for record in records.unsettled_leases()? {
                    match resume_lease(&store, records, &key, &record, now) {
                        Ok(Some(lease)) => resumed.push((record.lease, lease)),
                        Ok(None) => {}
                        Err(err) => {
                            tracing::warn!(lease = %record.lease, %err, "lease not resumed");
                        }
                    }
                }
                Ok(resumed)
            })
            .await;
        let resumed = match resumed {
            Ok(resumed) => resumed,
            Err(err) => {
                tracing::warn!(%err, "leases not resumed");
                return;
            }
        };
        for (id, lease) in resumed {
            if self.leases.contains_key(&id) {
                continue;
            }
            tracing::info!(lease = %id, next = lease.watch.next_seq(), "watching the lease again");
            self.leases.insert(id, lease);
            self.catch_up(id).await;
        }
    }

    /// Answers, from the store, the attestations of every running lease
    /// that this node has not seen yet.
    async fn catch_up_all(&mut self) {
        let running: Vec<Id> = self
            .leases
            .iter()
            .filter(|(_, l)| l.running())
            .map(|(id, _)| *id)
            .collect();
        for id in running {
            self.catch_up(id).await;
        }
    }

    /// Answers, from the store, the attestations of `id` from the next one
    /// the watch expects.
    async fn catch_up(&mut self, id: Id) {
        let Some(lease) = self.leases.get(&id) else {
            return;
        };
        if !lease.running() {
            return;
        }
        let next = lease.watch.next_seq();
        let supplier = lease.watch.supplier();
        let mut missed: Vec<Signed<UsageAttestation>> = self
            .store
            .about_lease_windows::<UsageAttestation>(&id, next, None)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.signer == supplier)
            .collect();
        // Past a gap, only what fits the schedule is taken as the missed
        // continuation; a forged jump ahead is answered (disputed) as it
        // arrived, not skipped to.
        missed.retain(|a| a.body.seq == next || lease.watch.on_schedule(&a.body));
        missed.sort_by_key(|a| a.body.seq);
        let now = UnixMillis::now();
        for attestation in missed {
            let Some(lease) = self.leases.get_mut(&id) else {
                return;
            };
            let expected = lease.watch.next_seq();
            if attestation.body.seq > expected {
                // A gap: wait a little for the missing window; if it never
                // comes (this node was down when it was gossiped), go on
                // from here rather than stop answering the lease.
                let since = *lease.gap_since.get_or_insert(now);
                if now.since(since) < GAP_GRACE_MS {
                    return;
                }
                tracing::info!(lease = %id, from = expected, to = attestation.body.seq, "windows never seen here are left to the coordinators' timeout");
                lease
                    .watch
                    .skip_to(attestation.body.seq, attestation.body.prev);
            }
            lease.gap_since = None;
            self.answer_attestation(&attestation).await;
        }
    }

    /// Ends the escrowed leases whose supplier has gone silent, so their
    /// escrow can come back (the coordinators then pay no later window).
    async fn end_silent_leases(&mut self) {
        let now = UnixMillis::now();
        let silent: Vec<Id> = self
            .leases
            .iter()
            .filter(|(_, l)| l.escrowed.is_some() && l.running() && !l.stopped_at_cap && !l.ended)
            .filter(|(id, _)| self.chores.under_way(id).is_none())
            .filter(|(_, l)| {
                let silence = l
                    .agreement
                    .body
                    .window_ms()
                    .saturating_mul(SILENT_WINDOWS)
                    .max(SILENCE_MIN_MS);
                now.since(l.last_heard) > silence
            })
            .map(|(id, _)| *id)
            .collect();
        let net = self.net();
        for id in silent {
            let Some(lease) = self.leases.get_mut(&id) else {
                continue;
            };
            tracing::warn!(lease = %id, "the supplier attested nothing for too long: ending the lease");
            lease.ended = true;
            lease.watch.end_after_current_window(now);
            let _ = self.chores.end(
                &net,
                lease.agreement.clone(),
                rigmesh_protocol::TerminationReason::SupplierMisbehaviour,
                "no attestation for too long".into(),
                EndFor::Silent,
            );
            store_lease(&self.records, record_of(lease)).await;
            self.notify(
                rigmesh_protocol::Severity::Warning,
                "lease.ended",
                id,
                format!("lease {id} ended: its supplier attested nothing for too long"),
            );
        }
    }

    /// Asks for the escrow back of every lease that ended more than the
    /// set's grace period ago with no final settlement (settlement.md
    /// 8.5), each in a task of its own (`super::chores`).
    async fn release_unsettled(&mut self) {
        let (Some(rules), Some(_)) = (self.rules.clone(), self.quorum.as_ref()) else {
            return;
        };
        let now = UnixMillis::now();
        let due: Vec<Id> = self
            .leases
            .iter()
            .filter(|(_, l)| l.escrowed.is_some() && l.settled.is_none())
            .filter(|(id, _)| self.chores.under_way(id).is_none())
            .filter(|(_, l)| {
                l.release_tried
                    .is_none_or(|t| now.since(t) >= RELEASE_RETRY_MS)
            })
            .filter(|(_, l)| {
                let ended = super::release::ended_at(&self.store, &l.agreement, &self.key);
                now >= ended.plus_ms(rules.release_grace_ms)
            })
            .map(|(id, _)| *id)
            .collect();
        let net = self.net();
        for id in due {
            let Some(lease) = self.leases.get_mut(&id) else {
                continue;
            };
            if self
                .chores
                .release(&net, rules.clone(), lease.agreement.clone())
            {
                lease.release_tried = Some(now);
            }
        }
    }

    /// Why a lease the node does not watch cannot be ended or disputed:
    /// it is one of the account's, finally settled and let go (or not
    /// watched again after a restart), or it is not known here.
    fn not_watched(&self, lease: &Id) -> RequestError {
        match self.records.finally_settled(lease) {
            Some(true) => RequestError::Conflict(format!(
                "lease {lease} has ended and is finally settled; `rigmesh usage` and \
                 `rigmesh account` show what it cost"
            )),
            Some(false) => RequestError::Conflict(format!(
                "this node does not watch lease {lease} (it could not be resumed after a \
                 restart; see the node's log); `rigmesh usage` shows what it recorded"
            )),
            None => RequestError::NotFound(format!("lease {lease}")),
        }
    }

    /// Lets go of the leases finally settled longer than the keep ago
    /// with nothing under way for them: nothing
    /// more is answered or paid on them, and their records hold what the
    /// reports show. The node's passes and its lease list then cost what
    /// its recent leases do, not every lease of its run.
    async fn forget_settled(&mut self, now: UnixMillis) {
        let chores = &self.chores;
        let done = settled_before(&self.leases, now, self.keep_settled_ms, |id| {
            chores.under_way(id).is_some()
        });
        for id in &done {
            let Some(lease) = self.leases.remove(id) else {
                continue;
            };
            // One found settled in the store at a restart has a record
            // written before: it says so now, so that the next start
            // does not read it back.
            if self.records.finally_settled(id) == Some(false) {
                store_lease(&self.records, record_of(&lease)).await;
            }
        }
        if !done.is_empty() {
            tracing::debug!(
                leases = done.len(),
                watched = self.leases.len(),
                "settled leases let go"
            );
        }
    }

    /// What the chores need of this customer.
    fn net(&self) -> Net {
        Net {
            key: self.key.clone(),
            store: self.store.clone(),
            network: self.network.clone(),
            quorum: self.quorum.clone(),
        }
    }

    /// Takes in what a chore brought back.
    async fn chore_done(&mut self, done: Done) {
        match done {
            Done::Ended {
                lease,
                refusal,
                why: EndFor::User { at, reply },
            } => {
                let result = match (self.leases.get_mut(&lease), refusal) {
                    (None, _) => Err(RequestError::NotFound(format!("lease {lease}"))),
                    (Some(_), Some(reason)) => Err(RequestError::Conflict(format!(
                        "the supplier refused the termination: {reason}"
                    ))),
                    (Some(l), None) => {
                        // Windows up to the end of the one in progress
                        // when the user asked are still answered.
                        l.watch.end_after_current_window(at);
                        l.ended = true;
                        let status = status_of(l);
                        store_lease(&self.records, record_of(l)).await;
                        self.notify(
                            rigmesh_protocol::Severity::Info,
                            "lease.ended",
                            lease,
                            format!("lease {lease} ended: you ended it; it stops after the window under way"),
                        );
                        Ok(status)
                    }
                };
                if reply.send(result).is_err() {
                    tracing::info!(%lease, "the caller that ended the lease left before the answer");
                }
            }
            Done::Ended { refusal: None, .. } => {}
            Done::Ended {
                lease,
                refusal: Some(reason),
                why,
            } => match why {
                EndFor::Silent => {
                    tracing::warn!(%lease, %reason, "the silent lease's termination did not get through")
                }
                EndFor::Cap => {
                    tracing::warn!(%lease, %reason, "the supplier did not take the termination; no further windows are paid")
                }
                EndFor::Unused | EndFor::User { .. } => {
                    tracing::info!(%lease, %reason, "termination of the unused lease not held yet")
                }
            },
            Done::Released { lease, outcome } => match outcome {
                Release::Certified => self.on_settlement(lease).await,
                Release::CompletedLocked => {
                    if let Some(l) = self.leases.get_mut(&lease) {
                        // Release again at once, after that settlement.
                        l.release_tried = None;
                    }
                    self.on_settlement(lease).await;
                }
                Release::NotYet => {}
            },
        }
    }

    /// The node is stopping: releases under way are stopped (each is
    /// asked for again after a restart); terminations under way are waited
    /// for, as long as their requests may take, and taken in.
    async fn stop_chores(&mut self) {
        self.chores.abort_releases();
        if self.chores.len() > 0 {
            tracing::info!(
                chores = self.chores.len(),
                "stopping: waiting for terminations and releases under way"
            );
        }
        let deadline = tokio::time::Instant::now() + STOP_CHORES_WAIT;
        while let Ok(Some(done)) = tokio::time::timeout_at(deadline, self.chores.next()).await {
            self.chore_done(done).await;
        }
    }

    /// A settlement certificate about one of this node's leases: once the
    /// final one is certified, the lease's spend is what it paid.
    async fn on_settlement(&mut self, id: Id) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        let settlement = crate::receipts::lease_settlement(&self.store, &id);
        if !settlement.closed || lease.settled.is_some() {
            return;
        }
        lease.settled = Some(settlement.paid);
        lease.settled_at = Some(UnixMillis::now());
        tracing::info!(lease = %id, paid = %settlement.paid, refunded = %settlement.refunded, "lease finally settled");
        self.alerts_to.raise(&crate::notify::own_alert(
            self.key.public(),
            rigmesh_protocol::Audience::Customer,
            rigmesh_protocol::Severity::Info,
            "settlement.certified",
            Some(id),
            format!(
                "lease {id} finally settled by the coordinators: {} paid, {} refunded",
                settlement.paid, settlement.refunded
            ),
        ));
        let (record, spent) = (record_of(lease), lease.spent());
        store_lease(&self.records, record).await;
        match self
            .spending
            .update(id, spent, Credits::ZERO, UnixMillis::now())
        {
            Ok(update) => raise(&self.records, &self.alerts_to, update.alerts).await,
            Err(err) => tracing::warn!(%err, "budget update failed"),
        }
    }

    async fn on_message(&mut self, message: &WireMessage) {
        match message {
            WireMessage::UsageAttestation(attestation) => self.on_attestation(attestation).await,
            WireMessage::SettlementCertificate(certificate) => {
                self.on_settlement(certificate.message.body.lease).await
            }
            WireMessage::ReleaseCertificate(certificate) => {
                self.on_settlement(certificate.message.body.lease).await
            }
            WireMessage::WithdrawalCertificate(certificate) => {
                let w = &certificate.message.body;
                if w.account == self.key.public() {
                    self.notify_account(
                        rigmesh_protocol::Severity::Info,
                        "withdrawal.certified",
                        format!(
                            "{} left your account for {} (withdrawal {} certified)",
                            w.amount, w.destination, w.seq
                        ),
                    );
                }
            }
            WireMessage::ResolutionCertificate(certificate) => {
                let r = &certificate.message.body;
                if r.customer == self.key.public() {
                    let refund = r
                        .held
                        .checked_sub(r.supplier_share)
                        .unwrap_or(Credits::ZERO);
                    self.notify(
                        rigmesh_protocol::Severity::Info,
                        "dispute.decided",
                        r.lease,
                        format!(
                            "lease {}: the dispute of settlement {} is decided: {refund} of the {} held \
                             comes back to you, {} goes to the supplier ({})",
                            r.lease, r.settlement_seq, r.held, r.supplier_share, r.note
                        ),
                    );
                }
            }
            WireMessage::Offer(offer) => {
                self.standing.offer_arrived(&offer.body, UnixMillis::now())
            }
            WireMessage::NodeBinding(_) => self.standing.something_arrived(),
            _ => {}
        }
    }

    /// An attestation that arrived by gossip. One of the lease's supplier
    /// that skips ahead means an earlier one was missed here: the store is
    /// read back in order instead of disputing a window that may be
    /// honest.
    async fn on_attestation(&mut self, attestation: &Signed<UsageAttestation>) {
        let body = &attestation.body;
        let Some(lease) = self.leases.get(&body.lease) else {
            return;
        };
        if body.seq > lease.watch.next_seq()
            && attestation.signer == lease.watch.supplier()
            && lease.watch.on_schedule(body)
        {
            self.catch_up(body.lease).await;
            return;
        }
        self.answer_attestation(attestation).await;
    }

    /// Checks and answers one attestation, records the window, and applies
    /// the caps.
    async fn answer_attestation(&mut self, attestation: &Signed<UsageAttestation>) {
        let body = &attestation.body;
        let Some(lease) = self.leases.get_mut(&body.lease) else {
            return;
        };
        // Without an escrow nothing but this node holds the cap: once it is
        // reached, no further window is acked. With one, the windows up to
        // the end are answered: the coordinators cut them at the escrow.
        if lease.stopped_at_cap && lease.escrowed.is_none() {
            return;
        }
        let now = UnixMillis::now();
        let expected = lease.watch.next_seq();
        let spent_before = lease.watch.spent();
        let verdict = match lease.watch.check(attestation, now) {
            Ok(verdict) => verdict,
            Err(err) => {
                tracing::warn!(%err, "could not answer an attestation");
                return;
            }
        };
        // Whether the attestation took its place in the lease's chain, so
        // it is the lease's window `seq` (a forgery or a twin is not).
        let in_chain = body.seq == expected && lease.watch.next_seq() == expected.saturating_add(1);
        if in_chain {
            lease.last_heard = now;
        }
        let (answer, status) = match verdict {
            Verdict::Ack(ack) => (Some(WireMessage::UsageAck(ack)), Some(WindowStatus::Acked)),
            Verdict::Dispute(dispute) => {
                let d = &dispute.body;
                tracing::warn!(lease = %body.lease, seq = body.seq, reason = ?d.reason, detail = %d.detail, "disputing a window");
                // Only what the lease's supplier signed counts against it;
                // anyone can sign an attestation naming someone's lease.
                if attestation.signer == lease.watch.supplier() {
                    let note = DisputeNote {
                        lease: body.lease,
                        seq: body.seq,
                        reason: d.reason,
                        detail: d.detail.clone(),
                        at: now,
                    };
                    let supplier = lease.watch.supplier();
                    let noted = self
                        .records
                        .off_executor(move |r| r.note_dispute(&supplier, note))
                        .await;
                    if let Err(err) = noted {
                        tracing::warn!(%err, "dispute not recorded against the supplier");
                    }
                }
                let status = in_chain.then(|| WindowStatus::Disputed {
                    reason: d.reason,
                    detail: d.detail.clone(),
                });
                (Some(WireMessage::UsageDispute(dispute)), status)
            }
            Verdict::Duplicate { .. } => (None, None),
        };
        let charge = lease
            .watch
            .spent()
            .checked_sub(spent_before)
            .unwrap_or(Credits::ZERO);
        if status == Some(WindowStatus::Acked) && !charge.is_zero() {
            let hour = crate::trends::book::hour_at(body.window_end);
            self.series.add("spend", hour, charge.units());
            self.series.add(
                "gpu_hours",
                hour,
                i64::try_from(body.billable_gpu_ms).unwrap_or(i64::MAX),
            );
        }
        let recorded = match status {
            Some(status) => {
                let (record, window) = (
                    record_of(lease),
                    WindowRecord {
                        seq: body.seq,
                        attestation: attestation.id().unwrap_or(Id::ZERO),
                        window_start: body.window_start,
                        window_end: body.window_end,
                        billable_gpu_ms: body.billable_gpu_ms,
                        charge,
                        status,
                    },
                );
                self.records
                    .off_executor(move |r| r.put_window(&record, &window))
                    .await
            }
            None if answer.is_some() => {
                let record = record_of(lease);
                self.records
                    .off_executor(move |r| r.put_lease(&record))
                    .await
            }
            None => Ok(()),
        };
        if let Err(err) = recorded {
            tracing::warn!(%err, lease = %body.lease, "window not recorded");
        }
        if let Some(answer) = answer {
            publish(&self.network, &answer, "answer to an attestation").await;
        }
        self.check_caps(body.lease, now).await;
    }

    /// Tells the caps what `lease` has cost and can add with its next
    /// window; raises the alerts due and ends the lease at a cap.
    async fn check_caps(&mut self, id: Id, now: UnixMillis) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        if lease.stopped_at_cap {
            return;
        }
        // With an escrow, the coordinators cut the last window at it, so
        // the lease may run until its spend reaches the cap; without one,
        // only this node stops it, before a window could pass the cap.
        let next = if lease.escrowed.is_some() {
            Credits::ZERO
        } else {
            lease.watch.next_window_charge().unwrap_or(Credits::ZERO)
        };
        let mut terminate = None;
        match self.spending.update(id, lease.spent(), next, now) {
            Ok(update) => {
                raise(&self.records, &self.alerts_to, update.alerts).await;
                if let Decision::Terminate { cap, account } = update.decision {
                    self.alerts_to.raise(&crate::notify::own_alert(
                        self.key.public(),
                        rigmesh_protocol::Audience::Customer,
                        // budget.100 is the urgent news; this says what
                        // became of the lease.
                        rigmesh_protocol::Severity::Info,
                        "lease.ended",
                        Some(id),
                        format!(
                            "lease {id} ended at {} budget cap of {cap}",
                            if account { "the account's" } else { "its" }
                        ),
                    ));
                    let detail = stop_at_cap(lease, cap, account);
                    store_lease(&self.records, record_of(lease)).await;
                    terminate = Some((lease.agreement.clone(), detail));
                }
            }
            Err(err) => tracing::warn!(%err, "budget update failed"),
        }
        if let Some((agreement, detail)) = terminate {
            let net = self.net();
            let started = self.chores.end(
                &net,
                agreement,
                rigmesh_protocol::TerminationReason::BudgetCap,
                detail,
                EndFor::Cap,
            );
            if started.is_err() {
                tracing::info!(lease = %id, "a termination of the lease is under way already");
            }
        }
    }

    /// Applies a change of caps: stored first (so a failure changes
    /// nothing), then the trackers; the alerts the new cap is already due
    /// are raised, and every running lease is checked against it at once.
    async fn set_budget(&mut self, change: BudgetChange) -> Result<BudgetReport, RequestError> {
        let now = UnixMillis::now();
        let mut caps = self.spending.caps().clone();
        match change {
            BudgetChange::Account(cap) => caps.account = cap,
            BudgetChange::Lease { lease, cap } => {
                if self.records.spent_on(&lease).is_none() {
                    return Err(RequestError::NotFound(format!(
                        "no lease {lease} on this node"
                    )));
                }
                match cap {
                    Some(cap) => caps.leases.insert(lease, cap),
                    None => caps.leases.remove(&lease),
                };
            }
        }
        let kept = caps.clone();
        self.records
            .off_executor(move |r| r.put_caps(&kept))
            .await
            .map_err(request_failed)?;
        let applied = match change {
            BudgetChange::Account(cap) => {
                let spends = self.records.spends_by_lease();
                self.spending.set_account(cap, &spends, now)
            }
            BudgetChange::Lease { lease, cap } => {
                let spent = self.records.spent_on(&lease).unwrap_or(Credits::ZERO);
                self.spending.set_lease(lease, cap, spent, now)
            }
        };
        match applied {
            Ok(alerts) => raise(&self.records, &self.alerts_to, alerts).await,
            // Caps are checked before they get here; should one still be
            // refused, the stored caps take effect at the next start.
            Err(err) => tracing::warn!(%err, "cap not applied"),
        }
        tracing::info!(?change, "budget changed");
        let running = self.running_leases();
        for id in &running {
            self.check_caps(*id, now).await;
        }
        if self.bids.busy() {
            // The bid in flight may be ordering its escrow: the top-ups
            // wait for it, and then count its escrow against the cap.
            self.top_up_due = true;
        } else {
            self.start_top_ups(&running);
        }
        self.budget_report().await
    }

    /// After a cap was raised (or removed): tops up the escrow of each
    /// running lease to what its caps now allow, so the quorum holds the
    /// new cap as it held the old one (settlement.md 5.5). A lowered cap
    /// needs nothing here: the lease ends when its spend reaches it, and
    /// its final settlement refunds the rest of the escrow. The top-ups
    /// are decided here and made in their own task, in the bid slot (the
    /// caller checked that nothing is in flight); their outcomes come back
    /// to [`Self::top_ups_finished`].
    fn start_top_ups(&mut self, running: &[Id]) {
        let Some(quorum) = self.quorum.clone() else {
            return;
        };
        let now = UnixMillis::now();
        let mut planned = Vec::new();
        // Escrow this plan already adds, which the account's cap counts.
        let mut adding = Credits::ZERO;
        for id in running {
            let Some(lease) = self.leases.get(id) else {
                continue;
            };
            if live_state(lease) != LeaseState::Running || lease.settled.is_some() {
                continue;
            }
            let Some(escrowed) = lease.escrowed else {
                continue;
            };
            let Some(cost) = crate::supplier::desk::lease_cost(&lease.agreement) else {
                continue;
            };
            let mut target = cost;
            if let Some(cap) = self.spending.caps().leases.get(id) {
                target = target.min(*cap);
            }
            if let Some(cap) = self.spending.caps().account {
                let committed = match self.committed() {
                    Ok(committed) => committed.checked_add(adding).unwrap_or(Credits::MAX),
                    Err(err) => {
                        tracing::warn!(%err, "no top-up: the committed spend is not known");
                        return;
                    }
                };
                let others = committed.checked_sub(escrowed).unwrap_or(Credits::ZERO);
                target = target.min(cap.checked_sub(others).unwrap_or(Credits::ZERO));
            }
            let Some(delta) = target.checked_sub(escrowed).filter(|d| *d > Credits::ZERO) else {
                continue;
            };
            let agreement = lease.agreement.clone();
            let peer = match peer_of(&self.store, &agreement.body.supplier, now) {
                Ok(peer) => peer,
                Err(err) => {
                    tracing::info!(lease = %id, %err, "no top-up: the supplier is not reachable");
                    continue;
                }
            };
            adding = adding.checked_add(delta).unwrap_or(Credits::MAX);
            planned.push((*id, agreement, peer, delta, target));
        }
        if planned.is_empty() {
            return;
        }
        let (key, network) = (self.key.clone(), self.network.clone());
        self.bids.launch_top_ups(async move {
            let mut orphans = Vec::new();
            let mut top_ups = Vec::with_capacity(planned.len());
            for (lease, agreement, peer, delta, target) in planned {
                let result = super::escrow::top_up(
                    &key,
                    &quorum,
                    &network,
                    peer,
                    &agreement,
                    delta,
                    &mut orphans,
                )
                .await
                .map(|_| ());
                top_ups.push(TopUp {
                    lease,
                    delta,
                    target,
                    result,
                });
            }
            TopUpsDone { top_ups, orphans }
        });
    }

    /// Takes in the top-ups' outcomes: escrows completed on the way are
    /// adopted, and each lease's escrow grows by what was certified.
    async fn take_in_top_ups(&mut self, done: Result<TopUpsDone, tokio::task::JoinError>) {
        let TopUpsDone { top_ups, orphans } = match done {
            Ok(done) => done,
            Err(err) => {
                // What was certified is applied at the coordinators all
                // the same; the next debit completes it as an earlier one.
                tracing::error!(%err, "the escrow top-ups ended without an outcome");
                return;
            }
        };
        for completed in orphans {
            self.adopt_escrow(completed).await;
        }
        for TopUp {
            lease: id,
            delta,
            target,
            result,
        } in top_ups
        {
            match result {
                Ok(()) => {
                    if let Some(lease) = self.leases.get_mut(&id) {
                        lease.escrowed = lease.escrowed.and_then(|e| e.checked_add(delta));
                        store_lease(&self.records, record_of(lease)).await;
                    }
                    tracing::info!(lease = %id, %delta, total = %target, "escrow topped up to the raised cap");
                }
                Err(err) => tracing::warn!(lease = %id, %err, "escrow not topped up"),
            }
        }
    }

    /// The top-ups in their task ended: their outcomes are taken in, and
    /// what waited for the slot goes next (top-ups a cap raised meanwhile,
    /// then bids).
    async fn top_ups_finished(&mut self, done: Result<TopUpsDone, tokio::task::JoinError>) {
        self.take_in_top_ups(done).await;
        if std::mem::take(&mut self.top_up_due) {
            let running = self.running_leases();
            self.start_top_ups(&running);
        }
        self.start_next().await;
    }

    /// What the account's leases hold against its cap: each unsettled
    /// lease's escrow (or its spend, when it has none), each settled
    /// lease's cost.
    /// The stored leases' spend is held in memory by the records: no lease
    /// is read for it.
    fn committed(&self) -> Result<Credits, BidError> {
        self.records
            .fold_spends(Some(Credits::ZERO), |committed, (id, stored)| {
                let held = match self.leases.get(id) {
                    Some(lease) if lease.settled.is_none() => {
                        lease.escrowed.unwrap_or_else(|| lease.spent())
                    }
                    Some(lease) => lease.spent(),
                    None => *stored,
                };
                committed?.checked_add(held)
            })
            .ok_or_else(|| BidError::Failed("committed spend overflows".into()))
    }
}

/// Signs a termination of `agreement`'s lease, publishes it as evidence,
/// hands it to every coordinator and to the supplier (which attests the
/// window in progress as the last one). Returns why the lease could not be
/// ended: the supplier refused it or could not be reached, and no quorum
/// of coordinators holds it (when one does, the lease is over whatever the
/// supplier does: it is not paid for later windows this node does not
/// ack).
pub(crate) async fn end_lease(
    key: &Keypair,
    store: &MarketStore,
    network: &NodeHandle,
    quorum: Option<&crate::quorum::Quorum>,
    agreement: &Signed<LeaseAgreement>,
    reason: rigmesh_protocol::TerminationReason,
    detail: String,
) -> Option<String> {
    let now = UnixMillis::now();
    let lease = agreement.id().ok()?;
    let termination = match Signed::sign(
        rigmesh_protocol::LeaseTermination {
            version: PROTOCOL_VERSION,
            lease,
            customer: key.public(),
            supplier: agreement.body.supplier,
            reason,
            detail,
            created_at: now,
        },
        key,
    ) {
        Ok(t) => t,
        Err(err) => return Some(format!("could not sign the termination: {err}")),
    };
    if let Err(err) = network
        .publish(&WireMessage::LeaseTermination(termination.clone()))
        .await
    {
        tracing::debug!(%err, "termination stored; not gossiped yet");
    }
    // The coordinators hold it as evidence: whatever the supplier does, no
    // window after it is paid unless this node acks it.
    let mut held_by_quorum = false;
    if let Some(quorum) = quorum {
        let held = quorum.terminate(&termination).await;
        held_by_quorum = held >= quorum.set().quorum();
        if !held_by_quorum {
            tracing::warn!(%lease, held, need = quorum.set().quorum(), "the termination reached too few coordinators; the escrow still bounds what can be paid");
        }
    }
    let refusal = match peer_of(store, &agreement.body.supplier, now) {
        Err(err) => Some(err.to_string()),
        Ok(peer) => match LeaseRequest::Terminate(termination).to_bytes() {
            Err(err) => Some(err.to_string()),
            Ok(bytes) => match network.request(peer, Protocol::Lease, bytes).await {
                Ok(answer) => match LeaseResponse::from_bytes(&answer) {
                    Ok(LeaseResponse::Accepted) => None,
                    Ok(LeaseResponse::Refused(reason)) => Some(reason),
                    Ok(other) => Some(format!("unexpected answer {other:?}")),
                    Err(err) => Some(err.to_string()),
                },
                Err(err) => Some(err.to_string()),
            },
        },
    };
    match refusal {
        Some(reason) if held_by_quorum => {
            tracing::warn!(%lease, %reason, "the supplier did not take the termination; the coordinators hold it, so no later window is paid unless acked");
            None
        }
        other => other,
    }
}

/// Tells the supplier to let go at once, rather than when its wait runs
/// out, the GPUs it holds for an agreement no escrow will fund (`detail`
/// says why).
async fn let_go(
    key: &Keypair,
    store: &MarketStore,
    network: &NodeHandle,
    agreement: &Signed<LeaseAgreement>,
    detail: &str,
) {
    if let Some(refusal) = end_lease(
        key,
        store,
        network,
        None,
        agreement,
        rigmesh_protocol::TerminationReason::Other,
        detail.into(),
    )
    .await
    {
        tracing::debug!(%refusal, "the supplier did not release the unfunded lease");
    }
}

fn status_of(lease: &Lease) -> LeaseStatus {
    let a = &lease.agreement.body;
    let p = &a.proposal.body;
    let gpu_ms = u64::from(p.gpu_count) * u64::from(p.hours) * 3_600_000;
    LeaseStatus {
        lease: lease.watch.lease(),
        supplier: a.supplier,
        gpu_model: lease.gpu_model.clone(),
        gpus: a.gpu_indices.clone(),
        price_per_gpu_hour: p.price_per_gpu_hour,
        hours: p.hours,
        max_cost: rigmesh_ledger::billing::charge(p.price_per_gpu_hour, gpu_ms)
            .unwrap_or(Credits::MAX),
        spent: lease.spent(),
        acked_windows: lease.watch.acked_windows(),
        disputed_windows: lease.watch.dispute_count(),
        stopped_at_cap: lease.stopped_at_cap,
        state: report::state_of(
            &record_of(lease),
            Some(live_state(lease)),
            UnixMillis::now(),
        ),
        escrowed: lease.escrowed,
        escrow_certificate: lease.escrow.as_ref().and_then(|c| c.subject().ok()),
        settlement: None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn bid(
    key: &Keypair,
    store: &MarketStore,
    book: &crate::orderbook::OrderBook,
    network: &NodeHandle,
    quorum: Option<&crate::quorum::Quorum>,
    request: &BidRequest,
    limit: Option<Credits>,
    caller: &CallerWatch,
    orphans: &mut Vec<crate::quorum::Completed>,
) -> Result<
    (
        Signed<LeaseAgreement>,
        Option<rigmesh_protocol::EscrowCertificate>,
        LeaseStatus,
    ),
    BidError,
> {
    // A bid placed while the node is still reading its offers waits for
    // the whole book rather than miss the cheapest.
    book.ready().await;
    if caller.gone() {
        return Err(BidError::Failed(
            "the bid's caller left before it was placed".into(),
        ));
    }
    let now = UnixMillis::now();
    let query = BookQuery {
        gpu_model: request.gpu.clone(),
        min_memory_mib: request.min_memory_mib,
        count: request.count,
        max_price: Some(request.max_price),
        region: request.region.clone(),
        min_reputation_bp: request.min_reputation_bp,
    };
    // Scores are looked up for the suppliers the ranking reaches, from
    // the reports the book keeps, not from a read of every report.
    let set = quorum.map(|q| q.set());
    let reputation = |s: &PublicKey| {
        set.and_then(|set| book.score(rigmesh_protocol::Role::Supplier, s, set))
            .unwrap_or(super::book::DEFAULT_REPUTATION_BP)
    };
    let Some(offer) = book.best(&query, &reputation, now, 1).into_iter().next() else {
        let why = book.explain(&query, &reputation, now);
        return Err(BidError::NoMatch(why.to_string()));
    };
    let peer = peer_of(store, &offer.body.supplier, now)?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(failed)?;
    let proposal = Signed::sign(
        LeaseProposal {
            version: PROTOCOL_VERSION,
            customer: key.public(),
            supplier: offer.body.supplier,
            offer: offer.id().map_err(failed)?,
            gpu_count: request.count,
            price_per_gpu_hour: offer.body.price_per_gpu_hour,
            hours: request.hours,
            window_secs: request.window_secs.unwrap_or(60),
            nonce: u64::from_le_bytes(nonce),
            created_at: now,
            expires_at: now.plus_ms(120_000),
        },
        key,
    )
    .map_err(failed)?;
    let bytes = LeaseRequest::Propose(proposal.clone())
        .to_bytes()
        .map_err(failed)?;
    let response = network
        .request(peer, Protocol::Lease, bytes)
        .await
        .map_err(failed)?;
    let agreement = match LeaseResponse::from_bytes(&response).map_err(failed)? {
        LeaseResponse::Agreed(agreement) => *agreement,
        LeaseResponse::Refused(reason) => return Err(BidError::Refused(reason)),
        LeaseResponse::Accepted => {
            return Err(BidError::Failed(
                "the supplier answered the proposal without an agreement".into(),
            ))
        }
    };
    // The agreement must carry our proposal, unchanged, and be valid now.
    if agreement.body.proposal != proposal {
        return Err(BidError::Failed(
            "the supplier answered another proposal".into(),
        ));
    }
    agreement.verify(&Clock::system()).map_err(failed)?;
    // The escrow commits the customer's money: a bid whose caller stopped
    // waiting (its request timed out) is not carried that far, and the
    // supplier lets the GPUs go at once.
    if caller.gone() {
        let_go(
            key,
            store,
            network,
            &agreement,
            "the bid's caller left before its escrow",
        )
        .await;
        return Err(BidError::Failed(
            "the bid's caller left before its escrow was ordered; no lease was made".into(),
        ));
    }
    let escrow = match quorum {
        Some(quorum) => {
            match super::escrow::fund(key, quorum, network, peer, &agreement, limit, orphans).await
            {
                Ok(certificate) => Some(certificate),
                Err(err) => {
                    let_go(
                        key,
                        store,
                        network,
                        &agreement,
                        "the escrow was not certified",
                    )
                    .await;
                    return Err(err);
                }
            }
        }
        None => None,
    };
    let watch = LeaseWatch::new(&agreement, key.clone()).map_err(failed)?;
    let status = status_of(&Lease {
        gpu_model: offer.body.gpu_model.clone(),
        agreement: agreement.clone(),
        watch,
        stopped_at_cap: false,
        escrowed: escrow.as_ref().map(|c| c.message.body.amount),
        ended: false,
        escrow: escrow.clone(),
        settled: None,
        settled_at: None,
        gap_since: None,
        last_heard: now,
        release_tried: None,
    });
    Ok((agreement, escrow, status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigmesh_protocol::samples;

    fn lease(settled_at: Option<UnixMillis>) -> Lease {
        let agreement = samples::lease_agreement().unwrap();
        let watch = LeaseWatch::new(&agreement, samples::customer()).unwrap();
        Lease {
            gpu_model: "H100".into(),
            agreement,
            watch,
            stopped_at_cap: false,
            escrowed: Some(Credits::from_units(5_000)),
            ended: false,
            escrow: None,
            settled: settled_at.map(|_| Credits::from_units(4_000)),
            settled_at,
            gap_since: None,
            last_heard: UnixMillis(0),
            release_tried: None,
        }
    }

    /// A lease is let go once it has been finally settled for the keep
    /// period, and not while something is under way for it; running and
    /// unsettled leases stay however old.
    #[test]
    fn settled_leases_are_let_go_after_the_keep_unless_busy() {
        let now = UnixMillis(100_000_000);
        let keep = CustomerConfig::default().keep_settled_secs * 1000;
        let id = |n: u8| Id([n; 32]);
        let leases: BTreeMap<Id, Lease> = [
            (id(1), lease(None)),
            (id(2), lease(Some(UnixMillis(now.0 - keep)))),
            (id(3), lease(Some(UnixMillis(now.0 - keep + 1)))),
            (id(4), lease(Some(UnixMillis(now.0 - 3 * keep)))),
            (id(5), lease(Some(UnixMillis(now.0 - 2 * keep)))),
        ]
        .into();
        let busy = |lease: &Id| *lease == id(5);
        assert_eq!(settled_before(&leases, now, keep, busy), vec![id(2), id(4)]);
        assert_eq!(
            settled_before(&leases, now, keep, |_| false),
            vec![id(2), id(4), id(5)]
        );
        assert!(settled_before(&leases, UnixMillis(0), keep, |_| false).is_empty());
    }
}
