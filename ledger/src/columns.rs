//! Typed columns: every kind of stored value names its tree, its key type
//! and its value type here, once. The rest of the crate reads and writes
//! through [`TypedStore`] and [`Batch::put_in`], so no caller builds a key
//! or a value by hand.
//!
//! | column | tree | key | value |
//! |---|---|---|---|
//! | [`SchemaVersions`], [`JournalHeads`], [`AuditHeads`], [`OutboxHeads`], [`ComparedHeads`] | `ledger/meta` | a fixed [`Slot`] | the singleton |
//! | [`Offers`] | `ledger/offers` | offer id | [`OfferRecord`] |
//! | [`LiveOffers`] | `ledger/offers_by_device` | (supplier, hardware fingerprint) | [`LiveOffer`] |
//! | [`OfferIndex`] | `ledger/offer_index` | (GPU model, price, offer id) | [`OfferSummary`] |
//! | [`Bids`] | `ledger/bids` | bid id | signed bytes |
//! | [`Leases`] | `ledger/leases` | lease id | signed agreement bytes |
//! | [`Attestations`] | `ledger/attestations` | (lease, seq) | signed bytes |
//! | [`Certificates`] | `ledger/certificates` | (kind, subject id) | certificate bytes |
//! | [`Balances`] | `ledger/accounts` | [`Account`] | balance |
//! | [`Journal`] | `ledger/journal` | journal sequence | [`JournalEntry`] |
//! | [`JournalIds`] | `ledger/journal_ids` | entry id | journal sequence |
//! | [`LeaseBooks`] | `ledger/lease_books` | lease id | [`LeaseBook`] |
//! | [`OpenByCustomer`] | `ledger/open_by_customer` | (customer, lease) | escrow order id |
//! | [`OpenBySupplier`] | `ledger/open_by_supplier` | (supplier, lease) | escrow order id |
//! | [`Audit`] | `ledger/audit` | audit sequence | [`SealedAudit`] |
//! | [`Alerts`] | `ledger/alerts` | (created at, alert id) | signed bytes |
//! | [`Outbox`] | `ledger/outbox` | queue sequence | [`Notification`] |
//! | [`PeerScores`] | `ledger/peer_scores` | peer id bytes | [`PeerScore`] |
//! | [`Rollups`] | `ledger/rollups` | (account, hour) | [`Rollup`] |
//! | [`DebitSeqs`] | `ledger/debit_seqs` | account | next debit sequence |
//! | [`DebitLocks`] | `ledger/debit_locks` | (account, seq) | subject voted for |
//! | [`DebitsApplied`] | `ledger/debits_applied` | (account, seq) | subject applied |
//! | [`SettlementLocks`] | `ledger/settlement_locks` | (lease, settlement seq) | subject voted for |
//! | [`SettlementHeads`] | `ledger/settlement_heads` | lease | last settled attestation id |
//! | [`ClosedLeases`] | `ledger/closed_leases` | (closed at, lease) | final settlement seq |
//! | [`AppliedSubjects`] | `ledger/applied` | certificate subject | [`AppliedRecord`] |
//! | [`PendingCertificates`] | `ledger/pending` | (kind, subject) | [`PendingSince`] |
//! | [`VoteEvidence`] | `ledger/vote_evidence` | settlement request id | [`WindowCounts`] |
//! | [`ReputationEvidence`] | `ledger/reputation` | (account, side) | [`Evidence`] |
//! | [`DepositReferences`] | `ledger/deposit_references` | hash of (admin, reference) | deposit id |
//! | [`Held`] | `ledger/held` | (kind, subject) | [`HeldMessage`] |
//! | [`HeldDebits`] | `ledger/held_debits` | (account, seq) | withdrawal id held |
//! | [`KnownDestinations`] | `ledger/destinations` | (account, hash of destination) | withdrawal id |
//! | [`DisputeCases`] | `ledger/dispute_cases` | (lease, settlement seq) | [`DisputeCase`] |
//! | [`OpenCases`] | `ledger/open_cases` | (lease, settlement seq) | settlement request id |
//! | [`ResolutionLocks`] | `ledger/resolution_locks` | (lease, settlement seq) | resolution voted for |
//! | [`RefutedDisputes`] | `ledger/refuted_disputes` | settlement request id | disputes a rule decided against the customer |
//! | [`DisputeOutcomes`] | `ledger/dispute_outcomes` | (account, side) | [`DisputeRecord`] |

use std::marker::PhantomData;
use std::ops::Bound;

use rigmesh_protocol::{Credits, Id, PublicKey, UnixMillis};

use crate::accounts::{Account, JournalEntry};
use crate::audit::{AuditHead, SealedAudit};
use crate::books::{ComparedHead, JournalHead, LeaseBook};
use crate::certified::{AppliedRecord, PendingSince};
use crate::codec::{Record, StoredMessage};
use crate::disputes::{DisputeCase, DisputeRecord};
use crate::error::{Error, Result};
use crate::keys::{Key, KeyPrefix, KeyReader, ShortBytes};
use crate::messages::CertificateKind;
use crate::notices::{Notification, OutboxHead, PeerScore, Rollup};
use crate::offers::{LiveOffer, OfferRecord, OfferSummary};
use crate::reputation::{Evidence, WindowCounts};
use crate::review::HeldMessage;
use crate::schema::SchemaVersion;
use crate::store::{Batch, Direction, KeyRange, RawScan, Store, TreeName};

/// A stored type: its tree, key and value.
pub trait Column {
    /// The tree it lives in.
    const TREE: TreeName;
    /// Its key.
    type Key: Key;
    /// Its value.
    type Value: Record;
}

/// The key of a singleton in the meta tree: one fixed byte.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot<const TAG: u8>;

impl<const TAG: u8> Key for Slot<TAG> {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.push(TAG);
    }
    fn read_key(input: &mut KeyReader<'_>) -> Result<Self> {
        match u8::read_key(input)? {
            tag if tag == TAG => Ok(Slot),
            tag => Err(Error::corrupt("meta key", format!("{tag}, expected {TAG}"))),
        }
    }
}

macro_rules! column {
    ($(#[$doc:meta])* $name:ident, $tree:literal, $key:ty, $value:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl Column for $name {
            const TREE: TreeName = $tree;
            type Key = $key;
            type Value = $value;
        }
    };
}

column!(
    /// The schema version of the whole ledger.
    SchemaVersions, "ledger/meta", Slot<0>, SchemaVersion
);
column!(
    /// The next journal sequence.
    JournalHeads, "ledger/meta", Slot<1>, JournalHead
);
column!(
    /// The end of the audit chain.
    AuditHeads, "ledger/meta", Slot<2>, AuditHead
);
column!(
    /// The outbox's next sequence and length.
    OutboxHeads, "ledger/meta", Slot<3>, OutboxHead
);
column!(
    /// How far the comparison of the journal with the other coordinators'
    /// has come.
    ComparedHeads, "ledger/meta", Slot<4>, ComparedHead
);
column!(
    /// Offers by id.
    Offers, "ledger/offers", Id, OfferRecord
);
column!(
    /// The live offer of each supplier's device set.
    LiveOffers, "ledger/offers_by_device", (PublicKey, Id), LiveOffer
);
column!(
    /// Offers by GPU model, then price (ascending), then id: "the cheapest
    /// offers of model X" is a prefix scan in key order.
    OfferIndex, "ledger/offer_index", (ShortBytes, Credits, Id), OfferSummary
);
column!(
    /// Bids by id.
    Bids, "ledger/bids", Id, StoredMessage
);
column!(
    /// Lease agreements by lease id.
    Leases, "ledger/leases", Id, StoredMessage
);
column!(
    /// Usage attestations by lease, then sequence.
    Attestations, "ledger/attestations", (Id, u64), StoredMessage
);
column!(
    /// Certificates by kind, then subject.
    Certificates, "ledger/certificates", (CertificateKind, Id), StoredMessage
);
column!(
    /// Account balances.
    Balances, "ledger/accounts", Account, Credits
);
column!(
    /// The journal, in posting order.
    Journal, "ledger/journal", u64, JournalEntry
);
column!(
    /// Journal entries by id, so an entry is posted at most once.
    JournalIds, "ledger/journal_ids", Id, u64
);
column!(
    /// Each lease's escrow and metering state.
    LeaseBooks, "ledger/lease_books", Id, LeaseBook
);
column!(
    /// The leases whose book is open (funded, not finally settled), by
    /// customer: written with the book, in the same batch.
    OpenByCustomer, "ledger/open_by_customer", (PublicKey, Id), Id
);
column!(
    /// The leases whose book is open, by supplier: written with the book,
    /// in the same batch.
    OpenBySupplier, "ledger/open_by_supplier", (PublicKey, Id), Id
);
column!(
    /// The audit chain.
    Audit, "ledger/audit", u64, SealedAudit
);
column!(
    /// Alerts by time, then id.
    Alerts, "ledger/alerts", (UnixMillis, Id), StoredMessage
);
column!(
    /// Notifications not yet delivered, in queue order.
    Outbox, "ledger/outbox", u64, Notification
);
column!(
    /// Scores and bans of peers, by peer id bytes.
    PeerScores, "ledger/peer_scores", ShortBytes, PeerScore
);
column!(
    /// Hourly usage and spend per account.
    Rollups, "ledger/rollups", (PublicKey, u64), Rollup
);

column!(
    /// Each account's next debit sequence number.
    DebitSeqs, "ledger/debit_seqs", PublicKey, u64
);
column!(
    /// The debit this coordinator voted for at each (account, seq).
    DebitLocks, "ledger/debit_locks", (PublicKey, u64), Id
);
column!(
    /// The debit applied at each (account, seq).
    DebitsApplied, "ledger/debits_applied", (PublicKey, u64), Id
);
column!(
    /// The settlement request this coordinator voted for at each (lease, k).
    SettlementLocks, "ledger/settlement_locks", (Id, u64), Id
);
column!(
    /// The last settled attestation of each lease.
    SettlementHeads, "ledger/settlement_heads", Id, Id
);
column!(
    /// Leases finally settled here whose vote locks and vote evidence are
    /// still kept, by when they closed: what
    /// [`crate::Ledger::compact_closed_leases`] takes away after a grace.
    ClosedLeases, "ledger/closed_leases", (UnixMillis, Id), u64
);
column!(
    /// Subjects of the certificates and deposits applied.
    AppliedSubjects, "ledger/applied", Id, AppliedRecord
);
column!(
    /// Certificates held until what they need is applied.
    PendingCertificates, "ledger/pending", (CertificateKind, Id), PendingSince
);

column!(
    /// The deposit that took each `(admin, reference)`, held or applied.
    DepositReferences, "ledger/deposit_references", Id, Id
);
column!(
    /// Deposits and withdrawals held for an admin's decision.
    Held, "ledger/held", (CertificateKind, Id), HeldMessage
);
column!(
    /// The withdrawal held for review at each (account, seq).
    HeldDebits, "ledger/held_debits", (PublicKey, u64), Id
);
column!(
    /// Destinations each account has a withdrawal to applied.
    KnownDestinations, "ledger/destinations", (PublicKey, Id), Id
);

column!(
    /// Amounts settlements held for review, per case.
    DisputeCases, "ledger/dispute_cases", (Id, u64), DisputeCase
);
column!(
    /// The dispute cases not resolved yet: written with the case, in the
    /// same batch, and removed with its resolution.
    OpenCases, "ledger/open_cases", (Id, u64), Id
);
column!(
    /// The resolution a coordinator voted for, per case.
    ResolutionLocks, "ledger/resolution_locks", (Id, u64), Id
);
column!(
    /// Disputes of a voted settlement request that a rule decided against
    /// the customer.
    RefutedDisputes, "ledger/refuted_disputes", Id, u64
);
column!(
    /// Disputes lost per account and side (decayed like reputation).
    DisputeOutcomes, "ledger/dispute_outcomes", (PublicKey, u8), DisputeRecord
);

column!(
    /// What a coordinator saw of each settlement request it voted for.
    VoteEvidence, "ledger/vote_evidence", Id, WindowCounts
);
column!(
    /// Decayed reputation evidence per account and side (1 supplier, 2
    /// customer).
    ReputationEvidence, "ledger/reputation", (PublicKey, u8), Evidence
);

impl Record for Credits {
    const WHAT: &'static str = "balance";
}

impl Record for u64 {
    const WHAT: &'static str = "sequence";
}

impl Record for JournalEntry {
    const WHAT: &'static str = "journal entry";
}

/// Typed reads over any [`Store`].
pub trait TypedStore: Store {
    /// The value under `key`.
    fn get_in<C: Column>(&self, key: &C::Key) -> Result<Option<C::Value>> {
        match self.get(C::TREE, &key.to_key())? {
            Some(bytes) => Ok(Some(C::Value::from_record(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Rows of `C` between two keys.
    fn rows_in<C: Column>(
        &self,
        start: Bound<&C::Key>,
        end: Bound<&C::Key>,
        direction: Direction,
    ) -> Rows<'_, C> {
        let encode = |b: Bound<&C::Key>| match b {
            Bound::Included(k) => Bound::Included(k.to_key()),
            Bound::Excluded(k) => Bound::Excluded(k.to_key()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let range = KeyRange {
            start: encode(start),
            end: encode(end),
        };
        Rows::new(self.scan(C::TREE, range, direction))
    }

    /// Rows of `C` whose key starts with `prefix`.
    fn rows_with<C: Column, P: Key>(&self, prefix: &P, direction: Direction) -> Rows<'_, C>
    where
        C::Key: KeyPrefix<P>,
    {
        Rows::new(self.scan(C::TREE, KeyRange::prefix(&prefix.to_key()), direction))
    }

    /// Every row of `C`.
    fn rows<C: Column>(&self, direction: Direction) -> Rows<'_, C> {
        Rows::new(self.scan(C::TREE, KeyRange::all(), direction))
    }
}

impl<S: Store + ?Sized> TypedStore for S {}

/// Decoded rows of a column, in key order.
pub struct Rows<'a, C: Column> {
    raw: RawScan<'a>,
    column: PhantomData<C>,
}

impl<'a, C: Column> Rows<'a, C> {
    fn new(raw: RawScan<'a>) -> Self {
        Rows {
            raw,
            column: PhantomData,
        }
    }
}

impl<C: Column> Iterator for Rows<'_, C> {
    type Item = Result<(C::Key, C::Value)>;

    fn next(&mut self) -> Option<Self::Item> {
        let (key, value) = match self.raw.next()? {
            Ok(entry) => entry,
            Err(e) => return Some(Err(e)),
        };
        Some(C::Key::from_key(&key).and_then(|k| Ok((k, C::Value::from_record(&value)?))))
    }
}

impl Batch {
    /// Adds a typed put.
    pub fn put_in<C: Column>(&mut self, key: &C::Key, value: &C::Value) -> Result<()> {
        self.put(C::TREE, key.to_key(), value.to_record()?);
        Ok(())
    }

    /// Adds a typed delete.
    pub fn delete_in<C: Column>(&mut self, key: &C::Key) {
        self.delete(C::TREE, key.to_key());
    }
}

/// Every tree the ledger uses (the meta tree once).
pub const TREES: &[TreeName] = &[
    SchemaVersions::TREE,
    Offers::TREE,
    LiveOffers::TREE,
    OfferIndex::TREE,
    Bids::TREE,
    Leases::TREE,
    Attestations::TREE,
    Certificates::TREE,
    Balances::TREE,
    Journal::TREE,
    JournalIds::TREE,
    LeaseBooks::TREE,
    OpenByCustomer::TREE,
    OpenBySupplier::TREE,
    Audit::TREE,
    Alerts::TREE,
    Outbox::TREE,
    PeerScores::TREE,
    Rollups::TREE,
];
