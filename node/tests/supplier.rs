//! A supplier node on simulated GPUs and a customer on loopback: the
//! supplier's offer reaches the customer by gossip, the customer leases two
//! GPUs over request-response, and signed, chained attestations of each
//! metering window arrive in the customer's ledger.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{eventually, node};
use rigmesh_node::config::{NodeConfig, Role};
use rigmesh_node::network::Protocol;
use rigmesh_node::supplier::SupplierConfig;
use rigmesh_node::telemetry::{GpuSourceConfig, SimProfile, SimSpec};
use rigmesh_protocol::rpc::{LeaseRequest, LeaseResponse};
use rigmesh_protocol::{
    Clock, Id, Keypair, Kind, LeaseProposal, Offer, Signed, UnixMillis, UsageAttestation,
    PROTOCOL_VERSION,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_leases_simulated_gpus_and_receives_attestations() {
    let model = SimProfile::builtin("a100x4").unwrap().gpus[0].model.clone();
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig {
        role: Role::Supplier,
        data_dir: dir.path().to_path_buf(),
        network: common::config(),
        monitoring: "127.0.0.1:0".parse().unwrap(),
        customer_api: "127.0.0.1:0".parse().unwrap(),
        supplier_api: "127.0.0.1:0".parse().unwrap(),
        public_api: "127.0.0.1:0".parse().unwrap(),
        analytics_api: "127.0.0.1:0".parse().unwrap(),
        operator_api: "127.0.0.1:0".parse().unwrap(),
        supplier: SupplierConfig {
            gpus: GpuSourceConfig::Sim(SimSpec::Builtin("a100x4".into())),
            prices: [(model.clone(), "1.80".parse().unwrap())].into(),
            ..SupplierConfig::default()
        },
        ..NodeConfig::default()
    };
    config.network.discovery = false;
    let supplier = rigmesh_node::node::start(config).await.unwrap();

    let customer = node().await;
    let addr = supplier.listen_addrs[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(supplier.peer_id));
    customer.handle.dial(addr).await.unwrap();

    // The offer arrives by gossip (or by sync on connecting).
    let store = customer.store.clone();
    eventually(15, "the supplier's offer at the customer", || {
        let store = store.clone();
        async move { store.count(Kind::Offer) == 1 }
    })
    .await;
    let page = customer
        .store
        .page(&[Kind::Offer], None, 10, UnixMillis::now())
        .unwrap();
    let offer = Signed::<Offer>::from_bytes(&page.items[0].1).unwrap();
    assert_eq!(offer.body.gpu_model, model);
    assert_eq!(offer.body.gpu_count, 4);

    let me = Keypair::generate().unwrap();
    let now = UnixMillis::now();
    let proposal = Signed::sign(
        LeaseProposal {
            version: PROTOCOL_VERSION,
            customer: me.public(),
            supplier: offer.body.supplier,
            offer: offer.id().unwrap(),
            gpu_count: 2,
            price_per_gpu_hour: offer.body.price_per_gpu_hour,
            hours: 1,
            window_secs: 1,
            nonce: 1,
            created_at: now,
            expires_at: now.plus_ms(60_000),
        },
        &me,
    )
    .unwrap();
    let response = customer
        .handle
        .request(
            supplier.peer_id,
            Protocol::Lease,
            LeaseRequest::Propose(proposal.clone()).to_bytes().unwrap(),
        )
        .await
        .unwrap();
    let LeaseResponse::Agreed(agreement) = LeaseResponse::from_bytes(&response).unwrap() else {
        panic!("refused: {response:?}");
    };
    agreement.verify(&Clock::system()).unwrap();
    assert_eq!(agreement.body.proposal, proposal);
    let lease = agreement.id().unwrap();

    // A second proposal for 3 GPUs: only 2 are free now.
    let mut greedy = proposal.body.clone();
    greedy.gpu_count = 3;
    greedy.nonce = 2;
    let greedy = Signed::sign(greedy, &me).unwrap();
    let response = customer
        .handle
        .request(
            supplier.peer_id,
            Protocol::Lease,
            LeaseRequest::Propose(greedy).to_bytes().unwrap(),
        )
        .await
        .unwrap();
    match LeaseResponse::from_bytes(&response).unwrap() {
        LeaseResponse::Refused(reason) => {
            assert!(reason.contains("3 GPUs asked for, 2 free"), "{reason}")
        }
        LeaseResponse::Agreed(_) => panic!("leased GPUs twice"),
        LeaseResponse::Accepted => panic!("a proposal answered with Accepted"),
    }

    // Attestations of the 1 s windows arrive by gossip, chained.
    let store = customer.store.clone();
    eventually(15, "three attestations at the customer", || {
        let store = store.clone();
        async move { store.count(Kind::UsageAttestation) >= 3 }
    })
    .await;
    let page = customer
        .store
        .page(&[Kind::UsageAttestation], None, 100, UnixMillis::now())
        .unwrap();
    let mut chain: Vec<Signed<UsageAttestation>> = page
        .items
        .iter()
        .map(|(_, b)| Signed::from_bytes(b).unwrap())
        .collect();
    chain.sort_by_key(|a| a.body.seq);
    let mut prev = Id::ZERO;
    for (n, a) in chain.iter().enumerate() {
        a.verify_record().unwrap();
        assert_eq!(a.body.lease, lease);
        assert_eq!(a.body.seq, n as u64);
        assert_eq!(a.body.prev, prev);
        assert_eq!(a.body.window_end.since(a.body.window_start), 1000);
        let gpus: Vec<u16> = a.body.gpus.iter().map(|g| g.gpu_index).collect();
        assert_eq!(gpus, agreement.body.gpu_indices);
        assert!(a.body.billable_gpu_ms <= 2000);
        prev = a.id().unwrap();
    }
    supplier.stop().await.unwrap();
}
