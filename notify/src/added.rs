//! Channels added at run time (`rigmesh notify channels add`), next to
//! those of the config file. Each is kept in the notifier's store (tree
//! [`ADDED_CHANNELS`], the channel's settings as JSON, the same shape as
//! in the config), so it outlives a restart; [`merge`] puts them back into
//! the config before the notifier opens. Their secrets are named by file
//! or environment variable like any other and read when the channel is
//! built, never stored.

use serde::{Deserialize, Serialize};

use rigmesh_ledger::store::{Direction, KeyRange, Store};

use crate::config::{ChannelConfig, NotifyConfig};
use crate::error::{Error, Result};

/// The store tree of the channels added at run time, by name.
pub const ADDED_CHANNELS: &str = "notify.added_channels";
/// Most channels added at run time.
pub const MAX_ADDED: usize = 64;
/// Longest channel name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// A channel added at run time, and the recipients it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddedChannel {
    /// Its name and settings.
    pub channel: ChannelConfig,
    /// Recipients of the config that take it among their default channels.
    #[serde(default)]
    pub recipients: Vec<String>,
}

impl AddedChannel {
    /// Adds it to `config`: its channel, and its name to each of its
    /// recipients' channels. Refuses a name already defined (in the file or
    /// added before) and a recipient the config lacks.
    pub fn apply_to(&self, config: &mut NotifyConfig) -> Result<()> {
        let name = &self.channel.name;
        if name.is_empty()
            || name.len() > MAX_NAME_LEN
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(Error::Config(format!(
                "channel name {name:?}: use 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'"
            )));
        }
        if config.channels.iter().any(|c| &c.name == name) {
            return Err(Error::Config(format!("channel {name:?} already exists")));
        }
        for recipient in &self.recipients {
            if !config.recipients.iter().any(|r| &r.name == recipient) {
                return Err(Error::Config(format!(
                    "recipient {recipient:?} is not in the config"
                )));
            }
        }
        config.channels.push(self.channel.clone());
        for recipient in config
            .recipients
            .iter_mut()
            .filter(|r| self.recipients.contains(&r.name))
        {
            if !recipient.channels.contains(name) {
                recipient.channels.push(name.clone());
            }
        }
        Ok(())
    }
}

/// Takes channel `name` out of `config` and out of its recipients'
/// default channels. A route or escalation step that still names it makes
/// the result fail [`NotifyConfig::check`].
pub fn remove_from(config: &mut NotifyConfig, name: &str) {
    config.channels.retain(|c| c.name != name);
    for recipient in &mut config.recipients {
        recipient.channels.retain(|c| c != name);
    }
}

/// The channels added at run time and kept in `store`, by name.
pub fn load<S: Store + ?Sized>(store: &S) -> Result<Vec<AddedChannel>> {
    store
        .scan(ADDED_CHANNELS, KeyRange::all(), Direction::Forward)
        .map(|row| {
            let (_, value) = row?;
            serde_json::from_slice(&value).map_err(|e| {
                Error::Config(format!("a channel added at run time cannot be read: {e}"))
            })
        })
        .collect()
}

/// Keeps `added` in `store` (flushed).
pub fn save<S: Store + ?Sized>(store: &S, added: &AddedChannel) -> Result<()> {
    let value = serde_json::to_vec(added)
        .map_err(|e| Error::Config(format!("channel {:?}: {e}", added.channel.name)))?;
    store.put(ADDED_CHANNELS, added.channel.name.as_bytes(), &value)?;
    Ok(store.flush()?)
}

/// Forgets channel `name` in `store` (flushed); false if it was not
/// added at run time.
pub fn forget<S: Store + ?Sized>(store: &S, name: &str) -> Result<bool> {
    if store.get(ADDED_CHANNELS, name.as_bytes())?.is_none() {
        return Ok(false);
    }
    store.delete(ADDED_CHANNELS, name.as_bytes())?;
    store.flush()?;
    Ok(true)
}

/// `config` with the channels added at run time kept in `store`. One that
/// no longer fits (the file now defines its name, or lost its recipient)
/// is left out with a warning rather than stop the node.
pub fn merge<S: Store + ?Sized>(mut config: NotifyConfig, store: &S) -> Result<NotifyConfig> {
    for added in load(store)? {
        if let Err(e) = added.apply_to(&mut config) {
            tracing::warn!(channel = %added.channel.name, error = %e, "channel added at run time left out");
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use crate::config::{ChannelKind, SignedWebhookConfig};
    use crate::secret::SecretSource;

    fn hook(name: &str) -> AddedChannel {
        AddedChannel {
            channel: ChannelConfig {
                name: name.into(),
                kind: ChannelKind::Webhook(SignedWebhookConfig {
                    url: "http://127.0.0.1:9/hook".into(),
                    secret: SecretSource::Env("HOOK_SECRET".into()),
                }),
            },
            recipients: vec!["me".into()],
        }
    }

    fn config() -> NotifyConfig {
        NotifyConfig::from_toml(
            r#"
            [[channels]]
            name = "room"
            type = "slack"
            url = { env = "ROOM" }
            [[recipients]]
            name = "me"
            channels = ["room"]
            "#,
        )
        .unwrap()
    }

    #[test]
    fn added_channels_are_kept_merged_and_forgotten() {
        let store = rigmesh_ledger::MemoryStore::new();
        save(&store, &hook("pager")).unwrap();
        let merged = merge(config(), &store).unwrap();
        assert_eq!(merged.channels.len(), 2);
        assert_eq!(merged.recipients[0].channels, ["room", "pager"]);
        merged.check().unwrap();
        assert!(forget(&store, "pager").unwrap());
        assert!(!forget(&store, "pager").unwrap());
        assert_eq!(merge(config(), &store).unwrap(), config());
    }

    #[test]
    fn a_taken_name_a_bad_name_or_an_unknown_recipient_is_refused() {
        let mut config = config();
        for (added, reason) in [
            (hook("room"), "already exists"),
            (hook("a b"), "letters, digits"),
            (
                AddedChannel {
                    recipients: vec!["you".into()],
                    ..hook("pager")
                },
                "recipient \"you\"",
            ),
        ] {
            let err = added.apply_to(&mut config).unwrap_err().to_string();
            assert!(err.contains(reason), "{err}");
        }
        assert_eq!(config, self::config(), "nothing changed");
        let mut removed = config.clone();
        hook("pager").apply_to(&mut removed).unwrap();
        remove_from(&mut removed, "pager");
        assert_eq!(removed, config);
    }
}
