//! `/metrics` and `/health` over real HTTP, after real gossip traffic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{connect, eventually, node};
use std::sync::atomic::AtomicBool;

use rigmesh_node::api::monitoring::Monitoring;
use rigmesh_node::api::{
    serve_monitoring, AlertTarget, ApiMetrics, Firewall, Listener, ListenerLimits,
};
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{samples, Kind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_traffic_and_health_reports_peers() {
    let a = common::spawn(
        Arc::new(common::temp_store()),
        libp2p::identity::Keypair::generate_ed25519(),
        common::config(),
        Some(samples::coordinator_set().unwrap()),
    )
    .await;
    let mut b = node().await;
    connect(&a, &b).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // A certificate never expires, so the sample is valid today; b has no
    // coordinator set configured, so it ignores it (and says why).
    let cert = samples::escrow_certificate().unwrap();
    a.handle
        .publish(&WireMessage::EscrowCertificate(cert))
        .await
        .unwrap();
    let stats_handle = b.handle.clone();
    eventually(10, "b judged the message", || {
        let h = stats_handle.clone();
        async move { h.stats().await.unwrap().ignored == 1 }
    })
    .await;
    assert_eq!(b.store.count(Kind::EscrowCertificate), 0);

    let mut registry = std::mem::take(&mut b.registry);
    let api_metrics = ApiMetrics::register(&mut registry);
    let data_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data_dir.path().join("ledger")).unwrap();
    let firewall = Firewall::new(
        Listener::Monitoring,
        ListenerLimits::default(),
        api_metrics,
        AlertTarget::default(),
    )
    .unwrap();
    let ready = Arc::new(AtomicBool::new(false));
    let (addr, _task) = serve_monitoring(
        "127.0.0.1:0".parse().unwrap(),
        Monitoring {
            registry: Arc::new(registry),
            network: b.handle.clone(),
            store: b.store.clone(),
            data_dir: data_dir.path().to_path_buf(),
            ready: ready.clone(),
            customer_queue: None,
        },
        Arc::new(firewall),
        std::future::pending(),
    )
    .await
    .unwrap();
    let r = common::http_get(addr, "/ready", None).await;
    assert!(
        r.starts_with("HTTP/1.1 503"),
        "not ready while starting: {r}"
    );
    ready.store(true, std::sync::atomic::Ordering::Release);
    let r = common::http_get(addr, "/ready", None).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let metrics = common::http_get(addr, "/metrics", None).await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("rigmesh_net_peers 1"), "{metrics}");
    assert!(
        metrics.contains(
            r#"rigmesh_net_validated_total{outcome="ignore",reason="no_coordinator_set"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"rigmesh_net_messages_in_total{topic="/rigmesh/1/certs"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("rigmesh_net_ingest_latency_seconds_count 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("libp2p_"),
        "libp2p's own metrics share the registry"
    );

    let health = common::http_get(addr, "/health", None).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(r#""peers":1"#), "{health}");
    assert!(health.contains(r#""writable":true"#), "{health}");
    // The request just made is counted, by listener, route and status.
    let metrics = common::http_get(addr, "/metrics", None).await;
    assert!(
        metrics.contains(
            r#"rigmesh_api_requests_total{listener="monitoring",route="/health",status="200"} 1"#
        ),
        "{metrics}"
    );
    assert!(common::http_get(addr, "/nope", None)
        .await
        .starts_with("HTTP/1.1 404"));
}
