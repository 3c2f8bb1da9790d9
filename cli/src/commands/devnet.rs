//! `rigmesh devnet`: the whole market in one process on loopback: four
//! coordinators (f = 1), three suppliers with simulated GPUs priced from
//! real H100 market data, and one funded customer. By default it plays a
//! short scenario (bid, lease, metering windows, settlements, a budget
//! alert, the lease ended at the cap, the final settlement, the books of
//! every coordinator compared) and exits; the customer node's
//! notifications go to a local webhook sink that checks their signatures
//! and prints each delivery; `--serve` keeps the market
//! running for the CLI to be used against it, and writes where every
//! node's listeners are to `<dir>/listeners.json` once the market is up
//! (the schemathesis check waits for that file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use rigmesh_node::api::tokens::{read_token, Bootstrap};
use rigmesh_node::config::{CoordinatorsConfig, NodeConfig, Role};
use rigmesh_node::customer::runtime::LeaseStatus;
use rigmesh_node::node::RunningNode;
use rigmesh_node::supplier::SupplierConfig;
use rigmesh_node::telemetry::{GpuSourceConfig, SimProfile, SimSpec};
use rigmesh_protocol::rpc::CertificateFrame;
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{Credits, Deposit, Keypair, Signed, UnixMillis, PROTOCOL_VERSION};

/// H100 SXM5 prices from a month of public market snapshots.
const PRICES: &str = include_str!("../../../testnet/h100-prices.json");

#[derive(Debug, clap::Args)]
pub(crate) struct DevnetArgs {
    /// Where the nodes keep their data, kept after the devnet ends; a
    /// directory of an earlier devnet runs the same market again. Without
    /// it, a temporary directory is used and removed at the end.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the market running after the scenario, for the CLI.
    #[arg(long)]
    serve: bool,
    /// Skip the scenario (with --serve: just run the market).
    #[arg(long)]
    no_scenario: bool,
    /// Credits deposited for the customer (above zero).
    #[arg(long, default_value = "25", value_parser = super::text::positive_credits)]
    deposit: Credits,
}

struct Prices {
    low: Credits,
    median: Credits,
    floor: Credits,
    high: Credits,
}

fn prices() -> anyhow::Result<Prices> {
    let v: serde_json::Value = serde_json::from_str(PRICES)?;
    let get = |k: &str| -> anyhow::Result<Credits> {
        v.get(k)
            .and_then(|x| x.as_str())
            .with_context(|| format!("price fixture lacks {k}"))?
            .parse()
            .map_err(|e| anyhow::anyhow!("{k}: {e}"))
    };
    Ok(Prices {
        low: get("median_of_snapshot_p10")?,
        median: get("median_of_snapshot_median")?,
        floor: get("lowest_min")?,
        high: get("median_of_snapshot_p90")?,
    })
}

fn seed_file(dir: &Path, name: &str) -> anyhow::Result<Keypair> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    Ok(Keypair::from_seed(
        rigmesh_node::keyfile::load_or_create_seed(&path)?,
    ))
}

fn node_config(role: Role, dir: &Path, set: &CoordinatorsConfig) -> NodeConfig {
    let mut network = rigmesh_node::network::NetworkConfig::loopback();
    network.discovery = false;
    NodeConfig {
        role,
        data_dir: dir.to_path_buf(),
        network,
        monitoring: "127.0.0.1:0".parse().unwrap_or(([127, 0, 0, 1], 0).into()),
        customer_api: "127.0.0.1:0".parse().unwrap_or(([127, 0, 0, 1], 0).into()),
        supplier_api: "127.0.0.1:0".parse().unwrap_or(([127, 0, 0, 1], 0).into()),
        public_api: ([127, 0, 0, 1], 0).into(),
        analytics_api: ([127, 0, 0, 1], 0).into(),
        operator_api: ([127, 0, 0, 1], 0).into(),
        coordinators: Some(set.clone()),
        ..NodeConfig::default()
    }
}

fn step(text: impl std::fmt::Display) {
    // A reader that went away does not stop the scenario half-way: the
    // market still stops and its files are still removed.
    let _ = super::out::line(format_args!("  {} {text}", chrono_like_now()));
}

fn chrono_like_now() -> String {
    let ms = UnixMillis::now().0;
    let secs = (ms / 1000) % 86_400;
    format!(
        "[{:02}:{:02}:{:02}.{:03}]",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        ms % 1000
    )
}

fn print_step(text: String) {
    step(text);
}

struct Market {
    /// Receives the customer node's notifications.
    sink: super::sink::WebhookSink,
    coordinators: Vec<RunningNode>,
    suppliers: Vec<(String, Credits, RunningNode)>,
    customer: RunningNode,
    customer_dir: PathBuf,
    root: PathBuf,
}

async fn start_market(root: &Path, deposit: Credits) -> anyhow::Result<Market> {
    let p = prices()?;
    let admin = seed_file(root, "admin.key")?;
    let mut members = Vec::new();
    for i in 0..4 {
        members.push(seed_file(&root.join(format!("coordinator-{i}")), "account.key")?.public());
    }
    let mut set = CoordinatorsConfig::new(1, members);
    set.admin = Some(admin.public());
    set.unacked_timeout_secs = 5;
    set.settle_every_windows = 3;
    let mut coordinators = Vec::new();
    for i in 0..4 {
        let dir = root.join(format!("coordinator-{i}"));
        coordinators
            .push(rigmesh_node::node::start(node_config(Role::Coordinator, &dir, &set)).await?);
    }
    let mut suppliers = Vec::new();
    for (i, (profile, price)) in [("h100x8", p.low), ("h100x8", p.median), ("a100x4", p.floor)]
        .into_iter()
        .enumerate()
    {
        let dir = root.join(format!("supplier-{i}"));
        let sim = SimProfile::builtin(profile)?.with_seed(i as u64 + 1);
        let model = sim
            .gpus
            .first()
            .map(|g| g.model.clone())
            .context("empty profile")?;
        let mut config = node_config(Role::Supplier, &dir, &set);
        config.supplier = SupplierConfig {
            gpus: GpuSourceConfig::Sim(SimSpec::Profile(sim)),
            prices: [(model.clone(), price)].into(),
            ..SupplierConfig::default()
        };
        suppliers.push((model, price, rigmesh_node::node::start(config).await?));
    }
    let customer_dir = root.join("customer");
    // The customer's alerts go to a local webhook sink, signed with a
    // secret the node reads from a file.
    let secret_file = root.join("webhook.secret");
    let sink = super::sink::start(super::sink::new_secret(&secret_file)?, print_step).await?;
    let mut customer_config = node_config(Role::Customer, &customer_dir, &set);
    customer_config.notify = Some(super::sink::customer_config(&sink.url, &secret_file));
    let customer = rigmesh_node::node::start(customer_config).await?;
    let _ = p.high;

    // Everyone dials everyone: a small full mesh.
    let mut all: Vec<&RunningNode> = coordinators.iter().collect();
    all.extend(suppliers.iter().map(|(_, _, n)| n));
    all.push(&customer);
    for (i, a) in all.iter().enumerate() {
        for b in all.iter().skip(i + 1) {
            if let Some(addr) = b.listen_addrs.first() {
                let addr = addr
                    .clone()
                    .with(libp2p::multiaddr::Protocol::P2p(b.peer_id));
                a.handle.dial(addr).await?;
            }
        }
    }
    // Ready once every coordinator answers the customer and every supplier
    // has offered since this start: a reused directory already holds the
    // bindings and offers of the last run, which say nothing of now.
    let account = seed_file(&customer_dir, "account.key")?;
    let started = UnixMillis::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut progress = super::progress::Progress::new("connecting the devnet");
    loop {
        let answered = match &customer.quorum {
            Some(quorum) => quorum.accounts(&account, account.public()).await.len(),
            None => 0,
        };
        let offers = customer
            .store
            .all::<rigmesh_protocol::Offer>(UnixMillis::now())
            .unwrap_or_default()
            .iter()
            .filter(|o| o.body.created_at >= started)
            .map(|o| o.body.supplier)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if answered == 4 && offers >= 3 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the devnet did not connect within 30 s ({answered} of 4 coordinators answer \
                 the customer, {offers} of 3 suppliers have offered)"
            );
        }
        progress.show(&format!(
            "{answered} of 4 coordinators, {offers} of 3 suppliers"
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress.done();
    if let Some(quorum) = &customer.quorum {
        let deposit = Signed::sign(
            Deposit {
                version: PROTOCOL_VERSION,
                epoch: 1,
                admin: admin.public(),
                account: account.public(),
                amount: deposit,
                reference: format!("devnet top-up {}", UnixMillis::now().0),
                created_at: UnixMillis::now(),
            },
            &admin,
        )?;
        let applied = quorum.deliver(CertificateFrame::Deposit(deposit)).await;
        if applied < 3 {
            bail!("only {applied} coordinators applied the customer's deposit");
        }
    }
    Ok(Market {
        sink,
        coordinators,
        suppliers,
        customer,
        customer_dir,
        root: root.to_path_buf(),
    })
}

fn print_market(m: &Market, serve: bool) -> anyhow::Result<()> {
    outln!("rigmesh devnet: 4 coordinators (f = 1), 3 suppliers, 1 customer on loopback");
    for (i, c) in m.coordinators.iter().enumerate() {
        outln!("  coordinator {i}  peer {}", c.peer_id);
    }
    for (i, (model, price, s)) in m.suppliers.iter().enumerate() {
        outln!(
            "  supplier {i}     {model} at {price}/GPU-h, supplier api http://{}",
            address(s.supplier_api)
        );
    }
    let token = read_token(&m.customer_dir, Bootstrap::Customer)?;
    outln!(
        "  customer       api http://{}",
        address(m.customer.customer_api)
    );
    outln!("                 data dir {}", m.customer_dir.display());
    outln!("                 token {token}");
    outln!(
        "                 notifications to webhook {} (HMAC-signed)",
        m.sink.url
    );
    if serve {
        // Only while the market stays up: without --serve it is gone when
        // the scenario ends.
        outln!(
            "  try: rigmesh offers --data-dir {} --api {}",
            m.customer_dir.display(),
            address(m.customer.customer_api)
        );
    }
    Ok(())
}

/// The name of the file `--serve` writes in the devnet's directory.
pub(crate) const LISTENERS_FILE: &str = "listeners.json";

/// Every node's name, data directory and listener addresses (null where
/// the node does not serve that listener), as `listeners.json` holds them.
fn listeners(m: &Market) -> serde_json::Value {
    let node = |name: String, dir: PathBuf, n: &RunningNode| {
        serde_json::json!({
            "name": name,
            "data_dir": dir,
            "listeners": {
                "public": n.public_api,
                "customer": n.customer_api,
                "supplier": n.supplier_api,
                "analytics": n.analytics_api,
                "operator": n.operator_api,
                "monitoring": n.monitoring,
            },
        })
    };
    let mut nodes = Vec::new();
    for (i, c) in m.coordinators.iter().enumerate() {
        let name = format!("coordinator-{i}");
        nodes.push(node(name.clone(), m.root.join(&name), c));
    }
    for (i, (_, _, s)) in m.suppliers.iter().enumerate() {
        let name = format!("supplier-{i}");
        nodes.push(node(name.clone(), m.root.join(&name), s));
    }
    nodes.push(node("customer".into(), m.customer_dir.clone(), &m.customer));
    serde_json::json!({ "nodes": nodes })
}

/// Writes `listeners.json` whole or not at all: a reader polling for it
/// never sees half a file.
fn write_listeners(m: &Market) -> anyhow::Result<()> {
    let path = m.root.join(LISTENERS_FILE);
    let partial = m.root.join(format!("{LISTENERS_FILE}.partial"));
    let text = serde_json::to_string_pretty(&listeners(m))?;
    std::fs::write(&partial, text).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A listener's address, or a dash when the node does not serve it.
fn address(addr: Option<std::net::SocketAddr>) -> String {
    addr.map_or_else(|| "-".into(), |a| a.to_string())
}

fn books(node: &RunningNode) -> anyhow::Result<BTreeMap<String, Credits>> {
    let role = node.coordinator.as_ref().context("not a coordinator")?;
    let report = role.ledger.check_books()?;
    let held = report.totals.held()?;
    let external = report
        .totals
        .external
        .checked_neg()
        .context("external balance")?;
    if held != external {
        bail!("coordinator books do not balance: held {held}, deposits - withdrawals {external}");
    }
    let mut out = BTreeMap::new();
    for (account, balance) in role.ledger.balances()? {
        out.insert(account.to_string(), balance);
    }
    Ok(out)
}

async fn scenario(m: &Market) -> anyhow::Result<()> {
    let p = prices()?;
    let (model, _, _) = m.suppliers.first().context("no supplier")?;
    let token = read_token(&m.customer_dir, Bootstrap::Customer)?;
    let budget: Credits = "0.02".parse()?;
    outln!();
    outln!(
        "scenario: lease 2 x {model} for up to 1 h at most {}/GPU-h, 2 s metering windows, budget {budget}",
        p.high
    );
    let mut events = m
        .coordinators
        .first()
        .context("no coordinator")?
        .handle
        .subscribe();
    let request = serde_json::json!({
        "gpu": model, "count": 2, "max_price": p.high.to_string(), "hours": 1,
        "window_secs": 2, "budget": budget.to_string(),
    });
    let api = m
        .customer
        .customer_api
        .context("the customer node serves no customer API")?;
    let customer_token = token.clone();
    let lease: LeaseStatus = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .post(&format!("http://{api}/v1/bid"))
            .header("authorization", &format!("Bearer {token}"))
            .send_json(&request)?;
        let status = response.status();
        let body: serde_json::Value = response.body_mut().read_json()?;
        if !status.is_success() {
            bail!("bid refused ({status}): {body}");
        }
        Ok(serde_json::from_value(body)?)
    })
    .await??;
    step(format!(
        "leased: lease {} with supplier {} at {}/GPU-h on GPUs {:?}; escrowed {} (certificate {})",
        short(&lease.lease.to_string()),
        short(&lease.supplier.to_string()),
        lease.price_per_gpu_hour,
        lease.gpus,
        lease
            .escrowed
            .map_or_else(|| "nothing".to_string(), |c| c.to_string()),
        lease
            .escrow_certificate
            .map_or_else(|| "-".to_string(), |c| short(&c.to_string())),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut progress = super::progress::Progress::new("scenario");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The customer's termination and the final certificate reach the
    // coordinator by separate gossip, in either order: once the final
    // certificate is in, the termination is waited for a little longer.
    let mut terminated = false;
    let mut drain: Option<tokio::time::Instant> = None;
    loop {
        let message = tokio::select! {
            message = tokio::time::timeout_at(deadline, events.recv()) => {
                message.context("the scenario did not finish within 3 minutes")?
            }
            () = async {
                match drain {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                progress.done();
                break;
            }
            _ = tick.tick() => {
                progress.show("the lease runs until the budget cap ends it, then settles");
                continue;
            }
        };
        progress.done();
        let Ok(message) = message else { continue };
        match message.message {
            WireMessage::UsageAttestation(a) => step(format!(
                "window {} attested by the supplier: {} GPU-ms",
                a.body.seq, a.body.billable_gpu_ms
            )),
            WireMessage::UsageAck(a) => step(format!(
                "window {} acknowledged by the customer",
                a.body.seq
            )),
            WireMessage::UsageDispute(d) => step(format!(
                "window {} disputed by the customer: {:?}",
                d.body.seq, d.body.reason
            )),
            WireMessage::Alert(a) => step(format!(
                "alert ({:?}) {}: {}",
                a.body.severity, a.body.rule, a.body.message
            )),
            WireMessage::LeaseTermination(t) => {
                step(format!(
                    "the customer ended the lease ({:?}): {}; the supplier stops after this window",
                    t.body.reason, t.body.detail
                ));
                terminated = true;
                if drain.is_some() {
                    break;
                }
            }
            WireMessage::SettlementCertificate(c) => {
                let r = &c.message.body;
                step(format!(
                    "settlement {} certified by {} coordinators: windows {}..={}, supplier +{}, fee +{}{}",
                    r.settlement_seq,
                    c.votes.len(),
                    r.first_window,
                    r.last_window,
                    r.supplier_amount,
                    r.fee,
                    if r.final_settlement {
                        format!(", refund {} to the customer (final)", r.refund)
                    } else {
                        String::new()
                    }
                ));
                if r.final_settlement {
                    if terminated {
                        break;
                    }
                    drain = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                }
            }
            _ => {}
        }
    }
    // What was settled, beside the cap, as the customer's node shows it
    // once it holds the final certificate; its budget alerts stay on that
    // node (never gossiped), so they are read from its API.
    let lease_id = lease.lease;
    let mut settled = None;
    for _ in 0..100 {
        let leases: Vec<LeaseStatus> =
            serde_json::from_value(get_json(api, &customer_token, "/v1/leases").await?)?;
        if let Some(l) = leases.into_iter().find(|l| l.lease == lease_id) {
            if let Some(s) = l.settlement.filter(|s| s.closed) {
                settled = Some((l.spent, s));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (spent, settlement) =
        settled.context("the customer's node never saw the final settlement")?;
    let (paid, refunded) = (settlement.paid, settlement.refunded);
    let report: rigmesh_node::customer::report::BudgetReport =
        serde_json::from_value(get_json(api, &customer_token, "/v1/budget").await?)?;
    for alert in &report.alerts {
        step(format!(
            "alert ({}) {}: {} (kept on the customer's node)",
            serde_json::to_value(alert.severity)?
                .as_str()
                .unwrap_or("?"),
            alert.rule,
            alert.message
        ));
    }
    // The budget alert also left the node through its notifier: wait for
    // the sink to have it (it usually came while the lease settled).
    let mut delivered = m.sink.delivered.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        delivered.wait_for(|all| all.iter().any(|n| n.subject.starts_with("budget.100"))),
    )
    .await
    .context("the budget.100 notification did not reach the webhook sink within 30 s")?
    .context("the webhook sink stopped")?;
    println!();
    println!(
        "cap {budget}   settled {paid} (supplier and fee)   refunded {refunded}   the customer's node shows {spent}"
    );
    if paid > budget {
        bail!("settled {paid} is above the cap {budget}");
    }
    if spent != paid {
        bail!("the customer's node shows {spent}, the coordinators settled {paid}");
    }
    // Every coordinator applies the final certificate; their books agree.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let first = books(m.coordinators.first().context("no coordinator")?)?;
    for (i, c) in m.coordinators.iter().enumerate() {
        if books(c)? != first {
            bail!("coordinator {i}'s books differ from coordinator 0's");
        }
    }
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    names.insert(
        format!(
            "account {}",
            seed_file(&m.customer_dir, "account.key")?.public()
        ),
        "customer".into(),
    );
    for i in 0..m.suppliers.len() {
        let dir = m.root.join(format!("supplier-{i}"));
        names.insert(
            format!("account {}", seed_file(&dir, "account.key")?.public()),
            format!("supplier {i}"),
        );
    }
    outln!();
    outln!("books (identical on all 4 coordinators):");
    for (account, balance) in &first {
        let name = names
            .get(account)
            .cloned()
            .unwrap_or_else(|| account.clone());
        outln!("  {name:<24.24} {balance:>14}");
    }
    Ok(())
}

/// GET `path` from the customer API as JSON.
async fn get_json(
    api: std::net::SocketAddr,
    token: &str,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    let url = format!("http://{api}{path}");
    let auth = format!("Bearer {token}");
    tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent.get(&url).header("authorization", &auth).call()?;
        let status = response.status();
        let body: serde_json::Value = response.body_mut().read_json()?;
        if !status.is_success() {
            bail!("{url}: {status}: {body}");
        }
        Ok(body)
    })
    .await?
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

pub(crate) fn run(args: DevnetArgs) -> anyhow::Result<ExitCode> {
    // Without --dir the market lives in a temporary directory that is
    // removed when the devnet ends, however it ends short of a kill.
    let temporary = match args.dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("rigmesh-devnet-")
                .tempdir()
                .context("creating a temporary directory for the devnet")?,
        ),
    };
    let root = match (&args.dir, &temporary) {
        (Some(dir), _) => dir.clone(),
        (None, Some(temp)) => temp.path().to_path_buf(),
        (None, None) => bail!("no directory for the devnet"),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let interrupted = runtime.block_on(async move {
        let stop = super::node::StopSignals::listen()?;
        let mut stop = std::pin::pin!(stop.wait());
        // A file of an earlier run would say the market is up before it is.
        let stale = root.join(LISTENERS_FILE);
        if stale.exists() {
            std::fs::remove_file(&stale)
                .with_context(|| format!("removing {}", stale.display()))?;
        }
        let market = tokio::select! {
            market = start_market(&root, args.deposit) => market?,
            _ = &mut stop => return Ok::<_, anyhow::Error>(true),
        };
        print_market(&market, args.serve)?;
        if args.serve {
            write_listeners(&market)?;
            outln!(
                "  listeners of every node: {}",
                market.root.join(LISTENERS_FILE).display()
            );
        }
        let mut interrupted = false;
        let outcome = if args.no_scenario {
            Ok(())
        } else {
            tokio::select! {
                outcome = scenario(&market) => outcome,
                _ = &mut stop => {
                    interrupted = true;
                    Ok(())
                }
            }
        };
        if let Err(err) = &outcome {
            errln!("scenario failed: {err:#}");
        }
        if args.serve && !interrupted {
            outln!();
            outln!("serving; Ctrl-C to stop");
            stop.await?;
        }
        for node in market
            .coordinators
            .into_iter()
            .chain(market.suppliers.into_iter().map(|(_, _, n)| n))
            .chain([market.customer])
        {
            node.stop().await?;
        }
        outcome.map(|()| interrupted)
    })?;
    drop(temporary);
    if interrupted {
        errln!("interrupted");
        return Ok(ExitCode::from(super::bid::EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}
