//! NAT traversal between real nodes on loopback: a supplier that listens
//! only through a relay (as one behind NAT does) is reached by a customer
//! that knows nothing but the relay; the lease request makes the round
//! trip over the circuit, and the metrics count the relayed connection,
//! the reservation and the hole punch DCUtR tried on it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use common::{config, connect, eventually, spawn, temp_store, TestNode};
use libp2p::identity::Keypair;
use prometheus_client::encoding::text::encode;
use rigmesh_node::network::{Protocol, UseRelay};
use rigmesh_protocol::rpc::{LeaseRequest, LeaseResponse};
use rigmesh_protocol::samples;

fn metrics(node: &TestNode) -> String {
    let mut text = String::new();
    encode(&mut text, &node.registry).unwrap();
    text
}

/// The value of one series in a metrics page, 0 when absent.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_reachable_only_through_a_relay_gets_its_lease_request() {
    common::logs();
    // The relay: what a coordinator is by default.
    let mut relay_config = config();
    relay_config.relay.serve = Some(true);
    relay_config.nat.autonat = false;
    let relay = spawn(
        Arc::new(temp_store()),
        Keypair::generate_ed25519(),
        relay_config,
        None,
    )
    .await;

    // The supplier listens through the relay from the start, as a rig
    // behind NAT does once AutoNAT has found it private.
    let mut supplier_config = config();
    supplier_config.nat.autonat = false;
    supplier_config.nat.use_relay = UseRelay::Always;
    supplier_config.nat.relays = vec![relay.dial_addr()];
    let mut supplier = spawn(
        Arc::new(temp_store()),
        Keypair::generate_ed25519(),
        supplier_config,
        None,
    )
    .await;
    let handle = supplier.handle.clone();
    eventually(10, "the supplier's relayed address", || {
        let handle = handle.clone();
        async move {
            let stats = handle.stats().await.unwrap();
            stats.relayed_addrs.len() == 1 && stats.relay_reservations == 1
        }
    })
    .await;
    let relayed = supplier.handle.stats().await.unwrap().relayed_addrs[0].clone();
    assert!(relayed.contains("/p2p-circuit"), "{relayed}");
    assert!(
        relayed.contains(&relay.peer_id().to_string()),
        "through the relay: {relayed}"
    );
    assert!(metrics(&supplier).contains("rigmesh_net_relay_reservations 1"));

    // The customer knows the relay only; it learns that the relay serves
    // (identify) and dials the supplier through it.
    let mut customer_config = config();
    customer_config.nat.autonat = false;
    let customer = spawn(
        Arc::new(temp_store()),
        Keypair::generate_ed25519(),
        customer_config,
        None,
    )
    .await;
    connect(&customer, &relay).await;

    let responder_handle = supplier.handle.clone();
    let responder = tokio::spawn(async move {
        let request = supplier.inbound.recv().await.unwrap();
        assert_eq!(request.protocol, Protocol::Lease);
        let answer = LeaseResponse::Agreed(Box::new(samples::lease_agreement().unwrap()));
        responder_handle
            .respond(Protocol::Lease, request.channel, answer.to_bytes().unwrap())
            .await
            .unwrap();
        supplier
    });

    // The customer may learn of the relay a moment after the connection.
    let proposal = samples::lease_proposal().unwrap();
    let request = LeaseRequest::Propose(proposal.clone()).to_bytes().unwrap();
    let supplier_id = handle.peer_id();
    let mut answer = None;
    for _ in 0..50 {
        match customer
            .handle
            .request(supplier_id, Protocol::Lease, request.clone())
            .await
        {
            Ok(bytes) => {
                answer = Some(bytes);
                break;
            }
            Err(e) => {
                tracing::debug!(%e, "not through yet");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    let answer = answer.expect("the request reached the supplier through the relay");
    let LeaseResponse::Agreed(agreement) = LeaseResponse::from_bytes(&answer).unwrap() else {
        panic!("expected an agreement");
    };
    assert_eq!(agreement.body.proposal, proposal);
    let supplier = responder.await.unwrap();

    // The first connection between them went through the relay, and the
    // relay counted the circuit it carried.
    let page = metrics(&customer);
    assert!(
        series(
            &page,
            r#"rigmesh_net_connections_opened_total{kind="relayed"}"#
        ) >= 1.0,
        "{page}"
    );
    assert!(
        series(&metrics(&relay), "rigmesh_net_relayed_circuits_total") >= 1.0,
        "the relay carried the circuit"
    );
    // DCUtR tries to upgrade the relayed connection (the end that dialled
    // through the relay reports it); on loopback both ends are directly
    // reachable, so the hole punch succeeds and a direct connection joins
    // the relayed one.
    let (customer_handle, supplier_handle) = (customer.handle.clone(), supplier.handle.clone());
    eventually(20, "a hole punch reported", || {
        let (c, s) = (customer_handle.clone(), supplier_handle.clone());
        async move {
            let (c, s) = (c.stats().await.unwrap(), s.stats().await.unwrap());
            c.hole_punch_successes
                + c.hole_punch_failures
                + s.hole_punch_successes
                + s.hole_punch_failures
                >= 1
        }
    })
    .await;
    let c = customer.handle.stats().await.unwrap();
    let s = supplier.handle.stats().await.unwrap();
    assert_eq!(
        c.hole_punch_successes + s.hole_punch_successes,
        1,
        "customer {c:?}\nsupplier {s:?}"
    );
    assert!(c.direct_connections >= 1, "{c:?}");
    let (customer_page, supplier_page) = (metrics(&customer), metrics(&supplier));
    let successes: f64 = [&customer_page, &supplier_page]
        .iter()
        .map(|p| series(p, r#"rigmesh_net_hole_punches_total{outcome="success"}"#))
        .sum();
    assert_eq!(successes, 1.0, "{customer_page}\n{supplier_page}");
    assert!(series(&supplier_page, "rigmesh_net_hole_punch_attempts_total") >= 1.0);

    customer.stop().await;
    supplier.stop().await;
    relay.stop().await;
}
