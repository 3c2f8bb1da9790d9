//! Money messages of the FastPay-style settlement (specs/settlement.md):
//! the customer's `EscrowOrder`, the supplier's `SettlementRequest`, an
//! owner's `Withdrawal`, the admin key's `Deposit`, a coordinator's `Vote`,
//! an admin's `Approval` of a held deposit or withdrawal, the coordinator
//! set of an epoch, and `Certificate<T>`: a signed order
//! plus a quorum of votes, checkable offline.

use std::collections::BTreeSet;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::crypto::{self, Id, PublicKey, Signature, VerifyItem};
use crate::error::{Error, Result};
use crate::kind::Kind;
use crate::money::Credits;
use crate::rules::{self, HOUR_MS};
use crate::signed::{Message, Signed, PROTOCOL_VERSION};
use crate::time::UnixMillis;

/// Longest lifetime of an escrow order: one hour.
pub const ESCROW_ORDER_MAX_TTL_MS: u64 = HOUR_MS;
/// Most coordinators an epoch may have (bounds certificate size).
pub const MAX_COORDINATORS: usize = 64;
/// Longest external reference of a deposit, bytes.
pub const MAX_DEPOSIT_REFERENCE_LEN: usize = 128;
/// Longest external destination of a withdrawal, bytes.
pub const MAX_WITHDRAWAL_DESTINATION_LEN: usize = 128;
/// Longest note of a dispute resolution, bytes.
pub const MAX_RESOLUTION_NOTE_LEN: usize = 256;

/// A customer moves `amount` from its account into escrow for a lease.
/// `seq` is the account's debit sequence number: coordinators vote for at
/// most one order per `(account, seq)`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct EscrowOrder {
    /// Protocol version (1).
    pub version: u16,
    /// The paying account; must sign.
    pub account: PublicKey,
    /// The account's next debit sequence number.
    pub seq: u64,
    /// Coordinator epoch the order is addressed to.
    pub epoch: u64,
    /// The lease (id of its agreement).
    pub lease: Id,
    /// Who will be paid from the escrow.
    pub supplier: PublicKey,
    /// Amount locked.
    pub amount: Credits,
    /// When it was made.
    pub created_at: UnixMillis,
    /// Coordinators refuse to vote after this.
    pub expires_at: UnixMillis,
}

impl Message for EscrowOrder {
    const KIND: Kind = Kind::EscrowOrder;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("account", self.account)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        Some(self.created_at)
    }

    fn expires_at(&self) -> Option<UnixMillis> {
        Some(self.expires_at)
    }

    fn check_fields(&self) -> Result<()> {
        let kind = Self::KIND;
        if self.account == self.supplier {
            return Err(Error::field(
                kind,
                "supplier",
                "an account cannot pay itself",
            ));
        }
        if self.lease.is_zero() {
            return Err(Error::field(kind, "lease", "must be set"));
        }
        rules::positive(kind, "amount", self.amount)?;
        rules::lifetime(
            kind,
            self.created_at,
            self.expires_at,
            ESCROW_ORDER_MAX_TTL_MS,
        )
    }
}

/// Credits that enter the system from outside: the administrative key of
/// the coordinator set credits `amount` to `account`, standing for an
/// external top-up. Its id is its identity: a deposit is applied at most
/// once, and `reference` (the external payment id) keeps two top-ups of the
/// same amount apart.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Deposit {
    /// Protocol version (1).
    pub version: u16,
    /// Coordinator epoch whose configured admin key this is.
    pub epoch: u64,
    /// The administrative key; must sign.
    pub admin: PublicKey,
    /// The account credited.
    pub account: PublicKey,
    /// Amount credited.
    pub amount: Credits,
    /// External reference, such as a payment id.
    pub reference: String,
    /// When it was made.
    pub created_at: UnixMillis,
}

impl Message for Deposit {
    const KIND: Kind = Kind::Deposit;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("admin", self.admin)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        Some(self.created_at)
    }

    fn check_fields(&self) -> Result<()> {
        let kind = Self::KIND;
        rules::positive(kind, "amount", self.amount)?;
        rules::text(
            kind,
            "reference",
            &self.reference,
            MAX_DEPOSIT_REFERENCE_LEN,
            false,
        )
    }
}

/// A signed read of an account's state (`CoordinatorRequest::AccountOf`).
/// Balances are private: a coordinator answers only the account itself,
/// a member of the coordinator set or one of its admin keys, and only a
/// query made within [`ACCOUNT_QUERY_FRESH_MS`] of its own clock, so a
/// query seen once cannot be replayed later to read the account again.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct AccountQuery {
    /// Protocol version (1).
    pub version: u16,
    /// The account read.
    pub account: PublicKey,
    /// Who asks; must sign.
    pub asker: PublicKey,
    /// When it was made.
    pub created_at: UnixMillis,
}

/// How far an account query's time may be from the coordinator's clock.
pub const ACCOUNT_QUERY_FRESH_MS: u64 = 120_000;

impl Message for AccountQuery {
    const KIND: Kind = Kind::AccountQuery;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("asker", self.asker)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        Some(self.created_at)
    }

    fn check_fields(&self) -> Result<()> {
        Ok(())
    }
}

/// An admin key's decision on a money message that coordinators hold for
/// review (specs/settlement.md section 4.3): a deposit above the approval
/// threshold waits for the approval of a second admin key, and a
/// withdrawal above the review threshold, or to a destination new to its
/// account, waits for an admin's approval before any coordinator votes.
/// `approve: false` rejects it: coordinators drop what they hold.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Approval {
    /// Protocol version (1).
    pub version: u16,
    /// Coordinator epoch whose configured admin keys this is one of.
    pub epoch: u64,
    /// The deciding admin key; must sign.
    pub admin: PublicKey,
    /// What is decided on: `deposit` or `withdrawal`.
    pub subject_kind: Kind,
    /// Id of the deposit or withdrawal.
    pub subject: Id,
    /// True to approve, false to reject.
    pub approve: bool,
    /// When it was made.
    pub created_at: UnixMillis,
}

impl Message for Approval {
    const KIND: Kind = Kind::Approval;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("admin", self.admin)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        Some(self.created_at)
    }

    fn check_fields(&self) -> Result<()> {
        let kind = Self::KIND;
        if !matches!(self.subject_kind, Kind::Deposit | Kind::Withdrawal) {
            return Err(Error::field(
                kind,
                "subject_kind",
                format!(
                    "{} is not reviewed; deposit or withdrawal",
                    self.subject_kind
                ),
            ));
        }
        if self.subject.is_zero() {
            return Err(Error::field(kind, "subject", "must be set"));
        }
        Ok(())
    }
}

/// Whose dispute a resolution decides against: the party that loses it
/// (it counts in that party's reputation as a dispute lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecidedAgainst {
    /// The supplier billed what it did not deliver.
    Supplier,
    /// The customer disputed what was delivered.
    Customer,
    /// Neither: the held amount is split and nobody is blamed.
    Neither,
}

/// An admin's decision on a dispute case (specs/settlement.md 7.2): the
/// windows one settlement held for review. Of the `held` amount,
/// `supplier_share` is paid out as a settlement pays (the fee taken from
/// it) and the rest is refunded to the customer. It takes effect only once
/// a quorum of coordinators certifies it; a coordinator votes for at most
/// one resolution per case.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct DisputeResolution {
    /// Protocol version (1).
    pub version: u16,
    /// Coordinator epoch whose configured admin keys this is one of.
    pub epoch: u64,
    /// The deciding admin key; must sign.
    pub admin: PublicKey,
    /// The lease.
    pub lease: Id,
    /// The lease's supplier.
    pub supplier: PublicKey,
    /// The lease's customer.
    pub customer: PublicKey,
    /// The settlement that held the windows (the case).
    pub settlement_seq: u64,
    /// What the case holds; must equal what the coordinators hold.
    pub held: Credits,
    /// Paid to the supplier's side (before the fee); the rest of `held`
    /// goes back to the customer.
    pub supplier_share: Credits,
    /// Who loses the dispute.
    pub against: DecidedAgainst,
    /// Why, for both parties and the audit trail.
    pub note: String,
    /// When it was made.
    pub created_at: UnixMillis,
}

impl Message for DisputeResolution {
    const KIND: Kind = Kind::DisputeResolution;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("admin", self.admin)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        Some(self.created_at)
    }

    fn check_fields(&self) -> Result<()> {
        let kind = Self::KIND;
        if self.lease.is_zero() {
            return Err(Error::field(kind, "lease", "must be set"));
        }
        if self.supplier == self.customer {
            return Err(Error::field(kind, "customer", "must differ from supplier"));
        }
        rules::positive(kind, "held", self.held)?;
        rules::non_negative(kind, "supplier_share", self.supplier_share)?;
        if self.supplier_share > self.held {
            return Err(Error::field(
                kind,
                "supplier_share",
                format!(
                    "{} is more than the {} held",
                    self.supplier_share, self.held
                ),
            ));
        }
        if self.supplier_share == self.held && self.against == DecidedAgainst::Supplier {
            return Err(Error::field(
                kind,
                "against",
                "a decision against the supplier cannot pay it everything held",
            ));
        }
        if self.supplier_share.is_zero() && self.against == DecidedAgainst::Customer {
            return Err(Error::field(
                kind,
                "against",
                "a decision against the customer cannot refund everything held",
            ));
        }
        rules::text(kind, "note", &self.note, MAX_RESOLUTION_NOTE_LEN, false)
    }
}

/// An account owner takes `amount` out of the system to an external
/// destination. It is a debit like an [`EscrowOrder`] and shares the
/// account's debit sequence: coordinators vote for at most one debit per
/// `(account, seq)`, whichever kind it is.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Withdrawal {
    /// Protocol version (1).
    pub version: u16,
    /// The paying account; must sign.
    pub account: PublicKey,
    /// The account's next debit sequence number.
    pub seq: u64,
    /// Coordinator epoch the withdrawal is addressed to.
    pub epoch: u64,
    /// Amount withdrawn.
    pub amount: Credits,
    /// External destination, such as a payout address.
    pub destination: String,
    /// When it was made.
    pub created_at: UnixMillis,
    /// Coordinators refuse to vote after this.
    pub expires_at: UnixMillis,
}

impl Message for Withdrawal {
    const KIND: Kind = Kind::Withdrawal;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("account", self.account)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        Some(self.created_at)
    }

    fn expires_at(&self) -> Option<UnixMillis> {
        Some(self.expires_at)
    }

    fn check_fields(&self) -> Result<()> {
        let kind = Self::KIND;
        rules::positive(kind, "amount", self.amount)?;
        rules::text(
            kind,
            "destination",
            &self.destination,
            MAX_WITHDRAWAL_DESTINATION_LEN,
            false,
        )?;
        // The same bound as an escrow order: a debit that gathers votes
        // slowly locks its seq, so its window to do so is short.
        rules::lifetime(
            kind,
            self.created_at,
            self.expires_at,
            ESCROW_ORDER_MAX_TTL_MS,
        )
    }
}

/// A supplier asks to be paid for windows `first_window..=last_window` of a
/// lease. The amounts are what every honest coordinator computes from the
/// attestation chain with the ledger's billing rule; a coordinator that gets
/// another result does not vote.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct SettlementRequest {
    /// Protocol version (1).
    pub version: u16,
    /// The lease.
    pub lease: Id,
    /// The supplier account; must sign.
    pub supplier: PublicKey,
    /// The customer account.
    pub customer: PublicKey,
    /// The lease's settlement sequence number, from 0.
    pub settlement_seq: u64,
    /// Coordinator epoch the request is addressed to.
    pub epoch: u64,
    /// Id of the escrow order whose certificate funds the lease.
    pub escrow: Id,
    /// First attestation `seq` paid.
    pub first_window: u64,
    /// Last attestation `seq` paid.
    pub last_window: u64,
    /// Id of attestation `last_window`.
    pub attestation_head: Id,
    /// GPU-milliseconds paid for (disputed windows excluded).
    pub billable_gpu_ms: u64,
    /// Credited to the supplier.
    pub supplier_amount: Credits,
    /// Paid to the coordinators.
    pub fee: Credits,
    /// Returned to the customer; only in the final settlement.
    pub refund: Credits,
    /// Kept out of the escrow for review: the value of the windows in the
    /// range that the customer disputed and that no rule decides
    /// (specs/settlement.md 7.1). A certified resolution pays it out.
    pub held: Credits,
    /// True for the last settlement of the lease, which releases the escrow.
    pub final_settlement: bool,
    /// When it was made.
    pub created_at: UnixMillis,
}

impl Message for SettlementRequest {
    const KIND: Kind = Kind::SettlementRequest;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("supplier", self.supplier)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        Some(self.created_at)
    }

    fn check_fields(&self) -> Result<()> {
        let kind = Self::KIND;
        if self.supplier == self.customer {
            return Err(Error::field(kind, "customer", "must differ from supplier"));
        }
        for (field, id) in [
            ("lease", self.lease),
            ("escrow", self.escrow),
            ("attestation_head", self.attestation_head),
        ] {
            if id.is_zero() {
                return Err(Error::field(kind, field, "must be set"));
            }
        }
        if self.last_window < self.first_window {
            return Err(Error::field(kind, "last_window", "is before first_window"));
        }
        rules::non_negative(kind, "supplier_amount", self.supplier_amount)?;
        rules::non_negative(kind, "fee", self.fee)?;
        rules::non_negative(kind, "refund", self.refund)?;
        rules::non_negative(kind, "held", self.held)?;
        if !self.final_settlement && !self.refund.is_zero() {
            return Err(Error::field(
                kind,
                "refund",
                "only the final settlement refunds",
            ));
        }
        Ok(())
    }
}

/// The customer asks for the escrow of a lease back when the lease has
/// ended and its supplier has not settled it finally within the grace
/// period (specs/settlement.md 8.5). It is the final settlement of the
/// windows `first_window .. first_window + windows` that the supplier
/// attested and the customer acked, signed by the customer: what the
/// customer acked is paid to the supplier, the rest of the escrow comes
/// back. `windows` may be 0 (nothing was attested, or nothing after the
/// last settlement).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct EscrowRelease {
    /// Protocol version (1).
    pub version: u16,
    /// The lease.
    pub lease: Id,
    /// The customer account; must sign.
    pub customer: PublicKey,
    /// The supplier account.
    pub supplier: PublicKey,
    /// The lease's settlement sequence number this release takes.
    pub settlement_seq: u64,
    /// Coordinator epoch the release is addressed to.
    pub epoch: u64,
    /// Id of the escrow order whose certificate funds the lease.
    pub escrow: Id,
    /// First attestation `seq` covered (where the settled windows stop).
    pub first_window: u64,
    /// How many windows from `first_window` are covered; may be 0.
    pub windows: u64,
    /// Id of the last covered attestation; zero when `windows` is 0.
    pub attestation_head: Id,
    /// GPU-milliseconds paid for: those of the acked windows.
    pub billable_gpu_ms: u64,
    /// Credited to the supplier.
    pub supplier_amount: Credits,
    /// Paid to the coordinators.
    pub fee: Credits,
    /// Returned to the customer: the rest of the escrow.
    pub refund: Credits,
    /// When it was made.
    pub created_at: UnixMillis,
}

impl EscrowRelease {
    /// The last covered window, if any.
    pub fn last_window(&self) -> Option<u64> {
        self.windows
            .checked_sub(1)
            .and_then(|n| self.first_window.checked_add(n))
    }
}

impl Message for EscrowRelease {
    const KIND: Kind = Kind::EscrowRelease;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("customer", self.customer)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        Some(self.created_at)
    }

    fn check_fields(&self) -> Result<()> {
        let kind = Self::KIND;
        if self.supplier == self.customer {
            return Err(Error::field(kind, "supplier", "must differ from customer"));
        }
        for (field, id) in [("lease", self.lease), ("escrow", self.escrow)] {
            if id.is_zero() {
                return Err(Error::field(kind, field, "must be set"));
            }
        }
        if self.windows > 0 && self.last_window().is_none() {
            return Err(Error::field(kind, "windows", "runs past the last seq"));
        }
        if (self.windows == 0) != self.attestation_head.is_zero() {
            return Err(Error::field(
                kind,
                "attestation_head",
                "is set exactly when windows are covered",
            ));
        }
        if self.windows == 0
            && (self.billable_gpu_ms != 0 || !self.supplier_amount.is_zero() || !self.fee.is_zero())
        {
            return Err(Error::field(
                kind,
                "supplier_amount",
                "nothing is paid without windows",
            ));
        }
        rules::non_negative(kind, "supplier_amount", self.supplier_amount)?;
        rules::non_negative(kind, "fee", self.fee)?;
        rules::non_negative(kind, "refund", self.refund)?;
        Ok(())
    }
}

/// A coordinator's vote: "I have checked message `subject` and certify it
/// as `certificate` in `epoch`". Votes carry no time, so a certificate can
/// rebuild each vote from its own fields.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Vote {
    /// Protocol version (1).
    pub version: u16,
    /// Coordinator epoch.
    pub epoch: u64,
    /// The voting coordinator; must sign.
    pub coordinator: PublicKey,
    /// What the vote makes: a certificate kind (escrow, settlement,
    /// withdrawal, release or resolution).
    pub certificate: Kind,
    /// Id of the message voted for.
    pub subject: Id,
}

impl Message for Vote {
    const KIND: Kind = Kind::Vote;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("coordinator", self.coordinator)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        None
    }

    fn check_fields(&self) -> Result<()> {
        if !matches!(
            self.certificate,
            Kind::EscrowCertificate
                | Kind::SettlementCertificate
                | Kind::WithdrawalCertificate
                | Kind::ReleaseCertificate
                | Kind::ResolutionCertificate
        ) {
            return Err(Error::field(
                Self::KIND,
                "certificate",
                format!("{} is not a certificate kind", self.certificate),
            ));
        }
        if self.subject.is_zero() {
            return Err(Error::field(Self::KIND, "subject", "must be set"));
        }
        Ok(())
    }
}

/// The coordinators of one epoch: n members, of which f = (n - 1) / 3 may be
/// faulty; a quorum is the smallest count any two of which share f + 1
/// members, which is 2f + 1 when n = 3f + 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorSet {
    epoch: u64,
    members: Vec<PublicKey>,
}

impl CoordinatorSet {
    /// A set of distinct, usable keys, 1 to [`MAX_COORDINATORS`] of them.
    pub fn new(epoch: u64, members: Vec<PublicKey>) -> Result<Self> {
        if members.is_empty() || members.len() > MAX_COORDINATORS {
            return Err(Error::CoordinatorSet(format!(
                "{} members; need 1 to {MAX_COORDINATORS}",
                members.len()
            )));
        }
        let distinct: BTreeSet<_> = members.iter().collect();
        if distinct.len() != members.len() {
            return Err(Error::CoordinatorSet("a key appears twice".into()));
        }
        for member in &members {
            member.verifying_key()?;
        }
        Ok(CoordinatorSet { epoch, members })
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The members, in configuration order.
    pub fn members(&self) -> &[PublicKey] {
        &self.members
    }

    /// True if `key` is a member.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.members.contains(key)
    }

    /// Faulty members tolerated: f = (n - 1) / 3.
    pub fn max_faulty(&self) -> usize {
        self.members.len().saturating_sub(1) / 3
    }

    /// Votes needed for a certificate: (n + f) / 2 + 1, i.e. 2f + 1 for n = 3f + 1.
    pub fn quorum(&self) -> usize {
        (self.members.len() + self.max_faulty()) / 2 + 1
    }
}

/// A kind that coordinators certify.
pub trait Certifiable: Message {
    /// The certificate kind it becomes.
    const CERTIFICATE: Kind;
    /// The epoch the message is addressed to.
    fn epoch(&self) -> u64;
}

impl Certifiable for EscrowOrder {
    const CERTIFICATE: Kind = Kind::EscrowCertificate;
    fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Certifiable for SettlementRequest {
    const CERTIFICATE: Kind = Kind::SettlementCertificate;
    fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Certifiable for Withdrawal {
    const CERTIFICATE: Kind = Kind::WithdrawalCertificate;
    fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Certifiable for EscrowRelease {
    const CERTIFICATE: Kind = Kind::ReleaseCertificate;
    fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Certifiable for DisputeResolution {
    const CERTIFICATE: Kind = Kind::ResolutionCertificate;
    fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// One coordinator's signature over the [`Vote`] a certificate implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct VoteSignature {
    /// The coordinator.
    pub coordinator: PublicKey,
    /// Its signature of `Vote { version, epoch, coordinator, certificate, subject }`.
    pub signature: Signature,
}

/// A signed message plus a quorum of coordinator votes for it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Certificate<T> {
    /// Protocol version (1).
    pub version: u16,
    /// The certified message, with its author's signature.
    pub message: Signed<T>,
    /// The votes, one per coordinator.
    pub votes: Vec<VoteSignature>,
}

/// An escrow order certified by a quorum: the escrow is locked.
pub type EscrowCertificate = Certificate<EscrowOrder>;
/// A settlement certified by a quorum: the payout happens.
pub type SettlementCertificate = Certificate<SettlementRequest>;
/// A withdrawal certified by a quorum: the credits leave the account.
pub type WithdrawalCertificate = Certificate<Withdrawal>;
/// An escrow release certified by a quorum: the lease is settled finally.
pub type ReleaseCertificate = Certificate<EscrowRelease>;
/// A dispute resolution certified by a quorum: the held amount moves.
pub type ResolutionCertificate = Certificate<DisputeResolution>;

impl<T: Certifiable> Certificate<T> {
    /// The vote a coordinator signs for `message`.
    pub fn vote_for(message: &Signed<T>, coordinator: PublicKey) -> Result<Vote> {
        Ok(Vote {
            version: PROTOCOL_VERSION,
            epoch: message.body.epoch(),
            coordinator,
            certificate: T::CERTIFICATE,
            subject: message.id()?,
        })
    }

    /// Assembles a certificate from votes already checked one by one (the
    /// collector's side); [`Certificate::verify`] is the receiver's side.
    pub fn assemble(message: Signed<T>, votes: &[Signed<Vote>]) -> Result<Self> {
        let mut sigs = Vec::with_capacity(votes.len());
        for vote in votes {
            let expected = Self::vote_for(&message, vote.signer)?;
            if vote.body != expected {
                return Err(Error::field(
                    Kind::Vote,
                    "subject",
                    format!("vote by {} is for another message", vote.signer),
                ));
            }
            sigs.push(VoteSignature {
                coordinator: vote.signer,
                signature: vote.signature,
            });
        }
        Ok(Certificate {
            version: PROTOCOL_VERSION,
            message,
            votes: sigs,
        })
    }

    /// The id of the certified message (the certificate's identity).
    pub fn subject(&self) -> Result<Id> {
        self.message.id()
    }

    /// Canonical bytes, as sent and stored.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        codec::encode(T::CERTIFICATE, self)
    }

    /// Decodes a certificate; call [`Certificate::verify`] next.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        codec::decode(T::CERTIFICATE, bytes)
    }

    /// Offline check against the coordinator set of the message's epoch: the
    /// message is valid and signed by its author, every vote is by a distinct
    /// member, every vote signature verifies, and there are at least a
    /// quorum. Expiry is not checked: a certificate stays valid once formed.
    /// The signatures are checked in one batch, whose answer is the single
    /// check's (specs/protocol.md 4.4).
    pub fn verify(&self, set: &CoordinatorSet) -> Result<()> {
        self.check_unsigned(set)?;
        crypto::verify_all(&self.signature_items()?)
    }

    /// Everything [`Certificate::verify`] checks but the signatures: the
    /// version, the epoch, the voters (distinct members, a quorum) and the
    /// message's body rules. Passing it and then every one of
    /// [`Certificate::signature_items`] (in any batch) is passing
    /// [`Certificate::verify`].
    pub fn check_unsigned(&self, set: &CoordinatorSet) -> Result<()> {
        let kind = T::CERTIFICATE;
        if self.version != PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion {
                kind,
                found: self.version,
                supported: PROTOCOL_VERSION,
            });
        }
        let epoch = self.message.body.epoch();
        if epoch != set.epoch() {
            return Err(Error::WrongEpoch {
                kind,
                expected: set.epoch(),
                found: epoch,
            });
        }
        if self.votes.len() > set.members().len() {
            return Err(Error::field(
                kind,
                "votes",
                format!(
                    "{} votes but epoch {epoch} has {} coordinators",
                    self.votes.len(),
                    set.members().len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for vote in &self.votes {
            if !set.contains(&vote.coordinator) {
                return Err(Error::UnknownSigner {
                    kind,
                    signer: vote.coordinator,
                    epoch,
                });
            }
            if !seen.insert(vote.coordinator) {
                return Err(Error::DuplicateSigner {
                    kind,
                    signer: vote.coordinator,
                });
            }
        }
        if self.votes.len() < set.quorum() {
            return Err(Error::TooFewVotes {
                kind,
                have: self.votes.len(),
                need: set.quorum(),
            });
        }
        self.message.check_body()
    }

    /// The signatures a certificate carries: the message's own (and any
    /// inside it), then each vote's over what it certifies.
    pub fn signature_items(&self) -> Result<Vec<VerifyItem>> {
        let mut items = self.message.verify_items()?;
        for vote in &self.votes {
            let body = Self::vote_for(&self.message, vote.coordinator)?;
            items.push(VerifyItem {
                kind: Kind::Vote,
                body: codec::encode_part(Kind::Vote, &body)?,
                signer: vote.coordinator,
                signature: vote.signature,
            });
        }
        Ok(items)
    }
}
