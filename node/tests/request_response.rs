//! Request-response between real nodes on loopback: a lease proposal and
//! its answer make the round trip; a request over the protocol's size limit
//! is refused and the responder never sees it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{connect, node};
use rigmesh_node::network::Protocol;
use rigmesh_protocol::rpc::{LeaseRequest, LeaseResponse};
use rigmesh_protocol::samples;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_request_round_trip_and_size_limit() {
    let customer = node().await;
    let mut supplier = node().await;
    connect(&customer, &supplier).await;

    // The supplier's application answers proposals.
    let handle = supplier.handle.clone();
    let responder = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(request) = supplier.inbound.recv().await {
            assert_eq!(request.protocol, Protocol::Lease);
            let LeaseRequest::Propose(proposal) = LeaseRequest::from_bytes(&request.bytes).unwrap()
            else {
                panic!("expected a proposal");
            };
            seen.push(proposal.id().unwrap());
            let answer = LeaseResponse::Agreed(Box::new(samples::lease_agreement().unwrap()));
            handle
                .respond(Protocol::Lease, request.channel, answer.to_bytes().unwrap())
                .await
                .unwrap();
            if seen.len() == 2 {
                return seen;
            }
        }
        seen
    });

    let proposal = samples::lease_proposal().unwrap();
    let request = LeaseRequest::Propose(proposal.clone()).to_bytes().unwrap();
    let response = customer
        .handle
        .request(supplier.handle.peer_id(), Protocol::Lease, request.clone())
        .await
        .unwrap();
    let LeaseResponse::Agreed(agreement) = LeaseResponse::from_bytes(&response).unwrap() else {
        panic!("expected an agreement");
    };
    assert_eq!(agreement.body.proposal, proposal);

    // Over the 4 KiB lease-request limit: refused locally before sending.
    let oversized = vec![7u8; LeaseRequest::MAX_SIZE + 1];
    let err = customer
        .handle
        .request(supplier.handle.peer_id(), Protocol::Lease, oversized)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("network"), "{err}");

    // The connection is still good for the next valid request.
    let response = customer
        .handle
        .request(supplier.handle.peer_id(), Protocol::Lease, request)
        .await
        .unwrap();
    assert!(LeaseResponse::from_bytes(&response).is_ok());
    let seen = tokio::time::timeout(Duration::from_secs(5), responder)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen.len(),
        2,
        "the oversized request never reached the supplier"
    );
}
