//! Orders sled's batches and flushes so that a flush does not stall every
//! read of the process.
//!
//! sled 0.34 guards every database of a process with one process-wide
//! reader-writer lock once any batch or transaction has run there: a batch
//! or a transaction takes it exclusively for as long as it applies; a read,
//! a single insert and a flush take it shared, the flush for the whole time
//! it waits on the disk. The lock lets no reader in while a writer waits.
//! So a batch that comes while a flush waits on the disk blocks there, and
//! every read of every store of the process (the market store, the books,
//! the review store, each sled database a node opens) blocks behind it
//! until the disk answers and the batch is applied. A coordinator flushes
//! before every answer, so its reads spent much of their time waiting, and
//! threads spinning for the lock.
//!
//! This gate takes the same two roles outside sled: batches and
//! transactions hold it exclusively, flushes shared. A batch then waits
//! for a flush here, holding nothing of sled's, and reads go on; it enters
//! sled's lock only when no flush is under way. What a batch waits for is
//! unchanged (sled made it wait for the flush already), and a flush still
//! waits for a batch being applied, as before.
//!
//! Every batch, transaction and flush rigmesh makes on its sled databases
//! goes through [`exclusive`] or [`flushing`] (a clippy rule refuses the
//! direct calls). Neither is taken again inside the other, and no lock of
//! rigmesh's is taken under either. sled's own background flush (every
//! 500 ms) and the flush of a database being closed do not go through
//! the gate; a batch can still meet those inside sled, as before.

// parking_lot's lock is task-fair, as the gate needs: a waiting batch
// keeps new flushes out, so a steady stream of flushes cannot starve it.
static GATE: parking_lot::RwLock<()> = parking_lot::const_rwlock(());

/// Runs `write`, an atomic sled batch or transaction, while no flush of
/// this process's sled databases is under way.
pub fn exclusive<T>(write: impl FnOnce() -> T) -> T {
    let _held = GATE.write();
    write()
}

/// Runs `flush`, a sled flush, beside other flushes and reads but not
/// while a batch or transaction is applied or waiting.
pub fn flushing<T>(flush: impl FnOnce() -> T) -> T {
    let _held = GATE.read();
    flush()
}

/// Applies `batch` to `tree` atomically (sled's `apply_batch`), through
/// the gate.
#[allow(clippy::disallowed_methods)] // the one place a batch enters sled
pub fn apply_batch(tree: &sled::Tree, batch: sled::Batch) -> sled::Result<()> {
    exclusive(|| tree.apply_batch(batch))
}

/// Makes everything written to `db` durable (sled's `flush`), through the
/// gate.
#[allow(clippy::disallowed_methods)] // the one place a flush enters sled
pub fn flush(db: &sled::Db) -> sled::Result<usize> {
    flushing(|| db.flush())
}

/// Keys of a batch per round of the epoch collector after it: a round
/// frees at most 512 of what writes left behind (8 bags of 64).
const KEYS_PER_COLLECT: usize = 64;

/// Frees what a batch of about `keys` keys just left behind in sled.
///
/// sled 0.34 replaces a page's in-memory node by a changed copy on every
/// insert and frees the old one through crossbeam's epoch collector,
/// which frees at most 512 objects each time a thread pins it, once in
/// 128 pins. A batch pins once for all its keys and leaves several
/// objects per key, so a process that mostly writes in batches (a node's
/// ingest, once most of its reads are answered without sled) frees far
/// less than it leaves and its memory grows: writing 100,000 offers in
/// batches of 5,000 held 1.7 GB. Called after such a batch, this runs the
/// collector enough rounds to keep up.
pub fn reclaim(keys: usize) {
    for _ in 0..keys.div_ceil(KEYS_PER_COLLECT).saturating_add(1) {
        crossbeam_epoch::pin().flush();
    }
}
