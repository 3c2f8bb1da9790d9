//! `rigmesh end <lease>`: end a running lease early. The node signs a
//! termination; the supplier attests the window in progress as the last
//! one and then settles, refunding the rest of the escrow.

use std::process::ExitCode;

use rigmesh_node::customer::runtime::LeaseStatus;

use super::client::{Api, NodeArgs};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  rigmesh end 3fa2c1              # a unique prefix of the lease id will do")]
pub(crate) struct EndArgs {
    /// The lease: its id, or the start of it (see `rigmesh leases`).
    lease: String,
    #[command(flatten)]
    node: NodeArgs,
}

pub(crate) fn run(args: EndArgs) -> anyhow::Result<ExitCode> {
    let api = Api::connect(&args.node)?;
    let lease = api.lease_id(&args.lease)?;
    let answer = api.post(&format!("/v1/leases/{lease}/end"), &serde_json::json!({}))?;
    if answer.status == 409 {
        // Already ended, or the supplier refused: the reason says which.
        anyhow::bail!("{}", answer.reason());
    }
    let status: LeaseStatus = answer.into("the ended lease")?;
    if args.node.json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        outln!(
            "lease {} ends after the window in progress; spent {} so far{}",
            status.lease,
            status.spent,
            status
                .escrowed
                .map(|e| format!(
                    ", the rest of the {e} escrowed comes back at the final settlement"
                ))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
