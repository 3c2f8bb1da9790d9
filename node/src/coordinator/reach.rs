//! A coordinator's watch over the other members of its set: a member this
//! node has had no connection to for longer than `[coordinators]
//! member_unreachable_secs` raises `coordinator.unreachable` (warning, for
//! the operators) on this node's notifier, and the alert is resolved when
//! the member is connected again. A member is found by its newest node
//! binding, like any peer; a member without one counts as unreachable.
//!
//! The alert is this node's own (not signed, not gossiped): each
//! coordinator's operators hear what their node sees, and a partition
//! does not need the partitioned side's gossip to be noticed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use libp2p::PeerId;
use rigmesh_protocol::{Alert, Audience, PublicKey, Severity, UnixMillis, PROTOCOL_VERSION};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::coordinator::metrics::CoordinatorMetrics;
use crate::network::NodeHandle;
use crate::notify::AlertSink;
use crate::quorum::Quorum;

/// Rule of the alert.
pub const UNREACHABLE_RULE: &str = "coordinator.unreachable";

/// What to tell the notifier about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Unreachable since this time, for longer than allowed: raise.
    Unreachable(UnixMillis),
    /// Reachable again after an alert: resolve.
    Back,
}

/// Who has been unreachable since when, and who has been alerted about.
#[derive(Debug)]
pub struct ReachWatch {
    after_ms: u64,
    since: BTreeMap<PublicKey, UnixMillis>,
    alerted: BTreeSet<PublicKey>,
}

impl ReachWatch {
    /// A watch that alerts after `after_ms` without a connection.
    pub fn new(after_ms: u64) -> Self {
        ReachWatch {
            after_ms,
            since: BTreeMap::new(),
            alerted: BTreeSet::new(),
        }
    }

    /// Takes in whether `member` is reachable at `now`; says when that
    /// changes what the operators should know (once each way).
    pub fn observe(
        &mut self,
        member: PublicKey,
        reachable: bool,
        now: UnixMillis,
    ) -> Option<Change> {
        if reachable {
            self.since.remove(&member);
            return self.alerted.remove(&member).then_some(Change::Back);
        }
        let since = *self.since.entry(member).or_insert(now);
        if now.since(since) >= self.after_ms && self.alerted.insert(member) {
            return Some(Change::Unreachable(since));
        }
        None
    }
}

/// The alert about `member`; the same rule, issuer and account resolve it.
pub fn unreachable_alert(me: PublicKey, member: PublicKey, message: String) -> Alert {
    Alert {
        version: PROTOCOL_VERSION,
        issuer: me,
        severity: Severity::Warning,
        audience: Audience::Operators,
        rule: UNREACHABLE_RULE.into(),
        about: Some(member),
        subject: None,
        message,
        created_at: UnixMillis::now(),
    }
}

/// Watches the members of `quorum`'s set other than `me`, every `every`,
/// until `stop` turns true; after each look, `metrics` (where given) shows
/// how many of them were connected.
pub fn watch_members(
    quorum: Quorum,
    me: PublicKey,
    network: NodeHandle,
    after: Duration,
    alerts: AlertSink,
    metrics: Option<CoordinatorMetrics>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
    // Often enough that the alert comes within a quarter of the wait.
    let every = (after / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    tokio::spawn(async move {
        let mut watch = ReachWatch::new(after_ms);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                _ = tick.tick() => {}
            }
            let Ok(connected) = network.peers().await else {
                return;
            };
            let q = quorum.clone();
            let now = UnixMillis::now();
            // The bindings are read from the store: off the executor.
            let Ok(members) = tokio::task::spawn_blocking(move || q.members(now)).await else {
                continue;
            };
            let mut connected_members = 0_i64;
            for (member, peer) in members.into_iter().filter(|(m, _)| *m != me) {
                let reachable = peer.is_some_and(|p: PeerId| connected.contains(&p));
                connected_members += i64::from(reachable);
                match watch.observe(member, reachable, now) {
                    Some(Change::Unreachable(since)) => {
                        let why = if peer.is_some() {
                            "no connection"
                        } else {
                            "no node binding known"
                        };
                        tracing::warn!(%member, since = since.0, "coordinator member unreachable");
                        alerts.raise(&unreachable_alert(
                            me,
                            member,
                            format!(
                                "coordinator {member} unreachable for {} s ({why})",
                                now.since(since) / 1_000
                            ),
                        ));
                    }
                    Some(Change::Back) => {
                        tracing::info!(%member, "coordinator member reachable again");
                        alerts.resolve(&unreachable_alert(
                            me,
                            member,
                            format!("coordinator {member} reachable again"),
                        ));
                    }
                    None => {}
                }
            }
            if let Some(metrics) = &metrics {
                metrics.members_connected.set(connected_members);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_alerted_about_once_after_the_wait_and_resolved_once_back() {
        let member = PublicKey([3; 32]);
        let other = PublicKey([4; 32]);
        let mut watch = ReachWatch::new(1_000);
        let t = |ms: u64| UnixMillis(10_000 + ms);
        assert_eq!(watch.observe(member, true, t(0)), None);
        assert_eq!(watch.observe(member, false, t(100)), None);
        assert_eq!(watch.observe(member, false, t(1_099)), None);
        assert_eq!(
            watch.observe(member, false, t(1_100)),
            Some(Change::Unreachable(t(100)))
        );
        assert_eq!(watch.observe(member, false, t(5_000)), None, "once");
        assert_eq!(watch.observe(other, false, t(5_000)), None, "its own wait");
        assert_eq!(watch.observe(member, true, t(6_000)), Some(Change::Back));
        assert_eq!(watch.observe(member, true, t(7_000)), None, "once");
        // A short drop under the wait raises nothing; the wait restarts.
        assert_eq!(watch.observe(member, false, t(8_000)), None);
        assert_eq!(watch.observe(member, true, t(8_500)), None);
        assert_eq!(watch.observe(member, false, t(9_000)), None);
        assert_eq!(watch.observe(member, false, t(9_999)), None);
        assert_eq!(
            watch.observe(member, false, t(10_000)),
            Some(Change::Unreachable(t(9_000)))
        );
    }
}
