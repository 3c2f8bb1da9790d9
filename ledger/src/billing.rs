//! Billing math, all of it: what metered GPU time costs, how the fee is
//! taken, what a settlement pays and refunds. This is the payout function
//! of `specs/settlement.md` section 8.3, so every coordinator computing it
//! from the same inputs gets the same micro-credits.
//!
//! The one rounding rule (the protocol's, [`Credits::round_charge`]): an
//! exact charge is rounded toward zero to a whole micro-credit, once. Usage
//! is accumulated per lease as whole GPU-milliseconds (exact, checked
//! against overflow); the charge `price × GPU-ms / 3,600,000` is formed as
//! a 128-bit integer product and divided once at settlement. The exact
//! charge is a rational with no finite decimal form in general (3,600,000
//! has factors of 3), and its numerator can exceed `Decimal`'s 96 bits, so
//! integer floor division is how the rule is applied; for the non-negative
//! amounts billed here, floor and "toward zero" are the same rule, and a
//! property test checks this function against `round_charge` directly.
//!
//! Consequence: metering a lease in one window or in a thousand gives the
//! same charge to the micro-credit, because nothing is rounded until the
//! settlement.

use rigmesh_protocol::Credits;
use rust_decimal::Decimal;

use crate::error::{Error, Result};

/// Milliseconds in an hour: prices are per GPU-hour, usage is in GPU-ms.
pub const MS_PER_HOUR: u64 = 3_600_000;

/// Parts per million in a whole.
const PPM: u64 = 1_000_000;

/// The fraction of each settlement's paid amount that goes to the fee
/// account, in parts per million: in `[0, 1)` with at most 6 decimal places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FeeRate(u32);

impl FeeRate {
    /// No fee.
    pub const ZERO: FeeRate = FeeRate(0);

    /// From parts per million; refuses `1,000,000` and above.
    pub fn from_ppm(ppm: u32) -> Result<Self> {
        if u64::from(ppm) >= PPM {
            return Err(Error::Amount(format!(
                "fee rate {ppm} ppm must be below 1,000,000"
            )));
        }
        Ok(FeeRate(ppm))
    }

    /// From a decimal fraction such as `0.01`; refuses negative, `>= 1` or
    /// more than 6 decimal places.
    pub fn new(rate: Decimal) -> Result<Self> {
        let ppm = rate
            .checked_mul(Decimal::from(PPM))
            .filter(|ppm| ppm.fract().is_zero())
            .ok_or_else(|| Error::Amount(format!("fee rate {rate} has more than 6 places")))?;
        if ppm.is_sign_negative() && !ppm.is_zero() {
            return Err(Error::Amount(format!("fee rate {rate} is negative")));
        }
        let ppm = u32::try_from(ppm.mantissa() / 10i128.pow(ppm.scale()))
            .map_err(|_| Error::Amount(format!("fee rate {rate} must be below 1")))?;
        Self::from_ppm(ppm)
    }

    /// The rate in parts per million.
    pub fn ppm(self) -> u32 {
        self.0
    }
}

/// The charge for `gpu_ms` GPU-milliseconds at `price` per GPU-hour,
/// rounded once toward zero to a micro-credit. Refuses a negative price;
/// fails only on overflow of the result.
pub fn charge(price_per_gpu_hour: Credits, gpu_ms: u64) -> Result<Credits> {
    let price = u128::try_from(price_per_gpu_hour.units())
        .map_err(|_| Error::Amount(format!("price {price_per_gpu_hour} is negative")))?;
    // Both factors are below 2^64, so the product fits 128 bits.
    let exact_numerator = price * u128::from(gpu_ms);
    let units = exact_numerator / u128::from(MS_PER_HOUR);
    i64::try_from(units)
        .map(Credits::from_units)
        .map_err(|_| Error::Overflow("a usage charge"))
}

/// The fee on `paid` at `rate`, rounded toward zero.
pub fn fee(paid: Credits, rate: FeeRate) -> Result<Credits> {
    let paid = u128::try_from(paid.units())
        .map_err(|_| Error::Amount(format!("paid amount {paid} is negative")))?;
    let units = paid * u128::from(rate.ppm()) / u128::from(PPM);
    // The fee is below `paid`, which fitted an i64.
    i64::try_from(units)
        .map(Credits::from_units)
        .map_err(|_| Error::Overflow("a fee"))
}

/// Exact usage of one lease since its last settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meter {
    gpu_ms: u64,
    windows: u64,
}

impl Meter {
    /// Adds one window's billable GPU-milliseconds.
    pub fn add_window(&mut self, billable_gpu_ms: u64) -> Result<()> {
        self.gpu_ms = self
            .gpu_ms
            .checked_add(billable_gpu_ms)
            .ok_or(Error::Overflow("metered GPU-milliseconds"))?;
        self.windows = self
            .windows
            .checked_add(1)
            .ok_or(Error::Overflow("metered windows"))?;
        Ok(())
    }

    /// GPU-milliseconds so far.
    pub fn gpu_ms(&self) -> u64 {
        self.gpu_ms
    }

    /// Windows so far.
    pub fn windows(&self) -> u64 {
        self.windows
    }
}

/// What one settlement moves (all amounts in credits, all non-negative):
/// `paid_now = supplier + fee` leaves the escrow for the parties, and
/// `refund` goes back to the customer on the final settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payout {
    /// The GPU-milliseconds billed.
    pub billable_gpu_ms: u64,
    /// The charge for them, before the escrow cap.
    pub gross: Credits,
    /// What is paid now: the charge, capped at what the escrow holds.
    pub paid_now: Credits,
    /// The coordinators' fee out of `paid_now`.
    pub fee: Credits,
    /// The supplier's share: `paid_now - fee`.
    pub supplier: Credits,
    /// Returned to the customer (final settlement only).
    pub refund: Credits,
    /// Kept out of the escrow for review: the charge for the held
    /// windows, capped at what the escrow keeps after `paid_now`.
    pub held: Credits,
}

/// The payout function: usage `billable_gpu_ms` at `price`, against an
/// escrow that still holds `available`, with fee `rate`; the final
/// settlement refunds whatever the escrow keeps.
pub fn payout(
    price_per_gpu_hour: Credits,
    billable_gpu_ms: u64,
    available: Credits,
    rate: FeeRate,
    final_settlement: bool,
) -> Result<Payout> {
    payout_holding(
        price_per_gpu_hour,
        billable_gpu_ms,
        0,
        available,
        rate,
        final_settlement,
    )
}

/// [`payout`] of a range in which windows of `held_gpu_ms` are held for
/// review (specs/settlement.md 8.3): the paid windows are charged first,
/// then the held ones' charge is kept out of the escrow, as far as it
/// holds; a final settlement refunds only what is neither paid nor held.
pub fn payout_holding(
    price_per_gpu_hour: Credits,
    billable_gpu_ms: u64,
    held_gpu_ms: u64,
    available: Credits,
    rate: FeeRate,
    final_settlement: bool,
) -> Result<Payout> {
    if available.is_negative() {
        return Err(Error::Amount(format!(
            "escrow holds {available}, below zero"
        )));
    }
    let gross = charge(price_per_gpu_hour, billable_gpu_ms)?;
    let paid_now = gross.min(available);
    let fee = fee(paid_now, rate)?;
    let supplier = paid_now
        .checked_sub(fee)
        .ok_or(Error::Overflow("the supplier's share"))?;
    let left = available
        .checked_sub(paid_now)
        .ok_or(Error::Overflow("an escrow's remainder"))?;
    let held = charge(price_per_gpu_hour, held_gpu_ms)?.min(left);
    let refund = if final_settlement {
        left.checked_sub(held).ok_or(Error::Overflow("a refund"))?
    } else {
        Credits::ZERO
    };
    Ok(Payout {
        billable_gpu_ms,
        gross,
        paid_now,
        fee,
        supplier,
        refund,
        held,
    })
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_specification_example() {
        // specs/settlement.md 8.3: 2.49 credits per GPU-hour, 105,000 GPU-ms,
        // a 1 % fee.
        let p = payout(
            Credits::from_units(2_490_000),
            105_000,
            Credits::from_whole(20).unwrap(),
            FeeRate::new(Decimal::from_str("0.01").unwrap()).unwrap(),
            false,
        )
        .unwrap();
        assert_eq!(p.gross.units(), 72_625);
        assert_eq!(p.fee.units(), 726);
        assert_eq!(p.supplier.units(), 71_899);
        assert_eq!(p.refund, Credits::ZERO);
    }

    #[test]
    fn the_escrow_caps_the_payout_and_the_final_settlement_empties_it() {
        let p = payout(
            Credits::from_whole(10).unwrap(),
            10 * MS_PER_HOUR,
            Credits::from_whole(30).unwrap(),
            FeeRate::ZERO,
            true,
        )
        .unwrap();
        assert_eq!(p.gross, Credits::from_whole(100).unwrap());
        assert_eq!(p.paid_now, Credits::from_whole(30).unwrap());
        assert_eq!(p.refund, Credits::ZERO);
        let p = payout(
            Credits::from_whole(10).unwrap(),
            MS_PER_HOUR,
            Credits::from_whole(30).unwrap(),
            FeeRate::ZERO,
            true,
        )
        .unwrap();
        assert_eq!(p.refund, Credits::from_whole(20).unwrap());
    }

    #[test]
    fn fee_rates_are_exact_fractions_below_one() {
        assert_eq!(
            FeeRate::new(Decimal::from_str("0.025").unwrap())
                .unwrap()
                .ppm(),
            25_000
        );
        assert!(FeeRate::new(Decimal::from_str("0.0000001").unwrap()).is_err());
        assert!(FeeRate::new(Decimal::ONE).is_err());
        assert!(FeeRate::new(Decimal::from_str("-0.01").unwrap()).is_err());
        assert!(FeeRate::from_ppm(1_000_000).is_err());
    }

    #[test]
    fn extremes_are_errors_not_panics() {
        assert!(charge(Credits::from_units(-1), 5).is_err());
        assert!(charge(Credits::MAX, u64::MAX).is_err());
        assert_eq!(charge(Credits::MAX, MS_PER_HOUR).unwrap(), Credits::MAX);
        let mut meter = Meter::default();
        meter.add_window(u64::MAX).unwrap();
        assert!(meter.add_window(1).is_err());
    }

    proptest! {
        #[test]
        fn the_charge_is_the_protocol_rounding_of_the_exact_product(
            price in 1i64..1_000_000_000_000,
            gpu_ms in 0u64..1_000_000_000_000,
        ) {
            let exact = Decimal::from(price) * Decimal::from(gpu_ms)
                / Decimal::from(MS_PER_HOUR)
                / Decimal::from(1_000_000);
            let expected = Credits::round_charge(exact).unwrap();
            prop_assert_eq!(charge(Credits::from_units(price), gpu_ms).unwrap(), expected);
        }

        #[test]
        fn metering_in_windows_never_changes_the_charge(
            price in 1i64..100_000_000_000,
            windows in proptest::collection::vec(0u64..10_000_000_000, 1..50),
        ) {
            let mut meter = Meter::default();
            for w in &windows {
                meter.add_window(*w).unwrap();
            }
            let total: u64 = windows.iter().sum();
            let price = Credits::from_units(price);
            prop_assert_eq!(charge(price, meter.gpu_ms()).unwrap(), charge(price, total).unwrap());
        }

        #[test]
        fn payouts_never_exceed_the_escrow_and_split_exactly(
            price in 1i64..100_000_000_000,
            gpu_ms in 0u64..100_000_000_000,
            held_gpu_ms in prop_oneof![Just(0u64), 0u64..100_000_000_000],
            available in 0i64..1_000_000_000_000,
            ppm in 0u32..1_000_000,
            final_settlement: bool,
        ) {
            let available = Credits::from_units(available);
            let p = payout_holding(
                Credits::from_units(price),
                gpu_ms,
                held_gpu_ms,
                available,
                FeeRate::from_ppm(ppm).unwrap(),
                final_settlement,
            )
            .unwrap();
            prop_assert!(p.paid_now <= available);
            prop_assert_eq!(p.supplier.units() + p.fee.units(), p.paid_now.units());
            prop_assert!(!p.fee.is_negative() && !p.supplier.is_negative());
            prop_assert!(!p.held.is_negative() && !p.refund.is_negative());
            // Paid windows come first; what is held never eats into them.
            prop_assert_eq!(p.paid_now, p.gross.min(available));
            prop_assert!(p.held <= charge(Credits::from_units(price), held_gpu_ms).unwrap());
            let out = p.paid_now.units() + p.refund.units() + p.held.units();
            if final_settlement {
                prop_assert_eq!(out, available.units());
            } else {
                prop_assert!(out <= available.units());
            }
        }
    }
}
