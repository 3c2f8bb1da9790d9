//! The crate's one error type.

/// What can go wrong reading data or forecasting it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A time field is in neither accepted format.
    #[error("{0:?} is not a time (expected YYYY-MM-DD HH:MM:SS or RFC 3339)")]
    Timestamp(String),
    /// The CSV header lacks a column that was asked for.
    #[error("no column {name:?} in the CSV header (columns: {found})")]
    MissingColumn {
        /// The column asked for.
        name: String,
        /// The header's columns, comma-separated.
        found: String,
    },
    /// A field did not parse.
    #[error("line {line}, column {column:?}: {text:?} is not {expected}")]
    BadField {
        /// Line in the file (1 is the header).
        line: u64,
        /// The column's name.
        column: String,
        /// The field as written.
        text: String,
        /// What was expected there.
        expected: &'static str,
    },
    /// The CSV itself is malformed (ragged rows, bad quoting, I/O).
    #[error("reading the CSV: {0}")]
    Csv(String),
    /// No observations at all.
    #[error("the data has no observations")]
    Empty,
    /// More hours than a series may hold.
    #[error("the data spans {hours} hours, more than the {max} a series may hold", max = crate::series::MAX_HOURS)]
    TooLong {
        /// Hours the data would span.
        hours: usize,
    },
    /// A value is NaN or infinite.
    #[error("a value is not a finite number")]
    NotFinite,
    /// A backtest or forecast was asked for a zero horizon.
    #[error("the horizon must be at least one hour")]
    ZeroHorizon,
    /// A horizon longer than any series.
    #[error("a horizon of {0} hours is longer than a series may be")]
    HorizonTooLong(usize),
    /// The test range holds no hour with data to score.
    #[error("the test range {from} to {to} has no observed hour to score")]
    EmptyRange {
        /// First hour of the range.
        from: crate::Hour,
        /// Last hour of the range.
        to: crate::Hour,
    },
    /// The test range leaves no history before it to learn from.
    #[error("no data before {0}: a backtest needs history before its test range")]
    NoHistory(crate::Hour),
    /// A model library failed; the caller may fall back to a baseline.
    #[error("{method} failed: {reason}")]
    Model {
        /// The method that failed.
        method: &'static str,
        /// Its error.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
