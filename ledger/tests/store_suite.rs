//! One test suite for the [`Store`] contract, run against every backend:
//! sled and memory must be interchangeable under the ledger.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::ops::Bound;

use rigmesh_ledger::columns::{Balances, Journal, TypedStore};
use rigmesh_ledger::store::{Direction, KeyRange};
use rigmesh_ledger::{Account, Batch, Error, MemoryStore, SledStore, Store};
use rigmesh_protocol::{Credits, PublicKey};

const A: &str = "test/a";
const B: &str = "test/b";

fn keys<S: Store>(store: &S, tree: &'static str, range: KeyRange, dir: Direction) -> Vec<Vec<u8>> {
    store.scan(tree, range, dir).map(|e| e.unwrap().0).collect()
}

fn get_put_delete<S: Store>(store: S) {
    assert!(store.is_empty().unwrap());
    assert_eq!(store.get(A, b"k").unwrap(), None);
    store.put(A, b"k", b"v1").unwrap();
    assert_eq!(store.get(A, b"k").unwrap(), Some(b"v1".to_vec()));
    store.put(A, b"k", b"v2").unwrap();
    assert_eq!(store.get(A, b"k").unwrap(), Some(b"v2".to_vec()));
    assert!(!store.is_empty().unwrap());
    // Trees are separate namespaces.
    assert_eq!(store.get(B, b"k").unwrap(), None);
    store.delete(A, b"k").unwrap();
    assert_eq!(store.get(A, b"k").unwrap(), None);
    store.delete(A, b"never there").unwrap();
    store.put(A, b"", b"empty key").unwrap();
    assert_eq!(store.get(A, b"").unwrap(), Some(b"empty key".to_vec()));
    store.flush().unwrap();
}

fn batches_apply_in_order_across_trees<S: Store>(store: S) {
    store.put(B, b"gone", b"x").unwrap();
    let mut batch = Batch::new();
    batch.put(A, b"k".to_vec(), b"first".to_vec());
    batch.put(B, b"k".to_vec(), b"b".to_vec());
    batch.put(A, b"k".to_vec(), b"second".to_vec());
    batch.delete(B, b"gone".to_vec());
    batch.put(A, b"tmp".to_vec(), b"t".to_vec());
    batch.delete(A, b"tmp".to_vec());
    assert_eq!(batch.len(), 6);
    assert_eq!(batch.trees(), vec![A, B]);
    store.write(&batch).unwrap();
    assert_eq!(store.get(A, b"k").unwrap(), Some(b"second".to_vec()));
    assert_eq!(store.get(B, b"k").unwrap(), Some(b"b".to_vec()));
    assert_eq!(store.get(B, b"gone").unwrap(), None);
    assert_eq!(store.get(A, b"tmp").unwrap(), None);
    store.write(&Batch::new()).unwrap();

    // A one-tree batch takes the single-tree path of a backend.
    let mut single = Batch::new();
    single.put(A, b"x".to_vec(), b"1".to_vec());
    single.delete(A, b"k".to_vec());
    store.write(&single).unwrap();
    assert_eq!(store.get(A, b"k").unwrap(), None);
    assert_eq!(store.get(A, b"x").unwrap(), Some(b"1".to_vec()));
}

fn batches_are_atomic_for_readers<S: Store + 'static>(store: S) {
    // A reader thread never sees one tree of a batch without the other.
    let store = std::sync::Arc::new(store);
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0u64..300 {
                let mut batch = Batch::new();
                batch.put(A, b"n".to_vec(), i.to_be_bytes().to_vec());
                batch.put(B, b"n".to_vec(), i.to_be_bytes().to_vec());
                store.write(&batch).unwrap();
            }
        })
    };
    for _ in 0..300 {
        let b = store.get(B, b"n").unwrap();
        let a = store.get(A, b"n").unwrap();
        // Writes only grow `n`, and B was read first.
        if let (Some(a), Some(b)) = (a, b) {
            assert!(a >= b, "saw B ahead of A");
        }
    }
    writer.join().unwrap();
    assert_eq!(store.get(A, b"n").unwrap(), store.get(B, b"n").unwrap());
}

fn prefix_scans_in_both_directions<S: Store>(store: S) {
    for key in [
        vec![1u8],
        vec![1, 0],
        vec![1, 0xff],
        vec![1, 0xff, 0xff],
        vec![2],
        vec![0xff],
        vec![0xff, 0xff],
        vec![0],
    ] {
        store.put(A, &key, b"v").unwrap();
    }
    store.put(B, &[1, 5], b"other tree").unwrap();
    assert_eq!(
        keys(&store, A, KeyRange::prefix(&[1]), Direction::Forward),
        vec![vec![1], vec![1, 0], vec![1, 0xff], vec![1, 0xff, 0xff]]
    );
    assert_eq!(
        keys(&store, A, KeyRange::prefix(&[1]), Direction::Reverse),
        vec![vec![1, 0xff, 0xff], vec![1, 0xff], vec![1, 0], vec![1]]
    );
    assert_eq!(
        keys(&store, A, KeyRange::prefix(&[1, 0xff]), Direction::Forward),
        vec![vec![1, 0xff], vec![1, 0xff, 0xff]]
    );
    assert_eq!(
        keys(&store, A, KeyRange::prefix(&[0xff]), Direction::Forward),
        vec![vec![0xff], vec![0xff, 0xff]]
    );
    assert_eq!(
        keys(&store, A, KeyRange::prefix(&[3]), Direction::Forward),
        Vec::<Vec<u8>>::new()
    );
    assert_eq!(
        keys(&store, A, KeyRange::all(), Direction::Forward).len(),
        8
    );
    assert!(keys(
        &store,
        "test/never-written",
        KeyRange::all(),
        Direction::Forward
    )
    .is_empty());
}

fn range_scans_respect_bounds<S: Store>(store: S) {
    for i in 0u8..10 {
        store.put(A, &[i], &[i]).unwrap();
    }
    let range = |start, end| KeyRange { start, end };
    let inc = |i: u8| Bound::Included(vec![i]);
    let exc = |i: u8| Bound::Excluded(vec![i]);
    let first =
        |r: KeyRange, d| -> Vec<u8> { keys(&store, A, r, d).iter().map(|k| k[0]).collect() };
    assert_eq!(
        first(range(inc(3), exc(6)), Direction::Forward),
        vec![3, 4, 5]
    );
    assert_eq!(
        first(range(exc(3), inc(6)), Direction::Forward),
        vec![4, 5, 6]
    );
    assert_eq!(
        first(range(exc(3), inc(6)), Direction::Reverse),
        vec![6, 5, 4]
    );
    assert_eq!(
        first(range(Bound::Unbounded, exc(2)), Direction::Forward),
        vec![0, 1]
    );
    assert_eq!(
        first(range(inc(8), Bound::Unbounded), Direction::Reverse),
        vec![9, 8]
    );
    // Empty and inverted ranges are empty, not a panic.
    assert!(first(range(inc(5), exc(5)), Direction::Forward).is_empty());
    assert!(first(range(exc(5), exc(5)), Direction::Reverse).is_empty());
    assert!(first(range(inc(7), inc(2)), Direction::Forward).is_empty());
    assert_eq!(first(range(inc(5), inc(5)), Direction::Forward), vec![5]);
}

fn long_scans_see_every_key_once<S: Store>(store: S) {
    // Longer than any internal chunk, with writes while the scan runs.
    let mut batch = Batch::new();
    for i in 0u32..2_000 {
        batch.put(A, i.to_be_bytes().to_vec(), vec![1]);
    }
    store.write(&batch).unwrap();
    let mut seen = 0u32;
    let mut last: Option<Vec<u8>> = None;
    for entry in store.scan(A, KeyRange::all(), Direction::Forward) {
        let (key, _) = entry.unwrap();
        if let Some(prev) = &last {
            assert!(key > *prev);
        }
        if seen == 500 {
            store.put(B, b"unrelated", b"x").unwrap();
        }
        last = Some(key);
        seen += 1;
    }
    assert_eq!(seen, 2_000);
    let reverse: Vec<_> = store
        .scan(A, KeyRange::all(), Direction::Reverse)
        .take(3)
        .map(|e| e.unwrap().0)
        .collect();
    assert_eq!(reverse[0], 1_999u32.to_be_bytes().to_vec());
    assert_eq!(reverse.len(), 3);
}

fn typed_columns_round_trip_and_refuse_corrupt_bytes<S: Store>(store: S) {
    let alice = Account::User(PublicKey([7; 32]));
    let mut batch = Batch::new();
    batch
        .put_in::<Balances>(&alice, &Credits::from_units(1_500_000))
        .unwrap();
    batch
        .put_in::<Balances>(&Account::Fees, &Credits::from_units(3))
        .unwrap();
    store.write(&batch).unwrap();
    assert_eq!(
        store.get_in::<Balances>(&alice).unwrap(),
        Some(Credits::from_units(1_500_000))
    );
    let rows: Vec<_> = store
        .rows::<Balances>(Direction::Forward)
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        rows,
        vec![
            (Account::Fees, Credits::from_units(3)),
            (alice, Credits::from_units(1_500_000))
        ]
    );

    // Garbage where a balance should be: an error naming it, not a panic.
    store.put("ledger/accounts", &[1], b"garbage").unwrap();
    let err = store.get_in::<Balances>(&Account::Fees).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Undecodable {
                what: "balance",
                ..
            }
        ),
        "{err}"
    );
    // A key that is not an account, in a scan.
    store.put("ledger/accounts", &[9, 9], b"x").unwrap();
    assert!(store
        .rows::<Balances>(Direction::Forward)
        .any(|r| r.is_err()));
    // Typed range over a column with nothing in it.
    assert_eq!(
        store
            .rows_in::<Journal>(Bound::Included(&5), Bound::Excluded(&9), Direction::Forward)
            .count(),
        0
    );
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sled_backend {
            $(
                #[test]
                fn $case() {
                    super::$case(rigmesh_ledger::SledStore::temporary().unwrap());
                }
            )*
        }
        mod memory_backend {
            $(
                #[test]
                fn $case() {
                    super::$case(rigmesh_ledger::MemoryStore::new());
                }
            )*
        }
    };
}

suite!(
    get_put_delete,
    batches_apply_in_order_across_trees,
    batches_are_atomic_for_readers,
    prefix_scans_in_both_directions,
    range_scans_respect_bounds,
    long_scans_see_every_key_once,
    typed_columns_round_trip_and_refuse_corrupt_bytes,
);

#[test]
fn sled_store_keeps_data_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        let mut batch = Batch::new();
        batch.put(A, b"k".to_vec(), b"v".to_vec());
        batch.put(B, b"k".to_vec(), b"w".to_vec());
        store.write(&batch).unwrap();
        store.flush().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.get(A, b"k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(store.get(B, b"k").unwrap(), Some(b"w".to_vec()));
}

#[test]
fn memory_store_clones_share_data() {
    let a = MemoryStore::new();
    let b = a.clone();
    a.put(A, b"k", b"v").unwrap();
    assert_eq!(b.get(A, b"k").unwrap(), Some(b"v".to_vec()));
}
