//! What each route of each listener takes and answers: its summary, query
//! parameters, request body and responses, written from its handler.
//! [`operation`] is keyed by the route tables' `(listener, method, path)`;
//! a route the tables declare but this file does not describe comes back
//! `None`, which the document marks and the document test refuses.

use serde_json::{json, Value};

use super::schemas::{
    array, boolean, count, nullable, number, object, object_with, one_of_strings, r, string, uint,
};
use crate::api::Listener;

/// A response body.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    /// JSON of this schema.
    Json(Value),
    /// Text of this media type.
    Text(&'static str),
    /// No body.
    Empty,
}

/// One route's description.
#[derive(Debug, Clone)]
pub(crate) struct Operation {
    /// One line: what it does.
    pub(crate) summary: &'static str,
    /// Query parameters: name, schema, description.
    pub(crate) query: Vec<(&'static str, Value, &'static str)>,
    /// The JSON request body's schema, and whether the body is required.
    pub(crate) body: Option<(Value, bool)>,
    /// Status, what it means, body. Refusals of the token check and the
    /// firewall are added from the route's access.
    pub(crate) responses: Vec<(u16, &'static str, Body)>,
    /// Headers of the 200 answer: name, schema, description.
    pub(crate) headers: Vec<(&'static str, Value, &'static str)>,
}

fn op(summary: &'static str) -> Operation {
    Operation {
        summary,
        query: Vec::new(),
        body: None,
        responses: Vec::new(),
        headers: Vec::new(),
    }
}

impl Operation {
    fn ok(mut self, schema: Value) -> Self {
        self.responses.push((200, "OK", Body::Json(schema)));
        self
    }

    fn answers(mut self, status: u16, what: &'static str, body: Body) -> Self {
        self.responses.push((status, what, body));
        self
    }

    /// Refusals with the shared error body.
    fn refuses(mut self, statuses: &[u16]) -> Self {
        for status in statuses {
            let what = match status {
                400 => "Bad input; nothing changed",
                404 => "No such thing on this node",
                409 => "Conflicts with the current state, or the node does not play the role",
                500 => "The node failed",
                502 => "A peer or channel did not answer",
                503 => "Busy or stopping; try again",
                _ => "Refused",
            };
            self.responses.push((*status, what, Body::Json(r("Error"))));
        }
        self
    }

    fn query(mut self, name: &'static str, schema: Value, what: &'static str) -> Self {
        self.query.push((name, schema, what));
        self
    }

    fn body(mut self, schema: Value, required: bool) -> Self {
        self.body = Some((schema, required));
        self
    }

    fn header(mut self, name: &'static str, schema: Value, what: &'static str) -> Self {
        self.headers.push((name, schema, what));
        self
    }
}

/// The cursor of an offer listing: the last offer's price (micro-credits),
/// `created_at` and id (hex), as the order book writes it.
fn offer_cursor() -> Value {
    json!({"type": "string", "pattern": "^-?[0-9]{1,18}_[0-9]{1,19}_[0-9a-f]{64}$"})
}

/// A `limit`-style query parameter: a count the handler clamps.
fn limit() -> Value {
    uint(u64::from(u32::MAX))
}

/// The description of `method path` on `listener`, or `None` when this
/// file does not know the route.
pub(crate) fn operation(listener: Listener, method: &str, path: &str) -> Option<Operation> {
    use Listener::*;
    let o = match (listener, method, path) {
        (_, "GET", "/openapi.json") => op("This listener's OpenAPI document")
            .ok(r("OpenApiDocument")),
        (Public, "GET", "/v1/offers") => op("Live offers, cheapest first, filtered, a page at a time")
            .query("gpu", string(), "GPU model (exact)")
            .query("max_price", r("Credits"), "Most per GPU-hour")
            .query("region", string(), "Region (exact)")
            .query("min_gpus", uint(u64::from(u32::MAX)), "At least this many GPUs in the offer")
            .query("min_memory_mib", count(), "At least this much memory per GPU, MiB")
            .query("limit", limit(), "Offers on the page (50 by default, clamped to 1..=200)")
            .query("cursor", offer_cursor(), "The next_cursor of the page before")
            .ok(object(&[
                ("offers", array(r("SignedOffer"))),
                ("total", count()),
                ("next_cursor", nullable(offer_cursor())),
            ]))
            .refuses(&[400]),
        (Public, "GET", "/v1/prices") => op("Per GPU model: live offers and price quantiles per GPU-hour")
            .ok(object(&[(
                "models",
                array(object(&[
                    ("gpu_model", string()),
                    ("offers", count()),
                    ("min", r("Credits")),
                    ("p10", r("Credits")),
                    ("median", r("Credits")),
                    ("p90", r("Credits")),
                ])),
            )])),
        (Public, "GET", "/v1/market") => op("Counts over the live offers")
            .ok(object(&[
                ("offers", count()),
                ("suppliers", count()),
                ("gpus", count()),
                ("gpu_models", count()),
                ("regions", array(string())),
            ])),

        (Monitoring, "GET", "/metrics") => op("Prometheus metrics (OpenMetrics text)")
            .answers(200, "OK", Body::Text("application/openmetrics-text"))
            .answers(500, "The metrics did not encode", Body::Empty),
        (Monitoring, "GET", "/health") => op("Does the node work: ledger write probe, peers, queues")
            .ok(health())
            .answers(503, "The ledger takes no write, or the node stopped", Body::Json(health())),
        (Monitoring, "GET", "/ready") => op("Ready once the swarm, the store and every listener are up")
            .ok(object(&[("ready", json!({"const": true}))]))
            .answers(503, "Starting", Body::Json(object(&[("ready", json!({"const": false})), ("reason", string())]))),

        (Customer, "GET", "/v1/offers") => op("Live offers, cheapest first (then newest), a page at a time")
            .query("gpu", string(), "GPU model (exact)")
            .query("max_price", r("Credits"), "Most per GPU-hour")
            .query("limit", limit(), "Offers on the page (200 by default, clamped to 1..=1000)")
            .query("cursor", offer_cursor(), "The next-cursor header of the page before")
            .ok(array(r("SignedOffer")))
            .header("next-cursor", offer_cursor(), "Where the next page starts; absent on the last page")
            .refuses(&[400]),
        (Customer, "POST", "/v1/bid") => op("Lease the best matching offer now, or stand the bid when it may wait (moves money: escrow)")
            .body(r("BidRequest"), true)
            .ok(r("LeaseStatus"))
            .answers(202, "Nothing matched yet; the bid stands", Body::Json(r("BidStatus")))
            .refuses(&[400, 404, 409, 502, 503]),
        (Customer, "GET", "/v1/bids") => op("Standing bids, waiting and recently finished")
            .ok(array(r("BidStatus")))
            .refuses(&[409]),
        (Customer, "GET", "/v1/bids/{id}") => op("One standing bid")
            .ok(r("BidStatus"))
            .refuses(&[400, 404, 409]),
        (Customer, "DELETE", "/v1/bids/{id}") => op("Stop a waiting bid")
            .ok(r("BidStatus"))
            .refuses(&[400, 404, 409, 500]),
        (Customer, "GET", "/v1/leases") => op("This node's leases")
            .ok(array(r("LeaseStatus")))
            .refuses(&[409, 503]),
        (Customer, "POST", "/v1/leases/{id}/end") => op("End a running lease at the end of the window in progress")
            .ok(r("LeaseStatus"))
            .refuses(&[400, 404, 409, 500]),
        (Customer, "POST", "/v1/leases/{id}/dispute") => op("Dispute a lease's windows from now on, or stop disputing")
            .body(r("ContestRequest"), true)
            .ok(r("LeaseStatus"))
            .refuses(&[400, 404, 409, 500]),
        (Customer | Analytics, "GET", "/v1/usage/{lease}") => op("A lease's metered windows and its budget")
            .query("limit", limit(), "Most windows listed, the most recent (100 by default)")
            .ok(r("UsageReport"))
            .refuses(&[400, 404, 409, 500, 503]),
        (Customer, "GET", "/v1/budget") => op("The caps and the spend against them")
            .ok(r("BudgetReport"))
            .refuses(&[400, 404, 409, 500, 503]),
        (Customer, "PUT", "/v1/budget") => op("Change the account's cap or a lease's")
            .body(r("BudgetChange"), true)
            .ok(r("BudgetReport"))
            .refuses(&[400, 404, 409, 500]),
        (Customer, "GET", "/v1/account") | (Analytics, "GET", "/v1/spend") => op("The account: spend, leases, budget, coordinators' balances, receipts")
            .query("receipts", limit(), "Most receipts listed, the most recent (100 by default, 10,000 at most)")
            .query("leases", limit(), "Most leases listed, those that start last (100 by default, 10,000 at most)")
            .ok(r("AccountReport"))
            .refuses(&[400, 404, 409, 500, 503]),

        (Supplier, "GET", "/v1/offers") => op("This supplier's live offers, cheapest first, a page at a time")
            .query("gpu", string(), "GPU model (exact)")
            .query("max_price", r("Credits"), "Most per GPU-hour")
            .query("limit", limit(), "Offers on the page (200 by default, clamped to 1..=1000)")
            .query("cursor", offer_cursor(), "The next-cursor header of the page before")
            .ok(array(r("SignedOffer")))
            .header("next-cursor", offer_cursor(), "Where the next page starts; absent on the last page")
            .refuses(&[400]),
        (Supplier, "GET", "/v1/gpus") => op("The GPUs and their latest samples")
            .ok(object(&[("gpus", array(r("GpuDevice"))), ("latest", array(r("GpuSample")))]))
            .refuses(&[409]),
        (Supplier, "GET", "/v1/leases") => op("The supplier's leases, those that end last first")
            .query("limit", limit(), "Most leases listed (100 by default, 10,000 at most)")
            .ok(array(r("SupplierLease")))
            .header("total-count", count(), "How many leases the supplier has in all")
            .refuses(&[400, 409]),
        (Supplier | Analytics, "GET", "/v1/earnings") => op("Attested and settled earnings, in all and for the leases that end last")
            .query("limit", limit(), "Most leases listed (100 by default, 10,000 at most)")
            .ok(object(&[
                ("attested_total", r("Credits")),
                ("settled_total", r("Credits")),
                (
                    "leases",
                    array(object(&[
                        ("lease", r("Id")),
                        ("earned", r("Credits")),
                        ("settled", nullable(r("Settled"))),
                    ])),
                ),
                ("leases_total", count()),
                ("note", string()),
            ]))
            .refuses(&[400, 409]),

        (Customer | Supplier | Operator, "GET", "/v1/audit") => op("The tail of the audit chain")
            .query("from", count(), "First sequence number; by default the last `limit` records")
            .query("limit", limit(), "Most records (50 by default, clamped to 1..=500)")
            .ok(object(&[
                ("length", count()),
                (
                    "records",
                    array(object(&[
                        ("seq", count()),
                        ("at", r("UnixMillis")),
                        ("who", r("PublicKey")),
                        ("action", string()),
                        ("subject", r("Id")),
                        ("detail", string()),
                        ("hash", r("Id")),
                    ])),
                ),
            ]))
            .refuses(&[400, 409, 500]),
        (Customer | Supplier | Operator, "GET", "/v1/audit/verify") => op("Walk the whole audit chain")
            .ok(object(&[
                ("intact", boolean()),
                ("verified", count()),
                ("broken", nullable(object(&[("seq", count()), ("reason", string())]))),
            ]))
            .refuses(&[409, 500]),
        (Operator, "GET", "/v1/books") => op("Replay the journal and sum the balances")
            .ok(object(&[
                ("entries", count()),
                ("accounts", count()),
                (
                    "totals",
                    object(&[
                        ("users", r("Credits")),
                        ("fees", r("Credits")),
                        ("escrow", r("Credits")),
                        ("payable", r("Credits")),
                        ("disputed", r("Credits")),
                        ("external", r("Credits")),
                        ("held", nullable(r("Credits"))),
                    ]),
                ),
            ]))
            .refuses(&[409, 500]),
        (Operator, "GET", "/v1/disputes") => op("The open dispute cases, at most 500")
            .ok(object(&[(
                "cases",
                array(object(&[
                    ("case", json!({"type": "string", "pattern": "^[0-9a-f]{64}:[0-9]+$"})),
                    ("lease", r("Id")),
                    ("settlement", count()),
                    ("request", r("Id")),
                    ("supplier", r("PublicKey")),
                    ("customer", r("PublicKey")),
                    ("held", r("Credits")),
                    ("windows", json!({"type": "string", "pattern": "^[0-9]+\\.\\.=[0-9]+$"})),
                    ("opened_at", r("UnixMillis")),
                ])),
            )]))
            .refuses(&[409, 500]),
        (Operator, "GET", "/v1/disputes/{lease}/{settlement}") => op("One dispute case's file: the settlement, the evidence, the resolution")
            .ok(object(&[
                ("case", json!({"type": "string", "pattern": "^[0-9a-f]{64}:[0-9]+$"})),
                ("request", message_body()),
                ("opened_at", r("UnixMillis")),
                ("held_windows", count()),
                ("attestations", array(message_body())),
                ("disputes", array(message_body())),
                ("acks_of_other_attestations", array(message_body())),
                ("resolution", nullable(message_body())),
            ]))
            .refuses(&[400, 404, 409, 500]),

        (Operator, "GET", "/v1/review") => op("The suspicious-activity review items, newest first, at most 1000")
            .query("state", one_of_strings(&["open", "acknowledged", "all"]), "Which items (open by default)")
            .ok(object(&[("items", array(r("ReviewItem")))]))
            .refuses(&[400, 409, 500]),
        (Operator, "POST", "/v1/review/{id}/ack") => op("Acknowledge a review item with a note on what the operator made of it")
            .body(
                object(&[("note", json!({"type": "string", "minLength": 1, "maxLength": crate::review::MAX_NOTE}))]),
                true,
            )
            .ok(r("ReviewItem"))
            .refuses(&[400, 404])
            .answers(409, "Already acknowledged, or the node keeps no review queue", Body::Json(r("Error")))
            .refuses(&[500]),
        (Operator, "POST", "/v1/deposits") => op("Hand an admin-signed deposit to every coordinator (moves money)")
            .body(r("SignedMessage"), true)
            .ok(r("DepositOutcome"))
            .answers(202, "Held for a second admin's approval", Body::Json(r("DepositOutcome")))
            .refuses(&[400])
            .answers(
                409,
                "The reference is used, too few coordinators applied it, or the node is no coordinator",
                Body::Json(json!({"anyOf": [with_refusal(r("DepositOutcome")), r("Error")]})),
            )
            .refuses(&[500]),
        (Operator, "POST", "/v1/approvals") => op("Hand an admin-signed approval or rejection of a held deposit or withdrawal to every coordinator (moves money)")
            .body(r("SignedMessage"), true)
            .ok(r("DecisionOutcome"))
            .refuses(&[400])
            .answers(404, "No coordinator holds it", Body::Json(with_refusal(r("DecisionOutcome"))))
            .answers(
                409,
                "Too few coordinators took it, or the node is no coordinator",
                Body::Json(json!({"anyOf": [with_refusal(r("DecisionOutcome")), r("Error")]})),
            )
            .refuses(&[500]),
        (Operator, "POST", "/v1/disputes/{lease}/{settlement}/resolution") => op("Hand an admin-signed resolution of this dispute case to every coordinator (moves money)")
            .body(r("SignedMessage"), true)
            .ok(r("ResolutionOutcome"))
            .refuses(&[400])
            .answers(
                409,
                "No quorum voted for it, or the node is no coordinator",
                Body::Json(json!({"anyOf": [with_refusal(r("ResolutionOutcome")), r("Error")]})),
            )
            .refuses(&[500]),
        (Operator, "GET", "/v1/held/{kind}") => op("What the coordinator set holds for an admin's decision (deposits or withdrawals)")
            .ok(object(&[
                ("epoch", count()),
                ("quorum", count()),
                (
                    "held",
                    array(object(&[
                        ("id", r("Id")),
                        ("account", string()),
                        ("amount", string()),
                        ("detail", string()),
                        ("held_by", count()),
                        ("since", r("UnixMillis")),
                    ])),
                ),
            ]))
            .refuses(&[404, 409]),
        (Operator, "GET", "/v1/bans") => op("The bans in force on this node, longest first")
            .ok(object(&[("bans", array(r("Ban")))]))
            .refuses(&[409, 500]),
        (Operator, "POST", "/v1/bans") => op("Ban a peer id or an address for a while, durably")
            .body(
                object(&[
                    ("offender", string()),
                    ("secs", json!({"type": "integer", "minimum": 1, "maximum": 365 * 24 * 3600})),
                    ("reason", json!({"type": "string", "minLength": 1, "maxLength": 256})),
                ]),
                true,
            )
            .ok(r("Ban"))
            .refuses(&[400, 409, 500]),
        (Operator, "DELETE", "/v1/bans/{offender}") => op("Lift the ban of a peer id or an address now, durably")
            .ok(object(&[
                ("offender", string()),
                ("kind", one_of_strings(&["peer", "address"])),
                ("lifted", json!({"const": true})),
            ]))
            .refuses(&[400, 404, 409, 500]),

        (Analytics, "GET", "/v1/series") => op("The series this node keeps, with their kinds and units")
            .ok(object(&[
                (
                    "series",
                    array(object(&[
                        ("series", string()),
                        ("kind", r("SeriesKind")),
                        ("unit", r("SeriesUnit")),
                    ])),
                ),
                ("kept_hours", count()),
            ]))
            .refuses(&[409, 500, 503]),
        (Analytics, "GET", "/v1/series/{*name}") => op("A series' recorded hours, in the unit it is shown in")
            .query("hours", json!({"type": "integer", "minimum": 1}), "Hours back from now (a week by default, at most the hours kept)")
            .ok(object(&[
                ("series", string()),
                ("kind", r("SeriesKind")),
                ("unit", r("SeriesUnit")),
                ("points", array(object(&[("at", r("UnixMillis")), ("value", number())]))),
            ]))
            .refuses(&[400, 409, 500, 503]),
        (Analytics, "GET", "/v1/forecast/spend") => op("The customer's spend ahead: hourly forecast, totals for 24 h, 7 d and 30 d, when each cap runs out")
            .query("horizon", string(), "Hours forecast: 24h (the default), 7d, 2w...")
            .ok(r("SpendReport"))
            .refuses(&[400, 409, 500, 503]),
        (Analytics, "GET", "/v1/forecast/earnings") => op("A supplier's earnings, GPU time sold and utilisation ahead")
            .query("horizon", string(), "Hours forecast: 24h (the default), 7d, 2w...")
            .ok(r("EarningsReport"))
            .refuses(&[400, 409, 500, 503]),
        (Analytics, "GET", "/v1/forecast/market") => op("Price and supply ahead per GPU model")
            .query("horizon", string(), "Hours forecast: 24h (the default), 7d, 2w...")
            .ok(r("MarketReport"))
            .refuses(&[400, 409, 500, 503]),
        (Analytics, "GET", "/dashboard") => op("The analytics dashboard: one self-contained page")
            .answers(200, "The page", Body::Text("text/html")),

        (Customer | Supplier | Analytics | Operator, "GET", "/v1/whoami") => op("Who this token is: its name, scopes and expiry")
            .ok(r("WhoAmI")),
        (Customer | Supplier | Operator, _, _) => return common(method, path),
        _ => return None,
    };
    Some(o)
}

/// The routes every CLI listener serves.
fn common(method: &str, path: &str) -> Option<Operation> {
    let o = match (method, path) {
        ("GET", "/v1/notify/channels") => op("The notification channels (no secret)")
            .ok(array(r("ChannelView")))
            .refuses(&[409]),
        ("POST", "/v1/notify/channels") => op("Add a channel at run time")
            .body(r("AddedChannel"), true)
            .ok(json!({"anyOf": [r("ChannelView"), object(&[("name", string())])]}))
            .refuses(&[400, 404, 409, 500]),
        ("DELETE", "/v1/notify/channels/{name}") => op("Remove a channel added at run time")
            .ok(object(&[("name", string()), ("removed", json!({"const": true}))]))
            .refuses(&[400, 404, 409, 500]),
        ("GET", "/v1/notify/silences") => op("The silences")
            .ok(array(r("Silence")))
            .refuses(&[409, 500]),
        ("POST", "/v1/notify/silences") => op("Add a silence: a matcher, an expiry and a comment")
            .body(r("SilenceRequest"), true)
            .ok(r("Silence"))
            .refuses(&[400, 409, 500]),
        ("DELETE", "/v1/notify/silences/{id}") => op("End a silence now")
            .ok(object(&[("id", count()), ("expired", json!({"const": true}))]))
            .refuses(&[400, 404, 409, 500]),
        ("POST", "/v1/notify/channels/{name}/test") => op("Send a test message on a channel at once")
            .ok(object(&[("channel", string()), ("delivered", json!({"const": true}))]))
            .refuses(&[404, 409, 502]),
        ("GET", "/v1/notify/rules") => op("Who hears what: recipients, routes, inhibition, grouping")
            .ok(object(&[
                ("recipients", array(json!({"type": "object", "required": ["name", "defaults"]}))),
                ("inhibit", json!({})),
                ("grouping", json!({})),
                ("ack_url", nullable(string())),
            ]))
            .refuses(&[409]),
        ("GET", "/v1/notify/log") => op("Open alert groups, the outbox, deliveries, dead letters, closed groups")
            .ok(object(&[
                ("groups", array(r("AlertGroup"))),
                ("pending", array(r("Delivery"))),
                ("sent", array(r("Delivery"))),
                ("dead", array(r("Delivery"))),
                ("closed", array(r("AlertGroup"))),
                ("outbox_len", count()),
                ("dead_total", count()),
            ]))
            .refuses(&[409, 500]),
        ("POST", "/v1/notify/groups/{group}/ack") => op("Acknowledge an alert group: its repeats and escalation stop")
            .body(object_with(&[], &[("by", nullable(string()))]), false)
            .ok(object(&[("group", string()), ("acknowledged", json!({"const": true})), ("by", string())]))
            .refuses(&[400, 403, 404, 409, 500]),
        ("GET", "/v1/notify/ack/{group}") => op("The acknowledgement link's page: a button, so that a link preview acknowledges nothing")
            .query("token", string(), "The group's token, from the message")
            .answers(200, "A page with a button", Body::Text("text/html")),
        ("POST", "/v1/notify/ack/{group}") => op("Acknowledge an alert group with the group's token from the message")
            .query("token", string(), "The group's token, from the message")
            .answers(200, "Acknowledged", Body::Text("text/html"))
            .refuses(&[400, 403, 404, 409, 500]),
        ("GET", "/v1/tokens") => op("Every token's record, never a secret")
            .ok(array(r("TokenRecord"))),
        ("POST", "/v1/tokens") => op("Make a token (never wider than the caller's); the secret is shown this once")
            .body(r("NewToken"), true)
            .answers(201, "Made", Body::Json(r("IssuedToken")))
            .refuses(&[400, 500]),
        ("DELETE", "/v1/tokens/{token}") => op("Revoke a token by name or id; it is refused from now on")
            .ok(r("TokenRecord"))
            .refuses(&[404, 500]),
        _ => return None,
    };
    Some(o)
}

/// An outcome answered with a refusal: its fields plus the `error` and
/// `reason` every refusal carries.
fn with_refusal(outcome: Value) -> Value {
    json!({"allOf": [outcome, {"type": "object", "required": ["error", "reason"]}]})
}

/// `GET /health`'s answer, running or stopped.
fn health() -> Value {
    let ledger = object_with(&[("writable", boolean())], &[("reason", string())]);
    json!({
        "oneOf": [
            object(&[
                ("status", super::schemas::one_of_strings(&["ok", "degraded", "failing"])),
                ("peer_id", string()),
                ("ledger", ledger.clone()),
                ("peers", count()),
                ("accepted", count()),
                ("rejected", count()),
                ("banned", count()),
                ("unreachable_bootstrap", array(object(&[("address", string()), ("reason", string())]))),
                (
                    "queues",
                    object(&[
                        ("gossip_dropped", count()),
                        ("customer_commands", nullable(object(&[("depth", count()), ("capacity", count())]))),
                    ]),
                ),
            ]),
            object(&[("status", json!({"const": "stopped"})), ("ledger", ledger)]),
        ]
    })
}

/// The body of a signed protocol message (specs/protocol.md names each
/// kind's fields); every kind carries its version.
fn message_body() -> Value {
    json!({
        "type": "object",
        "properties": {"version": uint(u64::from(u16::MAX))},
        "required": ["version"],
    })
}
