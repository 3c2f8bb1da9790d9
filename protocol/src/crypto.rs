//! Keys, signatures and content ids: ed25519 (signed with ed25519-dalek,
//! checked by the ZIP-215 rule with ed25519-zebra) and blake3.
//!
//! What is signed and hashed is always `domain || 0x00 || body`, where the
//! domain is the kind's tag (`rigmesh/v1/<kind>`) and body is the canonical
//! encoding, so neither a signature nor an id of one kind can stand for
//! another.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use bincode::{Decode, Encode};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::kind::Kind;

fn parse_hex<const N: usize>(what: &'static str, s: &str) -> Result<[u8; N]> {
    let bytes = hex::decode(s.trim()).map_err(|e| Error::Hex {
        what,
        reason: e.to_string(),
    })?;
    bytes.try_into().map_err(|b: Vec<u8>| Error::Hex {
        what,
        reason: format!("expected {N} bytes, got {}", b.len()),
    })
}

macro_rules! hex_newtype {
    ($(#[$meta:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self> {
                parse_hex::<$len>($what, s).map($name)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_newtype!(
    /// An account's ed25519 public key (supplier, customer or coordinator).
    PublicKey,
    32,
    "public key"
);
hex_newtype!(
    /// An ed25519 signature.
    Signature,
    64,
    "signature"
);
hex_newtype!(
    /// A content id or chain hash: blake3 over domain-separated canonical bytes.
    Id,
    32,
    "id"
);

impl Id {
    /// The all-zero id: "no previous item" in hash chains.
    pub const ZERO: Id = Id([0; 32]);

    /// The id of `body` (canonical bytes) as a message of `kind`.
    pub fn of(kind: Kind, body: &[u8]) -> Id {
        let mut hasher = blake3::Hasher::new();
        hasher.update(kind.domain().as_bytes());
        hasher.update(&[0]);
        hasher.update(body);
        Id(*hasher.finalize().as_bytes())
    }

    /// The hardware fingerprint of a set of GPUs: blake3 over their UUIDs,
    /// trimmed, sorted and joined by newlines, so the order in which a
    /// driver lists them does not matter.
    pub fn hardware_fingerprint<S: AsRef<str>>(uuids: &[S]) -> Id {
        let mut sorted: Vec<&str> = uuids.iter().map(|u| u.as_ref().trim()).collect();
        sorted.sort_unstable();
        Id(*blake3::hash(sorted.join("\n").as_bytes()).as_bytes())
    }

    /// True for [`Id::ZERO`].
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }
}

impl PublicKey {
    /// The key as an ed25519-dalek key, refusing points that are not on the
    /// curve and weak (small-order) keys that would verify forged messages.
    ///
    /// Parsing a key decompresses a curve point, about a fifth of what a
    /// batched signature check costs, and a market's signers repeat (the
    /// coordinators' votes, a supplier's attestation every window), so the
    /// keys parsed lately are kept parsed ([`PARSED_KEYS_KEPT`] at most).
    pub fn verifying_key(&self) -> Result<VerifyingKey> {
        Ok(self.parsed()?.dalek)
    }

    /// The key as signatures are checked against it (section 4.3 of
    /// specs/protocol.md), after the same refusals as
    /// [`PublicKey::verifying_key`].
    fn checking_key(&self) -> Result<ed25519_zebra::VerificationKey> {
        Ok(self.parsed()?.zip215)
    }

    fn parsed(&self) -> Result<ParsedKey> {
        if let Some(key) = parsed_keys().get(&self.0) {
            return Ok(key);
        }
        let invalid = || Error::InvalidKey {
            key: self.to_string(),
            reason: "not a valid ed25519 point",
        };
        let dalek = VerifyingKey::from_bytes(&self.0).map_err(|_| invalid())?;
        if dalek.is_weak() {
            return Err(Error::InvalidKey {
                key: self.to_string(),
                reason: "weak (small-order) key",
            });
        }
        let zip215 = ed25519_zebra::VerificationKey::try_from(self.0).map_err(|_| invalid())?;
        let key = ParsedKey { dalek, zip215 };
        parsed_keys().put(self.0, key);
        Ok(key)
    }
}

/// A usable key, parsed for both libraries.
#[derive(Clone, Copy)]
struct ParsedKey {
    dalek: VerifyingKey,
    zip215: ed25519_zebra::VerificationKey,
}

/// How many parsed keys are kept at most: two generations of half as many
/// each (a key used in the last generation moves to the current one), so
/// a flood of new keys only pushes the oldest out. About 4 MB when full
/// (each key parsed for both libraries, about 400 bytes).
pub const PARSED_KEYS_KEPT: usize = 8_192;

/// Keys that parsed as valid, not weak ed25519 points, by their bytes.
/// Parsing is a pure function of the bytes, so a kept key is exactly what
/// parsing again would give; keys that failed are not kept.
#[derive(Default)]
struct ParsedKeys {
    current: std::collections::HashMap<[u8; 32], ParsedKey>,
    previous: std::collections::HashMap<[u8; 32], ParsedKey>,
}

struct ParsedKeyCache(std::sync::Mutex<ParsedKeys>);

fn parsed_keys() -> &'static ParsedKeyCache {
    static KEYS: std::sync::OnceLock<ParsedKeyCache> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| ParsedKeyCache(std::sync::Mutex::new(ParsedKeys::default())))
}

impl ParsedKeyCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, ParsedKeys> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, bytes: &[u8; 32]) -> Option<ParsedKey> {
        let mut keys = self.lock();
        if let Some(key) = keys.current.get(bytes) {
            return Some(*key);
        }
        let key = keys.previous.remove(bytes)?;
        keys.insert(*bytes, key);
        Some(key)
    }

    fn put(&self, bytes: [u8; 32], key: ParsedKey) {
        self.lock().insert(bytes, key);
    }
}

impl ParsedKeys {
    fn insert(&mut self, bytes: [u8; 32], key: ParsedKey) {
        if self.current.len() >= PARSED_KEYS_KEPT / 2 {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(bytes, key);
    }
}

/// The bytes that a signature of `kind` covers: `domain || 0x00 || body`.
pub fn signing_bytes(kind: Kind, body: &[u8]) -> Vec<u8> {
    let domain = kind.domain().as_bytes();
    let mut out = Vec::with_capacity(domain.len() + 1 + body.len());
    out.extend_from_slice(domain);
    out.push(0);
    out.extend_from_slice(body);
    out
}

/// An account's signing key pair.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl Keypair {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::InvalidKey {
            key: String::new(),
            reason: if e.raw_os_error().is_some() {
                "the OS random source failed"
            } else {
                "no random source available"
            },
        })?;
        Ok(Keypair::from_seed(seed))
    }

    /// The key pair whose secret seed is `seed` (32 bytes).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Keypair {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The 32-byte secret seed; keep it secret.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    /// Signs `body` (canonical bytes) as a message of `kind`.
    pub fn sign(&self, kind: Kind, body: &[u8]) -> Signature {
        Signature(self.signing.sign(&signing_bytes(kind, body)).to_bytes())
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({})", self.public())
    }
}

/// Signatures checked one by one in this process, by [`verify`].
static SINGLE_CHECKS: AtomicU64 = AtomicU64::new(0);
/// Signatures checked inside a batch equation, by [`verify_batch`].
static BATCHED_CHECKS: AtomicU64 = AtomicU64::new(0);

/// How many signatures this process has checked since it started: the
/// count the benches divide by, so a figure such as "verifications per
/// settlement" is measured in the verification path rather than assumed.
/// One relaxed atomic add per check, next to an ed25519 verification that
/// costs tens of microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SignatureChecks {
    /// Checked alone ([`verify`]), including the
    /// fallback of a batch that failed.
    pub single: u64,
    /// Checked as part of a batch equation that held ([`verify_batch`]).
    pub batched: u64,
}

impl SignatureChecks {
    /// Both kinds together.
    pub fn total(&self) -> u64 {
        self.single.saturating_add(self.batched)
    }

    /// The checks made since `earlier`.
    pub fn since(&self, earlier: SignatureChecks) -> SignatureChecks {
        SignatureChecks {
            single: self.single.saturating_sub(earlier.single),
            batched: self.batched.saturating_sub(earlier.batched),
        }
    }
}

/// The signatures checked so far in this process (see [`SignatureChecks`]).
pub fn signature_checks() -> SignatureChecks {
    SignatureChecks {
        single: SINGLE_CHECKS.load(Ordering::Relaxed),
        batched: BATCHED_CHECKS.load(Ordering::Relaxed),
    }
}

/// Verifies one signature of `kind` over `body`.
///
/// This is the protocol's validity rule (specs/protocol.md 4.3): ed25519
/// checked as ZIP-215 specifies (canonical `S`, the equation multiplied by
/// the cofactor), with a usable key (a curve point, not of small order).
/// Unlike the cofactorless check of RFC 8032, it gives the same answer
/// alone as inside any batch ([`verify_batch`]), so every node judges a
/// signature alike however it checks it.
pub fn verify(kind: Kind, body: &[u8], signer: &PublicKey, signature: &Signature) -> Result<()> {
    SINGLE_CHECKS.fetch_add(1, Ordering::Relaxed);
    let key = signer.checking_key()?;
    let sig = ed25519_zebra::Signature::from_bytes(&signature.0);
    key.verify(&sig, &signing_bytes(kind, body))
        .map_err(|_| Error::BadSignature {
            kind,
            signer: *signer,
        })
}

/// One signature to check in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyItem {
    /// Kind of the signed message.
    pub kind: Kind,
    /// Canonical bytes of the signed body.
    pub body: Vec<u8>,
    /// Claimed signer.
    pub signer: PublicKey,
    /// The signature.
    pub signature: Signature,
}

/// Checks many signatures at once and reports, per item, whether it holds
/// by [`verify`]'s rule.
///
/// The batch equation runs first; it is much cheaper per signature, and
/// cheaper still for signatures of the same key (a coordinator's votes,
/// a supplier's attestations). Multiplied by the cofactor, it holds
/// exactly when every item passes [`verify`] (but with a chance of 2^-128
/// against a forger who cannot see the coefficients, drawn afresh from the
/// thread's cryptographic RNG each time). When it fails, or a key is
/// unusable, every item is checked alone, so one bad signature condemns
/// only its own message.
pub fn verify_batch(items: &[VerifyItem]) -> Vec<Result<()>> {
    if items.is_empty() {
        return Vec::new();
    }
    if items.iter().all(|i| i.signer.checking_key().is_ok()) {
        let mut batch = ed25519_zebra::batch::Verifier::new();
        for item in items {
            let key = ed25519_zebra::VerificationKeyBytes::from(item.signer.0);
            let signature = ed25519_zebra::Signature::from_bytes(&item.signature.0);
            batch.queue((key, signature, &signing_bytes(item.kind, &item.body)));
        }
        // Counted whether or not the equation holds: it was computed over
        // every item (a failed batch is then checked again one by one, and
        // those checks count as single ones).
        BATCHED_CHECKS.fetch_add(items.len() as u64, Ordering::Relaxed);
        if batch.verify(rand::rng()).is_ok() {
            return items.iter().map(|_| Ok(())).collect();
        }
    }
    items
        .iter()
        .map(|i| verify(i.kind, &i.body, &i.signer, &i.signature))
        .collect()
}

/// Checks that every one of `items` holds: alone for one, in one batch for
/// more ([`verify_batch`], which agrees with [`verify`]). The error is the
/// first failing item's.
pub fn verify_all(items: &[VerifyItem]) -> Result<()> {
    match items {
        [] => Ok(()),
        [one] => verify(one.kind, &one.body, &one.signer, &one.signature),
        many => verify_batch(many).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_of_one_kind_never_verifies_as_another() {
        let key = Keypair::from_seed([7; 32]);
        let body = b"same bytes".to_vec();
        let sig = key.sign(Kind::Offer, &body);
        assert!(verify(Kind::Offer, &body, &key.public(), &sig).is_ok());
        for kind in Kind::ALL {
            if kind != Kind::Offer {
                assert_eq!(
                    verify(kind, &body, &key.public(), &sig),
                    Err(Error::BadSignature {
                        kind,
                        signer: key.public()
                    })
                );
            }
        }
    }

    #[test]
    fn fingerprints_ignore_order_but_not_content() {
        let a = Id::hardware_fingerprint(&["GPU-1", "GPU-2"]);
        assert_eq!(a, Id::hardware_fingerprint(&["GPU-2", " GPU-1"]));
        assert_ne!(a, Id::hardware_fingerprint(&["GPU-1", "GPU-3"]));
        assert_ne!(a, Id::hardware_fingerprint(&["GPU-1"]));
    }

    #[test]
    fn ids_are_domain_separated() {
        assert_ne!(Id::of(Kind::Offer, b"x"), Id::of(Kind::Bid, b"x"));
    }

    #[test]
    fn every_check_is_counted() {
        // Other tests run in parallel and check signatures too, so the
        // counts only ever grow by at least what this test did.
        let key = Keypair::from_seed([8; 32]);
        let body = b"counted".to_vec();
        let sig = key.sign(Kind::Vote, &body);
        let before = signature_checks();
        verify(Kind::Vote, &body, &key.public(), &sig).unwrap();
        assert!(verify(Kind::Offer, &body, &key.public(), &sig).is_err());
        let item = VerifyItem {
            kind: Kind::Vote,
            body: body.clone(),
            signer: key.public(),
            signature: sig,
        };
        assert!(verify_batch(&[item.clone(), item.clone(), item])
            .iter()
            .all(Result::is_ok));
        let done = signature_checks().since(before);
        assert!(done.single >= 2, "{done:?}");
        assert!(done.batched >= 3, "{done:?}");
        assert!(done.total() >= 5);
    }

    #[test]
    fn batch_pinpoints_the_bad_item() {
        let key = Keypair::from_seed([1; 32]);
        let mut items: Vec<VerifyItem> = (0u8..8)
            .map(|n| VerifyItem {
                kind: Kind::UsageAck,
                body: vec![n; 10],
                signer: key.public(),
                signature: key.sign(Kind::UsageAck, &[n; 10]),
            })
            .collect();
        assert!(verify_batch(&items).iter().all(Result::is_ok));
        items[3].body[0] ^= 1;
        let results = verify_batch(&items);
        for (n, r) in results.iter().enumerate() {
            assert_eq!(r.is_ok(), n != 3, "item {n}");
        }
    }

    /// A signature of `body` by `seed`'s key made by hand, as only that
    /// key's holder can: its `R` is the nonce's point plus the small-order
    /// point `EIGHT_TORSION[torsion]`, and its `S` answers the hash of that
    /// `R`.
    fn signed_with_torsion(seed: [u8; 32], kind: Kind, body: &[u8], torsion: usize) -> Signature {
        use curve25519_dalek::constants::EIGHT_TORSION;
        use curve25519_dalek::{EdwardsPoint, Scalar};
        use sha2::{Digest, Sha512};
        let expanded = Sha512::digest(seed);
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&expanded[..32]);
        secret[0] &= 248;
        secret[31] &= 127;
        secret[31] |= 64;
        let a = Scalar::from_bytes_mod_order(secret);
        let public = EdwardsPoint::mul_base(&a).compress();
        assert_eq!(public.to_bytes(), Keypair::from_seed(seed).public().0);
        let mut wide = [0u8; 64];
        wide.copy_from_slice(&Sha512::digest(body));
        let r = Scalar::from_bytes_mod_order_wide(&wide);
        let big_r = (EdwardsPoint::mul_base(&r) + EIGHT_TORSION[torsion]).compress();
        let k = Scalar::from_hash(
            Sha512::new()
                .chain_update(big_r.as_bytes())
                .chain_update(public.as_bytes())
                .chain_update(signing_bytes(kind, body)),
        );
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(big_r.as_bytes());
        signature[32..].copy_from_slice((r + k * a).as_bytes());
        Signature(signature)
    }

    fn item(seed: u8, n: u8) -> VerifyItem {
        let key = Keypair::from_seed([seed; 32]);
        VerifyItem {
            kind: Kind::Vote,
            body: vec![n; 12],
            signer: key.public(),
            signature: key.sign(Kind::Vote, &[n; 12]),
        }
    }

    /// Whether a signature holds never depends on how it is checked: one
    /// whose `R` has a small-order part (which RFC 8032's cofactorless
    /// check refuses, and a cofactorless batch passes for some of its
    /// coefficients) holds alone and in every batch; a forged one fails
    /// alone and in every batch, and only it.
    #[test]
    fn a_signature_with_a_small_order_part_is_judged_alike_alone_and_in_every_batch() {
        let seed = [0x51; 32];
        let signer = Keypair::from_seed(seed).public();
        for torsion in 1..8 {
            let body = vec![torsion as u8; 20];
            let signature = signed_with_torsion(seed, Kind::Vote, &body, torsion);
            let dalek = signer.verifying_key().unwrap();
            assert!(
                dalek
                    .verify_strict(
                        &signing_bytes(Kind::Vote, &body),
                        &ed25519_dalek::Signature::from_bytes(&signature.0)
                    )
                    .is_err(),
                "the cofactorless check refuses it"
            );
            assert_eq!(verify(Kind::Vote, &body, &signer, &signature), Ok(()));
            let crafted = VerifyItem {
                kind: Kind::Vote,
                body: body.clone(),
                signer,
                signature,
            };
            let mut forged = crafted.clone();
            forged.body[0] ^= 1;
            assert!(verify(Kind::Vote, &forged.body, &signer, &signature).is_err());
            for batch in 0..16u8 {
                let mut items: Vec<VerifyItem> =
                    (0..6).map(|n| item(n % 3 + 1, batch ^ n)).collect();
                let at = usize::from(batch) % items.len();
                items.insert(at, crafted.clone());
                assert!(verify_batch(&items).iter().all(Result::is_ok));
                items.insert(usize::from(batch) % 3, forged.clone());
                let results = verify_batch(&items);
                for (n, (item, result)) in items.iter().zip(&results).enumerate() {
                    assert_eq!(result.is_ok(), *item != forged, "item {n} of batch {batch}");
                }
            }
        }
    }

    proptest::proptest! {
        /// For any mix of good signatures, signatures with a small-order
        /// part, and broken ones (a flipped bit of the signature, the body
        /// or the signer), each item's answer in the batch is its answer
        /// alone.
        #[test]
        fn a_batch_answers_for_each_item_as_its_single_check_does(
            plan in proptest::collection::vec((0u8..4, 0u8..8, 0usize..100, 0u8..8), 1..12)
        ) {
            let items: Vec<VerifyItem> = plan
                .iter()
                .enumerate()
                .map(|(n, &(seed, torsion, flip, what))| {
                    let body = vec![n as u8; 16];
                    let key = Keypair::from_seed([seed + 1; 32]);
                    let mut item = VerifyItem {
                        kind: Kind::UsageAck,
                        signature: if torsion == 0 {
                            key.sign(Kind::UsageAck, &body)
                        } else {
                            signed_with_torsion([seed + 1; 32], Kind::UsageAck, &body, usize::from(torsion))
                        },
                        body,
                        signer: key.public(),
                    };
                    match what {
                        0 => item.signature.0[flip % 64] ^= 1 << (flip % 8),
                        1 => item.body[flip % 16] ^= 1,
                        2 => item.signer.0[flip % 32] ^= 1 << (flip % 8),
                        _ => {}
                    }
                    item
                })
                .collect();
            let alone: Vec<bool> = items
                .iter()
                .map(|i| verify(i.kind, &i.body, &i.signer, &i.signature).is_ok())
                .collect();
            let batched: Vec<bool> = verify_batch(&items).iter().map(Result::is_ok).collect();
            proptest::prop_assert_eq!(batched, alone);
        }
    }

    #[test]
    fn invalid_and_weak_keys_are_refused() {
        // The identity point is small-order: a classic weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            PublicKey(identity).verifying_key(),
            Err(Error::InvalidKey { .. })
        ));
        assert!("zz".parse::<PublicKey>().is_err());
        assert!("00".parse::<PublicKey>().is_err());
        // Refused in a batch too, alone: the others still hold.
        let mut items: Vec<VerifyItem> = (0..4).map(|n| item(2, n)).collect();
        items[1].signer = PublicKey(identity);
        let results = verify_batch(&items);
        assert!(matches!(results[1], Err(Error::InvalidKey { .. })));
        assert!(results
            .iter()
            .enumerate()
            .all(|(n, r)| r.is_ok() == (n != 1)));
    }

    #[test]
    fn a_kept_parsed_key_is_the_key_and_refused_keys_stay_refused() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        // Not a point: y = 2 has no x on the curve.
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        let signer = Keypair::from_seed([9; 32]);
        let body = b"kept".to_vec();
        let signature = signer.sign(Kind::Offer, &body);
        let mut forged = signature;
        forged.0[0] ^= 1;
        for _ in 0..3 {
            // Refused every time: what failed to parse is never kept.
            assert!(PublicKey(identity).verifying_key().is_err());
            assert!(PublicKey(off_curve).verifying_key().is_err());
            // Kept or parsed afresh, the key is ed25519-dalek's own parse
            // and checks exactly as before.
            let key = signer.public().verifying_key().unwrap();
            assert_eq!(
                key,
                VerifyingKey::from_bytes(signer.public().as_bytes()).unwrap()
            );
            assert!(verify(Kind::Offer, &body, &signer.public(), &signature).is_ok());
            assert!(verify(Kind::Offer, &body, &signer.public(), &forged).is_err());
            assert!(verify(Kind::Bid, &body, &signer.public(), &signature).is_err());
        }
    }

    #[test]
    fn a_flood_of_new_keys_keeps_the_parsed_keys_bounded_and_correct() {
        let first = Keypair::from_seed([11; 32]);
        let body = b"bounded".to_vec();
        let signature = first.sign(Kind::Bid, &body);
        assert!(verify(Kind::Bid, &body, &first.public(), &signature).is_ok());
        for n in 0..PARSED_KEYS_KEPT + 100 {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(n as u64).to_le_bytes());
            seed[31] = 0xA5;
            Keypair::from_seed(seed).public().verifying_key().unwrap();
            let keys = parsed_keys().lock();
            assert!(keys.current.len() + keys.previous.len() <= PARSED_KEYS_KEPT);
        }
        // The first key has been pushed out by now and parses again.
        {
            let keys = parsed_keys().lock();
            let bytes = first.public().0;
            assert!(!keys.current.contains_key(&bytes) && !keys.previous.contains_key(&bytes));
        }
        assert!(verify(Kind::Bid, &body, &first.public(), &signature).is_ok());
        assert!(verify(Kind::Offer, &body, &first.public(), &signature).is_err());
    }
}
