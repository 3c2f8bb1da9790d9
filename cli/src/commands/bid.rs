//! `rigmesh bid` and `rigmesh leases`: rent GPUs through the node's
//! customer API (at once, or waiting up to `--wait` for an offer), and see
//! the leases with what they cost so far.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use rigmesh_node::customer::commands::{BidRequest, LeaseStatus};
use rigmesh_node::customer::standing::{BidState, BidStatus};
use rigmesh_protocol::rules::{MAX_GPUS, MAX_LEASE_HOURS, MAX_WINDOW_SECS};
use rigmesh_protocol::Credits;

use super::client::{Api, NodeArgs};
use super::offers::EXIT_NO_MATCH;
use super::text;

/// Exit code after Ctrl-C cancelled a waiting bid (the shell's 128 + SIGINT).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// How often a waiting bid is polled.
const POLL: Duration = Duration::from_secs(2);

/// A progress line is printed at least this often while waiting.
const PROGRESS_EVERY_MS: u64 = 30_000;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  rigmesh bid --gpu \"NVIDIA H100 80GB HBM3\" --count 2 --max-price 2.50 --hours 4
  rigmesh bid --gpu \"NVIDIA A100-SXM4-80GB\" --max-price 1.80 --hours 1 --budget 5 --wait 10m

Exit codes: 0 leased, 4 nothing matched (the reason is given in numbers),
1 any other error, 2 bad arguments, 130 interrupted while waiting.")]
pub(crate) struct BidArgs {
    /// GPU model, exactly as offers name it (see `rigmesh offers`).
    #[arg(long)]
    gpu: String,
    /// GPUs wanted, all from one supplier (1 to 64).
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_GPUS)))]
    count: u16,
    /// Most you pay per GPU-hour, in credits, above zero (e.g. 2.50).
    #[arg(long, value_name = "CREDITS", value_parser = text::positive_credits)]
    max_price: Credits,
    /// Lease length, hours (1 to 8784, a year; each supplier also has its
    /// own limits).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LEASE_HOURS)))]
    hours: u32,
    /// Stop paying once this lease has cost this much (see also `rigmesh
    /// budget set --account` for a cap over all leases).
    #[arg(long, value_name = "CREDITS", value_parser = text::positive_credits)]
    budget: Option<Credits>,
    /// Least memory per GPU, MiB.
    #[arg(long, default_value_t = 0)]
    min_memory_mib: u64,
    /// Region wanted (exact, as offers name it).
    #[arg(long)]
    region: Option<String>,
    /// Metering window, seconds (1 to 3600): each window is attested,
    /// checked and paid on its own.
    #[arg(long, default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WINDOW_SECS)))]
    window_secs: u32,
    /// Least supplier reputation in basis points, 0 to 10000 (10000 is
    /// spotless, suppliers without reports count as 5000).
    #[arg(long, default_value_t = 0, value_name = "BP",
          value_parser = clap::value_parser!(u16).range(0..=10_000))]
    min_reputation_bp: u16,
    /// If nothing matches now, wait this long for a matching offer (e.g.
    /// 90s, 5m, 1h; at most 24h). The bid is announced to suppliers, and
    /// progress is printed while waiting; Ctrl-C cancels it.
    #[arg(long, value_name = "DURATION", value_parser = text::parse_wait)]
    wait: Option<u64>,
    #[command(flatten)]
    node: NodeArgs,
}

fn print_lease(lease: &LeaseStatus) -> anyhow::Result<()> {
    outln!("lease      {}", lease.lease);
    outln!("state      {}", super::usage::state_text(lease.state));
    outln!("supplier   {}", lease.supplier);
    outln!(
        "gpus       {} x {} (devices {:?})",
        lease.gpus.len(),
        lease.gpu_model,
        lease.gpus
    );
    outln!(
        "price      {} per GPU-hour for {} h",
        lease.price_per_gpu_hour,
        lease.hours
    );
    outln!("at most    {} (the amount to escrow)", lease.max_cost);
    if let Some(escrowed) = lease.escrowed {
        outln!("escrowed   {escrowed}");
    }
    outln!(
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
    if let Some(s) = &lease.settlement {
        outln!(
            "settled    {} paid for {} window{}, {} refunded{}",
            s.paid,
            s.windows,
            if s.windows == 1 { "" } else { "s" },
            s.refunded,
            if s.closed {
                " (final)"
            } else {
                "; the final settlement refunds the rest"
            }
        );
    }
    Ok(())
}

/// Prints the lease (text, or JSON with `waited_ms` when the bid could
/// wait) and exits 0.
fn leased(
    lease: &LeaseStatus,
    json: bool,
    waited: Option<(u64, Option<&BidStatus>)>,
) -> anyhow::Result<ExitCode> {
    if json {
        let mut value = serde_json::to_value(lease)?;
        if let (Some((ms, bid)), Some(object)) = (waited, value.as_object_mut()) {
            object.insert("waited_ms".into(), ms.into());
            if let Some(bid) = bid {
                object.insert("bid".into(), bid.id.to_string().into());
            }
        }
        outln!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        if let Some((ms, Some(_))) = waited {
            errln!("leased after waiting {}", text::duration(ms));
        }
        print_lease(lease)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn no_match(reason: &str, json: bool, body: &serde_json::Value) -> anyhow::Result<ExitCode> {
    if json {
        outln!("{}", serde_json::to_string_pretty(body)?);
    }
    errln!("no match: {reason}");
    Ok(ExitCode::from(EXIT_NO_MATCH))
}

pub(crate) fn bid(args: BidArgs) -> anyhow::Result<ExitCode> {
    let api = Api::connect(&args.node)?;
    let json = args.node.json;
    let request = BidRequest {
        gpu: args.gpu,
        count: args.count,
        max_price: args.max_price,
        hours: args.hours,
        min_memory_mib: args.min_memory_mib,
        region: args.region,
        budget: args.budget,
        window_secs: Some(args.window_secs),
        wait_secs: args.wait,
        min_reputation_bp: args.min_reputation_bp,
    };
    errln!(
        "looking for {} x {} at most {} per GPU-hour...",
        request.count,
        request.gpu,
        request.max_price
    );
    let answer = api.post("/v1/bid", &request)?;
    let waits = request.wait_secs.is_some_and(|w| w > 0);
    match answer.status {
        200 => {
            let lease: LeaseStatus = answer.into("the lease")?;
            leased(&lease, json, waits.then_some((0, None)))
        }
        202 => {
            let status: BidStatus = answer.into("the standing bid")?;
            wait_for(&api, status, json)
        }
        404 => no_match(&answer.reason(), json, &answer.body),
        408 => bail!(
            "bid failed (408): the node did not agree a lease within its request timeout ({}); \
             it orders no escrow for a bid nobody waits for, and ends at once a lease made \
             after the timeout (see `rigmesh leases`)",
            answer.reason()
        ),
        status => bail!("bid failed ({status}): {}", answer.reason()),
    }
}

/// Ctrl-C while a bid waits. The handler is in place once this exists, so
/// a Ctrl-C after the "Ctrl-C cancels" line is never the default kill.
struct Interrupts {
    runtime: tokio::runtime::Runtime,
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        #[cfg(unix)]
        let signal = {
            let _inside = runtime.enter();
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?
        };
        Ok(Interrupts {
            runtime,
            #[cfg(unix)]
            signal,
        })
    }

    /// Waits up to `timeout`; true when Ctrl-C came meanwhile.
    #[cfg(unix)]
    fn wait(&mut self, timeout: Duration) -> bool {
        let signal = &mut self.signal;
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, signal.recv()).await.is_ok() })
    }

    /// Waits `timeout` (Ctrl-C ends the process as usual here).
    #[cfg(not(unix))]
    fn wait(&mut self, timeout: Duration) -> bool {
        self.runtime.block_on(tokio::time::sleep(timeout));
        false
    }
}

/// Polls a standing bid until it is leased or its wait ends, printing
/// progress to stderr.
fn wait_for(api: &Api, mut status: BidStatus, json: bool) -> anyhow::Result<ExitCode> {
    let total = status.wait_until.since(status.placed_at);
    errln!(
        "nothing matches now: {}",
        status.reason.as_deref().unwrap_or("no reason given")
    );
    let mut interrupts = Interrupts::new()?;
    errln!(
        "bid {} stands until {} ({}); suppliers have {} it. Ctrl-C cancels.",
        text::short(&status.id),
        text::utc(status.wait_until),
        text::duration(total),
        if status.published {
            "been told of"
        } else {
            "not yet been told of (no peers yet; retrying)"
        }
    );
    let path = format!("/v1/bids/{}", status.id);
    let mut said = status.reason.clone();
    let mut said_at = 0;
    let mut progress = super::progress::Progress::new("waiting");
    loop {
        if status.state != BidState::Waiting {
            progress.done();
        }
        match status.state {
            BidState::Waiting => {}
            BidState::Leased => {
                let Some(lease) = &status.lease else {
                    bail!("the node says the bid was leased but shows no lease");
                };
                return leased(lease, json, Some((status.waited_ms, Some(&status))));
            }
            BidState::NoMatch => {
                let reason = status.reason.clone().unwrap_or_default();
                let body = serde_json::json!({
                    "error": "no_match",
                    "reason": reason,
                    "bid": status.id,
                    "waited_ms": status.waited_ms,
                });
                errln!(
                    "waited {}; nothing was leased",
                    text::duration(status.waited_ms)
                );
                return no_match(&reason, json, &body);
            }
            BidState::Cancelled => bail!("bid {} was cancelled", status.id),
        }
        if interrupts.wait(POLL) {
            progress.done();
            let answer = api.delete(&path)?;
            if answer.ok() {
                errln!("bid {} cancelled", text::short(&status.id));
                return Ok(ExitCode::from(EXIT_INTERRUPTED));
            }
            // It ended while we asked (leased, most likely): show how.
            errln!("could not cancel: {}", answer.reason());
        }
        status = api.get(&path)?.into("the standing bid")?;
        if status.state == BidState::Waiting && progress.on_terminal() {
            // On a terminal: one line, redrawn at every poll.
            progress.show(&format!(
                "{} of {}; {}",
                text::duration(status.waited_ms),
                text::duration(total),
                status.reason.as_deref().unwrap_or("no match yet")
            ));
        } else if status.state == BidState::Waiting
            && (status.reason != said || status.waited_ms >= said_at + PROGRESS_EVERY_MS)
        {
            errln!(
                "waiting {} of {}: {}",
                text::duration(status.waited_ms),
                text::duration(total),
                status.reason.as_deref().unwrap_or("no match yet")
            );
            said.clone_from(&status.reason);
            said_at = status.waited_ms;
        }
    }
}

pub(crate) fn leases(node: NodeArgs) -> anyhow::Result<ExitCode> {
    let api = Api::connect(&node)?;
    let leases: Vec<LeaseStatus> = api.get("/v1/leases")?.into("the leases")?;
    if node.json {
        outln!("{}", serde_json::to_string_pretty(&leases)?);
    } else if leases.is_empty() {
        outln!("no leases");
    } else {
        for lease in &leases {
            print_lease(lease)?;
            outln!();
        }
    }
    Ok(ExitCode::SUCCESS)
}
