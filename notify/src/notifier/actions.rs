//! What operators do to alerts: acknowledge a group with the token from its
//! messages, silence and unsilence, and the notifier's own operator alert
//! for a notification given up.

use rigmesh_ledger::codec::Record;
use rigmesh_ledger::store::Store;
use rigmesh_protocol::{Alert, Audience, Id, Severity, UnixMillis};

use super::{Notifier, Raised, DEAD_LETTER_RULE, GROUPS, MAX_SILENCES, SILENCES};
use crate::error::{Error, Result};
use crate::group;
use crate::outbox::OutboxEntry;
use crate::silence::Silence;

impl<S: Store> Notifier<S> {
    /// The token that acknowledges group `id` (part of the link in its
    /// messages): a keyed hash, so only someone who got a message of the
    /// group can acknowledge it.
    pub fn ack_token(&self, id: &str) -> String {
        group::short_hex(
            blake3::keyed_hash(&self.ack_key, id.as_bytes()).as_bytes(),
            16,
        )
    }

    pub(super) fn ack_url(&self, id: &str) -> Option<String> {
        self.config.ack_url.as_ref().map(|base| {
            format!(
                "{}/{id}?token={}",
                base.trim_end_matches('/'),
                self.ack_token(id)
            )
        })
    }

    /// Acknowledges group `id` with the `token` from its messages: its
    /// repeats stop and its escalation halts until it closes. Flushed
    /// before returning.
    pub fn acknowledge(&mut self, id: &str, token: &str, by: &str, now: UnixMillis) -> Result<()> {
        let expected = self.ack_token(id);
        if !constant_time_eq(expected.as_bytes(), token.as_bytes()) {
            return Err(Error::BadToken(id.to_owned()));
        }
        self.acknowledge_authorized(id, by, now)
    }

    /// Acknowledges group `id` for a caller authenticated by other means
    /// (the node's API and its bearer token), so no group token is asked
    /// for. Flushed before returning.
    pub fn acknowledge_authorized(&mut self, id: &str, by: &str, now: UnixMillis) -> Result<()> {
        let group = self
            .groups
            .get_mut(id)
            .ok_or_else(|| Error::UnknownGroup(id.to_owned()))?;
        if group.acknowledged.is_none() {
            group.acknowledged = Some(group::Acknowledgement {
                at: now,
                by: crate::message::truncate(by, 128),
            });
            if group.new_alerts == 0 {
                group.next_at = UnixMillis(u64::MAX);
            }
            let record = group.to_record()?;
            let store = self.outbox.store();
            store.put(GROUPS, id.as_bytes(), &record)?;
            store.flush()?;
        }
        Ok(())
    }

    /// Adds `silence` (its id is assigned) and returns its id.
    pub fn silence(&mut self, mut silence: Silence, now: UnixMillis) -> Result<u64> {
        self.prune_silences(now)?;
        if self.silences.len() >= MAX_SILENCES {
            return Err(Error::Full {
                what: "silences",
                max: MAX_SILENCES,
            });
        }
        silence.id = self.silences.keys().next_back().map_or(1, |last| last + 1);
        let store = self.outbox.store();
        store.put(SILENCES, &silence.id.to_be_bytes(), &silence.to_record()?)?;
        store.flush()?;
        let id = silence.id;
        self.silences.insert(id, silence);
        Ok(id)
    }

    /// Ends silence `id` now; false if there was none.
    pub fn expire_silence(&mut self, id: u64) -> Result<bool> {
        if self.silences.remove(&id).is_none() {
            return Ok(false);
        }
        let store = self.outbox.store();
        store.delete(SILENCES, &id.to_be_bytes())?;
        store.flush()?;
        Ok(true)
    }

    /// The silences, lapsed ones included until the next tick.
    pub fn silences(&self) -> impl Iterator<Item = &Silence> {
        self.silences.values()
    }

    pub(super) fn prune_silences(&mut self, now: UnixMillis) -> Result<()> {
        let lapsed: Vec<u64> = self
            .silences
            .values()
            .filter(|s| s.ends_at <= now)
            .map(|s| s.id)
            .collect();
        for id in lapsed {
            self.expire_silence(id)?;
        }
        Ok(())
    }

    /// Raises the operator alert for a notification given up after its
    /// attempts (unless it was itself such an alert's notification, which
    /// would loop).
    pub fn dead_letter(&mut self, entry: &OutboxEntry, now: UnixMillis) -> Result<Raised> {
        if entry.outgoing.rule == DEAD_LETTER_RULE {
            return Ok(Raised::Unrouted);
        }
        let alert = Alert {
            version: 1,
            issuer: self.issuer,
            severity: Severity::Warning,
            audience: Audience::Operators,
            rule: DEAD_LETTER_RULE.into(),
            about: None,
            subject: Some(Id(
                *blake3::hash(entry.outgoing.channel.as_bytes()).as_bytes()
            )),
            message: crate::message::truncate(
                &format!(
                    "channel {} gave up on a notification after {} attempts ({}): {}",
                    entry.outgoing.channel,
                    entry.attempts,
                    entry.last_error,
                    entry.outgoing.subject
                ),
                rigmesh_protocol::messages::reputation::MAX_ALERT_MESSAGE_LEN,
            ),
            created_at: now,
        };
        self.raise(&alert, now)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
