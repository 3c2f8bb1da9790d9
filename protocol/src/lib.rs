//! The rigmesh wire protocol: every message that moves between nodes or
//! money between accounts, its canonical bytes, its signature, its content
//! id and its validation rules. No I/O and no async here; `ledger` and
//! `node` build on it, and `specs/protocol.md` is its written form.
//!
//! A message travels as [`Signed<T>`]: decode with [`Signed::from_bytes`]
//! (size limit, well-formedness, no trailing bytes), then check with
//! [`Signed::verify`] (version, field rules, author, clock, signatures).
//! Coordinator decisions travel as [`Certificate<T>`], checked offline with
//! [`Certificate::verify`] against the epoch's [`CoordinatorSet`].

#![warn(missing_docs)]

pub mod checked;
pub mod codec;
pub mod crypto;
pub mod error;
pub mod kind;
pub mod messages;
pub mod money;
pub mod rpc;
pub mod rules;
pub mod samples;
pub mod signed;
pub mod time;
pub mod wire;

pub use checked::{CheckedCertificates, CHECKED_KEPT};
pub use crypto::{Id, Keypair, PublicKey, Signature, VerifyItem};
pub use error::{Error, Result};
pub use kind::{Carrier, Kind};
pub use messages::lease::{LeaseAgreement, LeaseProposal, LeaseTermination, TerminationReason};
pub use messages::market::{Bid, NodeBinding, Offer};
pub use messages::reputation::{Alert, Audience, ReputationReport, Role, Severity};
pub use messages::settlement::{
    AccountQuery, Approval, Certifiable, Certificate, CoordinatorSet, DecidedAgainst, Deposit,
    DisputeResolution, EscrowCertificate, EscrowOrder, EscrowRelease, ReleaseCertificate,
    ResolutionCertificate, SettlementCertificate, SettlementRequest, Vote, VoteSignature,
    Withdrawal, WithdrawalCertificate, ACCOUNT_QUERY_FRESH_MS,
};
pub use messages::usage::{DisputeReason, GpuUsage, UsageAck, UsageAttestation, UsageDispute};
pub use money::Credits;
pub use signed::{Message, Signed, PROTOCOL_VERSION};
pub use time::{Clock, UnixMillis};
