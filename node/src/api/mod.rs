//! The node's HTTP listeners, one per audience. This module serves the
//! monitoring audience: `/metrics` (Prometheus text, libp2p's and the
//! node's own) and `/health`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::network::NodeHandle;

pub mod local;
pub mod notify_routes;

#[derive(Clone)]
struct Monitoring {
    registry: Arc<Registry>,
    network: NodeHandle,
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

async fn health(State(state): State<Monitoring>) -> impl IntoResponse {
    match state.network.stats().await {
        Ok(stats) => {
            // Running, but cut off from a peer it was told to join: not ok.
            let status = if stats.unreachable_bootstrap.is_empty() {
                "ok"
            } else {
                "degraded"
            };
            let unreachable: Vec<serde_json::Value> = stats
                .unreachable_bootstrap
                .iter()
                .map(|(addr, reason)| serde_json::json!({"address": addr, "reason": reason}))
                .collect();
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({
                    "status": status,
                    "peer_id": state.network.peer_id().to_string(),
                    "peers": stats.peers,
                    "accepted": stats.accepted,
                    "rejected": stats.rejected,
                    "banned": stats.banned,
                    "unreachable_bootstrap": unreachable,
                })),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "stopped"})),
        )
            .into_response(),
    }
}

/// Serves `/metrics` and `/health` on `addr` until `shutdown` completes.
/// Returns the bound address (a port of 0 is resolved) and the task.
pub async fn serve_monitoring(
    addr: SocketAddr,
    registry: Arc<Registry>,
    network: NodeHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(Monitoring { registry, network });
    serve_app(addr, app, "monitoring", shutdown).await
}

/// Binds `addr` and serves `app` on it until `shutdown` completes; returns
/// the bound address (a port of 0 is resolved) and the server task.
pub(crate) async fn serve_app(
    addr: SocketAddr,
    app: Router,
    what: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let io = |e| Error::Io {
        path: format!("the {what} API's listener on {addr}"),
        source: e,
    };
    let listener = TcpListener::bind(addr).await.map_err(io)?;
    let bound = listener.local_addr().map_err(io)?;
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(%err, listener = what, "listener stopped");
        }
    });
    Ok((bound, task))
}
