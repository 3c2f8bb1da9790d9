//! `rigmesh usage <lease>`: one lease's metering windows as this node
//! answered them (acked or disputed, with the reason), what each cost, the
//! totals, the caps the spend counts against, and the supplier's record of
//! disputes.

use std::process::ExitCode;

use rigmesh_node::customer::records::{SupplierRecord, WindowStatus};
use rigmesh_node::customer::report::{LeaseState, UsageReport};

use super::client::{Api, NodeArgs};
use super::text;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  rigmesh usage 3fa2c1            # a unique prefix of the lease id will do
  rigmesh usage 3fa2c1 --windows 500 --json")]
pub(crate) struct UsageArgs {
    /// The lease: its id, or the start of it (see `rigmesh account`).
    lease: String,
    /// How many of the most recent windows to list (the node keeps the
    /// last 4096 of each lease).
    #[arg(long, default_value_t = 20, value_name = "N")]
    windows: usize,
    #[command(flatten)]
    node: NodeArgs,
}

/// "running", "stopped at the budget cap", ...
pub(crate) fn state_text(state: LeaseState) -> &'static str {
    match state {
        LeaseState::Running => "running",
        LeaseState::StoppedAtCap => "stopped at the budget cap",
        LeaseState::Ended => "ended",
        LeaseState::Unwatched => "not watched (made before the node restarted)",
    }
}

/// "3 disputes: overbilled 2, broken_chain 1".
pub(crate) fn disputes_text(record: &SupplierRecord) -> String {
    let reasons: Vec<String> = record
        .by_reason
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    format!(
        "{} dispute{}: {}",
        record.disputes,
        if record.disputes == 1 { "" } else { "s" },
        reasons.join(", ")
    )
}

pub(crate) fn run(args: UsageArgs) -> anyhow::Result<ExitCode> {
    let api = Api::connect(&args.node)?;
    let lease = api.lease_id(&args.lease)?;
    let report: UsageReport = api
        .get(&format!("/v1/usage/{lease}?limit={}", args.windows))?
        .into("the lease's usage")?;
    if args.node.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let l = &report.lease;
    outln!("lease      {}", l.lease);
    outln!("supplier   {}", l.supplier);
    outln!(
        "gpus       {} x {} (devices {:?}) at {} per GPU-hour for {} h",
        l.gpus.len(),
        l.gpu_model,
        l.gpus,
        l.price_per_gpu_hour,
        l.hours
    );
    outln!(
        "time       {} to {}, windows of {}",
        text::utc(l.starts_at),
        text::utc(l.ends_at),
        text::duration(l.window_ms)
    );
    outln!("state      {}", state_text(report.state));
    outln!(
        "spent      {} ({} windows acked, {} disputed)",
        l.spent,
        l.acked_windows,
        l.disputed_windows
    );
    let b = &report.budget;
    outln!(
        "lease cap  {}",
        text::cap(b.lease.cap, b.lease.spent, b.lease.remaining)
    );
    outln!(
        "account    {}",
        text::cap(b.account.cap, b.account.spent, b.account.remaining)
    );
    if let Some(record) = &report.supplier_record {
        outln!("supplier's record here: {}", disputes_text(record));
    }
    outln!();
    if report.windows.is_empty() {
        outln!("no windows answered yet");
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:>6}  {:<17}  {:>10}  {:>10}  answer",
        "window",
        "time in lease",
        "GPU-ms",
        "charge"
    );
    for w in &report.windows {
        let answer = match &w.status {
            WindowStatus::Acked => "acked".to_string(),
            WindowStatus::Disputed { reason, detail } => format!(
                "disputed: {} ({detail})",
                rigmesh_node::customer::records::reason_name(*reason)
            ),
        };
        outln!(
            "{:>6}  {:<17}  {:>10}  {:>10}  {answer}",
            w.seq,
            format!(
                "{}-{}",
                text::offset(w.window_start.since(l.starts_at)),
                text::offset(w.window_end.since(l.starts_at))
            ),
            w.billable_gpu_ms,
            w.charge.to_string()
        );
    }
    if report.earlier_windows > 0 {
        outln!(
            "({} earlier windows not listed; --windows N lists more)",
            report.earlier_windows
        );
    }
    Ok(ExitCode::SUCCESS)
}
