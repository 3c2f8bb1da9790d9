//! Standing bids: a bid that matched nothing when it was made and may wait
//! for an offer. The customer signs a `Bid` for the suppliers to see (one
//! that can serve it re-publishes its offer at once), and looks at the book
//! again whenever an offer that meets the bid arrives, or a supplier's
//! node binding (an offer whose supplier could not yet be reached may now
//! be), until a lease is made or the wait ends.
//!
//! This module is the bookkeeping: which bids wait, when each must end,
//! what each has seen; the runtime does the looking and the leasing.
//! Memory is bounded: at most [`MAX_WAITING_BIDS`] wait at once, and the
//! last [`KEPT_FINISHED_BIDS`] finished ones are kept for the CLI to read.

use std::collections::{BTreeMap, VecDeque};

use rigmesh_protocol::messages::market::BID_MAX_TTL_MS;
use rigmesh_protocol::{
    Bid, Clock, Credits, Id, Keypair, Offer, Signed, UnixMillis, PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};

use super::book::{meets, BookQuery};
use super::commands::{BidError, BidRequest, LeaseStatus};

/// Bids that may wait at once; more are refused until one ends.
pub const MAX_WAITING_BIDS: usize = 16;

/// Finished bids kept so their outcome can still be read.
pub const KEPT_FINISHED_BIDS: usize = 32;

/// The longest wait: a bid's longest lifetime (24 hours).
pub const MAX_WAIT_SECS: u64 = BID_MAX_TTL_MS / 1000;

/// After a failed publication (no peers yet), the bid is signed afresh and
/// published again this much later.
const REPUBLISH_MS: u64 = 5_000;

/// Where a standing bid is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BidState {
    /// Waiting for an offer.
    Waiting,
    /// A lease was made.
    Leased,
    /// The wait ended with no lease.
    NoMatch,
    /// Cancelled by the customer.
    Cancelled,
}

/// A standing bid as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BidStatus {
    /// The signed bid's id.
    pub id: Id,
    /// Where it is.
    pub state: BidState,
    /// GPU model wanted.
    pub gpu: String,
    /// GPUs wanted.
    pub count: u16,
    /// Most per GPU-hour.
    pub max_price: Credits,
    /// Lease length, hours.
    pub hours: u32,
    /// When it was placed.
    pub placed_at: UnixMillis,
    /// When the wait ends.
    pub wait_until: UnixMillis,
    /// How long it waited (so far, or in all once finished), ms.
    pub waited_ms: u64,
    /// How many times the book was searched again for it.
    pub attempts: u32,
    /// Whether the signed bid reached the network's peers.
    pub published: bool,
    /// Why there is no lease yet (waiting), or in the end (no match).
    pub reason: Option<String>,
    /// The lease, once made.
    pub lease: Option<LeaseStatus>,
}

#[derive(Debug)]
struct Standing {
    status: BidStatus,
    request: BidRequest,
    query: BookQuery,
    /// When to sign and publish the bid again, while it has not reached
    /// any peer.
    republish_at: Option<UnixMillis>,
}

/// The standing bids of a customer.
#[derive(Debug, Default)]
pub struct StandingBids {
    waiting: BTreeMap<Id, Standing>,
    finished: VecDeque<BidStatus>,
    /// Something arrived that may let a waiting bid match.
    dirty: bool,
}

/// Signs the `Bid` that announces `request` to suppliers until `until`.
/// Fails, naming the field, for a bid no peer would accept.
pub fn sign_bid(
    key: &Keypair,
    request: &BidRequest,
    now: UnixMillis,
    until: UnixMillis,
) -> Result<Signed<Bid>, BidError> {
    let invalid = |e: rigmesh_protocol::Error| BidError::Invalid(e.to_string());
    let bid = Signed::sign(
        Bid {
            version: PROTOCOL_VERSION,
            customer: key.public(),
            gpu_model: request.gpu.clone(),
            min_memory_mib: request.min_memory_mib,
            gpu_count: request.count,
            max_price_per_gpu_hour: request.max_price,
            hours: request.hours,
            region: request.region.clone(),
            created_at: now,
            expires_at: until,
        },
        key,
    )
    .map_err(invalid)?;
    bid.verify(&Clock::at(now)).map_err(invalid)?;
    Ok(bid)
}

/// How long `request` may wait, checked: `None` for no wait.
pub fn wait_of(request: &BidRequest) -> Result<Option<u64>, BidError> {
    match request.wait_secs {
        None | Some(0) => Ok(None),
        Some(secs) if secs > MAX_WAIT_SECS => Err(BidError::Invalid(format!(
            "wait_secs is {secs}; a bid can wait at most {MAX_WAIT_SECS} s (24 h)"
        ))),
        Some(secs) => Ok(Some(secs)),
    }
}

impl StandingBids {
    /// Starts waiting on `bid` for `request`; `reason` is why nothing
    /// matched now and `published` whether the bid reached peers.
    pub fn place(
        &mut self,
        bid: &Signed<Bid>,
        request: BidRequest,
        reason: String,
        published: bool,
        now: UnixMillis,
    ) -> Result<BidStatus, BidError> {
        if self.waiting.len() >= MAX_WAITING_BIDS {
            return Err(BidError::Invalid(format!(
                "{MAX_WAITING_BIDS} bids are already waiting on this node; wait for one to end or cancel one"
            )));
        }
        let id = bid.id().map_err(|e| BidError::Failed(e.to_string()))?;
        let status = BidStatus {
            id,
            state: BidState::Waiting,
            gpu: request.gpu.clone(),
            count: request.count,
            max_price: request.max_price,
            hours: request.hours,
            placed_at: now,
            wait_until: bid.body.expires_at,
            waited_ms: 0,
            attempts: 0,
            published,
            reason: Some(reason),
            lease: None,
        };
        self.waiting.insert(
            id,
            Standing {
                status: status.clone(),
                query: BookQuery::for_bid(&bid.body),
                request,
                republish_at: (!published).then(|| now.plus_ms(REPUBLISH_MS)),
            },
        );
        Ok(status)
    }

    /// True while some bid waits.
    pub fn any_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The waiting bids and what each asks for.
    pub fn waiting(&self) -> Vec<(Id, BidRequest)> {
        self.waiting
            .iter()
            .map(|(id, s)| (*id, s.request.clone()))
            .collect()
    }

    /// What a waiting bid asks for.
    pub fn request(&self, id: &Id) -> Option<BidRequest> {
        self.waiting.get(id).map(|s| s.request.clone())
    }

    /// Notes a newly arrived offer: worth another look if it meets a
    /// waiting bid.
    pub fn offer_arrived(&mut self, offer: &Offer, now: UnixMillis) {
        if self.waiting.values().any(|s| meets(offer, &s.query, now)) {
            self.dirty = true;
        }
    }

    /// Notes that something else arrived that may let a bid match (a node
    /// binding, or messages missed while behind).
    pub fn something_arrived(&mut self) {
        if self.any_waiting() {
            self.dirty = true;
        }
    }

    /// Whether to look at the book again now; clears the mark.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty) && self.any_waiting()
    }

    /// Records a look at the book that made no lease, and why.
    pub fn attempted(&mut self, id: &Id, reason: String, now: UnixMillis) {
        if let Some(s) = self.waiting.get_mut(id) {
            s.status.attempts = s.status.attempts.saturating_add(1);
            s.status.reason = Some(reason);
            s.status.waited_ms = now.since(s.status.placed_at);
        }
    }

    /// Ends a waiting bid in `state`; returns its final status.
    pub fn finish(
        &mut self,
        id: &Id,
        state: BidState,
        reason: Option<String>,
        lease: Option<LeaseStatus>,
        now: UnixMillis,
    ) -> Option<BidStatus> {
        let mut s = self.waiting.remove(id)?;
        s.status.state = state;
        s.status.waited_ms = now.since(s.status.placed_at);
        if reason.is_some() || state == BidState::Leased {
            s.status.reason = reason;
        }
        s.status.lease = lease;
        if self.finished.len() >= KEPT_FINISHED_BIDS {
            self.finished.pop_front();
        }
        self.finished.push_back(s.status.clone());
        Some(s.status)
    }

    /// The waiting bids whose wait is over at `now`.
    pub fn due(&self, now: UnixMillis) -> Vec<Id> {
        self.waiting
            .iter()
            .filter(|(_, s)| now >= s.status.wait_until)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The waiting bids not yet published whose retry is due, with their
    /// requests and wait ends.
    pub fn republish_due(&self, now: UnixMillis) -> Vec<(Id, BidRequest, UnixMillis)> {
        self.waiting
            .iter()
            .filter(|(_, s)| s.republish_at.is_some_and(|at| now >= at))
            .map(|(id, s)| (*id, s.request.clone(), s.status.wait_until))
            .collect()
    }

    /// Records the outcome of publishing a waiting bid again.
    pub fn republished(&mut self, id: &Id, published: bool, now: UnixMillis) {
        if let Some(s) = self.waiting.get_mut(id) {
            s.status.published = published;
            s.republish_at = (!published).then(|| now.plus_ms(REPUBLISH_MS));
        }
    }

    /// One bid, waiting or recently finished.
    pub fn status(&self, id: &Id, now: UnixMillis) -> Option<BidStatus> {
        if let Some(s) = self.waiting.get(id) {
            let mut status = s.status.clone();
            status.waited_ms = now.since(status.placed_at);
            return Some(status);
        }
        self.finished.iter().find(|s| s.id == *id).cloned()
    }

    /// Every bid kept: the waiting ones, then the finished ones, newest
    /// last.
    pub fn list(&self, now: UnixMillis) -> Vec<BidStatus> {
        let mut all: Vec<BidStatus> = self
            .waiting
            .keys()
            .filter_map(|id| self.status(id, now))
            .collect();
        all.extend(self.finished.iter().cloned());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: UnixMillis = UnixMillis(1_800_000_000_000);

    fn request(wait: Option<u64>) -> BidRequest {
        BidRequest {
            gpu: "A100".into(),
            count: 2,
            max_price: "2.00".parse().unwrap(),
            hours: 1,
            min_memory_mib: 0,
            region: None,
            budget: None,
            window_secs: None,
            wait_secs: wait,
            min_reputation_bp: 0,
        }
    }

    fn offer(price: &str) -> Offer {
        Offer {
            version: PROTOCOL_VERSION,
            supplier: Keypair::from_seed([2; 32]).public(),
            sequence: 1,
            gpu_model: "A100".into(),
            gpu_memory_mib: 81_920,
            gpu_count: 4,
            price_per_gpu_hour: price.parse().unwrap(),
            min_hours: 1,
            max_hours: 8,
            region: "eu".into(),
            hardware_fingerprint: Id([5; 32]),
            created_at: T0,
            expires_at: T0.plus_ms(600_000),
        }
    }

    #[test]
    fn a_bid_waits_until_a_meeting_offer_arrives_or_its_time_is_up() {
        let key = Keypair::from_seed([1; 32]);
        let wait = wait_of(&request(Some(300))).unwrap().unwrap();
        let bid = sign_bid(&key, &request(Some(300)), T0, T0.plus_ms(wait * 1000)).unwrap();
        assert_eq!(bid.body.customer, key.public());
        let mut bids = StandingBids::default();
        let placed = bids
            .place(
                &bid,
                request(Some(300)),
                "no offers for A100".into(),
                false,
                T0,
            )
            .unwrap();
        assert_eq!(placed.state, BidState::Waiting);
        assert_eq!(placed.wait_until, T0.plus_ms(300_000));
        assert!(!bids.take_dirty());
        bids.offer_arrived(&offer("2.50"), T0);
        assert!(!bids.take_dirty(), "too dear an offer is not worth a look");
        bids.offer_arrived(&offer("1.90"), T0);
        assert!(bids.take_dirty());
        assert!(!bids.take_dirty(), "the mark is cleared");
        bids.attempted(
            &placed.id,
            "refused by the supplier: busy".into(),
            T0.plus_ms(10),
        );
        assert_eq!(bids.republish_due(T0.plus_ms(4_999)).len(), 0);
        assert_eq!(bids.republish_due(T0.plus_ms(5_000)).len(), 1);
        bids.republished(&placed.id, true, T0.plus_ms(5_000));
        assert!(bids.republish_due(T0.plus_ms(60_000)).is_empty());
        let status = bids.status(&placed.id, T0.plus_ms(7_000)).unwrap();
        assert_eq!((status.attempts, status.waited_ms), (1, 7_000));
        assert!(status.published);
        assert!(bids.due(T0.plus_ms(299_999)).is_empty());
        assert_eq!(bids.due(T0.plus_ms(300_000)), [placed.id]);
        let done = bids
            .finish(
                &placed.id,
                BidState::NoMatch,
                Some("no offers for A100".into()),
                None,
                T0.plus_ms(300_000),
            )
            .unwrap();
        assert_eq!(done.waited_ms, 300_000);
        assert!(!bids.any_waiting());
        assert_eq!(bids.list(T0.plus_ms(400_000)), std::slice::from_ref(&done));
        assert_eq!(bids.status(&placed.id, T0.plus_ms(400_000)), Some(done));
    }

    #[test]
    fn waits_and_bids_are_bounded() {
        let err = wait_of(&request(Some(MAX_WAIT_SECS + 1))).unwrap_err();
        assert!(matches!(err, BidError::Invalid(_)), "{err}");
        assert_eq!(wait_of(&request(Some(0))).unwrap(), None);
        let key = Keypair::from_seed([1; 32]);
        let bad = BidRequest {
            count: 0,
            ..request(Some(60))
        };
        let err = sign_bid(&key, &bad, T0, T0.plus_ms(60_000)).unwrap_err();
        assert!(err.to_string().contains("gpu_count"), "{err}");
        let mut bids = StandingBids::default();
        for i in 0..MAX_WAITING_BIDS {
            let bid = sign_bid(
                &key,
                &request(Some(60)),
                T0.plus_ms(i as u64),
                T0.plus_ms(60_000),
            )
            .unwrap();
            bids.place(&bid, request(Some(60)), String::new(), true, T0)
                .unwrap();
        }
        let bid = sign_bid(&key, &request(Some(60)), T0.plus_ms(99), T0.plus_ms(60_000)).unwrap();
        let err = bids
            .place(&bid, request(Some(60)), String::new(), true, T0)
            .unwrap_err();
        assert!(err.to_string().contains("already waiting"), "{err}");
        for (i, (id, _)) in bids.waiting().into_iter().enumerate() {
            bids.finish(&id, BidState::Cancelled, None, None, T0);
            assert!(i < MAX_WAITING_BIDS);
        }
        assert_eq!(bids.list(T0).len(), MAX_WAITING_BIDS);
    }
}
