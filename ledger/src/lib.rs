//! The rigmesh ledger: what a node has seen and the books a coordinator
//! keeps, in sled. It knows the protocol's types and nothing of networking.

#![warn(missing_docs)]

pub mod error;
pub mod market;

pub use error::{Error, Result};
pub use market::{BanRecord, MarketPage, MarketRecord, MarketStore, OfferKey};
