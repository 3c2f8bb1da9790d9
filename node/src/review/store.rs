//! The review queue's table on disk: one sled database in
//! `<data dir>/review`, a schema version in its `meta` tree and one item
//! per key in `items` (the id, big-endian, so a scan runs oldest first;
//! the value is the item's JSON). The open items' index by rule and
//! subject lives in memory and is rebuilt on open.
//!
//! Only the queue's writer thread calls it: every method is blocking.

use std::collections::HashMap;
use std::path::Path;

use rigmesh_protocol::UnixMillis;

use super::{
    clip, AckOutcome, Acknowledgement, Raised, ReviewFilter, ReviewItem, ReviewState, Suspicion,
    OTHER_SUBJECTS,
};
use crate::error::{Error, Result};

/// The table's schema version.
const SCHEMA_VERSION: u64 = 1;
/// Items kept at most, open and acknowledged together; past it the
/// oldest acknowledged ones are deleted (open ones never are).
pub(crate) const MAX_ITEMS: usize = 10_000;

fn store_error(e: impl std::fmt::Display) -> Error {
    Error::Store(format!("review queue: {e}"))
}

/// Migrations between schema versions: none yet. A later version adds
/// its step here and bumps [`SCHEMA_VERSION`].
fn migrate(meta: &sled::Tree) -> Result<()> {
    match meta.get("schema").map_err(store_error)? {
        None => {
            meta.insert("schema", &SCHEMA_VERSION.to_be_bytes())
                .map_err(store_error)?;
            Ok(())
        }
        Some(v) if v.as_ref() == SCHEMA_VERSION.to_be_bytes() => Ok(()),
        Some(_) => Err(Error::Config(
            "the review queue was written by a newer rigmesh".into(),
        )),
    }
}

/// The table and its in-memory index.
pub(crate) struct ReviewStore {
    db: sled::Db,
    items: sled::Tree,
    /// Open items by (rule, subject).
    open: HashMap<(String, String), u64>,
    /// Items stored, open or not.
    stored: usize,
    next_id: u64,
    max_open: usize,
}

impl ReviewStore {
    /// Opens (or creates) the table in `dir`.
    pub(crate) fn open(dir: &Path, max_open: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            path: dir.display().to_string(),
            source: e,
        })?;
        let db = rigmesh_ledger::store::open_db(dir).map_err(store_error)?;
        Self::open_in(db, max_open)
    }

    /// A table that lives in memory only (tests).
    #[cfg(test)]
    pub(crate) fn temporary(max_open: usize) -> Result<Self> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(store_error)?;
        Self::open_in(db, max_open)
    }

    fn open_in(db: sled::Db, max_open: usize) -> Result<Self> {
        let meta = db.open_tree("meta").map_err(store_error)?;
        migrate(&meta)?;
        let items = db.open_tree("items").map_err(store_error)?;
        let mut open = HashMap::new();
        let mut stored = 0;
        let mut next_id = 1;
        for row in items.iter() {
            let (_, value) = row.map_err(store_error)?;
            let item: ReviewItem = serde_json::from_slice(&value).map_err(store_error)?;
            stored += 1;
            next_id = next_id.max(item.id.saturating_add(1));
            if item.state == ReviewState::Open {
                open.insert((item.rule.clone(), item.subject.clone()), item.id);
            }
        }
        Ok(ReviewStore {
            db,
            items,
            open,
            stored,
            next_id,
            max_open: max_open.max(1),
        })
    }

    /// Open items now.
    pub(crate) fn open_count(&self) -> usize {
        self.open.len()
    }

    fn get(&self, id: u64) -> Result<Option<ReviewItem>> {
        match self.items.get(id.to_be_bytes()).map_err(store_error)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(store_error)?)),
            None => Ok(None),
        }
    }

    fn put(&self, item: &ReviewItem) -> Result<()> {
        let bytes = serde_json::to_vec(item).map_err(store_error)?;
        self.items
            .insert(item.id.to_be_bytes(), bytes)
            .map_err(store_error)?;
        Ok(())
    }

    /// Records one suspicious event: it bumps the open item of its rule
    /// and subject, or opens one; with the open items at their cap, a new
    /// subject is counted on its rule's item for other subjects instead.
    pub(crate) fn raise(&mut self, event: Suspicion) -> Result<Raised> {
        let key = (event.rule.clone(), event.subject.clone());
        if let Some(id) = self.open.get(&key).copied() {
            self.bump(id, &event)?;
            return Ok(Raised::Merged(id));
        }
        let overflow = self.open.len() >= self.max_open;
        let key = if overflow {
            (event.rule.clone(), OTHER_SUBJECTS.to_string())
        } else {
            key
        };
        if let Some(id) = self.open.get(&key).copied() {
            self.bump(id, &event)?;
            return Ok(Raised::Overflow(id));
        }
        // Past the cap each rule still gets one item for its other
        // subjects, so the queue exceeds it by at most one per rule.
        let id = self.next_id;
        let detail = if overflow {
            format!(
                "more subjects than the review queue holds open; the latest: {}: {}",
                event.subject, event.detail
            )
        } else {
            event.detail.clone()
        };
        let item = ReviewItem {
            id,
            rule: key.0.clone(),
            subject: key.1.clone(),
            severity: event.severity,
            detail: clip(&detail, super::MAX_DETAIL),
            first_seen: event.at,
            last_seen: event.at,
            count: event.count.max(1),
            state: ReviewState::Open,
            acknowledged: None,
        };
        self.put(&item)?;
        self.next_id = id.saturating_add(1);
        self.open.insert(key, id);
        self.stored += 1;
        self.prune()?;
        Ok(if overflow {
            Raised::Overflow(id)
        } else {
            Raised::New(id)
        })
    }

    fn bump(&self, id: u64, event: &Suspicion) -> Result<()> {
        let Some(mut item) = self.get(id)? else {
            return Err(store_error(format!("open item {id} is missing")));
        };
        item.count = item.count.saturating_add(event.count.max(1));
        item.last_seen = item.last_seen.max(event.at);
        item.severity = item.severity.max(event.severity);
        if item.subject == OTHER_SUBJECTS {
            item.detail = clip(
                &format!(
                    "more subjects than the review queue holds open; the latest: {}: {}",
                    event.subject, event.detail
                ),
                super::MAX_DETAIL,
            );
        } else {
            item.detail = clip(&event.detail, super::MAX_DETAIL);
        }
        self.put(&item)
    }

    /// Deletes the oldest acknowledged items while more than
    /// [`MAX_ITEMS`] are stored.
    fn prune(&mut self) -> Result<()> {
        if self.stored <= MAX_ITEMS {
            return Ok(());
        }
        let mut doomed = Vec::new();
        let mut excess = self.stored - MAX_ITEMS;
        for row in self.items.iter() {
            if excess == 0 {
                break;
            }
            let (key, value) = row.map_err(store_error)?;
            let item: ReviewItem = serde_json::from_slice(&value).map_err(store_error)?;
            if item.state == ReviewState::Acknowledged {
                doomed.push(key);
                excess -= 1;
            }
        }
        for key in doomed {
            self.items.remove(key).map_err(store_error)?;
            self.stored = self.stored.saturating_sub(1);
        }
        Ok(())
    }

    /// Acknowledges item `id` (the note already checked).
    pub(crate) fn ack(
        &mut self,
        id: u64,
        by: String,
        note: String,
        at: UnixMillis,
    ) -> Result<AckOutcome> {
        let Some(mut item) = self.get(id)? else {
            return Ok(AckOutcome::Unknown);
        };
        if item.state == ReviewState::Acknowledged {
            return Ok(AckOutcome::Already(item));
        }
        item.state = ReviewState::Acknowledged;
        item.acknowledged = Some(Acknowledgement { by, note, at });
        self.put(&item)?;
        self.open.remove(&(item.rule.clone(), item.subject.clone()));
        Ok(AckOutcome::Acknowledged(item))
    }

    /// Items in `filter`'s state, newest first, at most `limit`.
    pub(crate) fn list(&self, filter: ReviewFilter, limit: usize) -> Result<Vec<ReviewItem>> {
        let mut out = Vec::new();
        for row in self.items.iter().rev() {
            if out.len() >= limit {
                break;
            }
            let (_, value) = row.map_err(store_error)?;
            let item: ReviewItem = serde_json::from_slice(&value).map_err(store_error)?;
            if filter.admits(item.state) {
                out.push(item);
            }
        }
        Ok(out)
    }

    /// Writes everything so far to disk.
    pub(crate) fn flush(&self) -> Result<()> {
        rigmesh_ledger::store::gate::flush(&self.db)
            .map(|_| ())
            .map_err(store_error)
    }
}
