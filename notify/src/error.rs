//! The notification crate's one error type: each refusal names what was
//! wrong, so the node can match on it and report it.

/// Result with the notification [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong while routing, queueing or delivering a notification.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The outbox's store failed or holds bytes it cannot read.
    #[error("notification store: {0}")]
    Store(#[from] rigmesh_ledger::Error),
    /// The configuration is invalid.
    #[error("notification config: {0}")]
    Config(String),
    /// A secret could not be read from its file or environment variable.
    /// The reason never contains the secret itself.
    #[error("secret {name}: {reason}")]
    Secret {
        /// Where the secret should have come from.
        name: String,
        /// Why it could not be read.
        reason: String,
    },
    /// A bounded queue or table is full; the item was not added.
    #[error("{what} is full ({max} entries)")]
    Full {
        /// What is full.
        what: &'static str,
        /// Its bound.
        max: usize,
    },
    /// One delivery attempt failed.
    #[error("{channel}: {reason}")]
    Delivery {
        /// The channel's name.
        channel: String,
        /// What the far end or the connection said.
        reason: String,
        /// True when retrying cannot help (a rejected address, a 4xx
        /// other than 408 and 429): the notification goes straight to the
        /// dead letters.
        permanent: bool,
    },
    /// No channel of that name is configured.
    #[error("no channel named {0:?}")]
    UnknownChannel(String),
    /// No group with that id is waiting or firing.
    #[error("no alert group {0}")]
    UnknownGroup(String),
    /// An acknowledgement carried a token that does not match the group.
    #[error("acknowledgement token for group {0} does not match")]
    BadToken(String),
    /// The delivery worker has stopped.
    #[error("the notification worker has stopped")]
    Stopped,
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

impl Error {
    /// A transient delivery failure of `channel`.
    pub(crate) fn transient(channel: &str, reason: impl Into<String>) -> Self {
        Error::Delivery {
            channel: channel.to_owned(),
            reason: reason.into(),
            permanent: false,
        }
    }

    /// A delivery failure of `channel` that retrying cannot fix.
    pub(crate) fn permanent(channel: &str, reason: impl Into<String>) -> Self {
        Error::Delivery {
            channel: channel.to_owned(),
            reason: reason.into(),
            permanent: true,
        }
    }

    /// True for a delivery failure that retrying cannot fix, or a message
    /// for a channel no longer configured.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::Delivery {
                permanent: true,
                ..
            } | Error::UnknownChannel(_)
        )
    }
}
