//! The notifier: alerts in, outbox entries out. It routes each alert to
//! its recipients' groups, mutes what silences and inhibition rules mute,
//! and on [`Notifier::tick`] turns every group that is due into one message
//! per channel in the outbox: after the first wait, again after the group
//! interval when more came, again after the repeat interval while it
//! fires (an unacknowledged critical group after the shorter critical
//! repeat, escalating step by step), and once when all of it is resolved.
//!
//! Every method takes the time as an argument; nothing here reads a clock
//! or sleeps, so the timing rules are tested by passing times. Groups,
//! their alerts, acknowledgements and silences are written to the store as
//! they change (flushed with the next outbox write), so a restarted node
//! neither forgets an alert nor pages someone who acknowledged it.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};

use rigmesh_ledger::codec::Record;
use rigmesh_ledger::store::{Batch, Direction, KeyRange, Store};
use rigmesh_protocol::{Alert, Audience, Id, PublicKey, Severity, UnixMillis};

use crate::config::{AlertField, InhibitRule, NotifyConfig};
use crate::error::{Error, Result};
use crate::group::{self, fingerprint, group_id, render, GroupState, TrackedAlert};
use crate::message::Outgoing;
use crate::outbox::{Outbox, OutboxEntry};
use crate::routing::Router;
use crate::silence::Silence;

const GROUPS: &str = "notify.groups";
const ALERTS: &str = "notify.alerts";
const SOURCES: &str = "notify.sources";
const SILENCES: &str = "notify.silences";
const KEYS: &str = "notify.keys";
const HISTORY: &str = "notify.history";
const ACK_KEY: &[u8] = b"ack";

/// Rule of the operator alert raised when a notification is given up.
pub const DEAD_LETTER_RULE: &str = "notify.dead_letter";
/// Label of the group that takes alerts once `max_groups` groups exist.
pub const OVERFLOW_LABEL: &str = "overflow";
/// Most silences at once.
pub const MAX_SILENCES: usize = 1_000;
/// Closed groups kept for the record; the oldest go first.
pub const MAX_HISTORY: usize = 1_000;

/// Why a group closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum CloseReason {
    /// Every alert in it was resolved.
    Resolved,
    /// It was an info digest, and it was sent.
    DigestSent,
    /// Its recipient is no longer configured.
    RecipientRemoved,
}

/// A closed group, as kept in the history: its last state (with its
/// acknowledgement, if any), when and why it closed.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ClosedGroup {
    /// The group's last state.
    pub group: GroupState,
    /// When it closed.
    pub closed_at: UnixMillis,
    /// Why.
    pub reason: CloseReason,
}

impl Record for ClosedGroup {
    const WHAT: &'static str = "closed alert group";
}

/// What became of a raised alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raised {
    /// Added to these groups (ids).
    Grouped(Vec<String>),
    /// Muted by this silence.
    Silenced(u64),
    /// Muted by an inhibition rule while its source fires.
    Inhibited,
    /// No recipient takes it.
    Unrouted,
}

/// What one [`Notifier::tick`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tick {
    /// Channels of the messages put in the outbox, one per message.
    pub queued: Vec<String>,
    /// Messages the full outbox refused (their alerts stay in the group).
    pub refused: usize,
    /// Groups closed because everything in them was resolved or sent.
    pub closed: usize,
}

/// The notifier over an outbox in store `S`.
pub struct Notifier<S: Store> {
    config: NotifyConfig,
    router: Router,
    outbox: Outbox<S>,
    issuer: PublicKey,
    ack_key: [u8; 32],
    groups: BTreeMap<String, GroupState>,
    alerts: BTreeMap<String, BTreeMap<String, TrackedAlert>>,
    tracked: usize,
    sources: BTreeMap<String, TrackedAlert>,
    silences: BTreeMap<u64, Silence>,
    history_len: usize,
}

impl<S: Store> std::fmt::Debug for Notifier<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("groups", &self.groups.len())
            .field("tracked", &self.tracked)
            .field("silences", &self.silences.len())
            .finish_non_exhaustive()
    }
}

fn alert_key(group: &str, fp: &str) -> Vec<u8> {
    let mut key = group.as_bytes().to_vec();
    key.push(b'/');
    key.extend_from_slice(fp.as_bytes());
    key
}

fn matches_any(prefixes: &[String], rule: &str) -> bool {
    prefixes.iter().any(|p| rule.starts_with(p.as_str()))
}

fn is_source(rules: &[InhibitRule], rule: &str) -> bool {
    rules.iter().any(|r| matches_any(&r.source_rules, rule))
}

impl<S: Store> Notifier<S> {
    /// Opens the notifier over `outbox`, loading the groups, alerts and
    /// silences a previous run left. `issuer` signs the notifier's own
    /// alerts (dead letters): the node's account.
    pub fn open(outbox: Outbox<S>, config: NotifyConfig, issuer: PublicKey) -> Result<Self> {
        config.check()?;
        let router = Router::new(&config.recipients, &config.channels)?;
        let store = outbox.store();
        let ack_key = match store.get(KEYS, ACK_KEY)? {
            Some(bytes) => bytes
                .try_into()
                .map_err(|_| Error::Store(rigmesh_ledger::Error::Corrupt { what: "ack key" }))?,
            None => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key)
                    .map_err(|e| Error::Config(format!("no randomness for the ack key: {e}")))?;
                store.put(KEYS, ACK_KEY, &key)?;
                store.flush()?;
                key
            }
        };
        let mut groups = BTreeMap::new();
        for row in store.scan(GROUPS, KeyRange::all(), Direction::Forward) {
            let (_, value) = row?;
            let group = GroupState::from_record(&value)?;
            groups.insert(group.id.clone(), group);
        }
        let mut alerts: BTreeMap<String, BTreeMap<String, TrackedAlert>> = BTreeMap::new();
        let mut tracked = 0;
        for row in store.scan(ALERTS, KeyRange::all(), Direction::Forward) {
            let (key, value) = row?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let Some((group, fp)) = key.split_once('/') else {
                continue;
            };
            alerts
                .entry(group.to_owned())
                .or_default()
                .insert(fp.to_owned(), TrackedAlert::from_record(&value)?);
            tracked += 1;
        }
        let mut sources = BTreeMap::new();
        for row in store.scan(SOURCES, KeyRange::all(), Direction::Forward) {
            let (key, value) = row?;
            sources.insert(
                String::from_utf8_lossy(&key).into_owned(),
                TrackedAlert::from_record(&value)?,
            );
        }
        let mut silences = BTreeMap::new();
        for row in store.scan(SILENCES, KeyRange::all(), Direction::Forward) {
            let (_, value) = row?;
            let silence = Silence::from_record(&value)?;
            silences.insert(silence.id, silence);
        }
        let history_len = store
            .scan(HISTORY, KeyRange::all(), Direction::Forward)
            .count();
        // A recipient removed from the config takes its groups with it.
        let mut notifier = Notifier {
            config,
            router,
            outbox,
            issuer,
            ack_key,
            groups,
            alerts,
            tracked,
            sources,
            silences,
            history_len,
        };
        let orphans: Vec<(String, UnixMillis)> = notifier
            .groups
            .values()
            .filter(|g| {
                notifier
                    .router
                    .recipient(g.recipient as usize)
                    .is_none_or(|r| r.name != g.recipient_name)
            })
            .map(|g| (g.id.clone(), g.last_sent.unwrap_or(g.created_at)))
            .collect();
        for (id, at) in orphans {
            notifier.close(&id, CloseReason::RecipientRemoved, at)?;
        }
        Ok(notifier)
    }

    /// The outbox.
    pub fn outbox(&self) -> &Outbox<S> {
        &self.outbox
    }

    /// Makes every change so far durable.
    pub fn flush(&self) -> Result<()> {
        Ok(self.outbox.store().flush()?)
    }

    /// The config.
    pub fn config(&self) -> &NotifyConfig {
        &self.config
    }

    /// The groups, by id.
    pub fn groups(&self) -> impl Iterator<Item = &GroupState> {
        self.groups.values()
    }

    /// One group.
    pub fn group(&self, id: &str) -> Option<&GroupState> {
        self.groups.get(id)
    }

    /// Alerts tracked one by one, in all groups.
    pub fn tracked_alerts(&self) -> usize {
        self.tracked
    }

    /// The earliest time a group is due, if any group exists.
    pub fn next_wake(&self) -> Option<UnixMillis> {
        self.groups.values().map(|g| g.next_at).min()
    }

    /// The token that acknowledges group `id` (part of the link in its
    /// messages): a keyed hash, so only someone who got a message of the
    /// group can acknowledge it.
    pub fn ack_token(&self, id: &str) -> String {
        group::short_hex(
            blake3::keyed_hash(&self.ack_key, id.as_bytes()).as_bytes(),
            16,
        )
    }

    fn ack_url(&self, id: &str) -> Option<String> {
        self.config.ack_url.as_ref().map(|base| {
            format!(
                "{}/{id}?token={}",
                base.trim_end_matches('/'),
                self.ack_token(id)
            )
        })
    }

    fn wait(&self, severity: Severity) -> u64 {
        match severity {
            Severity::Info => self.config.grouping.digest_interval_ms,
            _ => self.config.grouping.group_wait_ms,
        }
    }

    fn interval(&self, severity: Severity) -> u64 {
        match severity {
            Severity::Info => self.config.grouping.digest_interval_ms,
            _ => self.config.grouping.group_interval_ms,
        }
    }

    fn silenced_by(&self, alert: &TrackedAlert, recipient: &str, now: UnixMillis) -> Option<u64> {
        self.silences
            .values()
            .find(|s| s.mutes(alert, recipient, now))
            .map(|s| s.id)
    }

    fn inhibited(&self, alert: &TrackedAlert) -> bool {
        self.config.inhibit.iter().any(|rule| {
            matches_any(&rule.target_rules, &alert.rule)
                && self.sources.values().any(|source| {
                    source.resolved_at.is_none()
                        && matches_any(&rule.source_rules, &source.rule)
                        && source != alert
                        && rule
                            .equal
                            .iter()
                            .all(|f: &AlertField| source.field(*f) == alert.field(*f))
                })
        })
    }

    /// `(group, fingerprint)` of every firing alert an inhibition mutes.
    fn muted_alerts(&self) -> Vec<(String, String)> {
        self.alerts
            .iter()
            .flat_map(|(id, alerts)| {
                alerts
                    .iter()
                    .filter(|(_, a)| a.resolved_at.is_none() && self.inhibited(a))
                    .map(move |(fp, _)| (id.clone(), fp.clone()))
            })
            .collect()
    }

    fn label(&self, alert: &Alert) -> String {
        self.config
            .grouping
            .group_by
            .iter()
            .map(|f| group::field_of(*f, &alert.rule, &alert.issuer, &alert.about, &alert.subject))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Takes in an alert raised at `now` (raising the same alert again
    /// counts it again).
    pub fn raise(&mut self, alert: &Alert, now: UnixMillis) -> Result<Raised> {
        let fp = fingerprint(alert);
        let fresh = TrackedAlert::new(alert, now);
        let mut batch = Batch::new();
        if is_source(&self.config.inhibit, &alert.rule) {
            let source = match self.sources.get(&fp) {
                Some(old) if old.resolved_at.is_none() => TrackedAlert {
                    last_seen: now,
                    count: old.count.saturating_add(1),
                    ..old.clone()
                },
                _ if self.sources.len() >= self.config.grouping.max_alerts => {
                    return Err(Error::Full {
                        what: "inhibiting alerts",
                        max: self.config.grouping.max_alerts,
                    })
                }
                _ => fresh.clone(),
            };
            batch.put(SOURCES, fp.as_bytes().to_vec(), source.to_record()?);
            self.sources.insert(fp.clone(), source);
        }
        let recipients = self.router.recipients_for(alert);
        let mut grouped = Vec::new();
        let mut silenced = None;
        let inhibited = self.inhibited(&fresh);
        for index in recipients {
            let Some(recipient) = self.router.recipient(index).map(|r| r.name.clone()) else {
                continue;
            };
            let channels = self.router.channels_for(index, &alert.rule, alert.severity);
            if channels.is_empty() {
                continue;
            }
            if let Some(id) = self.silenced_by(&fresh, &recipient, now) {
                silenced = Some(id);
                continue;
            }
            let mut label = self.label(alert);
            let mut id = group_id(&recipient, alert.severity, &label);
            if !self.groups.contains_key(&id)
                && self.groups.len() >= self.config.grouping.max_groups
            {
                label = OVERFLOW_LABEL.to_owned();
                id = group_id(&recipient, alert.severity, &label);
            }
            let wait = self.wait(alert.severity);
            let interval = self.interval(alert.severity);
            let group = self.groups.entry(id.clone()).or_insert_with(|| GroupState {
                id: id.clone(),
                recipient: u32::try_from(index).unwrap_or(u32::MAX),
                recipient_name: recipient.clone(),
                severity: alert.severity,
                label,
                rule: alert.rule.clone(),
                channels,
                untracked: 0,
                new_alerts: 0,
                created_at: now,
                first_sent: None,
                last_sent: None,
                next_at: now.plus_ms(wait),
                messages: 0,
                acknowledged: None,
                escalated: 0,
            });
            let alerts = self.alerts.entry(id.clone()).or_default();
            let counts = match alerts.get_mut(&fp) {
                Some(known) => {
                    let again = known.resolved_at.is_some();
                    known.last_seen = now;
                    known.count = known.count.saturating_add(1);
                    known.resolved_at = None;
                    batch.put(ALERTS, alert_key(&id, &fp), known.to_record()?);
                    again
                }
                None if self.tracked < self.config.grouping.max_alerts => {
                    batch.put(ALERTS, alert_key(&id, &fp), fresh.to_record()?);
                    alerts.insert(fp.clone(), fresh.clone());
                    self.tracked += 1;
                    true
                }
                None => {
                    group.untracked = group.untracked.saturating_add(1);
                    true
                }
            };
            if counts && !inhibited {
                group.new_alerts = group.new_alerts.saturating_add(1);
                if let Some(last) = group.last_sent {
                    let soonest = last.plus_ms(interval).max(now);
                    group.next_at = group.next_at.min(soonest);
                }
            }
            batch.put(GROUPS, id.as_bytes().to_vec(), group.to_record()?);
            grouped.push(id);
        }
        self.outbox.store().write(&batch)?;
        Ok(if inhibited && !grouped.is_empty() {
            Raised::Inhibited
        } else if !grouped.is_empty() {
            Raised::Grouped(grouped)
        } else if let Some(id) = silenced {
            Raised::Silenced(id)
        } else {
            Raised::Unrouted
        })
    }

    /// Marks the alert resolved at `now` everywhere it is tracked; each
    /// group reports it in its next message, and a group with nothing left
    /// firing sends one resolved message and closes. Returns the groups
    /// touched.
    pub fn resolve(&mut self, alert: &Alert, now: UnixMillis) -> Result<usize> {
        let fp = fingerprint(alert);
        let mut batch = Batch::new();
        let mut touched = 0;
        if self.sources.contains_key(&fp) {
            // Alerts this source muted are news to their groups now.
            let muted = self.muted_alerts();
            self.sources.remove(&fp);
            batch.delete(SOURCES, fp.as_bytes().to_vec());
            let freed: BTreeMap<String, u64> = muted
                .into_iter()
                .filter(|(id, alert_fp)| {
                    self.alerts
                        .get(id)
                        .and_then(|alerts| alerts.get(alert_fp))
                        .is_some_and(|a| !self.inhibited(a))
                })
                .fold(BTreeMap::new(), |mut counts, (id, _)| {
                    *counts.entry(id).or_default() += 1;
                    counts
                });
            for (id, count) in freed {
                if let Some(group) = self.groups.get_mut(&id) {
                    group.new_alerts = group.new_alerts.saturating_add(count);
                    let interval = match group.severity {
                        Severity::Info => self.config.grouping.digest_interval_ms,
                        _ => self.config.grouping.group_interval_ms,
                    };
                    let soonest = group
                        .last_sent
                        .map_or(group.next_at, |last| last.plus_ms(interval).max(now));
                    group.next_at = group.next_at.min(soonest);
                    batch.put(GROUPS, id.as_bytes().to_vec(), group.to_record()?);
                    touched += 1;
                }
            }
        }
        for (id, alerts) in &mut self.alerts {
            let Some(known) = alerts.get_mut(&fp) else {
                continue;
            };
            if known.resolved_at.is_some() {
                continue;
            }
            known.resolved_at = Some(now);
            batch.put(ALERTS, alert_key(id, &fp), known.to_record()?);
            touched += 1;
            if let Some(group) = self.groups.get_mut(id) {
                let interval = match group.severity {
                    Severity::Info => self.config.grouping.digest_interval_ms,
                    _ => self.config.grouping.group_interval_ms,
                };
                let soonest = group
                    .last_sent
                    .map_or(group.next_at, |last| last.plus_ms(interval).max(now));
                group.next_at = group.next_at.min(soonest);
                batch.put(GROUPS, id.as_bytes().to_vec(), group.to_record()?);
            }
        }
        self.outbox.store().write(&batch)?;
        Ok(touched)
    }

    /// Acknowledges group `id` with the `token` from its messages: its
    /// repeats stop and its escalation halts until it closes. Flushed
    /// before returning.
    pub fn acknowledge(&mut self, id: &str, token: &str, by: &str, now: UnixMillis) -> Result<()> {
        let expected = self.ack_token(id);
        if !constant_time_eq(expected.as_bytes(), token.as_bytes()) {
            return Err(Error::BadToken(id.to_owned()));
        }
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

    fn prune_silences(&mut self, now: UnixMillis) -> Result<()> {
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

    /// Closed groups, newest first, at most `limit`.
    pub fn history(&self, limit: usize) -> Result<Vec<ClosedGroup>> {
        self.outbox
            .store()
            .scan(HISTORY, KeyRange::all(), Direction::Reverse)
            .take(limit)
            .map(|row| Ok(ClosedGroup::from_record(&row?.1)?))
            .collect()
    }

    fn close(&mut self, id: &str, reason: CloseReason, now: UnixMillis) -> Result<()> {
        let mut batch = Batch::new();
        if let Some(alerts) = self.alerts.remove(id) {
            for fp in alerts.keys() {
                batch.delete(ALERTS, alert_key(id, fp));
            }
            self.tracked = self.tracked.saturating_sub(alerts.len());
        }
        if let Some(group) = self.groups.remove(id) {
            let mut key = now.0.to_be_bytes().to_vec();
            key.extend_from_slice(id.as_bytes());
            let closed = ClosedGroup {
                group,
                closed_at: now,
                reason,
            };
            batch.put(HISTORY, key, closed.to_record()?);
            self.history_len += 1;
            let excess = self.history_len.saturating_sub(MAX_HISTORY);
            for row in self
                .outbox
                .store()
                .scan(HISTORY, KeyRange::all(), Direction::Forward)
                .take(excess)
            {
                batch.delete(HISTORY, row?.0);
                self.history_len -= 1;
            }
        }
        batch.delete(GROUPS, id.as_bytes().to_vec());
        self.outbox.store().write(&batch)?;
        Ok(())
    }

    /// Sends every group due at `now` to the outbox.
    pub fn tick(&mut self, now: UnixMillis) -> Result<Tick> {
        self.prune_silences(now)?;
        let due: Vec<String> = self
            .groups
            .values()
            .filter(|g| g.next_at <= now)
            .map(|g| g.id.clone())
            .collect();
        let mut tick = Tick::default();
        for id in due {
            self.flush_group(&id, now, &mut tick)?;
        }
        Ok(tick)
    }

    fn flush_group(&mut self, id: &str, now: UnixMillis, tick: &mut Tick) -> Result<()> {
        let Some(mut group) = self.groups.get(id).cloned() else {
            return Ok(());
        };
        let empty = BTreeMap::new();
        let alerts = self.alerts.get(id).unwrap_or(&empty);
        let recipient = self.router.recipient(group.recipient as usize).cloned();
        let Some(recipient) = recipient else {
            return self.close(id, CloseReason::RecipientRemoved, now);
        };
        let firing: Vec<&TrackedAlert> = alerts
            .values()
            .filter(|a| a.resolved_at.is_none())
            .filter(|a| !self.inhibited(a))
            .filter(|a| self.silenced_by(a, &recipient.name, now).is_none())
            .collect();
        let resolved: Vec<String> = alerts
            .iter()
            .filter(|(_, a)| a.resolved_at.is_some())
            .map(|(fp, _)| fp.clone())
            .collect();
        let muted = alerts.len() - resolved.len() - firing.len();
        if firing.is_empty() && group.untracked == 0 {
            if muted > 0 {
                // Only muted alerts left: look again later.
                group.next_at = now.plus_ms(self.interval(group.severity));
                return self.save_group(group);
            }
            if group.first_sent.is_some() && !resolved.is_empty() {
                let rendered = render(&group, &[], resolved.len(), 0);
                match self.enqueue(&group, &rendered, &group.channels.clone(), now) {
                    Ok(names) => tick.queued.extend(names),
                    Err(Error::Full { .. }) => {
                        tick.refused += 1;
                        group.next_at = now.plus_ms(self.interval(group.severity));
                        return self.save_group(group);
                    }
                    Err(e) => return Err(e),
                }
            }
            tick.closed += 1;
            return self.close(id, CloseReason::Resolved, now);
        }
        if group.severity != Severity::Critical {
            if let Some(end) = recipient
                .quiet_hours
                .as_ref()
                .and_then(|q| q.ends_after(now))
            {
                group.next_at = end;
                return self.save_group(group);
            }
        }
        let critical_open = group.severity == Severity::Critical && group.acknowledged.is_none();
        let mut channels = group.channels.clone();
        if critical_open {
            let since = group.first_sent.unwrap_or(now);
            let mut steps = 0u32;
            for step in &recipient.escalation {
                if since.plus_ms(step.after_ms) > now {
                    break;
                }
                steps += 1;
                for channel in &step.channels {
                    if !channels.contains(channel) {
                        channels.push(channel.clone());
                    }
                }
            }
            group.escalated = group.escalated.max(steps);
        }
        let rendered = render(
            &group,
            &firing,
            resolved.len(),
            self.config.grouping.digest_lines,
        );
        match self.enqueue(&group, &rendered, &channels, now) {
            Ok(names) => tick.queued.extend(names),
            Err(Error::Full { .. }) => {
                tick.refused += 1;
                group.next_at = now.plus_ms(self.interval(group.severity));
                return self.save_group(group);
            }
            Err(e) => return Err(e),
        }
        group.messages += 1;
        group.first_sent.get_or_insert(now);
        group.last_sent = Some(now);
        group.new_alerts = 0;
        if group.severity == Severity::Info {
            // A digest is sent once; later info alerts start the next one.
            tick.closed += 1;
            self.groups.insert(id.to_owned(), group);
            return self.close(id, CloseReason::DigestSent, now);
        }
        let mut batch = Batch::new();
        if let Some(alerts) = self.alerts.get_mut(id) {
            for fp in &resolved {
                alerts.remove(fp);
                batch.delete(ALERTS, alert_key(id, fp));
            }
            self.tracked = self.tracked.saturating_sub(resolved.len());
        }
        self.outbox.store().write(&batch)?;
        group.next_at = self.next_after_send(&group, &recipient.escalation, now);
        self.save_group(group)
    }

    fn next_after_send(
        &self,
        group: &GroupState,
        escalation: &[crate::config::EscalationStep],
        now: UnixMillis,
    ) -> UnixMillis {
        let grouping = &self.config.grouping;
        if group.acknowledged.is_some() {
            return UnixMillis(u64::MAX);
        }
        if group.severity != Severity::Critical {
            return now.plus_ms(grouping.repeat_interval_ms);
        }
        let mut next = now.plus_ms(grouping.critical_repeat_ms);
        let since = group.first_sent.unwrap_or(now);
        if let Some(step) = escalation.get(group.escalated as usize) {
            next = next.min(since.plus_ms(step.after_ms).max(now));
        }
        next
    }

    fn save_group(&mut self, group: GroupState) -> Result<()> {
        self.outbox
            .store()
            .put(GROUPS, group.id.as_bytes(), &group.to_record()?)?;
        self.groups.insert(group.id.clone(), group);
        Ok(())
    }

    fn enqueue(
        &self,
        group: &GroupState,
        rendered: &group::Rendered,
        channels: &[String],
        now: UnixMillis,
    ) -> Result<Vec<String>> {
        let ack_url = (group.severity != Severity::Info && rendered.alerts > 0)
            .then(|| self.ack_url(&group.id))
            .flatten();
        let mut body = rendered.body.clone();
        if ack_url.is_none() && group.severity != Severity::Info && rendered.alerts > 0 {
            body.push_str(&format!(
                "\nAcknowledge: group {} token {}\n",
                group.id,
                self.ack_token(&group.id)
            ));
        }
        let items: Vec<Outgoing> = channels
            .iter()
            .map(|channel| {
                let mut hasher = blake3::Hasher::new();
                hasher.update(group.id.as_bytes());
                hasher.update(&group.messages.to_le_bytes());
                hasher.update(&group.created_at.0.to_le_bytes());
                hasher.update(channel.as_bytes());
                Outgoing {
                    key: group::short_hex(hasher.finalize().as_bytes(), 16),
                    channel: channel.clone(),
                    group: group.id.clone(),
                    rule: group.rule.clone(),
                    severity: group.severity,
                    subject: rendered.subject.clone(),
                    body: body.clone(),
                    ack_url: ack_url.clone(),
                    alerts: rendered.alerts,
                    created_at: now,
                }
            })
            .collect();
        self.outbox.enqueue(&items, now)?;
        Ok(items.into_iter().map(|o| o.channel).collect())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
