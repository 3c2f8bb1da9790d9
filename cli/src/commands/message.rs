//! `rigmesh message`: decode and verify any protocol message, list the
//! kinds, print the sample of a kind.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use rigmesh_protocol::kind::{Carrier, Kind};
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{samples, Clock, CoordinatorSet, UnixMillis};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub(crate) enum MessageCommand {
    /// Decode a message (hex from --hex or stdin) and check everything:
    /// encoding, version, fields, signer, clock, signatures; certificates
    /// also against a coordinator set. Exit 0 valid, 3 invalid, 1 error,
    /// 2 usage.
    Verify {
        /// Kind of the message (see `rigmesh message kinds`).
        kind: String,
        /// The message bytes in hex; read from stdin when absent.
        #[arg(long)]
        hex: Option<String>,
        /// JSON file `{"epoch": N, "members": ["<hex key>", ...]}` to check
        /// certificates against.
        #[arg(long)]
        coordinators: Option<PathBuf>,
        /// Check at this time (unix ms) instead of now, e.g. to verify a
        /// stored record as of when it was made.
        #[arg(long)]
        at: Option<u64>,
        /// Print the verdict and message as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the message kinds with their domain, size limit and carrier.
    Kinds,
    /// Print a sample message of a kind (hex), signed by the samples'
    /// fixed keys and dated now, so `message verify` accepts it.
    Sample {
        /// Kind of the message.
        kind: String,
        /// Print the fixed test vector of specs/vectors instead, dated
        /// 2026-09-21T14:13:20Z (verify it with `--at 1790000120000`).
        #[arg(long)]
        vector: bool,
    },
}

/// How long before now a sample's story starts (its latest message is
/// made 95 s in).
const SAMPLE_STORY_MS: u64 = 100_000;

fn parse_kind(name: &str) -> anyhow::Result<Kind> {
    let normalized = name.replace('-', "_");
    Kind::from_name(&normalized).with_context(|| {
        let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown kind {name:?}; kinds are: {}", names.join(", "))
    })
}

fn read_hex(hex_arg: Option<String>) -> anyhow::Result<Vec<u8>> {
    let text = match hex_arg {
        Some(text) => text,
        None => {
            let mut text = String::new();
            std::io::stdin()
                .take(1 << 20)
                .read_to_string(&mut text)
                .context("reading the message from stdin")?;
            text
        }
    };
    let text = text.trim();
    if text.is_empty() {
        bail!("no message given: pass --hex or pipe hex into stdin");
    }
    hex::decode(text).context("the message is not valid hex")
}

fn read_coordinators(path: &PathBuf) -> anyhow::Result<CoordinatorSet> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading coordinator set {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub(crate) fn run(cmd: MessageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        MessageCommand::Verify {
            kind,
            hex,
            coordinators,
            at,
            json,
        } => {
            let kind = parse_kind(&kind)?;
            let bytes = read_hex(hex)?;
            let set = coordinators.as_ref().map(read_coordinators).transpose()?;
            let clock = Clock::at(at.map(UnixMillis).unwrap_or_else(UnixMillis::now));
            let verdict = WireMessage::decode(kind, &bytes)
                .and_then(|m| m.verify(&clock, set.as_ref()).map(|()| m));
            match verdict {
                Ok(message) => {
                    let id = message.id()?;
                    if json {
                        let out = json!({"valid": true, "kind": kind.name(), "id": id.to_string(),
                            "message": serde_json::to_value(&message)?.get("message").cloned()});
                        outln!("{}", serde_json::to_string_pretty(&out)?);
                    } else {
                        outln!("valid {kind} {id} ({} bytes)", bytes.len());
                        outln!("{}", serde_json::to_string_pretty(&message)?);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => {
                    if json {
                        let out = json!({"valid": false, "kind": kind.name(),
                            "error": err.code(), "reason": err.to_string()});
                        outln!("{}", serde_json::to_string_pretty(&out)?);
                    } else {
                        outln!("invalid {kind}: {err} [{}]", err.code());
                    }
                    Ok(ExitCode::from(super::EXIT_INVALID))
                }
            }
        }
        MessageCommand::Kinds => {
            outln!("{:<24} {:<36} {:>8}  carrier", "kind", "domain", "max");
            for kind in Kind::ALL {
                let carrier = match kind.carrier() {
                    Carrier::Topic(t) => format!("gossip {t}"),
                    Carrier::Protocol(p) => format!("request-response {p}"),
                };
                outln!(
                    "{:<24} {:<36} {:>8}  {carrier}",
                    kind.name(),
                    kind.domain(),
                    kind.max_size()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        MessageCommand::Sample { kind, vector } => {
            let kind = parse_kind(&kind)?;
            let sample = if vector {
                samples::sample(kind)?
            } else {
                // The samples tell one story over the 95 s after their
                // start; starting it 100 s ago puts every message in the
                // past and none of them expired.
                samples::sample_at(kind, UnixMillis::now().minus_ms(SAMPLE_STORY_MS))?
            };
            outln!("{}", hex::encode(sample.to_bytes()?));
            Ok(ExitCode::SUCCESS)
        }
    }
}
