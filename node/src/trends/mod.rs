//! Trends: the hourly series a node keeps of its own money and of the
//! market, the forecasts made from them, and what the analytics API and
//! dashboard show of both.
//!
//! - [`book`]: the bounded hourly series on disk and the writer thread
//!   that feeds them;
//! - [`forecasts`]: forecasts with 80 % intervals from the forecast
//!   crate, computed off the executor and cached per hour;
//! - [`reports`]: a customer's spend and cap run-outs, a supplier's
//!   earnings, the market's prices and supply;
//! - [`sampler`]: the task that samples the market and a supplier's
//!   leases, and warns a customer ahead of its caps.

use serde::{Deserialize, Serialize};

pub mod book;
pub mod forecasts;
pub mod reports;
pub mod sampler;

pub use book::{SeriesBook, SeriesWriter, KEPT_HOURS};
pub use forecasts::{parse_horizon, Forecasts};

/// `[forecast]`: how often the node samples and how far ahead it warns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForecastConfig {
    /// Seconds between samples of the market and of a supplier's leases.
    pub sample_secs: u64,
    /// A customer is alerted (`forecast.cap`) when the spend forecast
    /// reaches a cap within this many hours; 0: never.
    pub alert_horizon_hours: u64,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        ForecastConfig {
            sample_secs: 60,
            alert_horizon_hours: 24,
        }
    }
}

/// The trends of a running node, for its analytics listener.
#[derive(Debug, Clone)]
pub struct Trends {
    /// The forecasts (and through them the series).
    pub forecasts: std::sync::Arc<Forecasts>,
}
