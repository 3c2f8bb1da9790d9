//! Customers and simulated suppliers on loopback, each a full node: a bid
//! through the customer's local API leases the cheaper matching offer, the
//! supplier's attestations arrive and are acked by the customer (the acks
//! reach the supplier's ledger), and a bid nothing meets is explained in
//! numbers; each window shows in the lease's usage, disputes count against
//! the supplier, an account cap stops paying within one window, a standing
//! bid is leased when a supplier appears (and suppliers offer again at
//! once for bids they can serve), caps survive a restart, and a bid that
//! hangs on a supplier that never answers holds up no other lease's acks
//! (and is still answered, like the bids queued behind it, when the node
//! stops).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;
#[path = "common/offers.rs"]
mod offers;
#[path = "common/silent.rs"]
mod silent;

use common::eventually;
use rigmesh_node::api::tokens::{read_token, Bootstrap};
use rigmesh_node::config::{NodeConfig, Role};

use rigmesh_node::node::RunningNode;
use rigmesh_node::supplier::SupplierConfig;
use rigmesh_node::telemetry::{GpuSourceConfig, SimProfile, SimSpec};
use rigmesh_protocol::rpc::LeaseRequest;
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{
    Bid, Credits, GpuUsage, Id, Keypair, Kind, Offer, Signed, UnixMillis, UsageAttestation,
    PROTOCOL_VERSION,
};
use silent::{agree, held_proposal, silent_supplier, SILENT_MODEL};

async fn start(
    role: Role,
    dir: &std::path::Path,
    price: Option<(&str, &str)>,
    seed: u64,
) -> RunningNode {
    start_with(role, dir, price, seed, common::config()).await
}

async fn start_with(
    role: Role,
    dir: &std::path::Path,
    price: Option<(&str, &str)>,
    seed: u64,
    network: rigmesh_node::network::NetworkConfig,
) -> RunningNode {
    let mut config = NodeConfig {
        role,
        data_dir: dir.to_path_buf(),
        network,
        monitoring: "127.0.0.1:0".parse().unwrap(),
        customer_api: "127.0.0.1:0".parse().unwrap(),
        supplier_api: "127.0.0.1:0".parse().unwrap(),
        public_api: "127.0.0.1:0".parse().unwrap(),
        analytics_api: "127.0.0.1:0".parse().unwrap(),
        operator_api: "127.0.0.1:0".parse().unwrap(),
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
    let token = read_token(dirs[2].path(), Bootstrap::Customer).unwrap();

    // Nothing under 1.00: explained in numbers, not leased.
    let request = format!(r#"{{"gpu":"{model}","count":2,"max_price":"1.00","hours":1}}"#);
    let r = common::http_post(customer.customer_api.unwrap(), "/v1/bid", &token, &request).await;
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
    let r = common::http_post(customer.customer_api.unwrap(), "/v1/bid", &token, &request).await;
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
    let r = common::http_get(customer.customer_api.unwrap(), "/v1/leases", Some(&token)).await;
    let leases = body(&r);
    assert_eq!(leases[0]["lease"], lease["lease"]);
    assert!(leases[0]["acked_windows"].as_u64().unwrap() >= 2);
    assert_eq!(leases[0]["disputed_windows"], 0);
    // Each acked window's charge lands in the hourly spend series.
    let analytics = customer.analytics_api.unwrap();
    eventually(10, "spend in the hourly series", || {
        let token = token.clone();
        async move {
            let r = common::http_get(analytics, "/v1/series/spend?hours=2", Some(&token)).await;
            body(&r)["points"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["value"].as_f64().unwrap_or(0.0) > 0.0))
        }
    })
    .await;
    // The lease is with the cheaper supplier's account.
    let cheap_account = rigmesh_protocol::Keypair::from_seed(
        rigmesh_node::keyfile::read_seed(&dirs[1].path().join("account.key")).unwrap(),
    );
    assert_eq!(lease["supplier"], cheap_account.public().to_string());

    // The supplier's own API shows its GPUs, the lease and what it earned.
    let supplier_token = read_token(dirs[1].path(), Bootstrap::Supplier).unwrap();
    let r = common::http_get(
        cheap.supplier_api.unwrap(),
        "/v1/gpus",
        Some(&supplier_token),
    )
    .await;
    assert_eq!(body(&r)["gpus"].as_array().unwrap().len(), 4, "{r}");
    assert_eq!(body(&r)["latest"].as_array().unwrap().len(), 4, "{r}");
    let r = common::http_get(
        cheap.supplier_api.unwrap(),
        "/v1/leases",
        Some(&supplier_token),
    )
    .await;
    let theirs = body(&r);
    assert_eq!(theirs[0]["lease"], lease["lease"]);
    assert!(theirs[0]["windows_attested"].as_u64().unwrap() >= 2, "{r}");
    let earned: rigmesh_protocol::Credits = theirs[0]["earned"].as_str().unwrap().parse().unwrap();
    assert!(earned > rigmesh_protocol::Credits::ZERO);
    let r = common::http_get(
        cheap.supplier_api.unwrap(),
        "/v1/earnings",
        Some(&supplier_token),
    )
    .await;
    assert!(body(&r)["attested_total"].as_str().is_some(), "{r}");
    assert_eq!(body(&r)["leases_total"], 1, "{r}");
    // Asked for none: none listed, and the total still told.
    let r = common::http_get(
        cheap.supplier_api.unwrap(),
        "/v1/leases?limit=0",
        Some(&supplier_token),
    )
    .await;
    assert!(
        r.to_ascii_lowercase().contains("\r\ntotal-count: 1\r\n"),
        "{r}"
    );
    assert_eq!(body(&r).as_array().unwrap().len(), 0, "{r}");
    let r = common::http_get(
        cheap.supplier_api.unwrap(),
        "/v1/earnings?limit=many",
        Some(&supplier_token),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = common::http_get(
        dear.supplier_api.unwrap(),
        "/v1/leases",
        Some(&read_token(dirs[0].path(), Bootstrap::Supplier).unwrap()),
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

/// The status line's code, e.g. 200.
fn status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap()
}

fn credits(value: &serde_json::Value) -> Credits {
    value.as_str().unwrap().parse().unwrap()
}

/// A supplier of four simulated A100s at `price` and a customer dialled to
/// it, with the offer and the supplier's binding at the customer.
async fn market(
    dirs: &[tempfile::TempDir],
    price: &str,
) -> (String, RunningNode, RunningNode, String) {
    let model = SimProfile::builtin("a100x4").unwrap().gpus[0].model.clone();
    let supplier = start(Role::Supplier, dirs[0].path(), Some((&model, price)), 1).await;
    let customer = start(Role::Customer, dirs[1].path(), None, 0).await;
    customer.handle.dial(dial_addr(&supplier)).await.unwrap();
    let store = customer.store.clone();
    eventually(15, "the offer and binding at the customer", || {
        let store = store.clone();
        async move { store.count(Kind::Offer) >= 1 && store.count(Kind::NodeBinding) >= 1 }
    })
    .await;
    let token = read_token(dirs[1].path(), Bootstrap::Customer).unwrap();
    (model, supplier, customer, token)
}

/// Leases 2 GPUs for an hour in 1 s windows; returns the lease id.
async fn lease_two(customer: &RunningNode, token: &str, model: &str) -> String {
    let request =
        format!(r#"{{"gpu":"{model}","count":2,"max_price":"2.00","hours":1,"window_secs":1}}"#);
    let r = common::http_post(customer.customer_api.unwrap(), "/v1/bid", token, &request).await;
    assert_eq!(status(&r), 200, "{r}");
    body(&r)["lease"].as_str().unwrap().to_string()
}

async fn get(node: &RunningNode, path: &str, token: &str) -> serde_json::Value {
    let r = common::http_get(node.customer_api.unwrap(), path, Some(token)).await;
    assert_eq!(status(&r), 200, "{path}: {r}");
    body(&r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_lists_each_window_and_disputes_count_against_the_supplier() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (model, supplier, customer, token) = market(&dirs, "1.70").await;
    let lease = lease_two(&customer, &token, &model).await;
    let path = format!("/v1/usage/{lease}");
    let (api, t) = (customer.customer_api.unwrap(), token.clone());
    eventually(15, "three windows answered", || {
        let path = path.clone();
        let t = t.clone();
        async move {
            let r = common::http_get(api, &path, Some(&t)).await;
            body(&r)["windows"].as_array().is_some_and(|w| w.len() >= 3)
        }
    })
    .await;
    let usage = get(&customer, &path, &token).await;
    assert_eq!(usage["lease"], lease.as_str());
    assert_eq!(usage["state"], "running");
    assert_eq!(usage["gpu_model"], model.as_str());
    let windows = usage["windows"].as_array().unwrap();
    let mut charges = Credits::ZERO;
    for (i, w) in windows.iter().enumerate() {
        assert_eq!(w["seq"], i as u64, "windows in chain order from the first");
        assert_eq!(w["status"], "acked", "{w}");
        let (start, end) = (
            w["window_start"].as_u64().unwrap(),
            w["window_end"].as_u64().unwrap(),
        );
        assert_eq!(end - start, 1_000, "the agreed 1 s windows");
        let gpu_ms = w["billable_gpu_ms"].as_u64().unwrap();
        assert!(
            gpu_ms > 0 && gpu_ms <= 2_000,
            "two GPUs for at most 1 s: {gpu_ms}"
        );
        charges = charges.checked_add(credits(&w["charge"])).unwrap();
    }
    // The totals are the windows' own, and the charges add up to the spend
    // when every window so far is listed.
    let acked = usage["acked_windows"].as_u64().unwrap();
    assert!(acked >= windows.len() as u64);
    if acked == windows.len() as u64 {
        assert_eq!(charges, credits(&usage["spent"]));
    }
    assert!(credits(&usage["spent"]) > Credits::ZERO);
    assert_eq!(usage["disputed_windows"], 0);
    assert!(usage["budget"]["account"]["cap"].is_null());
    assert!(usage["supplier_record"].is_null());
    let few = get(&customer, &format!("{path}?limit=2"), &token).await;
    let listed = few["windows"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        few["earlier_windows"].as_u64().unwrap(),
        listed[0]["seq"].as_u64().unwrap(),
        "the most recent two, with a count of the ones before"
    );

    // The supplier signs an attestation that skips far ahead in the chain:
    // disputed, not paid, and counted against the supplier.
    let supplier_key = rigmesh_protocol::Keypair::from_seed(
        rigmesh_node::keyfile::read_seed(&dirs[0].path().join("account.key")).unwrap(),
    );
    let now = UnixMillis::now();
    let gpu = |index| GpuUsage {
        gpu_index: index,
        billable_ms: 1_000,
        mean_util_bp: 5_000,
        peak_util_bp: 9_000,
        peak_memory_mib: 1_000,
        energy_mj: 300_000,
    };
    let gpus: Vec<u16> = usage["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap() as u16)
        .collect();
    let skipping = Signed::sign(
        UsageAttestation {
            version: PROTOCOL_VERSION,
            lease: lease.parse().unwrap(),
            supplier: supplier_key.public(),
            customer: account_of(&dirs[1]),
            seq: 10_000,
            prev: Id([7; 32]),
            window_start: now.minus_ms(2_000),
            window_end: now.minus_ms(1_000),
            gpus: gpus.iter().map(|i| gpu(*i)).collect(),
            billable_gpu_ms: 1_000 * gpus.len() as u64,
            created_at: now,
        },
        &supplier_key,
    )
    .unwrap();
    supplier
        .handle
        .publish(&WireMessage::UsageAttestation(skipping))
        .await
        .unwrap();
    eventually(10, "the dispute on the supplier's record", || {
        let t = t.clone();
        async move {
            let r = common::http_get(api, "/v1/account", Some(&t)).await;
            body(&r)["suppliers"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
        }
    })
    .await;
    let account = get(&customer, "/v1/account", &token).await;
    let record = &account["suppliers"][0];
    assert_eq!(record["supplier"], supplier_key.public().to_string());
    assert_eq!(record["disputes"], 1);
    assert_eq!(record["by_reason"]["broken_chain"], 1);
    assert_eq!(record["last"]["seq"], 10_000);
    assert_eq!(account["active_leases"], 1);
    assert_eq!(account["leases"][0]["lease"], lease.as_str());
    assert_eq!(account["leases"][0]["disputed_windows"], 1);
    // The stray attestation took no window's place: later windows are still
    // acked, and every listed window is one the supplier really metered.
    let before = usage["acked_windows"].as_u64().unwrap();
    let path2 = path.clone();
    eventually(10, "windows still acked after the dispute", || {
        let path = path2.clone();
        let t = t.clone();
        async move {
            let r = common::http_get(api, &path, Some(&t)).await;
            body(&r)["acked_windows"].as_u64().unwrap_or(0) > before + 1
        }
    })
    .await;
    let usage = get(&customer, &path, &token).await;
    assert_eq!(usage["disputed_windows"], 1);
    assert_eq!(usage["supplier_record"]["disputes"], 1);
    assert!(usage["windows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["status"] == "acked"));
    assert_eq!(
        customer.store.count(Kind::UsageDispute),
        1,
        "the signed dispute is kept"
    );

    // An unknown lease and a malformed id: JSON errors.
    let r = common::http_get(api, &format!("/v1/usage/{}", Id([9; 32])), Some(&token)).await;
    assert_eq!(status(&r), 404, "{r}");
    assert_eq!(body(&r)["error"], "not_found");
    let r = common::http_get(api, "/v1/usage/not-a-lease", Some(&token)).await;
    assert_eq!(status(&r), 400, "{r}");
    assert!(body(&r)["reason"]
        .as_str()
        .unwrap()
        .contains("not a lease id"));

    for node in [customer, supplier] {
        node.stop().await.unwrap();
    }
}

fn account_of(dir: &tempfile::TempDir) -> rigmesh_protocol::PublicKey {
    rigmesh_protocol::Keypair::from_seed(
        rigmesh_node::keyfile::read_seed(&dir.path().join("account.key")).unwrap(),
    )
    .public()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_cap_stops_acking_within_one_window() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (model, supplier, customer, token) = market(&dirs, "1.70").await;
    // 2 GPUs at 1.70 per GPU-hour in 1 s windows: at most 0.000944 a window.
    let window = credits(&serde_json::json!("0.000945"));
    let cap = credits(&serde_json::json!("0.004"));
    let r = common::http(
        customer.customer_api.unwrap(),
        "PUT",
        "/v1/budget",
        &token,
        Some(r#"{"account": "0.004"}"#),
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(body(&r)["account"]["cap"], "0.004");
    let lease = lease_two(&customer, &token, &model).await;
    let path = format!("/v1/usage/{lease}");
    let (api, t) = (customer.customer_api.unwrap(), token.clone());
    eventually(20, "the account cap stops the lease", || {
        let path = path.clone();
        let t = t.clone();
        async move {
            let r = common::http_get(api, &path, Some(&t)).await;
            body(&r)["state"] == "stopped_at_cap"
        }
    })
    .await;
    let usage = get(&customer, &path, &token).await;
    let spent = credits(&usage["spent"]);
    assert!(spent <= cap, "never paid past the cap: {spent}");
    assert!(
        cap.checked_sub(spent).unwrap() < window,
        "stopped within one window of the cap: spent {spent}"
    );
    let acked = usage["acked_windows"].as_u64().unwrap();
    assert!(acked >= 3, "{usage}");
    // The supplier keeps attesting the window under way; nothing more is
    // acked.
    let acks = customer.store.count(Kind::UsageAck);
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let later = get(&customer, &path, &token).await;
    assert_eq!(later["acked_windows"].as_u64().unwrap(), acked);
    assert_eq!(customer.store.count(Kind::UsageAck), acks);

    let budget = get(&customer, "/v1/budget", &token).await;
    assert_eq!(credits(&budget["account"]["spent"]), spent);
    let rules: Vec<&str> = budget["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["budget.50", "budget.80"], "{budget}");
    assert!(
        budget["alerts"][0]["lease"].is_null(),
        "the account's alerts"
    );
    assert!(budget["alerts"][1]["message"]
        .as_str()
        .unwrap()
        .contains("of its budget of 0.004"));
    let account = get(&customer, "/v1/account", &token).await;
    assert_eq!(account["active_leases"], 0);
    assert_eq!(account["leases"][0]["state"], "stopped_at_cap");

    for node in [customer, supplier] {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_bid_is_leased_when_a_supplier_appears() {
    let model = SimProfile::builtin("a100x4").unwrap().gpus[0].model.clone();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let customer = start(Role::Customer, dirs[1].path(), None, 0).await;
    let token = read_token(dirs[1].path(), Bootstrap::Customer).unwrap();
    let api = customer.customer_api.unwrap();
    let request = format!(
        r#"{{"gpu":"{model}","count":2,"max_price":"2.00","hours":1,"window_secs":1,"wait_secs":60}}"#
    );
    let r = common::http_post(api, "/v1/bid", &token, &request).await;
    assert_eq!(status(&r), 202, "nothing yet, so the bid stands: {r}");
    let standing = body(&r);
    assert_eq!(standing["state"], "waiting");
    assert_eq!(standing["published"], false, "no peers yet");
    assert_eq!(
        standing["reason"],
        format!("no offers for {model}").as_str()
    );
    let id = standing["id"].as_str().unwrap().to_string();
    let wait_until = standing["wait_until"].as_u64().unwrap();
    assert_eq!(wait_until - standing["placed_at"].as_u64().unwrap(), 60_000);

    // A bid nothing will meet, with a short wait, ends with the reason.
    let cheap =
        format!(r#"{{"gpu":"{model}","count":2,"max_price":"1.00","hours":1,"wait_secs":3}}"#);
    let r = common::http_post(api, "/v1/bid", &token, &cheap).await;
    assert_eq!(status(&r), 202, "{r}");
    let hopeless = body(&r)["id"].as_str().unwrap().to_string();
    // And one the customer gives up on.
    let r = common::http_post(api, "/v1/bid", &token, &request).await;
    let cancelled = body(&r)["id"].as_str().unwrap().to_string();
    let r = common::http(
        api,
        "DELETE",
        &format!("/v1/bids/{cancelled}"),
        &token,
        None,
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(body(&r)["state"], "cancelled");

    // A supplier at 1.70 comes online and connects.
    let supplier = start(Role::Supplier, dirs[0].path(), Some((&model, "1.70")), 1).await;
    supplier.handle.dial(dial_addr(&customer)).await.unwrap();
    let t = token.clone();
    let bid_path = format!("/v1/bids/{id}");
    eventually(20, "the standing bid leased", || {
        let t = t.clone();
        let bid_path = bid_path.clone();
        async move {
            let r = common::http_get(api, &bid_path, Some(&t)).await;
            body(&r)["state"] == "leased"
        }
    })
    .await;
    let done = get(&customer, &bid_path, &token).await;
    assert_eq!(done["lease"]["price_per_gpu_hour"], "1.7");
    assert_eq!(done["lease"]["gpus"].as_array().unwrap().len(), 2);
    let waited = done["waited_ms"].as_u64().unwrap();
    assert!(waited > 0 && waited < 60_000, "waited {waited} ms");
    let leases = get(&customer, "/v1/leases", &token).await;
    assert_eq!(leases[0]["lease"], done["lease"]["lease"]);
    // A lease from a standing bid is watched like any other.
    let t2 = token.clone();
    eventually(15, "acks for the lease from the standing bid", || {
        let t = t2.clone();
        async move {
            let r = common::http_get(api, "/v1/leases", Some(&t)).await;
            body(&r)[0]["acked_windows"].as_u64().unwrap_or(0) >= 1
        }
    })
    .await;

    let hopeless_path = format!("/v1/bids/{hopeless}");
    let t3 = token.clone();
    eventually(10, "the hopeless bid's wait ends", || {
        let t = t3.clone();
        let p = hopeless_path.clone();
        async move {
            let r = common::http_get(api, &p, Some(&t)).await;
            body(&r)["state"] == "no_match"
        }
    })
    .await;
    let ended = get(&customer, &hopeless_path, &token).await;
    assert!(
        ended["reason"]
            .as_str()
            .unwrap()
            .contains("above your max price (cheapest 1.70)"),
        "{ended}"
    );
    let r = common::http(api, "DELETE", &hopeless_path, &token, None).await;
    assert_eq!(status(&r), 409, "only a waiting bid can be cancelled: {r}");
    let all = get(&customer, "/v1/bids", &token).await;
    assert_eq!(all.as_array().unwrap().len(), 3);
    let r = common::http_get(api, &format!("/v1/bids/{}", Id([3; 32])), Some(&token)).await;
    assert_eq!(status(&r), 404, "{r}");
    // Too long a wait is refused outright.
    let long =
        format!(r#"{{"gpu":"{model}","count":2,"max_price":"1.00","hours":1,"wait_secs":90000}}"#);
    let r = common::http_post(api, "/v1/bid", &token, &long).await;
    assert_eq!(status(&r), 400, "{r}");
    assert!(body(&r)["reason"]
        .as_str()
        .unwrap()
        .contains("at most 86400"));

    for node in [customer, supplier] {
        node.stop().await.unwrap();
    }
}

fn offer_sequence(node: &RunningNode) -> u64 {
    node.store
        .all::<Offer>(UnixMillis::now())
        .unwrap()
        .iter()
        .map(|o| o.body.sequence)
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_offers_again_at_once_for_a_bid_it_can_serve() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (model, supplier, customer, _) = market(&dirs, "1.70").await;
    let first = offer_sequence(&customer);
    let someone = Keypair::from_seed([42; 32]);
    let bid = |max: &str, created_at: UnixMillis| {
        Signed::sign(
            Bid {
                version: PROTOCOL_VERSION,
                customer: someone.public(),
                gpu_model: model.clone(),
                min_memory_mib: 0,
                gpu_count: 2,
                max_price_per_gpu_hour: max.parse().unwrap(),
                hours: 1,
                region: None,
                created_at,
                expires_at: created_at.plus_ms(120_000),
            },
            &someone,
        )
        .unwrap()
    };
    // Gossip needs the mesh; a first publication may find no peers yet.
    let handle = customer.handle.clone();
    let too_cheap = bid("1.00", UnixMillis::now());
    eventually(10, "a bid published", || {
        let handle = handle.clone();
        let b = too_cheap.clone();
        async move { handle.publish(&WireMessage::Bid(b)).await.is_ok() }
    })
    .await;
    let supplier_store = supplier.store.clone();
    eventually(5, "the bid at the supplier", || {
        let store = supplier_store.clone();
        async move { store.count(Kind::Bid) == 1 }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(
        offer_sequence(&customer),
        first,
        "too cheap a bid changes nothing"
    );
    customer
        .handle
        .publish(&WireMessage::Bid(bid("2.00", UnixMillis::now())))
        .await
        .unwrap();
    let c = customer.store.clone();
    eventually(5, "a fresh offer for the bid", || {
        let store = c.clone();
        async move {
            store
                .all::<Offer>(UnixMillis::now())
                .unwrap()
                .iter()
                .any(|o| o.body.sequence > first)
        }
    })
    .await;
    for node in [customer, supplier] {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_put_refuses_malformed_amounts_and_keeps_caps_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let customer = start(Role::Customer, dir.path(), None, 0).await;
    let token = read_token(dir.path(), Bootstrap::Customer).unwrap();
    let put = |node: &RunningNode, json: &'static str| {
        let (api, token) = (node.customer_api.unwrap(), token.clone());
        async move { common::http(api, "PUT", "/v1/budget", &token, Some(json)).await }
    };
    let r = put(&customer, r#"{"account": "12.50"}"#).await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(body(&r)["account"]["cap"], "12.5");
    assert_eq!(body(&r)["account"]["remaining"], "12.5");
    for (json, says) in [
        (r#"{"account": 12.5}"#, "decimal strings"),
        (r#"{"account": "twelve"}"#, "not a decimal amount"),
        (r#"{"account": "-3"}"#, "above zero"),
        (r#"{"account": "1.0000001"}"#, "decimal places"),
        (r#"{"lease": "xyz", "cap": "1"}"#, "lease:"),
        (r#"{"acount": "1"}"#, "unknown field"),
        ("account=1", "not JSON"),
    ] {
        let r = put(&customer, json).await;
        assert_eq!(status(&r), 400, "{json}: {r}");
        assert_eq!(body(&r)["error"], "invalid");
        let reason = body(&r)["reason"].as_str().unwrap().to_string();
        assert!(reason.contains(says), "{json}: {reason}");
    }
    let unknown = format!(r#"{{"lease": "{}", "cap": "1"}}"#, Id([5; 32]));
    let r = common::http(
        customer.customer_api.unwrap(),
        "PUT",
        "/v1/budget",
        &token,
        Some(&unknown),
    )
    .await;
    assert_eq!(status(&r), 404, "{r}");
    let budget = get(&customer, "/v1/budget", &token).await;
    assert_eq!(budget["account"]["cap"], "12.5", "nothing changed");
    assert!(budget["leases"].as_array().unwrap().is_empty());
    customer.stop().await.unwrap();

    let customer = start(Role::Customer, dir.path(), None, 0).await;
    let account = get(&customer, "/v1/account", &token).await;
    assert_eq!(account["account"], account_of(&dir).to_string());
    assert_eq!(
        account["budget"]["account"]["cap"], "12.5",
        "kept across a restart"
    );
    assert_eq!(account["spent"], "0");
    assert_eq!(account["active_leases"], 0);
    assert!(account["suppliers"].as_array().unwrap().is_empty());
    let r = put(&customer, r#"{"account": null}"#).await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(body(&r)["account"]["cap"].is_null());
    customer.stop().await.unwrap();
}

/// A lease runs with one supplier while a bid hangs on another that takes
/// the lease proposal and never answers it (a raw libp2p node holding the
/// request): the running lease's attestations are still acked, the user's
/// views still answer, a second bid waits its turn, and the hanging bid
/// ends with an error when its request times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestations_are_acked_while_a_bid_waits_on_a_silent_supplier() {
    common::logs();
    let model = SimProfile::builtin("a100x4").unwrap().gpus[0].model.clone();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let supplier = start(Role::Supplier, dirs[0].path(), Some((&model, "1.70")), 1).await;
    // Long enough that several 1 s windows pass while the proposal hangs.
    let mut network = common::config();
    network.limits.request_timeout_secs = 12;
    let customer = start_with(Role::Customer, dirs[1].path(), None, 0, network).await;
    customer.handle.dial(dial_addr(&supplier)).await.unwrap();
    let token = read_token(dirs[1].path(), Bootstrap::Customer).unwrap();

    let mut silent = silent_supplier(&customer, Some(account_of(&dirs[0]))).await;

    let lease = lease_two(&customer, &token, &model).await;
    let supplier_store = supplier.store.clone();
    eventually(15, "the first ack at the supplier", || {
        let store = supplier_store.clone();
        async move { store.count(Kind::UsageAck) >= 1 }
    })
    .await;

    let api = customer.customer_api.unwrap();
    let (t, silent_bid) = (
        token.clone(),
        format!(r#"{{"gpu":"{SILENT_MODEL}","count":2,"max_price":"2.00","hours":1}}"#),
    );
    let hanging =
        tokio::spawn(async move { common::http_post(api, "/v1/bid", &t, &silent_bid).await });
    // The proposal reaches the silent supplier, which holds it unanswered.
    let proposal = held_proposal(&mut silent, &customer).await;

    // While the bid hangs, the running lease's windows are acked: the
    // acks reach the supplier, and the customer's own view shows them.
    let before = supplier.store.count(Kind::UsageAck);
    eventually(
        9,
        "three more acks at the supplier while the bid hangs",
        || {
            let store = supplier_store.clone();
            async move { store.count(Kind::UsageAck) >= before + 3 }
        },
    )
    .await;
    let leases = get(&customer, "/v1/leases", &token).await;
    let ours = leases
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lease"] == lease.as_str())
        .unwrap();
    assert!(ours["acked_windows"].as_u64().unwrap() >= 4, "{ours}");
    assert!(
        !hanging.is_finished(),
        "the bid still waits on the silent supplier"
    );

    // A second bid meanwhile waits its turn and is then leased.
    let (t, second_bid) = (
        token.clone(),
        format!(r#"{{"gpu":"{model}","count":2,"max_price":"2.00","hours":1,"window_secs":1}}"#),
    );
    let second =
        tokio::spawn(async move { common::http_post(api, "/v1/bid", &t, &second_bid).await });

    let r = hanging.await.unwrap();
    assert_eq!(status(&r), 502, "the silent supplier's bid fails: {r}");
    assert_eq!(body(&r)["error"], "failed", "{r}");
    assert!(
        body(&r)["reason"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("timeout"),
        "{r}"
    );
    drop(proposal);
    let r = second.await.unwrap();
    assert_eq!(status(&r), 200, "the queued bid is leased: {r}");
    assert_eq!(body(&r)["price_per_gpu_hour"], "1.7");
    let leases = get(&customer, "/v1/leases", &token).await;
    assert_eq!(leases.as_array().unwrap().len(), 2, "{leases}");

    // The queue's waits are on the node's metrics: three bids, one of
    // which waited behind the hanging one.
    let metrics = common::http_get(customer.monitoring, "/metrics", None).await;
    assert!(
        metrics.contains("rigmesh_customer_bid_wait_seconds_count 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rigmesh_customer_bids_queued 0"),
        "{metrics}"
    );

    silent.stop().await;
    for node in [customer, supplier] {
        node.stop().await.unwrap();
    }
}

/// A node stopped while a bid hangs on a silent supplier and another
/// waits behind it answers both: the hanging one with the network's
/// error once its task ends, the queued one busy, never placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_answers_the_bid_in_flight_and_those_queued() {
    common::logs();
    let dir = tempfile::tempdir().unwrap();
    let mut network = common::config();
    network.limits.request_timeout_secs = 60;
    let customer = start_with(Role::Customer, dir.path(), None, 0, network).await;
    let token = read_token(dir.path(), Bootstrap::Customer).unwrap();
    let mut silent = silent_supplier(&customer, None).await;

    let api = customer.customer_api.unwrap();
    let bid = format!(r#"{{"gpu":"{SILENT_MODEL}","count":2,"max_price":"2.00","hours":1}}"#);
    let post = |bid: String| {
        let t = token.clone();
        tokio::spawn(async move { common::http_post(api, "/v1/bid", &t, &bid).await })
    };
    let hanging = post(bid.clone());
    let proposal = held_proposal(&mut silent, &customer).await;
    let queued = post(bid);
    let monitoring = customer.monitoring;
    eventually(10, "the second bid queued", || async move {
        common::http_get(monitoring, "/metrics", None)
            .await
            .contains("rigmesh_customer_bids_queued 1")
    })
    .await;

    customer.stop().await.unwrap();
    let r = hanging.await.unwrap();
    assert_eq!(
        status(&r),
        502,
        "the bid in flight gets the network's error: {r}"
    );
    assert_eq!(body(&r)["error"], "failed", "{r}");
    let r = queued.await.unwrap();
    assert_eq!(status(&r), 503, "the queued bid is answered busy: {r}");
    assert_eq!(body(&r)["error"], "busy", "{r}");
    assert!(
        body(&r)["reason"].as_str().unwrap().contains("stopping"),
        "{r}"
    );
    drop(proposal);
    silent.stop().await;
}

/// A lease runs with one supplier while the user ends a lease with another
/// supplier that takes the termination and never answers it: the running
/// lease's attestations are still acked and the user's views still
/// answer; a second `end` of the same lease is told the first is under
/// way, and the first is answered once the supplier drops the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestations_are_acked_while_a_termination_waits_on_a_silent_supplier() {
    common::logs();
    let model = SimProfile::builtin("a100x4").unwrap().gpus[0].model.clone();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let supplier = start(Role::Supplier, dirs[0].path(), Some((&model, "1.70")), 1).await;
    let mut network = common::config();
    network.limits.request_timeout_secs = 30;
    let customer = start_with(Role::Customer, dirs[1].path(), None, 0, network).await;
    customer.handle.dial(dial_addr(&supplier)).await.unwrap();
    let token = read_token(dirs[1].path(), Bootstrap::Customer).unwrap();
    let mut silent = silent_supplier(&customer, Some(account_of(&dirs[0]))).await;
    lease_two(&customer, &token, &model).await;

    // The silent supplier agrees to a lease, and then goes quiet.
    let api = customer.customer_api.unwrap();
    let (t, silent_bid) = (
        token.clone(),
        format!(
            r#"{{"gpu":"{SILENT_MODEL}","count":2,"max_price":"2.00","hours":1,"window_secs":1}}"#
        ),
    );
    let bid = tokio::spawn(async move { common::http_post(api, "/v1/bid", &t, &silent_bid).await });
    let request = held_proposal(&mut silent, &customer).await;
    agree(&silent, request).await;
    let r = bid.await.unwrap();
    assert_eq!(status(&r), 200, "{r}");
    let quiet_lease = body(&r)["lease"].as_str().unwrap().to_string();

    // The user ends it; the termination reaches the silent supplier, which
    // holds it unanswered.
    let (t, path) = (token.clone(), format!("/v1/leases/{quiet_lease}/end"));
    let ending = tokio::spawn(async move { common::http_post(api, &path, &t, "").await });
    let held = tokio::time::timeout(std::time::Duration::from_secs(20), silent.inbound.recv())
        .await
        .expect("the termination reaches the silent supplier")
        .unwrap();
    assert!(matches!(
        LeaseRequest::from_bytes(&held.bytes),
        Ok(LeaseRequest::Terminate(_))
    ));

    // Meanwhile the running lease's windows are acked at the supplier.
    let supplier_store = supplier.store.clone();
    let before = supplier.store.count(Kind::UsageAck);
    eventually(
        9,
        "three more acks at the supplier while the termination hangs",
        || {
            let store = supplier_store.clone();
            async move { store.count(Kind::UsageAck) >= before + 3 }
        },
    )
    .await;
    assert!(!ending.is_finished(), "the termination still waits");
    let path = format!("/v1/leases/{quiet_lease}/end");
    let r = common::http_post(api, &path, &token, "").await;
    assert_eq!(status(&r), 409, "{r}");
    assert!(
        body(&r)["reason"].as_str().unwrap().contains("under way"),
        "{r}"
    );

    // The supplier drops the request: the user hears it did not take the
    // termination, and the lease is not marked ended.
    drop(held);
    let r = ending.await.unwrap();
    assert_eq!(status(&r), 409, "{r}");
    assert!(
        body(&r)["reason"]
            .as_str()
            .unwrap()
            .contains("the supplier refused the termination"),
        "{r}"
    );
    let leases = get(&customer, "/v1/leases", &token).await;
    let quiet = leases
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lease"] == quiet_lease.as_str())
        .unwrap();
    assert_eq!(quiet["state"], "running", "{quiet}");

    silent.stop().await;
    for node in [customer, supplier] {
        node.stop().await.unwrap();
    }
}
