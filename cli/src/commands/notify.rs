//! `rigmesh notify`: the node's notifications through its local API: the
//! channels (and a test message on one), the routing rules, the log of
//! what went where, acknowledgement of an alert group, and silences.
//! Channels and rules are configured in the `[notify]` section of the
//! node's config.

use std::net::SocketAddr;
use std::process::ExitCode;

use rigmesh_node::api::tokens::Bootstrap;
use rigmesh_protocol::UnixMillis;
use serde_json::Value;

use super::client::{Api, NodeArgs, CUSTOMER_API, SUPPLIER_API};
use super::text;

/// Notifications: channels, rules, log, acknowledgement.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum NotifyCommand {
    /// The channels: list them, or send a test message on one.
    #[command(subcommand)]
    Channels(ChannelsCommand),
    /// Who gets which alerts on which channels: each recipient's default
    /// channels by severity, its routes, quiet hours and escalation; the
    /// inhibition rules and grouping times.
    Rules(NotifyArgs),
    /// What went where and when: open alert groups (acknowledged or not),
    /// then notifications delivered, waiting or given up, newest first.
    Log(NotifyArgs),
    /// Acknowledge an alert group: its repeats and escalation stop.
    Ack(AckArgs),
    /// Silences: alerts matching them are not sent until they lapse.
    #[command(subcommand)]
    Silences(SilencesCommand),
}

/// The silences.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SilencesCommand {
    /// List the silences that hold or have yet to start.
    List(NotifyArgs),
    /// Silence the alerts that match every matcher given, for a while.
    Add(SilenceArgs),
    /// End a silence now.
    Expire(ExpireArgs),
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
At least one matcher (--rule, --about, --subject, --recipient) is needed. \
Example: rigmesh notify silences add --rule budget. --for 2h \
--comment \"raising the cap\"")]
pub(crate) struct SilenceArgs {
    /// Alerts whose rule starts with this (`budget.` matches every budget
    /// alert).
    #[arg(long)]
    rule: Option<String>,
    /// Only alerts about this account (hex public key).
    #[arg(long)]
    about: Option<String>,
    /// Only alerts about this lease, offer or bid (hex id).
    #[arg(long, visible_alias = "lease")]
    subject: Option<String>,
    /// Only for this recipient of the node's [notify] config.
    #[arg(long)]
    recipient: Option<String>,
    /// How long it holds: 90s, 30m, 2h, 1h30m.
    #[arg(long = "for", value_name = "DURATION", value_parser = super::text::parse_wait)]
    duration: u64,
    /// Why (shown with the silence).
    #[arg(long)]
    comment: String,
    /// Who asks (default: the API's name).
    #[arg(long)]
    by: Option<String>,
    #[command(flatten)]
    args: NotifyArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExpireArgs {
    /// The silence's id, as `rigmesh notify silences list` shows it.
    id: u64,
    #[command(flatten)]
    args: NotifyArgs,
}

/// The channels.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ChannelsCommand {
    /// List the channels (secrets are never shown, only where they come
    /// from).
    List(NotifyArgs),
    /// Send a test message on a channel now and say whether it was taken.
    Test(TestArgs),
    /// Add a channel to the running node; it is kept across restarts, next
    /// to the channels of the config file.
    Add(Box<AddArgs>),
    /// Remove a channel added with `add` (those of the config file are
    /// removed by editing it).
    Remove(TestArgs),
}

/// The kinds of channel, as `type` in the config.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ChannelType {
    Email,
    Slack,
    Discord,
    Telegram,
    Webhook,
    Twilio,
    SmsGateway,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
The secret (webhook signing key, Slack or Discord URL, Telegram bot token, \
Twilio auth token, SMS gateway token, SMTP password) is named by an \
absolute file path or an environment variable of the node, never given \
on the command line; the node reads it now and never shows it. Examples:
  rigmesh notify channels add ops-hook --type webhook \
--url https://ops.example/hook --secret-file /etc/rigmesh/hook.secret \
--recipient me
  rigmesh notify channels add pager --type twilio --account-sid AC123 \
--from +15550100 --to +15550199 --secret-env RIGMESH_TWILIO_TOKEN")]
pub(crate) struct AddArgs {
    /// The new channel's name (letters, digits, '-', '_', '.').
    name: String,
    /// What kind of channel.
    #[arg(long = "type", value_enum)]
    kind: ChannelType,
    /// Where to POST (webhook, sms-gateway).
    #[arg(long)]
    url: Option<String>,
    /// The file that holds the channel's secret (an absolute path outside
    /// the node's data directory).
    #[arg(long, conflicts_with = "secret_env")]
    secret_file: Option<std::path::PathBuf>,
    /// The environment variable of the node that holds the secret (its
    /// name starts with RIGMESH_).
    #[arg(long)]
    secret_env: Option<String>,
    /// Receiving addresses or numbers (email, twilio, sms-gateway);
    /// repeat for more.
    #[arg(long)]
    to: Vec<String>,
    /// Sender address or number (email, twilio).
    #[arg(long)]
    from: Option<String>,
    /// Telegram chat id.
    #[arg(long)]
    chat_id: Option<String>,
    /// Twilio account SID.
    #[arg(long)]
    account_sid: Option<String>,
    /// API root (telegram, twilio), for a compatible service.
    #[arg(long)]
    api_base: Option<String>,
    /// SMTP relay host (email).
    #[arg(long)]
    server: Option<String>,
    /// SMTP port (email).
    #[arg(long)]
    port: Option<u16>,
    /// SMTP login (email).
    #[arg(long)]
    username: Option<String>,
    /// SMTP security: starttls, tls or none (email).
    #[arg(long)]
    security: Option<String>,
    /// A recipient of the node's [notify] config that takes this channel
    /// among its default channels; repeat for more.
    #[arg(long)]
    recipient: Vec<String>,
    #[command(flatten)]
    args: NotifyArgs,
}

/// Which node, and which of its APIs.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Channels and recipients are configured in the [notify] section of the \
node's config file (`rigmesh node config --example`), which the node reads \
at start; `rigmesh notify channels add|remove` changes channels while it \
runs.")]
pub(crate) struct NotifyArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Talk to the node's supplier API (its supplier token; --api defaults
    /// to 127.0.0.1:9611) instead of its customer API.
    #[arg(long)]
    supplier: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    /// The channel's name.
    name: String,
    #[command(flatten)]
    args: NotifyArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct AckArgs {
    /// The alert group's id, as `rigmesh notify log` lists it and as the
    /// message names it.
    group: String,
    /// Who acknowledges, shown in the log (default: the API's name).
    #[arg(long)]
    by: Option<String>,
    #[command(flatten)]
    args: NotifyArgs,
}

fn connect(args: &NotifyArgs) -> anyhow::Result<Api> {
    if !args.supplier {
        return Api::connect(&args.node);
    }
    let default: SocketAddr = CUSTOMER_API.parse()?;
    let addr = if args.node.api == default {
        SUPPLIER_API.parse()?
    } else {
        args.node.api
    };
    Api::connect_as(&args.node, Bootstrap::Supplier, addr)
}

fn get(args: &NotifyArgs, path: &str, what: &str) -> anyhow::Result<Value> {
    connect(args)?.get(path)?.into(what)
}

static NULL: Value = Value::Null;

/// `v[key]` without indexing: null when absent.
fn at<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&NULL)
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn time_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|t| text::utc(UnixMillis(t)))
        .unwrap_or_else(|| "-".into())
}

fn list(v: &Value) -> String {
    match v.as_array() {
        Some(items) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".into(),
    }
}

/// A wait as people read it; under a second in milliseconds.
fn wait(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else {
        text::duration(ms)
    }
}

fn json_out(value: &Value) -> anyhow::Result<ExitCode> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(ExitCode::SUCCESS)
}

fn channels(args: &NotifyArgs) -> anyhow::Result<ExitCode> {
    let channels = get(args, "/v1/notify/channels", "the channels")?;
    if args.node.json {
        return json_out(&channels);
    }
    let items = channels.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        outln!(
            "no channels: add [[notify.channels]] to the node's config, or `rigmesh notify channels add`"
        );
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<16}  {:<11}  {:<6}  {:<6}  target",
        "name",
        "type",
        "medium",
        "source"
    );
    for c in &items {
        outln!(
            "{:<16}  {:<11}  {:<6}  {:<6}  {}",
            str_of(c, "name"),
            str_of(c, "type"),
            str_of(c, "medium"),
            str_of(c, "source"),
            str_of(c, "target")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn test(args: &TestArgs) -> anyhow::Result<ExitCode> {
    let api = connect(&args.args)?;
    let path = format!("/v1/notify/channels/{}/test", args.name);
    let answer = api.post(&path, &serde_json::json!({}))?;
    if args.args.node.json {
        json_out(&answer.body)?;
    }
    if !answer.ok() {
        anyhow::bail!("test message on {}: {}", args.name, answer.reason());
    }
    if !args.args.node.json {
        outln!("test message delivered by channel {}", args.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// The channel's settings as the config spells them.
fn channel_json(args: &AddArgs) -> anyhow::Result<Value> {
    let secret = match (&args.secret_file, &args.secret_env) {
        (Some(path), _) => {
            let path = if path.is_absolute() {
                path.clone()
            } else {
                std::env::current_dir()?.join(path)
            };
            Some(serde_json::json!({ "file": path }))
        }
        (None, Some(var)) => Some(serde_json::json!({ "env": var })),
        (None, None) => None,
    };
    let (kind, secret_field) = match args.kind {
        ChannelType::Email => ("email", "password"),
        ChannelType::Slack => ("slack", "url"),
        ChannelType::Discord => ("discord", "url"),
        ChannelType::Telegram => ("telegram", "token"),
        ChannelType::Webhook => ("webhook", "secret"),
        ChannelType::Twilio => ("twilio", "auth_token"),
        ChannelType::SmsGateway => ("sms_gateway", "token"),
    };
    let mut channel = serde_json::Map::new();
    channel.insert("name".into(), args.name.clone().into());
    channel.insert("type".into(), kind.into());
    if let Some(secret) = secret {
        channel.insert(secret_field.into(), secret);
    }
    if matches!(args.kind, ChannelType::Slack | ChannelType::Discord) && args.url.is_some() {
        anyhow::bail!(
            "a {kind} webhook URL is its secret: give it with --secret-file or --secret-env, not --url"
        );
    }
    let text = [
        ("url", &args.url),
        ("from", &args.from),
        ("chat_id", &args.chat_id),
        ("account_sid", &args.account_sid),
        ("api_base", &args.api_base),
        ("server", &args.server),
        ("username", &args.username),
        ("security", &args.security),
    ];
    for (key, value) in text {
        if let Some(value) = value {
            channel.insert(key.into(), value.clone().into());
        }
    }
    if let Some(port) = args.port {
        channel.insert("port".into(), port.into());
    }
    if !args.to.is_empty() {
        channel.insert("to".into(), args.to.clone().into());
    }
    Ok(serde_json::json!({ "channel": channel, "recipients": args.recipient }))
}

fn add_channel(args: &AddArgs) -> anyhow::Result<ExitCode> {
    let body = channel_json(args)?;
    let api = connect(&args.args)?;
    let answer = api.post("/v1/notify/channels", &body)?;
    if args.args.node.json {
        json_out(&answer.body)?;
    }
    if !answer.ok() {
        anyhow::bail!("adding channel {}: {}", args.name, answer.reason());
    }
    if !args.args.node.json {
        outln!(
            "channel {} added: {} {}",
            args.name,
            str_of(&answer.body, "type"),
            str_of(&answer.body, "target")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn remove_channel(args: &TestArgs) -> anyhow::Result<ExitCode> {
    let api = connect(&args.args)?;
    let answer = api.delete(&format!("/v1/notify/channels/{}", args.name))?;
    if args.args.node.json {
        json_out(&answer.body)?;
    }
    if !answer.ok() {
        anyhow::bail!("removing channel {}: {}", args.name, answer.reason());
    }
    if !args.args.node.json {
        outln!("channel {} removed", args.name);
    }
    Ok(ExitCode::SUCCESS)
}

fn rules(args: &NotifyArgs) -> anyhow::Result<ExitCode> {
    let rules = get(args, "/v1/notify/rules", "the rules")?;
    if args.node.json {
        return json_out(&rules);
    }
    let recipients = at(&rules, "recipients")
        .as_array()
        .cloned()
        .unwrap_or_default();
    if recipients.is_empty() {
        outln!("no recipients: add [[notify.recipients]] to the node's config");
    }
    for r in &recipients {
        outln!("recipient {}", str_of(r, "name"));
        outln!("  audience     {}", list(at(r, "audience")));
        if at(r, "accounts").as_array().is_some_and(|a| !a.is_empty()) {
            outln!("  accounts     {}", list(at(r, "accounts")));
        }
        for severity in ["critical", "warning", "info"] {
            outln!("  {severity:<12} {}", list(at(at(r, "defaults"), severity)));
        }
        for route in at(r, "routes").as_array().into_iter().flatten() {
            let rules = list(at(route, "rules"));
            let severities = list(at(route, "severities"));
            let to = list(at(route, "channels"));
            outln!(
                "  route        rules {} severities {} -> {}",
                if rules == "-" { "any".into() } else { rules },
                if severities == "-" {
                    "any".into()
                } else {
                    severities
                },
                if to == "-" { "muted".into() } else { to }
            );
        }
        if let Some(q) = at(r, "quiet_hours").as_object() {
            outln!(
                "  quiet hours  {}-{} (UTC{:+} min), critical alerts still go out",
                q.get("start").and_then(Value::as_str).unwrap_or(""),
                q.get("end").and_then(Value::as_str).unwrap_or(""),
                q.get("utc_offset_minutes")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            );
        }
        for step in at(r, "escalation").as_array().into_iter().flatten() {
            outln!(
                "  escalation   after {} unacknowledged -> {}",
                wait(at(step, "after_ms").as_u64().unwrap_or(0)),
                list(at(step, "channels"))
            );
        }
    }
    for rule in at(&rules, "inhibit").as_array().into_iter().flatten() {
        outln!(
            "inhibit {} mutes {} (equal: {})",
            list(at(rule, "source_rules")),
            list(at(rule, "target_rules")),
            list(at(rule, "equal"))
        );
    }
    let g = at(&rules, "grouping");
    let ms = |key: &str| wait(at(g, key).as_u64().unwrap_or(0));
    outln!(
        "grouping: first wait {}, interval {}, repeat {}, critical repeat {} until acknowledged, info digest every {}",
        ms("group_wait_ms"),
        ms("group_interval_ms"),
        ms("repeat_interval_ms"),
        ms("critical_repeat_ms"),
        ms("digest_interval_ms")
    );
    Ok(ExitCode::SUCCESS)
}

fn log(args: &NotifyArgs) -> anyhow::Result<ExitCode> {
    let log = get(args, "/v1/notify/log", "the notification log")?;
    if args.node.json {
        return json_out(&log);
    }
    let groups = at(&log, "groups").as_array().cloned().unwrap_or_default();
    if groups.is_empty() {
        outln!("no open alert groups");
    } else {
        outln!("open alert groups");
        outln!(
            "  {:<16}  {:<8}  {:<22}  {:>4}  {:<21}  state",
            "group",
            "severity",
            "rule",
            "sent",
            "last sent"
        );
        for g in &groups {
            let state = match at(g, "acknowledged").as_object() {
                Some(a) => format!(
                    "acknowledged by {} at {}",
                    a.get("by").and_then(Value::as_str).unwrap_or("?"),
                    a.get("at")
                        .and_then(Value::as_u64)
                        .map(|t| text::utc(UnixMillis(t)))
                        .unwrap_or_default()
                ),
                None if str_of(g, "severity") == "critical" => {
                    "firing, repeats until acknowledged".into()
                }
                None => "firing".into(),
            };
            outln!(
                "  {:<16}  {:<8}  {:<22}  {:>4}  {:<21}  {state}",
                str_of(g, "id"),
                str_of(g, "severity"),
                str_of(g, "rule"),
                at(g, "messages").as_u64().unwrap_or(0),
                time_of(g, "last_sent")
            );
        }
    }
    let mut rows: Vec<(u64, String)> = Vec::new();
    for (list_key, time_key) in [
        ("sent", "delivered_at"),
        ("pending", "created_at"),
        ("dead", "created_at"),
    ] {
        for n in at(&log, list_key).as_array().into_iter().flatten() {
            let when = at(n, time_key).as_u64().unwrap_or(0);
            let mut status = str_of(n, "status").to_string();
            let error = str_of(n, "last_error");
            if !error.is_empty() {
                status = format!(
                    "{status} after {} attempts ({error})",
                    at(n, "attempts").as_u64().unwrap_or(0)
                );
            }
            rows.push((
                when,
                format!(
                    "  {:<21}  {:<12}  {:<8}  {:<16}  {:<20}  {}  [{status}]",
                    time_of(n, time_key),
                    str_of(n, "channel"),
                    str_of(n, "severity"),
                    str_of(n, "group"),
                    str_of(n, "rule"),
                    str_of(n, "subject")
                ),
            ));
        }
    }
    rows.sort_by_key(|row| std::cmp::Reverse(row.0));
    if rows.is_empty() {
        outln!("no notifications yet");
    } else {
        outln!("notifications, newest first");
        outln!(
            "  {:<21}  {:<12}  {:<8}  {:<16}  {:<20}  subject  [status]",
            "time",
            "channel",
            "severity",
            "group",
            "rule"
        );
        for (_, row) in rows {
            outln!("{row}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ack(args: &AckArgs) -> anyhow::Result<ExitCode> {
    let api = connect(&args.args)?;
    let group = args.group.trim();
    if group.is_empty() || !group.chars().all(|c| c.is_ascii_hexdigit()) {
        anyhow::bail!("{group:?} is not an alert group id (hex, as `rigmesh notify log` lists it)");
    }
    let body = match &args.by {
        Some(by) => serde_json::json!({ "by": by }),
        None => serde_json::json!({}),
    };
    let answer = api.post(&format!("/v1/notify/groups/{group}/ack"), &body)?;
    if args.args.node.json {
        json_out(&answer.body)?;
    }
    if !answer.ok() {
        anyhow::bail!("acknowledging {group}: {}", answer.reason());
    }
    if !args.args.node.json {
        outln!("alert group {group} acknowledged: its repeats and escalation stop");
    }
    Ok(ExitCode::SUCCESS)
}

fn silences(args: &NotifyArgs) -> anyhow::Result<ExitCode> {
    let silences = get(args, "/v1/notify/silences", "the silences")?;
    if args.node.json {
        return json_out(&silences);
    }
    let items = silences.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        outln!("no silences");
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:>4}  {:<8}  {:<21}  {:<21}  {:<16}  matchers; comment",
        "id",
        "state",
        "starts",
        "ends",
        "by"
    );
    for s in &items {
        let mut matchers = Vec::new();
        if !str_of(s, "rule").is_empty() {
            matchers.push(format!("rule {}*", str_of(s, "rule")));
        }
        for key in ["about", "subject", "recipient"] {
            if let Some(value) = at(s, key).as_str() {
                matchers.push(format!("{key} {value}"));
            }
        }
        outln!(
            "{:>4}  {:<8}  {:<21}  {:<21}  {:<16}  {}; {}",
            at(s, "id").as_u64().unwrap_or(0),
            if at(s, "active").as_bool() == Some(true) {
                "active"
            } else {
                "pending"
            },
            time_of(s, "starts_at"),
            time_of(s, "ends_at"),
            str_of(s, "created_by"),
            matchers.join(", "),
            str_of(s, "comment")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn add_silence(args: &SilenceArgs) -> anyhow::Result<ExitCode> {
    let api = connect(&args.args)?;
    let mut body = serde_json::json!({
        "rule": args.rule.clone().unwrap_or_default(),
        "duration_secs": args.duration,
        "comment": args.comment,
    });
    for (key, value) in [
        ("about", &args.about),
        ("subject", &args.subject),
        ("recipient", &args.recipient),
        ("created_by", &args.by),
    ] {
        if let (Some(value), Some(map)) = (value, body.as_object_mut()) {
            map.insert(key.into(), value.clone().into());
        }
    }
    let answer = api.post("/v1/notify/silences", &body)?;
    if args.args.node.json {
        json_out(&answer.body)?;
    }
    if !answer.ok() {
        anyhow::bail!("adding the silence: {}", answer.reason());
    }
    if !args.args.node.json {
        outln!(
            "silence {} added, until {}",
            at(&answer.body, "id").as_u64().unwrap_or(0),
            time_of(&answer.body, "ends_at")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn expire_silence(args: &ExpireArgs) -> anyhow::Result<ExitCode> {
    let api = connect(&args.args)?;
    let answer = api.delete(&format!("/v1/notify/silences/{}", args.id))?;
    if args.args.node.json {
        json_out(&answer.body)?;
    }
    if !answer.ok() {
        anyhow::bail!("expiring silence {}: {}", args.id, answer.reason());
    }
    if !args.args.node.json {
        outln!("silence {} expired", args.id);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn run(command: NotifyCommand) -> anyhow::Result<ExitCode> {
    match command {
        NotifyCommand::Channels(ChannelsCommand::List(args)) => channels(&args),
        NotifyCommand::Channels(ChannelsCommand::Test(args)) => test(&args),
        NotifyCommand::Channels(ChannelsCommand::Add(args)) => add_channel(&args),
        NotifyCommand::Channels(ChannelsCommand::Remove(args)) => remove_channel(&args),
        NotifyCommand::Rules(args) => rules(&args),
        NotifyCommand::Log(args) => log(&args),
        NotifyCommand::Ack(args) => ack(&args),
        NotifyCommand::Silences(SilencesCommand::List(args)) => silences(&args),
        NotifyCommand::Silences(SilencesCommand::Add(args)) => add_silence(&args),
        NotifyCommand::Silences(SilencesCommand::Expire(args)) => expire_silence(&args),
    }
}
