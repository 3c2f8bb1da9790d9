//! The customer and supplier listeners, the CLI's APIs, each bound to
//! loopback by default. Every route names the scope it needs in
//! [`CUSTOMER_ROUTES`], [`SUPPLIER_ROUTES`] or [`COMMON_ROUTES`]; the
//! token check in [`super::gate`] answers 401 (`token_missing`,
//! `token_not_recognised`, `token_expired`, `token_revoked`) or 403
//! (`scope_missing`) before any handler runs.
//!
//! The customer endpoints ask the customer role's task through a bounded
//! channel and answer JSON; a refusal is `{"error": <kind>, "reason":
//! <text>}` with 400 (bad input, nothing changed), 404 (no such lease or
//! bid), 409 (conflict, or the node does not play the role) or 5xx.
//!
//! Both listeners (and the operator listener) serve the notifications
//! (`/v1/notify/...`) and token management (`/v1/tokens`). The
//! acknowledgement link in a message (`/v1/notify/ack/{group}?token=…`)
//! is the one route without the bearer token: it carries the group's own
//! token instead.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use rigmesh_ledger::MarketStore;
use rigmesh_protocol::{Credits, Id, PublicKey, UnixMillis};
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::tokens::{NewToken, TokenError, TokenStore};
use super::{route, Access, Caller, Firewall, Gate, Listener, RouteSpec, Scope};
use crate::customer::commands::{
    AccountAsk, BidError, BidOutcome, BidRequest, CustomerCommand, RequestError,
};
use crate::customer::report::DEFAULT_USAGE_WINDOWS;
use crate::customer::spending::BudgetChange;
use crate::error::{Error, Result};
use crate::supplier::leases::{latest, LeaseTotals};
use crate::supplier::runtime::SupplierLease;

/// The customer listener's own routes.
pub const CUSTOMER_ROUTES: &[RouteSpec] = &[
    route("GET", "/v1/offers", Access::Scope(Scope::CustomerRead)),
    route("POST", "/v1/bid", Access::Scope(Scope::CustomerTrade)),
    route("GET", "/v1/bids", Access::Scope(Scope::CustomerRead)),
    route("GET", "/v1/bids/{id}", Access::Scope(Scope::CustomerRead)),
    route(
        "DELETE",
        "/v1/bids/{id}",
        Access::Scope(Scope::CustomerTrade),
    ),
    route("GET", "/v1/leases", Access::Scope(Scope::CustomerRead)),
    route(
        "POST",
        "/v1/leases/{id}/end",
        Access::Scope(Scope::CustomerTrade),
    ),
    route(
        "POST",
        "/v1/leases/{id}/dispute",
        Access::Scope(Scope::CustomerTrade),
    ),
    route(
        "GET",
        "/v1/usage/{lease}",
        Access::Scope(Scope::CustomerRead),
    ),
    route("GET", "/v1/budget", Access::Scope(Scope::CustomerRead)),
    route("PUT", "/v1/budget", Access::Scope(Scope::CustomerTrade)),
    route("GET", "/v1/account", Access::Scope(Scope::CustomerRead)),
    route("GET", "/v1/audit", Access::Scope(Scope::CustomerRead)),
    route(
        "GET",
        "/v1/audit/verify",
        Access::Scope(Scope::CustomerRead),
    ),
];

/// The supplier listener's own routes.
pub const SUPPLIER_ROUTES: &[RouteSpec] = &[
    route("GET", "/v1/offers", Access::Scope(Scope::SupplierRead)),
    route("GET", "/v1/gpus", Access::Scope(Scope::SupplierRead)),
    route("GET", "/v1/leases", Access::Scope(Scope::SupplierRead)),
    route("GET", "/v1/earnings", Access::Scope(Scope::SupplierRead)),
    route("GET", "/v1/audit", Access::Scope(Scope::SupplierRead)),
    route(
        "GET",
        "/v1/audit/verify",
        Access::Scope(Scope::SupplierRead),
    ),
];

/// Routes of every CLI listener (customer, supplier, operator):
/// who the token is, notifications, token management.
pub const COMMON_ROUTES: &[RouteSpec] = &[
    route("GET", "/v1/whoami", Access::AnyToken),
    route(
        "GET",
        "/v1/notify/channels",
        Access::Scope(Scope::NotifyManage),
    ),
    route(
        "POST",
        "/v1/notify/channels",
        Access::Scope(Scope::NotifyManage),
    ),
    route(
        "DELETE",
        "/v1/notify/channels/{name}",
        Access::Scope(Scope::NotifyManage),
    ),
    route(
        "GET",
        "/v1/notify/silences",
        Access::Scope(Scope::NotifyManage),
    ),
    route(
        "POST",
        "/v1/notify/silences",
        Access::Scope(Scope::NotifyManage),
    ),
    route(
        "DELETE",
        "/v1/notify/silences/{id}",
        Access::Scope(Scope::NotifyManage),
    ),
    route(
        "POST",
        "/v1/notify/channels/{name}/test",
        Access::Scope(Scope::NotifyManage),
    ),
    route(
        "GET",
        "/v1/notify/rules",
        Access::Scope(Scope::NotifyManage),
    ),
    route("GET", "/v1/notify/log", Access::Scope(Scope::NotifyManage)),
    route(
        "POST",
        "/v1/notify/groups/{group}/ack",
        Access::Scope(Scope::NotifyManage),
    ),
    route("GET", "/v1/notify/ack/{group}", Access::OwnToken),
    route("POST", "/v1/notify/ack/{group}", Access::OwnToken),
    route("GET", "/v1/tokens", Access::Scope(Scope::TokensManage)),
    route("POST", "/v1/tokens", Access::Scope(Scope::TokensManage)),
    route(
        "DELETE",
        "/v1/tokens/{token}",
        Access::Scope(Scope::TokensManage),
    ),
    route("GET", "/openapi.json", Access::Open),
];

/// What the CLI listeners read.
#[derive(Clone)]
pub struct LocalApi {
    /// The node's market store.
    pub store: Arc<MarketStore>,
    /// The node's order book: the live offers, held in memory.
    pub book: Arc<crate::orderbook::OrderBook>,
    /// The node's account (the supplier's own offers are its).
    pub account: PublicKey,
    /// The token table.
    pub tokens: TokenStore,
    /// The supplier role's view, when this node plays it.
    pub supplier: Option<tokio::sync::watch::Receiver<crate::supplier::runtime::SupplierView>>,
    /// The customer role, when this node plays it.
    pub customer: Option<tokio::sync::mpsc::Sender<crate::customer::runtime::CustomerCommand>>,
    /// The notifier, once started (when the config has `[notify]`).
    pub notify: Arc<std::sync::OnceLock<crate::notify::NodeNotifier>>,
    /// The coordinator role, on a coordinator (the operator listener).
    pub coordinator: Option<Arc<crate::coordinator::CoordinatorRole>>,
    /// The node's series and forecasts (customers and suppliers).
    pub trends: Option<crate::trends::Trends>,
    /// The suspicious-activity review queue, on a node with an operator
    /// audience (the operator listener).
    pub review: Option<crate::review::ReviewQueue>,
    /// A client of the coordinator set that answers for this coordinator
    /// itself, on a coordinator (the operator listener's writes).
    pub quorum: Option<crate::quorum::Quorum>,
    /// The node's network, for bans (the operator listener).
    pub network: Option<crate::network::NodeHandle>,
}

#[derive(Clone)]
pub(crate) struct Scoped {
    pub(crate) api: LocalApi,
    pub(crate) listener: Listener,
}

/// Offers on one page of `GET /v1/offers` unless `limit` says otherwise.
pub const DEFAULT_OFFER_PAGE: usize = 200;
/// Offers on one page of `GET /v1/offers` at most.
pub const MAX_OFFER_PAGE: usize = 1_000;
/// The response header of `GET /v1/offers` that carries the cursor of the
/// next page; absent on the last page. The body stays a plain array of
/// offers, as clients read it before pages existed.
pub const NEXT_CURSOR_HEADER: &str = "next-cursor";

/// Filters and paging of `GET /v1/offers`.
#[derive(Debug, Default, Deserialize)]
pub struct OfferFilter {
    /// GPU model (exact).
    pub gpu: Option<String>,
    /// Most per GPU-hour.
    pub max_price: Option<Credits>,
    /// Offers on the page ([`DEFAULT_OFFER_PAGE`] by default,
    /// [`MAX_OFFER_PAGE`] at most).
    pub limit: Option<usize>,
    /// Where the page starts: the `next-cursor` header of the page before.
    pub cursor: Option<String>,
}

/// One page of offers as `GET /v1/offers` answers it: the offers (a JSON
/// array) and, when more follow, their cursor in [`NEXT_CURSOR_HEADER`].
async fn offer_page(
    book: &crate::orderbook::OrderBook,
    filter: OfferFilter,
    supplier: Option<PublicKey>,
) -> Response {
    let after = match filter
        .cursor
        .as_deref()
        .map(crate::orderbook::Cursor::parse)
    {
        None => None,
        Some(Some(cursor)) => Some(cursor),
        Some(None) => {
            return bad_request(format!(
                "cursor: use the {NEXT_CURSOR_HEADER} header of the previous page"
            ))
        }
    };
    let limit = filter
        .limit
        .unwrap_or(DEFAULT_OFFER_PAGE)
        .clamp(1, MAX_OFFER_PAGE);
    let listing = crate::orderbook::OfferFilter {
        gpu_model: filter.gpu,
        max_price: filter.max_price,
        supplier,
        ..Default::default()
    };
    book.ready().await;
    let page = book.page(&listing, after, limit, UnixMillis::now(), false);
    let mut response = Json(page.offers).into_response();
    if let Some(next) = page.next {
        if let Ok(value) = header::HeaderValue::from_str(&next.to_text()) {
            response.headers_mut().insert(NEXT_CURSOR_HEADER, value);
        }
    }
    response
}

pub(crate) fn internal(err: Error) -> Response {
    tracing::warn!(%err, "local API error");
    refusal(StatusCode::INTERNAL_SERVER_ERROR, "failed", err.to_string())
}

/// A query string that does not parse: a 400 with the shared error body
/// (axum's own rejection is plain text).
pub(crate) fn bad_query(rejection: QueryRejection) -> Response {
    bad_request(format!("the query string: {}", rejection.body_text()))
}

/// `GET /v1/offers` on the customer listener: the market's live offers,
/// cheapest first, then freshest, a page at a time.
async fn market_offers(
    State(s): State<Scoped>,
    filter: std::result::Result<Query<OfferFilter>, QueryRejection>,
) -> Response {
    match filter {
        Ok(Query(filter)) => offer_page(&s.api.book, filter, None).await,
        Err(rejection) => bad_query(rejection),
    }
}

/// `GET /v1/offers` on the supplier listener: the node's own live offers,
/// with the same filters and pages.
async fn own_offers(
    State(s): State<Scoped>,
    filter: std::result::Result<Query<OfferFilter>, QueryRejection>,
) -> Response {
    match filter {
        Ok(Query(filter)) => offer_page(&s.api.book, filter, Some(s.api.account)).await,
        Err(rejection) => bad_query(rejection),
    }
}

fn not_a_customer() -> Response {
    (
        StatusCode::CONFLICT,
        Json(serde_json::json!({"error": "failed", "reason": "this node does not run the customer role (role = \"customer\")"})),
    )
        .into_response()
}

/// A JSON error body: `{"error": <kind>, "reason": <text>}`.
pub(crate) fn refusal(status: StatusCode, error: &str, reason: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({"error": error, "reason": reason.into()})),
    )
        .into_response()
}

/// Sends a command to the customer role and waits for its answer.
async fn ask<T>(
    s: &Scoped,
    make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> CustomerCommand,
) -> std::result::Result<T, Response> {
    let Some(customer) = &s.api.customer else {
        return Err(not_a_customer());
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if customer.send(make(tx)).await.is_err() {
        return Err(not_a_customer());
    }
    rx.await.map_err(|_| not_a_customer())
}

fn request_error(err: RequestError) -> Response {
    let status = match err {
        RequestError::NotFound(_) => StatusCode::NOT_FOUND,
        RequestError::Invalid(_) => StatusCode::BAD_REQUEST,
        RequestError::Conflict(_) => StatusCode::CONFLICT,
        RequestError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        RequestError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(err)).into_response()
}

fn answer<T: serde::Serialize>(result: std::result::Result<T, RequestError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(err) => request_error(err),
    }
}

/// An id from a path (a lease or bid id, 64 hex digits), or why not.
fn id_from_path(what: &str, text: &str) -> std::result::Result<Id, String> {
    text.parse::<Id>()
        .map_err(|e| format!("{text:?} is not a {what} id (64 hex digits): {e}"))
}

pub(crate) fn bad_request(reason: String) -> Response {
    refusal(StatusCode::BAD_REQUEST, "invalid", reason)
}

/// `POST /v1/bid`: 200 with the lease when one was made at once; 202 with
/// the standing bid when nothing matched and the bid may wait
/// (`wait_secs`); otherwise 404 (no match, with the reason in numbers),
/// 409 (the supplier refused), 400 (an invalid bid), 502, or 503 (too
/// many bids wait for the one being agreed, or the node is stopping).
async fn bid(State(s): State<Scoped>, body: axum::body::Bytes) -> Response {
    let request: BidRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return bad_request(format!("the body is not a bid: {err}")),
    };
    match ask(&s, |tx| CustomerCommand::Bid(request, tx)).await {
        Ok(Ok(BidOutcome::Leased(lease))) => Json(lease).into_response(),
        Ok(Ok(BidOutcome::Waiting(status))) => (StatusCode::ACCEPTED, Json(status)).into_response(),
        Ok(Err(err)) => {
            let status = match err {
                BidError::NoMatch(_) => StatusCode::NOT_FOUND,
                BidError::Refused(_) => StatusCode::CONFLICT,
                BidError::Invalid(_) => StatusCode::BAD_REQUEST,
                BidError::Failed(_) => StatusCode::BAD_GATEWAY,
                BidError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            (status, Json(err)).into_response()
        }
        Err(response) => response,
    }
}

async fn bids(State(s): State<Scoped>) -> Response {
    match ask(&s, CustomerCommand::Bids).await {
        Ok(list) => Json(list).into_response(),
        Err(response) => response,
    }
}

async fn bid_status(State(s): State<Scoped>, UrlPath(id): UrlPath<String>) -> Response {
    let id = match id_from_path("bid", &id) {
        Ok(id) => id,
        Err(reason) => return bad_request(reason),
    };
    match ask(&s, |tx| CustomerCommand::BidStatus(id, tx)).await {
        Ok(Some(status)) => Json(status).into_response(),
        Ok(None) => refusal(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no bid {id} on this node"),
        ),
        Err(response) => response,
    }
}

async fn cancel_bid(State(s): State<Scoped>, UrlPath(id): UrlPath<String>) -> Response {
    let id = match id_from_path("bid", &id) {
        Ok(id) => id,
        Err(reason) => return bad_request(reason),
    };
    match ask(&s, |tx| CustomerCommand::CancelBid(id, tx)).await {
        Ok(result) => answer(result),
        Err(response) => response,
    }
}

async fn end_lease(State(s): State<Scoped>, UrlPath(id): UrlPath<String>) -> Response {
    let id = match id_from_path("lease", &id) {
        Ok(id) => id,
        Err(reason) => return bad_request(reason),
    };
    match ask(&s, |tx| CustomerCommand::EndLease(id, tx)).await {
        Ok(result) => answer(result),
        Err(response) => response,
    }
}

/// The body of `POST /v1/leases/{id}/dispute`.
#[derive(Debug, serde::Deserialize)]
struct ContestRequest {
    /// `not_delivered` or `other`; absent (with `stop`) to stop.
    #[serde(default)]
    reason: Option<rigmesh_protocol::DisputeReason>,
    /// What the customer observed.
    #[serde(default)]
    detail: String,
    /// True to stop disputing the lease's windows.
    #[serde(default)]
    stop: bool,
}

async fn contest_lease(
    State(s): State<Scoped>,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let id = match id_from_path("lease", &id) {
        Ok(id) => id,
        Err(reason) => return bad_request(reason),
    };
    let request: ContestRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return bad_request(format!(
                "the body is not {{\"reason\": ..., \"detail\": ...}} or {{\"stop\": true}}: {err}"
            ))
        }
    };
    let contest = match (request.stop, request.reason) {
        (true, None) => None,
        (false, Some(reason)) => {
            match crate::customer::usage::Contest::new(reason, &request.detail) {
                Ok(contest) => Some(contest),
                Err(reason) => return bad_request(reason),
            }
        }
        _ => return bad_request("give either a reason and a detail, or stop: true".into()),
    };
    match ask(&s, |tx| CustomerCommand::Contest(id, contest, tx)).await {
        Ok(result) => answer(result),
        Err(response) => response,
    }
}

async fn leases(State(s): State<Scoped>) -> Response {
    match ask(&s, CustomerCommand::Leases).await {
        Ok(result) => answer(result),
        Err(response) => response,
    }
}

/// Query of `GET /v1/usage/{lease}`.
#[derive(Debug, Default, Deserialize)]
pub struct UsageQuery {
    /// Most windows listed (the most recent); 100 by default.
    pub limit: Option<usize>,
}

pub(crate) async fn usage(
    State(s): State<Scoped>,
    UrlPath(lease): UrlPath<String>,
    query: std::result::Result<Query<UsageQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return bad_query(rejection),
    };
    let lease = match id_from_path("lease", &lease) {
        Ok(id) => id,
        Err(reason) => return bad_request(reason),
    };
    let limit = query
        .limit
        .unwrap_or(DEFAULT_USAGE_WINDOWS)
        .min(KEPT_WINDOWS_USIZE);
    match ask(&s, |tx| CustomerCommand::Usage(lease, limit, tx)).await {
        Ok(result) => answer(result),
        Err(response) => response,
    }
}

/// The windows a lease keeps, as a count of list entries.
const KEPT_WINDOWS_USIZE: usize = crate::customer::records::KEPT_WINDOWS as usize;

async fn budget(State(s): State<Scoped>) -> Response {
    match ask(&s, CustomerCommand::Budget).await {
        Ok(result) => answer(result),
        Err(response) => response,
    }
}

/// `PUT /v1/budget`: `{"account": "12.50"}` or `{"lease": "<id>", "cap":
/// "3.00"}` (`null` removes a cap). The body is read here, strictly, so a
/// malformed one is a 400 that names the problem and changes nothing.
async fn set_budget(State(s): State<Scoped>, body: axum::body::Bytes) -> Response {
    let change = match BudgetChange::parse(&body) {
        Ok(change) => change,
        Err(reason) => {
            tracing::info!(%reason, "budget change refused");
            return bad_request(reason);
        }
    };
    match ask(&s, |tx| CustomerCommand::SetBudget(change, tx)).await {
        Ok(result) => answer(result),
        Err(response) => response,
    }
}

/// Query of `GET /v1/account` (and the analytics `GET /v1/spend`).
#[derive(Debug, Default, Deserialize)]
pub struct AccountQuery {
    /// Most receipts listed (the most recent); 100 by default.
    pub receipts: Option<usize>,
    /// Most leases listed (those that start last); 100 by default.
    pub leases: Option<usize>,
}

/// Leases an account report lists unless asked otherwise.
const DEFAULT_ACCOUNT_LEASES: usize = 100;
/// The most leases one account report lists.
const MAX_ACCOUNT_LEASES: usize = 10_000;

/// Receipts an account report lists unless asked otherwise.
const DEFAULT_RECEIPTS: usize = 100;
/// The most receipts one account report lists (each has its signatures
/// checked for it).
const MAX_RECEIPTS: usize = 10_000;

/// The account report, written out as JSON on a blocking thread (it may
/// list up to 10,000 leases and receipts).
pub(crate) async fn account(
    State(s): State<Scoped>,
    query: std::result::Result<Query<AccountQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return bad_query(rejection),
    };
    let listed = AccountAsk {
        receipts: query.receipts.unwrap_or(DEFAULT_RECEIPTS).min(MAX_RECEIPTS),
        leases: query
            .leases
            .unwrap_or(DEFAULT_ACCOUNT_LEASES)
            .min(MAX_ACCOUNT_LEASES),
    };
    let report = match ask(&s, |tx| CustomerCommand::Account(listed, tx)).await {
        Ok(Ok(report)) => report,
        Ok(Err(err)) => return request_error(err),
        Err(response) => return response,
    };
    match tokio::task::spawn_blocking(move || serde_json::to_vec(&report)).await {
        Ok(Ok(json)) => (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            json,
        )
            .into_response(),
        Ok(Err(err)) => refusal(StatusCode::INTERNAL_SERVER_ERROR, "failed", err.to_string()),
        Err(err) => refusal(StatusCode::INTERNAL_SERVER_ERROR, "failed", err.to_string()),
    }
}

fn supplier_view(s: &Scoped) -> Option<crate::supplier::runtime::SupplierView> {
    s.api.supplier.as_ref().map(|view| view.borrow().clone())
}

fn not_a_supplier() -> Response {
    (
        StatusCode::CONFLICT,
        Json(serde_json::json!({"error": "failed", "reason": "this node does not run the supplier role (role = \"supplier\")"})),
    )
        .into_response()
}

async fn supplier_gpus(State(s): State<Scoped>) -> Response {
    match supplier_view(&s) {
        Some(view) => {
            Json(serde_json::json!({"gpus": view.gpus, "latest": view.latest})).into_response()
        }
        None => not_a_supplier(),
    }
}

/// Query of the supplier's `GET /v1/leases` and `GET /v1/earnings`.
#[derive(Debug, Default, Deserialize)]
pub struct SupplierLeasesQuery {
    /// Most leases listed, those that end last first; 100 by default.
    pub limit: Option<usize>,
}

/// Leases a supplier's listing shows unless asked otherwise.
const DEFAULT_SUPPLIER_LEASES: usize = 100;
/// The most leases one listing shows: a supplier keeps every lease it
/// had, and each request would write them all out.
const MAX_SUPPLIER_LEASES: usize = 10_000;

/// The `limit` asked for, or the default, within the maximum.
fn supplier_limit(query: &SupplierLeasesQuery) -> usize {
    query
        .limit
        .unwrap_or(DEFAULT_SUPPLIER_LEASES)
        .min(MAX_SUPPLIER_LEASES)
}

/// The header that gives how many leases there are in all.
const TOTAL_COUNT: &str = "total-count";

/// The supplier's leases as asked (`limit` of them, those that end last)
/// and the totals of them all, read on a blocking thread; or the answer
/// to a bad query or a node that is not a supplier.
async fn supplier_listing(
    s: &Scoped,
    query: std::result::Result<Query<SupplierLeasesQuery>, QueryRejection>,
) -> std::result::Result<(Vec<SupplierLease>, LeaseTotals), Response> {
    let limit = match query {
        Ok(Query(query)) => supplier_limit(&query),
        Err(rejection) => return Err(bad_query(rejection)),
    };
    let view = supplier_view(s).ok_or_else(not_a_supplier)?;
    tokio::task::spawn_blocking(move || {
        let (open, totals) = (view.open_leases(), view.totals());
        latest(&open, view.closed.as_deref(), limit).map(|listed| (listed, totals))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|listed| listed.map_err(|e| e.to_string()))
    .map_err(|reason| refusal(StatusCode::INTERNAL_SERVER_ERROR, "failed", reason))
}

async fn supplier_leases(
    State(s): State<Scoped>,
    query: std::result::Result<Query<SupplierLeasesQuery>, QueryRejection>,
) -> Response {
    match supplier_listing(&s, query).await {
        Ok((listed, totals)) => {
            ([(TOTAL_COUNT, totals.leases.to_string())], Json(listed)).into_response()
        }
        Err(response) => response,
    }
}

pub(crate) async fn supplier_earnings(
    State(s): State<Scoped>,
    query: std::result::Result<Query<SupplierLeasesQuery>, QueryRejection>,
) -> Response {
    let (listed, totals) = match supplier_listing(&s, query).await {
        Ok(listing) => listing,
        Err(response) => return response,
    };
    Json(serde_json::json!({
        "attested_total": totals.attested,
        "settled_total": totals.settled,
        "leases": listed.into_iter().map(|l| serde_json::json!({"lease": l.lease, "earned": l.earned, "settled": l.settled})).collect::<Vec<_>>(),
        "leases_total": totals.leases,
        "note": "attested: what the attested time is worth at the lease price; settled: credited to this account by settlement certificates, after the fee",
    }))
    .into_response()
}

pub(crate) async fn whoami(
    State(s): State<Scoped>,
    Extension(Caller(token)): Extension<Caller>,
) -> Response {
    Json(serde_json::json!({
        "listener": s.listener.name(),
        "account": s.api.account.to_string(),
        "token": token.name,
        "token_id": token.id,
        "scopes": token.scopes,
        "expires_at": token.expires_at,
    }))
    .into_response()
}

/// `GET /v1/tokens`: every token's record, never a secret.
async fn list_tokens(State(s): State<Scoped>) -> Response {
    Json(s.api.tokens.list()).into_response()
}

fn token_refusal(err: TokenError) -> Response {
    match err {
        TokenError::Invalid(reason) => bad_request(reason),
        TokenError::NotFound(_) => refusal(StatusCode::NOT_FOUND, "not_found", err.to_string()),
        TokenError::Store(err) => internal(err),
    }
}

/// `POST /v1/tokens` with `{"name", "scopes", "expires_in_secs"}`: the new
/// token, shown this once. It may not grant a scope the caller lacks.
async fn create_token(
    State(s): State<Scoped>,
    Extension(Caller(granter)): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    let request: NewToken = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return bad_request(format!(
            "the body is not {{\"name\": ..., \"scopes\": [...], \"expires_in_secs\": ...}}: {err}"
        ))
        }
    };
    let tokens = s.api.tokens.clone();
    let now = rigmesh_protocol::UnixMillis::now();
    let by = granter.name.clone();
    match tokio::task::spawn_blocking(move || tokens.create(request, &granter, now)).await {
        Ok(Ok(issued)) => {
            tracing::info!(token = %issued.record.name, id = %issued.record.id, %by, scopes = ?issued.record.scopes, "token created");
            (StatusCode::CREATED, Json(issued)).into_response()
        }
        Ok(Err(err)) => token_refusal(err),
        Err(err) => internal(Error::Store(format!("token store task: {err}"))),
    }
}

/// `DELETE /v1/tokens/{name or id}`: revokes it; it is refused from now.
async fn revoke_token(
    State(s): State<Scoped>,
    Extension(Caller(by)): Extension<Caller>,
    UrlPath(which): UrlPath<String>,
) -> Response {
    let tokens = s.api.tokens.clone();
    let now = rigmesh_protocol::UnixMillis::now();
    match tokio::task::spawn_blocking(move || tokens.revoke(&which, now)).await {
        Ok(Ok(record)) => {
            tracing::info!(token = %record.name, id = %record.id, by = %by.name, "token revoked");
            Json(record).into_response()
        }
        Ok(Err(err)) => token_refusal(err),
        Err(err) => internal(Error::Store(format!("token store task: {err}"))),
    }
}

fn not_notifying() -> Response {
    refusal(
        StatusCode::CONFLICT,
        "failed",
        "notifications are not configured on this node: add a [notify] section to its config",
    )
}

async fn notify_test(State(s): State<Scoped>, UrlPath(name): UrlPath<String>) -> Response {
    let Some(n) = s.api.notify.get().cloned() else {
        return not_notifying();
    };
    match n.test_channel(&name).await {
        Ok(()) => Json(serde_json::json!({"channel": name, "delivered": true})).into_response(),
        Err(err @ crate::notify::TestError::Unknown(_)) => {
            refusal(StatusCode::NOT_FOUND, "not_found", err.to_string())
        }
        Err(err) => {
            tracing::info!(channel = %name, %err, "test notification failed");
            refusal(
                StatusCode::BAD_GATEWAY,
                "failed",
                format!("channel {name} did not take the test message: {err}"),
            )
        }
    }
}

async fn notify_rules(State(s): State<Scoped>) -> Response {
    match s.api.notify.get() {
        Some(n) => Json(n.rules()).into_response(),
        None => not_notifying(),
    }
}

async fn notify_log(State(s): State<Scoped>) -> Response {
    let Some(n) = s.api.notify.get().cloned() else {
        return not_notifying();
    };
    match n.handle().status().await {
        Ok(status) => Json(crate::notify::log_of(&status)).into_response(),
        Err(err) => refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed",
            format!("the notifier did not answer: {err}"),
        ),
    }
}

fn ack_refusal(group: &str, err: rigmesh_notify::Error) -> Response {
    match err {
        rigmesh_notify::Error::UnknownGroup(_) => refusal(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no open alert group {group} (already resolved, or never raised here)"),
        ),
        rigmesh_notify::Error::BadToken(_) => refusal(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the token does not acknowledge group {group}"),
        ),
        other => refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed",
            other.to_string(),
        ),
    }
}

/// Body of `POST /v1/notify/groups/{group}/ack`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Who acknowledges (shown in the log).
    pub by: Option<String>,
}

/// `POST /v1/notify/groups/{group}/ack` with the API token: no group token
/// needed, the bearer token already says it is the node's user.
async fn notify_ack(
    State(s): State<Scoped>,
    UrlPath(group): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let request: AckRequest = if body.is_empty() {
        AckRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(err) => return bad_request(format!("the body is not {{\"by\": \"...\"}}: {err}")),
        }
    };
    let Some(n) = s.api.notify.get().cloned() else {
        return not_notifying();
    };
    let by = request
        .by
        .unwrap_or_else(|| format!("the {} API", s.listener.name()));
    match n.handle().acknowledge_authorized(&group, &by).await {
        Ok(()) => {
            tracing::info!(%group, %by, "alert group acknowledged");
            Json(serde_json::json!({"group": group, "acknowledged": true, "by": by}))
                .into_response()
        }
        Err(err) => ack_refusal(&group, err),
    }
}

/// Query of the acknowledgement link.
#[derive(Debug, Default, Deserialize)]
pub struct AckLink {
    /// The group's token, from the message.
    pub token: Option<String>,
}

/// Only the letters and digits of `text`: group ids and tokens are hex, so
/// nothing else belongs in the page or the log.
fn alnum_only(text: &str) -> String {
    text.chars().filter(|c| c.is_ascii_alphanumeric()).collect()
}

/// `GET /v1/notify/ack/{group}?token=…`, the link in a message, without the
/// API token: a page with a button, so that a link preview or a mail
/// scanner fetching the link acknowledges nothing.
async fn ack_page(
    UrlPath(group): UrlPath<String>,
    link: std::result::Result<Query<AckLink>, QueryRejection>,
) -> Response {
    let Query(link) = match link {
        Ok(link) => link,
        Err(rejection) => return bad_query(rejection),
    };
    let (group, token) = (
        alnum_only(&group),
        alnum_only(link.token.as_deref().unwrap_or_default()),
    );
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!(
            "<!doctype html><title>rigmesh: acknowledge</title>\n\
             <form method=\"post\" action=\"{group}?token={token}\">\n\
             <p>Acknowledge rigmesh alert group {group}? Its repeats and escalation stop.</p>\n\
             <button type=\"submit\">Acknowledge</button></form>\n"
        ),
    )
        .into_response()
}

/// `POST /v1/notify/ack/{group}?token=…`: acknowledges with the group's
/// token from the message (an unguessable keyed hash of the group id),
/// not the API token.
async fn ack_link(
    State(s): State<Scoped>,
    UrlPath(group): UrlPath<String>,
    link: std::result::Result<Query<AckLink>, QueryRejection>,
) -> Response {
    let Query(link) = match link {
        Ok(link) => link,
        Err(rejection) => return bad_query(rejection),
    };
    let Some(token) = link.token else {
        return bad_request("the link lacks its ?token=".into());
    };
    let Some(n) = s.api.notify.get().cloned() else {
        return not_notifying();
    };
    match n.handle().acknowledge(&group, &token, "link").await {
        Ok(()) => {
            tracing::info!(%group, "alert group acknowledged by its link");
            (
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                format!(
                    "<!doctype html><title>rigmesh: acknowledged</title>\n\
                     <p>Alert group {} acknowledged.</p>\n",
                    alnum_only(&group)
                ),
            )
                .into_response()
        }
        Err(err) => {
            tracing::warn!(group = %alnum_only(&group), "acknowledgement link refused");
            ack_refusal(&alnum_only(&group), err)
        }
    }
}

/// The routes every CLI listener serves (see [`COMMON_ROUTES`]).
pub(crate) fn common_routes(router: Router<Scoped>, listener: Listener) -> Router<Scoped> {
    router
        .merge(super::openapi::route(listener))
        .route("/v1/whoami", get(whoami))
        .route("/v1/notify/channels/{name}/test", post(notify_test))
        .route("/v1/notify/rules", get(notify_rules))
        .route("/v1/notify/log", get(notify_log))
        .route("/v1/notify/groups/{group}/ack", post(notify_ack))
        .route("/v1/notify/ack/{group}", get(ack_page).post(ack_link))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{token}", delete(revoke_token))
}

/// Serves the `listener` API (customer or supplier) on `addr` behind
/// `firewall` until `shutdown` completes.
pub async fn serve(
    listener: Listener,
    addr: SocketAddr,
    api: LocalApi,
    firewall: Arc<Firewall>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let gate = Gate::new(listener, Some(api.tokens.clone()), firewall.clone());
    let state = Scoped { api, listener };
    // The chain the node records its users' requests in (see
    // `audit_trail`): theirs to read.
    let chain = firewall.audit().map(|audit| audit.ledger().clone());
    let audit_routes = Router::new()
        .route(
            "/v1/audit",
            get({
                let chain = chain.clone();
                move |query: std::result::Result<
                    Query<super::audit_trail::AuditQuery>,
                    QueryRejection,
                >| {
                    let chain = chain.clone();
                    async move {
                        match query {
                            Ok(Query(query)) => super::audit_trail::tail(chain, query).await,
                            Err(rejection) => bad_query(rejection),
                        }
                    }
                }
            }),
        )
        .route(
            "/v1/audit/verify",
            get(move || super::audit_trail::verify(chain.clone())),
        );
    let routes = match listener {
        Listener::Customer => Router::new()
            .route("/v1/offers", get(market_offers))
            .route("/v1/bid", post(bid))
            .route("/v1/bids", get(bids))
            .route("/v1/bids/{id}", get(bid_status).delete(cancel_bid))
            .route("/v1/leases", get(leases))
            .route("/v1/leases/{id}/end", post(end_lease))
            .route("/v1/leases/{id}/dispute", post(contest_lease))
            .route("/v1/usage/{lease}", get(usage))
            .route("/v1/budget", get(budget).put(set_budget))
            .route("/v1/account", get(account)),
        Listener::Supplier => Router::new()
            .route("/v1/offers", get(own_offers))
            .route("/v1/gpus", get(supplier_gpus))
            .route("/v1/leases", get(supplier_leases))
            .route("/v1/earnings", get(supplier_earnings)),
        other => {
            return Err(Error::Config(format!(
                "the {} listener is not a CLI listener",
                other.name()
            )))
        }
    };
    let app = common_routes(routes.merge(audit_routes), listener)
        .merge(super::notify_routes::routes(
            state.api.notify.clone(),
            listener,
        ))
        .layer(middleware::from_fn_with_state(gate, super::gate))
        .with_state(state);
    super::serve_app(addr, app, firewall, None, shutdown).await
}
