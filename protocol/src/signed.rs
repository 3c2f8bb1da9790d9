//! `Signed<T>`: a message body with its signer and an ed25519 signature over
//! the kind's domain and the body's canonical bytes, plus the [`Message`]
//! trait every signed body implements.

use std::fmt::Debug;

use bincode::{Decode, Encode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::crypto::{self, Id, Keypair, PublicKey, Signature, VerifyItem};
use crate::error::{Error, Result};
use crate::kind::Kind;
use crate::time::{Clock, UnixMillis};

/// The protocol version every message of this release carries.
pub const PROTOCOL_VERSION: u16 = 1;

/// A body that can be signed: its kind, who must sign it, and its rules.
pub trait Message:
    Encode + Decode<()> + Clone + PartialEq + Debug + Serialize + DeserializeOwned
{
    /// The kind, which fixes the signing domain and the size limit.
    const KIND: Kind;

    /// The `version` field.
    fn version(&self) -> u16;

    /// The field that names the account that must sign, and its value.
    fn author(&self) -> (&'static str, PublicKey);

    /// `created_at`, where the kind has one.
    fn created_at(&self) -> Option<UnixMillis>;

    /// `expires_at`, where the kind has one.
    fn expires_at(&self) -> Option<UnixMillis> {
        None
    }

    /// Rules on the fields alone (ranges, shapes, consistency), independent
    /// of the clock; [`check_version`] has already run.
    fn check_fields(&self) -> Result<()>;

    /// Signatures carried inside the body (a lease agreement carries the
    /// customer's signed proposal). They are checked with the outer one.
    fn inner_signatures(&self) -> Result<Vec<VerifyItem>> {
        Ok(Vec::new())
    }
}

/// Refuses a version other than [`PROTOCOL_VERSION`].
pub fn check_version<T: Message>(body: &T) -> Result<()> {
    if body.version() != PROTOCOL_VERSION {
        return Err(Error::UnsupportedVersion {
            kind: T::KIND,
            found: body.version(),
            supported: PROTOCOL_VERSION,
        });
    }
    Ok(())
}

/// A body, the key that signed it, and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Signed<T> {
    /// The signed message.
    pub body: T,
    /// The public key that signed it.
    pub signer: PublicKey,
    /// ed25519 over `domain || 0x00 || canonical(body)`.
    pub signature: Signature,
}

impl<T: Message> Signed<T> {
    /// Signs `body` with `key`. Fails if the body does not encode or is over
    /// the kind's size limit once signed.
    pub fn sign(body: T, key: &Keypair) -> Result<Self> {
        let bytes = codec::encode_part(T::KIND, &body)?;
        let signed = Signed {
            signature: key.sign(T::KIND, &bytes),
            signer: key.public(),
            body,
        };
        // Refuse to produce what no peer would accept.
        signed.to_bytes()?;
        Ok(signed)
    }

    /// Canonical bytes of the body alone (what is signed and hashed).
    pub fn body_bytes(&self) -> Result<Vec<u8>> {
        codec::encode_part(T::KIND, &self.body)
    }

    /// The content id: blake3 over the domain and the body's canonical bytes.
    /// It does not depend on the signature.
    pub fn id(&self) -> Result<Id> {
        Ok(Id::of(T::KIND, &self.body_bytes()?))
    }

    /// Canonical bytes of the whole envelope, as sent and stored.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        codec::encode(T::KIND, self)
    }

    /// Decodes an envelope (size limit, well-formedness, no trailing bytes).
    /// Decoding checks nothing else: call [`Signed::verify`] next.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        codec::decode(T::KIND, bytes)
    }

    /// Everything but the signatures and the clock: version, field rules,
    /// and that the signer is the account the body speaks for.
    pub fn check_body(&self) -> Result<()> {
        check_version(&self.body)?;
        self.body.check_fields()?;
        let (field, expected) = self.body.author();
        if expected != self.signer {
            return Err(Error::WrongSigner {
                kind: T::KIND,
                field,
                expected,
                signer: self.signer,
            });
        }
        Ok(())
    }

    /// The signatures this envelope needs checked: its own, then any inside.
    pub fn verify_items(&self) -> Result<Vec<VerifyItem>> {
        let mut items = vec![VerifyItem {
            kind: T::KIND,
            body: self.body_bytes()?,
            signer: self.signer,
            signature: self.signature,
        }];
        items.extend(self.body.inner_signatures()?);
        Ok(items)
    }

    /// Checks every signature (its own and any inside the body), in one
    /// batch when there are several ([`crypto::verify_all`]).
    pub fn verify_signatures(&self) -> Result<()> {
        crypto::verify_all(&self.verify_items()?)
    }

    /// Full check of a live message: body rules, signer, clock, signatures.
    pub fn verify(&self, clock: &Clock) -> Result<()> {
        self.check_body()?;
        clock.check(T::KIND, self.body.created_at(), self.body.expires_at())?;
        self.verify_signatures()
    }

    /// Full check of a historical record (inside a certificate, replayed from
    /// the ledger): everything [`Signed::verify`] checks except expiry.
    pub fn verify_record(&self) -> Result<()> {
        self.check_body()?;
        self.verify_signatures()
    }
}
