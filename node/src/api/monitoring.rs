//! The monitoring listener: `/metrics` (Prometheus text: libp2p's, the
//! node's and the HTTP side's), `/health` (does the node work: the ledger
//! takes a write, peers are connected, configured coordinators and
//! bootstrap peers were reached, how full the queues are) and `/ready`
//! (503 until the swarm and the store are up and every listener is bound).
//! Open routes: the listener's allowed networks (loopback by default) are
//! its protection.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use rigmesh_ledger::MarketStore;
use tokio::task::JoinHandle;

use super::{route, Access, Firewall, Gate, Listener, RouteSpec};
use crate::error::Result;
use crate::network::NodeHandle;

/// The monitoring listener's routes: all open.
pub const ROUTES: &[RouteSpec] = &[
    route("GET", "/metrics", Access::Open),
    route("GET", "/health", Access::Open),
    route("GET", "/ready", Access::Open),
    route("GET", "/openapi.json", Access::Open),
];

/// A write probe that takes longer than this counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the monitoring listener reads.
#[derive(Clone)]
pub struct Monitoring {
    /// Every metric of the node.
    pub registry: Arc<Registry>,
    /// The swarm.
    pub network: NodeHandle,
    /// The ledger's market store.
    pub store: Arc<MarketStore>,
    /// The data directory (the write probe goes into its ledger folder).
    pub data_dir: PathBuf,
    /// Set once the node has started its swarm, store and listeners.
    pub ready: Arc<AtomicBool>,
    /// The customer role's command queue, on a customer node.
    pub customer_queue:
        Option<tokio::sync::mpsc::Sender<crate::customer::runtime::CustomerCommand>>,
}

async fn metrics(State(state): State<Monitoring>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Writes, syncs and removes a file beside the ledger, then flushes the
/// ledger: a full disk, a read-only mount or a failing sled all show.
fn probe_ledger(
    store: &MarketStore,
    data_dir: &std::path::Path,
) -> std::result::Result<(), String> {
    use std::io::Write;
    let path = data_dir.join("ledger").join("health.probe");
    let mut file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(b"probe")
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    drop(file);
    std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    store.flush().map_err(|e| format!("ledger flush: {e}"))
}

async fn health(State(state): State<Monitoring>) -> Response {
    let (store, dir) = (state.store.clone(), state.data_dir.clone());
    let probe = tokio::time::timeout(
        PROBE_TIMEOUT,
        tokio::task::spawn_blocking(move || probe_ledger(&store, &dir)),
    )
    .await;
    let ledger = match probe {
        Ok(Ok(Ok(()))) => serde_json::json!({"writable": true}),
        Ok(Ok(Err(reason))) => serde_json::json!({"writable": false, "reason": reason}),
        Ok(Err(err)) => serde_json::json!({"writable": false, "reason": err.to_string()}),
        Err(_) => serde_json::json!({"writable": false, "reason": "the write probe timed out"}),
    };
    let writable = ledger
        .get("writable")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let customer_queue = state.customer_queue.as_ref().map(|q| {
        serde_json::json!({
            "depth": q.max_capacity().saturating_sub(q.capacity()),
            "capacity": q.max_capacity(),
        })
    });
    match state.network.stats().await {
        Ok(stats) => {
            // Running, but cut off from a peer it was told to join, or
            // unable to write: not ok.
            let status = if !writable {
                "failing"
            } else if stats.unreachable_bootstrap.is_empty() {
                "ok"
            } else {
                "degraded"
            };
            let unreachable: Vec<serde_json::Value> = stats
                .unreachable_bootstrap
                .iter()
                .map(|(addr, reason)| serde_json::json!({"address": addr, "reason": reason}))
                .collect();
            let code = if writable {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (
                code,
                Json(serde_json::json!({
                    "status": status,
                    "peer_id": state.network.peer_id().to_string(),
                    "ledger": ledger,
                    "peers": stats.peers,
                    "accepted": stats.accepted,
                    "rejected": stats.rejected,
                    "banned": stats.banned,
                    "unreachable_bootstrap": unreachable,
                    "queues": {
                        "gossip_dropped": stats.dropped,
                        "customer_commands": customer_queue,
                    },
                })),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "stopped", "ledger": ledger})),
        )
            .into_response(),
    }
}

async fn ready(State(state): State<Monitoring>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        Json(serde_json::json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "reason": "the node is starting"})),
        )
            .into_response()
    }
}

/// Serves `/metrics`, `/health` and `/ready` on `addr` until `shutdown`
/// completes. Returns the bound address (a port of 0 is resolved) and the
/// task.
pub async fn serve_monitoring(
    addr: SocketAddr,
    state: Monitoring,
    firewall: Arc<Firewall>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let gate = Gate::new(Listener::Monitoring, None, firewall.clone());
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(super::openapi::route(Listener::Monitoring))
        .layer(middleware::from_fn_with_state(gate, super::gate))
        .with_state(state);
    super::serve_app(addr, app, firewall, None, shutdown).await
}
