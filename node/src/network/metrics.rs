//! Prometheus metrics of the network and the ingest pipeline, registered in
//! the same registry as libp2p's own (libp2p-metrics), so one `/metrics`
//! page serves both.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label: a gossip topic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    /// Topic name.
    pub topic: String,
}

/// Label: the outcome of validating a message and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `accept`, `reject` or `ignore`.
    pub outcome: String,
    /// Error code or reason (`ok` when accepted).
    pub reason: String,
}

/// Label: a request-response protocol (`lease`, `coordinator`, `sync`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    /// Protocol name.
    pub protocol: String,
}

/// Label: what kind of offender (`peer` or `address`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OffenderLabel {
    /// `peer` or `address`.
    pub kind: String,
}

/// The node's network metrics. Cheap to clone: every field is a shared handle.
#[derive(Clone, Debug)]
pub struct NetworkMetrics {
    /// Connected peers.
    pub peers: Gauge,
    /// Gossip messages received, per topic.
    pub messages_in: Family<TopicLabel, Counter>,
    /// Gossip messages published, per topic.
    pub messages_out: Family<TopicLabel, Counter>,
    /// Validation outcomes, per outcome and reason.
    pub validated: Family<OutcomeLabel, Counter>,
    /// Messages waiting in the ingest queue.
    pub ingest_queue_depth: Gauge,
    /// Messages dropped because the ingest queue was full.
    pub ingest_dropped: Counter,
    /// Seconds from arrival to verdict.
    pub ingest_latency: Histogram,
    /// Peers banned for misbehaviour.
    pub bans: Counter,
    /// Requests refused.
    pub refused_requests: Counter,
    /// Requests refused as malformed or forged (each a strike).
    pub struck_requests: Counter,
    /// Requests refused because their peer was over its budget, per
    /// protocol.
    pub rate_limited: Family<ProtocolLabel, Counter>,
    /// Strikes counted, per offender kind (a strike against a peer also
    /// counts against the address it is connected from).
    pub strikes: Family<OffenderLabel, Counter>,
    /// Bans in force, per offender kind.
    pub active_bans: Family<OffenderLabel, Gauge>,
    /// Connections refused because the peer or the address is banned.
    pub refused_connections: Family<OffenderLabel, Counter>,
    /// Offence records that could not be handed to the store (its queue
    /// was full or it failed); they are retried with the next change.
    pub offences_unsaved: Counter,
}

impl NetworkMetrics {
    /// Creates the metrics and registers them under `rigmesh_net_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = NetworkMetrics {
            peers: Gauge::default(),
            messages_in: Family::default(),
            messages_out: Family::default(),
            validated: Family::default(),
            ingest_queue_depth: Gauge::default(),
            ingest_dropped: Counter::default(),
            ingest_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            bans: Counter::default(),
            refused_requests: Counter::default(),
            struck_requests: Counter::default(),
            rate_limited: Family::default(),
            strikes: Family::default(),
            active_bans: Family::default(),
            refused_connections: Family::default(),
            offences_unsaved: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("rigmesh_net");
        r.register("peers", "Connected peers", metrics.peers.clone());
        r.register(
            "messages_in",
            "Gossip messages received",
            metrics.messages_in.clone(),
        );
        r.register(
            "messages_out",
            "Gossip messages published",
            metrics.messages_out.clone(),
        );
        r.register(
            "validated",
            "Validation outcomes of gossip messages",
            metrics.validated.clone(),
        );
        r.register(
            "ingest_queue_depth",
            "Messages waiting for validation",
            metrics.ingest_queue_depth.clone(),
        );
        r.register(
            "ingest_dropped",
            "Messages dropped because the ingest queue was full",
            metrics.ingest_dropped.clone(),
        );
        r.register(
            "ingest_latency_seconds",
            "Time from arrival to verdict",
            metrics.ingest_latency.clone(),
        );
        r.register(
            "bans",
            "Bans of peers and addresses for misbehaviour",
            metrics.bans.clone(),
        );
        r.register(
            "refused_requests",
            "Requests refused",
            metrics.refused_requests.clone(),
        );
        r.register(
            "struck_requests",
            "Requests refused as malformed or forged, each a strike toward a ban",
            metrics.struck_requests.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused because the peer was over its per-protocol budget",
            metrics.rate_limited.clone(),
        );
        r.register(
            "strikes",
            "Strikes toward a ban, by offender kind (peer, address)",
            metrics.strikes.clone(),
        );
        r.register(
            "active_bans",
            "Bans in force, by offender kind (peer, address)",
            metrics.active_bans.clone(),
        );
        r.register(
            "refused_connections",
            "Connections refused because the peer or its address is banned",
            metrics.refused_connections.clone(),
        );
        r.register(
            "offences_unsaved",
            "Strike and ban records not yet written to the store (queue full or write failed)",
            metrics.offences_unsaved.clone(),
        );
        // The firewall's series exist from the start, at zero: a rate over
        // them, and a dashboard charting them, works before the first
        // offence.
        for protocol in ["lease", "coordinator", "sync"] {
            let label = ProtocolLabel {
                protocol: protocol.into(),
            };
            metrics.rate_limited.get_or_create(&label).inc_by(0);
        }
        for kind in ["peer", "address"] {
            let label = OffenderLabel { kind: kind.into() };
            metrics.strikes.get_or_create(&label).inc_by(0);
            metrics.active_bans.get_or_create(&label).set(0);
            metrics.refused_connections.get_or_create(&label).inc_by(0);
        }
        metrics
    }

    /// Counts one verdict.
    pub fn count_verdict(&self, outcome: &str, reason: &str) {
        self.validated
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }
}
