//! The [`Ledger`]: typed, audited, atomic access to everything a node
//! stores, over any [`Store`]. Each public write method is one atomic batch
//! that carries its own audit record; writes are serialised by one lock so
//! the journal and the audit chain have a single order.
//!
//! # Durability
//!
//! With [`Durability::Flushed`] (the default of [`Ledger::open`]) every
//! write method returns only after its batch is flushed to disk (sled's
//! `Db::flush`, which writes and fsyncs its log). So when a call returns
//! `Ok`, what it wrote (journal entries, balances, lease books, audit
//! record) survives a crash or `kill -9`; a crash during the call leaves all
//! of it or none of it, never a journal entry without its balances or an
//! action without its audit record. The crash test in
//! `tests/crash.rs` checks exactly this.
//!
//! With [`Durability::Buffered`] a write method returns once its batch is
//! applied (visible to readers, still atomic); sled writes it out in the
//! background (every 500 ms by default) and on [`Ledger::flush`]. A crash
//! may then lose the calls made since the last flush, each one whole.
//! Suitable for market data a node can fetch again; not for a coordinator's
//! books.
//!
//! Reads never take the write lock and see every completed write.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rigmesh_protocol::{Id, PublicKey, UnixMillis};

use crate::audit::{self, Action, AuditHead, AuditRecord, AuditReport, SealedAudit};
use crate::columns::{Audit, AuditHeads, Column, Slot, TypedStore};
use crate::error::Result;
use crate::keys::Key;
use crate::migrations::MIGRATIONS;
use crate::schema;
use crate::store::{Batch, Direction, KeyRange, MemoryStore, SledStore, Store};

/// Most rows one read call returns.
pub const MAX_PAGE: usize = 10_000;

/// When a write is on disk (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every write method flushes before it returns.
    #[default]
    Flushed,
    /// Writes are flushed in the background and by [`Ledger::flush`].
    Buffered,
}

/// Who caused a write, through which message, and when: what the audit
/// record of the write says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cause {
    /// The account or node key acting.
    pub who: PublicKey,
    /// Content id of the message behind the action (zero when none).
    pub message: Id,
    /// When.
    pub at: UnixMillis,
}

impl Cause {
    /// A cause.
    pub fn new(who: PublicKey, message: Id, at: UnixMillis) -> Self {
        Cause { who, message, at }
    }
}

/// The ledger.
pub struct Ledger<S: Store = SledStore> {
    store: S,
    durability: Durability,
    writer: Mutex<()>,
}

impl<S: Store> std::fmt::Debug for Ledger<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// Proof that the caller holds the write lock.
pub(crate) struct WriteLock<'a>(#[allow(dead_code)] MutexGuard<'a, ()>);

impl Ledger<SledStore> {
    /// Opens (or creates) a ledger at `path`, flushing every write.
    pub fn open(path: &Path) -> Result<Self> {
        Self::with_store(SledStore::open(path)?, Durability::Flushed)
    }

    /// Opens (or creates) a ledger at `path` with the given durability.
    pub fn open_with(path: &Path, durability: Durability) -> Result<Self> {
        Self::with_store(SledStore::open(path)?, durability)
    }
}

impl Ledger<MemoryStore> {
    /// A ledger in memory.
    pub fn in_memory() -> Result<Self> {
        Self::with_store(MemoryStore::new(), Durability::Flushed)
    }
}

impl<S: Store> Ledger<S> {
    /// A ledger over `store`: checks the schema version (refusing a newer
    /// one) and runs any migrations before anything else is read.
    pub fn with_store(store: S, durability: Durability) -> Result<Self> {
        schema::open_schema(&store, MIGRATIONS)?;
        Ok(Ledger {
            store,
            durability,
            writer: Mutex::new(()),
        })
    }

    /// The store underneath.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The durability of writes.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<()> {
        self.store.flush()
    }

    pub(crate) fn lock(&self) -> WriteLock<'_> {
        // Nothing panics while holding the lock, and the store is only
        // changed by whole batches, so a poisoned lock guards nothing broken.
        WriteLock(self.writer.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Appends the audit record for `action` to `batch`, writes the batch
    /// atomically and flushes it if the durability asks. Returns the
    /// audit sequence.
    pub(crate) fn commit(
        &self,
        _lock: &WriteLock<'_>,
        mut batch: Batch,
        action: Action,
        detail: &str,
        cause: &Cause,
    ) -> Result<u64> {
        let head = self.store.get_in::<AuditHeads>(&Slot)?.unwrap_or_default();
        let sealed = AuditRecord {
            seq: head.next_seq,
            at: cause.at,
            who: cause.who,
            action,
            subject: cause.message,
            detail: audit::bounded_detail(detail),
            prev: head.last,
        }
        .seal()?;
        let next = AuditHead {
            next_seq: head
                .next_seq
                .checked_add(1)
                .ok_or(crate::Error::Overflow("the audit sequence"))?,
            last: sealed.hash,
        };
        batch.put_in::<Audit>(&head.next_seq, &sealed)?;
        batch.put_in::<AuditHeads>(&Slot, &next)?;
        self.store.write(&batch)?;
        if self.durability == Durability::Flushed {
            self.store.flush()?;
        }
        Ok(head.next_seq)
    }

    /// Records that the node refused something (a vote, a certificate, a
    /// message): `what` was refused for `reason` (a reason code of the
    /// settlement spec). Changes nothing but the audit chain.
    pub fn record_refusal(&self, what: &str, reason: &str, cause: &Cause) -> Result<u64> {
        let lock = self.lock();
        self.commit(
            &lock,
            Batch::new(),
            Action::Refused,
            &format!("{what}: {reason}"),
            cause,
        )
    }

    /// Records that an API caller asked for an action (see
    /// [`Action::Requested`]); `detail` says who and what. Changes
    /// nothing but the audit chain.
    pub fn record_request(&self, detail: &str, cause: &Cause) -> Result<u64> {
        let lock = self.lock();
        self.commit(&lock, Batch::new(), Action::Requested, detail, cause)
    }

    /// Records who asked for an operator write through the API and what
    /// (`detail`: the token's id and name, the source address, the
    /// action), before it is carried out, so no such write happens
    /// without its record. Changes nothing but the audit chain.
    pub fn record_operator_request(&self, detail: &str, cause: &Cause) -> Result<u64> {
        let lock = self.lock();
        self.commit(&lock, Batch::new(), Action::OperatorRequest, detail, cause)
    }

    /// Audit records so far (the sequence the next one gets).
    pub fn audit_len(&self) -> Result<u64> {
        Ok(self
            .store
            .get_in::<AuditHeads>(&Slot)?
            .unwrap_or_default()
            .next_seq)
    }

    /// Up to `limit` (at most [`MAX_PAGE`]) audit records from `from_seq`.
    pub fn audit_records(&self, from_seq: u64, limit: usize) -> Result<Vec<SealedAudit>> {
        self.store
            .rows_in::<Audit>(
                std::ops::Bound::Included(&from_seq),
                std::ops::Bound::Unbounded,
                Direction::Forward,
            )
            .take(limit.min(MAX_PAGE))
            .map(|row| row.map(|(_, record)| record))
            .collect()
    }

    /// Walks the whole audit chain and reports the first broken link: a
    /// record that does not decode, is missing, was edited, does not link
    /// to the one before, or a chain that stops short of its recorded head.
    pub fn verify_audit(&self) -> Result<AuditReport> {
        let head = self.store.get_in::<AuditHeads>(&Slot)?.unwrap_or_default();
        let raw = self
            .store
            .scan(Audit::TREE, KeyRange::all(), Direction::Forward);
        let records = raw.map(|entry| {
            entry.map(|(key, value)| {
                (
                    u64::from_key(&key),
                    <SealedAudit as crate::codec::Record>::from_record(&value),
                )
            })
        });
        audit::verify_chain(records, head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_can_be_shared_between_tasks() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Ledger<SledStore>>();
        shareable::<Ledger<MemoryStore>>();
    }

    #[test]
    fn flushing_is_the_default() {
        let ledger = Ledger::in_memory().unwrap();
        assert_eq!(ledger.durability(), Durability::Flushed);
        assert_eq!(ledger.audit_len().unwrap(), 0);
    }
}
