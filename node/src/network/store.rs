//! What the network needs from the node's ledger: whether a message is
//! known, the latest offer sequence per supplier's devices, writing a batch
//! of validated messages, pages for catch-up sync, and bans.

use libp2p::PeerId;
use rigmesh_protocol::rpc::SyncTopic;
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{Id, Kind, PublicKey, UnixMillis};

/// A message that passed every check, ready to be written.
#[derive(Debug, Clone)]
pub struct AcceptedMessage {
    /// Its content id.
    pub id: Id,
    /// Its canonical bytes.
    pub bytes: Vec<u8>,
    /// The decoded message.
    pub message: WireMessage,
}

impl AcceptedMessage {
    /// The kind.
    pub fn kind(&self) -> Kind {
        self.message.kind()
    }
}

/// One page of a catch-up sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncPage {
    /// Messages, as (kind, canonical bytes).
    pub items: Vec<(Kind, Vec<u8>)>,
    /// Cursor of the next page, if there is one.
    pub next: Option<Vec<u8>>,
}

/// A ban of a misbehaving peer, kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerBan {
    /// The peer.
    pub peer: PeerId,
    /// When the ban ends.
    pub until: UnixMillis,
    /// Why it was banned.
    pub reason: String,
}

/// Errors of a [`MessageStore`], as text: the network only logs them and
/// treats the message as not accepted.
pub type StoreResult<T> = std::result::Result<T, String>;

/// Storage used by the network. Implemented over the ledger by the node;
/// all calls are short and synchronous.
pub trait MessageStore: Send + Sync + 'static {
    /// True if a message of `kind` with `id` is stored.
    fn contains(&self, kind: Kind, id: &Id) -> StoreResult<bool>;
    /// The sequence of the stored offer for `supplier`'s devices `fingerprint`.
    fn offer_sequence(&self, supplier: &PublicKey, fingerprint: &Id) -> StoreResult<Option<u64>>;
    /// Writes validated messages, all or none.
    fn store(&self, batch: &[AcceptedMessage]) -> StoreResult<()>;
    /// Up to `limit` messages of `topic` after `cursor`, skipping offers that
    /// expired before `now`.
    fn sync_page(
        &self,
        topic: SyncTopic,
        cursor: Option<&[u8]>,
        limit: usize,
        now: UnixMillis,
    ) -> StoreResult<SyncPage>;
    /// Records a ban.
    fn record_ban(&self, ban: &PeerBan) -> StoreResult<()>;
    /// Bans still in force at `now`.
    fn active_bans(&self, now: UnixMillis) -> StoreResult<Vec<PeerBan>>;
}
