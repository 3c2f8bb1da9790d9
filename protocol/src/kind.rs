//! The message kinds: their signing domains, size limits and the gossip
//! topic or request-response protocol that carries each.

use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Every kind of message rigmesh signs, hashes or sends.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An account binds itself to the libp2p peer it runs on.
    NodeBinding,
    /// A supplier offers GPUs at a price.
    Offer,
    /// A customer's standing request for GPUs.
    Bid,
    /// A customer proposes a lease on an offer.
    LeaseProposal,
    /// A supplier accepts a proposal; with the proposal inside, both have signed.
    LeaseAgreement,
    /// A customer debits its account into escrow for a lease.
    EscrowOrder,
    /// A coordinator's vote for an order or a settlement.
    Vote,
    /// An escrow order with a quorum of coordinator votes.
    EscrowCertificate,
    /// A settlement request with a quorum of coordinator votes.
    SettlementCertificate,
    /// A supplier's signed usage summary for one metering window.
    UsageAttestation,
    /// A customer accepts an attestation.
    UsageAck,
    /// A customer disputes an attestation.
    UsageDispute,
    /// A supplier asks coordinators to pay out metered windows.
    SettlementRequest,
    /// A coordinator's score of a supplier or customer.
    ReputationReport,
    /// A signed notice that something needs attention.
    Alert,
    /// The coordinator set's administrative key credits an account (an
    /// external top-up).
    Deposit,
    /// An account owner debits its account to an external destination.
    Withdrawal,
    /// A withdrawal with a quorum of coordinator votes.
    WithdrawalCertificate,
    /// A customer ends a lease early.
    LeaseTermination,
    /// A customer asks for the escrow of a lease whose supplier never
    /// settled it finally: what it acked is paid, the rest comes back.
    EscrowRelease,
    /// An escrow release with a quorum of coordinator votes.
    ReleaseCertificate,
    /// An admin key's decision on a deposit or withdrawal that
    /// coordinators hold for review: approve it or reject it.
    Approval,
    /// An admin key's decision on a dispute case: how the amount a
    /// settlement held for review is split.
    DisputeResolution,
    /// A dispute resolution with a quorum of coordinator votes.
    ResolutionCertificate,
    /// A request to read an account's state from a coordinator, signed
    /// by who asks: the account itself, a coordinator or an admin key.
    AccountQuery,
}

/// Gossip topic for offers.
pub const TOPIC_OFFERS: &str = "/rigmesh/1/offers";
/// Gossip topic for standing bids.
pub const TOPIC_BIDS: &str = "/rigmesh/1/bids";
/// Gossip topic for usage attestations, acks, disputes and lease terminations.
pub const TOPIC_USAGE: &str = "/rigmesh/1/usage";
/// Gossip topic for certificates and deposits.
pub const TOPIC_CERTS: &str = "/rigmesh/1/certs";
/// Gossip topic for reputation reports and alerts.
pub const TOPIC_REPUTATION: &str = "/rigmesh/1/reputation";

/// Request-response protocol for lease negotiation.
pub const PROTOCOL_LEASE: &str = "/rigmesh/lease/1";
/// Request-response protocol for coordinator requests (orders, settlement).
pub const PROTOCOL_COORDINATOR: &str = "/rigmesh/coordinator/1";
/// Request-response protocol for catch-up sync.
pub const PROTOCOL_SYNC: &str = "/rigmesh/sync/1";

/// How a kind travels between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// Published on a gossipsub topic.
    Topic(&'static str),
    /// Sent over a request-response protocol.
    Protocol(&'static str),
}

impl Kind {
    /// All kinds, in declaration order.
    pub const ALL: [Kind; 25] = [
        Kind::NodeBinding,
        Kind::Offer,
        Kind::Bid,
        Kind::LeaseProposal,
        Kind::LeaseAgreement,
        Kind::EscrowOrder,
        Kind::Vote,
        Kind::EscrowCertificate,
        Kind::SettlementCertificate,
        Kind::UsageAttestation,
        Kind::UsageAck,
        Kind::UsageDispute,
        Kind::SettlementRequest,
        Kind::ReputationReport,
        Kind::Alert,
        Kind::Deposit,
        Kind::Withdrawal,
        Kind::WithdrawalCertificate,
        Kind::LeaseTermination,
        Kind::EscrowRelease,
        Kind::ReleaseCertificate,
        Kind::Approval,
        Kind::DisputeResolution,
        Kind::ResolutionCertificate,
        Kind::AccountQuery,
    ];

    /// The kind's name, as used in domains, file names and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::NodeBinding => "node_binding",
            Kind::Offer => "offer",
            Kind::Bid => "bid",
            Kind::LeaseProposal => "lease_proposal",
            Kind::LeaseAgreement => "lease_agreement",
            Kind::EscrowOrder => "escrow_order",
            Kind::Vote => "vote",
            Kind::EscrowCertificate => "escrow_certificate",
            Kind::SettlementCertificate => "settlement_certificate",
            Kind::UsageAttestation => "usage_attestation",
            Kind::UsageAck => "usage_ack",
            Kind::UsageDispute => "usage_dispute",
            Kind::SettlementRequest => "settlement_request",
            Kind::ReputationReport => "reputation_report",
            Kind::Alert => "alert",
            Kind::Deposit => "deposit",
            Kind::Withdrawal => "withdrawal",
            Kind::WithdrawalCertificate => "withdrawal_certificate",
            Kind::LeaseTermination => "lease_termination",
            Kind::EscrowRelease => "escrow_release",
            Kind::ReleaseCertificate => "release_certificate",
            Kind::Approval => "approval",
            Kind::DisputeResolution => "dispute_resolution",
            Kind::ResolutionCertificate => "resolution_certificate",
            Kind::AccountQuery => "account_query",
        }
    }

    /// The signing and hashing domain: `rigmesh/v1/<name>`.
    pub const fn domain(self) -> &'static str {
        match self {
            Kind::NodeBinding => "rigmesh/v1/node_binding",
            Kind::Offer => "rigmesh/v1/offer",
            Kind::Bid => "rigmesh/v1/bid",
            Kind::LeaseProposal => "rigmesh/v1/lease_proposal",
            Kind::LeaseAgreement => "rigmesh/v1/lease_agreement",
            Kind::EscrowOrder => "rigmesh/v1/escrow_order",
            Kind::Vote => "rigmesh/v1/vote",
            Kind::EscrowCertificate => "rigmesh/v1/escrow_certificate",
            Kind::SettlementCertificate => "rigmesh/v1/settlement_certificate",
            Kind::UsageAttestation => "rigmesh/v1/usage_attestation",
            Kind::UsageAck => "rigmesh/v1/usage_ack",
            Kind::UsageDispute => "rigmesh/v1/usage_dispute",
            Kind::SettlementRequest => "rigmesh/v1/settlement_request",
            Kind::ReputationReport => "rigmesh/v1/reputation_report",
            Kind::Alert => "rigmesh/v1/alert",
            Kind::Deposit => "rigmesh/v1/deposit",
            Kind::Withdrawal => "rigmesh/v1/withdrawal",
            Kind::WithdrawalCertificate => "rigmesh/v1/withdrawal_certificate",
            Kind::LeaseTermination => "rigmesh/v1/lease_termination",
            Kind::EscrowRelease => "rigmesh/v1/escrow_release",
            Kind::ReleaseCertificate => "rigmesh/v1/release_certificate",
            Kind::Approval => "rigmesh/v1/approval",
            Kind::DisputeResolution => "rigmesh/v1/dispute_resolution",
            Kind::ResolutionCertificate => "rigmesh/v1/resolution_certificate",
            Kind::AccountQuery => "rigmesh/v1/account_query",
        }
    }

    /// Maximum encoded size, in bytes, of the kind as it travels: the whole
    /// `Signed<T>` envelope, or the whole certificate. Decoders refuse
    /// anything longer before reading a byte of it.
    pub const fn max_size(self) -> usize {
        match self {
            Kind::NodeBinding => 512,
            Kind::Offer => 1024,
            Kind::Bid => 1024,
            Kind::LeaseProposal => 1024,
            Kind::LeaseAgreement => 2048,
            Kind::EscrowOrder => 512,
            Kind::Vote => 256,
            Kind::EscrowCertificate => 8192,
            Kind::SettlementCertificate => 8192,
            Kind::UsageAttestation => 8192,
            Kind::UsageAck => 512,
            Kind::UsageDispute => 1024,
            Kind::SettlementRequest => 1024,
            Kind::ReputationReport => 512,
            Kind::Alert => 2048,
            Kind::Deposit => 512,
            Kind::Withdrawal => 512,
            Kind::WithdrawalCertificate => 8192,
            Kind::LeaseTermination => 512,
            Kind::EscrowRelease => 1024,
            Kind::ReleaseCertificate => 8192,
            Kind::Approval => 512,
            Kind::DisputeResolution => 1024,
            Kind::ResolutionCertificate => 8192,
            Kind::AccountQuery => 256,
        }
    }

    /// Where the kind travels. A kind gossiped on a topic may also be handed
    /// over directly on a request-response protocol (a deposit to a
    /// coordinator, a termination to the supplier); this names the carrier
    /// that decides which gossip topic accepts it.
    pub const fn carrier(self) -> Carrier {
        match self {
            Kind::Offer => Carrier::Topic(TOPIC_OFFERS),
            Kind::Bid => Carrier::Topic(TOPIC_BIDS),
            Kind::UsageAttestation
            | Kind::UsageAck
            | Kind::UsageDispute
            | Kind::LeaseTermination => Carrier::Topic(TOPIC_USAGE),
            Kind::EscrowCertificate
            | Kind::SettlementCertificate
            | Kind::WithdrawalCertificate
            | Kind::ReleaseCertificate
            | Kind::ResolutionCertificate
            | Kind::Deposit => Carrier::Topic(TOPIC_CERTS),
            Kind::ReputationReport | Kind::Alert | Kind::NodeBinding => {
                Carrier::Topic(TOPIC_REPUTATION)
            }
            Kind::LeaseProposal | Kind::LeaseAgreement => Carrier::Protocol(PROTOCOL_LEASE),
            Kind::EscrowOrder
            | Kind::Vote
            | Kind::SettlementRequest
            | Kind::Withdrawal
            | Kind::EscrowRelease
            | Kind::Approval
            | Kind::DisputeResolution
            | Kind::AccountQuery => Carrier::Protocol(PROTOCOL_COORDINATOR),
        }
    }

    /// The one-byte tag of the kind in gossip frames: its index in [`Kind::ALL`].
    pub fn tag(self) -> u8 {
        Kind::ALL
            .iter()
            .position(|k| *k == self)
            .and_then(|i| u8::try_from(i).ok())
            .unwrap_or(u8::MAX)
    }

    /// The kind with this gossip tag, if any.
    pub fn from_tag(tag: u8) -> Option<Kind> {
        Kind::ALL.get(usize::from(tag)).copied()
    }

    /// The kind with this name, if any.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The largest [`Kind::max_size`]; the codec's hard allocation limit.
pub const MAX_MESSAGE_SIZE: usize = 8192;

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_domains_and_limits_agree() {
        for kind in Kind::ALL {
            assert_eq!(kind.domain(), format!("rigmesh/v1/{}", kind.name()));
            assert_eq!(Kind::from_name(kind.name()), Some(kind));
            assert!(kind.max_size() <= MAX_MESSAGE_SIZE);
            assert_eq!(Kind::from_tag(kind.tag()), Some(kind));
        }
        // Kinds are only ever appended: gossip tags and the Kind index in
        // votes must not move.
        assert_eq!(Kind::Alert.tag(), 14);
        assert_eq!(Kind::LeaseTermination.tag(), 18);
        assert_eq!(Kind::ReleaseCertificate.tag(), 20);
        assert_eq!(Kind::Approval.tag(), 21);
        assert_eq!(Kind::ResolutionCertificate.tag(), 23);
    }
}
