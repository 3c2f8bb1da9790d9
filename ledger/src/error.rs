//! The ledger's error type.

/// Result with the ledger [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong in the ledger.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage engine failed (I/O, corruption it detected).
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    /// Bytes read from disk are not what was written there.
    #[error("corrupt {what} in the ledger")]
    Corrupt {
        /// What was being read.
        what: &'static str,
    },
}
