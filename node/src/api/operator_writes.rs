//! The operator listener's writes: admin-signed deposits, approvals and
//! dispute resolutions handed to the coordinator set through this
//! coordinator ([`crate::admin`]), what the set holds for a decision, and
//! the node's bans of peers and addresses.
//!
//! The admin key never comes here: a request carries the message the
//! operator signed where the key is (canonical bytes, in hex), and the
//! token only decides who may hand it over. Each message is checked here
//! first (encoding, signature, epoch, one of the set's admin keys), so a
//! mistake is a 400 that changes nothing and never reaches the other
//! coordinators, who would count a forged message as a strike against
//! this node. Every write is recorded in this coordinator's audit chain,
//! with the token's id and name and the source address, before it is
//! carried out.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rigmesh_ledger::Cause;
use rigmesh_protocol::{
    Approval, Deposit, DisputeResolution, Id, Kind, Message, PublicKey, Signed, UnixMillis,
};
use serde::Deserialize;

use super::local::{self, bad_request, refusal, Scoped};
use super::{Caller, Peer};
use crate::admin::{self, DecisionState, DepositState};
use crate::error::Error;
use crate::network::offences::Offender;

/// A refusal made before the handler's end, boxed (a response is large).
type Refused = Box<Response>;

/// Longest ban, seconds (a year): longer is a mistake in the units.
const MAX_BAN_SECS: u64 = 365 * 24 * 3600;
/// Longest reason of a ban, bytes.
const MAX_BAN_REASON: usize = 256;

/// The body of `POST /v1/deposits`, `/v1/approvals` and a resolution:
/// the signed message's canonical bytes in hex, as `rigmesh message`
/// prints them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedMessage {
    /// Hex of the canonical bytes of the signed message.
    pub message: String,
}

/// The body of `POST /v1/bans`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanRequest {
    /// A libp2p peer id, or an IP address.
    pub offender: String,
    /// How long, in seconds.
    pub secs: u64,
    /// Why, for the record.
    pub reason: String,
}

/// Who asked: the token and where the request came from, as the audit
/// record says it.
fn asker(token: &super::tokens::TokenRecord, from: Option<SocketAddr>) -> String {
    let from = from.map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
    format!("token {} ({}) from {from}", token.id, token.name)
}

fn from_addr(info: Option<Extension<ConnectInfo<Peer>>>) -> Option<SocketAddr> {
    info.map(|Extension(ConnectInfo(Peer(addr)))| addr)
}

fn not_a_coordinator() -> Response {
    refusal(
        StatusCode::CONFLICT,
        "failed",
        "this node does not run the coordinator role",
    )
}

/// The coordinator role and the set client, or the refusal.
fn desk(
    s: &Scoped,
) -> Result<
    (
        std::sync::Arc<crate::coordinator::CoordinatorRole>,
        crate::quorum::Quorum,
    ),
    Refused,
> {
    match (s.api.coordinator.clone(), s.api.quorum.clone()) {
        (Some(role), Some(quorum)) => Ok((role, quorum)),
        _ => Err(Box::new(not_a_coordinator())),
    }
}

/// Reads a body strictly: a malformed one is a 400 naming the problem.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refused> {
    serde_json::from_slice(body).map_err(|e| Box::new(bad_request(format!("the body: {e}"))))
}

/// Decodes and checks an admin-signed message: canonical bytes, fields
/// and signature, this epoch, one of the set's admin keys.
fn admin_message<T: Message>(
    role: &crate::coordinator::CoordinatorRole,
    body: &[u8],
    epoch_of: impl Fn(&T) -> u64,
    admin_of: impl Fn(&T) -> PublicKey,
) -> Result<Signed<T>, Refused> {
    let SignedMessage { message } = parse_body(body)?;
    let bytes = hex::decode(message.trim())
        .map_err(|e| Box::new(bad_request(format!("message: not hex ({e})"))))?;
    let signed = Signed::<T>::from_bytes(&bytes).map_err(|e| {
        Box::new(bad_request(format!(
            "message: not a signed {} ({e})",
            T::KIND.name()
        )))
    })?;
    signed
        .verify_record()
        .map_err(|e| Box::new(bad_request(format!("message: {e}"))))?;
    let epoch = role.config.set.epoch();
    if epoch_of(&signed.body) != epoch {
        return Err(Box::new(bad_request(format!(
            "message: signed for epoch {}, the coordinator set is at epoch {epoch}",
            epoch_of(&signed.body)
        ))));
    }
    let admin = admin_of(&signed.body);
    if !role.config.admins.contains(&admin) {
        return Err(Box::new(bad_request(format!(
            "message: {admin} is not one of the coordinator set's admin keys"
        ))));
    }
    Ok(signed)
}

/// Records who asked for what in the coordinator's audit chain, before
/// it is done.
async fn record(
    role: &std::sync::Arc<crate::coordinator::CoordinatorRole>,
    who: PublicKey,
    subject: Id,
    detail: String,
) -> Result<(), Response> {
    let role = role.clone();
    let cause = Cause::new(who, subject, UnixMillis::now());
    match tokio::task::spawn_blocking(move || role.ledger.record_operator_request(&detail, &cause))
        .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(local::internal(Error::Store(err.to_string()))),
        Err(err) => Err(local::internal(Error::Store(format!("audit task: {err}")))),
    }
}

fn failed(err: Error) -> Response {
    match err {
        Error::Protocol(e) => bad_request(e.to_string()),
        Error::Refused(reason) => bad_request(reason),
        other => local::internal(other),
    }
}

/// An outcome as the answer: its JSON with, when it is a refusal, the
/// `error` and `reason` every refusal of the API carries.
fn answer(
    status: StatusCode,
    mut body: serde_json::Value,
    error: Option<(&str, String)>,
) -> Response {
    if let (Some((code, reason)), Some(map)) = (error, body.as_object_mut()) {
        map.insert("error".into(), code.into());
        map.insert("reason".into(), reason.into());
    }
    (status, Json(body)).into_response()
}

/// `POST /v1/deposits`: an admin-signed deposit, handed to every
/// coordinator. 200 applied, 202 held for a second admin's approval, 409
/// when the reference is used or too few coordinators took it (each
/// coordinator's answer in `answers`).
pub(crate) async fn post_deposit(
    State(s): State<Scoped>,
    Extension(Caller(token)): Extension<Caller>,
    info: Option<Extension<ConnectInfo<Peer>>>,
    body: axum::body::Bytes,
) -> Response {
    let (role, quorum) = match desk(&s) {
        Ok(desk) => desk,
        Err(response) => return *response,
    };
    let deposit = match admin_message::<Deposit>(&role, &body, |d| d.epoch, |d| d.admin) {
        Ok(deposit) => deposit,
        Err(response) => return *response,
    };
    let Ok(id) = deposit.id() else {
        return bad_request("message: no id".into());
    };
    let d = &deposit.body;
    let detail = format!(
        "deposit of {} to {} reference {:?} asked by {}",
        d.amount,
        d.account,
        d.reference,
        asker(&token, from_addr(info))
    );
    if let Err(response) = record(&role, d.admin, id, detail).await {
        return response;
    }
    let outcome = match admin::submit_deposit(&quorum, deposit).await {
        Ok(outcome) => outcome,
        Err(err) => return failed(err),
    };
    let json = outcome.to_json();
    match &outcome.state {
        DepositState::Applied => answer(StatusCode::OK, json, None),
        DepositState::AwaitingApproval => answer(StatusCode::ACCEPTED, json, None),
        DepositState::ReferenceUsed(reason) => answer(
            StatusCode::CONFLICT,
            json,
            Some((
                "reference_used",
                format!("the admin key already used this reference for another deposit; nothing was credited ({reason})"),
            )),
        ),
        DepositState::NotApplied => answer(
            StatusCode::CONFLICT,
            json,
            Some((
                "not_applied",
                format!(
                    "only {} coordinators applied the deposit; {} needed{}",
                    outcome.applied_by,
                    outcome.quorum,
                    admin::reasons(&outcome.answers)
                ),
            )),
        ),
    }
}

/// `POST /v1/approvals`: an admin-signed approval or rejection of a held
/// deposit or withdrawal. 200 taken, 404 not held, 409 too few
/// coordinators took it.
pub(crate) async fn post_approval(
    State(s): State<Scoped>,
    Extension(Caller(token)): Extension<Caller>,
    info: Option<Extension<ConnectInfo<Peer>>>,
    body: axum::body::Bytes,
) -> Response {
    let (role, quorum) = match desk(&s) {
        Ok(desk) => desk,
        Err(response) => return *response,
    };
    let approval = match admin_message::<Approval>(&role, &body, |a| a.epoch, |a| a.admin) {
        Ok(approval) => approval,
        Err(response) => return *response,
    };
    let a = &approval.body;
    if !matches!(a.subject_kind, Kind::Deposit | Kind::Withdrawal) {
        return bad_request(format!(
            "message: an approval decides a deposit or a withdrawal, not a {}",
            a.subject_kind.name()
        ));
    }
    let Ok(id) = approval.id() else {
        return bad_request("message: no id".into());
    };
    let detail = format!(
        "{} of {} {} asked by {}",
        if a.approve { "approval" } else { "rejection" },
        a.subject_kind.name(),
        a.subject,
        asker(&token, from_addr(info))
    );
    if let Err(response) = record(&role, a.admin, id, detail).await {
        return response;
    }
    let outcome = match admin::submit_approval(&quorum, approval).await {
        Ok(outcome) => outcome,
        Err(err) => return failed(err),
    };
    let json = outcome.to_json();
    match outcome.state {
        DecisionState::Taken => answer(StatusCode::OK, json, None),
        DecisionState::NotHeld => answer(
            StatusCode::NOT_FOUND,
            json,
            Some(("not_found", outcome.failure())),
        ),
        DecisionState::NotTaken => answer(
            StatusCode::CONFLICT,
            json,
            Some(("not_taken", outcome.failure())),
        ),
    }
}

/// `POST /v1/disputes/{lease}/{settlement}/resolution`: an admin-signed
/// resolution of that case. 200 certified (and handed to every
/// coordinator), 409 no quorum voted for it.
pub(crate) async fn post_resolution(
    State(s): State<Scoped>,
    Extension(Caller(token)): Extension<Caller>,
    info: Option<Extension<ConnectInfo<Peer>>>,
    UrlPath((lease, settlement)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let (role, quorum) = match desk(&s) {
        Ok(desk) => desk,
        Err(response) => return *response,
    };
    let Ok(lease) = lease.parse::<Id>() else {
        return bad_request("the lease is not a hex id".into());
    };
    let Ok(settlement) = settlement.parse::<u64>() else {
        return bad_request("the settlement is not a number".into());
    };
    let resolution =
        match admin_message::<DisputeResolution>(&role, &body, |r| r.epoch, |r| r.admin) {
            Ok(resolution) => resolution,
            Err(response) => return *response,
        };
    let r = &resolution.body;
    if r.lease != lease || r.settlement_seq != settlement {
        return bad_request(format!(
            "message: resolves case {}:{}, not {lease}:{settlement}",
            r.lease, r.settlement_seq
        ));
    }
    let Ok(id) = resolution.id() else {
        return bad_request("message: no id".into());
    };
    let detail = format!(
        "resolution of case {lease}:{settlement}, {} of {} to the supplier, asked by {}",
        r.supplier_share,
        r.held,
        asker(&token, from_addr(info))
    );
    if let Err(response) = record(&role, r.admin, id, detail).await {
        return response;
    }
    let outcome = match admin::submit_resolution(&quorum, resolution).await {
        Ok(outcome) => outcome,
        Err(err) => return failed(err),
    };
    let json = outcome.to_json();
    if outcome.certified() {
        answer(StatusCode::OK, json, None)
    } else {
        answer(
            StatusCode::CONFLICT,
            json,
            Some((
                "not_certified",
                format!(
                    "the resolution was not certified: {} of {} votes{}",
                    outcome.votes,
                    outcome.quorum,
                    admin::reasons(&outcome.answers)
                ),
            )),
        )
    }
}

/// `GET /v1/held/{deposits|withdrawals}`: what the coordinator set holds
/// for an admin's decision, each once, with how many coordinators hold
/// it; with the set's epoch, which a decision is signed for.
pub(crate) async fn get_held(State(s): State<Scoped>, UrlPath(kind): UrlPath<String>) -> Response {
    let (role, quorum) = match desk(&s) {
        Ok(desk) => desk,
        Err(response) => return *response,
    };
    let kind = match kind.as_str() {
        "deposits" => Kind::Deposit,
        "withdrawals" => Kind::Withdrawal,
        other => {
            return refusal(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("nothing is held as {other:?}: deposits or withdrawals"),
            )
        }
    };
    let rows = admin::held(&quorum, kind).await;
    Json(serde_json::json!({
        "epoch": role.config.set.epoch(),
        "quorum": quorum.set().quorum(),
        "held": rows.values().map(|(entry, holders)| {
            let (account, amount, detail) = admin::describe_held(kind, entry);
            serde_json::json!({
                "id": entry.subject.to_string(),
                "account": account,
                "amount": amount,
                "detail": detail,
                "held_by": holders,
                "since": entry.since.0,
            })
        }).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// Reads a peer id or an IP address.
fn offender(text: &str) -> Result<Offender, Refused> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Offender::Address(ip));
    }
    text.parse::<libp2p::PeerId>()
        .map(Offender::Peer)
        .map_err(|_| {
            Box::new(bad_request(format!(
                "offender: {text:?} is neither a peer id nor an IP address"
            )))
        })
}

fn offender_json(offender: &Offender) -> (&'static str, String) {
    match offender {
        Offender::Peer(peer) => ("peer", peer.to_string()),
        Offender::Address(ip) => ("address", ip.to_string()),
    }
}

/// `GET /v1/bans`: the bans in force on this node, longest first.
pub(crate) async fn get_bans(State(s): State<Scoped>) -> Response {
    let Some(network) = s.api.network.clone() else {
        return not_a_coordinator();
    };
    match network.bans().await {
        Ok(bans) => Json(serde_json::json!({
            "bans": bans.iter().map(|b| {
                let (kind, offender) = offender_json(&b.offender);
                serde_json::json!({
                    "offender": offender,
                    "kind": kind,
                    "until": b.until.0,
                    "reason": b.reason,
                })
            }).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(err) => local::internal(err),
    }
}

/// `POST /v1/bans`: bans a peer id or an address for `secs` seconds,
/// durably (it holds after a restart); a longer ban in force is kept.
pub(crate) async fn post_ban(
    State(s): State<Scoped>,
    Extension(Caller(token)): Extension<Caller>,
    info: Option<Extension<ConnectInfo<Peer>>>,
    body: axum::body::Bytes,
) -> Response {
    let (Some(role), Some(network)) = (s.api.coordinator.clone(), s.api.network.clone()) else {
        return not_a_coordinator();
    };
    let request: BanRequest = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let who = match offender(&request.offender) {
        Ok(who) => who,
        Err(response) => return *response,
    };
    if request.secs == 0 || request.secs > MAX_BAN_SECS {
        return bad_request(format!("secs: a ban lasts 1 to {MAX_BAN_SECS} seconds"));
    }
    let reason = request.reason.trim().to_string();
    if reason.is_empty() || reason.len() > MAX_BAN_REASON {
        return bad_request(format!("reason: say why, in 1 to {MAX_BAN_REASON} bytes"));
    }
    if who == Offender::Peer(network.peer_id()) {
        return bad_request("offender: this node's own peer id".into());
    }
    let until = UnixMillis::now().plus_ms(request.secs.saturating_mul(1000));
    let detail = format!(
        "ban of {who} for {} s ({reason}) asked by {}",
        request.secs,
        asker(&token, from_addr(info))
    );
    if let Err(response) = record(&role, role.key.public(), Id::ZERO, detail).await {
        return response;
    }
    let reason = format!("{reason} (by operator token {})", token.name);
    match network.ban_until(who, until, &reason).await {
        Ok(until) => {
            let (kind, offender) = offender_json(&who);
            Json(serde_json::json!({
                "offender": offender,
                "kind": kind,
                "until": until.0,
                "reason": reason,
            }))
            .into_response()
        }
        Err(Error::Refused(reason)) => refusal(StatusCode::CONFLICT, "refused", reason),
        Err(err) => local::internal(err),
    }
}

/// `DELETE /v1/bans/{offender}`: lifts the ban of a peer id or an
/// address now, durably. 404 when none is in force.
pub(crate) async fn delete_ban(
    State(s): State<Scoped>,
    Extension(Caller(token)): Extension<Caller>,
    info: Option<Extension<ConnectInfo<Peer>>>,
    UrlPath(text): UrlPath<String>,
) -> Response {
    let (Some(role), Some(network)) = (s.api.coordinator.clone(), s.api.network.clone()) else {
        return not_a_coordinator();
    };
    let who = match offender(&text) {
        Ok(who) => who,
        Err(response) => return *response,
    };
    let detail = format!(
        "lift of the ban of {who} asked by {}",
        asker(&token, from_addr(info))
    );
    if let Err(response) = record(&role, role.key.public(), Id::ZERO, detail).await {
        return response;
    }
    match network.lift_ban(who).await {
        Ok(true) => {
            let (kind, offender) = offender_json(&who);
            Json(serde_json::json!({"offender": offender, "kind": kind, "lifted": true}))
                .into_response()
        }
        Ok(false) => refusal(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no ban of {who} is in force"),
        ),
        Err(err) => local::internal(err),
    }
}
