//! The generic JSON webhook. Each request is `POST url` with a JSON body
//! ([`WebhookBody`]) and three headers:
//!
//! - `Idempotency-Key`: the notification's key, the same on every retry;
//! - `X-Rigmesh-Timestamp`: unix seconds when this attempt was signed;
//! - `X-Rigmesh-Signature`: `sha256=` and the hex HMAC-SHA256, keyed with
//!   the shared secret, of `{timestamp}.{body}`.
//!
//! A receiver recomputes the HMAC over the bytes it received and refuses a
//! timestamp older than a few minutes ([`verify`] does both), so a
//! captured request cannot be replayed later; the idempotency key lets it
//! drop a retry it already handled.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use ureq::Agent;

use super::http;
use crate::config::SignedWebhookConfig;
use crate::error::{Error, Result};
use crate::message::{severity_name, Outgoing};
use crate::secret::Secret;

/// Header with the idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Header with the signing time, unix seconds.
pub const TIMESTAMP_HEADER: &str = "X-Rigmesh-Timestamp";
/// Header with the signature.
pub const SIGNATURE_HEADER: &str = "X-Rigmesh-Signature";
/// How old a signed request a receiver should still accept, seconds.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// The JSON body of a webhook request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookBody {
    /// The idempotency key (also in the header).
    pub id: String,
    /// The alert group.
    pub group: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// One line.
    pub subject: String,
    /// The full text.
    pub body: String,
    /// Alerts reported on.
    pub alerts: u64,
    /// Acknowledgement link, if any.
    pub ack_url: Option<String>,
    /// When the notification was queued, unix milliseconds.
    pub created_at: u64,
}

/// A signed JSON webhook.
#[derive(Debug)]
pub struct WebhookChannel {
    url: String,
    secret: Secret,
    agent: Agent,
}

/// The signature header's value for `body` signed at `timestamp`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail; an empty
    // fallback key would only make every signature check fail.
    <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()))
}

/// Checks a received request as a receiver should: the signature over the
/// exact body bytes (in constant time) and a timestamp within
/// `tolerance_secs` of `now_secs`.
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now_secs: u64,
    tolerance_secs: u64,
) -> std::result::Result<(), &'static str> {
    let ts: u64 = timestamp.parse().map_err(|_| "timestamp is not a number")?;
    if now_secs.abs_diff(ts) > tolerance_secs {
        return Err("timestamp outside the tolerance");
    }
    let hex_sig = signature
        .strip_prefix("sha256=")
        .ok_or("signature lacks the sha256= prefix")?;
    let given = hex::decode(hex_sig).map_err(|_| "signature is not hex")?;
    let mut mac = mac(secret);
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| "signature does not match")
}

impl WebhookChannel {
    pub(crate) fn new(config: &SignedWebhookConfig, agent: Agent) -> Result<Self> {
        Ok(WebhookChannel {
            url: config.url.clone(),
            secret: config.secret.load()?,
            agent,
        })
    }

    pub(crate) fn send(&self, name: &str, message: &Outgoing) -> Result<()> {
        let body = WebhookBody {
            id: message.key.clone(),
            group: message.group.clone(),
            severity: severity_name(message.severity).into(),
            subject: message.subject.clone(),
            body: message.body.clone(),
            alerts: message.alerts,
            ack_url: message.ack_url.clone(),
            created_at: message.created_at.0,
        };
        let bytes = serde_json::to_vec(&body).map_err(|e| Error::permanent(name, e.to_string()))?;
        // Signed at send time, not at queue time: a retry hours later must
        // still pass the receiver's freshness check.
        let timestamp = rigmesh_protocol::UnixMillis::now().0 / 1_000;
        let signature = sign(self.secret.expose().as_bytes(), timestamp, &bytes);
        http::check(
            name,
            self.agent
                .post(&self.url)
                .header("Content-Type", "application/json")
                .header(IDEMPOTENCY_HEADER, &message.key)
                .header(TIMESTAMP_HEADER, timestamp.to_string())
                .header(SIGNATURE_HEADER, signature)
                .send(&bytes[..]),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_body_key_and_time() {
        let sig = sign(b"key", 1_000, b"{\"a\":1}");
        assert_eq!(
            verify(b"key", "1000", &sig, b"{\"a\":1}", 1_100, 300),
            Ok(())
        );
        assert!(verify(b"key", "1000", &sig, b"{\"a\":2}", 1_100, 300).is_err());
        assert!(verify(b"other", "1000", &sig, b"{\"a\":1}", 1_100, 300).is_err());
        assert!(verify(b"key", "1001", &sig, b"{\"a\":1}", 1_100, 300).is_err());
        assert_eq!(
            verify(b"key", "1000", &sig, b"{\"a\":1}", 1_301, 300),
            Err("timestamp outside the tolerance")
        );
    }
}
