//! The supplier's health alerts: a leased GPU dropping out or coming back,
//! a GPU running hot. They are signed `Alert`s for the owner; delivery
//! channels (mail, IM, SMS) route them later.

use rigmesh_protocol::{
    Alert, Audience, Id, Keypair, Severity, Signed, UnixMillis, PROTOCOL_VERSION,
};

use super::meter::MeterEvent;
use crate::error::Result;
use crate::telemetry::GpuSample;

fn alert(
    key: &Keypair,
    severity: Severity,
    rule: &str,
    subject: Option<Id>,
    message: String,
    now: UnixMillis,
) -> Result<Signed<Alert>> {
    let alert = Signed::sign(
        Alert {
            version: PROTOCOL_VERSION,
            issuer: key.public(),
            severity,
            audience: Audience::Supplier,
            rule: rule.into(),
            about: Some(key.public()),
            subject,
            message,
            created_at: now,
        },
        key,
    )?;
    tracing::warn!(rule, message = %alert.body.message, "alert");
    Ok(alert)
}

/// The alert for a meter event of `lease`.
pub fn for_meter_event(
    key: &Keypair,
    lease: Id,
    event: &MeterEvent,
    now: UnixMillis,
) -> Result<Signed<Alert>> {
    match event {
        MeterEvent::GpuLost { gpu, last_healthy } => alert(
            key,
            Severity::Critical,
            "gpu.dropped",
            Some(lease),
            format!("GPU {gpu} stopped answering; billing stopped at its last healthy sample ({last_healthy})"),
            now,
        ),
        MeterEvent::GpuBack { gpu, at } => alert(
            key,
            Severity::Info,
            "gpu.back",
            Some(lease),
            format!("GPU {gpu} answers again since {at}; billing resumed"),
            now,
        ),
    }
}

/// The `gpu.dropped` alert of `lease` as the notifier identifies it (rule,
/// issuer, account, lease), unsigned: what a GPU coming back resolves.
pub fn dropped(key: &Keypair, lease: Id, now: UnixMillis) -> Alert {
    Alert {
        version: PROTOCOL_VERSION,
        issuer: key.public(),
        severity: Severity::Critical,
        audience: Audience::Supplier,
        rule: "gpu.dropped".into(),
        about: Some(key.public()),
        subject: Some(lease),
        message: format!("every GPU of lease {lease} answers again"),
        created_at: now,
    }
}

/// Alerts for GPUs hotter than `max_c`.
pub fn overheating(
    key: &Keypair,
    samples: &[GpuSample],
    max_c: u32,
    now: UnixMillis,
) -> Result<Vec<Signed<Alert>>> {
    samples
        .iter()
        .filter_map(|s| s.temperature_c.filter(|t| *t > max_c).map(|t| (s.index, t)))
        .map(|(gpu, t)| {
            alert(
                key,
                Severity::Warning,
                "gpu.overheating",
                None,
                format!("GPU {gpu} is at {t} C (limit {max_c} C)"),
                now,
            )
        })
        .collect()
}

/// Watches the supplier's offers for two owner-facing problems: offers
/// nobody takes for a long time (price too high?) and offers that cannot be
/// re-published (no peers), which means they expire everywhere. Each alert
/// is raised once, and again only after the condition cleared.
#[derive(Debug, Clone)]
pub struct OfferWatch {
    untaken_after_ms: u64,
    unrefreshed_after_ms: u64,
    last_taken: UnixMillis,
    last_published: UnixMillis,
    untaken_raised: bool,
    unrefreshed_raised: bool,
}

impl OfferWatch {
    /// A watch starting at `now`: offers untaken for `untaken_after_ms`, or
    /// not re-published for `unrefreshed_after_ms`, raise an alert.
    pub fn new(now: UnixMillis, untaken_after_ms: u64, unrefreshed_after_ms: u64) -> Self {
        OfferWatch {
            untaken_after_ms,
            unrefreshed_after_ms,
            last_taken: now,
            last_published: now,
            untaken_raised: false,
            unrefreshed_raised: false,
        }
    }

    /// A lease was agreed.
    pub fn taken(&mut self, now: UnixMillis) {
        self.last_taken = now;
        self.untaken_raised = false;
    }

    /// Offers were gossiped to at least one peer.
    pub fn published(&mut self, now: UnixMillis) {
        self.last_published = now;
        self.unrefreshed_raised = false;
    }

    /// The alerts due at `now`; `offering` says whether any offer is up.
    pub fn check(
        &mut self,
        key: &Keypair,
        now: UnixMillis,
        offering: bool,
    ) -> Result<Vec<Signed<Alert>>> {
        let mut out = Vec::new();
        if offering && !self.untaken_raised && now.since(self.last_taken) >= self.untaken_after_ms {
            self.untaken_raised = true;
            out.push(alert(
                key,
                Severity::Info,
                "offer.untaken",
                None,
                format!(
                    "no lease taken for {} h; consider the price",
                    now.since(self.last_taken) / 3_600_000
                ),
                now,
            )?);
        }
        if offering
            && !self.unrefreshed_raised
            && now.since(self.last_published) >= self.unrefreshed_after_ms
        {
            self.unrefreshed_raised = true;
            out.push(alert(
                key,
                Severity::Warning,
                "offer.unrefreshed",
                None,
                format!(
                    "offers could not be re-published for {} s (no peers?); they expire on the network",
                    now.since(self.last_published) / 1000
                ),
                now,
            )?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{GpuSource, ManualClock, SimFault, SimProfile, SimSource};
    use rigmesh_protocol::Clock;
    use std::sync::Arc;

    #[test]
    fn a_dropout_raises_a_critical_signed_alert() {
        let key = Keypair::from_seed([5; 32]);
        let now = UnixMillis(1_800_000_090_000);
        let event = MeterEvent::GpuLost {
            gpu: 1,
            last_healthy: UnixMillis(1_800_000_089_000),
        };
        let a = for_meter_event(&key, Id([3; 32]), &event, now).unwrap();
        a.verify(&Clock::at(now)).unwrap();
        assert_eq!(a.body.rule, "gpu.dropped");
        assert_eq!(a.body.severity, Severity::Critical);
        assert_eq!(a.body.subject, Some(Id([3; 32])));
        // What a GPU coming back resolves is the same alert to the
        // notifier, and only for its own lease.
        let back = dropped(&key, Id([3; 32]), now.plus_ms(5_000));
        assert_eq!(
            rigmesh_notify::group::fingerprint(&back),
            rigmesh_notify::group::fingerprint(&a.body)
        );
        assert_ne!(
            rigmesh_notify::group::fingerprint(&dropped(&key, Id([4; 32]), now)),
            rigmesh_notify::group::fingerprint(&a.body)
        );
    }

    #[test]
    fn untaken_and_unrefreshed_offers_alert_once_until_cleared() {
        let key = Keypair::from_seed([5; 32]);
        let t0 = UnixMillis(1_800_000_000_000);
        let hour = 3_600_000;
        let mut watch = OfferWatch::new(t0, 24 * hour, 900_000);
        let quiet = |watch: &mut OfferWatch, at: u64| {
            watch.check(&key, t0.plus_ms(at), true).unwrap().is_empty()
        };
        assert!(quiet(&mut watch, 600_000));
        watch.published(t0.plus_ms(hour));
        assert!(quiet(&mut watch, hour + 899_999));
        // No peers for 15 minutes: the offers are expiring out there.
        let alerts = watch.check(&key, t0.plus_ms(hour + 900_000), true).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].body.rule, "offer.unrefreshed");
        assert!(quiet(&mut watch, hour + 950_000), "raised once");
        // A day without a lease, while publishing works again.
        watch.published(t0.plus_ms(24 * hour - 1000));
        let alerts = watch.check(&key, t0.plus_ms(24 * hour), true).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].body.rule, "offer.untaken");
        assert!(alerts[0].body.message.contains("24 h"));
        watch.taken(t0.plus_ms(24 * hour + 1000));
        watch.published(t0.plus_ms(24 * hour + 1000));
        assert!(quiet(&mut watch, 24 * hour + 2000));
        // Nothing on offer (all leased): nothing to say.
        assert!(watch
            .check(&key, t0.plus_ms(60 * hour), false)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_hot_gpu_raises_a_warning() {
        let t0 = UnixMillis(1_800_000_000_000);
        let clock = Arc::new(ManualClock::new(t0));
        let profile = SimProfile::builtin("rtx4090x2")
            .unwrap()
            .with_fault(SimFault::Overheat {
                gpu: 1,
                at_s: 10,
                temperature_c: 97,
            });
        let mut sim = SimSource::with_clock(profile, clock.clone()).unwrap();
        let key = Keypair::from_seed([5; 32]);
        assert!(overheating(&key, &sim.sample().unwrap(), 90, t0)
            .unwrap()
            .is_empty());
        clock.advance(11_000);
        let alerts = overheating(&key, &sim.sample().unwrap(), 90, t0).unwrap();
        assert_eq!(alerts.len(), 1);
        assert!(alerts[0].body.message.contains("GPU 1 is at 97 C"));
    }
}
