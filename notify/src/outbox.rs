//! The persistent delivery outbox over the ledger's [`Store`] seam (sled on
//! a node, memory in unit tests). Trees:
//!
//! - `notify.outbox`: sequence → [`OutboxEntry`], the notifications not yet
//!   delivered;
//! - `notify.due`: `(due time, sequence)` → nothing, the schedule, so the
//!   next due entries are a prefix scan;
//! - `notify.dead`: sequence → [`OutboxEntry`], the dead letters (bounded,
//!   the oldest go first);
//! - `notify.sent`: delivery number → [`Delivered`], the log of what went
//!   where and when (the last [`MAX_SENT`]);
//! - `notify.meta`: the schema version and the [`OutboxHead`] counters.
//!
//! Every change is one atomic batch, flushed before the call returns, so a
//! queued notification survives a crash. A delivery is recorded after the
//! far end answered; a crash in between sends it again with the same
//! idempotency key, which is how the receiver recognises the repeat.
//!
//! The ledger's own outbox column ([`rigmesh_ledger::notices`]) records an
//! audit entry for every write; a flood of alert retries does not belong in
//! the money audit chain, so notifications keep their own trees here.

use std::sync::Mutex;

use bincode::{Decode, Encode};
use rigmesh_ledger::codec::Record;
use rigmesh_ledger::store::{Batch, Direction, KeyRange, Store};
use rigmesh_protocol::UnixMillis;

use crate::config::OutboxConfig;
use crate::error::{Error, Result};
use crate::message::Outgoing;

const OUTBOX: &str = "notify.outbox";
const DUE: &str = "notify.due";
const DEAD: &str = "notify.dead";
const META: &str = "notify.meta";
const SENT: &str = "notify.sent";
const HEAD_KEY: &[u8] = b"head";
const SENT_KEY: &[u8] = b"sent";

/// Deliveries kept in the log; the oldest go first.
pub const MAX_SENT: u64 = 1_000;
const SCHEMA_KEY: &[u8] = b"schema";

/// The layout of the trees this binary writes.
pub const SCHEMA_VERSION: u64 = 1;

/// Longest error text kept with an entry.
const MAX_ERROR_LEN: usize = 512;

/// A notification in the outbox, with its delivery history.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OutboxEntry {
    /// What to deliver.
    pub outgoing: Outgoing,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When it is next due.
    pub next_at: UnixMillis,
    /// When each failed attempt was recorded (bounded by the attempt limit).
    pub attempt_times: Vec<UnixMillis>,
    /// The last failure's reason.
    pub last_error: String,
}

impl Record for OutboxEntry {
    const WHAT: &'static str = "outbox entry";
}

/// A delivered notification, as the delivery log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Delivered {
    /// What was delivered.
    pub outgoing: Outgoing,
    /// Failed attempts before the one that succeeded.
    pub attempts: u32,
    /// When the far end took it.
    pub delivered_at: UnixMillis,
}

impl Record for Delivered {
    const WHAT: &'static str = "delivered notification";
}

/// Counters kept beside the entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
pub struct OutboxHead {
    /// The sequence of the next entry.
    pub next_seq: u64,
    /// Entries waiting.
    pub len: u64,
    /// Dead letters kept.
    pub dead: u64,
}

impl Record for OutboxHead {
    const WHAT: &'static str = "outbox head";
}

/// What happened to a notification whose attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It is tried again at this time.
    Retry(UnixMillis),
    /// It became a dead letter.
    Dead(Box<OutboxEntry>),
    /// It was no longer waiting (already recorded).
    Gone,
}

/// The outbox.
pub struct Outbox<S: Store> {
    store: S,
    config: OutboxConfig,
    // One writer at a time: each change reads the head and writes it back.
    lock: Mutex<()>,
}

impl<S: Store> std::fmt::Debug for Outbox<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn seq_key(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

fn due_key(at: UnixMillis, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&at.0.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn read_u64(bytes: &[u8], what: &'static str) -> Result<u64> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| Error::Store(rigmesh_ledger::Error::Corrupt { what }))?;
    Ok(u64::from_be_bytes(array))
}

fn split_due_key(key: &[u8]) -> Result<(UnixMillis, u64)> {
    let (at, seq) =
        key.split_at_checked(8)
            .ok_or(Error::Store(rigmesh_ledger::Error::Corrupt {
                what: "outbox schedule key",
            }))?;
    Ok((
        UnixMillis(read_u64(at, "outbox schedule key")?),
        read_u64(seq, "outbox schedule key")?,
    ))
}

/// The wait before attempt `attempts + 1` of the entry keyed `key`:
/// `base · 2^(attempts-1)` capped at `max`, of which the upper half is
/// jitter derived from the key, so entries that failed together do not
/// retry together, yet each wait is at least the half of its step.
pub fn backoff_ms(config: &OutboxConfig, key: &str, attempts: u32) -> u64 {
    let exponent = attempts.saturating_sub(1).min(32);
    let step = config
        .backoff_base_ms
        .saturating_mul(1u64 << exponent)
        .min(config.backoff_max_ms.max(config.backoff_base_ms));
    let half = step / 2;
    let mut hasher = blake3::Hasher::new();
    hasher.update(key.as_bytes());
    hasher.update(&attempts.to_le_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(hasher.finalize().as_bytes().get(..8).unwrap_or(&[0; 8]));
    let jitter = u64::from_le_bytes(bytes) % (step - half + 1);
    half + jitter
}

impl<S: Store> Outbox<S> {
    /// Opens the outbox in `store`, writing or checking its schema version.
    pub fn open(store: S, config: OutboxConfig) -> Result<Self> {
        match store.get(META, SCHEMA_KEY)? {
            None => {
                store.put(META, SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                store.flush()?;
            }
            Some(bytes) => {
                let found = read_u64(&bytes, "outbox schema version")?;
                migrate(found)?;
            }
        }
        Ok(Outbox {
            store,
            config,
            lock: Mutex::new(()),
        })
    }

    /// The store underneath, for the notifier's own trees.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Its limits.
    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The counters.
    pub fn head(&self) -> Result<OutboxHead> {
        match self.store.get(META, HEAD_KEY)? {
            Some(bytes) => Ok(OutboxHead::from_record(&bytes)?),
            None => Ok(OutboxHead::default()),
        }
    }

    /// Entries waiting.
    pub fn len(&self) -> Result<u64> {
        Ok(self.head()?.len)
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    fn entry(&self, seq: u64) -> Result<Option<OutboxEntry>> {
        match self.store.get(OUTBOX, &seq_key(seq))? {
            Some(bytes) => Ok(Some(OutboxEntry::from_record(&bytes)?)),
            None => Ok(None),
        }
    }

    fn commit(&self, mut batch: Batch, head: &OutboxHead) -> Result<()> {
        batch.put(META, HEAD_KEY.to_vec(), head.to_record()?);
        self.store.write(&batch)?;
        self.store.flush()?;
        Ok(())
    }

    /// Queues `items`, due at once; all or none. Refused with
    /// [`Error::Full`] when the outbox would hold more than its bound.
    pub fn enqueue(&self, items: &[Outgoing], now: UnixMillis) -> Result<Vec<u64>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let _guard = self.guard();
        let mut head = self.head()?;
        let after = head.len.saturating_add(items.len() as u64);
        if after > self.config.max_entries as u64 {
            return Err(Error::Full {
                what: "notification outbox",
                max: self.config.max_entries,
            });
        }
        let mut batch = Batch::new();
        let mut seqs = Vec::with_capacity(items.len());
        for outgoing in items {
            let seq = head.next_seq;
            head.next_seq = seq.saturating_add(1);
            let entry = OutboxEntry {
                outgoing: outgoing.clone(),
                attempts: 0,
                next_at: now,
                attempt_times: Vec::new(),
                last_error: String::new(),
            };
            batch.put(OUTBOX, seq_key(seq), entry.to_record()?);
            batch.put(DUE, due_key(now, seq), Vec::new());
            seqs.push(seq);
        }
        head.len = after;
        self.commit(batch, &head)?;
        Ok(seqs)
    }

    /// Takes up to `limit` entries due at `now`, oldest due first, and
    /// reschedules each `lease_ms` later, so a worker that crashes while
    /// sending them has them tried again after the lease, and a second
    /// look before the outcome is recorded does not send them twice.
    pub fn claim(
        &self,
        now: UnixMillis,
        limit: usize,
        lease_ms: u64,
    ) -> Result<Vec<(u64, OutboxEntry)>> {
        let _guard = self.guard();
        let mut claimed = Vec::new();
        let mut batch = Batch::new();
        let end = due_key(now, u64::MAX);
        let range = KeyRange {
            start: std::ops::Bound::Unbounded,
            end: std::ops::Bound::Included(end),
        };
        for row in self.store.scan(DUE, range, Direction::Forward).take(limit) {
            let (key, _) = row?;
            let (_, seq) = split_due_key(&key)?;
            batch.delete(DUE, key);
            let Some(mut entry) = self.entry(seq)? else {
                continue;
            };
            entry.next_at = now.plus_ms(lease_ms);
            batch.put(DUE, due_key(entry.next_at, seq), Vec::new());
            batch.put(OUTBOX, seq_key(seq), entry.to_record()?);
            claimed.push((seq, entry));
        }
        if !batch.is_empty() {
            let head = self.head()?;
            self.commit(batch, &head)?;
        }
        Ok(claimed)
    }

    /// When the next entry is due, if any waits.
    pub fn next_due(&self) -> Result<Option<UnixMillis>> {
        match self
            .store
            .scan(DUE, KeyRange::all(), Direction::Forward)
            .next()
        {
            Some(row) => Ok(Some(split_due_key(&row?.0)?.0)),
            None => Ok(None),
        }
    }

    /// Records a delivery at `now`: the entry leaves the outbox and joins
    /// the delivery log. Returns it, or none if it had already left.
    pub fn delivered(&self, seq: u64, now: UnixMillis) -> Result<Option<OutboxEntry>> {
        let _guard = self.guard();
        let Some(entry) = self.entry(seq)? else {
            return Ok(None);
        };
        let mut head = self.head()?;
        let mut batch = Batch::new();
        batch.delete(OUTBOX, seq_key(seq));
        batch.delete(DUE, due_key(entry.next_at, seq));
        head.len = head.len.saturating_sub(1);
        let number = match self.store.get(META, SENT_KEY)? {
            Some(bytes) => read_u64(&bytes, "delivery log counter")?,
            None => 0,
        };
        let logged = Delivered {
            outgoing: entry.outgoing.clone(),
            attempts: entry.attempts,
            delivered_at: now,
        };
        batch.put(SENT, seq_key(number), logged.to_record()?);
        if let Some(old) = number.checked_sub(MAX_SENT) {
            batch.delete(SENT, seq_key(old));
        }
        batch.put(
            META,
            SENT_KEY.to_vec(),
            number.saturating_add(1).to_be_bytes().to_vec(),
        );
        self.commit(batch, &head)?;
        Ok(Some(entry))
    }

    /// Up to `limit` deliveries from the log, newest first.
    pub fn sent(&self, limit: usize) -> Result<Vec<Delivered>> {
        self.store
            .scan(SENT, KeyRange::all(), Direction::Reverse)
            .take(limit)
            .map(|row| Ok(Delivered::from_record(&row?.1)?))
            .collect()
    }

    /// Records a failed attempt at `now`: the entry is scheduled again
    /// with backoff, or becomes a dead letter when `permanent` or when it
    /// has used its attempts.
    pub fn failed(
        &self,
        seq: u64,
        now: UnixMillis,
        reason: &str,
        permanent: bool,
    ) -> Result<Failure> {
        let _guard = self.guard();
        let Some(mut entry) = self.entry(seq)? else {
            return Ok(Failure::Gone);
        };
        let mut head = self.head()?;
        let mut batch = Batch::new();
        batch.delete(DUE, due_key(entry.next_at, seq));
        entry.attempts = entry.attempts.saturating_add(1);
        if entry.attempt_times.len() < self.config.max_attempts as usize {
            entry.attempt_times.push(now);
        }
        entry.last_error = crate::message::truncate(reason, MAX_ERROR_LEN);
        if permanent || entry.attempts >= self.config.max_attempts {
            batch.delete(OUTBOX, seq_key(seq));
            batch.put(DEAD, seq_key(seq), entry.to_record()?);
            head.len = head.len.saturating_sub(1);
            head.dead = head.dead.saturating_add(1);
            // Bounded: make room by dropping the oldest dead letters.
            let excess = head.dead.saturating_sub(self.config.max_dead as u64);
            for row in self
                .store
                .scan(DEAD, KeyRange::all(), Direction::Forward)
                .take(usize::try_from(excess).unwrap_or(usize::MAX))
            {
                batch.delete(DEAD, row?.0);
                head.dead = head.dead.saturating_sub(1);
            }
            self.commit(batch, &head)?;
            return Ok(Failure::Dead(Box::new(entry)));
        }
        entry.next_at = now.plus_ms(backoff_ms(
            &self.config,
            &entry.outgoing.key,
            entry.attempts,
        ));
        batch.put(DUE, due_key(entry.next_at, seq), Vec::new());
        batch.put(OUTBOX, seq_key(seq), entry.to_record()?);
        self.commit(batch, &head)?;
        Ok(Failure::Retry(entry.next_at))
    }

    /// Up to `limit` waiting entries, in queue order.
    pub fn pending(&self, limit: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        self.rows(OUTBOX, limit)
    }

    /// Up to `limit` dead letters, oldest first.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        self.rows(DEAD, limit)
    }

    fn rows(&self, tree: &'static str, limit: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        self.store
            .scan(tree, KeyRange::all(), Direction::Forward)
            .take(limit)
            .map(|row| {
                let (key, value) = row?;
                Ok((
                    read_u64(&key, "outbox key")?,
                    OutboxEntry::from_record(&value)?,
                ))
            })
            .collect()
    }
}

/// Brings a store of schema `found` to [`SCHEMA_VERSION`]. There is one
/// version so far; a newer one is refused rather than misread.
fn migrate(found: u64) -> Result<()> {
    if found > SCHEMA_VERSION {
        return Err(Error::Config(format!(
            "notification outbox schema {found} is newer than this binary supports ({SCHEMA_VERSION})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigmesh_ledger::store::{MemoryStore, SledStore};
    use rigmesh_protocol::Severity;

    fn outgoing(n: u64) -> Outgoing {
        Outgoing {
            key: format!("{n:032x}"),
            channel: "ops".into(),
            group: "g".into(),
            rule: "gpu.dropped".into(),
            severity: Severity::Warning,
            subject: format!("alert {n}"),
            body: "body".into(),
            ack_url: None,
            alerts: 1,
            created_at: UnixMillis(n),
        }
    }

    fn config() -> OutboxConfig {
        OutboxConfig {
            max_entries: 4,
            max_attempts: 3,
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            max_dead: 2,
            ..OutboxConfig::default()
        }
    }

    fn lifecycle(store: impl Store) {
        let outbox = Outbox::open(store, config()).unwrap();
        let now = UnixMillis(10_000);
        let seqs = outbox
            .enqueue(&[outgoing(1), outgoing(2), outgoing(3)], now)
            .unwrap();
        assert_eq!(seqs, vec![0, 1, 2]);
        assert!(matches!(
            outbox.enqueue(&[outgoing(4), outgoing(5)], now),
            Err(Error::Full { max: 4, .. })
        ));
        assert_eq!(outbox.len().unwrap(), 3);

        // Claimed entries are not handed out again within their lease.
        let claimed = outbox.claim(now, 2, 5_000).unwrap();
        assert_eq!(
            claimed.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![0, 1]
        );
        let again = outbox.claim(now, 10, 5_000).unwrap();
        assert_eq!(again.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![2]);
        assert_eq!(outbox.next_due().unwrap(), Some(now.plus_ms(5_000)));

        assert_eq!(
            outbox.delivered(0, now).unwrap().unwrap().outgoing,
            outgoing(1)
        );
        assert_eq!(outbox.delivered(0, now).unwrap(), None);
        let log = outbox.sent(10).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(
            (log[0].outgoing.clone(), log[0].delivered_at),
            (outgoing(1), now)
        );

        // Entry 1 fails until it is dead; its waits grow.
        let Failure::Retry(first) = outbox.failed(1, now, "503", false).unwrap() else {
            panic!("retried")
        };
        assert!((500..=1_000).contains(&first.since(now)), "{first}");
        let Failure::Retry(second) = outbox.failed(1, first, "503", false).unwrap() else {
            panic!("retried")
        };
        assert!((1_000..=2_000).contains(&second.since(first)), "{second}");
        let Failure::Dead(dead) = outbox.failed(1, second, "503", false).unwrap() else {
            panic!("dead")
        };
        assert_eq!(dead.attempt_times, vec![now, first, second]);
        assert_eq!(outbox.dead_letters(10).unwrap().len(), 1);
        assert_eq!(
            outbox.failed(1, second, "503", false).unwrap(),
            Failure::Gone
        );

        // A permanent failure is dead at once; dead letters are bounded.
        outbox.enqueue(&[outgoing(6), outgoing(7)], now).unwrap();
        assert!(matches!(
            outbox.failed(2, now, "404", true).unwrap(),
            Failure::Dead(_)
        ));
        assert!(matches!(
            outbox.failed(3, now, "404", true).unwrap(),
            Failure::Dead(_)
        ));
        let dead: Vec<u64> = outbox
            .dead_letters(10)
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(dead, vec![2, 3]);
        assert_eq!(outbox.head().unwrap().dead, 2);
        assert_eq!(outbox.len().unwrap(), 1);
    }

    #[test]
    fn lifecycle_in_memory() {
        lifecycle(MemoryStore::new());
    }

    #[test]
    fn lifecycle_in_sled() {
        lifecycle(SledStore::temporary().unwrap());
    }

    #[test]
    fn entries_survive_reopening_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(SledStore::open(dir.path()).unwrap(), config()).unwrap();
            outbox.enqueue(&[outgoing(1)], UnixMillis(5)).unwrap();
        }
        {
            let outbox = Outbox::open(SledStore::open(dir.path()).unwrap(), config()).unwrap();
            assert_eq!(outbox.pending(10).unwrap()[0].1.outgoing, outgoing(1));
            outbox
                .store()
                .put(META, SCHEMA_KEY, &9u64.to_be_bytes())
                .unwrap();
        }
        let err = Outbox::open(SledStore::open(dir.path()).unwrap(), config()).unwrap_err();
        assert!(err.to_string().contains("schema 9"), "{err}");
    }

    #[test]
    fn backoff_doubles_within_its_cap() {
        let config = config();
        for attempts in 1..12 {
            let wait = backoff_ms(&config, "k", attempts);
            let step = (1_000u64 << (attempts - 1)).min(60_000);
            assert!(
                wait >= step / 2 && wait <= step,
                "attempt {attempts}: {wait}"
            );
        }
        // Different keys spread out.
        let waits: std::collections::BTreeSet<u64> = (0..20)
            .map(|k| backoff_ms(&config, &k.to_string(), 6))
            .collect();
        assert!(waits.len() > 10);
    }
}
