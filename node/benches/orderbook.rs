//! The order book in memory over 100,000 live offers: latency of the best
//! match for a bid (p50, p99) beside a linear scan of the same offers for
//! the same answer in the same run, the latency of one listing page, the
//! time to read the book from a node store, and resident memory (VmRSS)
//! of the book and of the node store holding the offers, each against the
//! raw bytes of the signed offers. Targets: best match p99 < 1 ms; the
//! book under 150 MB for 100,000 offers.
//!
//! Run: `cargo bench -p rigmesh-node --bench orderbook`. Under
//! `cargo test --benches` (no `--bench` flag) it runs small sizes as a
//! smoke test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use std::cmp::Reverse;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use rigmesh_ledger::{MarketRecord, MarketStore, OfferKey};
use rigmesh_node::customer::BookQuery;
use rigmesh_node::orderbook::{OfferFilter, OrderBook};
use rigmesh_protocol::{
    Credits, Id, Keypair, Kind, Offer, PublicKey, Signed, UnixMillis, PROTOCOL_VERSION,
};

const MODELS: [&str; 4] = [
    "NVIDIA H100 80GB HBM3",
    "NVIDIA A100-SXM4-80GB",
    "NVIDIA L40S",
    "NVIDIA GeForce RTX 4090",
];
const REGIONS: [&str; 5] = ["eu-west", "eu-north", "us-east", "us-west", "ap-south"];
const MEMORY: [u64; 3] = [24_564, 49_140, 81_559];

/// xorshift64*, so every run measures the same market.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn market(n: u64, now: UnixMillis) -> Vec<Signed<Offer>> {
    let keys: Vec<Keypair> = (0..(n / 10).max(1))
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[..8].copy_from_slice(&i.to_be_bytes());
            Keypair::from_seed(seed)
        })
        .collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|i| {
            let key = &keys[(i % keys.len() as u64) as usize];
            Signed::sign(
                Offer {
                    version: PROTOCOL_VERSION,
                    supplier: key.public(),
                    sequence: 1,
                    gpu_model: MODELS[rng.below(4) as usize].into(),
                    gpu_memory_mib: MEMORY[rng.below(3) as usize],
                    gpu_count: 1 + rng.below(8) as u16,
                    price_per_gpu_hour: Credits::from_units(
                        500_000 + rng.below(4_000) as i64 * 1_000,
                    ),
                    min_hours: 1,
                    max_hours: 72,
                    region: REGIONS[rng.below(5) as usize].into(),
                    hardware_fingerprint: Id(*blake3::hash(&i.to_be_bytes()).as_bytes()),
                    created_at: now.minus_ms(rng.below(3_600_000)),
                    expires_at: now.plus_ms(3_600_000 + rng.below(3_600_000)),
                },
                key,
            )
            .unwrap()
        })
        .collect()
}

fn queries(n: usize, rng: &mut Rng) -> Vec<BookQuery> {
    (0..n)
        .map(|_| BookQuery {
            gpu_model: MODELS[rng.below(4) as usize].into(),
            min_memory_mib: [0, 40_000, 80_000][rng.below(3) as usize],
            count: 1 + rng.below(8) as u16,
            max_price: (rng.below(2) == 0)
                .then(|| Credits::from_units(500_000 + rng.below(4_000) as i64 * 1_000)),
            region: (rng.below(2) == 0).then(|| REGIONS[rng.below(5) as usize].into()),
            min_reputation_bp: [0, 0, 6_000, 9_000][rng.below(4) as usize],
        })
        .collect()
}

/// The baseline: one pass over every offer, keeping the best by the same
/// ranking (price, reputation, newest, id).
fn scan_best<'a>(
    offers: &'a [(Id, Signed<Offer>)],
    q: &BookQuery,
    reputation: &dyn Fn(&PublicKey) -> u16,
    now: UnixMillis,
) -> Option<&'a Signed<Offer>> {
    offers
        .iter()
        .filter(|(_, o)| {
            let b = &o.body;
            b.gpu_model == q.gpu_model
                && b.expires_at > now
                && b.gpu_memory_mib >= q.min_memory_mib
                && b.gpu_count >= q.count
                && q.max_price.is_none_or(|p| b.price_per_gpu_hour <= p)
                && q.region.as_ref().is_none_or(|r| *r == b.region)
                && reputation(&b.supplier) >= q.min_reputation_bp
        })
        .min_by_key(|(id, o)| {
            (
                o.body.price_per_gpu_hour,
                Reverse(reputation(&o.body.supplier)),
                Reverse(o.body.created_at),
                *id,
            )
        })
        .map(|(_, o)| o)
}

fn quantiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// Resident memory of this process (VmRSS), bytes, as the node's
/// `process_resident_memory_bytes` reads it.
fn rss() -> u64 {
    rigmesh_node::process_metrics::read().map_or(0, |r| r.resident_bytes)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Run in a process of its own (`--open-store DIR`): what a node that
/// restarts on a store of offers holds, the store opened and every offer
/// read into the book, with nothing else of the bench resident. Prints
/// the growth and the whole process's VmRSS, in bytes.
fn open_store(dir: &str) {
    let before = rss();
    let store = MarketStore::open(std::path::Path::new(dir)).unwrap();
    let book = OrderBook::loaded_from(&store).unwrap();
    let after = rss();
    println!("{} {} {}", book.len(), after.saturating_sub(before), after);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--open-store") {
        open_store(&args[i + 1]);
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let (n, runs) = if full {
        (100_000u64, 20_000usize)
    } else {
        (2_000, 200)
    };
    println!(
        "orderbook bench ({}): {n} live offers",
        if full { "full" } else { "smoke" }
    );
    let now = UnixMillis::now();
    let offers = market(n, now);
    let raw_bytes: u64 = offers
        .iter()
        .map(|o| o.to_bytes().unwrap().len() as u64)
        .sum();

    // Memory: the book built from the offers (the signed offers are
    // already resident, so the growth is the book's own).
    let before = rss();
    let book = OrderBook::new();
    book.apply(offers.iter().map(|o| (o.id().unwrap(), o)), now);
    let book_rss = rss().saturating_sub(before);
    assert_eq!(book.len() as u64, n);

    // The same offers as decoded clones, what a scan of the store builds.
    let before = rss();
    let cloned: Vec<(Id, Signed<Offer>)> = offers
        .iter()
        .map(|o| (o.id().unwrap(), o.clone()))
        .collect();
    let clones_rss = rss().saturating_sub(before);

    // A node store holding them, and the book read back from it.
    let dir = tempfile::tempdir().unwrap();
    let before = rss();
    let store = MarketStore::open(dir.path()).unwrap();
    for chunk in offers.chunks(5_000) {
        let records: Vec<MarketRecord> = chunk
            .iter()
            .map(|o| MarketRecord {
                kind: Kind::Offer,
                id: o.id().unwrap(),
                bytes: o.to_bytes().unwrap(),
                offer: Some(OfferKey {
                    supplier: o.body.supplier,
                    fingerprint: o.body.hardware_fingerprint,
                    sequence: o.body.sequence,
                    expires_at: o.body.expires_at,
                }),
                expires_at: None,
                lease: None,
                window: None,
                author: Some(o.body.supplier),
                report: None,
                accounts: Vec::new(),
                made_at: None,
            })
            .collect();
        store.store(&records).unwrap();
    }
    store.flush().unwrap();
    let store_rss = rss().saturating_sub(before);
    let start = Instant::now();
    let loaded = OrderBook::loaded_from(&store).unwrap();
    let load_time = start.elapsed();
    assert_eq!(loaded.len() as u64, n);
    drop(loaded);
    // A node restarting on that store, in a process of its own.
    drop(store);
    let node = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--open-store")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(node.status.success(), "{node:?}");
    let out = String::from_utf8_lossy(&node.stdout);
    let fields: Vec<u64> = out.split_whitespace().map(|f| f.parse().unwrap()).collect();
    let [held, node_growth, node_rss] = fields[..] else {
        panic!("the node process said {out:?}")
    };
    assert_eq!(held, n);

    // Best match: the book against the scan, same queries, same answers.
    let mut rng = Rng(42);
    let scores: HashMap<PublicKey, u16> = offers
        .iter()
        .map(|o| (o.body.supplier, 5_000 + rng.below(50) as u16 * 100))
        .collect();
    let reputation = |k: &PublicKey| scores.get(k).copied().unwrap_or(5_000);
    let qs = queries(runs, &mut rng);
    let mut book_times = Vec::with_capacity(runs);
    let mut scan_times = Vec::with_capacity(runs);
    let mut matched = 0usize;
    for q in &qs {
        let start = Instant::now();
        let best = book.best(q, &reputation, now, 1);
        book_times.push(start.elapsed());
        let start = Instant::now();
        let scanned = scan_best(&cloned, q, &reputation, now);
        scan_times.push(start.elapsed());
        assert_eq!(best.first(), scanned, "{q:?}");
        matched += usize::from(scanned.is_some());
    }
    let (book_p50, book_p99) = quantiles(book_times);
    let (scan_p50, scan_p99) = quantiles(scan_times);

    // One listing page of 200, as `GET /v1/offers` reads it.
    let mut page_times = Vec::with_capacity(runs.min(2_000));
    for i in 0..runs.min(2_000) {
        let filter = OfferFilter {
            gpu_model: (i % 2 == 0).then(|| MODELS[i % 4].to_string()),
            ..Default::default()
        };
        let start = Instant::now();
        let page = book.page(&filter, None, 200, now, false);
        page_times.push(start.elapsed());
        assert_eq!(page.offers.len(), 200.min(n as usize));
    }
    let (page_p50, page_p99) = quantiles(page_times);

    println!(
        "best match, {runs} queries ({matched} matched): book p50 {} p99 {}; \
         linear scan p50 {} p99 {}; p99 ratio scan/book {:.0}x (target: book p99 < 1 ms)",
        micros(book_p50),
        micros(book_p99),
        micros(scan_p50),
        micros(scan_p99),
        scan_p99.as_secs_f64() / book_p99.as_secs_f64().max(1e-9)
    );
    println!(
        "listing page of 200: p50 {} p99 {}",
        micros(page_p50),
        micros(page_p99)
    );
    println!(
        "memory: raw signed offers {}; book {} ({:.2}x raw, {:.0} B/offer; target < 150 MB); \
         decoded clones {} ({:.2}x raw); node store {} ({:.2}x raw)",
        mb(raw_bytes),
        mb(book_rss),
        book_rss as f64 / raw_bytes as f64,
        book_rss as f64 / n as f64,
        mb(clones_rss),
        clones_rss as f64 / raw_bytes as f64,
        mb(store_rss),
        store_rss as f64 / raw_bytes as f64,
    );
    println!(
        "book read from the node store in {:.0} ms ({:.0} offers/s)",
        load_time.as_secs_f64() * 1e3,
        n as f64 / load_time.as_secs_f64()
    );
    println!(
        "a node restarting on the store, in its own process: store opened and book read \
         {} ({:.2}x raw); the whole process {} (target < 150 MB)",
        mb(node_growth),
        node_growth as f64 / raw_bytes as f64,
        mb(node_rss),
    );
    if full {
        assert!(
            book_p99 < Duration::from_millis(1),
            "best match p99 over 1 ms"
        );
        assert!(book_rss < 150_000_000, "the book over 150 MB");
        assert!(
            node_rss < 150_000_000,
            "a node holding the offers over 150 MB"
        );
    }
}
