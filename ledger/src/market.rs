//! Market messages a node has seen and accepted: offers (one live offer
//! per supplier's device set), bids, certificates, usage messages,
//! reputation and alerts, each stored as its canonical signed bytes under
//! its kind and content id, plus the bans of misbehaving peers.
//!
//! Layout (integers big-endian so sled's order is the order we scan in):
//! - tree `market/messages`, one key space for a message batch so that one
//!   atomic sled batch covers a message and its index entries:
//!   - `tag(kind) || id` -> `expires_at u64 || canonical bytes`
//!     (`expires_at` is `u64::MAX` for kinds that do not expire);
//!   - `0xFF || supplier || fingerprint` -> `sequence u64 || id`: the live
//!     offer of a supplier's device set;
//!   - `0xFE || lease || tag(kind) || id` -> empty: the messages about a
//!     lease (attestations, acks, disputes, terminations, escrow,
//!     settlement, release and resolution certificates), so reading one
//!     lease's evidence or certificates is a prefix scan.
//!   - `0xFD || author || tag(kind) || id` -> empty: the offers, bids,
//!     bindings and alerts of one author, so its quota is a bounded
//!     prefix scan;
//!   - `0xFC || expires_at u64 || tag(kind) || id` -> author or empty:
//!     every message that expires, in expiry order, so pruning reads only
//!     what has expired;
//!   - `0xF6 || coordinator || subject || role u8 || epoch u64` ->
//!     `created_at u64 || id`: the one reputation report kept of each
//!     coordinator about each account in a role and epoch, the newest
//!     (a report replaces the one before it, as an offer does);
//!   - `0xF5 || account || tag(kind) || id` -> empty: the deposits and
//!     certificates that move an account's money, so its receipts are a
//!     prefix scan;
//!   - `0xF4 || tag(kind) || id` -> empty: at a coordinator's node
//!     ([`MarketStore::keep_unapplied`]), the deposits and certificates
//!     stored and not yet handed to its books, written in the batch that
//!     stores them;
//!   - `0xFB` -> index version: set once the indexes cover every stored
//!     message (a store written before them is indexed when opened);
//!   - `0xFA || lease` -> empty, `0xF9 || due u64 || lease` -> empty,
//!     `0xF8 || lease` -> `compacted_at u64` (and a `1` byte when its
//!     certificates were deleted too) and `0xF7 || until u64 ||
//!     lease` -> empty: leases whose evidence is compacted once they are
//!     finally settled (see [`compaction`]).
//! - tree `market/bans`: `offender bytes` -> `until u64 || reason`, where
//!   the offender is a peer id's bytes or an address's multiaddr bytes
//!   (`/ip4/..` or `/ip6/..`);
//! - tree `market/offences`: `offender bytes` -> `strikes_milli u64 ||
//!   updated u64 || bans u32`: the strike score toward a ban (as of
//!   `updated`) and how many bans the offender has had.
//! - tree `coordinator/case_evidence`: `lease || settlement seq u64` ->
//!   [`CaseEvidence`] record: what an operator reviews of a dispute case.
//!
//! Kind tags are below `0xF4`, so the indexes never mix with messages.
//!
//! Beside the tree, in memory: a Bloom filter over the keys read one by
//! one (messages, live-offer and report entries, tombstones), so that
//! asking for a key that is not stored, as ingest does for nearly every
//! message it checks, mostly does not walk the tree (`market/present.rs`).

use std::path::Path;

use rigmesh_protocol::{Id, Kind, PublicKey, UnixMillis};

use crate::error::{Error, Result};
use crate::store::gate;

pub mod compaction;
mod present;

pub use compaction::{
    CertificatesKept, Compaction, EvidenceGrace, CERTIFICATE_KINDS, EVIDENCE_KINDS,
    TOMBSTONE_KEPT_MS,
};

/// A message to store, with what the indexes need to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketRecord {
    /// Its kind.
    pub kind: Kind,
    /// Its content id.
    pub id: Id,
    /// Its canonical bytes.
    pub bytes: Vec<u8>,
    /// For an offer: who offers which devices, its sequence and expiry.
    pub offer: Option<OfferKey>,
    /// When a message of another kind expires (bindings, bids); `None`
    /// for records that do not (certificates, attestations).
    pub expires_at: Option<UnixMillis>,
    /// The lease it is about, for the lease index.
    pub lease: Option<Id>,
    /// For usage evidence (attestations, acks, disputes): the window it
    /// is about, which orders it in the lease index so that a range of
    /// windows is read without the rest of the lease; see
    /// [`MarketStore::about_lease_windows`].
    pub window: Option<u64>,
    /// Who wrote it, for the kinds held to a quota per author (offers,
    /// bids, bindings, alerts); see [`quota_of`].
    pub author: Option<PublicKey>,
    /// For a reputation report: which report it replaces.
    pub report: Option<ReportKey>,
    /// The accounts whose money it moves (deposits and certificates),
    /// for their receipts.
    pub accounts: Vec<PublicKey>,
    /// For a deposit or certificate: when its message was made, which
    /// orders it in the account index so that the most recent are read
    /// without the rest; see [`MarketStore::about_account_latest`].
    pub made_at: Option<UnixMillis>,
}

impl MarketRecord {
    /// The record of `message`, whose content id is `id` and canonical
    /// bytes `bytes`, with every index entry the store keeps for it.
    pub fn of(message: &rigmesh_protocol::wire::WireMessage, id: Id, bytes: Vec<u8>) -> Self {
        use rigmesh_protocol::wire::WireMessage;
        MarketRecord {
            kind: message.kind(),
            id,
            bytes,
            offer: match message {
                WireMessage::Offer(o) => Some(OfferKey {
                    supplier: o.body.supplier,
                    fingerprint: o.body.hardware_fingerprint,
                    sequence: o.body.sequence,
                    expires_at: o.body.expires_at,
                }),
                _ => None,
            },
            expires_at: expiry_of(message),
            lease: lease_of(message),
            window: window_of(message),
            author: quota_author(message),
            report: match message {
                WireMessage::ReputationReport(r) => Some(ReportKey {
                    coordinator: r.body.coordinator,
                    subject: r.body.subject,
                    role: r.body.role,
                    epoch: r.body.epoch,
                    created_at: r.body.created_at,
                }),
                _ => None,
            },
            accounts: accounts_of(message),
            made_at: made_at(message),
        }
    }
}

/// When a deposit's or a certificate's message was made (the kinds of
/// [`ACCOUNT_KINDS`]), for the account index.
pub fn made_at(message: &rigmesh_protocol::wire::WireMessage) -> Option<UnixMillis> {
    use rigmesh_protocol::wire::WireMessage;
    match message {
        WireMessage::Deposit(d) => Some(d.body.created_at),
        WireMessage::EscrowCertificate(c) => Some(c.message.body.created_at),
        WireMessage::SettlementCertificate(c) => Some(c.message.body.created_at),
        WireMessage::WithdrawalCertificate(c) => Some(c.message.body.created_at),
        WireMessage::ReleaseCertificate(c) => Some(c.message.body.created_at),
        WireMessage::ResolutionCertificate(c) => Some(c.message.body.created_at),
        _ => None,
    }
}

/// The lease a message is about, for the lease index: usage evidence,
/// terminations and the certificates that move a lease's escrow.
pub fn lease_of(message: &rigmesh_protocol::wire::WireMessage) -> Option<Id> {
    use rigmesh_protocol::wire::WireMessage;
    match message {
        WireMessage::UsageAttestation(a) => Some(a.body.lease),
        WireMessage::UsageAck(a) => Some(a.body.lease),
        WireMessage::UsageDispute(d) => Some(d.body.lease),
        WireMessage::LeaseTermination(t) => Some(t.body.lease),
        WireMessage::EscrowCertificate(c) => Some(c.message.body.lease),
        WireMessage::SettlementCertificate(c) => Some(c.message.body.lease),
        WireMessage::ReleaseCertificate(c) => Some(c.message.body.lease),
        WireMessage::ResolutionCertificate(c) => Some(c.message.body.lease),
        _ => None,
    }
}

/// The kinds whose lease index entries are ordered by window.
pub const WINDOW_KINDS: [Kind; 3] = [Kind::UsageAttestation, Kind::UsageAck, Kind::UsageDispute];

/// The messages of [`WINDOW_KINDS`]: what
/// [`MarketStore::about_lease_windows`] reads.
pub trait WindowEvidence: rigmesh_protocol::Message {}
impl WindowEvidence for rigmesh_protocol::UsageAttestation {}
impl WindowEvidence for rigmesh_protocol::UsageAck {}
impl WindowEvidence for rigmesh_protocol::UsageDispute {}

/// The window usage evidence is about (an attestation's, ack's or
/// dispute's `seq`), for the lease index.
pub fn window_of(message: &rigmesh_protocol::wire::WireMessage) -> Option<u64> {
    use rigmesh_protocol::wire::WireMessage;
    match message {
        WireMessage::UsageAttestation(a) => Some(a.body.seq),
        WireMessage::UsageAck(a) => Some(a.body.seq),
        WireMessage::UsageDispute(d) => Some(d.body.seq),
        _ => None,
    }
}

/// For a certificate about a lease (escrow, settlement, release,
/// resolution): the lease, its supplier and customer, and when the
/// certified message was made.
pub fn lease_parties(
    message: &rigmesh_protocol::wire::WireMessage,
) -> Option<(Id, PublicKey, PublicKey, UnixMillis)> {
    use rigmesh_protocol::wire::WireMessage;
    match message {
        WireMessage::EscrowCertificate(c) => {
            let b = &c.message.body;
            Some((b.lease, b.supplier, b.account, b.created_at))
        }
        WireMessage::SettlementCertificate(c) => {
            let b = &c.message.body;
            Some((b.lease, b.supplier, b.customer, b.created_at))
        }
        WireMessage::ReleaseCertificate(c) => {
            let b = &c.message.body;
            Some((b.lease, b.supplier, b.customer, b.created_at))
        }
        WireMessage::ResolutionCertificate(c) => {
            let b = &c.message.body;
            Some((b.lease, b.supplier, b.customer, b.created_at))
        }
        _ => None,
    }
}

/// The accounts whose money a deposit or certificate moves.
pub fn accounts_of(message: &rigmesh_protocol::wire::WireMessage) -> Vec<PublicKey> {
    use rigmesh_protocol::wire::WireMessage;
    let pair = |a: PublicKey, b: PublicKey| if a == b { vec![a] } else { vec![a, b] };
    match message {
        WireMessage::Deposit(d) => vec![d.body.account],
        WireMessage::EscrowCertificate(c) => vec![c.message.body.account],
        WireMessage::WithdrawalCertificate(c) => vec![c.message.body.account],
        WireMessage::SettlementCertificate(c) => {
            pair(c.message.body.supplier, c.message.body.customer)
        }
        WireMessage::ReleaseCertificate(c) => {
            pair(c.message.body.supplier, c.message.body.customer)
        }
        WireMessage::ResolutionCertificate(c) => {
            pair(c.message.body.supplier, c.message.body.customer)
        }
        _ => Vec::new(),
    }
}

/// The kinds indexed by the accounts whose money they move.
pub const ACCOUNT_KINDS: [Kind; 6] = [
    Kind::Deposit,
    Kind::EscrowCertificate,
    Kind::SettlementCertificate,
    Kind::WithdrawalCertificate,
    Kind::ReleaseCertificate,
    Kind::ResolutionCertificate,
];

/// What identifies a reputation report's place: one coordinator's score
/// of one account in one role and epoch; a newer report replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportKey {
    /// The coordinator that made it.
    pub coordinator: PublicKey,
    /// The account it scores.
    pub subject: PublicKey,
    /// As supplier or customer.
    pub role: rigmesh_protocol::Role,
    /// The coordinator set's epoch.
    pub epoch: u64,
    /// When it was made: the newer replaces the older (the lower id wins
    /// a tie, as the order book decides).
    pub created_at: UnixMillis,
}

/// Most live messages of `kind` one author may have stored: device sets
/// offered per supplier, standing bids per customer, bindings per
/// account, alerts per issuer (coordinators are not held to it: the
/// network does not ask the store about them). `None` for kinds without
/// a quota, which cost their author money or a quorum's votes.
pub const fn quota_of(kind: Kind) -> Option<usize> {
    match kind {
        Kind::Offer => Some(64),
        Kind::Bid => Some(32),
        Kind::NodeBinding => Some(8),
        Kind::Alert => Some(256),
        _ => None,
    }
}

/// How long an alert is kept after it was made: alerts do not expire by
/// themselves, but what they tell is old news after a week.
pub const ALERT_KEPT_MS: u64 = 7 * 24 * 3_600_000;

/// The author a message of a quota kind counts against.
pub fn quota_author(message: &rigmesh_protocol::wire::WireMessage) -> Option<PublicKey> {
    use rigmesh_protocol::wire::WireMessage;
    match message {
        WireMessage::Offer(o) => Some(o.body.supplier),
        WireMessage::Bid(b) => Some(b.body.customer),
        WireMessage::NodeBinding(b) => Some(b.body.account),
        WireMessage::Alert(a) => Some(a.body.issuer),
        _ => None,
    }
}

/// When a stored message of `kind` expires, from the message itself:
/// offers, bids and bindings when they say so, alerts a week after they
/// were made; `None` for kinds kept until compacted.
pub fn expiry_of(message: &rigmesh_protocol::wire::WireMessage) -> Option<UnixMillis> {
    use rigmesh_protocol::wire::WireMessage;
    match message {
        WireMessage::Offer(o) => Some(o.body.expires_at),
        WireMessage::Bid(b) => Some(b.body.expires_at),
        WireMessage::NodeBinding(b) => Some(b.body.expires_at),
        WireMessage::Alert(a) => Some(UnixMillis(
            a.body.created_at.0.saturating_add(ALERT_KEPT_MS),
        )),
        _ => None,
    }
}

/// What identifies an offer's device set and orders its re-publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferKey {
    /// The supplier.
    pub supplier: PublicKey,
    /// The hardware fingerprint of the offered devices.
    pub fingerprint: Id,
    /// The offer's sequence.
    pub sequence: u64,
    /// When it expires.
    pub expires_at: UnixMillis,
}

/// The strike score and ban count of a peer or address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffenceRecord {
    /// The offender: a peer id's bytes or an address's multiaddr bytes.
    pub offender: Vec<u8>,
    /// Strikes toward its next ban, in thousandths, as of `updated`.
    pub strikes_milli: u64,
    /// When `strikes_milli` was last computed.
    pub updated: UnixMillis,
    /// How many times it has been banned.
    pub bans: u32,
}

/// A recorded ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanRecord {
    /// The peer id's bytes, or the banned address's multiaddr bytes.
    pub peer: Vec<u8>,
    /// When the ban ends.
    pub until: UnixMillis,
    /// Why.
    pub reason: String,
}

/// One page of stored messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarketPage {
    /// (kind, canonical bytes), in key order.
    pub items: Vec<(Kind, Vec<u8>)>,
    /// Key of the last item, to continue after; `None` at the end.
    pub next: Option<Vec<u8>>,
}

/// The market store.
#[derive(Clone)]
pub struct MarketStore {
    db: sled::Db,
    /// Offers read by scans ([`MarketStore::page`] and what is built on
    /// it) since the store was opened, shared by every clone.
    offers_scanned: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Messages of any kind read by those scans.
    messages_scanned: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Messages (not certificates) read through the lease index.
    lease_messages_read: std::sync::Arc<std::sync::atomic::AtomicU64>,
    messages: sled::Tree,
    bans: sled::Tree,
    offences: sled::Tree,
    debits: sled::Tree,
    locked: sled::Tree,
    evidence: sled::Tree,
    /// Held by a write that may add evidence of a lease and by each step
    /// of compaction, so no message of a lease is written between the
    /// step that finds its evidence gone and the tombstone that refuses
    /// more (compaction.rs); and by pruning, so no newer offer takes a
    /// device set's live-offer entry between the read that finds it
    /// naming an expired offer and its deletion.
    lease_writes: std::sync::Arc<std::sync::Mutex<()>>,
    /// Whose certificates stay once their lease is compacted, shared by
    /// every clone.
    kept: std::sync::Arc<std::sync::RwLock<CertificatesKept>>,
    /// Which point-read keys of `messages` may be stored, shared by every
    /// clone: every write of such a key adds it there first.
    present: std::sync::Arc<present::Present>,
    /// Whether each deposit and certificate written is listed as not yet
    /// applied ([`MarketStore::keep_unapplied`]), shared by every clone.
    unapplied: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// How many entries the account index holds for each account and
    /// kind counted lately ([`MarketStore::count_about_account`]), kept
    /// up to date by every write and deletion of such entries (all of
    /// which hold `lease_writes`), so an account's receipts are counted
    /// once, not on every report.
    account_counts: std::sync::Arc<std::sync::Mutex<AccountCounts>>,
}

/// The counts of [`MarketStore::count_about_account`], by account and
/// kind; at most [`ACCOUNT_COUNTS_KEPT`], forgotten together beyond that
/// (each is counted again when next asked).
type AccountCounts = std::collections::HashMap<(PublicKey, Kind), usize>;

/// Most accounts' and kinds' counts kept: a customer node asks about its
/// own account, six kinds.
const ACCOUNT_COUNTS_KEPT: usize = 1_024;

/// What a coordinator saw of the windows a settlement request it voted
/// for held for review: canonical signed bytes of each message.
#[derive(Debug, Clone, Default, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct CaseEvidence {
    /// How many windows of the range were held.
    pub held_windows: u64,
    /// The supplier's attestations of the held windows.
    pub attestations: Vec<Vec<u8>>,
    /// The customer's disputes of the range.
    pub disputes: Vec<Vec<u8>>,
    /// The customer's acks of the range that name another attestation.
    pub acks: Vec<Vec<u8>>,
}

/// Keys a record writes, roughly: the message and its index entries
/// (3.15 a record in the ingest bench's mix of kinds, up to 7 for an
/// offer that replaces a live one, whose three keys go); it sets how much
/// garbage collection follows a batch.
const KEYS_PER_RECORD: usize = 4;
/// First byte of live-offer index keys; above every kind tag.
const LIVE_OFFER: u8 = 0xFF;
/// How long a device set's live-offer entry outlives the expiry of the
/// offer it names: the longest lifetime of an offer and the clock skew.
/// A supplier signs an older sequence no later than a newer one, so by
/// then every older offer of those devices is expired too and refused
/// by the time rule, and the entry has nothing left to guard.
pub const OFFER_SLOT_KEPT_MS: u64 = rigmesh_protocol::messages::market::OFFER_MAX_TTL_MS
    + rigmesh_protocol::time::DEFAULT_CLOCK_SKEW_MS;
/// First byte of lease index keys; above every kind tag.
const BY_LEASE: u8 = 0xFE;
/// First byte of author index keys; above every kind tag.
const BY_AUTHOR: u8 = 0xFD;
/// First byte of expiry index keys; above every kind tag.
const BY_EXPIRY: u8 = 0xFC;
/// Key of the index version.
const INDEX_VERSION_KEY: [u8; 1] = [0xFB];
/// First byte of the keys of the reputation report kept per coordinator,
/// account, role and epoch; above every kind tag.
const LIVE_REPORT: u8 = 0xF6;
/// First byte of account index keys; above every kind tag.
const BY_ACCOUNT: u8 = 0xF5;
/// First byte of the entries of deposits and certificates not yet
/// applied; above every kind tag.
const UNAPPLIED: u8 = 0xF4;
/// The version of the indexes this code writes: 1 added the author and
/// expiry indexes, 2 the leases that close (compaction), 3 the account
/// index, escrow certificates in the lease index and one reputation
/// report kept per coordinator and account, 4 the window in the lease
/// index keys of usage evidence, 5 when the message was made in the
/// account index keys.
const INDEX_VERSION: u64 = 5;

impl std::fmt::Debug for MarketStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarketStore").finish_non_exhaustive()
    }
}

fn message_key(kind: Kind, id: &Id) -> Vec<u8> {
    let mut key = Vec::with_capacity(33);
    key.push(kind.tag());
    key.extend_from_slice(id.as_bytes());
    key
}

fn unapplied_key(kind: Kind, id: &Id) -> Vec<u8> {
    let mut key = Vec::with_capacity(34);
    key.push(UNAPPLIED);
    key.extend_from_slice(&message_key(kind, id));
    key
}

/// Length of a lease index key: its tag, the lease, the kind, the id.
const LEASE_KEY_LEN: usize = 1 + 32 + 1 + 32;
/// Length of a lease index key of usage evidence, its window included.
const WINDOWED_LEASE_KEY_LEN: usize = LEASE_KEY_LEN + 8;
/// Length of an account index key: its tag, the account, the kind, when
/// the message was made, the id.
const ACCOUNT_KEY_LEN: usize = 1 + 32 + 1 + 8 + 32;

fn lease_prefix(lease: &Id, kind: Kind) -> Vec<u8> {
    let mut key = Vec::with_capacity(WINDOWED_LEASE_KEY_LEN);
    key.push(BY_LEASE);
    key.extend_from_slice(lease.as_bytes());
    key.push(kind.tag());
    key
}

/// A lease index key: the lease's prefix for `kind`, then, for usage
/// evidence, its window (big-endian, so that the keys sort by window),
/// then the message's id.
fn lease_key(lease: &Id, kind: Kind, window: Option<u64>, id: &Id) -> Vec<u8> {
    let mut key = lease_prefix(lease, kind);
    if let Some(window) = window {
        key.extend_from_slice(&window.to_be_bytes());
    }
    key.extend_from_slice(id.as_bytes());
    key
}

/// The id a lease or account index key names: its last 32 bytes, after
/// the prefix and, in the lease index of usage evidence, the window.
fn index_id(key: &[u8], what: &'static str) -> Result<Id> {
    match key.len().checked_sub(32) {
        Some(start) if start >= 34 => read_id(key.get(start..).unwrap_or_default(), what),
        _ => Err(Error::Corrupt { what }),
    }
}

fn locked_key(lease: &Id, settlement_seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(40);
    key.extend_from_slice(lease.as_bytes());
    key.extend_from_slice(&settlement_seq.to_be_bytes());
    key
}

fn author_prefix(author: &PublicKey, kind: Kind) -> Vec<u8> {
    let mut key = Vec::with_capacity(66);
    key.push(BY_AUTHOR);
    key.extend_from_slice(author.as_bytes());
    key.push(kind.tag());
    key
}

fn author_key(author: &PublicKey, kind: Kind, id: &Id) -> Vec<u8> {
    let mut key = author_prefix(author, kind);
    key.extend_from_slice(id.as_bytes());
    key
}

fn expiry_key(expires_at: u64, kind: Kind, id: &Id) -> Vec<u8> {
    let mut key = Vec::with_capacity(42);
    key.push(BY_EXPIRY);
    key.extend_from_slice(&expires_at.to_be_bytes());
    key.push(kind.tag());
    key.extend_from_slice(id.as_bytes());
    key
}

/// The value of an expiry index entry: the author, whose index entry
/// goes with the message; for an offer the supplier and the device set,
/// whose live-offer entry expires in turn.
fn expiry_value(author: Option<&PublicKey>, offer: Option<&OfferKey>) -> Vec<u8> {
    match offer {
        Some(offer) => {
            let mut value = offer.supplier.as_bytes().to_vec();
            value.extend_from_slice(offer.fingerprint.as_bytes());
            value
        }
        None => author.map(|a| a.as_bytes().to_vec()).unwrap_or_default(),
    }
}

fn report_slot(report: &ReportKey) -> Vec<u8> {
    let mut key = Vec::with_capacity(74);
    key.push(LIVE_REPORT);
    key.extend_from_slice(report.coordinator.as_bytes());
    key.extend_from_slice(report.subject.as_bytes());
    key.push(match report.role {
        rigmesh_protocol::Role::Supplier => 0,
        rigmesh_protocol::Role::Customer => 1,
    });
    key.extend_from_slice(&report.epoch.to_be_bytes());
    key
}

fn account_prefix(account: &PublicKey, kind: Kind) -> Vec<u8> {
    let mut key = Vec::with_capacity(ACCOUNT_KEY_LEN);
    key.push(BY_ACCOUNT);
    key.extend_from_slice(account.as_bytes());
    key.push(kind.tag());
    key
}

/// An account index key: the account's prefix for `kind`, when the
/// message was made (big-endian milliseconds, so that the keys sort by
/// it; 0 when unknown), then the message's id.
fn account_key(account: &PublicKey, kind: Kind, made_at: Option<UnixMillis>, id: &Id) -> Vec<u8> {
    let mut key = account_prefix(account, kind);
    key.extend_from_slice(&made_at.map_or(0, |t| t.0).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// Where a record takes the place of an earlier one (an offer of the same
/// devices, a report of the same coordinator about the same account):
/// the index key and the record's rank there.
fn slot_of(record: &MarketRecord) -> Option<(Vec<u8>, u64)> {
    if let Some(offer) = &record.offer {
        return Some((
            device_key(&offer.supplier, &offer.fingerprint),
            offer.sequence,
        ));
    }
    record
        .report
        .as_ref()
        .map(|report| (report_slot(report), report.created_at.0))
}

/// True when a record of `kind` ranked `rank` with id `id` replaces the
/// one held at its slot: an offer by a higher sequence only, a report by
/// a later time or, made at the same millisecond, a lower id.
fn replaces(kind: Kind, (rank, id): (u64, &Id), (held_rank, held_id): (u64, &Id)) -> bool {
    if kind == Kind::Offer {
        rank > held_rank
    } else {
        (rank, std::cmp::Reverse(id)) > (held_rank, std::cmp::Reverse(held_id))
    }
}

fn device_key(supplier: &PublicKey, fingerprint: &Id) -> Vec<u8> {
    let mut key = Vec::with_capacity(65);
    key.push(LIVE_OFFER);
    key.extend_from_slice(supplier.as_bytes());
    key.extend_from_slice(fingerprint.as_bytes());
    key
}

fn read_u64(bytes: &[u8], what: &'static str) -> Result<u64> {
    let head: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or(Error::Corrupt { what })?;
    Ok(u64::from_be_bytes(head))
}

fn read_id(bytes: &[u8], what: &'static str) -> Result<Id> {
    let id: [u8; 32] = bytes
        .get(..32)
        .and_then(|b| b.try_into().ok())
        .ok_or(Error::Corrupt { what })?;
    Ok(Id(id))
}

impl MarketStore {
    /// The database the store lives in, for a node's other trees to share
    /// (one page cache, one file lock).
    pub fn database(&self) -> sled::Db {
        self.db.clone()
    }

    /// Opens (or creates) the store in `db`.
    pub fn open_in(db: sled::Db) -> Result<Self> {
        let store = MarketStore {
            messages: db.open_tree("market/messages")?,
            bans: db.open_tree("market/bans")?,
            offences: db.open_tree("market/offences")?,
            debits: db.open_tree("market/pending_debits")?,
            locked: db.open_tree("coordinator/locked_requests")?,
            evidence: db.open_tree("coordinator/case_evidence")?,
            db,
            offers_scanned: Default::default(),
            messages_scanned: Default::default(),
            lease_messages_read: Default::default(),
            unapplied: Default::default(),
            account_counts: Default::default(),
            lease_writes: Default::default(),
            kept: Default::default(),
            present: std::sync::Arc::new(present::Present::new(&[
                LIVE_OFFER,
                LIVE_REPORT,
                compaction::TOMBSTONE,
            ])),
        }
        .indexed()?;
        // What the store holds, indexes of older versions included; the
        // live-offer entries later, as a restarting node reads its offers.
        store.present.open(&store.messages, &[LIVE_OFFER])?;
        Ok(store)
    }

    /// Builds the author and expiry indexes over what a store written
    /// before them holds (alerts also get their week of keeping), in
    /// batches; then records that they are complete. Nothing to do on a
    /// store that has them.
    fn indexed(self) -> Result<Self> {
        let version = match self.messages.get(INDEX_VERSION_KEY)? {
            Some(v) => read_u64(&v, "index version")?,
            None => 0,
        };
        if version >= INDEX_VERSION {
            return Ok(self);
        }
        if version < 1 {
            self.index_authors_and_expiry()?;
        }
        if version < 2 {
            self.index_closing_leases()?;
        }
        if version < 3 {
            self.index_accounts_and_reports()?;
        }
        if version < 4 {
            self.index_lease_windows()?;
        }
        self.index_account_times()?;
        self.messages
            .insert(INDEX_VERSION_KEY, INDEX_VERSION.to_be_bytes().to_vec())?;
        Ok(self)
    }

    fn index_authors_and_expiry(&self) -> Result<()> {
        for kind in [Kind::Offer, Kind::Bid, Kind::NodeBinding, Kind::Alert] {
            let tag = kind.tag();
            let mut write = sled::Batch::default();
            let mut queued = 0;
            for entry in self.messages.range(vec![tag]..vec![tag.saturating_add(1)]) {
                let (key, value) = entry?;
                let id = read_id(key.get(1..).unwrap_or_default(), "market message key")?;
                let bytes = value.get(8..).unwrap_or_default();
                // What does not decode any more cannot be indexed; it goes.
                let Ok(message) = rigmesh_protocol::wire::WireMessage::decode(kind, bytes) else {
                    write.remove(key);
                    continue;
                };
                let author = quota_author(&message);
                if let Some(author) = &author {
                    write.insert(author_key(author, kind, &id), Vec::new());
                }
                if let Some(expires) = expiry_of(&message) {
                    let mut header = expires.0.to_be_bytes().to_vec();
                    header.extend_from_slice(bytes);
                    write.insert(key.clone(), header);
                    let record = MarketRecord::of(&message, id, Vec::new());
                    write.insert(
                        expiry_key(expires.0, kind, &id),
                        expiry_value(author.as_ref(), record.offer.as_ref()),
                    );
                }
                queued += 1;
                if queued == 10_000 {
                    gate::apply_batch(&self.messages, std::mem::take(&mut write))?;
                    queued = 0;
                }
            }
            gate::apply_batch(&self.messages, write)?;
        }
        Ok(())
    }

    /// Rewrites the lease index entries of the usage evidence a store
    /// written before index version 4 holds, with the window between the
    /// lease's prefix and the id. An entry already rewritten (a migration
    /// cut short) is written again unchanged.
    fn index_lease_windows(&self) -> Result<()> {
        self.rewrite_index(&WINDOW_KINDS, |write, kind, id, message| {
            if let (Some(lease), Some(window)) = (lease_of(message), window_of(message)) {
                write.remove(lease_key(&lease, kind, None, id));
                write.insert(lease_key(&lease, kind, Some(window), id), Vec::new());
            }
        })
    }

    /// Rewrites the account index entries a store written before index
    /// version 5 holds, with when the message was made between the
    /// account's prefix and the id. An entry already rewritten (a
    /// migration cut short) is written again unchanged.
    fn index_account_times(&self) -> Result<()> {
        self.rewrite_index(&ACCOUNT_KINDS, |write, kind, id, message| {
            let made = made_at(message);
            for account in accounts_of(message) {
                let mut old = account_prefix(&account, kind);
                old.extend_from_slice(id.as_bytes());
                write.remove(old);
                write.insert(account_key(&account, kind, made, id), Vec::new());
            }
        })
    }

    /// Hands each stored message of `kinds` that decodes to `entries`,
    /// which adds the index writes it needs to the batch; applied in
    /// batches of 10,000 messages.
    fn rewrite_index(
        &self,
        kinds: &[Kind],
        mut entries: impl FnMut(&mut sled::Batch, Kind, &Id, &rigmesh_protocol::wire::WireMessage),
    ) -> Result<()> {
        for &kind in kinds {
            let tag = kind.tag();
            let mut write = sled::Batch::default();
            let mut queued = 0;
            for entry in self.messages.range(vec![tag]..vec![tag.saturating_add(1)]) {
                let (key, value) = entry?;
                let id = read_id(key.get(1..).unwrap_or_default(), "market message key")?;
                let Ok(message) = rigmesh_protocol::wire::WireMessage::decode(
                    kind,
                    value.get(8..).unwrap_or_default(),
                ) else {
                    continue;
                };
                entries(&mut write, kind, &id, &message);
                queued += 1;
                if queued == 10_000 {
                    gate::apply_batch(&self.messages, std::mem::take(&mut write))?;
                    queued = 0;
                }
            }
            gate::apply_batch(&self.messages, write)?;
        }
        Ok(())
    }

    /// Indexes what a store written before index version 3 holds: the
    /// deposits and certificates under the accounts whose money they
    /// move, escrow certificates under their lease, and of the reputation
    /// reports of each coordinator about each account, role and epoch
    /// only the newest is kept, as [`MarketStore::store`] keeps them.
    fn index_accounts_and_reports(&self) -> Result<()> {
        use rigmesh_protocol::wire::WireMessage;
        self.rewrite_index(&ACCOUNT_KINDS, |write, kind, id, message| {
            let record = MarketRecord::of(message, *id, Vec::new());
            for account in &record.accounts {
                write.insert(account_key(account, kind, record.made_at, id), Vec::new());
            }
            if let (Kind::EscrowCertificate, Some(lease)) = (kind, &record.lease) {
                write.insert(lease_key(lease, kind, None, id), Vec::new());
            }
        })?;
        let mut write = sled::Batch::default();
        let tag = Kind::ReputationReport.tag();
        let mut newest: std::collections::HashMap<Vec<u8>, (u64, Id)> =
            std::collections::HashMap::new();
        for entry in self.messages.range(vec![tag]..vec![tag.saturating_add(1)]) {
            let (key, value) = entry?;
            let id = read_id(key.get(1..).unwrap_or_default(), "market message key")?;
            let message =
                WireMessage::decode(Kind::ReputationReport, value.get(8..).unwrap_or_default());
            let Some((slot, rank)) = message
                .ok()
                .and_then(|m| slot_of(&MarketRecord::of(&m, id, Vec::new())))
            else {
                write.remove(key);
                continue;
            };
            match newest.get_mut(&slot) {
                Some(held) if replaces(Kind::ReputationReport, (rank, &id), (held.0, &held.1)) => {
                    write.remove(message_key(Kind::ReputationReport, &held.1));
                    *held = (rank, id);
                }
                Some(_) => {
                    write.remove(key);
                }
                None => {
                    newest.insert(slot, (rank, id));
                }
            }
        }
        for (slot, (rank, id)) in newest {
            let mut index = rank.to_be_bytes().to_vec();
            index.extend_from_slice(id.as_bytes());
            write.insert(slot, index);
        }
        gate::apply_batch(&self.messages, write)?;
        Ok(())
    }

    /// How many messages of `kind` by `author` are stored, counting at
    /// most `at_most` (expired ones count until they are pruned).
    pub fn author_count(&self, kind: Kind, author: &PublicKey, at_most: usize) -> Result<usize> {
        let mut count = 0;
        for entry in self.messages.scan_prefix(author_prefix(author, kind)) {
            entry?;
            count += 1;
            if count >= at_most {
                break;
            }
        }
        Ok(count)
    }

    /// Opens (or creates) a store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_in(crate::store::open_db(path)?)
    }

    /// A store that lives in memory and disappears on drop.
    pub fn temporary() -> Result<Self> {
        Self::open_in(sled::Config::new().temporary(true).open()?)
    }

    /// True if a message of `kind` with `id` is stored.
    pub fn contains(&self, kind: Kind, id: &Id) -> Result<bool> {
        let key = message_key(kind, id);
        Ok(self.present.may_hold(&key) && self.messages.contains_key(key)?)
    }

    /// The value of a point-read key (a message, a live-offer or report
    /// entry, a tombstone), read from the tree only if it may be stored.
    fn point_read(&self, key: &[u8]) -> Result<Option<sled::IVec>> {
        if !self.present.may_hold(key) {
            return Ok(None);
        }
        Ok(self.messages.get(key)?)
    }

    /// From now on, lists each deposit and certificate this store writes
    /// as not yet applied, in the batch that writes it, until
    /// [`MarketStore::applied`] takes it off: a coordinator's books that
    /// missed one (its queue of accepted messages lagged, or the process
    /// stopped between the write and the books) find it there, after a
    /// restart too, without reading every one ever stored.
    pub fn keep_unapplied(&self) {
        self.unapplied
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// At most `limit` of the deposits and certificates listed as not yet
    /// applied, in key order from just after `after` (from the first when
    /// `None`).
    pub fn unapplied(&self, after: Option<(Kind, Id)>, limit: usize) -> Result<Vec<(Kind, Id)>> {
        let from = match after {
            Some((kind, id)) => {
                let mut key = unapplied_key(kind, &id);
                key.push(0);
                key
            }
            None => vec![UNAPPLIED],
        };
        let mut out = Vec::new();
        for entry in self.messages.range(from..vec![UNAPPLIED + 1]).take(limit) {
            let (key, _) = entry?;
            let kind = key
                .get(1)
                .and_then(|tag| Kind::from_tag(*tag))
                .ok_or(Error::Corrupt {
                    what: "unapplied entry kind",
                })?;
            out.push((
                kind,
                read_id(key.get(2..).unwrap_or_default(), "unapplied entry")?,
            ));
        }
        Ok(out)
    }

    /// Takes a deposit or certificate off the list of those not yet
    /// applied (applied, held or refused by the books).
    pub fn applied(&self, kind: Kind, id: &Id) -> Result<()> {
        self.messages.remove(unapplied_key(kind, id))?;
        Ok(())
    }

    /// The canonical bytes of a stored message.
    pub fn get(&self, kind: Kind, id: &Id) -> Result<Option<Vec<u8>>> {
        // Stored after its expiry time.
        Ok(self
            .point_read(&message_key(kind, id))?
            .map(|v| v.get(8..).unwrap_or_default().to_vec()))
    }

    /// How many offers scans of this store have read since it was opened
    /// (point reads by id are not counted). A node that keeps its order
    /// book in memory reads every offer once at start and then no more;
    /// tests and the load bench watch this number to prove it.
    pub fn offers_scanned(&self) -> u64 {
        self.offers_scanned
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many messages of any kind scans of this store have read since
    /// it was opened (point reads and index reads are not counted): a
    /// read path served by an index leaves it where it was.
    pub fn messages_scanned(&self) -> u64 {
        self.messages_scanned
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many messages (usage evidence, terminations; not
    /// certificates) [`MarketStore::about_lease`] and
    /// [`MarketStore::about_lease_windows`] have read since the store was
    /// opened: what a coordinator's votes read of a lease's evidence.
    pub fn lease_messages_read(&self) -> u64 {
        self.lease_messages_read
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stored messages of `kind`.
    pub fn count(&self, kind: Kind) -> usize {
        self.messages.scan_prefix([kind.tag()]).count()
    }

    /// The sequence of the live offer for `supplier`'s devices `fingerprint`.
    pub fn offer_sequence(&self, supplier: &PublicKey, fingerprint: &Id) -> Result<Option<u64>> {
        match self.point_read(&device_key(supplier, fingerprint))? {
            Some(v) => Ok(Some(read_u64(&v, "live offer sequence")?)),
            None => Ok(None),
        }
    }

    /// Writes a batch atomically (one sled batch). An offer replaces the
    /// live offer of the same devices if its sequence is higher, a
    /// reputation report the report of the same coordinator about the
    /// same account, role and epoch if it is newer; an older one is
    /// skipped.
    pub fn store(&self, batch: &[MarketRecord]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // Held until the batch is applied: compaction must not find a
        // lease's evidence gone while a write of more is under way.
        let _writing = self
            .lease_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Held until the batch is applied, with each key it adds.
        let adding = self.present.adding();
        let mut write = sled::Batch::default();
        // Live offers as this batch leaves them, so several offers for the
        // same devices in one batch resolve like sequential writes would.
        let mut live: std::collections::HashMap<Vec<u8>, (u64, Id, u64)> =
            std::collections::HashMap::new();
        // The account index entries this batch adds for counted accounts:
        // those of messages not stored before it, nor earlier in it.
        let mut counted = Vec::new();
        let mut new_here = std::collections::HashSet::new();
        for record in batch {
            if let Some(lease) = &record.lease {
                // Evidence of a compacted lease (a late copy, a replay)
                // would stay for ever: nothing settles the lease again.
                if EVIDENCE_KINDS.contains(&record.kind) && self.is_compacted(lease)? {
                    continue;
                }
                // Nor the certificates of a lease this node dropped them
                // of: it is party to none of them, or (at a coordinator)
                // its books had every one of them; but a coordinator's
                // takes a late escrow top-up (`CertificatesKept::Books`).
                if CERTIFICATE_KINDS.contains(&record.kind)
                    && !self.keeps_every_certificate()
                    && !self.kept().takes_after_dropping(record.kind)
                    && self.certificates_dropped(lease)?
                {
                    continue;
                }
                if compaction::closes(record) {
                    write.insert(compaction::closing_key(lease), Vec::new());
                }
            }
            let mut value = Vec::with_capacity(8 + record.bytes.len());
            let expires_at = record
                .offer
                .map(|o| o.expires_at)
                .or(record.expires_at)
                .map_or(u64::MAX, |t| t.0);
            value.extend_from_slice(&expires_at.to_be_bytes());
            value.extend_from_slice(&record.bytes);
            if let Some((key, rank)) = slot_of(record) {
                let current = match live.get(&key) {
                    Some(entry) => Some(*entry),
                    None => match self.point_read(&key)? {
                        Some(v) => {
                            let old = read_id(v.get(8..).unwrap_or_default(), "live index id")?;
                            let expires = match self.messages.get(message_key(record.kind, &old))? {
                                Some(m) => read_u64(&m, "message expiry")?,
                                None => u64::MAX,
                            };
                            Some((read_u64(&v, "live index rank")?, old, expires))
                        }
                        None => None,
                    },
                };
                if let Some((held, old, old_expires)) = current {
                    if !replaces(record.kind, (rank, &record.id), (held, &old)) {
                        continue;
                    }
                    // The slot's author is the record's: the supplier of
                    // the devices, the coordinator of the report.
                    write.remove(message_key(record.kind, &old));
                    if let Some(author) = &record.author {
                        write.remove(author_key(author, record.kind, &old));
                    }
                    if old_expires != u64::MAX {
                        write.remove(expiry_key(old_expires, record.kind, &old));
                    }
                }
                let mut index = rank.to_be_bytes().to_vec();
                index.extend_from_slice(record.id.as_bytes());
                adding.add(&key);
                write.insert(key.as_slice(), index);
                live.insert(key, (rank, record.id, expires_at));
            }
            if let Some(author) = &record.author {
                write.insert(author_key(author, record.kind, &record.id), Vec::new());
            }
            if expires_at != u64::MAX {
                write.insert(
                    expiry_key(expires_at, record.kind, &record.id),
                    expiry_value(record.author.as_ref(), record.offer.as_ref()),
                );
            }
            if let Some(lease) = &record.lease {
                write.insert(
                    lease_key(lease, record.kind, record.window, &record.id),
                    Vec::new(),
                );
            }
            for account in &record.accounts {
                write.insert(
                    account_key(account, record.kind, record.made_at, &record.id),
                    Vec::new(),
                );
            }
            let key = message_key(record.kind, &record.id);
            if self.counts_any(&record.accounts, record.kind)
                && !new_here.contains(&key)
                && self.point_read(&key)?.is_none()
            {
                new_here.insert(key.clone());
                counted.extend(record.accounts.iter().map(|a| (*a, record.kind)));
            }
            if ACCOUNT_KINDS.contains(&record.kind)
                && self.unapplied.load(std::sync::atomic::Ordering::Relaxed)
            {
                write.insert(unapplied_key(record.kind, &record.id), Vec::new());
            }
            adding.add(&key);
            write.insert(key, value);
        }
        gate::apply_batch(&self.messages, write)?;
        self.recount(&counted, true);
        drop(adding);
        gate::reclaim(batch.len().saturating_mul(KEYS_PER_RECORD));
        Ok(())
    }

    /// Up to `limit` messages of `kinds` after `cursor`, skipping offers
    /// expired at `now`.
    pub fn page(
        &self,
        kinds: &[Kind],
        cursor: Option<&[u8]>,
        limit: usize,
        now: UnixMillis,
    ) -> Result<MarketPage> {
        let mut page = MarketPage::default();
        let start: Vec<u8> = match cursor {
            Some(c) => {
                let mut after = c.to_vec();
                after.push(0);
                after
            }
            None => Vec::new(),
        };
        // Each kind's messages are one key range (its tag first): only the
        // ranges asked for are read, in tag order, so the cursor (the last
        // key sent) orders pages across kinds too.
        let mut tags: Vec<u8> = kinds.iter().map(|k| k.tag()).collect();
        tags.sort_unstable();
        tags.dedup();
        for tag in tags {
            let lower = vec![tag];
            let upper = vec![tag.saturating_add(1)];
            if start >= upper {
                continue;
            }
            let from = if start > lower { start.clone() } else { lower };
            for entry in self.messages.range(from..upper) {
                let (key, value) = entry?;
                let Some(kind) = key.first().and_then(|t| Kind::from_tag(*t)) else {
                    return Err(Error::Corrupt {
                        what: "market message key",
                    });
                };
                if page.items.len() == limit {
                    return Ok(page);
                }
                if read_u64(&value, "message expiry")? < now.0 {
                    continue;
                }
                let bytes = value.get(8..).ok_or(Error::Corrupt {
                    what: "market message",
                })?;
                if kind == Kind::Offer {
                    self.offers_scanned
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                self.messages_scanned
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                page.items.push((kind, bytes.to_vec()));
                page.next = Some(key.to_vec());
            }
        }
        page.next = None;
        Ok(page)
    }

    /// Deletes at most `limit` entries of the expiry index that fell due
    /// before `before`, reading only those; returns how many of them were
    /// messages. An entry is a stored message that expired (offers, bids
    /// and bindings when they say, alerts a week after they were made; no
    /// other kind expires) or the live-offer entry of a device set. That
    /// entry outlives its offer by [`OFFER_SLOT_KEPT_MS`], so an older
    /// offer of the same devices is still refused as stale until it is
    /// expired itself; it then goes unless a newer offer of those devices
    /// has taken it.
    ///
    /// Deleted keys stay in the filter of point-read keys, so this is also
    /// when it is rebuilt from the store once it has filled up.
    pub fn prune_expired(&self, before: UnixMillis, limit: usize) -> Result<usize> {
        let pruned = self.prune_expired_entries(before, limit)?;
        if self.present.renew_if_full(&self.messages)? {
            tracing::debug!("the filter of stored keys was rebuilt");
        }
        Ok(pruned)
    }

    /// The deletions of [`MarketStore::prune_expired`], in one batch.
    fn prune_expired_entries(&self, before: UnixMillis, limit: usize) -> Result<usize> {
        // Held until the batch is applied: a newer offer written meanwhile
        // must not lose the live-offer entry read here as the old one's.
        let _writing = self
            .lease_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut write = sled::Batch::default();
        let mut touched = false;
        let mut pruned: usize = 0;
        let mut upper = vec![BY_EXPIRY];
        upper.extend_from_slice(&before.0.to_be_bytes());
        for entry in self.messages.range(vec![BY_EXPIRY]..upper).take(limit) {
            let (key, value) = entry?;
            touched = true;
            if key.get(9) == Some(&LIVE_OFFER) {
                // The live-offer entry, if it still names the expired offer.
                let slot = key.get(9..).unwrap_or_default();
                if let Some(held) = self.messages.get(slot)? {
                    if held.get(8..) == Some(value.as_ref()) {
                        write.remove(slot);
                    }
                }
                write.remove(key);
                continue;
            }
            let (Some(kind), Ok(id)) = (
                key.get(9).and_then(|t| Kind::from_tag(*t)),
                read_id(key.get(10..).unwrap_or_default(), "expiry index"),
            ) else {
                return Err(Error::Corrupt {
                    what: "expiry index key",
                });
            };
            let expired = read_u64(key.get(1..).unwrap_or_default(), "expiry index time")?;
            write.remove(message_key(kind, &id));
            let author = value
                .get(..32)
                .and_then(|a| <[u8; 32]>::try_from(a).ok())
                .map(PublicKey);
            if let Some(author) = &author {
                write.remove(author_key(author, kind, &id));
            }
            // An offer's device set: its live-offer entry expires in turn
            // (stores written before name no device set and keep it).
            if let (Kind::Offer, Some(supplier), Ok(devices)) = (
                kind,
                &author,
                read_id(value.get(32..).unwrap_or_default(), "expiry index devices"),
            ) {
                let mut later = vec![BY_EXPIRY];
                later.extend_from_slice(&expired.saturating_add(OFFER_SLOT_KEPT_MS).to_be_bytes());
                later.extend_from_slice(&device_key(supplier, &devices));
                write.insert(later, id.as_bytes().to_vec());
            }
            write.remove(key);
            pruned += 1;
        }
        if touched {
            gate::apply_batch(&self.messages, write)?;
            gate::reclaim(pruned.saturating_mul(KEYS_PER_RECORD));
        }
        Ok(pruned)
    }

    /// The canonical bytes of every stored, unexpired message of `kind`.
    pub fn all_bytes(&self, kind: Kind, now: UnixMillis) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = self.page(&[kind], cursor.as_deref(), 500, now)?;
            out.extend(page.items.into_iter().map(|(_, bytes)| bytes));
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Every stored, unexpired message of `T`'s kind at `now`, decoded.
    pub fn all<T: rigmesh_protocol::Message>(
        &self,
        now: UnixMillis,
    ) -> Result<Vec<rigmesh_protocol::Signed<T>>> {
        self.all_bytes(T::KIND, now)?
            .iter()
            .map(|bytes| Ok(rigmesh_protocol::Signed::<T>::from_bytes(bytes)?))
            .collect()
    }

    /// Every stored, unexpired message of `T`'s kind by `author` at `now`
    /// (offers, bids, bindings and alerts: the kinds kept under a quota),
    /// read through the author index, so the cost is that author's
    /// messages, never the whole kind.
    pub fn by_author<T: rigmesh_protocol::Message>(
        &self,
        author: &PublicKey,
        now: UnixMillis,
    ) -> Result<Vec<rigmesh_protocol::Signed<T>>> {
        let prefix = author_prefix(author, T::KIND);
        let mut out = Vec::new();
        for entry in self.messages.scan_prefix(&prefix) {
            let (key, _) = entry?;
            let id = read_id(key.get(prefix.len()..).unwrap_or_default(), "author index")?;
            let Some(value) = self.messages.get(message_key(T::KIND, &id))? else {
                continue;
            };
            if read_u64(&value, "message expiry")? < now.0 {
                continue;
            }
            let bytes = value.get(8..).unwrap_or_default();
            out.push(rigmesh_protocol::Signed::<T>::from_bytes(bytes)?);
        }
        Ok(out)
    }

    /// The stored messages of `T`'s kind about `lease`, by id.
    pub fn about_lease<T: rigmesh_protocol::Message>(
        &self,
        lease: &Id,
    ) -> Result<Vec<rigmesh_protocol::Signed<T>>> {
        let bytes = self.lease_bytes(lease, T::KIND)?;
        self.lease_messages_read
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        bytes
            .iter()
            .map(|bytes| Ok(rigmesh_protocol::Signed::<T>::from_bytes(bytes)?))
            .collect()
    }

    /// The stored usage evidence of `T`'s kind (one of [`WINDOW_KINDS`])
    /// about `lease` whose window is in `first..=last` (`last` `None`:
    /// every window from `first`), in the order of their windows; read
    /// through the lease index without the lease's other windows.
    pub fn about_lease_windows<T: WindowEvidence>(
        &self,
        lease: &Id,
        first: u64,
        last: Option<u64>,
    ) -> Result<Vec<rigmesh_protocol::Signed<T>>> {
        let prefix = lease_prefix(lease, T::KIND);
        let mut start = prefix.clone();
        start.extend_from_slice(&first.to_be_bytes());
        let mut out = Vec::new();
        for entry in self.messages.range(start..) {
            let (key, _) = entry?;
            let Some(window) = key
                .strip_prefix(prefix.as_slice())
                .and_then(|rest| rest.get(..8))
                .and_then(|w| w.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                break;
            };
            if last.is_some_and(|last| window > last) {
                break;
            }
            let id = index_id(&key, "lease index")?;
            if let Some(value) = self.messages.get(message_key(T::KIND, &id))? {
                let bytes = value.get(8..).unwrap_or_default();
                out.push(rigmesh_protocol::Signed::<T>::from_bytes(bytes)?);
            }
        }
        self.lease_messages_read
            .fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }

    /// The stored certificates of `T` about `lease` (settlements).
    pub fn certificates_about_lease<T: rigmesh_protocol::Certifiable>(
        &self,
        lease: &Id,
    ) -> Result<Vec<rigmesh_protocol::Certificate<T>>> {
        self.lease_bytes(lease, T::CERTIFICATE)?
            .iter()
            .map(|bytes| Ok(rigmesh_protocol::Certificate::<T>::from_bytes(bytes)?))
            .collect()
    }

    fn lease_bytes(&self, lease: &Id, kind: Kind) -> Result<Vec<Vec<u8>>> {
        self.indexed_bytes(lease_prefix(lease, kind), kind, "lease index")
    }

    /// The canonical bytes of every stored deposit or certificate of
    /// `kind` (one of [`ACCOUNT_KINDS`]) that moves `account`'s money,
    /// read through the account index.
    pub fn about_account(&self, account: &PublicKey, kind: Kind) -> Result<Vec<Vec<u8>>> {
        self.indexed_bytes(account_prefix(account, kind), kind, "account index")
    }

    /// The messages of `kind` an index names under `prefix` (one byte,
    /// 32 bytes of lease or account, the kind's tag, then the id).
    fn indexed_bytes(
        &self,
        prefix: Vec<u8>,
        kind: Kind,
        what: &'static str,
    ) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for entry in self.messages.scan_prefix(prefix) {
            let (key, _) = entry?;
            let id = index_id(&key, what)?;
            if let Some(value) = self.messages.get(message_key(kind, &id))? {
                out.push(value.get(8..).unwrap_or_default().to_vec());
            }
        }
        Ok(out)
    }

    /// The canonical bytes of the stored deposits or certificates of
    /// `kind` (one of [`ACCOUNT_KINDS`]) that move `account`'s money, the
    /// most recently made first, read lazily through the account index:
    /// a reader that wants the latest few reads those only.
    pub fn about_account_latest<'a>(
        &'a self,
        account: &PublicKey,
        kind: Kind,
    ) -> impl Iterator<Item = Result<Vec<u8>>> + 'a {
        self.messages
            .scan_prefix(account_prefix(account, kind))
            .rev()
            .filter_map(move |entry| {
                let read = || -> Result<Option<Vec<u8>>> {
                    let (key, _) = entry?;
                    let id = index_id(&key, "account index")?;
                    Ok(self
                        .messages
                        .get(message_key(kind, &id))?
                        .map(|value| value.get(8..).unwrap_or_default().to_vec()))
                };
                read().transpose()
            })
    }

    /// How many deposits or certificates of `kind` the account index
    /// names under `account`. The index's keys are counted the first time
    /// an account and kind are asked about; the count is then kept, and
    /// every write or deletion of their entries changes it, so later
    /// calls read no key.
    pub fn count_about_account(&self, account: &PublicKey, kind: Kind) -> Result<usize> {
        if let Some(n) = self.account_counts().get(&(*account, kind)) {
            return Ok(*n);
        }
        // Counted while nothing writes, so no entry lands between the
        // count and its keeping.
        let _writing = self
            .lease_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = self.account_counts().get(&(*account, kind)) {
            return Ok(*n);
        }
        let n = self.count_account_keys(account, kind)?;
        let mut counts = self.account_counts();
        if counts.len() >= ACCOUNT_COUNTS_KEPT {
            counts.clear();
        }
        counts.insert((*account, kind), n);
        Ok(n)
    }

    /// The account index's entries of `kind` under `account`, counted
    /// key by key.
    fn count_account_keys(&self, account: &PublicKey, kind: Kind) -> Result<usize> {
        let mut n = 0;
        for key in self
            .messages
            .scan_prefix(account_prefix(account, kind))
            .keys()
        {
            key?;
            n += 1;
        }
        Ok(n)
    }

    fn account_counts(&self) -> std::sync::MutexGuard<'_, AccountCounts> {
        // Changed only by inserts, additions and a clear, none of which
        // panics half-way.
        self.account_counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether any of `accounts`' entries of `kind` are counted.
    fn counts_any(&self, accounts: &[PublicKey], kind: Kind) -> bool {
        let counts = self.account_counts();
        !counts.is_empty() && accounts.iter().any(|a| counts.contains_key(&(*a, kind)))
    }

    /// Changes the kept counts by the entries a write applied: one more
    /// for each of `changed` when it `added` them, one fewer when it
    /// removed them; accounts not counted are passed over. Called with
    /// `lease_writes` held, after the write applied.
    fn recount(&self, changed: &[(PublicKey, Kind)], added: bool) {
        if changed.is_empty() {
            return;
        }
        let mut counts = self.account_counts();
        for key in changed {
            if let Some(n) = counts.get_mut(key) {
                *n = if added {
                    n.saturating_add(1)
                } else {
                    n.saturating_sub(1)
                };
            }
        }
    }

    /// Every stored certificate of `T` (escrow, settlement, withdrawal).
    pub fn certificates<T: rigmesh_protocol::Certifiable>(
        &self,
        now: UnixMillis,
    ) -> Result<Vec<rigmesh_protocol::Certificate<T>>> {
        self.all_bytes(T::CERTIFICATE, now)?
            .iter()
            .map(|bytes| Ok(rigmesh_protocol::Certificate::<T>::from_bytes(bytes)?))
            .collect()
    }

    /// Records a ban (replacing an earlier one of the same peer).
    pub fn record_ban(&self, ban: &BanRecord) -> Result<()> {
        let mut value = ban.until.0.to_be_bytes().to_vec();
        value.extend_from_slice(ban.reason.as_bytes());
        self.bans.insert(ban.peer.as_slice(), value)?;
        Ok(())
    }

    /// Bans still in force at `now`.
    pub fn active_bans(&self, now: UnixMillis) -> Result<Vec<BanRecord>> {
        let mut out = Vec::new();
        for entry in self.bans.iter() {
            let (peer, value) = entry?;
            let until = UnixMillis(read_u64(&value, "ban")?);
            if until > now {
                out.push(BanRecord {
                    peer: peer.to_vec(),
                    until,
                    reason: String::from_utf8_lossy(value.get(8..).unwrap_or_default())
                        .into_owned(),
                });
            }
        }
        Ok(out)
    }

    /// Deletes up to `limit` bans that ended before `before`; returns how
    /// many. A peer is recorded once, however often it is banned, but every
    /// peer ever banned would otherwise stay, and peer ids cost an attacker
    /// nothing. A ban renewed while this runs is left alone (each deletion
    /// is a compare-and-swap of the value read).
    pub fn prune_bans(&self, before: UnixMillis, limit: usize) -> Result<usize> {
        let mut ended = Vec::new();
        for entry in self.bans.iter() {
            let (peer, value) = entry?;
            if UnixMillis(read_u64(&value, "ban")?) < before {
                ended.push((peer, value));
                if ended.len() >= limit {
                    break;
                }
            }
        }
        let mut pruned = 0;
        for (peer, value) in ended {
            if self
                .bans
                .compare_and_swap(&peer, Some(&value), None::<&[u8]>)?
                .is_ok()
            {
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// Writes offence records and bans in one step each, then flushes: a
    /// ban must survive a crash right after it. An offence record with no
    /// strikes and no bans is removed.
    pub fn save_offences(&self, offences: &[OffenceRecord], bans: &[BanRecord]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for o in offences {
            if o.strikes_milli == 0 && o.bans == 0 {
                batch.remove(o.offender.as_slice());
                continue;
            }
            let mut value = Vec::with_capacity(20);
            value.extend_from_slice(&o.strikes_milli.to_be_bytes());
            value.extend_from_slice(&o.updated.0.to_be_bytes());
            value.extend_from_slice(&o.bans.to_be_bytes());
            batch.insert(o.offender.as_slice(), value);
        }
        gate::apply_batch(&self.offences, batch)?;
        for ban in bans {
            self.record_ban(ban)?;
        }
        gate::flush(&self.db)?;
        Ok(())
    }

    /// Every offence record.
    pub fn offences(&self) -> Result<Vec<OffenceRecord>> {
        let mut out = Vec::new();
        for entry in self.offences.iter() {
            let (offender, value) = entry?;
            let bans: [u8; 4] = value
                .get(16..20)
                .and_then(|b| b.try_into().ok())
                .ok_or(Error::Corrupt { what: "offence" })?;
            out.push(OffenceRecord {
                offender: offender.to_vec(),
                strikes_milli: read_u64(&value, "offence")?,
                updated: UnixMillis(read_u64(value.get(8..).unwrap_or_default(), "offence")?),
                bans: u32::from_be_bytes(bans),
            });
        }
        Ok(out)
    }

    /// Keeps, durably, the debit `account` is about to send at `seq` (the
    /// bytes of the request that first asks for votes), replacing any
    /// earlier one: an account has at most one debit in flight, and one
    /// that gathers votes but no quorum must be completed before another
    /// is signed (specs/settlement.md 14.2).
    pub fn put_pending_debit(&self, account: &PublicKey, seq: u64, request: &[u8]) -> Result<()> {
        let mut value = seq.to_be_bytes().to_vec();
        value.extend_from_slice(request);
        self.debits.insert(account.as_bytes(), value)?;
        gate::flush(&self.db)?;
        Ok(())
    }

    /// The debit `account` sent last and has not seen certified, with its
    /// sequence number.
    pub fn pending_debit(&self, account: &PublicKey) -> Result<Option<(u64, Vec<u8>)>> {
        let Some(value) = self.debits.get(account.as_bytes())? else {
            return Ok(None);
        };
        let seq = read_u64(&value, "pending debit")?;
        Ok(Some((seq, value.get(8..).unwrap_or_default().to_vec())))
    }

    /// Forgets `account`'s pending debit at `seq` (certified, or known to
    /// hold no vote); a newer one is kept.
    pub fn clear_pending_debit(&self, account: &PublicKey, seq: u64) -> Result<()> {
        if let Some((held, _)) = self.pending_debit(account)? {
            if held == seq {
                self.debits.remove(account.as_bytes())?;
                gate::flush(&self.db)?;
            }
        }
        Ok(())
    }

    /// Keeps the bytes of the settlement request a coordinator voted for
    /// at `(lease, settlement_seq)`, so anyone can complete it (settlement.md
    /// 8.6).
    pub fn put_locked_request(
        &self,
        lease: &Id,
        settlement_seq: u64,
        request: &[u8],
    ) -> Result<()> {
        self.locked
            .insert(locked_key(lease, settlement_seq), request)?;
        Ok(())
    }

    /// The settlement request voted for at `(lease, settlement_seq)`.
    pub fn locked_request(&self, lease: &Id, settlement_seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .locked
            .get(locked_key(lease, settlement_seq))?
            .map(|v| v.to_vec()))
    }

    /// Forgets the requests voted for on `lease` below `settlement_seq`
    /// (their settlements are applied).
    pub fn forget_locked_requests(&self, lease: &Id, below: u64) -> Result<()> {
        for entry in self.locked.scan_prefix(lease.as_bytes()) {
            let (key, _) = entry?;
            let seq = read_u64(key.get(32..).unwrap_or_default(), "locked request key")?;
            if seq < below {
                self.locked.remove(key)?;
            }
        }
        Ok(())
    }

    /// Keeps the evidence of the windows a voted settlement request held
    /// for review, at `(lease, settlement_seq)`: what an operator reviews.
    pub fn put_case_evidence(
        &self,
        lease: &Id,
        settlement_seq: u64,
        evidence: &CaseEvidence,
    ) -> Result<()> {
        let bytes = crate::codec::encode("case evidence", evidence)?;
        self.evidence
            .insert(locked_key(lease, settlement_seq), bytes)?;
        Ok(())
    }

    /// The evidence kept for a case, if this node voted for its settlement.
    pub fn case_evidence(&self, lease: &Id, settlement_seq: u64) -> Result<Option<CaseEvidence>> {
        let Some(bytes) = self.evidence.get(locked_key(lease, settlement_seq))? else {
            return Ok(None);
        };
        Ok(Some(crate::codec::decode("case evidence", &bytes)?))
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<()> {
        gate::flush(&self.db)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(n: u8, seq: u64) -> MarketRecord {
        MarketRecord {
            kind: Kind::Offer,
            id: Id([n; 32]),
            bytes: vec![n; 10],
            offer: Some(OfferKey {
                supplier: PublicKey([1; 32]),
                fingerprint: Id([2; 32]),
                sequence: seq,
                expires_at: UnixMillis(1000),
            }),
            expires_at: None,
            lease: None,
            window: None,
            author: None,
            report: None,
            accounts: Vec::new(),
            made_at: None,
        }
    }

    #[test]
    fn a_newer_offer_replaces_an_older_one_and_never_the_reverse() {
        let store = MarketStore::temporary().unwrap();
        store.store(&[offer(1, 1)]).unwrap();
        store.store(&[offer(2, 2)]).unwrap();
        assert!(!store.contains(Kind::Offer, &Id([1; 32])).unwrap());
        assert!(store.contains(Kind::Offer, &Id([2; 32])).unwrap());
        store.store(&[offer(1, 1)]).unwrap();
        assert!(!store.contains(Kind::Offer, &Id([1; 32])).unwrap());
        assert_eq!(
            store
                .offer_sequence(&PublicKey([1; 32]), &Id([2; 32]))
                .unwrap(),
            Some(2)
        );
        assert_eq!(store.count(Kind::Offer), 1);
    }

    #[test]
    fn pages_walk_every_message_once_and_skip_expired_offers() {
        let store = MarketStore::temporary().unwrap();
        let certs: Vec<MarketRecord> = (0..25u8)
            .map(|n| MarketRecord {
                kind: Kind::EscrowCertificate,
                id: Id([n; 32]),
                bytes: vec![n],
                offer: None,
                expires_at: None,
                lease: Some(Id([7; 32])),
                window: None,
                author: None,
                report: None,
                accounts: Vec::new(),
                made_at: None,
            })
            .collect();
        store.store(&certs).unwrap();
        store.store(&[offer(9, 1)]).unwrap();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .page(
                    &[Kind::EscrowCertificate],
                    cursor.as_deref(),
                    10,
                    UnixMillis(0),
                )
                .unwrap();
            seen.extend(page.items.iter().map(|(_, b)| b[0]));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, (0..25u8).collect::<Vec<_>>());
        assert_eq!(
            store
                .page(&[Kind::Offer], None, 10, UnixMillis(999))
                .unwrap()
                .items
                .len(),
            1
        );
        assert!(store
            .page(&[Kind::Offer], None, 10, UnixMillis(1001))
            .unwrap()
            .items
            .is_empty());
    }

    #[test]
    fn pages_over_several_kinds_walk_each_once_in_kind_order() {
        let store = MarketStore::temporary().unwrap();
        let record = |kind: Kind, n: u8| MarketRecord {
            kind,
            id: Id([n; 32]),
            bytes: vec![n],
            offer: None,
            expires_at: None,
            lease: None,
            window: None,
            author: None,
            report: None,
            accounts: Vec::new(),
            made_at: None,
        };
        let mut batch: Vec<MarketRecord> = (0..7u8).map(|n| record(Kind::Deposit, n)).collect();
        batch.extend((10..17u8).map(|n| record(Kind::EscrowCertificate, n)));
        batch.extend((20..27u8).map(|n| record(Kind::UsageAck, n)));
        store.store(&batch).unwrap();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .page(
                    &[Kind::Deposit, Kind::EscrowCertificate],
                    cursor.as_deref(),
                    3,
                    UnixMillis(0),
                )
                .unwrap();
            assert!(page.items.len() <= 3);
            seen.extend(page.items.iter().map(|(_, b)| b[0]));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        // Escrow certificates (tag 7) before deposits (tag 15); no ack.
        let mut expected: Vec<u8> = (10..17u8).collect();
        expected.extend(0..7u8);
        assert_eq!(seen, expected);
    }

    #[test]
    fn expired_offers_bids_and_bindings_are_pruned_and_nothing_else() {
        let store = MarketStore::temporary().unwrap();
        let bid = |n: u8, expires: u64| MarketRecord {
            kind: Kind::Bid,
            id: Id([n; 32]),
            bytes: vec![n],
            offer: None,
            expires_at: Some(UnixMillis(expires)),
            lease: None,
            window: None,
            author: None,
            report: None,
            accounts: Vec::new(),
            made_at: None,
        };
        let cert = MarketRecord {
            kind: Kind::SettlementCertificate,
            id: Id([50; 32]),
            bytes: vec![50],
            offer: None,
            expires_at: None,
            lease: Some(Id([7; 32])),
            window: None,
            author: None,
            report: None,
            accounts: Vec::new(),
            made_at: None,
        };
        store
            .store(&[offer(1, 1), bid(2, 500), bid(3, 5_000), cert])
            .unwrap();
        assert_eq!(store.prune_expired(UnixMillis(400), 100).unwrap(), 0);
        // The offer expires at 1000, the first bid at 500.
        assert_eq!(store.prune_expired(UnixMillis(2_000), 1).unwrap(), 1);
        assert_eq!(store.prune_expired(UnixMillis(2_000), 100).unwrap(), 1);
        assert!(!store.contains(Kind::Offer, &Id([1; 32])).unwrap());
        assert!(!store.contains(Kind::Bid, &Id([2; 32])).unwrap());
        assert!(store.contains(Kind::Bid, &Id([3; 32])).unwrap());
        assert!(store
            .contains(Kind::SettlementCertificate, &Id([50; 32]))
            .unwrap());
        // The device set's sequence is remembered: the pruned offer, or an
        // older one, cannot come back.
        let sequence = || {
            store
                .offer_sequence(&PublicKey([1; 32]), &Id([2; 32]))
                .unwrap()
        };
        assert_eq!(sequence(), Some(1));
        // Until every older offer of the devices is expired too: then the
        // entry goes (no message with it).
        let due = 1_000 + OFFER_SLOT_KEPT_MS;
        assert_eq!(
            store.prune_expired(UnixMillis(due), 100).unwrap(),
            1,
            "the bid expiring at 5,000"
        );
        assert_eq!(sequence(), Some(1));
        assert_eq!(store.prune_expired(UnixMillis(due + 1), 100).unwrap(), 0);
        assert_eq!(sequence(), None);
        assert_eq!(store.prune_expired(UnixMillis(due + 1), 100).unwrap(), 0);
    }

    #[test]
    fn a_device_sets_live_offer_entry_outlives_its_offer_by_a_day_unless_a_newer_offer_takes_it() {
        let store = MarketStore::temporary().unwrap();
        let supplier = PublicKey([1; 32]);
        let (taken, left) = (Id([2; 32]), Id([4; 32]));
        let of_devices = |n: u8, sequence: u64, devices: Id, expires: u64| {
            let mut record = offer(n, sequence);
            if let Some(key) = record.offer.as_mut() {
                key.fingerprint = devices;
                key.expires_at = UnixMillis(expires);
            }
            record
        };
        store
            .store(&[
                of_devices(1, 5, taken, 1_000),
                of_devices(3, 5, left, 1_000),
            ])
            .unwrap();
        assert_eq!(store.prune_expired(UnixMillis(2_000), 100).unwrap(), 2);
        // Within the day an older sequence of either set is still refused.
        store
            .store(&[
                of_devices(6, 4, taken, 3 * OFFER_SLOT_KEPT_MS),
                of_devices(7, 4, left, 3 * OFFER_SLOT_KEPT_MS),
            ])
            .unwrap();
        assert_eq!(store.count(Kind::Offer), 0);
        // A newer offer takes the first set.
        store
            .store(&[of_devices(5, 6, taken, 3 * OFFER_SLOT_KEPT_MS)])
            .unwrap();
        let due = UnixMillis(1_000 + OFFER_SLOT_KEPT_MS + 1);
        assert_eq!(store.prune_expired(due, 100).unwrap(), 0);
        assert_eq!(
            store.offer_sequence(&supplier, &taken).unwrap(),
            Some(6),
            "the newer offer keeps the entry"
        );
        assert!(store.contains(Kind::Offer, &Id([5; 32])).unwrap());
        assert_eq!(store.offer_sequence(&supplier, &left).unwrap(), None);
        // The newer one expires in turn, and its entry a day later.
        let expired = UnixMillis(3 * OFFER_SLOT_KEPT_MS + 1);
        assert_eq!(store.prune_expired(expired, 100).unwrap(), 1);
        assert_eq!(store.offer_sequence(&supplier, &taken).unwrap(), Some(6));
        let gone = UnixMillis(expired.0 + OFFER_SLOT_KEPT_MS);
        assert_eq!(store.prune_expired(gone, 100).unwrap(), 0);
        assert_eq!(store.offer_sequence(&supplier, &taken).unwrap(), None);
    }

    /// The record of a message as the node writes it.
    fn record_of(message: &rigmesh_protocol::wire::WireMessage) -> MarketRecord {
        MarketRecord::of(message, message.id().unwrap(), message.to_bytes().unwrap())
    }

    #[test]
    fn an_authors_messages_count_until_replaced_or_pruned() {
        use rigmesh_protocol::wire::WireMessage;
        let store = MarketStore::temporary().unwrap();
        let t0 = UnixMillis::now();
        let base = rigmesh_protocol::samples::offer_at(t0).unwrap();
        let supplier = base.body.supplier;
        let key = rigmesh_protocol::samples::supplier();
        let offer = |device: u8, sequence: u64| {
            let mut body = base.body.clone();
            body.hardware_fingerprint = Id([device; 32]);
            body.sequence = sequence;
            WireMessage::Offer(rigmesh_protocol::Signed::sign(body, &key).unwrap())
        };
        let records: Vec<_> = (0..5).map(|d| record_of(&offer(d, 1))).collect();
        store.store(&records).unwrap();
        assert_eq!(store.author_count(Kind::Offer, &supplier, 100).unwrap(), 5);
        assert_eq!(
            store.author_count(Kind::Offer, &supplier, 3).unwrap(),
            3,
            "counted up to the cap"
        );
        assert_eq!(store.author_count(Kind::Bid, &supplier, 100).unwrap(), 0);
        assert_eq!(
            store
                .author_count(Kind::Offer, &PublicKey([9; 32]), 100)
                .unwrap(),
            0
        );
        // A newer offer of the same devices replaces the old one, in the
        // count and in the expiry index.
        store.store(&[record_of(&offer(0, 2))]).unwrap();
        assert_eq!(store.author_count(Kind::Offer, &supplier, 100).unwrap(), 5);
        assert_eq!(store.count(Kind::Offer), 5);
        // Read by author, the live offers are those a read of every offer
        // finds for that supplier: the replaced one is gone, the newer one
        // is there, and nobody else's are.
        let mut by_author: Vec<Id> = store
            .by_author::<rigmesh_protocol::Offer>(&supplier, t0)
            .unwrap()
            .iter()
            .map(|o| o.id().unwrap())
            .collect();
        let mut scanned: Vec<Id> = store
            .all::<rigmesh_protocol::Offer>(t0)
            .unwrap()
            .iter()
            .filter(|o| o.body.supplier == supplier)
            .map(|o| o.id().unwrap())
            .collect();
        by_author.sort();
        scanned.sort();
        assert_eq!(by_author, scanned);
        assert_eq!(by_author.len(), 5);
        assert!(by_author.contains(&offer(0, 2).id().unwrap()));
        assert!(store
            .by_author::<rigmesh_protocol::Offer>(&PublicKey([9; 32]), t0)
            .unwrap()
            .is_empty());
        let expiry = UnixMillis(base.body.expires_at.0 + 1);
        assert!(
            store
                .by_author::<rigmesh_protocol::Offer>(&supplier, expiry)
                .unwrap()
                .is_empty(),
            "expired offers are not read back before they are pruned"
        );
        // Once expired, all five go, and with them their count.
        let after = UnixMillis(base.body.expires_at.0 + 1);
        assert_eq!(store.prune_expired(after, 100).unwrap(), 5);
        assert_eq!(store.author_count(Kind::Offer, &supplier, 100).unwrap(), 0);
        assert_eq!(store.count(Kind::Offer), 0);
        assert_eq!(
            store.prune_expired(after, 100).unwrap(),
            0,
            "nothing left to prune"
        );
    }

    #[test]
    fn a_store_written_before_the_indexes_is_indexed_when_opened_and_alerts_age_out() {
        use rigmesh_protocol::wire::WireMessage;
        let dir = tempfile::tempdir().unwrap();
        let t0 = UnixMillis::now();
        let offer = WireMessage::Offer(rigmesh_protocol::samples::offer_at(t0).unwrap());
        let alert = WireMessage::Alert(rigmesh_protocol::samples::alert().unwrap());
        {
            // As an earlier version wrote them: the message keys only, an
            // alert that never expires.
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("market/messages").unwrap();
            for (message, expires) in [(&offer, expiry_of(&offer).unwrap().0), (&alert, u64::MAX)] {
                let mut value = expires.to_be_bytes().to_vec();
                value.extend_from_slice(&message.to_bytes().unwrap());
                tree.insert(message_key(message.kind(), &message.id().unwrap()), value)
                    .unwrap();
            }
            tree.insert(message_key(Kind::Bid, &Id([1; 32])), vec![0xFF; 12])
                .unwrap();
            gate::flush(&db).unwrap();
        }
        let store = MarketStore::open(dir.path()).unwrap();
        let supplier = quota_author(&offer).unwrap();
        let issuer = quota_author(&alert).unwrap();
        assert_eq!(store.author_count(Kind::Offer, &supplier, 10).unwrap(), 1);
        assert_eq!(store.author_count(Kind::Alert, &issuer, 10).unwrap(), 1);
        assert_eq!(
            store.count(Kind::Bid),
            0,
            "what no longer decodes is dropped"
        );
        // The alert goes a week after it was made, the offer when it says.
        let alert_expires = expiry_of(&alert).unwrap().0;
        let offer_expires = expiry_of(&offer).unwrap().0;
        assert_eq!(
            store
                .prune_expired(UnixMillis(alert_expires.min(offer_expires)), 10)
                .unwrap(),
            0
        );
        assert_eq!(
            store
                .prune_expired(UnixMillis(alert_expires.max(offer_expires) + 1), 10)
                .unwrap(),
            2
        );
        assert_eq!(store.count(Kind::Alert), 0);
        drop(store);
        // Reopened, it is not indexed twice.
        let store = MarketStore::open(dir.path()).unwrap();
        assert_eq!(store.author_count(Kind::Alert, &issuer, 10).unwrap(), 0);
    }

    /// A reputation report of `coordinator` (by its index in the sample
    /// set) about the sample supplier.
    fn report(
        coordinator: usize,
        role: rigmesh_protocol::Role,
        created_at: u64,
        score_bp: u16,
    ) -> rigmesh_protocol::wire::WireMessage {
        let key = &rigmesh_protocol::samples::coordinators()[coordinator];
        let mut body = rigmesh_protocol::samples::reputation_report().unwrap().body;
        body.coordinator = key.public();
        body.role = role;
        body.created_at = UnixMillis(created_at);
        body.score_bp = score_bp;
        rigmesh_protocol::wire::WireMessage::ReputationReport(
            rigmesh_protocol::Signed::sign(body, key).unwrap(),
        )
    }

    fn holds(store: &MarketStore, message: &rigmesh_protocol::wire::WireMessage) -> bool {
        store
            .contains(message.kind(), &message.id().unwrap())
            .unwrap()
    }

    #[test]
    fn a_newer_report_replaces_the_one_before_and_an_older_one_is_skipped() {
        use rigmesh_protocol::Role;
        let dir = tempfile::tempdir().unwrap();
        let store = MarketStore::open(dir.path()).unwrap();
        let first = report(0, Role::Supplier, 100_000, 9_000);
        store.store(&[record_of(&first)]).unwrap();
        let newer = report(0, Role::Supplier, 200_000, 8_000);
        store.store(&[record_of(&newer)]).unwrap();
        assert!(holds(&store, &newer));
        assert!(!holds(&store, &first), "the report it replaces is deleted");
        // A late copy of an older report (gossip, a replay) is not kept.
        let older = report(0, Role::Supplier, 150_000, 7_000);
        store.store(&[record_of(&older)]).unwrap();
        assert!(!holds(&store, &older));
        assert_eq!(store.count(Kind::ReputationReport), 1);
        // Another coordinator, or the same one about the other role, has a
        // place of its own.
        let other_member = report(1, Role::Supplier, 150_000, 7_000);
        let other_role = report(0, Role::Customer, 150_000, 7_000);
        store
            .store(&[record_of(&other_member), record_of(&other_role)])
            .unwrap();
        assert_eq!(store.count(Kind::ReputationReport), 3);
        // Within one batch, as if written one after the other.
        let (latest, between) = (
            report(0, Role::Supplier, 300_000, 6_000),
            report(0, Role::Supplier, 250_000, 5_000),
        );
        store
            .store(&[record_of(&latest), record_of(&between)])
            .unwrap();
        assert!(holds(&store, &latest) && !holds(&store, &between) && !holds(&store, &newer));
        assert_eq!(store.count(Kind::ReputationReport), 3);
        drop(store);
        // Reopened, the place is remembered.
        let store = MarketStore::open(dir.path()).unwrap();
        let late = report(0, Role::Supplier, 260_000, 4_000);
        store.store(&[record_of(&late)]).unwrap();
        assert!(holds(&store, &latest) && !holds(&store, &late));
        // Two reports made in the same millisecond: the lower id is kept,
        // whichever arrives first, as the order book decides.
        let (a, b) = (
            report(2, Role::Supplier, 400_000, 1_000),
            report(2, Role::Supplier, 400_000, 2_000),
        );
        let (low, high) = if a.id().unwrap() < b.id().unwrap() {
            (a, b)
        } else {
            (b, a)
        };
        store.store(&[record_of(&high)]).unwrap();
        store.store(&[record_of(&low)]).unwrap();
        store.store(&[record_of(&high)]).unwrap();
        assert!(holds(&store, &low) && !holds(&store, &high));
        assert_eq!(store.count(Kind::ReputationReport), 4);
    }

    #[test]
    fn an_accounts_deposits_and_certificates_are_read_through_its_index() {
        use rigmesh_protocol::{samples, wire::WireMessage};
        let store = MarketStore::temporary().unwrap();
        let (supplier, customer) = (samples::supplier().public(), samples::customer().public());
        let escrow = samples::escrow_certificate().unwrap();
        let lease = escrow.message.body.lease;
        let messages = [
            WireMessage::Deposit(samples::deposit().unwrap()),
            WireMessage::EscrowCertificate(escrow.clone()),
            WireMessage::SettlementCertificate(samples::settlement_certificate().unwrap()),
            WireMessage::ReleaseCertificate(samples::release_certificate().unwrap()),
            WireMessage::ResolutionCertificate(samples::resolution_certificate().unwrap()),
            WireMessage::WithdrawalCertificate(samples::withdrawal_certificate().unwrap()),
            report(0, rigmesh_protocol::Role::Supplier, 1_000, 9_000),
        ];
        let records: Vec<MarketRecord> = messages.iter().map(record_of).collect();
        store.store(&records).unwrap();
        let bytes = |m: &WireMessage| vec![m.to_bytes().unwrap()];
        let [deposit, escrow_c, settlement, release, resolution, withdrawal, _] = &messages;
        let of = |account, kind| store.about_account(account, kind).unwrap();
        assert_eq!(of(&customer, Kind::Deposit), bytes(deposit));
        assert_eq!(of(&customer, Kind::EscrowCertificate), bytes(escrow_c));
        assert_eq!(
            of(&customer, Kind::WithdrawalCertificate),
            bytes(withdrawal)
        );
        // What moves both parties' money is found under each.
        for account in [&supplier, &customer] {
            assert_eq!(of(account, Kind::SettlementCertificate), bytes(settlement));
            assert_eq!(of(account, Kind::ReleaseCertificate), bytes(release));
            assert_eq!(of(account, Kind::ResolutionCertificate), bytes(resolution));
        }
        assert!(of(&supplier, Kind::EscrowCertificate).is_empty());
        assert!(of(&supplier, Kind::Deposit).is_empty());
        for kind in ACCOUNT_KINDS {
            assert!(of(&PublicKey([9; 32]), kind).is_empty());
        }
        // An escrow certificate is found under its lease.
        assert_eq!(
            store
                .certificates_about_lease::<rigmesh_protocol::EscrowOrder>(&lease)
                .unwrap(),
            vec![escrow]
        );
        assert_eq!(store.messages_scanned(), 0, "nothing was scanned");
        store
            .all_bytes(Kind::EscrowCertificate, UnixMillis(0))
            .unwrap();
        assert_eq!(store.messages_scanned(), 1, "a scan is counted");
    }

    #[test]
    fn a_store_of_index_version_2_gets_the_account_index_and_one_report_per_place() {
        use rigmesh_protocol::{samples, wire::WireMessage, Role};
        let dir = tempfile::tempdir().unwrap();
        let escrow = WireMessage::EscrowCertificate(samples::escrow_certificate().unwrap());
        let settlement =
            WireMessage::SettlementCertificate(samples::settlement_certificate().unwrap());
        let (old, new, other) = (
            report(0, Role::Supplier, 1_000, 9_000),
            report(0, Role::Supplier, 2_000, 8_000),
            report(1, Role::Supplier, 1_000, 9_000),
        );
        {
            // As version 2 wrote them: no account index, escrow outside the
            // lease index, every report kept.
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("market/messages").unwrap();
            for message in [&escrow, &settlement, &old, &new, &other] {
                let mut value = u64::MAX.to_be_bytes().to_vec();
                value.extend_from_slice(&message.to_bytes().unwrap());
                tree.insert(message_key(message.kind(), &message.id().unwrap()), value)
                    .unwrap();
            }
            tree.insert(INDEX_VERSION_KEY, 2u64.to_be_bytes().to_vec())
                .unwrap();
            gate::flush(&db).unwrap();
        }
        let store = MarketStore::open(dir.path()).unwrap();
        let customer = samples::customer().public();
        assert_eq!(
            store
                .about_account(&customer, Kind::EscrowCertificate)
                .unwrap(),
            vec![escrow.to_bytes().unwrap()]
        );
        assert_eq!(
            store
                .about_account(&customer, Kind::SettlementCertificate)
                .unwrap(),
            vec![settlement.to_bytes().unwrap()]
        );
        let WireMessage::EscrowCertificate(c) = &escrow else {
            unreachable!()
        };
        assert_eq!(
            store
                .certificates_about_lease::<rigmesh_protocol::EscrowOrder>(&c.message.body.lease)
                .unwrap()
                .len(),
            1
        );
        assert!(holds(&store, &new) && holds(&store, &other) && !holds(&store, &old));
        // The kept report holds its place against an older one.
        store.store(&[record_of(&old)]).unwrap();
        assert!(!holds(&store, &old));
        drop(store);
        let store = MarketStore::open(dir.path()).unwrap();
        assert_eq!(store.count(Kind::ReputationReport), 2);
        assert_eq!(
            store
                .about_account(&customer, Kind::EscrowCertificate)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn bans_survive_reopening_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = MarketStore::open(dir.path()).unwrap();
            store
                .record_ban(&BanRecord {
                    peer: vec![7; 38],
                    until: UnixMillis(500),
                    reason: "spam".into(),
                })
                .unwrap();
            store.flush().unwrap();
        }
        let store = MarketStore::open(dir.path()).unwrap();
        let bans = store.active_bans(UnixMillis(100)).unwrap();
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].reason, "spam");
        assert!(store.active_bans(UnixMillis(600)).unwrap().is_empty());
    }

    #[test]
    fn bans_that_ended_are_deleted_and_those_in_force_stay() {
        let store = MarketStore::temporary().unwrap();
        for (peer, until) in [(1u8, 500u64), (2, 700), (3, 1_500)] {
            store
                .record_ban(&BanRecord {
                    peer: vec![peer; 38],
                    until: UnixMillis(until),
                    reason: "spam".into(),
                })
                .unwrap();
        }
        // At most `limit` a round.
        assert_eq!(store.prune_bans(UnixMillis(1_000), 1).unwrap(), 1);
        assert_eq!(store.prune_bans(UnixMillis(1_000), 10).unwrap(), 1);
        assert_eq!(store.prune_bans(UnixMillis(1_000), 10).unwrap(), 0);
        let left = store.active_bans(UnixMillis(0)).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].peer, vec![3; 38]);
        assert_eq!(left[0].until, UnixMillis(1_500));
    }

    #[test]
    fn offences_survive_reopening_and_empty_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let record = OffenceRecord {
            offender: vec![4, 127, 0, 0, 1],
            strikes_milli: 2500,
            updated: UnixMillis(42),
            bans: 2,
        };
        {
            let store = MarketStore::open(dir.path()).unwrap();
            let ban = BanRecord {
                peer: record.offender.clone(),
                until: UnixMillis(900),
                reason: "flood".into(),
            };
            store
                .save_offences(std::slice::from_ref(&record), &[ban])
                .unwrap();
        }
        let store = MarketStore::open(dir.path()).unwrap();
        assert_eq!(store.offences().unwrap(), vec![record.clone()]);
        assert_eq!(store.active_bans(UnixMillis(100)).unwrap().len(), 1);
        let forgiven = OffenceRecord {
            strikes_milli: 0,
            bans: 0,
            ..record
        };
        store.save_offences(&[forgiven], &[]).unwrap();
        assert!(store.offences().unwrap().is_empty());
    }

    #[test]
    fn the_messages_of_a_lease_are_found_by_lease_and_paging_skips_the_index() {
        use rigmesh_protocol::wire::WireMessage;
        let store = MarketStore::temporary().unwrap();
        let ack = rigmesh_protocol::samples::usage_ack().unwrap();
        let dispute = rigmesh_protocol::samples::usage_dispute().unwrap();
        let lease = ack.body.lease;
        store
            .store(&[
                record_of(&WireMessage::UsageAck(ack.clone())),
                record_of(&WireMessage::UsageDispute(dispute.clone())),
            ])
            .unwrap();
        assert_eq!(
            store
                .about_lease::<rigmesh_protocol::UsageAck>(&lease)
                .unwrap(),
            vec![ack.clone()]
        );
        assert_eq!(
            store
                .about_lease::<rigmesh_protocol::UsageDispute>(&lease)
                .unwrap(),
            vec![dispute]
        );
        assert!(store
            .about_lease::<rigmesh_protocol::UsageAck>(&Id([9; 32]))
            .unwrap()
            .is_empty());
        let page = store
            .page(&[Kind::UsageAck], None, 10, UnixMillis(0))
            .unwrap();
        assert_eq!(page.items, vec![(Kind::UsageAck, ack.to_bytes().unwrap())]);
    }

    /// Acks of `lease` at each of `seqs`, signed by the sample customer.
    fn acks_at(
        lease: Id,
        seqs: &[u64],
    ) -> Vec<rigmesh_protocol::Signed<rigmesh_protocol::UsageAck>> {
        let ack = rigmesh_protocol::samples::usage_ack().unwrap();
        seqs.iter()
            .map(|&seq| {
                let body = rigmesh_protocol::UsageAck {
                    lease,
                    seq,
                    ..ack.body.clone()
                };
                rigmesh_protocol::Signed::sign(body, &rigmesh_protocol::samples::customer())
                    .unwrap()
            })
            .collect()
    }

    fn seqs(acks: &[rigmesh_protocol::Signed<rigmesh_protocol::UsageAck>]) -> Vec<u64> {
        acks.iter().map(|a| a.body.seq).collect()
    }

    /// Window numbers that cross byte boundaries of the key, stored out
    /// of order, for one lease and beside another's.
    const WINDOWS: [u64; 8] = [70_000, 3, 256, 0, 255, 4, 5, 1 << 40];

    fn store_acks(store: &MarketStore, lease: Id, other: Id) {
        use rigmesh_protocol::wire::WireMessage;
        let records: Vec<MarketRecord> = acks_at(lease, &WINDOWS)
            .into_iter()
            .chain(acks_at(other, &[4, 256]))
            .map(|a| record_of(&WireMessage::UsageAck(a)))
            .collect();
        store.store(&records).unwrap();
    }

    fn assert_window_reads(store: &MarketStore, lease: Id, other: Id) {
        use rigmesh_protocol::{UsageAck, UsageDispute};
        let read = |first, last| {
            seqs(
                &store
                    .about_lease_windows::<UsageAck>(&lease, first, last)
                    .unwrap(),
            )
        };
        let before = store.lease_messages_read();
        assert_eq!(read(3, Some(5)), vec![3, 4, 5]);
        assert_eq!(
            store.lease_messages_read() - before,
            3,
            "only the range is read"
        );
        assert_eq!(read(4, Some(4)), vec![4]);
        assert_eq!(read(6, Some(254)), Vec::<u64>::new());
        assert_eq!(read(255, None), vec![255, 256, 70_000, 1 << 40]);
        assert_eq!(read(0, None), vec![0, 3, 4, 5, 255, 256, 70_000, 1 << 40]);
        assert_eq!(read(u64::MAX, None), Vec::<u64>::new());
        assert_eq!(
            seqs(
                &store
                    .about_lease_windows::<UsageAck>(&other, 0, None)
                    .unwrap()
            ),
            vec![4, 256]
        );
        assert!(store
            .about_lease_windows::<UsageDispute>(&lease, 0, None)
            .unwrap()
            .is_empty());
        // The whole lease still reads through the same entries.
        let mut all = seqs(&store.about_lease::<UsageAck>(&lease).unwrap());
        all.sort_unstable();
        assert_eq!(all, vec![0, 3, 4, 5, 255, 256, 70_000, 1 << 40]);
        store.check_lease_index().unwrap();
    }

    #[test]
    fn deposits_and_certificates_stay_listed_unapplied_until_taken_off_across_a_reopen() {
        use rigmesh_protocol::{samples, wire::WireMessage};
        let dir = tempfile::tempdir().unwrap();
        let store = MarketStore::open(dir.path()).unwrap();
        let deposit = WireMessage::Deposit(samples::deposit().unwrap());
        let escrow = WireMessage::EscrowCertificate(samples::escrow_certificate().unwrap());
        let offer = WireMessage::Offer(samples::offer().unwrap());
        // Not listed until asked.
        store.store(&[record_of(&deposit)]).unwrap();
        assert_eq!(store.unapplied(None, 10).unwrap(), []);
        store.keep_unapplied();
        store
            .store(&[record_of(&offer), record_of(&escrow), record_of(&deposit)])
            .unwrap();
        let ids = |kinds: &[&WireMessage]| -> Vec<(Kind, Id)> {
            let mut ids: Vec<_> = kinds.iter().map(|m| (m.kind(), m.id().unwrap())).collect();
            ids.sort_by_key(|(kind, id)| unapplied_key(*kind, id));
            ids
        };
        // Offers move no money: not listed. The list reads in pages.
        let listed = store.unapplied(None, 10).unwrap();
        assert_eq!(listed, ids(&[&escrow, &deposit]));
        assert_eq!(store.unapplied(None, 1).unwrap(), listed[..1]);
        assert_eq!(store.unapplied(Some(listed[0]), 10).unwrap(), listed[1..]);
        assert_eq!(store.unapplied(Some(listed[1]), 10).unwrap(), []);
        // Taken off one by one; the other is still listed once the store
        // is opened again, and the messages are where they were.
        store.applied(listed[0].0, &listed[0].1).unwrap();
        store.flush().unwrap();
        drop(store);
        let store = MarketStore::open(dir.path()).unwrap();
        assert_eq!(store.unapplied(None, 10).unwrap(), listed[1..]);
        assert_eq!(store.count(Kind::Deposit), 1);
        assert_eq!(store.count(Kind::EscrowCertificate), 1);
        store.check_lease_index().unwrap();
    }

    #[test]
    fn usage_evidence_of_a_range_of_windows_is_read_without_the_rest_of_the_lease() {
        let store = MarketStore::temporary().unwrap();
        let (lease, other) = (Id([1; 32]), Id([2; 32]));
        store_acks(&store, lease, other);
        assert_window_reads(&store, lease, other);
    }

    /// An account's receipts are counted once; later writes (repeats
    /// in one batch and across batches counted once) and another handle
    /// of the same store keep the count, and it stays what the index
    /// holds.
    #[test]
    fn an_accounts_receipts_are_counted_once_and_kept_by_every_write() {
        use rigmesh_protocol::{samples, wire::WireMessage};
        let store = MarketStore::temporary().unwrap();
        let deposit = |n: u64| {
            let mut body = samples::deposit().unwrap().body;
            body.created_at = samples::T0.plus_ms(n);
            body.reference = format!("payment {n}");
            record_of(&WireMessage::Deposit(
                rigmesh_protocol::Signed::sign(body, &samples::admin()).unwrap(),
            ))
        };
        let customer = samples::customer().public();
        let count = |store: &MarketStore| store.count_about_account(&customer, Kind::Deposit);
        store.store(&[deposit(1), deposit(2)]).unwrap();
        assert_eq!(count(&store).unwrap(), 2);
        // Counted now: a repeat in the batch, one already stored, and
        // two new ones.
        store
            .store(&[deposit(3), deposit(3), deposit(1), deposit(4)])
            .unwrap();
        assert_eq!(count(&store).unwrap(), 4);
        let other = store.clone();
        other.store(&[deposit(5), deposit(2)]).unwrap();
        assert_eq!(count(&store).unwrap(), 5);
        assert_eq!(
            count(&store).unwrap(),
            store.count_account_keys(&customer, Kind::Deposit).unwrap()
        );
        // Another account and kind: nothing of them, counted as such.
        assert_eq!(
            store
                .count_about_account(&customer, Kind::WithdrawalCertificate)
                .unwrap(),
            0
        );
        assert_eq!(
            store
                .count_about_account(&samples::supplier().public(), Kind::Deposit)
                .unwrap(),
            0
        );
        // Forgotten beyond what is kept, counted again when asked.
        store.account_counts().clear();
        assert_eq!(count(&store).unwrap(), 5);
    }

    #[test]
    fn a_store_of_index_version_4_gets_the_times_in_its_account_index() {
        use rigmesh_protocol::{samples, wire::WireMessage};
        let dir = tempfile::tempdir().unwrap();
        // Made at T0 + 5 s, 1 s, 9 s and 3 s.
        let deposits: Vec<WireMessage> = [5_000u64, 1_000, 9_000, 3_000]
            .iter()
            .map(|&t| {
                let mut body = samples::deposit().unwrap().body;
                body.created_at = samples::T0.plus_ms(t);
                body.reference = format!("payment {t}");
                WireMessage::Deposit(
                    rigmesh_protocol::Signed::sign(body, &samples::admin()).unwrap(),
                )
            })
            .collect();
        let customer = samples::customer().public();
        {
            // As version 4 wrote them: the account's prefix, then the id.
            let store = MarketStore::open(dir.path()).unwrap();
            let records: Vec<MarketRecord> = deposits.iter().map(record_of).collect();
            store.store(&records).unwrap();
            let mut write = sled::Batch::default();
            for entry in store.messages.scan_prefix([BY_ACCOUNT]) {
                let (key, _) = entry.unwrap();
                let mut old = key[..34].to_vec();
                old.extend_from_slice(&key[key.len() - 32..]);
                write.remove(key);
                write.insert(old, Vec::new());
            }
            write.insert(&INDEX_VERSION_KEY, 4u64.to_be_bytes().to_vec());
            gate::apply_batch(&store.messages, write).unwrap();
            store.flush().unwrap();
        }
        let store = MarketStore::open(dir.path()).unwrap();
        let latest: Vec<Vec<u8>> = store
            .about_account_latest(&customer, Kind::Deposit)
            .collect::<Result<_>>()
            .unwrap();
        let expected: Vec<Vec<u8>> = [2, 0, 3, 1]
            .iter()
            .map(|&i: &usize| deposits[i].to_bytes().unwrap())
            .collect();
        assert_eq!(latest, expected, "the most recently made first");
        assert_eq!(
            store.count_about_account(&customer, Kind::Deposit).unwrap(),
            4
        );
        assert_eq!(
            store.about_account(&customer, Kind::Deposit).unwrap().len(),
            4
        );
        for entry in store.messages.scan_prefix([BY_ACCOUNT]) {
            assert_eq!(
                entry.unwrap().0.len(),
                ACCOUNT_KEY_LEN,
                "every entry rewritten"
            );
        }
    }

    #[test]
    fn a_store_of_index_version_3_gets_the_windows_in_its_lease_index() {
        let dir = tempfile::tempdir().unwrap();
        let (lease, other) = (Id([1; 32]), Id([2; 32]));
        {
            // As version 3 wrote them: the lease's prefix, then the id.
            let store = MarketStore::open(dir.path()).unwrap();
            store_acks(&store, lease, other);
            let mut write = sled::Batch::default();
            for entry in store.messages.scan_prefix([BY_LEASE]) {
                let (key, _) = entry.unwrap();
                let mut old = key[..34].to_vec();
                old.extend_from_slice(&key[key.len() - 32..]);
                write.remove(key);
                write.insert(old, Vec::new());
            }
            write.insert(&INDEX_VERSION_KEY, 3u64.to_be_bytes().to_vec());
            gate::apply_batch(&store.messages, write).unwrap();
            assert!(store.check_lease_index().is_err());
            store.flush().unwrap();
        }
        let store = MarketStore::open(dir.path()).unwrap();
        assert_window_reads(&store, lease, other);
        assert_eq!(
            store
                .messages
                .get(INDEX_VERSION_KEY)
                .unwrap()
                .unwrap()
                .to_vec(),
            INDEX_VERSION.to_be_bytes().to_vec()
        );
    }
}
