//! The customer's caps at run time: one [`BudgetTracker`] for the
//! account's cap (spend of all this node's leases together) and one per
//! lease that has a cap of its own, kept in step with the caps the user
//! sets through the API.
//!
//! Changing a cap starts that cap's tracker afresh and replays the spend so
//! far into it, so the alerts of the new cap that the spend has already
//! reached are raised at once (each once) and the next window is checked
//! against the new cap. At start the account tracker is replayed the same
//! way from the stored leases, and those alerts are not raised again: they
//! were raised, and stored, before the restart.

use std::collections::BTreeMap;

use rigmesh_protocol::{Alert, Credits, Id, Keypair, Signed, UnixMillis};

use super::budget::{Budget, BudgetTracker, BudgetUpdate, Decision};
use super::records::Caps;
use crate::error::Result;

/// The trackers behind [`Caps`].
#[derive(Debug)]
pub struct Spending {
    key: Keypair,
    caps: Caps,
    account: Option<BudgetTracker>,
    leases: BTreeMap<Id, BudgetTracker>,
}

fn account_tracker(
    key: &Keypair,
    cap: Credits,
    spends: &[(Id, Credits)],
    now: UnixMillis,
) -> Result<(BudgetTracker, Vec<Signed<Alert>>)> {
    let mut tracker = BudgetTracker::new(
        key.clone(),
        Budget {
            per_lease: None,
            per_account: Some(cap),
        },
    )?;
    let mut alerts = Vec::new();
    for (lease, spent) in spends {
        alerts.extend(tracker.update(*lease, *spent, Credits::ZERO, now)?.alerts);
    }
    // A new cap over what is already spent: only the highest mark reached
    // is raised, as when one window passes several.
    let highest = alerts.pop();
    Ok((tracker, highest.into_iter().collect()))
}

impl Spending {
    /// The trackers for `caps`, with the account's spend so far (`spends`,
    /// per lease) replayed silently.
    pub fn new(key: Keypair, caps: Caps, spends: &[(Id, Credits)]) -> Result<Self> {
        let account = match caps.account {
            Some(cap) => Some(account_tracker(&key, cap, spends, UnixMillis::now())?.0),
            None => None,
        };
        Ok(Spending {
            key,
            caps,
            account,
            leases: BTreeMap::new(),
        })
    }

    /// The caps.
    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    /// Records that `lease` has cost `spent` in all and may add
    /// `next_window` with its next window: the alerts newly due on its own
    /// cap and the account's, and whether it may run that window (the
    /// first cap it would pass ends it).
    pub fn update(
        &mut self,
        lease: Id,
        spent: Credits,
        next_window: Credits,
        now: UnixMillis,
    ) -> Result<BudgetUpdate> {
        let mut alerts = Vec::new();
        let mut decision = Decision::Continue;
        if let Some(cap) = self.caps.leases.get(&lease).copied() {
            let tracker = match self.leases.entry(lease) {
                std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::btree_map::Entry::Vacant(entry) => {
                    entry.insert(BudgetTracker::new(
                        self.key.clone(),
                        Budget {
                            per_lease: Some(cap),
                            per_account: None,
                        },
                    )?)
                }
            };
            let update = tracker.update(lease, spent, next_window, now)?;
            alerts.extend(update.alerts);
            decision = update.decision;
        }
        if let Some(tracker) = &mut self.account {
            let update = tracker.update(lease, spent, next_window, now)?;
            alerts.extend(update.alerts);
            if decision == Decision::Continue {
                decision = update.decision;
            }
        }
        Ok(BudgetUpdate { alerts, decision })
    }

    /// Sets (or with `None` removes) the account's cap; `spends` is every
    /// lease's spend so far. Returns the alerts of the new cap that the
    /// spend has already reached. Refuses a cap of zero or below and then
    /// changes nothing.
    pub fn set_account(
        &mut self,
        cap: Option<Credits>,
        spends: &[(Id, Credits)],
        now: UnixMillis,
    ) -> Result<Vec<Signed<Alert>>> {
        if cap == self.caps.account {
            return Ok(Vec::new());
        }
        let (tracker, alerts) = match cap {
            Some(cap) => {
                let (tracker, alerts) = account_tracker(&self.key, cap, spends, now)?;
                (Some(tracker), alerts)
            }
            None => (None, Vec::new()),
        };
        self.account = tracker;
        self.caps.account = cap;
        Ok(alerts)
    }

    /// Sets (or with `None` removes) one lease's cap; `spent` is what it has
    /// cost so far. Returns the alerts of the new cap already reached.
    /// Refuses a cap of zero or below and then changes nothing.
    pub fn set_lease(
        &mut self,
        lease: Id,
        cap: Option<Credits>,
        spent: Credits,
        now: UnixMillis,
    ) -> Result<Vec<Signed<Alert>>> {
        if cap == self.caps.leases.get(&lease).copied() {
            return Ok(Vec::new());
        }
        let Some(cap) = cap else {
            self.caps.leases.remove(&lease);
            self.leases.remove(&lease);
            return Ok(Vec::new());
        };
        let mut tracker = BudgetTracker::new(
            self.key.clone(),
            Budget {
                per_lease: Some(cap),
                per_account: None,
            },
        )?;
        let alerts = tracker.update(lease, spent, Credits::ZERO, now)?.alerts;
        self.leases.insert(lease, tracker);
        self.caps.leases.insert(lease, cap);
        Ok(alerts)
    }
}

/// A change of caps asked for through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetChange {
    /// Set (or with `None` remove) the account's cap.
    Account(Option<Credits>),
    /// Set (or with `None` remove) one lease's cap.
    Lease {
        /// The lease.
        lease: Id,
        /// The cap.
        cap: Option<Credits>,
    },
}

const BUDGET_FORMS: &str =
    r#"send {"account": "12.50"} or {"lease": "<lease id>", "cap": "3.00"} (null removes a cap)"#;

/// A cap from JSON: a decimal string above zero, or `null` for none.
fn cap_of(field: &str, value: &serde_json::Value) -> std::result::Result<Option<Credits>, String> {
    let text = match value {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::String(text) => text,
        serde_json::Value::Number(n) => {
            return Err(format!(
                "{field} is the number {n}; amounts are decimal strings, e.g. \"{n}\""
            ))
        }
        other => return Err(format!("{field} must be a decimal string, not {other}")),
    };
    let cap: Credits = text.parse().map_err(|e| format!("{field}: {e}"))?;
    if cap.is_negative() || cap.is_zero() {
        return Err(format!(
            "{field} is {cap}; a cap must be above zero (null removes it)"
        ));
    }
    Ok(Some(cap))
}

impl BudgetChange {
    /// Reads a `PUT /v1/budget` body. Every error names what was wrong.
    pub fn parse(body: &[u8]) -> std::result::Result<Self, String> {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| format!("the body is not JSON ({e}); {BUDGET_FORMS}"))?;
        let serde_json::Value::Object(fields) = value else {
            return Err(format!("the body must be a JSON object; {BUDGET_FORMS}"));
        };
        if let Some(unknown) = fields
            .keys()
            .find(|k| !matches!(k.as_str(), "account" | "lease" | "cap"))
        {
            return Err(format!("unknown field {unknown:?}; {BUDGET_FORMS}"));
        }
        match (
            fields.get("account"),
            fields.get("lease"),
            fields.get("cap"),
        ) {
            (Some(cap), None, None) => Ok(BudgetChange::Account(cap_of("account", cap)?)),
            (None, Some(lease), Some(cap)) => {
                let lease = lease
                    .as_str()
                    .ok_or_else(|| "lease must be a lease id (64 hex digits)".to_string())?
                    .parse::<Id>()
                    .map_err(|e| format!("lease: {e}"))?;
                Ok(BudgetChange::Lease {
                    lease,
                    cap: cap_of("cap", cap)?,
                })
            }
            _ => Err(BUDGET_FORMS.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: UnixMillis = UnixMillis(1_800_000_000_000);

    fn credits(text: &str) -> Credits {
        text.parse().unwrap()
    }

    fn rules(alerts: &[Signed<Alert>]) -> Vec<&str> {
        alerts.iter().map(|a| a.body.rule.as_str()).collect()
    }

    fn key() -> Keypair {
        Keypair::from_seed([3; 32])
    }

    #[test]
    fn the_account_cap_adds_up_every_lease_and_stops_the_one_that_would_pass_it() {
        let caps = Caps {
            account: Some(credits("10")),
            leases: [(Id([1; 32]), credits("4"))].into(),
        };
        let mut spending = Spending::new(key(), caps, &[]).unwrap();
        let (a, b) = (Id([1; 32]), Id([2; 32]));
        let update = spending.update(a, credits("2"), credits("1"), T0).unwrap();
        assert_eq!(rules(&update.alerts), ["budget.50"], "half of a's own cap");
        assert_eq!(update.decision, Decision::Continue);
        let update = spending.update(b, credits("6"), credits("1"), T0).unwrap();
        assert_eq!(rules(&update.alerts), ["budget.80"], "8 of 10 at once");
        assert!(update.alerts.iter().all(|a| a.body.subject.is_none()));
        assert_eq!(update.decision, Decision::Continue, "8 + 1 fits 10");
        let update = spending
            .update(b, credits("7"), credits("1.5"), T0)
            .unwrap();
        assert_eq!(
            update.decision,
            Decision::Terminate {
                cap: credits("10"),
                account: true
            }
        );
        // A's own cap is nearer than the account's: it names a's cap.
        let update = spending
            .update(a, credits("3.5"), credits("1"), T0)
            .unwrap();
        assert_eq!(
            update.decision,
            Decision::Terminate {
                cap: credits("4"),
                account: false
            }
        );
    }

    #[test]
    fn a_new_cap_raises_what_the_spend_already_reached_once() {
        let spends = [(Id([1; 32]), credits("6")), (Id([2; 32]), credits("3"))];
        let mut spending = Spending::new(key(), Caps::default(), &spends).unwrap();
        let alerts = spending
            .set_account(Some(credits("10")), &spends, T0)
            .unwrap();
        assert_eq!(rules(&alerts), ["budget.80"], "9 of 10: the highest mark");
        // The same cap again changes nothing and raises nothing.
        assert!(spending
            .set_account(Some(credits("10")), &spends, T0)
            .unwrap()
            .is_empty());
        let err = spending
            .set_account(Some(Credits::ZERO), &spends, T0)
            .unwrap_err();
        assert!(err.to_string().contains("above zero"), "{err}");
        assert_eq!(spending.caps().account, Some(credits("10")), "unchanged");
        let alerts = spending
            .set_lease(Id([1; 32]), Some(credits("6")), credits("6"), T0)
            .unwrap();
        assert_eq!(rules(&alerts), ["budget.100"]);
        assert!(alerts.iter().all(|a| a.body.subject == Some(Id([1; 32]))));
        spending
            .set_lease(Id([1; 32]), None, credits("6"), T0)
            .unwrap();
        assert!(spending.caps().leases.is_empty());
        spending.set_account(None, &spends, T0).unwrap();
        let update = spending
            .update(Id([1; 32]), credits("100"), credits("1"), T0)
            .unwrap();
        assert_eq!(update.decision, Decision::Continue, "no caps left");
        assert!(update.alerts.is_empty());
    }

    #[test]
    fn budget_changes_are_read_strictly() {
        assert_eq!(
            BudgetChange::parse(br#"{"account": "12.50"}"#).unwrap(),
            BudgetChange::Account(Some(credits("12.5")))
        );
        assert_eq!(
            BudgetChange::parse(br#"{"account": null}"#).unwrap(),
            BudgetChange::Account(None)
        );
        let lease = Id([0xab; 32]);
        let body = format!(r#"{{"lease": "{lease}", "cap": "3.00"}}"#);
        assert_eq!(
            BudgetChange::parse(body.as_bytes()).unwrap(),
            BudgetChange::Lease {
                lease,
                cap: Some(credits("3"))
            }
        );
        for (body, says) in [
            (&br#"{"account": 12.5}"#[..], "decimal strings"),
            (br#"{"account": "twelve"}"#, "not a decimal amount"),
            (br#"{"account": "-1"}"#, "above zero"),
            (br#"{"account": "0"}"#, "above zero"),
            (br#"{"account": "1.0000001"}"#, "decimal places"),
            (br#"{"account": "1", "cap": "2"}"#, "send {"),
            (br#"{"lease": "abc", "cap": "2"}"#, "lease:"),
            (br#"{"acount": "1"}"#, "unknown field \"acount\""),
            (br#"["account"]"#, "JSON object"),
            (b"account=1", "not JSON"),
        ] {
            let err = BudgetChange::parse(body).unwrap_err();
            assert!(
                err.contains(says),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_restart_does_not_raise_the_account_alerts_again() {
        let caps = Caps {
            account: Some(credits("10")),
            leases: BTreeMap::new(),
        };
        let spends = [(Id([1; 32]), credits("9"))];
        let mut spending = Spending::new(key(), caps, &spends).unwrap();
        let update = spending
            .update(Id([2; 32]), credits("0.5"), credits("0.1"), T0)
            .unwrap();
        assert!(update.alerts.is_empty(), "50 and 80 % were raised before");
        let update = spending
            .update(Id([2; 32]), credits("1"), credits("0.1"), T0)
            .unwrap();
        assert_eq!(rules(&update.alerts), ["budget.100"]);
    }
}
