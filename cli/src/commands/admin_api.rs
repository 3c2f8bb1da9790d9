//! `rigmesh admin ... --operator-api ADDR`: the operator actions through a
//! coordinator's operator API instead of a temporary relay node. The
//! admin key signs here, as with the relay node; the API carries the
//! signed message (canonical bytes, in hex) to the coordinator set and
//! the token (the coordinator's operator bootstrap token, or
//! `--token-file`) decides who may. `rigmesh admin bans` works only this
//! way: a ban is one coordinator's, not the set's.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use rigmesh_node::admin::{
    Answers, DecisionOutcome, DecisionState, DepositOutcome, DepositState, MemberAnswer,
    ResolutionOutcome,
};
use rigmesh_node::api::tokens::Bootstrap;
use rigmesh_protocol::{DisputeResolution, Keypair, Kind, PublicKey, SettlementRequest};

use super::admin::{AdminCommand, DecideArgs, DepositArgs, OperatorApiArgs, ReviewCommand};
use super::client::{Answer, Api, NodeArgs, OPERATOR_API};
use super::disputes::{DisputesCommand, ResolveArgs};

/// Bans of one coordinator.
#[derive(Debug, Subcommand)]
pub(crate) enum BansCommand {
    /// The bans in force.
    List(BansArgs),
    /// Ban a peer id or an IP address for a while.
    Add(BanAddArgs),
    /// Lift the ban of a peer id or an IP address.
    Remove(BanRemoveArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct BansArgs {
    #[command(flatten)]
    via: OperatorApiArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BanAddArgs {
    #[command(flatten)]
    bans: BansArgs,
    /// A libp2p peer id, or an IP address.
    offender: String,
    /// How long, in seconds.
    #[arg(long, default_value_t = 86_400)]
    secs: u64,
    /// Why, for the record.
    #[arg(long)]
    reason: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BanRemoveArgs {
    #[command(flatten)]
    bans: BansArgs,
    /// The banned peer id or IP address.
    offender: String,
}

/// Runs `cmd` through an operator API when it asks for one; hands it back
/// otherwise, for the relay node.
pub(crate) fn run(cmd: AdminCommand) -> Result<anyhow::Result<ExitCode>, Box<AdminCommand>> {
    match cmd {
        AdminCommand::Bans(cmd) => Ok(bans(cmd)),
        AdminCommand::Deposit(args) if args.set.via.operator_api.is_some() => Ok(deposit(&args)),
        AdminCommand::Deposits(cmd) if via_api(&cmd) => Ok(review(Kind::Deposit, cmd)),
        AdminCommand::Withdrawals(cmd) if via_api(&cmd) => Ok(review(Kind::Withdrawal, cmd)),
        AdminCommand::Disputes(DisputesCommand::Resolve(args))
            if args.set.via.operator_api.is_some() =>
        {
            Ok(resolve(&args))
        }
        AdminCommand::Balances(args) if args.set.via.operator_api.is_some() => {
            Ok(Err(anyhow::anyhow!(
                "balances are read through a relay node (--config), not --operator-api"
            )))
        }
        AdminCommand::Disputes(DisputesCommand::List(set)) if set.via.operator_api.is_some() => {
            Ok(Err(anyhow::anyhow!(
                "with an operator API, read the open cases with `curl .../v1/disputes`; \
                 `disputes list` goes through a relay node (--config)"
            )))
        }
        AdminCommand::Disputes(DisputesCommand::Show(args))
            if args.set.via.operator_api.is_some() =>
        {
            Ok(Err(anyhow::anyhow!(
                "with an operator API, read a case with `curl .../v1/disputes/LEASE/SETTLEMENT`; \
                 `disputes show` goes through a relay node (--config)"
            )))
        }
        other => Err(Box::new(other)),
    }
}

fn via_api(cmd: &ReviewCommand) -> bool {
    match cmd {
        ReviewCommand::List(set) => set.via.operator_api.is_some(),
        ReviewCommand::Approve(args) | ReviewCommand::Reject(args) => {
            args.set.via.operator_api.is_some()
        }
    }
}

/// The operator API `via` names (127.0.0.1:9630 by default), with its
/// token.
fn operator(via: &OperatorApiArgs) -> anyhow::Result<Api> {
    let addr = match via.operator_api {
        Some(addr) => addr,
        None => OPERATOR_API.parse()?,
    };
    let node = NodeArgs {
        data_dir: via.data_dir.clone(),
        token_file: via.token_file.clone(),
        api: addr,
        json: false,
    };
    Api::connect_as(&node, Bootstrap::Operator, addr)
}

/// The coordinator set's epoch as the coordinator holds it, which a
/// message is signed for.
fn epoch(api: &Api) -> anyhow::Result<u64> {
    let held: serde_json::Value = api.get("/v1/held/deposits")?.into("the coordinator set")?;
    held.get("epoch")
        .and_then(serde_json::Value::as_u64)
        .context("the operator API did not say the coordinator set's epoch")
}

fn field<'a>(value: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    value.get(key).unwrap_or(&serde_json::Value::Null)
}

fn text(value: &serde_json::Value, key: &str) -> String {
    field(value, key).as_str().unwrap_or_default().to_string()
}

fn count(value: &serde_json::Value, key: &str) -> usize {
    field(value, key)
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
}

fn certificate(value: &serde_json::Value) -> Option<Vec<u8>> {
    field(value, "certificate")
        .as_str()
        .and_then(|h| hex::decode(h).ok())
}

/// Every coordinator's answer from the API's `answers`.
fn answers(value: &serde_json::Value) -> Answers {
    field(value, "answers")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let member: PublicKey = text(a, "coordinator").parse().ok()?;
            let reason = text(a, "reason");
            let answer = match field(a, "answer").as_str()? {
                "applied" => MemberAnswer::Applied,
                "voted" => MemberAnswer::Voted,
                "pending" => MemberAnswer::Pending(reason),
                "refused" => MemberAnswer::Refused(reason),
                _ => MemberAnswer::Unreachable(reason),
            };
            Some((member, answer))
        })
        .collect()
}

/// An answer the API gives without an outcome (a bad request, a missing
/// scope, a coordinator error) as an error.
fn refused(answer: &Answer, what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {} ({})", answer.reason(), answer.status)
}

fn signed_hex<T: rigmesh_protocol::Message>(
    message: &rigmesh_protocol::Signed<T>,
) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::json!({ "message": hex::encode(message.to_bytes()?) }))
}

fn deposit(args: &DepositArgs) -> anyhow::Result<ExitCode> {
    let api = operator(&args.set.via)?;
    let deposit = super::admin::signed_deposit(args, epoch(&api)?)?;
    let answer = api.post("/v1/deposits", &signed_hex(&deposit)?)?;
    let body = &answer.body;
    let state = match (answer.status, text(body, "state").as_str()) {
        (200, "applied") => DepositState::Applied,
        (202, "awaiting_approval") => DepositState::AwaitingApproval,
        (409, "reference_used") => DepositState::ReferenceUsed(
            answers(body)
                .into_iter()
                .find_map(|(_, a)| match a {
                    MemberAnswer::Refused(r)
                        if r.starts_with(rigmesh_node::admin::REFERENCE_USED) =>
                    {
                        Some(r)
                    }
                    _ => None,
                })
                .unwrap_or_else(|| answer.reason()),
        ),
        (409, "not_applied") => DepositState::NotApplied,
        _ => return Err(refused(&answer, "the deposit")),
    };
    let outcome = DepositOutcome {
        deposit: deposit.id()?,
        state,
        applied_by: count(body, "applied_by"),
        held_by: count(body, "held_by"),
        quorum: count(body, "quorum"),
        answers: answers(body),
    };
    super::admin::report_deposit(args, &outcome)
}

fn review(kind: Kind, cmd: ReviewCommand) -> anyhow::Result<ExitCode> {
    let (args, approve): (DecideArgs, bool) = match cmd {
        ReviewCommand::List(set) => return list_held(kind, &set.via, set.json),
        ReviewCommand::Approve(args) => (args, true),
        ReviewCommand::Reject(args) => (args, false),
    };
    let admin = Keypair::from_seed(rigmesh_node::keyfile::read_seed(&args.admin_key)?);
    let api = operator(&args.set.via)?;
    let decision = super::admin::approval(&admin, epoch(&api)?, kind, args.id, approve)?;
    let answer = api.post("/v1/approvals", &signed_hex(&decision)?)?;
    let body = &answer.body;
    let state = match (answer.status, text(body, "state").as_str()) {
        (200, "taken") => DecisionState::Taken,
        (404, "not_held") => DecisionState::NotHeld,
        (409, "not_taken") => DecisionState::NotTaken,
        _ => return Err(refused(&answer, "the decision")),
    };
    let outcome = DecisionOutcome {
        kind,
        subject: args.id,
        approve,
        state,
        taken_by: count(body, "coordinators"),
        quorum: count(body, "quorum"),
        certificate: certificate(body),
        answers: answers(body),
    };
    super::admin::report_decision(&args, &outcome)
}

fn list_held(kind: Kind, via: &OperatorApiArgs, json: bool) -> anyhow::Result<ExitCode> {
    let api = operator(via)?;
    let path = match kind {
        Kind::Deposit => "/v1/held/deposits",
        _ => "/v1/held/withdrawals",
    };
    let held: serde_json::Value = api.get(path)?.into("what the coordinators hold")?;
    let rows: Vec<super::admin::HeldRow> = field(&held, "held")
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| super::admin::HeldRow {
            id: text(r, "id"),
            account: text(r, "account"),
            amount: text(r, "amount"),
            detail: text(r, "detail"),
            held_by: field(r, "held_by").as_u64().unwrap_or(0),
            since: field(r, "since").as_u64().unwrap_or(0),
        })
        .collect();
    super::admin::print_held(kind, &rows, json)
}

fn resolve(args: &ResolveArgs) -> anyhow::Result<ExitCode> {
    let (lease, seq) = super::disputes::parse_case(&args.case)?;
    let admin = Keypair::from_seed(rigmesh_node::keyfile::read_seed(&args.admin_key)?);
    let api = operator(&args.set.via)?;
    let file = api.get(&format!("/v1/disputes/{lease}/{seq}"))?;
    if file.status == 404 {
        bail!("no coordinator holds a case {lease}:{seq}");
    }
    let file: serde_json::Value = file.into("the case")?;
    if !field(&file, "resolution").is_null() {
        bail!("case {lease}:{seq} is already resolved");
    }
    let request: SettlementRequest = serde_json::from_value(field(&file, "request").clone())
        .context("reading the case's settlement request")?;
    let resolution = super::disputes::signed_resolution(args, &admin, epoch(&api)?, &request)?;
    let answer = api.post(
        &format!("/v1/disputes/{lease}/{seq}/resolution"),
        &signed_hex(&resolution)?,
    )?;
    let body = &answer.body;
    if !matches!(answer.status, 200 | 409) || field(body, "state").is_null() {
        return Err(refused(&answer, "the resolution"));
    }
    let resolved: DisputeResolution = resolution.body;
    let outcome = ResolutionOutcome {
        resolution: resolved,
        certificate: certificate(body),
        votes: count(body, "votes"),
        quorum: count(body, "quorum"),
        applied_by: count(body, "applied_by"),
        answers: answers(body),
    };
    super::disputes::report_resolution(args, &outcome)
}

fn bans(cmd: BansCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BansCommand::List(args) => {
            let api = operator(&args.via)?;
            let list: serde_json::Value = api.get("/v1/bans")?.into("the bans")?;
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            let bans = field(&list, "bans").as_array().cloned().unwrap_or_default();
            if bans.is_empty() {
                outln!("no ban is in force");
            }
            for b in &bans {
                outln!(
                    "{:<8} {:<54} until {}  {}",
                    text(b, "kind"),
                    text(b, "offender"),
                    field(b, "until"),
                    text(b, "reason")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BansCommand::Add(args) => {
            let api = operator(&args.bans.via)?;
            let answer = api.post(
                "/v1/bans",
                &serde_json::json!({
                    "offender": args.offender,
                    "secs": args.secs,
                    "reason": args.reason,
                }),
            )?;
            let ban: serde_json::Value = answer.into("the ban")?;
            if args.bans.json {
                outln!("{ban}");
            } else {
                outln!(
                    "{} {} banned until {}",
                    text(&ban, "kind"),
                    text(&ban, "offender"),
                    field(&ban, "until")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BansCommand::Remove(args) => {
            let api = operator(&args.bans.via)?;
            let offender = args.offender.trim();
            let answer = api.delete(&format!("/v1/bans/{offender}"))?;
            let lifted: serde_json::Value = answer.into("lifting the ban")?;
            if args.bans.json {
                outln!("{lifted}");
            } else {
                outln!("the ban of {offender} is lifted");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
