//! The libp2p firewall between real nodes on loopback: per-peer request
//! budgets (a flooder is refused past its budget while another peer is
//! served), strikes that survive reconnecting, bans by peer and by address
//! that refuse new connections, survive a restart on the same data
//! directory and expire, and strikes that decay.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use common::{connect, eventually, spawn, MarketStore, StoreExt, TestNode};
use libp2p::identity::Keypair;
use rigmesh_node::network::{NetworkConfig, Offender, Protocol, RequestRate};
use rigmesh_protocol::rpc::{LeaseResponse, SyncRequest, SyncTopic};

fn config() -> NetworkConfig {
    let mut config = common::config();
    // Bans of loopback would cut every node of a test off; tests that want
    // address bans turn them on.
    config.limits.address_ban_threshold = 0;
    config
}

/// The node's metrics page.
fn metrics(node: &TestNode) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &node.registry).unwrap();
    text
}

/// The value of one metric line (name with its labels), 0 if absent.
fn metric(node: &TestNode, series: &str) -> f64 {
    metrics(node)
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A sync request that does not decode: a strike against its sender.
fn malformed_sync() -> Vec<u8> {
    vec![0xff; 9]
}

async fn send_malformed_sync(from: &TestNode, to: &TestNode) {
    // Never answered: the request fails, and the sender takes a strike.
    let _ = from
        .handle
        .request(to.peer_id(), Protocol::Sync, malformed_sync())
        .await;
}

/// Answers every request that reaches the application, whatever its
/// protocol, with the bytes of a lease `Accepted`: the tests only look at
/// whether an answer came.
fn accept_leases(node: &mut TestNode) -> tokio::task::JoinHandle<()> {
    let handle = node.handle.clone();
    let mut inbound = std::mem::replace(&mut node.inbound, tokio::sync::mpsc::channel(1).1);
    tokio::spawn(async move {
        while let Some(request) = inbound.recv().await {
            let answer = LeaseResponse::Accepted.to_bytes().unwrap();
            let _ = handle
                .respond(request.protocol, request.channel, answer)
                .await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_refused_past_its_budget_while_another_is_served() {
    common::logs();
    let mut limited = config();
    limited.limits.requests.lease = RequestRate {
        per_second: 1,
        burst: 5,
    };
    limited.limits.requests.sync = RequestRate {
        per_second: 1,
        burst: 6,
    };
    // Refusals alone never ban here: this test is about the budget.
    limited.limits.refusals_per_strike = 0;
    let mut supplier = spawn(
        Arc::new(common::temp_store()),
        Keypair::generate_ed25519(),
        limited,
        None,
    )
    .await;
    let flooder = common::node().await;
    let honest = common::node().await;
    connect(&flooder, &supplier).await;
    connect(&honest, &supplier).await;
    let _answers = accept_leases(&mut supplier);

    let request = rigmesh_protocol::rpc::LeaseRequest::Terminate(
        rigmesh_protocol::samples::lease_termination().unwrap(),
    )
    .to_bytes()
    .unwrap();
    let started = std::time::Instant::now();
    let asks = (0..30).map(|_| {
        flooder
            .handle
            .request(supplier.peer_id(), Protocol::Lease, request.clone())
    });
    let answers = futures::future::join_all(asks).await;
    let elapsed = started.elapsed().as_secs();
    let (mut accepted, mut refused) = (0u64, 0u64);
    for answer in answers {
        match LeaseResponse::from_bytes(&answer.unwrap()).unwrap() {
            LeaseResponse::Accepted => accepted += 1,
            LeaseResponse::Refused(reason) => {
                assert!(reason.starts_with("rate_limited"), "{reason}");
                refused += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // The burst, plus one a second while the flood lasted.
    assert!(
        accepted >= 5 && accepted <= 5 + elapsed + 1,
        "{accepted} accepted"
    );
    assert_eq!(accepted + refused, 30);

    // Another peer has its own budget and is served.
    for _ in 0..3 {
        let answer = honest
            .handle
            .request(supplier.peer_id(), Protocol::Lease, request.clone())
            .await
            .unwrap();
        assert_eq!(
            LeaseResponse::from_bytes(&answer).unwrap(),
            LeaseResponse::Accepted
        );
    }

    // Sync has no refusal: past the budget the stream closes empty. The
    // connection's own catch-up took two pages of the flooder's budget.
    let page = SyncRequest {
        topic: SyncTopic::Offers,
        after: None,
        limit: 10,
    }
    .to_bytes()
    .unwrap();
    let syncs = (0..20).map(|_| {
        flooder
            .handle
            .request(supplier.peer_id(), Protocol::Sync, page.clone())
    });
    let served = futures::future::join_all(syncs)
        .await
        .into_iter()
        .filter(Result::is_ok)
        .count();
    assert!((1..=8).contains(&served), "{served} sync pages served");
    assert!(honest
        .handle
        .request(supplier.peer_id(), Protocol::Sync, page)
        .await
        .is_ok());

    let stats = supplier.handle.stats().await.unwrap();
    assert!(stats.rate_limited >= refused + 12, "{stats:?}");
    assert_eq!(stats.banned, 0, "a budget is not a ban");
    assert_eq!(
        metric(
            &supplier,
            "rigmesh_net_rate_limited_total{protocol=\"lease\"}"
        ),
        refused as f64
    );
    assert!(
        metric(
            &supplier,
            "rigmesh_net_rate_limited_total{protocol=\"sync\"}"
        ) >= 12.0
    );
    assert!(supplier
        .handle
        .peers()
        .await
        .unwrap()
        .contains(&flooder.peer_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_keeps_flooding_past_its_refusals_is_banned() {
    common::logs();
    let mut limited = config();
    limited.limits.requests.coordinator = RequestRate {
        per_second: 1,
        burst: 2,
    };
    // Two refusals make a strike; three strikes a ban.
    limited.limits.refusals_per_strike = 2;
    let mut coordinator = spawn(
        Arc::new(common::temp_store()),
        Keypair::generate_ed25519(),
        limited,
        None,
    )
    .await;
    let flooder = common::node().await;
    let honest = common::node().await;
    connect(&flooder, &coordinator).await;
    connect(&honest, &coordinator).await;
    let _answers = accept_leases(&mut coordinator);
    let request = rigmesh_protocol::rpc::CoordinatorRequest::Account(
        rigmesh_protocol::samples::customer().public(),
    )
    .to_bytes()
    .unwrap();
    let asks = (0..20).map(|_| {
        flooder.handle.request(
            coordinator.peer_id(),
            Protocol::Coordinator,
            request.clone(),
        )
    });
    let _ = futures::future::join_all(asks).await;
    let flooder_id = flooder.peer_id();
    refused(&coordinator, flooder_id, "peer", 0.0).await;
    // The ban is written by the node's store writer, after the peer is
    // cut off: wait for the record rather than race it.
    let store = coordinator.store.clone();
    eventually(10, "the ban recorded", || {
        let store = store.clone();
        async move { !store.bans().is_empty() }
    })
    .await;
    let bans = coordinator.store.bans();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].peer, flooder_id.to_bytes());
    assert!(
        bans[0].reason.contains("rate_limited"),
        "{}",
        bans[0].reason
    );
    // The honest peer, on the same host, is still served.
    let answer = honest
        .handle
        .request(coordinator.peer_id(), Protocol::Coordinator, request)
        .await;
    assert!(answer.is_ok(), "{answer:?}");
}

/// Waits until `guard` no longer lists `peer` among its peers and has
/// refused at least `refusals` connections of `kind`.
async fn refused(guard: &TestNode, peer: libp2p::PeerId, kind: &str, refusals: f64) {
    let series = format!("rigmesh_net_refused_connections_total{{kind=\"{kind}\"}}");
    eventually(10, "the banned one refused", || {
        let handle = guard.handle.clone();
        let count = metric(guard, &series);
        async move { count >= refusals && !handle.peers().await.unwrap().contains(&peer) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strikes_and_bans_survive_reconnects_and_restarts_and_bans_expire() {
    common::logs();
    let dir = tempfile::tempdir().unwrap();
    let mut guarded = config();
    guarded.limits.ban_secs = 8;
    let guard_key = Keypair::generate_ed25519();
    let open = || Arc::new(MarketStore::open(dir.path()).unwrap());
    let guard = spawn(open(), guard_key.clone(), guarded.clone(), None).await;
    let bad_key = Keypair::generate_ed25519();
    let bad_id = bad_key.public().to_peer_id();

    // Two strikes, then the bad peer goes away and comes back.
    let bad = spawn(
        Arc::new(common::temp_store()),
        bad_key.clone(),
        config(),
        None,
    )
    .await;
    connect(&bad, &guard).await;
    send_malformed_sync(&bad, &guard).await;
    send_malformed_sync(&bad, &guard).await;
    bad.stop().await;
    eventually(10, "the bad peer gone", || {
        let handle = guard.handle.clone();
        async move { !handle.peers().await.unwrap().contains(&bad_id) }
    })
    .await;
    let standing = guard
        .handle
        .standing(Offender::Peer(bad_id))
        .await
        .unwrap()
        .expect("strikes kept after the disconnect");
    assert!(standing.strikes > 1.9, "{standing:?}");

    // The third strike, on a new connection, bans it.
    let bad = spawn(
        Arc::new(common::temp_store()),
        bad_key.clone(),
        config(),
        None,
    )
    .await;
    connect(&bad, &guard).await;
    send_malformed_sync(&bad, &guard).await;
    refused(&guard, bad_id, "peer", 0.0).await;
    assert_eq!(guard.handle.stats().await.unwrap().banned, 1);
    assert_eq!(
        metric(&guard, "rigmesh_net_active_bans{kind=\"peer\"}"),
        1.0
    );

    // Reconnecting is refused.
    let _ = bad.handle.dial(guard.dial_addr()).await;
    refused(&guard, bad_id, "peer", 1.0).await;

    // So it is after the guard restarts on the same data directory.
    let store = guard.stop().await;
    let bans = store.bans();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].peer, bad_id.to_bytes());
    assert!(bans[0].reason.contains("malformed_sync_request"));
    drop(store);
    let guard = spawn(open(), guard_key.clone(), guarded.clone(), None).await;
    assert_eq!(
        metric(&guard, "rigmesh_net_active_bans{kind=\"peer\"}"),
        1.0,
        "the restored ban counts"
    );
    let _ = bad.handle.dial(guard.dial_addr()).await;
    refused(&guard, bad_id, "peer", 1.0).await;
    let standing = guard
        .handle
        .standing(Offender::Peer(bad_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(standing.bans, 1);

    // The ban runs out (8 s from when it started); the peer is let back in.
    let (bad_handle, addr) = (bad.handle.clone(), guard.dial_addr());
    let handle = guard.handle.clone();
    eventually(30, "the ban expired and the peer reconnected", || {
        let (bad_handle, addr, handle) = (bad_handle.clone(), addr.clone(), handle.clone());
        async move {
            if handle.peers().await.unwrap().contains(&bad_id) {
                return true;
            }
            let _ = bad_handle.dial(addr).await;
            false
        }
    })
    .await;
    assert_eq!(
        metric(&guard, "rigmesh_net_active_bans{kind=\"peer\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_is_banned_whatever_peer_id_comes_from_it() {
    common::logs();
    let mut guarded = config();
    guarded.limits.ban_threshold = 100;
    guarded.limits.address_ban_threshold = 2;
    // Loopback is trusted by default; here it stands for a remote host.
    guarded.limits.trusted_addresses.clear();
    let guard = spawn(
        Arc::new(common::temp_store()),
        Keypair::generate_ed25519(),
        guarded,
        None,
    )
    .await;
    // Two peer ids from the same address, a strike each.
    for _ in 0..2 {
        let bad = common::node().await;
        connect(&bad, &guard).await;
        send_malformed_sync(&bad, &guard).await;
        if guard.handle.stats().await.unwrap().banned == 0 {
            bad.stop().await;
        }
    }
    let loopback = Offender::Address([127, 0, 0, 1].into());
    let handle = guard.handle.clone();
    eventually(10, "the address banned", || {
        let handle = handle.clone();
        async move {
            handle
                .standing(loopback)
                .await
                .unwrap()
                .is_some_and(|s| s.bans == 1)
        }
    })
    .await;
    let store = guard.store.clone();
    eventually(10, "the address ban recorded", || {
        let store = store.clone();
        async move { !store.bans().is_empty() }
    })
    .await;
    let bans = guard.store.bans();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].peer, loopback.to_bytes());

    // A fresh peer id from that address is refused before its handshake.
    let fresh = common::node().await;
    let _ = fresh.handle.dial(guard.dial_addr()).await;
    refused(&guard, fresh.peer_id(), "address", 1.0).await;
    assert_eq!(
        metric(&guard, "rigmesh_net_active_bans{kind=\"address\"}"),
        1.0
    );
    assert!(metric(&guard, "rigmesh_net_strikes_total{kind=\"address\"}") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strikes_decay_so_an_occasional_error_never_bans() {
    common::logs();
    let mut guarded = config();
    guarded.limits.strike_half_life_secs = 1;
    let guard = spawn(
        Arc::new(common::temp_store()),
        Keypair::generate_ed25519(),
        guarded,
        None,
    )
    .await;
    let peer = common::node().await;
    connect(&peer, &guard).await;
    let who = Offender::Peer(peer.peer_id());
    for _ in 0..3 {
        // Two errors, then quiet until they have mostly decayed.
        send_malformed_sync(&peer, &guard).await;
        send_malformed_sync(&peer, &guard).await;
        let handle = guard.handle.clone();
        eventually(20, "the strikes decayed", || {
            let handle = handle.clone();
            async move {
                handle
                    .standing(who)
                    .await
                    .unwrap()
                    .is_some_and(|s| s.strikes < 0.3)
            }
        })
        .await;
    }
    let stats = guard.handle.stats().await.unwrap();
    assert_eq!(stats.banned, 0, "six errors in all, never three at once");
    assert!(guard
        .handle
        .peers()
        .await
        .unwrap()
        .contains(&peer.peer_id()));
    assert_eq!(
        metric(&guard, "rigmesh_net_strikes_total{kind=\"peer\"}"),
        6.0
    );
}
