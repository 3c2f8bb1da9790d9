//! The public listener: read-only market data that is safe to expose,
//! without a token. Live offers with filters and paging, price statistics
//! per GPU model, market statistics. Everything comes from the node's
//! order book in memory ([`crate::orderbook`]): no request reads the
//! store.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rigmesh_protocol::{Credits, UnixMillis};
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::local::{bad_query, bad_request};
use super::{route, Access, Firewall, Gate, Listener, RouteSpec};
use crate::error::Result;
use crate::orderbook::{Cursor, OfferFilter, OrderBook};

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

/// `GET /v1/offers`: live offers, cheapest first (then newest, then
/// offer id), filtered, a page at a time. The cursor is the position of
/// the last offer answered, so offers coming and going between pages
/// neither repeat nor skip the ones still listed.
async fn offers(
    State(book): State<Arc<OrderBook>>,
    q: std::result::Result<Query<OfferPage>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(rejection) => return bad_query(rejection),
    };
    let after = match q.cursor.as_deref().map(Cursor::parse) {
        None => None,
        Some(Some(cursor)) => Some(cursor),
        Some(None) => {
            return bad_request("cursor: use the next_cursor of the previous page".into())
        }
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let filter = OfferFilter {
        gpu_model: q.gpu,
        region: q.region,
        max_price: q.max_price,
        min_gpus: q.min_gpus,
        min_memory_mib: q.min_memory_mib,
        supplier: None,
    };
    book.ready().await;
    let page = book.page(&filter, after, limit, UnixMillis::now(), true);
    Json(serde_json::json!({
        "offers": page.offers,
        "total": page.total.unwrap_or_default(),
        "next_cursor": page.next.map(|c| c.to_text()),
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
async fn prices(State(book): State<Arc<OrderBook>>) -> Response {
    book.ready().await;
    let models: Vec<serde_json::Value> = book
        .prices(UnixMillis::now())
        .into_iter()
        .map(|(model, prices)| {
            // The book lists each model's prices lowest first.
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
async fn market(State(book): State<Arc<OrderBook>>) -> Response {
    book.ready().await;
    let summary = book.summary(UnixMillis::now());
    Json(serde_json::json!({
        "offers": summary.offers,
        "suppliers": summary.suppliers,
        "gpus": summary.gpus,
        "gpu_models": summary.gpu_models,
        "regions": summary.regions,
    }))
    .into_response()
}

/// Serves the public listener on `addr` until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    book: Arc<OrderBook>,
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
        .with_state(book);
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
