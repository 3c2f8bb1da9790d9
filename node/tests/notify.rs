//! Notifications from a real customer node: with a `[notify]` section in
//! its config, its budget alert is delivered to a real local webhook
//! server started here, which checks the HMAC signature of every request;
//! the critical alert repeats until the link in the message (a per-group
//! token, no API token) acknowledges it, and then stops. The channels,
//! a test message and the log are read over the customer API. A silence
//! added over the API keeps a matching alert from going out, and once it
//! is expired the next one is delivered; bad silences and channels are
//! refused with the reason. A coordinator's operators hear when another
//! member of the set stops answering, and when it is back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::eventually;
use rigmesh_node::api::tokens::{read_token, Bootstrap};
use rigmesh_node::config::{NodeConfig, Role};
use rigmesh_node::node::RunningNode;
use rigmesh_node::supplier::SupplierConfig;
use rigmesh_node::telemetry::{GpuSourceConfig, SimProfile, SimSpec};
use rigmesh_notify::channel::webhook::{self, WebhookBody};
use rigmesh_protocol::{Kind, UnixMillis};
use tokio::sync::watch;

const SECRET: &str = "a-test-signing-secret-0123456789";
const WAIT: Duration = Duration::from_secs(30);

/// What the webhook server received: signed requests' bodies in order,
/// and how many requests failed the signature check.
#[derive(Debug, Clone, Default)]
struct Received {
    bodies: Vec<(String, WebhookBody)>,
    bad_signatures: usize,
}

async fn receive(
    State(log): State<Arc<watch::Sender<Received>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let checked = webhook::verify(
        SECRET.as_bytes(),
        &header(webhook::TIMESTAMP_HEADER),
        &header(webhook::SIGNATURE_HEADER),
        &body,
        UnixMillis::now().0 / 1_000,
        webhook::DEFAULT_TOLERANCE_SECS,
    );
    if checked.is_err() {
        log.send_modify(|r| r.bad_signatures += 1);
        return StatusCode::UNAUTHORIZED;
    }
    let parsed: WebhookBody = serde_json::from_slice(&body).unwrap();
    let key = header(webhook::IDEMPOTENCY_HEADER);
    assert_eq!(key, parsed.id, "the header and the body name one key");
    log.send_modify(|r| r.bodies.push((key, parsed)));
    StatusCode::OK
}

/// A webhook receiver on a free loopback port: its URL and what it got.
async fn webhook_server() -> (String, watch::Receiver<Received>) {
    let (tx, rx) = watch::channel(Received::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(Arc::new(tx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

fn base(role: Role, dir: &std::path::Path) -> NodeConfig {
    NodeConfig {
        role,
        data_dir: dir.to_path_buf(),
        network: common::config(),
        monitoring: "127.0.0.1:0".parse().unwrap(),
        customer_api: "127.0.0.1:0".parse().unwrap(),
        supplier_api: "127.0.0.1:0".parse().unwrap(),
        public_api: "127.0.0.1:0".parse().unwrap(),
        analytics_api: "127.0.0.1:0".parse().unwrap(),
        operator_api: "127.0.0.1:0".parse().unwrap(),
        ..NodeConfig::default()
    }
}

fn body(response: &str) -> serde_json::Value {
    serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

fn status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap()
}

/// A POST without any token, as a browser following the link sends it.
async fn post_anonymous(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

async fn wait_for(
    rx: &mut watch::Receiver<Received>,
    what: &str,
    check: impl FnMut(&Received) -> bool,
) -> Received {
    tokio::time::timeout(WAIT, rx.wait_for(check))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap()
        .clone()
}

fn budget_100(r: &Received) -> Vec<&(String, WebhookBody)> {
    r.bodies
        .iter()
        .filter(|(_, b)| b.subject.starts_with("budget.100"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_alert_reaches_a_signed_webhook_and_repeats_until_its_link_acknowledges_it() {
    let (url, mut received) = webhook_server().await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let secret_file = dirs[1].path().join("hook.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();

    let model = SimProfile::builtin("a100x4").unwrap().gpus[0].model.clone();
    let mut supplier_config = base(Role::Supplier, dirs[0].path());
    supplier_config.supplier = SupplierConfig {
        gpus: GpuSourceConfig::Sim(SimSpec::Profile(
            SimProfile::builtin("a100x4").unwrap().with_seed(1),
        )),
        prices: [(model.clone(), "1.70".parse().unwrap())].into(),
        ..SupplierConfig::default()
    };
    let supplier = rigmesh_node::node::start(supplier_config).await.unwrap();

    let mut config = base(Role::Customer, dirs[1].path());
    let notify = format!(
        r#"
        [outbox]
        poll_ms = 50
        [grouping]
        group_wait_ms = 200
        group_interval_ms = 500
        critical_repeat_ms = 1000
        [[channels]]
        name = "hook"
        type = "webhook"
        url = "{url}"
        secret = {{ file = "{}" }}
        [[recipients]]
        name = "me"
        audience = ["customer"]
        channels = ["hook"]
        "#,
        secret_file.display()
    );
    config.notify = Some(rigmesh_notify::NotifyConfig::from_toml(&notify).unwrap());
    let customer = rigmesh_node::node::start(config).await.unwrap();
    let api = customer.customer_api.unwrap();
    let token = read_token(dirs[1].path(), Bootstrap::Customer).unwrap();

    // The channels as the API lists them: the webhook, its secret unseen.
    let r = common::http_get(api, "/v1/notify/channels", Some(&token)).await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(body(&r)[0]["name"], "hook");
    assert_eq!(body(&r)[0]["type"], "webhook");
    assert_eq!(body(&r)[0]["target"], url.as_str());
    assert!(!r.contains(SECRET), "{r}");
    // A test message goes out at once, signed like the rest.
    let r = common::http_post(api, "/v1/notify/channels/hook/test", &token, "{}").await;
    assert_eq!(status(&r), 200, "{r}");
    wait_for(&mut received, "the test message", |r| {
        r.bodies
            .iter()
            .any(|(_, b)| b.subject == "rigmesh: test notification")
    })
    .await;
    let r = common::http_post(api, "/v1/notify/channels/nowhere/test", &token, "{}").await;
    assert_eq!(status(&r), 404, "{r}");

    // A lease that spends, then an account cap below what it spent: the
    // critical budget.100 alert.
    customer
        .handle
        .dial(
            supplier.listen_addrs[0]
                .clone()
                .with(libp2p::multiaddr::Protocol::P2p(supplier.peer_id)),
        )
        .await
        .unwrap();
    let store = customer.store.clone();
    eventually(15, "the offer and binding at the customer", || {
        let store = store.clone();
        async move { store.count(Kind::Offer) >= 1 && store.count(Kind::NodeBinding) >= 1 }
    })
    .await;
    let request =
        format!(r#"{{"gpu":"{model}","count":2,"max_price":"2.00","hours":1,"window_secs":1}}"#);
    let r = common::http_post(api, "/v1/bid", &token, &request).await;
    assert_eq!(status(&r), 200, "{r}");
    let t = token.clone();
    eventually(20, "two acked windows", || {
        let t = t.clone();
        async move {
            let r = common::http_get(api, "/v1/leases", Some(&t)).await;
            body(&r)[0]["acked_windows"].as_u64().unwrap_or(0) >= 2
        }
    })
    .await;
    let r = common::http(
        api,
        "PUT",
        "/v1/budget",
        &token,
        Some(r#"{"account": "0.000001"}"#),
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");

    // Delivered, signed, with an acknowledgement link to this node's API.
    let got = wait_for(&mut received, "the budget.100 notification", |r| {
        !budget_100(r).is_empty()
    })
    .await;
    let (first_key, first) = budget_100(&got)[0].clone();
    assert_eq!(first.severity, "critical");
    let link = first
        .ack_url
        .clone()
        .expect("a critical alert carries a link");
    let prefix = format!("http://{api}/v1/notify/ack/");
    let path_and_token = link
        .strip_prefix(&format!("http://{api}"))
        .unwrap_or_else(|| panic!("{link} is not on {prefix}"));
    assert!(
        !link.contains(&token),
        "the link never carries the API token"
    );
    assert!(
        first.body.contains("the account has spent"),
        "{}",
        first.body
    );

    // Unacknowledged, it comes again, under a new idempotency key.
    let got = wait_for(&mut received, "a repeat of budget.100", |r| {
        budget_100(r).len() >= 2
    })
    .await;
    assert_ne!(budget_100(&got)[1].0, first_key);
    assert_eq!(budget_100(&got)[1].1.group, first.group);

    // A wrong token acknowledges nothing; the link's token does, without
    // the API token. The GET only shows a button.
    let (group_path, _) = path_and_token.split_once("?token=").unwrap();
    let r = post_anonymous(api, &format!("{group_path}?token={}", "0".repeat(32))).await;
    assert_eq!(status(&r), 403, "{r}");
    let r = common::http_get(api, path_and_token, None).await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(r.contains("<form method=\"post\""), "{r}");
    let r = post_anonymous(api, path_and_token).await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(r.contains("acknowledged"), "{r}");

    // The log shows it acknowledged, by the link, with nothing scheduled.
    let r = common::http_get(api, "/v1/notify/log", Some(&token)).await;
    assert_eq!(status(&r), 200, "{r}");
    let log = body(&r);
    let group = log["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == first.group.as_str())
        .unwrap_or_else(|| panic!("group {} not in {log}", first.group))
        .clone();
    assert_eq!(group["acknowledged"]["by"], "link", "{group}");
    assert!(
        group["next_at"].is_null(),
        "no repeat is scheduled: {group}"
    );
    assert!(log["sent"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["rule"] == "budget.100"
            && s["status"] == "delivered"
            && s["channel"] == "hook"));

    // No repeat comes after the acknowledgement. Proving an absence needs
    // time to pass: here three critical-repeat intervals, measured against
    // the node's own record of the group's last message.
    let sent_before = budget_100(&received.borrow()).len();
    let last_sent = group["last_sent"].as_u64().unwrap();
    let messages = group["messages"].clone();
    let t = token.clone();
    eventually(20, "three repeat intervals after the last message", || {
        let t = t.clone();
        let group_id = first.group.clone();
        let messages = messages.clone();
        async move {
            let r = common::http_get(api, "/v1/notify/log", Some(&t)).await;
            let log = body(&r);
            let still = log["groups"]
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["id"] == group_id.as_str())
                .cloned();
            assert!(
                still.is_none_or(|g| g["messages"] == messages),
                "a message after the acknowledgement: {log}"
            );
            UnixMillis::now().0 > last_sent + 3_000
        }
    })
    .await;
    assert_eq!(budget_100(&received.borrow()).len(), sent_before);
    assert_eq!(received.borrow().bad_signatures, 0);

    // Acknowledging over the API with its token needs no group token; an
    // unknown group is a 404.
    let r = common::http_post(api, "/v1/notify/groups/00000000/ack", &token, "{}").await;
    assert_eq!(status(&r), 404, "{r}");
    let r = common::http_post(
        api,
        &format!("/v1/notify/groups/{}/ack", first.group),
        &token,
        r#"{"by": "alice"}"#,
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");

    for node in [customer, supplier] {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_notify_section_the_endpoints_say_how_to_configure_it() {
    let dir = tempfile::tempdir().unwrap();
    let node: RunningNode = rigmesh_node::node::start(base(Role::Customer, dir.path()))
        .await
        .unwrap();
    let token = read_token(dir.path(), Bootstrap::Customer).unwrap();
    let r = common::http_get(
        node.customer_api.unwrap(),
        "/v1/notify/channels",
        Some(&token),
    )
    .await;
    assert_eq!(status(&r), 409, "{r}");
    assert!(
        body(&r)["reason"].as_str().unwrap().contains("[notify]"),
        "{r}"
    );
    // Still behind the bearer token.
    let r = common::http_get(node.customer_api.unwrap(), "/v1/notify/log", None).await;
    assert_eq!(status(&r), 401, "{r}");
    node.stop().await.unwrap();
}

/// A customer node notifying a local webhook quickly: `[notify]` with
/// short waits and one recipient of the customer audience.
fn quick_notify(url: &str, secret_file: &std::path::Path) -> rigmesh_notify::NotifyConfig {
    rigmesh_notify::NotifyConfig::from_toml(&format!(
        r#"
        [outbox]
        poll_ms = 50
        [grouping]
        group_wait_ms = 100
        group_interval_ms = 300
        [[channels]]
        name = "hook"
        type = "webhook"
        url = "{url}"
        secret = {{ file = "{}" }}
        [[recipients]]
        name = "me"
        audience = ["customer"]
        channels = ["hook"]
        "#,
        secret_file.display()
    ))
    .unwrap()
}

fn warning(rule: &str) -> rigmesh_protocol::Alert {
    rigmesh_node::notify::own_alert(
        rigmesh_protocol::Keypair::from_seed([9; 32]).public(),
        rigmesh_protocol::Audience::Customer,
        rigmesh_protocol::Severity::Warning,
        rule,
        None,
        format!("{rule} for the silence test"),
    )
}

fn delivered(r: &Received, rule: &str) -> usize {
    r.bodies
        .iter()
        .filter(|(_, b)| b.subject.starts_with(rule))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silenced_alert_is_not_delivered_and_an_expired_silence_lets_the_next_through() {
    let (url, mut received) = webhook_server().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("hook.secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let mut config = base(Role::Customer, dir.path());
    config.notify = Some(quick_notify(&url, &secret_file));
    let node = rigmesh_node::node::start(config).await.unwrap();
    let api = node.customer_api.unwrap();
    let token = read_token(dir.path(), Bootstrap::Customer).unwrap();

    // Refused, with the reason, and nothing added.
    for (request, reason) in [
        (r#"{"rule": "lease.", "comment": "x"}"#, "needs an expiry"),
        (
            r#"{"rule": "lease.", "duration_secs": 60}"#,
            "needs a comment",
        ),
        (
            r#"{"recipient": "nobody", "duration_secs": 60, "comment": "x"}"#,
            "not in the [notify] config",
        ),
        ("not json", "not a silence"),
    ] {
        let r = common::http_post(api, "/v1/notify/silences", &token, request).await;
        assert_eq!(status(&r), 400, "{r}");
        assert!(body(&r)["reason"].as_str().unwrap().contains(reason), "{r}");
    }
    let r = common::http(api, "DELETE", "/v1/notify/silences/abc", &token, None).await;
    assert_eq!(status(&r), 400, "{r}");
    // So are bad channels, and a removal of one never added.
    let missing = dir.path().join("no-such.secret");
    for (request, reason) in [
        ("not json".to_owned(), "the body is not"),
        (
            r#"{"channel": {"name": "x", "type": "pager"}}"#.to_owned(),
            "unknown variant",
        ),
        (
            format!(
                r#"{{"channel": {{"name": "x", "type": "webhook", "url": "{url}", "secret": {{"file": "{}"}}}}}}"#,
                missing.display()
            ),
            "no-such.secret",
        ),
        (
            r#"{"channel": {"name": "x", "type": "webhook", "url": "http://127.0.0.1:9/", "secret": {"file": "relative.secret"}}}"#.to_owned(),
            "not an absolute path",
        ),
        (
            r#"{"channel": {"name": "x", "type": "telegram", "chat_id": "1", "token": {"env": "HOME"}}}"#.to_owned(),
            "starts with RIGMESH_",
        ),
    ] {
        let r = common::http_post(api, "/v1/notify/channels", &token, &request).await;
        assert_eq!(status(&r), 400, "{r}");
        assert!(body(&r)["reason"].as_str().unwrap().contains(reason), "{r}");
    }
    let r = common::http(api, "DELETE", "/v1/notify/channels/nope", &token, None).await;
    assert_eq!(status(&r), 404, "{r}");
    let r = common::http(api, "DELETE", "/v1/notify/channels/hook", &token, None).await;
    assert_eq!(status(&r), 409, "{r}");
    let r = common::http_get(api, "/v1/notify/silences", None).await;
    assert_eq!(status(&r), 401, "silences sit behind the token: {r}");

    // Lease alerts silenced for an hour.
    let r = common::http_post(
        api,
        "/v1/notify/silences",
        &token,
        r#"{"rule": "lease.", "duration_secs": 3600, "created_by": "alice", "comment": "moving racks"}"#,
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
    let id = body(&r)["id"].as_u64().unwrap();
    let r = common::http_get(api, "/v1/notify/silences", Some(&token)).await;
    let listed = body(&r);
    assert_eq!(listed[0]["id"], id, "{listed}");
    assert_eq!(listed[0]["rule"], "lease.");
    assert_eq!(listed[0]["created_by"], "alice");
    assert_eq!(listed[0]["comment"], "moving racks");
    assert_eq!(listed[0]["active"], true);

    // The silenced alert, then one the silence does not match: once the
    // second is delivered, the first (handed over before it, on the same
    // queue) was taken and muted: no group, no message.
    node.alerts.raise(&warning("lease.ended"));
    node.alerts.raise(&warning("settlement.certified"));
    let got = wait_for(&mut received, "the unsilenced alert", |r| {
        delivered(r, "settlement.certified") >= 1
    })
    .await;
    assert_eq!(delivered(&got, "lease.ended"), 0);
    let r = common::http_get(api, "/v1/notify/log", Some(&token)).await;
    let log = body(&r);
    assert!(
        log["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["rule"] != "lease.ended"),
        "a silenced alert makes no group: {log}"
    );

    // Expired: gone from the list, and the next lease alert goes out.
    let path = format!("/v1/notify/silences/{id}");
    let r = common::http(api, "DELETE", &path, &token, None).await;
    assert_eq!(status(&r), 200, "{r}");
    let r = common::http(api, "DELETE", &path, &token, None).await;
    assert_eq!(status(&r), 404, "{r}");
    let r = common::http_get(api, "/v1/notify/silences", Some(&token)).await;
    assert_eq!(body(&r), serde_json::json!([]), "{r}");
    node.alerts.raise(&warning("lease.ended"));
    wait_for(&mut received, "the lease alert after the silence", |r| {
        delivered(r, "lease.ended") >= 1
    })
    .await;
    assert_eq!(received.borrow().bad_signatures, 0);
    node.stop().await.unwrap();
}

/// A coordinator node of a two-member set, as member `i`.
fn coordinator(i: u8, dir: &std::path::Path) -> NodeConfig {
    let members = (0..2)
        .map(|m| rigmesh_protocol::Keypair::from_seed([0x70 + m; 32]).public())
        .collect();
    let mut set = rigmesh_node::config::CoordinatorsConfig::new(3, members);
    set.member_unreachable_secs = 1;
    let key = dir.join("account.key");
    if !key.exists() {
        rigmesh_node::keyfile::write_seed(&key, &[0x70 + i; 32]).unwrap();
    }
    NodeConfig {
        coordinators: Some(set),
        ..base(Role::Coordinator, dir)
    }
}

fn dial_addr(node: &RunningNode) -> libp2p::Multiaddr {
    node.listen_addrs[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(node.peer_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_tells_its_operators_when_another_member_is_unreachable_and_when_it_is_back()
{
    let (url, mut received) = webhook_server().await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let secret_file = dirs[0].path().join("hook.secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let mut notify = quick_notify(&url, &secret_file);
    // The operators' recipient: the audience a coordinator's alerts have.
    notify.recipients[0].audience = vec![rigmesh_protocol::Audience::Operators];
    let mut config = coordinator(0, dirs[0].path());
    config.notify = Some(notify);
    let watcher = rigmesh_node::node::start(config).await.unwrap();
    let other = rigmesh_node::node::start(coordinator(1, dirs[1].path()))
        .await
        .unwrap();
    other.handle.dial(dial_addr(&watcher)).await.unwrap();
    let member = rigmesh_protocol::Keypair::from_seed([0x71; 32]).public();
    // The watch has seen the other member connected (its binding arrived
    // and the connection holds): what it may have said before, while no
    // binding was known, is behind it.
    let monitoring = watcher.monitoring;
    eventually(
        20,
        "the watch to see the other member connected",
        || async move { metric_at(monitoring, "rigmesh_coordinator_members_connected").await == 1 },
    )
    .await;

    // Stopped: the alert says the member has no connection (not that no
    // binding is known, as one raised before its binding came would).
    let firing = |r: &Received| {
        r.bodies
            .iter()
            .rev()
            .find(|(_, b)| {
                b.subject.starts_with("coordinator.unreachable")
                    && b.body.contains("(no connection)")
            })
            .cloned()
    };
    let resolved = |r: &Received| delivered(r, "RESOLVED: coordinator.unreachable");
    other.stop().await.unwrap();
    let got = wait_for(&mut received, "the unreachable alert", |r| {
        firing(r).is_some()
    })
    .await;
    let (_, alert) = firing(&got).unwrap();
    assert_eq!(alert.severity, "warning");
    assert!(alert.body.contains(&member.to_string()), "{}", alert.body);

    // Back: the group reports it resolved.
    let resolved_before = resolved(&received.borrow());
    let other = rigmesh_node::node::start(coordinator(1, dirs[1].path()))
        .await
        .unwrap();
    other.handle.dial(dial_addr(&watcher)).await.unwrap();
    wait_for(&mut received, "the resolution", |r| {
        resolved(r) > resolved_before
    })
    .await;
    assert_eq!(received.borrow().bad_signatures, 0);
    for node in [other, watcher] {
        node.stop().await.unwrap();
    }
}

/// Two members comparing books every second, the first ("watcher") with
/// its operators' webhook; deposits signed by their admin key.
struct BooksPair {
    watcher: RunningNode,
    other: RunningNode,
    received: watch::Receiver<Received>,
    admin: rigmesh_protocol::Keypair,
    references: std::sync::atomic::AtomicU32,
    _dirs: Vec<tempfile::TempDir>,
}

impl BooksPair {
    async fn start() -> BooksPair {
        let (url, received) = webhook_server().await;
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let secret_file = dirs[0].path().join("hook.secret");
        std::fs::write(&secret_file, SECRET).unwrap();
        let mut notify = quick_notify(&url, &secret_file);
        notify.recipients[0].audience = vec![rigmesh_protocol::Audience::Operators];
        let admin = rigmesh_protocol::Keypair::from_seed([0x41; 32]);
        let mut config = Self::member(0, dirs[0].path(), &admin);
        config.notify = Some(notify);
        let watcher = rigmesh_node::node::start(config).await.unwrap();
        let other = Self::other_member(dirs[1].path(), &admin, &watcher).await;
        BooksPair {
            watcher,
            other,
            received,
            admin,
            references: std::sync::atomic::AtomicU32::new(0),
            _dirs: dirs,
        }
    }

    /// Member `i`'s configuration: comparing every second, `admin` its
    /// admin key.
    fn member(i: u8, dir: &std::path::Path, admin: &rigmesh_protocol::Keypair) -> NodeConfig {
        let mut config = coordinator(i, dir);
        let set = config.coordinators.as_mut().unwrap();
        set.admin = Some(admin.public());
        set.books_compare_secs = 1;
        set.integrity_check_secs = 1;
        set.member_unreachable_secs = 0;
        config
    }

    /// The other member, started on its books in `dir` and connected to
    /// `watcher`.
    async fn other_member(
        dir: &std::path::Path,
        admin: &rigmesh_protocol::Keypair,
        watcher: &RunningNode,
    ) -> RunningNode {
        let other = rigmesh_node::node::start(Self::member(1, dir, admin))
            .await
            .unwrap();
        other.handle.dial(dial_addr(watcher)).await.unwrap();
        other
    }

    /// The other member stops; `frame` is applied at the watcher alone
    /// meanwhile, and left behind by its comparison (no other member
    /// answers about it); then the other member starts again on its own
    /// books.
    async fn posted_while_the_other_is_down(
        mut self,
        frame: &rigmesh_protocol::rpc::CertificateFrame,
    ) -> BooksPair {
        self.other.stop().await.unwrap();
        let role = self.watcher.coordinator.as_ref().unwrap();
        assert!(role.apply(frame, UnixMillis::now()).is_ok());
        let w = &self.watcher;
        eventually(
            30,
            "the entry left behind by the comparison",
            || async move {
                compare_metric(w, "rigmesh_coordinator_books_compare_behind_entries").await >= 1
            },
        )
        .await;
        self.other = Self::other_member(self._dirs[1].path(), &self.admin, &self.watcher).await;
        self
    }

    /// A new deposit of `credits` to `account`.
    fn deposit(
        &self,
        account: rigmesh_protocol::PublicKey,
        credits: &str,
    ) -> rigmesh_protocol::rpc::CertificateFrame {
        let n = self
            .references
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rigmesh_protocol::rpc::CertificateFrame::Deposit(
            rigmesh_protocol::Signed::sign(
                rigmesh_protocol::Deposit {
                    version: rigmesh_protocol::PROTOCOL_VERSION,
                    epoch: 3,
                    admin: self.admin.public(),
                    account,
                    amount: credits.parse().unwrap(),
                    reference: format!("wire-{n}"),
                    created_at: UnixMillis::now(),
                },
                &self.admin,
            )
            .unwrap(),
        )
    }

    /// Applied directly at the members named, so nothing gossips it to the
    /// others.
    fn apply_at(&self, nodes: &[&RunningNode], frame: &rigmesh_protocol::rpc::CertificateFrame) {
        for node in nodes {
            let role = node.coordinator.as_ref().unwrap();
            assert!(role.apply(frame, UnixMillis::now()).is_ok());
        }
    }

    /// The first `books.disagree` alert, once delivered; it is critical.
    async fn disagree_alert(&mut self) -> WebhookBody {
        wait_for(&mut self.received, "the books.disagree alert", |r| {
            delivered(r, "books.disagree") > 0
        })
        .await;
        let alert = self.last_alert("books.disagree");
        assert_eq!(alert.severity, "critical");
        alert
    }

    /// The `books.disagree` alert, once delivered, naming the entry of
    /// the deposit in `frame` as the first one missing.
    async fn missing_alert_naming(
        &mut self,
        frame: &rigmesh_protocol::rpc::CertificateFrame,
    ) -> WebhookBody {
        let rigmesh_protocol::rpc::CertificateFrame::Deposit(deposit) = frame else {
            panic!("a deposit");
        };
        let id = deposit.id().unwrap();
        let alert = self.disagree_alert().await;
        assert!(
            alert.body.contains(&format!("deposit entry {id}")),
            "{}",
            alert.body
        );
        alert
    }

    /// The alert of `rule` last delivered, with its body.
    fn last_alert(&self, rule: &str) -> WebhookBody {
        self.received
            .borrow()
            .bodies
            .iter()
            .rev()
            .find(|(_, b)| b.subject.starts_with(rule))
            .map(|(_, b)| b.clone())
            .unwrap()
    }

    async fn stop(self) {
        assert_eq!(self.received.borrow().bad_signatures, 0);
        for node in [self.other, self.watcher] {
            node.stop().await.unwrap();
        }
    }
}

/// One of `node`'s books comparison figures on its /metrics.
async fn compare_metric(node: &RunningNode, name: &str) -> u64 {
    metric_at(node.monitoring, name).await
}

/// The figure `name` on the /metrics served at `monitoring`.
async fn metric_at(monitoring: std::net::SocketAddr, name: &str) -> u64 {
    let metrics = common::http_get(monitoring, "/metrics", None).await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not on /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_finds_a_balance_edited_on_disk_and_says_so_until_it_is_mended() {
    use rigmesh_ledger::columns::Balances;
    use rigmesh_ledger::{Account, Batch, Store};
    let mut pair = BooksPair::start().await;
    let account = rigmesh_protocol::Keypair::from_seed([0x74; 32]).public();
    let deposit = pair.deposit(account, "5");
    pair.apply_at(&[&pair.watcher, &pair.other], &deposit);
    // Its rounds read the deposit's entry and audit records, and pass.
    let w = &pair.watcher;
    eventually(30, "a round that replayed the deposit", || async move {
        compare_metric(w, "rigmesh_coordinator_integrity_entries_total").await >= 1
    })
    .await;
    assert_eq!(
        compare_metric(w, "rigmesh_coordinator_integrity_failing").await,
        0
    );
    assert_eq!(delivered(&pair.received.borrow(), "books.integrity"), 0);

    // Someone with the disk gives the account 500 credits.
    let ledger = &pair.watcher.coordinator.as_ref().unwrap().ledger;
    let user = Account::User(account);
    let held = ledger.balance(&user).unwrap();
    assert_eq!(held, "5".parse().unwrap());
    let mut batch = Batch::new();
    batch
        .put_in::<Balances>(&user, &"500".parse().unwrap())
        .unwrap();
    ledger.store().write(&batch).unwrap();
    wait_for(&mut pair.received, "the books.integrity alert", |r| {
        delivered(r, "books.integrity") > 0
    })
    .await;
    let alert = pair.last_alert("books.integrity");
    assert_eq!(alert.severity, "critical");
    assert!(
        alert.body.contains("books do not balance"),
        "{}",
        alert.body
    );
    assert!(alert.body.contains("500"), "{}", alert.body);
    let w = &pair.watcher;
    eventually(30, "the failing round on /metrics", || async move {
        compare_metric(w, "rigmesh_coordinator_integrity_failing").await == 1
    })
    .await;

    // Put back, the next round passes and the alert is resolved.
    let mut batch = Batch::new();
    batch.put_in::<Balances>(&user, &held).unwrap();
    ledger.store().write(&batch).unwrap();
    wait_for(&mut pair.received, "the resolution", |r| {
        delivered(r, "RESOLVED: books.integrity") > 0
    })
    .await;
    let w = &pair.watcher;
    eventually(30, "a passing round on /metrics", || async move {
        compare_metric(w, "rigmesh_coordinator_integrity_failing").await == 0
    })
    .await;
    pair.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_tells_its_operators_when_another_member_holds_other_books() {
    let mut pair = BooksPair::start().await;
    let account = rigmesh_protocol::Keypair::from_seed([0x72; 32]).public();
    // Both members apply the first deposit; only the other one the second.
    let first = pair.deposit(account, "5");
    let second = pair.deposit(account, "3");
    pair.apply_at(&[&pair.watcher, &pair.other], &first);
    pair.apply_at(&[&pair.other], &second);

    let alert = pair.disagree_alert().await;
    assert!(alert.body.contains(&account.to_string()), "{}", alert.body);
    assert!(alert.body.contains("balance 8"), "{}", alert.body);

    // The watcher catches up: the books agree and the alert resolves.
    pair.apply_at(&[&pair.watcher], &second);
    wait_for(&mut pair.received, "the resolution", |r| {
        delivered(r, "RESOLVED: books.disagree") > 0
    })
    .await;
    pair.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_missing_an_entry_is_found_even_where_the_balances_agree() {
    let mut pair = BooksPair::start().await;
    let account = rigmesh_protocol::Keypair::from_seed([0x73; 32]).public();
    let first = pair.deposit(account, "5");
    pair.apply_at(&[&pair.watcher, &pair.other], &first);
    // Each member applied a different deposit of the same amount: the
    // balances agree, the journals do not.
    let only_here = pair.deposit(account, "3");
    let only_there = pair.deposit(account, "3");
    pair.apply_at(&[&pair.watcher], &only_here);
    pair.apply_at(&[&pair.other], &only_there);

    let alert = pair.missing_alert_naming(&only_here).await;
    let other = pair.other.coordinator.as_ref().unwrap().key.public();
    assert!(alert.body.contains(&other.to_string()), "{}", alert.body);
    assert!(
        alert.body.contains("has not posted 1 journal entries"),
        "{}",
        alert.body
    );
    // Its operators see the comparison on /metrics: both of its entries
    // compared, none left behind.
    let metric = |name| compare_metric(&pair.watcher, name);
    assert!(metric("rigmesh_coordinator_books_compared_entries_total").await >= 2);
    assert_eq!(
        metric("rigmesh_coordinator_books_compare_behind_entries").await,
        0
    );

    // Both get what they lacked: the alert resolves.
    pair.apply_at(&[&pair.other], &only_here);
    pair.apply_at(&[&pair.watcher], &only_there);
    wait_for(&mut pair.received, "the resolution", |r| {
        delivered(r, "RESOLVED: books.disagree") > 0
    })
    .await;
    pair.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_posted_while_the_other_member_is_down_is_compared_once_it_is_back() {
    let pair = BooksPair::start().await;
    let account = rigmesh_protocol::Keypair::from_seed([0x74; 32]).public();
    let first = pair.deposit(account, "5");
    pair.apply_at(&[&pair.watcher, &pair.other], &first);
    let w = &pair.watcher;
    eventually(30, "the first entry compared", || async move {
        compare_metric(w, "rigmesh_coordinator_books_compared_entries_total").await >= 1
    })
    .await;

    // Posted while the other member is down: no one answers about it, so
    // it waits, and is asked about once the member is back, which lacks it.
    let only_here = pair.deposit(account, "3");
    let mut pair = pair.posted_while_the_other_is_down(&only_here).await;
    pair.missing_alert_naming(&only_here).await;
    assert_eq!(
        compare_metric(
            &pair.watcher,
            "rigmesh_coordinator_books_compare_behind_entries"
        )
        .await,
        0
    );
    assert!(
        compare_metric(
            &pair.watcher,
            "rigmesh_coordinator_books_compared_entries_total"
        )
        .await
            >= 2
    );
    pair.stop().await;
}
