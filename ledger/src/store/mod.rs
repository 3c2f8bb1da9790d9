//! The storage seam: a small key-value [`Store`] trait with named trees,
//! atomic batches across trees and ordered scans, implemented over sled
//! ([`SledStore`]) and over memory ([`MemoryStore`]). Everything above this
//! module speaks typed columns ([`crate::columns`]); only column
//! definitions turn keys and values into bytes.

pub mod gate;
mod memory;
mod sled_store;

use std::ops::Bound;

pub use memory::MemoryStore;
pub use sled_store::{open_db, SledStore, CACHE_BYTES};

use crate::error::Result;

/// The name of a tree (sled's word for a column family).
pub type TreeName = &'static str;

/// A key and its value, as stored.
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// An ordered walk over part of a tree. It reads lazily, so a scan that
/// stops early costs only what it read.
pub type RawScan<'a> = Box<dyn Iterator<Item = Result<RawEntry>> + Send + 'a>;

/// One write of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value` in `tree`.
    Put {
        /// The tree.
        tree: TreeName,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key` from `tree` (nothing if absent).
    Delete {
        /// The tree.
        tree: TreeName,
        /// The key.
        key: Vec<u8>,
    },
}

impl Op {
    /// The tree the write goes to.
    pub fn tree(&self) -> TreeName {
        match self {
            Op::Put { tree, .. } | Op::Delete { tree, .. } => tree,
        }
    }
}

/// Writes that land together or not at all, applied in order (a later
/// write of the same key wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, tree: TreeName, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Put { tree, key, value });
    }

    /// Adds a delete.
    pub fn delete(&mut self, tree: TreeName, key: Vec<u8>) {
        self.ops.push(Op::Delete { tree, key });
    }

    /// The writes, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The distinct trees the batch touches, in first-use order.
    pub fn trees(&self) -> Vec<TreeName> {
        let mut trees: Vec<TreeName> = Vec::new();
        for op in &self.ops {
            if !trees.contains(&op.tree()) {
                trees.push(op.tree());
            }
        }
        trees
    }
}

/// A range of keys: `start` and `end` bounds in byte order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// Lower bound.
    pub start: Bound<Vec<u8>>,
    /// Upper bound.
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        KeyRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        KeyRange {
            start: Bound::Included(prefix.to_vec()),
            end: match prefix_successor(prefix) {
                Some(end) => Bound::Excluded(end),
                None => Bound::Unbounded,
            },
        }
    }

    /// True if `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let above = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        let below = match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        };
        above && below
    }

    /// True when no key can lie in the range (sled panics on such ranges,
    /// so they are answered before reaching it).
    pub fn is_empty(&self) -> bool {
        match (&self.start, &self.end) {
            (Bound::Unbounded, _) | (_, Bound::Unbounded) => false,
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Included(s), Bound::Excluded(e))
            | (Bound::Excluded(s), Bound::Included(e))
            | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        }
    }
}

/// The smallest key greater than every key with `prefix`, if one exists
/// (an all-`0xff` prefix has none).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Which way a scan walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Ascending key order.
    Forward,
    /// Descending key order.
    Reverse,
}

/// A key-value store with named trees.
///
/// Contract shared by every implementation (and checked by one test suite
/// run against each): trees spring into being on first use; a [`Batch`] is
/// atomic across trees, both for readers and across a crash; scans return
/// keys in byte order; [`Store::flush`] returns once everything written
/// before it is durable.
pub trait Store: Send + Sync {
    /// The value under `key`.
    fn get(&self, tree: TreeName, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Sets `key` to `value`.
    fn put(&self, tree: TreeName, key: &[u8], value: &[u8]) -> Result<()>;

    /// Removes `key`.
    fn delete(&self, tree: TreeName, key: &[u8]) -> Result<()>;

    /// Applies every write of `batch`, or none.
    fn write(&self, batch: &Batch) -> Result<()>;

    /// The entries of `tree` in `range`, in `direction`.
    fn scan(&self, tree: TreeName, range: KeyRange, direction: Direction) -> RawScan<'_>;

    /// Makes everything written so far durable.
    fn flush(&self) -> Result<()>;

    /// True when the store holds no entries in any tree.
    fn is_empty(&self) -> Result<bool>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_stop_before_the_next_prefix() {
        let range = KeyRange::prefix(&[1, 0xff]);
        assert!(range.contains(&[1, 0xff]));
        assert!(range.contains(&[1, 0xff, 0xff, 3]));
        assert!(!range.contains(&[2]));
        assert!(!range.contains(&[1, 0xfe, 9]));
        assert_eq!(KeyRange::prefix(&[0xff, 0xff]).end, Bound::Unbounded);
        assert!(KeyRange::prefix(&[]).contains(&[9, 9]));
    }

    #[test]
    fn inverted_ranges_are_empty() {
        let range = KeyRange {
            start: Bound::Included(vec![5]),
            end: Bound::Excluded(vec![5]),
        };
        assert!(range.is_empty());
        assert!(!KeyRange::prefix(&[5]).is_empty());
    }
}
