//! The suspicious-activity review queue on a real coordinator node: an
//! address that hammers the operator API with bad tokens becomes a review
//! item the operator lists and acknowledges (and a token without
//! `operator:review` cannot), kept across a restart; and the combined
//! flood, where one libp2p peer sends invalid gossip, a request flood and
//! malformed sync requests and keeps reconnecting while one address
//! hammers the HTTP API, and the flooder is limited, banned and reviewed
//! while an honest peer and an honest HTTP client keep being served.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Instant;

use common::eventually;
use rigmesh_node::api::tokens::{read_token, Bootstrap};
use rigmesh_node::config::{CoordinatorsConfig, NodeConfig, Role};
use rigmesh_node::network::{Protocol, RequestRate};
use rigmesh_node::node::RunningNode;
use rigmesh_protocol::kind::TOPIC_OFFERS;
use rigmesh_protocol::rpc::{CoordinatorRequest, CoordinatorResponse, GossipFrame};
use rigmesh_protocol::{Credits, Id, Keypair, Kind, Offer, Signed, UnixMillis, PROTOCOL_VERSION};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MEMBER: [u8; 32] = [0x50; 32];

/// A status and JSON body.
struct Answer {
    status: u16,
    body: Value,
}

/// One HTTP/1.1 request from `from` (a loopback address) to `addr`.
async fn call(
    addr: SocketAddr,
    from: IpAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Answer {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let text = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({"text": text}));
    Answer { status, body }
}

fn operator_host() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// Another loopback address: the one that misbehaves.
fn hammer_host() -> IpAddr {
    "127.0.0.2".parse().unwrap()
}

/// A single-member coordinator set (this node), every listener on a free
/// port, with `tweak` applied to the configuration.
async fn coordinator(dir: &Path, tweak: impl FnOnce(&mut NodeConfig)) -> RunningNode {
    let path = dir.join("account.key");
    if !path.exists() {
        rigmesh_node::keyfile::write_seed(&path, &MEMBER).unwrap();
    }
    let here: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = NodeConfig {
        role: Role::Coordinator,
        data_dir: dir.to_path_buf(),
        network: common::config(),
        monitoring: here,
        customer_api: here,
        supplier_api: here,
        public_api: here,
        analytics_api: here,
        operator_api: here,
        coordinators: Some(CoordinatorsConfig::new(
            7,
            vec![Keypair::from_seed(MEMBER).public()],
        )),
        ..NodeConfig::default()
    };
    tweak(&mut config);
    rigmesh_node::node::start(config).await.unwrap()
}

/// The review items in `state`.
async fn review(node: &RunningNode, token: &str, state: &str) -> Vec<Value> {
    let r = call(
        node.operator_api.unwrap(),
        operator_host(),
        "GET",
        &format!("/v1/review?state={state}"),
        Some(token),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["items"].as_array().unwrap().clone()
}

/// The open item of `rule` about `subject`, once it is listed.
async fn wait_for_item(node: &RunningNode, token: &str, rule: &str, subject: &str) -> Value {
    let found = std::sync::Arc::new(std::sync::Mutex::new(None));
    eventually(15, &format!("a review item {rule} about {subject}"), || {
        let found = found.clone();
        async move {
            let item = review(node, token, "open")
                .await
                .into_iter()
                .find(|i| i["rule"] == rule && i["subject"] == subject);
            let hit = item.is_some();
            *found.lock().unwrap() = item;
            hit
        }
    })
    .await;
    let item = found.lock().unwrap().take().unwrap();
    item
}

/// The value of one metric line, 0 if absent.
async fn metric(node: &RunningNode, series: &str) -> f64 {
    common::http_get(node.monitoring, "/metrics", None)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_from_one_address_become_a_review_item_the_operator_acknowledges() {
    common::logs();
    let dir = tempfile::tempdir().unwrap();
    let node = coordinator(dir.path(), |_| {}).await;
    let api = node.operator_api.unwrap();
    let operator = read_token(dir.path(), Bootstrap::Operator).unwrap();
    assert!(review(&node, &operator, "all").await.is_empty());

    // 60 guesses at a token, from one address: past the listener's alert
    // threshold (50 refusals within a minute).
    for i in 0..60 {
        let guess = format!("{i:064x}");
        let r = call(api, hammer_host(), "GET", "/v1/books", Some(&guess), "").await;
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let item = wait_for_item(&node, &operator, "api.refusals", "address 127.0.0.2").await;
    assert_eq!(item["state"], "open");
    assert_eq!(item["severity"], "warning");
    assert_eq!(
        item["count"], 50,
        "one threshold's worth of refusals: {item}"
    );
    assert!(
        item["detail"]
            .as_str()
            .unwrap()
            .contains("token_not_recognised"),
        "{item}"
    );
    let id = item["id"].as_u64().unwrap();
    // The operator's own address made no item.
    assert_eq!(review(&node, &operator, "open").await.len(), 1);

    // A token that may read the queue but not acknowledge it.
    let made = call(
        api,
        operator_host(),
        "POST",
        "/v1/tokens",
        Some(&operator),
        r#"{"name":"night-shift","scopes":["operator:read"]}"#,
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let reader = made.body["token"].as_str().unwrap().to_string();
    assert_eq!(review(&node, &reader, "open").await.len(), 1);
    let ack = |token: String, id: u64, body: &'static str| async move {
        call(
            api,
            operator_host(),
            "POST",
            &format!("/v1/review/{id}/ack"),
            Some(&token),
            body,
        )
        .await
    };
    let r = ack(reader.clone(), id, r#"{"note":"looks fine"}"#).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("scope_missing"))
    );
    // Bad notes change nothing either.
    for body in [r#"{"note":"   "}"#, r#"{}"#, "not json"] {
        let r = ack(operator.clone(), id, body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
    }
    let long = format!(r#"{{"note":"{}"}}"#, "x".repeat(1001));
    let r = call(
        api,
        operator_host(),
        "POST",
        &format!("/v1/review/{id}/ack"),
        Some(&operator),
        &long,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let open = review(&node, &operator, "open").await;
    assert_eq!(open.len(), 1);
    assert_eq!(
        open[0]["state"], "open",
        "refused acknowledgements change nothing"
    );

    let r = ack(operator.clone(), id + 1000, r#"{"note":"n"}"#).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (404, Some("not_found"))
    );
    let r = ack(
        operator.clone(),
        id,
        r#"{"note":"a load test from the staging box"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "acknowledged");
    assert_eq!(r.body["acknowledged_by"], "operator-cli");
    assert_eq!(r.body["note"], "a load test from the staging box");
    let r = ack(operator.clone(), id, r#"{"note":"again"}"#).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (409, Some("already_acknowledged"))
    );
    assert!(review(&node, &operator, "open").await.is_empty());
    assert_eq!(review(&node, &operator, "acknowledged").await.len(), 1);
    let r = call(
        api,
        operator_host(),
        "GET",
        "/v1/review?state=closed",
        Some(&operator),
        "",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        metric(&node, r#"rigmesh_review_raised_total{rule="api.refusals"}"#).await,
        1.0
    );
    assert_eq!(metric(&node, "rigmesh_review_open_items").await, 0.0);
    node.stop().await.unwrap();

    // The queue, and its acknowledgement, survive a restart.
    let node = coordinator(dir.path(), |_| {}).await;
    let all = review(&node, &operator, "all").await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["id"], id);
    assert_eq!(all[0]["state"], "acknowledged");
    assert_eq!(all[0]["note"], "a load test from the staging box");
    node.stop().await.unwrap();
}

fn forged_offer(sequence: u64) -> Vec<u8> {
    let key = Keypair::from_seed([0x77; 32]);
    let now = UnixMillis::now();
    let mut offer = Signed::sign(
        Offer {
            version: PROTOCOL_VERSION,
            supplier: key.public(),
            sequence,
            gpu_model: "NVIDIA A100-SXM4-80GB".into(),
            gpu_memory_mib: 81_920,
            gpu_count: 4,
            price_per_gpu_hour: Credits::from_units(1_790_000),
            min_hours: 1,
            max_hours: 48,
            region: "us-east".into(),
            hardware_fingerprint: Id::hardware_fingerprint(&["GPU-a"]),
            created_at: now,
            expires_at: now.plus_ms(3_600_000),
        },
        &key,
    )
    .unwrap();
    // Changed after signing: the signature no longer verifies.
    offer.body.price_per_gpu_hour = Credits::from_units(10_000);
    GossipFrame::encode(Kind::Offer, &offer.to_bytes().unwrap())
}

/// An account's signed read of its own state, as its node sends it.
fn own_account_query(seed: u8) -> Vec<u8> {
    let key = Keypair::from_seed([seed; 32]);
    let query = Signed::sign(
        rigmesh_protocol::AccountQuery {
            version: PROTOCOL_VERSION,
            account: key.public(),
            asker: key.public(),
            created_at: UnixMillis::now(),
        },
        &key,
    )
    .unwrap();
    CoordinatorRequest::AccountOf(query).to_bytes().unwrap()
}

/// The honest peer's request: a coordinator answers it with the account.
async fn honest_ask(honest: &common::TestNode, coordinator: &RunningNode) -> bool {
    let request = own_account_query(0x66);
    match honest
        .handle
        .request(coordinator.peer_id, Protocol::Coordinator, request)
        .await
    {
        Ok(bytes) => matches!(
            CoordinatorResponse::from_bytes(&bytes),
            Ok(CoordinatorResponse::Account(_))
        ),
        Err(_) => false,
    }
}

fn dial_addr(node: &RunningNode) -> libp2p::Multiaddr {
    node.listen_addrs[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(node.peer_id))
}

/// One libp2p peer floods a coordinator every way it can and one address
/// hammers its HTTP API, at once; the flooder is limited and banned, the
/// review queue names both, and the honest peer and HTTP client are
/// served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_combined_flood_is_limited_banned_and_reviewed_while_honest_users_are_served() {
    common::logs();
    let dir = tempfile::tempdir().unwrap();
    let node = coordinator(dir.path(), |c| {
        let n = &mut c.network;
        // Every node of the test shares 127.0.0.1: ban peers, not the
        // address.
        n.limits.address_ban_threshold = 0;
        n.limits.requests.coordinator = RequestRate {
            per_second: 2,
            burst: 5,
        };
        // Ten refusals make a strike, ten strikes a ban: room for every
        // kind of flood to be seen before the ban cuts the flooder off.
        n.limits.refusals_per_strike = 10;
        n.limits.ban_threshold = 10;
        // 10 requests a second per address past a burst of 300: the
        // hammer meets the limit however fast this machine is.
        c.http.operator.per_ip_per_minute = 600;
        c.http.operator.per_ip_burst = 300;
    })
    .await;
    let api = node.operator_api.unwrap();
    let operator = read_token(dir.path(), Bootstrap::Operator).unwrap();
    let flooder = common::node().await;
    let honest = common::node().await;
    let flooder_id = flooder.peer_id();
    for peer in [&flooder, &honest] {
        peer.handle.dial(dial_addr(&node)).await.unwrap();
    }
    let watch = node.handle.clone();
    eventually(10, "both peers connected", || {
        let watch = watch.clone();
        let (f, h) = (flooder_id, honest.peer_id());
        async move {
            let peers = watch.peers().await.unwrap();
            peers.contains(&f) && peers.contains(&h)
        }
    })
    .await;
    assert!(honest_ask(&honest, &node).await, "served before the flood");

    // The HTTP side: one address guesses tokens as fast as it can while
    // the operator reads the books.
    let hammer = async {
        let started = Instant::now();
        let (mut sent, mut unauthorised, mut limited) = (0u32, 0u32, 0u32);
        for i in 0..700 {
            let guess = format!("{i:064x}");
            let r = call(api, hammer_host(), "GET", "/v1/audit", Some(&guess), "").await;
            sent += 1;
            match r.status {
                401 => unauthorised += 1,
                429 => limited += 1,
                other => panic!("a bad token got {other}: {}", r.body),
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "http hammer: {sent} requests in {secs:.2} s ({:.0}/s); refused {} ({:.0}/s): {unauthorised} unauthorised, {limited} rate-limited",
            f64::from(sent) / secs,
            unauthorised + limited,
            f64::from(unauthorised + limited) / secs,
        );
        (sent, unauthorised, limited)
    };
    let honest_http = async {
        let mut served = 0;
        for _ in 0..20 {
            let r = call(
                api,
                operator_host(),
                "GET",
                "/v1/books",
                Some(&operator),
                "",
            )
            .await;
            assert_eq!(r.status, 200, "the operator is served: {}", r.body);
            served += 1;
            tokio::task::yield_now().await;
        }
        served
    };

    // The libp2p side: invalid gossip, a request flood, malformed sync
    // requests, then reconnecting again and again.
    let p2p = async {
        let started = Instant::now();
        // Gossip needs the coordinator's subscription first: a new forged
        // offer each try (gossipsub drops a repeat), until one is rejected.
        let publisher = flooder.handle.clone();
        let watch = node.handle.clone();
        let tries = std::sync::atomic::AtomicU64::new(0);
        eventually(10, "a forged offer rejected", || {
            let (publisher, watch) = (publisher.clone(), watch.clone());
            let sequence = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            async move {
                let _ = publisher
                    .publish_unchecked(TOPIC_OFFERS, forged_offer(sequence))
                    .await;
                watch.stats().await.unwrap().rejected >= 1
            }
        })
        .await;
        // Valid requests, only too many of them.
        let request = own_account_query(0x67);
        let asks = (0..60).map(|_| {
            flooder
                .handle
                .request(node.peer_id, Protocol::Coordinator, request.clone())
        });
        let answers = futures::future::join_all(asks).await;
        let served = answers
            .iter()
            .filter(|a| {
                a.as_ref().is_ok_and(|b| {
                    matches!(
                        CoordinatorResponse::from_bytes(b),
                        Ok(CoordinatorResponse::Account(_))
                    )
                })
            })
            .count();
        let requests_secs = started.elapsed().as_secs_f64();
        assert!(honest_ask(&honest, &node).await, "served during the flood");
        // Malformed sync requests: a strike each, never answered.
        let syncs = (0..12).map(|_| {
            flooder
                .handle
                .request(node.peer_id, Protocol::Sync, vec![0xff; 9])
        });
        let _ = futures::future::join_all(syncs).await;
        let watch = node.handle.clone();
        eventually(15, "the flooder banned", || {
            let watch = watch.clone();
            async move {
                watch.stats().await.unwrap().banned >= 1
                    && !watch.peers().await.unwrap().contains(&flooder_id)
            }
        })
        .await;
        // Coming back again and again is refused at the door.
        for _ in 0..10 {
            let _ = flooder.handle.dial(dial_addr(&node)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "p2p flood: 60 coordinator requests in {requests_secs:.2} s ({:.0}/s), {served} served, {} refused; 12 malformed sync requests; banned after {secs:.2} s",
            60.0 / requests_secs,
            60 - served,
        );
        served
    };
    let ((sent, unauthorised, limited), honest_served, p2p_served) =
        tokio::join!(hammer, honest_http, p2p);

    assert_eq!(honest_served, 20, "every honest HTTP request was served");
    assert_eq!(sent, unauthorised + limited);
    assert!(limited > 0, "the hammer was rate-limited past its burst");
    assert!(
        p2p_served <= 20,
        "the flood was limited: {p2p_served} of 60 served"
    );
    let stats = node.handle.stats().await.unwrap();
    assert!(stats.rate_limited >= 40, "{stats:?}");
    let series = r#"rigmesh_net_refused_connections_total{kind="peer"}"#;
    let n = &node;
    eventually(15, "the flooder's reconnections refused", || async move {
        metric(n, series).await >= 1.0
    })
    .await;
    let refused = metric(&node, series).await;
    println!("p2p reconnections refused: {refused}");
    assert!(
        !node.handle.peers().await.unwrap().contains(&flooder_id),
        "the banned flooder stays out"
    );
    assert!(honest_ask(&honest, &node).await, "served after the flood");

    // The review queue names the flooder and the hammering address.
    let peer = format!("peer {flooder_id}");
    let banned = wait_for_item(&node, &operator, "peer.banned", &peer).await;
    assert!(
        banned["detail"].as_str().unwrap().contains("ban 1"),
        "{banned}"
    );
    let invalid = wait_for_item(&node, &operator, "peer.invalid", &peer).await;
    let flood = wait_for_item(&node, &operator, "peer.flood", &peer).await;
    let http = wait_for_item(&node, &operator, "api.refusals", "address 127.0.0.2").await;
    println!(
        "review items: peer.invalid x{}, peer.flood x{}, peer.banned x{}, api.refusals x{}",
        invalid["count"], flood["count"], banned["count"], http["count"]
    );
    assert!(
        invalid["count"].as_u64().unwrap() >= 2,
        "the forged offer and the malformed sync requests: {invalid}"
    );
    assert!(flood["count"].as_u64().unwrap() >= 10, "{flood}");
    assert!(http["count"].as_u64().unwrap() >= 50, "{http}");
    let honest_peer = format!("peer {}", honest.peer_id());
    let items = review(&node, &operator, "all").await;
    assert!(
        items
            .iter()
            .all(|i| i["subject"] != honest_peer.as_str() && i["subject"] != "address 127.0.0.1"),
        "nothing about the honest users: {items:?}"
    );
    node.stop().await.unwrap();
}
