//! Each listener's OpenAPI 3.1 document, built from its route table
//! ([`Listener::routes`]) so that a served route cannot be missing from
//! it: the paths, methods and `{name}` parameters come from the table, the
//! bearer security and the scope each route needs from its [`Access`],
//! the refusals of the token check and the firewall (401, 403, 413, 429
//! with the shared `{"error", "reason"}` body) from the same, and the
//! bodies and answers from [`operations`]. Each listener serves its own at
//! `GET /openapi.json`; `rigmesh node openapi --listener NAME` prints it,
//! and `specs/openapi/<listener>.json` holds the checked-in copy that the
//! document test compares with what this code generates.

use std::collections::BTreeSet;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};

use super::{Access, Listener, RouteSpec};

mod operations;
mod schemas;

/// The path every listener serves its document at.
pub const DOCUMENT_PATH: &str = "/openapi.json";

/// Marks an operation that [`operations`] does not describe; the document
/// test fails on it.
pub const UNDESCRIBED: &str = "x-rigmesh-undescribed";

fn title(listener: Listener) -> &'static str {
    match listener {
        Listener::Public => "rigmesh public API: read-only market data, no token",
        Listener::Customer => "rigmesh customer API: the customer's CLI",
        Listener::Supplier => "rigmesh supplier API: the supplier's CLI",
        Listener::Analytics => "rigmesh analytics API: usage, spend and earnings for dashboards",
        Listener::Operator => "rigmesh operator API: a coordinator's audit chain, books and queues",
        Listener::Monitoring => "rigmesh monitoring: metrics, health, readiness",
    }
}

/// The names of a path template's parameters, in order.
pub fn path_parameters(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|part| part.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
        .collect()
}

/// The schema of path parameter `name` of `path`: what its handler parses.
fn parameter_schema(path: &str, name: &str) -> Value {
    match name {
        "id" if path.starts_with("/v1/notify/silences") => {
            json!({"type": "string", "pattern": "^[0-9]{1,19}$"})
        }
        "id" | "lease" => schemas::r("Id"),
        "settlement" => json!({"type": "string", "pattern": "^[0-9]{1,19}$"}),
        "group" => json!({"type": "string", "pattern": "^[0-9a-f]{1,64}$"}),
        "kind" => schemas::one_of_strings(&["deposits", "withdrawals"]),
        // A series name may hold `/` (`market/<model>/offers`).
        "*name" => {
            json!({"type": "string", "pattern": "^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$", "maxLength": 96})
        }
        _ => json!({"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}),
    }
}

fn security_note(access: Access) -> String {
    match access {
        Access::Open => "No token.".into(),
        Access::AnyToken => "Any valid token of this node (Authorization: Bearer <token>).".into(),
        Access::Scope(scope) => {
            format!("Needs a token with the scope `{scope}` (Authorization: Bearer <token>).")
        }
        Access::OwnToken => {
            "No bearer token: the link carries the alert group's own token in `?token=`.".into()
        }
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": schemas::r("Error")}},
    })
}

fn body_response(description: &str, body: &operations::Body) -> Value {
    match body {
        operations::Body::Json(schema) => json!({
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }),
        operations::Body::Text(media) => {
            let mut content = Map::new();
            content.insert((*media).to_owned(), json!({"schema": {"type": "string"}}));
            json!({"description": description, "content": content})
        }
        operations::Body::Empty => json!({"description": description}),
    }
}

fn operation_json(listener: Listener, spec: &RouteSpec) -> Value {
    let described = operations::operation(listener, spec.method, spec.path);
    let mut parameters: Vec<Value> = path_parameters(spec.path)
        .into_iter()
        .map(|name| {
            json!({
                "name": name,
                "in": "path",
                "required": true,
                "schema": parameter_schema(spec.path, name),
            })
        })
        .collect();
    let mut responses = Map::new();
    let mut op = Map::new();
    let note = security_note(spec.access);
    match &described {
        Some(d) => {
            op.insert("summary".into(), d.summary.into());
            for (name, schema, what) in &d.query {
                parameters.push(json!({
                    "name": name,
                    "in": "query",
                    "required": false,
                    "description": what,
                    "schema": schema,
                }));
            }
            if let Some((schema, required)) = &d.body {
                op.insert(
                    "requestBody".into(),
                    json!({
                        "required": required,
                        "content": {"application/json": {"schema": schema}},
                    }),
                );
            }
            for (status, what, body) in &d.responses {
                let mut response = body_response(what, body);
                if *status == 200 && !d.headers.is_empty() {
                    let headers: Map<String, Value> = d
                        .headers
                        .iter()
                        .map(|(name, schema, what)| {
                            (
                                (*name).to_string(),
                                json!({"description": what, "schema": schema}),
                            )
                        })
                        .collect();
                    if let Some(fields) = response.as_object_mut() {
                        fields.insert("headers".into(), headers.into());
                    }
                }
                responses.insert(status.to_string(), response);
            }
        }
        None => {
            op.insert(UNDESCRIBED.into(), true.into());
        }
    }
    op.insert("description".into(), note.into());
    op.insert(
        "operationId".into(),
        operation_id(spec.method, spec.path).into(),
    );
    if !parameters.is_empty() {
        op.insert("parameters".into(), parameters.into());
    }
    let token = matches!(spec.access, Access::AnyToken | Access::Scope(_));
    let security = if token {
        json!([{"bearer": []}])
    } else {
        json!([])
    };
    op.insert("security".into(), security);
    // What the token check and the firewall answer before any handler.
    if token {
        responses.insert(
            "401".into(),
            error_response("No token, or one this node does not accept (token_missing, token_not_recognised, token_expired, token_revoked)"),
        );
    }
    let forbidden = match spec.access {
        Access::Scope(_) => "The token lacks the route's scope (scope_missing), or the source network is not allowed (forbidden_network)",
        _ => "The source network is not allowed (forbidden_network)",
    };
    responses
        .entry("403")
        .or_insert_with(|| error_response(forbidden));
    responses.insert(
        "429".into(),
        error_response(
            "Too many requests from this address or token (rate_limited); see Retry-After",
        ),
    );
    if described.as_ref().is_some_and(|d| d.body.is_some()) {
        responses.insert(
            "413".into(),
            json!({"description": "The body is over the listener's limit"}),
        );
    }
    op.insert("responses".into(), responses.into());
    Value::Object(op)
}

fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let clean: String = part
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        id.push('_');
        id.push_str(clean.trim_matches('_'));
    }
    id
}

/// Every `$ref` name under `value`.
fn refs(value: &Value, into: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(target)) => {
                        if let Some(name) = target.strip_prefix("#/components/schemas/") {
                            into.insert(name.to_owned());
                        }
                    }
                    _ => refs(v, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, into)),
        _ => {}
    }
}

/// `listener`'s OpenAPI document.
pub fn document(listener: Listener) -> Value {
    let mut paths = Map::new();
    for spec in listener.routes() {
        let entry = paths
            .entry(spec.path)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = entry {
            methods.insert(
                spec.method.to_ascii_lowercase(),
                operation_json(listener, &spec),
            );
        }
    }
    let paths = Value::Object(paths);
    // Only the schemas this listener uses, and what they use in turn.
    let all = schemas::components();
    let mut used = BTreeSet::new();
    refs(&paths, &mut used);
    loop {
        let mut more = used.clone();
        for (name, schema) in &all {
            if used.contains(*name) {
                refs(schema, &mut more);
            }
        }
        if more.len() == used.len() {
            break;
        }
        used = more;
    }
    let components: Map<String, Value> = all
        .into_iter()
        .filter(|(name, _)| used.contains(*name))
        .map(|(name, schema)| (name.to_owned(), schema))
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title(listener),
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "The {} listener of a rigmesh node. Generated from the listener's route table; \
                 every refusal is {{\"error\": <kind>, \"reason\": <text>}}.",
                listener.name()
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token of this node: 64 hex digits (`rigmesh token create`, or the bootstrap token in <data dir>/api/<audience>.token).",
                },
            },
        },
    })
}

/// The document as served and checked in: pretty JSON and a newline.
pub fn render(listener: Listener) -> String {
    let mut text = serde_json::to_string_pretty(&document(listener)).unwrap_or_default();
    text.push('\n');
    text
}

/// The `GET /openapi.json` route of `listener`, for its router.
pub(crate) fn route<S: Clone + Send + Sync + 'static>(listener: Listener) -> Router<S> {
    let text = std::sync::Arc::new(render(listener));
    Router::new().route(
        DOCUMENT_PATH,
        get(move || {
            let text = text.clone();
            async move { answer(&text) }
        }),
    )
}

fn answer(text: &str) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        text.to_owned(),
    )
        .into_response()
}
