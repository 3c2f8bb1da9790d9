//! Compaction of the evidence of finally settled leases: the usage
//! attestations, acks, disputes and terminations of a lease are needed
//! until its coordinators have certified its outcome, and are nine tenths
//! of what the gossip store would otherwise keep for ever
//! (specs/capacity.md). Once a lease is finally settled and a grace period
//! has passed, they are deleted. The certificates that prove the outcome
//! (escrow, settlements, release, resolutions) stay where they prove
//! something ([`CertificatesKept`]): at the node of a party to the lease.
//! A node party to none of it deletes them too, and so does a
//! coordinator's node, whose books keep them, once the books have had
//! them; the tombstone says so.
//!
//! A lease is *finally settled* here when the store holds, each verifying
//! against the node's coordinator set (a quorum of votes):
//! - a final settlement certificate (`final_settlement`) together with the
//!   certificates of every earlier settlement of the lease, or a release
//!   certificate together with every settlement before it;
//! - for each of those settlements that held an amount for review (a
//!   dispute case), the resolution certificate of the case.
//!
//! How it proceeds, through keys of the messages tree (market.rs):
//! 1. Storing a final settlement, a release or a resolution certificate
//!    marks its lease as *closing* (`0xFA || lease`), in the same batch.
//!    Nothing is decided at that point: the certificate may be anyone's
//!    bytes.
//! 2. A compaction round checks closing leases against the coordinator
//!    set. A lease finally settled is *due* at `now + grace`
//!    (`0xF9 || due || lease`), the grace of the leases whose
//!    certificates the node keeps or the shorter one of other people's
//!    ([`EvidenceGrace`]): the grace counts from when this node
//!    checked it, not from a time a peer signed, so no one can date a
//!    lease's compaction earlier. A lease that is not is dropped from the
//!    closing set (the next closing certificate marks it again).
//! 3. A due lease's evidence is deleted through the by-lease index, at
//!    most `limit` messages a round. The first step writes the lease's
//!    *tombstone* (`0xF8 || lease` -> `compacted_at u64`, followed by a
//!    `1` byte when the lease's certificates go too), after which
//!    [`MarketStore::store`] refuses evidence of the lease (a replay would
//!    otherwise be kept for ever), and its certificates if they went; the
//!    step that finds nothing left to delete removes the due entry.
//!    Every step is one atomic sled batch that removes a message together
//!    with its index entry, so a crash leaves a consistent store and the
//!    next round resumes where it stopped; a round over a compacted lease
//!    removes nothing (idempotent).
//! 4. Tombstones go [`TOMBSTONE_KEPT_MS`] after the compaction
//!    (`0xF7 || until || lease`); the node refuses usage messages older
//!    than that at ingest, so a replay after the tombstone is gone is
//!    refused too.

use std::collections::{BTreeSet, HashSet};

use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{
    Certifiable, Certificate, CheckedCertificates, CoordinatorSet, Credits, DisputeResolution,
    EscrowRelease, Id, Kind, PublicKey, SettlementRequest, UnixMillis,
};

use super::{lease_prefix, read_id, read_u64, MarketRecord, MarketStore, BY_LEASE};
use crate::error::{Error, Result};
use crate::store::gate;

/// The kinds deleted when a lease is compacted: needed to settle a lease
/// and to follow it while it runs, not to prove its outcome.
pub const EVIDENCE_KINDS: [Kind; 4] = [
    Kind::UsageAttestation,
    Kind::UsageAck,
    Kind::UsageDispute,
    Kind::LeaseTermination,
];

/// The certificates about a lease, through the lease index: kept for good
/// where they prove something to the node (see [`CertificatesKept`]).
pub const CERTIFICATE_KINDS: [Kind; 4] = [
    Kind::EscrowCertificate,
    Kind::SettlementCertificate,
    Kind::ReleaseCertificate,
    Kind::ResolutionCertificate,
];

/// Whose certificates a node's gossip store keeps when it compacts a
/// finally settled lease. A supplier's or customer's node keeps those of
/// its own leases, its receipts; those of other people's leases go with
/// their evidence, so what it stores grows with its own business and not
/// with the whole market's (specs/capacity.md). A coordinator's books
/// keep every certificate they applied, so its gossip store need not
/// keep a second copy for good.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CertificatesKept {
    /// Every lease's certificates.
    #[default]
    All,
    /// None for good: a coordinator's store, whose books hold every
    /// certificate they applied. Every lease has the grace of the leases
    /// a node keeps, and its certificates go with its evidence, once none
    /// of them is listed as not yet had by the books
    /// ([`MarketStore::keep_unapplied`]). A later settlement, release or
    /// resolution certificate of the lease is ignored (`compacted`): none
    /// can follow the lease's end, and the books had those before it. An
    /// escrow certificate is taken whenever it comes, since a top-up
    /// certified as the lease closed still moves its account's debit
    /// sequence. A coordinator takes certificates of any age.
    Books,
    /// Only those of leases one of these accounts supplies or rents.
    Of(Vec<PublicKey>),
}

impl CertificatesKept {
    /// True when the store keeps the certificates of a lease between
    /// `supplier` and `customer` once the lease is compacted.
    pub fn keeps(&self, supplier: &PublicKey, customer: &PublicKey) -> bool {
        match self {
            CertificatesKept::All => true,
            CertificatesKept::Books => false,
            CertificatesKept::Of(accounts) => {
                accounts.iter().any(|a| a == supplier || a == customer)
            }
        }
    }

    /// True when a certificate of `kind` is stored even about a lease
    /// whose certificates this store dropped: an escrow certificate at a
    /// coordinator ([`CertificatesKept::Books`]).
    pub fn takes_after_dropping(&self, kind: Kind) -> bool {
        *self == CertificatesKept::Books && kind == Kind::EscrowCertificate
    }

    /// True when a lease between `supplier` and `customer` has the grace
    /// of the leases the node keeps ([`EvidenceGrace::kept_ms`]): every
    /// lease unless only some parties' certificates are kept.
    pub fn kept_grace(&self, supplier: &PublicKey, customer: &PublicKey) -> bool {
        match self {
            CertificatesKept::All | CertificatesKept::Books => true,
            CertificatesKept::Of(_) => self.keeps(supplier, customer),
        }
    }
}

/// How long after a node finds a lease finally settled it keeps the
/// lease's evidence: the grace of the leases whose certificates it keeps
/// (every lease at a coordinator, a party's own), and a grace of its own
/// for other people's, whose evidence and certificates serve the node for
/// nothing once the lease is settled (a late copy is refused by the
/// tombstone either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvidenceGrace {
    /// Milliseconds, for a lease whose certificates the node keeps.
    pub kept_ms: u64,
    /// Milliseconds, for any other lease.
    pub others_ms: u64,
}

impl EvidenceGrace {
    /// The same grace for every lease.
    pub fn all(ms: u64) -> Self {
        EvidenceGrace {
            kept_ms: ms,
            others_ms: ms,
        }
    }
}

/// The tombstone flag of a lease whose certificates were dropped too.
const CERTIFICATES_DROPPED: u8 = 1;

/// How long the tombstone of a compacted lease is kept: 30 days. Usage
/// messages travel within minutes of being made, so the node refuses, at
/// ingest, any older than this; a replay of a compacted lease's evidence
/// is refused by the tombstone before, and by its age after.
pub const TOMBSTONE_KEPT_MS: u64 = 30 * 24 * 3_600_000;

/// First byte of the keys of leases marked closing.
const CLOSING: u8 = 0xFA;
/// First byte of the keys of leases due for compaction.
const DUE: u8 = 0xF9;
/// First byte of tombstone keys.
pub(super) const TOMBSTONE: u8 = 0xF8;
/// First byte of tombstone expiry keys.
const TOMBSTONE_UNTIL: u8 = 0xF7;
/// Most messages removed in one sled batch, so the lock that writes of
/// evidence share with compaction is held briefly.
const STEP: usize = 1_000;

/// What one compaction round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compaction {
    /// Closing leases found finally settled, now due after the grace.
    pub scheduled: usize,
    /// Closing leases that are not finally settled here (a certificate
    /// that does not verify, a settlement or a resolution missing).
    pub not_settled: usize,
    /// Evidence messages deleted.
    pub removed: usize,
    /// Leases whose evidence is now all gone.
    pub compacted: usize,
    /// Tombstones past their keeping, deleted.
    pub tombstones_pruned: usize,
}

impl Compaction {
    /// True when the round did nothing.
    pub fn is_empty(&self) -> bool {
        *self == Compaction::default()
    }
}

pub(super) fn closing_key(lease: &Id) -> Vec<u8> {
    let mut key = Vec::with_capacity(33);
    key.push(CLOSING);
    key.extend_from_slice(lease.as_bytes());
    key
}

fn due_key(due: u64, lease: &Id) -> Vec<u8> {
    let mut key = Vec::with_capacity(41);
    key.push(DUE);
    key.extend_from_slice(&due.to_be_bytes());
    key.extend_from_slice(lease.as_bytes());
    key
}

fn tombstone_key(lease: &Id) -> Vec<u8> {
    let mut key = Vec::with_capacity(33);
    key.push(TOMBSTONE);
    key.extend_from_slice(lease.as_bytes());
    key
}

fn tombstone_until_key(until: u64, lease: &Id) -> Vec<u8> {
    let mut key = Vec::with_capacity(41);
    key.push(TOMBSTONE_UNTIL);
    key.extend_from_slice(&until.to_be_bytes());
    key.extend_from_slice(lease.as_bytes());
    key
}

/// The keys of `first` whose time is at or before `now`: `first || time`
/// up to `first || now + 1`.
fn up_to(first: u8, now: UnixMillis) -> std::ops::Range<Vec<u8>> {
    let mut upper = vec![first];
    upper.extend_from_slice(&now.0.saturating_add(1).to_be_bytes());
    vec![first]..upper
}

/// Whether storing `record` may close its lease: a final settlement, a
/// release or a resolution certificate. Only a mark: whether it verifies
/// is checked by compaction.
pub(super) fn closes(record: &MarketRecord) -> bool {
    match record.kind {
        Kind::SettlementCertificate => Certificate::<SettlementRequest>::from_bytes(&record.bytes)
            .is_ok_and(|c| c.message.body.final_settlement),
        Kind::ReleaseCertificate | Kind::ResolutionCertificate => true,
        _ => false,
    }
}

impl MarketStore {
    /// True if the evidence of `lease` was compacted (its tombstone is
    /// kept): evidence of it is not stored again.
    pub fn is_compacted(&self, lease: &Id) -> Result<bool> {
        Ok(self.point_read(&tombstone_key(lease))?.is_some())
    }

    /// True if compaction dropped the certificates of `lease` with its
    /// evidence (its tombstone says so): they are not stored again.
    pub fn certificates_dropped(&self, lease: &Id) -> Result<bool> {
        Ok(self
            .point_read(&tombstone_key(lease))?
            .is_some_and(|v| v.get(8) == Some(&CERTIFICATES_DROPPED)))
    }

    /// Sets whose certificates this store keeps when it compacts a lease
    /// (every lease's until set): for leases compacted from now on.
    pub fn keep_certificates(&self, kept: CertificatesKept) {
        *self
            .kept
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = kept;
    }

    /// Whose certificates this store keeps.
    pub fn certificates_kept(&self) -> CertificatesKept {
        self.kept().clone()
    }

    pub(super) fn kept(&self) -> std::sync::RwLockReadGuard<'_, CertificatesKept> {
        self.kept
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn keeps_every_certificate(&self) -> bool {
        *self.kept() == CertificatesKept::All
    }

    /// Why a certificate of `kind` about `lease` between `supplier` and
    /// `customer`, made at `created_at`, is not stored at `now`, if it is
    /// not: this store does not keep the lease's certificates, and they
    /// were dropped (`compacted`), or, but at a coordinator, it is older
    /// than a tombstone is kept, so its lease's tombstone may be gone
    /// already (`too_old`). See [`CertificatesKept`].
    pub fn certificate_refusal(
        &self,
        kind: Kind,
        lease: &Id,
        (supplier, customer): (&PublicKey, &PublicKey),
        created_at: UnixMillis,
        now: UnixMillis,
    ) -> Result<Option<&'static str>> {
        let (keeps, any_age) = {
            let kept = self.kept();
            (
                kept.keeps(supplier, customer) || kept.takes_after_dropping(kind),
                *kept == CertificatesKept::Books,
            )
        };
        if keeps {
            return Ok(None);
        }
        if !any_age && created_at.0.saturating_add(TOMBSTONE_KEPT_MS) < now.0 {
            return Ok(Some("too_old"));
        }
        Ok(self.certificates_dropped(lease)?.then_some("compacted"))
    }

    /// One compaction round at `now`: deletes tombstones past keeping,
    /// checks the leases marked closing against `set` (each finally
    /// settled one is due after its `grace`: the kept leases' when the
    /// store keeps the lease's certificates, the others' when it does
    /// not), and deletes the evidence of
    /// due leases. At most `limit` of each: tombstones, closing leases
    /// checked, evidence messages deleted. With `checked`, the node's
    /// record of certificates it checked lately, a certificate whose exact
    /// bytes passed against `set` a moment before (at ingest, when
    /// published) is not checked again.
    pub fn compact_settled(
        &self,
        set: &CoordinatorSet,
        checked: Option<&CheckedCertificates>,
        now: UnixMillis,
        grace: EvidenceGrace,
        limit: usize,
    ) -> Result<Compaction> {
        let mut done = Compaction {
            tombstones_pruned: self.prune_tombstones(now, limit)?,
            ..Compaction::default()
        };
        self.schedule_closing(set, checked, now, grace, limit, &mut done)?;
        let mut due = Vec::new();
        for entry in self.messages.range(up_to(DUE, now)) {
            let (key, _) = entry?;
            due.push(key.to_vec());
            if due.len() >= limit {
                break;
            }
        }
        for key in due {
            let Some(budget) = limit.checked_sub(done.removed).filter(|b| *b > 0) else {
                break;
            };
            let lease = read_id(key.get(9..).unwrap_or_default(), "due lease key")?;
            let (removed, finished) = self.compact_lease(&lease, &key, now, budget)?;
            done.removed += removed;
            if finished {
                done.compacted += 1;
            }
        }
        Ok(done)
    }

    fn prune_tombstones(&self, now: UnixMillis, limit: usize) -> Result<usize> {
        let mut write = sled::Batch::default();
        let mut pruned = 0;
        for entry in self.messages.range(up_to(TOMBSTONE_UNTIL, now)).take(limit) {
            let (key, _) = entry?;
            let lease = read_id(key.get(9..).unwrap_or_default(), "tombstone expiry key")?;
            write.remove(tombstone_key(&lease));
            write.remove(key);
            pruned += 1;
        }
        if pruned > 0 {
            gate::apply_batch(&self.messages, write)?;
        }
        Ok(pruned)
    }

    fn schedule_closing(
        &self,
        set: &CoordinatorSet,
        checked: Option<&CheckedCertificates>,
        now: UnixMillis,
        grace: EvidenceGrace,
        limit: usize,
        done: &mut Compaction,
    ) -> Result<()> {
        let mut closing = Vec::new();
        for entry in self.messages.scan_prefix([CLOSING]).take(limit) {
            let (key, _) = entry?;
            closing.push(read_id(
                key.get(1..).unwrap_or_default(),
                "closing lease key",
            )?);
        }
        for lease in closing {
            let mut write = sled::Batch::default();
            write.remove(closing_key(&lease));
            if self.is_compacted(&lease)? {
                // A certificate that came after: nothing left to do.
            } else if self.finally_settled(&lease, set, checked)? {
                let kept_grace = self.parties_of(&lease)?.is_none_or(|(supplier, customer)| {
                    self.kept().kept_grace(&supplier, &customer)
                });
                let grace_ms = if kept_grace {
                    grace.kept_ms
                } else {
                    grace.others_ms
                };
                let due = now.0.saturating_add(grace_ms);
                write.insert(due_key(due, &lease), Vec::new());
                done.scheduled += 1;
            } else {
                done.not_settled += 1;
            }
            gate::apply_batch(&self.messages, write)?;
        }
        Ok(())
    }

    /// The supplier and the customer of `lease`, as the certificates this
    /// store holds about it name them (any one that decodes will do:
    /// compaction only reaches a lease whose certificates verified); none
    /// when none of them names its parties here.
    fn parties_of(&self, lease: &Id) -> Result<Option<(PublicKey, PublicKey)>> {
        for kind in CERTIFICATE_KINDS {
            for bytes in self.lease_bytes(lease, kind)? {
                let Ok(message) = WireMessage::decode(kind, &bytes) else {
                    continue;
                };
                if let Some((_, supplier, customer, _)) = super::lease_parties(&message) {
                    return Ok(Some((supplier, customer)));
                }
            }
        }
        Ok(None)
    }

    /// Whether this store keeps the certificates of `lease` once it is
    /// compacted. A lease none of whose certificates name its parties here
    /// is kept.
    fn keeps_certificates_of(&self, lease: &Id) -> Result<bool> {
        Ok(self
            .parties_of(lease)?
            .is_none_or(|(supplier, customer)| self.kept().keeps(&supplier, &customer)))
    }

    /// Whether a certificate of `lease` is listed as not yet had by the
    /// books ([`MarketStore::keep_unapplied`]).
    fn certificate_unapplied(&self, lease: &Id) -> Result<bool> {
        for kind in CERTIFICATE_KINDS {
            for entry in self.messages.scan_prefix(lease_prefix(lease, kind)) {
                let (key, _) = entry?;
                if self.listed_unapplied(kind, &super::index_id(&key, "lease index")?)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Whether the message of `kind` with `id` is listed as not yet had by
    /// the books.
    fn listed_unapplied(&self, kind: Kind, id: &Id) -> Result<bool> {
        Ok(self.messages.get(super::unapplied_key(kind, id))?.is_some())
    }

    /// Whether the certificates stored about `lease` that verify against
    /// `set` close it for good: its last settlement (final, or a release)
    /// with every settlement before it, and each dispute case of those
    /// settlements resolved. `checked` as for [`MarketStore::compact_settled`].
    pub fn finally_settled(
        &self,
        lease: &Id,
        set: &CoordinatorSet,
        checked: Option<&CheckedCertificates>,
    ) -> Result<bool> {
        let settlements: Vec<_> = self
            .verified_about::<SettlementRequest>(lease, set, checked)?
            .into_iter()
            .map(|c| c.message.body)
            .collect();
        let releases = self.verified_about::<EscrowRelease>(lease, set, checked)?;
        // The settlement sequence the lease ended at: the final
        // settlement's, or the one a release took.
        let last = settlements
            .iter()
            .filter(|s| s.final_settlement)
            .map(|s| s.settlement_seq)
            .chain(releases.iter().map(|r| r.message.body.settlement_seq))
            .min();
        let Some(last) = last else {
            return Ok(false);
        };
        let held: BTreeSet<u64> = settlements
            .iter()
            .filter(|s| s.held > Credits::ZERO)
            .map(|s| s.settlement_seq)
            .collect();
        let seqs: HashSet<u64> = settlements.iter().map(|s| s.settlement_seq).collect();
        let released_at_last = releases
            .iter()
            .any(|r| r.message.body.settlement_seq == last);
        // Every settlement up to the last is here (the last may be the
        // release itself), so no case of the lease goes unseen.
        if (0..last).any(|seq| !seqs.contains(&seq)) || !(released_at_last || seqs.contains(&last))
        {
            return Ok(false);
        }
        let resolved: HashSet<u64> = self
            .verified_about::<DisputeResolution>(lease, set, checked)?
            .into_iter()
            .map(|c| c.message.body.settlement_seq)
            .collect();
        Ok(held.iter().all(|seq| resolved.contains(seq)))
    }

    /// The certificates of `T` about `lease` that verify against `set`
    /// (through `checked`, when given); stored bytes that do not decode
    /// count as absent.
    fn verified_about<T: Certifiable + LeaseOf>(
        &self,
        lease: &Id,
        set: &CoordinatorSet,
        checked: Option<&CheckedCertificates>,
    ) -> Result<Vec<Certificate<T>>> {
        let verifies = |c: &Certificate<T>| match checked {
            Some(checked) => checked.verify(c, set).is_ok(),
            None => c.verify(set).is_ok(),
        };
        Ok(self
            .lease_bytes(lease, T::CERTIFICATE)?
            .iter()
            .filter_map(|bytes| Certificate::<T>::from_bytes(bytes).ok())
            .filter(|c| c.message.body.lease_id() == *lease && verifies(c))
            .collect())
    }

    /// Deletes up to `budget` evidence messages of `lease`, in steps of at
    /// most [`STEP`]; the first step writes the tombstone, the one that
    /// leaves nothing behind removes `due`. Returns what it deleted and
    /// whether it finished the lease's compaction.
    fn compact_lease(
        &self,
        lease: &Id,
        due: &[u8],
        now: UnixMillis,
        mut budget: usize,
    ) -> Result<(usize, bool)> {
        let mut removed = 0;
        loop {
            let _writing = self
                .lease_writes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Held until the batch is applied, with the tombstone it adds.
            let adding = self.present.adding();
            let mut write = sled::Batch::default();
            let first = !self.is_compacted(lease)?;
            // Decided once, when the tombstone is written, and read back
            // from it by the steps after.
            let drop_certificates = if first {
                !self.keeps_every_certificate() && !self.keeps_certificates_of(lease)?
            } else {
                self.certificates_dropped(lease)?
            };
            // A certificate the books have not had yet stays, and so does
            // the rest of the lease: its compaction waits for a later
            // round (the lease stays due).
            if first && drop_certificates && self.certificate_unapplied(lease)? {
                return Ok((removed, false));
            }
            if first {
                let mut tombstone = now.0.to_be_bytes().to_vec();
                if drop_certificates {
                    tombstone.push(CERTIFICATES_DROPPED);
                }
                let key = tombstone_key(lease);
                adding.add(&key);
                write.insert(key, tombstone);
                write.insert(
                    tombstone_until_key(now.0.saturating_add(TOMBSTONE_KEPT_MS), lease),
                    Vec::new(),
                );
            }
            let step = budget.min(STEP);
            let mut taken = 0;
            // The account index entries removed, for the kept counts.
            let mut uncounted = Vec::new();
            let mut more = false;
            let kinds = EVIDENCE_KINDS
                .iter()
                .chain(CERTIFICATE_KINDS.iter().filter(|_| drop_certificates));
            'kinds: for &kind in kinds {
                for entry in self.messages.scan_prefix(lease_prefix(lease, kind)) {
                    let (key, _) = entry?;
                    if taken == step {
                        more = true;
                        break 'kinds;
                    }
                    let id = super::index_id(&key, "lease index")?;
                    // A certificate that came after the tombstone (an escrow
                    // top-up at a coordinator) stays until its books have
                    // had it.
                    if CERTIFICATE_KINDS.contains(&kind) && self.listed_unapplied(kind, &id)? {
                        continue;
                    }
                    let message = super::message_key(kind, &id);
                    // Evidence does not expire, but should a record of it
                    // have been written with an expiry, its entry goes too.
                    if let Some(value) = self.messages.get(&message)? {
                        let expires = read_u64(&value, "message expiry")?;
                        if expires != u64::MAX {
                            write.remove(super::expiry_key(expires, kind, &id));
                        }
                        // A certificate's entries in the account index.
                        if let Ok(m) = WireMessage::decode(kind, value.get(8..).unwrap_or_default())
                        {
                            let made = super::made_at(&m);
                            for account in super::accounts_of(&m) {
                                write.remove(super::account_key(&account, kind, made, &id));
                                uncounted.push((account, kind));
                            }
                        }
                    }
                    write.remove(message);
                    write.remove(key);
                    taken += 1;
                }
            }
            if !more {
                write.remove(due);
            }
            gate::apply_batch(&self.messages, write)?;
            self.recount(&uncounted, false);
            drop(adding);
            // A message and its lease index entry, and sometimes more.
            gate::reclaim(taken.saturating_mul(3));
            removed += taken;
            budget -= taken;
            if !more {
                // A lease due twice (a resolution certificate after its
                // final settlement) is counted once: by the call that
                // wrote its tombstone or deleted its evidence.
                return Ok((removed, removed > 0 || first));
            }
            if budget == 0 {
                return Ok((removed, false));
            }
        }
    }

    /// Marks the leases of the closing certificates a store holds from
    /// before it marked them (index version 2), in batches.
    pub(super) fn index_closing_leases(&self) -> Result<()> {
        for kind in [
            Kind::SettlementCertificate,
            Kind::ReleaseCertificate,
            Kind::ResolutionCertificate,
        ] {
            let tag = kind.tag();
            let mut write = sled::Batch::default();
            let mut queued = 0;
            for entry in self.messages.range(vec![tag]..vec![tag.saturating_add(1)]) {
                let (_, value) = entry?;
                let bytes = value.get(8..).unwrap_or_default().to_vec();
                let Some(lease) = lease_of_certificate(kind, &bytes) else {
                    continue;
                };
                let record = MarketRecord {
                    kind,
                    id: Id::ZERO,
                    bytes,
                    offer: None,
                    expires_at: None,
                    lease: Some(lease),
                    window: None,
                    author: None,
                    report: None,
                    accounts: Vec::new(),
                    made_at: None,
                };
                if closes(&record) {
                    write.insert(closing_key(&lease), Vec::new());
                    queued += 1;
                }
                if queued == 10_000 {
                    gate::apply_batch(&self.messages, std::mem::take(&mut write))?;
                    queued = 0;
                }
            }
            gate::apply_batch(&self.messages, write)?;
        }
        Ok(())
    }

    /// Checks that every lease index entry names a stored message of its
    /// kind and that every stored evidence message is indexed under its
    /// lease: what compaction must never break. For tests and tools; it
    /// reads the whole store.
    pub fn check_lease_index(&self) -> Result<()> {
        let corrupt = |what| Err(Error::Corrupt { what });
        let mut indexed = HashSet::new();
        for entry in self.messages.scan_prefix([BY_LEASE]) {
            let (key, _) = entry?;
            let Some(kind) = key.get(33).and_then(|t| Kind::from_tag(*t)) else {
                return corrupt("lease index key");
            };
            let windowed = super::WINDOW_KINDS.contains(&kind);
            let expected = if windowed {
                super::WINDOWED_LEASE_KEY_LEN
            } else {
                super::LEASE_KEY_LEN
            };
            if key.len() != expected {
                return corrupt(if windowed {
                    "lease index entry of usage evidence without its window"
                } else {
                    "lease index key"
                });
            }
            let id = super::index_id(&key, "lease index")?;
            if !self.messages.contains_key(super::message_key(kind, &id))? {
                return corrupt("lease index entry without its message");
            }
            indexed.insert((kind, id));
        }
        for kind in EVIDENCE_KINDS {
            for entry in self.messages.scan_prefix([kind.tag()]) {
                let (key, _) = entry?;
                let id = read_id(key.get(1..).unwrap_or_default(), "market message key")?;
                if !indexed.contains(&(kind, id)) {
                    return corrupt("evidence message without its lease index entry");
                }
            }
        }
        Ok(())
    }
}

/// The lease a certified message is about.
trait LeaseOf {
    fn lease_id(&self) -> Id;
}

impl LeaseOf for SettlementRequest {
    fn lease_id(&self) -> Id {
        self.lease
    }
}

impl LeaseOf for EscrowRelease {
    fn lease_id(&self) -> Id {
        self.lease
    }
}

impl LeaseOf for DisputeResolution {
    fn lease_id(&self) -> Id {
        self.lease
    }
}

fn lease_of_certificate(kind: Kind, bytes: &[u8]) -> Option<Id> {
    match kind {
        Kind::SettlementCertificate => Certificate::<SettlementRequest>::from_bytes(bytes)
            .ok()
            .map(|c| c.message.body.lease),
        Kind::ReleaseCertificate => Certificate::<EscrowRelease>::from_bytes(bytes)
            .ok()
            .map(|c| c.message.body.lease),
        Kind::ResolutionCertificate => Certificate::<DisputeResolution>::from_bytes(bytes)
            .ok()
            .map(|c| c.message.body.lease),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigmesh_protocol::wire::WireMessage;
    use rigmesh_protocol::{
        samples, Keypair, LeaseTermination, Signed, UsageAck, UsageAttestation,
    };

    const GRACE: u64 = 7 * 24 * 3_600_000;
    /// The grace of other people's leases in the tests that set both.
    const OTHERS: u64 = 60_000;

    fn two_graces() -> EvidenceGrace {
        EvidenceGrace {
            kept_ms: GRACE,
            others_ms: OTHERS,
        }
    }

    /// The record of a message as the node writes it (node/src/market_store.rs).
    fn record(message: &WireMessage) -> MarketRecord {
        MarketRecord::of(message, message.id().unwrap(), message.to_bytes().unwrap())
    }

    fn put(store: &MarketStore, messages: &[WireMessage]) {
        let records: Vec<_> = messages.iter().map(record).collect();
        store.store(&records).unwrap();
    }

    /// Certified by the coordinators at `voters` (indices of the sample set).
    fn certify<T: Certifiable>(message: Signed<T>, voters: &[usize]) -> Certificate<T> {
        let keys = samples::coordinators();
        let votes: Vec<_> = voters
            .iter()
            .map(|i| {
                let key = &keys[*i];
                Signed::sign(Certificate::vote_for(&message, key.public()).unwrap(), key).unwrap()
            })
            .collect();
        Certificate::assemble(message, &votes).unwrap()
    }

    /// A quorum of the sample set (3 of 4).
    const QUORUM: [usize; 3] = [0, 1, 3];

    /// The usage evidence of `windows` windows of `lease`: an attestation
    /// and an ack each, a dispute of the first and a termination.
    fn evidence(lease: Id, windows: u64) -> Vec<WireMessage> {
        let base = samples::usage_attestation().unwrap().body;
        let ack = samples::usage_ack().unwrap().body;
        let mut out = Vec::new();
        for seq in 0..windows {
            let mut a = base.clone();
            a.lease = lease;
            a.seq = seq;
            a.prev = if seq == 0 {
                Id::ZERO
            } else {
                Id([seq as u8; 32])
            };
            let a = Signed::sign(a, &samples::supplier()).unwrap();
            let mut k: UsageAck = ack.clone();
            k.lease = lease;
            k.seq = seq;
            k.attestation = a.id().unwrap();
            out.push(WireMessage::UsageAttestation(a));
            out.push(WireMessage::UsageAck(
                Signed::sign(k, &samples::customer()).unwrap(),
            ));
        }
        let mut d = samples::usage_dispute().unwrap().body;
        d.lease = lease;
        out.push(WireMessage::UsageDispute(
            Signed::sign(d, &samples::customer()).unwrap(),
        ));
        let mut t: LeaseTermination = samples::lease_termination().unwrap().body;
        t.lease = lease;
        out.push(WireMessage::LeaseTermination(
            Signed::sign(t, &samples::customer()).unwrap(),
        ));
        out
    }

    /// Settlement `seq` of `lease`, final or not, holding `held` units.
    fn settlement(lease: Id, seq: u64, last: bool, held: i64, voters: &[usize]) -> WireMessage {
        let mut r = samples::settlement_request().unwrap().body;
        r.lease = lease;
        r.settlement_seq = seq;
        r.first_window = seq;
        r.last_window = seq;
        r.final_settlement = last;
        r.held = Credits::from_units(held);
        let signed = Signed::sign(r, &samples::supplier()).unwrap();
        WireMessage::SettlementCertificate(certify(signed, voters))
    }

    /// The certificates of `lease` settled finally in two settlements:
    /// its escrow (between the sample supplier and customer) and both
    /// settlements.
    fn settled_certificates(lease: Id) -> [WireMessage; 3] {
        let mut order = samples::escrow_order().unwrap().body;
        order.lease = lease;
        let escrow = WireMessage::EscrowCertificate(certify(
            Signed::sign(order, &samples::customer()).unwrap(),
            &QUORUM,
        ));
        [
            escrow,
            settlement(lease, 0, false, 0, &QUORUM),
            settlement(lease, 1, true, 0, &QUORUM),
        ]
    }

    /// A certified escrow top-up of `lease`: the order after the one of
    /// [`settled_certificates`].
    fn top_up(lease: Id) -> WireMessage {
        let mut order = samples::escrow_order().unwrap().body;
        order.lease = lease;
        order.seq += 1;
        WireMessage::EscrowCertificate(certify(
            Signed::sign(order, &samples::customer()).unwrap(),
            &QUORUM,
        ))
    }

    fn resolution(lease: Id, seq: u64, held: i64) -> WireMessage {
        let mut r = samples::dispute_resolution().unwrap().body;
        r.lease = lease;
        r.settlement_seq = seq;
        r.held = Credits::from_units(held);
        r.supplier_share = Credits::from_units(held / 2);
        let signed = Signed::sign(r, &samples::admin()).unwrap();
        WireMessage::ResolutionCertificate(certify(signed, &QUORUM))
    }

    fn attestations(store: &MarketStore, lease: &Id) -> usize {
        store.about_lease::<UsageAttestation>(lease).unwrap().len()
    }

    fn evidence_of(store: &MarketStore, lease: &Id) -> usize {
        EVIDENCE_KINDS
            .iter()
            .map(|k| store.lease_bytes(lease, *k).unwrap().len())
            .sum()
    }

    fn set() -> CoordinatorSet {
        samples::coordinator_set().unwrap()
    }

    #[test]
    fn a_finally_settled_lease_loses_its_evidence_after_the_grace_and_keeps_its_certificates() {
        let store = MarketStore::temporary().unwrap();
        let (settled, running) = (Id([1; 32]), Id([2; 32]));
        let escrow = WireMessage::EscrowCertificate(samples::escrow_certificate().unwrap());
        put(&store, &evidence(settled, 5));
        put(&store, &evidence(running, 3));
        put(
            &store,
            &[
                escrow.clone(),
                settlement(settled, 0, false, 0, &QUORUM),
                settlement(settled, 1, true, 0, &QUORUM),
                settlement(running, 0, false, 0, &QUORUM),
            ],
        );
        assert_eq!(evidence_of(&store, &settled), 12);
        let t = UnixMillis(1_000_000);
        let first = store
            .compact_settled(&set(), None, t, EvidenceGrace::all(GRACE), 100)
            .unwrap();
        assert_eq!(first.scheduled, 1, "{first:?}");
        assert_eq!(first.removed, 0, "nothing goes before the grace");
        let before = store
            .compact_settled(
                &set(),
                None,
                UnixMillis(t.0 + GRACE - 1),
                EvidenceGrace::all(GRACE),
                100,
            )
            .unwrap();
        assert!(before.is_empty(), "{before:?}");
        assert_eq!(attestations(&store, &settled), 5);
        assert!(!store.is_compacted(&settled).unwrap());

        let after = store
            .compact_settled(
                &set(),
                None,
                UnixMillis(t.0 + GRACE),
                EvidenceGrace::all(GRACE),
                100,
            )
            .unwrap();
        assert_eq!(after.removed, 12);
        assert_eq!(after.compacted, 1);
        assert_eq!(evidence_of(&store, &settled), 0);
        assert!(store.is_compacted(&settled).unwrap());
        // What proves the outcome stays, and the running lease is untouched.
        assert_eq!(
            store
                .certificates_about_lease::<SettlementRequest>(&settled)
                .unwrap()
                .len(),
            2
        );
        assert!(store
            .contains(Kind::EscrowCertificate, &escrow.id().unwrap())
            .unwrap());
        assert_eq!(evidence_of(&store, &running), 8);
        assert_eq!(store.count(Kind::UsageAttestation), 3);
        store.check_lease_index().unwrap();

        let again = store
            .compact_settled(
                &set(),
                None,
                UnixMillis(t.0 + 2 * GRACE),
                EvidenceGrace::all(GRACE),
                100,
            )
            .unwrap();
        assert!(again.is_empty(), "idempotent: {again:?}");
        assert_eq!(evidence_of(&store, &running), 8);
    }

    #[test]
    fn certificates_checked_lately_are_not_checked_again_and_other_bytes_are() {
        let store = MarketStore::temporary().unwrap();
        let (settled, forged) = (Id([3; 32]), Id([4; 32]));
        put(&store, &evidence(settled, 2));
        put(&store, &evidence(forged, 2));
        let checked = CheckedCertificates::new(set(), 64);
        let remember = |message: &WireMessage| match message {
            WireMessage::SettlementCertificate(c) => checked.verify(c, &set()).unwrap(),
            other => panic!("not a settlement certificate: {other:?}"),
        };
        // As the node's ingest checks them on arrival.
        let genuine = [
            settlement(settled, 0, false, 0, &QUORUM),
            settlement(settled, 1, true, 0, &QUORUM),
        ];
        genuine.iter().for_each(remember);
        // The other lease's final settlement was checked as it is, but the
        // store holds other bytes for it: one vote's signature broken.
        let checked_copy = settlement(forged, 0, true, 0, &QUORUM);
        remember(&checked_copy);
        let WireMessage::SettlementCertificate(mut broken) = checked_copy else {
            unreachable!()
        };
        broken.votes[2].signature = Keypair::from_seed([9; 32]).sign(Kind::Vote, b"other");
        put(&store, &genuine);
        put(&store, &[WireMessage::SettlementCertificate(broken)]);
        assert_eq!(checked.skipped(), 0);

        let done = store
            .compact_settled(
                &set(),
                Some(&checked),
                UnixMillis(u64::MAX / 2),
                EvidenceGrace::all(0),
                100,
            )
            .unwrap();
        assert_eq!((done.scheduled, done.not_settled), (1, 1), "{done:?}");
        assert_eq!(
            checked.skipped(),
            2,
            "the settled lease's two certificates were not checked again"
        );
        assert_eq!(evidence_of(&store, &settled), 0);
        assert_eq!(evidence_of(&store, &forged), 6);
        assert!(!store.is_compacted(&forged).unwrap());
    }

    #[test]
    fn a_node_party_to_none_of_a_lease_drops_its_certificates_with_its_evidence() {
        let settled = Id([1; 32]);
        let certificates = settled_certificates(settled);
        let (supplier, customer) = (samples::supplier().public(), samples::customer().public());
        let stranger = PublicKey([9; 32]);
        for (kept, keeps) in [
            (CertificatesKept::Of(vec![stranger]), false),
            (CertificatesKept::Of(vec![stranger, supplier]), true),
            (CertificatesKept::Of(vec![customer]), true),
            (CertificatesKept::All, true),
        ] {
            let store = MarketStore::temporary().unwrap();
            store.keep_certificates(kept.clone());
            put(&store, &evidence(settled, 3));
            put(&store, &certificates);
            // In rounds of two deletions, so the choice made with the
            // tombstone is read back by the rounds after it.
            let mut rounds = 0;
            let mut removed = 0;
            loop {
                let done = store
                    .compact_settled(&set(), None, UnixMillis(0), EvidenceGrace::all(0), 2)
                    .unwrap();
                if done.is_empty() {
                    break;
                }
                removed += done.removed;
                rounds += 1;
                assert!(rounds < 20, "{kept:?}: compaction does not finish");
            }
            assert_eq!(evidence_of(&store, &settled), 0, "{kept:?}");
            store.check_lease_index().unwrap();
            let settlements = store
                .certificates_about_lease::<SettlementRequest>(&settled)
                .unwrap()
                .len();
            let escrows = store
                .certificates_about_lease::<rigmesh_protocol::EscrowOrder>(&settled)
                .unwrap()
                .len();
            let receipts = |account| {
                store
                    .about_account(account, Kind::SettlementCertificate)
                    .unwrap()
                    .len()
            };
            let created_at = samples::settlement_request().unwrap().body.created_at;
            let refusal = |at| {
                store
                    .certificate_refusal(
                        Kind::SettlementCertificate,
                        &settled,
                        (&supplier, &customer),
                        at,
                        created_at,
                    )
                    .unwrap()
            };
            if keeps {
                assert_eq!(removed, 8, "{kept:?}");
                assert_eq!((settlements, escrows), (2, 1), "{kept:?}");
                assert_eq!((receipts(&supplier), receipts(&customer)), (2, 2));
                assert!(!store.certificates_dropped(&settled).unwrap());
                assert_eq!(refusal(created_at), None);
                continue;
            }
            assert_eq!(removed, 11, "the evidence and the three certificates");
            assert_eq!((settlements, escrows), (0, 0));
            assert_eq!((receipts(&supplier), receipts(&customer)), (0, 0));
            assert_eq!(
                store
                    .about_account(&customer, Kind::EscrowCertificate)
                    .unwrap(),
                Vec::<Vec<u8>>::new()
            );
            assert!(store.certificates_dropped(&settled).unwrap());
            // Copies that come again (gossip, catch-up sync) are refused
            // at ingest and not stored, so they close nothing again.
            assert_eq!(refusal(created_at), Some("compacted"));
            put(&store, &certificates);
            assert_eq!(store.count(Kind::SettlementCertificate), 0);
            assert_eq!(store.count(Kind::EscrowCertificate), 0);
            assert!(store
                .compact_settled(&set(), None, UnixMillis(0), EvidenceGrace::all(0), 100)
                .unwrap()
                .is_empty());
            // Of a lease not compacted here: taken, until it is older than
            // a tombstone is kept (the tombstone may be gone by then).
            let elsewhere = |now: UnixMillis| {
                store
                    .certificate_refusal(
                        Kind::SettlementCertificate,
                        &Id([3; 32]),
                        (&supplier, &customer),
                        created_at,
                        now,
                    )
                    .unwrap()
            };
            assert_eq!(elsewhere(created_at), None);
            assert_eq!(
                elsewhere(created_at.plus_ms(TOMBSTONE_KEPT_MS + 1)),
                Some("too_old")
            );
        }
    }

    /// A node party to a lease keeps its evidence for the kept leases'
    /// grace; a node party to none of it, for the others' grace only.
    #[test]
    fn other_peoples_leases_are_compacted_after_their_own_grace() {
        let grace = two_graces();
        let settled = Id([5; 32]);
        let party = MarketStore::temporary().unwrap();
        party.keep_certificates(CertificatesKept::Of(vec![samples::supplier().public()]));
        let bystander = MarketStore::temporary().unwrap();
        bystander.keep_certificates(CertificatesKept::Of(vec![PublicKey([9; 32])]));
        let t = UnixMillis(1_000_000);
        for store in [&party, &bystander] {
            put(store, &evidence(settled, 3));
            put(store, &settled_certificates(settled));
            let first = store.compact_settled(&set(), None, t, grace, 100).unwrap();
            assert_eq!((first.scheduled, first.removed), (1, 0), "{first:?}");
        }
        let round = |store: &MarketStore, at: u64| {
            store
                .compact_settled(&set(), None, UnixMillis(t.0 + at), grace, 100)
                .unwrap()
        };
        assert!(round(&bystander, OTHERS - 1).is_empty());
        assert_eq!(evidence_of(&bystander, &settled), 8);
        let done = round(&bystander, OTHERS);
        assert_eq!((done.removed, done.compacted), (11, 1), "{done:?}");
        assert_eq!(evidence_of(&bystander, &settled), 0);
        assert!(bystander.certificates_dropped(&settled).unwrap());

        assert!(round(&party, OTHERS).is_empty());
        assert!(round(&party, GRACE - 1).is_empty());
        assert_eq!(evidence_of(&party, &settled), 8);
        let done = round(&party, GRACE);
        assert_eq!((done.removed, done.compacted), (8, 1), "{done:?}");
        assert_eq!(
            party
                .certificates_about_lease::<SettlementRequest>(&settled)
                .unwrap()
                .len(),
            2,
            "the party keeps its receipts"
        );
        party.check_lease_index().unwrap();
        bystander.check_lease_index().unwrap();
    }

    /// A coordinator's store (its books keep the certificates) drops a
    /// lease's certificates with its evidence after the kept grace, once
    /// its books have had every one of them, and takes certificates of
    /// any age of leases it has not compacted.
    #[test]
    fn a_coordinators_store_drops_a_leases_certificates_once_its_books_have_had_them() {
        let grace = two_graces();
        let settled = Id([6; 32]);
        let store = MarketStore::temporary().unwrap();
        store.keep_certificates(CertificatesKept::Books);
        store.keep_unapplied();
        let certificates = settled_certificates(settled);
        put(&store, &evidence(settled, 3));
        put(&store, &certificates);
        let listed = store.unapplied(None, 100).unwrap();
        assert_eq!(listed.len(), 3, "{listed:?}");
        let t = UnixMillis(1_000_000);
        let round = |at: u64| {
            store
                .compact_settled(&set(), None, UnixMillis(t.0 + at), grace, 100)
                .unwrap()
        };
        assert_eq!(round(0).scheduled, 1);
        // Every lease has the kept grace at a coordinator.
        assert!(round(OTHERS).is_empty());
        assert!(round(GRACE - 1).is_empty());
        // Two of the three taken off the list: the lease waits, whole.
        for (kind, id) in &listed[..2] {
            store.applied(*kind, id).unwrap();
        }
        assert!(round(GRACE).is_empty());
        assert_eq!(evidence_of(&store, &settled), 8);
        assert!(!store.is_compacted(&settled).unwrap());
        let (kind, id) = listed[2];
        store.applied(kind, &id).unwrap();
        let done = round(GRACE + 1);
        assert_eq!((done.removed, done.compacted), (11, 1), "{done:?}");
        assert_eq!(evidence_of(&store, &settled), 0);
        assert_eq!(store.count(Kind::SettlementCertificate), 0);
        assert_eq!(store.count(Kind::EscrowCertificate), 0);
        assert!(store.certificates_dropped(&settled).unwrap());
        store.check_lease_index().unwrap();

        // A later copy of a settlement is ignored and not stored or
        // listed again.
        let (supplier, customer) = (samples::supplier().public(), samples::customer().public());
        let created_at = samples::settlement_request().unwrap().body.created_at;
        let refusal = |kind: Kind, lease: Id, now: UnixMillis| {
            store
                .certificate_refusal(kind, &lease, (&supplier, &customer), created_at, now)
                .unwrap()
        };
        assert_eq!(
            refusal(Kind::SettlementCertificate, settled, created_at),
            Some("compacted")
        );
        put(&store, &certificates[1..]);
        assert_eq!(store.count(Kind::SettlementCertificate), 0);
        assert!(store.unapplied(None, 100).unwrap().is_empty());
        // An escrow top-up of the lease, certified as it closed, still
        // moves its account's debit sequence: taken and listed for the
        // books, however late.
        let top_up = top_up(settled);
        assert_eq!(refusal(Kind::EscrowCertificate, settled, created_at), None);
        put(&store, std::slice::from_ref(&top_up));
        assert_eq!(store.count(Kind::EscrowCertificate), 1);
        assert_eq!(
            store.unapplied(None, 100).unwrap(),
            vec![(Kind::EscrowCertificate, top_up.id().unwrap())]
        );
        // Of a lease not compacted here: taken, however old.
        assert_eq!(
            refusal(
                Kind::SettlementCertificate,
                Id([7; 32]),
                created_at.plus_ms(10 * TOMBSTONE_KEPT_MS)
            ),
            None
        );
    }

    /// An escrow top-up that reaches a coordinator's store while the lease
    /// is being compacted, in rounds, is not deleted before its books have
    /// had it.
    #[test]
    fn a_coordinators_store_keeps_a_top_up_its_books_have_not_had_through_compaction() {
        let settled = Id([8; 32]);
        let store = MarketStore::temporary().unwrap();
        store.keep_certificates(CertificatesKept::Books);
        store.keep_unapplied();
        put(&store, &evidence(settled, 3));
        put(&store, &settled_certificates(settled));
        for (kind, id) in store.unapplied(None, 100).unwrap() {
            store.applied(kind, &id).unwrap();
        }
        let round = || {
            store
                .compact_settled(&set(), None, UnixMillis(0), EvidenceGrace::all(0), 2)
                .unwrap()
        };
        // The first round schedules the lease and writes its tombstone
        // with the first two deletions.
        assert_eq!(round().removed, 2);
        assert!(store.certificates_dropped(&settled).unwrap());
        let top_up = top_up(settled);
        put(&store, std::slice::from_ref(&top_up));
        let mut rounds = 0;
        while !round().is_empty() {
            rounds += 1;
            assert!(rounds < 20, "compaction does not finish");
        }
        assert_eq!(evidence_of(&store, &settled), 0);
        assert_eq!(store.count(Kind::SettlementCertificate), 0);
        assert_eq!(store.count(Kind::EscrowCertificate), 1);
        assert_eq!(
            store.unapplied(None, 100).unwrap(),
            vec![(Kind::EscrowCertificate, top_up.id().unwrap())]
        );
        store.check_lease_index().unwrap();
    }

    #[test]
    fn a_release_closes_a_lease_as_a_final_settlement_does() {
        let store = MarketStore::temporary().unwrap();
        let release = samples::release_certificate().unwrap();
        let lease = release.message.body.lease;
        assert_eq!(release.message.body.settlement_seq, 0);
        put(&store, &evidence(lease, 2));
        put(&store, &[WireMessage::ReleaseCertificate(release)]);
        let done = store
            .compact_settled(&set(), None, UnixMillis(0), EvidenceGrace::all(0), 100)
            .unwrap();
        assert_eq!((done.scheduled, done.removed, done.compacted), (1, 6, 1));
        assert_eq!(evidence_of(&store, &lease), 0);
    }

    #[test]
    fn certificates_that_do_not_close_a_lease_compact_nothing() {
        let store = MarketStore::temporary().unwrap();
        let leases: Vec<Id> = (10..15u8).map(|n| Id([n; 32])).collect();
        for lease in &leases {
            put(&store, &evidence(*lease, 2));
        }
        let stranger = Keypair::from_seed([77; 32]);
        let forged = {
            let mut r = samples::settlement_request().unwrap().body;
            r.lease = leases[4];
            r.final_settlement = true;
            let signed = Signed::sign(r, &samples::supplier()).unwrap();
            let vote = Signed::sign(
                Certificate::vote_for(&signed, stranger.public()).unwrap(),
                &stranger,
            )
            .unwrap();
            let mut cert = certify(signed, &[0, 1]);
            cert.votes.extend(
                Certificate::assemble(cert.message.clone(), &[vote])
                    .unwrap()
                    .votes,
            );
            cert
        };
        put(
            &store,
            &[
                // Not final: no mark at all.
                settlement(leases[0], 0, false, 0, &QUORUM),
                // Final, but two votes of four are no quorum.
                settlement(leases[1], 0, true, 0, &[0, 1]),
                // Final, but settlement 0 of the lease is not here.
                settlement(leases[2], 1, true, 0, &QUORUM),
                // Final, but it held an amount whose case is open.
                settlement(leases[3], 0, true, 500, &QUORUM),
                // Final, with a vote by a key outside the set.
                WireMessage::SettlementCertificate(forged),
            ],
        );
        let round = || {
            store
                .compact_settled(
                    &set(),
                    None,
                    UnixMillis(u64::MAX / 2),
                    EvidenceGrace::all(0),
                    100,
                )
                .unwrap()
        };
        let done = round();
        assert_eq!((done.scheduled, done.not_settled, done.removed), (0, 4, 0));
        for lease in &leases {
            assert_eq!(evidence_of(&store, lease), 6);
            assert!(!store.is_compacted(lease).unwrap());
        }
        // The case is resolved: the resolution marks the lease again, and
        // now it closes.
        put(&store, &[resolution(leases[3], 0, 500)]);
        let done = round();
        assert_eq!((done.scheduled, done.removed), (1, 6));
        assert_eq!(evidence_of(&store, &leases[3]), 0);
        assert_eq!(evidence_of(&store, &leases[1]), 6);
    }

    #[test]
    fn replayed_evidence_of_a_compacted_lease_is_not_stored_until_the_tombstone_goes() {
        let store = MarketStore::temporary().unwrap();
        let lease = Id([3; 32]);
        let messages = evidence(lease, 2);
        put(&store, &messages);
        put(&store, &[settlement(lease, 0, true, 0, &QUORUM)]);
        let t = UnixMillis(5_000);
        assert_eq!(
            store
                .compact_settled(&set(), None, t, EvidenceGrace::all(0), 100)
                .unwrap()
                .removed,
            6
        );
        put(&store, &messages);
        assert_eq!(evidence_of(&store, &lease), 0, "the replay is refused");
        assert_eq!(store.count(Kind::UsageAck), 0);
        // A certificate that comes later (other votes for the same
        // settlement) is still written: certificates are the outcome.
        put(&store, &[settlement(lease, 0, true, 0, &[0, 1, 2])]);
        let kept = store
            .certificates_about_lease::<SettlementRequest>(&lease)
            .unwrap();
        assert_eq!(kept.len(), 1);
        assert!(kept[0]
            .votes
            .iter()
            .any(|v| v.coordinator == samples::coordinators()[2].public()));
        let later = store
            .compact_settled(
                &set(),
                None,
                UnixMillis(t.0 + TOMBSTONE_KEPT_MS - 1),
                EvidenceGrace::all(0),
                100,
            )
            .unwrap();
        assert_eq!(later.tombstones_pruned, 0);
        assert_eq!(later.compacted, 0, "a lease is counted once");
        let gone = store
            .compact_settled(
                &set(),
                None,
                UnixMillis(t.0 + TOMBSTONE_KEPT_MS),
                EvidenceGrace::all(0),
                100,
            )
            .unwrap();
        assert_eq!(gone.tombstones_pruned, 1);
        assert!(!store.is_compacted(&lease).unwrap());
        store.check_lease_index().unwrap();
    }

    #[test]
    fn compaction_in_small_rounds_resumes_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let lease = Id([4; 32]);
        {
            let store = MarketStore::open(dir.path()).unwrap();
            put(&store, &evidence(lease, 10));
            put(&store, &[settlement(lease, 0, true, 0, &QUORUM)]);
            let done = store
                .compact_settled(&set(), None, UnixMillis(10), EvidenceGrace::all(0), 7)
                .unwrap();
            assert_eq!((done.removed, done.compacted), (7, 0));
            store.flush().unwrap();
            // Dropped in the middle of the lease, as a stop would.
        }
        let store = MarketStore::open(dir.path()).unwrap();
        store.check_lease_index().unwrap();
        assert!(
            store.is_compacted(&lease).unwrap(),
            "the tombstone came first"
        );
        assert_eq!(evidence_of(&store, &lease), 22 - 7);
        let mut removed = 7;
        let mut rounds = 0;
        loop {
            let done = store
                .compact_settled(&set(), None, UnixMillis(20), EvidenceGrace::all(0), 7)
                .unwrap();
            store.check_lease_index().unwrap();
            removed += done.removed;
            rounds += 1;
            if done.compacted == 1 {
                break;
            }
            assert!(rounds < 10, "compaction makes progress");
        }
        assert_eq!(removed, 22);
        assert_eq!(evidence_of(&store, &lease), 0);
        assert!(store
            .compact_settled(&set(), None, UnixMillis(30), EvidenceGrace::all(0), 7)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_store_with_settled_leases_from_before_the_marks_is_marked_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let lease = Id([5; 32]);
        {
            let store = MarketStore::open(dir.path()).unwrap();
            put(&store, &evidence(lease, 1));
            put(&store, &[settlement(lease, 0, true, 0, &QUORUM)]);
            // As an earlier version left it: no mark, index version 1.
            store.messages.remove(closing_key(&lease)).unwrap();
            store
                .messages
                .insert(super::super::INDEX_VERSION_KEY, 1u64.to_be_bytes().to_vec())
                .unwrap();
            store.flush().unwrap();
        }
        let store = MarketStore::open(dir.path()).unwrap();
        let done = store
            .compact_settled(&set(), None, UnixMillis(0), EvidenceGrace::all(0), 100)
            .unwrap();
        assert_eq!((done.scheduled, done.removed), (1, 4));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Whatever the leases and however small the rounds, compaction
        /// ends with exactly the finally settled leases' evidence gone (and
        /// their certificates, at a node party to none of them) and the
        /// index consistent after every round.
        #[test]
        fn rounds_of_any_size_remove_exactly_the_settled_evidence(
            leases in proptest::collection::vec((0u64..4, 0u8..3), 1..5),
            limit in 1usize..8,
            bystander in proptest::bool::ANY,
        ) {
            let store = MarketStore::temporary().unwrap();
            if bystander {
                store.keep_certificates(CertificatesKept::Of(vec![PublicKey([9; 32])]));
            }
            // The parties' receipts are counted from the start, so every
            // write and deletion below keeps their counts.
            let parties = [samples::supplier().public(), samples::customer().public()];
            let kind = Kind::SettlementCertificate;
            let counts_hold = || {
                parties.iter().all(|p| {
                    store.count_about_account(p, kind).unwrap()
                        == store.count_account_keys(p, kind).unwrap()
                })
            };
            for party in &parties {
                proptest::prop_assert_eq!(store.count_about_account(party, kind).unwrap(), 0);
            }
            for (n, (windows, state)) in leases.iter().enumerate() {
                let lease = Id([n as u8 + 100; 32]);
                put(&store, &evidence(lease, *windows));
                let certificate = match state {
                    1 => settlement(lease, 0, true, 0, &QUORUM),
                    2 => settlement(lease, 0, true, 0, &[2, 3]),
                    _ => continue,
                };
                // Twice in one batch, and once more: stored once.
                put(&store, &[certificate.clone(), certificate.clone()]);
                put(&store, &[certificate]);
            }
            let certified = leases.iter().filter(|(_, state)| *state != 0).count();
            for party in &parties {
                proptest::prop_assert_eq!(store.count_about_account(party, kind).unwrap(), certified);
            }
            let mut compacted = 0;
            for round in 0..200u64 {
                let done = store.compact_settled(&set(), None, UnixMillis(round), EvidenceGrace::all(0), limit).unwrap();
                store.check_lease_index().unwrap();
                proptest::prop_assert!(counts_hold(), "the kept counts follow each round");
                proptest::prop_assert!(done.removed <= limit);
                compacted += done.compacted;
                if done.is_empty() {
                    break;
                }
            }
            let settled = leases.iter().filter(|(_, state)| *state == 1).count();
            proptest::prop_assert_eq!(compacted, settled, "each settled lease counted once");
            let mut kept_in_all = 0;
            for (n, (windows, state)) in leases.iter().enumerate() {
                let lease = Id([n as u8 + 100; 32]);
                let expected = if *state == 1 { 0 } else { 2 * *windows as usize + 2 };
                proptest::prop_assert_eq!(evidence_of(&store, &lease), expected);
                proptest::prop_assert_eq!(store.is_compacted(&lease).unwrap(), *state == 1);
                let certificates = store
                    .certificates_about_lease::<SettlementRequest>(&lease)
                    .unwrap()
                    .len();
                let kept = match state {
                    0 => 0,
                    1 if bystander => 0,
                    _ => 1,
                };
                proptest::prop_assert_eq!(certificates, kept);
                kept_in_all += kept;
                proptest::prop_assert_eq!(
                    store.certificates_dropped(&lease).unwrap(),
                    bystander && *state == 1
                );
            }
            for party in &parties {
                proptest::prop_assert_eq!(store.count_about_account(party, kind).unwrap(), kept_in_all);
            }
        }
    }
}
