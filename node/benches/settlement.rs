//! Certified settlements per second with 4 coordinator nodes (f = 1) on
//! loopback, each with its own sled books flushed on every write, and a
//! client node that funds leases and settles them through the quorum
//! client. Each settlement is one request to every coordinator (vote),
//! a certificate assembled from 3 votes, and the certificate handed to
//! every coordinator and gossiped (apply). Settled first one at a time
//! (latency, and the rate that gives), then 8 leases at a time
//! (throughput).
//!
//! Printed beside it: the raw signature-verification budget, i.e. how many
//! certificates per second the machine could check if verifying the
//! signatures the protocol requires were the only work. Per one-window
//! settlement certificate those are, with n = 4 and q = 3:
//! - each coordinator, to vote: the request, the agreement and its
//!   proposal, the attestation and the ack: 5 x n;
//! - the collector: q votes;
//! - each coordinator, to apply: the request and q votes: (1 + q) x n;
//!
//! 39 in all. The ratio is measured rate / (raw verify rate / 39).
//!
//! Run: `cargo bench -p rigmesh-node --bench settlement`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use rigmesh_ledger::billing::{self, FeeRate};
use rigmesh_node::config::{CoordinatorsConfig, NodeConfig, Role};
use rigmesh_node::node::RunningNode;
use rigmesh_protocol::rpc::{CertificateFrame, CoordinatorRequest, SettlementBundle};

use rigmesh_protocol::{
    crypto, Credits, Deposit, EscrowOrder, GpuUsage, Id, Keypair, Kind, LeaseAgreement,
    LeaseProposal, SettlementRequest, Signed, UnixMillis, UsageAck, UsageAttestation,
    PROTOCOL_VERSION,
};

const SETTLEMENTS: usize = 60;
/// Leases settled at once in the throughput phase.
const IN_FLIGHT: usize = 8;
const VERIFICATIONS_PER_CERTIFICATE: f64 = 39.0;

fn seed(i: usize) -> [u8; 32] {
    [0x70 + i as u8; 32]
}

fn set_config() -> CoordinatorsConfig {
    let mut c = CoordinatorsConfig::new(
        1,
        (0..4)
            .map(|i| Keypair::from_seed(seed(i)).public())
            .collect(),
    );
    c.admin = Some(Keypair::from_seed([0x7f; 32]).public());
    c
}

async fn start(role: Role, dir: &std::path::Path, member: Option<usize>) -> RunningNode {
    if let Some(i) = member {
        rigmesh_node::keyfile::write_seed(&dir.join("account.key"), &seed(i)).unwrap();
    }
    let mut network = rigmesh_node::network::NetworkConfig::loopback();
    network.discovery = false;
    rigmesh_node::node::start(NodeConfig {
        role,
        data_dir: dir.to_path_buf(),
        network,
        monitoring: "127.0.0.1:0".parse().unwrap(),
        customer_api: "127.0.0.1:0".parse().unwrap(),
        supplier_api: "127.0.0.1:0".parse().unwrap(),
        public_api: "127.0.0.1:0".parse().unwrap(),
        analytics_api: "127.0.0.1:0".parse().unwrap(),
        operator_api: "127.0.0.1:0".parse().unwrap(),
        coordinators: Some(set_config()),
        ..NodeConfig::default()
    })
    .await
    .unwrap()
}

fn signed<T: rigmesh_protocol::Message>(body: T, key: &Keypair) -> Signed<T> {
    Signed::sign(body, key).unwrap()
}

/// A one-hour, one-GPU lease that started two minutes ago.
fn lease(customer: &Keypair, supplier: &Keypair, nonce: u64) -> Signed<LeaseAgreement> {
    let t = UnixMillis::now().minus_ms(120_000);
    let proposal = signed(
        LeaseProposal {
            version: PROTOCOL_VERSION,
            customer: customer.public(),
            supplier: supplier.public(),
            offer: Id([9; 32]),
            gpu_count: 1,
            price_per_gpu_hour: "2.49".parse().unwrap(),
            hours: 1,
            window_secs: 60,
            nonce,
            created_at: t,
            expires_at: t.plus_ms(60_000),
        },
        customer,
    );
    signed(
        LeaseAgreement {
            version: PROTOCOL_VERSION,
            supplier: supplier.public(),
            proposal,
            gpu_indices: vec![0],
            hardware_fingerprint: Id([7; 32]),
            starts_at: t,
            ends_at: t.plus_ms(3_600_000),
            created_at: t,
        },
        supplier,
    )
}

fn raw_verify_rate() -> f64 {
    let key = Keypair::from_seed([1; 32]);
    let body = b"rigmesh settlement bench".to_vec();
    let signature = key.sign(Kind::Vote, &body);
    let n = 4_000;
    let start = Instant::now();
    for _ in 0..n {
        crypto::verify(Kind::Vote, &body, &key.public(), &signature).unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut coordinators = Vec::new();
        for (i, dir) in dirs.iter().take(4).enumerate() {
            coordinators.push(start(Role::Coordinator, dir.path(), Some(i)).await);
        }
        let client = start(Role::Relay, dirs[4].path(), None).await;
        for c in &coordinators {
            let addr = c.listen_addrs[0]
                .clone()
                .with(libp2p::multiaddr::Protocol::P2p(c.peer_id));
            client.handle.dial(addr).await.unwrap();
        }
        while client.store.count(Kind::NodeBinding) < 4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let quorum = client.quorum.clone().unwrap();
        let customer = Keypair::from_seed([0x21; 32]);
        let supplier = Keypair::from_seed([0x12; 32]);
        let admin = Keypair::from_seed([0x7f; 32]);
        let deposit = signed(
            Deposit {
                version: PROTOCOL_VERSION,
                epoch: 1,
                admin: admin.public(),
                account: customer.public(),
                amount: "1000000".parse().unwrap(),
                reference: "bench".into(),
                created_at: UnixMillis::now(),
            },
            &admin,
        );
        assert_eq!(quorum.deliver(CertificateFrame::Deposit(deposit)).await, 4);

        let fee = FeeRate::new("0.01".parse().unwrap()).unwrap();
        // Leases funded one by one (one customer, one debit sequence), each
        // with one acknowledged window ready to settle.
        let mut ready = Vec::with_capacity(2 * SETTLEMENTS);
        for i in 0..2 * SETTLEMENTS {
            let agreement = lease(&customer, &supplier, i as u64);
            let lease_id = agreement.id().unwrap();
            let now = UnixMillis::now();
            let amount: Credits = "2.49".parse().unwrap();
            let order = signed(
                EscrowOrder {
                    version: PROTOCOL_VERSION,
                    account: customer.public(),
                    seq: i as u64,
                    epoch: 1,
                    lease: lease_id,
                    supplier: supplier.public(),
                    amount,
                    created_at: now,
                    expires_at: now.plus_ms(600_000),
                },
                &customer,
            );
            let escrow = quorum
                .certify(
                    &order,
                    &CoordinatorRequest::Escrow {
                        order: order.clone(),
                        agreement: Box::new(agreement.clone()),
                        missing: Vec::new(),
                    },
                )
                .await
                .unwrap();
            quorum
                .deliver(CertificateFrame::Escrow(Box::new(escrow.clone())))
                .await;
            let start = agreement.body.starts_at;
            let attestation = signed(
                UsageAttestation {
                    version: PROTOCOL_VERSION,
                    lease: lease_id,
                    supplier: supplier.public(),
                    customer: customer.public(),
                    seq: 0,
                    prev: Id::ZERO,
                    window_start: start,
                    window_end: start.plus_ms(60_000),
                    gpus: vec![GpuUsage {
                        gpu_index: 0,
                        billable_ms: 60_000,
                        mean_util_bp: 9_000,
                        peak_util_bp: 10_000,
                        peak_memory_mib: 1_000,
                        energy_mj: 1_000,
                    }],
                    billable_gpu_ms: 60_000,
                    created_at: start.plus_ms(60_000),
                },
                &supplier,
            );
            let ack = signed(
                UsageAck {
                    version: PROTOCOL_VERSION,
                    lease: lease_id,
                    customer: customer.public(),
                    attestation: attestation.id().unwrap(),
                    seq: 0,
                    created_at: now,
                },
                &customer,
            );
            let payout = billing::payout(
                "2.49".parse().unwrap(),
                60_000,
                amount,
                fee,
                true,
            )
            .unwrap();
            let request = signed(
                SettlementRequest {
                    version: PROTOCOL_VERSION,
                    lease: lease_id,
                    supplier: supplier.public(),
                    customer: customer.public(),
                    settlement_seq: 0,
                    epoch: 1,
                    escrow: order.id().unwrap(),
                    first_window: 0,
                    last_window: 0,
                    attestation_head: attestation.id().unwrap(),
                    billable_gpu_ms: 60_000,
                    supplier_amount: payout.supplier,
                    fee: payout.fee,
                    refund: payout.refund,
                    held: payout.held,
                    final_settlement: true,
                    created_at: now,
                },
                &supplier,
            );
            let bundle = SettlementBundle {
                request: request.clone(),
                agreement,
                escrow: None,
                attestations: vec![attestation],
                acks: vec![ack],
                disputes: Vec::new(),
                earlier: Vec::new(),
            };
            ready.push((request, bundle));
        }
        let settle = |(request, bundle): (Signed<SettlementRequest>, SettlementBundle)| {
            let quorum = quorum.clone();
            async move {
                let began = Instant::now();
                let cert = quorum
                    .certify(&request, &CoordinatorRequest::Settle(Box::new(bundle)))
                    .await
                    .unwrap();
                let applied = quorum
                    .deliver(CertificateFrame::Settlement(Box::new(cert)))
                    .await;
                assert!(applied >= 3);
                began.elapsed()
            }
        };
        // One at a time: latency.
        let mut latencies = Vec::with_capacity(SETTLEMENTS);
        let mut total = Duration::ZERO;
        let concurrent: Vec<_> = ready.split_off(SETTLEMENTS);
        for job in ready {
            let took = settle(job).await;
            latencies.push(took);
            total += took;
        }
        // Several leases at once: throughput.
        let began = Instant::now();
        let mut jobs = concurrent.into_iter();
        loop {
            let batch: Vec<_> = jobs.by_ref().take(IN_FLIGHT).map(settle).collect();
            if batch.is_empty() {
                break;
            }
            futures::future::join_all(batch).await;
        }
        let concurrent_rate = SETTLEMENTS as f64 / began.elapsed().as_secs_f64();
        latencies.sort();
        let rate = SETTLEMENTS as f64 / total.as_secs_f64();
        let median = latencies[latencies.len() / 2];
        let raw = raw_verify_rate();
        let budget = raw / VERIFICATIONS_PER_CERTIFICATE;
        println!("settlement: {SETTLEMENTS} one-window settlements, 4 coordinators on loopback, sled books flushed per write");
        println!("  certified settlements/s: {rate:.1} one at a time (vote + certificate + apply at all 4)");
        println!("  certified settlements/s: {concurrent_rate:.1} with {IN_FLIGHT} leases settling at once");
        println!("  median certificate latency: {:.2} ms", median.as_secs_f64() * 1e3);
        println!("  raw ed25519 verify: {raw:.0}/s; budget at {VERIFICATIONS_PER_CERTIFICATE} verifications per certificate: {budget:.1}/s");
        println!("  ratio measured/budget: {:.3} one at a time, {:.3} with {IN_FLIGHT} at once", rate / budget, concurrent_rate / budget);
        for node in coordinators.into_iter().chain([client]) {
            node.stop().await.unwrap();
        }
    });
}
