//! The analytics listener: read-only usage, spend and earnings of the
//! node's own account, the hourly series the node keeps, forecasts made
//! from them, and a dashboard page over all of it. Every data route needs
//! `analytics:read`; the page itself holds no data (it asks for a token
//! and calls the data routes with it), so it is open. Nothing here moves
//! money or changes settings.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::local::{self, bad_request, refusal, LocalApi, Scoped};
use super::{route, Access, Firewall, Gate, Listener, RouteSpec, Scope};
use crate::error::{Error, Result};
use crate::trends::book::{check_name, hour_at, millis_of, KEPT_HOURS};
use crate::trends::{parse_horizon, reports, Trends};

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
    route("GET", "/v1/series", Access::Scope(Scope::AnalyticsRead)),
    route(
        "GET",
        "/v1/series/{*name}",
        Access::Scope(Scope::AnalyticsRead),
    ),
    route(
        "GET",
        "/v1/forecast/spend",
        Access::Scope(Scope::AnalyticsRead),
    ),
    route(
        "GET",
        "/v1/forecast/earnings",
        Access::Scope(Scope::AnalyticsRead),
    ),
    route(
        "GET",
        "/v1/forecast/market",
        Access::Scope(Scope::AnalyticsRead),
    ),
    route("GET", "/dashboard", Access::Open),
    route("GET", "/openapi.json", Access::Open),
];

/// The dashboard: one page, no build step, nothing fetched from
/// elsewhere.
const DASHBOARD: &str = include_str!("dashboard.html");

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
        .route("/v1/series", get(series_names))
        .route("/v1/series/{*name}", get(series))
        .route("/v1/forecast/spend", get(forecast_spend))
        .route("/v1/forecast/earnings", get(forecast_earnings))
        .route("/v1/forecast/market", get(forecast_market))
        .route("/dashboard", get(dashboard))
        .merge(super::openapi::route(Listener::Analytics))
        .layer(middleware::from_fn_with_state(gate, super::gate))
        .with_state(state);
    super::serve_app(addr, app, firewall, None, shutdown).await
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Everything the page needs is in it: no script, style or
            // connection elsewhere, and no framing by other pages.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        DASHBOARD,
    )
        .into_response()
}

fn no_trends() -> Response {
    refusal(
        StatusCode::CONFLICT,
        "failed",
        "this node keeps no series (customer and supplier nodes do)",
    )
}

fn trends_of(s: &Scoped) -> Option<Trends> {
    s.api.trends.clone()
}

fn failed(err: Error) -> Response {
    match err {
        Error::Busy(reason) => refusal(StatusCode::SERVICE_UNAVAILABLE, "busy", reason),
        Error::Stopped => refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopped",
            "the node is stopping",
        ),
        other => local::internal(other),
    }
}

/// Query of the forecast routes.
#[derive(Debug, Default, Deserialize)]
pub struct HorizonQuery {
    /// `24h`, `7d`, `30d`...; 24 hours by default.
    pub horizon: Option<String>,
}

fn horizon_of(query: &HorizonQuery) -> std::result::Result<usize, String> {
    query.horizon.as_deref().map_or(Ok(24), parse_horizon)
}

/// `GET /v1/series`: the series kept, with their units.
async fn series_names(State(s): State<Scoped>) -> Response {
    let Some(trends) = trends_of(&s) else {
        return no_trends();
    };
    let book = trends.forecasts.book().clone();
    match tokio::task::spawn_blocking(move || book.names()).await {
        Ok(Ok(names)) => {
            let list: Vec<serde_json::Value> = names
                .iter()
                .filter_map(|n| {
                    let (kind, unit) = check_name(n).ok()?;
                    Some(serde_json::json!({"series": n, "kind": kind, "unit": unit.shown_as()}))
                })
                .collect();
            Json(serde_json::json!({"series": list, "kept_hours": KEPT_HOURS})).into_response()
        }
        Ok(Err(err)) => failed(err),
        Err(err) => failed(Error::Store(format!("reading the series: {err}"))),
    }
}

/// Query of `GET /v1/series/{name}`.
#[derive(Debug, Default, Deserialize)]
pub struct SeriesQuery {
    /// Hours back from now; a week by default, at most the hours kept.
    pub hours: Option<i64>,
}

/// `GET /v1/series/{name}?hours=168`: a series' recorded hours, in the
/// unit it is shown in (an unknown but valid name has no hours yet).
async fn series(
    State(s): State<Scoped>,
    UrlPath(name): UrlPath<String>,
    query: std::result::Result<Query<SeriesQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return local::bad_query(rejection),
    };
    let (kind, unit) = match check_name(&name) {
        Ok(spec) => spec,
        Err(reason) => return bad_request(reason),
    };
    let hours = query.hours.unwrap_or(168);
    if !(1..=KEPT_HOURS).contains(&hours) {
        return bad_request(format!("hours must be 1 to {KEPT_HOURS}"));
    }
    let Some(trends) = trends_of(&s) else {
        return no_trends();
    };
    let book = trends.forecasts.book().clone();
    let since = hour_at(rigmesh_protocol::UnixMillis::now()).plus(1 - hours);
    let read_name = name.clone();
    match tokio::task::spawn_blocking(move || book.read(&read_name, since)).await {
        Ok(Ok(points)) => Json(serde_json::json!({
            "series": name,
            "kind": kind,
            "unit": unit.shown_as(),
            "points": points
                .iter()
                .map(|(h, v)| serde_json::json!({"at": millis_of(*h), "value": unit.show(*v as f64)}))
                .collect::<Vec<_>>(),
        }))
        .into_response(),
        Ok(Err(err)) => failed(err),
        Err(err) => failed(Error::Store(format!("reading the series: {err}"))),
    }
}

/// What every forecast route reads first: the horizon asked for (a JSON
/// 400 when the query or the horizon is bad) and the node's series (409
/// when it keeps none).
fn forecast_inputs(
    s: &Scoped,
    query: std::result::Result<Query<HorizonQuery>, QueryRejection>,
) -> std::result::Result<(usize, Trends), Box<Response>> {
    let Query(query) = query.map_err(|rejection| Box::new(local::bad_query(rejection)))?;
    let horizon = horizon_of(&query).map_err(|reason| Box::new(bad_request(reason)))?;
    let trends = trends_of(s).ok_or_else(|| Box::new(no_trends()))?;
    Ok((horizon, trends))
}

/// `GET /v1/forecast/spend?horizon=24h`: the customer's spend forecast,
/// its totals for 24 h, 7 d and 30 d, and when each cap runs out.
async fn forecast_spend(
    State(s): State<Scoped>,
    query: std::result::Result<Query<HorizonQuery>, QueryRejection>,
) -> Response {
    let (horizon, trends) = match forecast_inputs(&s, query) {
        Ok(inputs) => inputs,
        Err(response) => return *response,
    };
    let Some(customer) = s.api.customer.clone() else {
        return refusal(
            StatusCode::CONFLICT,
            "failed",
            "this node does not run the customer role (role = \"customer\")",
        );
    };
    match reports::spend(&trends.forecasts, &customer, horizon).await {
        Ok(report) => Json(report).into_response(),
        Err(err) => failed(err),
    }
}

/// `GET /v1/forecast/earnings?horizon=24h`: a supplier's earnings, GPU
/// time sold and utilisation ahead.
async fn forecast_earnings(
    State(s): State<Scoped>,
    query: std::result::Result<Query<HorizonQuery>, QueryRejection>,
) -> Response {
    let (horizon, trends) = match forecast_inputs(&s, query) {
        Ok(inputs) => inputs,
        Err(response) => return *response,
    };
    match reports::earnings(&trends.forecasts, horizon).await {
        Ok(report) => Json(report).into_response(),
        Err(err) => failed(err),
    }
}

/// `GET /v1/forecast/market?horizon=24h`: price and supply per GPU model.
async fn forecast_market(
    State(s): State<Scoped>,
    query: std::result::Result<Query<HorizonQuery>, QueryRejection>,
) -> Response {
    let (horizon, trends) = match forecast_inputs(&s, query) {
        Ok(inputs) => inputs,
        Err(response) => return *response,
    };
    match reports::market(&trends.forecasts, horizon).await {
        Ok(report) => Json(report).into_response(),
        Err(err) => failed(err),
    }
}
