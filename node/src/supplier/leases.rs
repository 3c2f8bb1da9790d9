//! The supplier's leases as its API and trends read them. The leases
//! still running or being settled are few (the GPUs of one rig) and are
//! republished by the runtime as they change; those that nothing will
//! change any more are written once to the supplier's lease history (a
//! tree of the node's database, `<data_dir>/ledger`), ordered by their
//! end and with running totals. A listing reads as many of them as it lists, and
//! neither the node's memory nor its start grows with its history.

use std::sync::{Mutex, MutexGuard, PoisonError};

use rigmesh_ledger::store::{Direction, KeyRange, TreeName};
use rigmesh_ledger::{Batch, MemoryStore, SledStore, Store};
use rigmesh_protocol::{Credits, Id};
use serde::{Deserialize, Serialize};

use super::runtime::SupplierLease;
use crate::error::{Error, Result};

/// The version of the lease history this code reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

const CLOSED: TreeName = "supplier/closed";
/// Key of the schema version.
const SCHEMA_KEY: &[u8] = b"schema";
/// Key of the totals over every closed lease.
const SUMS_KEY: &[u8] = b"sums";
/// First byte of a lease's record key (then its id).
const RECORD: u8 = b'r';
/// First byte of the end order's keys (then the end, inverted so that
/// the latest sorts first, then the id).
const BY_END: u8 = b'e';

/// What a set of leases adds up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTotals {
    /// How many leases.
    pub leases: u64,
    /// What the attested time is worth at the lease prices.
    pub attested: Credits,
    /// What settlement certificates credited to the supplier.
    pub settled: Credits,
    /// GPU-milliseconds attested.
    pub gpu_ms: u64,
}

fn settled_of(lease: &SupplierLease) -> Credits {
    lease.settled.as_ref().map_or(Credits::ZERO, |s| s.earned)
}

impl LeaseTotals {
    /// The totals of `leases`, each sum saturating.
    pub fn of<'a>(leases: impl IntoIterator<Item = &'a SupplierLease>) -> Self {
        leases
            .into_iter()
            .fold(LeaseTotals::default(), |sum, lease| {
                sum.plus(LeaseTotals::one(lease))
            })
    }

    fn one(lease: &SupplierLease) -> Self {
        LeaseTotals {
            leases: 1,
            attested: lease.earned,
            settled: settled_of(lease),
            gpu_ms: lease.billable_gpu_ms,
        }
    }

    /// Both totals added, each sum saturating.
    pub fn plus(self, other: LeaseTotals) -> LeaseTotals {
        LeaseTotals {
            leases: self.leases.saturating_add(other.leases),
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

    /// `self` with `old` taken out and `new` added, exactly; `None` when
    /// a sum would leave its range.
    fn replacing(self, old: Option<&SupplierLease>, new: &SupplierLease) -> Option<LeaseTotals> {
        let mut sums = self;
        if let Some(old) = old {
            sums = LeaseTotals {
                leases: sums.leases.checked_sub(1)?,
                attested: sums.attested.checked_sub(old.earned)?,
                settled: sums.settled.checked_sub(settled_of(old))?,
                gpu_ms: sums.gpu_ms.checked_sub(old.billable_gpu_ms)?,
            };
        }
        Some(LeaseTotals {
            leases: sums.leases.checked_add(1)?,
            attested: sums.attested.checked_add(new.earned)?,
            settled: sums.settled.checked_add(settled_of(new))?,
            gpu_ms: sums.gpu_ms.checked_add(new.billable_gpu_ms)?,
        })
    }
}

fn record_key(lease: &Id) -> Vec<u8> {
    let mut key = Vec::with_capacity(33);
    key.push(RECORD);
    key.extend_from_slice(lease.as_bytes());
    key
}

fn end_key(lease: &SupplierLease) -> Vec<u8> {
    let mut key = Vec::with_capacity(41);
    key.push(BY_END);
    key.extend_from_slice(&(u64::MAX - lease.ends_at.0).to_be_bytes());
    key.extend_from_slice(lease.lease.as_bytes());
    key
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Store(format!("supplier lease history: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Store(format!("supplier lease history: a corrupt {what}: {e}")))
}

fn ledger(e: rigmesh_ledger::Error) -> Error {
    Error::Store(format!("supplier lease history: {e}"))
}

/// The leases nothing will change any more: finally settled by the
/// coordinators, or ended where no coordinator set settles them. Every
/// call reads or writes the store: call it off the async executor.
pub struct ClosedLeases {
    store: Box<dyn Store>,
    /// Held while a lease is written, so that writes of the totals follow
    /// one another.
    writing: Mutex<()>,
    /// The totals as stored, held in memory; locked only to be read or
    /// replaced, never across a write, so a reader waits for no disk.
    sums: Mutex<LeaseTotals>,
    /// The last [`RECENT`] leases written, so that a reader of the open
    /// leases leaves out one closed since they were published.
    recent: Mutex<Recent>,
}

/// How many of the leases closed last are remembered in memory. A lease
/// stays among the open ones for at most a pass of the supplier's
/// runtime (a second) after it is written here.
const RECENT: usize = 1_024;

#[derive(Debug, Default)]
struct Recent {
    order: std::collections::VecDeque<Id>,
    ids: std::collections::HashSet<Id>,
}

impl Recent {
    fn add(&mut self, lease: Id) {
        if !self.ids.insert(lease) {
            return;
        }
        self.order.push_back(lease);
        if self.order.len() > RECENT {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }
}

impl std::fmt::Debug for ClosedLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClosedLeases")
            .field("totals", &self.totals())
            .finish_non_exhaustive()
    }
}

impl ClosedLeases {
    /// Opens (or creates) the history in its tree of `db`, the database
    /// of the node's market store.
    pub fn in_database(db: sled::Db) -> Result<Self> {
        Self::over(Box::new(SledStore::open_in(db)))
    }

    /// A history in memory, for tests and nodes without a data directory.
    pub fn in_memory() -> Result<Self> {
        Self::over(Box::new(MemoryStore::new()))
    }

    /// The history over `store`: writes the schema version into an empty
    /// store, refuses one of another version, and reads the totals.
    pub fn over(store: Box<dyn Store>) -> Result<Self> {
        match store.get(CLOSED, SCHEMA_KEY).map_err(ledger)? {
            None => store
                .put(CLOSED, SCHEMA_KEY, &encode(&SCHEMA_VERSION)?)
                .map_err(ledger)?,
            Some(bytes) => {
                let version: u32 = decode("schema version", &bytes)?;
                if version != SCHEMA_VERSION {
                    return Err(Error::Store(format!(
                        "the supplier lease history is at schema version {version}; this node reads version {SCHEMA_VERSION}"
                    )));
                }
            }
        }
        let sums = match store.get(CLOSED, SUMS_KEY).map_err(ledger)? {
            Some(bytes) => decode("totals", &bytes)?,
            None => LeaseTotals::default(),
        };
        Ok(ClosedLeases {
            store,
            writing: Mutex::new(()),
            sums: Mutex::new(sums),
            recent: Mutex::default(),
        })
    }

    fn sums(&self) -> MutexGuard<'_, LeaseTotals> {
        // Replaced whole, after the write that stored it.
        self.sums.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `lease` as closed, durably (flushed before it returns); one
    /// kept before under the same id is replaced. The record, its place
    /// in the end order and the totals are written together.
    pub fn insert(&self, lease: &SupplierLease) -> Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let sums = self.totals();
        let key = record_key(&lease.lease);
        let old: Option<SupplierLease> = match self.store.get(CLOSED, &key).map_err(ledger)? {
            Some(bytes) => Some(decode("lease", &bytes)?),
            None => None,
        };
        let next = sums.replacing(old.as_ref(), lease).ok_or_else(|| {
            Error::Store("supplier lease history: the totals leave their range".into())
        })?;
        let mut batch = Batch::new();
        if let Some(old) = &old {
            batch.delete(CLOSED, end_key(old));
        }
        batch.put(CLOSED, end_key(lease), Vec::new());
        batch.put(CLOSED, key, encode(lease)?);
        batch.put(CLOSED, SUMS_KEY.to_vec(), encode(&next)?);
        self.store.write(&batch).map_err(ledger)?;
        self.store.flush().map_err(ledger)?;
        *self.sums() = next;
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(lease.lease);
        Ok(())
    }

    /// Whether `lease` was closed lately (among the last [`RECENT`]), from
    /// memory.
    pub fn closed_lately(&self, lease: &Id) -> bool {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ids
            .contains(lease)
    }

    /// Of `open`, as a view published them, those not closed since.
    pub fn still_open(&self, open: &[SupplierLease]) -> Vec<SupplierLease> {
        open.iter()
            .filter(|l| !self.closed_lately(&l.lease))
            .cloned()
            .collect()
    }

    /// How many leases are closed.
    pub fn len(&self) -> usize {
        usize::try_from(self.sums().leases).unwrap_or(usize::MAX)
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.sums().leases == 0
    }

    /// The closed leases' totals, from memory.
    pub fn totals(&self) -> LeaseTotals {
        *self.sums()
    }

    /// A closed lease.
    pub fn get(&self, lease: &Id) -> Result<Option<SupplierLease>> {
        match self.store.get(CLOSED, &record_key(lease)).map_err(ledger)? {
            Some(bytes) => decode("lease", &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The `limit` closed leases that end last, latest first (a tie by
    /// lease id); only those are read.
    pub fn latest(&self, limit: usize) -> Result<Vec<SupplierLease>> {
        let mut out = Vec::new();
        for entry in self
            .store
            .scan(CLOSED, KeyRange::prefix(&[BY_END]), Direction::Forward)
            .take(limit)
        {
            let (key, _) = entry.map_err(ledger)?;
            let id = key
                .get(9..)
                .and_then(|id| <[u8; 32]>::try_from(id).ok())
                .map(Id)
                .ok_or_else(|| Error::Store("supplier lease history: a corrupt end key".into()))?;
            match self.get(&id)? {
                Some(lease) => out.push(lease),
                None => {
                    return Err(Error::Store(format!(
                        "supplier lease history: lease {id} is in the end order but not stored"
                    )))
                }
            }
        }
        Ok(out)
    }
}

/// The `limit` leases, of `open` and `closed` together, that end last,
/// latest first (a tie by lease id). The open ones are few; of the closed,
/// no more than `limit` are read. Reads the store: off the executor.
pub fn latest(
    open: &[SupplierLease],
    closed: Option<&ClosedLeases>,
    limit: usize,
) -> Result<Vec<SupplierLease>> {
    let order = |a: &SupplierLease, b: &SupplierLease| {
        b.ends_at.cmp(&a.ends_at).then(a.lease.cmp(&b.lease))
    };
    let mut listed: Vec<SupplierLease> = open.to_vec();
    if let Some(closed) = closed {
        listed.extend(closed.latest(limit)?);
    }
    if listed.len() > limit {
        listed.select_nth_unstable_by(limit, order);
        listed.truncate(limit);
    }
    listed.sort_unstable_by(order);
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supplier::settle::Settled;
    use rigmesh_protocol::UnixMillis;

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
        // Ends repeat, so ties are broken by id; one ends at the largest
        // time there is.
        let all: Vec<SupplierLease> = (0..40u8)
            .map(|n| {
                let ends = if n == 39 {
                    u64::MAX
                } else {
                    1_000 + u64::from(n % 7) * 10
                };
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
            let closed = ClosedLeases::in_memory().unwrap();
            for (_, l) in closed_ones {
                closed.insert(&l).unwrap();
            }
            assert_eq!(open.len() + closed.len(), all.len());
            for limit in [0, 1, 6, 7, 20, 40, 100] {
                let listed: Vec<Id> = latest(&open, Some(&closed), limit)
                    .unwrap()
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

    /// A lease closed again (its saved state archived once more after a
    /// crash) is kept once, with its new figures, also after reopening.
    #[test]
    fn a_lease_closed_again_is_replaced_and_the_history_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let open = || ClosedLeases::in_database(rigmesh_ledger::store::open_db(&path).unwrap());
        {
            let closed = open().unwrap();
            closed.insert(&lease(1, 5_000, 700, Some(650))).unwrap();
            closed.insert(&lease(2, 6_000, 100, None)).unwrap();
            closed.insert(&lease(1, 7_000, 900, Some(850))).unwrap();
        }
        let closed = open().unwrap();
        assert_eq!(closed.len(), 2);
        let order: Vec<u64> = closed
            .latest(10)
            .unwrap()
            .iter()
            .map(|l| l.ends_at.0)
            .collect();
        assert_eq!(order, vec![7_000, 6_000], "its old end is gone");
        assert_eq!(
            closed.get(&Id([1; 32])).unwrap().unwrap().earned,
            Credits::from_units(900)
        );
        assert_eq!(
            closed.totals(),
            LeaseTotals {
                leases: 2,
                attested: Credits::from_units(1_000),
                settled: Credits::from_units(850),
                gpu_ms: 3_000,
            }
        );
    }

    /// A corrupt record or totals, or another schema, is refused with an
    /// error that says so, and a refused write changes nothing.
    #[test]
    fn a_corrupt_history_is_an_error_and_a_refused_write_changes_nothing() {
        let store = MemoryStore::new();
        store.put(CLOSED, SCHEMA_KEY, b"7").unwrap();
        let err = ClosedLeases::over(Box::new(store)).unwrap_err().to_string();
        assert!(err.contains("schema version 7"), "{err}");

        let store = MemoryStore::new();
        store.put(CLOSED, SUMS_KEY, b"{").unwrap();
        let err = ClosedLeases::over(Box::new(store)).unwrap_err().to_string();
        assert!(err.contains("corrupt totals"), "{err}");

        let closed = ClosedLeases::in_memory().unwrap();
        closed.insert(&lease(1, 5_000, 700, None)).unwrap();
        closed
            .store
            .put(CLOSED, &record_key(&Id([1; 32])), b"[1,")
            .unwrap();
        let err = closed.latest(5).unwrap_err().to_string();
        assert!(err.contains("corrupt lease"), "{err}");
        let before = closed.totals();
        assert!(closed.insert(&lease(1, 9_000, 1, None)).is_err());
        assert_eq!(closed.totals(), before);
        // Totals that would leave their range are refused.
        let big = lease(3, 1, i64::MAX, None);
        closed.insert(&lease(4, 1, 1, None)).unwrap();
        assert!(closed.insert(&big).is_err());
        assert_eq!(closed.len(), 2);
    }
}
