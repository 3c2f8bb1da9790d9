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
