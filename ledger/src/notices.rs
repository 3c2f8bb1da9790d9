//! What a node keeps about the world beyond money: the outbox of
//! notifications not yet delivered (bounded, in queue order), scores and
//! bans of peers, and hourly rollups of each account's usage and spend
//! that feed forecasting.

use std::ops::Bound;

use bincode::{Decode, Encode};
use rigmesh_protocol::{Credits, PublicKey, UnixMillis};

use crate::audit::Action;
use crate::billing::MS_PER_HOUR;
use crate::codec::Record;
use crate::columns::{Outbox, OutboxHeads, PeerScores, Rollups, Slot, TypedStore};
use crate::error::{Error, Result};
use crate::keys::ShortBytes;
use crate::ledger::{Cause, Ledger, MAX_PAGE};
use crate::store::{Batch, Direction, Store};

/// Most notifications waiting in the outbox.
pub const MAX_OUTBOX: usize = 10_000;
/// Largest notification payload, in bytes.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Longest channel or recipient name, in bytes.
pub const MAX_ADDRESS: usize = 256;
/// Longest ban reason, in bytes.
pub const MAX_REASON: usize = 256;

/// A notification waiting to be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Notification {
    /// When it was queued.
    pub created_at: UnixMillis,
    /// How it goes out (e.g. `webhook`, `email`).
    pub channel: String,
    /// Where to (a URL, an address).
    pub recipient: String,
    /// What to send.
    pub payload: Vec<u8>,
    /// Delivery attempts so far.
    pub attempts: u32,
}

impl Record for Notification {
    const WHAT: &'static str = "notification";
}

/// The outbox's next sequence and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
pub struct OutboxHead {
    /// Sequence the next notification gets.
    pub next_seq: u64,
    /// Notifications waiting.
    pub len: u64,
}

impl Record for OutboxHead {
    const WHAT: &'static str = "outbox head";
}

/// A peer's standing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Encode, Decode)]
pub struct PeerScore {
    /// Score (higher is better).
    pub score: i64,
    /// Banned until this time (zero: not banned).
    pub banned_until: UnixMillis,
    /// Why the score or ban changed last.
    pub reason: String,
}

impl Record for PeerScore {
    const WHAT: &'static str = "peer score";
}

/// One account's settled activity within one hour: the hour in which each
/// settlement was applied, from [`crate::Ledger::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
pub struct Rollup {
    /// GPU-milliseconds settled as its customer.
    pub used_gpu_ms: u64,
    /// GPU-milliseconds settled as its supplier.
    pub supplied_gpu_ms: u64,
    /// Charged to its escrows.
    pub spent: Credits,
    /// Credited to it as supplier.
    pub earned: Credits,
}

impl Record for Rollup {
    const WHAT: &'static str = "rollup";
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(Error::TooLarge { what, max });
    }
    Ok(())
}

impl<S: Store> Ledger<S> {
    /// Queues a notification; returns its sequence. Refused when the
    /// outbox holds [`MAX_OUTBOX`] already.
    pub fn enqueue_notification(&self, notification: &Notification, cause: &Cause) -> Result<u64> {
        check_len(
            "notification payload",
            notification.payload.len(),
            MAX_PAYLOAD,
        )?;
        check_len(
            "notification channel",
            notification.channel.len(),
            MAX_ADDRESS,
        )?;
        check_len(
            "notification recipient",
            notification.recipient.len(),
            MAX_ADDRESS,
        )?;
        let guard = self.lock();
        let head = self
            .store()
            .get_in::<OutboxHeads>(&Slot)?
            .unwrap_or_default();
        if head.len >= MAX_OUTBOX as u64 {
            return Err(Error::Full {
                what: "outbox",
                max: MAX_OUTBOX,
            });
        }
        let seq = head.next_seq;
        let mut batch = Batch::new();
        batch.put_in::<Outbox>(&seq, notification)?;
        batch.put_in::<OutboxHeads>(
            &Slot,
            &OutboxHead {
                next_seq: seq
                    .checked_add(1)
                    .ok_or(Error::Overflow("the outbox sequence"))?,
                len: head.len + 1,
            },
        )?;
        self.commit(
            guard,
            batch,
            Action::NotificationQueued,
            &format!("notification {seq} via {}", notification.channel),
            cause,
        )?;
        Ok(seq)
    }

    /// Up to `limit` (at most [`MAX_PAGE`]) waiting notifications, oldest
    /// first.
    pub fn pending_notifications(&self, limit: usize) -> Result<Vec<(u64, Notification)>> {
        self.store()
            .rows::<Outbox>(Direction::Forward)
            .take(limit.min(MAX_PAGE))
            .collect()
    }

    /// Counts a failed delivery attempt of notification `seq`.
    pub fn record_attempt(&self, seq: u64, cause: &Cause) -> Result<bool> {
        let guard = self.lock();
        let Some(mut notification) = self.store().get_in::<Outbox>(&seq)? else {
            return Ok(false);
        };
        notification.attempts = notification.attempts.saturating_add(1);
        let mut batch = Batch::new();
        batch.put_in::<Outbox>(&seq, &notification)?;
        self.commit(
            guard,
            batch,
            Action::NotificationQueued,
            &format!("notification {seq} attempt {}", notification.attempts),
            cause,
        )?;
        Ok(true)
    }

    /// Removes a delivered notification; false if it was not waiting.
    pub fn mark_delivered(&self, seq: u64, cause: &Cause) -> Result<bool> {
        let guard = self.lock();
        if self.store().get_in::<Outbox>(&seq)?.is_none() {
            return Ok(false);
        }
        let head = self
            .store()
            .get_in::<OutboxHeads>(&Slot)?
            .unwrap_or_default();
        let mut batch = Batch::new();
        batch.delete_in::<Outbox>(&seq);
        batch.put_in::<OutboxHeads>(
            &Slot,
            &OutboxHead {
                next_seq: head.next_seq,
                len: head.len.saturating_sub(1),
            },
        )?;
        self.commit(
            guard,
            batch,
            Action::NotificationDelivered,
            &format!("notification {seq}"),
            cause,
        )?;
        Ok(true)
    }

    /// Sets a peer's score (and ban); `peer` is its id bytes.
    pub fn set_peer_score(&self, peer: &[u8], score: &PeerScore, cause: &Cause) -> Result<()> {
        check_len("ban reason", score.reason.len(), MAX_REASON)?;
        let key = ShortBytes::new("peer id", peer)?;
        let guard = self.lock();
        let mut batch = Batch::new();
        batch.put_in::<PeerScores>(&key, score)?;
        self.commit(
            guard,
            batch,
            Action::PeerScored,
            &format!(
                "peer {} score {} banned until {}: {}",
                hex_prefix(peer),
                score.score,
                score.banned_until.0,
                score.reason
            ),
            cause,
        )?;
        Ok(())
    }

    /// A peer's score, if recorded.
    pub fn peer_score(&self, peer: &[u8]) -> Result<Option<PeerScore>> {
        self.store()
            .get_in::<PeerScores>(&ShortBytes::new("peer id", peer)?)
    }

    /// Up to `limit` (at most [`MAX_PAGE`]) peers banned at `now`.
    pub fn banned_peers(&self, now: UnixMillis, limit: usize) -> Result<Vec<(Vec<u8>, PeerScore)>> {
        let mut out = Vec::new();
        for row in self.store().rows::<PeerScores>(Direction::Forward) {
            if out.len() >= limit.min(MAX_PAGE) {
                break;
            }
            let (peer, score) = row?;
            if score.banned_until > now {
                out.push((peer.as_bytes().to_vec(), score));
            }
        }
        Ok(out)
    }

    /// The hourly rollups of `account` from `from` to `to` (inclusive, as
    /// times; each row is `(hour since the epoch, rollup)`), at most
    /// [`MAX_PAGE`] rows.
    pub fn rollups(
        &self,
        account: &PublicKey,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Result<Vec<(u64, Rollup)>> {
        let first = from.0 / MS_PER_HOUR;
        let last = to.0 / MS_PER_HOUR;
        self.store()
            .rows_in::<Rollups>(
                Bound::Included(&(*account, first)),
                Bound::Included(&(*account, last)),
                Direction::Forward,
            )
            .take(MAX_PAGE)
            .map(|row| row.map(|((_, hour), rollup)| (hour, rollup)))
            .collect()
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(16).map(|b| format!("{b:02x}")).collect()
}
