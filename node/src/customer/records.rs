//! What the customer role keeps across restarts, in a store of its own
//! (`<data dir>/customer`, sled): the budget caps, a summary of every lease
//! with its most recent windows, the disputes raised against each
//! supplier, and the budget alerts.
//!
//! The signed acks and disputes themselves are evidence and live in the
//! market store with every other signed message; these records are the
//! customer's own bookkeeping over them, shaped for the local API.
//!
//! Each tree names its key once, here. Values are JSON: the records are
//! small, local and read by people through the API, and a field added
//! later (`#[serde(default)]`) reads old records unchanged.
//!
//! Each lease's spend is also held in memory, read once when the records
//! open and kept in step with every write of a lease: the account's spend,
//! what a bid may still escrow under the account's cap and the budget
//! report are answered from it, so none of them reads every lease a
//! long-lived account has had. Only the account report, which lists them
//! all, and the resumption at start read them all.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `customer/meta` | `schema` | schema version |
//! | `customer/caps` | `caps` | [`Caps`] |
//! | `customer/leases` | lease id | [`LeaseRecord`] |
//! | `customer/windows` | lease id, seq (big-endian) | [`WindowRecord`] |
//! | `customer/suppliers` | supplier key | [`SupplierRecord`] |
//! | `customer/alerts` | created at (big-endian), alert id | [`AlertRecord`] |

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rigmesh_ledger::store::{Direction, KeyRange, TreeName};
use rigmesh_ledger::{Batch, MemoryStore, SledStore, Store};
use rigmesh_protocol::{
    Alert, Credits, DisputeReason, Id, PublicKey, Severity, Signed, UnixMillis,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The layout version of these records; a store written by a newer
/// version is refused rather than misread.
pub const SCHEMA_VERSION: u32 = 1;

/// Windows kept per lease (the most recent); older ones are dropped as new
/// ones arrive, while the lease's totals keep counting all of them.
pub const KEPT_WINDOWS: u64 = 4_096;

/// Budget alerts kept (the most recent).
pub const KEPT_ALERTS: usize = 256;

const META: TreeName = "customer/meta";
const CAPS: TreeName = "customer/caps";
const LEASES: TreeName = "customer/leases";
const WINDOWS: TreeName = "customer/windows";
const SUPPLIERS: TreeName = "customer/suppliers";
const ALERTS: TreeName = "customer/alerts";

const SCHEMA_KEY: &[u8] = b"schema";
const CAPS_KEY: &[u8] = b"caps";

/// The customer's spending caps; `None` is no cap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    /// Most all of this node's leases together may cost.
    #[serde(default)]
    pub account: Option<Credits>,
    /// Most each lease may cost, for the leases that have a cap.
    #[serde(default)]
    pub leases: BTreeMap<Id, Credits>,
}

/// One lease as the customer has seen it so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Lease id.
    pub lease: Id,
    /// The supplier.
    pub supplier: PublicKey,
    /// GPU model.
    pub gpu_model: String,
    /// Device indices leased.
    pub gpus: Vec<u16>,
    /// Price per GPU-hour.
    pub price_per_gpu_hour: Credits,
    /// Lease length, hours.
    pub hours: u32,
    /// Metering window, milliseconds.
    pub window_ms: u64,
    /// When the lease starts.
    pub starts_at: UnixMillis,
    /// When it ends.
    pub ends_at: UnixMillis,
    /// What the acked windows cost (the billing rule, rounded once).
    pub spent: Credits,
    /// GPU-milliseconds of the acked windows.
    pub billable_gpu_ms: u64,
    /// Windows acked.
    pub acked_windows: u64,
    /// Disputes sent for this lease (windows and stray attestations).
    pub disputed_windows: u64,
    /// True once a budget cap stopped the lease.
    pub stopped_at_cap: bool,
    /// The escrow the coordinators certified for the lease: the most it
    /// can cost, whatever the supplier attests.
    #[serde(default)]
    pub escrowed: Option<Credits>,
    /// The signed agreement, hex, so a restarted node goes on watching
    /// the lease.
    #[serde(default)]
    pub agreement: Option<String>,
    /// True once the customer ended the lease (`rigmesh end`).
    #[serde(default)]
    pub ended: bool,
    /// The customer's standing dispute of the lease's windows
    /// (`rigmesh dispute`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contested: Option<crate::customer::usage::Contest>,
    /// True once this node saw the lease's final settlement (or its
    /// escrow's release) certified: nothing more is paid on it, and a
    /// restarted node does not watch it again.
    #[serde(default)]
    pub finally_settled: bool,
}

/// What the customer answered for one window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum WindowStatus {
    /// Acked: the window is paid.
    Acked,
    /// Disputed: the window is not paid.
    Disputed {
        /// Why.
        reason: DisputeReason,
        /// The detail sent with the dispute.
        detail: String,
    },
}

/// One metering window of a lease, as attested and answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowRecord {
    /// Position in the lease's attestation chain.
    pub seq: u64,
    /// The attestation's id.
    pub attestation: Id,
    /// Window start.
    pub window_start: UnixMillis,
    /// Window end.
    pub window_end: UnixMillis,
    /// GPU-milliseconds the supplier billed.
    pub billable_gpu_ms: u64,
    /// What the window added to the lease's spend (zero when disputed).
    /// The charges of a lease add up exactly to its spend.
    pub charge: Credits,
    /// Acked or disputed.
    #[serde(flatten)]
    pub status: WindowStatus,
}

/// The latest dispute against a supplier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisputeNote {
    /// The lease.
    pub lease: Id,
    /// The attestation's seq.
    pub seq: u64,
    /// Why.
    pub reason: DisputeReason,
    /// The detail sent.
    pub detail: String,
    /// When the dispute was signed.
    pub at: UnixMillis,
}

/// The disputes this customer raised against one supplier: its record of
/// misbehaviour as this node saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupplierRecord {
    /// The supplier.
    pub supplier: PublicKey,
    /// Disputes in all.
    pub disputes: u64,
    /// Disputes by reason (`overbilled`, `broken_chain`, ...).
    pub by_reason: BTreeMap<String, u64>,
    /// The latest one.
    pub last: Option<DisputeNote>,
}

/// A budget alert this node raised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// The alert's id.
    pub id: Id,
    /// `budget.50`, `budget.80` or `budget.100`.
    pub rule: String,
    /// How urgent.
    pub severity: Severity,
    /// The lease whose cap it is about; `None` for the account's cap.
    pub lease: Option<Id>,
    /// What happened, in words.
    pub message: String,
    /// When it was raised.
    pub created_at: UnixMillis,
}

impl AlertRecord {
    /// The record of a signed alert.
    pub fn of(alert: &Signed<Alert>) -> Result<Self> {
        Ok(AlertRecord {
            id: alert.id()?,
            rule: alert.body.rule.clone(),
            severity: alert.body.severity,
            lease: alert.body.subject,
            message: alert.body.message.clone(),
            created_at: alert.body.created_at,
        })
    }
}

/// The name a dispute reason has on the wire and in JSON (`overbilled`).
pub fn reason_name(reason: DisputeReason) -> String {
    match serde_json::to_value(reason) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{reason:?}"),
    }
}

fn ledger(e: rigmesh_ledger::Error) -> Error {
    Error::Store(format!("customer records: {e}"))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Store(format!("customer records: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Store(format!("customer records: a corrupt {what}: {e}")))
}

fn window_key(lease: &Id, seq: u64) -> Vec<u8> {
    let mut key = lease.as_bytes().to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn alert_key(alert: &AlertRecord) -> Vec<u8> {
    let mut key = alert.created_at.0.to_be_bytes().to_vec();
    key.extend_from_slice(alert.id.as_bytes());
    key
}

/// The customer's records over a [`Store`].
pub struct CustomerRecords {
    store: Box<dyn Store>,
    /// Each stored lease's spend, start and whether it is finally
    /// settled, held in memory.
    index: Mutex<LeaseIndex>,
    /// Lease records read by reads of many (whole-tree reads and the
    /// latest leases), since the records opened.
    leases_read: AtomicU64,
}

/// What the records hold in memory of each stored lease.
#[derive(Debug, Default)]
struct LeaseIndex {
    /// Each lease's spend and start, as stored.
    by_id: BTreeMap<Id, (Credits, UnixMillis)>,
    /// Each lease by when it starts, the latest first (a tie by id), to
    /// list the latest without reading the rest.
    by_start: BTreeSet<(Reverse<UnixMillis>, Id)>,
    /// The leases not finally settled.
    unsettled: BTreeSet<Id>,
}

impl LeaseIndex {
    /// Notes a lease as stored; one noted before under another start
    /// leaves its old place.
    fn note(&mut self, lease: Id, spent: Credits, starts_at: UnixMillis, settled: bool) {
        if let Some((_, old)) = self.by_id.insert(lease, (spent, starts_at)) {
            if old != starts_at {
                self.by_start.remove(&(Reverse(old), lease));
            }
        }
        self.by_start.insert((Reverse(starts_at), lease));
        if settled {
            self.unsettled.remove(&lease);
        } else {
            self.unsettled.insert(lease);
        }
    }
}

/// The part of a stored [`LeaseRecord`] the in-memory indexes need.
#[derive(Deserialize)]
struct SpendOnly {
    lease: Id,
    spent: Credits,
    starts_at: UnixMillis,
    #[serde(default)]
    finally_settled: bool,
}

impl std::fmt::Debug for CustomerRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerRecords").finish_non_exhaustive()
    }
}

impl CustomerRecords {
    /// Opens (or creates) the records in the sled database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let store = SledStore::open(path).map_err(|e| {
            Error::Store(format!(
                "opening the customer records in {}: {e}",
                path.display()
            ))
        })?;
        Self::over(Box::new(store))
    }

    /// Records in memory, for tests.
    pub fn in_memory() -> Result<Self> {
        Self::over(Box::new(MemoryStore::new()))
    }

    /// Records over `store`: writes the schema version into an empty store
    /// and refuses a store of another version.
    pub fn over(store: Box<dyn Store>) -> Result<Self> {
        match store.get(META, SCHEMA_KEY).map_err(ledger)? {
            None => {
                store
                    .put(META, SCHEMA_KEY, &encode(&SCHEMA_VERSION)?)
                    .map_err(ledger)?;
            }
            Some(bytes) => {
                let version: u32 = decode("schema version", &bytes)?;
                if version != SCHEMA_VERSION {
                    return Err(Error::Store(format!(
                        "the customer records are at schema version {version}; this node reads version {SCHEMA_VERSION}"
                    )));
                }
            }
        }
        let records = CustomerRecords {
            store,
            index: Mutex::default(),
            leases_read: AtomicU64::new(0),
        };
        let stored: Vec<SpendOnly> = records.all_leases()?;
        {
            let mut index = records.index();
            for lease in stored {
                index.note(
                    lease.lease,
                    lease.spent,
                    lease.starts_at,
                    lease.finally_settled,
                );
            }
        }
        Ok(records)
    }

    fn index(&self) -> MutexGuard<'_, LeaseIndex> {
        // Changed one lease at a time, and nothing in `note` panics
        // between its changes: a panic elsewhere while it was held leaves
        // it whole.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: TreeName,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>> {
        self.store
            .get(tree, key)
            .map_err(ledger)?
            .map(|bytes| decode(what, &bytes))
            .transpose()
    }

    fn scan<T: DeserializeOwned>(
        &self,
        tree: TreeName,
        range: KeyRange,
        direction: Direction,
        limit: usize,
        what: &str,
    ) -> Result<Vec<T>> {
        self.store
            .scan(tree, range, direction)
            .take(limit)
            .map(|entry| {
                let (_, value) = entry.map_err(ledger)?;
                decode(what, &value)
            })
            .collect()
    }

    /// The caps (none set: no caps).
    pub fn caps(&self) -> Result<Caps> {
        Ok(self.get(CAPS, CAPS_KEY, "budget")?.unwrap_or_default())
    }

    /// Replaces the caps and flushes: a cap the API confirmed survives a
    /// crash.
    pub fn put_caps(&self, caps: &Caps) -> Result<()> {
        self.store
            .put(CAPS, CAPS_KEY, &encode(caps)?)
            .map_err(ledger)?;
        self.store.flush().map_err(ledger)
    }

    /// One lease.
    pub fn lease(&self, lease: &Id) -> Result<Option<LeaseRecord>> {
        self.get(LEASES, lease.as_bytes(), "lease")
    }

    /// Every lease, by id: a read of them all (the resumption at start).
    pub fn leases(&self) -> Result<Vec<LeaseRecord>> {
        self.all_leases()
    }

    /// Every stored lease, read as `T`, counted in [`Self::leases_read`].
    fn all_leases<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        let leases: Vec<T> = self.scan(
            LEASES,
            KeyRange::all(),
            Direction::Forward,
            usize::MAX,
            "lease",
        )?;
        self.leases_read
            .fetch_add(leases.len() as u64, Ordering::Relaxed);
        Ok(leases)
    }

    /// The `limit` stored leases that start last, latest first (a tie by
    /// id), read one by one, and how many leases are stored in all.
    pub fn latest_leases(&self, limit: usize) -> Result<(Vec<LeaseRecord>, usize)> {
        let (ids, total): (Vec<Id>, usize) = {
            let index = self.index();
            let ids = index
                .by_start
                .iter()
                .take(limit)
                .map(|(_, id)| *id)
                .collect();
            (ids, index.by_start.len())
        };
        Ok((self.each_lease(&ids)?, total))
    }

    /// The stored leases not finally settled, read one by one, in id
    /// order: those a restarted node may watch again.
    pub fn unsettled_leases(&self) -> Result<Vec<LeaseRecord>> {
        let ids: Vec<Id> = self.index().unsettled.iter().copied().collect();
        self.each_lease(&ids)
    }

    /// The stored leases of `ids`, read one by one, counted in
    /// [`Self::leases_read`].
    fn each_lease(&self, ids: &[Id]) -> Result<Vec<LeaseRecord>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(lease) = self.lease(id)? {
                out.push(lease);
            }
        }
        self.leases_read
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// How many lease records reads of many ([`Self::leases`],
    /// [`Self::latest_leases`], [`Self::unsettled_leases`], and the one
    /// at open) have read since the records opened.
    pub fn leases_read(&self) -> u64 {
        self.leases_read.load(Ordering::Relaxed)
    }

    /// What every stored lease has cost, together.
    pub fn spent(&self) -> Result<Credits> {
        self.index()
            .by_id
            .values()
            .try_fold(Credits::ZERO, |sum, (spent, _)| sum.checked_add(*spent))
            .ok_or_else(|| Error::Store("the account's spend overflows".into()))
    }

    /// What a stored lease has cost; `None` for a lease not stored.
    pub fn spent_on(&self, lease: &Id) -> Option<Credits> {
        self.index().by_id.get(lease).map(|(spent, _)| *spent)
    }

    /// Whether a stored lease is finally settled, as its record last
    /// said; `None` for a lease not stored.
    pub fn finally_settled(&self, lease: &Id) -> Option<bool> {
        let index = self.index();
        index
            .by_id
            .contains_key(lease)
            .then(|| !index.unsettled.contains(lease))
    }

    /// Each stored lease's spend, by id.
    pub fn spends_by_lease(&self) -> Vec<(Id, Credits)> {
        self.index()
            .by_id
            .iter()
            .map(|(id, (spent, _))| (*id, *spent))
            .collect()
    }

    /// Folds `f` over each stored lease's id and spend, in id order,
    /// without copying them out.
    pub fn fold_spends<T>(&self, init: T, f: impl FnMut(T, (&Id, &Credits)) -> T) -> T {
        self.index()
            .by_id
            .iter()
            .map(|(id, (spent, _))| (id, spent))
            .fold(init, f)
    }

    /// Stores a lease's summary.
    pub fn put_lease(&self, lease: &LeaseRecord) -> Result<()> {
        self.store
            .put(LEASES, lease.lease.as_bytes(), &encode(lease)?)
            .map_err(ledger)?;
        self.index().note(
            lease.lease,
            lease.spent,
            lease.starts_at,
            lease.finally_settled,
        );
        Ok(())
    }

    /// Stores a window and its lease's new summary together, and drops the
    /// window that falls out of the kept ones.
    pub fn put_window(&self, lease: &LeaseRecord, window: &WindowRecord) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(LEASES, lease.lease.as_bytes().to_vec(), encode(lease)?);
        batch.put(
            WINDOWS,
            window_key(&lease.lease, window.seq),
            encode(window)?,
        );
        if let Some(old) = window.seq.checked_sub(KEPT_WINDOWS) {
            batch.delete(WINDOWS, window_key(&lease.lease, old));
        }
        self.store.write(&batch).map_err(ledger)?;
        self.index().note(
            lease.lease,
            lease.spent,
            lease.starts_at,
            lease.finally_settled,
        );
        Ok(())
    }

    /// The most recent `limit` windows of a lease, oldest first.
    pub fn windows(&self, lease: &Id, limit: usize) -> Result<Vec<WindowRecord>> {
        let mut windows: Vec<WindowRecord> = self.scan(
            WINDOWS,
            KeyRange::prefix(lease.as_bytes()),
            Direction::Reverse,
            limit,
            "window",
        )?;
        windows.reverse();
        Ok(windows)
    }

    /// One supplier's record.
    pub fn supplier(&self, supplier: &PublicKey) -> Result<Option<SupplierRecord>> {
        self.get(SUPPLIERS, supplier.as_bytes(), "supplier record")
    }

    /// Every supplier with a dispute on record.
    pub fn suppliers(&self) -> Result<Vec<SupplierRecord>> {
        self.scan(
            SUPPLIERS,
            KeyRange::all(),
            Direction::Forward,
            usize::MAX,
            "supplier record",
        )
    }

    /// Counts a dispute against `supplier` and returns its record.
    pub fn note_dispute(&self, supplier: &PublicKey, note: DisputeNote) -> Result<SupplierRecord> {
        let mut record = self.supplier(supplier)?.unwrap_or(SupplierRecord {
            supplier: *supplier,
            disputes: 0,
            by_reason: BTreeMap::new(),
            last: None,
        });
        record.disputes = record.disputes.saturating_add(1);
        let count = record
            .by_reason
            .entry(reason_name(note.reason))
            .or_default();
        *count = count.saturating_add(1);
        record.last = Some(note);
        self.store
            .put(SUPPLIERS, supplier.as_bytes(), &encode(&record)?)
            .map_err(ledger)?;
        Ok(record)
    }

    /// Keeps an alert, dropping the oldest beyond [`KEPT_ALERTS`].
    pub fn put_alert(&self, alert: &AlertRecord) -> Result<()> {
        self.store
            .put(ALERTS, &alert_key(alert), &encode(alert)?)
            .map_err(ledger)?;
        let mut keys = Vec::new();
        for entry in self
            .store
            .scan(ALERTS, KeyRange::all(), Direction::Reverse)
            .skip(KEPT_ALERTS)
        {
            let (key, _) = entry.map_err(ledger)?;
            keys.push(key);
        }
        if !keys.is_empty() {
            let mut batch = Batch::new();
            for key in keys {
                batch.delete(ALERTS, key);
            }
            self.store.write(&batch).map_err(ledger)?;
        }
        Ok(())
    }

    /// The alerts kept, oldest first.
    pub fn alerts(&self) -> Result<Vec<AlertRecord>> {
        self.scan(
            ALERTS,
            KeyRange::all(),
            Direction::Forward,
            KEPT_ALERTS,
            "alert",
        )
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<()> {
        self.store.flush().map_err(ledger)
    }

    /// Runs `work` on these records on a blocking thread, for what may wait
    /// on the disk: a flush (setting the caps flushes), and a batch (a
    /// window, an alert), which waits while a flush of any of the
    /// process's sled databases is under way. The async executor the
    /// node's tasks share is not held up meanwhile.
    pub async fn off_executor<T, F>(self: &std::sync::Arc<Self>, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&CustomerRecords) -> Result<T> + Send + 'static,
    {
        let records = std::sync::Arc::clone(self);
        tokio::task::spawn_blocking(move || work(&records))
            .await
            .map_err(|err| {
                Error::Store(format!("customer records: the write did not finish: {err}"))
            })?
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A one-hour lease record of two GPUs, nothing metered yet.
    pub(crate) fn lease(id: u8) -> LeaseRecord {
        LeaseRecord {
            lease: Id([id; 32]),
            supplier: rigmesh_protocol::Keypair::from_seed([7; 32]).public(),
            gpu_model: "A100".into(),
            gpus: vec![0, 1],
            price_per_gpu_hour: "1.70".parse().unwrap(),
            hours: 1,
            window_ms: 1_000,
            starts_at: UnixMillis(1_000),
            ends_at: UnixMillis(3_601_000),
            spent: Credits::ZERO,
            billable_gpu_ms: 0,
            acked_windows: 0,
            disputed_windows: 0,
            stopped_at_cap: false,
            escrowed: None,
            agreement: None,
            ended: false,
            contested: None,
            finally_settled: false,
        }
    }

    fn window(seq: u64) -> WindowRecord {
        WindowRecord {
            seq,
            attestation: Id([seq as u8; 32]),
            window_start: UnixMillis(1_000 + seq * 1_000),
            window_end: UnixMillis(2_000 + seq * 1_000),
            billable_gpu_ms: 2_000,
            charge: Credits::from_units(944),
            status: if seq.is_multiple_of(2) {
                WindowStatus::Acked
            } else {
                WindowStatus::Disputed {
                    reason: DisputeReason::Overbilled,
                    detail: "GPU 0 billed 1001 ms in a 1000 ms window".into(),
                }
            },
        }
    }

    #[test]
    fn the_spend_index_follows_every_lease_write_and_is_read_back_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("customer");
        let units = Credits::from_units;
        {
            let records = CustomerRecords::open(&path).unwrap();
            assert_eq!(records.spent().unwrap(), Credits::ZERO);
            let mut a = lease(1);
            a.spent = units(1_500);
            records.put_lease(&a).unwrap();
            let mut b = lease(2);
            b.spent = units(700);
            records.put_lease(&b).unwrap();
            // A window's write carries its lease's new spend.
            a.spent = units(2_444);
            records.put_window(&a, &window(0)).unwrap();
            assert_eq!(records.spent().unwrap(), units(3_144));
            assert_eq!(records.spent_on(&Id([1; 32])), Some(units(2_444)));
            assert_eq!(records.spent_on(&Id([3; 32])), None);
            assert_eq!(records.leases_read(), 0, "nothing was read whole");
        }
        let records = CustomerRecords::open(&path).unwrap();
        assert_eq!(records.leases_read(), 2, "each lease read once, at open");
        assert_eq!(
            records.spends_by_lease(),
            [(Id([1; 32]), units(2_444)), (Id([2; 32]), units(700))]
        );
        assert_eq!(records.spent().unwrap(), units(3_144));
    }

    #[test]
    fn the_leases_that_start_last_are_listed_first_before_and_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("customer");
        let at = |id: u8, start: u64| {
            let mut l = lease(id);
            l.starts_at = UnixMillis(start);
            l
        };
        let ids = |(listed, total): (Vec<LeaseRecord>, usize)| {
            (
                listed.iter().map(|l| l.lease.0[0]).collect::<Vec<u8>>(),
                total,
            )
        };
        {
            let records = CustomerRecords::open(&path).unwrap();
            for (id, start) in [(1, 5_000), (2, 9_000), (3, 1_000), (4, 9_000)] {
                records.put_lease(&at(id, start)).unwrap();
            }
            // Written again (a window): still listed once.
            records.put_window(&at(1, 5_000), &window(0)).unwrap();
            assert_eq!(ids(records.latest_leases(3).unwrap()), (vec![2, 4, 1], 4));
            assert_eq!(records.leases_read(), 3, "the listed ones only");
            // Written under another start: listed once, at its new place.
            records.put_lease(&at(3, 9_500)).unwrap();
            assert_eq!(ids(records.latest_leases(2).unwrap()), (vec![3, 2], 4));
            records.put_lease(&at(3, 1_000)).unwrap();
        }
        let records = CustomerRecords::open(&path).unwrap();
        assert_eq!(
            ids(records.latest_leases(10).unwrap()),
            (vec![2, 4, 1, 3], 4)
        );
        assert_eq!(ids(records.latest_leases(0).unwrap()), (vec![], 4));
    }

    /// A restarted node reads back the leases not finally settled only,
    /// as their records last said, also after reopening.
    #[test]
    fn only_the_unsettled_leases_are_read_back_for_watching() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("customer");
        let settled = |id: u8| LeaseRecord {
            finally_settled: true,
            ..lease(id)
        };
        let unsettled_ids = |records: &CustomerRecords| -> Vec<u8> {
            records
                .unsettled_leases()
                .unwrap()
                .iter()
                .map(|l| l.lease.0[0])
                .collect()
        };
        {
            let records = CustomerRecords::open(&path).unwrap();
            for id in 1..=4 {
                records.put_lease(&lease(id)).unwrap();
            }
            records.put_lease(&settled(2)).unwrap();
            records.put_window(&settled(4), &window(0)).unwrap();
            assert_eq!(records.finally_settled(&Id([2; 32])), Some(true));
            assert_eq!(records.finally_settled(&Id([3; 32])), Some(false));
            assert_eq!(records.finally_settled(&Id([9; 32])), None);
            let before = records.leases_read();
            assert_eq!(unsettled_ids(&records), vec![1, 3]);
            assert_eq!(records.leases_read() - before, 2, "the unsettled ones only");
        }
        let records = CustomerRecords::open(&path).unwrap();
        assert_eq!(unsettled_ids(&records), vec![1, 3]);
        // A record written before the flag existed reads as unsettled.
        let mut old = serde_json::to_value(lease(5)).unwrap();
        old.as_object_mut().unwrap().remove("finally_settled");
        records
            .store
            .put(
                LEASES,
                Id([5; 32]).as_bytes(),
                &serde_json::to_vec(&old).unwrap(),
            )
            .unwrap();
        drop(records);
        let records = CustomerRecords::open(&path).unwrap();
        assert_eq!(unsettled_ids(&records), vec![1, 3, 5]);
    }

    #[tokio::test]
    async fn caps_set_off_the_executor_are_read_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("customer");
        let records = std::sync::Arc::new(CustomerRecords::open(&path).unwrap());
        let caps = Caps {
            account: Some("40".parse().unwrap()),
            leases: [(Id([4; 32]), "7.25".parse().unwrap())].into(),
        };
        let executor = std::thread::current().id();
        let kept = caps.clone();
        let ran_on = records
            .off_executor(move |r| {
                r.put_caps(&kept)?;
                Ok(std::thread::current().id())
            })
            .await
            .unwrap();
        assert_ne!(ran_on, executor, "the flush ran on the executor's thread");
        drop(records);
        let reopened = CustomerRecords::open(&path).unwrap();
        assert_eq!(reopened.caps().unwrap(), caps);
    }

    #[test]
    fn records_survive_reopening_and_keep_only_recent_windows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("customer");
        let records = CustomerRecords::open(&path).unwrap();
        assert_eq!(records.caps().unwrap(), Caps::default());
        let caps = Caps {
            account: Some("12.50".parse().unwrap()),
            leases: [(Id([1; 32]), "3".parse().unwrap())].into(),
        };
        records.put_caps(&caps).unwrap();
        let mut a = lease(1);
        for seq in 0..KEPT_WINDOWS + 3 {
            a.acked_windows += 1;
            records.put_window(&a, &window(seq)).unwrap();
        }
        records.put_lease(&lease(2)).unwrap();
        let supplier = a.supplier;
        let note = |seq| DisputeNote {
            lease: a.lease,
            seq,
            reason: DisputeReason::Overbilled,
            detail: "too much".into(),
            at: UnixMillis(5),
        };
        records.note_dispute(&supplier, note(1)).unwrap();
        records
            .note_dispute(
                &supplier,
                DisputeNote {
                    reason: DisputeReason::BrokenChain,
                    ..note(3)
                },
            )
            .unwrap();
        records.flush().unwrap();
        drop(records);

        let records = CustomerRecords::open(&path).unwrap();
        assert_eq!(records.caps().unwrap(), caps);
        let leases = records.leases().unwrap();
        assert_eq!(leases.len(), 2);
        assert_eq!(leases[0].acked_windows, KEPT_WINDOWS + 3);
        let recent = records.windows(&a.lease, 3).unwrap();
        let seqs: Vec<u64> = recent.iter().map(|w| w.seq).collect();
        assert_eq!(seqs, [KEPT_WINDOWS, KEPT_WINDOWS + 1, KEPT_WINDOWS + 2]);
        let all = records.windows(&a.lease, usize::MAX).unwrap();
        assert_eq!(all.len() as u64, KEPT_WINDOWS, "older windows dropped");
        assert_eq!(all[0].seq, 3);
        assert!(records.windows(&Id([2; 32]), 10).unwrap().is_empty());
        let record = records.supplier(&supplier).unwrap().unwrap();
        assert_eq!(record.disputes, 2);
        assert_eq!(record.by_reason["overbilled"], 1);
        assert_eq!(record.by_reason["broken_chain"], 1);
        assert_eq!(record.last.unwrap().seq, 3);
    }

    #[test]
    fn windows_read_as_the_api_shows_them() {
        let json = serde_json::to_value(window(1)).unwrap();
        assert_eq!(json["status"], "disputed");
        assert_eq!(json["reason"], "overbilled");
        assert_eq!(json["charge"], "0.000944");
        let back: WindowRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, window(1));
        assert_eq!(serde_json::to_value(window(0)).unwrap()["status"], "acked");
        assert_eq!(reason_name(DisputeReason::WrongGpus), "wrong_gpus");
    }

    #[test]
    fn alerts_are_kept_up_to_a_bound_and_a_newer_schema_is_refused() {
        let records = CustomerRecords::in_memory().unwrap();
        for i in 0..(KEPT_ALERTS + 5) {
            records
                .put_alert(&AlertRecord {
                    id: Id([(i % 251) as u8; 32]),
                    rule: "budget.50".into(),
                    severity: Severity::Info,
                    lease: None,
                    message: format!("alert {i}"),
                    created_at: UnixMillis(i as u64),
                })
                .unwrap();
        }
        let alerts = records.alerts().unwrap();
        assert_eq!(alerts.len(), KEPT_ALERTS);
        assert_eq!(alerts[0].message, "alert 5", "the oldest were dropped");

        let store = MemoryStore::new();
        store.put(META, SCHEMA_KEY, b"2").unwrap();
        let err = CustomerRecords::over(Box::new(store)).unwrap_err();
        assert!(err.to_string().contains("schema version 2"), "{err}");
    }
}
