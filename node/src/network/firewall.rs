//! The connection gate: a behaviour that refuses connections from banned
//! peers and banned addresses (an address before its handshake, a peer
//! once its id is known), never dials them, and closes their open
//! connections when a ban starts. It also knows which addresses each
//! peer is connected from, so strikes reach the address as well.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::net::IpAddr;
use std::task::{Context, Poll, Waker};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    behaviour::ConnectionEstablished, dummy, CloseConnection, ConnectionClosed, ConnectionDenied,
    ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::metrics::OffenderLabel;
use super::offences::{ip_of, Offender};

/// Why a connection was refused.
#[derive(Debug)]
pub struct Banned(pub Offender);

impl fmt::Display for Banned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is banned", self.0)
    }
}

impl std::error::Error for Banned {}

/// The gate.
pub struct Firewall {
    peers: HashSet<PeerId>,
    addresses: HashSet<IpAddr>,
    connections: HashMap<ConnectionId, (PeerId, Option<IpAddr>)>,
    close: VecDeque<(PeerId, ConnectionId)>,
    refused: Family<OffenderLabel, Counter>,
    waker: Option<Waker>,
}

impl fmt::Debug for Firewall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Firewall")
            .field("peers", &self.peers.len())
            .field("addresses", &self.addresses.len())
            .finish_non_exhaustive()
    }
}

impl Firewall {
    /// A gate with nobody banned, counting refused connections in
    /// `refused`.
    pub fn new(refused: Family<OffenderLabel, Counter>) -> Self {
        Firewall {
            peers: HashSet::new(),
            addresses: HashSet::new(),
            connections: HashMap::new(),
            close: VecDeque::new(),
            refused,
            waker: None,
        }
    }

    /// Refuses `who` from now on and closes its open connections.
    pub fn block(&mut self, who: Offender) {
        let inserted = match who {
            Offender::Peer(peer) => self.peers.insert(peer),
            Offender::Address(ip) => self.addresses.insert(ip),
        };
        if !inserted {
            return;
        }
        for (id, (peer, ip)) in &self.connections {
            let hit = match who {
                Offender::Peer(banned) => *peer == banned,
                Offender::Address(banned) => *ip == Some(banned),
            };
            if hit {
                self.close.push_back((*peer, *id));
            }
        }
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Lets `who` connect again.
    pub fn unblock(&mut self, who: &Offender) {
        match who {
            Offender::Peer(peer) => self.peers.remove(peer),
            Offender::Address(ip) => self.addresses.remove(ip),
        };
    }

    /// Everyone refused now.
    pub fn blocked(&self) -> Vec<Offender> {
        self.peers
            .iter()
            .map(|p| Offender::Peer(*p))
            .chain(self.addresses.iter().map(|ip| Offender::Address(*ip)))
            .collect()
    }

    /// True if `who` is refused.
    pub fn is_blocked(&self, who: &Offender) -> bool {
        match who {
            Offender::Peer(peer) => self.peers.contains(peer),
            Offender::Address(ip) => self.addresses.contains(ip),
        }
    }

    /// The addresses `peer` is connected from now.
    pub fn addresses_of(&self, peer: &PeerId) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self
            .connections
            .values()
            .filter(|(p, _)| p == peer)
            .filter_map(|(_, ip)| *ip)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    fn deny(&self, who: Offender) -> ConnectionDenied {
        self.refused
            .get_or_create(&OffenderLabel {
                kind: who.kind().to_string(),
            })
            .inc();
        tracing::debug!(%who, "refused a connection");
        ConnectionDenied::new(Banned(who))
    }

    fn check_peer(&self, peer: &PeerId) -> Result<(), ConnectionDenied> {
        if self.peers.contains(peer) {
            return Err(self.deny(Offender::Peer(*peer)));
        }
        Ok(())
    }

    fn check_address(&self, addr: &Multiaddr) -> Result<(), ConnectionDenied> {
        match ip_of(addr) {
            Some(ip) if self.addresses.contains(&ip) => Err(self.deny(Offender::Address(ip))),
            _ => Ok(()),
        }
    }
}

impl NetworkBehaviour for Firewall {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.check_address(remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check_peer(&peer)?;
        self.check_address(remote_addr)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(peer) = peer {
            self.check_peer(&peer)?;
        }
        Ok(vec![])
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check_peer(&peer)?;
        self.check_address(addr)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            }) => {
                let ip = ip_of(endpoint.get_remote_address());
                self.connections.insert(connection_id, (peer_id, ip));
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.connections.remove(&connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some((peer_id, connection)) = self.close.pop_front() {
            return Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::One(connection),
            });
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}
