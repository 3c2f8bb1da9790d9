//! The node's HTTP listeners, one per audience, each with its own address,
//! route table, scopes and limits, over one shared firewall layer:
//!
//! - `public`: read-only market data, no token ([`public`]);
//! - `customer` and `supplier`: the CLI's APIs ([`local`]);
//! - `analytics`: read-only usage, spend and earnings ([`analytics`]);
//! - `operator`: a coordinator's audit chain and books, and its
//!   operators' writes ([`operator`], [`operator_writes`]);
//! - `monitoring`: `/metrics`, `/health`, `/ready` ([`monitoring`]).
//!
//! Every route names the access it needs in its listener's table
//! ([`RouteSpec`]); the token check ([`gate`]) reads the table, so a route
//! that is served but not declared is refused rather than left open.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::serve::IncomingStream;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

pub mod analytics;
pub mod audit_trail;
pub mod firewall;
pub mod local;
pub mod monitoring;
pub mod notify_routes;
pub mod openapi;
pub mod operator;
pub mod operator_writes;
pub mod public;
pub mod tls;
pub mod tokens;

pub use firewall::{AlertTarget, ApiMetrics, Firewall, ListenerLimits};
pub use monitoring::serve_monitoring;
pub use tokens::{Scope, TokenStore};

/// The node's HTTP listeners, by audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    /// Anyone: read-only market data.
    Public,
    /// The customer's CLI.
    Customer,
    /// The supplier's CLI.
    Supplier,
    /// Dashboards: read-only usage, spend, earnings.
    Analytics,
    /// A coordinator's operators.
    Operator,
    /// Prometheus and health checks.
    Monitoring,
}

impl Listener {
    /// Every listener.
    pub const ALL: [Listener; 6] = [
        Listener::Public,
        Listener::Customer,
        Listener::Supplier,
        Listener::Analytics,
        Listener::Operator,
        Listener::Monitoring,
    ];

    /// The listener's name, as in logs, metrics and config.
    pub fn name(self) -> &'static str {
        match self {
            Listener::Public => "public",
            Listener::Customer => "customer",
            Listener::Supplier => "supplier",
            Listener::Analytics => "analytics",
            Listener::Operator => "operator",
            Listener::Monitoring => "monitoring",
        }
    }

    /// Its route table.
    pub fn routes(self) -> Vec<RouteSpec> {
        match self {
            Listener::Public => public::ROUTES.to_vec(),
            Listener::Customer => local::CUSTOMER_ROUTES
                .iter()
                .chain(local::COMMON_ROUTES)
                .copied()
                .collect(),
            Listener::Supplier => local::SUPPLIER_ROUTES
                .iter()
                .chain(local::COMMON_ROUTES)
                .copied()
                .collect(),
            Listener::Analytics => analytics::ROUTES.to_vec(),
            Listener::Operator => operator::ROUTES
                .iter()
                .chain(local::COMMON_ROUTES)
                .copied()
                .collect(),
            Listener::Monitoring => monitoring::ROUTES.to_vec(),
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone the listener's firewall lets through.
    Open,
    /// Any valid token of this node.
    AnyToken,
    /// A valid token that grants this scope.
    Scope(Scope),
    /// The route checks a token of its own (alert acknowledgement links).
    OwnToken,
}

/// One route of a listener and the access it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: &'static str,
    /// Path template, as axum spells it (`/v1/bids/{id}`).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

/// A shorthand for route tables.
pub(crate) const fn route(method: &'static str, path: &'static str, access: Access) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
    }
}

/// The token check of one listener.
#[derive(Clone)]
pub(crate) struct Gate {
    routes: Arc<Vec<RouteSpec>>,
    tokens: Option<TokenStore>,
    firewall: Arc<Firewall>,
}

impl Gate {
    pub(crate) fn new(
        listener: Listener,
        tokens: Option<TokenStore>,
        firewall: Arc<Firewall>,
    ) -> Self {
        Gate {
            routes: Arc::new(listener.routes()),
            tokens,
            firewall,
        }
    }
}

/// The accepted token's record, for handlers that need it (token
/// management: a token cannot grant more than it has).
#[derive(Debug, Clone)]
pub struct Caller(pub tokens::TokenRecord);

fn bearer(request: &Request) -> Option<String> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Checks the token a route needs, from the listener's route table.
pub(crate) async fn gate(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let Some(route) = route else {
        return next.run(request).await;
    };
    let method = request.method().as_str().to_string();
    let on_path: Vec<&RouteSpec> = gate.routes.iter().filter(|s| s.path == route).collect();
    let tag = |response: &mut Response, token: Option<String>| {
        response.extensions_mut().insert(firewall::RequestTag {
            route: route.clone(),
            token,
        });
    };
    let Some(spec) = on_path.iter().find(|s| s.method == method) else {
        let mut response = if on_path.is_empty() {
            tracing::error!(%route, "a served route is missing from its listener's table");
            firewall::refuse(
                StatusCode::FORBIDDEN,
                "route_undeclared",
                "this route declares no access".into(),
            )
        } else {
            next.run(request).await
        };
        tag(&mut response, None);
        return response;
    };
    let needed = match spec.access {
        Access::Open | Access::OwnToken => {
            let mut response = next.run(request).await;
            tag(&mut response, None);
            return response;
        }
        Access::AnyToken => None,
        Access::Scope(scope) => Some(scope),
    };
    let presented = bearer(&request);
    let now = rigmesh_protocol::UnixMillis::now();
    let checked = match &gate.tokens {
        Some(tokens) => tokens.check(presented.as_deref(), now),
        None => Err(tokens::TokenRefusal::NotRecognised),
    };
    let record = match checked {
        Ok(record) => record,
        Err(refusal) => {
            let reason = match refusal {
                tokens::TokenRefusal::Missing => {
                    "a bearer token is required (Authorization: Bearer <token>)"
                }
                tokens::TokenRefusal::NotRecognised => "the token is not recognised by this node",
                tokens::TokenRefusal::Expired => "the token has expired",
                tokens::TokenRefusal::Revoked => "the token was revoked",
            };
            let mut response =
                firewall::refuse(StatusCode::UNAUTHORIZED, refusal.code(), reason.into());
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            tag(&mut response, None);
            return response;
        }
    };
    if let Some(scope) = needed.filter(|s| !record.grants(*s)) {
        let mut response = firewall::refuse(
            StatusCode::FORBIDDEN,
            "scope_missing",
            format!("this route needs a token with the scope {scope}"),
        );
        if let Ok(value) = axum::http::HeaderValue::from_str(scope.name()) {
            response.headers_mut().insert("x-needed-scope", value);
        }
        tag(&mut response, Some(record.name.clone()));
        return response;
    }
    if !gate.firewall.admit_token(&record.id) {
        let mut response = firewall::rate_limited("this token");
        tag(&mut response, Some(record.name.clone()));
        return response;
    }
    if let (Some(tokens), Some(token)) = (gate.tokens.clone(), presented) {
        // At most one write a minute per token; off the executor.
        if tokens.needs_touch(&token, now) {
            tokio::task::spawn_blocking(move || {
                if let Err(err) = tokens.touch(&token, now) {
                    tracing::debug!(%err, "token use not recorded");
                }
            });
        }
    }
    let name = record.name.clone();
    let audit = gate
        .firewall
        .audit()
        .filter(|_| audit_trail::RequestAudit::records(request.method()));
    let asked = audit.map(|audit| {
        let peer = request
            .extensions()
            .get::<axum::extract::ConnectInfo<Peer>>()
            .map(|info| info.0 .0.ip());
        (
            audit,
            request.uri().path().to_string(),
            peer,
            record.clone(),
        )
    });
    let method = request.method().clone();
    request.extensions_mut().insert(Caller(record));
    let mut response = next.run(request).await;
    if let Some((audit, path, peer, token)) = asked {
        audit
            .record(audit_trail::Asked {
                listener: gate.firewall.listener(),
                method: &method,
                path: &path,
                token: &token,
                peer,
                status: response.status(),
            })
            .await;
    }
    tag(&mut response, Some(name));
    response
}

/// The address of the peer of a connection, for the firewall.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// Binds `addr` and serves `app` behind the listener's firewall until
/// `shutdown` completes; returns the bound address (a port of 0 is
/// resolved) and the server task.
pub(crate) async fn serve_app(
    addr: SocketAddr,
    app: Router,
    firewall: Arc<Firewall>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let what = firewall_name(&firewall);
    let io = |e| Error::Io {
        path: format!("the {what} API's listener on {addr}"),
        source: e,
    };
    let limits = firewall.limits().clone();
    let routes = app.layer(axum::extract::DefaultBodyLimit::disable()).layer(
        tower_http::limit::RequestBodyLimitLayer::new(limits.max_body_bytes),
    );
    let stack = tower::ServiceBuilder::new()
        .layer(middleware::from_fn_with_state(firewall, firewall::guard))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.timeout(),
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.max_concurrent,
        ))
        .service(routes);
    let app = Router::new().fallback_service(stack);
    let listener = TcpListener::bind(addr).await.map_err(io)?;
    let bound = listener.local_addr().map_err(io)?;
    let encrypted = tls.is_some();
    let task = match tls {
        None => tokio::spawn(async move {
            if let Err(err) =
                axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                    .with_graceful_shutdown(shutdown)
                    .await
            {
                tracing::warn!(%err, listener = what, "listener stopped");
            }
        }),
        Some(config) => tokio::spawn(async move {
            let listener = tls::TlsListener::new(listener, config);
            if let Err(err) =
                axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                    .with_graceful_shutdown(shutdown)
                    .await
            {
                tracing::warn!(%err, listener = what, "listener stopped");
            }
        }),
    };
    tracing::info!(listener = what, address = %bound, tls = encrypted, "listening");
    Ok((bound, task))
}

fn firewall_name(firewall: &Firewall) -> &'static str {
    firewall.listener().name()
}
