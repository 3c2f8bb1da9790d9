//! The public listener: read-only market data that is safe to expose,
//! without a token. Live offers with filters and paging, price statistics
//! per GPU model, market statistics. Everything comes from the node's
//! gossip store, read on a blocking thread.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rigmesh_ledger::MarketStore;
use rigmesh_protocol::{Credits, Offer, Signed};
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::local::{bad_query, bad_request, internal, live_offers};
use super::{route, Access, Firewall, Gate, Listener, RouteSpec};
use crate::error::{Error, Result};

/// The public listener's routes: all open.
pub const ROUTES: &[RouteSpec] = &[
    route("GET", "/v1/offers", Access::Open),
    route("GET", "/v1/prices", Access::Open),
    route("GET", "/v1/market", Access::Open),
    route("GET", "/openapi.json", Access::Open),
];

/// Offers on one page by default.
const DEFAULT_PAGE: usize = 50;
/// Offers on one page at most.
const MAX_PAGE: usize = 200;

/// Query of `GET /v1/offers`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferPage {
    /// GPU model (exact).
    pub gpu: Option<String>,
    /// Most per GPU-hour.
    pub max_price: Option<Credits>,
    /// Region (exact).
    pub region: Option<String>,
    /// At least this many GPUs in the offer.
    pub min_gpus: Option<u32>,
    /// At least this much memory per GPU, MiB.
    pub min_memory_mib: Option<u64>,
    /// Offers on the page (50 by default, 200 at most).
    pub limit: Option<usize>,
    /// Where the page starts: the `next_cursor` of the page before.
    pub cursor: Option<String>,
}

async fn read_offers(store: Arc<MarketStore>) -> std::result::Result<Vec<Signed<Offer>>, Response> {
    match tokio::task::spawn_blocking(move || live_offers(&store)).await {
        Ok(Ok(offers)) => Ok(offers),
        Ok(Err(err)) => Err(internal(err)),
        Err(err) => Err(internal(Error::Store(format!("store task: {err}")))),
    }
}

/// `GET /v1/offers`: live offers, cheapest first (then newest, then id),
/// filtered, a page at a time.
async fn offers(
    State(store): State<Arc<MarketStore>>,
    q: std::result::Result<Query<OfferPage>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(rejection) => return bad_query(rejection),
    };
    let start: usize = match q.cursor.as_deref().map(str::parse) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return bad_request("cursor: use the next_cursor of the previous page".into())
        }
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let mut all = match read_offers(store).await {
        Ok(all) => all,
        Err(response) => return response,
    };
    all.retain(|o| {
        let b = &o.body;
        q.gpu.as_ref().is_none_or(|g| &b.gpu_model == g)
            && q.max_price.is_none_or(|p| b.price_per_gpu_hour <= p)
            && q.region.as_ref().is_none_or(|r| &b.region == r)
            && q.min_gpus
                .is_none_or(|n| u64::from(b.gpu_count) >= u64::from(n))
            && q.min_memory_mib.is_none_or(|m| b.gpu_memory_mib >= m)
    });
    all.sort_by(|a, b| {
        a.body
            .price_per_gpu_hour
            .cmp(&b.body.price_per_gpu_hour)
            .then(b.body.created_at.cmp(&a.body.created_at))
            .then(
                a.body
                    .hardware_fingerprint
                    .0
                    .cmp(&b.body.hardware_fingerprint.0),
            )
    });
    let total = all.len();
    let page: Vec<_> = all.into_iter().skip(start).take(limit).collect();
    let end = start.saturating_add(page.len());
    Json(serde_json::json!({
        "offers": page,
        "total": total,
        "next_cursor": (end < total).then(|| end.to_string()),
    }))
    .into_response()
}

/// The value at quantile `q` (nearest rank) of sorted `values`.
fn quantile(sorted: &[Credits], q: f64) -> Option<Credits> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    // Nearest rank: ceil(q * n), at least 1; computed in integers
    // (per-mille) so no float reaches money.
    let per_mille = (q * 1000.0).round() as usize;
    let rank = (per_mille * n).div_ceil(1000).max(1);
    sorted.get(rank - 1).copied()
}

/// `GET /v1/prices`: per GPU model, the number of live offers and the
/// minimum, 10th percentile, median and 90th percentile price per GPU-hour.
async fn prices(State(store): State<Arc<MarketStore>>) -> Response {
    let all = match read_offers(store).await {
        Ok(all) => all,
        Err(response) => return response,
    };
    let mut by_model: BTreeMap<String, Vec<Credits>> = BTreeMap::new();
    for o in &all {
        by_model
            .entry(o.body.gpu_model.clone())
            .or_default()
            .push(o.body.price_per_gpu_hour);
    }
    let models: Vec<serde_json::Value> = by_model
        .into_iter()
        .map(|(model, mut prices)| {
            prices.sort();
            serde_json::json!({
                "gpu_model": model,
                "offers": prices.len(),
                "min": prices.first(),
                "p10": quantile(&prices, 0.1),
                "median": quantile(&prices, 0.5),
                "p90": quantile(&prices, 0.9),
            })
        })
        .collect();
    Json(serde_json::json!({"models": models})).into_response()
}

/// `GET /v1/market`: counts over the live offers.
async fn market(State(store): State<Arc<MarketStore>>) -> Response {
    let all = match read_offers(store).await {
        Ok(all) => all,
        Err(response) => return response,
    };
    let suppliers: BTreeSet<_> = all.iter().map(|o| o.body.supplier).collect();
    let models: BTreeSet<_> = all.iter().map(|o| o.body.gpu_model.as_str()).collect();
    let regions: BTreeSet<_> = all.iter().map(|o| o.body.region.as_str()).collect();
    let gpus: u64 = all.iter().map(|o| u64::from(o.body.gpu_count)).sum();
    Json(serde_json::json!({
        "offers": all.len(),
        "suppliers": suppliers.len(),
        "gpus": gpus,
        "gpu_models": models.len(),
        "regions": regions,
    }))
    .into_response()
}

/// Serves the public listener on `addr` until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    store: Arc<MarketStore>,
    firewall: Arc<Firewall>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let gate = Gate::new(Listener::Public, None, firewall.clone());
    let app = Router::new()
        .route("/v1/offers", get(offers))
        .route("/v1/prices", get(prices))
        .route("/v1/market", get(market))
        .merge(super::openapi::route(Listener::Public))
        .layer(middleware::from_fn_with_state(gate, super::gate))
        .with_state(store);
    super::serve_app(addr, app, firewall, None, shutdown).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let prices: Vec<Credits> = (1..=10).map(Credits::from_units).collect();
        assert_eq!(quantile(&prices, 0.1), Some(Credits::from_units(1)));
        assert_eq!(quantile(&prices, 0.5), Some(Credits::from_units(5)));
        assert_eq!(quantile(&prices, 0.9), Some(Credits::from_units(9)));
        assert_eq!(quantile(&[], 0.5), None);
        let one = [Credits::from_units(7)];
        assert_eq!(quantile(&one, 0.1), Some(Credits::from_units(7)));
    }
}
