//! `rigmesh account`: what this node knows about its own account: the
//! spend across leases, each lease, the caps, alerts, and the suppliers it
//! has disputed windows of.

use std::process::ExitCode;

use rigmesh_node::customer::report::AccountReport;

use super::budget::print_alerts;
use super::client::{Api, NodeArgs};
use super::text;
use super::usage::{disputes_text, state_text};

pub(crate) fn run(node: NodeArgs) -> anyhow::Result<ExitCode> {
    let api = Api::connect(&node)?;
    let report: AccountReport = api.get("/v1/account")?.into("the account")?;
    if node.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let a = &report.budget.account;
    println!("account      {}", report.account);
    println!(
        "spent        {} across {} lease{} ({} running)",
        report.spent,
        report.leases.len(),
        if report.leases.len() == 1 { "" } else { "s" },
        report.active_leases
    );
    println!("account cap  {}", text::cap(a.cap, a.spent, a.remaining));
    println!();
    if report.leases.is_empty() {
        println!("no leases");
    } else {
        println!(
            "{:<12}  {:<12}  {:<30}  {:>10}  {:>6}  {:>8}  state",
            "lease", "supplier", "gpus", "spent", "acked", "disputed"
        );
        for l in &report.leases {
            println!(
                "{:<12}  {:<12}  {:<30}  {:>10}  {:>6}  {:>8}  {}",
                text::short(&l.lease),
                text::short(&l.supplier),
                format!("{} x {}", l.gpu_count, l.gpu_model),
                l.spent.to_string(),
                l.acked_windows,
                l.disputed_windows,
                state_text(l.state)
            );
        }
    }
    println!();
    if report.suppliers.is_empty() {
        println!("no disputes with suppliers");
    } else {
        println!("disputes with suppliers");
        for s in &report.suppliers {
            let last = s
                .last
                .as_ref()
                .map(|d| {
                    format!(
                        " (last: lease {} window {}, {})",
                        text::short(&d.lease),
                        d.seq,
                        d.detail
                    )
                })
                .unwrap_or_default();
            println!("  {}  {}{last}", text::short(&s.supplier), disputes_text(s));
        }
    }
    println!();
    print_alerts(&report.budget.alerts);
    Ok(ExitCode::SUCCESS)
}
