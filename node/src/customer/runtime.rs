//! The customer role at run time: answers `bid`s from the local API by
//! taking the best matching offer now (proposal -> agreement with the
//! supplier over request-response), then watches the lease: every
//! attestation that arrives by gossip is checked and answered with a signed
//! ack or dispute, spend is tracked against the budget, and budget alerts
//! are raised.
//!
//! Not yet: escrow (coordinators), standing bids, and a signed termination
//! at the budget cap (the protocol has no message for it); at the cap the
//! node stops paying further windows and says so in a log line and an alert.

use std::collections::BTreeMap;

use libp2p::PeerId;
use rigmesh_ledger::{Cause, Ledger, MarketStore};
use rigmesh_protocol::rpc::{LeaseRequest, LeaseResponse};
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{
    Clock, Credits, Id, Keypair, LeaseAgreement, LeaseProposal, NodeBinding, Offer, PublicKey,
    Signed, UnixMillis, PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

use super::book::{best_offers, explain_no_match, BookQuery};
use super::budget::{Budget, BudgetTracker, Decision};
use super::usage::{LeaseWatch, Verdict};
use crate::network::{NodeHandle, Protocol};

/// What a customer asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BidRequest {
    /// GPU model, as offers name it.
    pub gpu: String,
    /// GPUs wanted.
    pub count: u16,
    /// Most per GPU-hour.
    pub max_price: Credits,
    /// Lease length, hours.
    pub hours: u32,
    /// Least memory per GPU, MiB.
    #[serde(default)]
    pub min_memory_mib: u64,
    /// Region wanted.
    #[serde(default)]
    pub region: Option<String>,
    /// Cap on what this lease may cost.
    #[serde(default)]
    pub budget: Option<Credits>,
    /// Metering window, seconds (60 by default).
    #[serde(default)]
    pub window_secs: Option<u32>,
    /// Least supplier reputation, basis points (10000 is spotless; a
    /// supplier without reports has 5000).
    #[serde(default)]
    pub min_reputation_bp: u16,
}

/// A lease as the customer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// Lease id.
    pub lease: Id,
    /// The supplier.
    pub supplier: PublicKey,
    /// GPU model.
    pub gpu_model: String,
    /// Device indices leased.
    pub gpus: Vec<u16>,
    /// Price per GPU-hour.
    pub price_per_gpu_hour: Credits,
    /// Lease length, hours.
    pub hours: u32,
    /// Most the lease can cost (price x GPUs x hours): the amount to escrow.
    pub max_cost: Credits,
    /// Spent so far (acked windows).
    pub spent: Credits,
    /// Windows acked.
    pub acked_windows: u64,
    /// Windows disputed.
    pub disputed_windows: u64,
    /// True once the budget cap stopped the lease.
    pub stopped_at_cap: bool,
    /// Locked in escrow for the lease (absent without coordinators).
    #[serde(default)]
    pub escrowed: Option<Credits>,
    /// Subject id of the lease's escrow certificate.
    #[serde(default)]
    pub escrow_certificate: Option<Id>,
}

/// Why a bid did not produce a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", content = "reason", rename_all = "snake_case")]
pub enum BidError {
    /// No offer meets the bid; the explanation gives the counts.
    #[error("no match: {0}")]
    NoMatch(String),
    /// The supplier refused.
    #[error("refused by the supplier: {0}")]
    Refused(String),
    /// Anything else (network, ledger, bad input).
    #[error("{0}")]
    Failed(String),
}

/// Commands from the local API.
#[derive(Debug)]
pub enum CustomerCommand {
    /// Lease the best matching offer now.
    Bid(BidRequest, oneshot::Sender<Result<LeaseStatus, BidError>>),
    /// The leases of this node.
    Leases(oneshot::Sender<Vec<LeaseStatus>>),
}

struct Lease {
    gpu_model: String,
    agreement: Signed<LeaseAgreement>,
    watch: LeaseWatch,
    stopped_at_cap: bool,
    escrow: Option<rigmesh_protocol::EscrowCertificate>,
}

fn failed<E: std::fmt::Display>(e: E) -> BidError {
    BidError::Failed(e.to_string())
}

/// The peer an account's newest unexpired binding names.
fn peer_of(store: &MarketStore, account: &PublicKey, now: UnixMillis) -> Result<PeerId, BidError> {
    store
        .all::<NodeBinding>(now)
        .map_err(failed)?
        .into_iter()
        .filter(|b| b.body.account == *account && b.body.expires_at > now)
        .max_by_key(|b| b.body.created_at)
        .and_then(|b| PeerId::from_bytes(&b.body.peer_id).ok())
        .ok_or_else(|| BidError::Failed(format!("no node binding known for supplier {account}")))
}

/// Runs the customer role until `stop` turns true.
pub async fn run(
    key: Keypair,
    store: Arc<MarketStore>,
    network: NodeHandle,
    mut commands: mpsc::Receiver<CustomerCommand>,
    quorum: Option<crate::quorum::Quorum>,
    mut stop: watch::Receiver<bool>,
) {
    let mut leases: BTreeMap<Id, Lease> = BTreeMap::new();
    let mut budgets: BTreeMap<Id, BudgetTracker> = BTreeMap::new();
    let mut accepted = network.subscribe();
    loop {
        tokio::select! {
            biased;
            changed = stop.changed() => {
                let stopping = changed.is_err() || *stop.borrow();
                if stopping {
                    return;
                }
            }
            Some(command) = commands.recv() => match command {
                CustomerCommand::Bid(request, reply) => {
                    let result = bid(&key, &store, &network, quorum.as_ref(), &request).await;
                    if let Ok((agreement, escrow, status)) = &result {
                        match LeaseWatch::new(agreement, key.clone()) {
                            Ok(watch) => {
                                leases.insert(status.lease, Lease { gpu_model: status.gpu_model.clone(), agreement: agreement.clone(), watch, stopped_at_cap: false, escrow: escrow.clone() });
                                if let Some(cap) = request.budget {
                                    match BudgetTracker::new(key.clone(), Budget { per_lease: Some(cap), per_account: None }) {
                                        Ok(tracker) => {
                                            budgets.insert(status.lease, tracker);
                                        }
                                        Err(err) => tracing::warn!(%err, "budget not tracked"),
                                    }
                                }
                            }
                            Err(err) => tracing::warn!(%err, "cannot watch the new lease"),
                        }
                    }
                    let _ = reply.send(result.map(|(_, _, status)| status));
                }
                CustomerCommand::Leases(reply) => {
                    let _ = reply.send(leases.values().map(status_of).collect());
                }
            },
            message = accepted.recv() => {
                let Ok(message) = message else { continue };
                let WireMessage::UsageAttestation(attestation) = &message.message else { continue };
                let Some(lease) = leases.get_mut(&attestation.body.lease) else { continue };
                if lease.stopped_at_cap {
                    continue;
                }
                let now = UnixMillis::now();
                let answer = match lease.watch.check(attestation, now) {
                    Ok(Verdict::Ack(ack)) => Some(WireMessage::UsageAck(ack)),
                    Ok(Verdict::Dispute(dispute)) => {
                        tracing::warn!(lease = %attestation.body.lease, reason = ?dispute.body.reason, "disputing a window");
                        Some(WireMessage::UsageDispute(dispute))
                    }
                    Ok(Verdict::Duplicate { .. }) => None,
                    Err(err) => {
                        tracing::warn!(%err, "could not answer an attestation");
                        None
                    }
                };
                if let Some(answer) = answer {
                    if let Err(err) = network.publish(&answer).await {
                        tracing::warn!(%err, "answer stored; not gossiped yet");
                    }
                }
                if let Some(tracker) = budgets.get_mut(&attestation.body.lease) {
                    let next = lease.watch.next_window_charge().unwrap_or(Credits::ZERO);
                    match tracker.update(attestation.body.lease, lease.watch.spent(), next, now) {
                        Ok(update) => {
                            for alert in update.alerts {
                                let _ = network.publish(&WireMessage::Alert(alert)).await;
                            }
                            if let Decision::Terminate { cap, .. } = update.decision {
                                tracing::warn!(lease = %attestation.body.lease, %cap, "budget cap reached: ending the lease after this window");
                                lease.stopped_at_cap = true;
                                end_lease(&key, &store, &network, &lease.agreement, rigmesh_protocol::TerminationReason::BudgetCap, format!("budget cap {cap} reached")).await;
                            }
                        }
                        Err(err) => tracing::warn!(%err, "budget update failed"),
                    }
                }
            }
        }
    }
}

/// Signs a termination of `agreement`'s lease, hands it to the supplier
/// (which attests the window in progress as the last one) and publishes it
/// as evidence. Returns the supplier's refusal, if any.
pub(crate) async fn end_lease(
    key: &Keypair,
    store: &MarketStore,
    network: &NodeHandle,
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
    let peer = match peer_of(store, &agreement.body.supplier, now) {
        Ok(peer) => peer,
        Err(err) => return Some(err.to_string()),
    };
    let bytes = match LeaseRequest::Terminate(termination).to_bytes() {
        Ok(bytes) => bytes,
        Err(err) => return Some(err.to_string()),
    };
    match network.request(peer, Protocol::Lease, bytes).await {
        Ok(answer) => match LeaseResponse::from_bytes(&answer) {
            Ok(LeaseResponse::Accepted) => None,
            Ok(LeaseResponse::Refused(reason)) => Some(reason),
            Ok(other) => Some(format!("unexpected answer {other:?}")),
            Err(err) => Some(err.to_string()),
        },
        Err(err) => Some(err.to_string()),
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
        spent: lease.watch.spent(),
        acked_windows: lease.watch.acked_windows(),
        disputed_windows: lease.watch.dispute_count(),
        stopped_at_cap: lease.stopped_at_cap,
        escrowed: lease.escrow.as_ref().map(|c| c.message.body.amount),
        escrow_certificate: lease.escrow.as_ref().and_then(|c| c.subject().ok()),
    }
}

async fn bid(
    key: &Keypair,
    store: &MarketStore,
    network: &NodeHandle,
    quorum: Option<&crate::quorum::Quorum>,
    request: &BidRequest,
) -> Result<
    (
        Signed<LeaseAgreement>,
        Option<rigmesh_protocol::EscrowCertificate>,
        LeaseStatus,
    ),
    BidError,
> {
    let now = UnixMillis::now();
    // The order book is the ledger's offer index over what gossip brought.
    let book = Ledger::in_memory().map_err(failed)?;
    let cause = Cause::new(key.public(), Id::ZERO, now);
    for offer in store.all::<Offer>(now).map_err(failed)? {
        book.put_offer(&offer, &cause).map_err(failed)?;
    }
    let query = BookQuery {
        gpu_model: request.gpu.clone(),
        min_memory_mib: request.min_memory_mib,
        count: request.count,
        max_price: Some(request.max_price),
        region: request.region.clone(),
        min_reputation_bp: request.min_reputation_bp,
    };
    let scores = super::reputation::supplier_scores(store, quorum.map(|q| q.set()), now);
    let reputation = |s: &PublicKey| {
        scores
            .get(s)
            .copied()
            .unwrap_or(super::book::DEFAULT_REPUTATION_BP)
    };
    let offers = best_offers(&book, &query, &reputation, now).map_err(failed)?;
    let Some(offer) = offers.into_iter().next() else {
        let why = explain_no_match(&book, &query, &reputation, now).map_err(failed)?;
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
    let escrow = match quorum {
        Some(quorum) => Some(super::escrow::fund(key, quorum, network, peer, &agreement).await?),
        None => None,
    };
    let watch = LeaseWatch::new(&agreement, key.clone()).map_err(failed)?;
    let status = status_of(&Lease {
        gpu_model: offer.body.gpu_model.clone(),
        agreement: agreement.clone(),
        watch,
        stopped_at_cap: false,
        escrow: escrow.clone(),
    });
    Ok((agreement, escrow, status))
}
