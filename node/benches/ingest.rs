//! Ingest throughput on one node: signed offers pushed through the whole
//! pipeline (frame, decode, field and time checks, batched signature
//! verification, ledger checks, one batched sled write per batch), beside
//! the raw ed25519 batch-verification rate of the same signatures measured
//! in the same run, which is the physical limit here. Target: ratio >= 0.5.
//!
//! Run: `cargo bench -p rigmesh-node --bench ingest`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Instant;

use libp2p::PeerId;
use rigmesh_ledger::MarketStore;
use rigmesh_node::network::ingest::{Ingest, IngestItem, Outcome};
use rigmesh_protocol::crypto::{self, VerifyItem};
use rigmesh_protocol::kind::TOPIC_OFFERS;
use rigmesh_protocol::rpc::GossipFrame;
use rigmesh_protocol::{
    Clock, Credits, Id, Keypair, Kind, Offer, Signed, UnixMillis, PROTOCOL_VERSION,
};

const MESSAGES: usize = 20_000;
const BATCH: usize = 256;

fn offers(now: UnixMillis) -> Vec<Signed<Offer>> {
    let suppliers: Vec<Keypair> = (0..64u8).map(|i| Keypair::from_seed([i; 32])).collect();
    (0..MESSAGES)
        .map(|n| {
            let key = &suppliers[n % suppliers.len()];
            Signed::sign(
                Offer {
                    version: PROTOCOL_VERSION,
                    supplier: key.public(),
                    sequence: 1,
                    gpu_model: "NVIDIA H100 80GB HBM3".into(),
                    gpu_memory_mib: 81_559,
                    gpu_count: 8,
                    price_per_gpu_hour: Credits::from_units(2_000_000 + n as i64),
                    min_hours: 1,
                    max_hours: 24,
                    region: "eu-west".into(),
                    hardware_fingerprint: Id::hardware_fingerprint(&[format!("GPU-{n}")]),
                    created_at: now,
                    expires_at: now.plus_ms(3_600_000),
                },
                key,
            )
            .unwrap()
        })
        .collect()
}

fn main() {
    let now = UnixMillis::now();
    let offers = offers(now);

    // The raw limit: batch verification of exactly these signatures.
    let items: Vec<VerifyItem> = offers
        .iter()
        .flat_map(|o| o.verify_items().unwrap())
        .collect();
    let start = Instant::now();
    for chunk in items.chunks(BATCH) {
        assert!(crypto::verify_batch(chunk).iter().all(Result::is_ok));
    }
    let raw = MESSAGES as f64 / start.elapsed().as_secs_f64();

    // The pipeline, persisting to sled on disk.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MarketStore::open(dir.path()).unwrap());
    let ingest = Ingest::new(store.clone(), None);
    let source = PeerId::random();
    let frames: Vec<IngestItem> = offers
        .iter()
        .map(|o| IngestItem {
            source,
            message_id: None,
            topic: TOPIC_OFFERS.to_string(),
            data: GossipFrame::encode(Kind::Offer, &o.to_bytes().unwrap()),
            received: Instant::now(),
        })
        .collect();
    let clock = Clock::at(now);
    let start = Instant::now();
    let mut accepted = 0;
    for chunk in frames.chunks(BATCH) {
        accepted += ingest
            .process(chunk, &clock)
            .iter()
            .filter(|o| **o == Outcome::Accept)
            .count();
    }
    store.flush().unwrap();
    let pipeline = MESSAGES as f64 / start.elapsed().as_secs_f64();
    assert_eq!(accepted, MESSAGES, "every offer is new and valid");
    assert_eq!(store.count(Kind::Offer), MESSAGES);

    println!("ingest of {MESSAGES} signed offers in batches of {BATCH}:");
    println!("  raw ed25519 batch verify: {raw:>9.0} msg/s");
    println!("  validated + persisted:    {pipeline:>9.0} msg/s");
    println!(
        "  ratio pipeline/raw = {:.2} (target >= 0.5)",
        pipeline / raw
    );
}
