//! Offer propagation across a 30-node loopback network: the time from
//! `publish` at one node until the offer is in every node's store, over
//! many offers published from random nodes. Prints the median and p99
//! beside the target (p99 under 1 s).
//!
//! Run: `cargo bench -p rigmesh-node --bench propagation`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use rigmesh_node::network::store::{OffenceState, StoreResult};
use rigmesh_node::network::{
    self, AcceptedMessage, MessageStore, NetworkConfig, PeerBan, SyncPage,
};
use rigmesh_protocol::rpc::SyncTopic;
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{
    Credits, Id, Keypair, Kind, Offer, PublicKey, Signed, UnixMillis, PROTOCOL_VERSION,
};

const NODES: usize = 30;
const OFFERS: usize = 60;

/// Propagation is a network measure; the store only records arrivals.
#[derive(Default)]
struct Arrivals(Mutex<HashSet<Id>>);

impl MessageStore for Arrivals {
    fn contains(&self, _: Kind, id: &Id) -> StoreResult<bool> {
        Ok(self.0.lock().unwrap().contains(id))
    }
    fn offer_sequence(&self, _: &PublicKey, _: &Id) -> StoreResult<Option<u64>> {
        Ok(None)
    }
    fn author_count(&self, _: Kind, _: &PublicKey, _: usize) -> StoreResult<usize> {
        Ok(0)
    }
    fn store(&self, batch: &[AcceptedMessage]) -> StoreResult<()> {
        self.0.lock().unwrap().extend(batch.iter().map(|m| m.id));
        Ok(())
    }
    fn sync_page(
        &self,
        _: SyncTopic,
        _: Option<&[u8]>,
        _: usize,
        _: UnixMillis,
    ) -> StoreResult<SyncPage> {
        Ok(SyncPage::default())
    }
    fn save_offences(&self, _: &[OffenceState], _: &[PeerBan]) -> StoreResult<()> {
        Ok(())
    }
    fn offences(&self) -> StoreResult<Vec<OffenceState>> {
        Ok(Vec::new())
    }
    fn active_bans(&self, _: UnixMillis) -> StoreResult<Vec<PeerBan>> {
        Ok(Vec::new())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut config = NetworkConfig::loopback();
    config.discovery = false;
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        let store = Arc::new(Arrivals::default());
        let mut registry = Registry::default();
        let net = network::start(
            &config,
            libp2p::identity::Keypair::generate_ed25519(),
            store.clone(),
            None,
            &mut registry,
            std::future::pending(),
        )
        .await
        .unwrap();
        let addr = net.handle.listen_addrs().await.unwrap()[0].clone();
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
    tokio::time::sleep(Duration::from_secs(4)).await;

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
        loop {
            if nodes
                .iter()
                .all(|(_, store, _, _)| store.0.lock().unwrap().contains(&id))
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                panic!("offer {n} did not reach all {NODES} nodes in 10 s");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        times.push(start.elapsed());
    }
    times.sort();
    let median = percentile(&times, 0.5);
    let p99 = percentile(&times, 0.99);
    println!("offer propagation to all {NODES} nodes ({edges} links, {OFFERS} offers):");
    println!(
        "  median {:.1} ms, p99 {:.1} ms, max {:.1} ms (target: p99 < 1000 ms)",
        median.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    println!("  p99 / target = {:.3}", p99.as_secs_f64() / 1.0);
}
