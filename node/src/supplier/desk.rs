//! The lease desk: answers customers' proposals with a signed agreement or
//! a reason, and keeps which GPUs are leased.

use std::collections::{BTreeMap, BTreeSet};

use rigmesh_protocol::{
    Clock, CoordinatorSet, EscrowCertificate, Id, Keypair, LeaseAgreement, LeaseProposal, Signed,
    UnixMillis, PROTOCOL_VERSION,
};

/// How long an agreement waits for its escrow certificate before its GPUs
/// are offered again.
pub const FUNDING_WINDOW_MS: u64 = 120_000;

/// Agreements one customer may hold unfunded at once: a customer without
/// money cannot take more GPUs off the market than this.
pub const MAX_UNFUNDED_PER_CUSTOMER: usize = 2;

use super::OfferedGpus;

/// Why a proposal was refused; the text goes back to the customer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The proposal itself is invalid (signature, fields, expiry).
    #[error("invalid proposal: {0}")]
    Invalid(String),
    /// The proposal is addressed to another supplier.
    #[error("this supplier is not the one the proposal names")]
    WrongSupplier,
    /// The offer is unknown or no longer current.
    #[error("offer {0} is not a current offer of this supplier")]
    UnknownOffer(Id),
    /// Fewer free GPUs than asked for.
    #[error("{wanted} GPUs asked for, {free} free")]
    NotEnoughGpus {
        /// GPUs asked for.
        wanted: u16,
        /// GPUs free under the offer.
        free: usize,
    },
    /// The proposed price is below the offer's.
    #[error("price {proposed} is below the offer's {offered} per GPU-hour")]
    PriceBelowOffer {
        /// The offer's price.
        offered: String,
        /// The proposal's price.
        proposed: String,
    },
    /// The lease length is outside the offer's range.
    #[error("{hours} h is outside the offer's {min}..={max} h")]
    HoursOutOfRange {
        /// Hours proposed.
        hours: u32,
        /// The offer's minimum.
        min: u32,
        /// The offer's maximum.
        max: u32,
    },
    /// The customer's escrow does not cover the lease.
    #[error("escrow: {0}")]
    Escrow(String),
    /// The same signed proposal again: each is answered once.
    #[error("proposal {0} was answered already")]
    Replayed(Id),
    /// The customer already holds agreements waiting for escrow.
    #[error("{0} agreements of this customer are still waiting for escrow")]
    TooManyUnfunded(usize),
}

/// Offers on the table and GPUs under lease.
#[derive(Debug)]
pub struct LeaseDesk {
    key: Keypair,
    offers: BTreeMap<Id, OfferedGpus>,
    busy: BTreeSet<u32>,
    leases: BTreeMap<Id, Vec<u32>>,
    unfunded: BTreeMap<Id, (Signed<LeaseAgreement>, UnixMillis)>,
    /// Proposals answered, by id, until they expire.
    answered: BTreeMap<Id, UnixMillis>,
}

impl LeaseDesk {
    /// A desk signing with the supplier's `key`.
    pub fn new(key: Keypair) -> Self {
        LeaseDesk {
            key,
            offers: BTreeMap::new(),
            busy: BTreeSet::new(),
            leases: BTreeMap::new(),
            unfunded: BTreeMap::new(),
            answered: BTreeMap::new(),
        }
    }

    /// Replaces the current offers.
    pub fn set_offers(&mut self, offers: Vec<OfferedGpus>) -> rigmesh_protocol::Result<()> {
        self.offers.clear();
        for offered in offers {
            self.offers.insert(offered.offer.id()?, offered);
        }
        Ok(())
    }

    /// GPUs under lease.
    pub fn busy(&self) -> &BTreeSet<u32> {
        &self.busy
    }

    /// Answers a proposal at `now`: a signed agreement on free GPUs of the
    /// offer, or why not. Nothing changes on a refusal.
    pub fn answer(
        &mut self,
        proposal: &Signed<LeaseProposal>,
        now: UnixMillis,
    ) -> Result<Signed<LeaseAgreement>, Refusal> {
        proposal
            .verify(&Clock::at(now))
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        let p = &proposal.body;
        if p.supplier != self.key.public() {
            return Err(Refusal::WrongSupplier);
        }
        let proposal_id = proposal.id().map_err(|e| Refusal::Invalid(e.to_string()))?;
        self.answered.retain(|_, expires| *expires >= now);
        if self.answered.contains_key(&proposal_id) {
            return Err(Refusal::Replayed(proposal_id));
        }
        let waiting = self
            .unfunded
            .values()
            .filter(|(a, _)| a.body.proposal.body.customer == p.customer)
            .count();
        if waiting >= MAX_UNFUNDED_PER_CUSTOMER {
            return Err(Refusal::TooManyUnfunded(waiting));
        }
        let offered = self
            .offers
            .get(&p.offer)
            .ok_or(Refusal::UnknownOffer(p.offer))?;
        let offer = &offered.offer.body;
        if p.price_per_gpu_hour < offer.price_per_gpu_hour {
            return Err(Refusal::PriceBelowOffer {
                offered: offer.price_per_gpu_hour.to_string(),
                proposed: p.price_per_gpu_hour.to_string(),
            });
        }
        if p.hours < offer.min_hours || p.hours > offer.max_hours {
            return Err(Refusal::HoursOutOfRange {
                hours: p.hours,
                min: offer.min_hours,
                max: offer.max_hours,
            });
        }
        let free: Vec<_> = offered
            .devices
            .iter()
            .filter(|d| !self.busy.contains(&d.index))
            .collect();
        let wanted = usize::from(p.gpu_count);
        if free.len() < wanted {
            return Err(Refusal::NotEnoughGpus {
                wanted: p.gpu_count,
                free: free.len(),
            });
        }
        let chosen: Vec<_> = free.into_iter().take(wanted).collect();
        let indices: Vec<u16> = chosen
            .iter()
            .map(|d| u16::try_from(d.index).unwrap_or(u16::MAX))
            .collect();
        let uuids: Vec<&str> = chosen.iter().map(|d| d.uuid.as_str()).collect();
        let body = LeaseAgreement {
            version: PROTOCOL_VERSION,
            supplier: self.key.public(),
            proposal: proposal.clone(),
            gpu_indices: indices,
            hardware_fingerprint: Id::hardware_fingerprint(&uuids),
            starts_at: now,
            ends_at: now.plus_ms(u64::from(p.hours) * 3_600_000),
            created_at: now,
        };
        let agreement =
            Signed::sign(body, &self.key).map_err(|e| Refusal::Invalid(e.to_string()))?;
        let lease = agreement
            .id()
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        let gpus: Vec<u32> = chosen.iter().map(|d| d.index).collect();
        self.busy.extend(gpus.iter().copied());
        self.leases.insert(lease, gpus);
        self.unfunded
            .insert(lease, (agreement.clone(), now.plus_ms(FUNDING_WINDOW_MS)));
        // Kept until the proposal expires (plus the skew a peer's clock
        // may have), after which it is refused as expired anyway.
        self.answered.insert(
            proposal_id,
            p.expires_at
                .plus_ms(rigmesh_protocol::time::DEFAULT_CLOCK_SKEW_MS),
        );
        Ok(agreement)
    }

    /// Checks the escrow certificate a customer hands over for an agreed
    /// lease (specs/settlement.md 5.3): certified by a quorum of `set`, for
    /// this lease, paying this supplier, from the lease's customer, and
    /// covering at least one whole window of all the lease's GPUs at the
    /// agreed price (or the whole lease, if that costs less). An escrow
    /// below the lease's cost is the customer's budget cap: the lease is
    /// metered until it is spent. Returns the agreement, now funded;
    /// nothing changes on a refusal.
    pub fn fund(
        &mut self,
        certificate: &EscrowCertificate,
        set: &CoordinatorSet,
    ) -> Result<Signed<LeaseAgreement>, Refusal> {
        certificate
            .verify(set)
            .map_err(|e| Refusal::Escrow(e.to_string()))?;
        let order = &certificate.message.body;
        let (agreement, _) = self.unfunded.get(&order.lease).ok_or_else(|| {
            Refusal::Escrow(format!("lease {} is not waiting for escrow", order.lease))
        })?;
        let p = &agreement.body.proposal.body;
        if order.supplier != self.key.public() {
            return Err(Refusal::Escrow("the escrow pays another supplier".into()));
        }
        if order.account != p.customer {
            return Err(Refusal::Escrow(
                "the escrow is paid by another account than the lease's customer".into(),
            ));
        }
        let least = lease_cost(agreement)
            .and_then(|cost| window_cost(agreement).map(|window| cost.min(window)));
        if least.is_none_or(|least| order.amount < least) {
            return Err(Refusal::Escrow(format!(
                "{} escrowed; at least {} is needed, one window of every GPU of the lease",
                order.amount,
                least.map_or_else(|| "more".to_string(), |c| c.to_string())
            )));
        }
        let agreement = agreement.clone();
        self.unfunded.remove(&order.lease);
        Ok(agreement)
    }

    /// Checks an escrow certificate that tops up the running `lease` of
    /// `customer` (who raised its cap): certified by a quorum of `set`,
    /// for this lease, paying this supplier, from its customer.
    pub fn check_top_up(
        &self,
        certificate: &EscrowCertificate,
        lease: &Id,
        customer: &rigmesh_protocol::PublicKey,
        set: &CoordinatorSet,
    ) -> Result<(), Refusal> {
        certificate
            .verify(set)
            .map_err(|e| Refusal::Escrow(e.to_string()))?;
        let order = &certificate.message.body;
        if order.lease != *lease
            || order.supplier != self.key.public()
            || order.account != *customer
        {
            return Err(Refusal::Escrow(
                "the top-up is not for this lease, supplier and customer".into(),
            ));
        }
        Ok(())
    }

    /// Frees the GPUs of an agreement still waiting for its escrow when
    /// its `customer` gives it up; false when there is no such agreement.
    pub fn release_unfunded(&mut self, lease: &Id, customer: &rigmesh_protocol::PublicKey) -> bool {
        let theirs = self
            .unfunded
            .get(lease)
            .is_some_and(|(a, _)| a.body.proposal.body.customer == *customer);
        if theirs {
            self.end(lease);
        }
        theirs
    }

    /// Marks an agreed lease as running without escrow (a market with no
    /// coordinator set configured).
    pub fn start_unfunded(&mut self, lease: &Id) {
        self.unfunded.remove(lease);
    }

    /// Frees the GPUs of agreements whose escrow did not arrive in time.
    pub fn expire_unfunded(&mut self, now: UnixMillis) -> Vec<Id> {
        let expired: Vec<Id> = self
            .unfunded
            .iter()
            .filter(|(_, (_, deadline))| now > *deadline)
            .map(|(lease, _)| *lease)
            .collect();
        for lease in &expired {
            tracing::info!(%lease, "no escrow arrived; the GPUs are offered again");
            self.end(lease);
        }
        expired
    }

    /// Ends a lease and frees its GPUs.
    pub fn end(&mut self, lease: &Id) {
        self.unfunded.remove(lease);
        if let Some(gpus) = self.leases.remove(lease) {
            for gpu in gpus {
                self.busy.remove(&gpu);
            }
        }
    }
}

/// What one full metering window of all a lease's GPUs costs.
pub fn window_cost(agreement: &Signed<LeaseAgreement>) -> Option<rigmesh_protocol::Credits> {
    let p = &agreement.body.proposal.body;
    let gpu_ms = u64::from(p.gpu_count).checked_mul(agreement.body.window_ms())?;
    rigmesh_ledger::billing::charge(p.price_per_gpu_hour, gpu_ms).ok()
}

/// What a lease costs at most: its price for all its GPUs and hours.
pub fn lease_cost(agreement: &Signed<LeaseAgreement>) -> Option<rigmesh_protocol::Credits> {
    let p = &agreement.body.proposal.body;
    let gpu_ms = u64::from(p.gpu_count)
        .checked_mul(u64::from(p.hours))?
        .checked_mul(3_600_000)?;
    rigmesh_ledger::billing::charge(p.price_per_gpu_hour, gpu_ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supplier::{build_offers, tests::priced};
    use crate::telemetry::{ManualClock, SimProfile, SimSource};
    use rigmesh_protocol::Credits;
    use std::sync::Arc;

    const T0: UnixMillis = UnixMillis(1_800_000_000_000);

    fn desk_with_offer() -> (LeaseDesk, Signed<rigmesh_protocol::Offer>) {
        let clock = Arc::new(ManualClock::new(T0));
        let sim = SimSource::with_clock(SimProfile::builtin("a100x4").unwrap(), clock).unwrap();
        let devices = sim.devices_at(T0);
        let key = Keypair::from_seed([5; 32]);
        let config = priced(&devices[0].name, "1.80");
        let offers = build_offers(&devices, &BTreeSet::new(), &config, &key, 1, T0).unwrap();
        let offer = offers[0].offer.clone();
        let mut desk = LeaseDesk::new(key);
        desk.set_offers(offers).unwrap();
        (desk, offer)
    }

    fn proposal(
        offer: &Signed<rigmesh_protocol::Offer>,
        count: u16,
        price: &str,
        hours: u32,
    ) -> Signed<LeaseProposal> {
        proposal_by(9, offer, count, price, hours)
    }

    fn proposal_by(
        seed: u8,
        offer: &Signed<rigmesh_protocol::Offer>,
        count: u16,
        price: &str,
        hours: u32,
    ) -> Signed<LeaseProposal> {
        let customer = Keypair::from_seed([seed; 32]);
        Signed::sign(
            LeaseProposal {
                version: PROTOCOL_VERSION,
                customer: customer.public(),
                supplier: offer.body.supplier,
                offer: offer.id().unwrap(),
                gpu_count: count,
                price_per_gpu_hour: price.parse::<Credits>().unwrap(),
                hours,
                window_secs: 60,
                nonce: 1,
                created_at: T0,
                expires_at: T0.plus_ms(60_000),
            },
            &customer,
        )
        .unwrap()
    }

    #[test]
    fn a_matching_proposal_gets_an_agreement_on_free_gpus() {
        let (mut desk, offer) = desk_with_offer();
        let agreement = desk.answer(&proposal(&offer, 2, "1.80", 4), T0).unwrap();
        agreement.verify(&Clock::at(T0)).unwrap();
        assert_eq!(agreement.body.gpu_indices, vec![0, 1]);
        assert_eq!(agreement.body.ends_at, T0.plus_ms(4 * 3_600_000));
        assert_eq!(desk.busy().len(), 2);
        // The next lease gets the other two; a third finds none.
        let second = desk.answer(&proposal(&offer, 2, "2.00", 1), T0).unwrap();
        assert_eq!(second.body.gpu_indices, vec![2, 3]);
        assert_eq!(
            desk.answer(&proposal_by(10, &offer, 1, "1.80", 1), T0),
            Err(Refusal::NotEnoughGpus { wanted: 1, free: 0 })
        );
        desk.end(&agreement.id().unwrap());
        assert_eq!(desk.busy().len(), 2);
    }

    #[test]
    fn bad_proposals_are_refused_and_change_nothing() {
        let (mut desk, offer) = desk_with_offer();
        assert!(matches!(
            desk.answer(&proposal(&offer, 1, "1.79", 4), T0),
            Err(Refusal::PriceBelowOffer { .. })
        ));
        assert!(matches!(
            desk.answer(&proposal(&offer, 1, "1.80", 100), T0),
            Err(Refusal::HoursOutOfRange { hours: 100, .. })
        ));
        assert!(matches!(
            desk.answer(&proposal(&offer, 5, "1.80", 1), T0),
            Err(Refusal::NotEnoughGpus { wanted: 5, free: 4 })
        ));
        let mut forged = proposal(&offer, 1, "1.80", 1);
        forged.body.price_per_gpu_hour = "9".parse().unwrap();
        assert!(matches!(desk.answer(&forged, T0), Err(Refusal::Invalid(_))));
        let expired = proposal(&offer, 1, "1.80", 1);
        assert!(matches!(
            desk.answer(&expired, T0.plus_ms(3_600_000)),
            Err(Refusal::Invalid(_))
        ));
        let mut unknown = proposal(&offer, 1, "1.80", 1).body;
        unknown.offer = Id([7; 32]);
        let unknown = Signed::sign(unknown, &Keypair::from_seed([9; 32])).unwrap();
        assert!(matches!(
            desk.answer(&unknown, T0),
            Err(Refusal::UnknownOffer(_))
        ));
        assert!(desk.busy().is_empty(), "refusals leased nothing");
    }

    /// An escrow certificate for `agreement`'s lease, signed by `voters` of
    /// the sample coordinator set.
    fn escrow(
        agreement: &Signed<LeaseAgreement>,
        account: &Keypair,
        amount: &str,
        voters: usize,
    ) -> EscrowCertificate {
        let order = Signed::sign(
            rigmesh_protocol::EscrowOrder {
                version: PROTOCOL_VERSION,
                account: account.public(),
                seq: 0,
                epoch: rigmesh_protocol::samples::EPOCH,
                lease: agreement.id().unwrap(),
                supplier: agreement.body.supplier,
                amount: amount.parse().unwrap(),
                created_at: T0,
                expires_at: T0.plus_ms(600_000),
            },
            account,
        )
        .unwrap();
        let votes: Vec<_> = rigmesh_protocol::samples::coordinators()
            .iter()
            .take(voters)
            .map(|k| {
                Signed::sign(
                    rigmesh_protocol::Certificate::vote_for(&order, k.public()).unwrap(),
                    k,
                )
                .unwrap()
            })
            .collect();
        rigmesh_protocol::Certificate::assemble(order, &votes).unwrap()
    }

    #[test]
    fn metering_waits_for_an_escrow_that_covers_the_lease() {
        let (mut desk, offer) = desk_with_offer();
        let set = rigmesh_protocol::samples::coordinator_set().unwrap();
        let customer = Keypair::from_seed([9; 32]);
        // 2 GPUs x 4 h x 1.80 = 14.40 at most.
        let agreement = desk.answer(&proposal(&offer, 2, "1.80", 4), T0).unwrap();
        // One window of both GPUs (60 s) costs 0.06: less funds nothing.
        let short = escrow(&agreement, &customer, "0.059999", 3);
        assert!(matches!(desk.fund(&short, &set), Err(Refusal::Escrow(r)) if r.contains("0.06")));
        let stranger = escrow(&agreement, &Keypair::from_seed([8; 32]), "14.40", 3);
        assert!(matches!(
            desk.fund(&stranger, &set),
            Err(Refusal::Escrow(_))
        ));
        let below_quorum = escrow(&agreement, &customer, "14.40", 2);
        assert!(
            matches!(desk.fund(&below_quorum, &set), Err(Refusal::Escrow(r)) if r.contains("votes"))
        );
        let good = escrow(&agreement, &customer, "14.40", 3);
        assert_eq!(desk.fund(&good, &set).unwrap(), agreement);
        assert!(desk.fund(&good, &set).is_err(), "a lease is funded once");

        // An agreement whose escrow never comes frees its GPUs.
        let unfunded = desk.answer(&proposal(&offer, 2, "1.80", 1), T0).unwrap();
        assert_eq!(desk.busy().len(), 4);
        assert!(desk
            .expire_unfunded(T0.plus_ms(FUNDING_WINDOW_MS))
            .is_empty());
        assert_eq!(
            desk.expire_unfunded(T0.plus_ms(FUNDING_WINDOW_MS + 1)),
            vec![unfunded.id().unwrap()]
        );
        assert_eq!(desk.busy().len(), 2, "the funded lease keeps its GPUs");
    }

    #[test]
    fn an_escrow_below_the_lease_cost_funds_the_lease_as_a_cap() {
        let (mut desk, offer) = desk_with_offer();
        let set = rigmesh_protocol::samples::coordinator_set().unwrap();
        let customer = Keypair::from_seed([9; 32]);
        let agreement = desk.answer(&proposal(&offer, 2, "1.80", 4), T0).unwrap();
        // Three windows of two GPUs: 0.18.
        let capped = escrow(&agreement, &customer, "0.18", 3);
        assert_eq!(desk.fund(&capped, &set).unwrap(), agreement);
    }

    #[test]
    fn replayed_proposals_and_unfunded_hoarding_are_refused() {
        let (mut desk, offer) = desk_with_offer();
        let first = proposal(&offer, 1, "1.80", 1);
        let agreement = desk.answer(&first, T0).unwrap();
        assert_eq!(
            desk.answer(&first, T0),
            Err(Refusal::Replayed(first.id().unwrap()))
        );
        let second = desk.answer(&proposal(&offer, 1, "1.90", 1), T0).unwrap();
        assert_eq!(
            desk.answer(&proposal(&offer, 1, "2.00", 1), T0),
            Err(Refusal::TooManyUnfunded(2))
        );
        assert_eq!(desk.busy().len(), 2);
        // Another customer still gets GPUs.
        desk.answer(&proposal_by(10, &offer, 1, "1.80", 1), T0)
            .unwrap();
        // The customer gives an unfunded agreement up: its GPU is free at
        // once, and only that customer can do it.
        let lease = agreement.id().unwrap();
        assert!(!desk.release_unfunded(&lease, &Keypair::from_seed([10; 32]).public()));
        assert!(desk.release_unfunded(&lease, &Keypair::from_seed([9; 32]).public()));
        assert_eq!(desk.busy().len(), 2);
        assert!(desk.release_unfunded(&second.id().unwrap(), &Keypair::from_seed([9; 32]).public()));
        // After it expired, the same proposal is refused as expired.
        assert!(matches!(
            desk.answer(&first, T0.plus_ms(3_600_000)),
            Err(Refusal::Invalid(_))
        ));
    }
}
