//! Review items from the libp2p side: the swarm task's strikes (invalid,
//! forged or malformed messages and requests; requests past a peer's
//! budget) and bans, read from [`NodeHandle::offences`]. A flood strikes
//! thousands of times a second, so strikes are summed here per rule and
//! peer and handed to the queue once a second (one event standing for
//! many); bans go at once.

use std::collections::HashMap;
use std::time::Duration;

use rigmesh_protocol::Severity;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::{rules, ReviewQueue, Suspicion};
use crate::network::{NodeHandle, OffenceEvent};

/// How often summed strikes reach the queue.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Rule-and-peer sums kept at most between flushes; past it they are
/// flushed early.
const MAX_PENDING: usize = 1024;

/// The review event of one strike or ban.
fn suspicion(event: OffenceEvent) -> Suspicion {
    match event {
        OffenceEvent::Strike {
            peer,
            weight,
            reason,
        } if weight >= 1.0 => Suspicion::new(
            rules::PEER_INVALID,
            format!("peer {peer}"),
            Severity::Warning,
            format!("invalid, forged or malformed message or request (last: {reason})"),
        ),
        OffenceEvent::Strike { peer, reason, .. } => Suspicion::new(
            rules::PEER_FLOOD,
            format!("peer {peer}"),
            Severity::Warning,
            format!("requests past the peer's budget (last: {reason})"),
        ),
        OffenceEvent::Ban(ban) => Suspicion::new(
            rules::PEER_BANNED,
            ban.offender.to_string(),
            Severity::Warning,
            format!(
                "ban {} until {} (unix ms): {}",
                ban.nth, ban.until.0, ban.reason
            ),
        ),
    }
}

/// Sums of strikes not yet handed to the queue.
#[derive(Default)]
struct Pending(HashMap<(String, String), Suspicion>);

impl Pending {
    fn add(&mut self, event: Suspicion) {
        let key = (event.rule.clone(), event.subject.clone());
        match self.0.get_mut(&key) {
            Some(sum) => {
                sum.count = sum.count.saturating_add(event.count);
                sum.at = sum.at.max(event.at);
                sum.detail = event.detail;
            }
            None => {
                self.0.insert(key, event);
            }
        }
    }

    fn flush(&mut self, queue: &ReviewQueue) {
        for (_, event) in self.0.drain() {
            queue.raise(event);
        }
    }
}

/// Feeds `queue` from `network`'s strikes and bans until `stop`
/// completes or the network stops.
pub fn watch_offences(
    network: &NodeHandle,
    queue: ReviewQueue,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    // Subscribed here, so nothing decided after this call is missed.
    let mut offences = network.offences();
    tokio::spawn(async move {
        let mut pending = Pending::default();
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = tick.tick() => pending.flush(&queue),
                event = offences.recv() => match event {
                    Ok(OffenceEvent::Ban(ban)) => queue.raise(suspicion(OffenceEvent::Ban(ban))),
                    Ok(strike) => {
                        pending.add(suspicion(strike));
                        if pending.0.len() >= MAX_PENDING {
                            pending.flush(&queue);
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "the review queue fell behind the network's strikes");
                    }
                    Err(RecvError::Closed) => break,
                },
            }
        }
        pending.flush(&queue);
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::network::offences::{NewBan, Offender};

    #[test]
    fn strikes_and_bans_map_to_their_rules() {
        let peer = libp2p::PeerId::random();
        let invalid = suspicion(OffenceEvent::Strike {
            peer,
            weight: 1.0,
            reason: "invalid_signature".into(),
        });
        assert_eq!(invalid.rule, rules::PEER_INVALID);
        assert_eq!(invalid.subject, format!("peer {peer}"));
        let flood = suspicion(OffenceEvent::Strike {
            peer,
            weight: 0.1,
            reason: "rate_limited".into(),
        });
        assert_eq!(flood.rule, rules::PEER_FLOOD);
        let ban = suspicion(OffenceEvent::Ban(NewBan {
            offender: Offender::Address("10.0.0.9".parse().unwrap()),
            until: rigmesh_protocol::UnixMillis(5),
            reason: "invalid_signature".into(),
            nth: 2,
        }));
        assert_eq!(
            (ban.rule.as_str(), ban.subject.as_str()),
            (rules::PEER_BANNED, "address 10.0.0.9")
        );
        let mut pending = Pending::default();
        for _ in 0..3 {
            pending.add(invalid.clone());
        }
        pending.add(flood);
        assert_eq!(pending.0.len(), 2);
        assert_eq!(
            pending.0[&(rules::PEER_INVALID.to_string(), format!("peer {peer}"))].count,
            3
        );
    }
}
