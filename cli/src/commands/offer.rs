//! `rigmesh offer create`: sign an offer by hand. A supplier node builds
//! offers from the GPUs it detects; this command is for trying the protocol
//! and for scripted tests.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use rigmesh_protocol::{Credits, Id, Offer, Signed, UnixMillis, PROTOCOL_VERSION};

#[derive(Debug, Subcommand)]
pub(crate) enum OfferCommand {
    /// Sign an offer and print it as hex (or JSON with --json).
    Create(CreateArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    key: super::KeyFileArg,
    /// GPU model, as NVML names it.
    #[arg(long)]
    gpu: String,
    /// Memory per GPU, MiB.
    #[arg(long, default_value_t = 81_559)]
    memory_mib: u64,
    /// GPUs offered together (1 to 64).
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(rigmesh_protocol::rules::MAX_GPUS)))]
    count: u16,
    /// Price per GPU-hour, in credits, above zero (at most 6 decimal places).
    #[arg(long, value_parser = super::text::positive_credits)]
    price: Credits,
    /// Shortest lease, hours.
    #[arg(long, default_value_t = 1)]
    min_hours: u32,
    /// Longest lease, hours.
    #[arg(long, default_value_t = 24)]
    max_hours: u32,
    /// Region of the rig.
    #[arg(long, default_value = "local")]
    region: String,
    /// UUIDs of the offered GPUs; their hash is the hardware fingerprint.
    #[arg(long = "gpu-uuid", required = true)]
    gpu_uuids: Vec<String>,
    /// Minutes until the offer expires (at most 1440).
    #[arg(long, default_value_t = 60)]
    ttl_mins: u64,
    /// Re-publication counter; raise it to replace an earlier offer.
    #[arg(long, default_value_t = 0)]
    sequence: u64,
    /// Print the signed offer as JSON instead of hex.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: OfferCommand) -> anyhow::Result<ExitCode> {
    let OfferCommand::Create(args) = cmd;
    let key = super::keys::read_key(&args.key.key_file)?;
    let now = UnixMillis::now();
    let body = Offer {
        version: PROTOCOL_VERSION,
        supplier: key.public(),
        sequence: args.sequence,
        gpu_model: args.gpu,
        gpu_memory_mib: args.memory_mib,
        gpu_count: args.count,
        price_per_gpu_hour: args.price,
        min_hours: args.min_hours,
        max_hours: args.max_hours,
        region: args.region,
        hardware_fingerprint: Id::hardware_fingerprint(&args.gpu_uuids),
        created_at: now,
        expires_at: now.plus_ms(args.ttl_mins.saturating_mul(60_000)),
    };
    let offer = Signed::sign(body, &key)?;
    // Refuse to print what every peer would refuse.
    offer
        .verify(&rigmesh_protocol::Clock::at(now))
        .context("the offer would be invalid")?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&offer)?);
    } else {
        outln!("{}", hex::encode(offer.to_bytes()?));
    }
    Ok(ExitCode::SUCCESS)
}
