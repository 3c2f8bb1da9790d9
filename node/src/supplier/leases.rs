//! The supplier's leases as its API and trends read them. The leases
//! still running or being settled are few (the GPUs of one rig) and are
//! republished by the runtime as they change; those that nothing will
//! change any more are kept here once, ordered by their end and with
//! running totals, so that neither the runtime's passes nor a listing
//! read every lease the supplier ever had.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use rigmesh_protocol::{Credits, Id, UnixMillis};

use super::runtime::SupplierLease;

/// The leases nothing will change any more: finally settled by the
/// coordinators, or ended where no coordinator set settles them.
#[derive(Debug, Default)]
pub struct ClosedLeases {
    by_id: HashMap<Id, SupplierLease>,
    /// Those that end last first (a tie by lease id).
    by_end: BTreeSet<(Reverse<UnixMillis>, Id)>,
    /// The sums over every closed lease, exact.
    attested: i128,
    settled: i128,
    gpu_ms: u128,
}

/// What a set of leases adds up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseTotals {
    /// What the attested time is worth at the lease prices.
    pub attested: Credits,
    /// What settlement certificates credited to the supplier.
    pub settled: Credits,
    /// GPU-milliseconds attested.
    pub gpu_ms: u64,
}

fn settled_units(lease: &SupplierLease) -> i128 {
    lease
        .settled
        .as_ref()
        .map_or(0, |s| i128::from(s.earned.units()))
}

fn credits(units: i128) -> Credits {
    Credits::from_units(i64::try_from(units).unwrap_or(i64::MAX))
}

impl LeaseTotals {
    /// The totals of `leases`.
    pub fn of<'a>(leases: impl IntoIterator<Item = &'a SupplierLease>) -> Self {
        let (mut attested, mut settled, mut gpu_ms) = (0i128, 0i128, 0u128);
        for lease in leases {
            attested += i128::from(lease.earned.units());
            settled += settled_units(lease);
            gpu_ms += u128::from(lease.billable_gpu_ms);
        }
        LeaseTotals {
            attested: credits(attested),
            settled: credits(settled),
            gpu_ms: u64::try_from(gpu_ms).unwrap_or(u64::MAX),
        }
    }

    /// Both totals added, each saturating.
    pub fn plus(self, other: LeaseTotals) -> LeaseTotals {
        LeaseTotals {
            attested: self
                .attested
                .checked_add(other.attested)
                .unwrap_or(Credits::MAX),
            settled: self
                .settled
                .checked_add(other.settled)
                .unwrap_or(Credits::MAX),
            gpu_ms: self.gpu_ms.saturating_add(other.gpu_ms),
        }
    }
}

impl ClosedLeases {
    /// Keeps `lease` as closed; one kept before under the same id is
    /// replaced.
    pub fn insert(&mut self, lease: SupplierLease) {
        if let Some(old) = self.by_id.remove(&lease.lease) {
            self.forget(&old);
        }
        self.by_end.insert((Reverse(lease.ends_at), lease.lease));
        self.attested += i128::from(lease.earned.units());
        self.settled += settled_units(&lease);
        self.gpu_ms += u128::from(lease.billable_gpu_ms);
        self.by_id.insert(lease.lease, lease);
    }

    fn forget(&mut self, old: &SupplierLease) {
        self.by_end.remove(&(Reverse(old.ends_at), old.lease));
        self.attested -= i128::from(old.earned.units());
        self.settled -= settled_units(old);
        self.gpu_ms -= u128::from(old.billable_gpu_ms);
    }

    /// How many leases are closed.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether `lease` is closed.
    pub fn contains(&self, lease: &Id) -> bool {
        self.by_id.contains_key(lease)
    }

    /// The closed leases' totals.
    pub fn totals(&self) -> LeaseTotals {
        LeaseTotals {
            attested: credits(self.attested),
            settled: credits(self.settled),
            gpu_ms: u64::try_from(self.gpu_ms).unwrap_or(u64::MAX),
        }
    }

    /// The `limit` closed leases that end last, latest first (a tie by
    /// lease id); only those are visited.
    pub fn latest(&self, limit: usize) -> impl Iterator<Item = &SupplierLease> {
        self.by_end
            .iter()
            .take(limit)
            .filter_map(|(_, id)| self.by_id.get(id))
    }
}

/// The closed leases, shared by the runtime that adds to them and the
/// readers of the supplier's view.
#[derive(Debug, Clone, Default)]
pub struct SharedClosed(Arc<RwLock<ClosedLeases>>);

impl SharedClosed {
    /// The closed leases, to read.
    pub fn read(&self) -> RwLockReadGuard<'_, ClosedLeases> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps each of `leases` as closed.
    pub fn extend(&self, leases: impl IntoIterator<Item = SupplierLease>) {
        let mut closed = self.0.write().unwrap_or_else(PoisonError::into_inner);
        for lease in leases {
            closed.insert(lease);
        }
    }
}

/// The `limit` leases, of `open` and `closed` together, that end last,
/// latest first (a tie by lease id). The open ones are few; of the closed,
/// no more than `limit` are visited.
pub fn latest<'a>(
    open: &'a [SupplierLease],
    closed: &'a ClosedLeases,
    limit: usize,
) -> Vec<&'a SupplierLease> {
    let order = |a: &&SupplierLease, b: &&SupplierLease| {
        b.ends_at.cmp(&a.ends_at).then(a.lease.cmp(&b.lease))
    };
    let mut listed: Vec<&SupplierLease> = open.iter().chain(closed.latest(limit)).collect();
    if listed.len() > limit {
        listed.select_nth_unstable_by(limit, order);
        listed.truncate(limit);
    }
    listed.sort_unstable_by(order);
    listed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supplier::settle::Settled;

    fn lease(n: u8, ends_at: u64, earned: i64, settled: Option<i64>) -> SupplierLease {
        SupplierLease {
            lease: Id([n; 32]),
            customer: rigmesh_protocol::Keypair::from_seed([n; 32]).public(),
            gpus: vec![0],
            price_per_gpu_hour: Credits::from_units(1_000_000),
            ends_at: UnixMillis(ends_at),
            windows_attested: 3,
            billable_gpu_ms: u64::from(n) * 1_000,
            earned: Credits::from_units(earned),
            settled: settled.map(|units| Settled {
                earned: Credits::from_units(units),
                closed: true,
                ..Settled::default()
            }),
        }
    }

    /// Whatever splits the leases between open and closed, the listing is
    /// the one a full sort of them all gives, and the totals are the sums.
    #[test]
    fn a_listing_of_open_and_closed_leases_is_the_full_sort_s_head() {
        // Ends repeat, so ties are broken by id.
        let all: Vec<SupplierLease> = (0..40u8)
            .map(|n| {
                let ends = 1_000 + u64::from(n % 7) * 10;
                lease(
                    n,
                    ends,
                    i64::from(n) * 100,
                    (n % 3 != 0).then_some(i64::from(n)),
                )
            })
            .collect();
        let mut sorted: Vec<&SupplierLease> = all.iter().collect();
        sorted.sort_by(|a, b| b.ends_at.cmp(&a.ends_at).then(a.lease.cmp(&b.lease)));
        for open_every in [1usize, 2, 5, 41] {
            let (open, closed_ones): (Vec<_>, Vec<_>) = all
                .iter()
                .cloned()
                .enumerate()
                .partition(|(i, _)| i % open_every == 0);
            let open: Vec<SupplierLease> = open.into_iter().map(|(_, l)| l).collect();
            let shared = SharedClosed::default();
            shared.extend(closed_ones.into_iter().map(|(_, l)| l));
            let closed = shared.read();
            assert_eq!(open.len() + closed.len(), all.len());
            for limit in [0, 1, 6, 7, 20, 40, 100] {
                let listed: Vec<Id> = latest(&open, &closed, limit)
                    .iter()
                    .map(|l| l.lease)
                    .collect();
                let expected: Vec<Id> = sorted.iter().take(limit).map(|l| l.lease).collect();
                assert_eq!(listed, expected, "open every {open_every}, limit {limit}");
            }
            let totals = LeaseTotals::of(&open).plus(closed.totals());
            assert_eq!(totals, LeaseTotals::of(&all), "open every {open_every}");
        }
    }

    /// A lease closed again (a restart reads its summary once more) is
    /// kept once, with its new figures.
    #[test]
    fn a_lease_closed_again_is_replaced_not_counted_twice() {
        let shared = SharedClosed::default();
        shared.extend([lease(1, 5_000, 700, Some(650)), lease(2, 6_000, 100, None)]);
        shared.extend([lease(1, 7_000, 900, Some(850))]);
        let closed = shared.read();
        assert_eq!(closed.len(), 2);
        assert!(closed.contains(&Id([1; 32])));
        let order: Vec<u64> = closed.latest(10).map(|l| l.ends_at.0).collect();
        assert_eq!(order, vec![7_000, 6_000], "its old end is gone");
        assert_eq!(
            closed.totals(),
            LeaseTotals {
                attested: Credits::from_units(1_000),
                settled: Credits::from_units(850),
                gpu_ms: 3_000,
            }
        );
    }
}
