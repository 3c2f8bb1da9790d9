//! The operator listener of a coordinator: read endpoints over its audit
//! chain, books and dispute review queue (`operator:read`), plus the CLI's common routes
//! (notifications, tokens). Bound to loopback by default; the node
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
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::local::{self, refusal, LocalApi, Scoped};
use super::{route, Access, Firewall, Gate, Listener, RouteSpec, Scope};
use crate::error::{Error, Result};

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
];

/// Most audit records one page holds.
const MAX_AUDIT_PAGE: usize = 500;

/// Query of `GET /v1/audit`.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    /// First sequence number; by default the last `limit` records.
    pub from: Option<u64>,
    /// Most records (50 by default, 500 at most).
    pub limit: Option<usize>,
}

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

/// `GET /v1/audit?from=&limit=`: the tail of the audit chain.
async fn audit_tail(
    State(s): State<Scoped>,
    query: std::result::Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return local::bad_query(rejection),
    };
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_AUDIT_PAGE);
    let from = query.from;
    let result = with_books(&s, move |ledger| {
        let len = ledger.audit_len()?;
        let from = from.unwrap_or_else(|| len.saturating_sub(limit as u64));
        Ok((len, ledger.audit_records(from, limit)?))
    })
    .await;
    match result {
        Ok((len, records)) => Json(serde_json::json!({
            "length": len,
            "records": records.iter().map(|r| serde_json::json!({
                "seq": r.record.seq,
                "at": r.record.at,
                "who": r.record.who.to_string(),
                "action": format!("{:?}", r.record.action),
                "subject": r.record.subject.to_string(),
                "detail": r.record.detail,
                "hash": hex::encode(r.hash),
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(response) => response,
    }
}

/// `GET /v1/audit/verify`: walks the whole chain.
async fn audit_verify(State(s): State<Scoped>) -> Response {
    match with_books(&s, |ledger| ledger.verify_audit()).await {
        Ok(report) => Json(serde_json::json!({
            "intact": report.is_intact(),
            "verified": report.verified,
            "broken": report.broken.map(|b| serde_json::json!({"seq": b.seq, "reason": b.reason.to_string()})),
        }))
        .into_response(),
        Err(response) => response,
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
        .route("/v1/disputes/{lease}/{settlement}", get(dispute_case));
    let app = local::common_routes(routes, Listener::Operator)
        .merge(super::notify_routes::routes(
            state.api.notify.clone(),
            Listener::Operator,
        ))
        .layer(middleware::from_fn_with_state(gate, super::gate))
        .with_state(state);
    super::serve_app(addr, app, firewall, tls, shutdown).await
}
