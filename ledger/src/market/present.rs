//! Which point-read keys of the message tree may be stored: a Bloom filter
//! over the keys that ingest reads one by one (a message by kind and id, a
//! device set's live-offer entry, a reputation report's entry, a lease's
//! tombstone), so the reads that nearly always find nothing (is this
//! message known already? is this device set offered? was this lease
//! compacted?) are answered without walking sled's tree. A key the filter
//! does not hold is not stored; a key it holds is read from the tree, so
//! a false positive (about one in a hundred) costs the read it would have
//! cost anyway.
//!
//! A write adds its keys before its batch is applied and holds
//! [`Present::adding`] until it is. Deleted keys stay in the filter until
//! it is rebuilt from the tree ([`Present::renew_if_full`]), once more keys
//! were added than it was sized for; writes go on meanwhile, and what they
//! add while the rebuild scans the tree is added to the new filter too.
//! A store that opens with live-offer entries does not read them then
//! (a restarting node reads its offers for its order book, and memory
//! follows what sled has read): until the first rebuild, their reads go
//! to the tree.

use std::sync::atomic::{AtomicUsize, Ordering};

use fastbloom::AtomicBloomFilter;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::error::Result;

/// The share of absent keys the filter holds all the same.
const FALSE_POSITIVES: f64 = 0.01;
/// Keys a filter is sized for at least: about 1.2 MB of bits (a few in
/// this crate's tests, so they rebuild it often).
const MIN_KEYS: usize = if cfg!(test) { 64 } else { 1 << 20 };

/// Message keys start with a kind tag, below this byte.
const MESSAGES_END: u8 = 0xF4;

/// The filter over a tree's point-read keys; see the module docs.
pub(super) struct Present {
    /// The hasher of every filter of this store, randomly seeded.
    hasher: fastbloom::DefaultHasher,
    /// Families of keys outside the message range that the filter covers,
    /// by first byte.
    families: Vec<u8>,
    filter: RwLock<Filter>,
    /// Held shared by a write from the first key it adds until its batch
    /// is applied, exclusively by a rebuild as it starts and as it ends.
    writes: RwLock<()>,
    /// While a rebuild scans the tree: the hashes of the keys added since
    /// it began.
    pending: Mutex<Option<Vec<u64>>>,
    /// One rebuild at a time.
    rebuilding: Mutex<()>,
}

struct Filter {
    bloom: AtomicBloomFilter,
    /// Keys it was sized for.
    capacity: usize,
    /// Keys added to it, counting each add (a key rewritten counts again).
    added: AtomicUsize,
    /// Families of keys it was built without (their keys are read from
    /// the tree until a rebuild reads them).
    unread: Vec<u8>,
}

impl Filter {
    fn sized(hasher: &fastbloom::DefaultHasher, keys: usize, unread: Vec<u8>) -> Filter {
        let capacity = keys.saturating_mul(2).max(MIN_KEYS);
        Filter {
            unread,
            bloom: AtomicBloomFilter::with_false_pos(FALSE_POSITIVES)
                .hasher(hasher.clone())
                .expected_items(capacity),
            capacity,
            added: AtomicUsize::new(0),
        }
    }
}

/// A write's hold on the filter: the keys it adds are held from then on,
/// and a rebuild does not start or end until the write's batch is applied.
pub(super) struct Adding<'a> {
    present: &'a Present,
    _writes: RwLockReadGuard<'a, ()>,
}

impl Adding<'_> {
    /// Adds `key`, about to be written.
    pub(super) fn add(&self, key: &[u8]) {
        let hash = self.present.hash(key);
        let filter = self.present.filter.read();
        filter.bloom.insert_hash(hash);
        filter.added.fetch_add(1, Ordering::Relaxed);
        if let Some(pending) = self.present.pending.lock().as_mut() {
            pending.push(hash);
        }
    }
}

impl Present {
    /// A filter over the point-read keys of a tree, messages and the keys
    /// whose first byte is one of `families`, that holds none yet: it
    /// answers for the tree once [`Present::rebuild`] has read it.
    pub(super) fn new(families: &[u8]) -> Present {
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let state = std::collections::hash_map::RandomState::new();
            let half = |n: u8| {
                let mut h = state.build_hasher();
                h.write_u8(n);
                h.finish()
            };
            (u128::from(half(0)) << 64) | u128::from(half(1))
        };
        let hasher = fastbloom::DefaultHasher::seeded(&seed.to_be_bytes());
        Present {
            filter: RwLock::new(Filter::sized(&hasher, 0, Vec::new())),
            hasher,
            families: families.to_vec(),
            writes: RwLock::new(()),
            pending: Mutex::new(None),
            rebuilding: Mutex::new(()),
        }
    }

    /// False if `key` is surely not stored.
    pub(super) fn may_hold(&self, key: &[u8]) -> bool {
        let hash = self.hash(key);
        let filter = self.filter.read();
        key.first()
            .is_some_and(|first| filter.unread.contains(first))
            || filter.bloom.contains_hash(hash)
    }

    /// `key`'s hash as every filter of this store takes it.
    fn hash(&self, key: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    /// The hold a write takes before it adds its keys, kept until its
    /// batch is applied.
    pub(super) fn adding(&self) -> Adding<'_> {
        Adding {
            present: self,
            _writes: self.writes.read(),
        }
    }

    /// Rebuilds the filter from `tree` if more keys were added to it than
    /// it was sized for (deleted keys stay in a filter, so it fills up);
    /// true if it did. Not while another rebuild runs.
    pub(super) fn renew_if_full(&self, tree: &sled::Tree) -> Result<bool> {
        {
            let filter = self.filter.read();
            if filter.added.load(Ordering::Relaxed) <= filter.capacity {
                return Ok(false);
            }
        }
        self.rebuild(tree).map(|()| true)
    }

    /// Builds the filter as a store opens on `tree`, without reading the
    /// keys of `deferred` families unless there are none: their reads go
    /// to the tree until the first rebuild. (A node restarting on 100,000
    /// offers reads them once for its order book; reading their 100,000
    /// live-offer entries too held about 29 MB more.)
    pub(super) fn open(&self, tree: &sled::Tree, deferred: &[u8]) -> Result<()> {
        let mut unread = Vec::new();
        for family in deferred {
            if tree.scan_prefix([*family]).next().is_some() {
                unread.push(*family);
            }
        }
        self.build(tree, unread)
    }

    /// Rebuilds the filter from `tree`, sized for twice the keys it holds.
    pub(super) fn rebuild(&self, tree: &sled::Tree) -> Result<()> {
        self.build(tree, Vec::new())
    }

    fn build(&self, tree: &sled::Tree, unread: Vec<u8>) -> Result<()> {
        let _one = self.rebuilding.lock();
        // Every write that added keys before this point has applied its
        // batch when the exclusive hold is granted, so the scan below
        // finds its keys; every write after it records what it adds.
        {
            let _writes = self.writes.write();
            *self.pending.lock() = Some(Vec::new());
        }
        let scanned = self.hashes(tree, &unread);
        let hashes = match scanned {
            Ok(hashes) => hashes,
            Err(err) => {
                *self.pending.lock() = None;
                return Err(err);
            }
        };
        let fresh = Filter::sized(&self.hasher, hashes.len(), unread);
        for hash in &hashes {
            fresh.bloom.insert_hash(*hash);
        }
        let _writes = self.writes.write();
        let pending = self.pending.lock().take().unwrap_or_default();
        for hash in &pending {
            fresh.bloom.insert_hash(*hash);
        }
        fresh.added.store(
            hashes.len().saturating_add(pending.len()),
            Ordering::Relaxed,
        );
        *self.filter.write() = fresh;
        Ok(())
    }

    /// The hashes of every point-read key in `tree` but those of the
    /// `unread` families.
    fn hashes(&self, tree: &sled::Tree, unread: &[u8]) -> Result<Vec<u64>> {
        let mut hashes = Vec::new();
        let ranges = std::iter::once(tree.range(..[MESSAGES_END])).chain(
            self.families
                .iter()
                .filter(|first| !unread.contains(first))
                .map(|first| tree.scan_prefix([*first])),
        );
        for range in ranges {
            for key in range.keys() {
                hashes.push(self.hash(key?.as_ref()));
            }
        }
        Ok(hashes)
    }

    /// Keys the filter is sized for now.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.filter.read().capacity
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use rigmesh_protocol::{Id, Kind, UnixMillis};

    use super::super::{MarketRecord, MarketStore};

    fn bid(n: u32, expires_at: u64) -> MarketRecord {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&n.to_be_bytes());
        MarketRecord {
            kind: Kind::Bid,
            id: Id(id),
            bytes: n.to_be_bytes().to_vec(),
            offer: None,
            expires_at: Some(UnixMillis(expires_at)),
            lease: None,
            window: None,
            author: None,
            report: None,
            accounts: Vec::new(),
            made_at: None,
        }
    }

    /// How many of `records` the filter holds.
    fn held(store: &MarketStore, records: &[MarketRecord]) -> usize {
        records
            .iter()
            .filter(|r| {
                store
                    .present
                    .may_hold(&super::super::message_key(r.kind, &r.id))
            })
            .count()
    }

    #[test]
    fn every_stored_message_is_found_while_the_filter_is_rebuilt_under_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = MarketStore::open(dir.path()).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let rebuilder = {
            let (store, done) = (store.clone(), done.clone());
            std::thread::spawn(move || {
                let mut rebuilds = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    store.present.rebuild(&store.messages).unwrap();
                    rebuilds += 1;
                }
                rebuilds
            })
        };
        let mut stored = Vec::new();
        for batch in 0..200u32 {
            let records: Vec<_> = (0..20).map(|i| bid(batch * 20 + i, u64::MAX - 1)).collect();
            store.store(&records).unwrap();
            // Found at once, whatever filter the rebuild left in place.
            for r in &records {
                assert!(store.contains(r.kind, &r.id).unwrap(), "bid {:?}", r.id);
            }
            stored.extend(records);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let rebuilds = rebuilder.join().unwrap();
        assert!(rebuilds > 1, "the filter was rebuilt during the writes");
        for r in &stored {
            assert!(store.contains(r.kind, &r.id).unwrap());
            assert_eq!(store.get(r.kind, &r.id).unwrap(), Some(r.bytes.clone()));
        }
        // And after reopening, from the filter built as the store opens.
        drop(store);
        let store = MarketStore::open(dir.path()).unwrap();
        assert_eq!(held(&store, &stored), stored.len());
        assert!(stored
            .iter()
            .all(|r| store.contains(r.kind, &r.id).unwrap()));
    }

    #[test]
    fn most_absent_messages_are_answered_by_the_filter_and_never_a_stored_one() {
        let store = MarketStore::temporary().unwrap();
        let stored: Vec<_> = (0..5_000).map(|n| bid(n, u64::MAX - 1)).collect();
        for chunk in stored.chunks(100) {
            store.store(chunk).unwrap();
        }
        // Filled up long ago (sized for 64 keys when the store opened
        // empty): pruning rebuilds it, sized for the 5,000 stored.
        assert_eq!(held(&store, &stored), stored.len());
        assert_eq!(store.prune_expired(UnixMillis(0), 10).unwrap(), 0);
        assert_eq!(store.present.capacity(), 10_000);
        let absent: Vec<_> = (5_000..15_000).map(|n| bid(n, u64::MAX - 1)).collect();
        assert_eq!(held(&store, &stored), stored.len());
        // About 1 % false positives expected; 3 % would be far out.
        let false_positives = held(&store, &absent);
        assert!(false_positives < 300, "{false_positives} of 10,000");
        assert!(absent
            .iter()
            .all(|r| !store.contains(r.kind, &r.id).unwrap()));
    }

    #[test]
    fn live_offer_entries_are_read_from_the_tree_after_reopening_until_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let offer = |n: u32| {
            let mut r = bid(n, u64::MAX - 1);
            r.kind = Kind::Offer;
            r.expires_at = None;
            r.offer = Some(super::super::OfferKey {
                supplier: rigmesh_protocol::PublicKey([7; 32]),
                fingerprint: r.id,
                sequence: 3,
                expires_at: UnixMillis(u64::MAX - 1),
            });
            r
        };
        let offers: Vec<_> = (0..500).map(offer).collect();
        let sequences = |store: &MarketStore| {
            offers
                .iter()
                .filter(|r| {
                    store
                        .offer_sequence(&rigmesh_protocol::PublicKey([7; 32]), &r.id)
                        .unwrap()
                        == Some(3)
                })
                .count()
        };
        {
            let store = MarketStore::open(dir.path()).unwrap();
            // Opened empty: the filter covers live-offer entries at once.
            assert!(store.present.filter.read().unread.is_empty());
            store.store(&offers).unwrap();
            assert_eq!(sequences(&store), offers.len());
        }
        let store = MarketStore::open(dir.path()).unwrap();
        assert_eq!(
            store.present.filter.read().unread,
            vec![super::super::LIVE_OFFER]
        );
        assert_eq!(sequences(&store), offers.len());
        let absent = super::super::device_key(&rigmesh_protocol::PublicKey([7; 32]), &Id([9; 32]));
        assert!(store.present.may_hold(&absent), "not read yet");
        store.present.rebuild(&store.messages).unwrap();
        assert!(store.present.filter.read().unread.is_empty());
        assert_eq!(sequences(&store), offers.len());
        // A newer offer still replaces, an older one still does not.
        let mut newer = offer(0);
        newer.id = Id([0xEE; 32]);
        newer.offer.as_mut().unwrap().sequence = 4;
        store.store(&[newer]).unwrap();
        assert_eq!(sequences(&store), offers.len() - 1);
        assert!(!store.contains(Kind::Offer, &offers[0].id).unwrap());
    }

    #[test]
    fn a_filled_filter_is_rebuilt_by_pruning_and_forgets_what_was_pruned() {
        let store = MarketStore::temporary().unwrap();
        let expired: Vec<_> = (0..3_000).map(|n| bid(n, 1_000)).collect();
        let kept: Vec<_> = (3_000..3_100).map(|n| bid(n, u64::MAX - 1)).collect();
        for chunk in expired.chunks(100) {
            store.store(chunk).unwrap();
        }
        store.store(&kept).unwrap();
        // Sized when the store opened empty, so it filled up long ago.
        assert_eq!(store.present.capacity(), super::MIN_KEYS);
        assert_eq!(
            store.prune_expired(UnixMillis(2_000), usize::MAX).unwrap(),
            expired.len()
        );
        // Rebuilt from the 100 bids left, sized for twice as many: the
        // pruned ones are gone from it but for its false positives.
        assert_eq!(store.present.capacity(), 2 * kept.len());
        assert_eq!(held(&store, &kept), kept.len());
        assert!(held(&store, &expired) < 150, "{}", held(&store, &expired));
        assert!(kept.iter().all(|r| store.contains(r.kind, &r.id).unwrap()));
        assert!(expired
            .iter()
            .all(|r| !store.contains(r.kind, &r.id).unwrap()));
    }
}
