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
//!
//! # Group commit
//!
//! The flush is what a flushed write waits for (an fsync, milliseconds),
//! while applying its batch takes microseconds. So a write applies its
//! batch under the write lock, releases the lock, and only then waits for
//! a flush that covers it: the first writer to find no flush running
//! flushes everything applied so far, and every writer whose batch was
//! applied before that flush began returns when it ends. Concurrent
//! writers therefore share one fsync instead of queueing for one each,
//! and each still returns only once its own batch is on disk. The writers
//! waiting are bounded by the caller's own concurrency (a coordinator
//! answers a bounded number of requests at once).
//!
//! A reader can see a batch applied and not yet flushed. Whoever answers
//! a stranger from what it read (a coordinator re-sending a vote it
//! already locked, or saying a certificate is applied) calls
//! [`Ledger::sync`] first, which returns once everything applied before
//! the call is on disk; it costs nothing when no flush is owed.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

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

/// One group flush, as reported to a [`FlushObserver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupFlush {
    /// Write batches this flush made durable.
    pub writes: u64,
    /// Writers that were waiting for a flush when this one began, besides
    /// the one that ran it.
    pub waiting: u64,
}

/// Called after every flush the group commit runs (see the module
/// documentation); a node hangs its metrics here.
pub type FlushObserver = Arc<dyn Fn(GroupFlush) + Send + Sync>;

/// Totals of the group commit since the ledger was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupCommitStats {
    /// Flushes run.
    pub flushes: u64,
    /// Write batches they made durable.
    pub writes: u64,
    /// Writers waiting for a flush right now.
    pub waiting: u64,
}

/// Where the group commit stands: write batches are numbered as they are
/// applied (under the write lock, so in the order the store holds them).
#[derive(Debug, Default)]
struct FlushState {
    /// The number of the last batch applied.
    applied: u64,
    /// Every batch up to this number is on disk.
    durable: u64,
    /// A writer is flushing now.
    flushing: bool,
    /// Writers waiting for a flush to end.
    waiting: u64,
}

#[derive(Default)]
struct GroupCommit {
    state: Mutex<FlushState>,
    done: Condvar,
    flushes: AtomicU64,
    writes: AtomicU64,
    observer: OnceLock<FlushObserver>,
}

impl GroupCommit {
    fn state(&self) -> MutexGuard<'_, FlushState> {
        // The state is a few counters changed whole; a panic elsewhere
        // cannot leave them half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The ledger.
pub struct Ledger<S: Store = SledStore> {
    store: S,
    durability: Durability,
    writer: Mutex<()>,
    group: GroupCommit,
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
            group: GroupCommit::default(),
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

    /// Returns once every write applied before the call is on disk
    /// (with [`Durability::Buffered`], at once). Call it before telling
    /// anyone something read from the ledger that must survive a crash:
    /// a write method waits for its own batch, but a reader may see a
    /// concurrent writer's batch before that batch is flushed.
    pub fn sync(&self) -> Result<()> {
        if self.durability != Durability::Flushed {
            return Ok(());
        }
        let applied = self.group.state().applied;
        self.durable(applied)
    }

    /// Makes write batch number `ticket` durable: waits for a flush that
    /// began after it was applied, or runs one (the group commit of the
    /// module documentation).
    fn durable(&self, ticket: u64) -> Result<()> {
        let mut state = self.group.state();
        loop {
            if state.durable >= ticket {
                return Ok(());
            }
            if state.flushing {
                state.waiting += 1;
                state = self
                    .group
                    .done
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                state.waiting -= 1;
                continue;
            }
            // This writer flushes for everyone: every batch numbered up to
            // `target` was written to the store before the flush starts.
            state.flushing = true;
            let target = state.applied;
            let waiting = state.waiting;
            drop(state);
            let flushed = self.store.flush();
            state = self.group.state();
            state.flushing = false;
            let writes = target.saturating_sub(state.durable);
            if flushed.is_ok() {
                state.durable = state.durable.max(target);
            }
            // Woken either way: after a failed flush the next waiter tries
            // its own, and each caller hears only its own flush's error.
            self.group.done.notify_all();
            flushed?;
            drop(state);
            self.group.flushes.fetch_add(1, Ordering::Relaxed);
            self.group.writes.fetch_add(writes, Ordering::Relaxed);
            if let Some(observe) = self.group.observer.get() {
                observe(GroupFlush { writes, waiting });
            }
            state = self.group.state();
        }
    }

    /// Calls `observer` after every group flush from now on (the first
    /// observer set stays; returns false if one was set already).
    pub fn observe_flushes(&self, observer: FlushObserver) -> bool {
        self.group.observer.set(observer).is_ok()
    }

    /// Totals of the group commit so far.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            flushes: self.group.flushes.load(Ordering::Relaxed),
            writes: self.group.writes.load(Ordering::Relaxed),
            waiting: self.group.state().waiting,
        }
    }

    /// Appends the audit record for `action` to `batch`, writes the batch
    /// atomically, releases the write lock and, if the durability asks,
    /// returns only once a flush covers the batch (shared with concurrent
    /// writers: see the module documentation). Returns the audit sequence.
    pub(crate) fn commit(
        &self,
        lock: WriteLock<'_>,
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
        if self.durability != Durability::Flushed {
            self.store.write(&batch)?;
            return Ok(head.next_seq);
        }
        // Applied and numbered under the group's state lock, so a reader
        // that saw this batch and then asks for a sync finds it counted.
        let ticket = {
            let mut state = self.group.state();
            self.store.write(&batch)?;
            state.applied += 1;
            state.applied
        };
        // The next writer may apply its batch while this one waits for
        // the disk: that overlap is what lets them share a flush.
        drop(lock);
        self.durable(ticket)?;
        Ok(head.next_seq)
    }

    /// Records that the node refused something (a vote, a certificate, a
    /// message): `what` was refused for `reason` (a reason code of the
    /// settlement spec). Changes nothing but the audit chain.
    pub fn record_refusal(&self, what: &str, reason: &str, cause: &Cause) -> Result<u64> {
        let lock = self.lock();
        self.commit(
            lock,
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
        self.commit(lock, Batch::new(), Action::Requested, detail, cause)
    }

    /// Records who asked for an operator write through the API and what
    /// (`detail`: the token's id and name, the source address, the
    /// action), before it is carried out, so no such write happens
    /// without its record. Changes nothing but the audit chain.
    pub fn record_operator_request(&self, detail: &str, cause: &Cause) -> Result<u64> {
        let lock = self.lock();
        self.commit(lock, Batch::new(), Action::OperatorRequest, detail, cause)
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
    ///
    /// Writers are kept out only at the two ends of the walk: the head is
    /// read under the writers' lock and the records before it (never
    /// changed once appended) are walked without it; then, under the lock
    /// again, the records appended meanwhile must link on from there to
    /// the head of that moment, with nothing past it.
    pub fn verify_audit(&self) -> Result<AuditReport> {
        Ok(self.verify_audit_from(AuditHead::default())?.0)
    }

    /// Walks the audit chain on from `from` (a point of the chain walked
    /// before) to its head, as [`Ledger::verify_audit`] walks it from its
    /// start, and says where the head stood: the records before `from`
    /// are not read.
    pub(crate) fn verify_audit_from(&self, from: AuditHead) -> Result<(AuditReport, AuditHead)> {
        let start = {
            let _writers = self.lock();
            self.store.get_in::<AuditHeads>(&Slot)?.unwrap_or_default()
        };
        let walked = audit::verify_chain(
            self.audit_rows(from.next_seq, Some(start.next_seq)),
            from,
            start,
        )?;
        if !walked.is_intact() {
            return Ok((walked, start));
        }
        let _writers = self.lock();
        let head = self.store.get_in::<AuditHeads>(&Slot)?.unwrap_or_default();
        let report = audit::verify_chain(self.audit_rows(start.next_seq, None), start, head)?;
        Ok((report, head))
    }

    /// The stored audit records from `from` (to `to`, excluded, when
    /// given), each key and record decoded on its own.
    pub(crate) fn audit_rows(
        &self,
        from: u64,
        to: Option<u64>,
    ) -> impl Iterator<Item = Result<(Result<u64>, Result<SealedAudit>)>> + '_ {
        let range = KeyRange {
            start: std::ops::Bound::Included(from.to_key()),
            end: to.map_or(std::ops::Bound::Unbounded, |to| {
                std::ops::Bound::Excluded(to.to_key())
            }),
        };
        self.store
            .scan(Audit::TREE, range, Direction::Forward)
            .map(|entry| {
                entry.map(|(key, value)| {
                    (
                        u64::from_key(&key),
                        <SealedAudit as crate::codec::Record>::from_record(&value),
                    )
                })
            })
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

    use crate::columns::Journal;
    use crate::store::{KeyRange, RawScan, TreeName};
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// A memory store whose first flush waits for the test to open its
    /// gate, and that remembers how many batches each flush covered.
    struct GatedStore {
        inner: MemoryStore,
        gate: Mutex<Option<mpsc::Receiver<()>>>,
        written: AtomicUsize,
        durable: AtomicUsize,
        flushes: AtomicUsize,
        fail_next: std::sync::atomic::AtomicBool,
    }

    impl Store for GatedStore {
        fn get(&self, tree: TreeName, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.inner.get(tree, key)
        }
        fn put(&self, tree: TreeName, key: &[u8], value: &[u8]) -> Result<()> {
            self.inner.put(tree, key, value)
        }
        fn delete(&self, tree: TreeName, key: &[u8]) -> Result<()> {
            self.inner.delete(tree, key)
        }
        fn write(&self, batch: &Batch) -> Result<()> {
            self.inner.write(batch)?;
            self.written.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn scan(&self, tree: TreeName, range: KeyRange, direction: Direction) -> RawScan<'_> {
            self.inner.scan(tree, range, direction)
        }
        fn flush(&self) -> Result<()> {
            let covers = self.written.load(Ordering::SeqCst);
            if let Some(gate) = self.gate.lock().unwrap().take() {
                gate.recv().unwrap();
            }
            if self.fail_next.swap(false, Ordering::SeqCst) {
                return Err(crate::Error::Corrupt { what: "the disk" });
            }
            self.flushes.fetch_add(1, Ordering::SeqCst);
            self.durable.fetch_max(covers, Ordering::SeqCst);
            Ok(())
        }
        fn is_empty(&self) -> Result<bool> {
            self.inner.is_empty()
        }
    }

    /// A memory store whose first scan of one tree from one thread, once
    /// armed, says it started and then waits for the test to open its
    /// gate: a walk of that tree is held mid-way.
    #[derive(Default)]
    struct ScanGatedStore {
        inner: MemoryStore,
        armed: Mutex<Option<ScanGate>>,
    }

    struct ScanGate {
        tree: TreeName,
        thread: std::thread::ThreadId,
        started: mpsc::SyncSender<()>,
        open: mpsc::Receiver<()>,
    }

    impl Store for ScanGatedStore {
        fn get(&self, tree: TreeName, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.inner.get(tree, key)
        }
        fn put(&self, tree: TreeName, key: &[u8], value: &[u8]) -> Result<()> {
            self.inner.put(tree, key, value)
        }
        fn delete(&self, tree: TreeName, key: &[u8]) -> Result<()> {
            self.inner.delete(tree, key)
        }
        fn write(&self, batch: &Batch) -> Result<()> {
            self.inner.write(batch)
        }
        fn scan(&self, tree: TreeName, range: KeyRange, direction: Direction) -> RawScan<'_> {
            let gate = {
                let mut armed = self.armed.lock().unwrap();
                match armed.as_ref() {
                    Some(g) if g.tree == tree && g.thread == std::thread::current().id() => {
                        armed.take()
                    }
                    _ => None,
                }
            };
            if let Some(gate) = gate {
                gate.started.send(()).unwrap();
                gate.open.recv().unwrap();
            }
            self.inner.scan(tree, range, direction)
        }
        fn flush(&self) -> Result<()> {
            self.inner.flush()
        }
        fn is_empty(&self) -> Result<bool> {
            self.inner.is_empty()
        }
    }

    /// A deposit of `units` to `who`, numbered `n`.
    fn deposit_of(ledger: &Ledger<ScanGatedStore>, who: u8, units: i64, n: u8) {
        let account = rigmesh_protocol::Keypair::from_seed([who; 32]).public();
        ledger
            .deposit(
                account,
                rigmesh_protocol::Credits::from_units(units),
                Id([n; 32]),
                &cause(n),
            )
            .unwrap();
    }

    #[test]
    fn the_books_and_the_audit_chain_check_without_holding_writers_up() {
        for tree in [Journal::TREE, Audit::TREE] {
            let ledger = Arc::new(
                Ledger::with_store(ScanGatedStore::default(), Durability::Buffered).unwrap(),
            );
            deposit_of(&ledger, 1, 5_000_000, 1);
            let (started_tx, started) = mpsc::sync_channel(1);
            let (open, gate) = mpsc::sync_channel(1);
            let checker = {
                let ledger = ledger.clone();
                std::thread::spawn(move || {
                    *ledger.store().armed.lock().unwrap() = Some(ScanGate {
                        tree,
                        thread: std::thread::current().id(),
                        started: started_tx,
                        open: gate,
                    });
                    // Each walk on its own, so the deposit falls in it.
                    if tree == Journal::TREE {
                        (Some(ledger.check_books()), None)
                    } else {
                        (None, Some(ledger.verify_audit()))
                    }
                })
            };
            started
                .recv_timeout(Duration::from_secs(10))
                .expect("the walk started");
            // The walk of `tree` is held mid-way: a deposit goes through.
            let (done_tx, done) = mpsc::sync_channel(1);
            let writer = {
                let ledger = ledger.clone();
                std::thread::spawn(move || {
                    deposit_of(&ledger, 2, 3_000_000, 2);
                    done_tx.send(()).unwrap();
                })
            };
            let written = done.recv_timeout(Duration::from_secs(10)).is_ok();
            open.send(()).unwrap();
            writer.join().unwrap();
            let (books, audit) = checker.join().unwrap();
            assert!(written, "a deposit waited for the walk of {tree}");
            // What was written mid-walk is in what was checked.
            if let Some(books) = books {
                let books = books.unwrap();
                assert_eq!(books.totals.users.units(), 8_000_000);
                assert_eq!(books.entries, ledger.journal_len().unwrap());
            }
            if let Some(audit) = audit {
                let audit = audit.unwrap();
                assert!(audit.is_intact(), "{audit:?}");
                assert_eq!(audit.verified, ledger.audit_len().unwrap());
            }
        }
    }

    fn gated() -> (Arc<Ledger<GatedStore>>, mpsc::SyncSender<()>) {
        let (open, gate) = mpsc::sync_channel(1);
        let store = GatedStore {
            inner: MemoryStore::new(),
            gate: Mutex::new(None),
            written: AtomicUsize::new(0),
            durable: AtomicUsize::new(0),
            flushes: AtomicUsize::new(0),
            fail_next: std::sync::atomic::AtomicBool::new(false),
        };
        let ledger = Ledger::with_store(store, Durability::Flushed).unwrap();
        // Opening wrote and flushed the schema: the gate is for what follows.
        ledger.store().written.store(0, Ordering::SeqCst);
        ledger.store().durable.store(0, Ordering::SeqCst);
        ledger.store().flushes.store(0, Ordering::SeqCst);
        *ledger.store().gate.lock().unwrap() = Some(gate);
        (Arc::new(ledger), open)
    }

    fn cause(n: u8) -> Cause {
        Cause::new(
            rigmesh_protocol::Keypair::from_seed([n; 32]).public(),
            Id::ZERO,
            UnixMillis(1),
        )
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn concurrent_writers_share_a_flush_and_return_only_after_it() {
        let (ledger, open) = gated();
        let returned = Arc::new(AtomicUsize::new(0));
        let write = |n: u8| {
            let (ledger, returned) = (ledger.clone(), returned.clone());
            std::thread::spawn(move || {
                ledger.record_request(&format!("writer {n}"), &cause(n))?;
                returned.fetch_add(1, Ordering::SeqCst);
                Ok::<_, crate::Error>(())
            })
        };
        // The first writer's flush is held at the gate...
        let first = write(1);
        wait_until("the first flush starts", || {
            ledger.group.state().flushing && ledger.store().written.load(Ordering::SeqCst) == 1
        });
        // ...while four more apply their batches and queue behind it, and
        // a reader asks for what it saw to be durable.
        let others: Vec<_> = (2..6).map(write).collect();
        let reader = {
            let ledger = ledger.clone();
            std::thread::spawn(move || ledger.sync())
        };
        wait_until("five wait for the flush", || {
            ledger.group_commit_stats().waiting == 5
        });
        assert_eq!(ledger.store().written.load(Ordering::SeqCst), 5);
        assert_eq!(
            returned.load(Ordering::SeqCst),
            0,
            "acknowledged before durable"
        );
        assert_eq!(ledger.store().durable.load(Ordering::SeqCst), 0);
        open.send(()).unwrap();
        first.join().unwrap().unwrap();
        for writer in others {
            writer.join().unwrap().unwrap();
        }
        reader.join().unwrap().unwrap();
        // One flush for the first batch, one for the four behind it.
        assert_eq!(ledger.store().flushes.load(Ordering::SeqCst), 2);
        assert_eq!(ledger.store().durable.load(Ordering::SeqCst), 5);
        let stats = ledger.group_commit_stats();
        assert_eq!((stats.flushes, stats.writes, stats.waiting), (2, 5, 0));
        assert_eq!(ledger.audit_len().unwrap(), 5);
        assert!(ledger.verify_audit().unwrap().is_intact());
        // Nothing is owed now: a sync flushes nothing.
        ledger.sync().unwrap();
        assert_eq!(ledger.store().flushes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_failed_flush_is_the_writers_error_and_the_next_flush_covers_it() {
        let (ledger, open) = gated();
        open.send(()).unwrap();
        ledger.store().fail_next.store(true, Ordering::SeqCst);
        assert!(ledger.record_request("lost?", &cause(1)).is_err());
        assert_eq!(ledger.store().durable.load(Ordering::SeqCst), 0);
        // The batch is applied but not known durable: a sync flushes it.
        ledger.sync().unwrap();
        assert_eq!(ledger.store().durable.load(Ordering::SeqCst), 1);
        ledger.record_request("next", &cause(2)).unwrap();
        assert_eq!(ledger.store().durable.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn flushing_is_the_default() {
        let ledger = Ledger::in_memory().unwrap();
        assert_eq!(ledger.durability(), Durability::Flushed);
        assert_eq!(ledger.audit_len().unwrap(), 0);
    }
}
