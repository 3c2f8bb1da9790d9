//! Disputes (specs/settlement.md 7.1 to 7.3): how a customer's answers
//! decide a window, the cases a settlement holds for review, and the
//! resolutions that move what a case holds.
//!
//! A dispute whose reason the coordinators check themselves (signature,
//! chain, window, arithmetic, GPUs, billed time) is decided by rule when
//! the attestation passes those checks: the window is paid and the
//! customer loses the dispute. An ack of the very attestation is the
//! customer's signed acceptance and wins over a later dispute of it. Any
//! other dispute (the GPUs were not delivered, anything else) holds the
//! window's charge out of the escrow, as a case, until an admin's
//! resolution is certified by a quorum.

use bincode::{Decode, Encode};
use rigmesh_protocol::{
    Credits, DecidedAgainst, DisputeReason, DisputeResolution, Id, PublicKey,
    ResolutionCertificate, UnixMillis, UsageAck, UsageDispute,
};

use crate::accounts::{Account, JournalEntry, Movement};
use crate::audit::Action;
use crate::books::{derived_entry_id, Posting};
use crate::certified::Applied;
use crate::codec::Record;
use crate::columns::{DisputeCases, DisputeOutcomes, OpenCases, ResolutionLocks, TypedStore};
use crate::error::{Error, Result};
use crate::ledger::{Cause, Ledger};
use crate::messages::CertificateKind;
use crate::reputation::{decay, Side, SCALE};
use crate::store::{Batch, Direction, Store};

/// True for the reasons a coordinator checks itself: an attestation that
/// passed its checks proves such a dispute wrong.
pub fn checkable(reason: DisputeReason) -> bool {
    matches!(
        reason,
        DisputeReason::BadSignature
            | DisputeReason::BrokenChain
            | DisputeReason::OverlappingWindow
            | DisputeReason::ArithmeticMismatch
            | DisputeReason::WrongGpus
            | DisputeReason::Overbilled
    )
}

/// How the customer's answers decide one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Acked, nothing disputed of this attestation.
    Acked,
    /// Paid although disputed: acked, or every dispute of it has a reason
    /// the attestation's checks refute. The customer loses the dispute.
    Refuted,
    /// Held for review: a dispute no rule decides, or an answer about
    /// another attestation at this position.
    Held,
    /// No answer.
    None,
}

/// The customer's answers to the attestation `id`, from the acks and
/// disputes of its lease, customer and `seq` (their signatures already
/// checked by the caller).
pub fn answer<'a>(
    id: Id,
    acks: impl IntoIterator<Item = &'a UsageAck>,
    disputes: impl IntoIterator<Item = &'a UsageDispute>,
) -> Answer {
    let mut acked = false;
    let mut other = false;
    for ack in acks {
        if ack.attestation == id {
            acked = true;
        } else {
            other = true;
        }
    }
    let mut disputed = false;
    let mut undecided = false;
    for dispute in disputes {
        if dispute.attestation != id {
            other = true;
        } else {
            disputed = true;
            if !checkable(dispute.reason) {
                undecided = true;
            }
        }
    }
    if acked {
        // Signed acceptance of this very attestation.
        return if disputed {
            Answer::Refuted
        } else {
            Answer::Acked
        };
    }
    if other || undecided {
        Answer::Held
    } else if disputed {
        Answer::Refuted
    } else {
        Answer::None
    }
}

/// What one coordinator holds of a case: the amount a settlement held for
/// review, and its resolution once applied.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DisputeCase {
    /// Id of the settlement request that held it.
    pub request: Id,
    /// The supplier.
    pub supplier: PublicKey,
    /// The customer.
    pub customer: PublicKey,
    /// The amount held.
    pub held: Credits,
    /// Windows of the settlement.
    pub first_window: u64,
    /// Last window of the settlement.
    pub last_window: u64,
    /// When the settlement was applied here.
    pub opened_at: UnixMillis,
    /// The resolution applied, if any.
    pub resolution: Option<Id>,
}

impl Record for DisputeCase {
    const WHAT: &'static str = "dispute case";
}

/// Disputes an account lost on one side, in [`SCALE`] units, decayed with
/// the reputation half-life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
pub struct DisputeRecord {
    /// Disputes decided against the account.
    pub lost: u64,
    /// Disputes decided for it.
    pub won: u64,
    /// When it was last updated.
    pub updated_at: UnixMillis,
}

impl Record for DisputeRecord {
    const WHAT: &'static str = "dispute record";
}

impl DisputeRecord {
    /// The record decayed to `now`.
    pub fn decayed(&self, now: UnixMillis) -> DisputeRecord {
        let elapsed = now.0.saturating_sub(self.updated_at.0);
        DisputeRecord {
            lost: decay(self.lost, elapsed),
            won: decay(self.won, elapsed),
            updated_at: now.max(self.updated_at),
        }
    }

    /// Whole disputes lost (rounded down).
    pub fn lost_count(&self) -> u32 {
        u32::try_from(self.lost / SCALE).unwrap_or(u32::MAX)
    }
}

/// Why a resolution cannot be voted for or applied against a case.
pub fn resolution_mismatch(case: Option<&DisputeCase>, r: &DisputeResolution) -> Option<String> {
    let Some(case) = case else {
        return Some(format!(
            "no case at lease {} settlement {}",
            r.lease, r.settlement_seq
        ));
    };
    if case.resolution.is_some() {
        return Some("the case is already resolved".into());
    }
    if case.supplier != r.supplier || case.customer != r.customer {
        return Some("the case is between other parties".into());
    }
    if case.held != r.held {
        return Some(format!(
            "the case holds {}, the resolution says {}",
            case.held, r.held
        ));
    }
    None
}

impl<S: Store> Ledger<S> {
    /// The case a settlement of `lease` held at `settlement_seq`, if any.
    pub fn dispute_case(&self, lease: &Id, settlement_seq: u64) -> Result<Option<DisputeCase>> {
        self.store()
            .get_in::<DisputeCases>(&(*lease, settlement_seq))
    }

    /// Up to `limit` cases (the open ones only when `open`), oldest lease
    /// id first. The open ones are read through their index, without the
    /// resolved cases, which are kept for good.
    pub fn dispute_cases(&self, open: bool, limit: usize) -> Result<Vec<((Id, u64), DisputeCase)>> {
        let mut out = Vec::new();
        if open {
            for row in self.store().rows::<OpenCases>(Direction::Forward) {
                if out.len() >= limit {
                    break;
                }
                let (key, _) = row?;
                let case = self
                    .store()
                    .get_in::<DisputeCases>(&key)?
                    .ok_or(Error::Corrupt {
                        what: "open case without its case",
                    })?;
                out.push((key, case));
            }
            return Ok(out);
        }
        for row in self.store().rows::<DisputeCases>(Direction::Forward) {
            if out.len() >= limit {
                break;
            }
            let (key, case) = row?;
            if !open || case.resolution.is_none() {
                out.push((key, case));
            }
        }
        Ok(out)
    }

    /// The bytes of the certificate of `kind` applied for `subject`.
    pub fn applied_certificate(
        &self,
        kind: CertificateKind,
        subject: &Id,
    ) -> Result<Option<Vec<u8>>> {
        Ok(self
            .store()
            .get_in::<crate::columns::Certificates>(&(kind, *subject))?
            .map(|b| b.0))
    }

    /// The disputes `account` lost and won on `side`, decayed to `now`.
    pub fn dispute_record(
        &self,
        account: &PublicKey,
        side: Side,
        now: UnixMillis,
    ) -> Result<DisputeRecord> {
        Ok(self
            .store()
            .get_in::<DisputeOutcomes>(&(*account, side.tag()))?
            .unwrap_or_default()
            .decayed(now))
    }

    /// Adds `lost` disputes lost by `loser` and won by `winner`, in `batch`.
    pub(crate) fn add_dispute_outcome(
        &self,
        batch: &mut Batch,
        loser: (PublicKey, Side),
        winner: (PublicKey, Side),
        count: u64,
        now: UnixMillis,
    ) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let scaled = count.saturating_mul(SCALE);
        let mut lost = self.dispute_record(&loser.0, loser.1, now)?;
        lost.lost = lost.lost.saturating_add(scaled);
        batch.put_in::<DisputeOutcomes>(&(loser.0, loser.1.tag()), &lost)?;
        let mut won = self.dispute_record(&winner.0, winner.1, now)?;
        won.won = won.won.saturating_add(scaled);
        batch.put_in::<DisputeOutcomes>(&(winner.0, winner.1.tag()), &won)?;
        Ok(())
    }

    /// The resolution this coordinator voted for at a case, if any.
    pub fn resolution_lock(&self, lease: &Id, settlement_seq: u64) -> Result<Option<Id>> {
        self.store()
            .get_in::<ResolutionLocks>(&(*lease, settlement_seq))
    }

    /// Locks a case for the resolution `subject` before a vote is sent.
    pub fn lock_resolution(
        &self,
        lease: &Id,
        settlement_seq: u64,
        subject: &Id,
        cause: &Cause,
    ) -> Result<crate::Lock> {
        self.take_lock::<ResolutionLocks>(
            &(*lease, settlement_seq),
            subject,
            &format!("vote lock lease {lease} dispute case {settlement_seq}"),
            cause,
            |_| Ok(()),
        )
    }

    /// Applies a verified resolution certificate: what the case holds goes
    /// to the supplier (its share, whole: no fee is taken on a disputed
    /// amount) and back to the customer (the rest), and the party decided
    /// against loses a dispute.
    pub fn apply_resolution_certificate(
        &self,
        certificate: &ResolutionCertificate,
        cause: &Cause,
    ) -> Result<Applied> {
        let subject = certificate.subject()?;
        let r = &certificate.message.body;
        let guard = self.lock();
        if self.is_applied(&subject)? {
            return Ok(Applied::AlreadyApplied);
        }
        let key = (r.lease, r.settlement_seq);
        let case = self.store().get_in::<DisputeCases>(&key)?;
        let Some(mut case) = case else {
            drop(guard);
            let reason = format!(
                "no case at lease {} settlement {} is applied here",
                r.lease, r.settlement_seq
            );
            self.hold_pending(
                CertificateKind::Resolution,
                &subject,
                certificate.to_bytes()?,
                &reason,
                cause,
            )?;
            return Ok(Applied::Pending(reason));
        };
        if let Some(detail) = resolution_mismatch(Some(&case), r) {
            return Ok(Applied::Conflict {
                code: "conflicting_resolution",
                detail,
            });
        }
        let refund = r
            .held
            .checked_sub(r.supplier_share)
            .ok_or(Error::Overflow("a dispute refund"))?;
        let held = Account::Disputed(r.lease);
        let payable = Account::Payable(r.lease);
        let moves = [
            (Movement::DisputePayment, held, payable, r.supplier_share),
            (
                Movement::SupplierCredit,
                payable,
                Account::User(case.supplier),
                r.supplier_share,
            ),
            (
                Movement::DisputeRefund,
                held,
                Account::User(case.customer),
                refund,
            ),
        ];
        let mut posting = Posting::new(self.store())?;
        for (movement, from, to, amount) in moves {
            if amount.is_zero() {
                continue;
            }
            posting.post(&JournalEntry::transfer(
                derived_entry_id(&subject, movement),
                movement,
                from,
                to,
                amount,
                cause.at,
                subject,
            )?)?;
        }
        let mut batch = posting.finish()?;
        case.resolution = Some(subject);
        put_dispute_case(&mut batch, &key, &case)?;
        let supplier = (case.supplier, Side::Supplier);
        let customer = (case.customer, Side::Customer);
        match r.against {
            DecidedAgainst::Supplier => {
                self.add_dispute_outcome(&mut batch, supplier, customer, 1, cause.at)?
            }
            DecidedAgainst::Customer => {
                self.add_dispute_outcome(&mut batch, customer, supplier, 1, cause.at)?
            }
            DecidedAgainst::Neither => {}
        }
        self.mark_applied_in(
            &mut batch,
            CertificateKind::Resolution,
            &subject,
            certificate.to_bytes()?,
            cause.at,
        )?;
        self.commit(guard,
            batch,
            Action::DisputeResolved,
            &format!(
                "resolution {subject}: lease {} case {} of {}: {} to the supplier, {refund} back, against {:?}",
                r.lease, r.settlement_seq, r.held, r.supplier_share, r.against
            ),
            cause,
        )?;
        Ok(Applied::Applied)
    }
}

/// Writes `case` at `key` in `batch`, with its entry in the index of
/// open cases while it has no resolution: the one writer of both.
pub(crate) fn put_dispute_case(
    batch: &mut Batch,
    key: &(Id, u64),
    case: &DisputeCase,
) -> Result<()> {
    batch.put_in::<DisputeCases>(key, case)?;
    match case.resolution {
        None => batch.put_in::<OpenCases>(key, &case.request)?,
        Some(_) => batch.delete_in::<OpenCases>(key),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rigmesh_protocol::{Keypair, PROTOCOL_VERSION};

    use super::*;

    fn ack(of: Id) -> UsageAck {
        UsageAck {
            version: PROTOCOL_VERSION,
            lease: Id([1; 32]),
            customer: Keypair::from_seed([2; 32]).public(),
            attestation: of,
            seq: 3,
            created_at: UnixMillis(10),
        }
    }

    fn dispute(of: Id, reason: DisputeReason) -> UsageDispute {
        UsageDispute {
            version: PROTOCOL_VERSION,
            lease: Id([1; 32]),
            customer: Keypair::from_seed([2; 32]).public(),
            attestation: of,
            seq: 3,
            reason,
            detail: "seen".into(),
            created_at: UnixMillis(10),
        }
    }

    #[test]
    fn rules_decide_what_they_can_and_hold_the_rest() {
        let id = Id([9; 32]);
        let other = Id([8; 32]);
        let none: [UsageAck; 0] = [];
        let no_dispute: [UsageDispute; 0] = [];
        assert_eq!(answer(id, &none, &no_dispute), Answer::None);
        assert_eq!(answer(id, &[ack(id)], &no_dispute), Answer::Acked);
        // A reason the attestation's own checks refute: paid, lost.
        for reason in [
            DisputeReason::BadSignature,
            DisputeReason::BrokenChain,
            DisputeReason::OverlappingWindow,
            DisputeReason::ArithmeticMismatch,
            DisputeReason::WrongGpus,
            DisputeReason::Overbilled,
        ] {
            assert_eq!(answer(id, &none, &[dispute(id, reason)]), Answer::Refuted);
        }
        // An observation no rule can check: held.
        for reason in [DisputeReason::NotDelivered, DisputeReason::Other] {
            assert_eq!(answer(id, &none, &[dispute(id, reason)]), Answer::Held);
            // The customer's signed ack of this very attestation wins.
            assert_eq!(
                answer(id, &[ack(id)], &[dispute(id, reason)]),
                Answer::Refuted
            );
        }
        // An answer about another attestation at this position: held.
        assert_eq!(answer(id, &[ack(other)], &no_dispute), Answer::Held);
        assert_eq!(
            answer(id, &none, &[dispute(other, DisputeReason::BadSignature)]),
            Answer::Held
        );
        // A dispute of a forged attestation does not hold the genuine one
        // the customer acked.
        assert_eq!(
            answer(
                id,
                &[ack(id)],
                &[dispute(other, DisputeReason::BadSignature)]
            ),
            Answer::Acked
        );
    }
}
