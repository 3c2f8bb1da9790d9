//! Who gets an alert and on which channels. A recipient takes alerts of
//! its audiences (for supplier and customer alerts, only about its own
//! accounts when it lists any); its routes pick channels by rule prefix and
//! severity, first match wins; without a matching route the defaults
//! apply: critical to every channel, warning to IM and email, info to
//! email (collected into a digest by the grouping).

use std::collections::BTreeMap;

use rigmesh_protocol::{Alert, Audience, PublicKey, Severity};

use crate::config::{ChannelConfig, Medium, RecipientConfig};
use crate::error::{Error, Result};

/// The recipients and the medium of each channel.
#[derive(Debug, Clone, Default)]
pub struct Router {
    recipients: Vec<Recipient>,
    media: BTreeMap<String, Medium>,
}

#[derive(Debug, Clone)]
struct Recipient {
    config: RecipientConfig,
    accounts: Vec<PublicKey>,
}

impl Router {
    /// A router over `recipients` and `channels`.
    pub fn new(recipients: &[RecipientConfig], channels: &[ChannelConfig]) -> Result<Self> {
        let recipients = recipients
            .iter()
            .map(|config| {
                let accounts = config
                    .accounts
                    .iter()
                    .map(|a| {
                        a.parse::<PublicKey>()
                            .map_err(|e| Error::Config(format!("recipient {:?}: {e}", config.name)))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Recipient {
                    config: config.clone(),
                    accounts,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let media = channels
            .iter()
            .map(|c| (c.name.clone(), c.kind.medium()))
            .collect();
        Ok(Router { recipients, media })
    }

    /// The recipient configs, in order.
    pub fn recipient(&self, index: usize) -> Option<&RecipientConfig> {
        self.recipients.get(index).map(|r| &r.config)
    }

    /// Indexes of the recipients `alert` is for.
    pub fn recipients_for(&self, alert: &Alert) -> Vec<usize> {
        self.recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.config.audience.contains(&alert.audience))
            .filter(|(_, r)| match alert.audience {
                Audience::Operators => true,
                Audience::Supplier | Audience::Customer => {
                    r.accounts.is_empty()
                        || alert.about.is_some_and(|about| r.accounts.contains(&about))
                }
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The channels of recipient `index` for an alert of `rule` and
    /// `severity`.
    pub fn channels_for(&self, index: usize, rule: &str, severity: Severity) -> Vec<String> {
        let Some(recipient) = self.recipients.get(index) else {
            return Vec::new();
        };
        if let Some(route) = recipient
            .config
            .routes
            .iter()
            .find(|r| r.matches(rule, severity))
        {
            return route.channels.clone();
        }
        recipient
            .config
            .channels
            .iter()
            .filter(|name| {
                let medium = self.media.get(name.as_str()).copied();
                match severity {
                    Severity::Critical => true,
                    Severity::Warning => matches!(medium, Some(Medium::Im | Medium::Email)),
                    Severity::Info => medium == Some(Medium::Email),
                }
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NotifyConfig;
    use rigmesh_protocol::UnixMillis;

    fn alert(audience: Audience, about: Option<PublicKey>, severity: Severity) -> Alert {
        Alert {
            version: 1,
            issuer: PublicKey([1; 32]),
            severity,
            audience,
            rule: "gpu.dropped".into(),
            about,
            subject: None,
            message: "gone".into(),
            created_at: UnixMillis(0),
        }
    }

    #[test]
    fn defaults_route_by_severity_and_routes_override_them() {
        let supplier = PublicKey([7; 32]);
        let config = NotifyConfig::from_toml(&format!(
            r#"
            [[channels]]
            name = "mail"
            type = "email"
            server = "localhost"
            from = "a@example.com"
            to = ["b@example.com"]
            [[channels]]
            name = "chat"
            type = "slack"
            url = {{ env = "X" }}
            [[channels]]
            name = "sms"
            type = "sms_gateway"
            url = "http://localhost/sms"
            to = ["+1555"]
            [[recipients]]
            name = "ops"
            channels = ["mail", "chat", "sms"]
            [[recipients.routes]]
            rules = ["budget."]
            channels = ["sms"]
            [[recipients]]
            name = "rig owner"
            audience = ["supplier"]
            accounts = ["{supplier}"]
            channels = ["mail"]
            "#
        ))
        .unwrap();
        let router = Router::new(&config.recipients, &config.channels).unwrap();
        assert_eq!(
            router.channels_for(0, "gpu.dropped", Severity::Critical),
            ["mail", "chat", "sms"]
        );
        assert_eq!(
            router.channels_for(0, "gpu.dropped", Severity::Warning),
            ["mail", "chat"]
        );
        assert_eq!(
            router.channels_for(0, "gpu.dropped", Severity::Info),
            ["mail"]
        );
        assert_eq!(router.channels_for(0, "budget.80", Severity::Info), ["sms"]);

        let ops = alert(Audience::Operators, None, Severity::Warning);
        assert_eq!(router.recipients_for(&ops), vec![0]);
        let mine = alert(Audience::Supplier, Some(supplier), Severity::Warning);
        assert_eq!(router.recipients_for(&mine), vec![1]);
        let other = alert(
            Audience::Supplier,
            Some(PublicKey([8; 32])),
            Severity::Warning,
        );
        assert!(router.recipients_for(&other).is_empty());
    }
}
