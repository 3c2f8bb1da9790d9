//! Frames of the request-response protocols and of gossip: what a node
//! sends to one peer (lease negotiation, coordinator requests, catch-up
//! sync) and the kind tag in front of every gossiped message. Each frame
//! has an explicit size limit, enforced on both encode and decode.

use bincode::{Decode, Encode};

use crate::codec;
use crate::error::{Error, Result};
use crate::kind::{Carrier, Kind};
use crate::messages::lease::{LeaseAgreement, LeaseProposal};
use crate::messages::settlement::{EscrowOrder, SettlementRequest, Vote};
use crate::signed::Signed;

/// Longest refusal reason, bytes.
pub const MAX_REASON_LEN: usize = 256;

/// Request on [`crate::kind::PROTOCOL_LEASE`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum LeaseRequest {
    /// A customer proposes a lease.
    Propose(Signed<LeaseProposal>),
}

/// Response on [`crate::kind::PROTOCOL_LEASE`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum LeaseResponse {
    /// The supplier agrees.
    Agreed(Box<Signed<LeaseAgreement>>),
    /// The supplier refuses, saying why.
    Refused(String),
}

/// Request on [`crate::kind::PROTOCOL_COORDINATOR`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum CoordinatorRequest {
    /// Vote for an escrow order.
    Escrow(Signed<EscrowOrder>),
    /// Vote for a settlement.
    Settle(Signed<SettlementRequest>),
}

/// Response on [`crate::kind::PROTOCOL_COORDINATOR`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum CoordinatorResponse {
    /// The coordinator's vote.
    Vote(Signed<Vote>),
    /// The coordinator refuses, saying why.
    Refused(String),
}

/// What a catch-up sync asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum SyncTopic {
    /// Live offers.
    Offers,
    /// Certificates (escrow and settlement).
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

frame!(LeaseRequest, "lease request", 4 * 1024);
frame!(LeaseResponse, "lease response", 4 * 1024);
frame!(CoordinatorRequest, "coordinator request", 4 * 1024);
frame!(CoordinatorResponse, "coordinator response", 1024);
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
            "coordinator_request",
            CoordinatorRequest::Escrow(samples::escrow_order()?).to_bytes()?,
        ),
        (
            "coordinator_request",
            CoordinatorRequest::Settle(samples::settlement_request()?).to_bytes()?,
        ),
        (
            "coordinator_response",
            CoordinatorResponse::Vote(samples::vote()?).to_bytes()?,
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
