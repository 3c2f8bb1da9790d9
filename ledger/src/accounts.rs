//! Double-entry accounts: the accounts money can sit in, the movements that
//! carry it between them, and the rule every journal entry obeys (its legs
//! sum to exactly zero). This module is pure; the ledger posts entries
//! atomically with the balances they change (see [`crate::books`]).
//!
//! Where money sits:
//! - [`Account::User`]: a customer's or supplier's spendable balance;
//! - [`Account::Escrow`]: what a lease's escrow still holds;
//! - [`Account::Payable`]: what a settlement has charged the escrow and not
//!   yet paid out (zero between calls: the charge and its payouts are
//!   written together);
//! - [`Account::Fees`]: the coordinators' fee account;
//! - [`Account::External`]: the world outside rigmesh. It is the one account
//!   allowed below zero: minus its balance is deposits minus withdrawals.
//!
//! So, after any sequence of movements, the sum of every account but
//! `External` equals deposits minus withdrawals.

use std::fmt;

use bincode::{Decode, Encode};
use rigmesh_protocol::{Credits, Id, PublicKey, UnixMillis};

use crate::error::{Error, Result};
use crate::keys::{Key, KeyReader};

/// Most legs in one journal entry.
pub const MAX_LEGS: usize = 8;

/// An account of the books.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub enum Account {
    /// Money outside rigmesh (deposits come from it, withdrawals go to it).
    External,
    /// The coordinators' fee account.
    Fees,
    /// A market participant's balance.
    User(PublicKey),
    /// The escrow of a lease.
    Escrow(Id),
    /// Charged to a lease and being paid out.
    Payable(Id),
    /// Held out of a lease's escrow while a dispute is reviewed.
    Disputed(Id),
}

impl Account {
    /// True for the accounts that may never go below zero (all but
    /// [`Account::External`]).
    pub fn must_stay_positive(&self) -> bool {
        !matches!(self, Account::External)
    }

    fn tag(&self) -> u8 {
        match self {
            Account::External => 0,
            Account::Fees => 1,
            Account::User(_) => 2,
            Account::Escrow(_) => 3,
            Account::Payable(_) => 4,
            Account::Disputed(_) => 5,
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::External => f.write_str("external"),
            Account::Fees => f.write_str("fees"),
            Account::User(key) => write!(f, "account {key}"),
            Account::Escrow(lease) => write!(f, "escrow of lease {lease}"),
            Account::Payable(lease) => write!(f, "payable of lease {lease}"),
            Account::Disputed(lease) => write!(f, "disputed of lease {lease}"),
        }
    }
}

impl Key for Account {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.push(self.tag());
        match self {
            Account::External | Account::Fees => {}
            Account::User(key) => key.write_key(out),
            Account::Escrow(lease) | Account::Payable(lease) | Account::Disputed(lease) => {
                lease.write_key(out)
            }
        }
    }

    fn read_key(input: &mut KeyReader<'_>) -> Result<Self> {
        match u8::read_key(input)? {
            0 => Ok(Account::External),
            1 => Ok(Account::Fees),
            2 => Ok(Account::User(PublicKey::read_key(input)?)),
            3 => Ok(Account::Escrow(Id::read_key(input)?)),
            4 => Ok(Account::Payable(Id::read_key(input)?)),
            5 => Ok(Account::Disputed(Id::read_key(input)?)),
            tag => Err(Error::corrupt("account key", format!("unknown tag {tag}"))),
        }
    }
}

/// What a journal entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Movement {
    /// Money enters: external -> user.
    Deposit,
    /// A customer funds a lease: user -> escrow.
    EscrowLock,
    /// Metered usage is charged to the escrow: escrow -> payable.
    UsageCharge,
    /// The supplier's share of a charge: payable -> user.
    SupplierCredit,
    /// The coordinators' share of a charge: payable -> fees.
    CoordinatorFee,
    /// What a closed lease did not use goes back: escrow -> user.
    Refund,
    /// Money leaves: user -> external.
    Withdrawal,
    /// A disputed window's charge is held for review: escrow -> disputed.
    DisputeHold,
    /// A resolution pays out what a dispute held: disputed -> payable.
    DisputePayment,
    /// A resolution returns what a dispute held: disputed -> user.
    DisputeRefund,
}

impl Movement {
    /// The movement's name, as the audit chain and errors spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Movement::Deposit => "deposit",
            Movement::EscrowLock => "escrow lock",
            Movement::UsageCharge => "usage charge",
            Movement::SupplierCredit => "supplier credit",
            Movement::CoordinatorFee => "coordinator fee",
            Movement::Refund => "refund",
            Movement::Withdrawal => "withdrawal",
            Movement::DisputeHold => "dispute hold",
            Movement::DisputePayment => "dispute payment",
            Movement::DisputeRefund => "dispute refund",
        }
    }

    /// The sign the `External` account's leg must have in this movement,
    /// or `None` when `External` may not take part.
    fn external_sign(&self) -> Option<bool> {
        match self {
            Movement::Deposit => Some(false),
            Movement::Withdrawal => Some(true),
            _ => None,
        }
    }
}

impl fmt::Display for Movement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One side of a journal entry: `amount` added to `account` (negative
/// takes money out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Leg {
    /// The account.
    pub account: Account,
    /// The signed amount.
    pub amount: Credits,
}

/// One movement of money.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct JournalEntry {
    /// Unique id: an entry is posted at most once. For a movement caused
    /// by one message it is derived from that message's id.
    pub id: Id,
    /// What it records.
    pub movement: Movement,
    /// The legs; they sum to zero.
    pub legs: Vec<Leg>,
    /// When it was posted.
    pub at: UnixMillis,
    /// Content id of the message behind it (zero when none).
    pub cause: Id,
}

impl JournalEntry {
    /// A two-leg entry moving `amount` from `from` to `to`.
    pub fn transfer(
        id: Id,
        movement: Movement,
        from: Account,
        to: Account,
        amount: Credits,
        at: UnixMillis,
        cause: Id,
    ) -> Result<Self> {
        let out = amount
            .checked_neg()
            .ok_or(Error::Overflow("a journal leg"))?;
        let entry = JournalEntry {
            id,
            movement,
            legs: vec![
                Leg {
                    account: from,
                    amount: out,
                },
                Leg {
                    account: to,
                    amount,
                },
            ],
            at,
            cause,
        };
        entry.check()?;
        Ok(entry)
    }

    /// Checks the entry on its own: 2 to [`MAX_LEGS`] legs, none zero, no
    /// account twice, `External` only where the movement allows it and with
    /// the right sign, and the legs summing to exactly zero.
    pub fn check(&self) -> Result<()> {
        let refuse = |reason: String| Error::Unbalanced {
            id: self.id,
            reason,
        };
        if self.legs.len() < 2 || self.legs.len() > MAX_LEGS {
            return Err(refuse(format!(
                "{} legs, must be 2 to {MAX_LEGS}",
                self.legs.len()
            )));
        }
        let mut sum: i128 = 0;
        for (i, leg) in self.legs.iter().enumerate() {
            if leg.amount.is_zero() {
                return Err(refuse(format!("leg {i} ({}) is zero", leg.account)));
            }
            if self
                .legs
                .iter()
                .skip(i + 1)
                .any(|other| other.account == leg.account)
            {
                return Err(refuse(format!("{} appears twice", leg.account)));
            }
            if leg.account == Account::External {
                let expected = self.movement.external_sign();
                if expected != Some(!leg.amount.is_negative()) {
                    return Err(Error::WrongAccount {
                        account: leg.account,
                        movement: self.movement.name(),
                    });
                }
            }
            sum += i128::from(leg.amount.units());
        }
        if sum != 0 {
            let off = i64::try_from(sum)
                .map(|units| Credits::from_units(units).to_string())
                .unwrap_or_else(|_| format!("{sum} micro-credits"));
            return Err(refuse(format!("legs sum to {off}, not zero")));
        }
        Ok(())
    }
}

/// A positive amount from a decimal (user input): over-precise, negative,
/// zero or out-of-range amounts are refused.
pub fn positive_amount(value: rust_decimal::Decimal) -> Result<Credits> {
    let credits = Credits::new(value).map_err(|e| Error::Amount(e.to_string()))?;
    require_positive("amount", credits)?;
    Ok(credits)
}

/// Refuses a zero or negative amount.
pub fn require_positive(what: &str, amount: Credits) -> Result<()> {
    if amount.is_negative() || amount.is_zero() {
        return Err(Error::Amount(format!("{what} {amount} must be above zero")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use rust_decimal::Decimal;

    use super::*;

    fn user(n: u8) -> Account {
        Account::User(PublicKey([n; 32]))
    }

    fn entry(movement: Movement, legs: &[(Account, i64)]) -> JournalEntry {
        JournalEntry {
            id: Id([1; 32]),
            movement,
            legs: legs
                .iter()
                .map(|(account, units)| Leg {
                    account: *account,
                    amount: Credits::from_units(*units),
                })
                .collect(),
            at: UnixMillis(0),
            cause: Id::ZERO,
        }
    }

    #[test]
    fn balanced_entries_pass_and_unbalanced_ones_name_the_difference() {
        let ok = entry(
            Movement::CoordinatorFee,
            &[(Account::Payable(Id([2; 32])), -10), (Account::Fees, 10)],
        );
        ok.check().unwrap();
        let bad = entry(Movement::SupplierCredit, &[(user(1), -10), (user(2), 9)]);
        let err = bad.check().unwrap_err();
        assert!(matches!(err, Error::Unbalanced { .. }), "{err}");
        assert!(err.to_string().contains("-0.000001"), "{err}");
    }

    #[test]
    fn malformed_entries_are_refused() {
        assert!(entry(Movement::Refund, &[(user(1), 0), (user(2), 0)])
            .check()
            .is_err());
        assert!(entry(Movement::Refund, &[(user(1), 5)]).check().is_err());
        assert!(entry(Movement::Refund, &[(user(1), -5), (user(1), 5)])
            .check()
            .is_err());
        // Money cannot appear from outside except by a deposit.
        let err = entry(
            Movement::SupplierCredit,
            &[(Account::External, -5), (user(1), 5)],
        )
        .check()
        .unwrap_err();
        assert!(matches!(err, Error::WrongAccount { .. }), "{err}");
        // A deposit takes from outside; it never pays outside.
        assert!(
            entry(Movement::Deposit, &[(Account::External, 5), (user(1), -5)])
                .check()
                .is_err()
        );
        let overflow = entry(
            Movement::SupplierCredit,
            &[(user(1), i64::MAX), (user(2), i64::MAX), (user(3), 2)],
        );
        assert!(overflow.check().is_err());
    }

    #[test]
    fn amounts_from_decimals_must_be_exact_and_positive() {
        assert!(positive_amount(Decimal::from_str("0.0000001").unwrap()).is_err());
        assert!(positive_amount(Decimal::from_str("-1").unwrap()).is_err());
        assert!(positive_amount(Decimal::ZERO).is_err());
        assert!(positive_amount(Decimal::MAX).is_err());
        assert_eq!(
            positive_amount(Decimal::from_str("1.500000").unwrap())
                .unwrap()
                .units(),
            1_500_000
        );
    }

    #[test]
    fn account_keys_round_trip_and_group_by_kind() {
        for account in [
            Account::External,
            Account::Fees,
            user(7),
            Account::Escrow(Id([3; 32])),
            Account::Payable(Id([4; 32])),
        ] {
            assert_eq!(Account::from_key(&account.to_key()).unwrap(), account);
        }
        assert!(Account::from_key(&[9]).is_err());
        assert!(Account::from_key(&[2, 1, 2]).is_err());
    }
}
