//! `rigmesh admin disputes`: the review queue of dispute cases. A case is
//! the charge of the windows one settlement held out of a lease's escrow
//! because the customer disputed them for a reason no rule decides (the
//! GPUs not delivered, anything else). An operator reads the evidence
//! (`show`: the supplier's signed GPU samples of each held window, the
//! customer's reasons and observations) and decides (`resolve`): the
//! decision is signed with an admin key, takes effect once a quorum of
//! coordinators certifies it, and counts as a dispute lost by the party
//! it goes against.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use rigmesh_node::admin::{case_files as files, held, ResolutionOutcome};
use rigmesh_protocol::{
    Credits, DecidedAgainst, DisputeResolution, Id, Keypair, Kind, SettlementRequest, Signed,
    UnixMillis, PROTOCOL_VERSION,
};

use super::admin::{connect, SetArgs};

#[derive(Debug, Subcommand)]
pub(crate) enum DisputesCommand {
    /// List the open cases the coordinators hold.
    List(SetArgs),
    /// Show one case with its evidence.
    Show(CaseArgs),
    /// Decide one case (signed by an admin key, certified by a quorum).
    Resolve(ResolveArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct CaseArgs {
    #[command(flatten)]
    pub(crate) set: SetArgs,
    /// The case: `LEASE:SETTLEMENT` as `list` prints it.
    case: String,
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Decision {
    /// The windows were delivered: the supplier gets everything held and
    /// the customer loses the dispute.
    ForSupplier,
    /// They were not: everything held goes back to the customer and the
    /// supplier loses the dispute.
    ForCustomer,
    /// Part of it: `--supplier-share` to the supplier, the rest back; no
    /// one loses.
    Split,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  rigmesh admin disputes resolve -c coord.toml --admin-key admin.key 3fa2…:4 \\
      --decision for-customer --note \"rig logs show the GPUs offline 14:02-15:10\"
  rigmesh admin disputes resolve -c coord.toml --admin-key admin.key 3fa2…:4 \\
      --decision split --supplier-share 0.40 --note \"half the window delivered\"")]
pub(crate) struct ResolveArgs {
    #[command(flatten)]
    pub(crate) set: SetArgs,
    /// The deciding admin key file (hex seed).
    #[arg(long)]
    pub(crate) admin_key: PathBuf,
    /// The case: `LEASE:SETTLEMENT` as `list` prints it.
    pub(crate) case: String,
    /// Who the held amount goes to.
    #[arg(long, value_enum)]
    pub(crate) decision: Decision,
    /// With `--decision split`: credits to the supplier (less than what
    /// is held).
    #[arg(long, value_parser = super::text::positive_credits)]
    pub(crate) supplier_share: Option<Credits>,
    /// Why, for both parties and the audit trail (at most 256 bytes).
    #[arg(long)]
    pub(crate) note: String,
}

pub(crate) async fn run(cmd: DisputesCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DisputesCommand::List(set) => list(set).await,
        DisputesCommand::Show(args) => show(args).await,
        DisputesCommand::Resolve(args) => resolve(args).await,
    }
}

pub(crate) fn parse_case(text: &str) -> anyhow::Result<(Id, u64)> {
    let (lease, seq) = text
        .rsplit_once(':')
        .context("a case is LEASE:SETTLEMENT, as `rigmesh admin disputes list` prints it")?;
    let lease: Id = lease.parse().map_err(|e| anyhow::anyhow!("lease: {e}"))?;
    let seq: u64 = seq
        .parse()
        .map_err(|e| anyhow::anyhow!("settlement number: {e}"))?;
    Ok((lease, seq))
}

async fn list(set: SetArgs) -> anyhow::Result<ExitCode> {
    let (node, _dir) = connect(&set).await?;
    let quorum = node.quorum.clone().context("no coordinator set")?;
    let rows = held(&quorum, Kind::DisputeResolution).await;
    node.stop().await?;
    let mut cases = Vec::new();
    for (entry, holders) in rows.values() {
        let request = Signed::<SettlementRequest>::from_bytes(&entry.message)?;
        cases.push((request.body, entry.since, *holders));
    }
    if set.json {
        let out: Vec<_> = cases
            .iter()
            .map(|(r, since, holders)| {
                serde_json::json!({
                    "case": format!("{}:{}", r.lease, r.settlement_seq),
                    "lease": r.lease.to_string(),
                    "settlement": r.settlement_seq,
                    "held": r.held.to_string(),
                    "windows": format!("{}..={}", r.first_window, r.last_window),
                    "supplier": r.supplier.to_string(),
                    "customer": r.customer.to_string(),
                    "held_by": holders,
                    "since": since.0,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else if cases.is_empty() {
        outln!("no dispute case waits for review");
    } else {
        for (r, _, holders) in &cases {
            outln!(
                "{}:{}  held {:>12}  windows {}..={}  supplier {:.16}  customer {:.16}  held by {holders}",
                r.lease,
                r.settlement_seq,
                r.held.to_string(),
                r.first_window,
                r.last_window,
                r.supplier.to_string(),
                r.customer.to_string()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(args: CaseArgs) -> anyhow::Result<ExitCode> {
    let (lease, seq) = parse_case(&args.case)?;
    let (node, _dir) = connect(&args.set).await?;
    let quorum = node.quorum.clone().context("no coordinator set")?;
    let files = files(&quorum, lease, seq).await;
    node.stop().await?;
    let holders = files.len();
    let Some(file) = files.into_iter().next() else {
        bail!("no coordinator holds a case {lease}:{seq}");
    };
    let r = &file.request.body;
    if args.set.json {
        let windows: Vec<_> = file
            .attestations
            .iter()
            .map(|a| serde_json::to_value(&a.body).unwrap_or_default())
            .collect();
        let disputes: Vec<_> = file
            .disputes
            .iter()
            .map(|d| serde_json::to_value(&d.body).unwrap_or_default())
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "case": format!("{lease}:{seq}"),
                "held": r.held.to_string(),
                "supplier": r.supplier.to_string(),
                "customer": r.customer.to_string(),
                "windows": format!("{}..={}", r.first_window, r.last_window),
                "held_windows": file.held_windows,
                "opened_at": file.opened_at.0,
                "held_by": holders,
                "attestations": windows,
                "disputes": disputes,
                "acks_of_other_attestations": file.acks.len(),
                "resolution": file.resolution.as_ref().map(|s| serde_json::to_value(&s.body).unwrap_or_default()),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    outln!("case {lease}:{seq}");
    outln!(
        "  held {} of settlement {} (windows {}..={}), {} held windows, held by {holders} coordinators",
        r.held,
        r.settlement_seq,
        r.first_window,
        r.last_window,
        file.held_windows
    );
    outln!("  supplier {}", r.supplier);
    outln!("  customer {}", r.customer);
    match &file.resolution {
        Some(res) => outln!(
            "  resolved: {} to the supplier, against {:?}: {}",
            res.body.supplier_share,
            res.body.against,
            res.body.note
        ),
        None => outln!("  open"),
    }
    let mut reasons: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for d in &file.disputes {
        reasons
            .entry(d.body.seq)
            .or_default()
            .push(format!("{:?}: {}", d.body.reason, d.body.detail));
    }
    for a in &file.attestations {
        let b = &a.body;
        outln!(
            "  window {} ({} ms, {} GPU-ms billed): {}",
            b.seq,
            b.window_end.since(b.window_start),
            b.billable_gpu_ms,
            reasons
                .get(&b.seq)
                .map(|r| r.join("; "))
                .unwrap_or_else(|| "answered about another attestation".into())
        );
        for g in &b.gpus {
            outln!(
                "    GPU {}: billed {} ms, utilisation mean {:.1} % peak {:.1} %, memory {} MiB, energy {} mJ",
                g.gpu_index,
                g.billable_ms,
                f64::from(g.mean_util_bp) / 100.0,
                f64::from(g.peak_util_bp) / 100.0,
                g.peak_memory_mib,
                g.energy_mj
            );
        }
    }
    if (file.attestations.len() as u64) < file.held_windows {
        outln!(
            "  ({} more held windows not shown: they do not fit one answer)",
            file.held_windows - file.attestations.len() as u64
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The resolution `args` decide for the case `request` holds, signed by
/// the admin key, for `epoch`.
pub(crate) fn signed_resolution(
    args: &ResolveArgs,
    admin: &Keypair,
    epoch: u64,
    request: &SettlementRequest,
) -> anyhow::Result<Signed<DisputeResolution>> {
    let r = request;
    let (supplier_share, against) = match (args.decision, args.supplier_share) {
        (Decision::ForSupplier, None) => (r.held, DecidedAgainst::Customer),
        (Decision::ForCustomer, None) => (Credits::ZERO, DecidedAgainst::Supplier),
        (Decision::Split, Some(share)) if share < r.held => (share, DecidedAgainst::Neither),
        (Decision::Split, Some(share)) => {
            bail!(
                "--supplier-share {share} is not less than the {} held",
                r.held
            )
        }
        (Decision::Split, None) => bail!("--decision split needs --supplier-share"),
        (_, Some(_)) => bail!("--supplier-share goes with --decision split only"),
    };
    let resolution = Signed::sign(
        DisputeResolution {
            version: PROTOCOL_VERSION,
            epoch,
            admin: admin.public(),
            lease: r.lease,
            supplier: r.supplier,
            customer: r.customer,
            settlement_seq: r.settlement_seq,
            held: r.held,
            supplier_share,
            against,
            note: args.note.clone(),
            created_at: UnixMillis::now(),
        },
        admin,
    )?;
    resolution
        .verify_record()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(resolution)
}

async fn resolve(args: ResolveArgs) -> anyhow::Result<ExitCode> {
    let (lease, seq) = parse_case(&args.case)?;
    let admin = Keypair::from_seed(rigmesh_node::keyfile::read_seed(&args.admin_key)?);
    let (node, _dir) = connect(&args.set).await?;
    let quorum = node.quorum.clone().context("no coordinator set")?;
    let result = async {
        let files = files(&quorum, lease, seq).await;
        let Some(file) = files.into_iter().next() else {
            bail!("no coordinator holds a case {lease}:{seq}");
        };
        if file.resolution.is_some() {
            bail!("case {lease}:{seq} is already resolved");
        }
        let resolution =
            signed_resolution(&args, &admin, quorum.set().epoch(), &file.request.body)?;
        Ok(rigmesh_node::admin::submit_resolution(&quorum, resolution).await?)
    }
    .await;
    node.stop().await?;
    report_resolution(&args, &result?)
}

/// Prints a resolution's outcome; an error unless it was certified.
pub(crate) fn report_resolution(
    args: &ResolveArgs,
    outcome: &ResolutionOutcome,
) -> anyhow::Result<ExitCode> {
    let b = &outcome.resolution;
    if !outcome.certified() {
        bail!(
            "the resolution was not certified: {} of {} votes needed{}",
            outcome.votes,
            outcome.quorum,
            rigmesh_node::admin::reasons(&outcome.answers)
        );
    }
    if args.set.json {
        outln!("{}", outcome.to_json());
    } else {
        outln!(
            "case {}:{} resolved: {} to the supplier, {} back to the customer; \
             certified by {} coordinators, applied by {}",
            b.lease,
            b.settlement_seq,
            b.supplier_share,
            outcome.refund(),
            outcome.votes,
            outcome.applied_by
        );
    }
    Ok(ExitCode::SUCCESS)
}
