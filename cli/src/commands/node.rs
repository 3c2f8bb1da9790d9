//! `rigmesh node run`: run a node until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use libp2p::Multiaddr;
use rigmesh_node::api::Listener;
use rigmesh_node::config::{NodeConfig, Overrides, Role};

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Run a node: join the network, keep a ledger of the market, serve
    /// /metrics and /health. Stops cleanly on Ctrl-C or SIGTERM.
    Run(Box<RunArgs>),
    /// The configuration file's reference: with --example, every key of
    /// the node's TOML with its default (optional ones commented out).
    Config {
        /// Print an example file holding every key with its default.
        #[arg(long, required = true)]
        example: bool,
    },
    /// Print a listener's OpenAPI document, as the listener serves it at
    /// /openapi.json (specs/openapi/<listener>.json holds each).
    Openapi {
        /// public, customer, supplier, analytics, operator or monitoring.
        #[arg(long, value_parser = listener_named)]
        listener: Listener,
    },
}

/// A listener by its name.
fn listener_named(name: &str) -> Result<Listener, String> {
    Listener::ALL
        .into_iter()
        .find(|l| l.name() == name)
        .ok_or_else(|| {
            format!(
                "no listener {name:?}; listeners are {}",
                Listener::ALL.map(Listener::name).join(", ")
            )
        })
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// TOML configuration file; flags below override it (every key with
    /// its default: `rigmesh node config --example`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// relay, supplier, customer or coordinator.
    #[arg(long)]
    role: Option<Role>,
    /// Where the ledger and the node key live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on (repeatable), e.g. /ip4/0.0.0.0/tcp/4600.
    #[arg(long)]
    listen: Vec<Multiaddr>,
    /// Peer to dial at start (repeatable), with its /p2p/<peer id>.
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// Address of the /metrics and /health listener.
    #[arg(long)]
    monitoring: Option<SocketAddr>,
    /// Discover peers on the local network with mDNS.
    #[arg(long)]
    mdns: bool,
    /// Address of the customer API.
    #[arg(long)]
    customer_api: Option<SocketAddr>,
    /// Address of the supplier API.
    #[arg(long)]
    supplier_api: Option<SocketAddr>,
    /// Address of the public API (read-only market data, no token).
    #[arg(long)]
    public_api: Option<SocketAddr>,
    /// Address of the analytics API.
    #[arg(long)]
    analytics_api: Option<SocketAddr>,
    /// Address of a coordinator's operator API (loopback unless TLS is
    /// configured in [http.operator_tls]).
    #[arg(long)]
    operator_api: Option<SocketAddr>,
}

pub(crate) fn run(cmd: NodeCommand) -> anyhow::Result<ExitCode> {
    let args = match cmd {
        NodeCommand::Run(args) => *args,
        NodeCommand::Config { example: _ } => {
            let text = rigmesh_node::config::example()?;
            outln!("{}", text.trim_end());
            return Ok(ExitCode::SUCCESS);
        }
        NodeCommand::Openapi { listener } => {
            outln!(
                "{}",
                rigmesh_node::api::openapi::render(listener).trim_end()
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    let file = match &args.config {
        Some(path) => NodeConfig::load(path)?,
        None => NodeConfig::default(),
    };
    let config = file.apply(Overrides {
        role: args.role,
        data_dir: args.data_dir,
        listen: args.listen,
        bootstrap: args.bootstrap,
        monitoring: args.monitoring,
        mdns: args.mdns,
        customer_api: args.customer_api,
        supplier_api: args.supplier_api,
        public_api: args.public_api,
        analytics_api: args.analytics_api,
        operator_api: args.operator_api,
    });
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let operator_scheme = if config.http.operator_tls.is_some() {
        "https"
    } else {
        "http"
    };
    runtime.block_on(async move {
        let node = rigmesh_node::node::start(config).await?;
        // Listen before saying where the node is: whoever reads that may
        // send Ctrl-C at once, and it must stop the node cleanly.
        let signals = StopSignals::listen()?;
        // A reader of these lines that goes away does not stop the node.
        let say = |args: std::fmt::Arguments<'_>| {
            let _ = super::out::line(args);
        };
        say(format_args!("peer id {}", node.peer_id));
        for addr in &node.listen_addrs {
            say(format_args!("listening on {addr}/p2p/{}", node.peer_id));
        }
        say(format_args!("public api on http://{}", node.public_api));
        for (what, scheme, addr) in [
            ("customer", "http", node.customer_api),
            ("supplier", "http", node.supplier_api),
            ("analytics", "http", node.analytics_api),
            ("operator", operator_scheme, node.operator_api),
        ] {
            if let Some(addr) = addr {
                say(format_args!("{what} api on {scheme}://{addr}"));
            }
        }
        say(format_args!("monitoring on http://{}", node.monitoring));
        signals.wait().await?;
        errln!("stopping");
        node.stop().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C and SIGTERM, caught from the moment this exists (on Unix), so
/// they stop the node cleanly instead of killing it.
pub(crate) struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Starts catching the signals; must run inside the runtime.
    pub(crate) fn listen() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(StopSignals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// Waits for the first of them.
    pub(crate) async fn wait(self) -> anyhow::Result<()> {
        #[cfg(unix)]
        {
            let StopSignals {
                mut interrupt,
                mut terminate,
            } = self;
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            Ok(())
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
    }
}
