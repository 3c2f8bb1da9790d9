//! A running node: its ledger, key, network, the HTTP listeners its role
//! needs (public and monitoring everywhere; customer, supplier, analytics
//! or operator by role), and the answer to requests for roles it does not
//! play. Roles plug in here as they are built.
//!
//! Durability: market messages are written through sled, which flushes to
//! disk every 500 ms and on shutdown; a crash can lose the last half second
//! of gossip, which catch-up sync fetches again. Bans are flushed as they
//! are made.

use std::net::SocketAddr;
use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use prometheus_client::registry::Registry;
use rigmesh_ledger::MarketStore;
use rigmesh_protocol::rpc::{CoordinatorResponse, LeaseResponse};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::tokens::Bootstrap;
use crate::api::Listener;
use crate::config::{NodeConfig, Role};
use crate::error::{Error, Result};
use crate::network::{self, InboundRequest, NodeHandle, Protocol};

/// A started node.
#[derive(Debug)]
pub struct RunningNode {
    /// Network handle.
    pub handle: NodeHandle,
    /// The node's peer id.
    pub peer_id: PeerId,
    /// Addresses the swarm listens on.
    pub listen_addrs: Vec<Multiaddr>,
    /// Where `/metrics`, `/health` and `/ready` are served.
    pub monitoring: SocketAddr,
    /// Where the public API listens (every role).
    pub public_api: SocketAddr,
    /// Where the customer API listens (customer and relay nodes).
    pub customer_api: Option<SocketAddr>,
    /// Where the supplier API listens (supplier nodes).
    pub supplier_api: Option<SocketAddr>,
    /// Where the analytics API listens (customer and supplier nodes).
    pub analytics_api: Option<SocketAddr>,
    /// Where the operator API listens (coordinator nodes).
    pub operator_api: Option<SocketAddr>,
    /// The ledger's market store.
    pub store: Arc<MarketStore>,
    /// The live offers, held in memory and kept up to date as the network
    /// stores them.
    pub book: Arc<crate::orderbook::OrderBook>,
    /// The coordinator role, on a coordinator node (its books and rules).
    pub coordinator: Option<Arc<crate::coordinator::CoordinatorRole>>,
    /// A client of the coordinator set, when one is configured.
    pub quorum: Option<crate::quorum::Quorum>,
    /// Where the roles hand their alerts: the notifier when `[notify]` is
    /// configured, and the review queue on a coordinator.
    pub alerts: crate::notify::AlertSink,
    /// The suspicious-activity review queue (coordinator nodes, which have
    /// an operator audience).
    pub review: Option<crate::review::ReviewQueue>,
    /// The customer role's records (customer nodes).
    pub customer_records: Option<Arc<crate::customer::records::CustomerRecords>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningNode {
    /// Stops every task and flushes the ledger.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        // Its last events are flushed and its table released, so a node
        // restarted on this directory opens it again.
        if let Some(review) = &self.review {
            review.close().await;
        }
        self.store.flush().map_err(|e| Error::Store(e.to_string()))
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Refuses requests for roles this node does not play, so the requester
/// gets a reason instead of a timeout.
async fn answer_unserved(
    role: Role,
    handle: NodeHandle,
    mut inbound: tokio::sync::mpsc::Receiver<InboundRequest>,
) {
    while let Some(request) = inbound.recv().await {
        let reason = format!(
            "this node is a {role:?} node and does not serve {:?} requests",
            request.protocol
        );
        let bytes = match request.protocol {
            Protocol::Lease => LeaseResponse::Refused(reason).to_bytes(),
            Protocol::Coordinator | Protocol::Sync => {
                CoordinatorResponse::Refused(reason).to_bytes()
            }
        };
        match bytes {
            Ok(bytes) => {
                if let Err(err) = handle
                    .respond(request.protocol, request.channel, bytes)
                    .await
                {
                    tracing::debug!(%err, "could not answer a request");
                }
            }
            Err(err) => tracing::warn!(%err, "could not encode a refusal"),
        }
    }
}

/// The file in a data directory naming the process of the node using it.
const PID_FILE: &str = "node.pid";

/// Why the ledger in `data_dir` did not open, in words: most often another
/// node holds it (sled's lock), which its pid file may name.
fn ledger_error(data_dir: &std::path::Path, text: &str) -> Error {
    if text.contains("could not acquire lock") || text.contains("WouldBlock") {
        let pid = std::fs::read_to_string(data_dir.join(PID_FILE))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .filter(|pid| *pid != std::process::id());
        return Error::Config(format!(
            "the data directory {} is in use by another node{}; stop it or give this one \
             another --data-dir",
            data_dir.display(),
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
        ));
    }
    Error::Store(format!(
        "opening the ledger in {}: {text}",
        data_dir.display()
    ))
}

/// Starts a node from its configuration.
pub async fn start(config: NodeConfig) -> Result<RunningNode> {
    if config.role == Role::Supplier {
        config.supplier.check()?;
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::Io {
        path: config.data_dir.display().to_string(),
        source: e,
    })?;
    let key = crate::keyfile::load_or_create_node_key(&config.node_key_path())?;
    let store = Arc::new(
        MarketStore::open(&config.data_dir.join("ledger"))
            .map_err(|e| ledger_error(&config.data_dir, &e.to_string()))?,
    );
    let account = rigmesh_protocol::Keypair::from_seed(crate::keyfile::load_or_create_seed(
        &config.account_key_path(),
    )?);
    // A supplier or customer keeps its own leases' certificates and drops
    // the others' with their evidence. A coordinator's books keep every
    // certificate they applied, so its gossip store drops them all with
    // the evidence, once the books have had them; it lists the deposits
    // and certificates its books have not had from the first write on,
    // before the network starts and before the books' loops subscribe to
    // what it accepts.
    if config.role != Role::Coordinator {
        store.keep_certificates(rigmesh_ledger::CertificatesKept::Of(vec![account.public()]));
    } else {
        store.keep_certificates(rigmesh_ledger::CertificatesKept::Books);
        store.keep_unapplied();
    }
    // Who holds the data directory, for the next node that tries it.
    let pid_file = config.data_dir.join(PID_FILE);
    if let Err(err) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
        tracing::debug!(path = %pid_file.display(), %err, "pid not recorded");
    }
    let coordinators = config.coordinator_set()?;
    let rules = config
        .coordinators
        .as_ref()
        .map(crate::config::CoordinatorsConfig::rules)
        .transpose()?;
    let mut network_config = config.network.clone();
    // Coordinators are public by design, so they relay for suppliers
    // behind NAT unless their operator says otherwise.
    if network_config.relay.serve.is_none() {
        network_config.relay.serve = Some(config.role == Role::Coordinator);
    }
    if let Some(c) = &config.coordinators {
        network_config.bootstrap.extend(c.addresses.iter().cloned());
    }
    let (stop, stop_rx) = watch::channel(false);
    let mut registry = Registry::default();
    let notify_metrics = config
        .notify
        .as_ref()
        .map(|_| rigmesh_notify::NotifyMetrics::register(&mut registry));
    let coordinator_metrics = (config.role == Role::Coordinator)
        .then(|| crate::coordinator::metrics::CoordinatorMetrics::register(&mut registry));
    let bid_metrics = (config.role == Role::Customer)
        .then(|| crate::customer::inflight::BidQueueMetrics::register(&mut registry));
    let settle_metrics = (config.role == Role::Supplier)
        .then(|| crate::supplier::settle::SettleMetrics::register(&mut registry));
    let api_metrics = crate::api::ApiMetrics::register(&mut registry);
    let stall_metrics = crate::stalls::StallMetrics::register(&mut registry);
    crate::process_metrics::ProcessCollector::register(&mut registry);
    // The certificates this node checked lately, by their exact bytes: a
    // node meets each certificate more than once (a coordinator's books
    // and its ingest, a party's publication and the gossiped copy, the
    // compaction of a lease that has closed), and the same bytes are
    // checked once.
    let checked = coordinators.as_ref().map(|set| {
        Arc::new(rigmesh_protocol::CheckedCertificates::new(
            set.clone(),
            rigmesh_protocol::CHECKED_KEPT,
        ))
    });
    if let Some(checked) = &checked {
        crate::market_store::CheckedCollector::register(&mut registry, checked.clone());
    }
    let upkeep = Upkeep {
        metrics: crate::market_store::StoreMetrics::register(&mut registry),
        compaction: match (&checked, &config.coordinators) {
            (Some(checked), Some(table)) => Some(CompactionTerms {
                checked: checked.clone(),
                grace: rigmesh_ledger::EvidenceGrace {
                    kept_ms: table.evidence_grace_secs.saturating_mul(1000),
                    others_ms: table
                        .others_evidence_grace_secs
                        .min(table.evidence_grace_secs)
                        .saturating_mul(1000),
                },
                every: std::time::Duration::from_secs(table.compact_every_secs.max(1)),
            }),
            _ => None,
        },
    };
    // Every message the network stores goes through the order book's
    // store, so each offer taken is in the book in the same call; the
    // offers already stored are read into it off the executor.
    let book = Arc::new(crate::orderbook::OrderBook::with_metrics(
        crate::orderbook::OrderBookMetrics::register(&mut registry),
    ));
    let net = network::start(
        &network_config,
        key,
        Arc::new(crate::orderbook::BookedStore::new(
            store.clone(),
            book.clone(),
        )),
        coordinators.clone(),
        checked.clone(),
        &mut registry,
        stopped(stop_rx.clone()),
    )
    .await?;
    let handle = net.handle.clone();
    let listen_addrs = handle.listen_addrs().await?;
    // The review queue of a node with an operator audience, opened while
    // the registry still takes metrics.
    let review = if config.role == Role::Coordinator {
        let dir = config.data_dir.join("review");
        let metrics = crate::review::ReviewMetrics::register(&mut registry);
        let me = account.public();
        Some(
            tokio::task::spawn_blocking(move || {
                crate::review::ReviewQueue::open(
                    &dir,
                    crate::review::DEFAULT_MAX_OPEN,
                    Some(me),
                    metrics,
                )
            })
            .await
            .map_err(|e| Error::Store(format!("opening the review queue: {e}")))??,
        )
    } else {
        None
    };
    let (customer_tx, customer_rx) = tokio::sync::mpsc::channel(16);
    let (view_tx, view_rx) = watch::channel(crate::supplier::runtime::SupplierView::default());
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let notify_slot: Arc<std::sync::OnceLock<crate::notify::NodeNotifier>> = Default::default();
    let firewall = |listener: Listener| -> Result<Arc<crate::api::Firewall>> {
        Ok(Arc::new(crate::api::Firewall::new(
            listener,
            config.http.limits(listener).clone(),
            api_metrics.clone(),
            crate::api::AlertTarget {
                notify: notify_slot.clone(),
                account: Some(account.public()),
                audience: Some(crate::notify::audience_of(config.role)),
                review: review.clone(),
            },
        )?))
    };
    let (monitoring, monitoring_task) = crate::api::serve_monitoring(
        config.monitoring,
        crate::api::monitoring::Monitoring {
            registry: Arc::new(registry),
            network: handle.clone(),
            store: store.clone(),
            data_dir: config.data_dir.clone(),
            ready: ready.clone(),
            customer_queue: (config.role == Role::Customer).then(|| customer_tx.clone()),
        },
        firewall(Listener::Monitoring)?,
        stopped(stop_rx),
    )
    .await?;
    let mut tasks = vec![
        net.task,
        net.ingest_task,
        monitoring_task,
        tokio::spawn(load_book(store.clone(), book.clone(), stop.subscribe())),
        tokio::spawn(crate::stalls::run(stall_metrics, stop.subscribe())),
    ];
    let (public_api, public_task) = crate::api::public::serve(
        config.public_api,
        book.clone(),
        firewall(Listener::Public)?,
        stopped(stop.subscribe()),
    )
    .await?;
    tasks.push(public_task);
    let bootstrap: &[Bootstrap] = match config.role {
        Role::Customer | Role::Relay => &[Bootstrap::Customer],
        Role::Supplier => &[Bootstrap::Supplier],
        Role::Coordinator => &[Bootstrap::Operator],
    };
    let data_dir = config.data_dir.clone();
    let token_store =
        tokio::task::spawn_blocking(move || crate::api::TokenStore::open(&data_dir, bootstrap))
            .await
            .map_err(|e| Error::Store(format!("opening the token store: {e}")))??;
    // The books of a coordinator hold its audit chain; the requests its
    // operators make are recorded there, next to what they caused. Other
    // roles keep a chain of their own for the requests of their users.
    let books = if config.role == Role::Coordinator {
        let books_dir = config.data_dir.join("books");
        Some(Arc::new(rigmesh_ledger::Ledger::open(&books_dir).map_err(
            |e| Error::Store(format!("opening the books in {}: {e}", books_dir.display())),
        )?))
    } else {
        None
    };
    let audit_ledger = match &books {
        Some(books) => books.clone(),
        None => {
            let audit_dir = config.data_dir.join("audit");
            Arc::new(rigmesh_ledger::Ledger::open(&audit_dir).map_err(|e| {
                Error::Store(format!(
                    "opening the audit chain in {}: {e}",
                    audit_dir.display()
                ))
            })?)
        }
    };
    let request_audit = crate::api::audit_trail::RequestAudit::new(audit_ledger, account.public());
    let audited = |listener: Listener| -> Result<Arc<crate::api::Firewall>> {
        let fw = firewall(listener)?;
        fw.record_requests_in(request_audit.clone());
        Ok(fw)
    };
    // Customers and suppliers keep hourly series of their money and of
    // the market, for forecasts; the writes go through one thread.
    let trends = if matches!(config.role, Role::Customer | Role::Supplier) {
        let path = config.data_dir.join("series");
        let book = Arc::new(
            tokio::task::spawn_blocking(move || crate::trends::SeriesBook::open(&path))
                .await
                .map_err(|e| Error::Store(format!("opening the series: {e}")))??,
        );
        let writer = crate::trends::SeriesWriter::start(book.clone())?;
        Some((
            crate::trends::Trends {
                forecasts: Arc::new(crate::trends::Forecasts::new(book)),
            },
            writer,
        ))
    } else {
        None
    };
    let mut api = crate::api::local::LocalApi {
        store: store.clone(),
        book: book.clone(),
        account: account.public(),
        tokens: token_store,
        supplier: (config.role == Role::Supplier).then_some(view_rx),
        customer: (config.role == Role::Customer).then_some(customer_tx),
        notify: notify_slot.clone(),
        coordinator: None,
        trends: trends.as_ref().map(|(t, _)| t.clone()),
        review: review.clone(),
        quorum: None,
        network: Some(handle.clone()),
    };
    let mut customer_api = None;
    if matches!(config.role, Role::Customer | Role::Relay) {
        let (addr, task) = crate::api::local::serve(
            Listener::Customer,
            config.customer_api,
            api.clone(),
            audited(Listener::Customer)?,
            stopped(stop.subscribe()),
        )
        .await?;
        customer_api = Some(addr);
        tasks.push(task);
    }
    let mut supplier_api = None;
    if config.role == Role::Supplier {
        let (addr, task) = crate::api::local::serve(
            Listener::Supplier,
            config.supplier_api,
            api.clone(),
            audited(Listener::Supplier)?,
            stopped(stop.subscribe()),
        )
        .await?;
        supplier_api = Some(addr);
        tasks.push(task);
    }
    let mut analytics_api = None;
    if matches!(config.role, Role::Customer | Role::Supplier) {
        let (addr, task) = crate::api::analytics::serve(
            config.analytics_api,
            api.clone(),
            firewall(Listener::Analytics)?,
            stopped(stop.subscribe()),
        )
        .await?;
        analytics_api = Some(addr);
        tasks.push(task);
    }
    let quorum = coordinators.clone().map(|set| {
        crate::quorum::Quorum::new(
            set,
            handle.clone(),
            store.clone(),
            config.network.limits.request_timeout(),
        )
    });
    let mut coordinator_role = None;
    let mut operator_api = None;
    if config.role == Role::Coordinator {
        let (Some(rules), Some(_)) = (rules.clone(), coordinators.as_ref()) else {
            return Err(Error::Config(
                "a coordinator needs the [coordinators] table (epoch, members)".into(),
            ));
        };
        if !rules.set.contains(&account.public()) {
            return Err(Error::Config(format!(
                "the account key {} is not a member of coordinator epoch {}; point account_key at the member's key",
                account.public(),
                rules.set.epoch()
            )));
        }
        let Some(ledger) = books.clone() else {
            return Err(Error::Config("a coordinator's books did not open".into()));
        };
        let mut role =
            crate::coordinator::CoordinatorRole::new(account.clone(), rules, ledger, store.clone());
        if let Some(table) = &config.coordinators {
            role.deposit_alert_above = table.deposit_alert()?;
        }
        if let Some(m) = &coordinator_metrics {
            let m = m.clone();
            role.ledger
                .observe_flushes(Arc::new(move |flush| m.flushed(flush)));
        }
        role.metrics = coordinator_metrics;
        role.review = review.clone();
        role.checked = checked;
        let role = Arc::new(role);
        coordinator_role = Some(role.clone());
        api.quorum = quorum.clone().map(|q| q.with_local(role.clone()));
        api.coordinator = Some(role);
        let tls = config
            .http
            .operator_tls
            .as_ref()
            .map(crate::api::tls::TlsFiles::server_config)
            .transpose()?;
        let (addr, task) = crate::api::operator::serve(
            config.operator_api,
            api.clone(),
            audited(Listener::Operator)?,
            tls,
            stopped(stop.subscribe()),
        )
        .await?;
        operator_api = Some(addr);
        tasks.push(task);
    }
    // Started once the APIs are bound, so acknowledgement links can name
    // the listener that takes them.
    let mut alerts_to = crate::notify::AlertSink::default();
    if let (Some(notify), Some(metrics)) = (config.notify.clone(), notify_metrics) {
        let scheme = if config.http.operator_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let api_base = match (supplier_api, customer_api, operator_api) {
            (Some(addr), _, _) | (None, Some(addr), _) => format!("http://{addr}"),
            (None, None, Some(addr)) => format!("{scheme}://{addr}"),
            (None, None, None) => format!("http://{}", config.customer_api),
        };
        let (notifier, task) = crate::notify::start(
            notify,
            &config.data_dir,
            account.public(),
            &api_base,
            metrics,
            stopped(stop.subscribe()),
        )?;
        alerts_to = notifier.sink();
        let _ = notify_slot.set(notifier);
        tasks.push(task);
        if let Some(set) = coordinators.clone() {
            tasks.push(crate::notify::watch_gossip(
                &handle,
                set,
                account.public(),
                crate::notify::audience_of(config.role),
                alerts_to.clone(),
                stopped(stop.subscribe()),
            ));
        }
    }
    // Operators' alerts open review items too; strikes and bans on the
    // network do as well.
    if let Some(queue) = &review {
        alerts_to = alerts_to.with_review(queue.clone());
        tasks.push(crate::review::watch_offences(
            &handle,
            queue.clone(),
            stopped(stop.subscribe()),
        ));
    }
    if let (Some(role), Some(quorum)) = (&coordinator_role, &quorum) {
        let compare_secs = config
            .coordinators
            .as_ref()
            .map_or(0, |c| c.books_compare_secs);
        if alerts_to.is_on() && compare_secs > 0 {
            tasks.push(crate::coordinator::agree::watch_books(
                role.clone(),
                quorum.clone(),
                std::time::Duration::from_secs(compare_secs),
                alerts_to.clone(),
                stop.subscribe(),
            ));
        }
        let unreachable_secs = config
            .coordinators
            .as_ref()
            .map_or(0, |c| c.member_unreachable_secs);
        // The watch runs without a notifier too: its log line and its
        // gauge of connected members are the operators' then.
        if unreachable_secs > 0 {
            tasks.push(crate::coordinator::reach::watch_members(
                quorum.clone(),
                account.public(),
                handle.clone(),
                std::time::Duration::from_secs(unreachable_secs),
                alerts_to.clone(),
                role.metrics.clone(),
                stop.subscribe(),
            ));
        }
    }
    let inbound_task = if let Some(role) = coordinator_role.clone() {
        let report_every_ms = config
            .coordinators
            .as_ref()
            .map_or(60_000, |c| c.reputation_report_secs.saturating_mul(1000));
        let integrity_every_ms = config.coordinators.as_ref().map_or(60_000, |c| {
            c.integrity_check_secs.max(1).saturating_mul(1000)
        });
        let (compact_every_ms, closed_grace_ms) =
            config
                .coordinators
                .as_ref()
                .map_or((10_000, 7 * 24 * 3600 * 1000), |c| {
                    (
                        c.compact_every_secs.max(1).saturating_mul(1000),
                        c.evidence_grace_secs.saturating_mul(1000),
                    )
                });
        tokio::spawn(crate::coordinator::run(
            role,
            crate::coordinator::Periods {
                report_every_ms,
                integrity_every_ms,
                compact_every_ms,
                closed_grace_ms,
            },
            handle.clone(),
            net.inbound,
            alerts_to.clone(),
            stop.subscribe(),
        ))
    } else if config.role == Role::Supplier {
        let (source, notice) = crate::telemetry::open_source(&config.supplier.gpus)
            .map_err(|e| Error::Config(format!("GPUs: {e}")))?;
        if let Some(notice) = notice {
            tracing::warn!(%notice, "GPU source");
        }
        tracing::info!(account = %account.public(), gpus = %source.describe(), "supplier ready");
        let database = store.database();
        let history = Arc::new(
            tokio::task::spawn_blocking(move || {
                crate::supplier::leases::ClosedLeases::in_database(database)
            })
            .await
            .map_err(|e| Error::Store(format!("opening the supplier lease history: {e}")))??,
        );
        let settlement = match (&quorum, &config.coordinators, &rules) {
            (Some(quorum), Some(c), Some(rules)) => {
                let (worker, events) = tokio::sync::mpsc::channel(256);
                let settled = crate::supplier::settle::SettledBook::default();
                tasks.push(tokio::spawn(crate::supplier::settle::run(
                    account.clone(),
                    quorum.clone(),
                    crate::supplier::settle::SettleTerms {
                        fee_rate: rules.fee_rate,
                        unacked_timeout_ms: rules.unacked_timeout_ms,
                        settle_every: c.settle_every_windows,
                    },
                    handle.clone(),
                    events,
                    settled.clone(),
                    crate::supplier::settle::SettleStore {
                        dir: config.data_dir.join("settlement"),
                        market: store.clone(),
                        alerts: alerts_to.clone(),
                        history: history.clone(),
                    },
                    settle_metrics.clone().unwrap_or_default(),
                    stop.subscribe(),
                )));
                Some(crate::supplier::runtime::Settlement {
                    set: quorum.set().clone(),
                    worker,
                    settled,
                    store: store.clone(),
                    min_customer_bp: config.supplier.min_customer_reputation_bp,
                    book: book.clone(),
                })
            }
            _ => None,
        };
        tokio::spawn(crate::supplier::runtime::run(
            config.supplier.clone(),
            account.clone(),
            source,
            handle.clone(),
            net.inbound,
            view_tx,
            settlement,
            history,
            alerts_to.clone(),
            stop.subscribe(),
        ))
    } else {
        tokio::spawn(answer_unserved(config.role, handle.clone(), net.inbound))
    };
    tasks.push(inbound_task);
    let mut customer_records = None;
    if config.role == Role::Customer {
        // Opening reads every stored lease's spend: off the executor.
        let (key, market, live, network, client) = (
            account.clone(),
            store.clone(),
            book.clone(),
            handle.clone(),
            quorum.clone(),
        );
        let path = config.data_dir.join("customer");
        let mut customer = tokio::task::spawn_blocking(move || {
            crate::customer::runtime::Customer::open(key, market, live, network, client, &path)
        })
        .await
        .map_err(|e| Error::Store(format!("opening the customer records: {e}")))??;
        customer_records = Some(customer.records());
        if let Some(rules) = &rules {
            customer = customer.with_rules(rules.clone());
        }
        customer = customer
            .with_alerts(alerts_to.clone())
            .keeping_settled_for(config.customer.keep_settled_secs);
        if let Some(metrics) = bid_metrics {
            customer = customer.with_bid_metrics(metrics);
        }
        if let Some((_, writer)) = &trends {
            customer = customer.with_series(writer.clone());
        }
        tasks.push(tokio::spawn(crate::customer::runtime::run(
            customer,
            customer_rx,
            stop.subscribe(),
        )));
    }
    if let Some((trends, writer)) = &trends {
        tasks.push(tokio::spawn(crate::trends::sampler::run(
            crate::trends::sampler::Sampling {
                writer: writer.clone(),
                forecasts: trends.forecasts.clone(),
                book: book.clone(),
                supplier: api.supplier.clone(),
                customer: api.customer.clone(),
                config: config.forecast.clone(),
                accepted: handle.subscribe(),
            },
            stop.subscribe(),
        )));
    }
    tasks.push(tokio::spawn(prune_expired(
        store.clone(),
        book.clone(),
        upkeep,
        stop.subscribe(),
    )));
    ready.store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(peer_id = %handle.peer_id(), role = ?config.role, "node started");
    Ok(RunningNode {
        peer_id: handle.peer_id(),
        handle,
        listen_addrs,
        monitoring,
        public_api,
        customer_api,
        supplier_api,
        analytics_api,
        operator_api,
        store,
        book,
        coordinator: coordinator_role,
        quorum,
        alerts: alerts_to,
        review,
        customer_records,
        stop,
        tasks,
    })
}

/// Most evidence messages a compaction round deletes (and most closing
/// leases it checks), so one round stays short.
const COMPACT_LIMIT: usize = 10_000;

/// What the store's upkeep task does besides deleting expired messages.
struct Upkeep {
    metrics: crate::market_store::StoreMetrics,
    /// Compaction of finally settled leases; `None` without a coordinator
    /// set, whose certificates alone say a lease is settled.
    compaction: Option<CompactionTerms>,
}

/// When and against what the evidence of settled leases is compacted.
struct CompactionTerms {
    /// The node's record of checked certificates, with the coordinator
    /// set they are checked against.
    checked: Arc<rigmesh_protocol::CheckedCertificates>,
    /// How long a finally settled lease's evidence is kept: its parties'
    /// and a coordinator's grace, and the one of other people's leases.
    grace: rigmesh_ledger::EvidenceGrace,
    every: std::time::Duration,
}

/// How often expired offers, bids and bindings are deleted.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// How long an expired message is kept (late duplicates still find it).
const PRUNE_AFTER_MS: u64 = 10 * 60 * 1000;
/// Most messages deleted per round, so one round stays short.
const PRUNE_LIMIT: usize = 10_000;

/// How long a failed read of the order book waits before the next try.
const BOOK_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads the stored offers into the order book on a blocking thread,
/// trying again until it succeeds or `stop` turns true: until then the
/// book's readers wait rather than answer from a partial book.
async fn load_book(
    store: Arc<MarketStore>,
    book: Arc<crate::orderbook::OrderBook>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (s, b) = (store.clone(), book.clone());
        let started = std::time::Instant::now();
        let error = match tokio::task::spawn_blocking(move || b.load(&s)).await {
            Ok(Ok(read)) => {
                tracing::info!(
                    offers = read,
                    ms = started.elapsed().as_millis() as u64,
                    "order book loaded"
                );
                return;
            }
            Ok(Err(err)) => err.to_string(),
            Err(err) => err.to_string(),
        };
        tracing::warn!(%error, "the order book was not read from the store; trying again");
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
            _ = tokio::time::sleep(BOOK_RETRY) => {}
        }
    }
}

/// Deletes expired messages and bans that ended from the gossip store now
/// and then, and the evidence of finally settled leases past their grace,
/// off the async executor, and expired offers from the order book, until
/// `stop` turns true.
async fn prune_expired(
    store: Arc<MarketStore>,
    book: Arc<crate::orderbook::OrderBook>,
    upkeep: Upkeep,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut compact_tick = tokio::time::interval(
        upkeep
            .compaction
            .as_ref()
            .map_or(PRUNE_EVERY, |terms| terms.every),
    );
    compact_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let compaction = upkeep.compaction.map(Arc::new);
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
            _ = tick.tick() => {
                book.sweep(rigmesh_protocol::UnixMillis::now());
                let store = store.clone();
                let before = rigmesh_protocol::UnixMillis::now().minus_ms(PRUNE_AFTER_MS);
                let round = tokio::task::spawn_blocking(move || {
                    (store.prune_expired(before, PRUNE_LIMIT), store.prune_bans(before, PRUNE_LIMIT))
                });
                match round.await {
                    Ok((messages, bans)) => {
                        match messages {
                            Ok(0) => {}
                            Ok(pruned) => {
                                upkeep.metrics.pruned.inc_by(pruned as u64);
                                tracing::debug!(pruned, "expired messages deleted");
                            }
                            Err(err) => tracing::warn!(%err, "expired messages not deleted"),
                        }
                        match bans {
                            Ok(0) => {}
                            Ok(pruned) => tracing::debug!(pruned, "bans that ended deleted"),
                            Err(err) => tracing::warn!(%err, "bans that ended not deleted"),
                        }
                    }
                    Err(err) => tracing::warn!(%err, "the pruning task failed"),
                }
            }
            _ = compact_tick.tick(), if compaction.is_some() => {
                let (Some(terms), store) = (compaction.clone(), store.clone()) else {
                    continue;
                };
                let now = rigmesh_protocol::UnixMillis::now();
                let round = tokio::task::spawn_blocking(move || {
                    store.compact_settled(
                        terms.checked.set(),
                        Some(&terms.checked),
                        now,
                        terms.grace,
                        COMPACT_LIMIT,
                    )
                });
                match round.await {
                    Ok(Ok(done)) if done.is_empty() => {}
                    Ok(Ok(done)) => {
                        upkeep.metrics.compacted.inc_by(done.removed as u64);
                        upkeep.metrics.compacted_leases.inc_by(done.compacted as u64);
                        tracing::debug!(
                            scheduled = done.scheduled,
                            not_settled = done.not_settled,
                            removed = done.removed,
                            leases = done.compacted,
                            tombstones = done.tombstones_pruned,
                            "settled leases compacted"
                        );
                    }
                    Ok(Err(err)) => tracing::warn!(%err, "settled leases not compacted"),
                    Err(err) => tracing::warn!(%err, "the compaction task failed"),
                }
            }
        }
    }
}
