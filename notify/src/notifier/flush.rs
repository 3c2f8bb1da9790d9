//! When groups go out: [`Notifier::tick`] renders each due group into one
//! outbox entry per channel (with escalation steps and quiet hours
//! applied), schedules its next look, and closes groups that are resolved
//! or were a digest, keeping a bounded history of them.

use std::collections::BTreeMap;

use rigmesh_ledger::codec::Record;
use rigmesh_ledger::store::{Batch, Direction, KeyRange, Store};
use rigmesh_protocol::{Severity, UnixMillis};

use super::{
    alert_key, CloseReason, ClosedGroup, Notifier, Tick, ALERTS, GROUPS, HISTORY, MAX_HISTORY,
};
use crate::config::EscalationStep;
use crate::error::{Error, Result};
use crate::group::{self, render, GroupState, TrackedAlert};
use crate::message::Outgoing;

impl<S: Store> Notifier<S> {
    /// Closed groups, newest first, at most `limit`.
    pub fn history(&self, limit: usize) -> Result<Vec<ClosedGroup>> {
        self.outbox
            .store()
            .scan(HISTORY, KeyRange::all(), Direction::Reverse)
            .take(limit)
            .map(|row| Ok(ClosedGroup::from_record(&row?.1)?))
            .collect()
    }

    pub(super) fn close(&mut self, id: &str, reason: CloseReason, now: UnixMillis) -> Result<()> {
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
        // Quiet hours hold back everything but critical groups, their
        // resolved notices included.
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
        escalation: &[EscalationStep],
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
        // A channel removed at run time since the group formed is skipped
        // rather than sent to, which could only fail.
        let items: Vec<Outgoing> = channels
            .iter()
            .filter(|channel| self.config.channels.iter().any(|c| &c.name == *channel))
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
