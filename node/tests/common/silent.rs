//! A supplier that agrees and then says nothing, for tests of what a
//! customer does while a supplier holds its requests.

#![allow(dead_code, unreachable_pub)]

use rigmesh_node::network::Protocol;
use rigmesh_node::node::RunningNode;
use rigmesh_protocol::rpc::{LeaseRequest, LeaseResponse};
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{Id, Keypair, Offer, Signed, UnixMillis, PROTOCOL_VERSION};

use super::common::{self, eventually};
use super::offers;

/// The model only the silent supplier offers.
pub const SILENT_MODEL: &str = "RTX4090";

/// A supplier that never answers: a raw libp2p node, dialled by
/// `customer`, that gossips an offer of two [`SILENT_MODEL`] GPUs and a node
/// binding naming it, and holds every request it gets. Returns once the
/// customer has both (and those of `also`, another supplier's account).
pub async fn silent_supplier(
    customer: &RunningNode,
    also: Option<rigmesh_protocol::PublicKey>,
) -> common::TestNode {
    // Its own side gives up on a request much later than the customer.
    let mut quiet = common::config();
    quiet.limits.request_timeout_secs = 120;
    let silent = common::spawn(
        std::sync::Arc::new(common::temp_store()),
        libp2p::identity::Keypair::generate_ed25519(),
        quiet,
        None,
    )
    .await;
    customer.handle.dial(silent.dial_addr()).await.unwrap();
    let key = silent_key();
    let offer = WireMessage::Offer(offers::offer(&key, SILENT_MODEL, 1_000_000, "eu"));
    let now = UnixMillis::now();
    let binding = WireMessage::NodeBinding(
        Signed::sign(
            rigmesh_protocol::NodeBinding {
                version: PROTOCOL_VERSION,
                account: key.public(),
                peer_id: silent.peer_id().to_bytes(),
                created_at: now,
                expires_at: now.plus_ms(3_600_000),
            },
            &key,
        )
        .unwrap(),
    );
    let (store, handle) = (customer.store.clone(), silent.handle.clone());
    let suppliers: Vec<_> = [Some(key.public()), also].into_iter().flatten().collect();
    eventually(
        20,
        "the suppliers' offers and bindings at the customer",
        || {
            let (store, handle) = (store.clone(), handle.clone());
            let (offer, binding, suppliers) = (offer.clone(), binding.clone(), suppliers.clone());
            async move {
                let _ = handle.publish(&offer).await;
                let _ = handle.publish(&binding).await;
                let now = UnixMillis::now();
                let offers = store.all::<Offer>(now).unwrap();
                let bindings = store.all::<rigmesh_protocol::NodeBinding>(now).unwrap();
                suppliers.iter().all(|s| {
                    offers.iter().any(|o| o.body.supplier == *s)
                        && bindings.iter().any(|n| n.body.account == *s)
                })
            }
        },
    )
    .await;
    silent
}

/// The silent supplier's account.
pub fn silent_key() -> Keypair {
    Keypair::from_seed([0x5b; 32])
}

/// The lease proposal `customer` sent the silent supplier, held unanswered.
pub async fn held_proposal(
    silent: &mut common::TestNode,
    customer: &RunningNode,
) -> rigmesh_node::network::InboundRequest {
    let proposal = held_request(silent, "the proposal").await;
    assert_eq!(proposal.peer, customer.peer_id);
    proposal
}

/// The next lease request the silent supplier gets (`what`, for the
/// failure message), held unanswered.
pub async fn held_request(
    silent: &mut common::TestNode,
    what: &str,
) -> rigmesh_node::network::InboundRequest {
    let request = tokio::time::timeout(std::time::Duration::from_secs(20), silent.inbound.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} reaches the silent supplier"))
        .unwrap();
    assert_eq!(request.protocol, Protocol::Lease);
    request
}

/// The silent supplier agrees to the lease `request` proposes (on two
/// GPUs of its own), and answers nothing more.
pub async fn agree(silent: &common::TestNode, request: rigmesh_node::network::InboundRequest) {
    let Ok(LeaseRequest::Propose(proposal)) = LeaseRequest::from_bytes(&request.bytes) else {
        panic!("a lease proposal");
    };
    let now = UnixMillis::now();
    let agreement = Signed::sign(
        rigmesh_protocol::LeaseAgreement {
            version: PROTOCOL_VERSION,
            supplier: silent_key().public(),
            hardware_fingerprint: Id::hardware_fingerprint(&["GPU-silent-0", "GPU-silent-1"]),
            gpu_indices: vec![0, 1],
            starts_at: now,
            ends_at: now.plus_ms(u64::from(proposal.body.hours) * 3_600_000),
            created_at: now,
            proposal,
        },
        &silent_key(),
    )
    .unwrap();
    silent
        .handle
        .respond(
            Protocol::Lease,
            request.channel,
            LeaseResponse::Agreed(Box::new(agreement))
                .to_bytes()
                .unwrap(),
        )
        .await
        .unwrap();
}

/// The silent supplier answers a request it held `Accepted` (a `Fund` or a
/// `Terminate` taken).
pub async fn accept(silent: &common::TestNode, request: rigmesh_node::network::InboundRequest) {
    silent
        .handle
        .respond(
            Protocol::Lease,
            request.channel,
            LeaseResponse::Accepted.to_bytes().unwrap(),
        )
        .await
        .unwrap();
}
