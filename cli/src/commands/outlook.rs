//! `rigmesh forecast spend|earnings|market`: what the node's analytics
//! listener forecasts from its own hourly series: a customer's spend for
//! the next day, week and month and when its caps run out at that rate, a
//! supplier's earnings and utilisation, and the market's prices and
//! supply per GPU model, each with its 80 % interval.

use std::process::ExitCode;

use rigmesh_node::api::tokens::Bootstrap;
use rigmesh_node::trends::book::Kind;
use rigmesh_node::trends::reports::{
    CapRunOut, EarningsReport, ForecastView, MarketReport, MoneyTotal, SpendReport,
};
use rigmesh_protocol::UnixMillis;

use super::client::{Api, NodeArgs};
use super::text;

/// The analytics API's default address.
pub(crate) const ANALYTICS_API: &str = "127.0.0.1:9612";

/// Hours listed one by one; longer horizons are summed by day.
const HOURLY_ROWS: usize = 48;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  rigmesh forecast spend                      # the next 24 h, by the hour
  rigmesh forecast spend --horizon 7d --json
  rigmesh forecast earnings --data-dir supplier-data
  rigmesh forecast market --horizon 48h

The node's analytics listener (127.0.0.1:9612 unless --api says otherwise)
answers with the token of --token-file, or the node's bootstrap token.")]
pub(crate) struct OutlookArgs {
    /// How far ahead: 24h, 7d, 30d... (1 hour to 31 days).
    #[arg(long, default_value = "24h", value_parser = horizon)]
    horizon: String,
    #[command(flatten)]
    node: NodeArgs,
}

fn horizon(text: &str) -> Result<String, String> {
    rigmesh_node::trends::parse_horizon(text).map(|_| text.trim().to_owned())
}

fn connect(node: &NodeArgs, audience: Bootstrap) -> anyhow::Result<Api> {
    Api::connect_to(node, audience, ANALYTICS_API)
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<ExitCode> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(ExitCode::SUCCESS)
}

fn when(at: Option<UnixMillis>, now: UnixMillis) -> String {
    match at {
        Some(at) if at.0 <= now.0 => "already".to_owned(),
        Some(at) => format!(
            "at {} (in {})",
            text::utc(at),
            text::duration(at.since(now))
        ),
        None => "not within the forecast".to_owned(),
    }
}

fn print_totals(what: &str, totals: &[MoneyTotal]) -> anyhow::Result<()> {
    for t in totals {
        outln!(
            "{what} next {:<4} {:>14} credits   80 %: {} to {}   ({})",
            t.span,
            t.value.to_string(),
            t.lower,
            t.upper,
            t.method
        );
    }
    Ok(())
}

fn print_cap(cap: &CapRunOut, now: UnixMillis) -> anyhow::Result<()> {
    let what = match &cap.lease {
        Some(lease) => format!("lease {} cap", text::short(lease)),
        None => "account cap".to_owned(),
    };
    outln!(
        "{what} {} credits, {} spent, {} left: at this rate reached {}",
        cap.cap,
        cap.spent,
        cap.remaining,
        when(cap.run_out_at, now)
    );
    if cap.earliest_run_out_at != cap.run_out_at {
        outln!(
            "  at the high end of the interval: {}",
            when(cap.earliest_run_out_at, now)
        );
    }
    Ok(())
}

/// The forecast hour by hour, or by day past [`HOURLY_ROWS`] hours.
fn print_points(view: &ForecastView) -> anyhow::Result<()> {
    outln!(
        "{} ({}), by {}; method {}, {} h of history",
        view.series,
        view.unit,
        if view.points.len() > HOURLY_ROWS {
            "day"
        } else {
            "hour"
        },
        view.method,
        view.history_hours
    );
    let chunk = if view.points.len() > HOURLY_ROWS {
        24
    } else {
        1
    };
    for group in view.points.chunks(chunk) {
        let Some(first) = group.first() else { continue };
        let sum = |f: fn(&rigmesh_node::trends::reports::PointView) -> f64| {
            let total: f64 = group.iter().map(f).sum();
            // A level (a price, a share) is averaged over a day, not added.
            if view.kind == Kind::Flow || chunk == 1 {
                total
            } else {
                total / group.len() as f64
            }
        };
        outln!(
            "  {}  {:>12.4}   80 %: {:.4} to {:.4}",
            text::utc(first.at),
            sum(|p| p.value),
            sum(|p| p.lower),
            sum(|p| p.upper)
        );
    }
    Ok(())
}

/// `rigmesh forecast spend`.
pub(crate) fn spend(args: OutlookArgs) -> anyhow::Result<ExitCode> {
    let api = connect(&args.node, Bootstrap::Customer)?;
    let report: SpendReport = api
        .get(&format!("/v1/forecast/spend?horizon={}", args.horizon))?
        .into("the spend forecast")?;
    if args.node.json {
        return print_json(&report);
    }
    let now = report.generated_at;
    match &report.spend {
        None => outln!("no spend recorded yet: nothing to forecast"),
        Some(view) => {
            print_totals("spend", &report.totals)?;
            print_points(view)?;
        }
    }
    match &report.account_cap {
        Some(cap) => print_cap(cap, now)?,
        None => outln!("no account cap (rigmesh budget set --account ...)"),
    }
    for cap in &report.lease_caps {
        print_cap(cap, now)?;
    }
    if !report.running_leases.is_empty() {
        outln!("running leases");
        for l in &report.running_leases {
            outln!(
                "  {}  {} x{}  {} per GPU-hour  {} spent",
                text::short(&l.lease),
                l.gpu_model,
                l.gpus.len(),
                l.price_per_gpu_hour,
                l.spent
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `rigmesh forecast earnings`: with the supplier's token when the node
/// has one, else the customer's (any token with `analytics:read` will do).
pub(crate) fn earnings(args: OutlookArgs) -> anyhow::Result<ExitCode> {
    let api = connect(&args.node, Bootstrap::Supplier)
        .or_else(|_| connect(&args.node, Bootstrap::Customer))?;
    let report: EarningsReport = api
        .get(&format!("/v1/forecast/earnings?horizon={}", args.horizon))?
        .into("the earnings forecast")?;
    if args.node.json {
        return print_json(&report);
    }
    if report.earnings.is_none() {
        outln!("no earnings recorded yet: nothing to forecast");
    }
    print_totals("earnings", &report.totals)?;
    for view in [
        &report.earnings,
        &report.gpu_hours_sold,
        &report.utilisation,
    ]
    .into_iter()
    .flatten()
    {
        print_points(view)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `rigmesh forecast market`: with the customer's token when the node has
/// one, else the supplier's.
pub(crate) fn market(args: OutlookArgs) -> anyhow::Result<ExitCode> {
    let api = connect(&args.node, Bootstrap::Customer)
        .or_else(|_| connect(&args.node, Bootstrap::Supplier))?;
    let report: MarketReport = api
        .get(&format!("/v1/forecast/market?horizon={}", args.horizon))?
        .into("the market forecast")?;
    if args.node.json {
        return print_json(&report);
    }
    if report.models.is_empty() {
        outln!("no offers seen yet: nothing to forecast");
    }
    if let Some(view) = &report.leases_started {
        outln!("the whole market:");
        print_points(view)?;
    }
    for m in &report.models {
        match m.latest_price {
            Some([p10, p50, p90]) => outln!(
                "{}: price per GPU-hour now {p50:.4} (p10 {p10:.4}, p90 {p90:.4})",
                m.model
            ),
            None => outln!("{}:", m.model),
        }
        for view in [&m.price, &m.offers, &m.leases_started]
            .into_iter()
            .flatten()
        {
            print_points(view)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
