//! Ledger throughput beside raw sled, measured in the same run on the same
//! disk: journal entries per second (deposits: one balanced entry, two
//! balances and an audit record per call, one atomic batch) against raw
//! sled inserts, and "cheapest 10 offers of model X with >= V MiB" index
//! queries against raw sled prefix scans of the same length; and a round
//! of a coordinator's standing check of its books and audit chain against
//! the full check of the same history, at two sizes of history.
//!
//! `cargo bench -p rigmesh-ledger --bench ledger` runs the full sizes;
//! under `cargo test --benches` (no `--bench` flag) it runs small sizes as a
//! smoke test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

/// The allocator the `rigmesh` binary runs with, on both sides of every
/// ratio.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::hint::black_box;
use std::time::Instant;

use rigmesh_ledger::{Cause, Durability, Ledger, OfferQuery, SledStore};
use rigmesh_protocol::{samples, Credits, Id, Keypair, PublicKey, Signed, UnixMillis};

struct Sizes {
    flushed: u64,
    buffered: u64,
    offers: u64,
    queries: u64,
    /// Deposits in the smaller history of the integrity rows; the larger
    /// holds four times as many.
    history: u64,
}

const MODELS: [&str; 8] = [
    "NVIDIA H100 80GB HBM3",
    "NVIDIA A100-SXM4-80GB",
    "NVIDIA L40S",
    "NVIDIA RTX 4090",
    "NVIDIA A10",
    "NVIDIA L4",
    "NVIDIA H200",
    "NVIDIA RTX 3090",
];

fn id(n: u64) -> Id {
    let mut bytes = [0x5a; 32];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    Id(bytes)
}

fn cause(n: u64) -> Cause {
    Cause::new(PublicKey([9; 32]), id(n), UnixMillis(samples::T0.0 + n))
}

fn rate(n: u64, start: Instant) -> f64 {
    n as f64 / start.elapsed().as_secs_f64()
}

fn sled_db(dir: &std::path::Path) -> sled::Db {
    sled::open(dir).unwrap()
}

/// Raw sled: one insert of a journal-sized value per operation.
#[allow(clippy::disallowed_methods)] // the baseline is sled alone, no gate
fn raw_inserts(n: u64, flush_each: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = sled_db(dir.path());
    let tree = db.open_tree("raw").unwrap();
    let value = vec![7u8; 160];
    let start = Instant::now();
    for i in 0..n {
        tree.insert(i.to_be_bytes(), value.as_slice()).unwrap();
        if flush_each {
            db.flush().unwrap();
        }
    }
    rate(n, start)
}

/// Raw sled: what one deposit writes (seven values over five trees) as one
/// multi-tree transaction, with none of the ledger's reads, checks,
/// encoding or hashing.
#[allow(clippy::disallowed_methods)] // the baseline is sled alone, no gate
fn raw_transactions(n: u64) -> f64 {
    use sled::transaction::{ConflictableTransactionError, Transactional};
    let dir = tempfile::tempdir().unwrap();
    let db = sled_db(dir.path());
    let trees: Vec<sled::Tree> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|t| db.open_tree(t).unwrap())
        .collect();
    let value = vec![7u8; 100];
    let start = Instant::now();
    for i in 0..n {
        trees
            .as_slice()
            .transaction(|views| {
                for (t, view) in views.iter().enumerate() {
                    view.insert(&i.to_be_bytes(), value.as_slice())?;
                    if t < 2 {
                        view.insert(&(i + u64::MAX / 2).to_be_bytes(), value.as_slice())?;
                    }
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .unwrap();
    }
    rate(n, start)
}

/// A history of `history` deposits over 1,000 accounts; then the seconds
/// of a round of the standing check (the coordinator's: 1,000 entries
/// written since the round before, [`AGAIN_PER_ROUND`] walked again) and
/// of the full check of the books and the audit chain.
fn integrity(history: u64) -> (f64, f64) {
    use rigmesh_ledger::integrity::{IntegrityCheck, AGAIN_PER_ROUND};
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open_with(dir.path(), Durability::Buffered).unwrap();
    let deposit = |n: u64| {
        let mut who = [0u8; 32];
        who[..8].copy_from_slice(&(n % 1_000).to_be_bytes());
        ledger
            .deposit(PublicKey(who), Credits::from_units(1_000), id(n), &cause(n))
            .unwrap();
    };
    (0..history).for_each(deposit);
    let mut check = IntegrityCheck::new(AGAIN_PER_ROUND);
    check.round(&ledger).unwrap();
    (history..history + 1_000).for_each(deposit);
    ledger.flush().unwrap();
    let start = Instant::now();
    let round = check.round(&ledger).unwrap();
    let round_secs = start.elapsed().as_secs_f64();
    assert_eq!(round.new_entries, 1_000);
    assert_eq!(round.broken, None);
    let start = Instant::now();
    let books = ledger.check_books().unwrap();
    assert!(ledger.verify_audit().unwrap().is_intact());
    let full_secs = start.elapsed().as_secs_f64();
    assert_eq!(books.entries, history + 1_000);
    (round_secs, full_secs)
}

fn memory_journal_entries(n: u64) -> f64 {
    let ledger = Ledger::in_memory().unwrap();
    let start = Instant::now();
    for i in 0..n {
        let account = PublicKey([(i % 64) as u8; 32]);
        ledger
            .deposit(account, Credits::from_units(1_000_000), id(i), &cause(i))
            .unwrap();
    }
    rate(n, start)
}

fn journal_entries(n: u64, durability: Durability) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::with_store(SledStore::open(dir.path()).unwrap(), durability).unwrap();
    let start = Instant::now();
    for i in 0..n {
        let account = PublicKey([(i % 64) as u8; 32]);
        ledger
            .deposit(account, Credits::from_units(1_000_000), id(i), &cause(i))
            .unwrap();
    }
    let r = rate(n, start);
    assert_eq!(ledger.journal_len().unwrap(), n);
    r
}

fn offers(n: u64) -> Vec<Signed<rigmesh_protocol::Offer>> {
    let template = samples::offer().unwrap().body;
    (0..n)
        .map(|i| {
            let key = Keypair::from_seed([(i % 200) as u8 + 1; 32]);
            let mut body = template.clone();
            body.supplier = key.public();
            body.hardware_fingerprint = id(i);
            body.gpu_model = MODELS[(i % MODELS.len() as u64) as usize].into();
            body.gpu_memory_mib = [24_576, 49_152, 81_559][(i % 3) as usize];
            body.price_per_gpu_hour =
                Credits::from_units(500_000 + ((i * 7_919) % 3_000_000) as i64);
            Signed::sign(body, &key).unwrap()
        })
        .collect()
}

/// Index queries against raw prefix scans that read as many entries.
fn queries(sizes: &Sizes) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let ledger =
        Ledger::with_store(SledStore::open(dir.path()).unwrap(), Durability::Buffered).unwrap();
    for (i, offer) in offers(sizes.offers).iter().enumerate() {
        ledger.put_offer(offer, &cause(i as u64)).unwrap();
    }
    ledger.flush().unwrap();
    let query = |i: u64| OfferQuery {
        gpu_model: MODELS[(i % MODELS.len() as u64) as usize].into(),
        min_memory_mib: 80_000,
        min_gpus: 1,
        max_price: None,
        now: samples::T0,
        limit: 10,
    };
    // How many index rows a query reads: a third of the offers qualify on
    // memory, so about 30 rows for 10 results.
    let start = Instant::now();
    let mut found = 0;
    for i in 0..sizes.queries {
        found += black_box(ledger.cheapest_offer_ids(&query(i)).unwrap()).len();
    }
    let ids_rate = rate(sizes.queries, start);
    assert_eq!(found as u64, sizes.queries * 10);
    let start = Instant::now();
    for i in 0..sizes.queries {
        black_box(ledger.cheapest_offers(&query(i)).unwrap());
    }
    let full_rate = rate(sizes.queries, start);

    let raw_dir = tempfile::tempdir().unwrap();
    let db = sled_db(raw_dir.path());
    let tree = db.open_tree("raw_index").unwrap();
    for i in 0..sizes.offers {
        let mut key = vec![(i % MODELS.len() as u64) as u8];
        key.extend_from_slice(&((i * 7_919) % 3_000_000).to_be_bytes());
        key.extend_from_slice(&i.to_be_bytes());
        tree.insert(key, vec![1u8; 30]).unwrap();
    }
    let start = Instant::now();
    for i in 0..sizes.queries {
        let prefix = [(i % MODELS.len() as u64) as u8];
        let read: usize = tree
            .scan_prefix(prefix)
            .take(30)
            .map(|e| black_box(e.unwrap()).1.len())
            .sum();
        black_box(read);
    }
    let raw_rate = rate(sizes.queries, start);
    (ids_rate, full_rate, raw_rate)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            flushed: 3_000,
            buffered: 30_000,
            offers: 20_000,
            queries: 20_000,
            history: 100_000,
        }
    } else {
        Sizes {
            flushed: 100,
            buffered: 500,
            offers: 400,
            queries: 200,
            history: 1_000,
        }
    };
    println!(
        "ledger bench ({}; sizes: {} flushed, {} buffered, {} offers, {} queries)",
        if full { "full" } else { "smoke" },
        sizes.flushed,
        sizes.buffered,
        sizes.offers,
        sizes.queries
    );

    let raw_flushed = raw_inserts(sizes.flushed, true);
    let journal_flushed = journal_entries(sizes.flushed, Durability::Flushed);
    println!(
        "journal entries/s, flushed per call: {journal_flushed:>10.0}   raw sled insert+flush/s: {raw_flushed:>10.0}   ratio {:.3}",
        journal_flushed / raw_flushed
    );
    let raw_buffered = raw_inserts(sizes.buffered, false);
    let journal_buffered = journal_entries(sizes.buffered, Durability::Buffered);
    println!(
        "journal entries/s, buffered:         {journal_buffered:>10.0}   raw sled insert/s:       {raw_buffered:>10.0}   ratio {:.3}",
        journal_buffered / raw_buffered
    );
    let raw_tx = raw_transactions(sizes.buffered);
    println!(
        "journal entries/s, buffered:         {journal_buffered:>10.0}   raw sled 5-tree tx/s:    {raw_tx:>10.0}   ratio {:.3}",
        journal_buffered / raw_tx
    );
    let memory = memory_journal_entries(sizes.buffered);
    println!(
        "journal entries/s, memory store:     {memory:>10.0}   (the ledger's own cost, no sled)"
    );
    let (ids, full_offers, raw) = queries(&sizes);
    println!(
        "offer index queries/s (ids):         {ids:>10.0}   raw sled 30-row scans/s: {raw:>10.0}   ratio {:.3}",
        ids / raw
    );
    println!(
        "offer queries/s (decoded offers):    {full_offers:>10.0}   raw sled 30-row scans/s: {raw:>10.0}   ratio {:.3}",
        full_offers / raw
    );
    for history in [sizes.history, sizes.history * 4] {
        let (round, full) = integrity(history);
        println!(
            "integrity, history of {history:>7} deposits: a round {:>8.1} ms   the full check {:>8.1} ms   ratio {:.3}",
            round * 1e3,
            full * 1e3,
            round / full
        );
    }
}
