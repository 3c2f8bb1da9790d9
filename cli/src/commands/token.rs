//! `rigmesh token create|list|revoke`: scoped API tokens, managed through
//! the node's API with a token that has `tokens:manage` (the bootstrap
//! token in the data directory by default). A new token is printed once;
//! the node keeps only its hash.

use std::process::ExitCode;

use anyhow::Context;
use rigmesh_node::api::tokens::{
    parse_duration_secs, Bootstrap, IssuedToken, NewToken, TokenRecord,
};
use rigmesh_node::api::Scope;
use rigmesh_protocol::UnixMillis;

use super::client::{Api, NodeArgs, CUSTOMER_API, OPERATOR_API, SUPPLIER_API};

/// Token commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a token with some scopes; it is printed once and never again.
    Create(CreateArgs),
    /// List the node's tokens: name, id, scopes, created, expiry, last
    /// use, revocation (never a secret).
    List(TokenArgs),
    /// Revoke a token by name or id; it is refused from now on.
    Revoke(RevokeArgs),
}

/// Which node, and which of its APIs.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Scopes: customer:read, customer:trade, supplier:read, analytics:read, \
operator:read, notify:manage, tokens:manage. A token cannot grant a scope \
the token making it lacks.")]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Talk to the node's supplier API (--api defaults to 127.0.0.1:9611,
    /// the supplier bootstrap token).
    #[arg(long, conflicts_with = "operator")]
    supplier: bool,
    /// Talk to a coordinator's operator API (--api defaults to
    /// 127.0.0.1:9630, the operator bootstrap token).
    #[arg(long)]
    operator: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// A scope the token grants; repeat for more.
    #[arg(long = "scope", value_name = "SCOPE", required = true, value_parser = parse_scope)]
    scopes: Vec<Scope>,
    /// How long it lives: 30d, 12h, 45m, 90s (default: until revoked).
    #[arg(long, value_name = "DURATION", value_parser = parse_expiry)]
    expires: Option<u64>,
    /// Its name (letters, digits, '-', '_', '.'; default: made up).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    args: TokenArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RevokeArgs {
    /// The token's name or id, as `rigmesh token list` shows them.
    token: String,
    #[command(flatten)]
    args: TokenArgs,
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    text.parse()
        .map_err(|e: rigmesh_node::error::Error| e.to_string())
}

fn parse_expiry(text: &str) -> Result<u64, String> {
    parse_duration_secs(text).map_err(|e| e.to_string())
}

fn connect(args: &TokenArgs) -> anyhow::Result<Api> {
    let (audience, default) = if args.supplier {
        (Bootstrap::Supplier, SUPPLIER_API)
    } else if args.operator {
        (Bootstrap::Operator, OPERATOR_API)
    } else {
        (Bootstrap::Customer, CUSTOMER_API)
    };
    Api::connect_to(&args.node, audience, default)
}

fn when(at: Option<UnixMillis>) -> String {
    match at {
        None => "-".into(),
        Some(at) => super::text::utc(at),
    }
}

pub(crate) fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create(c) => {
            let api = connect(&c.args)?;
            let request = NewToken {
                name: c.name,
                scopes: c.scopes,
                expires_in_secs: c.expires,
            };
            let issued: IssuedToken = api.post("/v1/tokens", &request)?.into("the new token")?;
            if c.args.node.json {
                outln!("{}", serde_json::to_string_pretty(&issued)?);
            } else {
                outln!("{}", issued.token);
                errln!(
                    "token {} (id {}) with {}; expires {}. It is shown this once: store it now.",
                    issued.record.name,
                    issued.record.id,
                    scopes(&issued.record),
                    when(issued.record.expires_at)
                );
            }
        }
        TokenCommand::List(args) => {
            let list: Vec<TokenRecord> = connect(&args)?.get("/v1/tokens")?.into("the tokens")?;
            if args.node.json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                outln!(
                    "{:<20} {:<16} {:<20} {:<20} {:<20} {:<20} scopes",
                    "name",
                    "id",
                    "created",
                    "expires",
                    "last used",
                    "revoked"
                );
                for t in &list {
                    outln!(
                        "{:<20} {:<16} {:<20} {:<20} {:<20} {:<20} {}",
                        t.name,
                        t.id,
                        when(Some(t.created_at)),
                        when(t.expires_at),
                        when(t.last_used),
                        when(t.revoked_at),
                        scopes(t)
                    );
                }
            }
        }
        TokenCommand::Revoke(r) => {
            let path = format!("/v1/tokens/{}", r.token);
            let record: TokenRecord = connect(&r.args)?
                .delete(&path)?
                .into("the revocation")
                .with_context(|| format!("revoking {}", r.token))?;
            if r.args.node.json {
                outln!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                outln!("revoked {} (id {})", record.name, record.id);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn scopes(t: &TokenRecord) -> String {
    t.scopes
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(",")
}
