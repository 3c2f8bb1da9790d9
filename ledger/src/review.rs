//! What a coordinator holds for an admin's decision (specs/settlement.md
//! section 4.3): deposits above the approval threshold until a second
//! admin key approves them, withdrawals above the review threshold or to a
//! destination new to their account until an admin approves them. Also
//! the two facts those rules read: which deposit took each
//! `(admin, reference)`, and the destinations each account has withdrawn
//! to.
//!
//! Holding, approving and rejecting are money actions: each writes its
//! audit record in the same atomic batch as its change.

use bincode::{Decode, Encode};
use rigmesh_protocol::{Id, Kind, PublicKey, UnixMillis};

use crate::audit::Action;
use crate::codec::Record;
use crate::columns::{DepositReferences, Held, HeldDebits, KnownDestinations, TypedStore};
use crate::error::Result;
use crate::ledger::{Cause, Ledger};
use crate::messages::CertificateKind;
use crate::store::{Batch, Direction, Store};

/// A deposit or withdrawal held for review, with its canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct HeldMessage {
    /// When this coordinator first held it.
    pub since: UnixMillis,
    /// The signed message's canonical bytes.
    pub bytes: Vec<u8>,
    /// The admin key that approved it, once one has (withdrawals: the
    /// coordinator may vote from then on).
    pub approved_by: Option<PublicKey>,
}

impl Record for HeldMessage {
    const WHAT: &'static str = "held message";
}

/// What holding a message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Held now.
    Held,
    /// Held before (a retry).
    AlreadyHeld(HeldMessage),
    /// The deposit's `(admin, reference)` belongs to another deposit.
    ReferenceUsed(Id),
    /// Another withdrawal of the account at the same sequence number is
    /// held and still live.
    DebitHeld(Id),
}

/// A withdrawal's place among the held ones: its `(account, seq)`, and the
/// expired withdrawal held there that it replaces, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldDebit {
    /// The account and its debit sequence number.
    pub at: (PublicKey, u64),
    /// The expired withdrawal it replaces.
    pub replaces: Option<Id>,
}

/// The key of a deposit's `(admin, reference)`: a hash, so keys have one
/// length whatever the reference.
pub fn reference_key(admin: &PublicKey, reference: &str) -> Id {
    let mut bytes = admin.0.to_vec();
    bytes.extend_from_slice(reference.as_bytes());
    Id::of(Kind::Deposit, &bytes)
}

/// The key of a withdrawal destination.
pub fn destination_key(destination: &str) -> Id {
    Id::of(Kind::Withdrawal, destination.as_bytes())
}

impl<S: Store> Ledger<S> {
    /// The deposit that took `(admin, reference)`, held or applied.
    pub fn deposit_reference(&self, admin: &PublicKey, reference: &str) -> Result<Option<Id>> {
        self.store()
            .get_in::<DepositReferences>(&reference_key(admin, reference))
    }

    /// True if `account` has a withdrawal to `destination` applied here.
    pub fn known_destination(&self, account: &PublicKey, destination: &str) -> Result<bool> {
        Ok(self
            .store()
            .get_in::<KnownDestinations>(&(*account, destination_key(destination)))?
            .is_some())
    }

    /// The withdrawal held at `(account, seq)`, if any.
    pub fn held_debit(&self, account: &PublicKey, seq: u64) -> Result<Option<Id>> {
        self.store().get_in::<HeldDebits>(&(*account, seq))
    }

    /// The message of `kind` held under `subject`, if any.
    pub fn held(&self, kind: CertificateKind, subject: &Id) -> Result<Option<HeldMessage>> {
        self.store().get_in::<Held>(&(kind, *subject))
    }

    /// Every message of `kind` held and not yet approved, oldest key
    /// first, at most `limit`.
    pub fn awaiting_review(
        &self,
        kind: CertificateKind,
        limit: usize,
    ) -> Result<Vec<(Id, HeldMessage)>> {
        let mut out = Vec::new();
        for row in self.store().rows_with::<Held, _>(&kind, Direction::Forward) {
            if out.len() >= limit.min(crate::MAX_PAGE) {
                break;
            }
            let ((_, subject), held) = row?;
            if held.approved_by.is_none() {
                out.push((subject, held));
            }
        }
        Ok(out)
    }

    /// Holds a message for review, durably, with its audit record. A
    /// deposit's `reference` (its [`reference_key`]) is taken now, so no
    /// other deposit can use it while this one waits; a withdrawal's
    /// `debit` place too, so an account has at most one withdrawal held
    /// per sequence number.
    #[allow(clippy::too_many_arguments)]
    pub fn hold(
        &self,
        kind: CertificateKind,
        subject: &Id,
        bytes: Vec<u8>,
        reference: Option<Id>,
        debit: Option<HeldDebit>,
        detail: &str,
        cause: &Cause,
    ) -> Result<Hold> {
        let guard = self.lock();
        if let Some(held) = self.held(kind, subject)? {
            return Ok(Hold::AlreadyHeld(held));
        }
        let mut batch = Batch::default();
        if let Some(debit) = debit {
            if let Some(other) = self.store().get_in::<HeldDebits>(&debit.at)? {
                if other != *subject && Some(other) != debit.replaces {
                    return Ok(Hold::DebitHeld(other));
                }
            }
            if let Some(old) = debit.replaces {
                batch.delete_in::<Held>(&(kind, old));
            }
            batch.put_in::<HeldDebits>(&debit.at, subject)?;
        }
        if let Some(key) = reference {
            match self.store().get_in::<DepositReferences>(&key)? {
                Some(other) if other != *subject => return Ok(Hold::ReferenceUsed(other)),
                Some(_) => {}
                None => batch.put_in::<DepositReferences>(&key, subject)?,
            }
        }
        batch.put_in::<Held>(
            &(kind, *subject),
            &HeldMessage {
                since: cause.at,
                bytes,
                approved_by: None,
            },
        )?;
        self.commit(guard, batch, Action::HeldForReview, detail, cause)?;
        Ok(Hold::Held)
    }

    /// Records an admin's approval of a held withdrawal; false if nothing
    /// is held under `subject`.
    pub fn approve_held(
        &self,
        kind: CertificateKind,
        subject: &Id,
        admin: &PublicKey,
        cause: &Cause,
    ) -> Result<bool> {
        let guard = self.lock();
        let Some(mut held) = self.held(kind, subject)? else {
            return Ok(false);
        };
        if held.approved_by.is_some() {
            return Ok(true);
        }
        held.approved_by = Some(*admin);
        let mut batch = Batch::default();
        batch.put_in::<Held>(&(kind, *subject), &held)?;
        self.commit(
            guard,
            batch,
            Action::ReviewDecided,
            &format!("{kind:?} {subject} approved by {admin}"),
            cause,
        )?;
        Ok(true)
    }

    /// Drops a held message an admin rejected, and frees its deposit
    /// reference; false if nothing is held under `subject`.
    pub fn reject_held(
        &self,
        kind: CertificateKind,
        subject: &Id,
        reference: Option<Id>,
        debit: Option<(PublicKey, u64)>,
        admin: &PublicKey,
        cause: &Cause,
    ) -> Result<bool> {
        let guard = self.lock();
        if self.held(kind, subject)?.is_none() {
            return Ok(false);
        }
        let mut batch = Batch::default();
        batch.delete_in::<Held>(&(kind, *subject));
        if let Some(at) = debit {
            if self.store().get_in::<HeldDebits>(&at)? == Some(*subject) {
                batch.delete_in::<HeldDebits>(&at);
            }
        }
        if let Some(key) = reference {
            if self.store().get_in::<DepositReferences>(&key)? == Some(*subject) {
                batch.delete_in::<DepositReferences>(&key);
            }
        }
        self.commit(
            guard,
            batch,
            Action::ReviewDecided,
            &format!("{kind:?} {subject} rejected by {admin}"),
            cause,
        )?;
        Ok(true)
    }
}
