//! Field rules shared by several kinds, so each is written once.

use crate::error::{Error, Result};
use crate::kind::Kind;
use crate::money::Credits;
use crate::time::UnixMillis;

/// Most GPUs one offer, lease or attestation may cover.
pub const MAX_GPUS: u16 = 64;
/// Longest lease: one year.
pub const MAX_LEASE_HOURS: u32 = 24 * 366;
/// Longest metering window: one hour.
pub const MAX_WINDOW_SECS: u32 = 3600;
/// Largest GPU memory accepted, in MiB (16 TiB).
pub const MAX_GPU_MEMORY_MIB: u64 = 16 * 1024 * 1024;
/// Utilisation is in basis points: 10000 is 100 %.
pub const FULL_UTILISATION_BP: u16 = 10_000;

/// Printable text of at most `max` bytes (and at least one unless `may_be_empty`).
pub(crate) fn text(
    kind: Kind,
    field: &'static str,
    value: &str,
    max: usize,
    may_be_empty: bool,
) -> Result<()> {
    if value.is_empty() && !may_be_empty {
        return Err(Error::field(kind, field, "must not be empty"));
    }
    if value.len() > max {
        return Err(Error::field(
            kind,
            field,
            format!("{} bytes is over the limit of {max}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::field(kind, field, "contains control characters"));
    }
    if value.trim() != value {
        return Err(Error::field(
            kind,
            field,
            "has leading or trailing whitespace",
        ));
    }
    Ok(())
}

/// An amount strictly above zero.
pub(crate) fn positive(kind: Kind, field: &'static str, value: Credits) -> Result<()> {
    if value <= Credits::ZERO {
        return Err(Error::field(
            kind,
            field,
            format!("must be above zero, got {value}"),
        ));
    }
    Ok(())
}

/// An amount at or above zero.
pub(crate) fn non_negative(kind: Kind, field: &'static str, value: Credits) -> Result<()> {
    if value.is_negative() {
        return Err(Error::field(
            kind,
            field,
            format!("must not be negative, got {value}"),
        ));
    }
    Ok(())
}

/// An integer within `min..=max`.
pub(crate) fn range<N>(kind: Kind, field: &'static str, value: N, min: N, max: N) -> Result<()>
where
    N: PartialOrd + std::fmt::Display + Copy,
{
    if value < min || value > max {
        return Err(Error::field(
            kind,
            field,
            format!("{value} is outside {min}..={max}"),
        ));
    }
    Ok(())
}

/// `expires_at` after `created_at` and at most `max_ttl_ms` later.
pub(crate) fn lifetime(
    kind: Kind,
    created_at: UnixMillis,
    expires_at: UnixMillis,
    max_ttl_ms: u64,
) -> Result<()> {
    if expires_at <= created_at {
        return Err(Error::field(
            kind,
            "expires_at",
            format!("{expires_at} is not after created_at {created_at}"),
        ));
    }
    if expires_at.since(created_at) > max_ttl_ms {
        return Err(Error::field(
            kind,
            "expires_at",
            format!(
                "lifetime of {} ms is over the limit of {max_ttl_ms} ms",
                expires_at.since(created_at)
            ),
        ));
    }
    Ok(())
}

/// One hour in milliseconds.
pub(crate) const HOUR_MS: u64 = 3_600_000;
