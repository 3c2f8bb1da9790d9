//! `rigmesh dispute <lease>`: the customer's own observation that a lease
//! is not delivering. Every window the node would ack from now on is
//! disputed with it; the coordinators hold those windows' charge out of
//! the escrow until an operator reviews the case (`rigmesh admin disputes`).

use std::process::ExitCode;

use rigmesh_node::customer::runtime::LeaseStatus;

use super::client::{Api, NodeArgs};

/// What the customer observed.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Reason {
    /// The GPUs were unreachable or the work did not run.
    NotDelivered,
    /// Anything else; say what in --detail.
    Other,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  rigmesh dispute 3fa2c1 --reason not-delivered --detail \"ssh to the rig times out since 14:02\"
  rigmesh dispute 3fa2c1 --stop     # ack the windows again")]
pub(crate) struct DisputeArgs {
    /// The lease: its id, or the start of it (see `rigmesh leases`).
    lease: String,
    /// Why the windows are disputed.
    #[arg(long, value_enum, required_unless_present = "stop")]
    reason: Option<Reason>,
    /// What you observed (kept with the dispute for the reviewer, at most
    /// 256 bytes).
    #[arg(long, required_unless_present = "stop", default_value = "")]
    detail: String,
    /// Stop disputing: the windows from now on are acked again.
    #[arg(long, conflicts_with_all = ["reason"])]
    stop: bool,
    #[command(flatten)]
    node: NodeArgs,
}

pub(crate) fn run(args: DisputeArgs) -> anyhow::Result<ExitCode> {
    let api = Api::connect(&args.node)?;
    let lease = api.lease_id(&args.lease)?;
    let body = match args.reason {
        Some(reason) => serde_json::json!({
            "reason": match reason {
                Reason::NotDelivered => "not_delivered",
                Reason::Other => "other",
            },
            "detail": args.detail,
        }),
        None => serde_json::json!({ "stop": true }),
    };
    let answer = api.post(&format!("/v1/leases/{lease}/dispute"), &body)?;
    if answer.status == 400 || answer.status == 404 {
        anyhow::bail!("{}", answer.reason());
    }
    let status: LeaseStatus = answer.into("the disputed lease")?;
    if args.node.json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
    } else if args.stop {
        outln!(
            "lease {}: windows are acked again from now on",
            status.lease
        );
    } else {
        outln!(
            "lease {}: every window from now on is disputed; the coordinators hold its charge \
             for review (end the lease with `rigmesh end` to stop paying for it)",
            status.lease
        );
    }
    Ok(ExitCode::SUCCESS)
}
