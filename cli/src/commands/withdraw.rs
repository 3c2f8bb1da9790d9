//! `rigmesh withdraw`: move credits out of an account to an external
//! destination. The account key signs a withdrawal at the account's next
//! debit sequence number; a quorum of coordinators certifies it (each
//! checks the balance) and every coordinator applies it. One above the
//! review threshold, or to a destination new to the account, waits for an
//! admin's approval (exit 6).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use rigmesh_protocol::{Credits, Keypair};

use super::admin::{connect, SetArgs};

#[derive(Debug, clap::Args)]
pub(crate) struct WithdrawArgs {
    #[command(flatten)]
    set: SetArgs,
    /// The account's key file (a node's `<data dir>/account.key`).
    #[arg(long)]
    key_file: PathBuf,
    /// Credits to withdraw (above zero).
    #[arg(long, value_name = "CREDITS", value_parser = super::text::positive_credits)]
    amount: Credits,
    /// Where the money goes outside rigmesh (a payout reference).
    #[arg(long)]
    destination: String,
}

pub(crate) fn run(args: WithdrawArgs) -> anyhow::Result<ExitCode> {
    let key = Keypair::from_seed(
        rigmesh_node::keyfile::read_seed(&args.key_file)
            .with_context(|| format!("reading {}", args.key_file.display()))?,
    );
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let (node, _dir) = connect(&args.set).await?;
        let quorum = node.quorum.clone().context("no coordinator set")?;
        let result = quorum.withdraw(&key, args.amount, &args.destination).await;
        node.stop().await?;
        let certificate = match result {
            Ok(certificate) => certificate,
            Err(rigmesh_node::quorum::DebitError::NoQuorum(e))
                if e.refusals
                    .values()
                    .any(|r| r.starts_with("held_for_review")) =>
            {
                let held = e
                    .refusals
                    .values()
                    .find(|r| r.starts_with("held_for_review"))
                    .cloned()
                    .unwrap_or_default();
                if args.set.json {
                    outln!(
                        "{}",
                        serde_json::json!({ "state": "held_for_review", "reason": held })
                    );
                } else {
                    outln!(
                        "{held}\nthe coordinators vote once an admin approves it \
                         (`rigmesh admin withdrawals approve <id>`) before it expires in an hour"
                    );
                }
                return Ok(ExitCode::from(super::EXIT_HELD));
            }
            Err(e) => anyhow::bail!("withdrawal not certified: {e}"),
        };
        let id = certificate.subject()?;
        if args.set.json {
            outln!(
                "{}",
                serde_json::json!({
                    "withdrawal": id.to_string(),
                    "seq": certificate.message.body.seq,
                    "amount": args.amount.to_string(),
                    "votes": certificate.votes.len(),
                    "certificate": hex::encode(certificate.to_bytes()?),
                })
            );
        } else {
            outln!(
                "withdrawal {id}: {} from {} to {:?}, certified by {} coordinators",
                args.amount,
                key.public(),
                args.destination,
                certificate.votes.len()
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
