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
//!
//! This file takes alerts in (raise, resolve, muting); `flush.rs` sends
//! due groups to the outbox; `actions.rs` holds what operators do
//! (acknowledge, silence) and the notifier's own dead-letter alert.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};

use rigmesh_ledger::codec::Record;
use rigmesh_ledger::store::{Batch, Direction, KeyRange, Store};
use rigmesh_protocol::{Alert, PublicKey, Severity, UnixMillis};

use crate::config::{AlertField, InhibitRule, NotifyConfig};
use crate::error::{Error, Result};
use crate::group::{self, fingerprint, group_id, GroupState, TrackedAlert};
use crate::outbox::Outbox;
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

    /// Replaces the channels and recipients with those of `config` (a
    /// channel added or removed at run time); the recipients must be the
    /// same, in the same order, so the groups keep theirs.
    pub fn reconfigure(&mut self, config: NotifyConfig) -> Result<()> {
        config.check()?;
        let same_recipients = config.recipients.len() == self.config.recipients.len()
            && config
                .recipients
                .iter()
                .zip(&self.config.recipients)
                .all(|(a, b)| a.name == b.name);
        if !same_recipients {
            return Err(Error::Config(
                "the recipients cannot change while the notifier runs".into(),
            ));
        }
        self.router = Router::new(&config.recipients, &config.channels)?;
        self.config = config;
        Ok(())
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
}

mod actions;
mod flush;
#[cfg(test)]
mod tests;
