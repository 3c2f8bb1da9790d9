//! What the network needs from the node's ledger: whether a message is
//! known, the latest offer sequence per supplier's devices, writing a batch
//! of validated messages, pages for catch-up sync, and strikes and bans.
//! Strikes and bans are written by [`run_writer`], off the swarm task.

use std::sync::Arc;

use rigmesh_protocol::rpc::SyncTopic;
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{Id, Kind, PublicKey, UnixMillis};

use super::offences::Offender;

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

/// A ban of a misbehaving peer or address, kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerBan {
    /// The peer or address.
    pub offender: Offender,
    /// When the ban ends.
    pub until: UnixMillis,
    /// Why it was banned.
    pub reason: String,
}

/// The strikes and ban count of a peer or address, kept across restarts.
#[derive(Debug, Clone, PartialEq)]
pub struct OffenceState {
    /// The peer or address.
    pub offender: Offender,
    /// Strikes toward its next ban, as of `updated`.
    pub strikes: f64,
    /// When `strikes` was computed.
    pub updated: UnixMillis,
    /// Bans so far (0 with no strikes: forget it).
    pub bans: u32,
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
    /// How many messages of `kind` by `author` are stored, counting at
    /// most `at_most`: what a quota (`rigmesh_ledger::market::quota_of`)
    /// is checked against.
    fn author_count(&self, kind: Kind, author: &PublicKey, at_most: usize) -> StoreResult<usize>;
    /// True if the usage evidence of `lease` was compacted: more of it
    /// (a late copy, a replay) is not kept.
    fn lease_compacted(&self, lease: &Id) -> StoreResult<bool>;
    /// Why a certificate of `kind` about `lease` between `parties`
    /// (supplier, customer) made at `created_at` is not kept at `now`, if
    /// it is not: a node that keeps only its own leases' certificates, or
    /// a coordinator whose books had them all, dropped this lease's
    /// (`compacted`; a coordinator still takes an escrow top-up), or, at a
    /// node other than a coordinator, the certificate is older than a
    /// compacted lease's tombstone is kept (`too_old`); see
    /// `rigmesh_ledger::CertificatesKept`.
    fn certificate_refused(
        &self,
        kind: Kind,
        lease: &Id,
        parties: (&PublicKey, &PublicKey),
        created_at: UnixMillis,
        now: UnixMillis,
    ) -> StoreResult<Option<&'static str>>;
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
    /// Writes strike records and bans durably (flushed before it returns).
    fn save_offences(&self, offences: &[OffenceState], bans: &[PeerBan]) -> StoreResult<()>;
    /// Every strike record.
    fn offences(&self) -> StoreResult<Vec<OffenceState>>;
    /// Bans still in force at `now`.
    fn active_bans(&self, now: UnixMillis) -> StoreResult<Vec<PeerBan>>;
}

/// Strike records and bans to write, in one group.
#[derive(Debug, Default)]
pub(crate) struct OffenceWrite {
    pub(crate) offences: Vec<OffenceState>,
    pub(crate) bans: Vec<PeerBan>,
}

/// The store writer of strikes and bans: takes every write queued, merges
/// them (the newest record of each offender wins) and writes them in one
/// blocking call off the async executor, so the swarm task never waits for
/// the disk. Ends when the queue closes.
pub(crate) async fn run_writer(
    store: Arc<dyn MessageStore>,
    mut queue: tokio::sync::mpsc::Receiver<OffenceWrite>,
    unsaved: prometheus_client::metrics::counter::Counter,
) {
    let mut writes = Vec::new();
    loop {
        writes.clear();
        if queue.recv_many(&mut writes, 64).await == 0 {
            return;
        }
        let mut latest = std::collections::HashMap::new();
        let mut merged = OffenceWrite::default();
        for write in writes.drain(..) {
            for state in write.offences {
                latest.insert(state.offender, state);
            }
            merged.bans.extend(write.bans);
        }
        merged.offences = latest.into_values().collect();
        let store = store.clone();
        let count = merged.offences.len() + merged.bans.len();
        let result = tokio::task::spawn_blocking(move || {
            store.save_offences(&merged.offences, &merged.bans)
        })
        .await;
        let error = match result {
            Ok(Ok(())) => continue,
            Ok(Err(err)) => err,
            Err(err) => err.to_string(),
        };
        unsaved.inc_by(u64::try_from(count).unwrap_or(u64::MAX));
        tracing::warn!(%error, "could not record strikes and bans");
    }
}
