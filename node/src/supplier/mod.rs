//! The supplier role's logic: offers built from the GPUs telemetry sees and
//! the owner's prices, the lease desk that answers proposals, and the meter
//! that turns GPU samples into signed, hash-chained usage attestations.
//! Everything here is deterministic given its inputs (time is passed in),
//! so it is tested against simulated GPUs.

pub mod alerts;
pub mod bids;
pub mod desk;
pub mod leases;
pub mod meter;
pub mod runtime;
pub mod settle;

use std::collections::{BTreeMap, BTreeSet};

use rigmesh_protocol::{Credits, Id, Keypair, Offer, Signed, UnixMillis, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::telemetry::{GpuDevice, GpuSourceConfig};

/// What a rig owner configures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupplierConfig {
    /// Where GPUs are read from (`auto`, `nvml`, or a simulated profile).
    pub gpus: GpuSourceConfig,
    /// Price per GPU-hour by GPU model, as NVML names the model. A model
    /// without a price is not offered.
    pub prices: BTreeMap<String, Credits>,
    /// Shortest lease accepted, hours.
    pub min_hours: u32,
    /// Longest lease accepted, hours.
    pub max_hours: u32,
    /// Region advertised in offers.
    pub region: String,
    /// Lifetime of an offer; it is re-published before it ends.
    pub offer_ttl_secs: u64,
    /// A GPU hotter than this raises an alert.
    pub max_temperature_c: u32,
    /// Offers nobody leases for this many hours raise an alert.
    pub untaken_alert_hours: u64,
    /// A lease whose customer has answered none of the attested windows
    /// for this long (and at least five windows) is ended: windows nobody
    /// acks may turn out unpayable (a termination, a dispute), so the rig
    /// stops working for a customer that is gone. 0 never ends one.
    pub unanswered_end_secs: u64,
    /// Proposals from a customer whose reputation as a customer (the
    /// median of the coordinators' reports: disputes and unanswered
    /// windows lower it) is below this, basis points, are refused. A
    /// customer with no report yet is accepted. 0 accepts everyone.
    pub min_customer_reputation_bp: u16,
}

impl Default for SupplierConfig {
    fn default() -> Self {
        SupplierConfig {
            gpus: GpuSourceConfig::default(),
            prices: BTreeMap::new(),
            min_hours: 1,
            max_hours: 72,
            region: "local".into(),
            offer_ttl_secs: 900,
            max_temperature_c: 90,
            untaken_alert_hours: 24,
            unanswered_end_secs: 30,
            min_customer_reputation_bp: 0,
        }
    }
}

impl SupplierConfig {
    /// Refuses settings under which the rig would never offer anything, or
    /// offer what no customer can accept, with the reason. A node checks
    /// them at start rather than run quietly without offers.
    pub fn check(&self) -> Result<()> {
        let bad = |reason: String| Err(crate::error::Error::Config(reason));
        for (model, price) in &self.prices {
            if *price <= Credits::ZERO {
                return bad(format!(
                    "[supplier.prices] \"{model}\" = \"{price}\": a price must be above zero \
                     (credits per GPU-hour)"
                ));
            }
        }
        let most = rigmesh_protocol::rules::MAX_LEASE_HOURS;
        if self.min_hours == 0 || self.min_hours > self.max_hours || self.max_hours > most {
            return bad(format!(
                "[supplier] min_hours = {} and max_hours = {}: need 1 <= min_hours <= \
                 max_hours <= {most}",
                self.min_hours, self.max_hours
            ));
        }
        let longest = rigmesh_protocol::messages::market::OFFER_MAX_TTL_MS / 1000;
        if self.offer_ttl_secs < 2 || self.offer_ttl_secs > longest {
            return bad(format!(
                "[supplier] offer_ttl_secs = {}: must be 2 to {longest}",
                self.offer_ttl_secs
            ));
        }
        Ok(())
    }
}

/// An offer and the devices behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferedGpus {
    /// The signed offer.
    pub offer: Signed<Offer>,
    /// The devices it offers, by index.
    pub devices: Vec<GpuDevice>,
}

/// Builds one signed offer per priced GPU model from the devices that are
/// present and not `busy`: all free GPUs of a model are offered together,
/// with the smallest memory among them and the fingerprint of their UUIDs.
pub fn build_offers(
    devices: &[GpuDevice],
    busy: &BTreeSet<u32>,
    config: &SupplierConfig,
    key: &Keypair,
    sequence: u64,
    now: UnixMillis,
) -> Result<Vec<OfferedGpus>> {
    let mut by_model: BTreeMap<&str, Vec<&GpuDevice>> = BTreeMap::new();
    for device in devices.iter().filter(|d| !busy.contains(&d.index)) {
        by_model
            .entry(device.name.as_str())
            .or_default()
            .push(device);
    }
    let mut offers = Vec::new();
    for (model, group) in by_model {
        let Some(price) = config.prices.get(model) else {
            tracing::info!(model, "no price configured for this GPU model; not offered");
            continue;
        };
        let uuids: Vec<&str> = group.iter().map(|d| d.uuid.as_str()).collect();
        let count = u16::try_from(group.len()).unwrap_or(u16::MAX);
        let body = Offer {
            version: PROTOCOL_VERSION,
            supplier: key.public(),
            sequence,
            gpu_model: model.to_string(),
            gpu_memory_mib: group.iter().map(|d| d.memory_total_mib).min().unwrap_or(0),
            gpu_count: count,
            price_per_gpu_hour: *price,
            min_hours: config.min_hours,
            max_hours: config.max_hours,
            region: config.region.clone(),
            hardware_fingerprint: Id::hardware_fingerprint(&uuids),
            created_at: now,
            expires_at: now.plus_ms(config.offer_ttl_secs.saturating_mul(1000)),
        };
        offers.push(OfferedGpus {
            offer: Signed::sign(body, key)?,
            devices: group.into_iter().cloned().collect(),
        });
    }
    Ok(offers)
}

/// Withdrawals of offers that the new round no longer makes (every GPU of
/// a model leased or gone): the same offer at `sequence`, expiring 1 ms
/// after it is made. Being newer, it replaces the old offer everywhere, and
/// being expired it is never matched or synced again.
pub fn withdrawals(
    previous: &[Signed<Offer>],
    current: &[OfferedGpus],
    key: &Keypair,
    sequence: u64,
    now: UnixMillis,
) -> Result<Vec<Signed<Offer>>> {
    let still_offered: BTreeSet<(&str, Id)> = current
        .iter()
        .map(|o| {
            (
                o.offer.body.gpu_model.as_str(),
                o.offer.body.hardware_fingerprint,
            )
        })
        .collect();
    let mut out = Vec::new();
    for old in previous {
        let key_of = (old.body.gpu_model.as_str(), old.body.hardware_fingerprint);
        if still_offered.contains(&key_of) {
            continue;
        }
        let mut body = old.body.clone();
        body.sequence = sequence;
        body.created_at = now;
        body.expires_at = now.plus_ms(1);
        out.push(Signed::sign(body, key)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{ManualClock, SimProfile, SimSource};
    use std::sync::Arc;

    pub(crate) fn priced(model: &str, price: &str) -> SupplierConfig {
        SupplierConfig {
            prices: [(model.to_string(), price.parse().unwrap())].into(),
            ..SupplierConfig::default()
        }
    }

    #[test]
    fn offers_match_the_simulated_hardware() {
        let t0 = UnixMillis(1_800_000_000_000);
        let clock = Arc::new(ManualClock::new(t0));
        let sim = SimSource::with_clock(SimProfile::builtin("h100x8").unwrap(), clock).unwrap();
        let devices = sim.devices_at(t0);
        let model = devices[0].name.clone();
        let key = Keypair::from_seed([5; 32]);
        let config = priced(&model, "2.49");
        let offers = build_offers(&devices, &BTreeSet::new(), &config, &key, 1, t0).unwrap();
        assert_eq!(offers.len(), 1);
        let offer = &offers[0].offer;
        offer.verify(&rigmesh_protocol::Clock::at(t0)).unwrap();
        assert_eq!(offer.body.gpu_model, model);
        assert_eq!(usize::from(offer.body.gpu_count), devices.len());
        assert_eq!(offer.body.gpu_memory_mib, devices[0].memory_total_mib);
        assert_eq!(offer.body.price_per_gpu_hour.to_string(), "2.49");
        let uuids: Vec<&str> = devices.iter().map(|d| d.uuid.as_str()).collect();
        assert_eq!(
            offer.body.hardware_fingerprint,
            Id::hardware_fingerprint(&uuids)
        );
        assert_eq!(offer.body.expires_at, t0.plus_ms(900_000));

        // Leased GPUs leave the offer, and its fingerprint changes with them.
        let busy: BTreeSet<u32> = [0, 3].into();
        let rest = build_offers(&devices, &busy, &config, &key, 2, t0).unwrap();
        assert_eq!(usize::from(rest[0].offer.body.gpu_count), devices.len() - 2);
        assert_ne!(
            rest[0].offer.body.hardware_fingerprint,
            offer.body.hardware_fingerprint
        );

        // When every GPU is leased, the old offer is withdrawn by a newer
        // one that has already expired.
        let all: BTreeSet<u32> = devices.iter().map(|d| d.index).collect();
        let none = build_offers(&devices, &all, &config, &key, 3, t0).unwrap();
        assert!(none.is_empty());
        let gone = withdrawals(std::slice::from_ref(offer), &none, &key, 3, t0.plus_ms(5)).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].body.sequence, 3);
        assert_eq!(
            gone[0].body.hardware_fingerprint,
            offer.body.hardware_fingerprint
        );
        gone[0]
            .verify(&rigmesh_protocol::Clock::at(t0.plus_ms(5)))
            .unwrap();
        assert!(
            withdrawals(std::slice::from_ref(offer), &offers, &key, 3, t0)
                .unwrap()
                .is_empty()
        );

        // An unpriced model is not offered at all.
        let unpriced = build_offers(
            &devices,
            &BTreeSet::new(),
            &priced("A100", "1"),
            &key,
            1,
            t0,
        )
        .unwrap();
        assert!(unpriced.is_empty());
    }
}
