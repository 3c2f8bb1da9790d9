//! Signed offers and their store records, for API tests.
#![allow(dead_code, unreachable_pub)]

use rigmesh_ledger::{MarketRecord, OfferKey};
use rigmesh_protocol::{Credits, Id, Keypair, Kind, Offer, Signed, UnixMillis, PROTOCOL_VERSION};

/// A live offer of two GPUs of `model` at `price` micro-credits per GPU-hour.
pub fn offer(key: &Keypair, model: &str, price: i64, region: &str) -> Signed<Offer> {
    let now = UnixMillis::now();
    Signed::sign(
        Offer {
            version: PROTOCOL_VERSION,
            supplier: key.public(),
            sequence: 1,
            gpu_model: model.into(),
            gpu_memory_mib: 81_920,
            gpu_count: 2,
            price_per_gpu_hour: Credits::from_units(price),
            min_hours: 1,
            max_hours: 8,
            region: region.into(),
            hardware_fingerprint: Id::hardware_fingerprint(&[format!("{model}-{price}")]),
            created_at: now,
            expires_at: now.plus_ms(600_000),
        },
        key,
    )
    .unwrap()
}

/// The store record of an offer.
pub fn record(o: &Signed<Offer>) -> MarketRecord {
    MarketRecord {
        kind: Kind::Offer,
        id: o.id().unwrap(),
        bytes: o.to_bytes().unwrap(),
        offer: Some(OfferKey {
            supplier: o.body.supplier,
            fingerprint: o.body.hardware_fingerprint,
            sequence: o.body.sequence,
            expires_at: o.body.expires_at,
        }),
        expires_at: None,
        lease: None,
        window: None,
        author: Some(o.body.supplier),
        report: None,
        accounts: Vec::new(),
        made_at: None,
    }
}
