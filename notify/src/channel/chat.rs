//! Chat rooms: Slack and Discord incoming webhooks (the URL is the
//! credential) and the Telegram Bot API (`POST {api}/bot{token}/sendMessage`).
//! Each request is JSON and carries the notification's `Idempotency-Key`.

use serde_json::json;
use ureq::Agent;

use super::http;
use crate::config::{IncomingWebhookConfig, TelegramConfig};
use crate::error::Result;
use crate::message::{truncate, Outgoing};
use crate::secret::Secret;

/// Longest Slack message text sent; Slack truncates past 40,000.
const SLACK_MAX_TEXT: usize = 39_000;
/// Discord refuses message content over 2,000 characters.
const DISCORD_MAX_CONTENT: usize = 2_000;
/// Telegram refuses message text over 4,096 characters.
const TELEGRAM_MAX_TEXT: usize = 4_096;

/// A Slack incoming webhook.
#[derive(Debug)]
pub struct SlackChannel {
    url: Secret,
    agent: Agent,
}

impl SlackChannel {
    pub(crate) fn new(config: &IncomingWebhookConfig, agent: Agent) -> Result<Self> {
        Ok(SlackChannel {
            url: config.url.load()?,
            agent,
        })
    }

    pub(crate) fn send(&self, name: &str, message: &Outgoing) -> Result<()> {
        let body = json!({ "text": truncate(&message.text(), SLACK_MAX_TEXT) });
        http::check(
            name,
            self.agent
                .post(self.url.expose())
                .header("Idempotency-Key", &message.key)
                .send_json(&body),
        )
    }
}

/// A Discord incoming webhook.
#[derive(Debug)]
pub struct DiscordChannel {
    url: Secret,
    agent: Agent,
}

impl DiscordChannel {
    pub(crate) fn new(config: &IncomingWebhookConfig, agent: Agent) -> Result<Self> {
        Ok(DiscordChannel {
            url: config.url.load()?,
            agent,
        })
    }

    pub(crate) fn send(&self, name: &str, message: &Outgoing) -> Result<()> {
        // No pings: alert text quoting a user name must not mention anyone.
        let body = json!({
            "content": truncate(&message.text(), DISCORD_MAX_CONTENT),
            "allowed_mentions": { "parse": [] },
        });
        http::check(
            name,
            self.agent
                .post(self.url.expose())
                .header("Idempotency-Key", &message.key)
                .send_json(&body),
        )
    }
}

/// A Telegram bot writing to one chat.
#[derive(Debug)]
pub struct TelegramChannel {
    /// The whole `sendMessage` URL, which embeds the bot token.
    url: Secret,
    chat_id: String,
    agent: Agent,
}

impl TelegramChannel {
    pub(crate) fn new(config: &TelegramConfig, agent: Agent) -> Result<Self> {
        let token = config.token.load()?;
        let url = Secret::new(format!(
            "{}/bot{}/sendMessage",
            config.api_base.trim_end_matches('/'),
            token.expose()
        ));
        Ok(TelegramChannel {
            url,
            chat_id: config.chat_id.clone(),
            agent,
        })
    }

    pub(crate) fn send(&self, name: &str, message: &Outgoing) -> Result<()> {
        let body = json!({
            "chat_id": self.chat_id,
            "text": truncate(&message.text(), TELEGRAM_MAX_TEXT),
            "disable_web_page_preview": true,
        });
        http::check(
            name,
            self.agent
                .post(self.url.expose())
                .header("Idempotency-Key", &message.key)
                .send_json(&body),
        )
    }
}
