//! The task that owns the `Swarm`: it answers commands from handles
//! (local work first), feeds gossip into the ingest queue, reports verdicts
//! back to gossipsub, serves (reading pages off the task) and runs
//! catch-up sync, holds every peer to its request budget, and strikes and
//! bans peers (and the addresses they connect from) that misbehave. It
//! ends when every handle is dropped or shutdown is signalled.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::metrics::Recorder;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, Multiaddr, PeerId, Swarm};
use rigmesh_protocol::rpc::{
    CoordinatorResponse, GossipFrame, LeaseResponse, SyncRequest, SyncResponse, SyncTopic,
};
use rigmesh_protocol::{Carrier, UnixMillis};
use tokio::sync::mpsc;

use super::behaviour::{Behaviour, BehaviourEvent};
use super::config::NetworkLimits;
use super::handle::{BanInForce, Command, InboundRequest, NetworkStats, Protocol, Reply};
use super::ingest::{IngestItem, Outcome, Verdict};
use super::metrics::{
    ConnectionKindLabel, HolePunchLabel, NetworkMetrics, OffenderLabel, ProtocolLabel, TopicLabel,
};
use super::nat::{is_relayed, Reachability};
use super::offences::{NewBan, Offences, Offender, Standing};
use super::rate_limit::RequestLimiter;
use super::store::{MessageStore, OffenceState, OffenceWrite, PeerBan};
use crate::error::Error;

/// Most sync items served per page; 100 x 8 KiB stays under the 1 MiB frame.
const SYNC_PAGE: usize = 100;
/// Most pages fetched from one peer in one catch-up.
const SYNC_MAX_PAGES: u32 = 100;

/// Most sync pages read from the store at once (32 peers' catch-ups
/// starting together); more requests meanwhile are dropped (the requester
/// reads an empty stream) and counted with the rate-limited ones.
pub(crate) const SYNC_READERS: usize = 64;

/// A sync page read off the swarm task, ready to send.
pub(crate) type SyncPageReady = (request_response::ResponseChannel<Vec<u8>>, Vec<u8>);

pub(crate) struct PendingSync {
    peer: PeerId,
    topic: SyncTopic,
    pages_left: u32,
}

/// Most sync pages waiting for room in the ingest queue; a page past them
/// is dropped (counted) and its catch-up ends.
const SYNC_PAGES_WAITING: usize = 16;

/// How often pages waiting for room in the ingest queue try again.
const SYNC_RETRY: Duration = Duration::from_millis(50);

/// A sync page not yet all in the ingest queue: the rest of its frames,
/// and the page after it, asked for once these are in. Catch-up is paced
/// by ingest instead of overflowing its queue.
pub(crate) struct WaitingSync {
    sync: PendingSync,
    frames: std::collections::VecDeque<Vec<u8>>,
    next: Option<Vec<u8>>,
}

pub(crate) struct EventLoop {
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) ingest: mpsc::Sender<IngestItem>,
    pub(crate) verdicts: mpsc::Receiver<Vec<Verdict>>,
    pub(crate) inbound: mpsc::Sender<InboundRequest>,
    pub(crate) store: Arc<dyn MessageStore>,
    pub(crate) limits: NetworkLimits,
    pub(crate) metrics: NetworkMetrics,
    pub(crate) p2p_metrics: libp2p::metrics::Metrics,
    /// Replies awaited, by protocol and request id: each request-response
    /// behaviour numbers its requests on its own, so ids repeat across
    /// protocols.
    pub(crate) pending: HashMap<(Protocol, OutboundRequestId), Reply<Vec<u8>>>,
    pub(crate) pending_sync: HashMap<OutboundRequestId, PendingSync>,
    /// Sync pages waiting for room in the ingest queue, oldest first.
    pub(crate) sync_waiting: std::collections::VecDeque<WaitingSync>,
    /// Request budgets per peer and protocol.
    pub(crate) requests: RequestLimiter,
    /// Strikes and bans by peer and by address.
    pub(crate) offences: Offences,
    /// The store writer of strikes and bans.
    pub(crate) offence_writes: mpsc::Sender<OffenceWrite>,
    /// Bans the writer's full queue did not take yet.
    pub(crate) unsaved_bans: Vec<PeerBan>,
    /// Strikes and bans for their watchers (never waits).
    pub(crate) offence_events: tokio::sync::broadcast::Sender<super::OffenceEvent>,
    /// Why each ban in force was decided (for operators' listing).
    pub(crate) ban_reasons: HashMap<Offender, String>,
    /// Sync pages being read from the store at most (the permits).
    pub(crate) sync_reads: Arc<tokio::sync::Semaphore>,
    /// Sync pages read, with where each goes.
    pub(crate) sync_pages: mpsc::Receiver<SyncPageReady>,
    /// Handed to each reader.
    pub(crate) sync_pages_tx: mpsc::Sender<SyncPageReady>,
    pub(crate) listen_addrs: Vec<Multiaddr>,
    pub(crate) stats: NetworkStats,
    /// Bootstrap addresses, with the peer each one reached (if it did):
    /// those not connected are dialled again every few seconds, so a node
    /// started before its peers finds them once they are up.
    pub(crate) bootstrap: Vec<(Multiaddr, Option<PeerId>)>,
    /// Bootstrap addresses whose last dial failed, with why; the first
    /// failure of each is logged as a warning, later ones at debug.
    pub(crate) unreachable: HashMap<Multiaddr, String>,
    /// Relays, reservations and reachability behind NAT.
    pub(crate) nat: Reachability,
    /// Requests to peers not connected yet, by peer: sent once a
    /// connection to the peer is up, failed when every dial to it failed.
    pub(crate) parked: HashMap<PeerId, Vec<ParkedRequest>>,
    /// Dials made for parked requests, with the peer each is for.
    pub(crate) dialling: HashMap<libp2p::swarm::ConnectionId, PeerId>,
}

/// A request waiting for a connection to its peer.
pub(crate) struct ParkedRequest {
    protocol: Protocol,
    bytes: Vec<u8>,
    reply: Reply<Vec<u8>>,
}

/// The address without its `/p2p/<peer id>` part.
pub(crate) fn without_peer(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect()
}

impl EventLoop {
    pub(crate) async fn run(mut self, shutdown: impl Future<Output = ()> + Send) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut ban_clock = tokio::time::interval(Duration::from_secs(5));
        let mut sync_retry = tokio::time::interval(SYNC_RETRY);
        sync_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Bans restored from the store count from the start.
        self.update_ban_gauge();
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => break,
                },
                Some(verdicts) = self.verdicts.recv() => self.apply_verdicts(verdicts),
                Some((channel, page)) = self.sync_pages.recv() => {
                    let _ = self.swarm.behaviour_mut().sync.send_response(channel, page);
                }
                event = self.swarm.select_next_some() => self.handle_event(event),
                _ = sync_retry.tick(), if !self.sync_waiting.is_empty() => {
                    self.retry_waiting_sync();
                }
                _ = ban_clock.tick() => {
                    self.expire_bans();
                    self.redial_bootstrap();
                    self.reserve_relays();
                    self.retire_relayed();
                }
            }
        }
        // The last changes wait for room in the writer's queue: a ban
        // decided just before a stop must still hold after the restart.
        if let Some(write) = self.offence_write() {
            if self.offence_writes.send(write).await.is_err() {
                self.metrics.offences_unsaved.inc();
            }
        }
        tracing::debug!(peer = %self.swarm.local_peer_id(), "network stopped");
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Publish { topic, data, reply } => {
                let result = self.publish(topic, data);
                let _ = reply.send(result);
            }
            Command::PublishUnchecked { topic, data, reply } => {
                let result = self.publish(&topic, data);
                let _ = reply.send(result);
            }
            Command::Request {
                peer,
                protocol,
                bytes,
                reply,
            } => {
                let parked: usize = self.parked.values().map(Vec::len).sum();
                if self.pending.len() + parked >= self.limits.max_pending_requests {
                    let _ = reply.send(Err(Error::Network("too many requests in flight".into())));
                    return;
                }
                if self.swarm.is_connected(&peer) {
                    let id = self.behaviour_for(protocol).send_request(&peer, bytes);
                    self.pending.insert((protocol, id), reply);
                } else {
                    // Sent once connected: a request handed to
                    // request-response now would fail with the first dial
                    // that fails (a direct one to a NATed peer), while the
                    // one through a relay may still succeed.
                    self.parked.entry(peer).or_default().push(ParkedRequest {
                        protocol,
                        bytes,
                        reply,
                    });
                    if let Some(wait) = self.nat.redial_wait(&peer, std::time::Instant::now()) {
                        self.fail_parked(
                            &peer,
                            &format!(
                                "unreachable: the last dial failed; the next in {} ms",
                                wait.as_millis()
                            ),
                        );
                    } else if !self.dialling.values().any(|p| *p == peer) {
                        self.dial_with_relays(peer);
                    }
                }
            }
            Command::Respond {
                protocol,
                channel,
                bytes,
                reply,
            } => {
                let result = self
                    .behaviour_for(protocol)
                    .send_response(channel, bytes)
                    .map_err(|_| Error::Network("the requester is gone".into()));
                let _ = reply.send(result);
            }
            Command::Dial { addr, reply } => {
                let result = self
                    .swarm
                    .dial(addr)
                    .map_err(|e| Error::Network(e.to_string()));
                let _ = reply.send(result);
            }
            Command::Ban {
                peer,
                reason,
                reply,
            } => {
                self.ban(peer, reason);
                let _ = reply.send(Ok(()));
            }
            Command::Refused {
                peer,
                strike,
                reply,
            } => {
                self.metrics.refused_requests.inc();
                self.stats.refused_requests += 1;
                if let Some(reason) = strike {
                    self.metrics.struck_requests.inc();
                    self.stats.struck_requests += 1;
                    tracing::debug!(%peer, reason, "refused an invalid request");
                    self.strike(peer, reason);
                }
                let _ = reply.send(Ok(()));
            }
            Command::Peers { reply } => {
                let _ = reply.send(Ok(self.swarm.connected_peers().copied().collect()));
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(Ok(self.listen_addrs.clone()));
            }
            Command::Stats { reply } => {
                let mut stats = self.stats.clone();
                stats.peers = self.swarm.connected_peers().count();
                stats.reachability = self.nat.status().name().to_string();
                stats.relay_reservations = self.nat.reservation_count();
                stats.relayed_addrs = self
                    .listen_addrs
                    .iter()
                    .filter(|a| is_relayed(a))
                    .map(ToString::to_string)
                    .collect();
                stats.unreachable_bootstrap = self
                    .unreachable
                    .iter()
                    .map(|(addr, why)| (addr.to_string(), why.clone()))
                    .collect();
                let _ = reply.send(Ok(stats));
            }
            Command::SyncFrom { peer, reply } => {
                self.start_sync(peer);
                let _ = reply.send(Ok(()));
            }
            Command::Standing { offender, reply } => {
                let now = UnixMillis::now();
                let standing = self.offences.standing(&offender).map(|s| Standing {
                    strikes: self.offences.strikes(&offender, now),
                    updated: now,
                    ..s.clone()
                });
                let _ = reply.send(Ok(standing));
            }
            Command::BanUntil {
                offender,
                until,
                reason,
                reply,
            } => {
                let now = UnixMillis::now();
                let result = match self.offences.ban_until(offender, until, reason, now) {
                    Some(ban) => {
                        let until = ban.until;
                        self.apply_ban(ban);
                        Ok(until)
                    }
                    None if until <= now => Err(Error::Refused(format!(
                        "a ban of {offender} must end after now"
                    ))),
                    None => Err(Error::Refused(format!(
                        "{offender} is a trusted address and is never banned"
                    ))),
                };
                let _ = reply.send(result);
            }
            Command::Lift { offender, reply } => {
                let lifted = self.lift(offender);
                let _ = reply.send(Ok(lifted));
            }
            Command::Bans { reply } => {
                let mut bans: Vec<BanInForce> = self
                    .offences
                    .active_bans(UnixMillis::now())
                    .into_iter()
                    .map(|(offender, until)| BanInForce {
                        offender,
                        until,
                        reason: self.ban_reasons.get(&offender).cloned().unwrap_or_default(),
                    })
                    .collect();
                bans.sort_by_key(|b| std::cmp::Reverse(b.until));
                let _ = reply.send(Ok(bans));
            }
        }
    }

    /// Lifts `offender`'s ban now: lets it connect again and records the
    /// ban as ended, so it stays lifted after a restart.
    fn lift(&mut self, offender: Offender) -> bool {
        let now = UnixMillis::now();
        if !self.offences.lift(&offender, now) {
            return false;
        }
        tracing::warn!(%offender, "ban lifted");
        self.swarm.behaviour_mut().firewall.unblock(&offender);
        self.ban_reasons.remove(&offender);
        self.update_ban_gauge();
        self.unsaved_bans.push(PeerBan {
            offender,
            until: now,
            reason: "lifted".into(),
        });
        self.save_offences();
        true
    }

    fn behaviour_for(
        &mut self,
        protocol: Protocol,
    ) -> &mut request_response::Behaviour<super::codec::FrameCodec> {
        let behaviour = self.swarm.behaviour_mut();
        match protocol {
            Protocol::Lease => &mut behaviour.lease,
            Protocol::Coordinator => &mut behaviour.coordinator,
            Protocol::Sync => &mut behaviour.sync,
        }
    }

    fn publish(&mut self, topic: &str, data: Vec<u8>) -> crate::error::Result<()> {
        let result = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(IdentTopic::new(topic), data);
        match result {
            Ok(_) => {
                self.metrics
                    .messages_out
                    .get_or_create(&TopicLabel {
                        topic: topic.to_string(),
                    })
                    .inc();
                Ok(())
            }
            Err(e) => Err(Error::Network(format!("publishing on {topic}: {e}"))),
        }
    }

    fn handle_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.p2p_metrics.record(&event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => {
                self.p2p_metrics.record(&event);
                self.on_gossip(event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Lease(event)) => {
                self.on_request_response(Protocol::Lease, event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Coordinator(event)) => {
                self.on_request_response(Protocol::Coordinator, event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => {
                self.on_request_response(Protocol::Sync, event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => {
                self.p2p_metrics.record(&event);
                if let identify::Event::Received { peer_id, info, .. } = event {
                    self.nat
                        .on_identified(peer_id, &info.protocols, &info.listen_addrs);
                    self.reserve_relays();
                    if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                        for addr in info.listen_addrs {
                            kad.add_address(&peer_id, addr);
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    let banned = self
                        .swarm
                        .behaviour()
                        .firewall
                        .is_blocked(&Offender::Peer(peer));
                    if !banned && !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.p2p_metrics.record(&event),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(event)) => {
                self.p2p_metrics.record(&event);
                // A connection that stops answering pings is closed: over
                // a partition TCP would keep it "open" for many minutes,
                // and only a new connection starts the catch-up sync that
                // brings back what was missed meanwhile.
                // (libp2p reports a failure only after a second one in a
                // row; a peer without ping is left alone.)
                match &event.result {
                    Ok(_) | Err(libp2p::ping::Failure::Unsupported) => {}
                    Err(failure) => {
                        tracing::debug!(peer = %event.peer, %failure, "pings fail; closing the connection");
                        self.swarm.close_connection(event.connection);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                libp2p::relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal: false,
                    ..
                },
            )) => tracing::info!(relay = %relay_peer_id, "relay reservation accepted"),
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(event)) => {
                self.p2p_metrics.record(&event);
                if let libp2p::relay::Event::CircuitReqAccepted { .. } = event {
                    self.metrics.relayed_circuits.inc();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(
                libp2p::autonat::Event::StatusChanged { new, .. },
            )) => self.on_reachability(&new),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(event)) => {
                self.p2p_metrics.record(&event);
                let outcome = match &event.result {
                    Ok(_) => {
                        self.stats.hole_punch_successes += 1;
                        self.nat
                            .on_punched(event.remote_peer_id, std::time::Instant::now());
                        tracing::info!(peer = %event.remote_peer_id, "hole punched: direct connection");
                        "success"
                    }
                    Err(e) => {
                        self.stats.hole_punch_failures += 1;
                        tracing::info!(peer = %event.remote_peer_id, %e, "hole punch failed; the connection stays relayed");
                        "failure"
                    }
                };
                self.metrics
                    .hole_punches
                    .get_or_create(&HolePunchLabel {
                        outcome: outcome.into(),
                    })
                    .inc();
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                // A relayed address is reachable by construction: the
                // relay accepted the reservation. Announcing it as external
                // lets identify and kad hand it to peers.
                if is_relayed(&address) {
                    self.swarm.add_external_address(address.clone());
                }
                self.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                if is_relayed(&address) {
                    self.swarm.remove_external_address(&address);
                }
                self.listen_addrs.retain(|a| *a != address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                ..
            } => {
                for address in &addresses {
                    if is_relayed(address) {
                        self.swarm.remove_external_address(address);
                    }
                }
                self.listen_addrs.retain(|a| !addresses.contains(a));
                self.nat.on_listener_closed(listener_id);
                self.metrics
                    .relay_reservations
                    .set(i64::try_from(self.nat.reservation_count()).unwrap_or(i64::MAX));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                self.update_peer_gauge();
                self.count_connection(endpoint.is_relayed(), 1);
                self.nat
                    .on_connected(peer_id, connection_id, endpoint.is_relayed());
                self.dialling.remove(&connection_id);
                self.send_parked(peer_id);
                if endpoint.is_relayed() {
                    self.metrics.hole_punch_attempts.inc();
                } else if endpoint.is_dialer() {
                    self.nat.on_dialled(peer_id, endpoint.get_remote_address());
                }
                let remote = without_peer(endpoint.get_remote_address());
                for (addr, peer) in &mut self.bootstrap {
                    if endpoint.is_dialer() && without_peer(addr) == remote {
                        *peer = Some(peer_id);
                        if self.unreachable.remove(addr).is_some() {
                            tracing::info!(%addr, "bootstrap peer reached");
                        }
                    }
                }
                if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                    kad.add_address(&peer_id, endpoint.get_remote_address().clone());
                }
                if num_established.get() == 1 {
                    self.start_sync(peer_id);
                }
            }
            // Strikes outlive the connection: a peer that reconnects
            // carries them (they decay with time instead).
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.update_peer_gauge();
                self.count_connection(endpoint.is_relayed(), -1);
                self.nat
                    .on_disconnected(peer_id, connection_id, endpoint.is_relayed());
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => self.on_outgoing_error(connection_id, &error),
            _ => {}
        }
    }

    /// Closes the relayed connections a hole punch has made redundant, so
    /// the relay's circuits are given back rather than held until its
    /// limits end them.
    fn retire_relayed(&mut self) {
        for (peer, connection) in self.nat.relayed_to_retire(std::time::Instant::now()) {
            if self.swarm.close_connection(connection) {
                tracing::info!(%peer, "direct connection holds: relayed connection closed");
                self.metrics.relayed_retired.inc();
            }
        }
    }

    /// Notes a bootstrap address that could not be reached, so the
    /// operator hears of it (a warning, and `/health`).
    fn on_dial_error(&mut self, error: &libp2p::swarm::DialError) {
        let failed: Vec<(Multiaddr, String)> = match error {
            libp2p::swarm::DialError::Transport(errors) => errors
                .iter()
                .map(|(addr, e)| (without_peer(addr), super::error_chain(e)))
                .collect(),
            _ => return,
        };
        for (addr, _) in &self.bootstrap {
            let plain = without_peer(addr);
            let Some((_, why)) = failed.iter().find(|(a, _)| *a == plain) else {
                continue;
            };
            if self.unreachable.insert(addr.clone(), why.clone()).is_none() {
                tracing::warn!(%addr, reason = %why, "bootstrap peer unreachable; retrying every few seconds");
            } else {
                tracing::debug!(%addr, reason = %why, "bootstrap peer still unreachable");
            }
        }
    }

    /// A connection opened (`+1`) or closed (`-1`), direct or relayed.
    fn count_connection(&mut self, relayed: bool, change: i64) {
        let kind = if relayed { "relayed" } else { "direct" };
        let label = ConnectionKindLabel { kind: kind.into() };
        self.metrics
            .connections
            .get_or_create(&label)
            .inc_by(change);
        if change > 0 {
            self.metrics.connections_opened.get_or_create(&label).inc();
        }
        let open = if relayed {
            &mut self.stats.relayed_connections
        } else {
            &mut self.stats.direct_connections
        };
        *open = if change > 0 {
            open.saturating_add(1)
        } else {
            open.saturating_sub(1)
        };
    }

    /// AutoNAT's verdict changed: a node found private listens through
    /// relays; one found public again gives its reservations up.
    fn on_reachability(&mut self, status: &libp2p::autonat::NatStatus) {
        if self.nat.on_autonat(status) {
            self.nat.release(&mut self.swarm);
            let relayed: Vec<Multiaddr> = self
                .listen_addrs
                .iter()
                .filter(|a| is_relayed(a))
                .cloned()
                .collect();
            for addr in relayed {
                self.swarm.remove_external_address(&addr);
            }
        }
        self.metrics.set_reachability(self.nat.status().name());
        self.reserve_relays();
    }

    /// Reserves on relays when this node should listen through them.
    fn reserve_relays(&mut self) {
        self.nat.reserve(&mut self.swarm);
        self.metrics
            .relay_reservations
            .set(i64::try_from(self.nat.reservation_count()).unwrap_or(i64::MAX));
    }

    /// Dials `peer` at its direct addresses (those the behaviours know)
    /// and through every known relay at once: a peer behind NAT is
    /// reachable only through the relay it reserved on, and the first
    /// connection to succeed wins. The requests parked for it wait for the
    /// outcome.
    fn dial_with_relays(&mut self, peer: PeerId) {
        // Beside any other dial under way (Kademlia's, say): this one's
        // outcome is what the parked requests wait for.
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .condition(libp2p::swarm::dial_opts::PeerCondition::Disconnected)
            .addresses(self.nat.circuit_addrs(&peer))
            .extend_addresses_through_behaviour()
            .build();
        let connection = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dialling.insert(connection, peer);
            }
            Err(_) if self.swarm.is_connected(&peer) => self.send_parked(peer),
            Err(e) => {
                tracing::debug!(%peer, %e, "dial");
                self.fail_parked(&peer, &format!("cannot dial {peer}: {e}"));
            }
        }
    }

    /// A connection to `peer` is up: its parked requests go out on it.
    fn send_parked(&mut self, peer: PeerId) {
        for parked in self.parked.remove(&peer).unwrap_or_default() {
            let id = self
                .behaviour_for(parked.protocol)
                .send_request(&peer, parked.bytes);
            self.pending.insert((parked.protocol, id), parked.reply);
        }
    }

    /// No dial reached `peer`: its parked requests fail with `why`.
    fn fail_parked(&mut self, peer: &PeerId, why: &str) {
        for parked in self.parked.remove(peer).unwrap_or_default() {
            let _ = parked.reply.send(Err(Error::Network(format!(
                "{:?} request to {peer}: {why}",
                parked.protocol
            ))));
        }
    }

    /// A dial failed: when it was the one made for parked requests and the
    /// peer is still not connected, they fail.
    fn on_outgoing_error(
        &mut self,
        connection: libp2p::swarm::ConnectionId,
        error: &libp2p::swarm::DialError,
    ) {
        self.on_dial_error(error);
        if let Some(peer) = self.dialling.remove(&connection) {
            if !self.swarm.is_connected(&peer) {
                self.nat.on_dial_failed(peer, std::time::Instant::now());
                self.fail_parked(&peer, &format!("could not connect: {error}"));
            }
        }
    }

    fn update_peer_gauge(&self) {
        let peers = self.swarm.connected_peers().count();
        self.metrics
            .peers
            .set(i64::try_from(peers).unwrap_or(i64::MAX));
    }

    fn on_gossip(&mut self, event: gossipsub::Event) {
        let gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        } = event
        else {
            return;
        };
        let topic = message.topic.as_str().to_string();
        self.metrics
            .messages_in
            .get_or_create(&TopicLabel {
                topic: topic.clone(),
            })
            .inc();
        let item = IngestItem {
            source: propagation_source,
            message_id: Some(message_id.clone()),
            topic,
            data: message.data,
            received: Instant::now(),
        };
        if self.ingest.try_send(item).is_err() {
            // Full: drop rather than grow; nobody is blamed for our backlog.
            self.metrics.ingest_dropped.inc();
            self.stats.dropped += 1;
            let _ = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    MessageAcceptance::Ignore,
                );
        }
    }

    fn apply_verdicts(&mut self, verdicts: Vec<Verdict>) {
        for verdict in verdicts {
            let outcome = verdict.outcome;
            self.metrics.count_verdict(outcome.name(), outcome.reason());
            self.metrics
                .ingest_latency
                .observe(verdict.received.elapsed().as_secs_f64());
            match outcome {
                Outcome::Accept => self.stats.accepted += 1,
                Outcome::Reject(_) => self.stats.rejected += 1,
                Outcome::Ignore(_) => self.stats.ignored += 1,
            }
            if let Some(id) = &verdict.message_id {
                let acceptance = match outcome {
                    Outcome::Accept => MessageAcceptance::Accept,
                    Outcome::Reject(_) => MessageAcceptance::Reject,
                    Outcome::Ignore(_) => MessageAcceptance::Ignore,
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(id, &verdict.source, acceptance);
            }
            if let Outcome::Reject(reason) = outcome {
                tracing::debug!(peer = %verdict.source, reason, "rejected a message");
                self.strike(verdict.source, reason);
            }
        }
    }

    fn strike(&mut self, peer: PeerId, reason: &str) {
        self.strike_weighted(peer, 1.0, reason);
    }

    /// A strike against `peer` and against every address it is connected
    /// from; either may be banned by it.
    fn strike_weighted(&mut self, peer: PeerId, weight: f64, reason: &str) {
        let now = UnixMillis::now();
        let addresses = self.swarm.behaviour().firewall.addresses_of(&peer);
        tracing::debug!(%peer, ?addresses, weight, reason, "strike");
        if self.offence_events.receiver_count() > 0 {
            let _ = self.offence_events.send(super::OffenceEvent::Strike {
                peer,
                weight,
                reason: reason.to_string(),
            });
        }
        let offenders = std::iter::once(Offender::Peer(peer))
            .chain(addresses.into_iter().map(Offender::Address));
        let mut bans = Vec::new();
        for offender in offenders {
            if self.offences.is_banned(&offender, now) {
                continue;
            }
            // A fraction of a strike (a rate-limit refusal) is counted in
            // `rate_limited` instead.
            if weight >= 1.0 {
                self.metrics
                    .strikes
                    .get_or_create(&OffenderLabel {
                        kind: offender.kind().to_string(),
                    })
                    .inc();
            }
            bans.extend(self.offences.strike(offender, weight, reason, now));
        }
        for ban in bans {
            self.apply_ban(ban);
        }
    }

    /// Bans `peer` now, whatever its strikes (an application's decision).
    fn ban(&mut self, peer: PeerId, reason: String) {
        if let Some(ban) = self
            .offences
            .ban(Offender::Peer(peer), reason, UnixMillis::now())
        {
            self.apply_ban(ban);
        }
    }

    /// Refuses the offender from now on, closes its connections, and
    /// hands the ban to the store writer at once.
    fn apply_ban(&mut self, ban: NewBan) {
        if self.offence_events.receiver_count() > 0 {
            let _ = self
                .offence_events
                .send(super::OffenceEvent::Ban(ban.clone()));
        }
        let NewBan {
            offender,
            until,
            reason,
            nth,
        } = ban;
        tracing::warn!(%offender, %reason, nth, until = until.0, "banning");
        self.swarm.behaviour_mut().firewall.block(offender);
        self.ban_reasons.insert(offender, reason.clone());
        self.metrics.bans.inc();
        self.stats.banned += 1;
        self.update_ban_gauge();
        self.unsaved_bans.push(PeerBan {
            offender,
            until,
            reason,
        });
        self.save_offences();
    }

    /// Changed strike records and new bans, if any, for the store writer.
    fn offence_write(&mut self) -> Option<OffenceWrite> {
        let changes = self.offences.take_changes();
        if changes.is_empty() && self.unsaved_bans.is_empty() {
            return None;
        }
        Some(OffenceWrite {
            offences: changes
                .into_iter()
                .map(|(offender, s)| OffenceState {
                    offender,
                    strikes: s.strikes,
                    updated: s.updated,
                    bans: s.bans,
                })
                .collect(),
            bans: std::mem::take(&mut self.unsaved_bans),
        })
    }

    /// Hands changed strike records and new bans to the store writer; if
    /// its queue is full they stay marked and go with the next change.
    fn save_offences(&mut self) {
        let Some(write) = self.offence_write() else {
            return;
        };
        if let Err(
            mpsc::error::TrySendError::Full(write) | mpsc::error::TrySendError::Closed(write),
        ) = self.offence_writes.try_send(write)
        {
            self.metrics.offences_unsaved.inc();
            tracing::debug!("strike records wait for the store writer");
            self.offences
                .mark_changed(write.offences.iter().map(|o| o.offender));
            self.unsaved_bans = write.bans;
        }
    }

    fn update_ban_gauge(&self) {
        let mut counts = [("peer", 0i64), ("address", 0i64)];
        for offender in self.swarm.behaviour().firewall.blocked() {
            for (kind, count) in &mut counts {
                if *kind == offender.kind() {
                    *count += 1;
                }
            }
        }
        for (kind, count) in counts {
            self.metrics
                .active_bans
                .get_or_create(&OffenderLabel {
                    kind: kind.to_string(),
                })
                .set(count);
        }
    }

    fn redial_bootstrap(&mut self) {
        for (addr, peer) in &self.bootstrap {
            if peer.is_some_and(|p| self.swarm.is_connected(&p)) {
                continue;
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, %e, "bootstrap peer still unreachable");
            }
        }
    }

    /// Lifts bans that ran out, forgets offenders long quiet, drops
    /// refilled request buckets, and saves what changed.
    fn expire_bans(&mut self) {
        let now = UnixMillis::now();
        let ended: Vec<Offender> = self
            .swarm
            .behaviour()
            .firewall
            .blocked()
            .into_iter()
            .filter(|o| !self.offences.is_banned(o, now))
            .collect();
        for offender in &ended {
            self.swarm.behaviour_mut().firewall.unblock(offender);
            self.ban_reasons.remove(offender);
            tracing::info!(%offender, "ban expired");
        }
        if !ended.is_empty() {
            self.update_ban_gauge();
        }
        self.offences.forget_stale(now);
        self.requests.forget_idle();
        self.save_offences();
    }

    fn start_sync(&mut self, peer: PeerId) {
        for topic in [SyncTopic::Offers, SyncTopic::Certificates] {
            self.request_sync_page(peer, topic, None, SYNC_MAX_PAGES);
        }
    }

    fn request_sync_page(
        &mut self,
        peer: PeerId,
        topic: SyncTopic,
        after: Option<Vec<u8>>,
        pages_left: u32,
    ) {
        if pages_left == 0 || self.pending_sync.len() >= self.limits.max_pending_requests {
            return;
        }
        let request = SyncRequest {
            topic,
            after,
            limit: u16::try_from(SYNC_PAGE).unwrap_or(u16::MAX),
        };
        let Ok(bytes) = request.to_bytes() else {
            return;
        };
        let id = self.swarm.behaviour_mut().sync.send_request(&peer, bytes);
        self.pending_sync.insert(
            id,
            PendingSync {
                peer,
                topic,
                pages_left: pages_left - 1,
            },
        );
    }

    fn on_request_response(
        &mut self,
        protocol: Protocol,
        event: request_response::Event<Vec<u8>, Vec<u8>>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    if !self.requests.allow(&peer, protocol) {
                        self.refuse_over_budget(peer, protocol, channel);
                        return;
                    }
                    if protocol == Protocol::Sync {
                        self.serve_sync(peer, &request, channel);
                        return;
                    }
                    let inbound = InboundRequest {
                        peer,
                        protocol,
                        bytes: request,
                        channel,
                    };
                    if self.inbound.try_send(inbound).is_err() {
                        // The application is saturated; the requester
                        // times out and may retry.
                        tracing::warn!(%peer, ?protocol, "inbound request queue full, dropping");
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending.remove(&(protocol, request_id)) {
                        let _ = reply.send(Ok(response));
                    } else if protocol == Protocol::Sync {
                        if let Some(sync) = self.pending_sync.remove(&request_id) {
                            self.on_sync_page(sync, &response);
                        }
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                if let Some(reply) = self.pending.remove(&(protocol, request_id)) {
                    let _ = reply.send(Err(Error::Network(format!(
                        "{protocol:?} request to {peer}: {error}"
                    ))));
                } else if protocol == Protocol::Sync
                    && self.pending_sync.remove(&request_id).is_some()
                {
                    tracing::debug!(%peer, %error, "sync request failed");
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, ?protocol, %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Answers a request past its peer's budget without doing its work:
    /// `Refused` on the lease and coordinator protocols; on sync, which has
    /// no refusal, the stream is closed without a page. Enough of them
    /// make a strike.
    fn refuse_over_budget(
        &mut self,
        peer: PeerId,
        protocol: Protocol,
        channel: request_response::ResponseChannel<Vec<u8>>,
    ) {
        self.metrics
            .rate_limited
            .get_or_create(&ProtocolLabel {
                protocol: protocol.name().to_string(),
            })
            .inc();
        self.stats.rate_limited += 1;
        tracing::debug!(%peer, ?protocol, "request over the peer's budget refused");
        let refusal = "rate_limited: too many requests; retry later";
        let bytes = match protocol {
            Protocol::Lease => LeaseResponse::Refused(refusal.into()).to_bytes().ok(),
            Protocol::Coordinator => CoordinatorResponse::Refused(refusal.into()).to_bytes().ok(),
            Protocol::Sync => None,
        };
        if let Some(bytes) = bytes {
            let _ = self.behaviour_for(protocol).send_response(channel, bytes);
        }
        let per_strike = self.limits.refusals_per_strike;
        if per_strike > 0 {
            self.strike_weighted(peer, 1.0 / f64::from(per_strike), "rate_limited");
        }
    }

    fn serve_sync(
        &mut self,
        peer: PeerId,
        request: &[u8],
        channel: request_response::ResponseChannel<Vec<u8>>,
    ) {
        let request = match SyncRequest::from_bytes(request) {
            Ok(request) => request,
            Err(err) => {
                tracing::debug!(%peer, %err, "malformed sync request");
                self.strike(peer, "malformed_sync_request");
                return;
            }
        };
        // The page is read off the swarm task, a bounded number at a time
        // (the permit is taken before the work is spawned).
        let Ok(permit) = self.sync_reads.clone().try_acquire_owned() else {
            self.metrics
                .rate_limited
                .get_or_create(&ProtocolLabel {
                    protocol: Protocol::Sync.name().to_string(),
                })
                .inc();
            self.stats.rate_limited += 1;
            tracing::debug!(%peer, "every sync reader busy; request dropped");
            return;
        };
        let (store, pages) = (self.store.clone(), self.sync_pages_tx.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if let Some(bytes) = read_sync_page(store.as_ref(), &request) {
                // Room is kept for every permit, so this never waits long.
                let _ = pages.blocking_send((channel, bytes));
            }
        });
    }

    fn on_sync_page(&mut self, sync: PendingSync, response: &[u8]) {
        let page = match SyncResponse::from_bytes(response) {
            Ok(page) => page,
            Err(err) => {
                tracing::debug!(peer = %sync.peer, %err, "malformed sync response");
                self.strike(sync.peer, "malformed_sync_response");
                return;
            }
        };
        let waiting = WaitingSync {
            sync,
            frames: page.frames.into(),
            next: page.next,
        };
        if let Some(waiting) = self.feed_sync(waiting) {
            if self.sync_waiting.len() < SYNC_PAGES_WAITING {
                self.sync_waiting.push_back(waiting);
            } else {
                // Too many catch-ups at once: this one ends here (what it
                // would have brought comes from the others, or with the
                // next connection to the peer).
                let dropped = u64::try_from(waiting.frames.len()).unwrap_or(u64::MAX);
                self.metrics.ingest_dropped.inc_by(dropped);
                self.stats.dropped = self.stats.dropped.saturating_add(dropped);
            }
        }
    }

    /// Puts the frames of a sync page into the ingest queue while it has
    /// room beyond a quarter kept for gossip; when all are in, asks for
    /// the next page. Returns the page when some are left.
    fn feed_sync(&mut self, mut waiting: WaitingSync) -> Option<WaitingSync> {
        let reserve = self.ingest.max_capacity() / 4;
        while self.ingest.capacity() > reserve {
            let Some(frame) = waiting.frames.pop_front() else {
                break;
            };
            let topic = frame
                .first()
                .and_then(|tag| rigmesh_protocol::Kind::from_tag(*tag))
                .and_then(|kind| match kind.carrier() {
                    Carrier::Topic(topic) => Some(topic),
                    Carrier::Protocol(_) => None,
                })
                .unwrap_or("");
            let item = IngestItem {
                source: waiting.sync.peer,
                message_id: None,
                topic: topic.to_string(),
                data: frame,
                received: Instant::now(),
            };
            if self.ingest.try_send(item).is_err() {
                // Closed (the node stops), or taken by gossip meanwhile.
                self.metrics.ingest_dropped.inc();
                self.stats.dropped += 1;
            }
        }
        if waiting.frames.is_empty() {
            self.next_sync_page(waiting);
            None
        } else {
            Some(waiting)
        }
    }

    fn next_sync_page(&mut self, waiting: WaitingSync) {
        if let Some(next) = waiting.next {
            let sync = waiting.sync;
            self.request_sync_page(sync.peer, sync.topic, Some(next), sync.pages_left);
        }
    }

    /// Feeds the pages waiting for room, oldest first.
    fn retry_waiting_sync(&mut self) {
        let waiting = std::mem::take(&mut self.sync_waiting);
        for page in waiting {
            if let Some(rest) = self.feed_sync(page) {
                self.sync_waiting.push_back(rest);
            }
        }
    }
}

/// One page of catch-up sync as its response frame, read from the store.
fn read_sync_page(store: &dyn MessageStore, request: &SyncRequest) -> Option<Vec<u8>> {
    let limit = usize::from(request.limit).min(SYNC_PAGE);
    let page = match store.sync_page(
        request.topic,
        request.after.as_deref(),
        limit,
        UnixMillis::now(),
    ) {
        Ok(page) => page,
        Err(err) => {
            tracing::warn!(%err, "ledger read failed serving sync");
            return None;
        }
    };
    let response = SyncResponse {
        frames: page
            .items
            .iter()
            .map(|(kind, bytes)| GossipFrame::encode(*kind, bytes))
            .collect(),
        next: page.next,
    };
    match response.to_bytes() {
        Ok(bytes) => Some(bytes),
        Err(err) => {
            tracing::warn!(%err, "sync page does not fit a frame");
            None
        }
    }
}
