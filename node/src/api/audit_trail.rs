//! Who asked for what: every request that passes a listener's token check,
//! may change something (any method but `GET` and `HEAD`) and is not
//! refused (its answer is not a 4xx) is appended to the node's
//! tamper-evident audit chain once it is answered, as one
//! `Requested` record naming the listener, method and path, the token's id
//! and name (never the secret), the source address and the status. On a
//! coordinator the chain is its books' own (so a deposit submitted through
//! the operator listener sits next to the deposit it caused); other roles
//! keep a chain of their own in `<data dir>/audit`.
//!
//! Request bodies are not recorded: some carry secrets (a channel's SMTP
//! password or webhook key). Refused requests (401, 403, 429, and any
//! 4xx a handler answers for bad input or a conflict) are not recorded
//! either: they changed nothing, and the firewall counts them.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rigmesh_ledger::{Cause, Ledger};
use rigmesh_protocol::{Id, PublicKey, UnixMillis};

use super::tokens::TokenRecord;
use super::Listener;

/// The audit chain requests are recorded in, and the key named as `who`.
#[derive(Clone)]
pub struct RequestAudit {
    ledger: Arc<Ledger>,
    who: PublicKey,
}

impl std::fmt::Debug for RequestAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestAudit")
            .field("who", &self.who)
            .finish_non_exhaustive()
    }
}

/// One request to record.
pub(crate) struct Asked<'a> {
    pub(crate) listener: Listener,
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) token: &'a TokenRecord,
    pub(crate) peer: Option<IpAddr>,
    pub(crate) status: StatusCode,
}

impl RequestAudit {
    /// Records into `ledger`'s chain, naming `who` (the node's account) as
    /// the key acting on the caller's behalf.
    pub fn new(ledger: Arc<Ledger>, who: PublicKey) -> Self {
        RequestAudit { ledger, who }
    }

    /// The chain's ledger.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// True for a request the chain records: one that may change something.
    pub(crate) fn records(method: &Method) -> bool {
        !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
    }

    /// True for an answer the chain records: a refusal (4xx: bad input, no
    /// such thing, a conflict) changed nothing, by the APIs' own rule.
    pub(crate) fn records_answer(status: StatusCode) -> bool {
        !status.is_client_error()
    }

    /// Appends the record of `asked`, off the executor; waits for the
    /// write so the answer leaves only once the record is down.
    pub(crate) async fn record(&self, asked: Asked<'_>) {
        if !Self::records_answer(asked.status) {
            return;
        }
        let detail = detail(&asked);
        let subject = subject_of(asked.path);
        let ledger = self.ledger.clone();
        let cause = Cause::new(self.who, subject, UnixMillis::now());
        let written =
            tokio::task::spawn_blocking(move || ledger.record_request(&detail, &cause)).await;
        match written {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::error!(%err, "a request was not recorded in the audit chain"),
            Err(err) => tracing::error!(%err, "the audit write stopped"),
        }
    }
}

/// The record's text: `POST /v1/bid on the customer API by token 1f2e..
/// (ci-bot) from 127.0.0.1: 200`.
fn detail(asked: &Asked<'_>) -> String {
    format!(
        "{} {} on the {} API by token {} ({}) from {}: {}",
        asked.method,
        asked.path,
        asked.listener.name(),
        asked.token.id,
        asked.token.name,
        asked
            .peer
            .map_or_else(|| "an unknown address".to_string(), |ip| ip.to_string()),
        asked.status.as_u16()
    )
}

/// The first content id in the path (a lease, bid or deposit), else zero.
fn subject_of(path: &str) -> Id {
    path.split('/')
        .find_map(|segment| segment.parse::<Id>().ok())
        .unwrap_or(Id::ZERO)
}

/// Most audit records one page holds.
pub(crate) const MAX_AUDIT_PAGE: usize = 500;

/// Query of `GET /v1/audit`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct AuditQuery {
    /// First sequence number; by default the last `limit` records.
    pub from: Option<u64>,
    /// Most records (50 by default, 500 at most).
    pub limit: Option<usize>,
}

fn no_chain() -> Response {
    super::local::refusal(
        StatusCode::CONFLICT,
        "failed",
        "this listener keeps no audit chain",
    )
}

async fn on_chain<T: Send + 'static>(
    ledger: Option<Arc<Ledger>>,
    work: impl FnOnce(&Ledger) -> rigmesh_ledger::Result<T> + Send + 'static,
) -> std::result::Result<T, Response> {
    let Some(ledger) = ledger else {
        return Err(no_chain());
    };
    match tokio::task::spawn_blocking(move || work(&ledger)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(super::local::internal(crate::error::Error::Store(
            err.to_string(),
        ))),
        Err(err) => Err(super::local::internal(crate::error::Error::Store(format!(
            "audit task: {err}"
        )))),
    }
}

/// `GET /v1/audit?from=&limit=`: the tail of the audit chain.
pub(crate) async fn tail(ledger: Option<Arc<Ledger>>, query: AuditQuery) -> Response {
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_AUDIT_PAGE);
    let from = query.from;
    let result = on_chain(ledger, move |ledger| {
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
pub(crate) async fn verify(ledger: Option<Arc<Ledger>>) -> Response {
    match on_chain(ledger, |ledger| ledger.verify_audit()).await {
        Ok(report) => Json(serde_json::json!({
            "intact": report.is_intact(),
            "verified": report.verified,
            "broken": report.broken.map(|b| serde_json::json!({"seq": b.seq, "reason": b.reason.to_string()})),
        }))
        .into_response(),
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn token() -> TokenRecord {
        TokenRecord {
            id: "0011223344556677".into(),
            name: "ci-bot".into(),
            scopes: vec![super::super::Scope::CustomerTrade],
            created_at: UnixMillis(1),
            expires_at: None,
            last_used: None,
            revoked_at: None,
        }
    }

    #[tokio::test]
    async fn a_recorded_request_names_the_token_the_address_and_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::open(&dir.path().join("audit")).unwrap());
        let who = rigmesh_protocol::samples::customer().public();
        let audit = RequestAudit::new(ledger.clone(), who);
        let lease = Id::of(rigmesh_protocol::Kind::LeaseAgreement, b"a lease");
        let path = format!("/v1/leases/{lease}/end");
        let token = token();
        audit
            .record(Asked {
                listener: Listener::Customer,
                method: &Method::POST,
                path: &path,
                token: &token,
                peer: Some("192.0.2.7".parse().unwrap()),
                status: StatusCode::OK,
            })
            .await;
        let records = ledger.audit_records(0, 10).unwrap();
        assert_eq!(records.len(), 1);
        let r = &records[0].record;
        assert_eq!(r.who, who);
        assert_eq!(r.subject, lease);
        assert_eq!(r.action, rigmesh_ledger::audit::Action::Requested);
        assert!(r.detail.contains("POST"), "{}", r.detail);
        assert!(
            r.detail.contains("0011223344556677 (ci-bot)"),
            "{}",
            r.detail
        );
        assert!(r.detail.contains("192.0.2.7"), "{}", r.detail);
        assert!(r.detail.ends_with(": 200"), "{}", r.detail);
        assert!(ledger.verify_audit().unwrap().is_intact());
    }

    #[tokio::test]
    async fn a_refused_request_is_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::open(&dir.path().join("audit")).unwrap());
        let audit = RequestAudit::new(
            ledger.clone(),
            rigmesh_protocol::samples::customer().public(),
        );
        let token = token();
        for status in [
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_FOUND,
            StatusCode::CONFLICT,
        ] {
            audit
                .record(Asked {
                    listener: Listener::Customer,
                    method: &Method::PUT,
                    path: "/v1/budget",
                    token: &token,
                    peer: None,
                    status,
                })
                .await;
        }
        assert_eq!(ledger.audit_len().unwrap(), 0);
    }

    #[test]
    fn reads_are_not_recorded_and_writes_are() {
        assert!(!RequestAudit::records(&Method::GET));
        assert!(!RequestAudit::records(&Method::HEAD));
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert!(RequestAudit::records(&method), "{method}");
        }
    }
}
