//! Staying reachable behind a NAT: which peers serve as relays, whether
//! this node should listen through them (AutoNAT's verdict, or the
//! operator's), the reservations it holds, and the relayed addresses it
//! dials a peer at. The swarm task owns one [`Reachability`] and calls it
//! on the events that change it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol as AddrProtocol;
use libp2p::swarm::ConnectionId;
use libp2p::{autonat, Multiaddr, PeerId, Swarm};

use super::behaviour::Behaviour;
use super::config::{NatConfig, UseRelay};
use super::event_loop::without_peer;

/// What this node knows of its own reachability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// No verdict yet (or AutoNAT is off).
    Unknown,
    /// Peers dialled this node back.
    Public,
    /// Peers could not dial this node back: it is behind a NAT or a
    /// firewall.
    Private,
}

impl Status {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Public => "public",
            Status::Private => "private",
        }
    }
}

/// How long a relayed connection is kept after a hole punch gave a direct
/// one to the same peer: requests already under way on it finish, new ones
/// are spread over both, and then the relay's circuit is given back.
pub(crate) const RELAYED_KEPT_AFTER_PUNCH: Duration = Duration::from_secs(20);

/// How long after a dial to a peer failed the next one waits: a peer that
/// cannot be reached (cut off, gone) is not dialled through every relay
/// for each request meant for it, which would spend the relays' circuit
/// budget for this node.
pub(crate) const REDIAL_AFTER: Duration = Duration::from_secs(5);

/// Peers whose failed dial is remembered at most.
const MAX_UNREACHABLE: usize = 4096;

/// One peer's open connections, as far as hole punching cares.
#[derive(Debug, Default)]
struct PeerConnections {
    relayed: Vec<ConnectionId>,
    direct: usize,
}

/// Relays known and reservations held, and the rule for when to hold them.
pub(crate) struct Reachability {
    use_relay: UseRelay,
    max_relays: usize,
    dial_via_relays: bool,
    status: Status,
    /// Peers that serve as relays, each with the direct address this node
    /// reaches it at (without `/p2p`).
    relays: HashMap<PeerId, Multiaddr>,
    /// Relays named in the configuration: reserved on before any other.
    configured: Vec<PeerId>,
    /// The direct address of each peer this node dialled, for the relays
    /// among them.
    dialled: HashMap<PeerId, Multiaddr>,
    /// Reservations asked for or held, by relay, with their listener.
    reservations: HashMap<PeerId, ListenerId>,
    /// Open connections by peer, relayed and direct.
    connections: HashMap<PeerId, PeerConnections>,
    /// Peers a hole punch reached directly, with when.
    punched: HashMap<PeerId, Instant>,
    /// Peers whose last dial failed, with when (until they connect).
    unreachable: HashMap<PeerId, Instant>,
}

impl Reachability {
    /// `serves_relay`: the node relays for others, so its operator says
    /// it is reachable; unless told `always`, it never listens through
    /// another relay, whatever AutoNAT concludes.
    pub(crate) fn new(config: &NatConfig, serves_relay: bool) -> Self {
        let mut relays = HashMap::new();
        let mut configured = Vec::new();
        for addr in &config.relays {
            match peer_of(addr) {
                Some(peer) => {
                    relays.insert(peer, without_peer(addr));
                    configured.push(peer);
                }
                None => tracing::warn!(%addr, "a relay address needs its /p2p/<peer id>; ignored"),
            }
        }
        let use_relay = match config.use_relay {
            UseRelay::Auto if serves_relay => UseRelay::Never,
            other => other,
        };
        Reachability {
            use_relay,
            max_relays: config.max_relays,
            dial_via_relays: config.dial_via_relays,
            // A relay is public by its operator's word; it does not probe.
            status: if serves_relay {
                Status::Public
            } else {
                Status::Unknown
            },
            relays,
            configured,
            dialled: HashMap::new(),
            reservations: HashMap::new(),
            connections: HashMap::new(),
            punched: HashMap::new(),
            unreachable: HashMap::new(),
        }
    }

    /// A dial to `peer` failed at `now`.
    pub(crate) fn on_dial_failed(&mut self, peer: PeerId, now: Instant) {
        // Bounded: a peer that connects is forgotten, and the oldest
        // failures go first when many peers fail.
        if self.unreachable.len() >= MAX_UNREACHABLE {
            self.unreachable
                .retain(|_, at| now.saturating_duration_since(*at) < REDIAL_AFTER);
        }
        if self.unreachable.len() < MAX_UNREACHABLE {
            self.unreachable.insert(peer, now);
        }
    }

    /// How long before `peer` may be dialled again, if its last dial
    /// failed less than [`REDIAL_AFTER`] ago.
    pub(crate) fn redial_wait(&self, peer: &PeerId, now: Instant) -> Option<Duration> {
        let at = self.unreachable.get(peer)?;
        REDIAL_AFTER
            .checked_sub(now.saturating_duration_since(*at))
            .filter(|d| !d.is_zero())
    }

    /// A connection to `peer` opened.
    pub(crate) fn on_connected(&mut self, peer: PeerId, id: ConnectionId, relayed: bool) {
        self.unreachable.remove(&peer);
        let open = self.connections.entry(peer).or_default();
        if relayed {
            open.relayed.push(id);
        } else {
            open.direct += 1;
        }
    }

    /// A connection to `peer` closed.
    pub(crate) fn on_disconnected(&mut self, peer: PeerId, id: ConnectionId, relayed: bool) {
        let Some(open) = self.connections.get_mut(&peer) else {
            return;
        };
        if relayed {
            open.relayed.retain(|c| *c != id);
        } else {
            open.direct = open.direct.saturating_sub(1);
        }
        if open.relayed.is_empty() && open.direct == 0 {
            self.connections.remove(&peer);
            self.punched.remove(&peer);
        }
    }

    /// A hole punch to `peer` gave a direct connection at `now`.
    pub(crate) fn on_punched(&mut self, peer: PeerId, now: Instant) {
        self.punched.insert(peer, now);
    }

    /// The relayed connections to close at `now`: those to peers a hole
    /// punch reached at least [`RELAYED_KEPT_AFTER_PUNCH`] ago and that
    /// still have a direct connection (if the direct one closed since, the
    /// relay is what is left, and it stays).
    pub(crate) fn relayed_to_retire(&mut self, now: Instant) -> Vec<(PeerId, ConnectionId)> {
        let due: Vec<PeerId> = self
            .punched
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) >= RELAYED_KEPT_AFTER_PUNCH)
            .map(|(p, _)| *p)
            .collect();
        let mut out = Vec::new();
        for peer in due {
            self.punched.remove(&peer);
            if let Some(open) = self.connections.get(&peer) {
                if open.direct > 0 {
                    out.extend(open.relayed.iter().map(|c| (peer, *c)));
                }
            }
        }
        out
    }

    pub(crate) fn status(&self) -> Status {
        self.status
    }

    /// Whether this node should listen through relays now.
    fn wants_relays(&self) -> bool {
        match self.use_relay {
            UseRelay::Always => true,
            UseRelay::Never => false,
            UseRelay::Auto => self.status == Status::Private,
        }
    }

    /// Relayed addresses this node listens on (or is asking for).
    pub(crate) fn reservation_count(&self) -> usize {
        self.reservations.len()
    }

    /// A direct connection this node dialled: if the peer turns out to be
    /// a relay, this is where to reach it.
    pub(crate) fn on_dialled(&mut self, peer: PeerId, addr: &Multiaddr) {
        self.dialled.insert(peer, without_peer(addr));
    }

    /// Identify told what `peer` supports: a relay is remembered, at the
    /// address this node dialled it at or else the first direct address it
    /// listens on.
    pub(crate) fn on_identified(
        &mut self,
        peer: PeerId,
        protocols: &[libp2p::StreamProtocol],
        listen_addrs: &[Multiaddr],
    ) {
        if !protocols.contains(&libp2p::relay::HOP_PROTOCOL_NAME) {
            return;
        }
        if self.relays.contains_key(&peer) {
            return;
        }
        let addr = self.dialled.get(&peer).cloned().or_else(|| {
            listen_addrs
                .iter()
                .find(|a| !is_relayed(a) && !is_unspecified(a))
                .map(without_peer)
        });
        if let Some(addr) = addr {
            tracing::debug!(%peer, %addr, "found a relay");
            self.relays.insert(peer, addr);
        }
    }

    /// AutoNAT's verdict changed. Returns whether the relayed listeners
    /// must be closed (the node turned out public).
    pub(crate) fn on_autonat(&mut self, status: &autonat::NatStatus) -> bool {
        self.status = match status {
            autonat::NatStatus::Public(_) => Status::Public,
            autonat::NatStatus::Private => Status::Private,
            autonat::NatStatus::Unknown => Status::Unknown,
        };
        tracing::info!(status = self.status.name(), "reachability");
        !self.wants_relays() && !self.reservations.is_empty()
    }

    /// Closes every relayed listener (the node no longer needs them).
    pub(crate) fn release(&mut self, swarm: &mut Swarm<Behaviour>) {
        for (relay, listener) in self.reservations.drain() {
            tracing::info!(%relay, "giving up the relay reservation");
            swarm.remove_listener(listener);
        }
    }

    /// Asks for reservations on relays until `max_relays` are held, when
    /// the node should listen through relays; configured relays first.
    pub(crate) fn reserve(&mut self, swarm: &mut Swarm<Behaviour>) {
        if !self.wants_relays() {
            return;
        }
        let mut candidates: Vec<PeerId> = self.configured.clone();
        let mut discovered: Vec<PeerId> = self
            .relays
            .keys()
            .filter(|p| !self.configured.contains(p))
            .copied()
            .collect();
        // A stable order, so restarts pick the same relays.
        discovered.sort();
        candidates.extend(discovered);
        for relay in candidates {
            if self.reservations.len() >= self.max_relays {
                return;
            }
            if self.reservations.contains_key(&relay) {
                continue;
            }
            let Some(addr) = self.relays.get(&relay) else {
                continue;
            };
            let circuit = addr
                .clone()
                .with(AddrProtocol::P2p(relay))
                .with(AddrProtocol::P2pCircuit);
            match swarm.listen_on(circuit.clone()) {
                Ok(listener) => {
                    tracing::info!(%relay, addr = %circuit, "asking the relay for a reservation");
                    self.reservations.insert(relay, listener);
                }
                Err(e) => tracing::debug!(%relay, %e, "cannot listen through the relay"),
            }
        }
    }

    /// A listener closed: if it was a reservation, it is asked for again
    /// (on the next relay if this one is gone) at the next `reserve`.
    pub(crate) fn on_listener_closed(&mut self, listener: ListenerId) {
        let gone: Vec<PeerId> = self
            .reservations
            .iter()
            .filter(|(_, l)| **l == listener)
            .map(|(p, _)| *p)
            .collect();
        for relay in gone {
            tracing::info!(%relay, "relay reservation closed");
            self.reservations.remove(&relay);
            // Found again through identify if it comes back; a configured
            // relay is kept.
            if !self.configured.contains(&relay) {
                self.relays.remove(&relay);
            }
        }
    }

    /// Addresses that reach `target` through each known relay, for a dial
    /// alongside its direct addresses.
    pub(crate) fn circuit_addrs(&self, target: &PeerId) -> Vec<Multiaddr> {
        if !self.dial_via_relays {
            return Vec::new();
        }
        let mut relays: Vec<(&PeerId, &Multiaddr)> =
            self.relays.iter().filter(|(p, _)| *p != target).collect();
        relays.sort_by_key(|(p, _)| **p);
        relays
            .into_iter()
            .map(|(relay, addr)| {
                addr.clone()
                    .with(AddrProtocol::P2p(*relay))
                    .with(AddrProtocol::P2pCircuit)
                    .with(AddrProtocol::P2p(*target))
            })
            .collect()
    }
}

/// Whether the address goes through a relay.
pub(crate) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, AddrProtocol::P2pCircuit))
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        AddrProtocol::Ip4(ip) => ip.is_unspecified(),
        AddrProtocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

/// The peer id at the end of an address.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        AddrProtocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    #[test]
    fn a_relayed_connection_is_given_back_after_a_punch_only_while_a_direct_one_lasts() {
        let mut nat = Reachability::new(&NatConfig::default(), false);
        let (a, b) = (peer(), peer());
        let t0 = Instant::now();
        nat.on_connected(a, ConnectionId::new_unchecked(1), true);
        nat.on_connected(a, ConnectionId::new_unchecked(2), false);
        nat.on_connected(b, ConnectionId::new_unchecked(3), true);
        nat.on_connected(b, ConnectionId::new_unchecked(4), false);
        // Nothing is retired without a punch.
        assert!(nat
            .relayed_to_retire(t0 + RELAYED_KEPT_AFTER_PUNCH * 2)
            .is_empty());
        nat.on_punched(a, t0);
        nat.on_punched(b, t0);
        assert!(
            nat.relayed_to_retire(t0 + Duration::from_secs(1))
                .is_empty(),
            "kept a while for requests under way"
        );
        // B's direct connection closed: its relay is all it has left.
        nat.on_disconnected(b, ConnectionId::new_unchecked(4), false);
        let later = t0 + RELAYED_KEPT_AFTER_PUNCH;
        assert_eq!(
            nat.relayed_to_retire(later),
            vec![(a, ConnectionId::new_unchecked(1))]
        );
        assert!(nat.relayed_to_retire(later).is_empty(), "retired once");
        // Both of A's go: nothing is left of it.
        nat.on_disconnected(a, ConnectionId::new_unchecked(1), true);
        nat.on_disconnected(a, ConnectionId::new_unchecked(2), false);
        assert!(!nat.connections.contains_key(&a));
    }

    #[test]
    fn a_peer_whose_dial_failed_waits_before_the_next_and_not_once_connected() {
        let mut nat = Reachability::new(&NatConfig::default(), false);
        let (a, b) = (peer(), peer());
        let t0 = Instant::now();
        assert_eq!(nat.redial_wait(&a, t0), None);
        nat.on_dial_failed(a, t0);
        nat.on_dial_failed(b, t0);
        assert_eq!(
            nat.redial_wait(&a, t0 + Duration::from_secs(2)),
            Some(REDIAL_AFTER - Duration::from_secs(2))
        );
        assert_eq!(nat.redial_wait(&a, t0 + REDIAL_AFTER), None);
        // B connected meanwhile (it dialled in): no wait.
        nat.on_connected(b, ConnectionId::new_unchecked(9), false);
        assert_eq!(nat.redial_wait(&b, t0), None);
    }

    #[test]
    fn circuit_addresses_go_through_every_relay_but_the_target() {
        let (relay, target) = (peer(), peer());
        let config = NatConfig {
            relays: vec![format!("/ip4/10.0.0.1/tcp/4600/p2p/{relay}")
                .parse()
                .unwrap()],
            ..NatConfig::default()
        };
        let nat = Reachability::new(&config, false);
        let addrs = nat.circuit_addrs(&target);
        assert_eq!(
            addrs,
            vec![
                format!("/ip4/10.0.0.1/tcp/4600/p2p/{relay}/p2p-circuit/p2p/{target}")
                    .parse::<Multiaddr>()
                    .unwrap()
            ]
        );
        assert!(addrs.iter().all(is_relayed));
        assert!(nat.circuit_addrs(&relay).is_empty(), "never through itself");
    }

    #[test]
    fn auto_listens_through_relays_only_while_private() {
        let mut nat = Reachability::new(&NatConfig::default(), false);
        assert!(!nat.wants_relays());
        nat.on_autonat(&autonat::NatStatus::Private);
        assert!(nat.wants_relays());
        nat.on_autonat(&autonat::NatStatus::Public(Multiaddr::empty()));
        assert!(!nat.wants_relays());
        let never = Reachability::new(
            &NatConfig {
                use_relay: UseRelay::Never,
                ..NatConfig::default()
            },
            false,
        );
        assert!(!never.wants_relays());
        let mut relay = Reachability::new(&NatConfig::default(), true);
        relay.on_autonat(&autonat::NatStatus::Private);
        assert!(!relay.wants_relays(), "a relay never reserves on another");
        assert_eq!(
            Reachability::new(&NatConfig::default(), true).status(),
            Status::Public
        );
    }

    #[test]
    fn a_relay_address_without_its_peer_id_is_ignored() {
        let nat = Reachability::new(
            &NatConfig {
                relays: vec!["/ip4/10.0.0.1/tcp/4600".parse().unwrap()],
                ..NatConfig::default()
            },
            false,
        );
        assert!(nat.circuit_addrs(&peer()).is_empty());
    }
}
