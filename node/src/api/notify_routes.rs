//! The notification routes that change the notifier's set-up: channels
//! (`GET`/`POST /v1/notify/channels`, `DELETE /v1/notify/channels/{name}`)
//! and silences (`GET`/`POST /v1/notify/silences`, `DELETE
//! /v1/notify/silences/{id}`). They sit behind the same bearer token as the
//! rest of the API: [`routes`] is merged into each listener's router
//! before its token check is layered on.
//!
//! Bodies are read as bytes and parsed here, strictly, so a malformed
//! request is a 400 that names what was wrong and changes nothing.

use std::sync::{Arc, OnceLock};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use rigmesh_notify::{AddedChannel, Silence};
use rigmesh_protocol::{Id, PublicKey, UnixMillis};
use serde::Deserialize;

use super::Listener;
use crate::notify::{ChannelError, NodeNotifier};

/// Longest a silence may last from now: a year. A silence meant to be
/// forever is a route without channels in the config instead.
pub const MAX_SILENCE_MS: u64 = 366 * 24 * 3_600_000;
/// Longest rule prefix, creator name and comment, in characters.
const MAX_RULE_LEN: usize = 128;
const MAX_BY_LEN: usize = 128;
const MAX_COMMENT_LEN: usize = 1_024;

#[derive(Clone)]
struct NotifyRoutes {
    notify: Arc<OnceLock<NodeNotifier>>,
    listener: Listener,
}

/// The routes, for `listener`, over the notifier `notify`
/// holds once it starts.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(
    notify: Arc<OnceLock<NodeNotifier>>,
    listener: Listener,
) -> Router<S> {
    Router::new()
        .route("/v1/notify/channels", get(list_channels).post(add_channel))
        .route("/v1/notify/channels/{name}", delete(remove_channel))
        .route("/v1/notify/silences", get(list_silences).post(add_silence))
        .route("/v1/notify/silences/{id}", delete(expire_silence))
        .with_state(NotifyRoutes { notify, listener })
}

/// A JSON error body: `{"error": <kind>, "reason": <text>}`.
fn refusal(status: StatusCode, error: &str, reason: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({"error": error, "reason": reason.into()})),
    )
        .into_response()
}

fn bad_request(reason: impl Into<String>) -> Response {
    refusal(StatusCode::BAD_REQUEST, "invalid", reason)
}

fn not_notifying() -> Response {
    refusal(
        StatusCode::CONFLICT,
        "failed",
        "notifications are not configured on this node: add a [notify] section to its config",
    )
}

fn notifier_failed(err: rigmesh_notify::Error) -> Response {
    match err {
        rigmesh_notify::Error::Full { what, max } => refusal(
            StatusCode::CONFLICT,
            "conflict",
            format!("already {max} {what}: expire one first"),
        ),
        other => {
            tracing::warn!(err = %other, "notifier request failed");
            refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed",
                format!("the notifier did not answer: {other}"),
            )
        }
    }
}

async fn list_channels(State(s): State<NotifyRoutes>) -> Response {
    match s.notify.get() {
        Some(n) => Json(n.channels()).into_response(),
        None => not_notifying(),
    }
}

fn channel_refused(err: ChannelError) -> Response {
    match err {
        ChannelError::Invalid(reason) => bad_request(reason),
        ChannelError::Conflict(reason) => refusal(StatusCode::CONFLICT, "conflict", reason),
        err @ ChannelError::Unknown(_) => {
            refusal(StatusCode::NOT_FOUND, "not_found", err.to_string())
        }
        ChannelError::Failed(reason) => {
            refusal(StatusCode::INTERNAL_SERVER_ERROR, "failed", reason)
        }
    }
}

/// `POST /v1/notify/channels` with `{"channel": {"name": …, "type": …,
/// …}, "recipients": [...]}`: the channel as in the config file, its
/// secrets as `{"file": "/abs/path"}` or `{"env": "VAR"}`. 200 with the
/// channel as listed (no secret), 400 for bad settings or an unreadable
/// secret, 409 for a name taken.
async fn add_channel(State(s): State<NotifyRoutes>, body: axum::body::Bytes) -> Response {
    let added: AddedChannel = match serde_json::from_slice(&body) {
        Ok(added) => added,
        Err(err) => {
            return bad_request(format!(
                "the body is not {{\"channel\": {{\"name\", \"type\", ...}}, \"recipients\": [...]}}: {err}"
            ))
        }
    };
    let Some(n) = s.notify.get().cloned() else {
        return not_notifying();
    };
    let name = added.channel.name.clone();
    match n.add_channel(added).await {
        Ok(()) => {
            tracing::info!(channel = %name, api = s.listener.name(), "channel added");
            match n.channels().into_iter().find(|c| c.name == name) {
                Some(view) => Json(view).into_response(),
                None => Json(serde_json::json!({"name": name})).into_response(),
            }
        }
        Err(err) => {
            tracing::info!(channel = %name, %err, "channel not added");
            channel_refused(err)
        }
    }
}

/// `DELETE /v1/notify/channels/{name}`: removes a channel added at run
/// time; 409 for one of the config file, 404 for none.
async fn remove_channel(State(s): State<NotifyRoutes>, UrlPath(name): UrlPath<String>) -> Response {
    let Some(n) = s.notify.get().cloned() else {
        return not_notifying();
    };
    match n.remove_channel(&name).await {
        Ok(()) => {
            tracing::info!(channel = %name, api = s.listener.name(), "channel removed");
            Json(serde_json::json!({"name": name, "removed": true})).into_response()
        }
        Err(err) => channel_refused(err),
    }
}

/// A silence as the API shows it.
pub fn silence_json(s: &Silence, now: UnixMillis) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "rule": s.rule_prefix,
        "about": s.about.map(|a| a.to_string()),
        "subject": s.subject.map(|id| id.to_string()),
        "recipient": s.recipient,
        "starts_at": s.starts_at.0,
        "ends_at": s.ends_at.0,
        "active": s.active(now),
        "created_by": s.created_by,
        "comment": s.comment,
    })
}

async fn list_silences(State(s): State<NotifyRoutes>) -> Response {
    let Some(n) = s.notify.get().cloned() else {
        return not_notifying();
    };
    match n.handle().status().await {
        Ok(status) => {
            let now = UnixMillis::now();
            Json(
                status
                    .silences
                    .iter()
                    .map(|silence| silence_json(silence, now))
                    .collect::<Vec<_>>(),
            )
            .into_response()
        }
        Err(err) => notifier_failed(err),
    }
}

/// Body of `POST /v1/notify/silences`. At least one matcher, an expiry
/// (`ends_at` or `duration_secs`, not both) and a comment are required.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceRequest {
    /// Rule-name prefix (`budget.` mutes every budget alert).
    #[serde(default)]
    pub rule: String,
    /// Only alerts about this account (hex public key).
    pub about: Option<String>,
    /// Only alerts about this lease, offer or bid (hex id).
    pub subject: Option<String>,
    /// Only for this recipient of the config.
    pub recipient: Option<String>,
    /// Starts (Unix milliseconds); now by default.
    pub starts_at: Option<u64>,
    /// Lapses (Unix milliseconds).
    pub ends_at: Option<u64>,
    /// Lapses this many seconds after it starts.
    pub duration_secs: Option<u64>,
    /// Who asks for it; the API's name by default.
    pub created_by: Option<String>,
    /// Why.
    #[serde(default)]
    pub comment: String,
}

fn text_field(what: &str, text: &str, max: usize) -> Result<String, String> {
    let text = text.trim();
    if text.chars().count() > max {
        return Err(format!("{what} is longer than {max} characters"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{what} has control characters"));
    }
    Ok(text.to_owned())
}

impl SilenceRequest {
    /// The silence it asks for at `now`, checked against the recipients
    /// of the config, or why not.
    pub fn silence(
        self,
        recipients: &[String],
        default_by: &str,
        now: UnixMillis,
    ) -> Result<Silence, String> {
        let rule_prefix = text_field("rule", &self.rule, MAX_RULE_LEN)?;
        let about = self
            .about
            .map(|a| {
                a.trim()
                    .parse::<PublicKey>()
                    .map_err(|e| format!("about {a:?} is not an account (hex public key): {e}"))
            })
            .transpose()?;
        let subject = self
            .subject
            .map(|id| {
                id.trim()
                    .parse::<Id>()
                    .map_err(|e| format!("subject {id:?} is not a lease, offer or bid id: {e}"))
            })
            .transpose()?;
        let recipient = match self.recipient {
            Some(r) if !recipients.iter().any(|known| known == r.trim()) => {
                return Err(format!(
                    "recipient {r:?} is not in the [notify] config (recipients: {})",
                    if recipients.is_empty() {
                        "none".to_owned()
                    } else {
                        recipients.join(", ")
                    }
                ))
            }
            Some(r) => Some(r.trim().to_owned()),
            None => None,
        };
        if rule_prefix.is_empty() && about.is_none() && subject.is_none() && recipient.is_none() {
            return Err(
                "a silence needs a matcher: rule, about, subject or recipient (rule is a prefix \
                 of alert rules, e.g. \"budget.\")"
                    .into(),
            );
        }
        let starts_at = UnixMillis(self.starts_at.unwrap_or(now.0));
        let ends_at = match (self.ends_at, self.duration_secs) {
            (Some(at), None) => UnixMillis(at),
            (None, Some(secs)) => secs
                .checked_mul(1_000)
                .and_then(|ms| starts_at.0.checked_add(ms))
                .map(UnixMillis)
                .ok_or_else(|| format!("duration_secs {secs} is too long"))?,
            (None, None) => {
                return Err(
                    "a silence needs an expiry: ends_at (Unix milliseconds) or duration_secs"
                        .into(),
                )
            }
            (Some(_), Some(_)) => return Err("give ends_at or duration_secs, not both".into()),
        };
        if ends_at <= starts_at || ends_at <= now {
            return Err(format!(
                "the silence would never hold: it ends at {} ms, starts at {} ms, and now is {} ms",
                ends_at.0, starts_at.0, now.0
            ));
        }
        if ends_at.0.saturating_sub(now.0) > MAX_SILENCE_MS {
            return Err(format!(
                "a silence lasts at most {} days from now",
                MAX_SILENCE_MS / (24 * 3_600_000)
            ));
        }
        let comment = text_field("comment", &self.comment, MAX_COMMENT_LEN)?;
        if comment.is_empty() {
            return Err("a silence needs a comment: why it is quiet".into());
        }
        let created_by = match self.created_by {
            Some(by) => text_field("created_by", &by, MAX_BY_LEN)?,
            None => default_by.to_owned(),
        };
        if created_by.is_empty() {
            return Err("created_by is empty".into());
        }
        Ok(Silence {
            id: 0,
            rule_prefix,
            about,
            subject,
            recipient,
            starts_at,
            ends_at,
            created_by,
            comment,
        })
    }
}

/// `POST /v1/notify/silences`: 200 with the silence (its id assigned).
async fn add_silence(State(s): State<NotifyRoutes>, body: axum::body::Bytes) -> Response {
    let request: SilenceRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return bad_request(format!("the body is not a silence: {err}")),
    };
    let Some(n) = s.notify.get().cloned() else {
        return not_notifying();
    };
    let recipients: Vec<String> = n
        .config()
        .recipients
        .iter()
        .map(|r| r.name.clone())
        .collect();
    let now = UnixMillis::now();
    let mut silence =
        match request.silence(&recipients, &format!("the {} API", s.listener.name()), now) {
            Ok(silence) => silence,
            Err(reason) => return bad_request(reason),
        };
    match n.handle().silence(silence.clone()).await {
        Ok(id) => {
            silence.id = id;
            tracing::info!(
                id,
                rule = %silence.rule_prefix,
                by = %silence.created_by,
                ends_at = silence.ends_at.0,
                "silence added"
            );
            Json(silence_json(&silence, now)).into_response()
        }
        Err(err) => notifier_failed(err),
    }
}

/// `DELETE /v1/notify/silences/{id}`: ends the silence now.
async fn expire_silence(State(s): State<NotifyRoutes>, UrlPath(id): UrlPath<String>) -> Response {
    let Ok(id) = id.trim().parse::<u64>() else {
        return bad_request(format!(
            "{id:?} is not a silence id (a number, as GET /v1/notify/silences lists it)"
        ));
    };
    let Some(n) = s.notify.get().cloned() else {
        return not_notifying();
    };
    match n.handle().expire_silence(id).await {
        Ok(true) => {
            tracing::info!(id, api = s.listener.name(), "silence expired");
            Json(serde_json::json!({"id": id, "expired": true})).into_response()
        }
        Ok(false) => refusal(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no silence {id} (already expired, or never added)"),
        ),
        Err(err) => notifier_failed(err),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const NOW: UnixMillis = UnixMillis(1_700_000_000_000);

    fn request(json: &str) -> Result<Silence, String> {
        let request: SilenceRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        request.silence(&["me".to_owned()], "the customer API", NOW)
    }

    #[test]
    fn a_silence_is_read_with_its_matchers_and_expiry() {
        let lease = Id([7; 32]);
        let silence = request(&format!(
            r#"{{"rule": "budget.", "subject": "{lease}", "recipient": "me",
                "duration_secs": 3600, "comment": "maintenance"}}"#
        ))
        .unwrap();
        assert_eq!(silence.rule_prefix, "budget.");
        assert_eq!(silence.subject, Some(lease));
        assert_eq!(silence.recipient.as_deref(), Some("me"));
        assert_eq!(silence.starts_at, NOW);
        assert_eq!(silence.ends_at, NOW.plus_ms(3_600_000));
        assert_eq!(silence.created_by, "the customer API");
    }

    #[test]
    fn bad_silences_are_refused_with_the_reason() {
        for (json, reason) in [
            (r#"{"rule": "x", "comment": "c"}"#, "needs an expiry"),
            (
                r#"{"rule": "x", "comment": "c", "ends_at": 1, "duration_secs": 1}"#,
                "not both",
            ),
            (
                r#"{"comment": "c", "duration_secs": 60}"#,
                "needs a matcher",
            ),
            (r#"{"rule": "x", "duration_secs": 60}"#, "needs a comment"),
            (
                r#"{"rule": "x", "comment": "c", "ends_at": 5}"#,
                "would never hold",
            ),
            (
                r#"{"rule": "x", "comment": "c", "duration_secs": 99999999999}"#,
                "at most 366 days",
            ),
            (
                r#"{"rule": "x", "comment": "c", "duration_secs": 18446744073709551615}"#,
                "too long",
            ),
            (
                r#"{"about": "zz", "comment": "c", "duration_secs": 60}"#,
                "not an account",
            ),
            (
                r#"{"subject": "12", "comment": "c", "duration_secs": 60}"#,
                "not a lease",
            ),
            (
                r#"{"recipient": "you", "comment": "c", "duration_secs": 60}"#,
                "recipients: me",
            ),
            (
                r#"{"rule": "x", "comment": "c", "duration_secs": 60, "severity": "info"}"#,
                "unknown field",
            ),
        ] {
            let err = request(json).unwrap_err();
            assert!(err.contains(reason), "{json}: {err}");
        }
    }
}
