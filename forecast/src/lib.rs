//! rigmesh forecasting: hourly series of demand, spend or prices, the
//! models and naive baselines that forecast them with 80 % prediction
//! intervals, and the rolling-origin backtest that both scores a model
//! honestly and picks one per series. It knows nothing of the network;
//! the node feeds it series and the CLI runs its backtest on any CSV.
//!
//! - [`clock`]: timestamps and the [`Hour`] a series is indexed by.
//! - [`table`]: reading a time and a number column out of a CSV.
//! - [`series`]: the bounded hourly [`Series`], gaps kept as gaps.
//! - [`method`]: the candidate models ([`Method`]) and their point forecasts.
//!   `regression` holds the one written here (a direct regression on levels).
//! - [`backtest`]: rolling origin, error metrics, choosing a model.
//! - [`forecast()`] and [`run_out`]: what later callers use.

#![warn(missing_docs)]

pub mod backtest;
pub mod clock;
mod error;
pub mod method;
pub mod plan;
mod regression;
pub mod series;
pub mod table;

pub use backtest::{backtest, BacktestOptions, BacktestReport, Metrics};
pub use clock::Hour;
pub use error::{Error, Result};
pub use method::Method;
pub use plan::{forecast, run_out, ForecastPoint, SeriesForecast};
pub use series::{Aggregation, Series};
