//! Time on the wire: unix milliseconds, and the clock-skew rule validators
//! apply to `created_at` and `expires_at`.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kind::Kind;

/// Milliseconds since the unix epoch (UTC).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Encode,
    Decode,
    Serialize,
    Deserialize,
)]
#[serde(transparent)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// The current wall-clock time; a clock before 1970 reads as zero.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        UnixMillis(ms)
    }

    /// This time plus `ms` milliseconds, saturating.
    pub const fn plus_ms(self, ms: u64) -> Self {
        UnixMillis(self.0.saturating_add(ms))
    }

    /// This time minus `ms` milliseconds, saturating at zero.
    pub const fn minus_ms(self, ms: u64) -> Self {
        UnixMillis(self.0.saturating_sub(ms))
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub const fn since(self, earlier: UnixMillis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

impl fmt::Debug for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Default clock skew tolerated between peers: 30 seconds.
pub const DEFAULT_CLOCK_SKEW_MS: u64 = 30_000;

/// The clock a validator checks time fields against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// The validator's current time.
    pub now: UnixMillis,
    /// How far a peer's clock may be ahead of or behind ours.
    pub skew_ms: u64,
}

impl Clock {
    /// The wall clock with the default skew.
    pub fn system() -> Self {
        Clock::at(UnixMillis::now())
    }

    /// A fixed time with the default skew (tests, replays).
    pub const fn at(now: UnixMillis) -> Self {
        Clock {
            now,
            skew_ms: DEFAULT_CLOCK_SKEW_MS,
        }
    }

    /// Checks the time rule of the protocol: `created_at` is not further in
    /// the future than the skew, and a message with `expires_at` is not past
    /// it by more than the skew.
    pub fn check(
        &self,
        kind: Kind,
        created_at: Option<UnixMillis>,
        expires_at: Option<UnixMillis>,
    ) -> Result<()> {
        if let Some(at) = created_at {
            if at > self.now.plus_ms(self.skew_ms) {
                return Err(Error::FromTheFuture {
                    kind,
                    field: "created_at",
                    at,
                    now: self.now,
                    skew_ms: self.skew_ms,
                });
            }
        }
        if let Some(expires_at) = expires_at {
            if expires_at.plus_ms(self.skew_ms) < self.now {
                return Err(Error::Expired {
                    kind,
                    expires_at,
                    now: self.now,
                });
            }
        }
        Ok(())
    }
}
