//! The task that feeds the series a node samples rather than records as
//! it happens, and that warns a customer ahead of its caps:
//!
//! - the market, from the live offers in the order book: per GPU model
//!   the offers and the 10th, 50th and 90th percentile of their prices;
//! - a supplier, from its role's view: what its leases earned and the
//!   GPU time they sold since the last sample, and the share of its GPUs
//!   leased;
//! - a customer: once an hour, the spend forecast over the configured
//!   horizon, and a `forecast.cap` alert for each cap it runs through.
//!   (Its spend itself is recorded by the role as each window is acked.)
//!
//! It also counts the leases the market starts, as they happen: lease
//! agreements stay between their two parties, but every lease's escrow
//! certificate is gossiped, and a certificate cannot be made up (it
//! carries a quorum of coordinator votes and locks the customer's
//! money). Each one counts once, by its lease, in the hour its order was
//! made: in `market/leases_started`, and in the GPU model's
//! `market/{model}/leases_started` when the supplier's offers seen in
//! the last week (gossiped, or live in the order book) name one model: the
//! certificate names the supplier, not the offer, so the lease of a
//! supplier offering several models counts in the total only.
//!
//! The market is read from the order book in memory (no store scan);
//! writes go through the
//! [`SeriesWriter`]'s queue.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{Credits, Id, PublicKey, UnixMillis};
use tokio::sync::{broadcast, mpsc, watch};

use super::book::{hour_at, model_key, SeriesWriter};
use super::forecasts::Forecasts;
use super::{reports, ForecastConfig};
use crate::customer::commands::CustomerCommand;
use crate::supplier::runtime::SupplierView;

/// What the sampler reads and writes.
pub struct Sampling {
    /// Where samples go.
    pub writer: SeriesWriter,
    /// The forecasts (for the customer's cap alerts).
    pub forecasts: Arc<Forecasts>,
    /// The node's order book (the live offers).
    pub book: Arc<crate::orderbook::OrderBook>,
    /// The supplier role's view, on a supplier.
    pub supplier: Option<watch::Receiver<SupplierView>>,
    /// The customer role, on a customer.
    pub customer: Option<mpsc::Sender<CustomerCommand>>,
    /// How often and how far ahead.
    pub config: ForecastConfig,
    /// Messages newly stored from gossip (for the leases started).
    pub accepted: broadcast::Receiver<crate::network::AcceptedMessage>,
}

/// The `q` quantile (0..=1) of sorted `values`, nearest rank.
fn quantile(sorted: &[i64], q: f64) -> Option<i64> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get(((last as f64) * q).round() as usize).copied()
}

/// Per GPU model: the live offers and their price percentiles
/// (micro-credits per GPU-hour).
pub fn market_snapshot(
    prices_by_model: &BTreeMap<String, Vec<Credits>>,
) -> BTreeMap<String, (i64, [i64; 3])> {
    let mut prices: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (model, listed) in prices_by_model {
        prices
            .entry(model_key(model))
            .or_default()
            .extend(listed.iter().map(|p| p.units()));
    }
    prices
        .into_iter()
        .take(reports::MAX_MODELS)
        .filter_map(|(model, mut p)| {
            p.sort_unstable();
            let q = [quantile(&p, 0.1)?, quantile(&p, 0.5)?, quantile(&p, 0.9)?];
            Some((model, (p.len() as i64, q)))
        })
        .collect()
}

/// Hours a supplier's offer models are remembered after its last offer:
/// a supplier whose GPUs are all leased has no live offer, yet its
/// leases still count for its model.
const MODELS_KEPT_HOURS: i64 = 7 * 24;
/// Hours a counted lease is remembered, so a second certificate of the
/// same escrow (other votes) does not count it again.
const COUNTED_KEPT_HOURS: i64 = 48;
/// Most leases remembered as counted, and most suppliers remembered.
const MAX_REMEMBERED: usize = 200_000;
/// Models remembered per supplier: whether it offers one or several is
/// all the count needs, so a supplier cycling through made-up model
/// names holds two.
const MODELS_PER_SUPPLIER: usize = 2;

/// Counts leases started from the escrow certificates gossip brings.
#[derive(Debug, Default)]
struct LeaseCounter {
    /// Per supplier: the GPU models of its offers and the hour last seen.
    models: BTreeMap<PublicKey, (BTreeSet<String>, i64)>,
    /// Leases already counted, with the hour they counted in.
    counted: BTreeMap<Id, i64>,
}

impl LeaseCounter {
    /// Forgets the leases counted and the suppliers' models seen too long
    /// before `hour`.
    fn forget_before(&mut self, hour: i64) {
        self.models
            .retain(|_, (_, seen)| hour - *seen <= MODELS_KEPT_HOURS);
        self.counted
            .retain(|_, counted| hour - *counted <= COUNTED_KEPT_HOURS);
    }

    /// The series to add one to for `message`, and the hour: none unless
    /// it is the first escrow certificate of its lease seen here. An
    /// offer tells which model its supplier offers; `live_models` names
    /// the models of a supplier's live offers, for a supplier no offer of
    /// which came by since this node started.
    fn count(
        &mut self,
        message: &WireMessage,
        now: UnixMillis,
        live_models: impl FnOnce(&PublicKey) -> BTreeSet<String>,
    ) -> Option<(Vec<String>, i64)> {
        let certificate = match message {
            WireMessage::EscrowCertificate(certificate) => certificate,
            WireMessage::Offer(offer) => {
                let hour = hour_at(now).0;
                if self.models.len() >= MAX_REMEMBERED {
                    self.models.pop_first();
                }
                let (models, seen) = self.models.entry(offer.body.supplier).or_default();
                if models.len() < MODELS_PER_SUPPLIER {
                    models.insert(model_key(&offer.body.gpu_model));
                }
                *seen = hour;
                return None;
            }
            _ => return None,
        };
        let order = &certificate.message.body;
        // An order is made just before it is certified; one dated ahead
        // of this clock counts now.
        let hour = hour_at(order.created_at.min(now)).0;
        if self.counted.contains_key(&order.lease) {
            return None;
        }
        if self.counted.len() >= MAX_REMEMBERED {
            self.counted.pop_first();
        }
        self.counted.insert(order.lease, hour);
        let mut names = vec!["market/leases_started".to_owned()];
        if let std::collections::btree_map::Entry::Vacant(unknown) =
            self.models.entry(order.supplier)
        {
            let live: BTreeSet<String> = live_models(&order.supplier)
                .iter()
                .map(|m| model_key(m))
                .take(MODELS_PER_SUPPLIER)
                .collect();
            if !live.is_empty() {
                unknown.insert((live, hour));
            }
        }
        if let Some((models, _)) = self.models.get(&order.supplier) {
            if let (1, Some(model)) = (models.len(), models.first()) {
                names.push(format!("market/{model}/leases_started"));
            }
        }
        Some((names, hour))
    }
}

/// What the supplier's process had attested at the last sample.
#[derive(Debug, Default)]
struct SupplierMarks {
    /// Earned (micro-credits) and GPU-ms attested since the process
    /// started; zero before the first sample.
    last: (i64, u64),
}

/// What a supplier's leases did since the last sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct SupplierSample {
    /// Micro-credits earned.
    earned: i64,
    /// GPU-milliseconds sold.
    gpu_ms: u64,
    /// Share of the GPUs under a running lease, basis points (`None`
    /// without GPUs).
    utilisation_bp: Option<i64>,
}

impl SupplierMarks {
    /// What the supplier attested since the last sample: the growth of
    /// what its process attested, which counts each window once whatever
    /// leases closed meanwhile (what was attested before the process
    /// started was recorded then).
    fn sample(&mut self, view: &SupplierView, now: UnixMillis) -> SupplierSample {
        let mut out = SupplierSample::default();
        let (e, g) = (view.metered.earned.units(), view.metered.gpu_ms);
        let (e0, g0) = std::mem::replace(&mut self.last, (e, g));
        out.earned = e.saturating_sub(e0).max(0);
        out.gpu_ms = g.saturating_sub(g0);
        if !view.gpus.is_empty() {
            let leased: BTreeSet<u16> = view
                .leases
                .iter()
                .filter(|l| l.ends_at > now)
                .flat_map(|l| l.gpus.iter().copied())
                .collect();
            let bp = (leased.len() as i64 * 10_000) / view.gpus.len() as i64;
            out.utilisation_bp = Some(bp.min(10_000));
        }
        out
    }
}

fn write_supplier(sample: SupplierSample, writer: &SeriesWriter, now: UnixMillis) {
    let hour = hour_at(now);
    if sample.earned > 0 {
        writer.add("earnings", hour, sample.earned);
    }
    if sample.gpu_ms > 0 {
        writer.add(
            "gpu_hours_sold",
            hour,
            i64::try_from(sample.gpu_ms).unwrap_or(i64::MAX),
        );
    }
    if let Some(bp) = sample.utilisation_bp {
        writer.set("utilisation", hour, bp);
    }
}

/// Raises a `forecast.cap` alert once per cap (and cap value) while the
/// forecast runs through it within the horizon.
#[derive(Debug, Default)]
struct CapWatch {
    raised: BTreeSet<(Option<Id>, Credits)>,
}

impl CapWatch {
    async fn check(
        &mut self,
        forecasts: &Arc<Forecasts>,
        customer: &mpsc::Sender<CustomerCommand>,
        horizon: usize,
    ) {
        let report = match reports::spend(forecasts, customer, horizon).await {
            Ok(report) => report,
            Err(err) => {
                tracing::debug!(%err, "spend forecast for the cap alerts not made");
                return;
            }
        };
        let now = UnixMillis::now();
        let mut due = BTreeSet::new();
        for cap in report.account_cap.iter().chain(&report.lease_caps) {
            let Some(at) = cap.run_out_at else { continue };
            let key = (cap.lease, cap.cap);
            due.insert(key);
            if self.raised.contains(&key) || cap.remaining.is_zero() {
                continue;
            }
            let hours = at.since(now) / 3_600_000;
            let what = match cap.lease {
                Some(lease) => format!("lease {lease}'s cap of {} credits", cap.cap),
                None => format!("the account's cap of {} credits", cap.cap),
            };
            let message = format!(
                "at this rate {what} is reached in about {hours} h ({} credits left; {})",
                cap.remaining, cap.basis
            );
            let (tx, rx) = tokio::sync::oneshot::channel();
            if customer
                .send(CustomerCommand::ForecastAlert(cap.lease, message, tx))
                .await
                .is_ok()
                && rx.await.is_ok()
            {
                self.raised.insert(key);
            }
        }
        // A cap no longer in reach may warn again when it comes back.
        self.raised.retain(|key| due.contains(key));
    }
}

/// The next message newly stored from gossip; never, once the network
/// has stopped.
async fn next_accepted(
    rx: &mut Option<broadcast::Receiver<crate::network::AcceptedMessage>>,
) -> Result<crate::network::AcceptedMessage, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Samples every `config.sample_secs` until `stop` turns true.
pub async fn run(s: Sampling, mut stop: watch::Receiver<bool>) {
    let every = std::time::Duration::from_secs(s.config.sample_secs.max(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut marks = SupplierMarks::default();
    let mut caps = CapWatch::default();
    let mut checked_hour = None;
    let mut leases = LeaseCounter::default();
    let mut accepted_rx = Some(s.accepted);
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
            accepted = next_accepted(&mut accepted_rx) => match accepted {
                Ok(accepted) => {
                    let book = &s.book;
                    if let Some((names, hour)) = leases.count(&accepted.message, UnixMillis::now(), |supplier| book.models_of(supplier)) {
                        for name in names {
                            s.writer.add(&name, rigmesh_forecast::Hour(hour), 1);
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "gossip outran the lease count; some leases started were not counted");
                }
                // The network stopped: sampling goes on without it.
                Err(broadcast::error::RecvError::Closed) => accepted_rx = None,
            },
            _ = tick.tick() => {
                let now = UnixMillis::now();
                // Not before the book is read, or the first hour would
                // count a market half loaded.
                leases.forget_before(hour_at(now).0);
                if s.book.is_loaded() {
                    let hour = hour_at(now);
                    let prices = s.book.prices(now);
                    for (model, (count, [p10, p50, p90])) in market_snapshot(&prices) {
                        s.writer.set(&format!("market/{model}/offers"), hour, count);
                        s.writer.set(&format!("market/{model}/price_p10"), hour, p10);
                        s.writer.set(&format!("market/{model}/price_p50"), hour, p50);
                        s.writer.set(&format!("market/{model}/price_p90"), hour, p90);
                    }
                }
                if let Some(view) = &s.supplier {
                    let view = view.borrow().clone();
                    write_supplier(marks.sample(&view, now), &s.writer, now);
                }
                if let (Some(customer), true) = (&s.customer, s.config.alert_horizon_hours > 0) {
                    let hour = hour_at(now);
                    if checked_hour != Some(hour) {
                        let horizon = (s.config.alert_horizon_hours as usize)
                            .min(super::forecasts::MAX_HORIZON_HOURS);
                        caps.check(&s.forecasts, customer, horizon).await;
                        checked_hour = Some(hour);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supplier::runtime::SupplierLease;

    #[test]
    fn a_lease_counts_once_and_for_its_suppliers_only_model() {
        use rigmesh_protocol::samples;
        let t0 = UnixMillis::now();
        let offer = samples::offer_at(t0).unwrap();
        let certificate = samples::escrow_certificate_at(t0).unwrap();
        assert_eq!(certificate.message.body.supplier, offer.body.supplier);
        let hour = hour_at(certificate.message.body.created_at.min(t0)).0;
        let model = model_key(&offer.body.gpu_model);
        let message = WireMessage::EscrowCertificate(certificate.clone());
        let nothing_live = |_: &PublicKey| BTreeSet::new();
        let total = vec!["market/leases_started".to_owned()];
        let with_model = vec![
            "market/leases_started".to_owned(),
            format!("market/{model}/leases_started"),
        ];

        // Nothing known of its supplier: the total only.
        let mut counter = LeaseCounter::default();
        assert_eq!(
            counter.count(&message, t0, nothing_live),
            Some((total.clone(), hour))
        );
        // The same lease again (another copy of its certificate): nothing.
        assert_eq!(counter.count(&message, t0, nothing_live), None);

        // Once the supplier's offer came by, its model too.
        let mut counter = LeaseCounter::default();
        let gossiped = WireMessage::Offer(offer.clone());
        assert_eq!(counter.count(&gossiped, t0, nothing_live), None);
        assert_eq!(
            counter.count(&message, t0, nothing_live),
            Some((with_model.clone(), hour))
        );

        // Or from the order book, for a supplier whose offers were stored
        // before this node started.
        let mut counter = LeaseCounter::default();
        let gpu_model = offer.body.gpu_model.clone();
        let in_book = |_: &PublicKey| BTreeSet::from([gpu_model.clone()]);
        assert_eq!(
            counter.count(&message, t0, in_book),
            Some((with_model, hour))
        );

        // A supplier offering two models: the total only.
        let mut counter = LeaseCounter::default();
        let mut other = offer.clone();
        counter.count(&gossiped, t0, nothing_live);
        for n in 0..100 {
            other.body.gpu_model = format!("made-up model {n}");
            counter.count(&WireMessage::Offer(other.clone()), t0, nothing_live);
        }
        assert_eq!(
            counter.models[&offer.body.supplier].0.len(),
            MODELS_PER_SUPPLIER
        );
        assert_eq!(
            counter.count(&message, t0, nothing_live),
            Some((total, hour))
        );

        // An order dated ahead of this clock counts in this hour; what was
        // counted is forgotten two days on, what was offered a week on.
        let mut counter = LeaseCounter::default();
        let early = UnixMillis(t0.0.saturating_sub(3_600_000));
        counter.count(&gossiped, early, nothing_live);
        assert_eq!(
            counter.count(&message, early, nothing_live).map(|(_, h)| h),
            Some(hour_at(early).0)
        );
        counter.forget_before(hour_at(early).0 + COUNTED_KEPT_HOURS + 1);
        assert!(counter.counted.is_empty());
        assert_eq!(counter.models.len(), 1);
        counter.forget_before(hour_at(early).0 + MODELS_KEPT_HOURS + 1);
        assert!(counter.models.is_empty());
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<i64> = (1..=11).collect();
        assert_eq!(quantile(&v, 0.1), Some(2));
        assert_eq!(quantile(&v, 0.5), Some(6));
        assert_eq!(quantile(&v, 0.9), Some(10));
        assert_eq!(quantile(&[], 0.5), None);
    }

    fn lease(id: u8, gpus: Vec<u16>, earned: i64, gpu_ms: u64, ends_at: u64) -> SupplierLease {
        SupplierLease {
            lease: Id([id; 32]),
            customer: rigmesh_protocol::Keypair::from_seed([1; 32]).public(),
            gpus,
            price_per_gpu_hour: Credits::from_units(1_000_000),
            ends_at: UnixMillis(ends_at),
            windows_attested: 1,
            billable_gpu_ms: gpu_ms,
            earned: Credits::from_units(earned),
            settled: None,
        }
    }

    fn gpu(index: u32) -> crate::telemetry::GpuDevice {
        crate::telemetry::GpuDevice {
            index,
            name: "A100".into(),
            uuid: format!("GPU-{index}"),
            serial: None,
            memory_total_mib: 81_920,
            pci_bus_id: format!("0:{index}"),
            compute_capability: None,
            driver_version: None,
            cuda_version: None,
        }
    }

    #[test]
    fn a_supplier_counts_what_its_leases_added_since_the_last_sample() {
        use crate::supplier::runtime::Metered;
        let now = UnixMillis(1_000_000);
        let metered = |earned: i64, gpu_ms: u64| Metered {
            earned: Credits::from_units(earned),
            gpu_ms,
        };
        let mut marks = SupplierMarks::default();
        // A lease restored at start shows what it earned before: none of
        // it was attested by this process, so none of it counts again.
        let mut view = SupplierView {
            gpus: (0..4).map(gpu).collect(),
            leases: std::sync::Arc::new(vec![lease(1, vec![0, 1], 500_000, 60_000, 2_000_000)]),
            ..SupplierView::default()
        };
        let first = marks.sample(&view, now);
        assert_eq!((first.earned, first.gpu_ms), (0, 0));
        assert_eq!(first.utilisation_bp, Some(5_000));
        view.leases = std::sync::Arc::new(vec![
            lease(1, vec![0, 1], 800_000, 90_000, 2_000_000),
            lease(2, vec![2], 100_000, 10_000, 500_000),
        ]);
        view.metered = metered(400_000, 40_000);
        let second = marks.sample(&view, now);
        assert_eq!(second.earned, 300_000 + 100_000, "growth plus a new lease");
        assert_eq!(second.gpu_ms, 30_000 + 10_000);
        assert_eq!(second.utilisation_bp, Some(5_000), "lease 2 has ended");
        let third = marks.sample(&view, now);
        assert_eq!((third.earned, third.gpu_ms), (0, 0), "nothing new");
        // Lease 2 closes with one more window and leaves the open leases:
        // only that window counts, not what its closed record adds up to.
        view.leases = std::sync::Arc::new(vec![lease(1, vec![0, 1], 800_000, 90_000, 2_000_000)]);
        view.metered = metered(450_000, 45_000);
        let fourth = marks.sample(&view, now);
        assert_eq!((fourth.earned, fourth.gpu_ms), (50_000, 5_000));
        assert_eq!(fourth.utilisation_bp, Some(5_000));
    }
}
