//! `rigmesh offers`: the market's live offers as the node sees them,
//! cheapest first, through the node's customer API, or with `--public`
//! through any node's public API (no token; every node serves it).

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
    /// Ask the node's public API instead (no token; --api defaults to
    /// 127.0.0.1:9620): any node serves it, a supplier's too.
    #[arg(long)]
    public: bool,
    #[command(flatten)]
    node: NodeArgs,
}

/// Pages read at most (200 offers each from the public API, 1000 from
/// the customer API).
const MAX_PAGES: usize = 50;

/// Every page of the customer API's offers: the body of each page is an
/// array, and its `next-cursor` header says where the next one starts.
fn own_node_offers(args: &OffersArgs, query: &str) -> anyhow::Result<Vec<Signed<Offer>>> {
    let api = Api::connect(&args.node)?;
    let mut offers = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut path = format!("/v1/offers?{query}limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = api.get(&path)?;
        cursor = page.next.clone();
        let listed: Vec<Signed<Offer>> = page.into("the offers")?;
        offers.extend(listed);
        if cursor.is_none() {
            break;
        }
    }
    Ok(offers)
}

/// Every page of the public API's offers.
fn public_offers(args: &OffersArgs, query: &str) -> anyhow::Result<Vec<Signed<Offer>>> {
    let customer_default: std::net::SocketAddr = super::client::CUSTOMER_API.parse()?;
    let addr = if args.node.api == customer_default {
        super::client::PUBLIC_API.parse()?
    } else {
        args.node.api
    };
    let api = Api::open(addr);
    let mut offers = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut path = format!("/v1/offers?{query}limit=200");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page: serde_json::Value = api.get(&path)?.into("the offers")?;
        let listed: Vec<Signed<Offer>> =
            serde_json::from_value(page.get("offers").cloned().unwrap_or_default())?;
        offers.extend(listed);
        cursor = page
            .get("next_cursor")
            .and_then(|c| c.as_str())
            .map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    Ok(offers)
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
    let mut query = String::new();
    if let Some(gpu) = &args.gpu {
        query.push_str(&format!("gpu={}&", query_escape(gpu)));
    }
    if let Some(price) = &args.max_price {
        query.push_str(&format!("max_price={price}&"));
    }
    let offers: Vec<Signed<Offer>> = if args.public {
        public_offers(&args, &query)?
    } else {
        own_node_offers(&args, &query)?
    };
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
