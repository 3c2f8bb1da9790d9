//! `rigmesh audit tail|verify|books`: a coordinator's tamper-evident audit
//! chain and its books, read through its operator API (scope
//! `operator:read`; the operator bootstrap token in the data directory by
//! default).

use std::process::ExitCode;

use rigmesh_node::api::tokens::Bootstrap;

use super::client::{Api, NodeArgs, OPERATOR_API};

/// Audit commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuditCommand {
    /// The newest records of the audit chain (or those from `--from`).
    Tail(TailArgs),
    /// Walk the whole chain and check every link; exit 1 if it breaks.
    Verify(NodeArgs),
    /// Replay the journal against the balances and show the totals; exit
    /// 1 if they do not check.
    Books(NodeArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
    /// First record to show (default: the newest `--limit`).
    #[arg(long)]
    from: Option<u64>,
    /// How many records (1 to 500).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=500))]
    limit: u64,
    #[command(flatten)]
    node: NodeArgs,
}

/// A field of a JSON answer (null when absent).
fn field<'a>(value: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    value.get(key).unwrap_or(&serde_json::Value::Null)
}

/// The operator API of the node: `--api`, or 127.0.0.1:9630.
fn operator(node: &NodeArgs) -> anyhow::Result<Api> {
    Api::connect_to(node, Bootstrap::Operator, OPERATOR_API)
}

pub(crate) fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Tail(args) => {
            let api = operator(&args.node)?;
            let path = match args.from {
                Some(from) => format!("/v1/audit?from={from}&limit={}", args.limit),
                None => format!("/v1/audit?limit={}", args.limit),
            };
            let page: serde_json::Value = api.get(&path)?.into("the audit chain")?;
            if args.node.json {
                outln!("{}", serde_json::to_string_pretty(&page)?);
                return Ok(ExitCode::SUCCESS);
            }
            outln!("{} records in the chain", field(&page, "length"));
            for r in field(&page, "records").as_array().into_iter().flatten() {
                outln!(
                    "{:>8}  {}  {:<20}  {:.16}  {}",
                    field(r, "seq"),
                    field(r, "at"),
                    field(r, "action").as_str().unwrap_or_default(),
                    field(r, "who").as_str().unwrap_or_default(),
                    field(r, "detail").as_str().unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify(node) => {
            let api = operator(&node)?;
            let report: serde_json::Value = api.get("/v1/audit/verify")?.into("the audit check")?;
            let intact = field(&report, "intact").as_bool() == Some(true);
            if node.json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else if intact {
                outln!(
                    "the audit chain is intact: {} records verified",
                    field(&report, "verified")
                );
            } else {
                outln!(
                    "the audit chain breaks after {} records: {}",
                    field(&report, "verified"),
                    field(&report, "broken")
                );
            }
            Ok(if intact {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Books(node) => {
            let api = operator(&node)?;
            let answer = api.get("/v1/books")?;
            let ok = answer.ok();
            if !ok && answer.status != 500 {
                anyhow::bail!("the books: {} ({})", answer.reason(), answer.status);
            }
            if node.json || !ok {
                outln!("{}", serde_json::to_string_pretty(&answer.body)?);
            } else {
                let t = field(&answer.body, "totals");
                outln!(
                    "the books check: {} journal entries, {} accounts",
                    field(&answer.body, "entries"),
                    field(&answer.body, "accounts")
                );
                for key in [
                    "users", "fees", "escrow", "payable", "disputed", "external", "held",
                ] {
                    outln!("  {key:<9} {}", field(t, key).as_str().unwrap_or("-"));
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
