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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rigmesh_ledger::billing::{self, FeeRate};
use rigmesh_protocol::rpc::{CertificateFrame, CoordinatorRequest, SettlementBundle};
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{
    Credits, EscrowCertificate, Id, Keypair, LeaseAgreement, SettlementCertificate,
    SettlementRequest, Signed, UnixMillis, UsageAck, UsageAttestation, UsageDispute,
    PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::quorum::Quorum;

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

/// Per-lease settlements, shared with the supplier's view.
pub type SettledBook = Arc<Mutex<BTreeMap<Id, Settled>>>;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    Pay(u64),
    Held,
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
        if self.disputes.contains_key(&seq) {
            return Decided::Held;
        }
        if let Some(ack) = self.acks.get(&seq) {
            return if ack.body.attestation == id {
                Decided::Pay(a.body.billable_gpu_ms)
            } else {
                Decided::Held
            };
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
    fn due(&self, terms: &SettleTerms, now: UnixMillis) -> Option<(usize, usize, bool, u64)> {
        if self.closed || now < self.retry_at {
            return None;
        }
        let first = usize::try_from(self.next_window).ok()?;
        let pending = self.attestations.get(first..)?;
        let mut decided = 0usize;
        let mut gpu_ms = 0u64;
        for a in pending {
            match self.status(a, terms, now) {
                Decided::Pay(ms) => gpu_ms = gpu_ms.saturating_add(ms),
                Decided::Held => {}
                Decided::Open => break,
            }
            decided += 1;
        }
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

    fn billable(&self, first: usize, take: usize, terms: &SettleTerms, now: UnixMillis) -> u64 {
        self.attestations
            .iter()
            .skip(first)
            .take(take)
            .map(|a| match self.status(a, terms, now) {
                Decided::Pay(ms) => ms,
                _ => 0,
            })
            .fold(0u64, u64::saturating_add)
    }
}

fn lock(book: &SettledBook) -> std::sync::MutexGuard<'_, BTreeMap<Id, Settled>> {
    book.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the worker until `stop` turns true.
pub async fn run(
    key: Keypair,
    quorum: Quorum,
    terms: SettleTerms,
    network: crate::network::NodeHandle,
    mut events: mpsc::Receiver<SettleEvent>,
    settled: SettledBook,
    mut stop: watch::Receiver<bool>,
) {
    let mut leases: BTreeMap<Id, LeaseState> = BTreeMap::new();
    let mut accepted = network.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(1000));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
            Some(event) = events.recv() => match event {
                SettleEvent::Funded(agreement, escrow) => {
                    if let Ok(lease) = agreement.id() {
                        lock(&settled).entry(lease).or_default();
                        leases.insert(lease, LeaseState {
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
                        });
                    }
                }
                SettleEvent::Attested(a) => {
                    if let Some(state) = leases.get_mut(&a.body.lease) {
                        if a.body.seq == state.attestations.len() as u64 {
                            state.attestations.push(*a);
                        }
                    }
                }
                SettleEvent::Finished(lease) => {
                    if let Some(state) = leases.get_mut(&lease) {
                        state.finished = true;
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
                    WireMessage::UsageDispute(dispute) => {
                        if let Some(state) = leases.get_mut(&dispute.body.lease) {
                            if dispute.body.customer == state.escrow.message.body.account {
                                state.disputes.insert(dispute.body.seq, dispute);
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                let now = UnixMillis::now();
                for (lease, state) in leases.iter_mut() {
                    let Some((first, take, last, gpu_ms)) = state.due(&terms, now) else { continue };
                    match settle_once(&key, &quorum, &terms, state, first, take, last, gpu_ms, now).await {
                        Ok(cert) => {
                            let r = &cert.message.body;
                            let mut book = lock(&settled);
                            let entry = book.entry(*lease).or_default();
                            entry.certificates.push(cert.subject().unwrap_or(Id::ZERO));
                            entry.windows = r.last_window + 1;
                            entry.earned = entry.earned.checked_add(r.supplier_amount).unwrap_or(entry.earned);
                            entry.fees = entry.fees.checked_add(r.fee).unwrap_or(entry.fees);
                            entry.refunded = entry.refunded.checked_add(r.refund).unwrap_or(entry.refunded);
                            entry.closed = r.final_settlement;
                            entry.last_error = None;
                            tracing::info!(%lease, seq = r.settlement_seq, windows = %format!("{}..={}", r.first_window, r.last_window), supplier = %r.supplier_amount, fee = %r.fee, refund = %r.refund, final_settlement = r.final_settlement, "settled");
                        }
                        Err(err) => {
                            tracing::warn!(%lease, %err, "settlement not certified; retrying");
                            state.retry_at = now.plus_ms(3_000);
                            lock(&settled).entry(*lease).or_default().last_error = Some(err);
                        }
                    }
                }
                leases.retain(|_, s| !s.closed);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn settle_once(
    key: &Keypair,
    quorum: &Quorum,
    terms: &SettleTerms,
    state: &mut LeaseState,
    first: usize,
    take: usize,
    last: bool,
    gpu_ms: u64,
    now: UnixMillis,
) -> Result<SettlementCertificate, String> {
    let range: Vec<Signed<UsageAttestation>> = state
        .attestations
        .iter()
        .skip(first)
        .take(take)
        .cloned()
        .collect();
    let head = range.last().cloned().ok_or("nothing to settle")?;
    let available = state
        .escrow
        .message
        .body
        .amount
        .checked_sub(state.paid)
        .ok_or("escrow overdrawn")?;
    let p = &state.agreement.body.proposal.body;
    let payout = billing::payout(
        p.price_per_gpu_hour,
        gpu_ms,
        available,
        terms.fee_rate,
        last,
    )
    .map_err(|e| e.to_string())?;
    let request = Signed::sign(
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
            final_settlement: last,
            created_at: now,
        },
        key,
    )
    .map_err(|e| e.to_string())?;
    let mut attestations = Vec::with_capacity(range.len() + 1);
    if let Some(previous) = first.checked_sub(1).and_then(|i| state.attestations.get(i)) {
        attestations.push(previous.clone());
    }
    let seqs = first as u64..=head.body.seq;
    attestations.extend(range);
    let bundle = SettlementBundle {
        request: request.clone(),
        agreement: state.agreement.clone(),
        escrow: Some(state.escrow.clone()),
        attestations,
        acks: state
            .acks
            .range(seqs.clone())
            .map(|(_, a)| a.clone())
            .collect(),
        disputes: state.disputes.range(seqs).map(|(_, d)| d.clone()).collect(),
        earlier: state.earlier.iter().cloned().collect(),
    };
    let cert = quorum
        .certify(&request, &CoordinatorRequest::Settle(Box::new(bundle)))
        .await
        .map_err(|e| e.to_string())?;
    quorum
        .deliver(CertificateFrame::Settlement(Box::new(cert.clone())))
        .await;
    state.settlement_seq += 1;
    state.next_window = head.body.seq + 1;
    state.paid = state
        .paid
        .checked_add(payout.paid_now)
        .ok_or("paid total overflows")?;
    state.closed = last;
    state.earlier = Some(cert.clone());
    Ok(cert)
}
