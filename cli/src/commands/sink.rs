//! The devnet's webhook sink: a small HTTP server on a free loopback port
//! that receives the customer node's notifications as a real receiver
//! would: it checks each request's HMAC signature and timestamp with
//! `rigmesh_notify::channel::webhook::verify`, drops a retry it already
//! took (same idempotency key), and prints each delivery as it arrives.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use rigmesh_notify::channel::webhook::{
    self, WebhookBody, DEFAULT_TOLERANCE_SECS, IDEMPOTENCY_HEADER, SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
};
use rigmesh_notify::config::{
    ChannelConfig, ChannelKind, GroupingConfig, OutboxConfig, RecipientConfig, RouteConfig,
    SignedWebhookConfig,
};
use rigmesh_notify::secret::SecretSource;
use rigmesh_notify::NotifyConfig;
use rigmesh_protocol::{Audience, UnixMillis};
use tokio::sync::watch;

/// The channel's name in the customer's config.
const CHANNEL: &str = "devnet-sink";

#[derive(Clone)]
struct Sink {
    secret: Arc<Vec<u8>>,
    url: Arc<String>,
    seen: Arc<Mutex<BTreeSet<String>>>,
    delivered: watch::Sender<Vec<WebhookBody>>,
    print: fn(String),
}

/// A running sink.
pub(crate) struct WebhookSink {
    /// Where it listens, e.g. `http://127.0.0.1:40123/notify`.
    pub(crate) url: String,
    /// Every notification taken, in order of arrival.
    pub(crate) delivered: watch::Receiver<Vec<WebhookBody>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn receive(
    State(sink): State<Sink>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let now_secs = UnixMillis::now().0 / 1_000;
    if let Err(reason) = webhook::verify(
        &sink.secret,
        header(&headers, TIMESTAMP_HEADER),
        header(&headers, SIGNATURE_HEADER),
        &body,
        now_secs,
        DEFAULT_TOLERANCE_SECS,
    ) {
        (sink.print)(format!("webhook sink refused a request: {reason}"));
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(message) = serde_json::from_slice::<WebhookBody>(&body) else {
        (sink.print)("webhook sink refused a request: the body is not a notification".into());
        return StatusCode::BAD_REQUEST;
    };
    let key = header(&headers, IDEMPOTENCY_HEADER).to_string();
    let fresh = sink
        .seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key);
    if fresh {
        (sink.print)(format!(
            "notification delivered: {} ({}) to webhook {}, signature checked",
            message.subject, message.severity, sink.url
        ));
        sink.delivered.send_modify(|all| all.push(message));
    }
    StatusCode::OK
}

/// Starts a sink on a free loopback port whose requests must be signed
/// with `secret`; `print` shows each delivery.
pub(crate) async fn start(secret: Vec<u8>, print: fn(String)) -> anyhow::Result<WebhookSink> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the webhook sink")?;
    let url = format!("http://{}/notify", listener.local_addr()?);
    let (delivered_tx, delivered) = watch::channel(Vec::new());
    let sink = Sink {
        secret: Arc::new(secret),
        url: Arc::new(url.clone()),
        seen: Arc::default(),
        delivered: delivered_tx,
        print,
    };
    let app = Router::new()
        .route("/notify", post(receive))
        .with_state(sink);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(WebhookSink {
        url,
        delivered,
        stop: Some(stop),
    })
}

/// A fresh signing secret, written to `path` for the node to read.
pub(crate) fn new_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let secret = hex::encode(bytes);
    std::fs::write(path, format!("{secret}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(secret.into_bytes())
}

/// The customer node's `[notify]`: every customer alert to the sink at
/// once (info too, in a digest a second later), short waits for a
/// devnet's pace.
pub(crate) fn customer_config(url: &str, secret_file: &Path) -> NotifyConfig {
    NotifyConfig {
        outbox: OutboxConfig {
            poll_ms: 100,
            backoff_base_ms: 500,
            ..OutboxConfig::default()
        },
        grouping: GroupingConfig {
            group_wait_ms: 300,
            group_interval_ms: 1_000,
            digest_interval_ms: 1_000,
            ..GroupingConfig::default()
        },
        ack_url: None,
        channels: vec![ChannelConfig {
            name: CHANNEL.into(),
            kind: ChannelKind::Webhook(SignedWebhookConfig {
                url: url.into(),
                secret: SecretSource::File(secret_file.to_path_buf()),
            }),
        }],
        recipients: vec![RecipientConfig {
            name: "customer".into(),
            audience: vec![Audience::Customer],
            accounts: Vec::new(),
            channels: vec![CHANNEL.into()],
            routes: vec![RouteConfig {
                rules: Vec::new(),
                severities: Vec::new(),
                channels: vec![CHANNEL.into()],
            }],
            quiet_hours: None,
            escalation: Vec::new(),
        }],
        inhibit: Vec::new(),
    }
}
