//! The audit chain: one record per state-changing action (and per refusal
//! the caller reports), saying who did what, when, and which message was
//! behind it. Each record names the blake3 hash of the one before, and
//! carries its own, so changing, removing or reordering a stored record
//! shows up as a broken link at that record when the chain is walked.
//!
//! The hash of a record is blake3 over [`AUDIT_DOMAIN`] and the record's
//! encoding ([`crate::codec`]) without its hash field. The first record's
//! `prev` is all zeros. The ledger keeps the head (next sequence and last
//! hash) in its meta column, written in the same batch as each record, so
//! a chain cut short at the end is noticed too.

use bincode::{Decode, Encode};
use rigmesh_protocol::{Id, PublicKey, UnixMillis};

use crate::codec::{self, Record};
use crate::error::Result;

/// Domain separation for audit hashes.
pub const AUDIT_DOMAIN: &[u8] = b"rigmesh/ledger/audit/v1";

/// Longest free-text detail in a record, in bytes (longer text is cut at a
/// character boundary).
pub const MAX_DETAIL_LEN: usize = 512;

/// A blake3 hash.
pub type Hash = [u8; 32];

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Action {
    /// An offer was stored (and perhaps replaced an older one).
    OfferStored,
    /// An offer was removed.
    OfferRemoved,
    /// A bid was stored.
    BidStored,
    /// A lease agreement was stored.
    LeaseStored,
    /// A usage attestation was stored.
    AttestationStored,
    /// A certificate was stored.
    CertificateStored,
    /// A deposit was posted.
    Deposit,
    /// A withdrawal was posted.
    Withdrawal,
    /// A lease's escrow was locked.
    EscrowLocked,
    /// A window of a lease was metered.
    UsageMetered,
    /// A lease was settled (charge, payouts, maybe refund).
    Settled,
    /// A journal entry was posted directly.
    JournalPosted,
    /// An alert was stored.
    AlertStored,
    /// A notification was queued for delivery.
    NotificationQueued,
    /// A notification was delivered and removed from the outbox.
    NotificationDelivered,
    /// A peer's score or ban changed.
    PeerScored,
    /// A coordinator locked a debit or settlement sequence for its vote.
    VoteLocked,
    /// A certificate was stored and held pending until what it needs is
    /// applied.
    CertificatePending,
    /// The node refused something (a vote, a certificate, a message); the
    /// detail holds the reason code.
    Refused,
    /// A deposit or withdrawal was held for an admin's decision.
    HeldForReview,
    /// An admin approved or rejected a held deposit or withdrawal.
    ReviewDecided,
    /// A certified resolution of a dispute case moved what it held.
    DisputeResolved,
    /// An API caller asked the node for an action that changes something
    /// (a bid, the end of a lease, a deposit, a ban): the detail names the
    /// request, the token that made it, the source address and the answer.
    Requested,
    /// Someone asked through the coordinator's operator API for a write
    /// (a deposit, a decision, a resolution, a ban): the detail names the
    /// API token (id and name) and the address it came from. Appended last
    /// so the encodings of the variants above stay as they were.
    OperatorRequest,
    /// A coordinator's comparison of its journal with the other members'
    /// moved on: every entry before the sequence in the detail was found
    /// posted at every member that answered (specs/settlement.md 10.1).
    BooksCompared,
    /// A coordinator took away the vote locks and vote evidence of leases
    /// finally settled longer ago than its grace (the detail says how
    /// many leases and keys).
    ClosedLeasesCompacted,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct AuditRecord {
    /// Position in the chain, from 0.
    pub seq: u64,
    /// When.
    pub at: UnixMillis,
    /// Who: the account or node key that caused the action.
    pub who: PublicKey,
    /// What.
    pub action: Action,
    /// Content id of the message behind it (zero when none).
    pub subject: Id,
    /// Free text: amounts, reason codes.
    pub detail: String,
    /// Hash of the previous record (zeros for the first).
    pub prev: Hash,
}

impl AuditRecord {
    /// The record's hash.
    pub fn hash(&self) -> Result<Hash> {
        let body = codec::encode("audit record", self)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(AUDIT_DOMAIN);
        hasher.update(&body);
        Ok(*hasher.finalize().as_bytes())
    }

    /// The record with its hash, as stored.
    pub fn seal(self) -> Result<SealedAudit> {
        let hash = self.hash()?;
        Ok(SealedAudit { record: self, hash })
    }
}

/// A stored audit record: the record and the hash it had when written.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SealedAudit {
    /// The record.
    pub record: AuditRecord,
    /// Its hash when appended.
    pub hash: Hash,
}

impl Record for SealedAudit {
    const WHAT: &'static str = "audit record";
}

/// Where the chain ends: the next sequence number and the last hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
pub struct AuditHead {
    /// Sequence the next record gets (= records so far).
    pub next_seq: u64,
    /// Hash of the last record (zeros when empty).
    pub last: Hash,
}

impl Record for AuditHead {
    const WHAT: &'static str = "audit head";
}

/// Why a link is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// The stored bytes do not decode (checksum, format).
    Unreadable(String),
    /// A record is missing: the next stored one has a later sequence.
    Missing {
        /// The sequence found instead.
        found: u64,
    },
    /// The record's sequence differs from its key.
    WrongSequence {
        /// The sequence inside the record.
        found: u64,
    },
    /// The record does not name the previous record's hash.
    WrongLink,
    /// The record's content no longer matches its hash: it was edited.
    Edited,
    /// The chain ends before the recorded head (records cut off the end),
    /// or the last hash differs from the head's.
    HeadMismatch {
        /// Records the head says there are.
        expected: u64,
    },
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Break::Unreadable(reason) => write!(f, "unreadable: {reason}"),
            Break::Missing { found } => write!(f, "missing (next stored record is {found})"),
            Break::WrongSequence { found } => write!(f, "record says it is {found}"),
            Break::WrongLink => f.write_str("does not link to the previous record"),
            Break::Edited => f.write_str("content does not match its hash (edited)"),
            Break::HeadMismatch { expected } => {
                write!(
                    f,
                    "chain does not end at the recorded head ({expected} records)"
                )
            }
        }
    }
}

/// The first broken link of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// Sequence of the first record that does not verify.
    pub seq: u64,
    /// Why.
    pub reason: Break,
}

/// What [`crate::Ledger::verify_audit`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Records that verified before the first break (all of them if none).
    pub verified: u64,
    /// The first broken link, if any.
    pub broken: Option<BrokenLink>,
}

impl AuditReport {
    /// True when every record verified.
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// Walks stored records in key order and reports the first broken link.
/// `records` yields each stored `(key, value)` decoded: the key's sequence
/// and the sealed record, either of which may have failed to decode. The
/// walk starts where `from` says the chain stood (the default: at its
/// start) and must end where `head` says it stands.
pub(crate) fn verify_chain(
    records: impl Iterator<Item = Result<(Result<u64>, Result<SealedAudit>)>>,
    from: AuditHead,
    head: AuditHead,
) -> Result<AuditReport> {
    match walk_chain(records, from)? {
        Walked::Broken(report) => Ok(report),
        Walked::Reached(reached) if reached != head => Ok(AuditReport {
            verified: reached.next_seq,
            broken: Some(BrokenLink {
                seq: reached.next_seq,
                reason: Break::HeadMismatch {
                    expected: head.next_seq,
                },
            }),
        }),
        Walked::Reached(reached) => Ok(AuditReport {
            verified: reached.next_seq,
            broken: None,
        }),
    }
}

/// Where a walk of part of the chain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Walked {
    /// Every record linked on from the one before: the chain stands here
    /// after the last of them.
    Reached(AuditHead),
    /// The first broken link.
    Broken(AuditReport),
}

/// Walks `records` (as in [`verify_chain`]) on from `from`, checking each
/// record's sequence, hash and link, and says where the walk ended.
pub(crate) fn walk_chain(
    records: impl Iterator<Item = Result<(Result<u64>, Result<SealedAudit>)>>,
    from: AuditHead,
) -> Result<Walked> {
    let mut expected: u64 = from.next_seq;
    let mut prev: Hash = from.last;
    let broken = |seq: u64, reason: Break| {
        Walked::Broken(AuditReport {
            verified: seq,
            broken: Some(BrokenLink { seq, reason }),
        })
    };
    for item in records {
        let (key_seq, sealed) = item?;
        let key_seq = match key_seq {
            Ok(seq) => seq,
            Err(e) => return Ok(broken(expected, Break::Unreadable(e.to_string()))),
        };
        if key_seq != expected {
            return Ok(broken(expected, Break::Missing { found: key_seq }));
        }
        let sealed = match sealed {
            Ok(sealed) => sealed,
            Err(e) => return Ok(broken(expected, Break::Unreadable(e.to_string()))),
        };
        if sealed.record.seq != key_seq {
            return Ok(broken(
                expected,
                Break::WrongSequence {
                    found: sealed.record.seq,
                },
            ));
        }
        if sealed.record.hash()? != sealed.hash {
            return Ok(broken(expected, Break::Edited));
        }
        if sealed.record.prev != prev {
            return Ok(broken(expected, Break::WrongLink));
        }
        prev = sealed.hash;
        expected = expected.saturating_add(1);
    }
    Ok(Walked::Reached(AuditHead {
        next_seq: expected,
        last: prev,
    }))
}

/// Cuts `text` to at most [`MAX_DETAIL_LEN`] bytes at a character boundary.
pub(crate) fn bounded_detail(text: &str) -> String {
    if text.len() <= MAX_DETAIL_LEN {
        return text.to_owned();
    }
    let mut end = MAX_DETAIL_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> (Vec<SealedAudit>, AuditHead) {
        let mut prev = [0; 32];
        let mut out = Vec::new();
        for seq in 0..n {
            let sealed = AuditRecord {
                seq,
                at: UnixMillis(seq),
                who: PublicKey([1; 32]),
                action: Action::Deposit,
                subject: Id([seq as u8; 32]),
                detail: format!("deposit {seq}"),
                prev,
            }
            .seal()
            .unwrap();
            prev = sealed.hash;
            out.push(sealed);
        }
        (
            out,
            AuditHead {
                next_seq: n,
                last: prev,
            },
        )
    }

    fn verify(records: &[SealedAudit], head: AuditHead) -> AuditReport {
        verify_chain(
            records
                .iter()
                .map(|r| Ok((Ok(r.record.seq), Ok(r.clone())))),
            AuditHead::default(),
            head,
        )
        .unwrap()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (records, head) = chain(5);
        assert_eq!(
            verify(&records, head),
            AuditReport {
                verified: 5,
                broken: None
            }
        );
        assert!(verify(&[], AuditHead::default()).is_intact());
    }

    #[test]
    fn each_kind_of_tampering_is_found_at_its_record() {
        let (records, head) = chain(5);

        let mut edited = records.clone();
        edited[2].record.detail = "deposit 1000".into();
        let report = verify(&edited, head);
        assert_eq!(
            report.broken.unwrap(),
            BrokenLink {
                seq: 2,
                reason: Break::Edited
            }
        );

        let mut resealed = records.clone();
        resealed[2].record.detail = "deposit 1000".into();
        resealed[2] = resealed[2].record.clone().seal().unwrap();
        let report = verify(&resealed, head);
        assert_eq!(
            report.broken.unwrap(),
            BrokenLink {
                seq: 3,
                reason: Break::WrongLink
            }
        );

        let mut removed = records.clone();
        removed.remove(1);
        assert_eq!(
            verify(&removed, head).broken.unwrap(),
            BrokenLink {
                seq: 1,
                reason: Break::Missing { found: 2 }
            }
        );

        let truncated = &records[..4];
        assert_eq!(
            verify(truncated, head).broken.unwrap(),
            BrokenLink {
                seq: 4,
                reason: Break::HeadMismatch { expected: 5 }
            }
        );
    }

    #[test]
    fn details_are_bounded_at_a_char_boundary() {
        let long = "é".repeat(MAX_DETAIL_LEN);
        let cut = bounded_detail(&long);
        assert!(cut.len() <= MAX_DETAIL_LEN);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
