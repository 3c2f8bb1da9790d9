//! rigmesh notifications: alerts raised by a node become messages on the
//! channels their recipients chose, without floods, without losses and
//! without duplicates a receiver cannot recognise.
//!
//! - [`config`]: the TOML shape: channels, recipients, routes, quiet hours,
//!   escalation, inhibition, limits; [`secret`] keeps credentials out of
//!   the config and the logs.
//! - [`routing`]: who gets an alert and on which channels.
//! - [`notifier`] with [`group`] and [`silence`]: grouping with a first
//!   wait, group interval and repeat interval; digests; inhibition;
//!   silences; quiet hours; acknowledgement and escalation. Time is an
//!   argument, so these rules are tested without sleeping.
//! - [`outbox`]: the persistent queue of rendered messages ([`message`]),
//!   with retries, backoff with jitter, dead letters and bounds.
//! - [`channel`]: SMTP, Slack, Discord, Telegram, a signed JSON webhook,
//!   Twilio and a generic SMS gateway.
//! - [`added`]: channels added at run time, kept in the store next to
//!   those of the config.
//! - [`worker`]: the tokio task that runs it all, driven by a [`clock`];
//!   [`metrics`] for Prometheus.
//!
//! It depends on the protocol (the `Alert` type) and the ledger's storage
//! seam, and on nothing of the network: the node wires it in, roughly so:
//!
//! ```no_run
//! # async fn example(alert: rigmesh_protocol::Alert) -> rigmesh_notify::Result<()> {
//! use rigmesh_notify::{NotifyConfig, NotifyMetrics, SystemClock};
//!
//! let config = NotifyConfig::from_toml(&std::fs::read_to_string("notify.toml").unwrap_or_default())?;
//! let store = rigmesh_ledger::SledStore::open(std::path::Path::new("data/notify"))?;
//! let node_account = rigmesh_protocol::PublicKey([0; 32]);
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let (notify, task) = rigmesh_notify::worker::start(
//!     config,
//!     store,
//!     node_account,
//!     SystemClock,
//!     NotifyMetrics::default(),
//!     async move {
//!         let _ = stopped.await;
//!     },
//! )?;
//! notify.raise(alert).await?;
//! let _ = stop.send(());
//! let _ = task.await;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod added;
pub mod channel;
pub mod clock;
pub mod config;
pub mod error;
pub mod group;
pub mod message;
pub mod metrics;
pub mod notifier;
pub mod outbox;
pub mod routing;
pub mod secret;
pub mod silence;
pub mod worker;

pub use added::AddedChannel;
pub use channel::{Channel, Channels};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::NotifyConfig;
pub use error::{Error, Result};
pub use message::Outgoing;
pub use metrics::NotifyMetrics;
pub use notifier::{CloseReason, ClosedGroup, Notifier, Raised, Tick};
pub use outbox::{Outbox, OutboxEntry};
pub use silence::Silence;
pub use worker::{spawn, NotifyHandle, Status};
