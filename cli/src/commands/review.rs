//! `rigmesh admin review list|ack`: a coordinator's suspicious-activity
//! review queue (refusal bursts, flooding or banned peers, large deposits,
//! held withdrawals, books that disagree), read and acknowledged through
//! its operator API like `rigmesh audit` (listing needs `operator:read`,
//! acknowledging `operator:review`; the operator bootstrap token in the
//! data directory by default).

use std::process::ExitCode;

use rigmesh_node::api::tokens::Bootstrap;

use super::client::{Api, NodeArgs, OPERATOR_API};

/// Review queue commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ReviewQueueCommand {
    /// The open review items, newest first (`--all`: acknowledged too).
    List(ListArgs),
    /// Acknowledge one item with a note saying what you made of it.
    Ack(AckArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// Show acknowledged items too.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct AckArgs {
    /// The item's id, as `list` shows it.
    id: u64,
    /// What you made of it (required; at most 1000 bytes).
    #[arg(long)]
    note: String,
    #[command(flatten)]
    node: NodeArgs,
}

/// The operator API of the node: `--api`, or 127.0.0.1:9630.
fn operator(node: &NodeArgs) -> anyhow::Result<Api> {
    Api::connect_to(node, Bootstrap::Operator, OPERATOR_API)
}

fn text<'a>(value: &'a serde_json::Value, key: &str) -> &'a str {
    value.get(key).and_then(|v| v.as_str()).unwrap_or("-")
}

fn number(value: &serde_json::Value, key: &str) -> u64 {
    value.get(key).and_then(|v| v.as_u64()).unwrap_or(0)
}

pub(crate) fn run(cmd: ReviewQueueCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ReviewQueueCommand::List(args) => {
            let api = operator(&args.node)?;
            let state = if args.all { "all" } else { "open" };
            let page: serde_json::Value = api
                .get(&format!("/v1/review?state={state}"))?
                .into("the review queue")?;
            if args.node.json {
                outln!("{}", serde_json::to_string_pretty(&page)?);
                return Ok(ExitCode::SUCCESS);
            }
            let items = page
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default();
            if items.is_empty() {
                outln!(
                    "{}",
                    if args.all {
                        "no review items"
                    } else {
                        "no open review items"
                    }
                );
                return Ok(ExitCode::SUCCESS);
            }
            outln!(
                "{:>6}  {:<12}  {:<8}  {:<22}  {:>7}  {:<13}  {:<13}  subject / detail",
                "id",
                "state",
                "severity",
                "rule",
                "count",
                "first seen",
                "last seen"
            );
            for item in &items {
                outln!(
                    "{:>6}  {:<12}  {:<8}  {:<22}  {:>7}  {:<13}  {:<13}  {}",
                    number(item, "id"),
                    text(item, "state"),
                    text(item, "severity"),
                    text(item, "rule"),
                    number(item, "count"),
                    number(item, "first_seen"),
                    number(item, "last_seen"),
                    text(item, "subject")
                );
                outln!("{:>8}{}", "", text(item, "detail"));
                if text(item, "state") == "acknowledged" {
                    outln!(
                        "{:>8}acknowledged by {} at {}: {}",
                        "",
                        text(item, "acknowledged_by"),
                        number(item, "acknowledged_at"),
                        text(item, "note")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ReviewQueueCommand::Ack(args) => {
            let note = args.note.trim();
            if note.is_empty() {
                anyhow::bail!("--note is required: say what you made of the item");
            }
            let api = operator(&args.node)?;
            let item: serde_json::Value = api
                .post(
                    &format!("/v1/review/{}/ack", args.id),
                    &serde_json::json!({ "note": note }),
                )?
                .into(&format!("acknowledging review item {}", args.id))?;
            if args.node.json {
                outln!("{}", serde_json::to_string_pretty(&item)?);
            } else {
                outln!(
                    "review item {} ({} about {}) acknowledged by {}",
                    number(&item, "id"),
                    text(&item, "rule"),
                    text(&item, "subject"),
                    text(&item, "acknowledged_by")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
