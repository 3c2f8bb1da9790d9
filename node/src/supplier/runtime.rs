//! The supplier role at run time: one task that samples the GPUs every
//! second, keeps offers published (re-published before they expire,
//! whenever the free GPUs change, and when a standing bid they meet
//! arrives), answers lease proposals, closes metering windows and
//! publishes their attestations, and raises health alerts.

use std::collections::BTreeMap;
use std::time::Duration;

use rigmesh_protocol::rpc::{LeaseRequest, LeaseResponse};
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{Id, Keypair, UnixMillis};
use tokio::sync::{mpsc, watch};

use super::bids;
use super::desk::LeaseDesk;
use super::leases::{ClosedLeases, LeaseTotals};
use super::meter::{Meter, MeterEvent};
use super::settle::{SettleEvent, SettledBook};
use super::{alerts, build_offers, SupplierConfig};
use crate::network::{InboundRequest, NodeHandle, Protocol};
use crate::telemetry::{GpuSample, GpuSource};

/// A lease as the supplier sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SupplierLease {
    /// Lease id.
    pub lease: Id,
    /// The customer.
    pub customer: rigmesh_protocol::PublicKey,
    /// Device indices leased.
    pub gpus: Vec<u16>,
    /// Price per GPU-hour.
    pub price_per_gpu_hour: rigmesh_protocol::Credits,
    /// When the lease ends.
    pub ends_at: UnixMillis,
    /// Windows attested so far.
    pub windows_attested: u64,
    /// GPU-milliseconds attested so far.
    pub billable_gpu_ms: u64,
    /// What the attested time is worth at the lease price (the billing rule).
    pub earned: rigmesh_protocol::Credits,
    /// What the coordinators have certified for it, when escrowed.
    #[serde(default)]
    pub settled: Option<super::settle::Settled>,
}

/// What the supplier's API shows: the GPUs, their latest samples, leases.
#[derive(Debug, Clone, Default)]
pub struct SupplierView {
    /// The GPUs present.
    pub gpus: Vec<crate::telemetry::GpuDevice>,
    /// The latest sample of each.
    pub latest: Vec<GpuSample>,
    /// The leases running, or ended and not finally settled yet. Shared,
    /// not copied: the view is republished every second, and these are
    /// rebuilt only when one of them changed.
    pub leases: std::sync::Arc<Vec<SupplierLease>>,
    /// The leases nothing will change any more (finally settled, or ended
    /// where no coordinator set settles them), in the supplier's lease
    /// history; none before the runtime starts.
    pub closed: Option<std::sync::Arc<ClosedLeases>>,
    /// What this process attested since it started, over every lease.
    pub metered: Metered,
}

/// What a supplier's process attested since it started: it only grows,
/// whatever leases close or move meanwhile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metered {
    /// What the attested time is worth at the lease prices (each lease's
    /// growth by the billing rule).
    pub earned: rigmesh_protocol::Credits,
    /// GPU-milliseconds attested.
    pub gpu_ms: u64,
}

impl SupplierView {
    /// The leases running or being settled, less any the lease history
    /// took since this view was published.
    pub fn open_leases(&self) -> Vec<SupplierLease> {
        match &self.closed {
            Some(closed) => closed.still_open(&self.leases),
            None => self.leases.to_vec(),
        }
    }

    /// What every lease the supplier has had adds up to (from memory),
    /// each counted once.
    pub fn totals(&self) -> LeaseTotals {
        let closed = self.closed.as_ref().map(|c| c.totals()).unwrap_or_default();
        LeaseTotals::of(self.open_leases().iter()).plus(closed)
    }
}

/// How a supplier works with the coordinators: the set whose escrow
/// certificates it accepts, and where its leases go to be settled.
#[derive(Debug, Clone)]
pub struct Settlement {
    /// The coordinator set.
    pub set: rigmesh_protocol::CoordinatorSet,
    /// The settlement worker.
    pub worker: mpsc::Sender<SettleEvent>,
    /// What has been settled, by lease.
    pub settled: SettledBook,
    /// The node's gossip store (the coordinators' reputation reports).
    pub store: std::sync::Arc<rigmesh_ledger::MarketStore>,
    /// Customers scored below this are refused (0: nobody is).
    pub min_customer_bp: u16,
    /// The node's order book, which keeps the coordinators' newest
    /// reputation reports, so a proposal's customer is looked up rather
    /// than found by reading every stored report.
    pub book: std::sync::Arc<crate::orderbook::OrderBook>,
}

/// Counts `attested` windows into their leases' entries and into what
/// this process `metered`; returns whether an entry changed.
fn take_attested(
    book: &mut BTreeMap<Id, SupplierLease>,
    metered: &mut Metered,
    attested: &[rigmesh_protocol::Signed<rigmesh_protocol::UsageAttestation>],
) -> bool {
    let mut changed = false;
    for attestation in attested {
        let Some(entry) = book.get_mut(&attestation.body.lease) else {
            continue;
        };
        changed = true;
        let before = entry.earned;
        entry.windows_attested += 1;
        entry.billable_gpu_ms += attestation.body.billable_gpu_ms;
        entry.earned =
            rigmesh_ledger::billing::charge(entry.price_per_gpu_hour, entry.billable_gpu_ms)
                .unwrap_or(entry.earned);
        let grown = entry
            .earned
            .checked_sub(before)
            .unwrap_or(rigmesh_protocol::Credits::ZERO);
        metered.earned = metered
            .earned
            .checked_add(grown)
            .unwrap_or(rigmesh_protocol::Credits::MAX);
        metered.gpu_ms = metered
            .gpu_ms
            .saturating_add(attestation.body.billable_gpu_ms);
    }
    changed
}

/// Takes in the settlements that moved since the last pass: each lease's
/// summary is copied to its entry (a lease from before a restart gets
/// one from its terms), and a finally settled lease leaves `book` (the
/// settlement worker moved it to the lease history before it said so).
/// Returns whether `book` changed. Only the leases that moved are read.
fn take_settled(book: &mut BTreeMap<Id, SupplierLease>, settled: &SettledBook) -> bool {
    let moved = settled.take_moved();
    for (lease, summary) in &moved {
        if summary.closed {
            book.remove(lease);
            continue;
        }
        let entry = match (book.get_mut(lease), &summary.terms) {
            (Some(entry), _) => entry,
            // Leases from before a restart are listed with what their
            // settlement knows of them.
            (None, Some((customer, gpus, price, ends_at))) => {
                book.entry(*lease).or_insert_with(|| SupplierLease {
                    lease: *lease,
                    customer: *customer,
                    gpus: gpus.clone(),
                    price_per_gpu_hour: *price,
                    ends_at: *ends_at,
                    windows_attested: 0,
                    billable_gpu_ms: 0,
                    earned: rigmesh_protocol::Credits::ZERO,
                    settled: None,
                })
            }
            (None, None) => continue,
        };
        // The terms are the entry's own fields already.
        entry.settled = Some(super::settle::Settled {
            terms: None,
            ..summary.clone()
        });
    }
    !moved.is_empty()
}

/// Moves leases nobody settles to the lease history once metered out, on
/// a blocking thread; those it could not write stay in `book`.
async fn close_unsettled(
    book: &mut BTreeMap<Id, SupplierLease>,
    closed: &std::sync::Arc<ClosedLeases>,
    finished: &[Id],
) {
    let leases: Vec<SupplierLease> = finished
        .iter()
        .filter_map(|l| book.get(l).cloned())
        .collect();
    let history = std::sync::Arc::clone(closed);
    let written = tokio::task::spawn_blocking(move || {
        let mut written = Vec::new();
        for lease in &leases {
            match history.insert(lease) {
                Ok(()) => written.push(lease.lease),
                Err(err) => tracing::warn!(lease = %lease.lease, %err, "the ended lease is not in the lease history"),
            }
        }
        written
    })
    .await
    .unwrap_or_default();
    for lease in written {
        book.remove(&lease);
    }
}

/// Runs the supplier until `stop` turns true, publishing what it sees to
/// `view` every second. Without `settlement` (no coordinator set) leases
/// run unescrowed from the agreement on.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: SupplierConfig,
    key: Keypair,
    mut source: Box<dyn GpuSource>,
    network: NodeHandle,
    mut inbound: mpsc::Receiver<InboundRequest>,
    view: watch::Sender<SupplierView>,
    settlement: Option<Settlement>,
    closed: std::sync::Arc<ClosedLeases>,
    alerts_to: crate::notify::AlertSink,
    mut stop: watch::Receiver<bool>,
) {
    // The leases running or being settled; once closed, a lease moves to
    // the lease history, `closed`.
    let mut book: BTreeMap<Id, SupplierLease> = BTreeMap::new();
    let mut metered = Metered::default();
    // The leases as last published, and whether one changed since.
    let mut published: std::sync::Arc<Vec<SupplierLease>> = std::sync::Arc::default();
    let mut book_changed = true;
    let mut desk = LeaseDesk::new(key.clone());
    let mut meters: BTreeMap<Id, Meter> = BTreeMap::new();
    // Offer sequences start from the clock, so a restarted supplier's
    // offers replace the ones peers hold from before.
    let mut sequence: u64 = UnixMillis::now().0;
    let mut offers_due = UnixMillis(0);
    let mut hot: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
    let mut lost: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
    let mut watch = alerts::OfferWatch::new(
        UnixMillis::now(),
        config.untaken_alert_hours.saturating_mul(3_600_000),
        config.offer_ttl_secs.saturating_mul(1000),
    );
    let mut offering = false;
    let mut on_offer: Vec<rigmesh_protocol::Signed<rigmesh_protocol::Offer>> = Vec::new();
    let mut binding_due = UnixMillis(0);
    let mut tick = tokio::time::interval(Duration::from_millis(1000));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut market = network.subscribe();
    let mut market_open = true;
    let mut bids = bids::BidWatch::default();
    loop {
        tokio::select! {
            biased;
            changed = stop.changed() => {
                let stopping = changed.is_err() || *stop.borrow();
                if stopping {
                    return;
                }
            }
            Some(request) = inbound.recv() => {
                let before = desk.busy().len();
                if let Some(agreement) = answer(&mut desk, &mut meters, &key, &network, request, source.as_mut(), settlement.as_ref()).await {
                    if let Ok(lease) = agreement.id() {
                        let p = &agreement.body.proposal.body;
                        book_changed = true;
                        book.insert(lease, SupplierLease {
                            lease,
                            customer: p.customer,
                            gpus: agreement.body.gpu_indices.clone(),
                            price_per_gpu_hour: p.price_per_gpu_hour,
                            ends_at: agreement.body.ends_at,
                            windows_attested: 0,
                            billable_gpu_ms: 0,
                            earned: rigmesh_protocol::Credits::ZERO,
                            settled: None,
                        });
                    }
                }
                if desk.busy().len() != before {
                    offers_due = UnixMillis(0);
                    if desk.busy().len() > before {
                        watch.taken(UnixMillis::now());
                    }
                }
            }
            _ = tick.tick() => {
                let now = UnixMillis::now();
                let samples = match source.sample() {
                    Ok(samples) => samples,
                    Err(err) => {
                        tracing::warn!(%err, "GPU sampling failed");
                        continue;
                    }
                };
                let unfunded = desk.expire_unfunded(now);
                end_silent(&mut meters, config.unanswered_end_secs, now);
                let (attested, finished) = meter_round(&mut meters, &mut desk, &key, &network, &alerts_to, &samples, now).await;
                if !finished.is_empty() || !unfunded.is_empty() {
                    // GPUs came free: offer them again now.
                    offers_due = UnixMillis(0);
                }
                if let Some(s) = &settlement {
                    for a in &attested {
                        let _ = s.worker.send(SettleEvent::Attested(Box::new(a.clone()))).await;
                    }
                    for lease in &finished {
                        let _ = s.worker.send(SettleEvent::Finished(*lease)).await;
                    }
                }
                book_changed |= take_attested(&mut book, &mut metered, &attested);
                if let Some(s) = &settlement {
                    book_changed |= take_settled(&mut book, &s.settled);
                } else if !finished.is_empty() {
                    // Nobody settles these: once metered out, nothing
                    // about them changes.
                    book_changed = true;
                    close_unsettled(&mut book, &closed, &finished).await;
                }
                if std::mem::take(&mut book_changed) {
                    published = std::sync::Arc::new(book.values().cloned().collect());
                }
                let gpus = source.devices().unwrap_or_default();
                view.send_replace(SupplierView { gpus, latest: samples.clone(), leases: std::sync::Arc::clone(&published), closed: Some(std::sync::Arc::clone(&closed)), metered });
                // A GPU that vanished or came back changes what can be
                // offered: re-offer now rather than at the next refresh.
                let lost_now: std::collections::BTreeSet<u32> = samples
                    .iter()
                    .filter(|s| s.health == crate::telemetry::GpuHealth::Lost)
                    .map(|s| s.index)
                    .collect();
                if lost_now != lost {
                    lost = lost_now;
                    offers_due = UnixMillis(0);
                }
                let hot_now: std::collections::BTreeSet<u32> = samples
                    .iter()
                    .filter(|s| s.temperature_c.is_some_and(|t| t > config.max_temperature_c))
                    .map(|s| s.index)
                    .collect();
                let newly_hot: Vec<GpuSample> = samples
                    .iter()
                    .filter(|s| hot_now.contains(&s.index) && !hot.contains(&s.index))
                    .cloned()
                    .collect();
                hot = hot_now;
                if let Ok(list) = alerts::overheating(&key, &newly_hot, config.max_temperature_c, now) {
                    for alert in list {
                        alerts_to.raise(&alert.body);
                        let _ = network.publish(&WireMessage::Alert(alert)).await;
                    }
                }
                match watch.check(&key, now, offering) {
                    Ok(list) => {
                        for alert in list {
                            alerts_to.raise(&alert.body);
                            let _ = network.publish(&WireMessage::Alert(alert)).await;
                        }
                    }
                    Err(err) => tracing::warn!(%err, "could not sign an alert"),
                }
                if now >= binding_due {
                    // Customers find this node's peer from the supplier
                    // account through a signed binding.
                    if publish_binding(&key, &network, now).await {
                        binding_due = now.plus_ms(BINDING_REFRESH_MS);
                    } else {
                        binding_due = now.plus_ms(10_000);
                    }
                }
                if now >= offers_due {
                    sequence += 1;
                    let mut retry = false;
                    match source
                        .devices()
                        .map_err(|e| e.to_string())
                        .and_then(|d| build_offers(&d, desk.busy(), &config, &key, sequence, now).map_err(|e| e.to_string()))
                    {
                        Ok(offers) => {
                            match super::withdrawals(&on_offer, &offers, &key, sequence, now) {
                                Ok(gone) => {
                                    for withdrawal in gone {
                                        let _ = network.publish(&WireMessage::Offer(withdrawal)).await;
                                    }
                                }
                                Err(err) => tracing::warn!(%err, "could not sign a withdrawal"),
                            }
                            on_offer = offers.iter().map(|o| o.offer.clone()).collect();
                            let mut gossiped = !offers.is_empty();
                            for offered in &offers {
                                if let Err(err) = network.publish(&WireMessage::Offer(offered.offer.clone())).await {
                                    tracing::debug!(%err, "offer stored; not gossiped yet");
                                    gossiped = false;
                                }
                            }
                            if gossiped {
                                watch.published(now);
                            }
                            offering = !offers.is_empty();
                            retry = offering && !gossiped;
                            if let Err(err) = desk.set_offers(offers) {
                                tracing::warn!(%err, "could not index offers");
                            }
                        }
                        Err(err) => tracing::warn!(%err, "could not build offers"),
                    }
                    // Re-publish at half the lifetime, well before expiry;
                    // after a failed publish (no peers yet), try again soon.
                    offers_due = if retry {
                        now.plus_ms(10_000)
                    } else {
                        now.plus_ms(config.offer_ttl_secs.saturating_mul(500).max(1000))
                    };
                }
            }
            message = market.recv(), if market_open => match message {
                // A standing bid that the free GPUs can serve: offer again
                // now, so the waiting customer sees a fresh offer at once.
                // (Last in the select: the rig's own work comes first.)
                Ok(message) => {
                    // A termination gossiped rather than handed over (the
                    // customer's request did not get through).
                    if let WireMessage::LeaseTermination(t) = &message.message {
                        if t.body.supplier == key.public() && meters.contains_key(&t.body.lease) {
                            if let Err(reason) = terminate(t, &mut meters, &mut desk, &key) {
                                tracing::debug!(%reason, "gossiped termination not taken");
                            }
                        }
                    }
                    // Answers to our attestations: a lease nobody answers
                    // is ended (see `end_silent`).
                    let answer = match &message.message {
                        WireMessage::UsageAck(a) => Some((a.body.lease, a.body.customer, a.body.seq)),
                        WireMessage::UsageDispute(d) => Some((d.body.lease, d.body.customer, d.body.seq)),
                        _ => None,
                    };
                    if let Some((lease, customer, seq)) = answer {
                        if let Some(meter) = meters.get_mut(&lease).filter(|m| m.customer() == customer) {
                            meter.answered(seq, UnixMillis::now());
                        }
                    }
                    if let WireMessage::Bid(bid) = &message.message {
                        if bids.answer_now(&on_offer, bid, UnixMillis::now()) {
                            tracing::info!(customer = %bid.body.customer, gpu = %bid.body.gpu_model, "a standing bid our free GPUs meet: offering again now");
                            offers_due = UnixMillis(0);
                            tick.reset_immediately();
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => market_open = false,
            },
        }
    }
}

/// Bindings live a day and are re-published every 12 hours.
const BINDING_TTL_MS: u64 = 24 * 3_600_000;
pub(crate) const BINDING_REFRESH_MS: u64 = 12 * 3_600_000;

/// Publishes a binding of `key`'s account to this node's peer id.
pub(crate) async fn publish_binding(key: &Keypair, network: &NodeHandle, now: UnixMillis) -> bool {
    let binding = rigmesh_protocol::Signed::sign(
        rigmesh_protocol::NodeBinding {
            version: rigmesh_protocol::PROTOCOL_VERSION,
            account: key.public(),
            peer_id: network.peer_id().to_bytes(),
            created_at: now,
            expires_at: now.plus_ms(BINDING_TTL_MS),
        },
        key,
    );
    match binding {
        Ok(binding) => network
            .publish(&WireMessage::NodeBinding(binding))
            .await
            .is_ok(),
        Err(err) => {
            tracing::warn!(%err, "could not sign the node binding");
            false
        }
    }
}

async fn answer(
    desk: &mut LeaseDesk,
    meters: &mut BTreeMap<Id, Meter>,
    key: &Keypair,
    network: &NodeHandle,
    request: InboundRequest,
    source: &mut dyn GpuSource,
    settlement: Option<&Settlement>,
) -> Option<rigmesh_protocol::Signed<rigmesh_protocol::LeaseAgreement>> {
    let mut agreed = None;
    let decoded = match request.protocol {
        Protocol::Lease => Some(LeaseRequest::from_bytes(&request.bytes)),
        _ => None,
    };
    // Answered before anything is reserved or started: a customer below
    // this supplier's reputation minimum, and an escrow that tops up a
    // lease already running.
    let early = match (&decoded, settlement) {
        (Some(Ok(LeaseRequest::Propose(proposal))), Some(s)) => {
            refused_customer(proposal, s).map(|reason| {
                tracing::info!(customer = %proposal.body.customer, %reason, "proposal refused");
                LeaseResponse::Refused(reason)
            })
        }
        _ => None,
    };
    let decoded = match (decoded, settlement, early) {
        (_, _, Some(response)) => {
            reply(network, request, response).await;
            return None;
        }
        (Some(Ok(LeaseRequest::Fund(certificate))), Some(s), None)
            if meters.contains_key(&certificate.message.body.lease) =>
        {
            let response = top_up(desk, meters, certificate, s).await;
            reply(network, request, response).await;
            return None;
        }
        (decoded, _, None) => decoded,
    };
    let mut start = |agreement: &rigmesh_protocol::Signed<rigmesh_protocol::LeaseAgreement>,
                     escrow: Option<rigmesh_protocol::Credits>| {
        Meter::new(agreement, key.clone()).map(|meter| {
            let mut meter = match escrow {
                Some(escrow) => meter.with_escrow(escrow),
                None => meter,
            };
            if let Ok(samples) = source.sample() {
                meter.record(&samples);
            }
            meters.insert(meter.lease(), meter);
        })
    };
    let response = match decoded {
        Some(lease_request) => match lease_request {
            Ok(LeaseRequest::Propose(proposal)) => {
                match desk.answer(&proposal, UnixMillis::now()) {
                    // With coordinators, metering starts once the escrow
                    // certificate arrives; without, at once.
                    Ok(agreement) if settlement.is_some() => {
                        LeaseResponse::Agreed(Box::new(agreement))
                    }
                    Ok(agreement) => match (start)(&agreement, None) {
                        Ok(()) => {
                            if let Ok(lease) = agreement.id() {
                                desk.start_unfunded(&lease);
                            }
                            agreed = Some(agreement.clone());
                            LeaseResponse::Agreed(Box::new(agreement))
                        }
                        Err(err) => {
                            if let Ok(lease) = agreement.id() {
                                desk.end(&lease);
                            }
                            LeaseResponse::Refused(err.to_string())
                        }
                    },
                    Err(refusal) => LeaseResponse::Refused(refusal.to_string()),
                }
            }
            Ok(LeaseRequest::Fund(certificate)) => match settlement {
                None => {
                    LeaseResponse::Refused("this supplier has no coordinator set configured".into())
                }
                Some(s) => match desk.fund(&certificate, &s.set) {
                    Ok(agreement) => {
                        match (start)(&agreement, Some(certificate.message.body.amount)) {
                            Ok(()) => {
                                let _ = s
                                    .worker
                                    .send(SettleEvent::Funded(
                                        Box::new(agreement.clone()),
                                        certificate,
                                    ))
                                    .await;
                                agreed = Some(agreement);
                                LeaseResponse::Accepted
                            }
                            Err(err) => LeaseResponse::Refused(err.to_string()),
                        }
                    }
                    Err(refusal) => LeaseResponse::Refused(refusal.to_string()),
                },
            },
            Ok(LeaseRequest::Terminate(termination)) => {
                match terminate(&termination, meters, desk, key) {
                    Ok(()) => LeaseResponse::Accepted,
                    Err(reason) => LeaseResponse::Refused(reason),
                }
            }
            Err(err) => LeaseResponse::Refused(format!("malformed request: {err}")),
        },
        None => LeaseResponse::Refused(format!(
            "a supplier does not serve {:?} requests",
            request.protocol
        )),
    };
    reply(network, request, response).await;
    agreed
}

async fn reply(network: &NodeHandle, request: InboundRequest, response: LeaseResponse) {
    match response.to_bytes() {
        Ok(bytes) => {
            if let Err(err) = network
                .respond(request.protocol, request.channel, bytes)
                .await
            {
                tracing::debug!(%err, "could not answer a proposal");
            }
        }
        Err(err) => tracing::warn!(%err, "could not encode an answer"),
    }
}

/// Why a proposal's customer is refused for its reputation, if it is:
/// its score as a customer, reported by the coordinators, is below the
/// supplier's minimum. A customer with no report is accepted.
fn refused_customer(
    proposal: &rigmesh_protocol::Signed<rigmesh_protocol::LeaseProposal>,
    s: &Settlement,
) -> Option<String> {
    let min_bp = s.min_customer_bp;
    if min_bp == 0 {
        return None;
    }
    let customer = proposal.body.customer;
    let score = s
        .book
        .score(rigmesh_protocol::Role::Customer, &customer, &s.set)?;
    (score < min_bp).then(|| {
        format!(
            "this supplier leases to customers with a reputation of at least {min_bp} basis points; yours is {score}"
        )
    })
}

/// Takes an escrow top-up of a running lease (its customer raised the
/// cap): metering goes on until the larger escrow is spent.
async fn top_up(
    desk: &LeaseDesk,
    meters: &mut BTreeMap<Id, Meter>,
    certificate: Box<rigmesh_protocol::EscrowCertificate>,
    settlement: &Settlement,
) -> LeaseResponse {
    let order = &certificate.message.body;
    let (lease, amount) = (order.lease, order.amount);
    let Some(meter) = meters.get_mut(&lease) else {
        return LeaseResponse::Refused(format!("lease {lease} is not running here"));
    };
    if let Err(refusal) =
        desk.check_top_up(&certificate, &lease, &meter.customer(), &settlement.set)
    {
        return LeaseResponse::Refused(refusal.to_string());
    }
    if !meter.top_up(amount) {
        return LeaseResponse::Refused(
            "the lease's metering is over; the top-up comes back with its final settlement".into(),
        );
    }
    tracing::info!(%lease, %amount, "escrow topped up: the customer raised its cap");
    let _ = settlement
        .worker
        .send(SettleEvent::ToppedUp(certificate))
        .await;
    LeaseResponse::Accepted
}

/// Honours a customer's signed termination: the window in progress is the
/// lease's last.
pub(crate) fn terminate(
    termination: &rigmesh_protocol::Signed<rigmesh_protocol::LeaseTermination>,
    meters: &mut BTreeMap<Id, Meter>,
    desk: &mut LeaseDesk,
    key: &Keypair,
) -> Result<(), String> {
    termination
        .verify(&rigmesh_protocol::Clock::system())
        .map_err(|e| format!("invalid termination: {e}"))?;
    let t = &termination.body;
    if t.supplier != key.public() {
        return Err("the termination names another supplier".into());
    }
    // An agreement still waiting for its escrow: its customer lets the
    // GPUs go (its escrow failed), so they are offered again at once.
    if desk.release_unfunded(&t.lease, &t.customer) {
        tracing::info!(lease = %t.lease, "the customer released an unfunded lease; its GPUs are free");
        return Ok(());
    }
    let meter = meters
        .get_mut(&t.lease)
        .ok_or_else(|| format!("lease {} is not running here", t.lease))?;
    if meter.customer() != t.customer {
        return Err("only the lease's customer can end it".into());
    }
    meter.end_after_current_window();
    tracing::info!(lease = %t.lease, reason = ?t.reason, "lease ends after the current window");
    Ok(())
}

/// Ends, after the window in progress, each lease whose customer has
/// answered none of its attested windows for `limit_secs` (and at least
/// five windows): those windows may never be paid (a termination the
/// customer dated back, disputes), and the GPUs are better offered again.
fn end_silent(meters: &mut BTreeMap<Id, Meter>, limit_secs: u64, now: UnixMillis) {
    if limit_secs == 0 {
        return;
    }
    for (lease, meter) in meters.iter_mut() {
        let limit = limit_secs
            .saturating_mul(1000)
            .max(meter.window_ms().saturating_mul(5));
        if meter.silent_ms(now) >= limit && !meter.ending() {
            tracing::warn!(%lease, silent_secs = meter.silent_ms(now) / 1000, "the customer answers no window: the lease ends after this one");
            meter.end_after_current_window();
        }
    }
}

async fn meter_round(
    meters: &mut BTreeMap<Id, Meter>,
    desk: &mut LeaseDesk,
    key: &Keypair,
    network: &NodeHandle,
    alerts_to: &crate::notify::AlertSink,
    samples: &[GpuSample],
    now: UnixMillis,
) -> (
    Vec<rigmesh_protocol::Signed<rigmesh_protocol::UsageAttestation>>,
    Vec<Id>,
) {
    let mut attested = Vec::new();
    let mut finished = Vec::new();
    for (lease, meter) in meters.iter_mut() {
        let events = meter.record(samples);
        for event in &events {
            if let Ok(alert) = alerts::for_meter_event(key, *lease, event, now) {
                alerts_to.raise(&alert.body);
                let _ = network.publish(&WireMessage::Alert(alert)).await;
            }
        }
        // Every GPU of the lease answers again: the page stops.
        if events
            .iter()
            .any(|e| matches!(e, MeterEvent::GpuBack { .. }))
            && !meter.any_gpu_lost()
        {
            alerts_to.resolve(&alerts::dropped(key, *lease, now));
        }
        while now >= meter.window_end() && !meter.finished() {
            match meter.close_window(now) {
                Ok(attestation) => {
                    if let Err(err) = network
                        .publish(&WireMessage::UsageAttestation(attestation.clone()))
                        .await
                    {
                        tracing::warn!(%err, "attestation stored; not gossiped yet");
                    }
                    attested.push(attestation);
                }
                Err(err) => {
                    tracing::warn!(%err, "could not attest a window");
                    break;
                }
            }
        }
        if meter.finished() {
            finished.push(*lease);
        }
    }
    for lease in &finished {
        meters.remove(lease);
        desk.end(lease);
    }
    (attested, finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supplier::settle::Settled;
    use rigmesh_protocol::Credits;

    fn entry(n: u8) -> SupplierLease {
        SupplierLease {
            lease: Id([n; 32]),
            customer: Keypair::from_seed([n; 32]).public(),
            gpus: vec![u16::from(n)],
            price_per_gpu_hour: Credits::from_units(2_000_000),
            ends_at: UnixMillis(u64::from(n) * 1_000),
            windows_attested: 4,
            billable_gpu_ms: 4_000,
            earned: Credits::from_units(2_222),
            settled: None,
        }
    }

    fn summary(earned: i64, closed: bool, terms_of: Option<&SupplierLease>) -> Settled {
        Settled {
            terms: terms_of.map(|l| (l.customer, l.gpus.clone(), l.price_per_gpu_hour, l.ends_at)),
            earned: Credits::from_units(earned),
            closed,
            ..Settled::default()
        }
    }

    /// Each pass takes only the settlements that moved; a finally settled
    /// lease leaves the open leases and the settlement book, and a lease
    /// from before a restart is listed from its terms.
    #[test]
    fn the_view_takes_the_settlements_that_moved_and_drops_the_final_ones() {
        let (a, b) = (entry(1), entry(2));
        let mut book: BTreeMap<Id, SupplierLease> =
            [(a.lease, a.clone()), (b.lease, b.clone())].into();
        let settled = SettledBook::default();
        settled.update(a.lease, |s| *s = summary(1_000, false, Some(&a)));
        settled.update(b.lease, |s| *s = summary(2_000, true, Some(&b)));
        // Resumed at start, still open.
        let d = entry(4);
        settled.update(d.lease, |s| *s = summary(0, false, Some(&d)));

        assert!(take_settled(&mut book, &settled));
        assert_eq!(
            book.keys().copied().collect::<Vec<_>>(),
            vec![a.lease, d.lease]
        );
        let a_settled = book[&a.lease].settled.as_ref().unwrap();
        assert_eq!(a_settled.earned, Credits::from_units(1_000));
        assert_eq!(a_settled.terms, None, "the entry's own fields hold them");
        assert_eq!(book[&a.lease].windows_attested, 4, "what was metered stays");
        assert_eq!(book[&d.lease].windows_attested, 0, "listed from its terms");
        assert_eq!(book[&d.lease].gpus, d.gpus);
        assert_eq!(settled.len(), 2, "the final one left the settlement book");

        // Nothing moved: nothing is read and nothing changes.
        assert!(!take_settled(&mut book, &settled));
        // One moved: it alone is taken.
        settled.update(a.lease, |s| s.earned = Credits::from_units(1_500));
        let moved = settled.take_moved();
        assert_eq!(moved.len(), 1);
        settled.update(a.lease, |s| *s = moved[0].1.clone());
        settled.update(a.lease, |s| s.closed = true);
        assert!(take_settled(&mut book, &settled));
        assert_eq!(book.keys().copied().collect::<Vec<_>>(), vec![d.lease]);
        assert_eq!(settled.len(), 1);
    }

    /// Each attested window grows its lease's entry and what the process
    /// metered by the same amount; one of a lease not listed counts for
    /// neither.
    #[test]
    fn attested_windows_count_into_their_lease_and_what_was_metered() {
        let mut a = entry(1);
        a.lease = rigmesh_protocol::samples::lease_agreement()
            .unwrap()
            .id()
            .unwrap();
        let (before_earned, before_gpu_ms) = (a.earned, a.billable_gpu_ms);
        let mut book: BTreeMap<Id, SupplierLease> = [(a.lease, a.clone())].into();
        let attestation = rigmesh_protocol::samples::usage_attestation().unwrap();
        assert_eq!(attestation.body.lease, a.lease);
        let mut stray = attestation.body.clone();
        stray.lease = Id([9; 32]);
        let stray =
            rigmesh_protocol::Signed::sign(stray, &rigmesh_protocol::samples::supplier()).unwrap();
        let mut metered = Metered::default();
        assert!(take_attested(
            &mut book,
            &mut metered,
            &[attestation.clone(), stray.clone()]
        ));
        let grown = &book[&a.lease];
        let gpu_ms = attestation.body.billable_gpu_ms;
        assert_eq!(grown.windows_attested, a.windows_attested + 1);
        assert_eq!(grown.billable_gpu_ms, before_gpu_ms + gpu_ms);
        assert_eq!(
            grown.earned,
            rigmesh_ledger::billing::charge(a.price_per_gpu_hour, before_gpu_ms + gpu_ms).unwrap()
        );
        assert_eq!(metered.gpu_ms, gpu_ms);
        assert_eq!(
            metered.earned,
            grown.earned.checked_sub(before_earned).unwrap()
        );
        assert!(!take_attested(&mut book, &mut metered, &[stray]));
    }

    /// Where no coordinator set settles, a metered-out lease moves to the
    /// lease history as it was metered.
    #[tokio::test]
    async fn an_unsettled_lease_moves_to_the_history_once_metered_out() {
        let (a, b) = (entry(1), entry(2));
        let mut book: BTreeMap<Id, SupplierLease> =
            [(a.lease, a.clone()), (b.lease, b.clone())].into();
        let closed = std::sync::Arc::new(ClosedLeases::in_memory().unwrap());
        close_unsettled(&mut book, &closed, &[b.lease]).await;
        assert_eq!(book.keys().copied().collect::<Vec<_>>(), vec![a.lease]);
        assert_eq!(closed.latest(5).unwrap(), vec![b]);
        assert!(closed.closed_lately(&entry(2).lease));
        let view = SupplierView {
            leases: std::sync::Arc::new(vec![a.clone(), entry(2)]),
            closed: Some(closed),
            ..SupplierView::default()
        };
        assert_eq!(
            view.open_leases(),
            vec![a],
            "one closed since the view was published"
        );
        assert_eq!(view.totals().leases, 2);
    }
}
