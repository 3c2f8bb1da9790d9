//! `NodeHandle`: the cheap, cloneable way for the rest of the node to use
//! the swarm. Every call is a bounded command to the event loop with a
//! oneshot reply.

use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use rigmesh_protocol::rpc::GossipFrame;
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{Carrier, CheckedCertificates, Clock, CoordinatorSet, UnixMillis};
use tokio::sync::{mpsc, oneshot};

use super::offences::{Offender, Standing};
use super::store::{AcceptedMessage, MessageStore};
use crate::error::{Error, Result};

/// A request-response protocol of rigmesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Lease negotiation.
    Lease,
    /// Coordinator requests.
    Coordinator,
    /// Catch-up sync.
    Sync,
}

impl Protocol {
    /// `lease`, `coordinator` or `sync`: the metric label.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Lease => "lease",
            Protocol::Coordinator => "coordinator",
            Protocol::Sync => "sync",
        }
    }
}

/// A request from a peer that the application must answer with
/// [`NodeHandle::respond`].
#[derive(Debug)]
pub struct InboundRequest {
    /// Who asked.
    pub peer: PeerId,
    /// On which protocol.
    pub protocol: Protocol,
    /// The request bytes (at most the protocol's request limit).
    pub bytes: Vec<u8>,
    /// Where the answer goes.
    pub channel: ResponseChannel<Vec<u8>>,
}

/// Counters of the node, for `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Connected peers.
    pub peers: usize,
    /// Gossip messages accepted.
    pub accepted: u64,
    /// Gossip messages rejected as invalid.
    pub rejected: u64,
    /// Gossip messages ignored (duplicates, stale, unknown epoch).
    pub ignored: u64,
    /// Gossip messages dropped on a full ingest queue.
    pub dropped: u64,
    /// Bans of peers and addresses.
    pub banned: u64,
    /// Requests from peers refused for being over their budget.
    pub rate_limited: u64,
    /// Requests to this node refused (coordinator requests).
    pub refused_requests: u64,
    /// Of those, the ones refused as malformed or forged: a strike each.
    pub struck_requests: u64,
    /// Bootstrap addresses that could not be reached when last dialled,
    /// each with the reason.
    pub unreachable_bootstrap: Vec<(String, String)>,
    /// Connections open directly.
    pub direct_connections: usize,
    /// Connections open through a relay.
    pub relayed_connections: usize,
    /// Hole punches that turned a relayed connection into a direct one.
    pub hole_punch_successes: u64,
    /// Hole punches that failed (the relayed connection stays).
    pub hole_punch_failures: u64,
    /// This node's reachability as AutoNAT found it: `unknown`, `public`
    /// or `private`.
    pub reachability: String,
    /// Relays this node listens through (reservations held or asked for).
    pub relay_reservations: usize,
    /// The node's relayed listen addresses (`.../p2p-circuit`).
    pub relayed_addrs: Vec<String>,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

pub(crate) enum Command {
    Publish {
        topic: &'static str,
        data: Vec<u8>,
        reply: Reply<()>,
    },
    PublishUnchecked {
        topic: String,
        data: Vec<u8>,
        reply: Reply<()>,
    },
    Request {
        peer: PeerId,
        protocol: Protocol,
        bytes: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    Respond {
        protocol: Protocol,
        channel: ResponseChannel<Vec<u8>>,
        bytes: Vec<u8>,
        reply: Reply<()>,
    },
    Dial {
        addr: Multiaddr,
        reply: Reply<()>,
    },
    Ban {
        peer: PeerId,
        reason: String,
        reply: Reply<()>,
    },
    Refused {
        peer: PeerId,
        strike: Option<&'static str>,
        reply: Reply<()>,
    },
    Peers {
        reply: Reply<Vec<PeerId>>,
    },
    ListenAddrs {
        reply: Reply<Vec<Multiaddr>>,
    },
    Stats {
        reply: Reply<NetworkStats>,
    },
    SyncFrom {
        peer: PeerId,
        reply: Reply<()>,
    },
    Standing {
        offender: Offender,
        reply: Reply<Option<Standing>>,
    },
    BanUntil {
        offender: Offender,
        until: UnixMillis,
        reason: String,
        reply: Reply<UnixMillis>,
    },
    Lift {
        offender: Offender,
        reply: Reply<bool>,
    },
    Bans {
        reply: Reply<Vec<BanInForce>>,
    },
}

/// A ban in force, as [`NodeHandle::bans`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanInForce {
    /// The peer or address.
    pub offender: Offender,
    /// When it ends.
    pub until: UnixMillis,
    /// Why (the strikes' last reason, or an operator's words).
    pub reason: String,
}

/// The handle to a running node's network. Dropping every handle stops the
/// event loop.
#[derive(Clone)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    store: std::sync::Arc<dyn MessageStore>,
    coordinators: Option<CoordinatorSet>,
    checked: Option<std::sync::Arc<CheckedCertificates>>,
    accepted: tokio::sync::broadcast::Sender<AcceptedMessage>,
    offences: tokio::sync::broadcast::Sender<super::OffenceEvent>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl NodeHandle {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        peer_id: PeerId,
        store: std::sync::Arc<dyn MessageStore>,
        coordinators: Option<CoordinatorSet>,
        checked: Option<std::sync::Arc<CheckedCertificates>>,
        accepted: tokio::sync::broadcast::Sender<AcceptedMessage>,
        offences: tokio::sync::broadcast::Sender<super::OffenceEvent>,
    ) -> Self {
        NodeHandle {
            commands,
            peer_id,
            store,
            coordinators,
            checked,
            accepted,
            offences,
        }
    }

    /// Strikes and bans as the swarm task decides them. A receiver that
    /// falls more than a thousand behind skips the oldest (and is told
    /// how many).
    pub fn offences(&self) -> tokio::sync::broadcast::Receiver<super::OffenceEvent> {
        self.offences.subscribe()
    }

    /// Messages as this node stores them: from peers through the ingest
    /// pipeline, and those it publishes itself. A receiver that falls
    /// more than a thousand messages behind skips the oldest.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<AcceptedMessage> {
        self.accepted.subscribe()
    }

    /// This node's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Checks `message` fully, stores it, tells this node's subscribers
    /// (as if it had come from a peer), and gossips it on its topic. The
    /// message is stored even when no peer is connected yet (peers fetch it
    /// through sync); publishing then fails with [`Error::Network`]. The
    /// check and the write run on a blocking thread, not on the executor.
    /// A certificate goes through the node's record of checked
    /// certificates, so its gossiped copy coming back, and the compaction
    /// of its lease, do not check the same bytes again.
    pub async fn publish(&self, message: &WireMessage) -> Result<()> {
        let kind = message.kind();
        let Carrier::Topic(topic) = kind.carrier() else {
            return Err(Error::Config(format!("{kind} is not gossiped")));
        };
        let (store, coordinators, checked) = (
            self.store.clone(),
            self.coordinators.clone(),
            self.checked.clone(),
        );
        let message = message.clone();
        let accepted = tokio::task::spawn_blocking(move || -> Result<AcceptedMessage> {
            match checked
                .as_deref()
                .and_then(|c| message.verify_certificate_once(c))
            {
                Some(verified) => verified?,
                None => message.verify(&Clock::system(), coordinators.as_ref())?,
            }
            let accepted = AcceptedMessage {
                id: message.id()?,
                bytes: message.to_bytes()?,
                message,
            };
            store
                .store(std::slice::from_ref(&accepted))
                .map_err(Error::Store)?;
            Ok(accepted)
        })
        .await
        .map_err(|err| {
            Error::Store(format!("the publication's check and write failed: {err}"))
        })??;
        let bytes = accepted.bytes.clone();
        // Without receivers there is nobody to tell.
        let _ = self.accepted.send(accepted);
        let data = GossipFrame::encode(kind, &bytes);
        self.call(|reply| Command::Publish { topic, data, reply })
            .await
    }

    /// Publishes raw bytes on any topic without checking them. Honest code
    /// never needs this; it exists so that fault-injection tests and tools
    /// can act as a misbehaving peer.
    pub async fn publish_unchecked(&self, topic: &str, data: Vec<u8>) -> Result<()> {
        let topic = topic.to_string();
        self.call(|reply| Command::PublishUnchecked { topic, data, reply })
            .await
    }

    /// Sends a request and waits for the response (or the timeout).
    pub async fn request(
        &self,
        peer: PeerId,
        protocol: Protocol,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>> {
        self.call(|reply| Command::Request {
            peer,
            protocol,
            bytes,
            reply,
        })
        .await
    }

    /// Answers an [`InboundRequest`].
    pub async fn respond(
        &self,
        protocol: Protocol,
        channel: ResponseChannel<Vec<u8>>,
        bytes: Vec<u8>,
    ) -> Result<()> {
        self.call(|reply| Command::Respond {
            protocol,
            channel,
            bytes,
            reply,
        })
        .await
    }

    /// Dials an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<()> {
        self.call(|reply| Command::Dial { addr, reply }).await
    }

    /// Bans a peer: disconnects it, refuses it for the configured time
    /// (longer for a repeat offender), and records the ban in the ledger.
    pub async fn ban(&self, peer: PeerId, reason: &str) -> Result<()> {
        let reason = reason.to_string();
        self.call(|reply| Command::Ban {
            peer,
            reason,
            reply,
        })
        .await
    }

    /// Counts a request `peer` sent that was refused, instead of any
    /// write; with `strike` (the reason code of a malformed or forged
    /// request), also a strike toward the peer's ban.
    pub async fn refused(&self, peer: PeerId, strike: Option<&'static str>) -> Result<()> {
        self.call(|reply| Command::Refused {
            peer,
            strike,
            reply,
        })
        .await
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerId>> {
        self.call(|reply| Command::Peers { reply }).await
    }

    /// Addresses the node listens on (with OS-chosen ports resolved).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        self.call(|reply| Command::ListenAddrs { reply }).await
    }

    /// Counters.
    pub async fn stats(&self) -> Result<NetworkStats> {
        self.call(|reply| Command::Stats { reply }).await
    }

    /// What the node holds against a peer or an address: its strikes (as
    /// of now, decayed), its bans so far and when the latest ends; `None`
    /// if nothing.
    pub async fn standing(&self, offender: Offender) -> Result<Option<Standing>> {
        self.call(|reply| Command::Standing { offender, reply })
            .await
    }

    /// Bans a peer or an address until `until` (an operator's decision,
    /// whatever its strikes; a longer ban in force is kept): disconnects
    /// it and records the ban in the store, so it holds after a restart.
    /// Returns when the ban ends; fails for a trusted address or an end
    /// already past.
    pub async fn ban_until(
        &self,
        offender: Offender,
        until: UnixMillis,
        reason: &str,
    ) -> Result<UnixMillis> {
        let reason = reason.to_string();
        self.call(|reply| Command::BanUntil {
            offender,
            until,
            reason,
            reply,
        })
        .await
    }

    /// Lifts the ban of a peer or an address now (durably); false if none
    /// was in force.
    pub async fn lift_ban(&self, offender: Offender) -> Result<bool> {
        self.call(|reply| Command::Lift { offender, reply }).await
    }

    /// The bans in force now, longest first.
    pub async fn bans(&self) -> Result<Vec<BanInForce>> {
        self.call(|reply| Command::Bans { reply }).await
    }

    /// Starts a catch-up sync from `peer` now (it also runs by itself on
    /// every new connection).
    pub async fn sync_from(&self, peer: PeerId) -> Result<()> {
        self.call(|reply| Command::SyncFrom { peer, reply }).await
    }
}
