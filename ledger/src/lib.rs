//! The rigmesh ledger: what a node has seen and the books a coordinator
//! keeps. It knows the protocol's types and nothing of networking.
//!
//! - [`store`]: the key-value seam ([`Store`]) over sled or memory;
//!   [`columns`] types every tree, key and value on top of it.
//! - [`Ledger`]: typed, atomic, audited access: the order book
//!   ([`offers`]), signed evidence ([`messages`]), double-entry books
//!   ([`accounts`], [`books`]) with the payout math in [`billing`], the
//!   audit chain ([`audit`]), outbox, peer scores and rollups
//!   ([`notices`]). Its documentation states what is durable when a call
//!   returns.
//! - [`schema`] and [`migrations`]: the version check at open.
//! - [`market`]: the node's gossip message store.
//! - [`integrity`]: a coordinator's standing check of its books and audit
//!   chain, in rounds whose work does not grow with the history.
//!
//! Durability, in one sentence: a write method of a [`Ledger`] opened with
//! [`Durability::Flushed`] (the default) returns only after its one atomic
//! batch, audit record included, is flushed to disk, so anything it
//! acknowledged survives `kill -9`; with [`Durability::Buffered`] sled
//! flushes in the background and a crash can lose the latest calls, each
//! whole. `tests/crash.rs` kills a writer 24 times to check the first rule.

#![warn(missing_docs)]

pub mod accounts;
pub mod audit;
pub mod billing;
pub mod books;
pub mod certified;
pub mod codec;
pub mod columns;
pub mod coordinator;
pub mod disputes;
pub mod error;
pub mod integrity;
pub mod keys;
mod ledger;
pub mod market;
pub mod messages;
pub mod migrations;
pub mod notices;
pub mod offers;
pub mod reputation;
pub mod review;
pub mod schema;
pub mod store;

pub use accounts::{Account, JournalEntry, Leg, Movement};
pub use audit::{AuditReport, BrokenLink};
pub use billing::{FeeRate, Payout};
pub use books::{BooksReport, EscrowLock, LeaseBook, SettleTerms, Totals};
pub use certified::{Applied, ClosedCompaction, Debit, DebitTarget, Lock, Settlement};
pub use coordinator::{
    termination_point, Coordinator, CoordinatorConfig, Decided, Refusal, ReleaseEvidence,
    ReviewRules, SettlementEvidence, WindowStatus, HELD_FOR_REVIEW, REFERENCE_USED,
};
pub use disputes::{DisputeCase, DisputeRecord};
pub use error::{Error, Result};
pub use integrity::IntegrityCheck;
pub use ledger::{
    Cause, Durability, FlushObserver, GroupCommitStats, GroupFlush, Ledger, MAX_PAGE,
};
pub use market::{
    BanRecord, CaseEvidence, CertificatesKept, EvidenceGrace, MarketPage, MarketRecord,
    MarketStore, OffenceRecord, OfferKey, WindowEvidence,
};
pub use messages::{CertificateKind, PutOutcome};
pub use notices::{Notification, PeerScore, Rollup};
pub use offers::{OfferOutcome, OfferQuery};
pub use review::{destination_key, reference_key, HeldMessage, Hold};
pub use store::{Batch, MemoryStore, SledStore, Store};
