//! `rigmesh admin`: operator tools that talk to the coordinator set
//! directly. Each starts a short-lived relay node on loopback with the
//! given configuration (its `[coordinators]` table, with `addresses`),
//! waits until it can reach a quorum, does its one job and stops.
//!
//! - `deposit`: sign a deposit with one of the coordinator set's admin
//!   keys (an external top-up) and hand it to every coordinator; one
//!   deposit per admin key and reference, and one above the approval
//!   threshold waits for a second admin key;
//! - `deposits` and `withdrawals`: list what the coordinators hold for an
//!   admin's decision, approve it or reject it (a signed `Approval`);
//! - `disputes`: the review queue of dispute cases (see `disputes.rs`);
//! - `review`: the suspicious-activity review queue of one coordinator,
//!   through its operator API (see `review.rs`; no relay node);
//! - `balances`: ask every coordinator for accounts' balances, debit
//!   sequence numbers and escrowed credits, side by side;
//! - `bans`: list, add and lift a coordinator's bans of peers and
//!   addresses (through its operator API only).
//!
//! With `--operator-api ADDR`, `deposit`, `deposits`, `withdrawals` and
//! `disputes resolve` go through that coordinator's operator API instead
//! of a relay node (see `admin_api.rs`); the admin key still signs here.
//! Either way the carrying is [`rigmesh_node::admin`]'s, so the outcome
//! and the exit codes are the same.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use rigmesh_node::admin::{DecisionState, DepositOutcome, DepositState};
use rigmesh_node::config::{NodeConfig, Role};

use rigmesh_protocol::{
    Approval, Credits, Deposit, Id, Keypair, Kind, PublicKey, Signed, UnixMillis, PROTOCOL_VERSION,
};

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Credit an account (signed by one of the coordinator set's admin
    /// keys). Exit 5 if the admin key already used the reference, 6 if the
    /// deposit waits for a second admin's approval.
    Deposit(DepositArgs),
    /// Deposits held for a second admin's approval: list, approve, reject.
    #[command(subcommand)]
    Deposits(ReviewCommand),
    /// Withdrawals held for review: list, approve, reject.
    #[command(subcommand)]
    Withdrawals(ReviewCommand),
    /// Show accounts as every coordinator holds them.
    Balances(BalancesArgs),
    /// Dispute cases held for review: list, show the evidence, resolve.
    #[command(subcommand)]
    Disputes(super::disputes::DisputesCommand),
    /// A coordinator's suspicious-activity review queue: list, acknowledge.
    #[command(subcommand)]
    Review(super::review::ReviewQueueCommand),
    /// A coordinator's bans of peers and addresses, through its operator
    /// API: list, add, lift.
    #[command(subcommand)]
    Bans(super::admin_api::BansCommand),
}

/// How to reach a coordinator's operator API.
#[derive(Debug, clap::Args)]
pub(crate) struct OperatorApiArgs {
    /// Go through this coordinator's operator API (HOST:PORT) instead of
    /// starting a temporary relay node; the admin key still signs here.
    #[arg(long, value_name = "ADDR")]
    pub(crate) operator_api: Option<SocketAddr>,
    /// With `--operator-api`: the coordinator's data directory, whose
    /// operator bootstrap token (`<dir>/api/operator.token`) is used.
    #[arg(long, default_value = "rigmesh-data", value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
    /// With `--operator-api`: a file holding the API token to use instead
    /// of the bootstrap one (one made with `rigmesh token create`).
    #[arg(long, env = "RIGMESH_TOKEN_FILE", value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SetArgs {
    /// A node configuration file with the `[coordinators]` table
    /// (members, admin, addresses); not needed with `--operator-api`.
    #[arg(long, short, required_unless_present = "operator_api")]
    pub(crate) config: Option<PathBuf>,
    /// Seconds to wait for a quorum of coordinators.
    #[arg(long, default_value_t = 30)]
    pub(crate) wait_secs: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) via: OperatorApiArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DepositArgs {
    #[command(flatten)]
    pub(crate) set: SetArgs,
    /// The admin key file (hex seed).
    #[arg(long)]
    pub(crate) admin_key: PathBuf,
    /// The account credited (hex public key).
    #[arg(long)]
    pub(crate) account: PublicKey,
    /// Credits to add (above zero).
    #[arg(long, value_name = "CREDITS", value_parser = super::text::positive_credits)]
    pub(crate) amount: Credits,
    /// External reference of the top-up (a payment id); makes the
    /// deposit unique.
    #[arg(long)]
    pub(crate) reference: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ReviewCommand {
    /// List what the coordinators hold for a decision.
    List(SetArgs),
    /// Approve one (signed by an admin key; for a deposit, not the key
    /// that signed it).
    Approve(DecideArgs),
    /// Reject one: the coordinators drop it.
    Reject(DecideArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct DecideArgs {
    #[command(flatten)]
    pub(crate) set: SetArgs,
    /// The deciding admin key file (hex seed).
    #[arg(long)]
    pub(crate) admin_key: PathBuf,
    /// Id of the held deposit or withdrawal (hex).
    pub(crate) id: Id,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BalancesArgs {
    #[command(flatten)]
    pub(crate) set: SetArgs,
    /// The key that asks (hex seed file): one of the set's admin keys, or
    /// an account's own key to read that account. Coordinators answer
    /// nobody else: balances are private.
    #[arg(long)]
    admin_key: PathBuf,
    /// Accounts to show (hex public keys).
    #[arg(required = true)]
    accounts: Vec<PublicKey>,
}

/// Starts the helper node and waits until a quorum answers.
pub(crate) async fn connect(
    set: &SetArgs,
) -> anyhow::Result<(rigmesh_node::node::RunningNode, tempfile::TempDir)> {
    let Some(path) = &set.config else {
        bail!("--config (a node configuration with the [coordinators] table) is needed without --operator-api");
    };
    let mut config = NodeConfig::load(path)?;
    if config.coordinators.is_none() {
        bail!("{} has no [coordinators] table", path.display());
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
    config.public_api = ([127, 0, 0, 1], 0).into();
    config.analytics_api = ([127, 0, 0, 1], 0).into();
    config.operator_api = ([127, 0, 0, 1], 0).into();
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
    // One coordinator's operator API, over blocking HTTP: no relay node.
    let cmd = match cmd {
        AdminCommand::Review(cmd) => return super::review::run(cmd),
        other => other,
    };
    let cmd = match super::admin_api::run(cmd) {
        Ok(done) => return done,
        Err(cmd) => *cmd,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        match cmd {
            AdminCommand::Deposit(args) => deposit(args).await,
            AdminCommand::Deposits(cmd) => review(Kind::Deposit, cmd).await,
            AdminCommand::Withdrawals(cmd) => review(Kind::Withdrawal, cmd).await,
            AdminCommand::Balances(args) => balances(args).await,
            AdminCommand::Disputes(cmd) => super::disputes::run(cmd).await,
            AdminCommand::Review(cmd) => super::review::run(cmd),
            AdminCommand::Bans(_) => bail!("bans are managed through a coordinator's operator API"),
        }
    })
}

/// The deposit `args` describe, signed by the admin key, for `epoch`.
pub(crate) fn signed_deposit(args: &DepositArgs, epoch: u64) -> anyhow::Result<Signed<Deposit>> {
    let admin = Keypair::from_seed(rigmesh_node::keyfile::read_seed(&args.admin_key)?);
    Ok(Signed::sign(
        Deposit {
            version: PROTOCOL_VERSION,
            epoch,
            admin: admin.public(),
            account: args.account,
            amount: args.amount,
            reference: args.reference.clone(),
            created_at: UnixMillis::now(),
        },
        &admin,
    )?)
}

async fn deposit(args: DepositArgs) -> anyhow::Result<ExitCode> {
    // Read before the relay node starts: a bad key file changes nothing.
    rigmesh_node::keyfile::read_seed(&args.admin_key)?;
    let (node, _dir) = connect(&args.set).await?;
    let quorum = node.quorum.clone().context("no coordinator set")?;
    let outcome = match signed_deposit(&args, quorum.set().epoch()) {
        Ok(deposit) => rigmesh_node::admin::submit_deposit(&quorum, deposit)
            .await
            .map_err(anyhow::Error::from),
        Err(err) => Err(err),
    };
    node.stop().await?;
    report_deposit(&args, &outcome?)
}

/// Prints a deposit's outcome and gives its exit code.
pub(crate) fn report_deposit(
    args: &DepositArgs,
    outcome: &DepositOutcome,
) -> anyhow::Result<ExitCode> {
    let id = outcome.deposit;
    if args.set.json {
        outln!("{}", outcome.to_json());
    } else {
        match outcome.state {
            DepositState::Applied => outln!(
                "deposit {id}: {} to {} applied by {} coordinators",
                args.amount,
                args.account,
                outcome.applied_by
            ),
            DepositState::AwaitingApproval => outln!(
                "deposit {id}: {} to {} waits for a second admin's approval ({} coordinators hold it);\n\
                 another admin key approves it with `rigmesh admin deposits approve {id}`",
                args.amount,
                args.account,
                outcome.held_by
            ),
            _ => {}
        }
    }
    match &outcome.state {
        DepositState::Applied => Ok(ExitCode::SUCCESS),
        DepositState::AwaitingApproval => Ok(ExitCode::from(super::EXIT_HELD)),
        DepositState::ReferenceUsed(reason) => {
            errln!(
                "error: reference {:?} is already used by another deposit of this admin key; \
                 nothing was credited ({reason})",
                args.reference,
            );
            Ok(ExitCode::from(super::EXIT_REFERENCE_USED))
        }
        DepositState::NotApplied => bail!(
            "only {} coordinators applied the deposit; {} needed (is the admin key one of the set's?){}",
            outcome.applied_by,
            outcome.quorum,
            rigmesh_node::admin::reasons(&outcome.answers)
        ),
    }
}

/// An admin's signed decision on a held deposit or withdrawal.
pub(crate) fn approval(
    admin: &Keypair,
    epoch: u64,
    kind: Kind,
    id: Id,
    approve: bool,
) -> anyhow::Result<Signed<Approval>> {
    Ok(Signed::sign(
        Approval {
            version: PROTOCOL_VERSION,
            epoch,
            admin: admin.public(),
            subject_kind: kind,
            subject: id,
            approve,
            created_at: UnixMillis::now(),
        },
        admin,
    )?)
}

async fn review(kind: Kind, cmd: ReviewCommand) -> anyhow::Result<ExitCode> {
    let (args, approve) = match cmd {
        ReviewCommand::List(set) => return list_held(kind, set).await,
        ReviewCommand::Approve(args) => (args, true),
        ReviewCommand::Reject(args) => (args, false),
    };
    let admin = Keypair::from_seed(rigmesh_node::keyfile::read_seed(&args.admin_key)?);
    let (node, _dir) = connect(&args.set).await?;
    let quorum = node.quorum.clone().context("no coordinator set")?;
    let outcome = match approval(&admin, quorum.set().epoch(), kind, args.id, approve) {
        Ok(decision) => rigmesh_node::admin::submit_approval(&quorum, decision)
            .await
            .map_err(anyhow::Error::from),
        Err(err) => Err(err),
    };
    node.stop().await?;
    report_decision(&args, &outcome?)
}

/// Prints a decision's outcome; an error unless a quorum took it.
pub(crate) fn report_decision(
    args: &DecideArgs,
    outcome: &rigmesh_node::admin::DecisionOutcome,
) -> anyhow::Result<ExitCode> {
    if outcome.state != DecisionState::Taken {
        bail!("{}", outcome.failure());
    }
    if args.set.json {
        outln!("{}", outcome.to_json());
    } else {
        outln!(
            "{} {}: {} by {} coordinators",
            outcome.kind.name(),
            outcome.subject,
            outcome.verb(),
            outcome.taken_by
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One held deposit or withdrawal as `list` prints it.
pub(crate) struct HeldRow {
    pub(crate) id: String,
    pub(crate) account: String,
    pub(crate) amount: String,
    pub(crate) detail: String,
    pub(crate) held_by: u64,
    pub(crate) since: u64,
}

/// Prints the held rows of `kind`.
pub(crate) fn print_held(kind: Kind, rows: &[HeldRow], json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let out: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "account": r.account,
                    "amount": r.amount,
                    "detail": r.detail,
                    "held_by": r.held_by,
                    "since": r.since,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else if rows.is_empty() {
        outln!("no {} waits for a decision", kind.name());
    } else {
        for r in rows {
            outln!(
                "{}  {:.16}  {:>16}  held by {}  {}",
                r.id,
                r.account,
                r.amount,
                r.held_by,
                r.detail
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list_held(kind: Kind, set: SetArgs) -> anyhow::Result<ExitCode> {
    let (node, _dir) = connect(&set).await?;
    let quorum = node.quorum.clone().context("no coordinator set")?;
    let held = rigmesh_node::admin::held(&quorum, kind).await;
    node.stop().await?;
    let rows: Vec<HeldRow> = held
        .values()
        .map(|(entry, holders)| {
            let (account, amount, detail) = rigmesh_node::admin::describe_held(kind, entry);
            HeldRow {
                id: entry.subject.to_string(),
                account,
                amount,
                detail,
                held_by: *holders as u64,
                since: entry.since.0,
            }
        })
        .collect();
    print_held(kind, &rows, set.json)
}

async fn balances(args: BalancesArgs) -> anyhow::Result<ExitCode> {
    let asker = Keypair::from_seed(rigmesh_node::keyfile::read_seed(&args.admin_key)?);
    let (node, _dir) = connect(&args.set).await?;
    let quorum = node.quorum.clone().context("no coordinator set")?;
    let members: Vec<PublicKey> = quorum.set().members().to_vec();
    let mut rows = Vec::new();
    for account in &args.accounts {
        let mut states = quorum.accounts(&asker, *account).await;
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
