//! Offer propagation across a 100-node loopback network, each node with
//! its own sled gossip store on disk (as a node runs): the time from
//! `publish` at one node until the offer is stored at every node (each
//! node's ingest announces what it stored), over many offers published
//! from random nodes. Prints the median and p99 beside the target (p99
//! under 500 ms).
//!
//! Run: `cargo bench -p rigmesh-node --bench propagation`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use rigmesh_ledger::MarketStore;
use rigmesh_node::network::{self, NetworkConfig};
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{Credits, Id, Keypair, Offer, Signed, UnixMillis, PROTOCOL_VERSION};

const NODES: usize = 100;
const OFFERS: usize = 100;
/// The target for the 99th percentile.
const TARGET: Duration = Duration::from_millis(500);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut config = NetworkConfig::loopback();
    config.discovery = false;
    let dir = tempfile::tempdir().unwrap();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::channel::<(usize, Id, Instant)>(64 * NODES);
    let mut nodes = Vec::new();
    for i in 0..NODES {
        let store = Arc::new(MarketStore::open(&dir.path().join(format!("node-{i}"))).unwrap());
        let mut registry = Registry::default();
        let net = network::start(
            &config,
            libp2p::identity::Keypair::generate_ed25519(),
            store.clone(),
            None,
            None,
            &mut registry,
            std::future::pending(),
        )
        .await
        .unwrap();
        let addr = net.handle.listen_addrs().await.unwrap()[0].clone();
        let mut stored = net.handle.subscribe();
        let tx = arrived_tx.clone();
        tokio::spawn(async move {
            while let Ok(message) = stored.recv().await {
                let _ = tx.send((i, message.id, Instant::now())).await;
            }
        });
        nodes.push((net.handle, store, addr, net.inbound));
    }
    // A random connected graph of mean degree about 4: a spanning tree plus
    // random extra edges (xorshift, fixed seed).
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut edges = 0;
    for i in 1..NODES {
        let j = next(i);
        let target = nodes[j]
            .2
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(nodes[j].0.peer_id()));
        nodes[i].0.dial(target).await.unwrap();
        edges += 1;
    }
    while edges < NODES * 2 {
        let (a, b) = (next(NODES), next(NODES));
        if a != b {
            let target = nodes[b]
                .2
                .clone()
                .with(libp2p::multiaddr::Protocol::P2p(nodes[b].0.peer_id()));
            nodes[a].0.dial(target).await.unwrap();
            edges += 1;
        }
    }
    // Let connections, subscriptions and meshes form.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let supplier = Keypair::generate().unwrap();
    let mut times = Vec::with_capacity(OFFERS);
    for n in 0..OFFERS {
        let now = UnixMillis::now();
        let offer = Signed::sign(
            Offer {
                version: PROTOCOL_VERSION,
                supplier: supplier.public(),
                sequence: n as u64 + 1,
                gpu_model: "NVIDIA H100 80GB HBM3".into(),
                gpu_memory_mib: 81_559,
                gpu_count: 8,
                price_per_gpu_hour: Credits::from_units(2_490_000),
                min_hours: 1,
                max_hours: 24,
                region: "eu-west".into(),
                hardware_fingerprint: Id::hardware_fingerprint(&["GPU-bench"]),
                created_at: now,
                expires_at: now.plus_ms(3_600_000),
            },
            &supplier,
        )
        .unwrap();
        let id = offer.id().unwrap();
        let from = next(NODES);
        let start = Instant::now();
        nodes[from]
            .0
            .publish(&WireMessage::Offer(offer))
            .await
            .unwrap();
        // Every node announces the offer once stored (the publisher too).
        let mut reached: HashMap<usize, Instant> = HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while reached.len() < NODES {
            match tokio::time::timeout_at(deadline, arrived.recv()).await {
                Ok(Some((node, got, at))) if got == id => {
                    reached.insert(node, at);
                }
                Ok(Some(_)) => {}
                _ => panic!(
                    "offer {n} reached {} of {NODES} nodes in 10 s",
                    reached.len()
                ),
            }
        }
        let last = reached.values().max().copied().unwrap_or(start);
        times.push(last.duration_since(start));
    }
    times.sort();
    let median = percentile(&times, 0.5);
    let p99 = percentile(&times, 0.99);
    println!("offer propagation to all {NODES} nodes ({edges} links, {OFFERS} offers):");
    println!(
        "  median {:.1} ms, p99 {:.1} ms, max {:.1} ms (target: p99 < {} ms)",
        median.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        TARGET.as_millis()
    );
    println!(
        "  p99 / target = {:.3}",
        p99.as_secs_f64() / TARGET.as_secs_f64()
    );
}
