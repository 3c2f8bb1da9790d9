//! The HTTP perimeter over real listeners on free ports: scoped tokens
//! with expiry and revocation, the firewall's refusals (rate, body size,
//! source network), the public listener's pages and statistics, the
//! operator listener's refusal to face a network without TLS, and an
//! authorization matrix built from every listener's route table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

#[path = "common/offers.rs"]
mod offers;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use prometheus_client::registry::Registry;
use rigmesh_ledger::MarketStore;
use rigmesh_node::api::local::{self, LocalApi};
use rigmesh_node::api::tokens::{self, Bootstrap, NewToken, TokenRecord};
use rigmesh_node::api::{
    analytics, operator, public, Access, AlertTarget, ApiMetrics, Firewall, Listener,
    ListenerLimits, Scope, TokenStore,
};
use rigmesh_node::orderbook::OrderBook;
use rigmesh_protocol::{Keypair, UnixMillis};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A status and JSON body (or `{"text": ...}` when not JSON).
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
    // A server may answer (413, 403) before reading the whole body.
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

fn localhost() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

fn error_of(a: &Answer) -> &str {
    a.body["error"].as_str().unwrap_or("")
}

struct Setup {
    dir: tempfile::TempDir,
    api: LocalApi,
    registry: Registry,
    metrics: ApiMetrics,
}

fn setup() -> Setup {
    common::logs();
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenStore::open(dir.path(), &[Bootstrap::Customer, Bootstrap::Supplier]).unwrap();
    let mut registry = Registry::default();
    let metrics = ApiMetrics::register(&mut registry);
    let store = Arc::new(MarketStore::temporary().unwrap());
    let api = LocalApi {
        book: Arc::new(OrderBook::loaded_from(&store).unwrap()),
        store,
        account: Keypair::from_seed([1; 32]).public(),
        tokens,
        supplier: None,
        customer: None,
        notify: Default::default(),
        coordinator: None,
        trends: None,
        review: None,
        quorum: None,
        network: None,
    };
    Setup {
        dir,
        api,
        registry,
        metrics,
    }
}

impl Setup {
    fn firewall(&self, listener: Listener, limits: ListenerLimits) -> Arc<Firewall> {
        Arc::new(
            Firewall::new(
                listener,
                limits,
                self.metrics.clone(),
                AlertTarget::default(),
            )
            .unwrap(),
        )
    }

    async fn serve(&self, listener: Listener, limits: ListenerLimits) -> SocketAddr {
        let fw = self.firewall(listener, limits);
        let here: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let pending = std::future::pending();
        match listener {
            Listener::Customer | Listener::Supplier => {
                local::serve(listener, here, self.api.clone(), fw, pending)
                    .await
                    .unwrap()
                    .0
            }
            Listener::Analytics => {
                analytics::serve(here, self.api.clone(), fw, pending)
                    .await
                    .unwrap()
                    .0
            }
            Listener::Operator => {
                operator::serve(here, self.api.clone(), fw, None, pending)
                    .await
                    .unwrap()
                    .0
            }
            Listener::Public => {
                public::serve(here, self.api.book.clone(), fw, pending)
                    .await
                    .unwrap()
                    .0
            }
            Listener::Monitoring => unreachable!("tested in metrics.rs"),
        }
    }

    fn bootstrap(&self, audience: Bootstrap) -> String {
        tokens::read_token(self.dir.path(), audience).unwrap()
    }

    /// A token with `scopes`, made directly in the store by an all-scopes
    /// granter, created at `at`.
    fn token(
        &self,
        name: &str,
        scopes: &[Scope],
        expires_in_secs: Option<u64>,
        at: UnixMillis,
    ) -> String {
        let granter = TokenRecord {
            id: "granter".into(),
            name: "granter".into(),
            scopes: Scope::ALL.to_vec(),
            created_at: at,
            expires_at: None,
            last_used: None,
            revoked_at: None,
        };
        self.api
            .tokens
            .create(
                NewToken {
                    name: Some(name.into()),
                    scopes: scopes.to_vec(),
                    expires_in_secs,
                },
                &granter,
                at,
            )
            .unwrap()
            .token
    }

    fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }
}

#[tokio::test]
async fn tokens_have_scopes_expiry_and_revocation() {
    let s = setup();
    let addr = s.serve(Listener::Customer, ListenerLimits::default()).await;
    let admin = s.bootstrap(Bootstrap::Customer);
    let me = localhost();

    let missing = call(addr, me, "GET", "/v1/bids", None, "").await;
    assert_eq!((missing.status, error_of(&missing)), (401, "token_missing"));
    let unknown = call(addr, me, "GET", "/v1/bids", Some(&"ab".repeat(32)), "").await;
    assert_eq!(
        (unknown.status, error_of(&unknown)),
        (401, "token_not_recognised")
    );

    // The bootstrap token makes a read-only token for a dashboard.
    let made = call(
        addr,
        me,
        "POST",
        "/v1/tokens",
        Some(&admin),
        r#"{"name":"dash","scopes":["customer:read"],"expires_in_secs":86400}"#,
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let reader = made.body["token"].as_str().unwrap().to_string();
    assert!(made.body["record"]["expires_at"].is_u64());

    let read = call(addr, me, "GET", "/v1/offers", Some(&reader), "").await;
    assert_eq!(read.status, 200, "{}", read.body);
    let trade = call(addr, me, "POST", "/v1/bid", Some(&reader), "{}").await;
    assert_eq!((trade.status, error_of(&trade)), (403, "scope_missing"));
    assert!(
        trade.body["reason"]
            .as_str()
            .unwrap()
            .contains("customer:trade"),
        "{}",
        trade.body
    );
    // It cannot make itself (or anyone) a wider token.
    let widen = call(
        addr,
        me,
        "POST",
        "/v1/tokens",
        Some(&reader),
        r#"{"scopes":["customer:trade"]}"#,
    )
    .await;
    assert_eq!((widen.status, error_of(&widen)), (403, "scope_missing"));
    // Nor can the bootstrap token grant what it lacks.
    let escalate = call(
        addr,
        me,
        "POST",
        "/v1/tokens",
        Some(&admin),
        r#"{"scopes":["operator:read"]}"#,
    )
    .await;
    assert_eq!(escalate.status, 400, "{}", escalate.body);

    // The list names every token and never holds a secret.
    let list = call(addr, me, "GET", "/v1/tokens", Some(&admin), "").await;
    assert_eq!(list.status, 200);
    let text = list.body.to_string();
    assert!(
        text.contains("dash") && text.contains("customer-cli"),
        "{text}"
    );
    assert!(!text.contains(&reader) && !text.contains(&admin), "{text}");

    // Revoked: refused with its own error from the next request on.
    let revoke = call(addr, me, "DELETE", "/v1/tokens/dash", Some(&admin), "").await;
    assert_eq!(revoke.status, 200, "{}", revoke.body);
    let after = call(addr, me, "GET", "/v1/offers", Some(&reader), "").await;
    assert_eq!((after.status, error_of(&after)), (401, "token_revoked"));
    let gone = call(addr, me, "DELETE", "/v1/tokens/nobody", Some(&admin), "").await;
    assert_eq!(gone.status, 404);

    // Expired: made a minute ago to live one second.
    let old = s.token(
        "old",
        &[Scope::CustomerRead],
        Some(1),
        UnixMillis::now().minus_ms(60_000),
    );
    let expired = call(addr, me, "GET", "/v1/offers", Some(&old), "").await;
    assert_eq!((expired.status, error_of(&expired)), (401, "token_expired"));

    // The supplier's bootstrap token has no customer scope.
    let supplier = s.bootstrap(Bootstrap::Supplier);
    let other = call(addr, me, "GET", "/v1/offers", Some(&supplier), "").await;
    assert_eq!((other.status, error_of(&other)), (403, "scope_missing"));

    let metrics = s.metrics_text();
    for reason in [
        "token_missing",
        "token_not_recognised",
        "token_revoked",
        "token_expired",
        "scope_missing",
    ] {
        assert!(
            metrics.contains(&format!(
                r#"rigmesh_api_refusals_total{{listener="customer",reason="{reason}"}}"#
            )),
            "{reason} not counted:\n{metrics}"
        );
    }
    assert!(
        metrics.contains(
            r#"rigmesh_api_requests_total{listener="customer",route="/v1/offers",status="200"}"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_burst_from_one_address_or_token_is_refused_while_others_are_served() {
    let s = setup();
    let per_ip = s
        .serve(
            Listener::Customer,
            ListenerLimits {
                per_ip_per_minute: 1,
                per_ip_burst: 5,
                alert_after_refusals: 3,
                ..ListenerLimits::default()
            },
        )
        .await;
    let admin = s.bootstrap(Bootstrap::Customer);
    let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
    for i in 0..5 {
        let r = call(per_ip, a, "GET", "/v1/offers", Some(&admin), "").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    let mut limited = 0;
    for _ in 0..4 {
        let r = call(per_ip, a, "GET", "/v1/offers", Some(&admin), "").await;
        if r.status == 429 {
            assert_eq!(error_of(&r), "rate_limited");
            limited += 1;
        }
    }
    assert!(
        limited >= 3,
        "the burst past 5 was refused ({limited} of 4)"
    );
    let other = call(per_ip, b, "GET", "/v1/offers", Some(&admin), "").await;
    assert_eq!(other.status, 200, "another address is still served");
    let metrics = s.metrics_text();
    assert!(
        metrics
            .contains(r#"rigmesh_api_refusals_total{listener="customer",reason="rate_limited"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"rigmesh_api_suspicious_sources_total{listener="customer"} 1"#),
        "three refusals from one address cross the alert threshold:\n{metrics}"
    );

    // Per token, on a listener with a generous per-address rate.
    let per_token = s
        .serve(
            Listener::Supplier,
            ListenerLimits {
                per_token_per_minute: 1,
                per_token_burst: 3,
                ..ListenerLimits::default()
            },
        )
        .await;
    let noisy = s.token("noisy", &[Scope::SupplierRead], None, UnixMillis::now());
    let quiet = s.token("quiet", &[Scope::SupplierRead], None, UnixMillis::now());
    for _ in 0..3 {
        let r = call(per_token, a, "GET", "/v1/offers", Some(&noisy), "").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = call(per_token, a, "GET", "/v1/offers", Some(&noisy), "").await;
    assert_eq!((r.status, error_of(&r)), (429, "rate_limited"));
    let r = call(per_token, a, "GET", "/v1/offers", Some(&quiet), "").await;
    assert_eq!(
        r.status, 200,
        "another token from the same address is served"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_changes_nothing() {
    let s = setup();
    let addr = s
        .serve(
            Listener::Customer,
            ListenerLimits {
                max_body_bytes: 256,
                ..ListenerLimits::default()
            },
        )
        .await;
    let admin = s.bootstrap(Bootstrap::Customer);
    let big = format!(
        r#"{{"name":"big","scopes":["customer:read"],"pad":"{}"}}"#,
        "x".repeat(1000)
    );
    let r = call(addr, localhost(), "POST", "/v1/tokens", Some(&admin), &big).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(s.api.tokens.list().len(), 2, "no token was made");
    let metrics = s.metrics_text();
    assert!(
        metrics.contains(r#"rigmesh_api_refusals_total{listener="customer",reason="too_large"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_network_not_allowed_is_refused_before_any_handler() {
    let s = setup();
    let only_tens = ListenerLimits {
        allow: vec!["10.0.0.0/8".parse().unwrap()],
        ..ListenerLimits::open_to_all()
    };
    let public = s.serve(Listener::Public, only_tens.clone()).await;
    let customer = s.serve(Listener::Customer, only_tens).await;
    let r = call(public, localhost(), "GET", "/v1/market", None, "").await;
    assert_eq!((r.status, error_of(&r)), (403, "forbidden_network"));
    // Even with a valid token, and even where no route exists.
    let admin = s.bootstrap(Bootstrap::Customer);
    let r = call(customer, localhost(), "GET", "/v1/offers", Some(&admin), "").await;
    assert_eq!((r.status, error_of(&r)), (403, "forbidden_network"));
    let r = call(customer, localhost(), "GET", "/nothing", None, "").await;
    assert_eq!((r.status, error_of(&r)), (403, "forbidden_network"));
}

#[tokio::test]
async fn the_public_listener_pages_offers_and_states_prices_without_a_token() {
    let s = setup();
    let a = Keypair::from_seed([3; 32]);
    let b = Keypair::from_seed([4; 32]);
    let h100 = "NVIDIA H100 80GB HBM3";
    let listed: Vec<_> = [1_000_000, 2_000_000, 3_000_000, 4_000_000]
        .iter()
        .map(|p| offers::offer(&a, h100, *p, "eu"))
        .chain([offers::offer(&b, "NVIDIA A100-SXM4-80GB", 1_500_000, "us")])
        .collect();
    s.api
        .store
        .store(&listed.iter().map(offers::record).collect::<Vec<_>>())
        .unwrap();
    // Written straight into the store, so read into the book as a node
    // does at start.
    s.api.book.load(&s.api.store).unwrap();
    let addr = s
        .serve(Listener::Public, ListenerLimits::open_to_all())
        .await;
    let me = localhost();

    let first = call(addr, me, "GET", "/v1/offers?limit=2", None, "").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["total"], 5);
    assert_eq!(first.body["offers"].as_array().unwrap().len(), 2);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_string();
    let rest = call(
        addr,
        me,
        "GET",
        &format!("/v1/offers?limit=10&cursor={cursor}"),
        None,
        "",
    )
    .await;
    assert_eq!(rest.body["offers"].as_array().unwrap().len(), 3);
    assert!(rest.body["next_cursor"].is_null());
    let eu = call(
        addr,
        me,
        "GET",
        "/v1/offers?region=eu&max_price=2.5",
        None,
        "",
    )
    .await;
    assert_eq!(eu.body["total"], 2, "{}", eu.body);
    let bad = call(addr, me, "GET", "/v1/offers?cursor=zz", None, "").await;
    assert_eq!(bad.status, 400);

    let prices = call(addr, me, "GET", "/v1/prices", None, "").await;
    let models = prices.body["models"].as_array().unwrap();
    let h = models.iter().find(|m| m["gpu_model"] == h100).unwrap();
    assert_eq!(h["offers"], 4);
    assert_eq!(h["min"], "1");
    assert_eq!(h["median"], "2");
    assert_eq!(h["p90"], "4");
    let market = call(addr, me, "GET", "/v1/market", None, "").await;
    assert_eq!(market.body["offers"], 5);
    assert_eq!(market.body["suppliers"], 2);
    assert_eq!(market.body["gpus"], 10);
}

#[tokio::test]
async fn the_operator_listener_refuses_a_network_address_without_tls() {
    let s = setup();
    let fw = s.firewall(Listener::Operator, ListenerLimits::default());
    let err = operator::serve(
        "0.0.0.0:0".parse().unwrap(),
        s.api.clone(),
        fw,
        None,
        std::future::pending(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("TLS"), "{err}");
}

/// The operator listener over a coordinator's books: the audit tail, the
/// chain check and the books summary, each behind `operator:read`.
#[tokio::test]
async fn the_operator_listener_reads_a_coordinators_audit_chain_and_books() {
    use rigmesh_protocol::{Credits, Id};
    let mut s = setup();
    let key = Keypair::from_seed([9; 32]);
    let rules = rigmesh_node::config::CoordinatorsConfig::new(1, vec![key.public()])
        .rules()
        .unwrap();
    let books = rigmesh_ledger::Ledger::open(&s.dir.path().join("books")).unwrap();
    let payer = Keypair::from_seed([8; 32]).public();
    let cause = rigmesh_ledger::Cause::new(key.public(), Id([7; 32]), UnixMillis::now());
    books
        .deposit(payer, Credits::from_units(5_000_000), Id([7; 32]), &cause)
        .unwrap();
    s.api.coordinator = Some(Arc::new(rigmesh_node::coordinator::CoordinatorRole::new(
        key,
        rules,
        Arc::new(books),
        s.api.store.clone(),
    )));
    let addr = s.serve(Listener::Operator, ListenerLimits::default()).await;
    let reader = s.token("auditor", &[Scope::OperatorRead], None, UnixMillis::now());
    let me = localhost();
    let r = call(addr, me, "GET", "/v1/books", None, "").await;
    assert_eq!((r.status, error_of(&r)), (401, "token_missing"));
    let r = call(addr, me, "GET", "/v1/books", Some(&reader), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["entries"], 1, "{}", r.body);
    assert_eq!(r.body["totals"]["users"], "5", "{}", r.body);
    let r = call(addr, me, "GET", "/v1/audit?limit=10", Some(&reader), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let records = r.body["records"].as_array().unwrap();
    assert!(
        records.iter().any(|r| r["action"] == "Deposit"),
        "{}",
        r.body
    );
    let r = call(addr, me, "GET", "/v1/audit/verify", Some(&reader), "").await;
    assert_eq!(r.body["intact"], true, "{}", r.body);
}

/// Off loopback, the operator listener serves only TLS.
#[tokio::test]
async fn the_operator_listener_serves_tls_off_loopback() {
    let s = setup();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (s.dir.path().join("op.crt"), s.dir.path().join("op.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let tls = rigmesh_node::api::tls::TlsFiles {
        cert: cert_path,
        key: key_path,
    }
    .server_config()
    .unwrap();
    let fw = s.firewall(Listener::Operator, ListenerLimits::default());
    let (addr, _task) = operator::serve(
        "0.0.0.0:0".parse().unwrap(),
        s.api.clone(),
        fw,
        Some(tls),
        std::future::pending(),
    )
    .await
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", addr.port()))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    stream
        .write_all(b"GET /v1/books HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(response.contains("token_missing"), "{response}");
}

/// A path with its parameters filled in.
fn concrete(path: &str) -> String {
    let id = "ab".repeat(32);
    path.replace("{id}", &id)
        .replace("{lease}", &id)
        .replace("{group}", &id)
        .replace("{name}", "nobody")
        .replace("{*name}", "spend")
        .replace("{token}", "victim")
        .replace("{kind}", "deposits")
        .replace("{offender}", "127.0.0.9")
}

/// Every scope against every route of every token listener: no token is
/// 401, a token without the route's scope is 403, one with it gets past
/// the check (and the route exists: neither 404 nor 405).
#[tokio::test]
async fn authorization_matrix_from_the_route_tables() {
    let s = setup();
    let generous = ListenerLimits {
        per_ip_burst: 10_000,
        per_token_burst: 10_000,
        alert_after_refusals: u32::MAX,
        ..ListenerLimits::default()
    };
    let now = UnixMillis::now();
    let single: Vec<(Scope, String)> = Scope::ALL
        .iter()
        .map(|scope| {
            (
                *scope,
                s.token(&scope.name().replace(':', "-"), &[*scope], None, now),
            )
        })
        .collect();
    // Revoked again and again by the matrix: revocation is idempotent.
    s.token("victim", &[Scope::CustomerRead], None, now);
    let me = localhost();
    let mut checked = 0;
    for listener in [
        Listener::Customer,
        Listener::Supplier,
        Listener::Analytics,
        Listener::Operator,
        Listener::Public,
    ] {
        let addr = s.serve(listener, generous.clone()).await;
        for spec in listener.routes() {
            let path = concrete(spec.path);
            let what = format!("{} {} {}", listener.name(), spec.method, spec.path);
            let none = call(addr, me, spec.method, &path, None, "").await;
            match spec.access {
                Access::Scope(_) | Access::AnyToken => {
                    assert_eq!(
                        (none.status, error_of(&none)),
                        (401, "token_missing"),
                        "{what}"
                    )
                }
                Access::Open | Access::OwnToken => {
                    assert!(
                        ![401, 403, 404, 405].contains(&none.status),
                        "{what}: {}",
                        none.status
                    )
                }
            }
            for (scope, token) in &single {
                let r = call(addr, me, spec.method, &path, Some(token), "").await;
                let allowed = match spec.access {
                    Access::Scope(needed) => needed == *scope,
                    _ => true,
                };
                if allowed {
                    assert!(
                        ![401, 403, 404, 405].contains(&r.status),
                        "{what} with {scope}: {} {}",
                        r.status,
                        r.body
                    );
                } else {
                    assert_eq!(
                        (r.status, error_of(&r)),
                        (403, "scope_missing"),
                        "{what} with {scope}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "{checked} checks");
}

async fn start_node(
    role: rigmesh_node::config::Role,
    dir: &std::path::Path,
) -> rigmesh_node::node::RunningNode {
    let here: SocketAddr = "127.0.0.1:0".parse().unwrap();
    rigmesh_node::node::start(rigmesh_node::config::NodeConfig {
        role,
        data_dir: dir.to_path_buf(),
        network: common::config(),
        monitoring: here,
        customer_api: here,
        supplier_api: here,
        public_api: here,
        analytics_api: here,
        operator_api: here,
        ..rigmesh_node::config::NodeConfig::default()
    })
    .await
    .unwrap()
}

/// Every accepted request that may change something lands in the node's
/// audit chain with the token and address that asked; reads and refused
/// requests do not, and the chain stays intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_writes_are_recorded_in_the_audit_chain_with_who_asked() {
    use rigmesh_node::config::Role;
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(Role::Customer, dir.path()).await;
    let api = node.customer_api.unwrap();
    let me = localhost();
    let token = tokens::read_token(dir.path(), Bootstrap::Customer).unwrap();
    let who = call(api, me, "GET", "/v1/whoami", Some(&token), "").await;
    let token_id = who.body["token_id"].as_str().unwrap().to_string();
    let made = call(
        api,
        me,
        "POST",
        "/v1/tokens",
        Some(&token),
        r#"{"name":"reader","scopes":["customer:read"]}"#,
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let reader = made.body["token"].as_str().unwrap().to_string();
    let refused = call(api, me, "PUT", "/v1/budget", Some(&reader), "{}").await;
    assert_eq!(refused.status, 403);
    let revoked = call(api, me, "DELETE", "/v1/tokens/reader", Some(&token), "").await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);

    let tail = call(api, me, "GET", "/v1/audit", Some(&token), "").await;
    assert_eq!(tail.status, 200, "{}", tail.body);
    let details: Vec<String> = tail.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "Requested")
        .map(|r| r["detail"].as_str().unwrap().to_string())
        .collect();
    let by_us = format!("by token {token_id} (customer-cli) from 127.0.0.1");
    assert_eq!(details.len(), 2, "{details:?}");
    assert!(
        details[0].starts_with("POST /v1/tokens on the customer API")
            && details[0].contains(&by_us),
        "{details:?}"
    );
    assert!(details[0].ends_with(": 201"), "{details:?}");
    assert!(
        details[1].starts_with("DELETE /v1/tokens/reader") && details[1].ends_with(": 200"),
        "{details:?}"
    );
    assert!(
        !details
            .iter()
            .any(|d| d.contains("/v1/budget") || d.contains("GET ")),
        "neither reads nor refused requests are recorded: {details:?}"
    );
    let verified = call(api, me, "GET", "/v1/audit/verify", Some(&token), "").await;
    assert_eq!(verified.body["intact"], true, "{}", verified.body);
    // The revoked token reads nothing, the chain included.
    let denied = call(api, me, "GET", "/v1/audit", Some(&reader), "").await;
    assert_eq!(denied.status, 401, "the revoked token is refused");
    node.stop().await.unwrap();
}

/// A started node serves the listeners of its role and no others, says it
/// is ready and healthy, and keeps its tokens across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_node_serves_the_listeners_its_role_needs() {
    use rigmesh_node::config::Role;
    common::logs();
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(Role::Customer, dir.path()).await;
    assert!(node.customer_api.is_some() && node.analytics_api.is_some());
    assert!(node.supplier_api.is_none() && node.operator_api.is_none());
    let me = localhost();
    let ready = call(node.monitoring, me, "GET", "/ready", None, "").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let health = call(node.monitoring, me, "GET", "/health", None, "").await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.body["ledger"]["writable"], true, "{}", health.body);
    assert!(health.body["queues"]["customer_commands"]["capacity"].is_u64());
    let market = call(node.public_api, me, "GET", "/v1/market", None, "").await;
    assert_eq!(market.status, 200, "{}", market.body);

    let token = tokens::read_token(dir.path(), Bootstrap::Customer).unwrap();
    let analytics = node.analytics_api.unwrap();
    let spend = call(analytics, me, "GET", "/v1/spend", Some(&token), "").await;
    assert_eq!(spend.status, 200, "{}", spend.body);
    let account = call(
        node.customer_api.unwrap(),
        me,
        "GET",
        "/v1/account",
        None,
        "",
    )
    .await;
    assert_eq!(account.status, 401);
    let made = call(
        node.customer_api.unwrap(),
        me,
        "POST",
        "/v1/tokens",
        Some(&token),
        r#"{"name":"board","scopes":["analytics:read"]}"#,
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let board = made.body["token"].as_str().unwrap().to_string();
    node.stop().await.unwrap();

    let node = start_node(Role::Customer, dir.path()).await;
    let analytics = node.analytics_api.unwrap();
    for t in [&token, &board] {
        let r = call(analytics, me, "GET", "/v1/spend", Some(t), "").await;
        assert_eq!(r.status, 200, "tokens survive a restart: {}", r.body);
    }
    let r = call(
        node.customer_api.unwrap(),
        me,
        "POST",
        "/v1/bid",
        Some(&board),
        "{}",
    )
    .await;
    assert_eq!((r.status, error_of(&r)), (403, "scope_missing"));
    node.stop().await.unwrap();

    // A supplier node has no customer listener; its token is its own.
    let dir = tempfile::tempdir().unwrap();
    let mut config = rigmesh_node::config::NodeConfig {
        role: Role::Supplier,
        data_dir: dir.path().to_path_buf(),
        network: common::config(),
        ..rigmesh_node::config::NodeConfig::default()
    };
    let here: SocketAddr = "127.0.0.1:0".parse().unwrap();
    (config.monitoring, config.customer_api, config.supplier_api) = (here, here, here);
    (config.public_api, config.analytics_api, config.operator_api) = (here, here, here);
    config.supplier.gpus =
        rigmesh_node::telemetry::GpuSourceConfig::Sim(rigmesh_node::telemetry::SimSpec::Profile(
            rigmesh_node::telemetry::SimProfile::builtin("a100x4").unwrap(),
        ));
    config.supplier.prices = [("NVIDIA A100-SXM4-80GB".to_string(), "1.5".parse().unwrap())].into();
    let node = rigmesh_node::node::start(config).await.unwrap();
    assert!(node.customer_api.is_none() && node.supplier_api.is_some());
    assert!(!tokens::token_path(dir.path(), Bootstrap::Customer).exists());
    let token = tokens::read_token(dir.path(), Bootstrap::Supplier).unwrap();
    let r = call(
        node.supplier_api.unwrap(),
        me,
        "GET",
        "/v1/gpus",
        Some(&token),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    node.stop().await.unwrap();
}
