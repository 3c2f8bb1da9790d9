//! The analytics listener: read-only usage, spend and earnings of the
//! node's own account, for dashboards. Every route needs
//! `analytics:read`; nothing here moves money or changes settings.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::middleware;
use axum::routing::get;
use axum::Router;
use tokio::task::JoinHandle;

use super::local::{self, LocalApi, Scoped};
use super::{route, Access, Firewall, Gate, Listener, RouteSpec, Scope};
use crate::error::Result;

/// The analytics listener's routes.
pub const ROUTES: &[RouteSpec] = &[
    route("GET", "/v1/whoami", Access::AnyToken),
    route("GET", "/v1/spend", Access::Scope(Scope::AnalyticsRead)),
    route(
        "GET",
        "/v1/usage/{lease}",
        Access::Scope(Scope::AnalyticsRead),
    ),
    route("GET", "/v1/earnings", Access::Scope(Scope::AnalyticsRead)),
    route("GET", "/openapi.json", Access::Open),
];

/// Serves the analytics listener on `addr` until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    api: LocalApi,
    firewall: Arc<Firewall>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let gate = Gate::new(
        Listener::Analytics,
        Some(api.tokens.clone()),
        firewall.clone(),
    );
    let state = Scoped {
        api,
        listener: Listener::Analytics,
    };
    let app = Router::new()
        .route("/v1/whoami", get(local::whoami))
        // The customer's account: balance, budget, spend per lease.
        .route("/v1/spend", get(local::account))
        .route("/v1/usage/{lease}", get(local::usage))
        .route("/v1/earnings", get(local::supplier_earnings))
        .merge(super::openapi::route(Listener::Analytics))
        .layer(middleware::from_fn_with_state(gate, super::gate))
        .with_state(state);
    super::serve_app(addr, app, firewall, None, shutdown).await
}
