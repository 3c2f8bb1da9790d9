//! Channels: each turns an [`Outgoing`] into one request of its transport
//! and reports success or a [`crate::Error::Delivery`] that says whether a
//! retry can help. Sending blocks (SMTP through lettre, HTTP through ureq,
//! both over rustls), so the worker calls [`Channel::send`] inside
//! `spawn_blocking`.
//!
//! - [`email`]: SMTP with STARTTLS or TLS and login; `Message-ID` is the
//!   idempotency key.
//! - [`chat`]: Slack and Discord incoming webhooks, the Telegram Bot API.
//! - [`webhook`]: a generic JSON webhook signed with HMAC-SHA256 over a
//!   timestamp and the body.
//! - [`sms`]: a Twilio-compatible REST API and a generic HTTP gateway.
//!
//! Every HTTP request carries `Idempotency-Key`.

pub mod chat;
pub mod email;
mod http;
pub mod sms;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ChannelConfig, ChannelKind, Medium};
use crate::error::{Error, Result};
use crate::message::Outgoing;

/// A channel ready to send: its settings with secrets loaded.
#[derive(Debug)]
pub struct Channel {
    name: String,
    medium: Medium,
    transport: Transport,
}

#[derive(Debug)]
enum Transport {
    Email(email::EmailChannel),
    Slack(chat::SlackChannel),
    Discord(chat::DiscordChannel),
    Telegram(chat::TelegramChannel),
    Webhook(webhook::WebhookChannel),
    Twilio(sms::TwilioChannel),
    SmsGateway(sms::SmsGatewayChannel),
}

impl Channel {
    /// Builds a channel, reading its secrets; `timeout` bounds each attempt.
    pub fn build(config: &ChannelConfig, timeout: Duration) -> Result<Self> {
        let agent = || http::agent(timeout);
        let transport = match &config.kind {
            ChannelKind::Email(c) => Transport::Email(email::EmailChannel::new(c, timeout)?),
            ChannelKind::Slack(c) => Transport::Slack(chat::SlackChannel::new(c, agent())?),
            ChannelKind::Discord(c) => Transport::Discord(chat::DiscordChannel::new(c, agent())?),
            ChannelKind::Telegram(c) => {
                Transport::Telegram(chat::TelegramChannel::new(c, agent())?)
            }
            ChannelKind::Webhook(c) => {
                Transport::Webhook(webhook::WebhookChannel::new(c, agent())?)
            }
            ChannelKind::Twilio(c) => Transport::Twilio(sms::TwilioChannel::new(c, agent())?),
            ChannelKind::SmsGateway(c) => {
                Transport::SmsGateway(sms::SmsGatewayChannel::new(c, agent())?)
            }
        };
        Ok(Channel {
            name: config.name.clone(),
            medium: config.kind.medium(),
            transport,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The medium it reaches.
    pub fn medium(&self) -> Medium {
        self.medium
    }

    /// Delivers `message` once. Blocks for at most the channel's timeout.
    pub fn send(&self, message: &Outgoing) -> Result<()> {
        let name = &self.name;
        match &self.transport {
            Transport::Email(c) => c.send(name, message),
            Transport::Slack(c) => c.send(name, message),
            Transport::Discord(c) => c.send(name, message),
            Transport::Telegram(c) => c.send(name, message),
            Transport::Webhook(c) => c.send(name, message),
            Transport::Twilio(c) => c.send(name, message),
            Transport::SmsGateway(c) => c.send(name, message),
        }
    }
}

/// Every configured channel, by name. Each is shared, so a delivery in
/// progress keeps its channel while the set changes under it.
#[derive(Debug, Default)]
pub struct Channels {
    by_name: BTreeMap<String, Arc<Channel>>,
}

impl Channels {
    /// Builds every channel of `configs`.
    pub fn build(configs: &[ChannelConfig], timeout: Duration) -> Result<Self> {
        let mut by_name = BTreeMap::new();
        for config in configs {
            by_name.insert(
                config.name.clone(),
                Arc::new(Channel::build(config, timeout)?),
            );
        }
        Ok(Channels { by_name })
    }

    /// The channel named `name`.
    pub fn get(&self, name: &str) -> Result<&Channel> {
        self.by_name
            .get(name)
            .map(|c| c.as_ref())
            .ok_or_else(|| Error::UnknownChannel(name.to_owned()))
    }

    /// The channel named `name`, to use after letting go of the set.
    pub fn shared(&self, name: &str) -> Result<Arc<Channel>> {
        self.by_name
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownChannel(name.to_owned()))
    }

    /// Adds `channel`, replacing one of the same name.
    pub fn insert(&mut self, channel: Channel) {
        self.by_name.insert(channel.name.clone(), Arc::new(channel));
    }

    /// Removes the channel named `name`; false if there was none.
    pub fn remove(&mut self, name: &str) -> bool {
        self.by_name.remove(name).is_some()
    }
}
