//! A customer node whose store holds 100,000 live offers answers offer
//! listings a page at a time, market statistics and bids from its order
//! book in memory: after the one read of the store at start, no request
//! scans the stored offers (the store counts every offer its scans read),
//! and an offer stored after start is listed and leased from without a
//! second read.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;
#[path = "common/offers.rs"]
mod offers;

use std::time::Instant;

use common::eventually;
use offers::record;
use rigmesh_ledger::{MarketRecord, MarketStore};
use rigmesh_node::api::tokens::{read_token, Bootstrap};
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{Credits, Id, Keypair, Kind, Offer, Signed, UnixMillis, PROTOCOL_VERSION};

/// Offers written into the node's store before it starts.
const OFFERS: u64 = 100_000;
/// Device sets per supplier key: 2,000 suppliers, each within the
/// per-author quota of 64.
const DEVICES_PER_KEY: u64 = 50;
const MODEL: &str = "NVIDIA H100 80GB HBM3";

/// Offer `n`: one of a few models and regions, priced from 2.000000 up in
/// micro-credit steps, so the cheapest is known (offer 0, at 2.00).
/// The most the executor may be late. Reading the book on it would take
/// seconds; the scheduling noise of a busy 2-core machine is tens of
/// milliseconds.
const MAX_EXECUTOR_LAG_SECS: f64 = 0.5;

fn offer(key: &Keypair, n: u64, now: UnixMillis) -> Signed<Offer> {
    Signed::sign(
        Offer {
            version: PROTOCOL_VERSION,
            supplier: key.public(),
            sequence: 1,
            gpu_model: if n % 4 == 3 {
                "NVIDIA A100-SXM4-80GB".into()
            } else {
                MODEL.into()
            },
            gpu_memory_mib: 81_920,
            gpu_count: 1 + (n % 8) as u16,
            price_per_gpu_hour: Credits::from_units(2_000_000 + ((n * 7_919) % 3_000_000) as i64),
            min_hours: 1,
            max_hours: 72,
            region: ["eu", "us", "ap"][(n % 3) as usize].into(),
            hardware_fingerprint: Id(*blake3::hash(&n.to_be_bytes()).as_bytes()),
            created_at: now,
            expires_at: now.plus_ms(3_600_000),
        },
        key,
    )
    .unwrap()
}

/// Signs the offers on every core and writes them in batches straight
/// into the store the node will open.
fn fill(path: &std::path::Path, now: UnixMillis) {
    let store = MarketStore::open(path).unwrap();
    let keys: Vec<Keypair> = (0..OFFERS / DEVICES_PER_KEY)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&i.to_be_bytes());
            seed[8] = 1;
            Keypair::from_seed(seed)
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (store, keys) = (&store, &keys);
            scope.spawn(move || {
                let mine: Vec<u64> = (0..OFFERS).filter(|n| n % threads == t).collect();
                for chunk in mine.chunks(5_000) {
                    let records: Vec<MarketRecord> = chunk
                        .iter()
                        .map(|n| record(&offer(&keys[(n / DEVICES_PER_KEY) as usize], *n, now)))
                        .collect();
                    store.store(&records).unwrap();
                }
            });
        }
    });
    store.flush().unwrap();
}

fn status(response: &str) -> u16 {
    response[9..12].parse().unwrap()
}

fn body(response: &str) -> serde_json::Value {
    serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

fn next_cursor(response: &str) -> Option<String> {
    response
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("next-cursor: ").map(str::to_string))
}

fn prices(page: &serde_json::Value) -> Vec<Credits> {
    page.as_array()
        .unwrap()
        .iter()
        .map(|o| {
            o["body"]["price_per_gpu_hour"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

/// The node runs on one executor thread here, so any disk read, scan or
/// heavy computation that runs on the executor rather than on a blocking
/// thread holds up the node's every task, and shows in the lateness the
/// node measures (`rigmesh_executor_lag_max_seconds`).
#[tokio::test(flavor = "current_thread")]
async fn a_node_with_100k_offers_answers_from_its_book_without_scanning_the_store() {
    common::logs();
    let dir = tempfile::tempdir().unwrap();
    let now = UnixMillis::now();
    let started = Instant::now();
    fill(&dir.path().join("ledger"), now);
    eprintln!(
        "{OFFERS} offers signed and stored in {:?}",
        started.elapsed()
    );

    let config = common::customer_node(dir.path());
    let started = Instant::now();
    let node = rigmesh_node::node::start(config).await.unwrap();
    let book = node.book.clone();
    eventually(60, "the order book read from the store", || {
        let book = book.clone();
        async move { book.is_loaded() }
    })
    .await;
    eprintln!(
        "node started and its book loaded in {:?}",
        started.elapsed()
    );
    assert_eq!(node.book.len() as u64, OFFERS);
    // The one read at start; from here on, nothing may scan the offers.
    let scanned = node.store.offers_scanned();
    assert_eq!(scanned, OFFERS);
    let metrics = common::http_get(node.monitoring, "/metrics", None).await;
    assert!(
        metrics.contains(&format!("rigmesh_orderbook_offers {OFFERS}")),
        "{metrics}"
    );

    let customer = node.customer_api.unwrap();
    let token = read_token(dir.path(), Bootstrap::Customer).unwrap();
    let get = |path: String| {
        let token = token.clone();
        async move { common::http_get(customer, &path, Some(&token)).await }
    };

    // Pages of the default size, cheapest first, each starting where the
    // one before ended.
    let r = get(format!("/v1/offers?gpu={}", MODEL.replace(' ', "%20"))).await;
    assert_eq!(status(&r), 200, "{r}");
    let first = prices(&body(&r));
    assert_eq!(first.len(), 200, "the default page");
    assert_eq!(
        first[0],
        Credits::from_units(2_000_000),
        "the cheapest first"
    );
    assert!(first.windows(2).all(|w| w[0] <= w[1]));
    let mut cursor = next_cursor(&r).expect("more pages");
    let mut listed = first.len();
    let mut last = *first.last().unwrap();
    for _ in 0..3 {
        let r = get(format!("/v1/offers?limit=1000&cursor={cursor}")).await;
        assert_eq!(status(&r), 200, "{r}");
        let page = prices(&body(&r));
        assert_eq!(page.len(), 1000);
        assert!(page[0] >= last && page.windows(2).all(|w| w[0] <= w[1]));
        last = *page.last().unwrap();
        listed += page.len();
        cursor = next_cursor(&r).expect("more pages");
    }
    assert_eq!(listed, 3_200);

    // The public listener's statistics count every offer.
    let r = common::http_get(node.public_api, "/v1/market", None).await;
    assert_eq!(body(&r)["offers"], OFFERS, "{r}");
    assert_eq!(body(&r)["suppliers"], OFFERS / DEVICES_PER_KEY);
    let r = common::http_get(node.public_api, "/v1/offers?limit=1&region=ap", None).await;
    assert_eq!(body(&r)["total"], OFFERS / 3, "{r}");

    // A bid nothing meets is explained over all the model's offers.
    let h100s = OFFERS - OFFERS / 4;
    let bid = |max_price: &str| {
        format!(r#"{{"gpu":"{MODEL}","count":1,"max_price":"{max_price}","hours":1}}"#)
    };
    let r = common::http_post(customer, "/v1/bid", &token, &bid("1.50")).await;
    assert_eq!(status(&r), 404, "{r}");
    let reason = body(&r)["reason"].as_str().unwrap().to_string();
    assert!(
        reason.starts_with(&format!(
            "{h100s} offers for {MODEL}; {h100s} above your max price (cheapest 2.00)"
        )),
        "{reason}"
    );
    // A bid something meets takes the cheapest: offer 0, whose supplier has
    // no node binding here, so the node says whom it would have asked.
    let cheapest = {
        let mut seed = [0u8; 32];
        seed[8] = 1;
        Keypair::from_seed(seed)
    };
    let r = common::http_post(customer, "/v1/bid", &token, &bid("3.00")).await;
    let reason = body(&r)["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains(&format!(
            "no node binding known for supplier {}",
            cheapest.public()
        )),
        "{reason}"
    );

    // An offer stored after start, cheaper than all, is in the book at
    // once: listed first and chosen by the next bid.
    let newcomer = Keypair::from_seed([42; 32]);
    let mut cheaper = offer(&newcomer, OFFERS + 1, UnixMillis::now()).body;
    cheaper.gpu_model = MODEL.into();
    cheaper.price_per_gpu_hour = Credits::from_units(1_900_000);
    let cheaper = Signed::sign(cheaper, &newcomer).unwrap();
    // No peer is connected: stored, then not gossiped.
    let _ = node
        .handle
        .publish(&WireMessage::Offer(cheaper.clone()))
        .await;
    assert!(node
        .store
        .contains(Kind::Offer, &cheaper.id().unwrap())
        .unwrap());
    let r = get("/v1/offers?limit=1".into()).await;
    assert_eq!(prices(&body(&r)), [Credits::from_units(1_900_000)]);
    let r = common::http_post(customer, "/v1/bid", &token, &bid("3.00")).await;
    let reason = body(&r)["reason"].as_str().unwrap().to_string();
    assert!(reason.contains(&newcomer.public().to_string()), "{reason}");

    assert_eq!(
        node.store.offers_scanned(),
        scanned,
        "no listing, statistic or bid read the stored offers"
    );
    // Reading 100,000 offers into the book, listing, explaining a bid over
    // 75,000 offers: none of it held the executor up.
    let metrics = common::http_get(node.monitoring, "/metrics", None).await;
    let sample = |name: &str| common::sample(&metrics, name);
    let lag = sample("rigmesh_executor_lag_max_seconds");
    eprintln!("largest executor lateness: {:.1} ms", lag * 1e3);
    assert!(
        lag < MAX_EXECUTOR_LAG_SECS,
        "the executor was held up {lag:.3} s: something heavy ran on it"
    );
    // The node reports its own memory: at least its book of 100,000
    // offers (60 to 70 MB, BENCHMARKS.md), in bytes.
    let resident = sample("process_resident_memory_bytes");
    eprintln!("resident memory: {:.1} MB", resident / 1e6);
    assert!(resident > 50e6, "{resident}");
    node.stop().await.unwrap();
}
