//! `rigmesh budget show` and `rigmesh budget set`: the caps on what this
//! node's leases may cost (all together, and each on its own), the spend
//! against them and the alerts raised at 50, 80 and 100 %.

use std::process::ExitCode;
use std::str::FromStr;

use rigmesh_node::customer::records::AlertRecord;
use rigmesh_node::customer::report::BudgetReport;
use rigmesh_protocol::{Credits, Severity};

use super::client::{Api, NodeArgs};
use super::text;

/// Caps on spending.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum BudgetCommand {
    /// Show the caps, what is spent against them, and the alerts raised.
    Show(NodeArgs),
    /// Set or remove a cap: the account's (all leases together) or one
    /// lease's. Past a cap the node stops paying the lease's windows.
    #[command(after_help = "\
Examples:
  rigmesh budget set --account 12.50
  rigmesh budget set --lease 3fa2c1 --cap 3.00
  rigmesh budget set --account none      # remove the account's cap")]
    Set(SetArgs),
}

/// A cap as typed: an amount above zero, or `none`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CapArg(Option<Credits>);

impl FromStr for CapArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("none") {
            return Ok(CapArg(None));
        }
        let cap: Credits = s.parse().map_err(|e| format!("{e}"))?;
        if cap.is_negative() || cap.is_zero() {
            return Err(format!(
                "{cap} is not a cap; give an amount above zero, or `none` to remove the cap"
            ));
        }
        Ok(CapArg(Some(cap)))
    }
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["account", "lease"])))]
pub(crate) struct SetArgs {
    /// Cap on the spend of all this node's leases together, in credits
    /// (e.g. 12.50), or `none`.
    #[arg(long, value_name = "CREDITS")]
    account: Option<CapArg>,
    /// The lease to cap: its id or the start of it (see `rigmesh account`).
    #[arg(long, requires = "cap", value_name = "LEASE")]
    lease: Option<String>,
    /// The lease's cap, in credits (e.g. 3.00), or `none`.
    #[arg(long, requires = "lease", value_name = "CREDITS")]
    cap: Option<CapArg>,
    #[command(flatten)]
    node: NodeArgs,
}

pub(crate) fn print_alerts(alerts: &[AlertRecord]) -> anyhow::Result<()> {
    if alerts.is_empty() {
        outln!("no budget alerts");
        return Ok(());
    }
    outln!("alerts");
    for a in alerts {
        let severity = match a.severity {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        };
        outln!(
            "  {}  {:<10}  {severity:<8}  {}",
            text::utc(a.created_at),
            a.rule,
            a.message
        );
    }
    Ok(())
}

pub(crate) fn print_budget(report: &BudgetReport) -> anyhow::Result<()> {
    let a = &report.account;
    outln!("account cap  {}", text::cap(a.cap, a.spent, a.remaining));
    outln!("spent        {} across all leases", a.spent);
    if report.leases.is_empty() {
        outln!("lease caps   none");
    } else {
        outln!("lease caps");
        outln!(
            "  {:<12}  {:>10}  {:>10}  {:>10}  state",
            "lease",
            "cap",
            "spent",
            "left"
        );
        for l in &report.leases {
            outln!(
                "  {:<12}  {:>10}  {:>10}  {:>10}  {}",
                text::short(&l.lease),
                l.cap.cap.map(|c| c.to_string()).unwrap_or_default(),
                l.cap.spent.to_string(),
                l.cap.remaining.map(|c| c.to_string()).unwrap_or_default(),
                if l.stopped_at_cap {
                    "stopped at the cap"
                } else {
                    "paying"
                }
            );
        }
    }
    print_alerts(&report.alerts)
}

fn show_or_json(report: &BudgetReport, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        outln!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print_budget(report)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn run(command: BudgetCommand) -> anyhow::Result<ExitCode> {
    match command {
        BudgetCommand::Show(node) => {
            let api = Api::connect(&node)?;
            let report: BudgetReport = api.get("/v1/budget")?.into("the budget")?;
            show_or_json(&report, node.json)
        }
        BudgetCommand::Set(args) => {
            let api = Api::connect(&args.node)?;
            let body = match (args.account, args.lease, args.cap) {
                (Some(CapArg(cap)), None, None) => serde_json::json!({ "account": cap }),
                (None, Some(lease), Some(CapArg(cap))) => {
                    let lease = api.lease_id(&lease)?;
                    serde_json::json!({ "lease": lease, "cap": cap })
                }
                // clap's group and `requires` make every other shape a
                // usage error before this point.
                _ => anyhow::bail!("give --account, or --lease with --cap"),
            };
            let report: BudgetReport = api.put("/v1/budget", &body)?.into("the new budget")?;
            show_or_json(&report, args.node.json)
        }
    }
}
