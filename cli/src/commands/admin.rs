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
//!   sequence numbers and escrowed credits, side by side.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use rigmesh_node::config::{NodeConfig, Role};
use std::collections::BTreeMap;

use rigmesh_protocol::rpc::{CertificateFrame, CoordinatorRequest, CoordinatorResponse, HeldEntry};
use rigmesh_protocol::{
    Approval, Credits, Deposit, Id, Keypair, Kind, PublicKey, Signed, UnixMillis, Withdrawal,
    PROTOCOL_VERSION,
};

/// The reason code coordinators give for a deposit whose admin key and
/// reference another deposit took.
const REFERENCE_USED: &str = "reference_used";

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
    set: SetArgs,
    /// The deciding admin key file (hex seed).
    #[arg(long)]
    admin_key: PathBuf,
    /// Id of the held deposit or withdrawal (hex).
    id: Id,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BalancesArgs {
    #[command(flatten)]
    set: SetArgs,
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
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        match cmd {
            AdminCommand::Deposit(args) => deposit(args).await,
            AdminCommand::Deposits(cmd) => review(Kind::Deposit, cmd).await,
            AdminCommand::Withdrawals(cmd) => review(Kind::Withdrawal, cmd).await,
            AdminCommand::Balances(args) => balances(args).await,
            AdminCommand::Disputes(cmd) => super::disputes::run(cmd).await,
            AdminCommand::Review(cmd) => super::review::run(cmd),
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
            reference: args.reference.clone(),
            created_at: UnixMillis::now(),
        },
        &admin,
    )?;
    let id = deposit.id()?;
    let answers = quorum
        .ask_all(&CoordinatorRequest::Apply(CertificateFrame::Deposit(
            deposit.clone(),
        )))
        .await;
    let need = quorum.set().quorum();
    let count = |f: &dyn Fn(&CoordinatorResponse) -> bool| {
        answers
            .iter()
            .filter(|(_, a)| a.as_ref().is_ok_and(f))
            .count()
    };
    let applied = count(&|a| matches!(a, CoordinatorResponse::Applied));
    let pending = count(&|a| matches!(a, CoordinatorResponse::Pending(_)));
    let used = answers.iter().find_map(|(_, a)| match a {
        Ok(CoordinatorResponse::Refused(r)) if r.starts_with(REFERENCE_USED) => Some(r.clone()),
        _ => None,
    });
    if applied > 0 {
        // Gossip it too, so coordinators that were not reached catch up.
        if let Err(err) = node
            .handle
            .publish(&rigmesh_protocol::wire::WireMessage::Deposit(deposit))
            .await
        {
            tracing::debug!(%err, "deposit not gossiped");
        }
    }
    node.stop().await?;
    let state = if used.is_some() && applied == 0 && pending == 0 {
        "reference_used"
    } else if applied >= need {
        "applied"
    } else if pending + applied >= need {
        "awaiting_approval"
    } else {
        "not_applied"
    };
    if args.set.json {
        outln!(
            "{}",
            serde_json::json!({
                "deposit": id.to_string(),
                "state": state,
                "applied_by": applied,
                "held_by": pending,
                "quorum": need,
            })
        );
    } else {
        match state {
            "applied" => outln!(
                "deposit {id}: {} to {} applied by {applied} coordinators",
                args.amount,
                args.account
            ),
            "awaiting_approval" => outln!(
                "deposit {id}: {} to {} waits for a second admin's approval ({pending} coordinators hold it);\n\
                 another admin key approves it with `rigmesh admin deposits approve {id}`",
                args.amount,
                args.account
            ),
            _ => {}
        }
    }
    match state {
        "applied" => Ok(ExitCode::SUCCESS),
        "awaiting_approval" => Ok(ExitCode::from(super::EXIT_HELD)),
        "reference_used" => {
            errln!(
                "error: reference {:?} is already used by another deposit of this admin key; \
                 nothing was credited ({})",
                args.reference,
                used.unwrap_or_default()
            );
            Ok(ExitCode::from(super::EXIT_REFERENCE_USED))
        }
        _ => bail!(
            "only {applied} coordinators applied the deposit; {need} needed (is the admin key one of the set's?){}",
            answers
                .iter()
                .filter_map(|(m, a)| match a {
                    Ok(CoordinatorResponse::Refused(r)) => Some(format!("\n  {m}: {r}")),
                    Err(e) => Some(format!("\n  {m}: {e}")),
                    _ => None,
                })
                .collect::<String>()
        ),
    }
}

fn approval(
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

/// What the coordinators hold of `kind`, each once, with how many hold it.
pub(crate) async fn held(
    quorum: &rigmesh_node::quorum::Quorum,
    kind: Kind,
) -> BTreeMap<Id, (HeldEntry, usize)> {
    let mut out: BTreeMap<Id, (HeldEntry, usize)> = BTreeMap::new();
    for (_, answer) in quorum.ask_all(&CoordinatorRequest::Held(kind)).await {
        if let Ok(CoordinatorResponse::Held(entries)) = answer {
            for entry in entries {
                out.entry(entry.subject)
                    .and_modify(|(_, n)| *n += 1)
                    .or_insert((entry, 1));
            }
        }
    }
    out
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
    let need = quorum.set().quorum();
    let decision = approval(&admin, quorum.set().epoch(), kind, args.id, approve)?;
    let request = CoordinatorRequest::Decide(decision);
    let verb = if approve { "approved" } else { "rejected" };
    let result: anyhow::Result<(usize, Option<String>)> = if kind == Kind::Withdrawal && approve {
        // Each coordinator answers an approval with its vote: a quorum of
        // them is the withdrawal's certificate, handed to every member.
        match held(&quorum, kind).await.remove(&args.id) {
            None => Err(anyhow::anyhow!(
                "no coordinator holds withdrawal {} for review",
                args.id
            )),
            Some((entry, _)) => {
                let withdrawal = Signed::<Withdrawal>::from_bytes(&entry.message)?;
                match quorum.certify(&withdrawal, &request).await {
                    Ok(certificate) => {
                        let votes = certificate.votes.len();
                        let bytes = hex::encode(certificate.to_bytes()?);
                        quorum
                            .deliver(CertificateFrame::Withdrawal(Box::new(certificate)))
                            .await;
                        Ok((votes, Some(bytes)))
                    }
                    Err(e) => Err(anyhow::anyhow!("withdrawal not certified: {e}")),
                }
            }
        }
    } else {
        let answers = quorum.ask_all(&request).await;
        let done = answers
            .iter()
            .filter(|(_, a)| matches!(a, Ok(CoordinatorResponse::Applied)))
            .count();
        if done >= need {
            Ok((done, None))
        } else {
            Err(anyhow::anyhow!(
                "only {done} coordinators took the decision; {need} needed{}",
                answers
                    .iter()
                    .filter_map(|(m, a)| match a {
                        Ok(CoordinatorResponse::Refused(r)) => Some(format!("\n  {m}: {r}")),
                        Err(e) => Some(format!("\n  {m}: {e}")),
                        _ => None,
                    })
                    .collect::<String>()
            ))
        }
    };
    node.stop().await?;
    let (count, certificate) = result?;
    if args.set.json {
        outln!(
            "{}",
            serde_json::json!({
                "kind": kind.name(),
                "id": args.id.to_string(),
                "decision": verb,
                "coordinators": count,
                "certificate": certificate,
            })
        );
    } else {
        outln!(
            "{} {}: {verb} by {count} coordinators",
            kind.name(),
            args.id
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn list_held(kind: Kind, set: SetArgs) -> anyhow::Result<ExitCode> {
    let (node, _dir) = connect(&set).await?;
    let quorum = node.quorum.clone().context("no coordinator set")?;
    let rows = held(&quorum, kind).await;
    node.stop().await?;
    let describe = |entry: &HeldEntry| -> (String, String, String) {
        match kind {
            Kind::Deposit => match Signed::<Deposit>::from_bytes(&entry.message) {
                Ok(d) => (
                    d.body.account.to_string(),
                    d.body.amount.to_string(),
                    format!("reference {:?} by admin {}", d.body.reference, d.body.admin),
                ),
                Err(e) => (String::new(), String::new(), e.to_string()),
            },
            _ => match Signed::<Withdrawal>::from_bytes(&entry.message) {
                Ok(w) => (
                    w.body.account.to_string(),
                    w.body.amount.to_string(),
                    format!("to {:?}, seq {}", w.body.destination, w.body.seq),
                ),
                Err(e) => (String::new(), String::new(), e.to_string()),
            },
        }
    };
    if set.json {
        let out: Vec<_> = rows
            .values()
            .map(|(entry, holders)| {
                let (account, amount, detail) = describe(entry);
                serde_json::json!({
                    "id": entry.subject.to_string(),
                    "account": account,
                    "amount": amount,
                    "detail": detail,
                    "held_by": holders,
                    "since": entry.since.0,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else if rows.is_empty() {
        outln!("no {} waits for a decision", kind.name());
    } else {
        for (entry, holders) in rows.values() {
            let (account, amount, detail) = describe(entry);
            outln!(
                "{}  {account:.16}  {amount:>16}  held by {holders}  {detail}",
                entry.subject
            );
        }
    }
    Ok(ExitCode::SUCCESS)
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
