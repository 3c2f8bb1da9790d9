//! The rigmesh node: the libp2p swarm and the ingest of signed gossip, the
//! supplier, customer and coordinator roles built on it, the node's local
//! APIs, GPU telemetry, and the wiring of notifications that carry alerts
//! to people. `cli/` is a thin front over this crate.

#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod config;
pub mod coordinator;
pub mod customer;
pub mod error;
pub mod keyfile;
mod market_store;
pub mod network;
pub mod node;
pub mod notify;
pub mod orderbook;
pub mod process_metrics;
pub mod quorum;
pub mod receipts;
pub mod review;
pub mod stalls;
pub mod supplier;
pub mod telemetry;
pub mod trends;
