//! Helpers for multi-node tests: nodes on loopback with real swarms.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use prometheus_client::registry::Registry;
use rigmesh_node::network::{self, InboundRequest, MessageStore, NetworkConfig, NodeHandle};
use rigmesh_protocol::CoordinatorSet;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub mod store;
pub use rigmesh_ledger::MarketStore;
#[allow(unused_imports)]
pub use store::{temp_store, StoreExt};

pub struct TestNode {
    pub handle: NodeHandle,
    pub inbound: mpsc::Receiver<InboundRequest>,
    pub addr: Multiaddr,
    pub store: Arc<MarketStore>,
    pub registry: Registry,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    ingest_task: Option<JoinHandle<()>>,
}

impl TestNode {
    pub fn peer_id(&self) -> PeerId {
        self.handle.peer_id()
    }

    pub fn dial_addr(&self) -> Multiaddr {
        self.addr
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(self.peer_id()))
    }

    /// Stops the node and waits for its swarm task to end.
    pub async fn stop(mut self) -> Arc<MarketStore> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        // The ingest task holds the store too; it ends once the swarm task
        // has dropped its queue.
        if let Some(task) = self.ingest_task.take() {
            task.await.unwrap();
        }
        self.store.clone()
    }
}

pub fn config() -> NetworkConfig {
    let mut config = NetworkConfig::loopback();
    config.limits.request_timeout_secs = 5;
    // Keep the topology each test builds.
    config.discovery = false;
    config
}

/// A customer node's configuration over `dir`: its customer, public and
/// analytics listeners and its monitoring on free loopback ports.
pub fn customer_node(dir: &std::path::Path) -> rigmesh_node::config::NodeConfig {
    rigmesh_node::config::NodeConfig {
        role: rigmesh_node::config::Role::Customer,
        data_dir: dir.to_path_buf(),
        network: config(),
        monitoring: "127.0.0.1:0".parse().unwrap(),
        customer_api: "127.0.0.1:0".parse().unwrap(),
        public_api: "127.0.0.1:0".parse().unwrap(),
        analytics_api: "127.0.0.1:0".parse().unwrap(),
        ..rigmesh_node::config::NodeConfig::default()
    }
}

pub async fn spawn(
    store: Arc<MarketStore>,
    key: libp2p::identity::Keypair,
    config: NetworkConfig,
    coordinators: Option<CoordinatorSet>,
) -> TestNode {
    let mut registry = Registry::default();
    let (tx, rx) = oneshot::channel::<()>();
    let dyn_store: Arc<dyn MessageStore> = store.clone();
    let net = network::start(
        &config,
        key,
        dyn_store,
        coordinators,
        None,
        &mut registry,
        async move {
            let _ = rx.await;
        },
    )
    .await
    .unwrap();
    let addr = net.handle.listen_addrs().await.unwrap()[0].clone();
    TestNode {
        handle: net.handle,
        inbound: net.inbound,
        addr,
        store,
        registry,
        shutdown: Some(tx),
        task: Some(net.task),
        ingest_task: Some(net.ingest_task),
    }
}

pub async fn node() -> TestNode {
    spawn(
        Arc::new(temp_store()),
        libp2p::identity::Keypair::generate_ed25519(),
        config(),
        None,
    )
    .await
}

/// Logs of the nodes a test starts, to the test's output, when
/// `RUST_LOG` asks for them (e.g. `RUST_LOG=rigmesh_node=info`).
pub fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Polls `check` every 50 ms until it holds or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects `a` to `b` and waits until both see each other.
pub async fn connect(a: &TestNode, b: &TestNode) {
    a.handle.dial(b.dial_addr()).await.unwrap();
    let (ha, hb) = (a.handle.clone(), b.handle.clone());
    let (pa, pb) = (a.peer_id(), b.peer_id());
    eventually(10, "connection", || {
        let (ha, hb) = (ha.clone(), hb.clone());
        async move {
            ha.peers().await.unwrap().contains(&pb) && hb.peers().await.unwrap().contains(&pa)
        }
    })
    .await;
}

/// A deterministic PRNG for test topologies (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

/// The value of the series `name` (its whole name, labels included) in a
/// `/metrics` text.
pub fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} is not exported"))
        .trim()
        .parse()
        .unwrap()
}

/// A plain HTTP/1.1 GET with an optional bearer token; the whole response.
pub async fn http_get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// A plain HTTP/1.1 POST of a JSON body with a bearer token; the whole response.
pub async fn http_post(addr: std::net::SocketAddr, path: &str, token: &str, json: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// A plain HTTP/1.1 request of any method with a bearer token and an
/// optional body; the whole response.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}
