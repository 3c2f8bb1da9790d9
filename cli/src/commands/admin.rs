//! `rigmesh admin`: operator tools that talk to the coordinator set
//! directly. Each starts a short-lived relay node on loopback with the
//! given configuration (its `[coordinators]` table, with `addresses`),
//! waits until it can reach a quorum, does its one job and stops.
//!
//! - `deposit`: sign a deposit with the coordinator set's admin key (an
//!   external top-up) and hand it to every coordinator;
//! - `balances`: ask every coordinator for accounts' balances, debit
//!   sequence numbers and escrowed credits, side by side.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use rigmesh_node::config::{NodeConfig, Role};
use rigmesh_protocol::rpc::CertificateFrame;
use rigmesh_protocol::{
    Credits, Deposit, Keypair, PublicKey, Signed, UnixMillis, PROTOCOL_VERSION,
};

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Credit an account (signed by the coordinator set's admin key).
    Deposit(DepositArgs),
    /// Show accounts as every coordinator holds them.
    Balances(BalancesArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct SetArgs {
    /// A node configuration file with the `[coordinators]` table
    /// (members, admin, addresses).
    #[arg(long, short)]
    pub(crate) config: PathBuf,
    /// Seconds to wait for a quorum of coordinators.
    #[arg(long, default_value_t = 30)]
    pub(crate) wait_secs: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DepositArgs {
    #[command(flatten)]
    set: SetArgs,
    /// The admin key file (hex seed).
    #[arg(long)]
    admin_key: PathBuf,
    /// The account credited (hex public key).
    #[arg(long)]
    account: PublicKey,
    /// Credits to add (above zero).
    #[arg(long, value_name = "CREDITS", value_parser = super::text::positive_credits)]
    amount: Credits,
    /// External reference of the top-up (a payment id); makes the
    /// deposit unique.
    #[arg(long)]
    reference: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BalancesArgs {
    #[command(flatten)]
    set: SetArgs,
    /// Accounts to show (hex public keys).
    #[arg(required = true)]
    accounts: Vec<PublicKey>,
}

/// Starts the helper node and waits until a quorum answers.
pub(crate) async fn connect(
    set: &SetArgs,
) -> anyhow::Result<(rigmesh_node::node::RunningNode, tempfile::TempDir)> {
    let mut config = NodeConfig::load(&set.config)?;
    if config.coordinators.is_none() {
        bail!("{} has no [coordinators] table", set.config.display());
    }
    let dir = tempfile::Builder::new()
        .prefix("rigmesh-admin-")
        .tempdir()?;
    config.role = Role::Relay;
    config.data_dir = dir.path().to_path_buf();
    config.node_key = None;
    config.account_key = None;
    config.network.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    config.monitoring = ([127, 0, 0, 1], 0).into();
    config.customer_api = ([127, 0, 0, 1], 0).into();
    config.supplier_api = ([127, 0, 0, 1], 0).into();
    let node = rigmesh_node::node::start(config).await?;
    let quorum = node.quorum.clone().context("no coordinator set")?;
    let need = quorum.set().quorum();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(set.wait_secs);
    loop {
        let known = quorum
            .members(UnixMillis::now())
            .iter()
            .filter(|(_, peer)| peer.is_some())
            .count();
        if known >= need {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            node.stop().await?;
            bail!(
                "only {known} coordinators reachable after {} s; {need} needed",
                set.wait_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((node, dir))
}

pub(crate) fn run(cmd: AdminCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        match cmd {
            AdminCommand::Deposit(args) => deposit(args).await,
            AdminCommand::Balances(args) => balances(args).await,
        }
    })
}

async fn deposit(args: DepositArgs) -> anyhow::Result<ExitCode> {
    let admin = Keypair::from_seed(rigmesh_node::keyfile::read_seed(&args.admin_key)?);
    let (node, _dir) = connect(&args.set).await?;
    let quorum = node.quorum.clone().context("no coordinator set")?;
    let deposit = Signed::sign(
        Deposit {
            version: PROTOCOL_VERSION,
            epoch: quorum.set().epoch(),
            admin: admin.public(),
            account: args.account,
            amount: args.amount,
            reference: args.reference,
            created_at: UnixMillis::now(),
        },
        &admin,
    )?;
    let id = deposit.id()?;
    let applied = quorum.deliver(CertificateFrame::Deposit(deposit)).await;
    let need = quorum.set().quorum();
    node.stop().await?;
    if args.set.json {
        outln!(
            "{}",
            serde_json::json!({"deposit": id.to_string(), "applied_by": applied, "quorum": need})
        );
    } else {
        outln!(
            "deposit {id}: {} to {} applied by {applied} coordinators",
            args.amount,
            args.account
        );
    }
    if applied < need {
        bail!("only {applied} coordinators applied the deposit; {need} needed (is the admin key the set's?)");
    }
    Ok(ExitCode::SUCCESS)
}

async fn balances(args: BalancesArgs) -> anyhow::Result<ExitCode> {
    let (node, _dir) = connect(&args.set).await?;
    let quorum = node.quorum.clone().context("no coordinator set")?;
    let members: Vec<PublicKey> = quorum.set().members().to_vec();
    let mut rows = Vec::new();
    for account in &args.accounts {
        let mut states = quorum.accounts(*account).await;
        states.sort_by_key(|s| s.coordinator.to_string());
        rows.push((*account, states));
    }
    node.stop().await?;
    let silent = |states: &[rigmesh_protocol::rpc::AccountState]| -> Vec<PublicKey> {
        members
            .iter()
            .filter(|m| !states.iter().any(|s| s.coordinator == **m))
            .copied()
            .collect()
    };
    if args.set.json {
        let out: Vec<_> = rows
            .iter()
            .map(|(account, states)| {
                serde_json::json!({
                    "account": account.to_string(),
                    "coordinators": states.iter().map(|s| serde_json::json!({
                        "coordinator": s.coordinator.to_string(),
                        "balance": s.balance.to_string(),
                        "escrowed": s.escrowed.to_string(),
                        "next_seq": s.next_seq,
                    })).collect::<Vec<_>>(),
                    "unanswered": silent(states).iter().map(|m| m.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        outln!(
            "{:<18} {:<18} {:>16} {:>16} {:>8}",
            "account",
            "coordinator",
            "balance",
            "escrowed",
            "next seq"
        );
        for (account, states) in &rows {
            for s in states {
                outln!(
                    "{:<18.16} {:<18.16} {:>16} {:>16} {:>8}",
                    account.to_string(),
                    s.coordinator.to_string(),
                    s.balance.to_string(),
                    s.escrowed.to_string(),
                    s.next_seq
                );
            }
            for m in silent(states) {
                outln!(
                    "{:<18.16} {:<18.16} {:>16}",
                    account.to_string(),
                    m.to_string(),
                    "no answer"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
