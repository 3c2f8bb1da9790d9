//! Prometheus metrics of notification delivery, registered under
//! `rigmesh_notify_` in the node's one registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label: a channel's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    /// Channel name.
    pub channel: String,
}

impl ChannelLabel {
    /// The label of `channel`.
    pub fn of(channel: &str) -> Self {
        ChannelLabel {
            channel: channel.to_owned(),
        }
    }
}

/// Delivery metrics. Cheap to clone: every field is a shared handle.
#[derive(Clone, Debug)]
pub struct NotifyMetrics {
    /// Messages put in the outbox, per channel.
    pub queued: Family<ChannelLabel, Counter>,
    /// Messages delivered, per channel.
    pub delivered: Family<ChannelLabel, Counter>,
    /// Failed attempts, per channel.
    pub failed: Family<ChannelLabel, Counter>,
    /// Messages given up (dead letters), per channel.
    pub dead: Family<ChannelLabel, Counter>,
    /// Messages the full outbox refused.
    pub refused: Counter,
    /// Alerts dropped because the notifier's command queue was full.
    pub dropped_alerts: Counter,
    /// Messages waiting in the outbox.
    pub outbox_len: Gauge,
    /// Seconds from queueing to delivery.
    pub latency: Histogram,
}

impl Default for NotifyMetrics {
    /// Metrics registered nowhere (for tests and for nodes without a
    /// metrics endpoint).
    fn default() -> Self {
        NotifyMetrics {
            queued: Family::default(),
            delivered: Family::default(),
            failed: Family::default(),
            dead: Family::default(),
            refused: Counter::default(),
            dropped_alerts: Counter::default(),
            outbox_len: Gauge::default(),
            latency: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
        }
    }
}

impl NotifyMetrics {
    /// Creates the metrics and registers them under `rigmesh_notify_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = NotifyMetrics::default();
        let r = registry.sub_registry_with_prefix("rigmesh_notify");
        r.register(
            "queued",
            "Notifications put in the outbox",
            metrics.queued.clone(),
        );
        r.register(
            "delivered",
            "Notifications delivered",
            metrics.delivered.clone(),
        );
        r.register("failed", "Failed delivery attempts", metrics.failed.clone());
        r.register(
            "dead",
            "Notifications given up after their attempts",
            metrics.dead.clone(),
        );
        r.register(
            "refused",
            "Notifications refused because the outbox was full",
            metrics.refused.clone(),
        );
        r.register(
            "dropped_alerts",
            "Alerts dropped because the notifier's queue was full",
            metrics.dropped_alerts.clone(),
        );
        r.register(
            "outbox_len",
            "Notifications waiting in the outbox",
            metrics.outbox_len.clone(),
        );
        r.register(
            "latency_seconds",
            "Time from queueing to delivery",
            metrics.latency.clone(),
        );
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_are_exported_under_their_names() {
        let mut registry = Registry::default();
        let metrics = NotifyMetrics::register(&mut registry);
        metrics
            .queued
            .get_or_create(&ChannelLabel::of("mail"))
            .inc();
        metrics
            .delivered
            .get_or_create(&ChannelLabel::of("mail"))
            .inc();
        metrics
            .failed
            .get_or_create(&ChannelLabel::of("sms"))
            .inc_by(3);
        metrics.outbox_len.set(7);
        metrics.latency.observe(0.25);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "rigmesh_notify_queued_total{channel=\"mail\"} 1",
            "rigmesh_notify_delivered_total{channel=\"mail\"} 1",
            "rigmesh_notify_failed_total{channel=\"sms\"} 3",
            "rigmesh_notify_outbox_len 7",
            "rigmesh_notify_latency_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
