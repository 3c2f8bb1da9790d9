//! The JSON Schemas of what the listeners take and answer, one per type
//! the handlers serialize, named as `#/components/schemas/<Name>`. Each is
//! written from the Rust type it describes (the field list, which fields
//! may be `null`, how enums are tagged), strict where the type is ours
//! (`additionalProperties: false`) so that a field added to a handler
//! without its schema fails the document test and schemathesis.

use serde_json::{json, Map, Value};

/// A reference to a component schema.
pub(crate) fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// `schema` or `null`.
pub(crate) fn nullable(schema: Value) -> Value {
    json!({"anyOf": [schema, {"type": "null"}]})
}

/// An array of `items`.
pub(crate) fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

/// A non-negative integer up to `max`.
pub(crate) fn uint(max: u64) -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": max})
}

/// A `u64` (or `usize`) count.
pub(crate) fn count() -> Value {
    uint(u64::MAX)
}

/// A JSON number (an `f64` the handler computed).
pub(crate) fn number() -> Value {
    json!({"type": "number"})
}

/// A string.
pub(crate) fn string() -> Value {
    json!({"type": "string"})
}

/// A boolean.
pub(crate) fn boolean() -> Value {
    json!({"type": "boolean"})
}

/// One of the strings `values`.
pub(crate) fn one_of_strings(values: &[&str]) -> Value {
    json!({"type": "string", "enum": values})
}

/// An object with exactly these properties, all required.
pub(crate) fn object(properties: &[(&str, Value)]) -> Value {
    object_with(properties, &[])
}

/// An object with `required` properties, `optional` ones that may be
/// absent, and nothing else.
pub(crate) fn object_with(required: &[(&str, Value)], optional: &[(&str, Value)]) -> Value {
    let mut props = Map::new();
    for (name, schema) in required.iter().chain(optional) {
        props.insert((*name).to_owned(), schema.clone());
    }
    json!({
        "type": "object",
        "properties": props,
        "required": required.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        "additionalProperties": false,
    })
}

/// Every component schema, by name.
pub(crate) fn components() -> Vec<(&'static str, Value)> {
    vec![
        (
            "Error",
            json!({
                "description": "Every refusal: a short machine-readable kind and a sentence for people.",
                "type": "object",
                "properties": {
                    "error": {"type": "string", "pattern": "^[a-z_]+$"},
                    "reason": {"type": "string"},
                },
                "required": ["error", "reason"],
                "additionalProperties": false,
            }),
        ),
        (
            "Credits",
            json!({
                "description": "An amount of credits as an exact decimal string with at most 6 places (micro-credits), e.g. \"12.5\".",
                "type": "string",
                "pattern": "^-?[0-9]{1,13}(\\.[0-9]{1,6})?$",
            }),
        ),
        (
            "Id",
            json!({"description": "A content id: 32 bytes, hex.", "type": "string", "pattern": "^[0-9a-f]{64}$"}),
        ),
        (
            "PublicKey",
            json!({"description": "An account's ed25519 public key, hex.", "type": "string", "pattern": "^[0-9a-f]{64}$"}),
        ),
        (
            "Signature",
            json!({"description": "An ed25519 signature, hex.", "type": "string", "pattern": "^[0-9a-f]{128}$"}),
        ),
        (
            "UnixMillis",
            json!({"description": "Milliseconds since the Unix epoch.", "type": "integer", "minimum": 0}),
        ),
        (
            "Scope",
            one_of_strings(&[
                "customer:read",
                "customer:trade",
                "supplier:read",
                "analytics:read",
                "operator:read",
                "operator:deposit",
                "operator:review",
                "notify:manage",
                "tokens:manage",
            ]),
        ),
        (
            "DisputeReason",
            one_of_strings(&[
                "bad_signature",
                "broken_chain",
                "overlapping_window",
                "arithmetic_mismatch",
                "wrong_gpus",
                "overbilled",
                "not_delivered",
                "other",
            ]),
        ),
        ("Severity", one_of_strings(&["info", "warning", "critical"])),
        (
            "Offer",
            object(&[
                ("version", uint(u64::from(u16::MAX))),
                ("supplier", r("PublicKey")),
                ("sequence", count()),
                ("gpu_model", string()),
                ("gpu_memory_mib", count()),
                ("gpu_count", uint(u64::from(u16::MAX))),
                ("price_per_gpu_hour", r("Credits")),
                ("min_hours", uint(u64::from(u32::MAX))),
                ("max_hours", uint(u64::from(u32::MAX))),
                ("region", string()),
                ("hardware_fingerprint", r("Id")),
                ("created_at", r("UnixMillis")),
                ("expires_at", r("UnixMillis")),
            ]),
        ),
        (
            "SignedOffer",
            object(&[
                ("body", r("Offer")),
                ("signer", r("PublicKey")),
                ("signature", r("Signature")),
            ]),
        ),
        (
            "LeaseSettlement",
            object(&[
                ("paid", r("Credits")),
                ("refunded", r("Credits")),
                ("windows", count()),
                ("closed", boolean()),
            ]),
        ),
        (
            "LeaseState",
            one_of_strings(&["running", "stopped_at_cap", "ended", "unwatched"]),
        ),
        (
            "LeaseStatus",
            object(&[
                ("lease", r("Id")),
                ("supplier", r("PublicKey")),
                ("gpu_model", string()),
                ("gpus", array(uint(u64::from(u16::MAX)))),
                ("price_per_gpu_hour", r("Credits")),
                ("hours", uint(u64::from(u32::MAX))),
                ("max_cost", r("Credits")),
                ("spent", r("Credits")),
                ("acked_windows", count()),
                ("disputed_windows", count()),
                ("stopped_at_cap", boolean()),
                ("state", r("LeaseState")),
                ("escrowed", nullable(r("Credits"))),
                ("escrow_certificate", nullable(r("Id"))),
                ("settlement", nullable(r("LeaseSettlement"))),
            ]),
        ),
        (
            "BidRequest",
            object_with(
                &[
                    ("gpu", string()),
                    ("count", uint(u64::from(u16::MAX))),
                    ("max_price", r("Credits")),
                    ("hours", uint(u64::from(u32::MAX))),
                ],
                &[
                    ("min_memory_mib", count()),
                    ("region", nullable(string())),
                    ("budget", nullable(r("Credits"))),
                    ("window_secs", nullable(uint(u64::from(u32::MAX)))),
                    ("min_reputation_bp", uint(u64::from(u16::MAX))),
                    ("wait_secs", nullable(count())),
                ],
            ),
        ),
        (
            "BidStatus",
            object(&[
                ("id", r("Id")),
                (
                    "state",
                    one_of_strings(&["waiting", "leased", "no_match", "cancelled"]),
                ),
                ("gpu", string()),
                ("count", uint(u64::from(u16::MAX))),
                ("max_price", r("Credits")),
                ("hours", uint(u64::from(u32::MAX))),
                ("placed_at", r("UnixMillis")),
                ("wait_until", r("UnixMillis")),
                ("waited_ms", count()),
                ("attempts", uint(u64::from(u32::MAX))),
                ("published", boolean()),
                ("reason", nullable(string())),
                ("lease", nullable(r("LeaseStatus"))),
            ]),
        ),
        (
            "CapReport",
            object(&[
                ("cap", nullable(r("Credits"))),
                ("spent", r("Credits")),
                ("remaining", nullable(r("Credits"))),
            ]),
        ),
        (
            "LeaseCapReport",
            object(&[
                ("lease", r("Id")),
                ("cap", nullable(r("Credits"))),
                ("spent", r("Credits")),
                ("remaining", nullable(r("Credits"))),
                ("stopped_at_cap", boolean()),
            ]),
        ),
        (
            "AlertRecord",
            object(&[
                ("id", r("Id")),
                ("rule", string()),
                ("severity", r("Severity")),
                ("lease", nullable(r("Id"))),
                ("message", string()),
                ("created_at", r("UnixMillis")),
            ]),
        ),
        (
            "BudgetReport",
            object(&[
                ("account", r("CapReport")),
                ("leases", array(r("LeaseCapReport"))),
                ("alerts", array(r("AlertRecord"))),
            ]),
        ),
        (
            "BudgetChange",
            json!({
                "description": "Sets the account's cap, or one lease's; null removes the cap.",
                "oneOf": [
                    object(&[("account", nullable(r("Credits")))]),
                    object(&[("lease", r("Id")), ("cap", nullable(r("Credits")))]),
                ],
            }),
        ),
        (
            "Contest",
            object(&[("reason", r("DisputeReason")), ("detail", string())]),
        ),
        (
            "ContestRequest",
            json!({
                "description": "Dispute the lease's windows from now on (reason and detail), or stop (stop: true).",
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {
                            "reason": one_of_strings(&["not_delivered", "other"]),
                            "detail": {"type": "string", "minLength": 1},
                            "stop": {"const": false},
                        },
                        "required": ["reason", "detail"],
                    },
                    {
                        "type": "object",
                        "properties": {
                            "reason": {"type": "null"},
                            "stop": {"const": true},
                        },
                        "required": ["stop"],
                    },
                ],
            }),
        ),
        (
            "WindowRecord",
            json!({
                "type": "object",
                "properties": {
                    "seq": count(),
                    "attestation": r("Id"),
                    "window_start": r("UnixMillis"),
                    "window_end": r("UnixMillis"),
                    "billable_gpu_ms": count(),
                    "charge": r("Credits"),
                    "status": one_of_strings(&["acked", "disputed"]),
                    "reason": r("DisputeReason"),
                    "detail": string(),
                },
                "required": ["seq", "attestation", "window_start", "window_end", "billable_gpu_ms", "charge", "status"],
                "additionalProperties": false,
            }),
        ),
        (
            "DisputeNote",
            object(&[
                ("lease", r("Id")),
                ("seq", count()),
                ("reason", r("DisputeReason")),
                ("detail", string()),
                ("at", r("UnixMillis")),
            ]),
        ),
        (
            "SupplierRecord",
            object(&[
                ("supplier", r("PublicKey")),
                ("disputes", count()),
                (
                    "by_reason",
                    json!({"type": "object", "additionalProperties": count()}),
                ),
                ("last", nullable(r("DisputeNote"))),
            ]),
        ),
        (
            "UsageReport",
            object_with(
                &[
                    ("lease", r("Id")),
                    ("supplier", r("PublicKey")),
                    ("gpu_model", string()),
                    ("gpus", array(uint(u64::from(u16::MAX)))),
                    ("price_per_gpu_hour", r("Credits")),
                    ("hours", uint(u64::from(u32::MAX))),
                    ("window_ms", count()),
                    ("starts_at", r("UnixMillis")),
                    ("ends_at", r("UnixMillis")),
                    ("spent", r("Credits")),
                    ("billable_gpu_ms", count()),
                    ("acked_windows", count()),
                    ("disputed_windows", count()),
                    ("stopped_at_cap", boolean()),
                    ("escrowed", nullable(r("Credits"))),
                    ("agreement", nullable(string())),
                    ("ended", boolean()),
                    ("finally_settled", boolean()),
                    ("state", r("LeaseState")),
                    ("windows", array(r("WindowRecord"))),
                    ("earlier_windows", count()),
                    (
                        "budget",
                        object(&[("lease", r("CapReport")), ("account", r("CapReport"))]),
                    ),
                    ("supplier_record", nullable(r("SupplierRecord"))),
                ],
                &[("contested", r("Contest"))],
            ),
        ),
        (
            "LeaseSpend",
            object(&[
                ("lease", r("Id")),
                ("supplier", r("PublicKey")),
                ("gpu_model", string()),
                ("gpu_count", count()),
                ("state", r("LeaseState")),
                ("spent", r("Credits")),
                ("acked_windows", count()),
                ("disputed_windows", count()),
            ]),
        ),
        (
            "CoordinatorView",
            object(&[
                ("coordinator", r("PublicKey")),
                ("balance", r("Credits")),
                ("escrowed", r("Credits")),
                ("next_seq", count()),
            ]),
        ),
        (
            "Receipt",
            object(&[
                ("kind", json!({"type": "string", "pattern": "^[a-z_]+$"})),
                ("subject", r("Id")),
                ("lease", nullable(r("Id"))),
                ("amount", r("Credits")),
                ("votes", count()),
                ("verified", boolean()),
                ("created_at", r("UnixMillis")),
                ("bytes", string()),
            ]),
        ),
        (
            "AccountReport",
            object(&[
                ("account", r("PublicKey")),
                ("spent", r("Credits")),
                ("active_leases", count()),
                ("leases", array(r("LeaseSpend"))),
                ("leases_total", count()),
                ("budget", r("BudgetReport")),
                ("suppliers", array(r("SupplierRecord"))),
                ("coordinators", array(r("CoordinatorView"))),
                ("receipts", array(r("Receipt"))),
                ("receipts_total", count()),
            ]),
        ),
        (
            "GpuDevice",
            object(&[
                ("index", uint(u64::from(u32::MAX))),
                ("name", string()),
                ("uuid", string()),
                ("serial", nullable(string())),
                ("memory_total_mib", count()),
                ("pci_bus_id", string()),
                (
                    "compute_capability",
                    nullable(json!({
                        "type": "array",
                        "prefixItems": [uint(u64::from(u32::MAX)), uint(u64::from(u32::MAX))],
                        "minItems": 2,
                        "maxItems": 2,
                    })),
                ),
                ("driver_version", nullable(string())),
                ("cuda_version", nullable(string())),
            ]),
        ),
        (
            "GpuSample",
            object(&[
                ("timestamp", r("UnixMillis")),
                ("index", uint(u64::from(u32::MAX))),
                ("uuid", string()),
                ("util_bp", nullable(uint(u64::from(u16::MAX)))),
                ("memory_used_mib", nullable(count())),
                ("power_mw", nullable(uint(u64::from(u32::MAX)))),
                ("energy_mj", nullable(count())),
                ("temperature_c", nullable(uint(u64::from(u32::MAX)))),
                ("sm_clock_mhz", nullable(uint(u64::from(u32::MAX)))),
                ("mem_clock_mhz", nullable(uint(u64::from(u32::MAX)))),
                ("ecc_uncorrected", nullable(count())),
                ("xid_errors", array(count())),
                (
                    "health",
                    json!({
                        "type": "object",
                        "properties": {
                            "state": one_of_strings(&["healthy", "degraded", "lost"]),
                            "reason": string(),
                        },
                        "required": ["state"],
                        "additionalProperties": false,
                    }),
                ),
                (
                    "processes",
                    array(object(&[
                        ("pid", uint(u64::from(u32::MAX))),
                        ("used_memory_mib", nullable(count())),
                        ("sm_util_bp", nullable(uint(u64::from(u16::MAX)))),
                    ])),
                ),
            ]),
        ),
        (
            "Settled",
            object(&[
                ("certificates", array(r("Id"))),
                ("windows", count()),
                ("earned", r("Credits")),
                ("fees", r("Credits")),
                ("refunded", r("Credits")),
                ("closed", boolean()),
                ("last_error", nullable(string())),
            ]),
        ),
        (
            "SupplierLease",
            object(&[
                ("lease", r("Id")),
                ("customer", r("PublicKey")),
                ("gpus", array(uint(u64::from(u16::MAX)))),
                ("price_per_gpu_hour", r("Credits")),
                ("ends_at", r("UnixMillis")),
                ("windows_attested", count()),
                ("billable_gpu_ms", count()),
                ("earned", r("Credits")),
                ("settled", nullable(r("Settled"))),
            ]),
        ),
        (
            "TokenRecord",
            object(&[
                ("id", json!({"type": "string", "pattern": "^[0-9a-f]{16}$"})),
                ("name", string()),
                ("scopes", array(r("Scope"))),
                ("created_at", r("UnixMillis")),
                ("expires_at", nullable(r("UnixMillis"))),
                ("last_used", nullable(r("UnixMillis"))),
                ("revoked_at", nullable(r("UnixMillis"))),
            ]),
        ),
        (
            "NewToken",
            object_with(
                &[(
                    "scopes",
                    json!({"type": "array", "items": r("Scope"), "minItems": 1}),
                )],
                &[
                    (
                        "name",
                        nullable(json!({
                            "type": "string",
                            "pattern": "^[A-Za-z0-9._-]{1,64}$",
                        })),
                    ),
                    (
                        "expires_in_secs",
                        nullable(
                            json!({"type": "integer", "minimum": 1, "maximum": 3_153_600_000u64}),
                        ),
                    ),
                ],
            ),
        ),
        (
            "IssuedToken",
            object(&[
                (
                    "token",
                    json!({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
                ),
                ("record", r("TokenRecord")),
            ]),
        ),
        (
            "WhoAmI",
            object(&[
                (
                    "listener",
                    one_of_strings(&["customer", "supplier", "analytics", "operator"]),
                ),
                ("account", r("PublicKey")),
                ("token", string()),
                ("token_id", string()),
                ("scopes", array(r("Scope"))),
                ("expires_at", nullable(r("UnixMillis"))),
            ]),
        ),
        (
            "ChannelView",
            object(&[
                ("name", string()),
                ("type", string()),
                ("medium", string()),
                ("target", string()),
                ("source", one_of_strings(&["config", "added"])),
            ]),
        ),
        (
            "AddedChannel",
            object_with(
                &[(
                    "channel",
                    json!({
                        "description": "The channel as in the [notify] config: a name, a type and that type's settings; secrets as {\"file\": \"/abs/path\"} or {\"env\": \"RIGMESH_...\"}.",
                        "type": "object",
                        "properties": {"name": string(), "type": string()},
                        "required": ["name", "type"],
                    }),
                )],
                &[("recipients", array(string()))],
            ),
        ),
        (
            "Silence",
            object(&[
                ("id", count()),
                ("rule", string()),
                ("about", nullable(r("PublicKey"))),
                ("subject", nullable(r("Id"))),
                ("recipient", nullable(string())),
                ("starts_at", r("UnixMillis")),
                ("ends_at", r("UnixMillis")),
                ("active", boolean()),
                ("created_by", string()),
                ("comment", string()),
            ]),
        ),
        (
            "SilenceRequest",
            json!({
                "description": "At least one matcher (rule, about, subject, recipient), an expiry (ends_at or duration_secs, not both) and a comment.",
                "allOf": [
                    silence_fields(),
                    {"anyOf": [
                        {"required": ["rule"]},
                        {"required": ["about"]},
                        {"required": ["subject"]},
                        {"required": ["recipient"]},
                    ]},
                    {"oneOf": [{"required": ["ends_at"]}, {"required": ["duration_secs"]}]},
                ],
            }),
        ),
        (
            "AlertGroup",
            object_with(
                &[
                    ("id", string()),
                    ("recipient", string()),
                    ("severity", r("Severity")),
                    ("rule", string()),
                    ("label", string()),
                    ("channels", array(string())),
                    ("messages", count()),
                    ("created_at", r("UnixMillis")),
                    ("first_sent", nullable(r("UnixMillis"))),
                    ("last_sent", nullable(r("UnixMillis"))),
                    ("next_at", nullable(r("UnixMillis"))),
                    ("escalated", uint(u64::from(u32::MAX))),
                    (
                        "acknowledged",
                        nullable(object(&[("at", r("UnixMillis")), ("by", string())])),
                    ),
                ],
                &[("closed_at", r("UnixMillis")), ("reason", string())],
            ),
        ),
        (
            "Delivery",
            json!({
                "description": "A message in the outbox, delivered, or dead.",
                "type": "object",
                "properties": {
                    "key": string(),
                    "channel": string(),
                    "group": string(),
                    "rule": string(),
                    "severity": r("Severity"),
                    "subject": string(),
                    "alerts": count(),
                    "created_at": r("UnixMillis"),
                    "status": one_of_strings(&["pending", "delivered", "dead"]),
                    "attempts": count(),
                    "next_at": r("UnixMillis"),
                    "last_error": nullable(string()),
                    "delivered_at": r("UnixMillis"),
                },
                "required": ["key", "channel", "group", "rule", "severity", "subject", "created_at", "status", "attempts"],
                "additionalProperties": false,
            }),
        ),
        (
            "ReviewItem",
            object(&[
                ("id", count()),
                ("rule", string()),
                ("subject", string()),
                ("severity", r("Severity")),
                ("detail", string()),
                ("first_seen", r("UnixMillis")),
                ("last_seen", r("UnixMillis")),
                ("count", count()),
                ("state", one_of_strings(&["open", "acknowledged"])),
                ("acknowledged_by", nullable(string())),
                ("acknowledged_at", nullable(r("UnixMillis"))),
                ("note", nullable(string())),
            ]),
        ),
        (
            "SignedMessage",
            object(&[(
                "message",
                json!({
                    "description": "Hex of the signed message's canonical bytes, as `rigmesh message` prints them.",
                    "type": "string",
                    "pattern": "^\\s*[0-9a-fA-F]*\\s*$",
                }),
            )]),
        ),
        (
            "MemberAnswer",
            object(&[
                ("coordinator", r("PublicKey")),
                (
                    "answer",
                    one_of_strings(&["applied", "voted", "pending", "refused", "unreachable"]),
                ),
                ("reason", nullable(string())),
            ]),
        ),
        (
            "DepositOutcome",
            object_with(
                &[
                    ("deposit", r("Id")),
                    (
                        "state",
                        one_of_strings(&[
                            "applied",
                            "awaiting_approval",
                            "reference_used",
                            "not_applied",
                        ]),
                    ),
                    ("applied_by", count()),
                    ("held_by", count()),
                    ("quorum", count()),
                    ("answers", array(r("MemberAnswer"))),
                ],
                &refusal_fields(),
            ),
        ),
        (
            "DecisionOutcome",
            object_with(
                &[
                    ("kind", one_of_strings(&["deposit", "withdrawal"])),
                    ("id", r("Id")),
                    ("decision", one_of_strings(&["approved", "rejected"])),
                    ("state", one_of_strings(&["taken", "not_held", "not_taken"])),
                    ("coordinators", count()),
                    ("quorum", count()),
                    ("certificate", nullable(hex())),
                    ("answers", array(r("MemberAnswer"))),
                ],
                &refusal_fields(),
            ),
        ),
        (
            "ResolutionOutcome",
            object_with(
                &[
                    (
                        "case",
                        json!({"type": "string", "pattern": "^[0-9a-f]{64}:[0-9]+$"}),
                    ),
                    ("state", one_of_strings(&["resolved", "not_certified"])),
                    ("supplier_share", r("Credits")),
                    ("refund", r("Credits")),
                    (
                        "against",
                        one_of_strings(&["supplier", "customer", "neither"]),
                    ),
                    ("votes", count()),
                    ("quorum", count()),
                    ("applied_by", count()),
                    ("certificate", nullable(hex())),
                    ("answers", array(r("MemberAnswer"))),
                ],
                &refusal_fields(),
            ),
        ),
        (
            "Ban",
            object(&[
                ("offender", string()),
                ("kind", one_of_strings(&["peer", "address"])),
                ("until", r("UnixMillis")),
                ("reason", string()),
            ]),
        ),
        ("SeriesKind", one_of_strings(&["flow", "level"])),
        (
            "SeriesUnit",
            one_of_strings(&["credits", "gpu_hours", "percent", "count"]),
        ),
        (
            "ForecastPoint",
            object(&[
                ("at", r("UnixMillis")),
                ("value", number()),
                ("lower", number()),
                ("upper", number()),
            ]),
        ),
        (
            "Forecast",
            object(&[
                ("series", string()),
                ("kind", r("SeriesKind")),
                ("unit", r("SeriesUnit")),
                ("method", string()),
                ("history_hours", count()),
                ("points", array(r("ForecastPoint"))),
            ]),
        ),
        (
            "MoneyTotal",
            object(&[
                ("span", one_of_strings(&["24h", "7d", "30d"])),
                ("hours", count()),
                ("method", string()),
                ("value", r("Credits")),
                ("lower", r("Credits")),
                ("upper", r("Credits")),
            ]),
        ),
        (
            "CapRunOut",
            object(&[
                ("lease", nullable(r("Id"))),
                ("cap", r("Credits")),
                ("spent", r("Credits")),
                ("remaining", r("Credits")),
                ("run_out_at", nullable(r("UnixMillis"))),
                ("earliest_run_out_at", nullable(r("UnixMillis"))),
                ("basis", string()),
            ]),
        ),
        (
            "SpendReport",
            object(&[
                ("horizon_hours", count()),
                ("generated_at", r("UnixMillis")),
                ("spend", nullable(r("Forecast"))),
                ("gpu_hours", nullable(r("Forecast"))),
                ("totals", array(r("MoneyTotal"))),
                ("account_cap", nullable(r("CapRunOut"))),
                ("lease_caps", array(r("CapRunOut"))),
                ("running_leases", array(r("LeaseStatus"))),
            ]),
        ),
        (
            "EarningsReport",
            object(&[
                ("horizon_hours", count()),
                ("generated_at", r("UnixMillis")),
                ("earnings", nullable(r("Forecast"))),
                ("gpu_hours_sold", nullable(r("Forecast"))),
                ("utilisation", nullable(r("Forecast"))),
                ("totals", array(r("MoneyTotal"))),
            ]),
        ),
        (
            "MarketReport",
            object(&[
                ("horizon_hours", count()),
                ("generated_at", r("UnixMillis")),
                (
                    "models",
                    array(object(&[
                        ("model", string()),
                        (
                            "latest_price",
                            nullable(json!({
                                "description": "The latest 10th, 50th and 90th percentile prices per GPU-hour, credits.",
                                "type": "array",
                                "items": number(),
                                "minItems": 3,
                                "maxItems": 3,
                            })),
                        ),
                        ("price", nullable(r("Forecast"))),
                        ("offers", nullable(r("Forecast"))),
                        ("leases_started", nullable(r("Forecast"))),
                    ])),
                ),
                ("leases_started", nullable(r("Forecast"))),
            ]),
        ),
        (
            "OpenApiDocument",
            json!({
                "description": "This listener's OpenAPI document.",
                "type": "object",
                "properties": {
                    "openapi": {"type": "string", "pattern": "^3\\."},
                    "info": {"type": "object"},
                    "paths": {"type": "object"},
                    "components": {"type": "object"},
                },
                "required": ["openapi", "info", "paths"],
            }),
        ),
    ]
}

/// Hex bytes.
fn hex() -> Value {
    json!({"type": "string", "pattern": "^([0-9a-f]{2})*$"})
}

/// The `error` and `reason` an outcome carries when it is a refusal.
fn refusal_fields() -> [(&'static str, Value); 2] {
    [
        ("error", json!({"type": "string", "pattern": "^[a-z_]+$"})),
        ("reason", string()),
    ]
}

/// The fields of `POST /v1/notify/silences` (the rules across them are in
/// the `SilenceRequest` schema).
fn silence_fields() -> Value {
    object_with(
        &[(
            "comment",
            json!({"type": "string", "minLength": 1, "maxLength": 1024}),
        )],
        &[
            ("rule", json!({"type": "string", "maxLength": 128})),
            ("about", nullable(r("PublicKey"))),
            ("subject", nullable(r("Id"))),
            ("recipient", nullable(string())),
            ("starts_at", nullable(r("UnixMillis"))),
            ("ends_at", r("UnixMillis")),
            ("duration_secs", uint(31_622_400)),
            (
                "created_by",
                nullable(json!({"type": "string", "minLength": 1, "maxLength": 128})),
            ),
        ],
    )
}
