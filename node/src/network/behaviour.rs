//! The libp2p behaviours a rigmesh node runs, composed into one.

use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    autonat, connection_limits, dcutr, gossipsub, identify, kad, mdns, ping, relay,
    request_response,
};

use super::codec::FrameCodec;
use super::firewall::Firewall;

/// Everything the swarm does, one field per protocol.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Caps on connections (total, per peer, pending), checked before any
    /// other behaviour sees a connection.
    pub limits: connection_limits::Behaviour,
    /// Banned peers and addresses: their connections are refused (an
    /// address before the handshake) and their open ones closed.
    pub firewall: Firewall,
    /// Signed-message gossip on the market topics, with application
    /// validation before anything is forwarded.
    pub gossipsub: gossipsub::Behaviour,
    /// Lease negotiation between a customer and a supplier.
    pub lease: request_response::Behaviour<FrameCodec>,
    /// Orders and settlement requests to coordinators.
    pub coordinator: request_response::Behaviour<FrameCodec>,
    /// Catch-up sync of offers and certificates after downtime.
    pub sync: request_response::Behaviour<FrameCodec>,
    /// Exchanges listen addresses and protocols with each peer.
    pub identify: identify::Behaviour,
    /// Peer routing and discovery beyond direct neighbours (optional).
    pub kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    /// Liveness of connections.
    pub ping: ping::Behaviour,
    /// LAN discovery, off unless configured.
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Reservations on relays and connections through them: the node
    /// behind a NAT listens on `/p2p-circuit` addresses and dials them.
    pub relay_client: relay::client::Behaviour,
    /// Relaying for peers behind NAT (coordinators, or when configured),
    /// within the configured limits.
    pub relay_server: Toggle<relay::Behaviour>,
    /// Reachability: peers dial this node back to tell whether it is
    /// public or behind a NAT, and this node does the same for them.
    pub autonat: Toggle<autonat::Behaviour>,
    /// Hole punching: turns a relayed connection into a direct one when
    /// both NATs allow it.
    pub dcutr: dcutr::Behaviour,
}
