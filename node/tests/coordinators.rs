//! Four coordinator nodes (f = 1), a simulated supplier and a customer,
//! each a full node on loopback with its own sled files: escrow and
//! settlement certify with one coordinator down, the returning coordinator
//! catches up to the same books; with two down nothing certifies and
//! nothing is lost; a Byzantine member that votes for anything cannot get
//! an equivocating order or a wrong payout certified.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;
#[path = "common/offers.rs"]
mod offers;
#[path = "common/silent.rs"]
mod silent;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::eventually;
use rigmesh_ledger::Account;
use rigmesh_node::api::tokens::{read_token, Bootstrap};
use rigmesh_node::config::{CoordinatorsConfig, NodeConfig, Role};
use rigmesh_node::network::Protocol;
use rigmesh_node::node::RunningNode;
use rigmesh_node::quorum::Quorum;
use rigmesh_node::supplier::SupplierConfig;
use rigmesh_node::telemetry::{GpuSourceConfig, SimProfile, SimSpec};
use rigmesh_protocol::rpc::{
    CertificateFrame, CoordinatorRequest, CoordinatorResponse, LeaseRequest, SettlementBundle,
};
use rigmesh_protocol::{
    Approval, Credits, Deposit, Keypair, Kind, Signed, UnixMillis, Withdrawal, PROTOCOL_VERSION,
};
use silent::{accept, agree, held_proposal, held_request, silent_supplier, SILENT_MODEL};

const ADMIN: [u8; 32] = [0x41; 32];

fn seed(i: usize) -> [u8; 32] {
    [0x50 + i as u8; 32]
}

fn coordinators() -> CoordinatorsConfig {
    let mut c = CoordinatorsConfig::new(
        7,
        (0..4)
            .map(|i| Keypair::from_seed(seed(i)).public())
            .collect(),
    );
    c.admin = Some(Keypair::from_seed(ADMIN).public());
    c.unacked_timeout_secs = 2;
    c.settle_every_windows = 2;
    c.reputation_report_secs = 1;
    c.release_grace_secs = 3;
    c
}

async fn start(role: Role, dir: &Path, member: Option<usize>) -> RunningNode {
    start_with(role, dir, member, |_| {}).await
}

/// [`start`], with `tweak` applied to the configuration.
async fn start_with(
    role: Role,
    dir: &Path,
    member: Option<usize>,
    tweak: impl FnOnce(&mut NodeConfig),
) -> RunningNode {
    let mut config = NodeConfig {
        role,
        data_dir: dir.to_path_buf(),
        network: common::config(),
        monitoring: "127.0.0.1:0".parse().unwrap(),
        customer_api: "127.0.0.1:0".parse().unwrap(),
        supplier_api: "127.0.0.1:0".parse().unwrap(),
        public_api: "127.0.0.1:0".parse().unwrap(),
        analytics_api: "127.0.0.1:0".parse().unwrap(),
        operator_api: "127.0.0.1:0".parse().unwrap(),
        coordinators: Some(coordinators()),
        ..NodeConfig::default()
    };
    if let Some(i) = member {
        let path = dir.join("account.key");
        if !path.exists() {
            rigmesh_node::keyfile::write_seed(&path, &seed(i)).unwrap();
        }
    }
    if role == Role::Supplier {
        let profile = SimProfile::builtin("a100x4").unwrap().with_seed(3);
        let model = profile.gpus[0].model.clone();
        config.supplier = SupplierConfig {
            gpus: GpuSourceConfig::Sim(SimSpec::Profile(profile)),
            prices: [(model, "1.70".parse().unwrap())].into(),
            ..SupplierConfig::default()
        };
    }
    tweak(&mut config);
    rigmesh_node::node::start(config).await.unwrap()
}

fn dial_addr(node: &RunningNode) -> libp2p::Multiaddr {
    node.listen_addrs[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(node.peer_id))
}

async fn mesh(nodes: &[&RunningNode]) {
    for (i, a) in nodes.iter().enumerate() {
        for b in nodes.iter().skip(i + 1) {
            a.handle.dial(dial_addr(b)).await.unwrap();
        }
    }
}

fn account_of(dir: &Path) -> Keypair {
    Keypair::from_seed(rigmesh_node::keyfile::read_seed(&dir.join("account.key")).unwrap())
}

fn deposit(account: &Keypair, credits: &str, reference: &str) -> Signed<Deposit> {
    Signed::sign(
        Deposit {
            version: PROTOCOL_VERSION,
            epoch: 7,
            admin: Keypair::from_seed(ADMIN).public(),
            account: account.public(),
            amount: credits.parse().unwrap(),
            reference: reference.into(),
            created_at: UnixMillis::now(),
        },
        &Keypair::from_seed(ADMIN),
    )
    .unwrap()
}

/// The books of a coordinator: every balance, and the invariant checked.
fn books(node: &RunningNode) -> BTreeMap<String, Credits> {
    let role = node.coordinator.as_ref().unwrap();
    let report = role.ledger.check_books().unwrap();
    assert_eq!(
        report.totals.held().unwrap(),
        report.totals.external.checked_neg().unwrap(),
        "balances + escrow = deposits - withdrawals"
    );
    rigmesh_ledger::Coordinator::new(&role.ledger, &Keypair::from_seed([0; 32]), &role.config)
        .snapshot()
        .unwrap()
}

fn balance(node: &RunningNode, account: &Keypair) -> Credits {
    node.coordinator
        .as_ref()
        .unwrap()
        .ledger
        .balance(&Account::User(account.public()))
        .unwrap()
}

fn body(response: &str) -> serde_json::Value {
    serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

/// Four coordinators, a supplier and a customer in `dirs` (six of them),
/// all connected.
async fn market(dirs: &[tempfile::TempDir]) -> (Vec<RunningNode>, RunningNode, RunningNode) {
    market_with(dirs, |_| {}, |_| {}).await
}

/// [`market`], with `supplier` applied to the supplier's configuration and
/// `customer` to the customer's.
async fn market_with(
    dirs: &[tempfile::TempDir],
    supplier: impl FnOnce(&mut NodeConfig),
    customer: impl FnOnce(&mut NodeConfig),
) -> (Vec<RunningNode>, RunningNode, RunningNode) {
    let mut cs = Vec::new();
    for (i, dir) in dirs.iter().take(4).enumerate() {
        cs.push(start(Role::Coordinator, dir.path(), Some(i)).await);
    }
    let supplier = start_with(Role::Supplier, dirs[4].path(), None, supplier).await;
    let customer = start_with(Role::Customer, dirs[5].path(), None, customer).await;
    let all: Vec<&RunningNode> = cs.iter().chain([&supplier, &customer]).collect();
    mesh(&all).await;
    (cs, supplier, customer)
}

/// [`market`], once the customer knows every node's binding and the
/// supplier's offer.
async fn ready_market(dirs: &[tempfile::TempDir]) -> (Vec<RunningNode>, RunningNode, RunningNode) {
    ready_market_with(dirs, |_| {}, |_| {}).await
}

/// [`ready_market`], with `supplier` applied to the supplier's
/// configuration and `customer` to the customer's.
async fn ready_market_with(
    dirs: &[tempfile::TempDir],
    supplier: impl FnOnce(&mut NodeConfig),
    customer: impl FnOnce(&mut NodeConfig),
) -> (Vec<RunningNode>, RunningNode, RunningNode) {
    let (cs, supplier, customer) = market_with(dirs, supplier, customer).await;
    // The offer counts once it is in the order book a bid reads, not only
    // in the store.
    let (store, book) = (customer.store.clone(), customer.book.clone());
    eventually(20, "bindings and an offer at the customer", || {
        let (store, book) = (store.clone(), book.clone());
        async move { store.count(Kind::NodeBinding) >= 5 && !book.is_empty() }
    })
    .await;
    (cs, supplier, customer)
}

/// The customer API's answer to a bid for one simulated A100 for an hour
/// in 1 s windows at up to 2.50, with `extra` JSON fields (such as a
/// budget), by the customer whose data directory is `dir`.
async fn bid_one(customer: &RunningNode, dir: &Path, extra: &str) -> String {
    let model = SimProfile::builtin("a100x4").unwrap().gpus[0].model.clone();
    let token = read_token(dir, Bootstrap::Customer).unwrap();
    let request = format!(
        r#"{{"gpu":"{model}","count":1,"max_price":"2.50","hours":1,"window_secs":1{extra}}}"#
    );
    common::http_post(customer.customer_api.unwrap(), "/v1/bid", &token, &request).await
}

/// The lease's book at coordinator `c`, if its escrow is applied there.
fn lease_book(c: &RunningNode, lease: &rigmesh_protocol::Id) -> Option<rigmesh_ledger::LeaseBook> {
    c.coordinator
        .as_ref()
        .unwrap()
        .ledger
        .lease_book(lease)
        .unwrap()
}

/// Deposits `credits` for the customer of `node` through its quorum client.
/// Waits up to `secs` for `lease`'s final settlement to be applied at
/// every coordinator of `cs`.
async fn closed_everywhere(cs: &[RunningNode], lease: rigmesh_protocol::Id, secs: u64) {
    eventually(
        secs,
        "the final settlement on every coordinator",
        || async move {
            cs.iter()
                .all(|c| lease_book(c, &lease).is_some_and(|b| b.closed))
        },
    )
    .await;
}

async fn fund(node: &RunningNode, account: &Keypair, credits: &str, reference: &str) {
    node.quorum
        .as_ref()
        .unwrap()
        .deliver(CertificateFrame::Deposit(deposit(
            account, credits, reference,
        )))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escrow_and_settlement_with_one_coordinator_down_and_its_catch_up() {
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut cs, supplier, customer) = market(&dirs).await;
    for node in [&supplier, &customer] {
        let store = node.store.clone();
        eventually(20, "coordinator and supplier bindings", || {
            let store = store.clone();
            async move { store.count(Kind::NodeBinding) >= 5 && store.count(Kind::Offer) >= 1 }
        })
        .await;
    }

    // Coordinator 3 goes down; the other three are a quorum.
    let down = cs.pop().unwrap();
    down.stop().await.unwrap();
    let buyer = account_of(dirs[5].path());
    let quorum: &Quorum = customer.quorum.as_ref().unwrap();
    let applied = quorum
        .deliver(CertificateFrame::Deposit(deposit(
            &buyer,
            "100",
            "wire-0001",
        )))
        .await;
    assert_eq!(applied, 3, "the three live coordinators apply the deposit");

    let model = SimProfile::builtin("a100x4").unwrap().gpus[0].model.clone();
    let token = read_token(dirs[5].path(), Bootstrap::Customer).unwrap();
    let request =
        format!(r#"{{"gpu":"{model}","count":2,"max_price":"2.50","hours":1,"window_secs":1}}"#);
    let r = common::http_post(customer.customer_api.unwrap(), "/v1/bid", &token, &request).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let lease = body(&r);
    assert_eq!(lease["escrowed"], "3.4", "2 GPUs x 1 h x 1.70");
    for c in &cs {
        assert_eq!(balance(c, &buyer), "96.6".parse().unwrap());
    }
    // Both sides count the lease in the market's demand, once, and for
    // the GPU model of the supplier's offers, from its escrow certificate.
    let model_series = format!(
        "market/{}/leases_started",
        rigmesh_node::trends::book::model_key(&model)
    );
    for (node, dir, bootstrap) in [
        (&customer, dirs[5].path(), Bootstrap::Customer),
        (&supplier, dirs[4].path(), Bootstrap::Supplier),
    ] {
        let api = node.analytics_api.unwrap();
        let token = read_token(dir, bootstrap).unwrap();
        for series in ["market/leases_started", model_series.as_str()] {
            let path = format!("/v1/series/{series}?hours=2");
            eventually(20, "the lease counted in the market series", || {
                let (token, path) = (token.clone(), path.clone());
                async move {
                    let r = common::http_get(api, &path, Some(&token)).await;
                    let points = body(&r)["points"].as_array().cloned().unwrap_or_default();
                    points
                        .iter()
                        .map(|p| p["value"].as_f64().unwrap())
                        .sum::<f64>()
                        == 1.0
                }
            })
            .await;
        }
    }

    // Windows are attested, acked and settled in pairs.
    let seller = account_of(dirs[4].path());
    let supplier_token = read_token(dirs[4].path(), Bootstrap::Supplier).unwrap();
    let api = supplier.supplier_api.unwrap();
    eventually(90, "two settlement certificates", || {
        let token = supplier_token.clone();
        async move {
            let r = common::http_get(api, "/v1/leases", Some(&token)).await;
            body(&r)[0]["settled"]["certificates"]
                .as_array()
                .is_some_and(|c| c.len() >= 2)
        }
    })
    .await;
    let cs_ref = &cs;
    eventually(20, "the live coordinators agree", || async move {
        let first = books(&cs_ref[0]);
        cs_ref.iter().all(|c| books(c) == first)
    })
    .await;
    let earned = balance(&cs[0], &seller);
    assert!(earned > Credits::ZERO, "the supplier was paid");

    // Each coordinator scores the supplier from the settlements it applied
    // and gossips a signed report; the customer's order book uses them.
    let store = customer.store.clone();
    eventually(20, "reputation reports from the live coordinators", || {
        let store = store.clone();
        async move { store.count(Kind::ReputationReport) >= 6 }
    })
    .await;
    let set = customer.quorum.as_ref().unwrap().set().clone();
    let scores = rigmesh_node::customer::reputation::supplier_scores(
        &customer.store,
        Some(&set),
        UnixMillis::now(),
    );
    let score = scores[&seller.public()];
    assert!(
        (1..10_000).contains(&score),
        "the first window is short of the full GPU time, so the score is below spotless: {score}"
    );
    let picky = format!(
        r#"{{"gpu":"{model}","count":1,"max_price":"2.50","hours":1,"min_reputation_bp":{}}}"#,
        score + 1
    );
    let r = common::http_post(customer.customer_api.unwrap(), "/v1/bid", &token, &picky).await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    assert!(r.contains("1 from suppliers below reputation"), "{r}");
    let fees = cs[0]
        .coordinator
        .as_ref()
        .unwrap()
        .ledger
        .balance(&Account::Fees)
        .unwrap();
    assert!(fees > Credits::ZERO, "the fee account was paid");

    // Coordinator 3 returns from its files and catches up by sync.
    let back = start(Role::Coordinator, dirs[3].path(), Some(3)).await;
    for node in cs.iter().chain([&supplier, &customer]) {
        back.handle.dial(dial_addr(node)).await.unwrap();
    }
    let (back_ref, cs_ref) = (&back, &cs);
    eventually(
        40,
        "the returning coordinator's books equal the others'",
        || async move { books(back_ref) == books(&cs_ref[0]) },
    )
    .await;
    assert!(balance(&back, &seller) >= earned);

    // The customer's account: each coordinator's view, and the
    // certificates behind it, each verified here.
    let r = common::http_get(customer.customer_api.unwrap(), "/v1/account", Some(&token)).await;
    let account = body(&r);
    assert_eq!(account["coordinators"].as_array().unwrap().len(), 4, "{r}");
    let receipts = account["receipts"].as_array().unwrap();
    let kinds: Vec<&str> = receipts
        .iter()
        .map(|x| x["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"deposit") && kinds.contains(&"escrow_certificate"),
        "{kinds:?}"
    );
    assert!(
        receipts
            .iter()
            .all(|x| x["verified"] == serde_json::json!(true)),
        "{r}"
    );

    // The customer ends the lease; the final settlement refunds the rest.
    let lease_id = lease["lease"].as_str().unwrap().to_string();
    let r = common::http_post(
        customer.customer_api.unwrap(),
        &format!("/v1/leases/{lease_id}/end"),
        &token,
        "{}",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let api = customer.customer_api.unwrap();
    let token_ref = &token;
    eventually(90, "the final settlement at the customer", || async move {
        let r = common::http_get(api, "/v1/leases", Some(token_ref)).await;
        body(&r)[0]["settlement"]["closed"] == serde_json::json!(true)
    })
    .await;
    let r = common::http_get(customer.customer_api.unwrap(), "/v1/leases", Some(&token)).await;
    let settled = &body(&r)[0]["settlement"];
    let paid: Credits = settled["paid"].as_str().unwrap().parse().unwrap();
    let refunded: Credits = settled["refunded"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        paid.checked_add(refunded).unwrap(),
        "3.4".parse().unwrap(),
        "the escrow is paid out or refunded, to the unit"
    );
    let all_four: Vec<&RunningNode> = cs.iter().chain([&back]).collect();
    let (all_ref, buyer_ref) = (&all_four, &buyer);
    eventually(
        30,
        "every coordinator applied the final settlement",
        || async move {
            all_ref.iter().all(|c| {
                balance(c, buyer_ref)
                    == "100".parse::<Credits>().unwrap().checked_sub(paid).unwrap()
            })
        },
    )
    .await;
    let first = books(&cs[0]);
    assert!(all_four.iter().all(|c| books(c) == first));
    // Each certificate reached the coordinators that stayed up both
    // handed over and gossiped; its bytes were checked once at each.
    for c in &cs {
        let monitoring = c.monitoring;
        eventually(
            20,
            "certificate checks spared at a coordinator",
            || async move {
                let metrics = common::http_get(monitoring, "/metrics", None).await;
                metrics.lines().any(|line| {
                    line.strip_prefix("rigmesh_certificate_checks_skipped_total ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .is_some_and(|n| n >= 1)
                })
            },
        )
        .await;
    }

    for node in cs.into_iter().chain([back, supplier, customer]) {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_down_certify_nothing_and_progress_resumes() {
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut cs, supplier, customer) = market(&dirs).await;
    let store = customer.store.clone();
    eventually(20, "bindings at the customer", || {
        let store = store.clone();
        async move { store.count(Kind::NodeBinding) >= 5 && store.count(Kind::Offer) >= 1 }
    })
    .await;
    let buyer = account_of(dirs[5].path());
    let quorum = customer.quorum.as_ref().unwrap();
    assert_eq!(
        quorum
            .deliver(CertificateFrame::Deposit(deposit(
                &buyer,
                "10",
                "wire-0002"
            )))
            .await,
        4
    );
    let third = cs.pop().unwrap();
    let second = cs.pop().unwrap();
    third.stop().await.unwrap();
    second.stop().await.unwrap();

    let model = SimProfile::builtin("a100x4").unwrap().gpus[0].model.clone();
    let token = read_token(dirs[5].path(), Bootstrap::Customer).unwrap();
    let request =
        format!(r#"{{"gpu":"{model}","count":1,"max_price":"2.50","hours":1,"window_secs":1}}"#);
    let r = common::http_post(customer.customer_api.unwrap(), "/v1/bid", &token, &request).await;
    assert!(!r.starts_with("HTTP/1.1 200"), "no quorum, no lease: {r}");
    assert!(r.contains("2 of 4 coordinators answered"), "{r}");
    for c in &cs {
        assert_eq!(balance(c, &buyer), "10".parse().unwrap(), "nothing moved");
    }

    // One returns: three of four is a quorum again.
    let back = start(Role::Coordinator, dirs[3].path(), Some(3)).await;
    for node in cs.iter().chain([&supplier, &customer]) {
        back.handle.dial(dial_addr(node)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut leased = false;
    for _ in 0..10 {
        let r =
            common::http_post(customer.customer_api.unwrap(), "/v1/bid", &token, &request).await;
        if r.starts_with("HTTP/1.1 200") {
            leased = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    assert!(leased, "progress resumes with a quorum");
    let (back_ref, buyer_ref) = (&back, &buyer);
    eventually(
        20,
        "escrow applied at the returned coordinator",
        || async move { balance(back_ref, buyer_ref) == "8.3".parse().unwrap() },
    )
    .await;

    // Withdrawals share the debit sequence: an overdraw is refused and
    // locks nothing; a covered one is certified and leaves everywhere.
    let quorum = customer.quorum.as_ref().unwrap();
    let refused = quorum
        .withdraw(&buyer, "9".parse().unwrap(), "iban:DE00 0000")
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("insufficient_balance"),
        "{refused}"
    );
    let certificate = quorum
        .withdraw(&buyer, "3".parse().unwrap(), "iban:DE00 0000")
        .await
        .unwrap();
    assert_eq!(certificate.message.body.seq, 1, "after the escrow at seq 0");
    let live: Vec<&RunningNode> = cs.iter().chain([&back]).collect();
    let (live_ref, buyer_ref) = (&live, &buyer);
    eventually(20, "the withdrawal applied everywhere", || async move {
        live_ref
            .iter()
            .all(|c| balance(c, buyer_ref) == "5.3".parse().unwrap())
    })
    .await;
    for c in &live {
        let report = c
            .coordinator
            .as_ref()
            .unwrap()
            .ledger
            .check_books()
            .unwrap();
        assert_eq!(
            report.totals.external,
            "-7".parse().unwrap(),
            "deposits 10 - withdrawals 3"
        );
    }
    for node in cs.into_iter().chain([back, supplier, customer]) {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_that_restarts_mid_lease_settles_what_it_metered() {
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let (cs, supplier, customer) = market(&dirs).await;
    let store = customer.store.clone();
    eventually(20, "bindings at the customer", || {
        let store = store.clone();
        async move { store.count(Kind::NodeBinding) >= 5 && store.count(Kind::Offer) >= 1 }
    })
    .await;
    let buyer = account_of(dirs[5].path());
    let seller = account_of(dirs[4].path());
    let quorum = customer.quorum.as_ref().unwrap();
    quorum
        .deliver(CertificateFrame::Deposit(deposit(
            &buyer,
            "20",
            "wire-0003",
        )))
        .await;
    let model = SimProfile::builtin("a100x4").unwrap().gpus[0].model.clone();
    let token = read_token(dirs[5].path(), Bootstrap::Customer).unwrap();
    let request =
        format!(r#"{{"gpu":"{model}","count":1,"max_price":"2.50","hours":1,"window_secs":1}}"#);
    let r = common::http_post(customer.customer_api.unwrap(), "/v1/bid", &token, &request).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let supplier_store = supplier.store.clone();
    eventually(60, "acks of three windows at the supplier", || {
        let store = supplier_store.clone();
        async move { store.count(Kind::UsageAck) >= 3 }
    })
    .await;

    // The supplier stops mid-lease and comes back from its files.
    drop(supplier_store);
    supplier.stop().await.unwrap();
    let supplier = start(Role::Supplier, dirs[4].path(), None).await;
    for node in cs.iter().chain([&customer]) {
        supplier.handle.dial(dial_addr(node)).await.unwrap();
    }
    let supplier_token = read_token(dirs[4].path(), Bootstrap::Supplier).unwrap();
    let api = supplier.supplier_api.unwrap();
    eventually(90, "the final settlement of what was metered", || {
        let token = supplier_token.clone();
        async move {
            let r = common::http_get(api, "/v1/leases", Some(&token)).await;
            body(&r)[0]["settled"]["closed"] == serde_json::json!(true)
        }
    })
    .await;
    let r = common::http_get(api, "/v1/leases", Some(&supplier_token)).await;
    let settled = &body(&r)[0]["settled"];
    let earned: Credits = settled["earned"].as_str().unwrap().parse().unwrap();
    let fees: Credits = settled["fees"].as_str().unwrap().parse().unwrap();
    assert!(settled["windows"].as_u64().unwrap() >= 3, "{settled}");
    // The closed lease is in the supplier's lease history with every
    // window it attested, before the restart too, and its settlement
    // state file is gone; it still counts in the supplier's earnings.
    let listed = &body(&r)[0];
    assert_eq!(listed["windows_attested"], settled["windows"], "{listed}");
    let lease_id = listed["lease"].as_str().unwrap();
    let state_file = dirs[4]
        .path()
        .join("settlement")
        .join(format!("{lease_id}.json"));
    assert!(!state_file.exists(), "{}", state_file.display());
    let r = common::http_get(api, "/v1/earnings", Some(&supplier_token)).await;
    assert_eq!(body(&r)["settled_total"], settled["earned"], "{r}");
    assert_eq!(body(&r)["leases_total"], 1, "{r}");
    let (cs_ref, seller_ref) = (&cs, &seller);
    eventually(
        20,
        "every coordinator applied the final settlement",
        || async move {
            let first = books(&cs_ref[0]);
            cs_ref.iter().all(|c| books(c) == first)
                && cs_ref.iter().all(|c| balance(c, seller_ref) == earned)
        },
    )
    .await;
    // To the unit: the customer paid exactly what the supplier and the fee
    // account received, and the rest of the escrow came back.
    let paid = earned.checked_add(fees).unwrap();
    for c in &cs {
        assert_eq!(
            balance(c, &buyer),
            "20".parse::<Credits>().unwrap().checked_sub(paid).unwrap()
        );
        let role = c.coordinator.as_ref().unwrap();
        assert_eq!(
            role.ledger.escrowed_by(&buyer.public()).unwrap(),
            Credits::ZERO
        );
    }
    for node in cs.into_iter().chain([supplier, customer]) {
        node.stop().await.unwrap();
    }
}

/// A member that votes for anything it is asked about, without checks.
async fn byzantine_member(
    member: Keypair,
    set: rigmesh_protocol::CoordinatorSet,
) -> common::TestNode {
    use rigmesh_protocol::rpc::{CoordinatorRequest, CoordinatorResponse};
    use rigmesh_protocol::Certificate;
    let mut node = common::spawn(
        std::sync::Arc::new(common::temp_store()),
        libp2p::identity::Keypair::generate_ed25519(),
        common::config(),
        Some(set),
    )
    .await;
    let handle = node.handle.clone();
    let mut inbound = std::mem::replace(&mut node.inbound, tokio::sync::mpsc::channel(1).1);
    tokio::spawn(async move {
        while let Some(request) = inbound.recv().await {
            let answer = match CoordinatorRequest::from_bytes(&request.bytes) {
                Ok(CoordinatorRequest::Escrow { order, .. }) => CoordinatorResponse::Vote(
                    Signed::sign(
                        Certificate::vote_for(&order, member.public()).unwrap(),
                        &member,
                    )
                    .unwrap(),
                ),
                Ok(CoordinatorRequest::Settle(bundle)) => CoordinatorResponse::Vote(
                    Signed::sign(
                        Certificate::vote_for(&bundle.request, member.public()).unwrap(),
                        &member,
                    )
                    .unwrap(),
                ),
                _ => CoordinatorResponse::Refused("not today".into()),
            };
            let _ = handle
                .respond(
                    request.protocol,
                    request.channel,
                    answer.to_bytes().unwrap(),
                )
                .await;
        }
    });
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byzantine_member_cannot_certify_a_double_spend_or_a_wrong_payout() {
    use rigmesh_protocol::rpc::{CoordinatorRequest, SettlementBundle};
    use rigmesh_protocol::{
        EscrowOrder, GpuUsage, Id, LeaseAgreement, LeaseProposal, SettlementRequest, UsageAck,
        UsageAttestation,
    };
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut cs = Vec::new();
    for (i, dir) in dirs.iter().take(3).enumerate() {
        cs.push(start(Role::Coordinator, dir.path(), Some(i)).await);
    }
    let customer = start(Role::Customer, dirs[3].path(), None).await;
    let set = customer.quorum.as_ref().unwrap().set().clone();
    let member = Keypair::from_seed(seed(3));
    let liar = byzantine_member(member.clone(), set.clone()).await;
    let all: Vec<&RunningNode> = cs.iter().chain([&customer]).collect();
    mesh(&all).await;
    for node in &all {
        node.handle.dial(liar.dial_addr()).await.unwrap();
    }
    let binding = rigmesh_protocol::NodeBinding {
        version: PROTOCOL_VERSION,
        account: member.public(),
        peer_id: liar.peer_id().to_bytes(),
        created_at: UnixMillis::now(),
        expires_at: UnixMillis::now().plus_ms(3_600_000),
    };
    let binding =
        rigmesh_protocol::wire::WireMessage::NodeBinding(Signed::sign(binding, &member).unwrap());
    let store = customer.store.clone();
    let liar_handle = liar.handle.clone();
    eventually(20, "all four members reachable", || {
        let (store, liar_handle, binding) = (store.clone(), liar_handle.clone(), binding.clone());
        async move {
            let _ = liar_handle.publish(&binding).await;
            store.count(Kind::NodeBinding) >= 4
        }
    })
    .await;

    let quorum = customer.quorum.as_ref().unwrap();
    let buyer = account_of(dirs[3].path());
    let seller = Keypair::from_seed([0x66; 32]);
    assert_eq!(
        quorum
            .deliver(CertificateFrame::Deposit(deposit(
                &buyer,
                "10",
                "wire-0004"
            )))
            .await,
        3,
        "the honest three apply the deposit"
    );
    let t = UnixMillis::now().minus_ms(120_000);
    let proposal = Signed::sign(
        LeaseProposal {
            version: PROTOCOL_VERSION,
            customer: buyer.public(),
            supplier: seller.public(),
            offer: Id([9; 32]),
            gpu_count: 1,
            price_per_gpu_hour: "2.49".parse().unwrap(),
            hours: 1,
            window_secs: 60,
            nonce: 1,
            created_at: t,
            expires_at: t.plus_ms(60_000),
        },
        &buyer,
    )
    .unwrap();
    let agreement = Signed::sign(
        LeaseAgreement {
            version: PROTOCOL_VERSION,
            supplier: seller.public(),
            proposal,
            gpu_indices: vec![0],
            hardware_fingerprint: Id([7; 32]),
            starts_at: t,
            ends_at: t.plus_ms(3_600_000),
            created_at: t,
        },
        &seller,
    )
    .unwrap();
    let lease = agreement.id().unwrap();
    let order = |amount: &str| {
        let now = UnixMillis::now();
        Signed::sign(
            EscrowOrder {
                version: PROTOCOL_VERSION,
                account: buyer.public(),
                seq: 0,
                epoch: 7,
                lease,
                supplier: seller.public(),
                amount: amount.parse().unwrap(),
                created_at: now,
                expires_at: now.plus_ms(600_000),
            },
            &buyer,
        )
        .unwrap()
    };
    let escrow_request = |o: &Signed<EscrowOrder>| CoordinatorRequest::Escrow {
        order: o.clone(),
        agreement: Box::new(agreement.clone()),
        missing: Vec::new(),
    };

    // The customer signs two orders at one seq: the first is certified,
    // the second gets only the Byzantine member's vote.
    let first = order("2.49");
    let second = order("9.00");
    let escrow = quorum
        .certify(&first, &escrow_request(&first))
        .await
        .unwrap();
    let refused = quorum
        .certify(&second, &escrow_request(&second))
        .await
        .unwrap_err();
    assert_eq!(refused.votes, 1, "{refused}");
    assert!(
        refused.to_string().contains("conflicting_order"),
        "{refused}"
    );
    quorum
        .deliver(CertificateFrame::Escrow(Box::new(escrow.clone())))
        .await;

    // A settlement that overpays the supplier: only the liar signs it.
    let attestation = Signed::sign(
        UsageAttestation {
            version: PROTOCOL_VERSION,
            lease,
            supplier: seller.public(),
            customer: buyer.public(),
            seq: 0,
            prev: Id::ZERO,
            window_start: t,
            window_end: t.plus_ms(60_000),
            gpus: vec![GpuUsage {
                gpu_index: 0,
                billable_ms: 60_000,
                mean_util_bp: 9_000,
                peak_util_bp: 10_000,
                peak_memory_mib: 1_000,
                energy_mj: 24_000_000,
            }],
            billable_gpu_ms: 60_000,
            created_at: t.plus_ms(60_000),
        },
        &seller,
    )
    .unwrap();
    let ack = Signed::sign(
        UsageAck {
            version: PROTOCOL_VERSION,
            lease,
            customer: buyer.public(),
            attestation: attestation.id().unwrap(),
            seq: 0,
            created_at: UnixMillis::now(),
        },
        &buyer,
    )
    .unwrap();
    // 1 GPU-minute at 2.49/h = 0.0415; 1 % fee; the rest refunded.
    let request = |supplier_amount: &str, fee: &str, refund: &str| {
        Signed::sign(
            SettlementRequest {
                version: PROTOCOL_VERSION,
                lease,
                supplier: seller.public(),
                customer: buyer.public(),
                settlement_seq: 0,
                epoch: 7,
                escrow: first.id().unwrap(),
                first_window: 0,
                last_window: 0,
                attestation_head: attestation.id().unwrap(),
                billable_gpu_ms: 60_000,
                supplier_amount: supplier_amount.parse().unwrap(),
                fee: fee.parse().unwrap(),
                refund: refund.parse().unwrap(),
                held: Credits::ZERO,
                final_settlement: true,
                created_at: UnixMillis::now(),
            },
            &seller,
        )
        .unwrap()
    };
    let bundle = |r: &Signed<SettlementRequest>| {
        CoordinatorRequest::Settle(Box::new(SettlementBundle {
            request: r.clone(),
            agreement: agreement.clone(),
            escrow: None,
            attestations: vec![attestation.clone()],
            acks: vec![ack.clone()],
            disputes: Vec::new(),
            earlier: Vec::new(),
        }))
    };
    let greedy = request("1.0", "0.0", "1.49");
    let refused = quorum.certify(&greedy, &bundle(&greedy)).await.unwrap_err();
    assert_eq!(refused.votes, 1, "{refused}");
    assert!(refused.to_string().contains("payout_mismatch"), "{refused}");
    let fair = request("0.041085", "0.000415", "2.4485");
    let cert = quorum.certify(&fair, &bundle(&fair)).await.unwrap();
    assert_eq!(
        quorum
            .deliver(CertificateFrame::Settlement(Box::new(cert)))
            .await,
        3
    );
    let first_books = books(&cs[0]);
    for c in &cs {
        assert_eq!(books(c), first_books, "honest balances agree");
        assert_eq!(balance(c, &seller), "0.041085".parse().unwrap());
        assert_eq!(balance(c, &buyer), "9.958500".parse().unwrap());
    }
    for node in cs.into_iter().chain([customer]) {
        node.stop().await.unwrap();
    }
    liar.stop().await;
}

/// A lease the test plays by hand as a dishonest supplier: 1 GPU at 3.6
/// per GPU-hour in 1 s windows (0.001 a window), started `ago` ms before
/// now so every window is past the coordinators' unacked timeout.
struct HandLease {
    agreement: Signed<rigmesh_protocol::LeaseAgreement>,
    attestations: Vec<Signed<rigmesh_protocol::UsageAttestation>>,
    lease: rigmesh_protocol::Id,
    start: UnixMillis,
}

fn hand_lease(buyer: &Keypair, seller: &Keypair, nonce: u64, windows: u64) -> HandLease {
    use rigmesh_protocol::{GpuUsage, Id, LeaseAgreement, LeaseProposal, UsageAttestation};
    let t = UnixMillis::now().minus_ms(120_000);
    let proposal = Signed::sign(
        LeaseProposal {
            version: PROTOCOL_VERSION,
            customer: buyer.public(),
            supplier: seller.public(),
            offer: Id([9; 32]),
            gpu_count: 1,
            price_per_gpu_hour: "3.6".parse().unwrap(),
            hours: 1,
            window_secs: 1,
            nonce,
            created_at: t,
            expires_at: t.plus_ms(60_000),
        },
        buyer,
    )
    .unwrap();
    let agreement = Signed::sign(
        LeaseAgreement {
            version: PROTOCOL_VERSION,
            supplier: seller.public(),
            proposal,
            gpu_indices: vec![0],
            hardware_fingerprint: Id([7; 32]),
            starts_at: t,
            ends_at: t.plus_ms(3_600_000),
            created_at: t,
        },
        seller,
    )
    .unwrap();
    let lease = agreement.id().unwrap();
    let mut prev = Id::ZERO;
    let mut attestations = Vec::new();
    for seq in 0..windows {
        let start = t.plus_ms(seq * 1000);
        let a = Signed::sign(
            UsageAttestation {
                version: PROTOCOL_VERSION,
                lease,
                supplier: seller.public(),
                customer: buyer.public(),
                seq,
                prev,
                window_start: start,
                window_end: start.plus_ms(1000),
                gpus: vec![GpuUsage {
                    gpu_index: 0,
                    billable_ms: 1000,
                    mean_util_bp: 9_000,
                    peak_util_bp: 10_000,
                    peak_memory_mib: 1_000,
                    energy_mj: 400_000,
                }],
                billable_gpu_ms: 1000,
                created_at: start.plus_ms(1000),
            },
            seller,
        )
        .unwrap();
        prev = a.id().unwrap();
        attestations.push(a);
    }
    HandLease {
        agreement,
        attestations,
        lease,
        start: t,
    }
}

/// Four coordinators and a customer node, meshed, and the customer's
/// deposit of 10 (`reference`) at every member: the stage for leases made
/// by hand.
async fn hand_market(
    dirs: &[tempfile::TempDir],
    reference: &str,
) -> (Vec<RunningNode>, RunningNode) {
    hand_market_with(dirs, reference, |_| {}).await
}

/// [`hand_market`], with `coordinator` applied to each coordinator's
/// configuration.
async fn hand_market_with(
    dirs: &[tempfile::TempDir],
    reference: &str,
    coordinator: impl Fn(&mut NodeConfig),
) -> (Vec<RunningNode>, RunningNode) {
    let mut cs = Vec::new();
    for (i, dir) in dirs.iter().take(4).enumerate() {
        cs.push(start_with(Role::Coordinator, dir.path(), Some(i), &coordinator).await);
    }
    let customer = start(Role::Customer, dirs[4].path(), None).await;
    let all: Vec<&RunningNode> = cs.iter().chain([&customer]).collect();
    mesh(&all).await;
    let store = customer.store.clone();
    eventually(20, "all four members reachable", || {
        let store = store.clone();
        async move { store.count(Kind::NodeBinding) >= 4 }
    })
    .await;
    let buyer = account_of(dirs[4].path());
    let delivered = customer
        .quorum
        .as_ref()
        .unwrap()
        .deliver(CertificateFrame::Deposit(deposit(&buyer, "10", reference)))
        .await;
    assert_eq!(delivered, 4);
    (cs, customer)
}

/// `buyer`'s escrow order `seq` of `cap` for `hand`'s lease with `seller`,
/// and the request that asks the coordinators for it.
fn hand_escrow(
    buyer: &Keypair,
    seller: &Keypair,
    hand: &HandLease,
    seq: u64,
    cap: Credits,
) -> (Signed<rigmesh_protocol::EscrowOrder>, CoordinatorRequest) {
    let now = UnixMillis::now();
    let order = Signed::sign(
        rigmesh_protocol::EscrowOrder {
            version: PROTOCOL_VERSION,
            account: buyer.public(),
            seq,
            epoch: 7,
            lease: hand.lease,
            supplier: seller.public(),
            amount: cap,
            created_at: now,
            expires_at: now.plus_ms(600_000),
        },
        buyer,
    )
    .unwrap();
    let request = CoordinatorRequest::Escrow {
        order: order.clone(),
        agreement: Box::new(hand.agreement.clone()),
        missing: Vec::new(),
    };
    (order, request)
}

/// Certifies `message` through `quorum` with `request`, hands the
/// certificate (made a frame by `frame`) to every member and gossips it;
/// returns how many members applied it.
async fn certify_and_deliver<T: rigmesh_protocol::Certifiable>(
    quorum: &Quorum,
    message: &Signed<T>,
    request: &CoordinatorRequest,
    frame: impl FnOnce(Box<rigmesh_protocol::Certificate<T>>) -> CertificateFrame,
) -> usize {
    let certificate = quorum.certify(message, request).await.unwrap();
    quorum.deliver(frame(Box::new(certificate))).await
}

/// `seller`'s final settlement (the lease's first) of every window of
/// `hand`, paying `gpu_ms` of them out of `escrow`'s `cap` at
/// `fee_rate`.
fn hand_final_settlement(
    seller: &Keypair,
    hand: &HandLease,
    escrow: &Signed<rigmesh_protocol::EscrowOrder>,
    gpu_ms: u64,
    cap: Credits,
    fee_rate: rigmesh_ledger::FeeRate,
) -> Signed<rigmesh_protocol::SettlementRequest> {
    let p = rigmesh_ledger::billing::payout("3.6".parse().unwrap(), gpu_ms, cap, fee_rate, true)
        .unwrap();
    Signed::sign(
        rigmesh_protocol::SettlementRequest {
            version: PROTOCOL_VERSION,
            lease: hand.lease,
            supplier: seller.public(),
            customer: escrow.body.account,
            settlement_seq: 0,
            epoch: 7,
            escrow: escrow.id().unwrap(),
            first_window: 0,
            last_window: hand.attestations.len() as u64 - 1,
            attestation_head: hand.attestations.last().unwrap().id().unwrap(),
            billable_gpu_ms: p.billable_gpu_ms,
            supplier_amount: p.supplier,
            fee: p.fee,
            refund: p.refund,
            held: p.held,
            final_settlement: true,
            created_at: UnixMillis::now(),
        },
        seller,
    )
    .unwrap()
}

/// The bundle that asks the coordinators to vote for `r`, a settlement of
/// every window of `hand`, with the customer's `acks`.
fn hand_bundle(
    hand: &HandLease,
    r: &Signed<rigmesh_protocol::SettlementRequest>,
    acks: &[Signed<rigmesh_protocol::UsageAck>],
) -> CoordinatorRequest {
    CoordinatorRequest::Settle(Box::new(SettlementBundle {
        request: r.clone(),
        agreement: hand.agreement.clone(),
        escrow: None,
        attestations: hand.attestations.clone(),
        acks: acks.to_vec(),
        disputes: Vec::new(),
        earlier: Vec::new(),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_that_ignores_a_termination_or_a_silent_customer_is_paid_at_most_the_cap() {
    use rigmesh_protocol::{EscrowOrder, LeaseTermination, TerminationReason, UsageAck};
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let (cs, customer) = hand_market(&dirs, "wire-0005").await;
    let quorum = customer.quorum.as_ref().unwrap();
    let buyer = account_of(dirs[4].path());
    let seller = Keypair::from_seed([0x67; 32]);
    let cap: Credits = "0.005".parse().unwrap();
    let fee_rate = cs[0].coordinator.as_ref().unwrap().config.fee_rate;
    let settle = |hand: &HandLease, escrow: &Signed<EscrowOrder>, gpu_ms: u64| {
        hand_final_settlement(&seller, hand, escrow, gpu_ms, cap, fee_rate)
    };

    // Lease 1: the customer acks windows 0 and 1, ends the lease during
    // window 2 and hands the termination to the coordinators; the
    // supplier goes on attesting to window 9 and asks for all of them.
    let first = hand_lease(&buyer, &seller, 1, 10);
    let (order, request) = hand_escrow(&buyer, &seller, &first, 0, cap);
    let escrow = quorum.certify(&order, &request).await.unwrap();
    assert_eq!(
        quorum
            .deliver(CertificateFrame::Escrow(Box::new(escrow)))
            .await,
        4
    );
    let acks: Vec<Signed<UsageAck>> = first.attestations[..2]
        .iter()
        .map(|a| {
            Signed::sign(
                UsageAck {
                    version: PROTOCOL_VERSION,
                    lease: first.lease,
                    customer: buyer.public(),
                    attestation: a.id().unwrap(),
                    seq: a.body.seq,
                    created_at: UnixMillis::now(),
                },
                &buyer,
            )
            .unwrap()
        })
        .collect();
    let termination = Signed::sign(
        LeaseTermination {
            version: PROTOCOL_VERSION,
            lease: first.lease,
            customer: buyer.public(),
            supplier: seller.public(),
            reason: TerminationReason::CustomerRequest,
            detail: String::new(),
            created_at: first.start.plus_ms(2_500),
        },
        &buyer,
    )
    .unwrap();
    let mut heard: Vec<_> = cs.iter().map(|c| c.handle.subscribe()).collect();
    assert_eq!(
        quorum.terminate(&termination).await,
        4,
        "every member holds it"
    );
    // Handed over only, never gossiped by the customer: each member tells
    // its node's subscribers (the devnet's scenario watches coordinator
    // 0's) and gossips it on.
    let id = termination.id().unwrap();
    for events in &mut heard {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.recv().await {
                    Ok(event) if event.id == id => return,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(err) => panic!("{err}"),
                }
            }
        })
        .await
        .expect("the held termination is announced");
    }
    // A termination signed by anyone else is refused.
    let mut forged = termination.body.clone();
    forged.customer = seller.public();
    let forged = Signed::sign(forged, &seller).unwrap();
    assert_eq!(quorum.terminate(&forged).await, 0);

    let greedy = settle(&first, &order, 10_000);
    let refused = quorum
        .certify(&greedy, &hand_bundle(&first, &greedy, &acks))
        .await
        .unwrap_err();
    assert_eq!(refused.votes, 0, "{refused}");
    assert!(refused.to_string().contains("payout_mismatch"), "{refused}");
    // Windows 0 and 1 (acked) and 2 (under way at the termination) pay.
    let fair = settle(&first, &order, 3_000);
    let cert = quorum
        .certify(&fair, &hand_bundle(&first, &fair, &acks))
        .await
        .unwrap();
    assert_eq!(
        quorum
            .deliver(CertificateFrame::Settlement(Box::new(cert)))
            .await,
        4
    );

    // Lease 2: the customer's node is gone (no ack, no termination); the
    // supplier attests ten windows, all accepted by the timeout. It is
    // paid the escrow, the cap, to the micro-credit, and no more.
    let second = hand_lease(&buyer, &seller, 2, 10);
    let (order2, request2) = hand_escrow(&buyer, &seller, &second, 1, cap);
    let escrow2 = quorum.certify(&order2, &request2).await.unwrap();
    quorum
        .deliver(CertificateFrame::Escrow(Box::new(escrow2)))
        .await;
    let all_windows = settle(&second, &order2, 10_000);
    assert_eq!(
        all_windows
            .body
            .supplier_amount
            .checked_add(all_windows.body.fee),
        Some(cap),
        "the last window is cut at the cap"
    );
    let cert = quorum
        .certify(&all_windows, &hand_bundle(&second, &all_windows, &[]))
        .await
        .unwrap();
    assert_eq!(
        quorum
            .deliver(CertificateFrame::Settlement(Box::new(cert)))
            .await,
        4
    );

    // The books, on every coordinator: the customer paid 0.003 for the
    // first lease and exactly the cap for the second.
    let paid: Credits = "0.008".parse().unwrap();
    let first_books = books(&cs[0]);
    for c in &cs {
        assert_eq!(books(c), first_books, "honest balances agree");
        assert_eq!(
            balance(c, &buyer),
            "10".parse::<Credits>().unwrap().checked_sub(paid).unwrap()
        );
        let role = c.coordinator.as_ref().unwrap();
        assert_eq!(
            role.ledger.escrowed_by(&buyer.public()).unwrap(),
            Credits::ZERO
        );
        let fees = role.ledger.balance(&rigmesh_ledger::Account::Fees).unwrap();
        assert_eq!(
            balance(c, &seller).checked_add(fees).unwrap(),
            paid,
            "the supplier and the fee account got what the customer paid"
        );
    }
    for node in cs.into_iter().chain([customer]) {
        node.stop().await.unwrap();
    }
}

/// A supplier that settles the late windows of a long lease and leaves
/// out of its bundle the dispute the customer gossiped about one of them
/// gets no vote: every coordinator finds the dispute in its store among
/// the windows settled, without reading the rest of the lease, and the
/// honest request holds that window's charge on every book.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_left_out_of_a_late_settlement_is_found_by_its_window_on_every_coordinator() {
    use rigmesh_protocol::wire::WireMessage;
    use rigmesh_protocol::{DisputeReason, SettlementRequest, UsageAck, UsageDispute};
    const WINDOWS: u64 = 100;
    const DISPUTED: u64 = 95;
    const SPLIT: u64 = 90;
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let (cs, customer) = hand_market(&dirs, "wire-0031").await;
    let quorum = customer.quorum.as_ref().unwrap();
    let buyer = account_of(dirs[4].path());
    let seller = Keypair::from_seed([0x68; 32]);
    let cap: Credits = "1".parse().unwrap();
    let price: Credits = "3.6".parse().unwrap();
    let fee_rate = cs[0].coordinator.as_ref().unwrap().config.fee_rate;
    let hand = hand_lease(&buyer, &seller, 3, WINDOWS);
    let (order, request) = hand_escrow(&buyer, &seller, &hand, 0, cap);
    let escrow = quorum.certify(&order, &request).await.unwrap();
    assert_eq!(
        quorum
            .deliver(CertificateFrame::Escrow(Box::new(escrow)))
            .await,
        4
    );

    // The customer acks every window but one, which it disputes as not
    // delivered (a reason no rule decides: the charge is held), and
    // gossips its answers; the coordinators store them.
    for a in &hand.attestations {
        let (id, seq) = (a.id().unwrap(), a.body.seq);
        let answer = if seq == DISPUTED {
            WireMessage::UsageDispute(
                Signed::sign(
                    UsageDispute {
                        version: PROTOCOL_VERSION,
                        lease: hand.lease,
                        customer: buyer.public(),
                        attestation: id,
                        seq,
                        reason: DisputeReason::NotDelivered,
                        detail: "the rig did not answer".into(),
                        created_at: UnixMillis::now(),
                    },
                    &buyer,
                )
                .unwrap(),
            )
        } else {
            WireMessage::UsageAck(
                Signed::sign(
                    UsageAck {
                        version: PROTOCOL_VERSION,
                        lease: hand.lease,
                        customer: buyer.public(),
                        attestation: id,
                        seq,
                        created_at: UnixMillis::now(),
                    },
                    &buyer,
                )
                .unwrap(),
            )
        };
        customer.handle.publish(&answer).await.unwrap();
    }
    let (cs_ref, lease) = (&cs, hand.lease);
    eventually(
        30,
        "every answer stored at every coordinator",
        || async move {
            cs_ref.iter().all(|c| {
                c.store
                    .about_lease_windows::<UsageAck>(&lease, 0, None)
                    .is_ok_and(|k| k.len() as u64 == WINDOWS - 1)
                    && c.store
                        .about_lease_windows::<UsageDispute>(&lease, DISPUTED, Some(DISPUTED))
                        .is_ok_and(|d| d.len() == 1)
            })
        },
    )
    .await;

    let request = |seq: u64,
                   windows: std::ops::RangeInclusive<u64>,
                   p: &rigmesh_ledger::billing::Payout,
                   last: bool| {
        Signed::sign(
            SettlementRequest {
                version: PROTOCOL_VERSION,
                lease: hand.lease,
                supplier: seller.public(),
                customer: buyer.public(),
                settlement_seq: seq,
                epoch: 7,
                escrow: order.id().unwrap(),
                first_window: *windows.start(),
                last_window: *windows.end(),
                attestation_head: hand.attestations[*windows.end() as usize].id().unwrap(),
                billable_gpu_ms: p.billable_gpu_ms,
                supplier_amount: p.supplier,
                fee: p.fee,
                refund: p.refund,
                held: p.held,
                final_settlement: last,
                created_at: UnixMillis::now(),
            },
            &seller,
        )
        .unwrap()
    };
    // The bundles carry no answer of the customer's: the coordinators use
    // what their stores hold.
    let bundle = |r: &Signed<SettlementRequest>, from: usize| {
        CoordinatorRequest::Settle(Box::new(SettlementBundle {
            request: r.clone(),
            agreement: hand.agreement.clone(),
            escrow: None,
            attestations: hand.attestations[from..=r.body.last_window as usize].to_vec(),
            acks: Vec::new(),
            disputes: Vec::new(),
            earlier: Vec::new(),
        }))
    };
    let early = rigmesh_ledger::billing::payout(price, SPLIT * 1000, cap, fee_rate, false).unwrap();
    let first = request(0, 0..=SPLIT - 1, &early, false);
    let cert = quorum.certify(&first, &bundle(&first, 0)).await.unwrap();
    assert_eq!(
        quorum
            .deliver(CertificateFrame::Settlement(Box::new(cert)))
            .await,
        4
    );
    let available = cap.checked_sub(early.paid_now).unwrap();
    let read =
        |cs: &[RunningNode]| -> u64 { cs.iter().map(|c| c.store.lease_messages_read()).sum() };
    // Each vote reads the answers of the ten windows it settles (nine
    // acks, the dispute), not the lease's hundred: four members voting
    // twice at most read fewer than one whole lease.
    let most = 4 * 2 * (WINDOWS - SPLIT);

    // The windows from 90 on, the disputed one paid as if accepted by
    // the timeout: no member votes for it.
    let greedy_pay =
        rigmesh_ledger::billing::payout(price, (WINDOWS - SPLIT) * 1000, available, fee_rate, true)
            .unwrap();
    let greedy = request(1, SPLIT..=WINDOWS - 1, &greedy_pay, true);
    let before = read(&cs);
    let refused = quorum
        .certify(&greedy, &bundle(&greedy, SPLIT as usize - 1))
        .await
        .unwrap_err();
    assert_eq!(refused.votes, 0, "{refused}");
    assert!(refused.to_string().contains("payout_mismatch"), "{refused}");
    let spent = read(&cs) - before;
    assert!(
        spent > 0 && spent <= most,
        "{spent} messages read for the refused votes"
    );

    // The same windows with the disputed one's charge held.
    let fair_pay = rigmesh_ledger::billing::payout_holding(
        price,
        (WINDOWS - SPLIT - 1) * 1000,
        1000,
        available,
        fee_rate,
        true,
    )
    .unwrap();
    let fair = request(1, SPLIT..=WINDOWS - 1, &fair_pay, true);
    let before = read(&cs);
    let cert = quorum
        .certify(&fair, &bundle(&fair, SPLIT as usize - 1))
        .await
        .unwrap();
    let spent = read(&cs) - before;
    assert!(
        spent > 0 && spent <= most,
        "{spent} messages read for the votes"
    );
    assert_eq!(
        quorum
            .deliver(CertificateFrame::Settlement(Box::new(cert)))
            .await,
        4
    );

    // On every book: the customer paid 99 windows, one window's charge
    // is held for review, the lease is closed and the rest came back.
    let window: Credits = "0.001".parse().unwrap();
    let paid = early.paid_now.checked_add(fair_pay.paid_now).unwrap();
    assert_eq!(paid, "0.099".parse::<Credits>().unwrap());
    let first_books = books(&cs[0]);
    for c in &cs {
        assert_eq!(books(c), first_books, "the coordinators agree");
        let ledger = &c.coordinator.as_ref().unwrap().ledger;
        assert_eq!(ledger.totals().unwrap().disputed, window);
        assert!(lease_book(c, &hand.lease).is_some_and(|b| b.closed));
        assert_eq!(
            balance(c, &buyer),
            "10".parse::<Credits>()
                .unwrap()
                .checked_sub(paid)
                .and_then(|b| b.checked_sub(window))
                .unwrap()
        );
        assert_eq!(ledger.escrowed_by(&buyer.public()).unwrap(), Credits::ZERO);
    }
    for node in cs.into_iter().chain([customer]) {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfunded_bid_does_not_take_gpus_off_the_market() {
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let (cs, supplier, customer) = ready_market(&dirs).await;
    let model = SimProfile::builtin("a100x4").unwrap().gpus[0].model.clone();
    let token = read_token(dirs[5].path(), Bootstrap::Customer).unwrap();
    // Every GPU of the rig, by an account with no money.
    let request =
        format!(r#"{{"gpu":"{model}","count":4,"max_price":"2.50","hours":1,"window_secs":1}}"#);
    let r = common::http_post(customer.customer_api.unwrap(), "/v1/bid", &token, &request).await;
    assert!(!r.starts_with("HTTP/1.1 200"), "no money, no lease: {r}");
    assert!(r.contains("insufficient_balance"), "{r}");

    // Money arrives: the same four GPUs are leased at once, not after the
    // supplier's two-minute wait for an escrow that never came.
    let buyer = account_of(dirs[5].path());
    fund(&customer, &buyer, "20", "wire-0006").await;
    let api = customer.customer_api.unwrap();
    eventually(20, "all four GPUs leased", || {
        let (token, request) = (token.clone(), request.clone());
        async move {
            let r = common::http_post(api, "/v1/bid", &token, &request).await;
            r.starts_with("HTTP/1.1 200")
        }
    })
    .await;
    for node in cs.into_iter().chain([supplier, customer]) {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_node_stopped_mid_lease_holds_its_cap_after_a_restart() {
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let (cs, supplier, customer) = ready_market(&dirs).await;
    let buyer = account_of(dirs[5].path());
    let seller = account_of(dirs[4].path());
    fund(&customer, &buyer, "20", "wire-0007").await;
    let model = SimProfile::builtin("a100x4").unwrap().gpus[0].model.clone();
    let token = read_token(dirs[5].path(), Bootstrap::Customer).unwrap();
    // 1 GPU at 1.70 per GPU-hour in 1 s windows: about 0.000472 a window,
    // so the cap is reached within the 22nd window.
    let cap: Credits = "0.01".parse().unwrap();
    let request = format!(
        r#"{{"gpu":"{model}","count":1,"max_price":"2.50","hours":1,"window_secs":1,"budget":"{cap}"}}"#
    );
    let r = common::http_post(customer.customer_api.unwrap(), "/v1/bid", &token, &request).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let leased = body(&r);
    assert_eq!(leased["escrowed"], cap.to_string(), "the escrow is the cap");
    let lease: rigmesh_protocol::Id = leased["lease"].as_str().unwrap().parse().unwrap();
    let supplier_store = supplier.store.clone();
    eventually(30, "two acks at the supplier", || {
        let store = supplier_store.clone();
        async move { store.count(Kind::UsageAck) >= 2 }
    })
    .await;

    // The customer's node stops; the supplier meters on.
    customer.stop().await.unwrap();
    let before = supplier_store.count(Kind::UsageAttestation);
    eventually(30, "windows attested while the customer is away", || {
        let store = supplier_store.clone();
        async move { store.count(Kind::UsageAttestation) >= before + 2 }
    })
    .await;
    let acks_before = supplier_store.count(Kind::UsageAck);
    let customer = start(Role::Customer, dirs[5].path(), None).await;
    for node in cs.iter().chain([&supplier]) {
        customer.handle.dial(dial_addr(node)).await.unwrap();
    }
    eventually(30, "the restarted customer acks again", || {
        let store = supplier_store.clone();
        async move { store.count(Kind::UsageAck) > acks_before }
    })
    .await;
    closed_everywhere(&cs, lease, 90).await;
    // On every coordinator: what the customer paid is at most the cap,
    // and went to the supplier and the fee account.
    let deposited: Credits = "20".parse().unwrap();
    let paid = deposited.checked_sub(balance(&cs[0], &buyer)).unwrap();
    assert!(
        paid > Credits::ZERO && paid <= cap,
        "paid {paid}, cap {cap}"
    );
    let first_books = books(&cs[0]);
    for c in &cs {
        assert_eq!(books(c), first_books);
        let fees = c
            .coordinator
            .as_ref()
            .unwrap()
            .ledger
            .balance(&rigmesh_ledger::Account::Fees)
            .unwrap();
        assert_eq!(balance(c, &seller).checked_add(fees).unwrap(), paid);
    }
    // The restarted node shows what the coordinators settled, to the unit.
    let api = customer.customer_api.unwrap();
    let shown = |t: String| async move {
        let r = common::http_get(api, "/v1/leases", Some(&t)).await;
        body(&r)[0].clone()
    };
    eventually(20, "the customer's node sees the final settlement", || {
        let t = token.clone();
        async move { shown(t).await["settlement"]["closed"] == serde_json::json!(true) }
    })
    .await;
    let view = shown(token.clone()).await;
    assert_eq!(view["spent"], paid.to_string(), "{view}");
    for node in cs.into_iter().chain([supplier, customer]) {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_suppliers_escrow_comes_back_and_what_was_acked_is_paid() {
    common::logs();
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let (cs, supplier, customer) = ready_market(&dirs).await;
    let buyer = account_of(dirs[5].path());
    let seller = account_of(dirs[4].path());
    fund(&customer, &buyer, "20", "wire-0008").await;
    let model = SimProfile::builtin("a100x4").unwrap().gpus[0].model.clone();
    let token = read_token(dirs[5].path(), Bootstrap::Customer).unwrap();
    let request =
        format!(r#"{{"gpu":"{model}","count":1,"max_price":"2.50","hours":1,"window_secs":1}}"#);
    let r = common::http_post(customer.customer_api.unwrap(), "/v1/bid", &token, &request).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let leased = body(&r);
    let lease: rigmesh_protocol::Id = leased["lease"].as_str().unwrap().parse().unwrap();
    let escrowed: Credits = leased["escrowed"].as_str().unwrap().parse().unwrap();
    let supplier_store = supplier.store.clone();
    eventually(30, "three acks at the supplier", || {
        let store = supplier_store.clone();
        async move { store.count(Kind::UsageAck) >= 3 }
    })
    .await;
    // The supplier's node goes away for good, an hour before its lease
    // ends, and never settles it finally.
    drop(supplier_store);
    supplier.stop().await.unwrap();

    let cs_ref = &cs;
    eventually(90, "the lease closed on every coordinator", || async move {
        cs_ref.iter().all(|c| {
            c.coordinator
                .as_ref()
                .unwrap()
                .ledger
                .lease_book(&lease)
                .unwrap()
                .is_some_and(|b| b.closed)
        })
    })
    .await;
    assert!(
        cs[0].store.count(Kind::ReleaseCertificate) >= 1,
        "closed by the customer's release"
    );
    let deposited: Credits = "20".parse().unwrap();
    let paid = deposited.checked_sub(balance(&cs[0], &buyer)).unwrap();
    assert!(
        paid > Credits::ZERO && paid < escrowed,
        "paid {paid} of {escrowed}"
    );
    let first_books = books(&cs[0]);
    for c in &cs {
        assert_eq!(books(c), first_books);
        let role = c.coordinator.as_ref().unwrap();
        assert_eq!(
            role.ledger.escrowed_by(&buyer.public()).unwrap(),
            Credits::ZERO
        );
        let fees = role.ledger.balance(&rigmesh_ledger::Account::Fees).unwrap();
        assert_eq!(balance(c, &seller).checked_add(fees).unwrap(), paid);
    }
    // Every window the customer acked was paid to the supplier (less than
    // one micro-credit of rounding per settlement).
    let usage = body(
        &common::http_get(
            customer.customer_api.unwrap(),
            &format!("/v1/usage/{lease}"),
            Some(&token),
        )
        .await,
    );
    let acked: i64 = usage["windows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["status"] == "acked")
        .map(|w| {
            w["charge"]
                .as_str()
                .unwrap()
                .parse::<Credits>()
                .unwrap()
                .units()
        })
        .sum();
    assert!(acked > 0, "{usage}");
    assert!(
        paid.units() + 20 >= acked,
        "paid {paid}, the acked windows cost {acked} units"
    );
    for node in cs.into_iter().chain([customer]) {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debit_that_gathered_some_votes_is_completed_before_the_next_and_its_escrow_comes_back() {
    use rigmesh_protocol::rpc::{CoordinatorRequest, CoordinatorResponse};
    use rigmesh_protocol::EscrowOrder;
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let (cs, supplier, customer) = ready_market(&dirs).await;
    let buyer = account_of(dirs[5].path());
    let seller = account_of(dirs[4].path());
    fund(&customer, &buyer, "20", "wire-0009").await;

    // The customer's node signs an escrow order at seq 0, keeps it, and
    // reaches two coordinators, which vote, before it stops: seq 0 is
    // locked there, so a new order at seq 0 could never gather the three
    // votes a certificate needs.
    let orphan = hand_lease(&buyer, &seller, 77, 0);
    let now = UnixMillis::now();
    let order = Signed::sign(
        EscrowOrder {
            version: PROTOCOL_VERSION,
            account: buyer.public(),
            seq: 0,
            epoch: 7,
            lease: orphan.lease,
            supplier: seller.public(),
            amount: "1".parse().unwrap(),
            created_at: now,
            expires_at: now.plus_ms(600_000),
        },
        &buyer,
    )
    .unwrap();
    let bytes = CoordinatorRequest::Escrow {
        order,
        agreement: Box::new(orphan.agreement.clone()),
        missing: Vec::new(),
    }
    .to_bytes()
    .unwrap();
    customer
        .store
        .put_pending_debit(&buyer.public(), 0, &bytes)
        .unwrap();
    for c in &cs[..2] {
        let answer = customer
            .handle
            .request(
                c.peer_id,
                rigmesh_node::network::Protocol::Coordinator,
                bytes.clone(),
            )
            .await
            .unwrap();
        assert!(matches!(
            CoordinatorResponse::from_bytes(&answer).unwrap(),
            CoordinatorResponse::Vote(_)
        ));
    }
    customer.stop().await.unwrap();

    // Restarted, the node completes that order before it signs the next
    // one: the new lease is funded at seq 1, the orphaned lease is ended
    // and its escrow released back once the grace period has passed.
    let customer = start(Role::Customer, dirs[5].path(), None).await;
    let all: Vec<&RunningNode> = cs.iter().chain([&supplier]).collect();
    for node in &all {
        customer.handle.dial(dial_addr(node)).await.unwrap();
    }
    let mut leased = None;
    for _ in 0..20 {
        let r = bid_one(&customer, dirs[5].path(), "").await;
        if r.starts_with("HTTP/1.1 200") {
            leased = Some(body(&r));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let leased = leased.expect("the bid leases once the coordinators are reachable");
    let escrowed: Credits = leased["escrowed"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        customer.store.pending_debit(&buyer.public()).unwrap(),
        None,
        "nothing left in flight"
    );
    let (cs_ref, orphan_lease, account) = (&cs, orphan.lease, buyer.public());
    eventually(
        60,
        "the orphaned escrow released on every coordinator",
        || async move {
            cs_ref.iter().all(|c| {
                lease_book(c, &orphan_lease).is_some_and(|b| b.closed)
                    && c.coordinator
                        .as_ref()
                        .unwrap()
                        .ledger
                        .next_debit_seq(&account)
                        .unwrap()
                        == 2
            })
        },
    )
    .await;
    let expected = "20"
        .parse::<Credits>()
        .unwrap()
        .checked_sub(escrowed)
        .unwrap();
    for c in &cs {
        assert_eq!(balance(c, &buyer), expected, "the orphan's 1 came back");
    }
    // The second lease runs on and settles as it goes: each settlement
    // reaches the coordinators one after another, so the books agree
    // once they have all applied the same ones.
    eventually(30, "the coordinators agree", || async move {
        let first = books(&cs_ref[0]);
        cs_ref.iter().all(|c| books(c) == first)
    })
    .await;
    for node in cs.into_iter().chain([supplier, customer]) {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_cap_tops_the_escrow_up_and_the_quorum_holds_the_new_cap() {
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let (cs, supplier, customer) = ready_market(&dirs).await;
    let buyer = account_of(dirs[5].path());
    fund(&customer, &buyer, "20", "wire-0010").await;
    let token = read_token(dirs[5].path(), Bootstrap::Customer).unwrap();
    // 1 GPU at 1.70 per GPU-hour in 1 s windows: about 0.000472 a window.
    let r = bid_one(&customer, dirs[5].path(), r#","budget":"0.004""#).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let lease: rigmesh_protocol::Id = body(&r)["lease"].as_str().unwrap().parse().unwrap();
    let supplier_store = supplier.store.clone();
    eventually(30, "two acks at the supplier", || {
        let store = supplier_store.clone();
        async move { store.count(Kind::UsageAck) >= 2 }
    })
    .await;

    // The cap goes up while the lease runs: the escrow follows it at every
    // coordinator, with a second certified order for the same lease.
    let cap: Credits = "0.007".parse().unwrap();
    let change = format!(r#"{{"lease":"{lease}","cap":"{cap}"}}"#);
    let r = common::http(
        customer.customer_api.unwrap(),
        "PUT",
        "/v1/budget",
        &token,
        Some(&change),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let book = |c: &RunningNode| lease_book(c, &lease).unwrap();
    let cs_ref = &cs;
    eventually(
        20,
        "the escrow topped up at every coordinator",
        || async move { cs_ref.iter().all(|c| book(c).amount == cap) },
    )
    .await;
    closed_everywhere(&cs, lease, 90).await;
    let paid = book(&cs[0]).paid;
    assert!(
        paid > "0.004".parse().unwrap(),
        "the lease ran past the old cap: paid {paid}"
    );
    assert!(paid <= cap, "never past the new cap: paid {paid}");
    let expected = "20".parse::<Credits>().unwrap().checked_sub(paid).unwrap();
    let first = books(&cs[0]);
    for c in &cs {
        assert_eq!(book(c).paid, paid);
        assert_eq!(
            balance(c, &buyer),
            expected,
            "the rest of the escrow came back"
        );
        assert_eq!(books(c), first, "the coordinators agree");
    }
    // Two debits of the account, the order and the top-up: no member keeps
    // the order's vote lock, and the quorum that voted the top-up keeps
    // its lock (a member whose vote was not needed may have cast none).
    let account = buyer.public();
    let mut top_up_locks = 0;
    for c in &cs {
        let ledger = &c.coordinator.as_ref().unwrap().ledger;
        assert_eq!(ledger.next_debit_seq(&account).unwrap(), 2);
        assert_eq!(ledger.debit_lock(&account, 0).unwrap(), None);
        top_up_locks += usize::from(ledger.debit_lock(&account, 1).unwrap().is_some());
    }
    assert!(
        top_up_locks >= 3,
        "{top_up_locks} members hold the top-up's lock"
    );
    for node in cs.into_iter().chain([supplier, customer]) {
        node.stop().await.unwrap();
    }
}

/// A ready market with a silent supplier beside the real one, and the
/// customer's account funded with 20: the stage for a supplier that holds
/// the customer's requests.
struct SilentMarket {
    cs: Vec<RunningNode>,
    supplier: RunningNode,
    customer: RunningNode,
    /// The customer's account.
    buyer: Keypair,
    /// The customer API's bootstrap token, and its address.
    token: String,
    api: std::net::SocketAddr,
    silent: common::TestNode,
}

/// [`SilentMarket`] in `dirs`, with `customer` applied to the customer's
/// configuration; its requests to suppliers wait up to 30 s.
async fn silent_market(
    dirs: &[tempfile::TempDir],
    customer: impl FnOnce(&mut NodeConfig),
) -> SilentMarket {
    let (cs, supplier, customer) = ready_market_with(
        dirs,
        |_| {},
        |c| {
            c.network.limits.request_timeout_secs = 30;
            customer(c);
        },
    )
    .await;
    let buyer = account_of(dirs[5].path());
    fund(&customer, &buyer, "20", "wire-0020").await;
    let token = read_token(dirs[5].path(), Bootstrap::Customer).unwrap();
    let api = customer.customer_api.unwrap();
    let silent = silent_supplier(&customer, Some(account_of(dirs[4].path()).public())).await;
    SilentMarket {
        cs,
        supplier,
        customer,
        buyer,
        token,
        api,
        silent,
    }
}

/// A raised cap's top-up whose hand-over a silent supplier holds: the
/// customer answers the cap change at once, and the other lease's windows
/// are still acked at its supplier meanwhile; the top-up itself is on
/// every coordinator's books.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_up_held_by_a_silent_supplier_holds_up_nothing_else() {
    common::logs();
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let SilentMarket {
        cs,
        supplier,
        customer,
        token,
        api,
        mut silent,
        ..
    } = silent_market(&dirs, |_| {}).await;

    // A lease with the silent supplier, capped low: it agrees and takes the
    // escrow's hand-over, and then says nothing.
    let (t, bid) = (
        token.clone(),
        format!(
            r#"{{"gpu":"{SILENT_MODEL}","count":2,"max_price":"2.00","hours":1,"window_secs":60,"budget":"0.01"}}"#
        ),
    );
    let bidding = tokio::spawn(async move { common::http_post(api, "/v1/bid", &t, &bid).await });
    let proposal = held_proposal(&mut silent, &customer).await;
    agree(&silent, proposal).await;
    let fund_request = held_request(&mut silent, "the escrow's hand-over").await;
    assert!(matches!(
        LeaseRequest::from_bytes(&fund_request.bytes),
        Ok(LeaseRequest::Fund(_))
    ));
    accept(&silent, fund_request).await;
    let r = bidding.await.unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let quiet: rigmesh_protocol::Id = body(&r)["lease"].as_str().unwrap().parse().unwrap();

    // A lease with the real supplier, acked window by window.
    let r = bid_one(&customer, dirs[5].path(), "").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let supplier_store = supplier.store.clone();
    let acked = move || supplier_store.count(Kind::UsageAck);
    let acks = acked.clone();
    eventually(30, "an ack at the supplier", || {
        let acks = acks.clone();
        async move { acks() >= 1 }
    })
    .await;

    // The quiet lease's cap goes up: its top-up is certified, and its
    // hand-over reaches the silent supplier, which holds it.
    let cap: Credits = "0.05".parse().unwrap();
    let change = format!(r#"{{"lease":"{quiet}","cap":"{cap}"}}"#);
    let (t, c) = (token.clone(), change.clone());
    let changing =
        tokio::spawn(async move { common::http(api, "PUT", "/v1/budget", &t, Some(&c)).await });
    let held = held_request(&mut silent, "the top-up's hand-over").await;
    assert!(matches!(
        LeaseRequest::from_bytes(&held.bytes),
        Ok(LeaseRequest::Fund(_))
    ));
    let cs_ref = &cs;
    eventually(20, "the top-up at every coordinator", || async move {
        cs_ref
            .iter()
            .all(|c| lease_book(c, &quiet).is_some_and(|b| b.amount == cap))
    })
    .await;
    // Meanwhile the cap change is answered, and the other lease's windows
    // are acked, while the hand-over is still held.
    eventually(5, "the cap change answered", || {
        let done = changing.is_finished();
        async move { done }
    })
    .await;
    let r = changing.await.unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let before = acked();
    let acks = acked.clone();
    eventually(10, "two more acks at the supplier", || {
        let acks = acks.clone();
        async move { acks() >= before + 2 }
    })
    .await;
    drop(held);
    silent.stop().await;
    for node in cs.into_iter().chain([supplier, customer]) {
        node.stop().await.unwrap();
    }
}

/// The lease request the silent supplier holds, answered `Accepted`:
/// the termination it must be, for the lease it ends.
async fn accept_termination(
    silent: &mut common::TestNode,
    what: &str,
) -> Signed<rigmesh_protocol::LeaseTermination> {
    let held = held_request(silent, what).await;
    let request = LeaseRequest::from_bytes(&held.bytes);
    let Ok(LeaseRequest::Terminate(termination)) = request else {
        panic!("{what}: a termination, not {request:?}");
    };
    accept(silent, held).await;
    termination
}

/// A bid whose caller stopped waiting (its request timed out under load)
/// is not leased for nobody: the customer, told 408, would not know of the
/// lease and might well bid again. One whose caller left before the
/// supplier agreed orders no escrow, and the supplier is told to let the
/// GPUs go; a lease made after its caller left is ended at once, and the
/// coordinators hold the termination, so no later window is paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bid_whose_caller_left_is_not_leased_for_nobody() {
    common::logs();
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let SilentMarket {
        cs,
        supplier,
        customer,
        buyer,
        token,
        api,
        mut silent,
    } = silent_market(&dirs, |c| c.http.customer.timeout_secs = 3).await;
    let bid = format!(
        r#"{{"gpu":"{SILENT_MODEL}","count":2,"max_price":"2.00","hours":1,"window_secs":60,"budget":"0.01"}}"#
    );
    let post = |bid: String| {
        let token = token.clone();
        tokio::spawn(async move { common::http_post(api, "/v1/bid", &token, &bid).await })
    };

    // The supplier holds the proposal until the request has timed out,
    // then agrees: the customer lets the GPUs go instead of ordering the
    // escrow.
    let bidding = post(bid.clone());
    let proposal = held_proposal(&mut silent, &customer).await;
    let r = bidding.await.unwrap();
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    agree(&silent, proposal).await;
    let ended = accept_termination(&mut silent, "the release of the GPUs").await;
    for c in &cs {
        assert!(lease_book(c, &ended.body.lease).is_none(), "no escrow");
        assert_eq!(balance(c, &buyer), "20".parse().unwrap());
    }

    // The supplier agrees at once and holds the escrow's hand-over until
    // the request has timed out: the lease made is ended at once.
    let bidding = post(bid.clone());
    let proposal = held_proposal(&mut silent, &customer).await;
    agree(&silent, proposal).await;
    let fund_request = held_request(&mut silent, "the escrow's hand-over").await;
    let Ok(LeaseRequest::Fund(escrow)) = LeaseRequest::from_bytes(&fund_request.bytes) else {
        panic!("the escrow's hand-over");
    };
    let lease = escrow.message.body.lease;
    let r = bidding.await.unwrap();
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    accept(&silent, fund_request).await;
    let ended = accept_termination(&mut silent, "the end of the lease nobody was told of").await;
    assert_eq!(ended.body.lease, lease);
    let id = ended.id().unwrap();
    let cs_ref = &cs;
    eventually(
        20,
        "the termination held by every coordinator",
        || async move {
            cs_ref.iter().all(|c| {
                lease_book(c, &lease).is_some()
                    && c.store.contains(Kind::LeaseTermination, &id).unwrap()
            })
        },
    )
    .await;

    let metrics = common::http_get(customer.monitoring, "/metrics", None).await;
    assert_eq!(
        common::sample(&metrics, "rigmesh_customer_bids_abandoned_total"),
        2.0
    );
    silent.stop().await;
    for node in cs.into_iter().chain([supplier, customer]) {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_ends_a_lease_whose_customer_answers_nothing_and_is_paid_what_it_metered() {
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let (cs, supplier, customer) =
        ready_market_with(&dirs, |c| c.supplier.unanswered_end_secs = 3, |_| {}).await;
    let buyer = account_of(dirs[5].path());
    let seller = account_of(dirs[4].path());
    fund(&customer, &buyer, "20", "wire-0011").await;
    let r = bid_one(&customer, dirs[5].path(), "").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let lease: rigmesh_protocol::Id = body(&r)["lease"].as_str().unwrap().parse().unwrap();
    // The customer's node goes away for good right after funding: nobody
    // answers the supplier's windows. The supplier ends the lease within
    // its limit (5 windows here) instead of metering for an hour, and the
    // windows it metered are paid by the unacknowledged timeout.
    customer.stop().await.unwrap();
    closed_everywhere(&cs, lease, 60).await;
    let book = lease_book(&cs[0], &lease).unwrap();
    // 1 GPU at 1.70 per GPU-hour: about 0.000472 a 1 s window. The lease
    // ran a handful of windows, not the hour it was agreed for.
    assert!(book.paid > Credits::ZERO, "the metered windows are paid");
    assert!(
        book.paid < "0.01".parse().unwrap(),
        "ended within seconds, not an hour: paid {}",
        book.paid
    );
    let first = books(&cs[0]);
    for c in &cs {
        assert_eq!(books(c), first, "the coordinators agree");
        assert!(balance(c, &seller) > Credits::ZERO);
    }
    for node in cs.into_iter().chain([supplier]) {
        node.stop().await.unwrap();
    }
}

/// A customer node configured to keep settled leases for no time
/// (`[customer] keep_settled_secs = 0`) lets a lease go once it learns of
/// its final settlement: `rigmesh leases` no longer lists it, ending or
/// disputing it again is a conflict (not a lease the account never had),
/// and the account report still shows it, at what the coordinators took
/// from the account for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_lease_is_let_go_after_the_configured_keep_and_still_accounted_for() {
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let (cs, supplier, customer) =
        ready_market_with(&dirs, |_| {}, |c| c.customer.keep_settled_secs = 0).await;
    let buyer = account_of(dirs[5].path());
    fund(&customer, &buyer, "20", "wire-0021").await;
    let r = bid_one(&customer, dirs[5].path(), "").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let lease: rigmesh_protocol::Id = body(&r)["lease"].as_str().unwrap().parse().unwrap();
    let token = read_token(dirs[5].path(), Bootstrap::Customer).unwrap();
    let api = customer.customer_api.unwrap();
    let token_ref = &token;
    eventually(30, "the lease listed at the customer", || async move {
        let r = common::http_get(api, "/v1/leases", Some(token_ref)).await;
        body(&r).as_array().is_some_and(|l| l.len() == 1)
    })
    .await;
    let end = format!("/v1/leases/{lease}/end");
    let r = common::http_post(api, &end, &token, "{}").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    closed_everywhere(&cs, lease, 60).await;
    eventually(30, "the settled lease let go", || async move {
        let r = common::http_get(api, "/v1/leases", Some(token_ref)).await;
        body(&r).as_array().is_some_and(|l| l.is_empty())
    })
    .await;

    let again = common::http_post(api, &end, &token, "{}").await;
    assert!(again.starts_with("HTTP/1.1 409"), "{again}");
    assert!(again.contains("finally settled"), "{again}");
    let dispute = common::http_post(
        api,
        &format!("/v1/leases/{lease}/dispute"),
        &token,
        r#"{"reason":"not_delivered","detail":"too late"}"#,
    )
    .await;
    assert!(dispute.starts_with("HTTP/1.1 409"), "{dispute}");
    let unknown = common::http_post(
        api,
        &format!("/v1/leases/{}/end", rigmesh_protocol::Id([7; 32])),
        &token,
        "{}",
    )
    .await;
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");

    let r = common::http_get(api, "/v1/account", Some(&token)).await;
    let report = body(&r);
    assert_eq!(report["leases_total"], serde_json::json!(1), "{r}");
    let listed = &report["leases"][0];
    assert_eq!(listed["lease"], serde_json::json!(lease.to_string()), "{r}");
    assert_eq!(listed["state"], serde_json::json!("ended"), "{r}");
    let spent: Credits = listed["spent"].as_str().unwrap().parse().unwrap();
    assert!(spent > Credits::ZERO, "{r}");
    // What the account report says the lease cost is what every
    // coordinator took from the account for it.
    let left = "20".parse::<Credits>().unwrap().checked_sub(spent).unwrap();
    let (cs_ref, buyer_ref) = (&cs, &buyer);
    eventually(30, "the final settlement in every balance", || async move {
        cs_ref.iter().all(|c| balance(c, buyer_ref) == left)
    })
    .await;
    let first = books(&cs[0]);
    assert!(
        cs.iter().all(|c| books(c) == first),
        "the coordinators agree"
    );
    for node in cs.into_iter().chain([supplier, customer]) {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_completes_the_request_its_vanished_supplier_left_half_voted_then_releases() {
    common::logs();
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut cs, supplier, customer) = ready_market(&dirs).await;
    let buyer = account_of(dirs[5].path());
    let seller = account_of(dirs[4].path());
    fund(&customer, &buyer, "20", "wire-0012").await;
    let r = bid_one(&customer, dirs[5].path(), "").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let lease: rigmesh_protocol::Id = body(&r)["lease"].as_str().unwrap().parse().unwrap();

    // Two coordinators go down: the supplier's first settlement request
    // gets the votes of the other two, no quorum, and they are locked on
    // it. Then the supplier's node goes away for good.
    let fourth = cs.pop().unwrap();
    let third = cs.pop().unwrap();
    third.stop().await.unwrap();
    fourth.stop().await.unwrap();
    let cs_ref = &cs;
    eventually(
        30,
        "the supplier's request locked at the two left",
        || async move {
            cs_ref.iter().all(|c| {
                c.coordinator
                    .as_ref()
                    .unwrap()
                    .ledger
                    .settlement_lock(&lease, 0)
                    .unwrap()
                    .is_some()
            })
        },
    )
    .await;
    supplier.stop().await.unwrap();
    for i in [2, 3] {
        let back = start(Role::Coordinator, dirs[i].path(), Some(i)).await;
        for node in cs.iter().chain([&customer]) {
            back.handle.dial(dial_addr(node)).await.unwrap();
        }
        cs.push(back);
    }

    // The customer ends the silent lease; after the grace period its
    // release finds members locked at settlement 0, completes the
    // supplier's request, and releases the rest at settlement 1.
    let cs_ref = &cs;
    eventually(90, "the lease closed on every coordinator", || async move {
        cs_ref
            .iter()
            .all(|c| lease_book(c, &lease).is_some_and(|b| b.closed && b.next_settlement_seq == 2))
    })
    .await;
    let first = books(&cs[0]);
    let paid = lease_book(&cs[0], &lease).unwrap().paid;
    for c in &cs {
        assert_eq!(books(c), first, "the coordinators agree");
        assert!(balance(c, &seller) > Credits::ZERO, "the supplier was paid");
        assert_eq!(
            balance(c, &buyer),
            "20".parse::<Credits>().unwrap().checked_sub(paid).unwrap(),
            "everything not paid came back"
        );
    }
    for node in cs.into_iter().chain([customer]) {
        node.stop().await.unwrap();
    }
}

const SECOND_ADMIN: [u8; 32] = [0x42; 32];

fn deposit_by(
    admin: &Keypair,
    account: &Keypair,
    credits: &str,
    reference: &str,
) -> Signed<Deposit> {
    Signed::sign(
        Deposit {
            version: PROTOCOL_VERSION,
            epoch: 7,
            admin: admin.public(),
            account: account.public(),
            amount: credits.parse().unwrap(),
            reference: reference.into(),
            created_at: UnixMillis::now(),
        },
        admin,
    )
    .unwrap()
}

fn decision(admin: &Keypair, kind: Kind, subject: rigmesh_protocol::Id) -> Signed<Approval> {
    Signed::sign(
        Approval {
            version: PROTOCOL_VERSION,
            epoch: 7,
            admin: admin.public(),
            subject_kind: kind,
            subject,
            approve: true,
            created_at: UnixMillis::now(),
        },
        admin,
    )
    .unwrap()
}

fn count(
    answers: &[(
        rigmesh_protocol::PublicKey,
        Result<CoordinatorResponse, String>,
    )],
    f: impl Fn(&CoordinatorResponse) -> bool,
) -> usize {
    answers
        .iter()
        .filter(|(_, a)| a.as_ref().is_ok_and(&f))
        .count()
}

/// Four coordinators with two admin keys and review thresholds, and a
/// customer, all connected; the customer knows every binding.
async fn reviewed_market(dirs: &[tempfile::TempDir]) -> (Vec<RunningNode>, RunningNode) {
    let mut table = coordinators();
    table.admins = vec![Keypair::from_seed(SECOND_ADMIN).public()];
    table.deposit_approval_above = Some("1000".parse().unwrap());
    table.deposit_alert_above = Some("1000".parse().unwrap());
    table.withdrawal_review_above = Some("50".parse().unwrap());
    let mut cs = Vec::new();
    for (i, dir) in dirs.iter().take(4).enumerate() {
        cs.push(
            start_with(Role::Coordinator, dir.path(), Some(i), |c| {
                c.coordinators = Some(table.clone())
            })
            .await,
        );
    }
    let customer = start_with(Role::Customer, dirs[4].path(), None, |c| {
        c.coordinators = Some(table)
    })
    .await;
    let all: Vec<&RunningNode> = cs.iter().chain([&customer]).collect();
    mesh(&all).await;
    let store = customer.store.clone();
    eventually(20, "coordinator bindings at the customer", || {
        let store = store.clone();
        async move { store.count(Kind::NodeBinding) >= 4 }
    })
    .await;
    (cs, customer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_count_once_large_ones_and_withdrawals_wait_for_an_admin_and_forged_receipts_show_unverified(
) {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let (cs, customer) = reviewed_market(&dirs).await;
    let buyer = account_of(dirs[4].path());
    let quorum: &Quorum = customer.quorum.as_ref().unwrap();
    let admin = Keypair::from_seed(ADMIN);
    let second = Keypair::from_seed(SECOND_ADMIN);
    let apply =
        |d: &Signed<Deposit>| CoordinatorRequest::Apply(CertificateFrame::Deposit(d.clone()));

    // A deposit, its retry, and a second deposit reusing the reference.
    let first = deposit_by(&admin, &buyer, "100", "wire-7");
    let answers = quorum.ask_all(&apply(&first)).await;
    assert_eq!(
        count(&answers, |a| *a == CoordinatorResponse::Applied),
        4,
        "{answers:?}"
    );
    let retry = quorum.ask_all(&apply(&first)).await;
    assert_eq!(
        count(&retry, |a| *a == CoordinatorResponse::Applied),
        4,
        "a retry is idempotent: {retry:?}"
    );
    tokio::time::sleep(Duration::from_millis(2)).await;
    let reused = deposit_by(&admin, &buyer, "100", "wire-7");
    assert_ne!(reused.id().unwrap(), first.id().unwrap());
    let answers = quorum.ask_all(&apply(&reused)).await;
    assert_eq!(
        count(
            &answers,
            |a| matches!(a, CoordinatorResponse::Refused(r) if r.starts_with("reference_used"))
        ),
        4,
        "{answers:?}"
    );
    for c in &cs {
        assert_eq!(balance(c, &buyer), "100".parse().unwrap(), "credited once");
    }

    // Balances are private: the account itself and an admin key read
    // them; a stranger's query, an unsigned one, one signed by another key
    // than its asker's and a stale one are refused by every member.
    let owner = quorum.accounts(&buyer, buyer.public()).await;
    assert_eq!(owner.len(), 4, "{owner:?}");
    assert!(owner.iter().all(|s| s.balance == "100".parse().unwrap()));
    assert_eq!(quorum.accounts(&second, buyer.public()).await.len(), 4);
    let stranger = Keypair::generate().unwrap();
    assert!(quorum.accounts(&stranger, buyer.public()).await.is_empty());
    let query = |asker: rigmesh_protocol::PublicKey, signer: &Keypair, at: UnixMillis| {
        CoordinatorRequest::AccountOf(
            Signed::sign(
                rigmesh_protocol::AccountQuery {
                    version: rigmesh_protocol::PROTOCOL_VERSION,
                    account: buyer.public(),
                    asker,
                    created_at: at,
                },
                signer,
            )
            .unwrap(),
        )
    };
    let refused_with = |answers: &[(
        rigmesh_protocol::PublicKey,
        Result<CoordinatorResponse, String>,
    )],
                        code: &str| {
        count(
            answers,
            |a| matches!(a, CoordinatorResponse::Refused(r) if r.starts_with(code)),
        )
    };
    let now = UnixMillis::now();
    let asks = [
        (query(stranger.public(), &stranger, now), "not_authorised"),
        (
            CoordinatorRequest::Account(buyer.public()),
            "query_unsigned",
        ),
        (query(buyer.public(), &stranger, now), "wrong_signer"),
        (
            query(buyer.public(), &buyer, UnixMillis(now.0 - 600_000)),
            "query_stale",
        ),
    ];
    for (ask, code) in asks {
        let answers = quorum.ask_all(&ask).await;
        assert_eq!(refused_with(&answers, code), 4, "{code}: {answers:?}");
    }

    // A deposit above the threshold waits for a second admin key.
    let big = deposit_by(&admin, &buyer, "5000", "wire-8");
    let big_id = big.id().unwrap();
    let answers = quorum.ask_all(&apply(&big)).await;
    assert_eq!(
        count(&answers, |a| matches!(a, CoordinatorResponse::Pending(_))),
        4,
        "{answers:?}"
    );
    let own = quorum
        .ask_all(&CoordinatorRequest::Decide(decision(
            &admin,
            Kind::Deposit,
            big_id,
        )))
        .await;
    assert_eq!(
        count(
            &own,
            |a| matches!(a, CoordinatorResponse::Refused(r) if r.starts_with("same_admin"))
        ),
        4,
        "{own:?}"
    );
    for c in &cs {
        assert_eq!(
            balance(c, &buyer),
            "100".parse().unwrap(),
            "not applied before approval"
        );
    }
    let approved = quorum
        .ask_all(&CoordinatorRequest::Decide(decision(
            &second,
            Kind::Deposit,
            big_id,
        )))
        .await;
    assert_eq!(
        count(&approved, |a| *a == CoordinatorResponse::Applied),
        4,
        "{approved:?}"
    );
    for c in &cs {
        assert_eq!(balance(c, &buyer), "5100".parse().unwrap());
        let role = c.coordinator.as_ref().unwrap();
        let alerts = role.ledger.alerts(UnixMillis(0), 100).unwrap();
        assert!(
            alerts
                .iter()
                .any(|a| a.body.rule == "deposit.large" && a.body.subject == Some(big_id)),
            "an operator alert for the large deposit"
        );
    }

    // A withdrawal above the review threshold gets no vote until approved.
    let rigmesh_node::quorum::DebitError::NoQuorum(held) = quorum
        .withdraw(&buyer, "60".parse().unwrap(), "iban:DE00")
        .await
        .unwrap_err()
    else {
        panic!("no quorum expected");
    };
    assert!(
        held.refusals
            .values()
            .filter(|r| r.starts_with("held_for_review"))
            .count()
            >= 3,
        "{held}"
    );
    let listed = cs[0]
        .coordinator
        .as_ref()
        .unwrap()
        .ledger
        .awaiting_review(rigmesh_ledger::CertificateKind::Withdrawal, 10)
        .unwrap();
    assert_eq!(listed.len(), 1);
    let withdrawal = Signed::<Withdrawal>::from_bytes(&listed[0].1.bytes).unwrap();
    for c in &cs {
        assert_eq!(
            balance(c, &buyer),
            "5100".parse().unwrap(),
            "nothing left before review"
        );
    }
    let certificate = quorum
        .certify(
            &withdrawal,
            &CoordinatorRequest::Decide(decision(&second, Kind::Withdrawal, listed[0].0)),
        )
        .await
        .unwrap();
    quorum
        .deliver(CertificateFrame::Withdrawal(Box::new(certificate)))
        .await;
    let cs_ref = &cs;
    let buyer_ref = &buyer;
    eventually(
        20,
        "the approved withdrawal applied everywhere",
        || async move {
            cs_ref
                .iter()
                .all(|c| balance(c, buyer_ref) == "5040".parse().unwrap())
        },
    )
    .await;

    // A deposit signed by a key that names itself as admin, gossiped:
    // the customer's node holds it, shows it, and does not trust it.
    let forger = Keypair::from_seed([0x66; 32]);
    let forged = deposit_by(&forger, &buyer, "1000000", "free money");
    cs[0]
        .handle
        .publish(&rigmesh_protocol::wire::WireMessage::Deposit(
            forged.clone(),
        ))
        .await
        .unwrap();
    let token = read_token(dirs[4].path(), Bootstrap::Customer).unwrap();
    let api = customer.customer_api.unwrap();
    let forged_id = forged.id().unwrap().to_string();
    let token_ref = &token;
    let forged_ref = &forged_id;
    eventually(20, "the forged deposit among the receipts", || async move {
        let r = common::http_get(api, "/v1/account", Some(token_ref)).await;
        r.contains(forged_ref.as_str())
    })
    .await;
    let r = common::http_get(api, "/v1/account", Some(&token)).await;
    let account = body(&r);
    let receipts = account["receipts"].as_array().unwrap();
    let verified = |id: &str| {
        receipts
            .iter()
            .find(|x| x["subject"] == serde_json::json!(id))
            .map(|x| x["verified"].clone())
    };
    assert_eq!(verified(&forged_id), Some(serde_json::json!(false)), "{r}");
    for c in &cs {
        assert_eq!(
            balance(c, &buyer),
            "5040".parse().unwrap(),
            "the forgery moved nothing"
        );
    }
    for node in cs {
        node.stop().await.unwrap();
    }
    customer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_attestations_raise_no_alert_write_nothing_and_strike_their_sender() {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let (cs, customer) = reviewed_market(&dirs).await;
    let target = &cs[0];
    let role = target.coordinator.as_ref().unwrap();
    let audit_before = role.ledger.audit_len().unwrap();
    let alerts_before = role.ledger.alerts(UnixMillis(0), 1000).unwrap().len();

    // An attacker's request naming a victim supplier, carrying many
    // attestations that claim busy GPUs at no power, signed by the
    // attacker rather than the supplier they name.
    let attacker = Keypair::from_seed([0x67; 32]);
    let mut request = rigmesh_protocol::samples::settlement_request()
        .unwrap()
        .body;
    request.epoch = 7;
    request.created_at = UnixMillis::now();
    let request = Signed::sign(request, &rigmesh_protocol::samples::supplier()).unwrap();
    let mut attestations = Vec::new();
    for seq in 0..200 {
        let mut a = rigmesh_protocol::samples::usage_attestation().unwrap().body;
        a.seq = seq;
        for g in &mut a.gpus {
            g.mean_util_bp = 8_000;
            g.energy_mj = 0;
        }
        attestations.push(Signed {
            signature: attacker.sign(
                Kind::UsageAttestation,
                &rigmesh_protocol::codec::encode(Kind::UsageAttestation, &a).unwrap(),
            ),
            signer: a.supplier,
            body: a,
        });
    }
    assert!(!rigmesh_ledger::reputation::implausible_power(&attestations[0].body).is_empty());
    let bundle = CoordinatorRequest::Settle(Box::new(SettlementBundle {
        request,
        agreement: rigmesh_protocol::samples::lease_agreement().unwrap(),
        escrow: None,
        attestations,
        acks: Vec::new(),
        disputes: Vec::new(),
        earlier: Vec::new(),
    }));
    let answer = customer
        .handle
        .request(
            target.peer_id,
            Protocol::Coordinator,
            bundle.to_bytes().unwrap(),
        )
        .await
        .unwrap();
    match CoordinatorResponse::from_bytes(&answer).unwrap() {
        CoordinatorResponse::Refused(reason) => {
            assert!(reason.starts_with("bad_signature"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let handle = target.handle.clone();
    eventually(10, "the refusal counted as a strike", || {
        let handle = handle.clone();
        async move { handle.stats().await.unwrap().struck_requests == 1 }
    })
    .await;
    assert_eq!(
        role.ledger.audit_len().unwrap(),
        audit_before,
        "no audit write"
    );
    assert_eq!(
        role.ledger.alerts(UnixMillis(0), 1000).unwrap().len(),
        alerts_before,
        "no alert"
    );
    assert!(role.take_alerts().is_empty(), "nothing to gossip");

    // Forged deposits handed with a withdrawal: refused at the first one
    // (or all at once when there are too many), a strike each time, and
    // nothing written.
    let stats = target.handle.stats().await.unwrap();
    assert_eq!(stats.banned, 0);
    let forged = |n: usize| -> Vec<CertificateFrame> {
        (0..n)
            .map(|i| {
                CertificateFrame::Deposit(deposit_by(
                    &attacker,
                    &attacker,
                    "1",
                    &format!("forged {i}"),
                ))
            })
            .collect()
    };
    let mut withdrawal = rigmesh_protocol::samples::withdrawal().unwrap().body;
    withdrawal.account = attacker.public();
    withdrawal.epoch = 7;
    let withdrawal = Signed::sign(withdrawal, &attacker).unwrap();
    for (n, code) in [(5, "not_admin"), (1_000, "field")] {
        let request = CoordinatorRequest::Withdraw {
            withdrawal: withdrawal.clone(),
            missing: forged(n),
        };
        let answer = customer
            .handle
            .request(
                target.peer_id,
                Protocol::Coordinator,
                request.to_bytes().unwrap(),
            )
            .await;
        match answer.map(|a| CoordinatorResponse::from_bytes(&a).unwrap()) {
            Ok(CoordinatorResponse::Refused(reason)) => {
                assert!(reason.starts_with(code), "{reason}")
            }
            // The third strike bans the sender: its connection may close
            // before the answer leaves.
            Err(_) if code == "field" => {}
            other => panic!("{other:?}"),
        }
    }
    let handle = target.handle.clone();
    eventually(10, "the sender banned after three strikes", || {
        let handle = handle.clone();
        async move { handle.stats().await.unwrap().banned == 1 }
    })
    .await;
    assert_eq!(
        role.ledger.audit_len().unwrap(),
        audit_before,
        "still no audit write"
    );
    for node in cs {
        node.stop().await.unwrap();
    }
    customer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_refuses_a_customer_whose_reputation_is_below_its_minimum() {
    use rigmesh_protocol::wire::WireMessage;
    use rigmesh_protocol::{ReputationReport, Role as ReportRole};
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let (cs, supplier, customer) = ready_market_with(
        &dirs,
        |c| c.supplier.min_customer_reputation_bp = 8_000,
        |_| {},
    )
    .await;
    let buyer = account_of(dirs[5].path());
    fund(&customer, &buyer, "20", "wire-0013").await;

    // Three coordinators report the buyer as a customer who disputes half
    // of what it uses: 5000 basis points.
    let now = UnixMillis::now();
    for (i, c) in cs.iter().take(3).enumerate() {
        let member = Keypair::from_seed(seed(i));
        let report = Signed::sign(
            ReputationReport {
                version: PROTOCOL_VERSION,
                coordinator: member.public(),
                epoch: 7,
                subject: buyer.public(),
                role: ReportRole::Customer,
                score_bp: 5_000,
                completed_leases: 4,
                disputes_lost: 2,
                missed_windows: 0,
                refused_leases: 0,
                fingerprint_changes: 0,
                period_start: now.minus_ms(3_600_000),
                period_end: now,
                created_at: now,
            },
            &member,
        )
        .unwrap();
        c.handle
            .publish(&WireMessage::ReputationReport(report))
            .await
            .unwrap();
    }
    let supplier_store = supplier.store.clone();
    eventually(20, "the reports at the supplier", || {
        let store = supplier_store.clone();
        async move { store.count(Kind::ReputationReport) >= 3 }
    })
    .await;

    let r = bid_one(&customer, dirs[5].path(), "").await;
    assert!(!r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("reputation of at least 8000"), "{r}");
    for c in &cs {
        assert_eq!(
            balance(c, &buyer),
            "20".parse().unwrap(),
            "nothing was escrowed"
        );
    }
    for node in cs.into_iter().chain([supplier, customer]) {
        node.stop().await.unwrap();
    }
}

/// A resolution of case `(lease, seq)` by `admin`: `share` to the supplier.
fn resolution(
    admin: &Keypair,
    case: (rigmesh_protocol::Id, u64),
    parties: (&Keypair, &Keypair),
    held: Credits,
    share: Credits,
) -> Signed<rigmesh_protocol::DisputeResolution> {
    Signed::sign(
        rigmesh_protocol::DisputeResolution {
            version: PROTOCOL_VERSION,
            epoch: 7,
            admin: admin.public(),
            lease: case.0,
            supplier: parties.0.public(),
            customer: parties.1.public(),
            settlement_seq: case.1,
            held,
            supplier_share: share,
            against: if share.is_zero() {
                rigmesh_protocol::DecidedAgainst::Supplier
            } else {
                rigmesh_protocol::DecidedAgainst::Neither
            },
            note: "the rig's own logs show its GPU offline".into(),
            created_at: UnixMillis::now(),
        },
        admin,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disputed_lease_holds_its_charge_until_a_certified_resolution_moves_it() {
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let (cs, supplier, customer) = ready_market(&dirs).await;
    let buyer = account_of(dirs[5].path());
    let seller = account_of(dirs[4].path());
    fund(&customer, &buyer, "20", "wire-0013").await;
    let r = bid_one(&customer, dirs[5].path(), "").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let lease: rigmesh_protocol::Id = body(&r)["lease"].as_str().unwrap().parse().unwrap();
    let cs_ref = &cs;
    eventually(
        30,
        "a first settlement on every coordinator",
        || async move {
            cs_ref
                .iter()
                .all(|c| lease_book(c, &lease).is_some_and(|b| b.next_settlement_seq > 0))
        },
    )
    .await;
    // The customer observes the GPU unreachable: every window from now on
    // is disputed with that observation, which no rule decides.
    let token = read_token(dirs[5].path(), Bootstrap::Customer).unwrap();
    let refused = common::http_post(
        customer.customer_api.unwrap(),
        &format!("/v1/leases/{lease}/dispute"),
        &token,
        r#"{"reason":"overbilled","detail":"too much"}"#,
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    let r = common::http_post(
        customer.customer_api.unwrap(),
        &format!("/v1/leases/{lease}/dispute"),
        &token,
        r#"{"reason":"not_delivered","detail":"ssh to the rig times out"}"#,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let c0 = cs[0].coordinator.as_ref().unwrap().ledger.clone();
    let held_at = |c: &RunningNode| {
        let ledger = &c.coordinator.as_ref().unwrap().ledger;
        ledger.totals().unwrap().disputed
    };
    eventually(
        40,
        "a dispute case held on every coordinator",
        || async move { cs_ref.iter().all(|c| held_at(c) > Credits::ZERO) },
    )
    .await;
    let r = common::http_post(
        customer.customer_api.unwrap(),
        &format!("/v1/leases/{lease}/end"),
        &token,
        "{}",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    closed_everywhere(&cs, lease, 60).await;
    // The lease is closed, and what the disputed windows cost stays held:
    // neither refunded nor paid, the same on every coordinator.
    let cases = c0.dispute_cases(true, 64).unwrap();
    assert!(!cases.is_empty());
    let held: i64 = cases.iter().map(|(_, c)| c.held.units()).sum();
    let held = Credits::from_units(held);
    assert_eq!(held_at(&cs[0]), held);
    let first = books(&cs[0]);
    for c in &cs {
        assert_eq!(books(c), first, "the coordinators agree");
        assert_eq!(
            c.coordinator
                .as_ref()
                .unwrap()
                .ledger
                .balance(&Account::Escrow(lease))
                .unwrap(),
            Credits::ZERO,
            "the closed escrow is empty"
        );
    }
    // The review queue on the first coordinator's operator listener.
    let operator = cs[0].operator_api.unwrap();
    let op_token = read_token(dirs[0].path(), Bootstrap::Operator).unwrap();
    let r = common::http_get(operator, "/v1/disputes", Some(&op_token)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(
        body(&r)["cases"].as_array().unwrap().len(),
        cases.len(),
        "{r}"
    );
    let (first_key, _) = &cases[0];
    let r = common::http_get(
        operator,
        &format!("/v1/disputes/{}/{}", first_key.0, first_key.1),
        Some(&op_token),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let file = body(&r);
    assert_eq!(file["disputes"][0]["reason"], "not_delivered", "{r}");
    assert_eq!(
        file["disputes"][0]["detail"], "ssh to the rig times out",
        "{r}"
    );
    assert!(file["attestations"][0]["gpus"].is_array(), "{r}");
    let r = common::http_get(operator, "/v1/disputes/00/1", Some(&op_token)).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = common::http_get(operator, "/v1/disputes", None).await;
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");

    let customer_before = balance(&cs[0], &buyer);
    let supplier_before = balance(&cs[0], &seller);
    let quorum = customer.quorum.as_ref().unwrap();
    // Only an admin key's resolution is voted for.
    let (key, case) = cases[0].clone();
    let forged = resolution(&buyer, key, (&seller, &buyer), case.held, Credits::ZERO);
    let answers = quorum.ask_all(&CoordinatorRequest::Resolve(forged)).await;
    assert!(answers
        .iter()
        .all(|(_, a)| matches!(a, Ok(CoordinatorResponse::Refused(r)) if r.contains("not_admin"))));
    // The operator decides every case for the customer.
    let admin = Keypair::from_seed(ADMIN);
    for (key, case) in &cases {
        let decision = resolution(&admin, *key, (&seller, &buyer), case.held, Credits::ZERO);
        let certificate = quorum
            .certify(&decision, &CoordinatorRequest::Resolve(decision.clone()))
            .await
            .unwrap();
        quorum
            .deliver(CertificateFrame::Resolution(Box::new(certificate)))
            .await;
    }
    eventually(
        30,
        "every case resolved on every coordinator",
        || async move {
            cs_ref.iter().all(|c| {
                let ledger = &c.coordinator.as_ref().unwrap().ledger;
                ledger.dispute_cases(true, 64).unwrap().is_empty()
                    && ledger.totals().unwrap().disputed == Credits::ZERO
            })
        },
    )
    .await;
    let first = books(&cs[0]);
    for c in &cs {
        assert_eq!(
            books(c),
            first,
            "the coordinators agree after the resolution"
        );
        assert_eq!(
            balance(c, &buyer),
            customer_before.checked_add(held).unwrap(),
            "what was held comes back to the customer"
        );
        assert_eq!(balance(c, &seller), supplier_before);
        let ledger = &c.coordinator.as_ref().unwrap().ledger;
        ledger.check_books().unwrap();
        let lost = ledger
            .dispute_record(
                &seller.public(),
                rigmesh_ledger::reputation::Side::Supplier,
                UnixMillis::now(),
            )
            .unwrap();
        assert_eq!(
            lost.lost_count() as usize,
            cases.len(),
            "the supplier lost each case"
        );
    }
    // What the operators' Prometheus sees of it.
    let metrics = common::http_get(cs[0].monitoring, "/metrics", None).await;
    for line in [
        format!(
            r#"rigmesh_coordinator_applied_total{{kind="resolution"}} {}"#,
            cases.len()
        ),
        format!(
            r#"rigmesh_coordinator_moved_micro_total{{kind="dispute_refund"}} {}"#,
            held.units()
        ),
        r#"rigmesh_coordinator_requests_total{request="resolve",outcome="refused"} 1"#.to_string(),
    ] {
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    for node in cs.into_iter().chain([supplier, customer]) {
        node.stop().await.unwrap();
    }
}

/// The JSON body of an operator write: the signed message's canonical
/// bytes in hex.
fn signed_body<T: rigmesh_protocol::Message>(message: &Signed<T>) -> String {
    format!(
        r#"{{"message":"{}"}}"#,
        hex::encode(message.to_bytes().unwrap())
    )
}

/// The operator request records of a coordinator's audit chain: (who,
/// detail).
async fn operator_requests(operator: std::net::SocketAddr, token: &str) -> Vec<(String, String)> {
    let r = common::http_get(operator, "/v1/audit?limit=500", Some(token)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    body(&r)["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "OperatorRequest")
        .map(|r| {
            (
                r["who"].as_str().unwrap().to_string(),
                r["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Connections a coordinator refused from banned peers, from its
/// Prometheus text.
async fn refused_peer_connections(node: &RunningNode) -> u64 {
    let r = common::http_get(node.monitoring, "/metrics", None).await;
    r.lines()
        .find(|l| l.starts_with("rigmesh_net_refused_connections_total{kind=\"peer\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_api_writes_reach_every_coordinator_once_record_who_asked_and_bans_survive_a_restart(
) {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut cs = Vec::new();
    for (i, dir) in dirs.iter().take(4).enumerate() {
        cs.push(start(Role::Coordinator, dir.path(), Some(i)).await);
    }
    let customer = start(Role::Customer, dirs[4].path(), None).await;
    let all: Vec<&RunningNode> = cs.iter().chain([&customer]).collect();
    mesh(&all).await;
    let store = cs[0].store.clone();
    eventually(20, "every coordinator's binding at the first", || {
        let store = store.clone();
        async move { store.count(Kind::NodeBinding) >= 4 }
    })
    .await;
    let operator = cs[0].operator_api.unwrap();
    let op_token = read_token(dirs[0].path(), Bootstrap::Operator).unwrap();
    let r = common::http_get(operator, "/v1/whoami", Some(&op_token)).await;
    let asker = format!(
        "token {} ({})",
        body(&r)["token_id"].as_str().unwrap(),
        body(&r)["token"].as_str().unwrap()
    );
    let buyer = account_of(dirs[4].path());
    let admin = Keypair::from_seed(ADMIN);

    // A deposit through the first coordinator's operator API is applied
    // by all four, the first answering for itself.
    let first = deposit(&buyer, "250", "op-wire-1");
    let r = common::http_post(operator, "/v1/deposits", &op_token, &signed_body(&first)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let outcome = body(&r);
    assert_eq!(outcome["state"], "applied", "{r}");
    assert_eq!(outcome["applied_by"], 4, "{r}");
    assert_eq!(outcome["answers"].as_array().unwrap().len(), 4, "{r}");
    for c in &cs {
        assert_eq!(balance(c, &buyer), "250".parse().unwrap());
        assert_eq!(books(c), books(&cs[0]), "the same books everywhere");
    }

    // The same deposit again is no second credit; another deposit reusing
    // the reference is refused by every coordinator, per coordinator.
    let r = common::http_post(operator, "/v1/deposits", &op_token, &signed_body(&first)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let reuse = deposit(&buyer, "999", "op-wire-1");
    let r = common::http_post(operator, "/v1/deposits", &op_token, &signed_body(&reuse)).await;
    assert!(r.starts_with("HTTP/1.1 409"), "{r}");
    let refused = body(&r);
    assert_eq!(refused["error"], "reference_used", "{r}");
    assert!(
        refused["answers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["answer"] == "refused"
                && a["reason"].as_str().unwrap().starts_with("reference_used")),
        "{r}"
    );
    for c in &cs {
        assert_eq!(balance(c, &buyer), "250".parse().unwrap(), "credited once");
    }

    // Bad input and a missing scope change nothing, not even the audit
    // chain, and reach no other coordinator.
    let ledger = cs[0].coordinator.as_ref().unwrap().ledger.clone();
    let audit_before = ledger.audit_len().unwrap();
    let r = common::http_post(operator, "/v1/deposits", &op_token, r#"{"message":"zz"}"#).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(
        body(&r)["reason"].as_str().unwrap().contains("not hex"),
        "{r}"
    );
    let stranger = Keypair::from_seed([0x77; 32]);
    let forged = deposit_by(&stranger, &buyer, "5000", "op-wire-2");
    let r = common::http_post(operator, "/v1/deposits", &op_token, &signed_body(&forged)).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(
        body(&r)["reason"].as_str().unwrap().contains("admin keys"),
        "{r}"
    );
    assert_eq!(
        ledger.audit_len().unwrap(),
        audit_before,
        "bad input is not recorded"
    );
    let r = common::http_post(
        operator,
        "/v1/tokens",
        &op_token,
        r#"{"name":"auditor","scopes":["operator:read"]}"#,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 201"), "{r}");
    let reader = body(&r)["token"].as_str().unwrap().to_string();
    // The token's making is itself a recorded request.
    assert_eq!(ledger.audit_len().unwrap(), audit_before + 1);
    let audit_before = audit_before + 1;
    let fresh = deposit(&buyer, "40", "op-wire-3");
    let r = common::http_post(operator, "/v1/deposits", &reader, &signed_body(&fresh)).await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert_eq!(body(&r)["error"], "scope_missing", "{r}");
    let r = common::http(operator, "POST", "/v1/bans", &reader, Some("{}")).await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert_eq!(
        ledger.audit_len().unwrap(),
        audit_before,
        "nothing recorded"
    );
    for c in &cs {
        assert_eq!(
            balance(c, &buyer),
            "250".parse().unwrap(),
            "nothing credited"
        );
    }
    let r = common::http_get(operator, "/v1/held/deposits", Some(&reader)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(body(&r)["epoch"], 7, "{r}");
    assert!(body(&r)["held"].as_array().unwrap().is_empty(), "{r}");

    // The audit chain names the token that asked, and the admin key.
    let asked = operator_requests(operator, &op_token).await;
    assert_eq!(asked.len(), 3, "{asked:?}");
    assert!(asked
        .iter()
        .all(|(who, detail)| *who == admin.public().to_string()
            && detail.contains(&asker)
            && detail.contains("from 127.0.0.1:")));

    // A ban of the customer's peer through the API closes it out.
    let banned = customer.peer_id;
    let r = common::http(
        operator,
        "POST",
        "/v1/bans",
        &op_token,
        Some(&format!(
            r#"{{"offender":"{banned}","secs":3600,"reason":"floods the order book"}}"#
        )),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(body(&r)["kind"], "peer", "{r}");
    let bad = common::http(
        operator,
        "POST",
        "/v1/bans",
        &op_token,
        Some(r#"{"offender":"nobody","secs":3600,"reason":"x"}"#),
    )
    .await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let (h0, c0) = (customer.handle.clone(), cs[0].peer_id);
    eventually(10, "the banned customer disconnected", || {
        let h0 = h0.clone();
        async move { !h0.peers().await.unwrap().contains(&c0) }
    })
    .await;
    let asked = operator_requests(operator, &op_token).await;
    assert!(
        asked.iter().any(|(who, detail)| *who
            == cs[0].coordinator.as_ref().unwrap().key.public().to_string()
            && detail.contains(&banned.to_string())
            && detail.contains(&asker)),
        "{asked:?}"
    );

    // It holds after the coordinator restarts.
    drop((ledger, store));
    let first_coordinator = cs.remove(0);
    first_coordinator.stop().await.unwrap();
    let restarted = start(Role::Coordinator, dirs[0].path(), Some(0)).await;
    let operator = restarted.operator_api.unwrap();
    let r = common::http_get(operator, "/v1/bans", Some(&op_token)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let bans = body(&r)["bans"].as_array().unwrap().clone();
    assert_eq!(bans.len(), 1, "{r}");
    assert_eq!(bans[0]["offender"], banned.to_string(), "{r}");
    assert!(
        bans[0]["reason"]
            .as_str()
            .unwrap()
            .contains("floods the order book"),
        "{r}"
    );
    customer.handle.dial(dial_addr(&restarted)).await.unwrap();
    eventually(
        10,
        "the restarted coordinator refusing the banned peer",
        || {
            let restarted = &restarted;
            async move { refused_peer_connections(restarted).await > 0 }
        },
    )
    .await;
    // The refusal closes the connection the customer saw open: it is gone
    // from the customer's peers once the close reaches it.
    eventually(10, "the banned peer's connection closed", || {
        let (customer, restarted) = (&customer, &restarted);
        async move {
            !customer
                .handle
                .peers()
                .await
                .unwrap()
                .contains(&restarted.peer_id)
        }
    })
    .await;

    // Lifted, the peer connects again; lifting twice finds nothing.
    let r = common::http(
        operator,
        "DELETE",
        &format!("/v1/bans/{banned}"),
        &op_token,
        None,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = common::http(
        operator,
        "DELETE",
        &format!("/v1/bans/{banned}"),
        &op_token,
        None,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = common::http_get(operator, "/v1/bans", Some(&op_token)).await;
    assert!(body(&r)["bans"].as_array().unwrap().is_empty(), "{r}");
    let (h0, c0, addr) = (
        customer.handle.clone(),
        restarted.peer_id,
        dial_addr(&restarted),
    );
    eventually(10, "the customer connected again", || {
        let (h0, addr) = (h0.clone(), addr.clone());
        async move {
            if h0.peers().await.unwrap().contains(&c0) {
                return true;
            }
            let _ = h0.dial(addr).await;
            false
        }
    })
    .await;
    for node in cs.into_iter().chain([restarted, customer]) {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_deposit_through_the_operator_api_waits_for_a_second_admin_approved_through_it_too()
{
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let (cs, customer) = reviewed_market(&dirs).await;
    let store = cs[1].store.clone();
    eventually(20, "every coordinator's binding at the second", || {
        let store = store.clone();
        async move { store.count(Kind::NodeBinding) >= 4 }
    })
    .await;
    let operator = cs[1].operator_api.unwrap();
    let token = read_token(dirs[1].path(), Bootstrap::Operator).unwrap();
    let buyer = account_of(dirs[4].path());

    // Above the approval threshold: held by every coordinator, credited
    // to no one.
    let big = deposit_by(&Keypair::from_seed(ADMIN), &buyer, "5000", "op-big-1");
    let id = big.id().unwrap().to_string();
    let r = common::http_post(operator, "/v1/deposits", &token, &signed_body(&big)).await;
    assert!(r.starts_with("HTTP/1.1 202"), "{r}");
    assert_eq!(body(&r)["state"], "awaiting_approval", "{r}");
    assert_eq!(body(&r)["held_by"], 4, "{r}");
    for c in &cs {
        assert_eq!(balance(c, &buyer), Credits::ZERO);
    }
    let r = common::http_get(operator, "/v1/held/deposits", Some(&token)).await;
    let held = body(&r)["held"].as_array().unwrap().clone();
    assert_eq!(held.len(), 1, "{r}");
    assert_eq!(held[0]["id"], id.as_str(), "{r}");
    assert_eq!(held[0]["held_by"], 4, "{r}");

    // An approval of something else is refused by every coordinator and
    // changes nothing.
    let second = Keypair::from_seed(SECOND_ADMIN);
    let stray = decision(&second, Kind::Deposit, "ab".repeat(32).parse().unwrap());
    let r = common::http_post(operator, "/v1/approvals", &token, &signed_body(&stray)).await;
    assert!(r.starts_with("HTTP/1.1 409"), "{r}");
    assert_eq!(body(&r)["error"], "not_taken", "{r}");
    for c in &cs {
        assert_eq!(balance(c, &buyer), Credits::ZERO);
    }

    // The second admin's approval through the API credits it everywhere.
    let approval = decision(&second, Kind::Deposit, big.id().unwrap());
    let r = common::http_post(operator, "/v1/approvals", &token, &signed_body(&approval)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(body(&r)["state"], "taken", "{r}");
    assert_eq!(body(&r)["coordinators"], 4, "{r}");
    for c in &cs {
        assert_eq!(balance(c, &buyer), "5000".parse().unwrap());
    }
    let r = common::http_get(operator, "/v1/held/deposits", Some(&token)).await;
    assert!(body(&r)["held"].as_array().unwrap().is_empty(), "{r}");
    drop(store);
    for node in cs.into_iter().chain([customer]) {
        node.stop().await.unwrap();
    }
}

/// One peer floods a coordinator (a burst of coordinator requests,
/// malformed sync requests, then reconnecting again and again) and one
/// client hammers its operator API with guessed tokens, while an honest
/// lease runs: the flooder is limited and banned, and the lease still
/// settles to the unit on every coordinator's books.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_coordinator_bans_its_flooder_while_an_honest_lease_settles_on_every_book() {
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut cs = Vec::new();
    for (i, dir) in dirs.iter().take(4).enumerate() {
        cs.push(
            start_with(Role::Coordinator, dir.path(), Some(i), |c| {
                // 10 requests a second past a burst of 100 per address on
                // the operator listener: the hammer meets the limit however
                // fast this machine is.
                c.http.operator.per_ip_per_minute = 600;
                c.http.operator.per_ip_burst = 100;
            })
            .await,
        );
    }
    let supplier = start(Role::Supplier, dirs[4].path(), None).await;
    let customer = start(Role::Customer, dirs[5].path(), None).await;
    let all: Vec<&RunningNode> = cs.iter().chain([&supplier, &customer]).collect();
    mesh(&all).await;
    let store = customer.store.clone();
    eventually(20, "bindings and an offer at the customer", || {
        let store = store.clone();
        async move { store.count(Kind::NodeBinding) >= 5 && store.count(Kind::Offer) >= 1 }
    })
    .await;
    let buyer = account_of(dirs[5].path());
    let seller = account_of(dirs[4].path());
    fund(&customer, &buyer, "20", "wire-flood").await;
    let r = bid_one(&customer, dirs[5].path(), "").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let lease_id = body(&r)["lease"].as_str().unwrap().to_string();
    let target = &cs[0];

    let flooder = common::node().await;
    let flooder_id = flooder.peer_id();
    flooder.handle.dial(dial_addr(target)).await.unwrap();
    let watch = target.handle.clone();
    eventually(10, "the flooder connected", || {
        let watch = watch.clone();
        async move { watch.peers().await.unwrap().contains(&flooder_id) }
    })
    .await;

    // The HTTP side: guessed tokens against the operator listener.
    let operator_api = target.operator_api.unwrap();
    let hammer = async {
        let started = std::time::Instant::now();
        let (mut unauthorised, mut limited) = (0u32, 0u32);
        for i in 0..400u32 {
            let r = common::http_get(operator_api, "/v1/books", Some(&format!("{i:064x}"))).await;
            if r.starts_with("HTTP/1.1 401") {
                unauthorised += 1;
            } else if r.starts_with("HTTP/1.1 429") {
                limited += 1;
            } else {
                panic!("a guessed token was let in: {r}");
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "http hammer: 400 guesses in {secs:.2} s ({:.0}/s): {unauthorised} unauthorised, {limited} rate-limited",
            400.0 / secs
        );
        (unauthorised, limited)
    };
    // The libp2p side: valid requests, far too many at once; then
    // malformed sync requests; then coming back after the ban.
    let flood = async {
        let started = std::time::Instant::now();
        let asker = Keypair::generate().unwrap();
        let query = Signed::sign(
            rigmesh_protocol::AccountQuery {
                version: PROTOCOL_VERSION,
                account: asker.public(),
                asker: asker.public(),
                created_at: UnixMillis::now(),
            },
            &asker,
        )
        .unwrap();
        let request = CoordinatorRequest::AccountOf(query).to_bytes().unwrap();
        let asks = (0..300).map(|_| {
            flooder
                .handle
                .request(target.peer_id, Protocol::Coordinator, request.clone())
        });
        let answers = futures::future::join_all(asks).await;
        let served = answers
            .iter()
            .filter(|a| {
                a.as_ref().is_ok_and(|b| {
                    matches!(
                        CoordinatorResponse::from_bytes(b),
                        Ok(CoordinatorResponse::Account(_))
                    )
                })
            })
            .count();
        let burst_secs = started.elapsed().as_secs_f64();
        let syncs = (0..12).map(|_| {
            flooder
                .handle
                .request(target.peer_id, Protocol::Sync, vec![0xff; 9])
        });
        let _ = futures::future::join_all(syncs).await;
        let watch = target.handle.clone();
        eventually(20, "the flooder banned and cut off", || {
            let watch = watch.clone();
            async move {
                watch.stats().await.unwrap().banned >= 1
                    && !watch.peers().await.unwrap().contains(&flooder_id)
            }
        })
        .await;
        for _ in 0..10 {
            let _ = flooder.handle.dial(dial_addr(target)).await;
        }
        println!(
            "p2p flood: 300 requests in {burst_secs:.2} s ({:.0}/s), {served} served; banned after {:.2} s",
            300.0 / burst_secs,
            started.elapsed().as_secs_f64()
        );
        served
    };
    let ((unauthorised, limited), served) = tokio::join!(hammer, flood);
    assert_eq!(unauthorised + limited, 400);
    assert!(limited > 0, "the hammer met the address's rate limit");
    // At most 16 answered and 256 waiting at once (the rest `busy`), and
    // the refusals strike the flooder until it is banned.
    assert!(
        served < 300,
        "the burst was limited: {served} of 300 served"
    );
    assert!(
        !target.handle.peers().await.unwrap().contains(&flooder_id),
        "the banned flooder stays out"
    );

    // The honest lease ran on through it: it ends and settles everywhere.
    let token = read_token(dirs[5].path(), Bootstrap::Customer).unwrap();
    let r = common::http_post(
        customer.customer_api.unwrap(),
        &format!("/v1/leases/{lease_id}/end"),
        &token,
        "{}",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let supplier_token = read_token(dirs[4].path(), Bootstrap::Supplier).unwrap();
    let api = supplier.supplier_api.unwrap();
    eventually(90, "the final settlement at the supplier", || {
        let token = supplier_token.clone();
        async move {
            let r = common::http_get(api, "/v1/leases", Some(&token)).await;
            body(&r)[0]["settled"]["closed"] == serde_json::json!(true)
        }
    })
    .await;
    let r = common::http_get(api, "/v1/leases", Some(&supplier_token)).await;
    let settled = &body(&r)[0]["settled"];
    let earned: Credits = settled["earned"].as_str().unwrap().parse().unwrap();
    let fees: Credits = settled["fees"].as_str().unwrap().parse().unwrap();
    assert!(earned > Credits::ZERO, "{settled}");
    let (cs_ref, seller_ref) = (&cs, &seller);
    eventually(
        30,
        "every coordinator applied the settlement",
        || async move {
            let first = books(&cs_ref[0]);
            cs_ref.iter().all(|c| books(c) == first)
                && cs_ref.iter().all(|c| balance(c, seller_ref) == earned)
        },
    )
    .await;
    let paid = earned.checked_add(fees).unwrap();
    for c in &cs {
        assert_eq!(
            balance(c, &buyer),
            "20".parse::<Credits>().unwrap().checked_sub(paid).unwrap(),
            "the customer paid exactly what was earned and the fee"
        );
    }
    for node in cs.into_iter().chain([supplier, customer]) {
        node.stop().await.unwrap();
    }
}

/// A configuration change: the node finds leases to compact every second
/// and compacts its own (at a coordinator, every lease) `secs` after it
/// finds one finally settled.
fn evidence_grace(secs: u64) -> impl Fn(&mut NodeConfig) + Copy {
    move |c: &mut NodeConfig| {
        let table = c.coordinators.as_mut().unwrap();
        table.evidence_grace_secs = secs;
        table.compact_every_secs = 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finally_settled_leases_attestations_leave_the_store_after_the_grace_and_its_receipts_stay(
) {
    let dirs: Vec<_> = (0..7).map(|_| tempfile::tempdir().unwrap()).collect();
    // The customer and the first coordinator compact two seconds after
    // they find a lease finally settled; a second customer, party to none
    // of it, keeps its own leases' evidence a week but other people's two
    // seconds; every other node keeps the defaults (a week for its own
    // leases, an hour for others').
    let short_grace = evidence_grace(2);
    let short_grace_for_others = |c: &mut NodeConfig| {
        let table = c.coordinators.as_mut().unwrap();
        table.others_evidence_grace_secs = 2;
        table.compact_every_secs = 1;
    };
    let mut cs = Vec::new();
    for (i, dir) in dirs.iter().take(4).enumerate() {
        cs.push(if i == 0 {
            start_with(Role::Coordinator, dir.path(), Some(i), short_grace).await
        } else {
            start(Role::Coordinator, dir.path(), Some(i)).await
        });
    }
    let supplier = start(Role::Supplier, dirs[4].path(), None).await;
    let customer = start_with(Role::Customer, dirs[5].path(), None, short_grace).await;
    let bystander = start_with(Role::Customer, dirs[6].path(), None, short_grace_for_others).await;
    let all: Vec<&RunningNode> = cs
        .iter()
        .chain([&supplier, &customer, &bystander])
        .collect();
    mesh(&all).await;
    let customer_ref = &customer;
    eventually(20, "bindings and an offer at the customer", || async move {
        customer_ref.store.count(Kind::NodeBinding) >= 5
            && customer_ref.store.count(Kind::Offer) >= 1
    })
    .await;
    let buyer = account_of(dirs[5].path());
    fund(&customer, &buyer, "20", "wire-0031").await;
    let r = bid_one(&customer, dirs[5].path(), "").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let lease: rigmesh_protocol::Id = body(&r)["lease"].as_str().unwrap().parse().unwrap();
    let attestations = |node: &RunningNode| {
        node.store
            .about_lease::<rigmesh_protocol::UsageAttestation>(&lease)
            .unwrap()
            .len()
    };
    eventually(30, "three attestations at the customer", || async move {
        attestations(customer_ref) >= 3
    })
    .await;

    let token = read_token(dirs[5].path(), Bootstrap::Customer).unwrap();
    let api = customer.customer_api.unwrap();
    let r = common::http_post(api, &format!("/v1/leases/{lease}/end"), &token, "{}").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let token_ref = &token;
    eventually(90, "the final settlement at the customer", || async move {
        let r = common::http_get(api, "/v1/leases", Some(token_ref)).await;
        body(&r)[0]["settlement"]["closed"] == serde_json::json!(true)
    })
    .await;
    let r = common::http_get(api, "/v1/leases", Some(&token)).await;
    let settled = body(&r)[0]["settlement"].clone();
    let acked = body(&r)[0]["acked_windows"].as_u64().unwrap();
    assert!(acked >= 3, "{r}");

    // Two seconds later the customer's store holds none of the lease's
    // usage evidence; the supplier's, with a week of grace, all of it.
    eventually(
        30,
        "the lease's evidence compacted at the customer",
        || async move {
            attestations(customer_ref) == 0
                && customer_ref
                    .store
                    .about_lease::<rigmesh_protocol::UsageAck>(&lease)
                    .unwrap()
                    .is_empty()
        },
    )
    .await;
    assert!(customer.store.is_compacted(&lease).unwrap());
    assert!(attestations(&supplier) >= 3);
    // The bystander drops the lease's certificates with its evidence: it
    // keeps its own leases' only. The parties keep theirs (the receipts
    // below). The first coordinator drops its gossip copies, which its
    // books hold; the others, within their week, keep them.
    let settlements = |node: &RunningNode| {
        node.store
            .certificates_about_lease::<rigmesh_protocol::SettlementRequest>(&lease)
            .unwrap()
            .len()
    };
    let bystander_ref = &bystander;
    eventually(
        30,
        "the lease's certificates dropped at the bystander",
        || async move {
            bystander_ref.store.certificates_dropped(&lease).unwrap()
                && settlements(bystander_ref) == 0
                && attestations(bystander_ref) == 0
        },
    )
    .await;
    assert!(bystander
        .store
        .certificates_about_lease::<rigmesh_protocol::EscrowOrder>(&lease)
        .unwrap()
        .is_empty());
    bystander.store.check_lease_index().unwrap();
    assert!(settlements(&customer) >= 1);
    assert!(!customer.store.certificates_dropped(&lease).unwrap());
    let (cs_ref, kept) = (&cs, settlements(&customer));
    let certified = customer
        .store
        .certificates_about_lease::<rigmesh_protocol::SettlementRequest>(&lease)
        .unwrap();
    eventually(
        20,
        "every lease certificate at the coordinators on a week's grace",
        || async move { cs_ref[1..].iter().all(|c| settlements(c) == kept) },
    )
    .await;
    customer.store.check_lease_index().unwrap();
    eventually(
        30,
        "the lease's certificates dropped from the first coordinator's gossip store",
        || async move {
            cs_ref[0].store.certificates_dropped(&lease).unwrap()
                && settlements(&cs_ref[0]) == 0
                && attestations(&cs_ref[0]) == 0
        },
    )
    .await;
    assert!(cs[0]
        .store
        .certificates_about_lease::<rigmesh_protocol::EscrowOrder>(&lease)
        .unwrap()
        .is_empty());
    cs[0].store.check_lease_index().unwrap();
    let first_books = &cs[0].coordinator.as_ref().unwrap().ledger;
    for cert in &certified {
        assert!(
            first_books.is_applied(&cert.message.id().unwrap()).unwrap(),
            "the first coordinator's books hold settlement {}",
            cert.message.body.settlement_seq
        );
    }
    // Another copy (gossip, catch-up sync, a replay) is not stored again.
    let frames: Vec<_> = certified
        .iter()
        .map(|c| rigmesh_protocol::wire::WireMessage::SettlementCertificate(c.clone()))
        .collect();
    let records: Vec<_> = frames
        .iter()
        .map(|m| rigmesh_ledger::MarketRecord::of(m, m.id().unwrap(), m.to_bytes().unwrap()))
        .collect();
    cs[0].store.store(&records).unwrap();
    assert_eq!(settlements(&cs[0]), 0);

    // The first coordinator no longer keeps what it voted on the lease
    // with (a lock and the window counts per settlement, the settled
    // head); the second, within its week, does. Their books are alike.
    closed_everywhere(&cs, lease, 30).await;
    let kept = |c: &RunningNode| {
        let ledger = &c.coordinator.as_ref().unwrap().ledger;
        let locks = (0..8)
            .filter(|k| ledger.settlement_lock(&lease, *k).unwrap().is_some())
            .count();
        (locks, ledger.settlement_head(&lease).unwrap().is_some())
    };
    let first = &cs[0];
    eventually(
        30,
        "the lease's vote locks compacted at the first coordinator",
        || async move { kept(first) == (0, false) },
    )
    .await;
    let (locks, head) = kept(&cs[1]);
    assert!(locks >= 1 && head, "{locks} locks kept");
    let metrics = common::http_get(cs[0].monitoring, "/metrics", None).await;
    assert_eq!(
        common::sample(
            &metrics,
            "rigmesh_coordinator_closed_leases_compacted_total"
        ),
        1.0
    );
    let deleted = common::sample(
        &metrics,
        "rigmesh_coordinator_closed_lease_keys_deleted_total",
    );
    assert!(
        deleted >= (2 * locks + 1) as f64,
        "{deleted} keys for {locks} settlements"
    );
    for c in &cs[1..] {
        assert_eq!(books(c), books(&cs[0]));
    }
    assert_eq!(
        cs[0]
            .coordinator
            .as_ref()
            .unwrap()
            .ledger
            .verify_audit()
            .unwrap()
            .broken,
        None
    );

    let metrics = common::http_get(customer.monitoring, "/metrics", None).await;
    let counter = |series: &str| common::sample(&metrics, series) as usize;
    let compacted = counter("rigmesh_store_compacted_messages_total");
    assert!(compacted >= 2 * 3, "attestations and acks: {compacted}");
    // The customer checked each settlement certificate as it arrived; the
    // compaction that found the lease settled did not check them again.
    let skipped = counter("rigmesh_certificate_checks_skipped_total");
    assert!(
        skipped >= settlements(&customer),
        "{skipped} checks skipped for {} settlement certificates",
        settlements(&customer)
    );

    // What the customer checks of the lease still answers: its settlement
    // and the certificates behind it, each verified here.
    let r = common::http_get(api, "/v1/leases", Some(&token)).await;
    assert_eq!(body(&r)[0]["settlement"], settled, "{r}");
    let receipts_of_lease = |r: &str| -> Vec<serde_json::Value> {
        body(r)["receipts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["lease"] == serde_json::json!(lease.to_string()))
            .cloned()
            .collect()
    };
    let r = common::http_get(api, "/v1/account", Some(&token)).await;
    let receipts = receipts_of_lease(&r);
    assert!(
        receipts
            .iter()
            .any(|x| x["kind"] == "settlement_certificate"),
        "{r}"
    );
    assert!(receipts.iter().all(|x| x["verified"] == true), "{r}");

    // Restarted, the customer does not rebuild the lease from the chain
    // it no longer has: its record and receipts say the same.
    customer.stop().await.unwrap();
    let customer = start_with(Role::Customer, dirs[5].path(), None, short_grace).await;
    let api = customer.customer_api.unwrap();
    let r = common::http_get(api, "/v1/account", Some(&token)).await;
    let account = body(&r);
    let row = account["leases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lease"] == serde_json::json!(lease.to_string()))
        .cloned()
        .unwrap_or_else(|| panic!("the lease is still in the account: {r}"));
    assert_eq!(row["acked_windows"].as_u64(), Some(acked), "{r}");
    assert_eq!(receipts_of_lease(&r), receipts, "{r}");
    assert_eq!(
        customer
            .store
            .about_lease::<rigmesh_protocol::UsageAttestation>(&lease)
            .unwrap()
            .len(),
        0
    );

    for node in cs.into_iter().chain([supplier, customer, bystander]) {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_a_coordinator_stored_but_had_not_applied_when_it_stopped_is_in_its_books_once_it_starts(
) {
    let dir = tempfile::tempdir().unwrap();
    let c = start(Role::Coordinator, dir.path(), Some(0)).await;
    c.stop().await.unwrap();
    // What a coordinator stopped between a gossiped deposit's write and
    // its books leaves: the deposit in its gossip store, listed as not
    // applied, and no peer to bring it again (sync brings only what a
    // node does not hold).
    let buyer = Keypair::from_seed([0x77; 32]);
    let message = rigmesh_protocol::wire::WireMessage::Deposit(deposit(&buyer, "3", "wire-0077"));
    {
        let store = rigmesh_ledger::MarketStore::open(&dir.path().join("ledger")).unwrap();
        store.keep_unapplied();
        let record = rigmesh_ledger::MarketRecord::of(
            &message,
            message.id().unwrap(),
            message.to_bytes().unwrap(),
        );
        store.store(&[record]).unwrap();
        store.flush().unwrap();
    }
    let c = start(Role::Coordinator, dir.path(), Some(0)).await;
    let (c_ref, buyer_ref) = (&c, &buyer);
    eventually(
        20,
        "the deposit in the restarted coordinator's books",
        || async move { balance(c_ref, buyer_ref) == "3".parse::<Credits>().unwrap() },
    )
    .await;
    let role = c.coordinator.as_ref().unwrap();
    assert_eq!(role.store.unapplied(None, 10).unwrap(), []);
    books(&c);
    c.stop().await.unwrap();
}

/// A top-up certified as its lease closed (voted while the lease ran,
/// delivered after its final settlement) can reach a coordinator long
/// after the rest: here one that was down when it was delivered, and had
/// by then dropped the lease's certificates from its gossip store, as a
/// coordinator does a grace after the lease is finally settled. It takes
/// the top-up from catch-up sync all the same and its books apply it: it
/// moves nothing but the account's debit sequence, as at the others, so
/// the customer's next escrow order is applied by every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_up_delivered_after_its_lease_was_compacted_still_moves_a_returning_coordinators_debit_sequence(
) {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let short_grace = evidence_grace(1);
    let (mut cs, customer) = hand_market_with(&dirs, "wire-0041", short_grace).await;
    let quorum = customer.quorum.as_ref().unwrap();
    let buyer = account_of(dirs[4].path());
    let seller = Keypair::from_seed([0x69; 32]);
    let cap: Credits = "0.005".parse().unwrap();
    let fee_rate = cs[0].coordinator.as_ref().unwrap().config.fee_rate;
    let hand = hand_lease(&buyer, &seller, 4, 4);
    let lease = hand.lease;
    let (order, request) = hand_escrow(&buyer, &seller, &hand, 0, cap);
    let escrowed = certify_and_deliver(quorum, &order, &request, CertificateFrame::Escrow);
    assert_eq!(escrowed.await, 4);
    // The top-up is voted while the lease runs; its certificate is held.
    let (top_up, request) = hand_escrow(&buyer, &seller, &hand, 1, "0.002".parse().unwrap());
    let top_up = quorum.certify(&top_up, &request).await.unwrap();

    // The final settlement pays the four windows (0.004, past the unacked
    // timeout) and refunds the rest of the first escrow.
    let last = hand_final_settlement(&seller, &hand, &order, 4_000, cap, fee_rate);
    let bundle = hand_bundle(&hand, &last, &[]);
    let settled = certify_and_deliver(quorum, &last, &bundle, CertificateFrame::Settlement);
    assert_eq!(settled.await, 4);
    closed_everywhere(&cs, lease, 30).await;
    let cs_ref = &cs;
    eventually(
        30,
        "the lease's certificates dropped from every coordinator's gossip store",
        || async move {
            cs_ref
                .iter()
                .all(|c| c.store.certificates_dropped(&lease).unwrap())
        },
    )
    .await;
    let paid: Credits = "0.004".parse().unwrap();
    let left = "10".parse::<Credits>().unwrap().checked_sub(paid).unwrap();
    let debit_seq = |c: &RunningNode| {
        let ledger = &c.coordinator.as_ref().unwrap().ledger;
        ledger.next_debit_seq(&buyer.public()).unwrap()
    };

    // The fourth is down when the top-up is delivered: the three others
    // apply it, and it moves nothing but the debit sequence.
    let down = cs.pop().unwrap();
    down.stop().await.unwrap();
    assert_eq!(
        quorum
            .deliver(CertificateFrame::Escrow(Box::new(top_up)))
            .await,
        3
    );
    for c in &cs {
        assert_eq!(debit_seq(c), 2);
        assert_eq!(balance(c, &buyer), left);
        assert_eq!(lease_book(c, &lease).unwrap().amount, cap);
    }

    // Back from its files, it learns the top-up by catch-up sync.
    let back = start_with(Role::Coordinator, dirs[3].path(), Some(3), short_grace).await;
    for node in cs.iter().chain([&customer]) {
        back.handle.dial(dial_addr(node)).await.unwrap();
    }
    let back_ref = &back;
    eventually(
        40,
        "the returning coordinator applies the top-up",
        || async move { debit_seq(back_ref) == 2 },
    )
    .await;
    assert_eq!(balance(&back, &buyer), left);
    assert_eq!(books(&back), books(&cs[0]));

    // So the customer's next escrow order, for another lease, is applied
    // by all four, and the books still agree.
    cs.push(back);
    let next = hand_lease(&buyer, &seller, 5, 1);
    let (order, request) = hand_escrow(&buyer, &seller, &next, 2, cap);
    let escrowed = certify_and_deliver(quorum, &order, &request, CertificateFrame::Escrow);
    assert_eq!(escrowed.await, 4);
    let first = books(&cs[0]);
    for c in &cs {
        assert_eq!(debit_seq(c), 3);
        assert_eq!(balance(c, &buyer), left.checked_sub(cap).unwrap());
        assert_eq!(books(c), first, "the coordinators agree");
    }
    for node in cs.into_iter().chain([customer]) {
        node.stop().await.unwrap();
    }
}
