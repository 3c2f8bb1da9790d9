//! Reputation from certified evidence (specs/reputation.md): what each
//! coordinator has learnt about an account from the settlements it applied
//! and the signed evidence behind the ones it voted for, decayed over time,
//! and the one formula that turns it into a score.
//!
//! Evidence enters only when a settlement certificate is applied, in the
//! same atomic write as its money, so a score never counts a settlement
//! that did not happen, and never counts one twice.

use bincode::{Decode, Encode};
use rigmesh_protocol::{PublicKey, UnixMillis, UsageAttestation};

use crate::codec::Record;
use crate::columns::{ReputationEvidence, TypedStore, VoteEvidence};
use crate::error::Result;
use crate::ledger::Ledger;
use crate::store::{Batch, Direction, Store};

/// Half-life of evidence: what happened a week ago weighs half as much.
pub const HALF_LIFE_MS: u64 = 7 * 24 * 3_600_000;

/// A spotless score, basis points.
pub const FULL_SCORE_BP: u16 = 10_000;

/// Least utilisation (basis points) at which a GPU must draw real power.
pub const BUSY_UTIL_BP: u16 = 5_000;
/// Average power (watts) below which a busy GPU is not believable.
pub const MIN_BUSY_WATTS: u64 = 20;

/// Which side of a lease the evidence is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub enum Side {
    /// The supplier.
    Supplier,
    /// The customer.
    Customer,
}

impl Side {
    /// Its key tag.
    pub fn tag(self) -> u8 {
        match self {
            Side::Supplier => 1,
            Side::Customer => 2,
        }
    }
}

/// What a coordinator saw of a settlement request it voted for: the
/// window counts behind the certified amounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
pub struct WindowCounts {
    /// Windows in the range.
    pub windows: u64,
    /// Windows the customer acknowledged.
    pub acked: u64,
    /// Windows accepted because the customer did not answer in time.
    pub unanswered: u64,
    /// Windows the customer disputed (held out).
    pub disputed: u64,
    /// Windows that billed less than every leased GPU for the whole window.
    pub short: u64,
    /// GPU-milliseconds the windows could bill (GPUs x window length).
    pub possible_gpu_ms: u64,
    /// GPU-milliseconds attested.
    pub attested_gpu_ms: u64,
}

impl Record for WindowCounts {
    const WHAT: &'static str = "vote evidence";
}

/// Decayed evidence about one account on one side (fixed point: each count
/// is scaled by [`SCALE`] so decay keeps precision without floats in the
/// stored record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
pub struct Evidence {
    /// Leases whose final settlement was applied.
    pub completed_leases: u64,
    /// Windows settled.
    pub windows: u64,
    /// Windows disputed by the customer.
    pub disputed: u64,
    /// Windows the customer left unanswered.
    pub unanswered: u64,
    /// Windows short of full delivery (GPU dropouts).
    pub short: u64,
    /// GPU-ms the settled windows could have billed.
    pub possible_gpu_ms: u64,
    /// GPU-ms paid.
    pub paid_gpu_ms: u64,
    /// Times the supplier's hardware changed under a lease.
    pub fingerprint_changes: u64,
    /// Leases the supplier refused after agreeing (escrow refused).
    pub refused_leases: u64,
    /// When the evidence was last updated (decay runs from here).
    pub updated_at: UnixMillis,
}

/// Fixed-point scale of the stored counts.
pub const SCALE: u64 = 1_000;

impl Record for Evidence {
    const WHAT: &'static str = "reputation evidence";
}

impl Evidence {
    /// The evidence decayed to `now`.
    pub fn decayed(&self, now: UnixMillis) -> Evidence {
        let elapsed = now.0.saturating_sub(self.updated_at.0);
        if elapsed == 0 {
            return *self;
        }
        let aged = |v: u64| decay(v, elapsed);
        Evidence {
            completed_leases: aged(self.completed_leases),
            windows: aged(self.windows),
            disputed: aged(self.disputed),
            unanswered: aged(self.unanswered),
            short: aged(self.short),
            possible_gpu_ms: aged(self.possible_gpu_ms),
            paid_gpu_ms: aged(self.paid_gpu_ms),
            fingerprint_changes: aged(self.fingerprint_changes),
            refused_leases: aged(self.refused_leases),
            updated_at: now,
        }
    }

    /// Adds a settlement's window counts (and a completed lease if final).
    pub fn add(&mut self, counts: &WindowCounts, paid_gpu_ms: u64, completed: bool) {
        let s = |v: u64| v.saturating_mul(SCALE);
        self.windows = self.windows.saturating_add(s(counts.windows));
        self.disputed = self.disputed.saturating_add(s(counts.disputed));
        self.unanswered = self.unanswered.saturating_add(s(counts.unanswered));
        self.short = self.short.saturating_add(s(counts.short));
        self.possible_gpu_ms = self.possible_gpu_ms.saturating_add(counts.possible_gpu_ms);
        self.paid_gpu_ms = self.paid_gpu_ms.saturating_add(paid_gpu_ms);
        if completed {
            self.completed_leases = self.completed_leases.saturating_add(SCALE);
        }
    }

    /// True once there is any settled window to judge by.
    pub fn has_record(&self) -> bool {
        self.windows > 0
    }
}

/// `v` after `elapsed` ms of decay: 2^(-elapsed / half-life) in fixed
/// point, whole halvings by shift and the remainder linearly (within 3 %
/// of the exact curve).
pub(crate) fn decay(v: u64, elapsed: u64) -> u64 {
    let halvings = elapsed / HALF_LIFE_MS;
    let rest = elapsed % HALF_LIFE_MS;
    if halvings >= 64 {
        return 0;
    }
    let v = v >> halvings;
    let cut = u128::from(v) * u128::from(rest) / (2 * u128::from(HALF_LIFE_MS));
    v.saturating_sub(u64::try_from(cut).unwrap_or(u64::MAX))
}

/// Score points a lost dispute costs, basis points.
pub const LOST_DISPUTE_BP: u16 = 500;

/// `score` less [`LOST_DISPUTE_BP`] for each whole dispute lost (`lost`
/// in [`SCALE`] units, decayed).
pub fn penalised(score: u16, lost: u64) -> u16 {
    let penalty = (lost / SCALE).saturating_mul(u64::from(LOST_DISPUTE_BP));
    u16::try_from(u64::from(score).saturating_sub(penalty)).unwrap_or(0)
}

fn ratio_bp(part: u64, whole: u64) -> u64 {
    if whole == 0 {
        return 0;
    }
    u64::try_from(u128::from(part.min(whole)) * 10_000 / u128::from(whole)).unwrap_or(10_000)
}

/// The score of a supplier (specs/reputation.md):
/// `10000 x delivered x (1 - disputed share) - 1000 per hardware change -
/// 500 per refused lease`, clamped to 0..=10000, where `delivered` is the
/// paid share of the GPU-time the settled windows could bill.
pub fn supplier_score(e: &Evidence) -> u16 {
    let delivered = if e.possible_gpu_ms == 0 {
        10_000
    } else {
        ratio_bp(e.paid_gpu_ms, e.possible_gpu_ms)
    };
    let clean = 10_000 - ratio_bp(e.disputed, e.windows);
    let base = delivered * clean / 10_000;
    let penalty = (e.fingerprint_changes / SCALE) * 1_000 + (e.refused_leases / SCALE) * 500;
    u16::try_from(base.saturating_sub(penalty).min(10_000)).unwrap_or(FULL_SCORE_BP)
}

/// The score of a customer: `10000 x (1 - unanswered share / 2) x
/// (1 - disputed share / 2)`: a customer who leaves windows unanswered or
/// disputes many is a worse counterparty, but a dispute may be right.
pub fn customer_score(e: &Evidence) -> u16 {
    let unanswered = 10_000 - ratio_bp(e.unanswered, e.windows) / 2;
    let disputed = 10_000 - ratio_bp(e.disputed, e.windows) / 2;
    u16::try_from(unanswered * disputed / 10_000).unwrap_or(FULL_SCORE_BP)
}

/// The score of `side` for `e`.
pub fn score(side: Side, e: &Evidence) -> u16 {
    match side {
        Side::Supplier => supplier_score(e),
        Side::Customer => customer_score(e),
    }
}

/// Windows whose GPUs claim to be busy at a power no busy GPU draws:
/// `(seq, GPU index, mean utilisation bp, average watts)`.
pub fn implausible_power(attestation: &UsageAttestation) -> Vec<(u64, u16, u16, u64)> {
    let window_ms = attestation
        .window_end
        .since(attestation.window_start)
        .max(1);
    attestation
        .gpus
        .iter()
        .filter(|g| g.billable_ms > 0 && g.mean_util_bp >= BUSY_UTIL_BP)
        .filter_map(|g| {
            // millijoules / milliseconds = watts
            let watts = g.energy_mj / window_ms;
            (watts < MIN_BUSY_WATTS).then_some((
                attestation.seq,
                g.gpu_index,
                g.mean_util_bp,
                watts,
            ))
        })
        .collect()
}

impl<S: Store> Ledger<S> {
    /// Remembers what this coordinator saw when it voted for `request`.
    pub(crate) fn put_vote_evidence(
        &self,
        batch: &mut Batch,
        request: &rigmesh_protocol::Id,
        counts: &WindowCounts,
    ) -> Result<()> {
        batch.put_in::<VoteEvidence>(request, counts)
    }

    /// What this coordinator saw when it voted for `request`, if it did.
    pub fn vote_evidence(&self, request: &rigmesh_protocol::Id) -> Result<Option<WindowCounts>> {
        self.store().get_in::<VoteEvidence>(request)
    }

    /// The evidence about `account` on `side`, decayed to `now`.
    pub fn evidence(&self, account: &PublicKey, side: Side, now: UnixMillis) -> Result<Evidence> {
        Ok(self
            .store()
            .get_in::<ReputationEvidence>(&(*account, side.tag()))?
            .unwrap_or_default()
            .decayed(now))
    }

    /// Every account with evidence, decayed to `now`.
    pub fn all_evidence(&self, now: UnixMillis) -> Result<Vec<(PublicKey, Side, Evidence)>> {
        let mut out = Vec::new();
        for row in self.store().rows::<ReputationEvidence>(Direction::Forward) {
            let ((account, tag), evidence) = row?;
            let side = if tag == Side::Supplier.tag() {
                Side::Supplier
            } else {
                Side::Customer
            };
            out.push((account, side, evidence.decayed(now)));
        }
        Ok(out)
    }

    /// Adds a settlement to both parties' evidence, in `batch`.
    pub(crate) fn add_settlement_evidence(
        &self,
        batch: &mut Batch,
        parties: [(PublicKey, Side); 2],
        counts: &WindowCounts,
        paid_gpu_ms: u64,
        completed: bool,
        now: UnixMillis,
    ) -> Result<()> {
        for (account, side) in parties {
            let mut e = self.evidence(&account, side, now)?;
            e.add(counts, paid_gpu_ms, completed);
            batch.put_in::<ReputationEvidence>(&(account, side.tag()), &e)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(windows: u64, disputed: u64, paid_share_bp: u64) -> Evidence {
        let mut e = Evidence::default();
        let possible = windows * 60_000;
        e.add(
            &WindowCounts {
                windows,
                acked: windows - disputed,
                unanswered: 0,
                disputed,
                short: 0,
                possible_gpu_ms: possible,
                attested_gpu_ms: possible,
            },
            possible * paid_share_bp / 10_000,
            true,
        );
        e
    }

    #[test]
    fn a_spotless_supplier_scores_full_and_faults_cost() {
        assert_eq!(supplier_score(&settled(10, 0, 10_000)), 10_000);
        assert_eq!(supplier_score(&settled(10, 2, 8_000)), 6_400);
        let mut e = settled(10, 0, 10_000);
        e.fingerprint_changes = SCALE;
        assert_eq!(supplier_score(&e), 9_000);
        assert_eq!(customer_score(&settled(10, 2, 8_000)), 9_000);
    }

    #[test]
    fn evidence_halves_every_half_life() {
        let e = settled(10, 2, 10_000);
        let later = e.decayed(UnixMillis(HALF_LIFE_MS));
        assert_eq!(later.windows, 5 * SCALE);
        assert_eq!(later.disputed, SCALE);
        // The share of disputes, and so the score, does not change with age.
        assert_eq!(supplier_score(&later), supplier_score(&e));
        let much_later = e.decayed(UnixMillis(HALF_LIFE_MS * 100));
        assert!(!much_later.has_record());
    }

    #[test]
    fn busy_gpus_at_no_power_are_flagged() {
        let mut a = rigmesh_protocol::samples::usage_attestation().unwrap().body;
        assert!(implausible_power(&a).is_empty(), "the sample draws 690 W");
        if let Some(g) = a.gpus.first_mut() {
            g.energy_mj = 60_000; // 1 W over a minute at 93 % utilisation
        }
        let flagged = implausible_power(&a);
        assert_eq!(flagged.len(), 1);
        assert_eq!(flagged.first().map(|f| f.3), Some(1));
    }
}
