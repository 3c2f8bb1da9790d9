//! The node's hourly series, in a store of their own (`<data dir>/series`,
//! sled): one integer per series per hour, the last [`KEPT_HOURS`] hours
//! kept. Values are integers in the series' [`Unit`] (money in
//! micro-credits, GPU time in GPU-milliseconds, shares in basis points),
//! so a sum of hours is exact.
//!
//! Writers never touch disk themselves: they hand each hour's change to a
//! [`SeriesWriter`], whose bounded queue feeds one thread that applies it;
//! when the queue is full the change is dropped with a log line rather
//! than make the caller wait.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `series/names` | name | [`Unit`] name |
//! | `series/hours` | name, 0, hour (big-endian, sign flipped) | value, `i64` big-endian |

use std::path::Path;
use std::sync::Mutex;

use rigmesh_forecast::Hour;
use rigmesh_ledger::store::{Direction, KeyRange, TreeName};
use rigmesh_ledger::{Batch, MemoryStore, SledStore, Store};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Hours kept per series: 90 days. Older hours are deleted as new ones
/// are written.
pub const KEPT_HOURS: i64 = 90 * 24;

/// Most distinct series a node keeps (the market's GPU models make the
/// count grow); a new name past it is refused.
pub const MAX_SERIES: usize = 512;

/// Longest series name.
pub const MAX_NAME_LEN: usize = 96;

/// Changes queued for the writer thread before new ones are dropped.
pub const WRITE_QUEUE: usize = 1_024;

const NAMES: TreeName = "series/names";
const HOURS: TreeName = "series/hours";

/// What a series' integers count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Money, in micro-credits (shown in credits).
    MicroCredits,
    /// GPU time, in GPU-milliseconds (shown in GPU-hours).
    GpuMs,
    /// A share, in basis points (shown in percent).
    BasisPoints,
    /// A count.
    Count,
}

impl Unit {
    /// The unit a value is shown in.
    pub fn shown_as(self) -> &'static str {
        match self {
            Unit::MicroCredits => "credits",
            Unit::GpuMs => "gpu_hours",
            Unit::BasisPoints => "percent",
            Unit::Count => "count",
        }
    }

    /// A stored value in the unit it is shown in.
    pub fn show(self, value: f64) -> f64 {
        match self {
            Unit::MicroCredits => value / rigmesh_protocol::money::UNITS_PER_CREDIT as f64,
            Unit::GpuMs => value / 3_600_000.0,
            Unit::BasisPoints => value / 100.0,
            Unit::Count => value,
        }
    }
}

/// How an hour of a series comes about, which decides what a missing hour
/// means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A flow summed over the hour (spend, earnings): an hour without a
    /// record is zero.
    Flow,
    /// A level sampled in the hour (a price, a share): an hour without a
    /// record is unknown, a gap.
    Level,
}

/// The series a node keeps, by name: `spend` and `gpu_hours` (a customer's
/// acked windows), `earnings`, `gpu_hours_sold` and `utilisation` (a
/// supplier's attested windows and GPUs leased), per GPU model
/// `market/<model>/offers` and `market/<model>/price_p10|p50|p90` (the
/// live offers in the gossip store), and `market/leases_started` and
/// `market/<model>/leases_started` (escrow certificates gossiped). `None`
/// for any other name.
pub fn spec(name: &str) -> Option<(Kind, Unit)> {
    match name {
        "spend" | "earnings" => return Some((Kind::Flow, Unit::MicroCredits)),
        "gpu_hours" | "gpu_hours_sold" => return Some((Kind::Flow, Unit::GpuMs)),
        "utilisation" => return Some((Kind::Level, Unit::BasisPoints)),
        _ => {}
    }
    let rest = name.strip_prefix("market/")?;
    if rest == "leases_started" {
        return Some((Kind::Flow, Unit::Count));
    }
    let (model, what) = rest.rsplit_once('/')?;
    if model.is_empty() || model.contains('/') {
        return None;
    }
    match what {
        "offers" => Some((Kind::Level, Unit::Count)),
        "price_p10" | "price_p50" | "price_p90" => Some((Kind::Level, Unit::MicroCredits)),
        "leases_started" => Some((Kind::Flow, Unit::Count)),
        _ => None,
    }
}

/// Checks a series name: one of [`spec`]'s, at most [`MAX_NAME_LEN`]
/// bytes of letters, digits, `_`, `.`, `-` and `/`.
pub fn check_name(name: &str) -> std::result::Result<(Kind, Unit), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("a series name has 1 to {MAX_NAME_LEN} characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
    {
        return Err(format!(
            "{name:?} is not a series name (letters, digits, _ . - /)"
        ));
    }
    spec(name).ok_or_else(|| {
        format!(
            "no series is called {name:?}; series are spend, gpu_hours, earnings, \
             gpu_hours_sold, utilisation, market/leases_started and \
             market/<gpu model>/offers|price_p10|price_p50|price_p90|leases_started"
        )
    })
}

/// A GPU model as it may appear in a series name: anything but letters,
/// digits, `_`, `.` and `-` becomes `_`, and the result is cut to 48
/// characters.
pub fn model_key(model: &str) -> String {
    model
        .chars()
        .take(48)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn ledger(e: rigmesh_ledger::Error) -> Error {
    Error::Store(format!("series: {e}"))
}

fn hour_bytes(hour: Hour) -> [u8; 8] {
    // Flipping the sign bit makes byte order the order of hours.
    ((hour.0 as u64) ^ (1 << 63)).to_be_bytes()
}

fn prefix(name: &str) -> Vec<u8> {
    let mut key = name.as_bytes().to_vec();
    key.push(0);
    key
}

fn key(name: &str, hour: Hour) -> Vec<u8> {
    let mut key = prefix(name);
    key.extend_from_slice(&hour_bytes(hour));
    key
}

fn hour_of(key: &[u8], name_len: usize) -> Option<Hour> {
    let bytes: [u8; 8] = key.get(name_len + 1..)?.try_into().ok()?;
    Some(Hour((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64))
}

fn value_of(bytes: &[u8]) -> Result<i64> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| Error::Store("series: a corrupt value".into()))?;
    Ok(i64::from_be_bytes(bytes))
}

/// The hourly series over a [`Store`].
pub struct SeriesBook {
    store: Box<dyn Store>,
    /// Changes are read-modify-write; one at a time.
    writing: Mutex<()>,
}

impl std::fmt::Debug for SeriesBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeriesBook").finish_non_exhaustive()
    }
}

impl SeriesBook {
    /// Opens (or creates) the series in the sled database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let store = SledStore::open(path)
            .map_err(|e| Error::Store(format!("opening the series in {}: {e}", path.display())))?;
        Ok(Self::over(Box::new(store)))
    }

    /// Series in memory, for tests.
    pub fn in_memory() -> Self {
        Self::over(Box::new(MemoryStore::new()))
    }

    /// Series over `store`.
    pub fn over(store: Box<dyn Store>) -> Self {
        SeriesBook {
            store,
            writing: Mutex::new(()),
        }
    }

    /// Adds `delta` to `name`'s value at `hour` (a flow).
    pub fn add(&self, name: &str, hour: Hour, delta: i64) -> Result<()> {
        self.change(name, hour, |old| old.unwrap_or(0).saturating_add(delta))
    }

    /// Sets `name`'s value at `hour` (a level: the latest sample stands).
    pub fn set(&self, name: &str, hour: Hour, value: i64) -> Result<()> {
        self.change(name, hour, |_| value)
    }

    fn change(&self, name: &str, hour: Hour, new: impl FnOnce(Option<i64>) -> i64) -> Result<()> {
        let (_, unit) = check_name(name).map_err(Error::Store)?;
        let _one = self
            .writing
            .lock()
            .map_err(|_| Error::Store("series: a writer panicked".into()))?;
        let key = key(name, hour);
        let old = self
            .store
            .get(HOURS, &key)
            .map_err(ledger)?
            .map(|bytes| value_of(&bytes))
            .transpose()?;
        let mut batch = Batch::new();
        batch.put(HOURS, key, new(old).to_be_bytes().to_vec());
        if old.is_none() {
            if self
                .store
                .get(NAMES, name.as_bytes())
                .map_err(ledger)?
                .is_none()
            {
                let known = self
                    .store
                    .scan(NAMES, KeyRange::all(), Direction::Forward)
                    .take(MAX_SERIES)
                    .count();
                if known >= MAX_SERIES {
                    return Err(Error::Store(format!(
                        "series: {MAX_SERIES} series are kept already; {name:?} is not started"
                    )));
                }
                batch.put(
                    NAMES,
                    name.as_bytes().to_vec(),
                    unit.shown_as().as_bytes().to_vec(),
                );
            }
            // A new hour: the ones that fell out of the kept span go.
            let range = KeyRange {
                start: std::ops::Bound::Included(prefix(name)),
                end: std::ops::Bound::Excluded(self::key(name, hour.plus(-KEPT_HOURS))),
            };
            for entry in self.store.scan(HOURS, range, Direction::Forward) {
                let (old_key, _) = entry.map_err(ledger)?;
                batch.delete(HOURS, old_key);
            }
        }
        self.store.write(&batch).map_err(ledger)
    }

    /// `name`'s hours from `since` on, oldest first.
    pub fn read(&self, name: &str, since: Hour) -> Result<Vec<(Hour, i64)>> {
        check_name(name).map_err(Error::Store)?;
        let range = KeyRange {
            start: std::ops::Bound::Included(key(name, since)),
            end: KeyRange::prefix(&prefix(name)).end,
        };
        self.store
            .scan(HOURS, range, Direction::Forward)
            .take(KEPT_HOURS as usize + 1)
            .map(|entry| {
                let (k, v) = entry.map_err(ledger)?;
                let hour = hour_of(&k, name.len())
                    .ok_or_else(|| Error::Store("series: a corrupt key".into()))?;
                Ok((hour, value_of(&v)?))
            })
            .collect()
    }

    /// The names of the series kept, in byte order.
    pub fn names(&self) -> Result<Vec<String>> {
        self.store
            .scan(NAMES, KeyRange::all(), Direction::Forward)
            .take(MAX_SERIES)
            .map(|entry| {
                let (k, _) = entry.map_err(ledger)?;
                String::from_utf8(k).map_err(|_| Error::Store("series: a corrupt name".into()))
            })
            .collect()
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<()> {
        self.store.flush().map_err(ledger)
    }
}

/// One queued change.
#[derive(Debug)]
enum Change {
    Add(String, Hour, i64),
    Set(String, Hour, i64),
}

/// Hands series changes to the writer thread. Cheap to clone; never
/// blocks. The thread flushes and ends once every writer is dropped.
#[derive(Debug, Clone, Default)]
pub struct SeriesWriter(Option<std::sync::mpsc::SyncSender<Change>>);

impl SeriesWriter {
    /// Starts the thread that writes into `book`.
    pub fn start(book: std::sync::Arc<SeriesBook>) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Change>(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("series-writer".into())
            .spawn(move || {
                for change in rx {
                    let done = match &change {
                        Change::Add(name, hour, delta) => book.add(name, *hour, *delta),
                        Change::Set(name, hour, value) => book.set(name, *hour, *value),
                    };
                    if let Err(err) = done {
                        tracing::warn!(%err, ?change, "series change not written");
                    }
                }
                if let Err(err) = book.flush() {
                    tracing::warn!(%err, "series not flushed");
                }
            })
            .map_err(|e| Error::Io {
                path: "the series writer thread".into(),
                source: e,
            })?;
        Ok(SeriesWriter(Some(tx)))
    }

    /// A writer that drops everything (a node that keeps no series).
    pub fn off() -> Self {
        SeriesWriter(None)
    }

    fn send(&self, change: Change) {
        if let Some(tx) = &self.0 {
            match tx.try_send(change) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(change)) => {
                    tracing::warn!(?change, "series queue full; change dropped");
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {}
            }
        }
    }

    /// Queues `delta` for `name` at `hour`.
    pub fn add(&self, name: &str, hour: Hour, delta: i64) {
        self.send(Change::Add(name.to_owned(), hour, delta));
    }

    /// Queues `value` for `name` at `hour`.
    pub fn set(&self, name: &str, hour: Hour, value: i64) {
        self.send(Change::Set(name.to_owned(), hour, value));
    }
}

/// The hour that holds `at`.
pub fn hour_at(at: rigmesh_protocol::UnixMillis) -> Hour {
    Hour::containing((at.0 / 1000) as i64)
}

/// The first millisecond of `hour`.
pub fn millis_of(hour: Hour) -> rigmesh_protocol::UnixMillis {
    rigmesh_protocol::UnixMillis(hour.0.max(0) as u64 * 3_600_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_add_levels_replace_and_old_hours_go() {
        let book = SeriesBook::in_memory();
        book.add("spend", Hour(1_000), 5).unwrap();
        book.add("spend", Hour(1_000), 7).unwrap();
        book.set("utilisation", Hour(1_000), 5_000).unwrap();
        book.set("utilisation", Hour(1_000), 2_500).unwrap();
        assert_eq!(
            book.read("spend", Hour(0)).unwrap(),
            vec![(Hour(1_000), 12)]
        );
        assert_eq!(
            book.read("utilisation", Hour(0)).unwrap(),
            vec![(Hour(1_000), 2_500)]
        );
        // An hour past the kept span deletes the ones before it.
        book.add("spend", Hour(1_001), 1).unwrap();
        book.add("spend", Hour(1_000 + KEPT_HOURS + 1), 3).unwrap();
        assert_eq!(
            book.read("spend", Hour(0)).unwrap(),
            vec![(Hour(1_001), 1), (Hour(1_000 + KEPT_HOURS + 1), 3)]
        );
        assert_eq!(book.names().unwrap(), vec!["spend", "utilisation"]);
    }

    #[test]
    fn bad_names_are_refused_and_change_nothing() {
        let book = SeriesBook::in_memory();
        for name in [
            "",
            "spend\0",
            "nope",
            "market//offers",
            "market/a/b/offers",
            "market/A100/x",
        ] {
            assert!(book.add(name, Hour(1), 1).is_err(), "{name:?}");
        }
        assert!(book.names().unwrap().is_empty());
        book.set("market/A100_80GB/price_p50", Hour(1), 1_700_000)
            .unwrap();
        assert_eq!(model_key("H100 SXM/80"), "H100_SXM_80");
    }

    #[test]
    fn reads_start_at_the_hour_asked_and_keep_series_apart() {
        let book = SeriesBook::in_memory();
        for h in 0..10 {
            book.add("spend", Hour(h), h).unwrap();
            book.add("earnings", Hour(h), 100).unwrap();
        }
        let read = book.read("spend", Hour(7)).unwrap();
        assert_eq!(read, vec![(Hour(7), 7), (Hour(8), 8), (Hour(9), 9)]);
    }
}
