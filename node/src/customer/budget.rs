//! Budget caps: a cap per lease and a cap for the whole account, alerts as
//! spending crosses 50 %, 80 % and 100 % of each cap, and the decision to
//! end a lease before it runs past its cap.
//!
//! The rule: after each acked window the tracker is told the lease's spend
//! and what the next window can add. When the spend has reached a cap, or
//! that next window would take it past one, the lease is to be terminated.
//! A lease with an escrow passes zero for the next window: the escrow is
//! at most its caps and no coordinator pays past it, so the lease runs
//! until its spend reaches the cap exactly, the last window cut at it. The supplier honours a
//! termination at the end of the window then running, so that one window
//! is still paid: since every earlier decision let the spend reach at most
//! the cap, the final spend is at most the cap plus one window's charge.
//! For the account cap the bound is one window's charge per running lease,
//! since each may have a window under way when the cap is reached.
//!
//! Each alert fires at most once per cap and threshold. A window that jumps
//! over several thresholds raises only the highest of them (the lower ones
//! count as raised), and every alert says how much of the cap is really
//! spent. A lease's alerts name the lease as their subject; the account's
//! have none.

use std::collections::BTreeMap;

use rigmesh_protocol::{
    Alert, Audience, Credits, Id, Keypair, Severity, Signed, UnixMillis, PROTOCOL_VERSION,
};

use crate::error::{Error, Result};

/// The thresholds, in percent of a cap, with their rule names and urgency.
const THRESHOLDS: [(u8, &str, Severity); 3] = [
    (50, "budget.50", Severity::Info),
    (80, "budget.80", Severity::Warning),
    (100, "budget.100", Severity::Critical),
];

/// The customer's spending limits; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// Most one lease may cost.
    pub per_lease: Option<Credits>,
    /// Most all leases together may cost.
    pub per_account: Option<Credits>,
}

/// Whether a lease may run another window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The next window fits every cap.
    Continue,
    /// The next window would pass a cap: end the lease now, so it stops at
    /// the end of the window under way.
    Terminate {
        /// The cap that would be passed.
        cap: Credits,
        /// Whether it is the account's cap (else the lease's).
        account: bool,
    },
}

/// What one spend update produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetUpdate {
    /// Alerts raised by this update (also kept by the tracker).
    pub alerts: Vec<Signed<Alert>>,
    /// Whether the lease may go on.
    pub decision: Decision,
}

/// Thresholds already raised for one cap, by position in `THRESHOLDS`.
type Raised = [bool; 3];

#[derive(Debug, Clone, Default)]
struct LeaseSpend {
    spent: Credits,
    raised: Raised,
}

/// Spend per lease and per account against a [`Budget`].
#[derive(Debug)]
pub struct BudgetTracker {
    key: Keypair,
    budget: Budget,
    leases: BTreeMap<Id, LeaseSpend>,
    /// The sum of `leases`' spend, kept in step with it: an update does
    /// not add up every lease the account ever had.
    account_spent: Credits,
    account_raised: Raised,
}

/// `spent` as a percentage of `cap`, to a tenth, rounded down (`99.2`).
fn percent_spent(spent: Credits, cap: Credits) -> String {
    let tenths = i128::from(spent.units()) * 1000 / i128::from(cap.units()).max(1);
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// True when `spent` is at least `percent` % of `cap` (exact, in units).
fn reached(spent: Credits, cap: Credits, percent: u8) -> bool {
    i128::from(spent.units()) * 100 >= i128::from(cap.units()) * i128::from(percent)
}

fn check_cap(cap: Option<Credits>, what: &str) -> Result<()> {
    match cap {
        Some(cap) if cap.is_negative() || cap.is_zero() => Err(Error::Config(format!(
            "the {what} budget is {cap}; it must be above zero (leave it unset for no cap)"
        ))),
        _ => Ok(()),
    }
}

impl BudgetTracker {
    /// A tracker for `budget` whose alerts are signed by the customer's
    /// `key`. Refuses a cap of zero or below.
    pub fn new(key: Keypair, budget: Budget) -> Result<Self> {
        check_cap(budget.per_lease, "per-lease")?;
        check_cap(budget.per_account, "per-account")?;
        Ok(BudgetTracker {
            key,
            budget,
            leases: BTreeMap::new(),
            account_spent: Credits::ZERO,
            account_raised: Raised::default(),
        })
    }

    /// The caps.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// What a lease has cost so far (zero if never reported).
    pub fn lease_spent(&self, lease: &Id) -> Credits {
        self.leases.get(lease).map_or(Credits::ZERO, |l| l.spent)
    }

    /// What all leases have cost so far.
    pub fn account_spent(&self) -> Credits {
        self.account_spent
    }

    /// Records that `lease` has now cost `spent` in all (a lower figure
    /// than already recorded is ignored: spend only grows, and updates may
    /// arrive out of order), raises the alerts newly due, and decides
    /// whether the lease may run a window that can add `next_window`.
    pub fn update(
        &mut self,
        lease: Id,
        spent: Credits,
        next_window: Credits,
        now: UnixMillis,
    ) -> Result<BudgetUpdate> {
        let before = self.lease_spent(&lease);
        let lease_spent = before.max(spent);
        let account_spent = lease_spent
            .checked_sub(before)
            .and_then(|added| self.account_spent.checked_add(added))
            .ok_or_else(|| Error::Store("account spend overflow".into()))?;
        self.leases.entry(lease).or_default().spent = lease_spent;
        self.account_spent = account_spent;
        let mut alerts = Vec::new();
        if let Some(cap) = self.budget.per_lease {
            let mut raised = self
                .leases
                .get(&lease)
                .map(|l| l.raised)
                .unwrap_or_default();
            alerts.extend(self.raise(&mut raised, lease_spent, cap, Some(lease), now)?);
            if let Some(entry) = self.leases.get_mut(&lease) {
                entry.raised = raised;
            }
        }
        if let Some(cap) = self.budget.per_account {
            let mut raised = self.account_raised;
            alerts.extend(self.raise(&mut raised, account_spent, cap, None, now)?);
            self.account_raised = raised;
        }
        let decision = self.decide(lease_spent, account_spent, next_window)?;
        Ok(BudgetUpdate { alerts, decision })
    }

    fn decide(
        &self,
        lease_spent: Credits,
        account_spent: Credits,
        next_window: Credits,
    ) -> Result<Decision> {
        let after = |spent: Credits| {
            spent
                .checked_add(next_window)
                .ok_or_else(|| Error::Store("projected spend overflow".into()))
        };
        if let Some(cap) = self.budget.per_lease {
            if lease_spent >= cap || after(lease_spent)? > cap {
                return Ok(Decision::Terminate {
                    cap,
                    account: false,
                });
            }
        }
        if let Some(cap) = self.budget.per_account {
            if account_spent >= cap || after(account_spent)? > cap {
                return Ok(Decision::Terminate { cap, account: true });
            }
        }
        Ok(Decision::Continue)
    }

    /// Signs the alerts of the thresholds `spent` has reached on `cap` and
    /// that `raised` does not yet record; `lease` is `None` for the account.
    fn raise(
        &self,
        raised: &mut Raised,
        spent: Credits,
        cap: Credits,
        lease: Option<Id>,
        now: UnixMillis,
    ) -> Result<Vec<Signed<Alert>>> {
        let mut out = Vec::new();
        // Only the highest threshold newly reached is raised.
        let highest = THRESHOLDS
            .iter()
            .rposition(|(percent, _, _)| reached(spent, cap, *percent));
        for (i, ((percent, rule, severity), done)) in
            THRESHOLDS.iter().zip(raised.iter_mut()).enumerate()
        {
            if *done || !reached(spent, cap, *percent) {
                continue;
            }
            if Some(i) != highest {
                *done = true;
                continue;
            }
            let scope = match lease {
                Some(id) => format!("lease {id}"),
                None => "the account".to_string(),
            };
            let alert = Signed::sign(
                Alert {
                    version: PROTOCOL_VERSION,
                    issuer: self.key.public(),
                    severity: *severity,
                    audience: Audience::Customer,
                    rule: (*rule).to_string(),
                    about: Some(self.key.public()),
                    subject: lease,
                    message: format!(
                        "{scope} has spent {spent} credits, {} % of its budget of {cap} \
                         (past the {percent} % mark)",
                        percent_spent(spent, cap)
                    ),
                    created_at: now,
                },
                &self.key,
            )?;
            tracing::warn!(rule, message = %alert.body.message, "budget alert");
            *done = true;
            out.push(alert);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use rigmesh_protocol::Message;

    use super::*;
    use crate::customer::usage::tests::{agreement_with_windows, customer, honest_chain, T0};
    use crate::customer::usage::{LeaseWatch, Verdict};

    fn credits(text: &str) -> Credits {
        text.parse().unwrap()
    }

    fn rules(alerts: &[Signed<Alert>]) -> Vec<&str> {
        alerts.iter().map(|a| a.body.rule.as_str()).collect()
    }

    #[test]
    fn each_threshold_alerts_exactly_once() {
        let budget = Budget {
            per_lease: Some(credits("10")),
            per_account: None,
        };
        let mut tracker = BudgetTracker::new(customer(), budget).unwrap();
        let lease = Id([1; 32]);
        let mut fired = Vec::new();
        for (spent, expected) in [
            ("4.999999", vec![]),
            ("5", vec!["budget.50"]),
            ("6", vec![]),
            ("4", vec![]), // out of order: ignored, nothing re-fires
            ("8", vec!["budget.80"]),
            ("9.5", vec![]),
            ("10", vec!["budget.100"]),
            ("12", vec![]),
        ] {
            let update = tracker
                .update(lease, credits(spent), Credits::ZERO, T0)
                .unwrap();
            assert_eq!(rules(&update.alerts), expected, "at {spent}");
            fired.extend(update.alerts);
        }
        assert_eq!(tracker.lease_spent(&lease), credits("12"));
        let severities: Vec<_> = fired.iter().map(|a| a.body.severity).collect();
        assert_eq!(
            severities,
            [Severity::Info, Severity::Warning, Severity::Critical]
        );
        for alert in &fired {
            alert.verify_record().unwrap();
            assert_eq!(alert.body.audience, Audience::Customer);
            assert_eq!(alert.body.about, Some(customer().public()));
            assert_eq!(alert.body.subject, Some(lease));
            assert_eq!(alert.body.created_at(), Some(T0));
        }
        assert!(
            fired[1]
                .body
                .message
                .contains("spent 8 credits, 80.0 % of its budget of 10 (past the 80 % mark)"),
            "{}",
            fired[1].body.message
        );
    }

    #[test]
    fn a_jump_over_several_thresholds_raises_each_once() {
        let budget = Budget {
            per_lease: None,
            per_account: Some(credits("20")),
        };
        let mut tracker = BudgetTracker::new(customer(), budget).unwrap();
        // Two leases add up on the account.
        let a = tracker
            .update(Id([1; 32]), credits("9"), Credits::ZERO, T0)
            .unwrap();
        assert!(a.alerts.is_empty());
        let b = tracker
            .update(Id([2; 32]), credits("8"), Credits::ZERO, T0)
            .unwrap();
        // 17 of 20 at once: one alert, the 80 % one, saying 85 %.
        assert_eq!(rules(&b.alerts), ["budget.80"]);
        assert!(
            b.alerts[0]
                .body
                .message
                .contains("85.0 % of its budget of 20 (past the 80 % mark)"),
            "{}",
            b.alerts[0].body.message
        );
        assert!(b.alerts.iter().all(|a| a.body.subject.is_none()));
        assert_eq!(tracker.account_spent(), credits("17"));
        let c = tracker
            .update(Id([1; 32]), credits("9"), credits("4"), T0)
            .unwrap();
        assert!(c.alerts.is_empty());
        assert_eq!(
            c.decision,
            Decision::Terminate {
                cap: credits("20"),
                account: true
            }
        );
    }

    #[test]
    fn no_caps_no_alerts_and_caps_of_zero_or_below_are_refused() {
        let mut tracker = BudgetTracker::new(customer(), Budget::default()).unwrap();
        let update = tracker
            .update(Id([1; 32]), Credits::MAX, Credits::ZERO, T0)
            .unwrap();
        assert!(update.alerts.is_empty());
        assert_eq!(update.decision, Decision::Continue);
        let negative = Budget {
            per_lease: Some(credits("-1")),
            per_account: None,
        };
        assert!(BudgetTracker::new(customer(), negative).is_err());
        let zero = Budget {
            per_lease: None,
            per_account: Some(Credits::ZERO),
        };
        let err = BudgetTracker::new(customer(), zero).unwrap_err();
        assert!(err.to_string().contains("per-account"), "{err}");
    }

    #[test]
    fn the_cap_ends_a_lease_within_one_window_s_charge() {
        // 2 GPUs at 2.49 per GPU-hour in 60 s windows: 0.083 per window;
        // a cap of 1 credit is reached after about 12 windows of 60.
        let cap = credits("1");
        let agreement = agreement_with_windows("2.49", 60);
        let chain = honest_chain(&agreement);
        assert_eq!(chain.len(), 60);
        let mut watch = LeaseWatch::new(&agreement, customer()).unwrap();
        let budget = Budget {
            per_lease: Some(cap),
            per_account: None,
        };
        let mut tracker = BudgetTracker::new(customer(), budget).unwrap();
        let mut attestations = chain.iter();
        let mut window_charge = Credits::ZERO;
        let mut terminated_at = None;
        let mut fired = Vec::new();
        for a in attestations.by_ref() {
            let now = a.body.created_at.plus_ms(500);
            assert!(matches!(watch.check(a, now).unwrap(), Verdict::Ack(_)));
            assert!(watch.spent() <= cap, "spend passed the cap while running");
            window_charge = watch.next_window_charge().unwrap();
            let update = tracker
                .update(watch.lease(), watch.spent(), window_charge, now)
                .unwrap();
            fired.extend(update.alerts);
            if let Decision::Terminate { cap: hit, account } = update.decision {
                assert_eq!((hit, account), (cap, false));
                terminated_at = Some(a.body.seq);
                break;
            }
        }
        let terminated_at = terminated_at.unwrap();
        assert_eq!(terminated_at, 11, "0.996 spent; a 13th window would pass 1");
        // The supplier honours the termination at the end of the window
        // under way, which is still paid.
        let last = attestations.next().unwrap();
        assert!(matches!(
            watch.check(last, last.body.created_at).unwrap(),
            Verdict::Ack(_)
        ));
        let final_spend = watch.spent();
        assert!(final_spend > cap);
        assert!(final_spend <= cap.checked_add(window_charge).unwrap());
        assert_eq!(final_spend, credits("1.079"));
        let update = tracker
            .update(
                watch.lease(),
                final_spend,
                Credits::ZERO,
                last.body.created_at,
            )
            .unwrap();
        assert_eq!(rules(&update.alerts), ["budget.100"]);
        fired.extend(update.alerts);
        assert_eq!(rules(&fired), ["budget.50", "budget.80", "budget.100"]);
    }

    proptest::proptest! {
        /// Whatever order updates come in, and however often a lease is
        /// reported, the account's spend is the sum of each lease's
        /// highest figure, exactly.
        #[test]
        fn the_account_spend_is_the_sum_of_each_leases_highest_report(
            updates in proptest::collection::vec((0u8..8, 0i64..5_000_000), 0..64),
        ) {
            let budget = Budget { per_lease: None, per_account: Some(credits("1000")) };
            let mut tracker = BudgetTracker::new(customer(), budget).unwrap();
            let mut highest = std::collections::BTreeMap::new();
            for (lease, units) in updates {
                let spent = Credits::from_units(units);
                tracker.update(Id([lease; 32]), spent, Credits::ZERO, T0).unwrap();
                let top = highest.get(&lease).copied().unwrap_or(Credits::ZERO).max(spent);
                highest.insert(lease, top);
                let sum = highest
                    .values()
                    .fold(Credits::ZERO, |sum, s| sum.checked_add(*s).unwrap());
                proptest::prop_assert_eq!(tracker.account_spent(), sum);
                proptest::prop_assert_eq!(tracker.lease_spent(&Id([lease; 32])), top);
            }
        }
    }
}
