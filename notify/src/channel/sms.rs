//! SMS: a Twilio-compatible REST API (`POST
//! {api}/2010-04-01/Accounts/{sid}/Messages.json`, form fields `To`,
//! `From`, `Body`, basic auth with the account SID and auth token) and a
//! generic gateway (`POST url`, JSON `{"to", "message"}`, optional bearer
//! token). One request per receiving number, each with its own
//! idempotency key derived from the notification's (`{key}-{index}`), sent
//! both as `Idempotency-Key` and as Twilio's `I-Twilio-Idempotency-Token`.

use base64::Engine;
use serde_json::json;
use ureq::Agent;

use super::http;
use crate::config::{SmsGatewayConfig, TwilioConfig};
use crate::error::Result;
use crate::message::{truncate, Outgoing};
use crate::secret::Secret;

/// Longest SMS text sent: two concatenated segments.
const MAX_SMS: usize = 306;

/// The idempotency key of the copy sent to the `index`th number.
fn key_for(message: &Outgoing, index: usize) -> String {
    format!("{}-{index}", message.key)
}

/// A Twilio-compatible messaging account.
#[derive(Debug)]
pub struct TwilioChannel {
    url: String,
    authorization: Secret,
    from: String,
    to: Vec<String>,
    agent: Agent,
}

impl TwilioChannel {
    pub(crate) fn new(config: &TwilioConfig, agent: Agent) -> Result<Self> {
        let token = config.auth_token.load()?;
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            config.account_sid,
            token.expose()
        ));
        Ok(TwilioChannel {
            url: format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                config.api_base.trim_end_matches('/'),
                config.account_sid
            ),
            authorization: Secret::new(format!("Basic {credentials}")),
            from: config.from.clone(),
            to: config.to.clone(),
            agent,
        })
    }

    pub(crate) fn send(&self, name: &str, message: &Outgoing) -> Result<()> {
        let text = truncate(&message.short_text(), MAX_SMS);
        for (index, to) in self.to.iter().enumerate() {
            let key = key_for(message, index);
            http::check(
                name,
                self.agent
                    .post(&self.url)
                    .header("Authorization", self.authorization.expose())
                    .header("Idempotency-Key", &key)
                    .header("I-Twilio-Idempotency-Token", &key)
                    .send_form([
                        ("To", to.as_str()),
                        ("From", self.from.as_str()),
                        ("Body", text.as_str()),
                    ]),
            )?;
        }
        Ok(())
    }
}

/// A generic HTTP SMS gateway.
#[derive(Debug)]
pub struct SmsGatewayChannel {
    url: String,
    authorization: Option<Secret>,
    to: Vec<String>,
    agent: Agent,
}

impl SmsGatewayChannel {
    pub(crate) fn new(config: &SmsGatewayConfig, agent: Agent) -> Result<Self> {
        let authorization = match &config.token {
            Some(source) => Some(Secret::new(format!("Bearer {}", source.load()?.expose()))),
            None => None,
        };
        Ok(SmsGatewayChannel {
            url: config.url.clone(),
            authorization,
            to: config.to.clone(),
            agent,
        })
    }

    pub(crate) fn send(&self, name: &str, message: &Outgoing) -> Result<()> {
        let text = truncate(&message.short_text(), MAX_SMS);
        for (index, to) in self.to.iter().enumerate() {
            let mut request = self
                .agent
                .post(&self.url)
                .header("Idempotency-Key", key_for(message, index));
            if let Some(authorization) = &self.authorization {
                request = request.header("Authorization", authorization.expose());
            }
            http::check(
                name,
                request.send_json(json!({ "to": to, "message": text })),
            )?;
        }
        Ok(())
    }
}
