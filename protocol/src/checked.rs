//! Certificates a node has checked in full, remembered by their exact
//! bytes so that the same bytes met again are not checked again.
//!
//! A node meets a certificate more than once: a coordinator is handed it
//! by the party that assembled it and meets it again as the gossiped copy
//! its ingest stores and forwards; any node meets it again when the
//! compaction of its lease decides whether the lease is finally settled.
//! Each meeting would cost a quorum of signature checks plus the
//! author's. Whether a certificate passes
//! depends on its bytes and the coordinator set only (expiry is not
//! checked: specs/protocol.md 8.4), so bytes that passed against a set pass again:
//! a copy byte for byte the same needs no second check. Any other bytes,
//! a broken vote among them, are checked in full.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::crypto::Id;
use crate::error::Result;
use crate::messages::settlement::{Certifiable, Certificate, CoordinatorSet};

/// How many certificates are remembered by default: tens of seconds of a
/// busy coordinator's certificates, far more than lies between a
/// certificate handed over and its gossiped copy. About 2 MiB when full
/// (a 32-byte id in a hash set and in a queue).
pub const CHECKED_KEPT: usize = 16_384;

/// The ids of certificates that passed [`Certificate::verify`] against one
/// coordinator set, oldest forgotten first past the capacity. Shared by
/// the paths of one node that check certificates (behind a lock held for
/// a lookup or an insert, never for a check).
#[derive(Debug)]
pub struct CheckedCertificates {
    set: CoordinatorSet,
    capacity: usize,
    seen: Mutex<Seen>,
    skipped: AtomicU64,
}

#[derive(Debug, Default)]
struct Seen {
    ids: HashSet<Id>,
    order: VecDeque<Id>,
}

impl CheckedCertificates {
    /// Remembers up to `capacity` (at least one) certificates checked
    /// against `set`.
    pub fn new(set: CoordinatorSet, capacity: usize) -> Self {
        CheckedCertificates {
            set,
            capacity: capacity.max(1),
            seen: Mutex::new(Seen::default()),
            skipped: AtomicU64::new(0),
        }
    }

    /// The coordinator set whose checks are remembered.
    pub fn set(&self) -> &CoordinatorSet {
        &self.set
    }

    /// How many certificates are remembered.
    pub fn len(&self) -> usize {
        self.lock().ids.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many checks were skipped because the same bytes had passed.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Certificate::verify`] against `set`, skipped when these exact
    /// bytes passed it before against the same set. A certificate checked
    /// against another set is checked in full and not remembered.
    pub fn verify<T: Certifiable>(
        &self,
        certificate: &Certificate<T>,
        set: &CoordinatorSet,
    ) -> Result<()> {
        if *set != self.set {
            return certificate.verify(set);
        }
        let id = Self::id_of(certificate)?;
        if self.passed(&id) {
            return Ok(());
        }
        certificate.verify(set)?;
        self.remember(id);
        Ok(())
    }

    /// The id these checks remember a certificate by: that of its own
    /// canonical bytes (votes included), not of what it certifies, since
    /// another set of votes for the same message is other bytes. For bytes
    /// as decoded, `Id::of(kind, bytes)` is the same.
    pub fn id_of<T: Certifiable>(certificate: &Certificate<T>) -> Result<Id> {
        Ok(Id::of(T::CERTIFICATE, &certificate.to_bytes()?))
    }

    /// True when the bytes of `id` ([`CheckedCertificates::id_of`]) passed
    /// [`Certificate::verify`] against this set lately; each such answer
    /// counts as a skipped check.
    pub fn passed(&self, id: &Id) -> bool {
        let passed = self.lock().ids.contains(id);
        if passed {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
        passed
    }

    /// Remembers the bytes of `id` as having passed every check of
    /// [`Certificate::verify`] against this set: only for bytes that did
    /// (as ingest checks them, in parts: [`Certificate::check_unsigned`],
    /// then its signatures in a batch).
    pub fn remember(&self, id: Id) {
        let mut seen = self.lock();
        if seen.ids.insert(id) {
            seen.order.push_back(id);
            while seen.order.len() > self.capacity {
                if let Some(old) = seen.order.pop_front() {
                    seen.ids.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::crypto::Keypair;
    use crate::kind::Kind;
    use crate::messages::settlement::VoteSignature;
    use crate::samples;
    use crate::signed::Signed;

    #[test]
    fn the_same_bytes_are_checked_once_and_other_votes_in_full() {
        let set = samples::coordinator_set().unwrap();
        let checked = CheckedCertificates::new(set.clone(), 8);
        let cert = samples::settlement_certificate().unwrap();

        checked.verify(&cert, &set).unwrap();
        assert_eq!(checked.skipped(), 0);
        checked.verify(&cert, &set).unwrap();
        assert_eq!(checked.skipped(), 1, "the same bytes were checked again");

        // The same message with one vote's signature broken: other bytes,
        // checked in full and refused each time, never remembered.
        let mut broken = cert.clone();
        broken.votes[0].signature = Keypair::from_seed([9; 32]).sign(Kind::Vote, b"other");
        for _ in 0..2 {
            assert!(checked.verify(&broken, &set).is_err());
        }
        // The fourth coordinator's vote added: valid, but other bytes, so
        // checked in full and remembered apart.
        let mut more = cert.clone();
        let fourth = &samples::coordinators()[2];
        let vote = Signed::sign(
            Certificate::vote_for(&cert.message, fourth.public()).unwrap(),
            fourth,
        )
        .unwrap();
        more.votes.push(VoteSignature {
            coordinator: vote.signer,
            signature: vote.signature,
        });
        checked.verify(&more, &set).unwrap();
        assert_eq!(checked.skipped(), 1);
        assert_eq!(checked.len(), 2);
    }

    #[test]
    fn another_set_is_checked_in_full_and_the_oldest_is_forgotten_first() {
        let set = samples::coordinator_set().unwrap();
        let checked = CheckedCertificates::new(set.clone(), 1);
        let settlement = samples::settlement_certificate().unwrap();
        let escrow = samples::escrow_certificate().unwrap();

        // Checked against another epoch's set, it fails and is not kept.
        let other = CoordinatorSet::new(set.epoch() + 1, set.members().to_vec()).unwrap();
        assert!(checked.verify(&settlement, &other).is_err());
        assert!(checked.is_empty());

        checked.verify(&settlement, &set).unwrap();
        checked.verify(&escrow, &set).unwrap();
        assert_eq!(checked.len(), 1);
        checked.verify(&escrow, &set).unwrap();
        assert_eq!(checked.skipped(), 1);
        // The settlement certificate was forgotten: checked again in full.
        checked.verify(&settlement, &set).unwrap();
        assert_eq!(checked.skipped(), 1);
    }
}
