//! The customer role's logic: the order book that picks offers (and says
//! in numbers why nothing matched), the watch that checks each usage
//! attestation of a lease and answers it with a signed ack or dispute, and
//! the budget that raises alerts and ends leases at the cap. Everything here
//! is deterministic given its inputs (time is passed in, nothing touches
//! the network), so the rules are tested directly on protocol messages.

pub mod book;
pub mod budget;
pub mod escrow;
pub mod reputation;
pub mod runtime;
pub mod usage;

pub use book::{
    best_offers, explain_no_match, unreported, BookQuery, NoMatch, DEFAULT_REPUTATION_BP,
    FULL_REPUTATION_BP,
};
pub use budget::{Budget, BudgetTracker, BudgetUpdate, Decision};
pub use usage::{LeaseWatch, Verdict, KEPT_DISPUTES, REMEMBERED_WINDOWS};
