//! The message kinds of DESIGN section 4, grouped by the stage of a lease
//! they belong to.

pub mod lease;
pub mod market;
pub mod reputation;
pub mod settlement;
pub mod usage;
