//! Network configuration: where to listen, whom to dial first, and the
//! limits that keep a node bounded whatever its peers do.

use std::time::Duration;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

/// Settings of the libp2p node. Every field has a default, so a TOML file
/// names only what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Addresses to listen on (TCP and QUIC).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start (with a `/p2p/<peer id>` suffix).
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the local network with mDNS (off by default: it
    /// announces the node to everyone on the LAN).
    pub mdns: bool,
    /// Find more peers through the Kademlia DHT of the peers we know (on by
    /// default; tests turn it off to keep a chosen topology).
    pub discovery: bool,
    /// Limits.
    pub limits: NetworkLimits,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4600"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
                "/ip4/0.0.0.0/udp/4600/quic-v1"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
            ],
            bootstrap: Vec::new(),
            mdns: false,
            discovery: true,
            limits: NetworkLimits::default(),
        }
    }
}

/// Bounds on connections, queues and requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkLimits {
    /// Established connections in total.
    pub max_connections: u32,
    /// Established connections with one peer.
    pub max_connections_per_peer: u32,
    /// Handshakes in progress, each direction.
    pub max_pending: u32,
    /// Commands waiting for the swarm task.
    pub command_queue: usize,
    /// Gossip messages waiting for validation; beyond it they are dropped.
    pub ingest_queue: usize,
    /// Messages validated and written together.
    pub ingest_batch: usize,
    /// Requests this node has in flight.
    pub max_pending_requests: usize,
    /// Inbound requests waiting for the application.
    pub inbound_queue: usize,
    /// Seconds before a request without a response fails.
    pub request_timeout_secs: u64,
    /// Invalid messages from one peer before it is banned.
    pub ban_threshold: u32,
    /// Seconds a ban lasts.
    pub ban_secs: u64,
}

impl Default for NetworkLimits {
    fn default() -> Self {
        NetworkLimits {
            max_connections: 256,
            max_connections_per_peer: 2,
            max_pending: 64,
            command_queue: 256,
            ingest_queue: 4096,
            ingest_batch: 256,
            max_pending_requests: 1024,
            inbound_queue: 256,
            request_timeout_secs: 10,
            ban_threshold: 3,
            ban_secs: 3600,
        }
    }
}

impl NetworkLimits {
    /// The request timeout as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }
}

impl NetworkConfig {
    /// A node on loopback with OS-chosen ports (tests, devnet).
    pub fn loopback() -> Self {
        NetworkConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0"
                .parse()
                .unwrap_or_else(|_| Multiaddr::empty())],
            ..NetworkConfig::default()
        }
    }
}
