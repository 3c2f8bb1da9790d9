//! A customer and two simulated suppliers on loopback, each a full node:
//! a bid through the customer's local API leases the cheaper matching
//! offer, the supplier's attestations arrive and are acked by the customer
//! (the acks reach the supplier's ledger), and a bid nothing meets is
//! explained in numbers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::eventually;
use rigmesh_node::api::local::{read_token, Scope};
use rigmesh_node::config::{NodeConfig, Role};
use rigmesh_node::node::RunningNode;
use rigmesh_node::supplier::SupplierConfig;
use rigmesh_node::telemetry::{GpuSourceConfig, SimProfile, SimSpec};
use rigmesh_protocol::Kind;

async fn start(
    role: Role,
    dir: &std::path::Path,
    price: Option<(&str, &str)>,
    seed: u64,
) -> RunningNode {
    let mut config = NodeConfig {
        role,
        data_dir: dir.to_path_buf(),
        network: common::config(),
        monitoring: "127.0.0.1:0".parse().unwrap(),
        customer_api: "127.0.0.1:0".parse().unwrap(),
        supplier_api: "127.0.0.1:0".parse().unwrap(),
        ..NodeConfig::default()
    };
    if let Some((model, price)) = price {
        let profile = SimProfile::builtin("a100x4").unwrap().with_seed(seed);
        config.supplier = SupplierConfig {
            gpus: GpuSourceConfig::Sim(SimSpec::Profile(profile)),
            prices: [(model.to_string(), price.parse().unwrap())].into(),
            ..SupplierConfig::default()
        };
    }
    rigmesh_node::node::start(config).await.unwrap()
}

fn dial_addr(node: &RunningNode) -> libp2p::Multiaddr {
    node.listen_addrs[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(node.peer_id))
}

fn body(response: &str) -> serde_json::Value {
    serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bid_leases_the_cheaper_offer_and_acks_flow() {
    let model = SimProfile::builtin("a100x4").unwrap().gpus[0].model.clone();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let dear = start(Role::Supplier, dirs[0].path(), Some((&model, "2.10")), 1).await;
    let cheap = start(Role::Supplier, dirs[1].path(), Some((&model, "1.70")), 2).await;
    let customer = start(Role::Customer, dirs[2].path(), None, 0).await;
    customer.handle.dial(dial_addr(&dear)).await.unwrap();
    customer.handle.dial(dial_addr(&cheap)).await.unwrap();
    let store = customer.store.clone();
    eventually(15, "both offers and bindings at the customer", || {
        let store = store.clone();
        async move { store.count(Kind::Offer) == 2 && store.count(Kind::NodeBinding) == 2 }
    })
    .await;
    let token = read_token(dirs[2].path(), Scope::Customer).unwrap();

    // Nothing under 1.00: explained in numbers, not leased.
    let request = format!(r#"{{"gpu":"{model}","count":2,"max_price":"1.00","hours":1}}"#);
    let r = common::http_post(customer.customer_api, "/v1/bid", &token, &request).await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let reason = body(&r)["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains(&format!("2 offers for {model}")),
        "{reason}"
    );
    assert!(
        reason.contains("2 above your max price (cheapest 1.70)"),
        "{reason}"
    );

    let request = format!(
        r#"{{"gpu":"{model}","count":2,"max_price":"2.50","hours":1,"window_secs":1,"budget":"50"}}"#
    );
    let r = common::http_post(customer.customer_api, "/v1/bid", &token, &request).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let lease = body(&r);
    assert_eq!(lease["price_per_gpu_hour"], "1.7", "the cheaper offer wins");
    assert_eq!(lease["gpus"].as_array().unwrap().len(), 2);
    assert_eq!(lease["max_cost"], "3.4");

    // Attestations arrive each second; the customer acks them and the acks
    // reach the supplier's ledger.
    let supplier_store = cheap.store.clone();
    eventually(15, "acks at the supplier", || {
        let store = supplier_store.clone();
        async move { store.count(Kind::UsageAck) >= 2 }
    })
    .await;
    assert_eq!(customer.store.count(Kind::UsageDispute), 0);
    let r = common::http_get(customer.customer_api, "/v1/leases", Some(&token)).await;
    let leases = body(&r);
    assert_eq!(leases[0]["lease"], lease["lease"]);
    assert!(leases[0]["acked_windows"].as_u64().unwrap() >= 2);
    assert_eq!(leases[0]["disputed_windows"], 0);
    // The lease is with the cheaper supplier's account.
    let cheap_account = rigmesh_protocol::Keypair::from_seed(
        rigmesh_node::keyfile::read_seed(&dirs[1].path().join("account.key")).unwrap(),
    );
    assert_eq!(lease["supplier"], cheap_account.public().to_string());

    // The supplier's own API shows its GPUs, the lease and what it earned.
    let supplier_token = read_token(dirs[1].path(), Scope::Supplier).unwrap();
    let r = common::http_get(cheap.supplier_api, "/v1/gpus", Some(&supplier_token)).await;
    assert_eq!(body(&r)["gpus"].as_array().unwrap().len(), 4, "{r}");
    assert_eq!(body(&r)["latest"].as_array().unwrap().len(), 4, "{r}");
    let r = common::http_get(cheap.supplier_api, "/v1/leases", Some(&supplier_token)).await;
    let theirs = body(&r);
    assert_eq!(theirs[0]["lease"], lease["lease"]);
    assert!(theirs[0]["windows_attested"].as_u64().unwrap() >= 2, "{r}");
    let earned: rigmesh_protocol::Credits = theirs[0]["earned"].as_str().unwrap().parse().unwrap();
    assert!(earned > rigmesh_protocol::Credits::ZERO);
    let r = common::http_get(cheap.supplier_api, "/v1/earnings", Some(&supplier_token)).await;
    assert!(body(&r)["attested_total"].as_str().is_some(), "{r}");
    let r = common::http_get(
        dear.supplier_api,
        "/v1/leases",
        Some(&read_token(dirs[0].path(), Scope::Supplier).unwrap()),
    )
    .await;
    assert_eq!(
        body(&r).as_array().unwrap().len(),
        0,
        "the dearer supplier leased nothing"
    );

    for node in [customer, cheap, dear] {
        node.stop().await.unwrap();
    }
}
