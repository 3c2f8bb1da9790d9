//! Any message by kind: one dispatch point for code that holds bytes and a
//! kind but no static type (the CLI's `message verify`, the fuzz targets,
//! the corpus replay test, gossip topics that carry several kinds).

use serde::{Deserialize, Serialize};

use crate::checked::CheckedCertificates;
use crate::crypto::{Id, VerifyItem};
use crate::error::{Error, Result};
use crate::kind::Kind;
use crate::messages::lease::{LeaseAgreement, LeaseProposal, LeaseTermination};
use crate::messages::market::{Bid, NodeBinding, Offer};
use crate::messages::reputation::{Alert, ReputationReport};
use crate::messages::settlement::{
    AccountQuery, Approval, CoordinatorSet, Deposit, DisputeResolution, EscrowCertificate,
    EscrowOrder, EscrowRelease, ReleaseCertificate, ResolutionCertificate, SettlementCertificate,
    SettlementRequest, Vote, Withdrawal, WithdrawalCertificate,
};
use crate::messages::usage::{UsageAck, UsageAttestation, UsageDispute};
use crate::signed::{Message, Signed};
use crate::time::Clock;

/// Bytes after the body in a signed envelope: signer (32) and signature (64).
const ENVELOPE_TAIL: usize = 96;

macro_rules! wire_message {
    ($($kind:ident => $signed:ty),* ; $($cert_kind:ident => $cert:ty),*) => {
        /// A decoded message of any kind.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "kind", content = "message", rename_all = "snake_case")]
        #[allow(clippy::large_enum_variant)]
        pub enum WireMessage {
            $(
                #[doc = concat!("A signed `", stringify!($kind), "`.")]
                $kind(Signed<$signed>),
            )*
            $(
                #[doc = concat!("An `", stringify!($cert_kind), "`.")]
                $cert_kind($cert),
            )*
        }

        impl WireMessage {
            /// Decodes `bytes` as a message of `kind`.
            pub fn decode(kind: Kind, bytes: &[u8]) -> Result<Self> {
                Ok(match kind {
                    $(Kind::$kind => WireMessage::$kind(Signed::from_bytes(bytes)?),)*
                    $(Kind::$cert_kind => WireMessage::$cert_kind(<$cert>::from_bytes(bytes)?),)*
                })
            }

            /// The kind.
            pub fn kind(&self) -> Kind {
                match self {
                    $(WireMessage::$kind(_) => Kind::$kind,)*
                    $(WireMessage::$cert_kind(_) => Kind::$cert_kind,)*
                }
            }

            /// True for a certificate (a message certified by a quorum's
            /// votes), false for a signed message.
            pub fn is_certificate(&self) -> bool {
                match self {
                    $(WireMessage::$kind(_) => false,)*
                    $(WireMessage::$cert_kind(_) => true,)*
                }
            }

            /// Canonical bytes.
            pub fn to_bytes(&self) -> Result<Vec<u8>> {
                match self {
                    $(WireMessage::$kind(m) => m.to_bytes(),)*
                    $(WireMessage::$cert_kind(c) => c.to_bytes(),)*
                }
            }

            /// The content id (for a certificate, the id of what it certifies).
            pub fn id(&self) -> Result<Id> {
                match self {
                    $(WireMessage::$kind(m) => m.id(),)*
                    $(WireMessage::$cert_kind(c) => c.subject(),)*
                }
            }

            /// Every check except the signatures, which
            /// [`WireMessage::signature_items`] returns for batch checking
            /// (a certificate's votes among them: the batch's answer is the
            /// single check's). A certificate needs `coordinators`.
            pub fn check_unsigned(&self, clock: &Clock, coordinators: Option<&CoordinatorSet>) -> Result<()> {
                match self {
                    $(WireMessage::$kind(m) => {
                        m.check_body()?;
                        clock.check(Kind::$kind, m.body.created_at(), m.body.expires_at())
                    })*
                    $(WireMessage::$cert_kind(c) => c.check_unsigned(Self::set_for_certificate(coordinators)?),)*
                }
            }

            /// A certificate's check through `checked`: skipped when the
            /// same bytes passed it before against `checked`'s set; `None`
            /// for a signed kind.
            pub fn verify_certificate_once(&self, checked: &CheckedCertificates) -> Option<Result<()>> {
                match self {
                    $(WireMessage::$kind(_) => None,)*
                    $(WireMessage::$cert_kind(c) => Some(checked.verify(c, checked.set())),)*
                }
            }

            /// The content id and the signatures to check, taken from `wire`,
            /// the exact bytes this message was decoded from, without
            /// encoding it again: a signed envelope is `body || signer ||
            /// signature`, so its body is all but the last 96 bytes
            /// (decoding is canonical and refuses trailing bytes).
            pub fn id_and_signatures(&self, wire: &[u8]) -> Result<(Id, Vec<VerifyItem>)> {
                match self {
                    $(WireMessage::$kind(m) => {
                        let body = wire
                            .get(..wire.len().saturating_sub(ENVELOPE_TAIL))
                            .unwrap_or_default();
                        let mut items = vec![VerifyItem {
                            kind: Kind::$kind,
                            body: body.to_vec(),
                            signer: m.signer,
                            signature: m.signature,
                        }];
                        items.extend(m.body.inner_signatures()?);
                        Ok((Id::of(Kind::$kind, body), items))
                    })*
                    $(WireMessage::$cert_kind(c) => Ok((c.subject()?, c.signature_items()?)),)*
                }
            }

            /// The signatures a message needs checked: a signed message's
            /// own and any inside it; a certificate's message's and its
            /// votes.
            pub fn signature_items(&self) -> Result<Vec<VerifyItem>> {
                match self {
                    $(WireMessage::$kind(m) => m.verify_items(),)*
                    $(WireMessage::$cert_kind(c) => c.signature_items(),)*
                }
            }

            /// Full check: a signed message against `clock`, a certificate
            /// against `coordinators` (required for certificates).
            pub fn verify(&self, clock: &Clock, coordinators: Option<&CoordinatorSet>) -> Result<()> {
                match self {
                    $(WireMessage::$kind(m) => m.verify(clock),)*
                    $(WireMessage::$cert_kind(c) => c.verify(Self::set_for_certificate(coordinators)?),)*
                }
            }

            fn set_for_certificate(coordinators: Option<&CoordinatorSet>) -> Result<&CoordinatorSet> {
                coordinators.ok_or_else(|| Error::CoordinatorSet(
                    "a certificate needs the coordinator set of its epoch".into(),
                ))
            }
        }
    };
}

wire_message!(
    NodeBinding => NodeBinding,
    Offer => Offer,
    Bid => Bid,
    LeaseProposal => LeaseProposal,
    LeaseAgreement => LeaseAgreement,
    EscrowOrder => EscrowOrder,
    Vote => Vote,
    UsageAttestation => UsageAttestation,
    UsageAck => UsageAck,
    UsageDispute => UsageDispute,
    SettlementRequest => SettlementRequest,
    ReputationReport => ReputationReport,
    Alert => Alert,
    Deposit => Deposit,
    Withdrawal => Withdrawal,
    LeaseTermination => LeaseTermination,
    EscrowRelease => EscrowRelease,
    Approval => Approval,
    DisputeResolution => DisputeResolution,
    AccountQuery => AccountQuery;
    EscrowCertificate => EscrowCertificate,
    SettlementCertificate => SettlementCertificate,
    WithdrawalCertificate => WithdrawalCertificate,
    ReleaseCertificate => ReleaseCertificate,
    ResolutionCertificate => ResolutionCertificate
);

/// Decodes `bytes` as a message of `kind` and re-encodes it if it decodes; used
/// by the fuzz targets and the corpus replay test. Panics only if a decoded
/// message does not re-encode to the same bytes, which would be a codec bug.
#[doc(hidden)]
pub fn fuzz_decode(kind: Kind, bytes: &[u8]) {
    if let Ok(message) = WireMessage::decode(kind, bytes) {
        let _ = message.verify(&Clock::at(crate::time::UnixMillis(0)), None);
        let _ = message.id();
        #[allow(clippy::unwrap_used)]
        let (id, _) = message.id_and_signatures(bytes).unwrap();
        #[allow(clippy::unwrap_used)]
        let expected = message.id().unwrap();
        assert_eq!(id, expected, "{kind}: id from the wire differs");
        #[allow(clippy::unwrap_used)]
        let again = message.to_bytes().unwrap();
        assert_eq!(again, bytes, "{kind}: decode then encode changed the bytes");
    }
}
