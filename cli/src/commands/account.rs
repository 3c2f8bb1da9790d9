//! `rigmesh account`: what this node knows about its own account: the
//! spend across leases, each lease, the caps, alerts, and the suppliers it
//! has disputed windows of.

use std::process::ExitCode;

use rigmesh_node::customer::report::AccountReport;

use super::budget::print_alerts;
use super::client::{Api, NodeArgs};
use super::text;
use super::usage::{disputes_text, state_text};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  rigmesh account
  rigmesh account --leases 1000 --receipts 1000 --json")]
pub(crate) struct AccountArgs {
    /// How many of the leases that started last to list (10,000 at most).
    #[arg(long, default_value_t = 100, value_name = "N")]
    leases: usize,
    /// How many of the most recent receipts to list, each checked against
    /// the coordinator set (10,000 at most).
    #[arg(long, default_value_t = 100, value_name = "N")]
    receipts: usize,
    #[command(flatten)]
    node: NodeArgs,
}

pub(crate) fn run(args: AccountArgs) -> anyhow::Result<ExitCode> {
    let node = args.node;
    let api = Api::connect(&node)?;
    let report: AccountReport = api
        .get(&format!(
            "/v1/account?receipts={}&leases={}",
            args.receipts, args.leases
        ))?
        .into("the account")?;
    if node.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let a = &report.budget.account;
    outln!("account      {}", report.account);
    outln!(
        "spent        {} across {} lease{} ({} running)",
        report.spent,
        report.leases_total,
        if report.leases_total == 1 { "" } else { "s" },
        report.active_leases
    );
    outln!("account cap  {}", text::cap(a.cap, a.spent, a.remaining));
    outln!();
    if report.leases.is_empty() {
        outln!("no leases");
    } else {
        if report.leases.len() < report.leases_total {
            outln!(
                "the {} leases that started last (more with --leases N)",
                report.leases.len()
            );
        }
        outln!(
            "{:<12}  {:<12}  {:<30}  {:>10}  {:>6}  {:>8}  state",
            "lease",
            "supplier",
            "gpus",
            "spent",
            "acked",
            "disputed"
        );
        for l in &report.leases {
            outln!(
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
    outln!();
    if report.suppliers.is_empty() {
        outln!("no disputes with suppliers");
    } else {
        outln!("disputes with suppliers");
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
            outln!("  {}  {}{last}", text::short(&s.supplier), disputes_text(s));
        }
    }
    outln!();
    print_alerts(&report.budget.alerts)?;
    if !report.coordinators.is_empty() {
        outln!();
        outln!("at the coordinators");
        outln!(
            "  {:<12}  {:>12}  {:>12}  next debit",
            "coordinator",
            "balance",
            "escrowed"
        );
        for c in &report.coordinators {
            outln!(
                "  {:<12}  {:>12}  {:>12}  {}",
                text::short(&c.coordinator),
                c.balance.to_string(),
                c.escrowed.to_string(),
                c.next_seq
            );
        }
    }
    if !report.receipts.is_empty() {
        outln!();
        outln!(
            "receipts: the {} most recent of {} (check one with `rigmesh message verify`; bytes with --json)",
            report.receipts.len(),
            report.receipts_total
        );
        outln!(
            "  {:<24}  {:<12}  {:<12}  {:>12}  {:>5}  verified",
            "kind",
            "subject",
            "lease",
            "amount",
            "votes"
        );
        for r in &report.receipts {
            outln!(
                "  {:<24}  {:<12}  {:<12}  {:>12}  {:>5}  {}",
                r.kind.to_string(),
                text::short(&r.subject),
                r.lease
                    .map(|l| text::short(&l))
                    .unwrap_or_else(|| "-".into()),
                r.amount.to_string(),
                r.votes,
                if r.verified { "yes" } else { "NO" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
