//! The local API over real HTTP: each audience's listener answers only its
//! own token; no token is 401, the other scope's token is 403.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use rigmesh_ledger::{MarketRecord, MarketStore, OfferKey};
use rigmesh_node::api::local::{self, LocalApi, Scope};
use rigmesh_protocol::{Credits, Id, Keypair, Kind, Offer, Signed, UnixMillis, PROTOCOL_VERSION};

fn offer(key: &Keypair, model: &str, price: i64) -> Signed<Offer> {
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
            region: "eu".into(),
            hardware_fingerprint: Id::hardware_fingerprint(&[format!("{model}-{price}")]),
            created_at: now,
            expires_at: now.plus_ms(600_000),
        },
        key,
    )
    .unwrap()
}

fn record(o: &Signed<Offer>) -> MarketRecord {
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
    }
}

#[tokio::test]
async fn each_listener_takes_only_its_own_scope() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = local::load_or_create_tokens(dir.path()).unwrap();
    // Restarting reads the same hashes; the token files are private.
    assert_eq!(local::load_or_create_tokens(dir.path()).unwrap(), tokens);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(local::token_path(dir.path(), Scope::Customer))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let customer_token = local::read_token(dir.path(), Scope::Customer).unwrap();
    let supplier_token = local::read_token(dir.path(), Scope::Supplier).unwrap();
    assert_ne!(customer_token, supplier_token);
    let hashes = std::fs::read_to_string(dir.path().join("api/tokens.blake3")).unwrap();
    assert!(!hashes.contains(&customer_token), "only hashes are kept");

    let me = Keypair::from_seed([1; 32]);
    let other = Keypair::from_seed([2; 32]);
    let store = Arc::new(MarketStore::temporary().unwrap());
    let offers = [
        offer(&other, "NVIDIA H100 80GB HBM3", 2_900_000),
        offer(&other, "NVIDIA H100 80GB HBM3", 2_100_000),
        offer(&me, "NVIDIA A100-SXM4-80GB", 1_500_000),
    ];
    store
        .store(&offers.iter().map(record).collect::<Vec<_>>())
        .unwrap();
    let api = LocalApi {
        store,
        account: me.public(),
        tokens,
        supplier: None,
        customer: None,
        notify: Default::default(),
    };
    let localhost = "127.0.0.1:0".parse().unwrap();
    let (customer, _) = local::serve(
        Scope::Customer,
        localhost,
        api.clone(),
        std::future::pending(),
    )
    .await
    .unwrap();
    let (supplier, _) = local::serve(Scope::Supplier, localhost, api, std::future::pending())
        .await
        .unwrap();

    for addr in [customer, supplier] {
        let r = common::http_get(addr, "/v1/offers", None).await;
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        let r = common::http_get(addr, "/v1/offers", Some("not-a-token")).await;
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    }
    let r = common::http_get(customer, "/v1/offers", Some(&supplier_token)).await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    let r = common::http_get(supplier, "/v1/whoami", Some(&customer_token)).await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");

    let r = common::http_get(
        customer,
        "/v1/offers?gpu=NVIDIA%20H100%2080GB%20HBM3&max_price=2.5",
        Some(&customer_token),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let body = r.split("\r\n\r\n").nth(1).unwrap();
    let listed: Vec<Signed<Offer>> = serde_json::from_str(body).unwrap();
    assert_eq!(listed.len(), 1, "one H100 offer at or under 2.5");
    assert_eq!(listed[0].body.price_per_gpu_hour.to_string(), "2.1");

    let r = common::http_get(supplier, "/v1/offers", Some(&supplier_token)).await;
    let body = r.split("\r\n\r\n").nth(1).unwrap();
    let own: Vec<Signed<Offer>> = serde_json::from_str(body).unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].body.supplier, me.public());
}
