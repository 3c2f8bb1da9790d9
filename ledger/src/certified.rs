//! What a coordinator keeps to vote and to apply certificates
//! (specs/settlement.md sections 3 to 10): each account's debit sequence,
//! the vote locks, the certificates applied, those held pending, and each
//! lease's settlement head.
//!
//! Every method here takes a certificate (or deposit) its caller has
//! already verified against the coordinator set, and changes the books only
//! in one atomic batch with its audit record. Applying is idempotent by the
//! certificate's subject id, and never takes an account below zero: a debit
//! the balance here does not cover yet is held pending until the credits
//! its voters had applied arrive (section 5.4).

use bincode::{Decode, Encode};
use rigmesh_protocol::{
    Credits, EscrowCertificate, Id, PublicKey, ReleaseCertificate, SettlementCertificate,
    UnixMillis,
};

use crate::accounts::{Account, JournalEntry, Movement};
use crate::audit::Action;
use crate::books::{LeaseBook, Posting};
use crate::codec::{Record, StoredMessage};
use crate::columns::{
    AppliedSubjects, Certificates, ClosedLeases, DebitLocks, DebitSeqs, DebitsApplied,
    DepositReferences, Held, KnownDestinations, LeaseBooks, OpenByCustomer, OpenBySupplier,
    PendingCertificates, RefutedDisputes, SettlementHeads, SettlementLocks, TypedStore,
    VoteEvidence,
};
use crate::disputes::DisputeCase;
use crate::error::{Error, Result};
use crate::ledger::{Cause, Ledger};
use crate::messages::CertificateKind;
use crate::reputation::{Side, WindowCounts};
use crate::store::{Batch, Direction, Store};

/// What applying a certificate did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Applied now.
    Applied,
    /// Applied before; nothing written.
    AlreadyApplied,
    /// Held pending (stored, not applied) until what is missing arrives.
    Pending(String),
    /// Conflicts with what is applied: evidence of more than f faulty
    /// coordinators. Nothing applied; the caller raises a critical alert.
    Conflict {
        /// Reason code of the settlement spec.
        code: &'static str,
        /// What conflicts.
        detail: String,
    },
}

/// What taking a vote lock did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Locked now for this subject.
    Taken,
    /// Already locked for this very subject: the vote may be sent again.
    Same,
    /// Locked for another subject.
    Other(Id),
}

/// When a coordinator first saw a certificate it holds pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct PendingSince(pub UnixMillis);

impl Record for PendingSince {
    const WHAT: &'static str = "pending certificate";
}

/// The subject of an applied certificate, with its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct AppliedRecord {
    /// Which kind of certificate.
    pub kind: u8,
    /// When it was applied.
    pub at: UnixMillis,
}

impl Record for AppliedRecord {
    const WHAT: &'static str = "applied certificate";
}

impl Record for Id {
    const WHAT: &'static str = "message id";
}

/// A debit of an account, as a certificate states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debit {
    /// The certified message's id.
    pub subject: Id,
    /// The account debited.
    pub account: PublicKey,
    /// Its debit sequence number.
    pub seq: u64,
    /// The amount.
    pub amount: Credits,
    /// Where the money goes.
    pub to: DebitTarget,
}

/// Where a debit's money goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebitTarget {
    /// Into the escrow of a lease, for a supplier.
    Escrow {
        /// The lease.
        lease: Id,
        /// Who will be paid.
        supplier: PublicKey,
    },
    /// Out of rigmesh (a withdrawal).
    External {
        /// The destination's [`crate::destination_key`]: once applied, the
        /// account has used it.
        destination: Id,
    },
}

/// A settlement as its certificate states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// The request's id.
    pub subject: Id,
    /// The lease.
    pub lease: Id,
    /// The escrow order that funds it.
    pub escrow: Id,
    /// The supplier.
    pub supplier: PublicKey,
    /// The customer.
    pub customer: PublicKey,
    /// The lease's settlement sequence number.
    pub settlement_seq: u64,
    /// First window paid.
    pub first_window: u64,
    /// Last window paid.
    pub last_window: u64,
    /// Id of attestation `last_window`.
    pub attestation_head: Id,
    /// GPU-milliseconds paid for.
    pub billable_gpu_ms: u64,
    /// To the supplier.
    pub supplier_amount: Credits,
    /// To the fee account.
    pub fee: Credits,
    /// Back to the customer.
    pub refund: Credits,
    /// Held out of the escrow for review (a dispute case).
    pub held: Credits,
    /// Closes the lease.
    pub final_settlement: bool,
    /// Whether it covers any window (an escrow release may cover none).
    pub covers_windows: bool,
}

impl Debit {
    /// The debit an escrow certificate makes.
    pub fn of_escrow(certificate: &EscrowCertificate) -> Result<Self> {
        let order = &certificate.message.body;
        Ok(Debit {
            subject: certificate.subject()?,
            account: order.account,
            seq: order.seq,
            amount: order.amount,
            to: DebitTarget::Escrow {
                lease: order.lease,
                supplier: order.supplier,
            },
        })
    }
}

impl Settlement {
    /// The settlement a certificate makes.
    pub fn of(certificate: &SettlementCertificate) -> Result<Self> {
        let r = &certificate.message.body;
        Ok(Settlement {
            subject: certificate.subject()?,
            lease: r.lease,
            escrow: r.escrow,
            supplier: r.supplier,
            customer: r.customer,
            settlement_seq: r.settlement_seq,
            first_window: r.first_window,
            last_window: r.last_window,
            attestation_head: r.attestation_head,
            billable_gpu_ms: r.billable_gpu_ms,
            supplier_amount: r.supplier_amount,
            fee: r.fee,
            refund: r.refund,
            held: r.held,
            final_settlement: r.final_settlement,
            covers_windows: true,
        })
    }

    /// The final settlement an escrow release certificate makes.
    pub fn of_release(certificate: &ReleaseCertificate) -> Result<Self> {
        let r = &certificate.message.body;
        Ok(Settlement {
            subject: certificate.subject()?,
            lease: r.lease,
            escrow: r.escrow,
            supplier: r.supplier,
            customer: r.customer,
            settlement_seq: r.settlement_seq,
            first_window: r.first_window,
            last_window: r.last_window().unwrap_or(r.first_window),
            attestation_head: r.attestation_head,
            billable_gpu_ms: r.billable_gpu_ms,
            supplier_amount: r.supplier_amount,
            fee: r.fee,
            refund: r.refund,
            held: Credits::ZERO,
            final_settlement: true,
            covers_windows: r.windows > 0,
        })
    }
}

/// What one pass of [`Ledger::compact_closed_leases`] took away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClosedCompaction {
    /// Leases whose vote locks and evidence were taken away.
    pub leases: u64,
    /// Keys deleted, the leases' entries in [`ClosedLeases`] not counted.
    pub keys: u64,
    /// Leases past the grace were left for the next pass.
    pub more: bool,
}

/// Adds to `batch`, which applies `debit`, the deletion of this member's
/// vote lock on the account's debit before it (specs/settlement.md 3):
/// that debit is applied here already (a debit is voted and applied only
/// at the account's next sequence number), and the client that ordered
/// it had it certified before it ordered this one.
/// Every other message at that sequence number was refused already;
/// without the lock, the locked one is refused too (`seq_used`) instead
/// of voted again. The lock of the debit applied now stays until the
/// next, for a client that asks again for the votes of a certificate it
/// formed and lost. So an account holds at most one lock below its next
/// sequence number, however many debits it made.
fn forget_earlier_debit_lock(batch: &mut Batch, debit: &Debit) {
    if let Some(earlier) = debit.seq.checked_sub(1) {
        batch.delete_in::<DebitLocks>(&(debit.account, earlier));
    }
}

fn add(a: Credits, b: Credits, what: &'static str) -> Result<Credits> {
    a.checked_add(b).ok_or(Error::Overflow(what))
}

impl<S: Store> Ledger<S> {
    /// The next debit sequence number of `account` (0 if it never paid).
    pub fn next_debit_seq(&self, account: &PublicKey) -> Result<u64> {
        Ok(self.store().get_in::<DebitSeqs>(account)?.unwrap_or(0))
    }

    /// The subject this node voted for at `(account, seq)`, if any.
    pub fn debit_lock(&self, account: &PublicKey, seq: u64) -> Result<Option<Id>> {
        self.store().get_in::<DebitLocks>(&(*account, seq))
    }

    /// The subject of the debit applied at `(account, seq)`, if any.
    pub fn applied_debit(&self, account: &PublicKey, seq: u64) -> Result<Option<Id>> {
        self.store().get_in::<DebitsApplied>(&(*account, seq))
    }

    /// The subject this node voted for at `(lease, settlement_seq)`.
    pub fn settlement_lock(&self, lease: &Id, settlement_seq: u64) -> Result<Option<Id>> {
        self.store()
            .get_in::<SettlementLocks>(&(*lease, settlement_seq))
    }

    /// The id of the last settled attestation of `lease`.
    pub fn settlement_head(&self, lease: &Id) -> Result<Option<Id>> {
        self.store().get_in::<SettlementHeads>(lease)
    }

    /// What `account` has locked in escrows of open leases: read from
    /// its own open leases ([`OpenByCustomer`]), not from every book.
    pub fn escrowed_by(&self, account: &PublicKey) -> Result<Credits> {
        let mut total = Credits::ZERO;
        for (_, book) in self.open_leases_of::<OpenByCustomer>(account)? {
            total = add(total, book.available()?, "escrowed credits")?;
        }
        Ok(total)
    }

    /// The open leases `supplier` is paid on, with their books.
    pub fn open_leases_of_supplier(&self, supplier: &PublicKey) -> Result<Vec<(Id, LeaseBook)>> {
        self.open_leases_of::<OpenBySupplier>(supplier)
    }

    /// The open leases listed under `account` in the index `C`, with their
    /// books. A listed lease without a book, or whose book is closed,
    /// would be an index out of step with the books: it is an error.
    fn open_leases_of<C>(&self, account: &PublicKey) -> Result<Vec<(Id, LeaseBook)>>
    where
        C: crate::columns::Column<Key = (PublicKey, Id), Value = Id>,
    {
        let mut out = Vec::new();
        for row in self.store().rows_with::<C, _>(account, Direction::Forward) {
            let ((_, lease), _) = row?;
            match self.store().get_in::<LeaseBooks>(&lease)? {
                Some(book) if !book.closed => out.push((lease, book)),
                _ => {
                    return Err(Error::Undecodable {
                        what: "open-lease index",
                        reason: format!(
                            "lease {lease} is listed open under {account} without an open book"
                        ),
                    })
                }
            }
        }
        Ok(out)
    }

    /// True if the certificate (or deposit) with this subject is applied.
    pub fn is_applied(&self, subject: &Id) -> Result<bool> {
        Ok(self.store().get_in::<AppliedSubjects>(subject)?.is_some())
    }

    /// Locks `(account, seq)` for `subject` before a vote is sent (the lock
    /// rule of section 4), durably.
    pub fn lock_debit(
        &self,
        account: &PublicKey,
        seq: u64,
        subject: &Id,
        cause: &Cause,
    ) -> Result<Lock> {
        self.take_lock::<DebitLocks>(
            &(*account, seq),
            subject,
            &format!("vote lock {account} seq {seq}"),
            cause,
            |_| Ok(()),
        )
    }

    /// Locks `(lease, settlement_seq)` for `subject` before a vote is sent,
    /// with the window counts behind the vote (reputation evidence, used
    /// when the certificate is applied), in one write.
    pub fn lock_settlement(
        &self,
        lease: &Id,
        settlement_seq: u64,
        subject: &Id,
        counts: &WindowCounts,
        refuted: u64,
        cause: &Cause,
    ) -> Result<Lock> {
        self.take_lock::<SettlementLocks>(
            &(*lease, settlement_seq),
            subject,
            &format!(
                "vote lock lease {lease} settlement {settlement_seq}: {} windows, {} disputed, {} unanswered",
                counts.windows, counts.disputed, counts.unanswered
            ),
            cause,
            |batch| {
                if refuted > 0 {
                    batch.put_in::<RefutedDisputes>(subject, &refuted)?;
                }
                self.put_vote_evidence(batch, subject, counts)
            },
        )
    }

    pub(crate) fn take_lock<C>(
        &self,
        key: &C::Key,
        subject: &Id,
        detail: &str,
        cause: &Cause,
        with: impl FnOnce(&mut Batch) -> Result<()>,
    ) -> Result<Lock>
    where
        C: crate::columns::Column<Value = Id>,
    {
        let guard = self.lock();
        match self.store().get_in::<C>(key)? {
            Some(held) if held == *subject => {
                // The lock may be a concurrent writer's batch not flushed
                // yet; the vote it allows is sent only once it is durable.
                drop(guard);
                self.sync()?;
                Ok(Lock::Same)
            }
            Some(held) => Ok(Lock::Other(held)),
            None => {
                let mut batch = Batch::new();
                batch.put_in::<C>(key, subject)?;
                with(&mut batch)?;
                self.commit(guard, batch, Action::VoteLocked, detail, cause)?;
                Ok(Lock::Taken)
            }
        }
    }

    /// Takes away what this coordinator kept to vote on the settlements
    /// of leases it applied the final settlement of before `before`: the
    /// lock of each settlement sequence it voted at, the window counts and
    /// refuted disputes behind each of those votes, and the lease's last
    /// settled attestation. A closed lease takes no further vote
    /// (`lease_closed`), so none of these is read again; the journal, the
    /// certificates, the applied marks, the lease's book and its dispute
    /// cases stay. At most `limit` leases a pass, oldest first, in one
    /// write with its audit record. The keys are read without the
    /// writers' lock, so votes and certificates go on being applied
    /// meanwhile: no vote writes them for a lease closed a grace ago.
    pub fn compact_closed_leases(
        &self,
        before: UnixMillis,
        limit: usize,
        cause: &Cause,
    ) -> Result<ClosedCompaction> {
        let mut batch = Batch::new();
        let mut done = ClosedCompaction::default();
        for row in self.store().rows::<ClosedLeases>(Direction::Forward) {
            let ((closed_at, lease), _) = row?;
            if closed_at >= before {
                break;
            }
            if done.leases as usize >= limit {
                done.more = true;
                break;
            }
            for lock in self
                .store()
                .rows_with::<SettlementLocks, _>(&lease, Direction::Forward)
            {
                let ((_, seq), subject) = lock?;
                batch.delete_in::<SettlementLocks>(&(lease, seq));
                done.keys += 1;
                if self.store().get_in::<VoteEvidence>(&subject)?.is_some() {
                    batch.delete_in::<VoteEvidence>(&subject);
                    done.keys += 1;
                }
                if self.store().get_in::<RefutedDisputes>(&subject)?.is_some() {
                    batch.delete_in::<RefutedDisputes>(&subject);
                    done.keys += 1;
                }
            }
            if self.store().get_in::<SettlementHeads>(&lease)?.is_some() {
                batch.delete_in::<SettlementHeads>(&lease);
                done.keys += 1;
            }
            batch.delete_in::<ClosedLeases>(&(closed_at, lease));
            done.leases += 1;
        }
        if done.leases > 0 {
            let guard = self.lock();
            self.commit(
                guard,
                batch,
                Action::ClosedLeasesCompacted,
                &format!(
                    "vote locks and evidence of {} leases finally settled before {} taken away: {} keys",
                    done.leases, before.0, done.keys
                ),
                cause,
            )?;
        }
        Ok(done)
    }

    /// Stores a verified certificate's bytes and holds it pending, unless
    /// it is already applied or stored. Returns true if it is new here.
    pub fn hold_pending(
        &self,
        kind: CertificateKind,
        subject: &Id,
        bytes: Vec<u8>,
        reason: &str,
        cause: &Cause,
    ) -> Result<bool> {
        let guard = self.lock();
        if self.is_applied(subject)?
            || self
                .store()
                .get_in::<PendingCertificates>(&(kind, *subject))?
                .is_some()
        {
            return Ok(false);
        }
        let mut batch = Batch::new();
        batch.put_in::<Certificates>(&(kind, *subject), &StoredMessage(bytes))?;
        batch.put_in::<PendingCertificates>(&(kind, *subject), &PendingSince(cause.at))?;
        self.commit(
            guard,
            batch,
            Action::CertificatePending,
            &format!("{kind:?} {subject} held: {reason}"),
            cause,
        )?;
        Ok(true)
    }

    /// The certificates held pending, oldest kind first, with their bytes.
    pub fn pending_certificates(&self) -> Result<Vec<(CertificateKind, Id, Vec<u8>)>> {
        let mut out = Vec::new();
        for row in self.store().rows::<PendingCertificates>(Direction::Forward) {
            let ((kind, subject), _) = row?;
            if let Some(bytes) = self.store().get_in::<Certificates>(&(kind, subject))? {
                out.push((kind, subject, bytes.0));
            }
        }
        Ok(out)
    }

    /// Applies a verified debit certificate (escrow order or withdrawal):
    /// the rules of section 5.4. `bytes` are the certificate's canonical
    /// bytes, kept as the receipt.
    pub fn apply_debit(
        &self,
        kind: CertificateKind,
        debit: &Debit,
        bytes: Vec<u8>,
        cause: &Cause,
    ) -> Result<Applied> {
        let guard = self.lock();
        if self.is_applied(&debit.subject)? {
            return Ok(Applied::AlreadyApplied);
        }
        let next = self.next_debit_seq(&debit.account)?;
        if debit.seq > next {
            drop(guard);
            let reason = format!(
                "debit {} of {} waits for debits {next}..{} of the account",
                debit.seq,
                debit.account,
                debit.seq - 1
            );
            self.hold_pending(kind, &debit.subject, bytes, &reason, cause)?;
            return Ok(Applied::Pending(reason));
        }
        if debit.seq < next {
            let other = self.applied_debit(&debit.account, debit.seq)?;
            return Ok(Applied::Conflict {
                code: "conflicting_certificate",
                detail: format!(
                    "{} seq {} already applied for {}",
                    debit.account,
                    debit.seq,
                    other.map_or_else(|| "another debit".to_string(), |id| id.to_string())
                ),
            });
        }
        // A top-up of a funded lease (section 5.5) adds to its escrow; one
        // that arrives after the lease's final settlement moves nothing,
        // which is what the final settlement would have refunded had the
        // top-up come first (it refunds all the escrow holds).
        let funded = match debit.to {
            DebitTarget::Escrow { lease, .. } => self.store().get_in::<LeaseBooks>(&lease)?,
            DebitTarget::External { .. } => None,
        };
        if funded.as_ref().is_some_and(|book| book.closed) {
            let new_next = debit
                .seq
                .checked_add(1)
                .ok_or(Error::Overflow("a debit sequence"))?;
            let mut batch = Batch::new();
            batch.put_in::<DebitSeqs>(&debit.account, &new_next)?;
            batch.put_in::<DebitsApplied>(&(debit.account, debit.seq), &debit.subject)?;
            forget_earlier_debit_lock(&mut batch, debit);
            self.mark_applied_in(&mut batch, kind, &debit.subject, bytes, cause.at)?;
            self.commit(
                guard,
                batch,
                Action::EscrowLocked,
                &format!(
                    "{kind:?} certificate {}: {} seq {} tops up a closed lease: nothing moves",
                    debit.subject, debit.account, debit.seq
                ),
                cause,
            )?;
            return Ok(Applied::Applied);
        }
        let balance = self.balance(&Account::User(debit.account))?;
        if balance < debit.amount {
            drop(guard);
            let reason = format!(
                "{} holds {balance}, the debit takes {}: waiting for its credits",
                debit.account, debit.amount
            );
            self.hold_pending(kind, &debit.subject, bytes, &reason, cause)?;
            return Ok(Applied::Pending(reason));
        }

        let (movement, to, action) = match debit.to {
            DebitTarget::Escrow { lease, .. } => (
                Movement::EscrowLock,
                Account::Escrow(lease),
                Action::EscrowLocked,
            ),
            DebitTarget::External { .. } => {
                (Movement::Withdrawal, Account::External, Action::Withdrawal)
            }
        };
        let entry = JournalEntry::transfer(
            debit.subject,
            movement,
            Account::User(debit.account),
            to,
            debit.amount,
            cause.at,
            debit.subject,
        )?;
        let mut posting = Posting::new(self.store())?;
        posting.post(&entry)?;
        let mut batch = posting.finish()?;
        if let DebitTarget::External { destination } = debit.to {
            batch.put_in::<KnownDestinations>(&(debit.account, destination), &debit.subject)?;
        }
        if let (DebitTarget::Escrow { lease, .. }, Some(mut book)) = (debit.to, funded) {
            // A closed book is not topped up (refused above).
            book.amount = add(book.amount, debit.amount, "an escrow topped up")?;
            crate::books::put_lease_book(&mut batch, &lease, &book, Some(book.closed))?;
        } else if let DebitTarget::Escrow { lease, supplier } = debit.to {
            crate::books::put_lease_book(
                &mut batch,
                &lease,
                &LeaseBook {
                    order: debit.subject,
                    customer: debit.account,
                    supplier,
                    // The price is in the agreement; certified settlements
                    // state their amounts, so the book does not need it.
                    price_per_gpu_hour: Credits::ZERO,
                    amount: debit.amount,
                    paid: Credits::ZERO,
                    next_settlement_seq: 0,
                    next_window: 0,
                    metered_windows: 0,
                    unsettled_gpu_ms: 0,
                    closed: false,
                },
                None,
            )?;
        }
        let new_next = debit
            .seq
            .checked_add(1)
            .ok_or(Error::Overflow("a debit sequence"))?;
        batch.put_in::<DebitSeqs>(&debit.account, &new_next)?;
        batch.put_in::<DebitsApplied>(&(debit.account, debit.seq), &debit.subject)?;
        forget_earlier_debit_lock(&mut batch, debit);
        self.mark_applied_in(&mut batch, kind, &debit.subject, bytes, cause.at)?;
        self.commit(
            guard,
            batch,
            action,
            &format!(
                "{kind:?} certificate {}: {} seq {} pays {}",
                debit.subject, debit.account, debit.seq, debit.amount
            ),
            cause,
        )?;
        Ok(Applied::Applied)
    }

    /// Applies a verified escrow certificate (section 5.4).
    pub fn apply_escrow_certificate(
        &self,
        certificate: &EscrowCertificate,
        cause: &Cause,
    ) -> Result<Applied> {
        self.apply_debit(
            CertificateKind::Escrow,
            &Debit::of_escrow(certificate)?,
            certificate.to_bytes()?,
            cause,
        )
    }

    /// Applies a verified withdrawal certificate (section 4.1).
    pub fn apply_withdrawal_certificate(
        &self,
        certificate: &rigmesh_protocol::WithdrawalCertificate,
        cause: &Cause,
    ) -> Result<Applied> {
        let w = &certificate.message.body;
        self.apply_debit(
            CertificateKind::Withdrawal,
            &Debit {
                subject: certificate.subject()?,
                account: w.account,
                seq: w.seq,
                amount: w.amount,
                to: DebitTarget::External {
                    destination: crate::review::destination_key(&w.destination),
                },
            },
            certificate.to_bytes()?,
            cause,
        )
    }

    /// Applies a verified settlement certificate (section 8.4): the stated
    /// amounts move out of the escrow if they fit it.
    pub fn apply_settlement_certificate(
        &self,
        certificate: &SettlementCertificate,
        cause: &Cause,
    ) -> Result<Applied> {
        self.apply_settlement(
            Settlement::of(certificate)?,
            CertificateKind::Settlement,
            certificate.to_bytes()?,
            cause,
        )
    }

    /// Applies a verified escrow release certificate (section 8.5): the
    /// lease's final settlement, as the customer asked for it.
    pub fn apply_release_certificate(
        &self,
        certificate: &ReleaseCertificate,
        cause: &Cause,
    ) -> Result<Applied> {
        self.apply_settlement(
            Settlement::of_release(certificate)?,
            CertificateKind::Release,
            certificate.to_bytes()?,
            cause,
        )
    }

    fn apply_settlement(
        &self,
        s: Settlement,
        kind: CertificateKind,
        bytes: Vec<u8>,
        cause: &Cause,
    ) -> Result<Applied> {
        let guard = self.lock();
        if self.is_applied(&s.subject)? {
            return Ok(Applied::AlreadyApplied);
        }
        let Some(mut book) = self.store().get_in::<LeaseBooks>(&s.lease)? else {
            drop(guard);
            let reason = format!("the escrow of lease {} is not applied here", s.lease);
            self.hold_pending(kind, &s.subject, bytes, &reason, cause)?;
            return Ok(Applied::Pending(reason));
        };
        if book.closed || s.settlement_seq < book.next_settlement_seq {
            return Ok(Applied::Conflict {
                code: "conflicting_certificate",
                detail: format!(
                    "lease {} settlement {} conflicts with what is applied (next {}, closed {})",
                    s.lease, s.settlement_seq, book.next_settlement_seq, book.closed
                ),
            });
        }
        if s.settlement_seq > book.next_settlement_seq {
            drop(guard);
            let reason = format!(
                "lease {} settlement {} waits for settlement {}",
                s.lease, s.settlement_seq, book.next_settlement_seq
            );
            self.hold_pending(kind, &s.subject, bytes, &reason, cause)?;
            return Ok(Applied::Pending(reason));
        }
        let paid_now = add(s.supplier_amount, s.fee, "a settlement's payout")?;
        let taken = add(paid_now, s.held, "a settlement's payout and hold")?;
        let total = add(taken, s.refund, "a settlement's total")?;
        let available = book.available()?;
        // A final settlement refunds all the escrow still holds but what it
        // holds for review: more than it states when a top-up was applied
        // here after it was voted on.
        let fits = total <= available;
        let refund = if s.final_settlement {
            available
                .checked_sub(taken)
                .ok_or(Error::Overflow("a final refund"))?
        } else {
            s.refund
        };
        if !fits
            || book.order != s.escrow
            || book.customer != s.customer
            || book.supplier != s.supplier
        {
            return Ok(Applied::Conflict {
                code: "over_escrow",
                detail: format!(
                    "lease {} settlement {} moves {total} of an escrow holding {available} \
                     (escrow {} vs {}, final {})",
                    s.lease, s.settlement_seq, book.order, s.escrow, s.final_settlement
                ),
            });
        }

        let posting = crate::books::settlement_posting(
            self.store(),
            &s.lease,
            &s.subject,
            &crate::billing::Payout {
                billable_gpu_ms: s.billable_gpu_ms,
                gross: paid_now,
                paid_now,
                fee: s.fee,
                supplier: s.supplier_amount,
                refund,
                held: s.held,
            },
            (s.supplier, s.customer),
            cause.at,
            s.subject,
        )?;
        let mut batch = posting.finish()?;
        // What is held leaves the escrow as what is paid does: the lease's
        // remainder never counts it again.
        book.paid = add(book.paid, taken, "an escrow's paid total")?;
        if !s.held.is_zero() {
            crate::disputes::put_dispute_case(
                &mut batch,
                &(s.lease, s.settlement_seq),
                &DisputeCase {
                    request: s.subject,
                    supplier: s.supplier,
                    customer: s.customer,
                    held: s.held,
                    first_window: s.first_window,
                    last_window: s.last_window,
                    opened_at: cause.at,
                    resolution: None,
                },
            )?;
        }
        book.next_settlement_seq = s
            .settlement_seq
            .checked_add(1)
            .ok_or(Error::Overflow("the settlement sequence"))?;
        if s.covers_windows {
            book.next_window = s
                .last_window
                .checked_add(1)
                .ok_or(Error::Overflow("the window sequence"))?;
            book.metered_windows = book.next_window;
            batch.put_in::<SettlementHeads>(&s.lease, &s.attestation_head)?;
        }
        let was_closed = book.closed;
        book.closed = s.final_settlement;
        crate::books::put_lease_book(&mut batch, &s.lease, &book, Some(was_closed))?;
        if s.final_settlement && !was_closed {
            batch.put_in::<ClosedLeases>(&(cause.at, s.lease), &s.settlement_seq)?;
        }
        let payout = crate::billing::Payout {
            billable_gpu_ms: s.billable_gpu_ms,
            gross: paid_now,
            paid_now,
            fee: s.fee,
            supplier: s.supplier_amount,
            refund,
            held: s.held,
        };
        self.add_rollups(&mut batch, &book, &payout, cause.at)?;
        // Disputes a rule decided against the customer when this
        // coordinator voted.
        let refuted = self
            .store()
            .get_in::<RefutedDisputes>(&s.subject)?
            .unwrap_or(0);
        self.add_dispute_outcome(
            &mut batch,
            (s.customer, Side::Customer),
            (s.supplier, Side::Supplier),
            refuted,
            cause.at,
        )?;
        let counts = match self.vote_evidence(&s.subject)? {
            Some(counts) => counts,
            // Not voted for here: the certificate's own numbers.
            None => {
                let windows = if s.covers_windows {
                    s.last_window
                        .saturating_sub(s.first_window)
                        .saturating_add(1)
                } else {
                    0
                };
                WindowCounts {
                    windows,
                    acked: windows,
                    possible_gpu_ms: s.billable_gpu_ms,
                    attested_gpu_ms: s.billable_gpu_ms,
                    ..WindowCounts::default()
                }
            }
        };
        self.add_settlement_evidence(
            &mut batch,
            [(s.supplier, Side::Supplier), (s.customer, Side::Customer)],
            &counts,
            s.billable_gpu_ms,
            s.final_settlement,
            cause.at,
        )?;
        self.mark_applied_in(&mut batch, kind, &s.subject, bytes, cause.at)?;
        self.commit(guard,
            batch,
            Action::Settled,
            &format!(
                "settlement certificate {}: lease {} settlement {} windows ..={}, supplier {}, fee {}, refund {}{}",
                s.subject,
                s.lease,
                s.settlement_seq,
                s.last_window,
                s.supplier_amount,
                s.fee,
                refund,
                if s.final_settlement { ", final" } else { "" }
            ),
            cause,
        )?;
        Ok(Applied::Applied)
    }

    /// Applies a deposit whose signer the caller has checked: `amount` from
    /// outside into `account`, at most once per `subject` and at most one
    /// deposit per `reference` (its [`crate::reference_key`]). Drops the
    /// deposit from those held for review in the same batch.
    pub fn apply_deposit(
        &self,
        subject: &Id,
        account: &PublicKey,
        amount: Credits,
        reference: &Id,
        bytes: Vec<u8>,
        cause: &Cause,
    ) -> Result<Applied> {
        let guard = self.lock();
        if self.is_applied(subject)? {
            return Ok(Applied::AlreadyApplied);
        }
        if let Some(other) = self.store().get_in::<DepositReferences>(reference)? {
            if other != *subject {
                return Ok(Applied::Conflict {
                    code: "reference_used",
                    detail: format!("deposit {other} already uses this admin's reference"),
                });
            }
        }
        let entry = JournalEntry::transfer(
            *subject,
            Movement::Deposit,
            Account::External,
            Account::User(*account),
            amount,
            cause.at,
            *subject,
        )?;
        let mut posting = Posting::new(self.store())?;
        posting.post(&entry)?;
        let mut batch = posting.finish()?;
        batch.put_in::<DepositReferences>(reference, subject)?;
        batch.delete_in::<Held>(&(CertificateKind::Deposit, *subject));
        self.mark_applied_in(
            &mut batch,
            CertificateKind::Deposit,
            subject,
            bytes,
            cause.at,
        )?;
        self.commit(
            guard,
            batch,
            Action::Deposit,
            &format!("deposit {subject}: {amount} to {account}"),
            cause,
        )?;
        Ok(Applied::Applied)
    }

    pub(crate) fn mark_applied_in(
        &self,
        batch: &mut Batch,
        kind: CertificateKind,
        subject: &Id,
        bytes: Vec<u8>,
        at: UnixMillis,
    ) -> Result<()> {
        batch.put_in::<Certificates>(&(kind, *subject), &StoredMessage(bytes))?;
        batch.delete_in::<PendingCertificates>(&(kind, *subject));
        batch.put_in::<AppliedSubjects>(
            subject,
            &AppliedRecord {
                kind: kind.tag(),
                at,
            },
        )?;
        Ok(())
    }

    /// Applied certificates and deposits of `kind`, in subject order, with
    /// their canonical bytes: the receipts, and what catch-up sync serves.
    pub fn applied_certificates(
        &self,
        kind: CertificateKind,
        after: Option<Id>,
        limit: usize,
    ) -> Result<Vec<(Id, Vec<u8>)>> {
        use std::ops::Bound;
        let start = (kind, after.unwrap_or(Id::ZERO));
        let end_kind = (kind, Id([0xff; 32]));
        let mut out = Vec::new();
        let lower = if after.is_some() {
            Bound::Excluded(&start)
        } else {
            Bound::Included(&start)
        };
        for row in self.store().rows_in::<Certificates>(
            lower,
            Bound::Included(&end_kind),
            Direction::Forward,
        ) {
            if out.len() >= limit.min(crate::MAX_PAGE) {
                break;
            }
            let ((_, subject), bytes) = row?;
            if self.is_applied(&subject)? {
                out.push((subject, bytes.0));
            }
        }
        Ok(out)
    }
}
