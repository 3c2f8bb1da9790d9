//! The customer and supplier listeners over real HTTP: each route needs
//! its scope; the bootstrap tokens are private files and only their
//! hashes are kept; offers are filtered and the supplier sees its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use rigmesh_ledger::MarketStore;
use rigmesh_node::api::local::{self, LocalApi};
use rigmesh_node::api::tokens::{self, Bootstrap};
use rigmesh_node::api::{AlertTarget, ApiMetrics, Firewall, Listener, ListenerLimits, TokenStore};
use rigmesh_node::orderbook::OrderBook;
use rigmesh_protocol::{Keypair, Offer, Signed};

#[path = "common/offers.rs"]
mod offers;

#[tokio::test]
async fn each_listener_takes_only_the_scopes_of_its_routes() {
    let dir = tempfile::tempdir().unwrap();
    let store_tokens =
        TokenStore::open(dir.path(), &[Bootstrap::Customer, Bootstrap::Supplier]).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tokens::token_path(dir.path(), Bootstrap::Customer))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let customer_token = tokens::read_token(dir.path(), Bootstrap::Customer).unwrap();
    let supplier_token = tokens::read_token(dir.path(), Bootstrap::Supplier).unwrap();
    assert_ne!(customer_token, supplier_token);

    let me = Keypair::from_seed([1; 32]);
    let other = Keypair::from_seed([2; 32]);
    let store = Arc::new(MarketStore::temporary().unwrap());
    let listed = [
        offers::offer(&other, "NVIDIA H100 80GB HBM3", 2_900_000, "eu"),
        offers::offer(&other, "NVIDIA H100 80GB HBM3", 2_100_000, "eu"),
        offers::offer(&me, "NVIDIA A100-SXM4-80GB", 1_500_000, "eu"),
    ];
    store
        .store(&listed.iter().map(offers::record).collect::<Vec<_>>())
        .unwrap();
    let api = LocalApi {
        book: Arc::new(OrderBook::loaded_from(&store).unwrap()),
        store,
        account: me.public(),
        tokens: store_tokens,
        supplier: None,
        customer: None,
        notify: Default::default(),
        coordinator: None,
        trends: None,
        review: None,
        quorum: None,
        network: None,
    };
    let localhost = "127.0.0.1:0".parse().unwrap();
    let firewall = |listener| {
        Arc::new(
            Firewall::new(
                listener,
                ListenerLimits::default(),
                ApiMetrics::default(),
                AlertTarget::default(),
            )
            .unwrap(),
        )
    };
    let (customer, _) = local::serve(
        Listener::Customer,
        localhost,
        api.clone(),
        firewall(Listener::Customer),
        std::future::pending(),
    )
    .await
    .unwrap();
    let (supplier, _) = local::serve(
        Listener::Supplier,
        localhost,
        api,
        firewall(Listener::Supplier),
        std::future::pending(),
    )
    .await
    .unwrap();

    for addr in [customer, supplier] {
        let r = common::http_get(addr, "/v1/offers", None).await;
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        assert!(r.contains(r#""error":"token_missing""#), "{r}");
        let r = common::http_get(addr, "/v1/offers", Some("not-a-token")).await;
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        assert!(r.contains(r#""error":"token_not_recognised""#), "{r}");
    }
    let r = common::http_get(customer, "/v1/offers", Some(&supplier_token)).await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("customer:read"), "{r}");
    // whoami takes any valid token of the node, and says what it may do.
    let r = common::http_get(supplier, "/v1/whoami", Some(&customer_token)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains(r#""token":"customer-cli""#), "{r}");

    let r = common::http_get(
        customer,
        "/v1/offers?gpu=NVIDIA%20H100%2080GB%20HBM3&max_price=2.5",
        Some(&customer_token),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let body = r.split("\r\n\r\n").nth(1).unwrap();
    let found: Vec<Signed<Offer>> = serde_json::from_str(body).unwrap();
    assert_eq!(found.len(), 1, "one H100 offer at or under 2.5");
    assert_eq!(found[0].body.price_per_gpu_hour.to_string(), "2.1");

    // Pages: the body stays an array of offers, cheapest first; the
    // cursor of the next page comes in a header, absent on the last page.
    let next_cursor = |r: &str| {
        r.split("\r\n\r\n")
            .next()
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("next-cursor: ").map(str::to_string))
    };
    let prices = |r: &str| {
        let body = r.split("\r\n\r\n").nth(1).unwrap();
        let page: Vec<Signed<Offer>> = serde_json::from_str(body).unwrap();
        page.iter()
            .map(|o| o.body.price_per_gpu_hour.to_string())
            .collect::<Vec<_>>()
    };
    let r = common::http_get(customer, "/v1/offers?limit=2", Some(&customer_token)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(prices(&r), ["1.5", "2.1"]);
    let cursor = next_cursor(&r).expect("a next-cursor header on the first page");
    let r = common::http_get(
        customer,
        &format!("/v1/offers?limit=2&cursor={cursor}"),
        Some(&customer_token),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(prices(&r), ["2.9"]);
    assert_eq!(next_cursor(&r), None, "the last page has no next");
    let r = common::http_get(customer, "/v1/offers?cursor=2", Some(&customer_token)).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");

    let r = common::http_get(supplier, "/v1/offers", Some(&supplier_token)).await;
    let body = r.split("\r\n\r\n").nth(1).unwrap();
    let own: Vec<Signed<Offer>> = serde_json::from_str(body).unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].body.supplier, me.public());
}
