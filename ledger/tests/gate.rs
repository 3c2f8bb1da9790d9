//! The gate between sled's batches and flushes: a batch waits for a flush
//! under way, reads do not, and many stores writing, flushing and reading
//! side by side all finish.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use rigmesh_ledger::store::{gate, open_db};

#[test]
fn a_batch_waits_for_a_flush_under_way_while_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path()).unwrap();
    let tree = db.open_tree("t").unwrap();
    tree.insert(b"read", b"before").unwrap();

    // A flush under way, waiting on a slow disk until the test lets it go.
    let (flushing_tx, flushing_rx) = mpsc::sync_channel(1);
    let (release_tx, release_rx) = mpsc::sync_channel::<()>(1);
    let flush = std::thread::spawn(move || {
        gate::flushing(|| {
            flushing_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        })
    });
    flushing_rx.recv().unwrap();

    let applied = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = mpsc::sync_channel(1);
    let batch = {
        let tree = tree.clone();
        let applied = applied.clone();
        std::thread::spawn(move || {
            let mut write = sled::Batch::default();
            write.insert(b"written".as_slice(), b"by the batch".as_slice());
            write.insert(b"read".as_slice(), b"after".as_slice());
            started_tx.send(()).unwrap();
            gate::apply_batch(&tree, write).unwrap();
            applied.store(true, Ordering::SeqCst);
        })
    };
    started_rx.recv().unwrap();

    // Reads of the store go on, and see nothing of the waiting batch, for
    // as long as the flush lasts (long enough here for a batch that did
    // not wait to be seen).
    let reading = std::time::Instant::now();
    while reading.elapsed() < std::time::Duration::from_millis(300) {
        assert_eq!(tree.get(b"read").unwrap().unwrap().as_ref(), b"before");
        assert!(tree.get(b"written").unwrap().is_none());
    }
    assert!(
        !applied.load(Ordering::SeqCst),
        "the batch ran during the flush"
    );

    release_tx.send(()).unwrap();
    flush.join().unwrap();
    batch.join().unwrap();
    assert!(applied.load(Ordering::SeqCst));
    assert_eq!(tree.get(b"read").unwrap().unwrap().as_ref(), b"after");
    assert_eq!(
        tree.get(b"written").unwrap().unwrap().as_ref(),
        b"by the batch"
    );
}

#[test]
fn stores_writing_flushing_and_reading_side_by_side_all_finish_with_every_write() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let dbs: Vec<sled::Db> = dirs.iter().map(|d| open_db(d.path()).unwrap()).collect();
    let rounds = 300usize;
    let reads = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for (n, db) in dbs.iter().enumerate() {
            // A writer of batches, a writer of single keys that flushes
            // after each, and a reader, on every store.
            scope.spawn(move || {
                let tree = db.open_tree("batches").unwrap();
                for i in 0..rounds {
                    let mut write = sled::Batch::default();
                    write.insert(&(i as u64).to_be_bytes(), vec![n as u8; 64]);
                    write.insert(b"last".as_slice(), &(i as u64).to_be_bytes()[..]);
                    gate::apply_batch(&tree, write).unwrap();
                }
            });
            scope.spawn(move || {
                let tree = db.open_tree("flushed").unwrap();
                for i in 0..rounds {
                    tree.insert((i as u64).to_be_bytes(), vec![1; 32]).unwrap();
                    gate::flush(db).unwrap();
                }
            });
            let reads = reads.clone();
            scope.spawn(move || {
                let tree = db.open_tree("batches").unwrap();
                let mut last = 0u64;
                while last + 1 < rounds as u64 {
                    if let Some(v) = tree.get(b"last").unwrap() {
                        let seen = u64::from_be_bytes(v.as_ref().try_into().unwrap());
                        assert!(seen >= last, "a batch's write went back");
                        // The batch that wrote `last` wrote its key too.
                        assert!(tree.get(seen.to_be_bytes()).unwrap().is_some());
                        last = seen;
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    for db in &dbs {
        assert_eq!(db.open_tree("batches").unwrap().len(), rounds + 1);
        assert_eq!(db.open_tree("flushed").unwrap().len(), rounds);
    }
    assert!(reads.load(Ordering::Relaxed) > 0);
}
