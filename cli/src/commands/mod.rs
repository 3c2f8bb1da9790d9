//! Command-line surface: the clap definitions and the dispatch to each
//! command's module.

#[macro_use]
mod out;

mod account;
mod admin;
mod admin_api;
mod audit;
mod bid;
mod budget;
mod client;
mod devnet;
mod dispute;
mod disputes;
mod end;
mod forecast;
mod keys;
mod message;
mod node;
mod notify;
mod offer;
mod offers;
mod outlook;
mod progress;
mod review;
mod sink;
mod text;
mod token;
mod usage;
mod withdraw;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Exit code for an error (bad input, I/O): something to fix.
pub(crate) const EXIT_ERROR: u8 = 1;
/// Exit code for a message that is not valid (2 is clap's usage error).
pub(crate) const EXIT_INVALID: u8 = 3;
/// Exit code for a deposit whose admin key already used its reference:
/// nothing was credited.
pub(crate) const EXIT_REFERENCE_USED: u8 = 5;
/// Exit code for a deposit or withdrawal the coordinators hold for an
/// admin's approval: nothing moved yet.
pub(crate) const EXIT_HELD: u8 = 6;

/// rigmesh: a peer-to-peer marketplace for GPU time.
///
/// Suppliers offer GPUs, customers lease them, coordinators settle the
/// money; every fact is a signed message.
///
/// To rent GPUs, run a customer node (`rigmesh node run --role customer`),
/// then talk to it: `rigmesh offers` to see what is for sale, `rigmesh bid`
/// to lease, `rigmesh usage` and `rigmesh account` to see what it costs,
/// `rigmesh budget set` to cap it. To try the protocol offline, start with
/// `rigmesh keys new`, sign an offer with `rigmesh offer create` and check
/// it with `rigmesh message verify offer`.
#[derive(Debug, Parser)]
#[command(
    name = "rigmesh",
    version,
    propagate_version = true,
    after_help = "Commands that talk to a node read its API token from --data-dir \
(default ./rigmesh-data), or from --token-file (a token made with `rigmesh token \
create`), and reach it at --api (default 127.0.0.1:9610).\n\
\n\
Logs go to stderr; RIGMESH_LOG sets what is logged, as a tracing filter \
(e.g. RIGMESH_LOG=info, or RIGMESH_LOG=rigmesh_node=debug); the default is warn. \
--log-format json (or RIGMESH_LOG_FORMAT=json) writes one JSON object per line.\n\
Node settings: `rigmesh node config --example` prints every key with its default.\n\
Shell completions: `rigmesh completions bash|zsh|fish|elvish|powershell`.\n\
\n\
Exit codes: 0 ok, 1 error, 2 bad arguments, 3 invalid message, 4 no match,\n\
5 deposit reference already used, 6 held for an admin's approval,\n\
130 interrupted (Ctrl-C while a bid waits or the devnet runs)."
)]
pub(crate) struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one
    /// object per line) for log collectors.
    #[arg(
        long,
        global = true,
        env = "RIGMESH_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and inspect account keys (ed25519).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Sign offers of GPUs for sale.
    #[command(subcommand)]
    Offer(offer::OfferCommand),
    /// Decode, verify and explain protocol messages.
    #[command(subcommand)]
    Message(message::MessageCommand),
    /// Rent GPUs: lease the cheapest matching offer now, or wait for one
    /// with --wait (exit 4 and an explanation in numbers if none matches).
    Bid(bid::BidArgs),
    /// Show this node's running leases and what they cost so far.
    Leases(client::NodeArgs),
    /// End a running lease after the window in progress (signed
    /// termination; the unused escrow is refunded at settlement).
    End(end::EndArgs),
    /// Dispute a lease's windows from now on with what you observed (the
    /// GPUs not delivered): their charge is held for an operator's review.
    Dispute(dispute::DisputeArgs),
    /// Show one lease's metering windows: each one acked or disputed (and
    /// why), what it cost, and the totals.
    Usage(usage::UsageArgs),
    /// Show or set caps on spending (per account and per lease), with the
    /// alerts raised at 50, 80 and 100 %.
    #[command(subcommand)]
    Budget(budget::BudgetCommand),
    /// Show this node's account: spend across leases, caps, alerts, and
    /// disputes raised against suppliers.
    Account(account::AccountArgs),
    /// List the market's live offers, cheapest first (exit 4 if none match).
    Offers(offers::OffersArgs),
    /// Run the whole market in one process on loopback (4 coordinators, 3
    /// simulated suppliers, a funded customer) and play a lease from bid to
    /// settlement; `--serve` keeps it running for the other commands.
    Devnet(devnet::DevnetArgs),
    /// Move credits out of an account (certified by the coordinators;
    /// exit 6 while a large one waits for an admin's review).
    Withdraw(withdraw::WithdrawArgs),
    /// Operator tools for the coordinator set: deposits, approvals of held
    /// deposits and withdrawals, balances.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Run a node (supplier, customer, coordinator or relay), or print the
    /// reference of its configuration file.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Notifications from the node: its channels (and a test message),
    /// routing rules, the log of what went where, acknowledgement.
    #[command(subcommand)]
    Notify(notify::NotifyCommand),
    /// API tokens with scopes and expiry: create (printed once), list,
    /// revoke.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// A coordinator's audit chain and books, through its operator API.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Forecast hourly series; `backtest` scores the forecaster on a CSV.
    #[command(subcommand)]
    Forecast(forecast::ForecastCommand),
    /// Print a shell completion script, e.g. `rigmesh completions bash >
    /// ~/.local/share/bash-completion/completions/rigmesh`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Where a key file is read from, shared by commands that sign.
#[derive(Debug, clap::Args)]
pub(crate) struct KeyFileArg {
    /// Key file holding the account's secret seed (hex); created with
    /// `rigmesh keys new`.
    #[arg(long, env = "RIGMESH_KEY_FILE")]
    key_file: PathBuf,
}

impl Cli {
    /// The log filter when `RIGMESH_LOG` is not set: the devnet prints its
    /// own story, so only errors are logged there.
    pub(crate) fn default_log(&self) -> &'static str {
        match self.command {
            Command::Devnet(_) => "error",
            _ => "warn",
        }
    }
}

/// An error and its causes on one line, each said once: a library error
/// that already quotes its cause (an OS error after a path) is not
/// followed by the cause again.
pub(crate) fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Whether `err` only says that stdout's reader went away (`| head`): not
/// worth a word.
pub(crate) fn reader_gone(err: &anyhow::Error) -> bool {
    out::reader_gone(err)
}

pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keys(cmd) => keys::run(cmd),
        Command::Offer(cmd) => offer::run(cmd),
        Command::Message(cmd) => message::run(cmd),
        Command::Node(cmd) => node::run(cmd),
        Command::Devnet(args) => devnet::run(args),
        Command::Admin(cmd) => admin::run(cmd),
        Command::Withdraw(args) => withdraw::run(args),
        Command::Offers(args) => offers::run(args),
        Command::Bid(args) => bid::bid(args),
        Command::Leases(args) => bid::leases(args),
        Command::End(args) => end::run(args),
        Command::Dispute(args) => dispute::run(args),
        Command::Usage(args) => usage::run(args),
        Command::Budget(cmd) => budget::run(cmd),
        Command::Account(args) => account::run(args),
        Command::Forecast(cmd) => forecast::run(cmd),
        Command::Notify(cmd) => notify::run(cmd),
        Command::Token(cmd) => token::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Completions { shell } => completions(shell),
    }
}

/// Writes the completion script for `shell` to stdout.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "rigmesh", &mut script);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &script)?;
    Ok(ExitCode::SUCCESS)
}
