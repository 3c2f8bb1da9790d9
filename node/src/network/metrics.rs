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

/// Label: how a connection runs (`direct` or `relayed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionKindLabel {
    /// `direct` or `relayed`.
    pub kind: String,
}

/// Label: how a hole punch ended (`success` or `failure`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HolePunchLabel {
    /// `success` or `failure`.
    pub outcome: String,
}

/// Label: this node's reachability (`unknown`, `public`, `private`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReachabilityLabel {
    /// `unknown`, `public` or `private`.
    pub status: String,
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
    /// Connections open, direct or through a relay.
    pub connections: Family<ConnectionKindLabel, Gauge>,
    /// Connections opened since start, direct or through a relay.
    pub connections_opened: Family<ConnectionKindLabel, Counter>,
    /// Relayed connections this node took part in, each one a chance for
    /// DCUtR to punch a hole to a direct connection.
    pub hole_punch_attempts: Counter,
    /// Hole punches that ended, by outcome, as this node saw them.
    pub hole_punches: Family<HolePunchLabel, Counter>,
    /// Relayed connections closed because a hole punch gave a direct one.
    pub relayed_retired: Counter,
    /// Reservations this node holds (or asks for) on relays.
    pub relay_reservations: Gauge,
    /// Circuits this node relayed for others (as a relay server).
    pub relayed_circuits: Counter,
    /// 1 for this node's current reachability, 0 for the others.
    pub reachability: Family<ReachabilityLabel, Gauge>,
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
            connections: Family::default(),
            connections_opened: Family::default(),
            hole_punch_attempts: Counter::default(),
            hole_punches: Family::default(),
            relayed_retired: Counter::default(),
            relay_reservations: Gauge::default(),
            relayed_circuits: Counter::default(),
            reachability: Family::default(),
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
        r.register(
            "connections",
            "Connections open, by kind (direct, relayed)",
            metrics.connections.clone(),
        );
        r.register(
            "connections_opened",
            "Connections opened, by kind (direct, relayed)",
            metrics.connections_opened.clone(),
        );
        r.register(
            "hole_punch_attempts",
            "Relayed connections, each a chance for DCUtR to upgrade it to a direct one",
            metrics.hole_punch_attempts.clone(),
        );
        r.register(
            "hole_punches",
            "Hole punches that ended, by outcome (success, failure)",
            metrics.hole_punches.clone(),
        );
        r.register(
            "relayed_retired",
            "Relayed connections closed once a hole punch gave a direct one",
            metrics.relayed_retired.clone(),
        );
        r.register(
            "relay_reservations",
            "Reservations held or asked for on relays",
            metrics.relay_reservations.clone(),
        );
        r.register(
            "relayed_circuits",
            "Circuits relayed for other peers",
            metrics.relayed_circuits.clone(),
        );
        r.register(
            "reachability",
            "1 for the node's reachability as AutoNAT found it (unknown, public, private)",
            metrics.reachability.clone(),
        );
        for kind in ["direct", "relayed"] {
            let label = ConnectionKindLabel { kind: kind.into() };
            metrics.connections.get_or_create(&label).set(0);
            metrics.connections_opened.get_or_create(&label).inc_by(0);
        }
        for outcome in ["success", "failure"] {
            let label = HolePunchLabel {
                outcome: outcome.into(),
            };
            metrics.hole_punches.get_or_create(&label).inc_by(0);
        }
        metrics.set_reachability("unknown");
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

    /// Marks `status` as the node's reachability.
    pub fn set_reachability(&self, status: &str) {
        for s in ["unknown", "public", "private"] {
            self.reachability
                .get_or_create(&ReachabilityLabel { status: s.into() })
                .set(i64::from(s == status));
        }
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
