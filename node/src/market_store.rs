//! The network's [`MessageStore`] over the ledger's [`MarketStore`], the
//! metrics of the store's upkeep (pruning and compaction), and those of
//! the node's record of the certificates it checked.

use rigmesh_ledger::{BanRecord, MarketRecord, MarketStore, OffenceRecord};
use rigmesh_protocol::rpc::SyncTopic;
use rigmesh_protocol::{Id, Kind, PublicKey, UnixMillis};

use crate::network::offences::Offender;
use crate::network::store::{
    AcceptedMessage, MessageStore, OffenceState, PeerBan, StoreResult, SyncPage,
};

/// What the periodic upkeep of the gossip store removed.
#[derive(Debug, Clone, Default)]
pub(crate) struct StoreMetrics {
    /// Expired offers, bids, bindings and alerts deleted.
    pub(crate) pruned: prometheus_client::metrics::counter::Counter,
    /// Evidence messages of finally settled leases deleted.
    pub(crate) compacted: prometheus_client::metrics::counter::Counter,
    /// Leases whose evidence is all deleted.
    pub(crate) compacted_leases: prometheus_client::metrics::counter::Counter,
}

impl StoreMetrics {
    /// Registers the metrics under `rigmesh_store`.
    pub(crate) fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("rigmesh_store");
        r.register(
            "pruned_messages",
            "Expired messages deleted from the gossip store",
            metrics.pruned.clone(),
        );
        r.register(
            "compacted_messages",
            "Usage evidence of finally settled leases deleted from the gossip store, with the certificates the node does not keep",
            metrics.compacted.clone(),
        );
        r.register(
            "compacted_leases",
            "Finally settled leases whose usage evidence is all deleted",
            metrics.compacted_leases.clone(),
        );
        metrics
    }
}

/// Exports what the node's record of checked certificates saves: the
/// checks skipped because the same bytes had passed (a coordinator's
/// books and its ingest, a certificate published then gossiped back, the
/// compaction of a lease whose certificates came lately), and how many
/// certificates it holds. Read at each scrape.
#[derive(Debug)]
pub(crate) struct CheckedCollector(std::sync::Arc<rigmesh_protocol::CheckedCertificates>);

impl CheckedCollector {
    /// Registers the collector for `checked`.
    pub(crate) fn register(
        registry: &mut prometheus_client::registry::Registry,
        checked: std::sync::Arc<rigmesh_protocol::CheckedCertificates>,
    ) {
        registry.register_collector(Box::new(CheckedCollector(checked)));
    }
}

impl prometheus_client::collector::Collector for CheckedCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let skipped = ConstCounter::new(self.0.skipped());
        skipped.encode(encoder.encode_descriptor(
            "rigmesh_certificate_checks_skipped",
            "Certificates not checked again: the same bytes had passed against the epoch's set",
            None,
            skipped.metric_type(),
        )?)?;
        let kept = ConstGauge::new(i64::try_from(self.0.len()).unwrap_or(i64::MAX));
        kept.encode(encoder.encode_descriptor(
            "rigmesh_certificates_checked_kept",
            "Certificates remembered as checked (the last ones, up to a fixed count)",
            None,
            kept.metric_type(),
        )?)?;
        Ok(())
    }
}

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Strikes in thousandths, saturating (and 0 for anything not a positive
/// number).
fn strikes_milli(strikes: f64) -> u64 {
    if strikes.is_finite() && strikes > 0.0 {
        // In range by the clamp; the fraction below a thousandth is noise.
        (strikes * 1000.0).round().min(1e18) as u64
    } else {
        0
    }
}

impl MessageStore for MarketStore {
    fn contains(&self, kind: Kind, id: &Id) -> StoreResult<bool> {
        MarketStore::contains(self, kind, id).map_err(text)
    }

    fn offer_sequence(&self, supplier: &PublicKey, fingerprint: &Id) -> StoreResult<Option<u64>> {
        MarketStore::offer_sequence(self, supplier, fingerprint).map_err(text)
    }

    fn author_count(&self, kind: Kind, author: &PublicKey, at_most: usize) -> StoreResult<usize> {
        MarketStore::author_count(self, kind, author, at_most).map_err(text)
    }

    fn lease_compacted(&self, lease: &Id) -> StoreResult<bool> {
        MarketStore::is_compacted(self, lease).map_err(text)
    }

    fn certificate_refused(
        &self,
        kind: Kind,
        lease: &Id,
        parties: (&PublicKey, &PublicKey),
        created_at: UnixMillis,
        now: UnixMillis,
    ) -> StoreResult<Option<&'static str>> {
        MarketStore::certificate_refusal(self, kind, lease, parties, created_at, now).map_err(text)
    }

    fn store(&self, batch: &[AcceptedMessage]) -> StoreResult<()> {
        let records: Vec<MarketRecord> = batch
            .iter()
            .map(|m| MarketRecord::of(&m.message, m.id, m.bytes.clone()))
            .collect();
        MarketStore::store(self, &records).map_err(text)
    }

    fn sync_page(
        &self,
        topic: SyncTopic,
        cursor: Option<&[u8]>,
        limit: usize,
        now: UnixMillis,
    ) -> StoreResult<SyncPage> {
        let kinds: &[Kind] = match topic {
            // Offers travel with the bindings that say how to reach their
            // suppliers.
            SyncTopic::Offers => &[Kind::Offer, Kind::NodeBinding],
            SyncTopic::Certificates => &[
                Kind::EscrowCertificate,
                Kind::SettlementCertificate,
                Kind::WithdrawalCertificate,
                Kind::ReleaseCertificate,
                Kind::ResolutionCertificate,
                Kind::Deposit,
            ],
        };
        let page = self.page(kinds, cursor, limit, now).map_err(text)?;
        Ok(SyncPage {
            items: page.items,
            next: page.next,
        })
    }

    fn save_offences(&self, offences: &[OffenceState], bans: &[PeerBan]) -> StoreResult<()> {
        let offences: Vec<OffenceRecord> = offences
            .iter()
            .map(|o| OffenceRecord {
                offender: o.offender.to_bytes(),
                strikes_milli: strikes_milli(o.strikes),
                updated: o.updated,
                bans: o.bans,
            })
            .collect();
        let bans: Vec<BanRecord> = bans
            .iter()
            .map(|b| BanRecord {
                peer: b.offender.to_bytes(),
                until: b.until,
                reason: b.reason.clone(),
            })
            .collect();
        MarketStore::save_offences(self, &offences, &bans).map_err(text)
    }

    fn offences(&self) -> StoreResult<Vec<OffenceState>> {
        let records = MarketStore::offences(self).map_err(text)?;
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            match Offender::from_bytes(&record.offender) {
                Some(offender) => out.push(OffenceState {
                    offender,
                    // Thousandths of a strike: exact in an f64.
                    strikes: record.strikes_milli as f64 / 1000.0,
                    updated: record.updated,
                    bans: record.bans,
                }),
                None => tracing::warn!("skipping an unreadable offence record"),
            }
        }
        Ok(out)
    }

    fn active_bans(&self, now: UnixMillis) -> StoreResult<Vec<PeerBan>> {
        let records = MarketStore::active_bans(self, now).map_err(text)?;
        let mut bans = Vec::with_capacity(records.len());
        for record in records {
            match Offender::from_bytes(&record.peer) {
                Some(offender) => bans.push(PeerBan {
                    offender,
                    until: record.until,
                    reason: record.reason,
                }),
                None => tracing::warn!("skipping an unreadable ban record"),
            }
        }
        Ok(bans)
    }
}
