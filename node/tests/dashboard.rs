//! The Grafana dashboard in `ops/grafana/rigmesh.json` charts only what
//! nodes export: every metric its queries name is a family on the
//! `/metrics` page of a started coordinator (which serves the network,
//! coordinator, HTTP and, with `[notify]`, notification metrics, and its
//! process's resources).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeSet;

use rigmesh_node::config::{CoordinatorsConfig, NodeConfig, Role};
use rigmesh_protocol::rpc::{CertificateFrame, CoordinatorRequest};
use rigmesh_protocol::{Deposit, Keypair, Signed, PROTOCOL_VERSION};

/// Every `rigmesh_...` and `process_...` metric name in `text`.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["rigmesh_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            out.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    out
}

/// The family a sample name belongs to (counters end in `_total`,
/// histograms in `_bucket`, `_sum` and `_count`).
fn family(sample: &str) -> &str {
    for suffix in ["_total", "_bucket", "_sum", "_count", "_created"] {
        if let Some(base) = sample.strip_suffix(suffix) {
            return base;
        }
    }
    sample
}

/// A webhook receiver on a free loopback port that takes everything.
async fn receiver() -> String {
    let app = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn config(role: Role, dir: &std::path::Path, set: &CoordinatorsConfig) -> NodeConfig {
    NodeConfig {
        role,
        data_dir: dir.to_path_buf(),
        network: common::config(),
        monitoring: "127.0.0.1:0".parse().unwrap(),
        customer_api: "127.0.0.1:0".parse().unwrap(),
        supplier_api: "127.0.0.1:0".parse().unwrap(),
        public_api: "127.0.0.1:0".parse().unwrap(),
        analytics_api: "127.0.0.1:0".parse().unwrap(),
        operator_api: "127.0.0.1:0".parse().unwrap(),
        coordinators: Some(set.clone()),
        ..NodeConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_charts_is_exported() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/grafana/rigmesh.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut queries = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push_str(target["expr"].as_str().unwrap());
            queries.push('\n');
        }
    }
    let charted = names(&queries);
    assert!(charted.len() >= 15, "the dashboard charts {charted:?}");

    // A one-member coordinator set, whose operators hear of large
    // deposits on a working webhook and a dead one, and a customer node.
    const ADMIN: [u8; 32] = [0x41; 32];
    let (cdir, kdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    rigmesh_node::keyfile::write_seed(&cdir.path().join("account.key"), &[0x61; 32]).unwrap();
    let mut set = CoordinatorsConfig::new(1, vec![Keypair::from_seed([0x61; 32]).public()]);
    set.admin = Some(Keypair::from_seed(ADMIN).public());
    set.deposit_alert_above = Some("1".parse().unwrap());
    let secret = cdir.path().join("hook.secret");
    std::fs::write(&secret, "a shared secret for the webhook").unwrap();
    let mut coordinator = config(Role::Coordinator, cdir.path(), &set);
    coordinator.notify = Some(
        rigmesh_notify::NotifyConfig::from_toml(&format!(
            r#"
            [outbox]
            poll_ms = 50
            [grouping]
            group_wait_ms = 100
            group_interval_ms = 300
            [[channels]]
            name = "ops"
            type = "webhook"
            url = "{}"
            secret = {{ file = "{}" }}
            [[channels]]
            name = "gone"
            type = "webhook"
            url = "http://127.0.0.1:9/hook"
            secret = {{ file = "{}" }}
            [[recipients]]
            name = "operators"
            audience = ["operators"]
            channels = ["ops", "gone"]
            "#,
            receiver().await,
            secret.display(),
            secret.display()
        ))
        .unwrap(),
    );
    let c = rigmesh_node::node::start(coordinator).await.unwrap();
    let k = rigmesh_node::node::start(config(Role::Customer, kdir.path(), &set))
        .await
        .unwrap();
    k.handle
        .dial(
            c.listen_addrs[0]
                .clone()
                .with(libp2p::multiaddr::Protocol::P2p(c.peer_id)),
        )
        .await
        .unwrap();
    let quorum = k.quorum.clone().unwrap();
    let q = quorum.clone();
    common::eventually(20, "the customer reaches the coordinator", || {
        let q = q.clone();
        async move {
            q.members(rigmesh_protocol::UnixMillis::now())
                .iter()
                .all(|(_, peer)| peer.is_some())
        }
    })
    .await;

    // Traffic for every block: a large deposit (applied, money moved, an
    // operators' alert delivered and failed), a forged resolution
    // (refused), the public listener and an operator request without a
    // token (refused).
    let admin = Keypair::from_seed(ADMIN);
    let deposit = Signed::sign(
        Deposit {
            version: PROTOCOL_VERSION,
            epoch: 1,
            admin: admin.public(),
            account: Keypair::from_seed([0x62; 32]).public(),
            amount: "5".parse().unwrap(),
            reference: "dashboard".into(),
            created_at: rigmesh_protocol::UnixMillis::now(),
        },
        &admin,
    )
    .unwrap();
    quorum.deliver(CertificateFrame::Deposit(deposit)).await;
    let mut forged = rigmesh_protocol::samples::dispute_resolution()
        .unwrap()
        .body;
    forged.epoch = 1;
    forged.created_at = rigmesh_protocol::UnixMillis::now();
    let forged = Signed::sign(forged, &Keypair::from_seed([0x62; 32])).unwrap();
    quorum.ask_all(&CoordinatorRequest::Resolve(forged)).await;
    common::http_get(c.public_api, "/v1/offers", None).await;
    common::http_get(c.operator_api.unwrap(), "/v1/audit", None).await;

    let monitoring = c.monitoring;
    let exported = |page: &str| -> BTreeSet<String> {
        page.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    };
    let missing = |page: &str| -> Vec<String> {
        let exported = exported(page);
        charted
            .iter()
            .filter(|name| !exported.contains(family(name)))
            .cloned()
            .collect()
    };
    let mut last = String::new();
    for _ in 0..150 {
        last = common::http_get(monitoring, "/metrics", None).await;
        if missing(&last).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(last.starts_with("HTTP/1.1 200"), "{last}");
    assert!(
        missing(&last).is_empty(),
        "charted but not exported: {:?}; exported: {:?}",
        missing(&last),
        exported(&last)
    );
    k.stop().await.unwrap();
    c.stop().await.unwrap();
}
