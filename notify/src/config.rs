//! The notification config, read from TOML (the `[notify]` part of a node's
//! config, or a file of its own): channels, recipients with their routes,
//! quiet hours and escalation, inhibition rules, and the limits of grouping
//! and of the outbox. Every field has a default, so an empty file is valid
//! and notifies nobody.

use serde::{Deserialize, Serialize};

use rigmesh_protocol::{Audience, PublicKey, Severity};

use crate::error::{Error, Result};
use crate::secret::SecretSource;

/// Everything the notifier is told.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Retries, backoff and bounds of the delivery outbox.
    pub outbox: OutboxConfig,
    /// When grouped alerts go out.
    pub grouping: GroupingConfig,
    /// Base of acknowledgement links (`{ack_url}/{group}?token={token}`);
    /// none: messages carry the group id and token as text only.
    pub ack_url: Option<String>,
    /// Where messages can go.
    pub channels: Vec<ChannelConfig>,
    /// Who gets what.
    pub recipients: Vec<RecipientConfig>,
    /// Alerts that mute others while they fire.
    pub inhibit: Vec<InhibitRule>,
}

impl NotifyConfig {
    /// Parses and checks a TOML document.
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: NotifyConfig =
            toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    /// Checks names and references: channel names are unique and every
    /// channel a recipient names exists; limits are positive.
    pub fn check(&self) -> Result<()> {
        let mut names: Vec<&str> = Vec::new();
        for channel in &self.channels {
            if channel.name.is_empty() {
                return Err(Error::Config("a channel has an empty name".into()));
            }
            if names.contains(&channel.name.as_str()) {
                return Err(Error::Config(format!(
                    "channel {:?} is defined twice",
                    channel.name
                )));
            }
            names.push(&channel.name);
        }
        for recipient in &self.recipients {
            let referenced = recipient
                .channels
                .iter()
                .chain(recipient.routes.iter().flat_map(|r| r.channels.iter()))
                .chain(recipient.escalation.iter().flat_map(|s| s.channels.iter()));
            for name in referenced {
                if !names.contains(&name.as_str()) {
                    return Err(Error::Config(format!(
                        "recipient {:?} names channel {name:?}, which is not defined",
                        recipient.name
                    )));
                }
            }
            for account in &recipient.accounts {
                account
                    .parse::<PublicKey>()
                    .map_err(|e| Error::Config(format!("recipient {:?}: {e}", recipient.name)))?;
            }
            if let Some(quiet) = &recipient.quiet_hours {
                quiet.window()?;
            }
        }
        let limits = [
            ("outbox.max_entries", self.outbox.max_entries as u64),
            ("outbox.max_attempts", u64::from(self.outbox.max_attempts)),
            ("outbox.max_in_flight", self.outbox.max_in_flight as u64),
            ("outbox.backoff_base_ms", self.outbox.backoff_base_ms),
            ("outbox.poll_ms", self.outbox.poll_ms),
            ("grouping.max_groups", self.grouping.max_groups as u64),
            ("grouping.max_alerts", self.grouping.max_alerts as u64),
            (
                "grouping.group_interval_ms",
                self.grouping.group_interval_ms,
            ),
            (
                "grouping.digest_interval_ms",
                self.grouping.digest_interval_ms,
            ),
        ];
        for (name, value) in limits {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be positive")));
            }
        }
        Ok(())
    }
}

/// Retries and bounds of the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Most notifications waiting at once; a digest that would exceed it
    /// is refused (and counted) rather than grow the queue.
    pub max_entries: usize,
    /// Attempts before a notification becomes a dead letter.
    pub max_attempts: u32,
    /// Wait after the first failure; doubles with each further one.
    pub backoff_base_ms: u64,
    /// Longest wait between two attempts.
    pub backoff_max_ms: u64,
    /// Dead letters kept for inspection; the oldest go first.
    pub max_dead: usize,
    /// Deliveries in progress at once.
    pub max_in_flight: usize,
    /// Longest the worker sleeps before looking at the clock again.
    pub poll_ms: u64,
    /// Limit on one delivery attempt (connect, send, answer).
    pub timeout_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_entries: 10_000,
            max_attempts: 8,
            backoff_base_ms: 5_000,
            backoff_max_ms: 15 * 60_000,
            max_dead: 1_000,
            max_in_flight: 8,
            poll_ms: 1_000,
            timeout_ms: 10_000,
        }
    }
}

/// When grouped alerts go out, in the manner of Prometheus Alertmanager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupingConfig {
    /// Wait after a group's first alert, so related alerts arriving
    /// together go out as one message.
    pub group_wait_ms: u64,
    /// Least time between two messages of a group that has new alerts.
    pub group_interval_ms: u64,
    /// A group still firing, with nothing new, is sent again after this.
    pub repeat_interval_ms: u64,
    /// An unacknowledged critical group is sent again after this.
    pub critical_repeat_ms: u64,
    /// Info alerts are collected this long and sent as one digest.
    pub digest_interval_ms: u64,
    /// What alerts of a group share (besides recipient and severity).
    pub group_by: Vec<AlertField>,
    /// Most groups at once; alerts beyond go to one overflow group per
    /// recipient and severity.
    pub max_groups: usize,
    /// Most alerts tracked one by one; further alerts are only counted in
    /// their group's digest.
    pub max_alerts: usize,
    /// Alerts listed in a digest; the rest are summed up in one line.
    pub digest_lines: usize,
}

impl Default for GroupingConfig {
    fn default() -> Self {
        GroupingConfig {
            group_wait_ms: 30_000,
            group_interval_ms: 5 * 60_000,
            repeat_interval_ms: 4 * 3_600_000,
            critical_repeat_ms: 5 * 60_000,
            digest_interval_ms: 3_600_000,
            group_by: vec![AlertField::Rule],
            max_groups: 1_024,
            max_alerts: 16_384,
            digest_lines: 20,
        }
    }
}

/// A field of an alert, for grouping and inhibition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertField {
    /// The rule that raised it.
    Rule,
    /// The node that raised it.
    Issuer,
    /// The account it concerns.
    About,
    /// The message (lease, offer) it concerns.
    Subject,
}

/// One channel: a name recipients refer to, and how it delivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelConfig {
    /// Unique name.
    pub name: String,
    /// The transport and its settings.
    #[serde(flatten)]
    pub kind: ChannelKind,
}

/// How a channel delivers (`type = "..."` in TOML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelKind {
    /// Email over SMTP.
    Email(EmailConfig),
    /// A Slack incoming webhook.
    Slack(IncomingWebhookConfig),
    /// A Discord incoming webhook.
    Discord(IncomingWebhookConfig),
    /// The Telegram Bot API's `sendMessage`.
    Telegram(TelegramConfig),
    /// A JSON POST signed with HMAC-SHA256.
    Webhook(SignedWebhookConfig),
    /// SMS through a Twilio-compatible REST API.
    Twilio(TwilioConfig),
    /// SMS through a generic HTTP gateway.
    SmsGateway(SmsGatewayConfig),
}

/// Which kind of device a channel reaches; default routes are by medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Medium {
    /// A phone, by SMS.
    Sms,
    /// A chat room or an HTTP endpoint.
    Im,
    /// A mailbox.
    Email,
}

impl ChannelKind {
    /// The medium it reaches.
    pub fn medium(&self) -> Medium {
        match self {
            ChannelKind::Email(_) => Medium::Email,
            ChannelKind::Slack(_)
            | ChannelKind::Discord(_)
            | ChannelKind::Telegram(_)
            | ChannelKind::Webhook(_) => Medium::Im,
            ChannelKind::Twilio(_) | ChannelKind::SmsGateway(_) => Medium::Sms,
        }
    }
}

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (required), port 587.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS), port 465.
    Tls,
    /// No encryption: only for a relay on the same host (port 25).
    None,
}

/// An SMTP relay and the addresses it sends from and to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// Relay host name.
    pub server: String,
    /// Port; default by `security` (587, 465 or 25).
    pub port: Option<u16>,
    /// How the connection is secured.
    #[serde(default)]
    pub security: SmtpSecurity,
    /// Login, if the relay wants one.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<SecretSource>,
    /// A CA certificate (PEM) trusted for this relay besides the public
    /// roots, for a relay with a private CA.
    pub ca_file: Option<std::path::PathBuf>,
    /// Sender, e.g. `rigmesh <alerts@example.com>`.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
}

/// A Slack or Discord incoming webhook; its URL carries its credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncomingWebhookConfig {
    /// The webhook URL.
    pub url: SecretSource,
}

/// A Telegram bot and the chat it writes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// The bot token.
    pub token: SecretSource,
    /// The chat (a number, or `@channelname`).
    pub chat_id: String,
    /// API root.
    #[serde(default = "default_telegram_api")]
    pub api_base: String,
}

fn default_telegram_api() -> String {
    "https://api.telegram.org".into()
}

/// A generic JSON webhook; each request is signed (see
/// [`crate::channel::webhook`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedWebhookConfig {
    /// Where to POST.
    pub url: String,
    /// The HMAC-SHA256 key shared with the receiver.
    pub secret: SecretSource,
}

/// A Twilio-compatible SMS API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    /// API root.
    #[serde(default = "default_twilio_api")]
    pub api_base: String,
    /// Account SID (the basic-auth user).
    pub account_sid: String,
    /// Auth token (the basic-auth password).
    pub auth_token: SecretSource,
    /// Sending number.
    pub from: String,
    /// Receiving numbers.
    pub to: Vec<String>,
}

fn default_twilio_api() -> String {
    "https://api.twilio.com".into()
}

/// A generic HTTP SMS gateway: `POST url` with JSON `{"to", "message"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsGatewayConfig {
    /// Where to POST.
    pub url: String,
    /// Bearer token, if the gateway wants one.
    pub token: Option<SecretSource>,
    /// Receiving numbers.
    pub to: Vec<String>,
}

/// One person or team and what reaches them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientConfig {
    /// Name, shown in logs and group ids.
    pub name: String,
    /// Audiences whose alerts reach this recipient.
    #[serde(default = "default_audience")]
    pub audience: Vec<Audience>,
    /// For supplier and customer alerts: only those about these accounts
    /// (hex public keys); empty: all.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// Channels routed by default: critical to every medium, warning to IM
    /// and email, info to email as a digest.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Exceptions to the default, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Hours in which only critical alerts go out.
    pub quiet_hours: Option<QuietHours>,
    /// Steps taken while a critical alert stays unacknowledged.
    #[serde(default)]
    pub escalation: Vec<EscalationStep>,
}

fn default_audience() -> Vec<Audience> {
    vec![Audience::Operators]
}

/// Alerts matching `rules` and `severities` go to `channels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Rule-name prefixes (`gpu.` matches `gpu.dropped`); empty: any.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Severities; empty: any.
    #[serde(default)]
    pub severities: Vec<Severity>,
    /// Channels; empty mutes the matching alerts for this recipient.
    pub channels: Vec<String>,
}

impl RouteConfig {
    /// True when an alert of `rule` and `severity` takes this route.
    pub fn matches(&self, rule: &str, severity: Severity) -> bool {
        (self.rules.is_empty() || self.rules.iter().any(|p| rule.starts_with(p.as_str())))
            && (self.severities.is_empty() || self.severities.contains(&severity))
    }
}

/// A daily window, in a fixed offset from UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Start, `HH:MM`.
    pub start: String,
    /// End, `HH:MM`; before `start` means the window spans midnight.
    pub end: String,
    /// The recipient's offset from UTC, minutes.
    #[serde(default)]
    pub utc_offset_minutes: i32,
}

const MS_PER_MINUTE: u64 = 60_000;
const MINUTES_PER_DAY: i64 = 24 * 60;

impl QuietHours {
    fn minute_of(text: &str) -> Result<i64> {
        let bad = || Error::Config(format!("quiet hours: {text:?} is not HH:MM"));
        let (h, m) = text.split_once(':').ok_or_else(bad)?;
        let h: i64 = h.parse().map_err(|_| bad())?;
        let m: i64 = m.parse().map_err(|_| bad())?;
        if !(0..24).contains(&h) || !(0..60).contains(&m) {
            return Err(bad());
        }
        Ok(h * 60 + m)
    }

    /// Start and end as minutes of the day.
    pub fn window(&self) -> Result<(i64, i64)> {
        Ok((Self::minute_of(&self.start)?, Self::minute_of(&self.end)?))
    }

    /// When quiet hours that hold at `now` end; none if they do not hold.
    pub fn ends_after(
        &self,
        now: rigmesh_protocol::UnixMillis,
    ) -> Option<rigmesh_protocol::UnixMillis> {
        let (start, end) = self.window().ok()?;
        if start == end {
            return None;
        }
        let minutes = i64::try_from(now.0 / MS_PER_MINUTE).ok()?;
        let local = (minutes + i64::from(self.utc_offset_minutes)).rem_euclid(MINUTES_PER_DAY);
        let inside = if start < end {
            local >= start && local < end
        } else {
            local >= start || local < end
        };
        if !inside {
            return None;
        }
        let wait = (end - local).rem_euclid(MINUTES_PER_DAY);
        let wait_ms = u64::try_from(wait).ok()? * MS_PER_MINUTE;
        // Round down to the whole minute the window ends at.
        Some(rigmesh_protocol::UnixMillis(
            (now.0 - now.0 % MS_PER_MINUTE).saturating_add(wait_ms),
        ))
    }
}

/// After `after_ms` without acknowledgement, a critical group is also
/// sent to `channels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationStep {
    /// Wait from the group's first message.
    pub after_ms: u64,
    /// Channels added at this step.
    pub channels: Vec<String>,
}

/// While an alert matching `source_rules` fires, alerts matching
/// `target_rules` that agree with it on every field of `equal` are muted
/// (a coordinator that is down mutes the per-lease alerts it causes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitRule {
    /// Rule-name prefixes of the muting alerts.
    pub source_rules: Vec<String>,
    /// Rule-name prefixes of the muted alerts.
    pub target_rules: Vec<String>,
    /// Fields both must share.
    #[serde(default)]
    pub equal: Vec<AlertField>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigmesh_protocol::UnixMillis;

    #[test]
    fn the_documented_shape_parses() {
        let config = NotifyConfig::from_toml(
            r#"
            ack_url = "https://node.example/notify/ack"
            [grouping]
            group_wait_ms = 10000
            [[channels]]
            name = "ops-mail"
            type = "email"
            server = "smtp.example.com"
            username = "alerts"
            password = { env = "RIGMESH_SMTP_PASSWORD" }
            from = "rigmesh <alerts@example.com>"
            to = ["oncall@example.com"]
            [[channels]]
            name = "ops-slack"
            type = "slack"
            url = { file = "/etc/rigmesh/slack-url" }
            [[channels]]
            name = "ops-sms"
            type = "twilio"
            account_sid = "AC123"
            auth_token = { env = "TWILIO_TOKEN" }
            from = "+15550001"
            to = ["+15550002"]
            [[recipients]]
            name = "operators"
            channels = ["ops-mail", "ops-slack", "ops-sms"]
            quiet_hours = { start = "22:00", end = "07:00", utc_offset_minutes = 60 }
            escalation = [{ after_ms = 900000, channels = ["ops-sms"] }]
            [[recipients.routes]]
            rules = ["budget."]
            channels = ["ops-mail"]
            [[inhibit]]
            source_rules = ["coordinator.down"]
            target_rules = ["lease."]
            equal = ["issuer"]
            "#,
        )
        .unwrap();
        assert_eq!(config.grouping.group_wait_ms, 10_000);
        assert_eq!(config.grouping.group_interval_ms, 300_000);
        assert_eq!(config.channels.len(), 3);
        assert_eq!(config.channels[2].kind.medium(), Medium::Sms);
        let ChannelKind::Twilio(twilio) = &config.channels[2].kind else {
            panic!("not twilio");
        };
        assert_eq!(twilio.api_base, "https://api.twilio.com");
        assert_eq!(config.recipients[0].audience, vec![Audience::Operators]);
        assert!(config.recipients[0].routes[0].matches("budget.80", Severity::Info));
        assert!(!config.recipients[0].routes[0].matches("gpu.dropped", Severity::Info));
    }

    #[test]
    fn a_misspelt_channel_setting_is_refused() {
        let err = NotifyConfig::from_toml(
            r#"
            [[channels]]
            name = "chat"
            type = "slack"
            url = { env = "SLACK_URL" }
            channel = "ops-room"
            "#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("channel"), "{err}");
        let err = NotifyConfig::from_toml("[grouping]\ngroup_wiat_ms = 5\n").unwrap_err();
        assert!(err.to_string().contains("group_wiat_ms"), "{err}");
    }

    #[test]
    fn references_to_missing_channels_are_refused() {
        let err = NotifyConfig::from_toml(
            r#"
            [[recipients]]
            name = "ops"
            channels = ["nowhere"]
            "#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("nowhere"), "{err}");
    }

    #[test]
    fn quiet_hours_span_midnight_in_the_recipients_offset() {
        let quiet = QuietHours {
            start: "22:00".into(),
            end: "07:00".into(),
            utc_offset_minutes: 120,
        };
        let hour = 3_600_000;
        // 21:30 UTC is 23:30 local: quiet until 07:00 local, 05:00 UTC.
        let at = UnixMillis(21 * hour + hour / 2);
        assert_eq!(quiet.ends_after(at), Some(UnixMillis(29 * hour)));
        // 06:00 UTC is 08:00 local: not quiet.
        assert_eq!(quiet.ends_after(UnixMillis(6 * hour)), None);
        // 04:59 UTC is 06:59 local: quiet for one more minute.
        assert_eq!(
            quiet.ends_after(UnixMillis(4 * hour + 59 * 60_000)),
            Some(UnixMillis(5 * hour))
        );
    }
}
