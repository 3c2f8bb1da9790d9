//! `rigmesh offers`: the market's live offers as the node sees them,
//! cheapest first, through the node's customer API.

use std::process::ExitCode;

use rigmesh_protocol::{Credits, Offer, Signed};

use super::client::{Api, NodeArgs};

/// Exit code when nothing matches the filters.
pub(crate) const EXIT_NO_MATCH: u8 = 4;

#[derive(Debug, clap::Args)]
pub(crate) struct OffersArgs {
    /// Only this GPU model (as NVML names it).
    #[arg(long)]
    gpu: Option<String>,
    /// Only offers at or below this price per GPU-hour (above zero).
    #[arg(long, value_name = "CREDITS", value_parser = super::text::positive_credits)]
    max_price: Option<Credits>,
    #[command(flatten)]
    node: NodeArgs,
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
    let api = Api::connect(&args.node)?;
    let mut path = "/v1/offers?".to_string();
    if let Some(gpu) = &args.gpu {
        path.push_str(&format!("gpu={}&", query_escape(gpu)));
    }
    if let Some(price) = &args.max_price {
        path.push_str(&format!("max_price={price}"));
    }
    let offers: Vec<Signed<Offer>> = api.get(&path)?.into("the offers")?;
    if args.node.json {
        outln!("{}", serde_json::to_string_pretty(&offers)?);
    } else if !offers.is_empty() {
        outln!(
            "{:<28} {:>4} {:>9} {:>10} {:>7}  {:<10} supplier",
            "gpu",
            "gpus",
            "mem GiB",
            "price/h",
            "hours",
            "region"
        );
        for o in &offers {
            let b = &o.body;
            outln!(
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
        errln!("no offer matches");
        return Ok(ExitCode::from(EXIT_NO_MATCH));
    }
    Ok(ExitCode::SUCCESS)
}
