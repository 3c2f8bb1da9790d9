//! What the customer API answers about money: a lease's windows
//! ([`UsageReport`]), the caps and the spend against them
//! ([`BudgetReport`]), and the account as this node knows it
//! ([`AccountReport`]). They are built from the stored records, so they
//! read the same before and after a restart.

use std::collections::BTreeMap;

use rigmesh_protocol::{Credits, Id, PublicKey, UnixMillis};
use serde::{Deserialize, Serialize};

use super::records::{
    AlertRecord, Caps, CustomerRecords, LeaseRecord, SupplierRecord, WindowRecord,
};
use crate::error::Result;

/// Windows listed by `GET /v1/usage/{lease}` when no limit is given.
pub const DEFAULT_USAGE_WINDOWS: usize = 100;

/// Where a lease is, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Running: its windows are checked and answered.
    Running,
    /// A budget cap stopped it: no further window is paid.
    StoppedAtCap,
    /// Past its end.
    Ended,
    /// Still within its time, but made before this node last started, so
    /// its windows are no longer answered here.
    Unwatched,
}

/// A cap and the spend against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapReport {
    /// The cap; `None` is no cap.
    pub cap: Option<Credits>,
    /// Spent so far.
    pub spent: Credits,
    /// What is left under the cap (never below zero); `None` without a cap.
    pub remaining: Option<Credits>,
}

impl CapReport {
    fn new(cap: Option<Credits>, spent: Credits) -> Self {
        CapReport {
            cap,
            spent,
            remaining: cap.map(|cap| {
                cap.checked_sub(spent)
                    .unwrap_or(Credits::ZERO)
                    .max(Credits::ZERO)
            }),
        }
    }
}

/// One lease's cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseCapReport {
    /// The lease.
    pub lease: Id,
    /// Its cap, spend and what is left.
    #[serde(flatten)]
    pub cap: CapReport,
    /// True once a cap stopped it.
    pub stopped_at_cap: bool,
}

/// `GET /v1/budget`: the caps, the spend against them, and the alerts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetReport {
    /// The account's cap: the spend of all this node's leases together.
    pub account: CapReport,
    /// The leases that have a cap of their own.
    pub leases: Vec<LeaseCapReport>,
    /// Budget alerts raised (at 50, 80 and 100 % of a cap), oldest first.
    pub alerts: Vec<AlertRecord>,
}

/// The caps a lease's spend counts against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBudget {
    /// The lease's own cap.
    pub lease: CapReport,
    /// The account's cap.
    pub account: CapReport,
}

/// `GET /v1/usage/{lease}`: a lease's windows as this node answered them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// The lease and its totals (spent, windows acked and disputed).
    #[serde(flatten)]
    pub lease: LeaseRecord,
    /// Where it is.
    pub state: LeaseState,
    /// The most recent windows, oldest first.
    pub windows: Vec<WindowRecord>,
    /// Windows before the first one listed.
    pub earlier_windows: u64,
    /// The caps its spend counts against.
    pub budget: UsageBudget,
    /// The disputes this node raised against the lease's supplier, on all
    /// leases.
    pub supplier_record: Option<SupplierRecord>,
}

/// One lease in the account report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseSpend {
    /// Lease id.
    pub lease: Id,
    /// The supplier.
    pub supplier: PublicKey,
    /// GPU model.
    pub gpu_model: String,
    /// GPUs leased.
    pub gpu_count: usize,
    /// Where it is.
    pub state: LeaseState,
    /// Spent so far.
    pub spent: Credits,
    /// Windows acked.
    pub acked_windows: u64,
    /// Disputes sent.
    pub disputed_windows: u64,
}

/// `GET /v1/account`: what this node knows locally about its account.
///
/// What the coordinators hold for the account (its balance) is not known
/// locally; it is meant to join this report as a `balance` field, so
/// readers should ignore fields they do not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountReport {
    /// The account key.
    pub account: PublicKey,
    /// Spent across every lease.
    pub spent: Credits,
    /// Leases running now.
    pub active_leases: usize,
    /// The leases that start last, latest first (as many as asked).
    pub leases: Vec<LeaseSpend>,
    /// Every lease this node has had; `leases` lists the latest of them.
    #[serde(default)]
    pub leases_total: usize,
    /// Caps, spend against them, alerts.
    pub budget: BudgetReport,
    /// Suppliers this node has disputed windows of, with the reasons.
    pub suppliers: Vec<SupplierRecord>,
    /// The account as each coordinator that answered holds it (empty
    /// without a coordinator set).
    #[serde(default)]
    pub coordinators: Vec<CoordinatorView>,
    /// The most recent certificates behind the balance, oldest first,
    /// checkable offline.
    #[serde(default)]
    pub receipts: Vec<crate::receipts::Receipt>,
    /// Every receipt this node holds for the account; `receipts` lists
    /// the most recent of them.
    #[serde(default)]
    pub receipts_total: usize,
}

/// One coordinator's view of the account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorView {
    /// The coordinator.
    pub coordinator: PublicKey,
    /// Spendable credits.
    pub balance: Credits,
    /// Locked in escrows of open leases.
    pub escrowed: Credits,
    /// The next debit sequence number.
    pub next_seq: u64,
}

/// The budget report from the caps and the stored leases' spend (held in
/// memory by the records); each lease with a cap of its own is read by its
/// id.
pub fn budget(records: &CustomerRecords, caps: &Caps) -> Result<BudgetReport> {
    let mut leases = Vec::with_capacity(caps.leases.len());
    for (lease, cap) in &caps.leases {
        let record = records.lease(lease)?;
        leases.push(LeaseCapReport {
            lease: *lease,
            cap: CapReport::new(
                Some(*cap),
                record.as_ref().map_or(Credits::ZERO, |r| r.spent),
            ),
            stopped_at_cap: record.is_some_and(|r| r.stopped_at_cap),
        });
    }
    Ok(BudgetReport {
        account: CapReport::new(caps.account, records.spent()?),
        leases,
        alerts: records.alerts()?,
    })
}

/// The usage report of `lease`, with at most `limit` windows; `None` for
/// a lease this node does not know.
pub fn usage(
    records: &CustomerRecords,
    caps: &Caps,
    lease: &Id,
    limit: usize,
    state: &dyn Fn(&LeaseRecord) -> LeaseState,
) -> Result<Option<UsageReport>> {
    let Some(record) = records.lease(lease)? else {
        return Ok(None);
    };
    let windows = records.windows(lease, limit)?;
    let account_spent = records.spent()?;
    Ok(Some(UsageReport {
        state: state(&record),
        earlier_windows: windows.first().map_or(0, |w| w.seq),
        windows,
        budget: UsageBudget {
            lease: CapReport::new(caps.leases.get(lease).copied(), record.spent),
            account: CapReport::new(caps.account, account_spent),
        },
        supplier_record: records.supplier(&record.supplier)?,
        lease: record,
    }))
}

/// The account report.
///
/// It lists the `limit` leases that start last, read one by one; the
/// spend is every lease's, from the records' index, and the running
/// leases are counted among those the runtime watches (`live`, with their
/// state), so a long history is not read for either.
pub fn account(
    records: &CustomerRecords,
    caps: &Caps,
    account: PublicKey,
    live: &BTreeMap<Id, LeaseState>,
    now: UnixMillis,
    limit: usize,
) -> Result<AccountReport> {
    let (listed, leases_total) = records.latest_leases(limit)?;
    let leases: Vec<LeaseSpend> = listed
        .iter()
        .map(|l| LeaseSpend {
            lease: l.lease,
            supplier: l.supplier,
            gpu_model: l.gpu_model.clone(),
            gpu_count: l.gpus.len(),
            state: state_of(l, live.get(&l.lease).copied(), now),
            spent: l.spent,
            acked_windows: l.acked_windows,
            disputed_windows: l.disputed_windows,
        })
        .collect();
    let mut active_leases = 0;
    for (id, state) in live {
        if let Some(record) = records.lease(id)? {
            if state_of(&record, Some(*state), now) == LeaseState::Running {
                active_leases += 1;
            }
        }
    }
    let budget = budget(records, caps)?;
    Ok(AccountReport {
        account,
        spent: budget.account.spent,
        active_leases,
        leases,
        leases_total,
        budget,
        suppliers: records.suppliers()?,
        coordinators: Vec::new(),
        receipts: Vec::new(),
        receipts_total: 0,
    })
}

/// A stored lease the customer ended, or whose end `now` is past, has
/// ended; otherwise it is as the runtime says (`live`) or, not watched by
/// this run, unwatched.
pub fn state_of(record: &LeaseRecord, live: Option<LeaseState>, now: UnixMillis) -> LeaseState {
    match live {
        Some(LeaseState::StoppedAtCap) => LeaseState::StoppedAtCap,
        _ if record.stopped_at_cap => LeaseState::StoppedAtCap,
        _ if record.ended || record.finally_settled || now >= record.ends_at => LeaseState::Ended,
        Some(state) => state,
        None => LeaseState::Unwatched,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ends_at: u64) -> LeaseRecord {
        LeaseRecord {
            starts_at: UnixMillis(0),
            ends_at: UnixMillis(ends_at),
            ..crate::customer::records::tests::lease(1)
        }
    }

    /// A lease finally settled before its end (a supplier's termination,
    /// a released escrow) has ended, whether the node still watches it or
    /// let it go; one not settled and not watched is unwatched.
    #[test]
    fn a_finally_settled_lease_has_ended_watched_or_not() {
        let now = UnixMillis(1_000);
        let open = record(5_000);
        assert_eq!(state_of(&open, None, now), LeaseState::Unwatched);
        assert_eq!(
            state_of(&open, Some(LeaseState::Running), now),
            LeaseState::Running
        );
        let settled = LeaseRecord {
            finally_settled: true,
            ..open
        };
        assert_eq!(state_of(&settled, None, now), LeaseState::Ended);
        assert_eq!(
            state_of(&settled, Some(LeaseState::Running), now),
            LeaseState::Ended
        );
        assert_eq!(state_of(&record(500), None, now), LeaseState::Ended);
    }
}
