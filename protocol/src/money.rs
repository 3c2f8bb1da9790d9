//! Money: the unit of account (`credits`) as an exact decimal with a fixed
//! number of places, its one canonical byte form, and the one rounding rule.
//!
//! Every amount on the wire is a whole number of micro-credits
//! (10^-6 credits) stored as a little-endian `i64`, so the same amount always
//! has the same bytes whatever scale the `Decimal` carried in memory.
//! Arithmetic happens on `Decimal` (exact); conversion back to `Credits`
//! either proves exactness ([`Credits::new`]) or applies the documented
//! rounding rule ([`Credits::round_charge`]), and nothing else rounds.

use std::fmt;
use std::str::FromStr;

use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Decimal places of the unit of account: one credit is 1,000,000 units.
pub const CREDIT_SCALE: u32 = 6;

/// Units (micro-credits) in one credit.
pub const UNITS_PER_CREDIT: i64 = 1_000_000;

/// An exact amount of credits with at most [`CREDIT_SCALE`] decimal places.
///
/// The value may be negative (journal legs are signed); message validation
/// decides where a negative amount is allowed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Credits(i64);

impl Credits {
    /// Zero credits.
    pub const ZERO: Credits = Credits(0);

    /// The largest representable amount (about 9.2 trillion credits).
    pub const MAX: Credits = Credits(i64::MAX);

    /// Converts an exact decimal; fails if it has more than
    /// [`CREDIT_SCALE`] significant decimal places or does not fit.
    pub fn new(value: Decimal) -> Result<Self> {
        let normalized = value.normalize();
        if normalized.scale() > CREDIT_SCALE {
            return Err(Error::Money(format!(
                "{value} has more than {CREDIT_SCALE} decimal places"
            )));
        }
        let units = normalized
            .checked_mul(Decimal::from(UNITS_PER_CREDIT))
            .and_then(|u| u.to_i64())
            .ok_or_else(|| Error::Money(format!("{value} is out of range")))?;
        Ok(Credits(units))
    }

    /// The one rounding rule of rigmesh: an exact charge is rounded toward
    /// zero to a whole micro-credit, so a customer is never charged for a
    /// fraction the supplier did not deliver. Fails only when out of range.
    pub fn round_charge(exact: Decimal) -> Result<Self> {
        let rounded = exact.round_dp_with_strategy(CREDIT_SCALE, RoundingStrategy::ToZero);
        Self::new(rounded)
    }

    /// Builds an amount from micro-credit units.
    pub const fn from_units(units: i64) -> Self {
        Credits(units)
    }

    /// Builds an amount from whole credits.
    pub fn from_whole(credits: i64) -> Result<Self> {
        credits
            .checked_mul(UNITS_PER_CREDIT)
            .map(Credits)
            .ok_or_else(|| Error::Money(format!("{credits} credits is out of range")))
    }

    /// The amount in micro-credit units.
    pub const fn units(self) -> i64 {
        self.0
    }

    /// The amount as an exact decimal (normalised: no trailing zeros).
    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.0, CREDIT_SCALE).normalize()
    }

    /// True when the amount is below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// True when the amount is exactly zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Sum, or `None` on overflow.
    pub fn checked_add(self, other: Credits) -> Option<Credits> {
        self.0.checked_add(other.0).map(Credits)
    }

    /// Difference, or `None` on overflow.
    pub fn checked_sub(self, other: Credits) -> Option<Credits> {
        self.0.checked_sub(other.0).map(Credits)
    }

    /// Negation, or `None` for the one value that has no negation.
    pub fn checked_neg(self) -> Option<Credits> {
        self.0.checked_neg().map(Credits)
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_decimal(), f)
    }
}

impl fmt::Debug for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credits({self})")
    }
}

impl FromStr for Credits {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let value = Decimal::from_str_exact(s.trim())
            .map_err(|e| Error::Money(format!("{s:?} is not a decimal amount: {e}")))?;
        Credits::new(value)
    }
}

impl TryFrom<Decimal> for Credits {
    type Error = Error;

    fn try_from(value: Decimal) -> Result<Self> {
        Credits::new(value)
    }
}

impl From<Credits> for Decimal {
    fn from(value: Credits) -> Self {
        value.to_decimal()
    }
}

impl Encode for Credits {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> std::result::Result<(), EncodeError> {
        self.0.encode(encoder)
    }
}

impl<Context> Decode<Context> for Credits {
    fn decode<D: Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> std::result::Result<Self, DecodeError> {
        Ok(Credits(i64::decode(decoder)?))
    }
}
bincode::impl_borrow_decode!(Credits);

impl Serialize for Credits {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Credits {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_amount_same_units_whatever_the_scale() {
        let a = Credits::new(Decimal::from_str("2.50").unwrap()).unwrap();
        let b = Credits::new(Decimal::from_str("2.5000000").unwrap()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.units(), 2_500_000);
        assert_eq!(a.to_string(), "2.5");
    }

    #[test]
    fn over_precise_amounts_are_rejected() {
        let err = "0.0000001".parse::<Credits>().unwrap_err();
        assert!(err.to_string().contains("decimal places"), "{err}");
    }

    #[test]
    fn rounding_goes_toward_zero() {
        let exact = Decimal::from_str("1.2345679").unwrap();
        assert_eq!(Credits::round_charge(exact).unwrap().units(), 1_234_567);
        let negative = Decimal::from_str("-1.2345679").unwrap();
        assert_eq!(Credits::round_charge(negative).unwrap().units(), -1_234_567);
    }

    #[test]
    fn out_of_range_is_an_error_not_a_panic() {
        assert!(Credits::new(Decimal::MAX).is_err());
        assert!(Credits::from_whole(i64::MAX).is_err());
        assert!(Credits::MAX.checked_add(Credits::from_units(1)).is_none());
    }
}
