//! `rigmesh bid` and `rigmesh leases`: rent GPUs through the node's
//! customer API, and see the leases with what they cost so far.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use rigmesh_node::api::local::{read_token, Scope};
use rigmesh_node::customer::commands::{BidRequest, LeaseStatus};
use rigmesh_protocol::Credits;

use super::offers::EXIT_NO_MATCH;

/// Where the node is.
#[derive(Debug, clap::Args)]
pub(crate) struct NodeArgs {
    /// The node's data directory (its API token is read from there).
    #[arg(long, default_value = "rigmesh-data")]
    data_dir: PathBuf,
    /// The node's customer API address.
    #[arg(long, default_value = "127.0.0.1:9610")]
    api: SocketAddr,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BidArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// GPU model, as offers name it (see `rigmesh offers`).
    #[arg(long)]
    gpu: String,
    /// GPUs wanted.
    #[arg(long, default_value_t = 1)]
    count: u16,
    /// Most you pay per GPU-hour.
    #[arg(long)]
    max_price: Credits,
    /// Lease length, hours.
    #[arg(long)]
    hours: u32,
    /// Stop paying once the lease has cost this much.
    #[arg(long)]
    budget: Option<Credits>,
    /// Least memory per GPU, MiB.
    #[arg(long, default_value_t = 0)]
    min_memory_mib: u64,
    /// Region wanted.
    #[arg(long)]
    region: Option<String>,
    /// Metering window, seconds.
    #[arg(long, default_value_t = 60)]
    window_secs: u32,
    /// Least supplier reputation in basis points (10000 is spotless,
    /// suppliers without reports count as 5000).
    #[arg(long, default_value_t = 0)]
    min_reputation_bp: u16,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn token(node: &NodeArgs) -> anyhow::Result<String> {
    read_token(&node.data_dir, Scope::Customer).with_context(|| {
        format!(
            "reading the customer API token of the node in {}",
            node.data_dir.display()
        )
    })
}

fn print_lease(lease: &LeaseStatus) {
    println!("lease      {}", lease.lease);
    println!("supplier   {}", lease.supplier);
    println!(
        "gpus       {} x {} (devices {:?})",
        lease.gpus.len(),
        lease.gpu_model,
        lease.gpus
    );
    println!(
        "price      {} per GPU-hour for {} h",
        lease.price_per_gpu_hour, lease.hours
    );
    println!("at most    {} (the amount to escrow)", lease.max_cost);
    println!(
        "spent      {} ({} windows acked, {} disputed){}",
        lease.spent,
        lease.acked_windows,
        lease.disputed_windows,
        if lease.stopped_at_cap {
            ", stopped at the budget cap"
        } else {
            ""
        }
    );
}

pub(crate) fn bid(args: BidArgs) -> anyhow::Result<ExitCode> {
    let token = token(&args.node)?;
    let request = BidRequest {
        gpu: args.gpu,
        count: args.count,
        max_price: args.max_price,
        hours: args.hours,
        min_memory_mib: args.min_memory_mib,
        region: args.region,
        budget: args.budget,
        window_secs: Some(args.window_secs),
        min_reputation_bp: args.min_reputation_bp,
        wait_secs: None,
    };
    eprintln!(
        "looking for {} x {} at most {} per GPU-hour...",
        request.count, request.gpu, request.max_price
    );
    let mut response = agent()
        .post(&format!("http://{}/v1/bid", args.node.api))
        .header("Authorization", &format!("Bearer {token}"))
        .send_json(&request)
        .with_context(|| format!("asking the node at {}", args.node.api))?;
    let status = response.status().as_u16();
    let body: serde_json::Value = response
        .body_mut()
        .read_json()
        .context("reading the node's answer")?;
    if status == 200 {
        let lease: LeaseStatus = serde_json::from_value(body.clone())?;
        if args.node.json {
            println!("{}", serde_json::to_string_pretty(&body)?);
        } else {
            print_lease(&lease);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let reason = body
        .get("reason")
        .and_then(|r| r.as_str())
        .unwrap_or("no reason given")
        .to_string();
    if status == 404 {
        if args.node.json {
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        eprintln!("no match: {reason}");
        return Ok(ExitCode::from(EXIT_NO_MATCH));
    }
    bail!("bid failed ({status}): {reason}")
}

pub(crate) fn leases(node: NodeArgs) -> anyhow::Result<ExitCode> {
    let token = token(&node)?;
    let mut response = agent()
        .get(&format!("http://{}/v1/leases", node.api))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .with_context(|| format!("asking the node at {}", node.api))?;
    if response.status().as_u16() != 200 {
        let text = response.body_mut().read_to_string().unwrap_or_default();
        bail!("the node refused ({}): {}", response.status(), text.trim());
    }
    let leases: Vec<LeaseStatus> = response.body_mut().read_json()?;
    if node.json {
        println!("{}", serde_json::to_string_pretty(&leases)?);
    } else if leases.is_empty() {
        println!("no leases");
    } else {
        for lease in &leases {
            print_lease(lease);
            println!();
        }
    }
    Ok(ExitCode::SUCCESS)
}
