//! `rigmesh offers`: the market's live offers as the node sees them,
//! cheapest first, through the node's customer API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use rigmesh_node::api::local::{read_token, Scope};
use rigmesh_protocol::{Credits, Offer, Signed};

/// Exit code when nothing matches the filters.
pub(crate) const EXIT_NO_MATCH: u8 = 4;

#[derive(Debug, clap::Args)]
pub(crate) struct OffersArgs {
    /// The node's data directory (its API token is read from there).
    #[arg(long, default_value = "rigmesh-data")]
    data_dir: PathBuf,
    /// The node's customer API address.
    #[arg(long, default_value = "127.0.0.1:9610")]
    api: SocketAddr,
    /// Only this GPU model (as NVML names it).
    #[arg(long)]
    gpu: Option<String>,
    /// Only offers at or below this price per GPU-hour.
    #[arg(long)]
    max_price: Option<Credits>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

pub(crate) fn run(args: OffersArgs) -> anyhow::Result<ExitCode> {
    let token = read_token(&args.data_dir, Scope::Customer).with_context(|| {
        format!(
            "reading the customer API token of the node in {}",
            args.data_dir.display()
        )
    })?;
    let mut url = format!("http://{}/v1/offers?", args.api);
    if let Some(gpu) = &args.gpu {
        url.push_str(&format!("gpu={}&", query_escape(gpu)));
    }
    if let Some(price) = &args.max_price {
        url.push_str(&format!("max_price={price}"));
    }
    let offers: Vec<Signed<Offer>> = ureq::get(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .with_context(|| format!("asking the node at {}", args.api))?
        .body_mut()
        .read_json()
        .context("reading the node's answer")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&offers)?);
    } else if !offers.is_empty() {
        println!(
            "{:<28} {:>4} {:>9} {:>10} {:>7}  {:<10} supplier",
            "gpu", "gpus", "mem GiB", "price/h", "hours", "region"
        );
        for o in &offers {
            let b = &o.body;
            println!(
                "{:<28} {:>4} {:>9} {:>10} {:>7}  {:<10} {}",
                b.gpu_model,
                b.gpu_count,
                b.gpu_memory_mib / 1024,
                b.price_per_gpu_hour.to_string(),
                format!("{}-{}", b.min_hours, b.max_hours),
                b.region,
                &b.supplier.to_string()[..12]
            );
        }
    }
    if offers.is_empty() {
        eprintln!("no offer matches");
        return Ok(ExitCode::from(EXIT_NO_MATCH));
    }
    Ok(ExitCode::SUCCESS)
}
