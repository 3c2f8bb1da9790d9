//! Notifications on a node: the `[notify]` section of its config starts a
//! `rigmesh-notify` worker (its outbox and state in `<data dir>/notify`,
//! sled), and the roles hand it the alerts they raise through an
//! [`AlertSink`], which never waits: a full queue drops the alert with a
//! metric and a log line rather than stall a role's loop. Delivery runs
//! in the worker's own task and blocking threads.
//!
//! What reaches the notifier: the alerts this node raises itself (the
//! customer's budget alerts, lease ended, final settlement certified; the
//! supplier's GPU and offer alerts; a coordinator's own alerts) and the
//! alerts a coordinator of the configured set signed about this node's
//! account that arrive by gossip ([`watch_gossip`]). Budget alerts stay on
//! the node: they are handed to the notifier, never gossiped.
//!
//! [`NodeNotifier`] is what the local API uses: the channels (never their
//! secrets), channels added and removed at run time, the rules, the log,
//! a test message, acknowledgement.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rigmesh_notify::config::{ChannelKind, Medium};
use rigmesh_notify::message::severity_name;
use rigmesh_notify::routing::Router;
use rigmesh_notify::secret::SecretSource;
use rigmesh_notify::{
    AddedChannel, NotifyConfig, NotifyHandle, NotifyMetrics, Outgoing, SystemClock,
};
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{
    Alert, Audience, CoordinatorSet, Id, PublicKey, Severity, Signed, UnixMillis, PROTOCOL_VERSION,
};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::config::Role;
use crate::error::{Error, Result};
use crate::network::NodeHandle;

/// Where alerts go from a role: the notifier when one runs, and the
/// review queue for the operators' alerts it keeps (on a node that has
/// one). Cheap to clone; [`AlertSink::raise`] never waits.
#[derive(Debug, Clone, Default)]
pub struct AlertSink {
    notify: Option<NotifyHandle>,
    review: Option<crate::review::ReviewQueue>,
}

impl AlertSink {
    /// A sink that feeds `handle`.
    pub fn new(handle: NotifyHandle) -> Self {
        AlertSink {
            notify: Some(handle),
            review: None,
        }
    }

    /// The same sink, also opening review items in `queue`.
    pub fn with_review(mut self, queue: crate::review::ReviewQueue) -> Self {
        self.review = Some(queue);
        self
    }

    /// True when a notifier or a review queue runs behind it.
    pub fn is_on(&self) -> bool {
        self.notify.is_some() || self.review.is_some()
    }

    /// Hands `alert` to the notifier if one runs and its queue has room,
    /// and to the review queue when its rule is one that opens an item.
    pub fn raise(&self, alert: &Alert) {
        if let Some(handle) = &self.notify {
            handle.try_raise(alert.clone());
        }
        if let Some(queue) = &self.review {
            queue.raise_alert(alert);
        }
    }

    /// Tells the notifier that `alert` (the same rule, issuer, account and
    /// subject) no longer holds: its group reports it resolved.
    pub fn resolve(&self, alert: &Alert) {
        if let Some(handle) = &self.notify {
            handle.try_resolve(alert.clone());
        }
    }

    /// Hands each signed alert's body to the notifier.
    pub fn raise_all<'a>(&self, alerts: impl IntoIterator<Item = &'a Signed<Alert>>) {
        for alert in alerts {
            self.raise(&alert.body);
        }
    }
}

/// An alert this node raises about its own account for its own user
/// (lease ended, settlement certified): kept on the node, not signed nor
/// gossiped.
pub fn own_alert(
    account: PublicKey,
    audience: Audience,
    severity: Severity,
    rule: &str,
    subject: Option<Id>,
    message: String,
) -> Alert {
    Alert {
        version: PROTOCOL_VERSION,
        issuer: account,
        severity,
        audience,
        rule: rule.into(),
        about: Some(account),
        subject,
        message,
        created_at: UnixMillis::now(),
    }
}

/// A channel as the API shows it: what it is and where it goes, never a
/// secret (secrets are named by their source only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelView {
    /// Its name.
    pub name: String,
    /// `email`, `slack`, `discord`, `telegram`, `webhook`, `twilio`,
    /// `sms_gateway`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `sms`, `im` or `email`.
    pub medium: String,
    /// Where it delivers, in words.
    pub target: String,
    /// `config` (the node's config file) or `added` (at run time, kept in
    /// the node's notification store).
    pub source: &'static str,
}

fn secret_source(source: &rigmesh_notify::secret::SecretSource) -> String {
    match source {
        rigmesh_notify::secret::SecretSource::Env(var) => format!("${var}"),
        rigmesh_notify::secret::SecretSource::File(path) => path.display().to_string(),
    }
}

fn view_of(channel: &rigmesh_notify::config::ChannelConfig, source: &'static str) -> ChannelView {
    let (kind, target) = match &channel.kind {
        ChannelKind::Email(c) => (
            "email",
            format!(
                "smtp {}{} to {}",
                c.server,
                c.port.map(|p| format!(":{p}")).unwrap_or_default(),
                c.to.join(", ")
            ),
        ),
        ChannelKind::Slack(c) => (
            "slack",
            format!("incoming webhook, URL from {}", secret_source(&c.url)),
        ),
        ChannelKind::Discord(c) => (
            "discord",
            format!("incoming webhook, URL from {}", secret_source(&c.url)),
        ),
        ChannelKind::Telegram(c) => ("telegram", format!("chat {}", c.chat_id)),
        ChannelKind::Webhook(c) => ("webhook", c.url.clone()),
        ChannelKind::Twilio(c) => ("twilio", format!("{} to {}", c.api_base, c.to.join(", "))),
        ChannelKind::SmsGateway(c) => ("sms_gateway", format!("{} to {}", c.url, c.to.join(", "))),
    };
    let medium = match channel.kind.medium() {
        Medium::Sms => "sms",
        Medium::Im => "im",
        Medium::Email => "email",
    };
    ChannelView {
        name: channel.name.clone(),
        kind: kind.into(),
        medium: medium.into(),
        target,
        source,
    }
}

/// Every secret source of a channel.
fn secrets_of(kind: &ChannelKind) -> Vec<&SecretSource> {
    match kind {
        ChannelKind::Email(c) => c.password.iter().collect(),
        ChannelKind::Slack(c) | ChannelKind::Discord(c) => vec![&c.url],
        ChannelKind::Telegram(c) => vec![&c.token],
        ChannelKind::Webhook(c) => vec![&c.secret],
        ChannelKind::Twilio(c) => vec![&c.auth_token],
        ChannelKind::SmsGateway(c) => c.token.iter().collect(),
    }
}

/// Environment variables a channel added over the API may read its secret
/// from start with this.
pub const SECRET_ENV_PREFIX: &str = "RIGMESH_";

/// Refuses a secret source given over the API that could hand the caller
/// something else the node holds (a Telegram token or a Slack URL is sent
/// to the host the caller names): a relative file, a file in the node's
/// data directory (its keys and API tokens), or an environment variable
/// not named for rigmesh.
fn check_secret_sources(kind: &ChannelKind, data_dir: &Path) -> std::result::Result<(), String> {
    let data_dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    for source in secrets_of(kind) {
        let path = match source {
            SecretSource::Env(var) if !var.starts_with(SECRET_ENV_PREFIX) => {
                return Err(format!(
                    "a channel added at run time reads its secret from an environment \
                     variable whose name starts with {SECRET_ENV_PREFIX}, not {var}"
                ));
            }
            SecretSource::Env(_) => continue,
            SecretSource::File(path) => path,
        };
        if !path.is_absolute() {
            return Err(format!(
                "secret file {} is not an absolute path",
                path.display()
            ));
        }
        let real = std::fs::canonicalize(path)
            .map_err(|e| format!("secret file {}: {e}", path.display()))?;
        if real.starts_with(&data_dir) {
            return Err(format!(
                "secret file {} is in the node's data directory, which holds its keys",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Why a channel was not added or removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Bad settings, an unreadable secret or an unknown recipient.
    #[error("{0}")]
    Invalid(String),
    /// The name is taken, the channel is in the config file, or a route of
    /// the config still names it.
    #[error("{0}")]
    Conflict(String),
    /// No channel of that name was added at run time.
    #[error("no channel {0:?} was added at run time")]
    Unknown(String),
    /// The notifier failed.
    #[error("{0}")]
    Failed(String),
}

/// The running notifier, as the local API uses it.
#[derive(Debug, Clone)]
pub struct NodeNotifier {
    handle: NotifyHandle,
    /// Names of the channels of the config file, which the API cannot
    /// remove.
    file_channels: Arc<Vec<String>>,
    data_dir: PathBuf,
    account: PublicKey,
}

/// Which audience this node's user is, for alerts about its account.
pub fn audience_of(role: Role) -> Audience {
    match role {
        Role::Supplier => Audience::Supplier,
        Role::Customer => Audience::Customer,
        Role::Relay | Role::Coordinator => Audience::Operators,
    }
}

/// Starts the notifier of `config` over `<data_dir>/notify`. Without an
/// `ack_url` in the config, links point at `api_base` (the node's local
/// API, e.g. `http://127.0.0.1:9610`), whose `/v1/notify/ack` takes them.
pub fn start(
    mut config: NotifyConfig,
    data_dir: &Path,
    account: PublicKey,
    api_base: &str,
    metrics: NotifyMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(NodeNotifier, JoinHandle<()>)> {
    // Checked by the worker, once the channels added at run time are back.
    if config.ack_url.is_none() {
        config.ack_url = Some(format!("{}/v1/notify/ack", api_base.trim_end_matches('/')));
    }
    let dir = data_dir.join("notify");
    let store = rigmesh_ledger::SledStore::open(&dir).map_err(|e| {
        Error::Store(format!(
            "opening the notification outbox in {}: {e}",
            dir.display()
        ))
    })?;
    let file_channels = config.channels.iter().map(|c| c.name.clone()).collect();
    let (handle, task) = rigmesh_notify::worker::start(
        config.clone(),
        store,
        account,
        SystemClock,
        metrics,
        shutdown,
    )
    .map_err(|e| Error::Config(format!("[notify]: {e}")))?;
    let running = handle.config();
    tracing::info!(
        channels = running.channels.len(),
        recipients = running.recipients.len(),
        "notifications on"
    );
    Ok((
        NodeNotifier {
            handle,
            file_channels: Arc::new(file_channels),
            data_dir: data_dir.to_path_buf(),
            account,
        },
        task,
    ))
}

impl NodeNotifier {
    /// The worker's handle.
    pub fn handle(&self) -> &NotifyHandle {
        &self.handle
    }

    /// A sink for the roles.
    pub fn sink(&self) -> AlertSink {
        AlertSink::new(self.handle.clone())
    }

    /// The config it runs with: the file's `[notify]`, with the channels
    /// added at run time.
    pub fn config(&self) -> NotifyConfig {
        self.handle.config()
    }

    /// The channels, without secrets.
    pub fn channels(&self) -> Vec<ChannelView> {
        self.config()
            .channels
            .iter()
            .map(|c| {
                let source = if self.file_channels.contains(&c.name) {
                    "config"
                } else {
                    "added"
                };
                view_of(c, source)
            })
            .collect()
    }

    /// Adds a channel at run time (kept across restarts). Its secrets are
    /// named by absolute file path outside the node's data directory or by
    /// an environment variable named `RIGMESH_…`, and read now: a channel
    /// that cannot read its secret is refused.
    pub async fn add_channel(&self, added: AddedChannel) -> std::result::Result<(), ChannelError> {
        let name = added.channel.name.clone();
        if self.config().channels.iter().any(|c| c.name == name) {
            return Err(ChannelError::Conflict(format!(
                "channel {name:?} already exists; remove it first"
            )));
        }
        let kind = added.channel.kind.clone();
        let data_dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || check_secret_sources(&kind, &data_dir))
            .await
            .map_err(|e| ChannelError::Failed(e.to_string()))?
            .map_err(ChannelError::Invalid)?;
        self.handle.add_channel(added).await.map_err(|e| match e {
            rigmesh_notify::Error::Full { .. } => ChannelError::Conflict(e.to_string()),
            rigmesh_notify::Error::Config(_) | rigmesh_notify::Error::Secret { .. } => {
                ChannelError::Invalid(e.to_string())
            }
            other => ChannelError::Failed(other.to_string()),
        })
    }

    /// Removes a channel added at run time. One of the config file is
    /// refused: it is removed by editing the file.
    pub async fn remove_channel(&self, name: &str) -> std::result::Result<(), ChannelError> {
        if self.file_channels.iter().any(|c| c == name) {
            return Err(ChannelError::Conflict(format!(
                "channel {name:?} is defined in the node's config file; remove it there and \
                 restart the node"
            )));
        }
        match self.handle.remove_channel(name).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ChannelError::Unknown(name.to_owned())),
            Err(e @ rigmesh_notify::Error::Config(_)) => Err(ChannelError::Conflict(format!(
                "channel {name:?} is still named by the config: {e}"
            ))),
            Err(e) => Err(ChannelError::Failed(e.to_string())),
        }
    }

    /// The routing rules: each recipient with the channels each severity
    /// takes by default, its routes, quiet hours and escalation; the
    /// inhibition rules and the grouping times.
    pub fn rules(&self) -> serde_json::Value {
        let config = self.config();
        let router = Router::new(&config.recipients, &config.channels).ok();
        let recipients: Vec<serde_json::Value> = config
            .recipients
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let by_severity = |severity| {
                    router
                        .as_ref()
                        .map(|router| router.channels_for(i, "", severity))
                        .unwrap_or_default()
                };
                serde_json::json!({
                    "name": r.name,
                    "audience": r.audience,
                    "accounts": r.accounts,
                    "defaults": {
                        "critical": by_severity(Severity::Critical),
                        "warning": by_severity(Severity::Warning),
                        "info": by_severity(Severity::Info),
                    },
                    "routes": r.routes,
                    "quiet_hours": r.quiet_hours,
                    "escalation": r.escalation,
                })
            })
            .collect();
        serde_json::json!({
            "recipients": recipients,
            "inhibit": config.inhibit,
            "grouping": config.grouping,
            "ack_url": config.ack_url,
        })
    }

    /// Sends a test message on channel `name` at once (not through the
    /// outbox), and says whether the far end took it.
    pub async fn test_channel(&self, name: &str) -> std::result::Result<(), TestError> {
        let Ok(channel) = self.handle.channel(name) else {
            return Err(TestError::Unknown(name.to_owned()));
        };
        let now = UnixMillis::now();
        let mut key = [0u8; 16];
        getrandom::fill(&mut key).map_err(|e| TestError::Failed(e.to_string()))?;
        let message = Outgoing {
            key: hex::encode(key),
            channel: name.to_owned(),
            group: "test".into(),
            rule: "notify.test".into(),
            severity: Severity::Info,
            subject: "rigmesh: test notification".into(),
            body: format!(
                "A test message from the rigmesh node of account {}, sent by `rigmesh notify \
                 channels test {name}`.\n",
                self.account
            ),
            ack_url: None,
            alerts: 0,
            created_at: now,
        };
        tokio::task::spawn_blocking(move || channel.send(&message))
            .await
            .map_err(|e| TestError::Failed(e.to_string()))?
            .map_err(|e| TestError::Failed(e.to_string()))
    }
}

fn millis(at: UnixMillis) -> Option<u64> {
    (at.0 != u64::MAX).then_some(at.0)
}

fn group_json(g: &rigmesh_notify::group::GroupState) -> serde_json::Value {
    serde_json::json!({
        "id": g.id,
        "recipient": g.recipient_name,
        "severity": severity_name(g.severity),
        "rule": g.rule,
        "label": g.label,
        "channels": g.channels,
        "messages": g.messages,
        "created_at": g.created_at.0,
        "first_sent": g.first_sent.map(|t| t.0),
        "last_sent": g.last_sent.map(|t| t.0),
        "next_at": millis(g.next_at),
        "escalated": g.escalated,
        "acknowledged": g.acknowledged.as_ref().map(|a| serde_json::json!({"at": a.at.0, "by": a.by})),
    })
}

fn outgoing_json(o: &Outgoing) -> serde_json::Map<String, serde_json::Value> {
    let value = serde_json::json!({
        "key": o.key,
        "channel": o.channel,
        "group": o.group,
        "rule": o.rule,
        "severity": severity_name(o.severity),
        "subject": o.subject,
        "alerts": o.alerts,
        "created_at": o.created_at.0,
    });
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// The notifier's state as the API's `GET /v1/notify/log` shows it: the
/// open alert groups (acknowledged or not), what waits in the outbox, the
/// last deliveries, the dead letters and the closed groups.
pub fn log_of(status: &rigmesh_notify::Status) -> serde_json::Value {
    let entry = |e: &rigmesh_notify::OutboxEntry, state: &str| {
        let mut map = outgoing_json(&e.outgoing);
        map.insert("status".into(), state.into());
        map.insert("attempts".into(), e.attempts.into());
        map.insert("next_at".into(), e.next_at.0.into());
        map.insert("last_error".into(), e.last_error.clone().into());
        serde_json::Value::Object(map)
    };
    let sent: Vec<serde_json::Value> = status
        .sent
        .iter()
        .map(|d| {
            let mut map = outgoing_json(&d.outgoing);
            map.insert("status".into(), "delivered".into());
            map.insert("attempts".into(), (d.attempts + 1).into());
            map.insert("delivered_at".into(), d.delivered_at.0.into());
            serde_json::Value::Object(map)
        })
        .collect();
    serde_json::json!({
        "groups": status.groups.iter().map(group_json).collect::<Vec<_>>(),
        "pending": status.pending.iter().map(|e| entry(e, "pending")).collect::<Vec<_>>(),
        "sent": sent,
        "dead": status.dead_letters.iter().map(|e| entry(e, "dead")).collect::<Vec<_>>(),
        "closed": status.history.iter().map(|c| {
            let mut g = group_json(&c.group);
            if let serde_json::Value::Object(map) = &mut g {
                map.insert("closed_at".into(), c.closed_at.0.into());
                map.insert("reason".into(), format!("{:?}", c.reason).to_lowercase().into());
            }
            g
        }).collect::<Vec<_>>(),
        "outbox_len": status.outbox_len,
        "dead_total": status.dead,
    })
}

/// Why a test message did not go out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TestError {
    /// No channel of that name.
    #[error("no channel {0:?} in the [notify] config")]
    Unknown(String),
    /// The channel failed.
    #[error("{0}")]
    Failed(String),
}

/// Hands the notifier every alert that arrives by gossip signed by a
/// member of the coordinator set `set` about `account`: a coordinator's
/// alert about this node's account reaches its user. An alert meant for
/// the operators is given this node's audience (`audience`), since its
/// subject is this node's own account. Ends when `stop` resolves or the
/// network stops.
pub fn watch_gossip(
    network: &NodeHandle,
    set: CoordinatorSet,
    account: PublicKey,
    audience: Audience,
    sink: AlertSink,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    // Subscribed here, so nothing accepted after this call is missed, and
    // the task holds no handle that would keep the network's channel open.
    let accepted = network.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            () = stop => {}
            () = forward(accepted, set, account, audience, sink) => {}
        }
    })
}

async fn forward(
    mut accepted: tokio::sync::broadcast::Receiver<crate::network::AcceptedMessage>,
    set: CoordinatorSet,
    account: PublicKey,
    audience: Audience,
    sink: AlertSink,
) {
    loop {
        let message = match accepted.recv().await {
            Ok(message) => message,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "notifier fell behind the accepted messages");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let WireMessage::Alert(alert) = &message.message else {
            continue;
        };
        if alert.body.about != Some(account) || !set.contains(&alert.signer) {
            continue;
        }
        let mut body = alert.body.clone();
        if body.audience == Audience::Operators {
            body.audience = audience;
        }
        sink.raise(&body);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use rigmesh_protocol::Keypair;

    fn signed(key: &Keypair, audience: Audience, about: PublicKey, rule: &str) -> WireMessage {
        WireMessage::Alert(
            Signed::sign(
                Alert {
                    version: PROTOCOL_VERSION,
                    issuer: key.public(),
                    severity: Severity::Warning,
                    audience,
                    rule: rule.into(),
                    about: Some(about),
                    subject: None,
                    message: format!("{rule} about {about}"),
                    created_at: UnixMillis::now(),
                },
                key,
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn only_coordinator_alerts_about_this_account_reach_its_notifier() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "k").unwrap();
        let config = NotifyConfig::from_toml(&format!(
            r#"
            [[channels]]
            name = "hook"
            type = "webhook"
            url = "http://127.0.0.1:9/unused"
            secret = {{ file = "{}" }}
            [[recipients]]
            name = "rig owner"
            audience = ["supplier"]
            channels = ["hook"]
            "#,
            secret.display()
        ))
        .unwrap();
        let me = Keypair::from_seed([1; 32]).public();
        let coordinator = Keypair::from_seed([2; 32]);
        let stranger = Keypair::from_seed([3; 32]);
        let set = CoordinatorSet::new(1, vec![coordinator.public()]).unwrap();
        let (handle, task) = rigmesh_notify::worker::start(
            config,
            rigmesh_ledger::MemoryStore::new(),
            me,
            SystemClock,
            NotifyMetrics::default(),
            std::future::pending(),
        )
        .unwrap();
        let (tx, rx) = tokio::sync::broadcast::channel(16);
        let watcher = tokio::spawn(forward(
            rx,
            set,
            me,
            Audience::Supplier,
            AlertSink::new(handle.clone()),
        ));
        let other = Keypair::from_seed([4; 32]).public();
        for message in [
            // Not from the coordinator set: ignored.
            signed(&stranger, Audience::Supplier, me, "spoofed.alert"),
            // About someone else: ignored.
            signed(&coordinator, Audience::Supplier, other, "other.alert"),
            // About this account, meant for the operators: this node's.
            signed(&coordinator, Audience::Operators, me, "reputation.low"),
        ] {
            tx.send(crate::network::AcceptedMessage {
                id: Id::ZERO,
                bytes: Vec::new(),
                message,
            })
            .unwrap();
        }
        drop(tx);
        watcher.await.unwrap();
        let status = handle.status().await.unwrap();
        let rules: Vec<&str> = status.groups.iter().map(|g| g.rule.as_str()).collect();
        assert_eq!(rules, ["reputation.low"]);
        assert_eq!(status.groups[0].recipient_name, "rig owner");
        drop(handle);
        task.await.unwrap();
    }

    #[test]
    fn channels_are_shown_without_their_secrets() {
        let config = NotifyConfig::from_toml(
            r#"
            [[channels]]
            name = "room"
            type = "slack"
            url = { env = "ROOM_URL" }
            [[channels]]
            name = "pager"
            type = "twilio"
            account_sid = "AC1"
            auth_token = { file = "/etc/rigmesh/twilio" }
            from = "+1555"
            to = ["+1666"]
            "#,
        )
        .unwrap();
        let views: Vec<ChannelView> = config
            .channels
            .iter()
            .map(|c| view_of(c, "config"))
            .collect();
        assert_eq!(views[0].target, "incoming webhook, URL from $ROOM_URL");
        assert_eq!(
            (views[0].kind.as_str(), views[0].medium.as_str()),
            ("slack", "im")
        );
        assert_eq!(views[1].target, "https://api.twilio.com to +1666");
        assert_eq!(views[1].medium, "sms");
    }
}
