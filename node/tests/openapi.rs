//! Each listener's OpenAPI document against the three things it must agree
//! with: its route table (every route documented, nothing else, each with
//! its scope and refusals), the checked-in copy in `specs/openapi/` (so the
//! published documents cannot drift from the code), and the real answers
//! of running nodes (each validated against the schema of its status).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rigmesh_node::api::openapi::{self, UNDESCRIBED};
use rigmesh_node::api::tokens::{self, Bootstrap};
use rigmesh_node::api::{operator, Access, AlertTarget, ApiMetrics, Firewall, Listener};
use rigmesh_node::config::{NodeConfig, Role};
use rigmesh_protocol::{Keypair, UnixMillis};
use serde_json::Value;

fn spec_file(listener: Listener) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../specs/openapi")
        .join(format!("{}.json", listener.name()))
}

#[test]
fn every_route_of_each_table_is_documented_and_nothing_else() {
    for listener in Listener::ALL {
        let doc = openapi::document(listener);
        let name = listener.name();
        let table: BTreeSet<(String, String)> = listener
            .routes()
            .iter()
            .map(|s| (s.method.to_string(), s.path.to_string()))
            .collect();
        let mut documented = BTreeSet::new();
        for (path, methods) in doc["paths"].as_object().unwrap() {
            for (method, op) in methods.as_object().unwrap() {
                let what = format!("{name} {method} {path}");
                documented.insert((method.to_uppercase(), path.clone()));
                assert!(op.get(UNDESCRIBED).is_none(), "{what} is not described");
                let responses = op["responses"].as_object().unwrap();
                assert!(
                    responses.keys().any(|s| s.starts_with('2')),
                    "{what} has no success answer"
                );
                assert!(responses.contains_key("429"), "{what}");
                // The path's parameters are the template's, in order.
                let declared: Vec<&str> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .map(|p| p["name"].as_str().unwrap())
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(declared, openapi::path_parameters(path), "{what}");
                let spec = listener
                    .routes()
                    .into_iter()
                    .find(|s| s.path == path && s.method.eq_ignore_ascii_case(method))
                    .unwrap();
                let description = op["description"].as_str().unwrap();
                match spec.access {
                    Access::Scope(scope) => {
                        assert_eq!(
                            op["security"],
                            serde_json::json!([{"bearer": []}]),
                            "{what}"
                        );
                        assert!(description.contains(scope.name()), "{what}: {description}");
                        for status in ["401", "403"] {
                            assert_eq!(
                                responses[status]["content"]["application/json"]["schema"]["$ref"],
                                "#/components/schemas/Error",
                                "{what} {status}"
                            );
                        }
                    }
                    Access::AnyToken => {
                        assert_eq!(
                            op["security"],
                            serde_json::json!([{"bearer": []}]),
                            "{what}"
                        );
                        assert!(responses.contains_key("401"), "{what}");
                    }
                    Access::Open | Access::OwnToken => {
                        assert_eq!(op["security"], serde_json::json!([]), "{what}");
                        assert!(!responses.contains_key("401"), "{what}");
                    }
                }
            }
        }
        assert_eq!(documented, table, "the {name} document and its route table");
        assert!(
            table.contains(&("GET".to_string(), "/openapi.json".to_string())),
            "the {name} listener serves its document"
        );
        // Every schema compiles, references included.
        for (path, status, schema) in response_schemas(&doc) {
            validator(&doc, &schema).unwrap_or_else(|e| panic!("{name} {path} {status}: {e}"));
        }
    }
}

#[test]
fn the_checked_in_documents_are_what_the_code_generates() {
    // UPDATE_OPENAPI=1 rewrites the checked-in copies (review the diff).
    let update = std::env::var_os("UPDATE_OPENAPI").is_some();
    for listener in Listener::ALL {
        let path = spec_file(listener);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, openapi::render(listener)).unwrap();
        }
        let checked_in =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            checked_in == openapi::render(listener),
            "{} differs from what the code generates; regenerate it with \
             `rigmesh node openapi --listener {} > specs/openapi/{}.json` \
             (or UPDATE_OPENAPI=1 cargo test -p rigmesh-node --test openapi)",
            path.display(),
            listener.name(),
            listener.name()
        );
    }
}

/// The schemas refuse what the handlers never answer: validation against
/// them means something.
#[test]
fn the_schemas_refuse_answers_that_break_them() {
    let doc = openapi::document(Listener::Public);
    let page = &doc["paths"]["/v1/offers"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    let page = validator(&doc, page).unwrap();
    assert!(page.is_valid(&serde_json::json!({"offers": [], "total": 0, "next_cursor": null})));
    for wrong in [
        serde_json::json!({"offers": [], "total": "0", "next_cursor": null}),
        serde_json::json!({"offers": [], "total": 0}),
        serde_json::json!({"offers": [], "total": 0, "next_cursor": null, "extra": 1}),
        serde_json::json!({"offers": [{"body": {}}], "total": 1, "next_cursor": null}),
    ] {
        assert!(!page.is_valid(&wrong), "{wrong}");
    }
    let error = doc["paths"]["/v1/offers"]["get"]["responses"]["400"]["content"]
        ["application/json"]["schema"]
        .clone();
    let error = validator(&doc, &error).unwrap();
    assert!(error.is_valid(&serde_json::json!({"error": "invalid", "reason": "why"})));
    assert!(!error.is_valid(&serde_json::json!({"error": "invalid"})));
    assert!(!error.is_valid(&serde_json::json!("Failed to deserialize query string")));
    // Money is a decimal string, never a JSON number.
    let customer = openapi::document(Listener::Customer);
    let lease = validator(
        &customer,
        &serde_json::json!({"$ref": "#/components/schemas/CapReport"}),
    )
    .unwrap();
    assert!(lease.is_valid(&serde_json::json!({"cap": "2.5", "spent": "0", "remaining": null})));
    assert!(!lease.is_valid(&serde_json::json!({"cap": 2.5, "spent": "0", "remaining": null})));
}

/// Every `(path, status, schema)` of the document's JSON answers.
fn response_schemas(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for op in methods.as_object().unwrap().values() {
            for (status, response) in op["responses"].as_object().unwrap() {
                if let Some(schema) = response["content"]["application/json"].get("schema") {
                    out.push((path.clone(), status.clone(), schema.clone()));
                }
            }
        }
    }
    out
}

/// A validator for `schema` whose `#/components/...` references resolve
/// in `doc`.
fn validator(doc: &Value, schema: &Value) -> Result<jsonschema::Validator, String> {
    let root = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [schema],
        "components": doc["components"],
    });
    jsonschema::validator_for(&root).map_err(|e| e.to_string())
}

/// One request; the status, the content type and the body.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// Checks answers of one listener against its document.
struct Checker {
    listener: Listener,
    doc: Value,
    addr: SocketAddr,
    token: Option<String>,
    checked: usize,
}

impl Checker {
    fn new(listener: Listener, addr: SocketAddr, token: Option<String>) -> Self {
        Checker {
            listener,
            doc: openapi::document(listener),
            addr,
            token,
            checked: 0,
        }
    }

    /// Calls `method concrete` (an instance of `template`) and checks the
    /// answer against the document: its status is documented, its body
    /// is JSON of the status's schema. Returns the status and the body.
    async fn check(
        &mut self,
        method: &str,
        template: &str,
        concrete: &str,
        body: &str,
    ) -> (u16, Value) {
        let (status, content_type, text) =
            call(self.addr, method, concrete, self.token.as_deref(), body).await;
        let what = format!("{} {method} {concrete} -> {status}", self.listener.name());
        let response = &self.doc["paths"][template][method.to_ascii_lowercase()]["responses"]
            [status.to_string()];
        assert!(
            response.is_object(),
            "{what}: status not documented: {text}"
        );
        let Some(schema) = response["content"]["application/json"].get("schema") else {
            return (status, Value::Null);
        };
        assert!(
            content_type.starts_with("application/json"),
            "{what}: {content_type}: {text}"
        );
        let value: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
        let validator = validator(&self.doc, schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{what}: {errors:#?}\n{text}");
        self.checked += 1;
        (status, value)
    }

    async fn get(&mut self, path: &str) -> (u16, Value) {
        self.check("GET", path, path, "").await
    }
}

fn here() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn start(
    role: Role,
    dir: &std::path::Path,
    configure: impl FnOnce(&mut NodeConfig),
) -> rigmesh_node::node::RunningNode {
    let mut config = NodeConfig {
        role,
        data_dir: dir.to_path_buf(),
        network: common::config(),
        monitoring: here(),
        customer_api: here(),
        supplier_api: here(),
        public_api: here(),
        analytics_api: here(),
        operator_api: here(),
        ..NodeConfig::default()
    };
    configure(&mut config);
    rigmesh_node::node::start(config).await.unwrap()
}

/// A customer node's customer, analytics, public and monitoring listeners
/// answer what their documents say, refusals included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_nodes_answers_match_its_documents() {
    common::logs();
    let dir = tempfile::tempdir().unwrap();
    let node = start(Role::Customer, dir.path(), |_| {}).await;
    let token = tokens::read_token(dir.path(), Bootstrap::Customer).unwrap();

    let mut customer = Checker::new(
        Listener::Customer,
        node.customer_api.unwrap(),
        Some(token.clone()),
    );
    for path in [
        "/v1/account",
        "/v1/leases",
        "/v1/bids",
        "/v1/budget",
        "/v1/whoami",
        "/v1/tokens",
        "/v1/offers",
    ] {
        let (status, body) = customer.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, body) = customer.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(body, openapi::document(Listener::Customer));
    // Refusals carry the shared error body.
    let (status, body) = customer
        .check("GET", "/v1/bids/{id}", "/v1/bids/zz", "")
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid")));
    let lease = "ab".repeat(32);
    let (status, _) = customer
        .check(
            "GET",
            "/v1/usage/{lease}",
            &format!("/v1/usage/{lease}"),
            "",
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = customer
        .check(
            "GET",
            "/v1/usage/{lease}",
            &format!("/v1/usage/{lease}?limit=many"),
            "",
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid")),
        "a bad query is JSON too"
    );
    let (status, body) = customer
        .check("POST", "/v1/bid", "/v1/bid", "{\"gpu\": 3}")
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid")),
        "a bad bid is JSON too"
    );
    let (status, _) = customer.get("/v1/notify/channels").await;
    assert_eq!(status, 409, "no [notify] on this node");
    let (status, body) = customer
        .check(
            "POST",
            "/v1/tokens",
            "/v1/tokens",
            r#"{"name":"board","scopes":["analytics:read"],"expires_in_secs":60}"#,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = customer
        .check("DELETE", "/v1/tokens/{token}", "/v1/tokens/board", "")
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["revoked_at"].is_u64(), "{body}");
    let mut anonymous = Checker::new(Listener::Customer, node.customer_api.unwrap(), None);
    let (status, body) = anonymous.get("/v1/account").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_missing"))
    );

    let mut analytics = Checker::new(
        Listener::Analytics,
        node.analytics_api.unwrap(),
        Some(token.clone()),
    );
    for path in ["/v1/spend", "/v1/whoami", "/openapi.json"] {
        let (status, body) = analytics.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, _) = analytics.get("/v1/earnings").await;
    assert_eq!(status, 409, "a customer node has no supplier earnings");

    let mut public = Checker::new(Listener::Public, node.public_api, None);
    for path in [
        "/v1/market",
        "/v1/prices",
        "/v1/offers?limit=5",
        "/openapi.json",
    ] {
        let (status, body) = public
            .check("GET", path.split('?').next().unwrap(), path, "")
            .await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, body) = public
        .check("GET", "/v1/offers", "/v1/offers?min_gpus=-1", "")
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid")));

    let mut monitoring = Checker::new(Listener::Monitoring, node.monitoring, None);
    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        let (status, _) = monitoring.get(path).await;
        assert_eq!(status, 200, "{path}");
    }
    let total = customer.checked
        + anonymous.checked
        + analytics.checked
        + public.checked
        + monitoring.checked;
    assert!(total >= 25, "{total} answers checked");
    node.stop().await.unwrap();
}

/// A supplier node with simulated GPUs: its GPUs, samples, leases and
/// earnings as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_nodes_answers_match_its_document() {
    common::logs();
    let dir = tempfile::tempdir().unwrap();
    let node = start(Role::Supplier, dir.path(), |config| {
        config.supplier.gpus = rigmesh_node::telemetry::GpuSourceConfig::Sim(
            rigmesh_node::telemetry::SimSpec::Profile(
                rigmesh_node::telemetry::SimProfile::builtin("a100x4").unwrap(),
            ),
        );
        config.supplier.prices =
            [("NVIDIA A100-SXM4-80GB".to_string(), "1.5".parse().unwrap())].into();
    })
    .await;
    // The simulated GPUs are sampled once the supplier role runs.
    let addr = node.supplier_api.unwrap();
    let token = tokens::read_token(dir.path(), Bootstrap::Supplier).unwrap();
    let mut supplier = Checker::new(Listener::Supplier, addr, Some(token.clone()));
    common::eventually(20, "a sample of every simulated GPU", || {
        let token = token.clone();
        async move {
            let (_, _, text) = call(addr, "GET", "/v1/gpus", Some(&token), "").await;
            let body: Value = serde_json::from_str(&text).unwrap_or_default();
            body["latest"].as_array().is_some_and(|l| l.len() == 4)
        }
    })
    .await;
    for path in [
        "/v1/gpus",
        "/v1/leases",
        "/v1/earnings",
        "/v1/offers",
        "/v1/whoami",
    ] {
        let (status, body) = supplier.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    assert_eq!(supplier.checked, 5);
    node.stop().await.unwrap();
}

/// A coordinator's operator listener: books, audit chain and disputes as
/// documented.
#[tokio::test]
async fn the_operator_listeners_answers_match_its_document() {
    use rigmesh_protocol::{Credits, Id};
    common::logs();
    let dir = tempfile::tempdir().unwrap();
    let tokens = rigmesh_node::api::TokenStore::open(dir.path(), &[Bootstrap::Operator]).unwrap();
    let key = Keypair::from_seed([9; 32]);
    let rules = rigmesh_node::config::CoordinatorsConfig::new(1, vec![key.public()])
        .rules()
        .unwrap();
    let books = rigmesh_ledger::Ledger::open(&dir.path().join("books")).unwrap();
    let cause = rigmesh_ledger::Cause::new(key.public(), Id([7; 32]), UnixMillis::now());
    books
        .deposit(
            Keypair::from_seed([8; 32]).public(),
            Credits::from_units(5_000_000),
            Id([7; 32]),
            &cause,
        )
        .unwrap();
    let store = Arc::new(rigmesh_ledger::MarketStore::temporary().unwrap());
    let review = rigmesh_node::review::ReviewQueue::open(
        &dir.path().join("review"),
        100,
        None,
        Default::default(),
    )
    .unwrap();
    review.raise(rigmesh_node::review::Suspicion::new(
        "api.refusals",
        "address 192.0.2.7",
        rigmesh_protocol::Severity::Warning,
        "40 refusals in a minute",
    ));
    let api = rigmesh_node::api::local::LocalApi {
        store: store.clone(),
        book: Arc::new(rigmesh_node::orderbook::OrderBook::loaded_from(&store).unwrap()),
        account: key.public(),
        tokens,
        supplier: None,
        customer: None,
        notify: Default::default(),
        coordinator: Some(Arc::new(rigmesh_node::coordinator::CoordinatorRole::new(
            key,
            rules,
            Arc::new(books),
            store,
        ))),
        trends: None,
        review: Some(review.clone()),
        quorum: None,
        network: None,
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let firewall = Arc::new(
        Firewall::new(
            Listener::Operator,
            Default::default(),
            ApiMetrics::register(&mut registry),
            AlertTarget::default(),
        )
        .unwrap(),
    );
    let (addr, _task) = operator::serve(here(), api, firewall, None, std::future::pending())
        .await
        .unwrap();
    let token = tokens::read_token(dir.path(), Bootstrap::Operator).unwrap();
    let mut operator = Checker::new(Listener::Operator, addr, Some(token));
    for path in [
        "/v1/books",
        "/v1/audit",
        "/v1/audit/verify",
        "/v1/disputes",
        "/v1/whoami",
        "/openapi.json",
    ] {
        let (status, body) = operator.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let lease = "ab".repeat(32);
    let (status, _) = operator
        .check(
            "GET",
            "/v1/disputes/{lease}/{settlement}",
            &format!("/v1/disputes/{lease}/0"),
            "",
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = operator
        .check("GET", "/v1/audit", "/v1/audit?from=x", "")
        .await;
    assert_eq!(status, 400);

    // The review queue: the raised item is listed (once its writer has
    // it), acknowledged once, and refused the second time.
    let mut item = Value::Null;
    for _ in 0..200 {
        let (status, body) = operator.get("/v1/review").await;
        assert_eq!(status, 200, "{body}");
        if let Some(first) = body["items"].get(0) {
            item = first.clone();
            break;
        }
        review_written().await;
    }
    assert_eq!(item["subject"], "address 192.0.2.7", "{item}");
    assert_eq!(item["acknowledged_by"], Value::Null);
    let ack = format!("/v1/review/{}/ack", item["id"]);
    let (status, body) = operator
        .check(
            "POST",
            "/v1/review/{id}/ack",
            &ack,
            r#"{"note": "a scanner"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "acknowledged");
    assert_eq!(body["note"], "a scanner");
    let (status, body) = operator
        .check("POST", "/v1/review/{id}/ack", &ack, r#"{"note": "again"}"#)
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = operator
        .check("GET", "/v1/review", "/v1/review?state=all", "")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["items"][0]["note"], "a scanner");
    let (status, _) = operator
        .check("GET", "/v1/review", "/v1/review?state=closed", "")
        .await;
    assert_eq!(status, 400);

    // Writes that need the coordinator set's client, which this node
    // was not given: refused whole, as documented.
    let (status, body) = operator
        .check(
            "POST",
            "/v1/deposits",
            "/v1/deposits",
            r#"{"message": "00"}"#,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = operator
        .check("GET", "/v1/held/{kind}", "/v1/held/deposits", "")
        .await;
    assert_eq!(status, 409);
    let (status, _) = operator.get("/v1/bans").await;
    assert_eq!(status, 409);
}

/// Lets the review queue's writer thread take what was raised.
async fn review_written() {
    tokio::task::yield_now().await;
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
}
