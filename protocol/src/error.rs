//! The one error type of the protocol crate: every way bytes or a message
//! can be invalid, each naming the kind and, where it applies, the field.

use crate::crypto::PublicKey;
use crate::kind::Kind;
use crate::time::UnixMillis;

/// Result with the protocol [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can be wrong with protocol input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input is larger than the maximum encoded size of its kind.
    #[error("{kind}: {size} bytes is over the limit of {max}")]
    TooLarge {
        /// Kind that was being decoded.
        kind: Kind,
        /// Size of the input.
        size: usize,
        /// Maximum encoded size of the kind.
        max: usize,
    },
    /// A complete message was decoded but bytes were left over.
    #[error("{kind}: {extra} trailing bytes after the message")]
    TrailingBytes {
        /// Kind that was being decoded.
        kind: Kind,
        /// Number of bytes left over.
        extra: usize,
    },
    /// The bytes are not a well-formed encoding of the kind.
    #[error("{kind}: malformed encoding: {reason}")]
    Malformed {
        /// Kind that was being decoded.
        kind: Kind,
        /// What the decoder found wrong.
        reason: String,
    },
    /// The value could not be encoded (a field over its own limit).
    #[error("{kind}: cannot encode: {reason}")]
    Encode {
        /// Kind that was being encoded.
        kind: Kind,
        /// What the encoder found wrong.
        reason: String,
    },
    /// A request-response or gossip frame is malformed or over its limit.
    #[error("{what}: {reason}")]
    Frame {
        /// Which frame (e.g. `sync response`).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An amount is not representable as credits.
    #[error("invalid amount: {0}")]
    Money(String),
    /// Bytes that should be a public key are not a usable ed25519 key.
    #[error("invalid public key {key}: {reason}")]
    InvalidKey {
        /// The key, in hex.
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Text that should be hex of a fixed length is not.
    #[error("invalid hex for {what}: {reason}")]
    Hex {
        /// What was being parsed.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The signature does not verify for the kind's domain, signer and body.
    #[error("{kind}: signature by {signer} does not verify")]
    BadSignature {
        /// Kind of the signed message.
        kind: Kind,
        /// Claimed signer.
        signer: PublicKey,
    },
    /// The message was signed by someone other than the account it speaks for.
    #[error("{kind}: signed by {signer} but {field} is {expected}")]
    WrongSigner {
        /// Kind of the signed message.
        kind: Kind,
        /// Field naming the account that must sign.
        field: &'static str,
        /// The account the field names.
        expected: PublicKey,
        /// The key that actually signed.
        signer: PublicKey,
    },
    /// A message version this implementation does not speak.
    #[error("{kind}: unsupported version {found} (supported: {supported})")]
    UnsupportedVersion {
        /// Kind of the message.
        kind: Kind,
        /// Version found in the message.
        found: u16,
        /// Version this implementation speaks.
        supported: u16,
    },
    /// A field is outside its allowed range or shape.
    #[error("{kind}.{field}: {reason}")]
    Field {
        /// Kind of the message.
        kind: Kind,
        /// Name of the field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A timestamp lies further in the future than the allowed clock skew.
    #[error("{kind}.{field}: {at} is in the future (now {now}, skew {skew_ms} ms)")]
    FromTheFuture {
        /// Kind of the message.
        kind: Kind,
        /// Name of the timestamp field.
        field: &'static str,
        /// The timestamp.
        at: UnixMillis,
        /// The validator's clock.
        now: UnixMillis,
        /// Allowed clock skew.
        skew_ms: u64,
    },
    /// The message expired (beyond the allowed clock skew).
    #[error("{kind}: expired at {expires_at} (now {now})")]
    Expired {
        /// Kind of the message.
        kind: Kind,
        /// Its `expires_at`.
        expires_at: UnixMillis,
        /// The validator's clock.
        now: UnixMillis,
    },
    /// A certificate or vote names an epoch other than the coordinator set's.
    #[error("{kind}: epoch {found}, but the coordinator set is epoch {expected}")]
    WrongEpoch {
        /// Kind of the message.
        kind: Kind,
        /// Epoch of the coordinator set used to check it.
        expected: u64,
        /// Epoch in the message.
        found: u64,
    },
    /// A vote signer is not a coordinator of the epoch.
    #[error("{kind}: signer {signer} is not a coordinator of epoch {epoch}")]
    UnknownSigner {
        /// Kind of the message.
        kind: Kind,
        /// The signer.
        signer: PublicKey,
        /// The epoch checked against.
        epoch: u64,
    },
    /// The same coordinator appears twice in a certificate.
    #[error("{kind}: coordinator {signer} signed more than once")]
    DuplicateSigner {
        /// Kind of the message.
        kind: Kind,
        /// The repeated signer.
        signer: PublicKey,
    },
    /// Fewer distinct coordinator votes than the quorum.
    #[error("{kind}: {have} votes, quorum is {need}")]
    TooFewVotes {
        /// Kind of the message.
        kind: Kind,
        /// Distinct valid votes present.
        have: usize,
        /// Quorum of the epoch (2f+1).
        need: usize,
    },
    /// A coordinator set that cannot form quorums.
    #[error("invalid coordinator set: {0}")]
    CoordinatorSet(String),
}

impl Error {
    /// A stable, snake_case name of the variant, for logs, metrics labels
    /// and the expected errors in `specs/vectors/invalid.json`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::TooLarge { .. } => "too_large",
            Error::TrailingBytes { .. } => "trailing_bytes",
            Error::Malformed { .. } => "malformed",
            Error::Encode { .. } => "encode",
            Error::Frame { .. } => "frame",
            Error::Money(_) => "money",
            Error::InvalidKey { .. } => "invalid_key",
            Error::Hex { .. } => "hex",
            Error::BadSignature { .. } => "bad_signature",
            Error::WrongSigner { .. } => "wrong_signer",
            Error::UnsupportedVersion { .. } => "unsupported_version",
            Error::Field { .. } => "field",
            Error::FromTheFuture { .. } => "from_the_future",
            Error::Expired { .. } => "expired",
            Error::WrongEpoch { .. } => "wrong_epoch",
            Error::UnknownSigner { .. } => "unknown_signer",
            Error::DuplicateSigner { .. } => "duplicate_signer",
            Error::TooFewVotes { .. } => "too_few_votes",
            Error::CoordinatorSet(_) => "coordinator_set",
        }
    }

    /// Shorthand for a [`Error::Field`] error.
    pub fn field(kind: Kind, field: &'static str, reason: impl Into<String>) -> Self {
        Error::Field {
            kind,
            field,
            reason: reason.into(),
        }
    }
}
