//! [`Store`] in memory: a map of ordered maps behind one lock. A batch is
//! applied under the write lock, so readers see all of it or none. Used by
//! tests and by nodes that keep nothing across restarts.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{Batch, Direction, KeyRange, Op, RawEntry, RawScan, Store, TreeName};
use crate::error::Result;

type Trees = BTreeMap<TreeName, BTreeMap<Vec<u8>, Vec<u8>>>;

/// Entries a scan copies out per lock, so a long scan never holds the lock
/// for long and never copies a whole tree at once.
const SCAN_CHUNK: usize = 256;

/// The in-memory store. Clones share the same data.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    trees: Arc<RwLock<Trees>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    // No code path panics while holding the lock, so a poisoned lock still
    // guards consistent data.
    fn read(&self) -> RwLockReadGuard<'_, Trees> {
        self.trees.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, Trees> {
        self.trees.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn get(&self, tree: TreeName, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.read().get(tree).and_then(|t| t.get(key)).cloned())
    }

    fn put(&self, tree: TreeName, key: &[u8], value: &[u8]) -> Result<()> {
        self.write_lock()
            .entry(tree)
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&self, tree: TreeName, key: &[u8]) -> Result<()> {
        if let Some(t) = self.write_lock().get_mut(tree) {
            t.remove(key);
        }
        Ok(())
    }

    fn write(&self, batch: &Batch) -> Result<()> {
        let mut trees = self.write_lock();
        for op in batch.ops() {
            match op {
                Op::Put { tree, key, value } => {
                    trees
                        .entry(tree)
                        .or_default()
                        .insert(key.clone(), value.clone());
                }
                Op::Delete { tree, key } => {
                    if let Some(t) = trees.get_mut(tree) {
                        t.remove(key);
                    }
                }
            }
        }
        Ok(())
    }

    fn scan(&self, tree: TreeName, range: KeyRange, direction: Direction) -> RawScan<'_> {
        Box::new(MemoryScan {
            store: self,
            tree,
            range,
            direction,
            buffer: VecDeque::new(),
            done: false,
        })
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn is_empty(&self) -> Result<bool> {
        Ok(self.read().values().all(BTreeMap::is_empty))
    }
}

/// A scan that copies a chunk at a time and narrows its range past each
/// chunk, so writes between chunks are seen like sled's iterators see them.
struct MemoryScan<'a> {
    store: &'a MemoryStore,
    tree: TreeName,
    range: KeyRange,
    direction: Direction,
    buffer: VecDeque<RawEntry>,
    done: bool,
}

impl MemoryScan<'_> {
    fn refill(&mut self) {
        if self.range.is_empty() {
            self.done = true;
            return;
        }
        let trees = self.store.read();
        let Some(tree) = trees.get(self.tree) else {
            self.done = true;
            return;
        };
        let bounds = (self.range.start.clone(), self.range.end.clone());
        let chunk: Vec<RawEntry> = match self.direction {
            Direction::Forward => tree
                .range::<Vec<u8>, _>(bounds)
                .take(SCAN_CHUNK)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            Direction::Reverse => tree
                .range::<Vec<u8>, _>(bounds)
                .rev()
                .take(SCAN_CHUNK)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        drop(trees);
        if chunk.len() < SCAN_CHUNK {
            self.done = true;
        }
        if let Some((last, _)) = chunk.last() {
            match self.direction {
                Direction::Forward => self.range.start = Bound::Excluded(last.clone()),
                Direction::Reverse => self.range.end = Bound::Excluded(last.clone()),
            }
        }
        self.buffer.extend(chunk);
    }
}

impl Iterator for MemoryScan<'_> {
    type Item = Result<RawEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.is_empty() && !self.done {
            self.refill();
        }
        self.buffer.pop_front().map(Ok)
    }
}
