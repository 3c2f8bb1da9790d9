//! The node's error type.

/// Result with the node [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong in a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A message or frame is invalid.
    #[error(transparent)]
    Protocol(#[from] rigmesh_protocol::Error),
    /// Configuration that cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The network refused or failed an operation.
    #[error("network: {0}")]
    Network(String),
    /// The ledger failed.
    #[error("ledger: {0}")]
    Store(String),
    /// A remote peer answered with a refusal.
    #[error("refused by peer: {0}")]
    Refused(String),
    /// The work asked for is under way for another caller; ask again.
    #[error("busy: {0}")]
    Busy(String),
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
}
