//! The ledger's one error type. Every refusal names what was wrong so a
//! caller can match on it; a refused write has written nothing.

use rigmesh_protocol::Id;

use crate::accounts::Account;

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
    /// A stored record fails its checksum or does not decode.
    #[error("corrupt {what} in the ledger: {reason}")]
    Undecodable {
        /// What was being read.
        what: &'static str,
        /// What the reader found wrong.
        reason: String,
    },
    /// The store was written by a newer rigmesh than this one.
    #[error("ledger schema version {found} is newer than this binary supports ({supported}); upgrade rigmesh")]
    SchemaTooNew {
        /// The version on disk.
        found: u32,
        /// The newest version this binary knows.
        supported: u32,
    },
    /// The store has an old schema version no migration starts from.
    #[error("ledger schema version {found} has no migration path to {supported}")]
    NoMigration {
        /// The version on disk.
        found: u32,
        /// The version this binary wants.
        supported: u32,
    },
    /// An amount is negative, zero where it must be positive, over-precise
    /// or out of range.
    #[error("invalid amount: {0}")]
    Amount(String),
    /// Arithmetic on amounts or counters would overflow.
    #[error("overflow computing {0}")]
    Overflow(&'static str),
    /// A journal entry whose legs do not sum to zero, or that is otherwise
    /// malformed (no legs, a zero leg, an account twice).
    #[error("unbalanced or malformed journal entry {id}: {reason}")]
    Unbalanced {
        /// The entry's id.
        id: Id,
        /// What is wrong with it.
        reason: String,
    },
    /// A movement would take an account below zero.
    #[error("{account} holds {balance}, cannot take {needed}")]
    InsufficientFunds {
        /// The account.
        account: Account,
        /// Its balance before the movement.
        balance: rigmesh_protocol::Credits,
        /// What the movement takes from it.
        needed: rigmesh_protocol::Credits,
    },
    /// A journal entry with this id was already posted; applying is
    /// idempotent, so the caller may treat this as success.
    #[error("journal entry {0} is already posted")]
    AlreadyPosted(Id),
    /// A lease's books are not in the state the call needs.
    #[error("lease {lease}: {reason}")]
    Lease {
        /// The lease.
        lease: Id,
        /// Why the call does not fit.
        reason: String,
    },
    /// An input is over one of the ledger's bounds.
    #[error("{what} is over its limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// A message could not be encoded or decoded by the protocol codec.
    #[error("protocol: {0}")]
    Protocol(#[from] rigmesh_protocol::Error),
    /// The stored balances are not what the journal adds up to.
    #[error("books do not balance: {account} holds {stored} but the journal adds up to {journal} micro-credits")]
    BooksMismatch {
        /// The account.
        account: Account,
        /// Its stored balance.
        stored: rigmesh_protocol::Credits,
        /// What its journal legs sum to, in micro-credits.
        journal: i128,
    },
    /// A bounded queue is full; nothing was added.
    #[error("{what} is full ({max} entries)")]
    Full {
        /// Which queue.
        what: &'static str,
        /// Its capacity.
        max: usize,
    },
    /// An account appears where it has no business (an external leg in a
    /// transfer between users, a user paying itself).
    #[error("account {account} cannot take part in a {movement} entry")]
    WrongAccount {
        /// The account.
        account: Account,
        /// The movement it was put in.
        movement: &'static str,
    },
}

impl Error {
    /// Bytes that do not decode as what they should be.
    pub(crate) fn corrupt(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Undecodable {
            what,
            reason: reason.into(),
        }
    }

    /// A refusal about a lease.
    pub(crate) fn lease(lease: Id, reason: impl Into<String>) -> Self {
        Error::Lease {
            lease,
            reason: reason.into(),
        }
    }
}
