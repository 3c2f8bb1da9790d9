//! [`Store`] over sled 0.34: one sled `Tree` per tree name, batches that
//! touch one tree go through `apply_batch`, batches across trees through a
//! sled transaction (atomic across trees, also across a crash).

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::{Batch, Direction, KeyRange, Op, RawEntry, RawScan, Store, TreeName};
use crate::error::{Error, Result};

/// The sled-backed store.
pub struct SledStore {
    db: sled::Db,
    // Opening a tree takes a lock inside sled and allocates; ledger writes
    // name the same dozen trees over and over, so handles are kept.
    trees: RwLock<HashMap<TreeName, sled::Tree>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

/// The most memory one database's page cache holds. The order book,
/// the hot read path, lives in memory of its own; what the stores serve
/// beyond it (a lease's evidence, a page of history) is small and local,
/// so a modest cache loses little and keeps a node holding 100,000 offers
/// well inside its memory budget (BENCHMARKS.md, the orderbook row).
pub const CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// How many times a held database lock is tried again, 50 ms apart.
const LOCK_TRIES: u32 = 20;

/// Opens (or creates) the sled database at `path`. A database another
/// handle of this process has just closed stays locked for a moment while
/// sled's flusher thread winds down, so a held lock is tried again for up
/// to a second before it is an error (a restart in place, a reopen in a
/// test); a database another process holds still fails after that second.
///
/// Its page cache is capped at [`CACHE_BYTES`]: sled's own default is a
/// gigabyte per database, and a node opens several.
pub fn open_db(path: &Path) -> sled::Result<sled::Db> {
    let mut tries = 0;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && tries < LOCK_TRIES =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl SledStore {
    /// Opens (or creates) a store at `path` with sled's defaults
    /// (background flush every 500 ms).
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self::open_in(open_db(path)?))
    }

    /// Uses an already open sled database, so the ledger can share one
    /// database (and one file lock) with other stores of the node.
    pub fn open_in(db: sled::Db) -> Self {
        SledStore {
            db,
            trees: RwLock::new(HashMap::new()),
        }
    }

    /// A store in a temporary directory, deleted on drop.
    pub fn temporary() -> Result<Self> {
        Ok(Self::open_in(sled::Config::new().temporary(true).open()?))
    }

    /// The sled database underneath.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    fn tree(&self, name: TreeName) -> Result<sled::Tree> {
        if let Some(tree) = self
            .trees
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
        {
            return Ok(tree.clone());
        }
        let tree = self.db.open_tree(name)?;
        self.trees
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name, tree.clone());
        Ok(tree)
    }

    fn write_across(&self, batch: &Batch, names: &[TreeName]) -> Result<()> {
        let trees = names
            .iter()
            .map(|name| self.tree(name))
            .collect::<Result<Vec<_>>>()?;
        let slots: Vec<usize> = batch
            .ops()
            .iter()
            .map(|op| names.iter().position(|n| *n == op.tree()).unwrap_or(0))
            .collect();
        // The one transaction of rigmesh's stores, inside the gate.
        #[allow(clippy::disallowed_methods)]
        let result = super::gate::exclusive(|| {
            trees.as_slice().transaction(|views| {
                for (op, slot) in batch.ops().iter().zip(&slots) {
                    let view = views.get(*slot).ok_or_else(|| {
                        ConflictableTransactionError::Abort(Error::corrupt(
                            "transaction",
                            "tree missing from the transaction",
                        ))
                    })?;
                    match op {
                        Op::Put { key, value, .. } => {
                            view.insert(key.as_slice(), value.as_slice())?;
                        }
                        Op::Delete { key, .. } => {
                            view.remove(key.as_slice())?;
                        }
                    }
                }
                Ok(())
            })
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }
}

fn owned(entry: sled::Result<(sled::IVec, sled::IVec)>) -> Result<RawEntry> {
    let (key, value) = entry?;
    Ok((key.to_vec(), value.to_vec()))
}

impl Store for SledStore {
    fn get(&self, tree: TreeName, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree(tree)?.get(key)?.map(|v| v.to_vec()))
    }

    fn put(&self, tree: TreeName, key: &[u8], value: &[u8]) -> Result<()> {
        self.tree(tree)?.insert(key, value)?;
        Ok(())
    }

    fn delete(&self, tree: TreeName, key: &[u8]) -> Result<()> {
        self.tree(tree)?.remove(key)?;
        Ok(())
    }

    fn write(&self, batch: &Batch) -> Result<()> {
        let names = batch.trees();
        match names.as_slice() {
            [] => Ok(()),
            [only] => {
                let mut write = sled::Batch::default();
                for op in batch.ops() {
                    match op {
                        Op::Put { key, value, .. } => {
                            write.insert(key.as_slice(), value.as_slice())
                        }
                        Op::Delete { key, .. } => write.remove(key.as_slice()),
                    }
                }
                super::gate::apply_batch(&self.tree(only)?, write)?;
                Ok(())
            }
            _ => self.write_across(batch, &names),
        }
    }

    fn scan(&self, tree: TreeName, range: KeyRange, direction: Direction) -> RawScan<'_> {
        let tree = match self.tree(tree) {
            Ok(tree) => tree,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        if range.is_empty() {
            return Box::new(std::iter::empty());
        }
        let iter = tree.range((range.start, range.end));
        match direction {
            Direction::Forward => Box::new(iter.map(owned)),
            Direction::Reverse => Box::new(iter.rev().map(owned)),
        }
    }

    fn flush(&self) -> Result<()> {
        super::gate::flush(&self.db)?;
        Ok(())
    }

    fn is_empty(&self) -> Result<bool> {
        for name in self.db.tree_names() {
            if !self.db.open_tree(name)?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
