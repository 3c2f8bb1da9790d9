//! Network configuration: where to listen, whom to dial first, and the
//! limits that keep a node bounded whatever its peers do.

use std::net::IpAddr;
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
    /// Addresses this node is known to be reachable at from outside (a
    /// public IP, a forwarded port); announced to peers and confirmed
    /// without waiting for AutoNAT. A relay server hands them to the peers
    /// that reserve on it; one that names none hands out its listen
    /// addresses.
    pub external: Vec<Multiaddr>,
    /// How a node behind NAT learns so and stays reachable.
    pub nat: NatConfig,
    /// Serving as a circuit relay for peers behind NAT.
    pub relay: RelayServerConfig,
    /// Limits.
    pub limits: NetworkLimits,
}

/// When a node reserves a slot on a relay and listens through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UseRelay {
    /// When AutoNAT finds the node private (the default); the slots are
    /// given up when it finds the node public again. A node that serves
    /// as a relay never does.
    #[default]
    Auto,
    /// From the start, whatever AutoNAT says (a rig known to be behind a
    /// NAT, tests).
    Always,
    /// Never: the node must be dialable directly.
    Never,
}

/// NAT traversal: AutoNAT learns whether the node is reachable; a private
/// node reserves slots on relays and listens through them; DCUtR turns a
/// relayed connection into a direct one where the NATs allow it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatConfig {
    /// Ask peers to dial back this node's addresses (AutoNAT) and answer
    /// their probes.
    pub autonat: bool,
    /// Seconds after start before the first AutoNAT probe.
    pub probe_delay_secs: u64,
    /// Seconds between probes while the status is not yet certain.
    pub probe_interval_secs: u64,
    /// Only probe through, and only answer probes from, peers seen at
    /// global IP addresses. Off in private testnets, where every address is
    /// private.
    pub only_global_ips: bool,
    /// When to listen through relays.
    pub use_relay: UseRelay,
    /// Relays to reserve on, with their `/p2p/<peer id>`. Empty: any
    /// bootstrap peer that turns out to serve as a relay.
    pub relays: Vec<Multiaddr>,
    /// Relays reserved on at once (more than one survives a relay's loss).
    pub max_relays: usize,
    /// Dial a peer that is not connected through every known relay as well
    /// as its direct addresses; the first connection to succeed wins and
    /// DCUtR upgrades a relayed one.
    pub dial_via_relays: bool,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            autonat: true,
            probe_delay_secs: 15,
            probe_interval_secs: 90,
            only_global_ips: true,
            use_relay: UseRelay::Auto,
            relays: Vec::new(),
            max_relays: 2,
            dial_via_relays: true,
        }
    }
}

/// Circuit relay v2 server. Coordinators serve by default (they are
/// public by design); any other node only when `serve = true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayServerConfig {
    /// Serve as a relay; unset: by role (coordinators do).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serve: Option<bool>,
    /// Reservations held at once, all peers.
    pub max_reservations: usize,
    /// Reservations of one peer.
    pub max_reservations_per_peer: usize,
    /// Seconds a reservation lasts before the peer must renew it.
    pub reservation_secs: u64,
    /// Relayed connections at once, all peers.
    pub max_circuits: usize,
    /// Relayed connections at once with one peer at either end.
    pub max_circuits_per_peer: usize,
    /// Seconds a relayed connection lasts before the relay closes it.
    pub circuit_secs: u64,
    /// Bytes a relayed connection carries, each direction, before the
    /// relay closes it.
    pub circuit_bytes: u64,
    /// Relayed connections one peer may open in a minute (a customer opens
    /// one to each NATed supplier it bids on, again after each relay
    /// limit closes one).
    pub circuits_per_peer_per_minute: u32,
    /// Relayed connections one IP address may open in a minute (a NAT
    /// router's address is shared by everyone behind it).
    pub circuits_per_ip_per_minute: u32,
}

impl Default for RelayServerConfig {
    fn default() -> Self {
        RelayServerConfig {
            serve: None,
            max_reservations: 128,
            max_reservations_per_peer: 4,
            reservation_secs: 3600,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            // A lease's messages are small (an attestation a minute), but
            // a lease lasts hours: a relayed connection that is not
            // upgraded is re-opened when the relay closes it.
            circuit_secs: 600,
            circuit_bytes: 8 << 20,
            circuits_per_peer_per_minute: 120,
            circuits_per_ip_per_minute: 240,
        }
    }
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
            external: Vec::new(),
            nat: NatConfig::default(),
            relay: RelayServerConfig::default(),
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
    /// Catch-up sync fills at most three quarters of it: a sync page waits
    /// for room, and the next page is asked for once it is in.
    pub ingest_queue: usize,
    /// Messages validated and written together.
    pub ingest_batch: usize,
    /// Requests this node has in flight.
    pub max_pending_requests: usize,
    /// Inbound requests waiting for the application.
    pub inbound_queue: usize,
    /// Seconds before a request without a response fails.
    pub request_timeout_secs: u64,
    /// Strikes (invalid messages, forged or malformed requests) against
    /// one peer before it is banned; 0 never bans a peer for strikes.
    pub ban_threshold: u32,
    /// Strikes against one remote IP address, whatever peer ids connect
    /// from it, before the address is banned; 0 never bans an address.
    /// Higher than `ban_threshold`: honest rigs behind one NAT share an
    /// address.
    pub address_ban_threshold: u32,
    /// Addresses never banned (operators' own hosts, a NAT shared with
    /// honest rigs); loopback by default, where every local process
    /// shares one address. Their peers can still be banned by peer id.
    pub trusted_addresses: Vec<IpAddr>,
    /// Seconds for a strike to count half as much; strikes decay
    /// continuously, so rare errors of an honest peer never add up to a
    /// ban. 0: strikes never decay.
    pub strike_half_life_secs: u64,
    /// Requests refused for the rate limit that make one strike (a peer
    /// that keeps sending past its budget is banned); 0: refusals are
    /// never strikes.
    pub refusals_per_strike: u32,
    /// Seconds a first ban lasts; each later ban of the same peer or
    /// address lasts twice the one before, up to `max_ban_secs`.
    pub ban_secs: u64,
    /// The longest ban, in seconds.
    pub max_ban_secs: u64,
    /// Peers and addresses whose strikes and bans are kept in memory (and
    /// on disk); past it, the least suspect are forgotten first.
    pub max_tracked_offenders: usize,
    /// Per-peer request budgets, one per request-response protocol.
    pub requests: RequestLimits,
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRate {
    /// Requests a second, sustained.
    pub per_second: u32,
    /// Requests at once (the bucket's size).
    pub burst: u32,
}

/// Per-peer request budgets; a request past its peer's budget is refused
/// (lease and coordinator: `Refused("rate_limited ...")`; sync: the stream
/// is closed without a page). A rate of 0 per second turns the limit off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestLimits {
    /// `/rigmesh/lease/1`, per peer.
    pub lease: RequestRate,
    /// `/rigmesh/coordinator/1`, per peer.
    pub coordinator: RequestRate,
    /// `/rigmesh/sync/1`, per peer. A catch-up asks for up to 200 pages
    /// (100 per topic) right after connecting, so the burst covers that.
    pub sync: RequestRate,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            lease: RequestRate {
                per_second: 20,
                burst: 200,
            },
            coordinator: RequestRate {
                per_second: 100,
                burst: 1000,
            },
            sync: RequestRate {
                per_second: 10,
                burst: 400,
            },
        }
    }
}

impl Default for NetworkLimits {
    fn default() -> Self {
        NetworkLimits {
            max_connections: 256,
            // Two peers that dial each other hold two connections; an
            // AutoNAT dial-back and a hole punch beside a relayed
            // connection each need one more for a moment.
            max_connections_per_peer: 4,
            max_pending: 64,
            command_queue: 256,
            ingest_queue: 4096,
            ingest_batch: 256,
            max_pending_requests: 1024,
            inbound_queue: 256,
            request_timeout_secs: 10,
            ban_threshold: 3,
            address_ban_threshold: 12,
            trusted_addresses: vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ],
            strike_half_life_secs: 600,
            refusals_per_strike: 50,
            ban_secs: 3600,
            max_ban_secs: 7 * 24 * 3600,
            max_tracked_offenders: 65_536,
            requests: RequestLimits::default(),
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
