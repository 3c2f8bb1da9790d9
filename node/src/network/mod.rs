//! The networking core: one task owns the libp2p swarm (TCP+noise+yamux
//! and QUIC; gossipsub, request-response, identify, kad, ping, optional
//! mDNS, connection limits, a [`firewall`] for banned peers and addresses),
//! a cloneable [`NodeHandle`] talks to it through a bounded command queue,
//! every gossiped message passes the [`ingest`] pipeline before it is
//! stored or forwarded, every inbound request is held to its peer's
//! [`rate_limit`], and misbehaviour earns [`offences`] (strikes, bans).

// The derive macro generates an undocumented `BehaviourEvent` enum.
#[allow(missing_docs)]
pub mod behaviour;
pub mod codec;
pub mod config;
mod event_loop;
pub mod firewall;
pub mod handle;
pub mod ingest;
pub mod metrics;
mod nat;
pub mod offences;
pub mod rate_limit;
pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{
    self, IdentTopic, MessageId, PeerScoreParams, PeerScoreThresholds, TopicScoreParams,
};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::SwarmEvent;
use libp2p::{
    autonat, connection_limits, dcutr, identify, identity, kad, mdns, noise, ping, relay,
    request_response, tcp, yamux, StreamProtocol, SwarmBuilder,
};
use prometheus_client::registry::Registry;
use rigmesh_protocol::kind::{
    PROTOCOL_COORDINATOR, PROTOCOL_LEASE, PROTOCOL_SYNC, TOPIC_BIDS, TOPIC_CERTS, TOPIC_OFFERS,
    TOPIC_REPUTATION, TOPIC_USAGE,
};
use rigmesh_protocol::rpc::{
    CoordinatorRequest, CoordinatorResponse, LeaseRequest, LeaseResponse, SyncRequest,
    SyncResponse, MAX_GOSSIP_SIZE,
};
use rigmesh_protocol::{CoordinatorSet, UnixMillis};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use config::{
    NatConfig, NetworkConfig, NetworkLimits, RelayServerConfig, RequestLimits, RequestRate,
    UseRelay,
};
pub use handle::{BanInForce, InboundRequest, NetworkStats, NodeHandle, Protocol};
pub use metrics::NetworkMetrics;
pub use offences::{OffenceEvent, Offender};
pub use store::{AcceptedMessage, MessageStore, OffenceState, PeerBan, SyncPage};

use crate::error::{Error, Result};
use behaviour::Behaviour;
use codec::FrameCodec;
use offences::{OffencePolicy, Offences};
use rate_limit::RequestLimiter;

/// Every gossip topic of the market; a node subscribes to all of them.
pub const TOPICS: [&str; 5] = [
    TOPIC_OFFERS,
    TOPIC_BIDS,
    TOPIC_USAGE,
    TOPIC_CERTS,
    TOPIC_REPUTATION,
];

/// Messages from peers kept for subscribers that are briefly behind.
const ACCEPTED_BACKLOG: usize = 1024;
/// Strikes and bans kept for a watcher that is briefly behind.
const OFFENCE_BACKLOG: usize = 1024;

/// A started network: the handle, the inbound requests the application must
/// answer, and the swarm task.
#[derive(Debug)]
pub struct Network {
    /// Handle for commands.
    pub handle: NodeHandle,
    /// Lease and coordinator requests from peers.
    pub inbound: mpsc::Receiver<InboundRequest>,
    /// The swarm task; it ends on shutdown or when every handle is dropped.
    pub task: JoinHandle<()>,
    /// The ingest task.
    pub ingest_task: JoinHandle<()>,
}

/// Gossipsub peer scoring, tuned for a market with quiet topics:
/// - an invalid message costs `-5 x n^2` (n decays by 10 % a second), so a
///   peer is graylisted (-80) after its 4th invalid message in a burst; the
///   application bans it at its `ban_threshold` (default 3) before that;
/// - delivering first earns a little (capped), so useful relays are kept;
/// - mesh delivery-rate penalties are off: an offers topic may be silent
///   for minutes, and silence is not misbehaviour.
fn peer_scoring() -> (PeerScoreParams, PeerScoreThresholds) {
    let mut params = PeerScoreParams::default();
    for topic in TOPICS {
        let topic_params = TopicScoreParams {
            topic_weight: 1.0,
            time_in_mesh_weight: 0.01,
            time_in_mesh_quantum: Duration::from_secs(1),
            time_in_mesh_cap: 3600.0,
            first_message_deliveries_weight: 1.0,
            first_message_deliveries_decay: 0.9,
            first_message_deliveries_cap: 20.0,
            mesh_message_deliveries_weight: 0.0,
            mesh_failure_penalty_weight: 0.0,
            invalid_message_deliveries_weight: -5.0,
            invalid_message_deliveries_decay: 0.9,
            ..TopicScoreParams::default()
        };
        params
            .topics
            .insert(IdentTopic::new(topic).hash(), topic_params);
    }
    params.topic_score_cap = 50.0;
    // Loopback and NAT'd rigs share addresses; colocation is not a signal here.
    params.ip_colocation_factor_weight = 0.0;
    let thresholds = PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 3.0,
    };
    (params, thresholds)
}

fn gossipsub_behaviour(key: &identity::Keypair) -> Result<gossipsub::Behaviour> {
    let config = gossipsub::ConfigBuilder::default()
        // Messages are signed by the libp2p key of their publisher.
        .validation_mode(gossipsub::ValidationMode::Strict)
        // Nothing is forwarded before the ingest pipeline accepts it.
        .validate_messages()
        // Content-derived ids: the same bytes are the same message whoever
        // publishes them, so replays are dropped by the duplicate cache.
        .message_id_fn(|m: &gossipsub::Message| {
            MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
        })
        // The largest message kind plus its tag and protobuf framing.
        .max_transmit_size(MAX_GOSSIP_SIZE + 1024)
        .heartbeat_interval(Duration::from_millis(700))
        .duplicate_cache_time(Duration::from_secs(120))
        .build()
        .map_err(|e| Error::Config(format!("gossipsub: {e}")))?;
    let mut behaviour =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)
            .map_err(|e| Error::Config(format!("gossipsub: {e}")))?;
    let (params, thresholds) = peer_scoring();
    behaviour
        .with_peer_score(params, thresholds)
        .map_err(|e| Error::Config(format!("gossipsub scoring: {e}")))?;
    for topic in TOPICS {
        behaviour
            .subscribe(&IdentTopic::new(topic))
            .map_err(|e| Error::Config(format!("subscribing to {topic}: {e}")))?;
    }
    Ok(behaviour)
}

fn request_response_behaviour(
    name: &'static str,
    max_request: usize,
    max_response: usize,
    limits: &NetworkLimits,
) -> request_response::Behaviour<FrameCodec> {
    request_response::Behaviour::with_codec(
        FrameCodec::new(max_request, max_response),
        [(
            StreamProtocol::new(name),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(limits.request_timeout())
            .with_max_concurrent_streams(64),
    )
}

/// The relay server with the configured limits, advertised from the
/// start: an operator who turns it on says the node is reachable, so it
/// does not wait for AutoNAT to confirm an address.
fn relay_server(peer_id: libp2p::PeerId, config: &RelayServerConfig) -> relay::Behaviour {
    let per_minute =
        |n: u32| std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    let mut server = relay::Behaviour::new(
        peer_id,
        relay::Config {
            // Ours instead of libp2p's (30 a peer in 2 minutes), which a
            // customer bidding across NATed suppliers soon exceeds.
            circuit_src_rate_limiters: Vec::new(),
            max_reservations: config.max_reservations,
            max_reservations_per_peer: config.max_reservations_per_peer,
            reservation_duration: Duration::from_secs(config.reservation_secs.max(1)),
            max_circuits: config.max_circuits,
            max_circuits_per_peer: config.max_circuits_per_peer,
            max_circuit_duration: Duration::from_secs(config.circuit_secs.max(1)),
            max_circuit_bytes: config.circuit_bytes,
            ..relay::Config::default()
        }
        .circuit_src_per_peer(
            per_minute(config.circuits_per_peer_per_minute),
            Duration::from_secs(60),
        )
        .circuit_src_per_ip(
            per_minute(config.circuits_per_ip_per_minute),
            Duration::from_secs(60),
        ),
    );
    server.set_status(Some(relay::Status::Enable));
    server
}

/// AutoNAT: answers other peers' probes, and probes this node's own
/// reachability unless it serves as a relay (then its operator has said it
/// is public; its probes would only cost its peers dial-backs).
fn autonat_behaviour(
    peer_id: libp2p::PeerId,
    config: &NatConfig,
    serves_relay: bool,
) -> autonat::Behaviour {
    autonat::Behaviour::new(
        peer_id,
        autonat::Config {
            boot_delay: Duration::from_secs(config.probe_delay_secs),
            retry_interval: Duration::from_secs(config.probe_interval_secs.max(1)),
            // A dial-back past the probe interval is no use to anyone.
            timeout: Duration::from_secs(config.probe_interval_secs.clamp(1, 30)),
            throttle_server_period: Duration::from_secs(config.probe_interval_secs.max(1)),
            only_global_ips: config.only_global_ips,
            use_connected: !serves_relay,
            ..autonat::Config::default()
        },
    )
}

fn build_behaviour(
    key: &identity::Keypair,
    config: &NetworkConfig,
    metrics: &NetworkMetrics,
    relay_client: relay::client::Behaviour,
) -> Result<Behaviour> {
    let limits = &config.limits;
    let peer_id = key.public().to_peer_id();
    let serves_relay = config.relay.serve == Some(true);
    let mdns = if config.mdns {
        Some(
            mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                .map_err(|e| Error::Config(format!("mdns: {e}")))?,
        )
    } else {
        None
    };
    let kad = config.discovery.then(|| {
        let mut kad = kad::Behaviour::new(peer_id, kad::store::MemoryStore::new(peer_id));
        kad.set_mode(Some(kad::Mode::Server));
        kad
    });
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(limits.max_connections))
                .with_max_established_per_peer(Some(limits.max_connections_per_peer))
                .with_max_pending_incoming(Some(limits.max_pending))
                .with_max_pending_outgoing(Some(limits.max_pending)),
        ),
        firewall: firewall::Firewall::new(metrics.refused_connections.clone()),
        gossipsub: gossipsub_behaviour(key)?,
        lease: request_response_behaviour(
            PROTOCOL_LEASE,
            LeaseRequest::MAX_SIZE,
            LeaseResponse::MAX_SIZE,
            limits,
        ),
        coordinator: request_response_behaviour(
            PROTOCOL_COORDINATOR,
            CoordinatorRequest::MAX_SIZE,
            CoordinatorResponse::MAX_SIZE,
            limits,
        ),
        sync: request_response_behaviour(
            PROTOCOL_SYNC,
            SyncRequest::MAX_SIZE,
            SyncResponse::MAX_SIZE,
            limits,
        ),
        // Listen addresses are pushed as they change: a relayed address
        // appears only once the node behind NAT has its reservation.
        identify: identify::Behaviour::new(
            identify::Config::new("/rigmesh/1".into(), key.public())
                .with_push_listen_addr_updates(true),
        ),
        kad: Toggle::from(kad),
        // A dead connection is found (and closed) within about 30 s.
        ping: ping::Behaviour::new(
            ping::Config::new()
                .with_interval(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(10)),
        ),
        mdns: Toggle::from(mdns),
        relay_client,
        relay_server: Toggle::from(serves_relay.then(|| relay_server(peer_id, &config.relay))),
        autonat: Toggle::from(
            config
                .nat
                .autonat
                .then(|| autonat_behaviour(peer_id, &config.nat, serves_relay)),
        ),
        dcutr: dcutr::Behaviour::new(peer_id),
    })
}

/// An error and its causes in one line, each said once: libp2p's transport
/// errors wrap the OS error several times, some layers with no text.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.trim().is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    if parts.is_empty() {
        return format!("{err:?}");
    }
    parts.join(": ")
}

/// Starts the network: builds the swarm, listens, dials the bootstrap
/// peers, and spawns the swarm and ingest tasks. Returns once every listen
/// address is known. `shutdown` completing stops the node. `checked` is
/// the node's record of the certificates it checked (a coordinator's
/// books share it), so that ingest and publication do not check the same
/// bytes again.
pub async fn start(
    config: &NetworkConfig,
    key: identity::Keypair,
    store: Arc<dyn MessageStore>,
    coordinators: Option<CoordinatorSet>,
    checked: Option<Arc<rigmesh_protocol::CheckedCertificates>>,
    registry: &mut Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Network> {
    let metrics = NetworkMetrics::register(registry);
    let mut swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| Error::Config(format!("tcp transport: {e}")))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| Error::Config(format!("relay transport: {e}")))?
        .with_behaviour(|key, relay_client| {
            build_behaviour(key, config, &metrics, relay_client)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .map_err(|e| Error::Config(format!("behaviour: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();

    // Strikes and bans from before a restart, read off the executor.
    let mut offences = Offences::new(OffencePolicy::from_limits(&config.limits));
    let reader = store.clone();
    let (stored, bans) = tokio::task::spawn_blocking(move || {
        let now = UnixMillis::now();
        Ok::<_, String>((reader.offences()?, reader.active_bans(now)?))
    })
    .await
    .map_err(|e| Error::Store(e.to_string()))?
    .map_err(Error::Store)?;
    let ban_reasons: HashMap<Offender, String> = bans
        .iter()
        .map(|b| (b.offender, b.reason.clone()))
        .collect();
    offences.restore(offences::restored(stored, bans));
    for (offender, _) in offences.active_bans(UnixMillis::now()) {
        swarm.behaviour_mut().firewall.block(offender);
    }

    for addr in &config.external {
        swarm.add_external_address(addr.clone());
    }

    let mut listen_addrs = Vec::new();
    let mut listeners = HashMap::new();
    for addr in &config.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| Error::Config(format!("listening on {addr}: {}", error_chain(&e))))?;
        listeners.insert(id, addr.clone());
    }
    // Wait for every listener to report its address, so callers (and tests)
    // can hand out real ports; one that fails says why.
    let wait = async {
        while listen_addrs.len() < config.listen.len() {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => listen_addrs.push(address),
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason: Err(e),
                    ..
                }
                | SwarmEvent::ListenerError {
                    listener_id,
                    error: e,
                } => {
                    let addr = listeners
                        .get(&listener_id)
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    return Err(Error::Config(format!(
                        "listening on {addr}: {}",
                        error_chain(&e)
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .map_err(|_| Error::Config("listeners did not start within 10 s".into()))??;
    // A relay hands its external addresses to the peers that reserve on
    // it (they listen through those); an operator who turns the relay on
    // and names none says the node is reachable where it listens.
    if config.relay.serve == Some(true) && config.external.is_empty() {
        for addr in &listen_addrs {
            swarm.add_external_address(addr.clone());
        }
    }
    // A node never dials itself (a coordinator finds its own address in
    // the coordinator table).
    let own: Vec<libp2p::Multiaddr> = listen_addrs
        .iter()
        .chain(config.listen.iter())
        .map(event_loop::without_peer)
        .collect();
    let bootstrap: Vec<(libp2p::Multiaddr, Option<libp2p::PeerId>)> = config
        .bootstrap
        .iter()
        .filter(|addr| !own.contains(&event_loop::without_peer(addr)))
        .map(|addr| (addr.clone(), None))
        .collect();
    for (addr, _) in &bootstrap {
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, %e, "cannot dial bootstrap peer");
        }
    }

    let limits = config.limits.clone();
    let p2p_metrics = libp2p::metrics::Metrics::new(registry);
    let (command_tx, command_rx) = mpsc::channel(limits.command_queue.max(1));
    let (ingest_tx, ingest_rx) = mpsc::channel(limits.ingest_queue.max(1));
    let (verdict_tx, verdict_rx) = mpsc::channel(64);
    let (inbound_tx, inbound_rx) = mpsc::channel(limits.inbound_queue.max(1));
    let peer_id = *swarm.local_peer_id();
    let (offence_tx, offence_rx) = mpsc::channel(64);
    let (sync_pages_tx, sync_pages_rx) = mpsc::channel(event_loop::SYNC_READERS);
    let writer_task = tokio::spawn(store::run_writer(
        store.clone(),
        offence_rx,
        metrics.offences_unsaved.clone(),
    ));

    let (accepted_tx, _) = tokio::sync::broadcast::channel(ACCEPTED_BACKLOG);
    let (offence_events, _) = tokio::sync::broadcast::channel(OFFENCE_BACKLOG);
    let ingest =
        ingest::Ingest::new(store.clone(), coordinators.clone()).checking_once(checked.clone());
    let ingest_task = tokio::spawn(ingest::run(
        ingest,
        ingest_rx,
        verdict_tx,
        accepted_tx.clone(),
        limits.ingest_batch.max(1),
        metrics.clone(),
    ));
    let nat = nat::Reachability::new(&config.nat, config.relay.serve == Some(true));
    metrics.set_reachability(nat.status().name());
    let event_loop = event_loop::EventLoop {
        swarm,
        commands: command_rx,
        ingest: ingest_tx,
        verdicts: verdict_rx,
        inbound: inbound_tx,
        store: store.clone(),
        limits: limits.clone(),
        metrics,
        p2p_metrics,
        pending: HashMap::new(),
        pending_sync: HashMap::new(),
        sync_waiting: std::collections::VecDeque::new(),
        requests: RequestLimiter::new(&limits.requests),
        offences,
        offence_writes: offence_tx,
        offence_events: offence_events.clone(),
        sync_reads: Arc::new(tokio::sync::Semaphore::new(event_loop::SYNC_READERS)),
        sync_pages: sync_pages_rx,
        sync_pages_tx,
        unsaved_bans: Vec::new(),
        ban_reasons,
        listen_addrs,
        stats: NetworkStats::default(),
        bootstrap,
        unreachable: HashMap::new(),
        nat,
        parked: HashMap::new(),
        dialling: HashMap::new(),
    };
    let task = tokio::spawn(async move {
        event_loop.run(shutdown).await;
        // The loop handed its last records over as it ended; let the writer
        // finish them before the task counts as stopped.
        let _ = writer_task.await;
    });
    Ok(Network {
        handle: NodeHandle::new(
            command_tx,
            peer_id,
            store,
            coordinators,
            checked,
            accepted_tx,
            offence_events,
        ),
        inbound: inbound_rx,
        task,
        ingest_task,
    })
}
