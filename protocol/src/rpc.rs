//! Frames of the request-response protocols and of gossip: what a node
//! sends to one peer (lease negotiation, coordinator requests, catch-up
//! sync) and the kind tag in front of every gossiped message. Each frame
//! has an explicit size limit, enforced on both encode and decode.

use bincode::{Decode, Encode};

use crate::codec;
use crate::crypto::{Id, PublicKey};
use crate::error::{Error, Result};
use crate::kind::{Carrier, Kind};
use crate::messages::lease::{LeaseAgreement, LeaseProposal, LeaseTermination};
use crate::messages::settlement::{
    AccountQuery, Approval, Deposit, DisputeResolution, EscrowCertificate, EscrowOrder,
    EscrowRelease, ReleaseCertificate, ResolutionCertificate, SettlementCertificate,
    SettlementRequest, Vote, Withdrawal, WithdrawalCertificate,
};
use crate::messages::usage::{UsageAck, UsageAttestation, UsageDispute};
use crate::money::Credits;
use crate::signed::Signed;
use crate::time::UnixMillis;
use crate::wire::WireMessage;

/// Longest refusal reason, bytes.
pub const MAX_REASON_LEN: usize = 256;

/// Request on [`crate::kind::PROTOCOL_LEASE`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[allow(clippy::large_enum_variant)]
pub enum LeaseRequest {
    /// A customer proposes a lease.
    Propose(Signed<LeaseProposal>),
    /// The customer hands the lease's escrow certificate to the supplier.
    Fund(Box<EscrowCertificate>),
    /// The customer ends the lease early.
    Terminate(Signed<LeaseTermination>),
}

/// Response on [`crate::kind::PROTOCOL_LEASE`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum LeaseResponse {
    /// The supplier agrees.
    Agreed(Box<Signed<LeaseAgreement>>),
    /// The supplier refuses, saying why.
    Refused(String),
    /// The supplier accepted a `Fund` or `Terminate`.
    Accepted,
}

/// A certificate (or a deposit, which needs none) handed to a coordinator
/// to be applied, either alone or as what an order's account has earlier.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
// A signed deposit is a few hundred bytes; certificates, up to 8 KiB, are boxed.
#[allow(clippy::large_enum_variant)]
pub enum CertificateFrame {
    /// An escrow certificate.
    Escrow(Box<EscrowCertificate>),
    /// A settlement certificate.
    Settlement(Box<SettlementCertificate>),
    /// A withdrawal certificate.
    Withdrawal(Box<WithdrawalCertificate>),
    /// A deposit by the admin key.
    Deposit(Signed<Deposit>),
    /// An escrow release certificate.
    Release(Box<ReleaseCertificate>),
    /// A dispute resolution certificate.
    Resolution(Box<ResolutionCertificate>),
}

impl CertificateFrame {
    /// The id it is applied under: the certified message's id, or the
    /// deposit's own.
    pub fn subject(&self) -> Result<Id> {
        match self {
            CertificateFrame::Escrow(c) => c.subject(),
            CertificateFrame::Settlement(c) => c.subject(),
            CertificateFrame::Withdrawal(c) => c.subject(),
            CertificateFrame::Deposit(d) => d.id(),
            CertificateFrame::Release(c) => c.subject(),
            CertificateFrame::Resolution(c) => c.subject(),
        }
    }

    /// The kind it travels as on gossip.
    pub fn kind(&self) -> Kind {
        match self {
            CertificateFrame::Escrow(_) => Kind::EscrowCertificate,
            CertificateFrame::Settlement(_) => Kind::SettlementCertificate,
            CertificateFrame::Withdrawal(_) => Kind::WithdrawalCertificate,
            CertificateFrame::Deposit(_) => Kind::Deposit,
            CertificateFrame::Release(_) => Kind::ReleaseCertificate,
            CertificateFrame::Resolution(_) => Kind::ResolutionCertificate,
        }
    }

    /// The same message as a [`WireMessage`], to check and store it as if
    /// it had arrived by gossip.
    pub fn into_wire(self) -> WireMessage {
        match self {
            CertificateFrame::Escrow(c) => WireMessage::EscrowCertificate(*c),
            CertificateFrame::Settlement(c) => WireMessage::SettlementCertificate(*c),
            CertificateFrame::Withdrawal(c) => WireMessage::WithdrawalCertificate(*c),
            CertificateFrame::Deposit(d) => WireMessage::Deposit(d),
            CertificateFrame::Release(c) => WireMessage::ReleaseCertificate(*c),
            CertificateFrame::Resolution(c) => WireMessage::ResolutionCertificate(*c),
        }
    }
}

/// What a coordinator needs to vote for a settlement request
/// (specs/settlement.md 8.1).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SettlementBundle {
    /// The request voted on.
    pub request: Signed<SettlementRequest>,
    /// The lease's agreement.
    pub agreement: Signed<LeaseAgreement>,
    /// The lease's escrow certificate, if the coordinator may lack it.
    pub escrow: Option<EscrowCertificate>,
    /// The attestations of the range, preceded by the one `head(L)` names
    /// when the range does not start at 0.
    pub attestations: Vec<Signed<UsageAttestation>>,
    /// The customer's acks of those windows that the supplier holds.
    pub acks: Vec<Signed<UsageAck>>,
    /// The customer's disputes of those windows that the supplier holds.
    pub disputes: Vec<Signed<UsageDispute>>,
    /// Earlier settlement certificates of the lease the coordinator may lack.
    pub earlier: Vec<SettlementCertificate>,
}

/// What a coordinator needs to vote for an escrow release
/// (specs/settlement.md 8.5): the evidence of a settlement, sent by the
/// customer.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReleaseBundle {
    /// The release voted on.
    pub release: Signed<EscrowRelease>,
    /// The lease's agreement.
    pub agreement: Signed<LeaseAgreement>,
    /// The covered attestations, preceded by the one `head(L)` names when
    /// the lease has settled windows.
    pub attestations: Vec<Signed<UsageAttestation>>,
    /// The customer's acks of those windows.
    pub acks: Vec<Signed<UsageAck>>,
    /// The customer's disputes of those windows.
    pub disputes: Vec<Signed<UsageDispute>>,
    /// The customer's terminations of the lease.
    pub terminations: Vec<Signed<LeaseTermination>>,
}

/// Request on [`crate::kind::PROTOCOL_COORDINATOR`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum CoordinatorRequest {
    /// Vote for an escrow order.
    Escrow {
        /// The order.
        order: Signed<EscrowOrder>,
        /// The agreement of the lease the order funds.
        agreement: Box<Signed<LeaseAgreement>>,
        /// Earlier certificates of the account the coordinator may lack.
        missing: Vec<CertificateFrame>,
    },
    /// Vote for a settlement.
    Settle(Box<SettlementBundle>),
    /// Apply a deposit (the same as `Apply` with a deposit frame).
    Deposit(Signed<Deposit>),
    /// Vote for a withdrawal.
    Withdraw {
        /// The withdrawal.
        withdrawal: Signed<Withdrawal>,
        /// Earlier certificates of the account the coordinator may lack.
        missing: Vec<CertificateFrame>,
    },
    /// Apply a certificate (or a deposit).
    Apply(CertificateFrame),
    /// Ask for an account's state without saying who asks: refused
    /// (`query_unsigned`) by this release; kept so its encoding stays
    /// reserved. See [`CoordinatorRequest::AccountOf`].
    Account(PublicKey),
    /// Record the customer's termination of a lease: windows that start
    /// after it and that the customer did not ack are never paid
    /// (settlement.md 6.1).
    Terminate(Signed<LeaseTermination>),
    /// Vote for an escrow release.
    Release(Box<ReleaseBundle>),
    /// Vote for a debit that already holds votes (settlement.md 14.2):
    /// a member's vote for it proves it was timely, so the other members
    /// vote for it after it expired, and a debit that gathered some votes
    /// but no quorum can always be completed.
    CompleteDebit {
        /// The escrow order or withdrawal, as first sent.
        debit: Box<DebitRequest>,
        /// Votes members cast for it (one suffices as the proof).
        votes: Vec<Signed<Vote>>,
    },
    /// Ask which settlement request of a lease the coordinator voted for
    /// at a settlement sequence number (settlement.md 8.6): anyone may
    /// complete a request that gathered some votes but no quorum.
    Locked {
        /// The lease.
        lease: Id,
        /// The settlement sequence number.
        settlement_seq: u64,
    },
    /// An admin's decision on a held deposit or withdrawal
    /// (specs/settlement.md 4.3): the answer to an approved withdrawal is
    /// the coordinator's vote, to an approved deposit `Applied`.
    Decide(Signed<Approval>),
    /// List what the coordinator holds for review of this kind
    /// (`deposit`, `withdrawal`, or `dispute_resolution` for the open
    /// dispute cases), at most [`MAX_HELD_LISTED`].
    Held(Kind),
    /// Vote for an admin's resolution of a dispute case
    /// (specs/settlement.md 7.2).
    Resolve(Signed<DisputeResolution>),
    /// Ask for the file of a dispute case: the settlement that held the
    /// windows, the evidence, and the resolution once applied.
    Case {
        /// The lease.
        lease: Id,
        /// The settlement that held the windows.
        settlement_seq: u64,
    },
    /// Ask for an account's state, signed by who asks (the account, a
    /// member or an admin key). The unsigned [`CoordinatorRequest::Account`]
    /// is refused: balances are private.
    AccountOf(Signed<AccountQuery>),
    /// Ask which of these journal entries the coordinator has posted: the
    /// members' check that they hold the same books (settlement.md 10.1).
    /// `query` is a signed account query of the asker's own account; only
    /// a member or an admin key is answered, and at most
    /// [`MAX_POSTED_ASKED`] ids at once.
    Posted {
        /// Who asks, signed and fresh.
        query: Signed<AccountQuery>,
        /// Journal entry ids.
        ids: Vec<Id>,
    },
}

/// Most journal entry ids one [`CoordinatorRequest::Posted`] may ask about.
pub const MAX_POSTED_ASKED: usize = 2048;

/// A debit to vote on: the order and what its rules need.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[allow(clippy::large_enum_variant)]
pub enum DebitRequest {
    /// An escrow order with the agreement of the lease it funds.
    Escrow {
        /// The order.
        order: Signed<EscrowOrder>,
        /// The agreement of the lease.
        agreement: Signed<LeaseAgreement>,
    },
    /// A withdrawal.
    Withdraw(Signed<Withdrawal>),
}

impl DebitRequest {
    /// The request that first asks members to vote for this debit.
    pub fn first_request(&self, missing: Vec<CertificateFrame>) -> CoordinatorRequest {
        match self {
            DebitRequest::Escrow { order, agreement } => CoordinatorRequest::Escrow {
                order: order.clone(),
                agreement: Box::new(agreement.clone()),
                missing,
            },
            DebitRequest::Withdraw(withdrawal) => CoordinatorRequest::Withdraw {
                withdrawal: withdrawal.clone(),
                missing,
            },
        }
    }
}

/// Most held messages one [`CoordinatorResponse::Held`] lists.
pub const MAX_HELD_LISTED: usize = 16;

/// A deposit or withdrawal a coordinator holds for review.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct HeldEntry {
    /// `deposit` or `withdrawal`.
    pub kind: Kind,
    /// Its id.
    pub subject: Id,
    /// The signed message's canonical bytes.
    pub message: Vec<u8>,
    /// When the coordinator first held it.
    pub since: UnixMillis,
}

/// A dispute case as one coordinator holds it (specs/settlement.md 7.2).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct CaseFile {
    /// The settlement request that held the windows (its `held` is the
    /// case's amount).
    pub request: Signed<SettlementRequest>,
    /// When the coordinator applied that settlement.
    pub opened_at: UnixMillis,
    /// The certified resolution, once applied here.
    pub resolution: Option<Signed<DisputeResolution>>,
    /// How many windows of the range were held.
    pub held_windows: u64,
    /// The supplier's attestations of the held windows (its signed GPU
    /// samples), as many as fit in one response.
    pub attestations: Vec<Signed<UsageAttestation>>,
    /// The customer's disputes of the range, with reasons and details.
    pub disputes: Vec<Signed<UsageDispute>>,
    /// The customer's acks of the range that name another attestation.
    pub acks: Vec<Signed<UsageAck>>,
}

/// An account as one coordinator holds it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct AccountState {
    /// The account.
    pub account: PublicKey,
    /// The coordinator's current epoch.
    pub epoch: u64,
    /// Spendable credits.
    pub balance: Credits,
    /// The account's next debit sequence number.
    pub next_seq: u64,
    /// Credits of the account locked in escrows not yet released.
    pub escrowed: Credits,
    /// The coordinator answering.
    pub coordinator: PublicKey,
}

/// Response on [`crate::kind::PROTOCOL_COORDINATOR`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum CoordinatorResponse {
    /// The coordinator's vote.
    Vote(Signed<Vote>),
    /// The coordinator refuses, saying why.
    Refused(String),
    /// Applied, or applied before.
    Applied,
    /// Held pending; says what is missing.
    Pending(String),
    /// The state of the account asked for.
    Account(AccountState),
    /// The settlement request this coordinator voted for at the lease and
    /// settlement sequence number asked for, if any.
    Locked(Option<Signed<SettlementRequest>>),
    /// What the coordinator holds for review.
    Held(Vec<HeldEntry>),
    /// The dispute case asked for; `None` if this coordinator holds none.
    Case(Option<Box<CaseFile>>),
    /// For each id of a [`CoordinatorRequest::Posted`], in order, whether
    /// this coordinator has posted that journal entry.
    Posted(Vec<bool>),
}

/// What a catch-up sync asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum SyncTopic {
    /// Live offers.
    Offers,
    /// Certificates (escrow, settlement, withdrawal) and deposits.
    Certificates,
}

/// Request on [`crate::kind::PROTOCOL_SYNC`]: a page of stored messages
/// after a cursor.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SyncRequest {
    /// What to fetch.
    pub topic: SyncTopic,
    /// Opaque cursor from the previous page; `None` for the first.
    pub after: Option<Vec<u8>>,
    /// Most items wanted (the responder may send fewer).
    pub limit: u16,
}

/// Response on [`crate::kind::PROTOCOL_SYNC`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SyncResponse {
    /// Gossip frames ([`GossipFrame`] bytes), each checked by the receiver
    /// exactly as if it had arrived by gossip.
    pub frames: Vec<Vec<u8>>,
    /// Cursor for the next page; `None` when this was the last.
    pub next: Option<Vec<u8>>,
}

/// Most bytes a cursor may have.
pub const MAX_CURSOR_LEN: usize = 128;

macro_rules! frame {
    ($ty:ty, $what:expr, $max:expr) => {
        impl $ty {
            /// Largest encoded size accepted.
            pub const MAX_SIZE: usize = $max;

            /// Canonical bytes, refused if over [`Self::MAX_SIZE`].
            pub fn to_bytes(&self) -> Result<Vec<u8>> {
                codec::encode_frame($what, self, Self::MAX_SIZE)
            }

            /// Decodes, refusing oversized, malformed or trailing input.
            pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
                codec::decode_frame($what, bytes, Self::MAX_SIZE)
            }
        }
    };
}

// A lease request may carry an escrow certificate (8 KiB at most).
frame!(LeaseRequest, "lease request", 16 * 1024);
frame!(LeaseResponse, "lease response", 4 * 1024);
// A settlement carries the attestations of its range.
frame!(CoordinatorRequest, "coordinator request", 512 * 1024);
// A list of held messages: MAX_HELD_LISTED signed messages of 512 bytes.
frame!(CoordinatorResponse, "coordinator response", 16 * 1024);
frame!(SyncRequest, "sync request", 256);
frame!(SyncResponse, "sync response", codec::MAX_FRAME_SIZE);

/// A gossiped message: one byte naming the kind (its index in
/// [`Kind::ALL`]) followed by the message's canonical bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GossipFrame<'a> {
    /// The kind of the message.
    pub kind: Kind,
    /// Its canonical bytes (not yet decoded).
    pub bytes: &'a [u8],
}

/// Largest gossip payload: the tag plus the largest message.
pub const MAX_GOSSIP_SIZE: usize = 1 + crate::kind::MAX_MESSAGE_SIZE;

impl<'a> GossipFrame<'a> {
    /// Frames `bytes` of `kind`.
    pub fn encode(kind: Kind, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + bytes.len());
        out.push(kind.tag());
        out.extend_from_slice(bytes);
        out
    }

    /// Splits a payload into its kind and bytes, refusing an unknown tag, a
    /// kind that does not travel on `topic`, or a payload over the kind's
    /// size limit.
    pub fn decode(topic: &str, data: &'a [u8]) -> Result<Self> {
        let (&tag, bytes) = data.split_first().ok_or_else(|| Error::Frame {
            what: "gossip frame",
            reason: "empty".into(),
        })?;
        let kind = Kind::from_tag(tag).ok_or_else(|| Error::Frame {
            what: "gossip frame",
            reason: format!("unknown kind tag {tag}"),
        })?;
        if kind.carrier() != Carrier::Topic(topicless(topic)) {
            return Err(Error::Frame {
                what: "gossip frame",
                reason: format!("{kind} does not travel on {topic}"),
            });
        }
        if bytes.len() > kind.max_size() {
            return Err(Error::TooLarge {
                kind,
                size: bytes.len(),
                max: kind.max_size(),
            });
        }
        Ok(GossipFrame { kind, bytes })
    }
}

/// The static name of a known topic, or an empty string (which matches no
/// carrier) for anything else.
fn topicless(topic: &str) -> &'static str {
    use crate::kind::{TOPIC_BIDS, TOPIC_CERTS, TOPIC_OFFERS, TOPIC_REPUTATION, TOPIC_USAGE};
    [
        TOPIC_OFFERS,
        TOPIC_BIDS,
        TOPIC_USAGE,
        TOPIC_CERTS,
        TOPIC_REPUTATION,
    ]
    .into_iter()
    .find(|t| *t == topic)
    .unwrap_or("")
}

/// The request-response and gossip frame decoders, by name; the fuzz
/// targets and the corpus replay test drive them.
pub const FRAME_DECODERS: [&str; 7] = [
    "lease_request",
    "lease_response",
    "coordinator_request",
    "coordinator_response",
    "sync_request",
    "sync_response",
    "gossip_frame",
];

/// Runs the frame decoder `name` over `bytes`. Panics only if a frame that
/// decodes does not re-encode to the same bytes, which would be a codec bug.
#[doc(hidden)]
pub fn fuzz_decode_frame(name: &str, bytes: &[u8]) {
    fn check<T, E>(
        decoded: std::result::Result<T, E>,
        encode: impl Fn(&T) -> Result<Vec<u8>>,
        bytes: &[u8],
    ) {
        if let Ok(value) = decoded {
            #[allow(clippy::unwrap_used)]
            let again = encode(&value).unwrap();
            assert_eq!(again, bytes, "decode then encode changed the bytes");
        }
    }
    match name {
        "lease_request" => check(
            LeaseRequest::from_bytes(bytes),
            LeaseRequest::to_bytes,
            bytes,
        ),
        "lease_response" => check(
            LeaseResponse::from_bytes(bytes),
            LeaseResponse::to_bytes,
            bytes,
        ),
        "coordinator_request" => check(
            CoordinatorRequest::from_bytes(bytes),
            CoordinatorRequest::to_bytes,
            bytes,
        ),
        "coordinator_response" => check(
            CoordinatorResponse::from_bytes(bytes),
            CoordinatorResponse::to_bytes,
            bytes,
        ),
        "sync_request" => check(SyncRequest::from_bytes(bytes), SyncRequest::to_bytes, bytes),
        "sync_response" => check(
            SyncResponse::from_bytes(bytes),
            SyncResponse::to_bytes,
            bytes,
        ),
        _ => {
            for topic in crate::kind::Kind::ALL
                .iter()
                .filter_map(|k| match k.carrier() {
                    Carrier::Topic(t) => Some(t),
                    Carrier::Protocol(_) => None,
                })
            {
                if let Ok(frame) = GossipFrame::decode(topic, bytes) {
                    crate::wire::fuzz_decode(frame.kind, frame.bytes);
                }
            }
        }
    }
}

/// Sample frames of every decoder, to seed the fuzz corpus.
#[doc(hidden)]
pub fn sample_frames() -> Result<Vec<(&'static str, Vec<u8>)>> {
    use crate::samples;
    Ok(vec![
        (
            "lease_request",
            LeaseRequest::Propose(samples::lease_proposal()?).to_bytes()?,
        ),
        (
            "lease_response",
            LeaseResponse::Agreed(Box::new(samples::lease_agreement()?)).to_bytes()?,
        ),
        (
            "lease_response",
            LeaseResponse::Refused("GPUs busy".into()).to_bytes()?,
        ),
        (
            "lease_request",
            LeaseRequest::Fund(Box::new(samples::escrow_certificate()?)).to_bytes()?,
        ),
        (
            "lease_request",
            LeaseRequest::Terminate(samples::lease_termination()?).to_bytes()?,
        ),
        ("lease_response", LeaseResponse::Accepted.to_bytes()?),
        (
            "coordinator_request",
            CoordinatorRequest::Escrow {
                order: samples::escrow_order()?,
                agreement: Box::new(samples::lease_agreement()?),
                missing: vec![CertificateFrame::Deposit(samples::deposit()?)],
            }
            .to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::Settle(Box::new(SettlementBundle {
                request: samples::settlement_request()?,
                agreement: samples::lease_agreement()?,
                escrow: Some(samples::escrow_certificate()?),
                attestations: vec![samples::usage_attestation()?],
                acks: vec![samples::usage_ack()?],
                disputes: vec![samples::usage_dispute()?],
                earlier: Vec::new(),
            }))
            .to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::Deposit(samples::deposit()?).to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::Withdraw {
                withdrawal: samples::withdrawal()?,
                missing: vec![
                    CertificateFrame::Escrow(Box::new(samples::escrow_certificate()?)),
                    CertificateFrame::Settlement(Box::new(samples::settlement_certificate()?)),
                ],
            }
            .to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::Apply(CertificateFrame::Withdrawal(Box::new(
                samples::withdrawal_certificate()?,
            )))
            .to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::Account(samples::customer().public()).to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::Terminate(samples::lease_termination()?).to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::Release(Box::new(ReleaseBundle {
                release: samples::escrow_release()?,
                agreement: samples::lease_agreement()?,
                attestations: vec![samples::usage_attestation()?],
                acks: vec![samples::usage_ack()?],
                disputes: Vec::new(),
                terminations: vec![samples::lease_termination()?],
            }))
            .to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::Apply(CertificateFrame::Release(Box::new(
                samples::release_certificate()?,
            )))
            .to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::CompleteDebit {
                debit: Box::new(DebitRequest::Escrow {
                    order: samples::escrow_order()?,
                    agreement: samples::lease_agreement()?,
                }),
                votes: vec![samples::vote()?],
            }
            .to_bytes()?,
        ),
        (
            "coordinator_response",
            CoordinatorResponse::Vote(samples::vote()?).to_bytes()?,
        ),
        (
            "coordinator_response",
            CoordinatorResponse::Applied.to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::Decide(samples::approval()?).to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::Held(Kind::Withdrawal).to_bytes()?,
        ),
        (
            "coordinator_response",
            CoordinatorResponse::Held(vec![HeldEntry {
                kind: Kind::Deposit,
                subject: samples::deposit()?.id()?,
                message: samples::deposit()?.to_bytes()?,
                since: samples::T0,
            }])
            .to_bytes()?,
        ),
        (
            "coordinator_response",
            CoordinatorResponse::Locked(Some(samples::settlement_request()?)).to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::Resolve(samples::dispute_resolution()?).to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::AccountOf(samples::account_query()?).to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::Posted {
                query: samples::account_query()?,
                ids: vec![samples::deposit()?.id()?],
            }
            .to_bytes()?,
        ),
        (
            "coordinator_response",
            CoordinatorResponse::Posted(vec![true, false]).to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::Case {
                lease: samples::lease_agreement()?.id()?,
                settlement_seq: 0,
            }
            .to_bytes()?,
        ),
        (
            "coordinator_response",
            CoordinatorResponse::Case(Some(Box::new(CaseFile {
                request: samples::settlement_request()?,
                opened_at: samples::T0,
                resolution: Some(samples::dispute_resolution()?),
                held_windows: 1,
                attestations: vec![samples::usage_attestation()?],
                disputes: vec![samples::usage_dispute()?],
                acks: Vec::new(),
            })))
            .to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::Apply(CertificateFrame::Resolution(Box::new(
                samples::resolution_certificate()?,
            )))
            .to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::Locked {
                lease: samples::lease_agreement()?.id()?,
                settlement_seq: 0,
            }
            .to_bytes()?,
        ),
        (
            "coordinator_response",
            CoordinatorResponse::Pending("debit 0 of the account".into()).to_bytes()?,
        ),
        (
            "coordinator_response",
            CoordinatorResponse::Account(AccountState {
                account: samples::customer().public(),
                epoch: samples::EPOCH,
                balance: Credits::from_units(20_080_000),
                next_seq: 1,
                escrowed: Credits::from_units(19_920_000),
                coordinator: samples::coordinators()
                    .first()
                    .map(crate::crypto::Keypair::public)
                    .unwrap_or_else(|| samples::admin().public()),
            })
            .to_bytes()?,
        ),
        (
            "sync_request",
            SyncRequest {
                topic: SyncTopic::Offers,
                after: Some(vec![1; 33]),
                limit: 100,
            }
            .to_bytes()?,
        ),
        (
            "sync_response",
            SyncResponse {
                frames: vec![GossipFrame::encode(
                    Kind::Offer,
                    &samples::offer()?.to_bytes()?,
                )],
                next: None,
            }
            .to_bytes()?,
        ),
        (
            "gossip_frame",
            GossipFrame::encode(Kind::Offer, &samples::offer()?.to_bytes()?),
        ),
        (
            "gossip_frame",
            GossipFrame::encode(
                Kind::EscrowCertificate,
                &samples::escrow_certificate()?.to_bytes()?,
            ),
        ),
        (
            "gossip_frame",
            GossipFrame::encode(Kind::Deposit, &samples::deposit()?.to_bytes()?),
        ),
        (
            "gossip_frame",
            GossipFrame::encode(
                Kind::WithdrawalCertificate,
                &samples::withdrawal_certificate()?.to_bytes()?,
            ),
        ),
        (
            "gossip_frame",
            GossipFrame::encode(
                Kind::LeaseTermination,
                &samples::lease_termination()?.to_bytes()?,
            ),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::{TOPIC_OFFERS, TOPIC_USAGE};
    use crate::samples;

    #[test]
    fn frames_round_trip_and_enforce_their_limits() {
        let request = LeaseRequest::Propose(samples::lease_proposal().unwrap());
        let bytes = request.to_bytes().unwrap();
        assert_eq!(LeaseRequest::from_bytes(&bytes).unwrap(), request);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(LeaseRequest::from_bytes(&trailing).is_err());
        let huge = vec![0u8; LeaseRequest::MAX_SIZE + 1];
        let err = LeaseRequest::from_bytes(&huge).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
        let refusal = LeaseResponse::Refused("x".repeat(LeaseResponse::MAX_SIZE));
        assert!(refusal.to_bytes().is_err());
    }

    #[test]
    fn every_sample_frame_round_trips() {
        for (name, bytes) in sample_frames().unwrap() {
            // Panics if a frame does not re-encode to its own bytes.
            fuzz_decode_frame(name, &bytes);
            let decodes = match name {
                "lease_request" => LeaseRequest::from_bytes(&bytes).is_ok(),
                "lease_response" => LeaseResponse::from_bytes(&bytes).is_ok(),
                "coordinator_request" => CoordinatorRequest::from_bytes(&bytes).is_ok(),
                "coordinator_response" => CoordinatorResponse::from_bytes(&bytes).is_ok(),
                "sync_request" => SyncRequest::from_bytes(&bytes).is_ok(),
                "sync_response" => SyncResponse::from_bytes(&bytes).is_ok(),
                _ => Kind::ALL.iter().any(|k| match k.carrier() {
                    Carrier::Topic(t) => GossipFrame::decode(t, &bytes).is_ok(),
                    Carrier::Protocol(_) => false,
                }),
            };
            assert!(decodes, "{name} sample does not decode");
        }
    }

    #[test]
    fn existing_frame_variants_keep_their_indices() {
        // Appended variants must not renumber the ones peers already send.
        let propose = LeaseRequest::Propose(samples::lease_proposal().unwrap());
        assert_eq!(propose.to_bytes().unwrap()[..4], [0, 0, 0, 0]);
        let refused = LeaseResponse::Refused(String::new()).to_bytes().unwrap();
        assert_eq!(refused[..4], [1, 0, 0, 0]);
        assert_eq!(LeaseResponse::Accepted.to_bytes().unwrap(), [2, 0, 0, 0]);
        let fund = LeaseRequest::Fund(Box::new(samples::escrow_certificate().unwrap()));
        assert_eq!(fund.to_bytes().unwrap()[..4], [1, 0, 0, 0]);
        let refused = CoordinatorResponse::Refused(String::new());
        assert_eq!(refused.to_bytes().unwrap()[..4], [1, 0, 0, 0]);
        assert_eq!(
            CoordinatorResponse::Applied.to_bytes().unwrap(),
            [2, 0, 0, 0]
        );
    }

    #[test]
    fn certificate_frames_name_their_kind_and_subject() {
        let frames = [
            (
                CertificateFrame::Escrow(Box::new(samples::escrow_certificate().unwrap())),
                samples::escrow_order().unwrap().id().unwrap(),
            ),
            (
                CertificateFrame::Settlement(Box::new(samples::settlement_certificate().unwrap())),
                samples::settlement_request().unwrap().id().unwrap(),
            ),
            (
                CertificateFrame::Withdrawal(Box::new(samples::withdrawal_certificate().unwrap())),
                samples::withdrawal().unwrap().id().unwrap(),
            ),
            (
                CertificateFrame::Deposit(samples::deposit().unwrap()),
                samples::deposit().unwrap().id().unwrap(),
            ),
        ];
        let set = samples::coordinator_set().unwrap();
        let clock = crate::time::Clock::at(samples::T0.plus_ms(120_000));
        for (frame, subject) in frames {
            assert_eq!(frame.subject().unwrap(), subject);
            let kind = frame.kind();
            assert!(matches!(
                kind.carrier(),
                Carrier::Topic(crate::kind::TOPIC_CERTS)
            ));
            let wire = frame.into_wire();
            assert_eq!(wire.kind(), kind);
            assert_eq!(wire.id().unwrap(), subject);
            wire.verify(&clock, Some(&set)).unwrap();
        }
    }

    #[test]
    fn new_frame_limits_fit_what_they_carry() {
        // The largest valid escrow certificate (64 votes) fits a Fund.
        let mut cert = samples::escrow_certificate().unwrap();
        let vote = cert.votes[0];
        cert.votes = vec![vote; 64];
        let fund = LeaseRequest::Fund(Box::new(cert));
        assert!(fund.to_bytes().unwrap().len() <= LeaseRequest::MAX_SIZE);
        // A settlement of several hundred windows fits the coordinator limit;
        // the old 4 KiB limit held only a handful.
        let attestation = samples::usage_attestation().unwrap();
        let ack = samples::usage_ack().unwrap();
        let bundle = SettlementBundle {
            request: samples::settlement_request().unwrap(),
            agreement: samples::lease_agreement().unwrap(),
            escrow: Some(samples::escrow_certificate().unwrap()),
            attestations: vec![attestation; 500],
            acks: vec![ack; 500],
            disputes: Vec::new(),
            earlier: Vec::new(),
        };
        let settle = CoordinatorRequest::Settle(Box::new(bundle));
        let bytes = settle.to_bytes().unwrap();
        assert!(bytes.len() > 64 * 1024);
        assert_eq!(CoordinatorRequest::from_bytes(&bytes).unwrap(), settle);
        let huge = vec![0u8; CoordinatorRequest::MAX_SIZE + 1];
        assert!(CoordinatorRequest::from_bytes(&huge).is_err());
        // A pending reason of the longest allowed length still fits.
        let pending = CoordinatorResponse::Pending("x".repeat(MAX_REASON_LEN));
        assert!(pending.to_bytes().unwrap().len() <= CoordinatorResponse::MAX_SIZE);
    }

    #[test]
    fn terminations_and_deposits_travel_on_their_topics() {
        let termination = samples::lease_termination().unwrap().to_bytes().unwrap();
        let data = GossipFrame::encode(Kind::LeaseTermination, &termination);
        assert!(GossipFrame::decode(TOPIC_USAGE, &data).is_ok());
        assert!(GossipFrame::decode(crate::kind::TOPIC_CERTS, &data).is_err());
        let deposit = samples::deposit().unwrap().to_bytes().unwrap();
        let data = GossipFrame::encode(Kind::Deposit, &deposit);
        assert!(GossipFrame::decode(crate::kind::TOPIC_CERTS, &data).is_ok());
        let withdrawal = samples::withdrawal().unwrap().to_bytes().unwrap();
        let data = GossipFrame::encode(Kind::Withdrawal, &withdrawal);
        assert!(GossipFrame::decode(crate::kind::TOPIC_CERTS, &data).is_err());
        assert_eq!((Kind::Deposit.tag(), Kind::Withdrawal.tag()), (15, 16));
        assert_eq!(
            (
                Kind::WithdrawalCertificate.tag(),
                Kind::LeaseTermination.tag()
            ),
            (17, 18)
        );
    }

    #[test]
    fn gossip_frames_name_their_kind_and_topic() {
        let offer = samples::offer().unwrap().to_bytes().unwrap();
        let data = GossipFrame::encode(Kind::Offer, &offer);
        let frame = GossipFrame::decode(TOPIC_OFFERS, &data).unwrap();
        assert_eq!((frame.kind, frame.bytes), (Kind::Offer, offer.as_slice()));
        assert!(GossipFrame::decode(TOPIC_USAGE, &data).is_err());
        assert!(GossipFrame::decode(TOPIC_OFFERS, &[]).is_err());
        assert!(GossipFrame::decode(TOPIC_OFFERS, &[200, 1, 2]).is_err());
        let oversized = GossipFrame::encode(Kind::Offer, &vec![0; 2000]);
        assert!(matches!(
            GossipFrame::decode(TOPIC_OFFERS, &oversized),
            Err(Error::TooLarge { .. })
        ));
    }
}
