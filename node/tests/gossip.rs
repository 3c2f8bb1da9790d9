//! Multi-node gossip with real libp2p nodes on loopback: propagation across
//! a random connected graph, rejection and banning of a misbehaving peer,
//! and catch-up sync after downtime.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use common::{connect, eventually, node, spawn, Rng, StoreExt, TestNode};
use rigmesh_node::network::{self, TOPICS};
use rigmesh_protocol::kind::TOPIC_OFFERS;
use rigmesh_protocol::rpc::GossipFrame;
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{
    samples, Credits, Id, Keypair, Kind, Offer, Signed, UnixMillis, PROTOCOL_VERSION,
};

fn offer(key: &Keypair, sequence: u64, created_at: UnixMillis) -> Signed<Offer> {
    Signed::sign(
        Offer {
            version: PROTOCOL_VERSION,
            supplier: key.public(),
            sequence,
            gpu_model: "NVIDIA A100-SXM4-80GB".into(),
            gpu_memory_mib: 81_920,
            gpu_count: 4,
            price_per_gpu_hour: Credits::from_units(1_790_000),
            min_hours: 1,
            max_hours: 48,
            region: "us-east".into(),
            hardware_fingerprint: Id::hardware_fingerprint(&["GPU-a", "GPU-b", "GPU-c", "GPU-d"]),
            created_at,
            expires_at: created_at.plus_ms(3_600_000),
        },
        key,
    )
    .unwrap()
}

async fn all_have(nodes: &[&TestNode], kind: Kind, id: Id) -> bool {
    nodes.iter().all(|n| n.store.has(kind, &id))
}

/// Waits until every node has at least one gossipsub peer on the offers
/// topic, so a publish has somewhere to go.
async fn settle(nodes: &[&TestNode]) {
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(TOPICS.len(), 5);
    for n in nodes {
        assert!(!n.handle.peers().await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_reaches_every_node_of_a_random_graph() {
    let mut nodes = Vec::new();
    for _ in 0..10 {
        nodes.push(node().await);
    }
    // A random spanning tree plus a few extra edges: connected, not a clique.
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for i in 1..nodes.len() {
        let j = rng.below(i);
        connect(&nodes[i], &nodes[j]).await;
    }
    for _ in 0..4 {
        let (a, b) = (rng.below(nodes.len()), rng.below(nodes.len()));
        if a != b
            && !nodes[a]
                .handle
                .peers()
                .await
                .unwrap()
                .contains(&nodes[b].peer_id())
        {
            connect(&nodes[a], &nodes[b]).await;
        }
    }
    let refs: Vec<&TestNode> = nodes.iter().collect();
    settle(&refs).await;

    let supplier = Keypair::generate().unwrap();
    let offer = offer(&supplier, 1, UnixMillis::now());
    let id = offer.id().unwrap();
    nodes[7]
        .handle
        .publish(&WireMessage::Offer(offer))
        .await
        .unwrap();
    eventually(15, "the offer in all 10 ledgers", || {
        all_have(&refs, Kind::Offer, id)
    })
    .await;
    for n in &nodes {
        assert_eq!(n.store.count(Kind::Offer), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_peer_is_rejected_everywhere_and_banned() {
    // Honest nodes in a line: h0 - h1 - h2 - h3; the bad node talks to h0 and h1.
    let mut honest = Vec::new();
    for _ in 0..4 {
        honest.push(node().await);
    }
    for i in 1..honest.len() {
        connect(&honest[i - 1], &honest[i]).await;
    }
    let bad = node().await;
    connect(&bad, &honest[0]).await;
    connect(&bad, &honest[1]).await;
    let mut all: Vec<&TestNode> = honest.iter().collect();
    all.push(&bad);
    settle(&all).await;

    let supplier = Keypair::generate().unwrap();
    let now = UnixMillis::now();
    // 1. A bad signature: a valid offer with its price changed after signing.
    let mut forged = offer(&supplier, 1, now);
    forged.body.price_per_gpu_hour = Credits::from_units(10_000);
    // 2. Expired: validly signed, but an hour and a half old.
    let expired = offer(&supplier, 2, now.minus_ms(5_400_000));
    // 3. Oversized: an offer frame past the offer size limit.
    let oversized = [forged.to_bytes().unwrap(), vec![0u8; 1500]].concat();
    // 4. Malformed: the offer tag and garbage.
    let malformed = vec![1u8, 0xde, 0xad, 0xbe, 0xef];
    let frames = vec![
        GossipFrame::encode(Kind::Offer, &forged.to_bytes().unwrap()),
        GossipFrame::encode(Kind::Offer, &expired.to_bytes().unwrap()),
        GossipFrame::encode(Kind::Offer, &oversized),
        malformed,
    ];
    for (sent, frame) in frames.into_iter().enumerate() {
        if let Err(err) = bad.handle.publish_unchecked(TOPIC_OFFERS, frame).await {
            // Its neighbours ban it at their third invalid message, so
            // the last frame may find nobody left to send it to.
            assert!(
                sent >= 3 && err.to_string().contains("NoPeersSubscribedToTopic"),
                "frame {sent}: {err}"
            );
            break;
        }
    }
    let bad_id = bad.peer_id();
    for h in &honest[..2] {
        let handle = h.handle.clone();
        eventually(10, "the bad peer banned by its neighbour", || {
            let handle = handle.clone();
            async move {
                !handle.peers().await.unwrap().contains(&bad_id)
                    && handle.stats().await.unwrap().banned == 1
            }
        })
        .await;
        // The swarm task hands the ban to the store's writer, which
        // records it a moment after the ban takes effect.
        let store = h.store.clone();
        eventually(10, "the ban stored by the neighbour", || {
            let store = store.clone();
            async move { !store.bans().is_empty() }
        })
        .await;
        let bans = h.store.bans();
        assert_eq!(bans.len(), 1, "the ban is stored once");
        assert_eq!(bans[0].peer, bad_id.to_bytes());
        assert!(bans[0].reason.contains("invalid messages"));
    }
    // Nothing invalid was stored by anyone, and nothing was forwarded to h2/h3.
    for h in &honest {
        assert_eq!(h.store.count(Kind::Offer), 0);
        assert_eq!(h.handle.stats().await.unwrap().accepted, 0);
    }
    assert_eq!(
        honest[3].handle.stats().await.unwrap().rejected,
        0,
        "invalid messages are never forwarded"
    );
    // The banned peer cannot come back.
    assert!(bad.handle.dial(honest[0].dial_addr()).await.is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!honest[0].handle.peers().await.unwrap().contains(&bad_id));

    // Honest traffic keeps flowing, and an old offer replayed after a newer
    // one does not replace it.
    let first = offer(&supplier, 5, UnixMillis::now());
    honest[3]
        .handle
        .publish(&WireMessage::Offer(first.clone()))
        .await
        .unwrap();
    let honest_refs: Vec<&TestNode> = honest.iter().collect();
    let first_id = first.id().unwrap();
    eventually(10, "honest offer everywhere", || {
        all_have(&honest_refs, Kind::Offer, first_id)
    })
    .await;
    let second = offer(&supplier, 6, UnixMillis::now());
    let second_id = second.id().unwrap();
    honest[3]
        .handle
        .publish(&WireMessage::Offer(second))
        .await
        .unwrap();
    eventually(10, "newer offer everywhere", || {
        all_have(&honest_refs, Kind::Offer, second_id)
    })
    .await;
    // The older one, published again from another node, is ignored as stale.
    let _ = honest[0]
        .handle
        .publish_unchecked(
            TOPIC_OFFERS,
            GossipFrame::encode(Kind::Offer, &first.to_bytes().unwrap()),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    for h in &honest {
        assert!(h.store.has(Kind::Offer, &second_id));
        assert!(
            !h.store.has(Kind::Offer, &first_id),
            "a replayed older offer replaced a newer one"
        );
        assert_eq!(h.store.count(Kind::Offer), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_down_catches_up_through_sync() {
    let set = samples::coordinator_set().unwrap();
    let a = spawn(
        Arc::new(common::temp_store()),
        libp2p::identity::Keypair::generate_ed25519(),
        common::config(),
        Some(set.clone()),
    )
    .await;
    let b_key = libp2p::identity::Keypair::generate_ed25519();
    let b_dir = tempfile::tempdir().unwrap();
    let b = spawn(
        Arc::new(common::MarketStore::open(b_dir.path()).unwrap()),
        b_key.clone(),
        common::config(),
        Some(set.clone()),
    )
    .await;
    connect(&a, &b).await;
    drop(b.stop().await);

    // While b is down, a learns two offers and a certificate.
    let supplier = Keypair::generate().unwrap();
    let offers: Vec<Signed<Offer>> = (0..2)
        .map(|i| {
            let mut o = offer(&supplier, 1, UnixMillis::now());
            o.body.hardware_fingerprint = Id::hardware_fingerprint(&[format!("GPU-{i}")]);
            Signed::sign(o.body, &supplier).unwrap()
        })
        .collect();
    for o in &offers {
        // No peer to gossip to: stored locally, publish reports it.
        let _ = a.handle.publish(&WireMessage::Offer(o.clone())).await;
        assert!(a.store.has(Kind::Offer, &o.id().unwrap()));
    }
    let cert = samples::escrow_certificate().unwrap();
    let _ = a
        .handle
        .publish(&WireMessage::EscrowCertificate(cert.clone()))
        .await;

    // b restarts from its ledger on disk, with the same identity, and
    // catches up.
    let b_store = common::MarketStore::open(b_dir.path()).unwrap();
    assert!(!b_store.has(Kind::Offer, &offers[0].id().unwrap()));
    let b = spawn(Arc::new(b_store), b_key, common::config(), Some(set)).await;
    connect(&b, &a).await;
    let subject = cert.subject().unwrap();
    let ids: Vec<Id> = offers.iter().map(|o| o.id().unwrap()).collect();
    let store = b.store.clone();
    eventually(10, "b has what it missed", || {
        let store = store.clone();
        let ids = ids.clone();
        async move {
            ids.iter().all(|id| store.has(Kind::Offer, id))
                && store.has(Kind::EscrowCertificate, &subject)
        }
    })
    .await;
    let _ = network::TOPICS;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_larger_than_the_ingest_queue_arrives_whole() {
    let set = samples::coordinator_set().unwrap();
    // a holds 600 offers of 20 suppliers (each within its quota).
    let a_store = Arc::new(common::temp_store());
    let now = UnixMillis::now();
    let mut ids = Vec::new();
    let mut accepted = Vec::new();
    for s in 0..20 {
        let supplier = Keypair::generate().unwrap();
        for i in 0..30 {
            let mut o = offer(&supplier, 1, now);
            o.body.hardware_fingerprint = Id::hardware_fingerprint(&[format!("GPU-{s}-{i}")]);
            let o = Signed::sign(o.body, &supplier).unwrap();
            let message = WireMessage::Offer(o);
            let bytes = message.to_bytes().unwrap();
            let id = message.id().unwrap();
            ids.push(id);
            accepted.push(network::store::AcceptedMessage { id, bytes, message });
        }
    }
    network::store::MessageStore::store(a_store.as_ref(), &accepted).unwrap();
    let a = spawn(
        a_store,
        libp2p::identity::Keypair::generate_ed25519(),
        common::config(),
        Some(set.clone()),
    )
    .await;
    // b's ingest queue takes 40 messages; a sync page brings 100.
    let mut small = common::config();
    small.limits.ingest_queue = 40;
    small.limits.ingest_batch = 8;
    let b = spawn(
        Arc::new(common::temp_store()),
        libp2p::identity::Keypair::generate_ed25519(),
        small,
        Some(set),
    )
    .await;
    connect(&b, &a).await;
    let store = b.store.clone();
    eventually(30, "b has every offer a held", || {
        let store = store.clone();
        let ids = ids.clone();
        async move { ids.iter().all(|id| store.has(Kind::Offer, id)) }
    })
    .await;
    assert_eq!(b.handle.stats().await.unwrap().dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_supplier_keeps_at_most_its_quota_of_offers_at_a_node() {
    let flooder = node().await;
    let honest = node().await;
    connect(&flooder, &honest).await;
    settle(&[&flooder, &honest]).await;

    // 80 validly signed offers of 80 made-up device sets from one key.
    let supplier = Keypair::generate().unwrap();
    let now = UnixMillis::now();
    let device_set = |n: u32, sequence: u64| {
        let mut o = offer(&supplier, sequence, now);
        o.body.hardware_fingerprint = Id::hardware_fingerprint(&[format!("GPU-{n}")]);
        Signed::sign(o.body, &supplier).unwrap()
    };
    let quota = rigmesh_ledger::market::quota_of(Kind::Offer).unwrap();
    assert!(quota < 80);
    for n in 0..80 {
        let frame = GossipFrame::encode(Kind::Offer, &device_set(n, 1).to_bytes().unwrap());
        flooder
            .handle
            .publish_unchecked(TOPIC_OFFERS, frame)
            .await
            .unwrap();
    }
    // Another supplier's offer, sent after the flood, still gets in; once
    // it is stored, the flood before it has been judged.
    let other = offer(&Keypair::generate().unwrap(), 1, now);
    let frame = GossipFrame::encode(Kind::Offer, &other.to_bytes().unwrap());
    flooder
        .handle
        .publish_unchecked(TOPIC_OFFERS, frame)
        .await
        .unwrap();
    let store = honest.store.clone();
    let other_id = other.id().unwrap();
    eventually(20, "the other supplier's offer", || {
        let store = store.clone();
        async move { store.has(Kind::Offer, &other_id) }
    })
    .await;
    let count = |store: &common::MarketStore| {
        store
            .author_count(Kind::Offer, &supplier.public(), usize::MAX)
            .unwrap()
    };
    assert_eq!(
        count(&honest.store),
        quota,
        "the first {quota} kept, the rest not"
    );
    assert_eq!(honest.store.count(Kind::Offer), quota + 1);

    // A new offer for a device set it already offers replaces the old one:
    // the supplier can still change its price at its quota.
    let renewed = device_set(0, 2);
    let frame = GossipFrame::encode(Kind::Offer, &renewed.to_bytes().unwrap());
    flooder
        .handle
        .publish_unchecked(TOPIC_OFFERS, frame)
        .await
        .unwrap();
    let renewed_id = renewed.id().unwrap();
    eventually(20, "the renewed offer", || {
        let store = store.clone();
        async move { store.has(Kind::Offer, &renewed_id) }
    })
    .await;
    assert!(!honest
        .store
        .has(Kind::Offer, &device_set(0, 1).id().unwrap()));
    assert_eq!(count(&honest.store), quota);
}
