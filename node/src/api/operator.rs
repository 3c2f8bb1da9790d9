//! The operator listener of a coordinator: read endpoints over its audit
//! chain, books and dispute review queue (`operator:read`), the
//! suspicious-activity review queue (listed with `operator:read`,
//! acknowledged with `operator:review`), the writes of
//! [`super::operator_writes`] (admin-signed deposits under
//! `operator:deposit`; approvals, resolutions and bans under
//! `operator:review`), plus the CLI's common routes (notifications,
//! tokens). Bound to loopback by default; the node
//! refuses to bind it elsewhere unless TLS is configured.
//!
//! Adding an operator action: declare it in [`ROUTES`] with its scope
//! (a new `Scope` variant such as `operator:deposit` when it moves money),
//! add the handler to [`serve`]'s router, and the authorization matrix
//! test picks it up from the table.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Extension;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::local::{self, refusal, LocalApi, Scoped};
use super::operator_writes as writes;
use super::{route, Access, Caller, Firewall, Gate, Listener, RouteSpec, Scope};
use crate::error::{Error, Result};
use crate::review::{AckOutcome, ReviewFilter, ReviewItem, MAX_NOTE};

/// The operator listener's own routes (the common ones come on top).
pub const ROUTES: &[RouteSpec] = &[
    route("GET", "/v1/audit", Access::Scope(Scope::OperatorRead)),
    route(
        "GET",
        "/v1/audit/verify",
        Access::Scope(Scope::OperatorRead),
    ),
    route("GET", "/v1/books", Access::Scope(Scope::OperatorRead)),
    route("GET", "/v1/disputes", Access::Scope(Scope::OperatorRead)),
    route(
        "GET",
        "/v1/disputes/{lease}/{settlement}",
        Access::Scope(Scope::OperatorRead),
    ),
    route("GET", "/v1/review", Access::Scope(Scope::OperatorRead)),
    route(
        "POST",
        "/v1/review/{id}/ack",
        Access::Scope(Scope::OperatorReview),
    ),
    route(
        "POST",
        "/v1/deposits",
        Access::Scope(Scope::OperatorDeposit),
    ),
    route(
        "POST",
        "/v1/approvals",
        Access::Scope(Scope::OperatorReview),
    ),
    route(
        "POST",
        "/v1/disputes/{lease}/{settlement}/resolution",
        Access::Scope(Scope::OperatorReview),
    ),
    route("GET", "/v1/held/{kind}", Access::Scope(Scope::OperatorRead)),
    route("GET", "/v1/bans", Access::Scope(Scope::OperatorRead)),
    route("POST", "/v1/bans", Access::Scope(Scope::OperatorReview)),
    route(
        "DELETE",
        "/v1/bans/{offender}",
        Access::Scope(Scope::OperatorReview),
    ),
];

pub use super::audit_trail::AuditQuery;
use super::audit_trail::MAX_AUDIT_PAGE;

fn not_a_coordinator() -> Response {
    refusal(
        StatusCode::CONFLICT,
        "failed",
        "this node does not run the coordinator role",
    )
}

/// Runs `work` over the coordinator's books on a blocking thread.
async fn with_books<T: Send + 'static>(
    s: &Scoped,
    work: impl FnOnce(&rigmesh_ledger::Ledger) -> rigmesh_ledger::Result<T> + Send + 'static,
) -> std::result::Result<T, Response> {
    let Some(role) = s.api.coordinator.clone() else {
        return Err(not_a_coordinator());
    };
    match tokio::task::spawn_blocking(move || work(&role.ledger)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(local::internal(Error::Store(err.to_string()))),
        Err(err) => Err(local::internal(Error::Store(format!("books task: {err}")))),
    }
}

/// `GET /v1/disputes`: the open dispute cases this coordinator holds
/// (specs/settlement.md 7.2), oldest lease id first, at most 500.
async fn disputes(State(s): State<Scoped>) -> Response {
    match with_books(&s, |ledger| ledger.dispute_cases(true, MAX_AUDIT_PAGE)).await {
        Ok(cases) => Json(serde_json::json!({
            "cases": cases.iter().map(|((lease, seq), c)| serde_json::json!({
                "case": format!("{lease}:{seq}"),
                "lease": lease.to_string(),
                "settlement": seq,
                "request": c.request.to_string(),
                "supplier": c.supplier.to_string(),
                "customer": c.customer.to_string(),
                "held": c.held,
                "windows": format!("{}..={}", c.first_window, c.last_window),
                "opened_at": c.opened_at,
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(response) => response,
    }
}

/// `GET /v1/disputes/{lease}/{settlement}`: one case's file: the
/// settlement that held it, the evidence kept when voting (the supplier's
/// attestations of the held windows, the customer's disputes), and the
/// resolution once applied.
async fn dispute_case(
    State(s): State<Scoped>,
    UrlPath((lease, settlement)): UrlPath<(String, String)>,
) -> Response {
    let Ok(lease) = lease.parse::<rigmesh_protocol::Id>() else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the lease is not a hex id",
        );
    };
    let Ok(settlement) = settlement.parse::<u64>() else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the settlement is not a number",
        );
    };
    let Some(role) = s.api.coordinator.clone() else {
        return not_a_coordinator();
    };
    match tokio::task::spawn_blocking(move || role.case_file(&lease, settlement)).await {
        Ok(Ok(Some(file))) => Json(serde_json::json!({
            "case": format!("{lease}:{settlement}"),
            "request": file.request.body,
            "opened_at": file.opened_at,
            "held_windows": file.held_windows,
            "attestations": file.attestations.iter().map(|a| &a.body).collect::<Vec<_>>(),
            "disputes": file.disputes.iter().map(|d| &d.body).collect::<Vec<_>>(),
            "acks_of_other_attestations": file.acks.iter().map(|k| &k.body).collect::<Vec<_>>(),
            "resolution": file.resolution.as_ref().map(|r| &r.body),
        }))
        .into_response(),
        Ok(Ok(None)) => refusal(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dispute case {lease}:{settlement}"),
        ),
        Ok(Err(err)) => local::internal(Error::Store(err.to_string())),
        Err(err) => local::internal(Error::Store(format!("case task: {err}"))),
    }
}

/// `GET /v1/audit?from=&limit=`: the tail of the coordinator's audit chain.
async fn audit_tail(
    State(s): State<Scoped>,
    query: std::result::Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return local::bad_query(rejection),
    };
    match s.api.coordinator.as_ref() {
        Some(role) => super::audit_trail::tail(Some(role.ledger.clone()), query).await,
        None => not_a_coordinator(),
    }
}

/// `GET /v1/audit/verify`: walks the coordinator's whole chain.
async fn audit_verify(State(s): State<Scoped>) -> Response {
    match s.api.coordinator.as_ref() {
        Some(role) => super::audit_trail::verify(Some(role.ledger.clone())).await,
        None => not_a_coordinator(),
    }
}

/// `GET /v1/books`: replays the journal and sums the balances.
async fn books(State(s): State<Scoped>) -> Response {
    match with_books(&s, |ledger| ledger.check_books()).await {
        Ok(report) => {
            let t = report.totals;
            Json(serde_json::json!({
                "entries": report.entries,
                "accounts": report.accounts,
                "totals": {
                    "users": t.users,
                    "fees": t.fees,
                    "escrow": t.escrow,
                    "payable": t.payable,
                    "disputed": t.disputed,
                    "external": t.external,
                    "held": t.held().ok(),
                },
            }))
            .into_response()
        }
        Err(response) => response,
    }
}

/// Most review items one listing holds.
const MAX_REVIEW_PAGE: usize = 1000;

/// Query of `GET /v1/review`.
#[derive(Debug, Default, Deserialize)]
pub struct ReviewQuery {
    /// `open` (the default), `acknowledged` or `all`.
    pub state: Option<String>,
}

fn no_review_queue() -> Response {
    refusal(
        StatusCode::CONFLICT,
        "failed",
        "this node keeps no review queue",
    )
}

fn review_json(item: &ReviewItem) -> serde_json::Value {
    serde_json::json!({
        "id": item.id,
        "rule": item.rule,
        "subject": item.subject,
        "severity": item.severity,
        "detail": item.detail,
        "first_seen": item.first_seen,
        "last_seen": item.last_seen,
        "count": item.count,
        "state": item.state,
        "acknowledged_by": item.acknowledged.as_ref().map(|a| &a.by),
        "acknowledged_at": item.acknowledged.as_ref().map(|a| a.at),
        "note": item.acknowledged.as_ref().map(|a| &a.note),
    })
}

/// `GET /v1/review?state=open|acknowledged|all`: the suspicious-activity
/// review items, newest first, at most 1000.
async fn review_list(
    State(s): State<Scoped>,
    query: std::result::Result<Query<ReviewQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return local::bad_query(rejection),
    };
    let filter = match query.state.as_deref().unwrap_or("open") {
        "open" => ReviewFilter::Open,
        "acknowledged" => ReviewFilter::Acknowledged,
        "all" => ReviewFilter::All,
        other => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("state is open, acknowledged or all, not {other:?}"),
            )
        }
    };
    let Some(queue) = s.api.review.clone() else {
        return no_review_queue();
    };
    match queue.list(filter, MAX_REVIEW_PAGE).await {
        Ok(items) => Json(serde_json::json!({
            "items": items.iter().map(review_json).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(err) => local::internal(err),
    }
}

/// Body of `POST /v1/review/{id}/ack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    note: String,
}

/// `POST /v1/review/{id}/ack` with `{"note": "..."}`: marks the item
/// acknowledged by the caller's token. A note is required (what the
/// operator made of it); an unknown id is 404, a second acknowledgement
/// 409; nothing changes on a refusal.
async fn review_ack(
    State(s): State<Scoped>,
    Extension(Caller(caller)): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the review item id is not a number",
        );
    };
    let request: AckRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("the body is not {{\"note\": \"...\"}}: {err}"),
            )
        }
    };
    let note = request.note.trim().to_string();
    if note.is_empty() {
        return refusal(
            StatusCode::BAD_REQUEST,
            "invalid",
            "a note is required: say what you made of it",
        );
    }
    if note.len() > MAX_NOTE {
        return refusal(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("the note is {} bytes; at most {MAX_NOTE}", note.len()),
        );
    }
    let Some(queue) = s.api.review.clone() else {
        return no_review_queue();
    };
    match queue.acknowledge(id, caller.name.clone(), note).await {
        Ok(AckOutcome::Acknowledged(item)) => Json(review_json(&item)).into_response(),
        Ok(AckOutcome::Unknown) => refusal(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no review item {id}"),
        ),
        Ok(AckOutcome::Already(item)) => refusal(
            StatusCode::CONFLICT,
            "already_acknowledged",
            format!(
                "review item {id} was acknowledged by {}",
                item.acknowledged
                    .as_ref()
                    .map_or("someone", |a| a.by.as_str())
            ),
        ),
        Err(err) => local::internal(err),
    }
}

/// Serves the operator listener on `addr` until `shutdown` completes;
/// `tls` when it faces a network.
pub async fn serve(
    addr: SocketAddr,
    api: LocalApi,
    firewall: Arc<Firewall>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    if !addr.ip().is_loopback() && tls.is_none() {
        return Err(Error::Config(format!(
            "the operator listener may bind {addr}, off loopback, only with TLS: set \
             [http.operator_tls] cert and key, or bind 127.0.0.1"
        )));
    }
    let gate = Gate::new(
        Listener::Operator,
        Some(api.tokens.clone()),
        firewall.clone(),
    );
    let state = Scoped {
        api,
        listener: Listener::Operator,
    };
    let routes = Router::new()
        .route("/v1/audit", get(audit_tail))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/books", get(books))
        .route("/v1/disputes", get(disputes))
        .route("/v1/disputes/{lease}/{settlement}", get(dispute_case))
        .route("/v1/review", get(review_list))
        .route("/v1/review/{id}/ack", post(review_ack))
        .route("/v1/deposits", post(writes::post_deposit))
        .route("/v1/approvals", post(writes::post_approval))
        .route(
            "/v1/disputes/{lease}/{settlement}/resolution",
            post(writes::post_resolution),
        )
        .route("/v1/held/{kind}", get(writes::get_held))
        .route("/v1/bans", get(writes::get_bans).post(writes::post_ban))
        .route("/v1/bans/{offender}", delete(writes::delete_ban));
    let app = local::common_routes(routes, Listener::Operator)
        .merge(super::notify_routes::routes(
            state.api.notify.clone(),
            Listener::Operator,
        ))
        .layer(middleware::from_fn_with_state(gate, super::gate))
        .with_state(state);
    super::serve_app(addr, app, firewall, tls, shutdown).await
}
