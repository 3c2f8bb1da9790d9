//! Watching a lease from the customer's side: every `UsageAttestation` the
//! supplier sends is checked against the signed agreement and answered with
//! a signed `UsageAck` (the window is paid) or a `UsageDispute` with the
//! reason (it is not).
//!
//! The windows of a lease are fixed by the agreement alone: window `k`
//! runs from `starts_at + k × window` to the next boundary, the last one
//! ending at `ends_at`. Checking each attestation against that schedule,
//! rather than against the previous attestation, means a bad window cannot
//! shift the ones after it.
//!
//! The chain: an attestation that the lease's supplier really signed, at
//! the next `seq`, whose `prev` is the id of the previous one in the chain,
//! takes its place in the chain even when its content is then disputed,
//! because the supplier has committed to it and its next attestation will
//! link to it; one bad window must not void the rest of the lease. An
//! attestation that is forged, for another lease or out of chain takes no
//! place, so the genuine one for that position can still be accepted.
//!
//! Spend is the ledger's billing rule ([`billing::charge`]) applied to the
//! acked GPU-milliseconds summed exactly, so it is rounded once and equals,
//! to the micro-credit, what a settlement of the same windows charges.

use std::collections::BTreeMap;

use rigmesh_ledger::billing::{self, Meter};
use rigmesh_protocol::messages::usage::MAX_DISPUTE_DETAIL_LEN;
use rigmesh_protocol::{
    Clock, Credits, DisputeReason, Id, Keypair, LeaseAgreement, Message, PublicKey, Signed,
    UnixMillis, UsageAck, UsageAttestation, UsageDispute, PROTOCOL_VERSION,
};

use crate::error::{Error, Result};

/// How many recent chain positions a watch remembers, to tell a resend
/// from a second, different attestation for the same window. A lease can
/// have millions of short windows; memory stays bounded.
pub const REMEMBERED_WINDOWS: usize = 1_024;

/// How many disputes a watch keeps; later ones are counted, not kept, so
/// a peer sending forgeries cannot grow the watch without bound.
pub const KEPT_DISPUTES: usize = 1_024;

/// The customer's answer to one attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The window is accepted and paid; send this to the supplier.
    Ack(Signed<UsageAck>),
    /// The window is refused and not paid; send this to the supplier.
    Dispute(Signed<UsageDispute>),
    /// The very attestation of this `seq` was answered before (a replay or
    /// a resend), or its `seq` is older than the windows remembered
    /// ([`REMEMBERED_WINDOWS`]) and so was answered long ago; nothing is
    /// paid and nothing new needs sending.
    Duplicate {
        /// Its position in the chain.
        seq: u64,
    },
}

/// The customer's watch over one lease.
#[derive(Debug)]
pub struct LeaseWatch {
    key: Keypair,
    lease: Id,
    supplier: PublicKey,
    price: Credits,
    starts_at: UnixMillis,
    ends_at: UnixMillis,
    window_ms: u64,
    /// The agreement's GPUs, ascending, as attestations list them.
    gpus: Vec<u16>,
    next_seq: u64,
    prev: Id,
    /// Id of each recent attestation that took its place in the chain, by
    /// seq (the last [`REMEMBERED_WINDOWS`]).
    chain: BTreeMap<u64, Id>,
    paid: Meter,
    spent: Credits,
    disputes: Vec<Signed<UsageDispute>>,
    dispute_count: u64,
    /// The customer's own observation that the lease is not delivering:
    /// every window it would ack from now on is disputed with it.
    contest: Option<Contest>,
}

/// A customer's standing dispute of a lease's windows, from its own
/// observation (the GPUs unreachable, the work not running): reviewed by
/// the coordinators' operators, never decided by rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Contest {
    /// `not_delivered` or `other`.
    pub reason: DisputeReason,
    /// What the customer observed.
    pub detail: String,
}

impl Contest {
    /// A contest, refusing the reasons coordinators decide by rule: those
    /// the node finds itself from the attestations.
    pub fn new(reason: DisputeReason, detail: &str) -> std::result::Result<Self, String> {
        if rigmesh_ledger::disputes::checkable(reason) {
            return Err(format!(
                "{reason:?} is checked from the attestations themselves; \
                 a standing dispute is for not_delivered or other"
            ));
        }
        let detail = detail_text(detail);
        if detail.is_empty() {
            return Err("say what you observed (the detail is empty)".into());
        }
        Ok(Contest { reason, detail })
    }
}

/// Makes `text` fit a dispute's detail field: no control characters, no
/// surrounding blanks, at most [`MAX_DISPUTE_DETAIL_LEN`] bytes.
fn detail_text(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = String::new();
    for c in clean.trim().chars() {
        if out.len() + c.len_utf8() > MAX_DISPUTE_DETAIL_LEN {
            break;
        }
        out.push(c);
    }
    out.trim_end().to_string()
}

fn ledger_error(e: rigmesh_ledger::Error) -> Error {
    Error::Store(e.to_string())
}

impl LeaseWatch {
    /// A watch over `agreement` for the customer holding `key`. Refuses an
    /// agreement that does not verify or that belongs to another customer.
    pub fn new(agreement: &Signed<LeaseAgreement>, key: Keypair) -> Result<Self> {
        agreement.verify_record()?;
        let body = &agreement.body;
        if body.proposal.body.customer != key.public() {
            return Err(Error::Config(format!(
                "the agreement is for customer {}, this node is {}",
                body.proposal.body.customer,
                key.public()
            )));
        }
        let mut gpus = body.gpu_indices.clone();
        gpus.sort_unstable();
        Ok(LeaseWatch {
            lease: agreement.id()?,
            supplier: body.supplier,
            price: body.proposal.body.price_per_gpu_hour,
            starts_at: body.starts_at,
            ends_at: body.ends_at,
            window_ms: body.window_ms(),
            gpus,
            next_seq: 0,
            prev: Id::ZERO,
            chain: BTreeMap::new(),
            paid: Meter::default(),
            spent: Credits::ZERO,
            disputes: Vec::new(),
            dispute_count: 0,
            contest: None,
            key,
        })
    }

    /// Disputes every window from now on with `contest` (`None` stops).
    pub fn contest(&mut self, contest: Option<Contest>) {
        self.contest = contest;
    }

    /// The standing dispute, if any.
    pub fn contested(&self) -> Option<&Contest> {
        self.contest.as_ref()
    }

    /// The lease id.
    pub fn lease(&self) -> Id {
        self.lease
    }

    /// The lease's supplier.
    pub fn supplier(&self) -> PublicKey {
        self.supplier
    }

    /// The agreed price per GPU-hour.
    pub fn price(&self) -> Credits {
        self.price
    }

    /// What the acked windows cost, rounded once.
    pub fn spent(&self) -> Credits {
        self.spent
    }

    /// GPU-milliseconds of the acked windows.
    pub fn paid_gpu_ms(&self) -> u64 {
        self.paid.gpu_ms()
    }

    /// How many windows were acked.
    pub fn acked_windows(&self) -> u64 {
        self.paid.windows()
    }

    /// The disputes sent, oldest first (the first [`KEPT_DISPUTES`]): what
    /// went wrong on this lease, for the record.
    pub fn disputes(&self) -> &[Signed<UsageDispute>] {
        &self.disputes
    }

    /// How many disputes were sent in all, kept or not.
    pub fn dispute_count(&self) -> u64 {
        self.dispute_count
    }

    /// The `seq` the next attestation must carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The lease was terminated at `now`: the supplier attests the window
    /// in progress as its last. One more window is allowed, for a supplier
    /// whose clock had already moved on to the next.
    pub fn end_after_current_window(&mut self, now: UnixMillis) {
        let window_ms = self.window_ms.max(1);
        let current = now.0.saturating_sub(self.starts_at.0) / window_ms;
        let end = current
            .saturating_add(2)
            .saturating_mul(window_ms)
            .saturating_add(self.starts_at.0);
        self.ends_at = self.ends_at.min(UnixMillis(end));
    }

    /// Windows before `seq` never reached this node (it was down, or
    /// gossip lost them): the watch goes on from the attestation at `seq`,
    /// whose `prev` is taken as the chain's head. The skipped windows stay
    /// unanswered here; the coordinators decide them by the timeout, and
    /// the escrow bounds what they can cost.
    pub fn skip_to(&mut self, seq: u64, prev: Id) {
        if seq > self.next_seq {
            self.next_seq = seq;
            self.prev = prev;
        }
    }

    /// Whether `attestation` sits where the lease's schedule puts window
    /// `seq`: what an honest supplier sends after windows this node missed
    /// (a forged jump ahead does not).
    pub fn on_schedule(&self, attestation: &UsageAttestation) -> bool {
        self.slot(attestation.seq).is_some_and(|(start, end)| {
            attestation.window_start == start && attestation.window_end <= end
        })
    }

    /// True once every window of the lease has taken its place in the chain.
    pub fn finished(&self) -> bool {
        self.slot(self.next_seq).is_none()
    }

    /// Window `seq` of the agreement's schedule, or `None` past the lease.
    fn slot(&self, seq: u64) -> Option<(UnixMillis, UnixMillis)> {
        let offset = seq.checked_mul(self.window_ms)?;
        let start = self.starts_at.0.checked_add(offset).map(UnixMillis)?;
        if start >= self.ends_at {
            return None;
        }
        Some((start, start.plus_ms(self.window_ms).min(self.ends_at)))
    }

    /// The most the next window can add to [`LeaseWatch::spent`]: every
    /// GPU billed for the whole window, charged on the exact running total
    /// so the figure is what the spend would really become. Zero once the
    /// lease has no windows left.
    pub fn next_window_charge(&self) -> Result<Credits> {
        let Some((start, end)) = self.slot(self.next_seq) else {
            return Ok(Credits::ZERO);
        };
        let gpus = u64::try_from(self.gpus.len()).map_err(|_| Error::Config("GPU count".into()))?;
        let full = end
            .since(start)
            .checked_mul(gpus)
            .and_then(|ms| ms.checked_add(self.paid.gpu_ms()))
            .ok_or_else(|| Error::Store("metered GPU-milliseconds overflow".into()))?;
        let after = billing::charge(self.price, full).map_err(ledger_error)?;
        after
            .checked_sub(self.spent)
            .ok_or_else(|| Error::Store("spend overflow".into()))
    }

    /// Checks one attestation at time `now` and answers it. Fails only
    /// when the answer cannot be encoded or signed, or on overflow; every
    /// fault of the attestation itself is a dispute.
    pub fn check(
        &mut self,
        attestation: &Signed<UsageAttestation>,
        now: UnixMillis,
    ) -> Result<Verdict> {
        let id = attestation.id()?;
        let body = &attestation.body;
        let forgotten = body.seq < self.next_seq && !self.chain.contains_key(&body.seq);
        if forgotten || self.chain.get(&body.seq) == Some(&id) {
            return Ok(Verdict::Duplicate { seq: body.seq });
        }
        if let Some((reason, detail)) = self.outside_chain(attestation, id) {
            return self.dispute(id, body.seq, reason, &detail, now);
        }
        // From here on the attestation is the supplier's word for this
        // position: it joins the chain whatever its content.
        let problem = self
            .content_problem(attestation, now)
            .or_else(|| self.contest.as_ref().map(|c| (c.reason, c.detail.clone())));
        let verdict = match problem {
            Some((reason, detail)) => {
                let dispute = self.sign_dispute(id, body.seq, reason, &detail, now)?;
                self.record(&dispute);
                Verdict::Dispute(dispute)
            }
            None => {
                let mut paid = self.paid;
                paid.add_window(body.billable_gpu_ms)
                    .map_err(ledger_error)?;
                let spent = billing::charge(self.price, paid.gpu_ms()).map_err(ledger_error)?;
                let ack = Signed::sign(
                    UsageAck {
                        version: PROTOCOL_VERSION,
                        lease: self.lease,
                        customer: self.key.public(),
                        attestation: id,
                        seq: body.seq,
                        created_at: now,
                    },
                    &self.key,
                )?;
                self.paid = paid;
                self.spent = spent;
                Verdict::Ack(ack)
            }
        };
        self.chain.insert(body.seq, id);
        if self.chain.len() > REMEMBERED_WINDOWS {
            self.chain.pop_first();
        }
        self.next_seq = body.seq.saturating_add(1);
        self.prev = id;
        Ok(verdict)
    }

    /// Why the attestation cannot take the next place in this lease's
    /// chain: not signed by the supplier, another lease or customer, or
    /// not continuing the chain.
    fn outside_chain(
        &self,
        attestation: &Signed<UsageAttestation>,
        id: Id,
    ) -> Option<(DisputeReason, String)> {
        let body = &attestation.body;
        if let Err(e) = attestation.verify_signatures() {
            return Some((DisputeReason::BadSignature, format!("signature: {e}")));
        }
        if attestation.signer != self.supplier || body.supplier != self.supplier {
            return Some((
                DisputeReason::BadSignature,
                format!(
                    "signed by {} for supplier {}; the lease's supplier is {}",
                    attestation.signer, body.supplier, self.supplier
                ),
            ));
        }
        if body.lease != self.lease {
            return Some((
                DisputeReason::Other,
                format!(
                    "attestation is for lease {}, not {}",
                    body.lease, self.lease
                ),
            ));
        }
        if body.customer != self.key.public() {
            return Some((
                DisputeReason::Other,
                format!("attestation names customer {}", body.customer),
            ));
        }
        if body.seq < self.next_seq {
            return Some((
                DisputeReason::BrokenChain,
                format!("a second, different attestation {id} for seq {}", body.seq),
            ));
        }
        if body.seq > self.next_seq {
            return Some((
                DisputeReason::BrokenChain,
                format!("seq {} skips ahead; expected {}", body.seq, self.next_seq),
            ));
        }
        if body.prev != self.prev {
            return Some((
                DisputeReason::BrokenChain,
                format!("prev is {}, expected {}", body.prev, self.prev),
            ));
        }
        None
    }

    /// What is wrong with an in-chain attestation's window, GPUs or
    /// numbers, checked in that order so the most specific reason is given.
    fn content_problem(
        &self,
        attestation: &Signed<UsageAttestation>,
        now: UnixMillis,
    ) -> Option<(DisputeReason, String)> {
        let body = &attestation.body;
        let Some((start, end)) = self.slot(body.seq) else {
            return Some((
                DisputeReason::OverlappingWindow,
                format!(
                    "the lease ended at {}; it has no window {}",
                    self.ends_at, body.seq
                ),
            ));
        };
        // Reaching before the slot overlaps the previous window; past it,
        // the next window or the time after the lease.
        if body.window_start < start || body.window_end > end {
            return Some((
                DisputeReason::OverlappingWindow,
                format!(
                    "window {}..{} reaches outside window {} ({start}..{end})",
                    body.window_start, body.window_end, body.seq
                ),
            ));
        }
        if body.window_start != start || body.window_end != end {
            return Some((
                DisputeReason::Other,
                format!(
                    "window {}..{} is not the agreed window {} ({start}..{end})",
                    body.window_start, body.window_end, body.seq
                ),
            ));
        }
        let billed: Vec<u16> = body.gpus.iter().map(|g| g.gpu_index).collect();
        if billed != self.gpus {
            return Some((
                DisputeReason::WrongGpus,
                format!("bills GPUs {billed:?}; the lease has {:?}", self.gpus),
            ));
        }
        let window_ms = end.since(start);
        if let Some(gpu) = body.gpus.iter().find(|g| g.billable_ms > window_ms) {
            return Some((
                DisputeReason::Overbilled,
                format!(
                    "GPU {} billed {} ms in a {window_ms} ms window",
                    gpu.gpu_index, gpu.billable_ms
                ),
            ));
        }
        let total = body
            .gpus
            .iter()
            .try_fold(0u64, |sum, g| sum.checked_add(g.billable_ms));
        if total != Some(body.billable_gpu_ms) {
            return Some((
                DisputeReason::ArithmeticMismatch,
                format!(
                    "billable_gpu_ms is {}, the GPUs add up to {}",
                    body.billable_gpu_ms,
                    total.map_or_else(|| "more than fits".to_string(), |t| t.to_string())
                ),
            ));
        }
        // Everything else the protocol requires of the fields (version,
        // utilisation ranges, made after the window ended, not from the
        // future).
        if let Err(e) = attestation.check_body() {
            return Some((DisputeReason::Other, e.to_string()));
        }
        if let Err(e) =
            Clock::at(now).check(UsageAttestation::KIND, body.created_at(), body.expires_at())
        {
            return Some((DisputeReason::Other, e.to_string()));
        }
        None
    }

    fn sign_dispute(
        &self,
        attestation: Id,
        seq: u64,
        reason: DisputeReason,
        detail: &str,
        now: UnixMillis,
    ) -> Result<Signed<UsageDispute>> {
        Ok(Signed::sign(
            UsageDispute {
                version: PROTOCOL_VERSION,
                lease: self.lease,
                customer: self.key.public(),
                attestation,
                seq,
                reason,
                detail: detail_text(detail),
                created_at: now,
            },
            &self.key,
        )?)
    }

    /// Disputes an attestation that takes no place in the chain.
    fn dispute(
        &mut self,
        attestation: Id,
        seq: u64,
        reason: DisputeReason,
        detail: &str,
        now: UnixMillis,
    ) -> Result<Verdict> {
        let dispute = self.sign_dispute(attestation, seq, reason, detail, now)?;
        self.record(&dispute);
        Ok(Verdict::Dispute(dispute))
    }

    /// Logs a dispute and keeps it while there is room.
    fn record(&mut self, dispute: &Signed<UsageDispute>) {
        let body = &dispute.body;
        tracing::warn!(lease = %self.lease, seq = body.seq, reason = ?body.reason, detail = %body.detail, "usage disputed");
        self.dispute_count = self.dispute_count.saturating_add(1);
        if self.disputes.len() < KEPT_DISPUTES {
            self.disputes.push(dispute.clone());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rigmesh_protocol::{GpuUsage, LeaseProposal, Message};

    use super::*;
    use crate::supplier::meter::Meter as SupplierMeter;
    use crate::telemetry::{GpuHealth, GpuSample};

    pub(crate) const T0: UnixMillis = UnixMillis(1_800_000_000_000);
    /// 25-minute windows over a 1-hour lease: 1500 s, 1500 s, then 600 s.
    const WINDOW_MS: u64 = 1_500_000;

    pub(crate) fn supplier() -> Keypair {
        Keypair::from_seed([0x11; 32])
    }

    pub(crate) fn customer() -> Keypair {
        Keypair::from_seed([0x22; 32])
    }

    /// The supplier leases GPUs 5 and 2 (listed out of order on purpose)
    /// for one hour at `price` per GPU-hour.
    pub(crate) fn agreement(price: &str) -> Signed<LeaseAgreement> {
        agreement_with_windows(price, 1_500)
    }

    /// [`agreement`] with windows of `window_secs`.
    pub(crate) fn agreement_with_windows(price: &str, window_secs: u32) -> Signed<LeaseAgreement> {
        let proposal = Signed::sign(
            LeaseProposal {
                version: PROTOCOL_VERSION,
                customer: customer().public(),
                supplier: supplier().public(),
                offer: Id([7; 32]),
                gpu_count: 2,
                price_per_gpu_hour: price.parse().unwrap(),
                hours: 1,
                window_secs,
                nonce: 1,
                created_at: T0,
                expires_at: T0.plus_ms(60_000),
            },
            &customer(),
        )
        .unwrap();
        Signed::sign(
            LeaseAgreement {
                version: PROTOCOL_VERSION,
                supplier: supplier().public(),
                proposal,
                gpu_indices: vec![5, 2],
                hardware_fingerprint: Id([9; 32]),
                starts_at: T0.plus_ms(1_000),
                ends_at: T0.plus_ms(1_000 + 3_600_000),
                created_at: T0.plus_ms(1_000),
            },
            &supplier(),
        )
        .unwrap()
    }

    fn sample(index: u32, t: UnixMillis) -> GpuSample {
        GpuSample {
            timestamp: t,
            index,
            uuid: format!("GPU-{index}"),
            util_bp: Some(9_000),
            memory_used_mib: Some(40_000),
            power_mw: Some(300_000),
            energy_mj: Some(t.0 / 1_000 * 300),
            temperature_c: Some(65),
            sm_clock_mhz: None,
            mem_clock_mhz: None,
            ecc_uncorrected: None,
            xid_errors: Vec::new(),
            health: GpuHealth::Healthy,
            processes: Vec::new(),
        }
    }

    /// The whole lease metered by the supplier's own meter, sampling both
    /// GPUs every 5 s: the attestations an honest supplier sends.
    pub(crate) fn honest_chain(
        agreement: &Signed<LeaseAgreement>,
    ) -> Vec<Signed<UsageAttestation>> {
        let mut meter = SupplierMeter::new(agreement, supplier()).unwrap();
        let mut t = agreement.body.starts_at;
        meter.record(&[sample(2, t), sample(5, t)]);
        let mut chain = Vec::new();
        while !meter.finished() {
            while t < meter.window_end() {
                t = t.plus_ms(5_000);
                meter.record(&[sample(2, t), sample(5, t)]);
            }
            chain.push(meter.close_window(t).unwrap());
        }
        chain
    }

    fn after(a: &Signed<UsageAttestation>) -> UnixMillis {
        a.body.created_at.plus_ms(1_000)
    }

    /// Re-signs an edited copy of `a` with the supplier's key: a supplier
    /// that lies, as opposed to a third party tampering in transit.
    fn resign(
        a: &Signed<UsageAttestation>,
        edit: impl FnOnce(&mut UsageAttestation),
    ) -> Signed<UsageAttestation> {
        let mut body = a.body.clone();
        edit(&mut body);
        Signed::sign(body, &supplier()).unwrap()
    }

    fn disputed(verdict: Verdict) -> Signed<UsageDispute> {
        match verdict {
            Verdict::Dispute(d) => {
                d.verify_record().unwrap();
                d
            }
            other => panic!("expected a dispute, got {other:?}"),
        }
    }

    fn acked(verdict: Verdict) -> Signed<UsageAck> {
        match verdict {
            Verdict::Ack(a) => {
                a.verify_record().unwrap();
                a
            }
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    fn charge(price: &str, gpu_ms: u64) -> Credits {
        billing::charge(price.parse().unwrap(), gpu_ms).unwrap()
    }

    #[test]
    fn an_honest_chain_is_acked_and_spend_is_the_billing_rule_to_the_micro_credit() {
        // A price whose per-window charges do not round evenly: paying per
        // window would lose micro-credits, one rounding at the end does not.
        let price = "2.490001";
        let agreement = agreement(price);
        let chain = honest_chain(&agreement);
        assert_eq!(chain.len(), 3);
        assert_eq!(chain[2].body.window_end, agreement.body.ends_at);
        let mut watch = LeaseWatch::new(&agreement, customer()).unwrap();
        let mut per_window = Credits::ZERO;
        for a in &chain {
            let expected_next = watch.next_window_charge().unwrap();
            let before = watch.spent();
            let ack = acked(watch.check(a, after(a)).unwrap());
            assert_eq!(ack.body.attestation, a.id().unwrap());
            assert_eq!(ack.body.seq, a.body.seq);
            assert_eq!(ack.body.lease, agreement.id().unwrap());
            // Healthy GPUs bill the whole window: the projection was exact.
            assert_eq!(watch.spent().checked_sub(before).unwrap(), expected_next);
            per_window = per_window
                .checked_add(charge(price, a.body.billable_gpu_ms))
                .unwrap();
        }
        assert_eq!(watch.acked_windows(), 3);
        assert_eq!(watch.paid_gpu_ms(), 2 * 3_600_000);
        assert_eq!(watch.spent(), charge(price, 2 * 3_600_000));
        assert_eq!(watch.spent().units(), 4_980_002);
        assert_eq!(per_window.units(), 4_980_000);
        assert!(watch.disputes().is_empty());
        assert!(watch.finished());
        assert_eq!(watch.next_window_charge().unwrap(), Credits::ZERO);
    }

    #[test]
    fn a_replayed_attestation_is_ignored_not_paid_twice() {
        let agreement = agreement("2.00");
        let chain = honest_chain(&agreement);
        let mut watch = LeaseWatch::new(&agreement, customer()).unwrap();
        acked(watch.check(&chain[0], after(&chain[0])).unwrap());
        let spent = watch.spent();
        assert_eq!(
            watch.check(&chain[0], after(&chain[0])).unwrap(),
            Verdict::Duplicate { seq: 0 }
        );
        assert_eq!(watch.spent(), spent);
        assert_eq!(watch.acked_windows(), 1);
    }

    /// Acks window 0, then feeds `bad` as window 1 and returns the dispute
    /// and the watch, after checking window 1 was not paid.
    fn dispute_window_1(
        bad: impl FnOnce(&[Signed<UsageAttestation>]) -> Signed<UsageAttestation>,
    ) -> (
        Signed<UsageDispute>,
        LeaseWatch,
        Vec<Signed<UsageAttestation>>,
    ) {
        let agreement = agreement("2.00");
        let chain = honest_chain(&agreement);
        let mut watch = LeaseWatch::new(&agreement, customer()).unwrap();
        acked(watch.check(&chain[0], after(&chain[0])).unwrap());
        let paid = watch.spent();
        assert_eq!(paid, charge("2.00", 3_000_000));
        let attestation = bad(&chain);
        let dispute = disputed(watch.check(&attestation, after(&chain[1])).unwrap());
        assert_eq!(dispute.body.attestation, attestation.id().unwrap());
        assert_eq!(dispute.body.lease, agreement.id().unwrap());
        assert_eq!(watch.spent(), paid, "a disputed window is not paid");
        assert_eq!(watch.acked_windows(), 1);
        assert_eq!(watch.disputes().last(), Some(&dispute));
        (dispute, watch, chain)
    }

    #[test]
    fn a_tampered_attestation_is_disputed_as_a_bad_signature() {
        let (dispute, mut watch, chain) = dispute_window_1(|chain| {
            let mut forged = chain[1].clone();
            forged.body.gpus[0].billable_ms -= 1;
            forged.body.billable_gpu_ms -= 1;
            forged
        });
        assert_eq!(dispute.body.reason, DisputeReason::BadSignature);
        // The forgery took no place in the chain: the genuine one is paid.
        acked(watch.check(&chain[1], after(&chain[1])).unwrap());
        assert_eq!(watch.spent(), charge("2.00", 6_000_000));
    }

    #[test]
    fn an_attestation_signed_by_someone_else_is_disputed() {
        let (dispute, _, _) = dispute_window_1(|chain| {
            let impostor = Keypair::from_seed([0x99; 32]);
            let mut body = chain[1].body.clone();
            body.supplier = impostor.public();
            Signed::sign(body, &impostor).unwrap()
        });
        assert_eq!(dispute.body.reason, DisputeReason::BadSignature);
    }

    #[test]
    fn a_broken_chain_is_disputed() {
        let (dispute, _, _) = dispute_window_1(|chain| resign(&chain[1], |b| b.prev = Id([3; 32])));
        assert_eq!(dispute.body.reason, DisputeReason::BrokenChain);
        let (dispute, mut watch, chain) = dispute_window_1(|chain| chain[2].clone());
        assert_eq!(dispute.body.reason, DisputeReason::BrokenChain);
        assert!(
            dispute.body.detail.contains("skips ahead"),
            "{}",
            dispute.body.detail
        );
        // Window 1 arriving late still continues the chain.
        acked(watch.check(&chain[1], after(&chain[1])).unwrap());
        acked(watch.check(&chain[2], after(&chain[2])).unwrap());
        assert_eq!(watch.spent(), charge("2.00", 7_200_000));
        // A different attestation for a window already answered.
        let twin = resign(&chain[2], |b| b.gpus[0].energy_mj += 1);
        let dispute = disputed(watch.check(&twin, after(&chain[2])).unwrap());
        assert_eq!(dispute.body.reason, DisputeReason::BrokenChain);
        assert_eq!(watch.spent(), charge("2.00", 7_200_000));
        assert_eq!(watch.dispute_count(), 2);
    }

    #[test]
    fn an_overlapping_window_is_disputed() {
        // Window 1 starts 10 minutes early, inside window 0.
        let (dispute, _, _) = dispute_window_1(|chain| {
            resign(&chain[1], |b| {
                b.window_start = b.window_start.minus_ms(600_000)
            })
        });
        assert_eq!(dispute.body.reason, DisputeReason::OverlappingWindow);
    }

    #[test]
    fn a_window_past_the_end_of_the_lease_is_disputed() {
        let agreement = agreement("2.00");
        let chain = honest_chain(&agreement);
        let mut watch = LeaseWatch::new(&agreement, customer()).unwrap();
        let last = resign(&chain[2], |b| b.window_end = b.window_end.plus_ms(60_000));
        acked(watch.check(&chain[0], after(&chain[0])).unwrap());
        acked(watch.check(&chain[1], after(&chain[1])).unwrap());
        let dispute = disputed(watch.check(&last, after(&last)).unwrap());
        assert_eq!(dispute.body.reason, DisputeReason::OverlappingWindow);
        // And nothing after the last window exists to be billed.
        let extra = resign(&chain[2], |b| {
            b.seq = 3;
            b.prev = last.id().unwrap();
            b.window_start = agreement.body.ends_at;
            b.window_end = agreement.body.ends_at.plus_ms(WINDOW_MS);
            b.created_at = b.window_end;
        });
        let dispute = disputed(watch.check(&extra, after(&extra)).unwrap());
        assert_eq!(dispute.body.reason, DisputeReason::OverlappingWindow);
        assert_eq!(watch.spent(), charge("2.00", 6_000_000));
    }

    #[test]
    fn other_gpus_than_the_agreement_s_are_disputed() {
        let (dispute, _, _) =
            dispute_window_1(|chain| resign(&chain[1], |b| b.gpus[1].gpu_index = 6));
        assert_eq!(dispute.body.reason, DisputeReason::WrongGpus);
        let (dispute, _, _) = dispute_window_1(|chain| {
            resign(&chain[1], |b| {
                let dropped = b.gpus.pop().unwrap();
                b.billable_gpu_ms -= dropped.billable_ms;
            })
        });
        assert_eq!(dispute.body.reason, DisputeReason::WrongGpus);
    }

    #[test]
    fn numbers_that_do_not_add_up_are_disputed() {
        let (dispute, _, _) =
            dispute_window_1(|chain| resign(&chain[1], |b| b.billable_gpu_ms += 60_000));
        assert_eq!(dispute.body.reason, DisputeReason::ArithmeticMismatch);
        assert!(
            dispute
                .body
                .detail
                .contains("billable_gpu_ms is 3060000, the GPUs add up to 3000000"),
            "{}",
            dispute.body.detail
        );
        let (dispute, _, _) = dispute_window_1(|chain| {
            resign(&chain[1], |b| {
                b.gpus[0].billable_ms += 1;
                b.billable_gpu_ms += 1;
            })
        });
        assert_eq!(dispute.body.reason, DisputeReason::Overbilled);
    }

    #[test]
    fn a_disputed_window_is_not_paid_and_the_lease_goes_on() {
        let (_, mut watch, chain) =
            dispute_window_1(|chain| resign(&chain[1], |b| b.billable_gpu_ms += 1));
        // The supplier's next attestation links to the disputed one.
        let disputed_id = watch.disputes()[0].body.attestation;
        let next = resign(&chain[2], |b| b.prev = disputed_id);
        acked(watch.check(&next, after(&next)).unwrap());
        assert_eq!(watch.spent(), charge("2.00", 3_000_000 + 1_200_000));
        assert_eq!(watch.acked_windows(), 2);
        assert!(watch.finished());
    }

    #[test]
    fn memory_of_old_windows_is_bounded_and_they_are_never_paid_twice() {
        let agreement = agreement_with_windows("2.00", 1);
        let lease = agreement.id().unwrap();
        let mut watch = LeaseWatch::new(&agreement, customer()).unwrap();
        let mut prev = Id::ZERO;
        let mut chain = Vec::new();
        for seq in 0..(REMEMBERED_WINDOWS as u64 + 10) {
            let start = agreement.body.starts_at.plus_ms(seq * 1_000);
            let gpu = |index| GpuUsage {
                gpu_index: index,
                billable_ms: 1_000,
                mean_util_bp: 5_000,
                peak_util_bp: 9_000,
                peak_memory_mib: 1_000,
                energy_mj: 300_000,
            };
            let a = Signed::sign(
                UsageAttestation {
                    version: PROTOCOL_VERSION,
                    lease,
                    supplier: supplier().public(),
                    customer: customer().public(),
                    seq,
                    prev,
                    window_start: start,
                    window_end: start.plus_ms(1_000),
                    gpus: vec![gpu(2), gpu(5)],
                    billable_gpu_ms: 2_000,
                    created_at: start.plus_ms(1_000),
                },
                &supplier(),
            )
            .unwrap();
            acked(watch.check(&a, after(&a)).unwrap());
            prev = a.id().unwrap();
            chain.push(a);
        }
        let spent = watch.spent();
        assert_eq!(spent, charge("2.00", 2_000 * chain.len() as u64));
        let now = after(chain.last().unwrap());
        // Window 0 is no longer remembered: a replay, even an altered one,
        // is answered as already seen and not paid.
        let altered = resign(&chain[0], |b| b.gpus[0].energy_mj += 1);
        for old in [&chain[0], &altered] {
            assert_eq!(
                watch.check(old, now).unwrap(),
                Verdict::Duplicate { seq: 0 }
            );
        }
        // A recent window is remembered, so an altered copy is caught.
        let recent = resign(&chain[20], |b| b.gpus[0].energy_mj += 1);
        let dispute = disputed(watch.check(&recent, now).unwrap());
        assert_eq!(dispute.body.reason, DisputeReason::BrokenChain);
        assert_eq!(watch.spent(), spent);
    }

    #[test]
    fn an_agreement_for_someone_else_is_refused() {
        let err = LeaseWatch::new(&agreement("2.00"), supplier()).unwrap_err();
        assert!(err.to_string().contains("customer"), "{err}");
        let mut tampered = agreement("2.00");
        tampered.body.gpu_indices = vec![1, 2];
        assert!(LeaseWatch::new(&tampered, customer()).is_err());
    }

    #[test]
    fn dispute_details_always_fit_the_protocol() {
        let long = "é\n".repeat(400);
        let text = detail_text(&long);
        assert!(text.len() <= MAX_DISPUTE_DETAIL_LEN);
        assert!(!text.chars().any(char::is_control));
        assert_eq!(text, text.trim());
        assert_eq!(UsageDispute::KIND, rigmesh_protocol::Kind::UsageDispute);
    }
}
