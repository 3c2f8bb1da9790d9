//! The customer role's logic: the order book that picks offers (and says
//! in numbers why nothing matched), standing bids that wait for an offer,
//! the watch that checks each usage attestation of a lease and answers it
//! with a signed ack or dispute, and the budget that raises alerts and
//! ends leases at the cap, for each lease and for the account. Everything
//! but [`runtime`], [`inflight`] (the bid being agreed, in its own task,
//! and those queued behind it) and `chores` (terminations and escrow
//! releases, each in its own task) is deterministic given its inputs
//! (time is passed in, nothing touches the network), so the rules are
//! tested directly on protocol messages; [`records`] keeps what must
//! survive a restart, and [`commands`] and [`report`] are what the local
//! API sends and reads.

pub mod book;
pub mod budget;
mod chores;
pub mod commands;
pub mod escrow;
pub mod inflight;
pub mod records;
pub mod release;
pub mod report;
pub mod reputation;
pub mod runtime;
pub mod spending;
pub mod standing;
pub mod usage;

pub use book::{
    best_offers, explain_no_match, meets, unreported, BookQuery, NoMatch, DEFAULT_REPUTATION_BP,
    FULL_REPUTATION_BP,
};
pub use budget::{Budget, BudgetTracker, BudgetUpdate, Decision};
pub use usage::{LeaseWatch, Verdict, KEPT_DISPUTES, REMEMBERED_WINDOWS};

use serde::{Deserialize, Serialize};

/// What a customer node's owner configures (`[customer]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CustomerConfig {
    /// How long a finally settled lease stays among the leases the node
    /// watches (`rigmesh leases`, ending and disputing it) before it is
    /// let go; its records still answer for it (the account and usage
    /// reports). 0 lets it go at the next pass, within seconds.
    pub keep_settled_secs: u64,
}

impl Default for CustomerConfig {
    fn default() -> Self {
        CustomerConfig {
            keep_settled_secs: 600,
        }
    }
}
