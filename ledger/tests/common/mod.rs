//! Helpers shared by the ledger's integration tests: ledgers on each
//! backend, causes, and signed messages built from the protocol's samples.

#![allow(dead_code, unreachable_pub)]

use rigmesh_ledger::{Cause, Durability, Ledger, MemoryStore, SledStore};
use rigmesh_protocol::{samples, Credits, Id, Keypair, Offer, PublicKey, Signed, UnixMillis};

pub fn sled_ledger() -> Ledger<SledStore> {
    Ledger::with_store(SledStore::temporary().unwrap(), Durability::Flushed).unwrap()
}

pub fn memory_ledger() -> Ledger<MemoryStore> {
    Ledger::in_memory().unwrap()
}

pub fn key(n: u8) -> PublicKey {
    PublicKey([n; 32])
}

pub fn id(n: u64) -> Id {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    bytes[31] = 0xaa;
    Id(bytes)
}

pub fn cause(n: u64) -> Cause {
    Cause::new(key(0xc0), id(n), UnixMillis(samples::T0.0 + n))
}

pub fn credits(text: &str) -> Credits {
    text.parse().unwrap()
}

/// An offer by a supplier derived from `supplier_seed`, for device set
/// `device`, re-signed after the changes.
pub fn offer(
    supplier_seed: u8,
    device: u8,
    sequence: u64,
    model: &str,
    memory_mib: u64,
    price: &str,
) -> Signed<Offer> {
    let key = Keypair::from_seed([supplier_seed; 32]);
    let mut body = samples::offer().unwrap().body;
    body.supplier = key.public();
    body.hardware_fingerprint = Id([device; 32]);
    body.sequence = sequence;
    body.gpu_model = model.to_owned();
    body.gpu_memory_mib = memory_mib;
    body.price_per_gpu_hour = credits(price);
    Signed::sign(body, &key).unwrap()
}

/// Runs each named case, a function taking a ledger, as a test on sled
/// and as a test in memory (`sled_backend::case`, `memory_backend::case`).
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sled_backend {
            $(
                #[test]
                fn $case() {
                    super::$case(super::common::sled_ledger());
                }
            )*
        }
        mod memory_backend {
            $(
                #[test]
                fn $case() {
                    super::$case(super::common::memory_ledger());
                }
            )*
        }
    };
}
