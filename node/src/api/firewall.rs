//! The firewall in front of every HTTP listener: allowed source networks,
//! per-address rate limits (governor), a timeout, a concurrency limit and
//! a body limit (tower / tower-http), one structured log line and metrics
//! for every request, and an alert and a review item when one address
//! (or one token) collects refusals.
//!
//! Order, outermost first: source network (403 `forbidden_network`),
//! per-address rate (429 `rate_limited`), timeout (408 `timeout`),
//! concurrency (waits for a slot, inside the timeout), body limit (413
//! `too_large`), then the router, whose token check adds the per-token
//! rate (429) and the token refusals (401/403).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rigmesh_protocol::{Audience, PublicKey, Severity};
use serde::{Deserialize, Serialize};

use super::Listener;
use crate::error::{Error, Result};

/// The limits of one listener (`[http.<listener>]` in the node's config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerLimits {
    /// Source networks allowed to connect; others get 403 before any
    /// handler runs.
    pub allow: Vec<IpNet>,
    /// Requests a minute from one address.
    pub per_ip_per_minute: u32,
    /// Requests one address may send at once before the rate applies.
    pub per_ip_burst: u32,
    /// Requests a minute with one token.
    pub per_token_per_minute: u32,
    /// Requests one token may send at once before the rate applies.
    pub per_token_burst: u32,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Seconds a request may take before it is answered 408.
    pub timeout_secs: u64,
    /// Requests served at once; more wait for a slot.
    pub max_concurrent: usize,
    /// Refusals from one address within a minute that raise an alert.
    pub alert_after_refusals: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            allow: vec![loopback_v4(), loopback_v6()],
            // Loopback listeners serve the node's own tools, which may poll
            // (a waiting bid, a dashboard): 100 a second, bursts of 500.
            per_ip_per_minute: 6000,
            per_ip_burst: 500,
            per_token_per_minute: 6000,
            per_token_burst: 500,
            max_body_bytes: 64 * 1024,
            timeout_secs: 30,
            max_concurrent: 64,
            alert_after_refusals: 50,
        }
    }
}

fn loopback_v4() -> IpNet {
    IpNet::V4(ipnet::Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8))
}

fn loopback_v6() -> IpNet {
    IpNet::V6(ipnet::Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128))
}

/// A `[http.<listener>]` table as written: the keys it names, laid over
/// that listener's own defaults (so `[http.public]` with one key keeps
/// the public listener open to all).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PartialLimits {
    allow: Option<Vec<IpNet>>,
    per_ip_per_minute: Option<u32>,
    per_ip_burst: Option<u32>,
    per_token_per_minute: Option<u32>,
    per_token_burst: Option<u32>,
    max_body_bytes: Option<usize>,
    timeout_secs: Option<u64>,
    max_concurrent: Option<usize>,
    alert_after_refusals: Option<u32>,
}

impl PartialLimits {
    fn over(self, base: ListenerLimits) -> ListenerLimits {
        ListenerLimits {
            allow: self.allow.unwrap_or(base.allow),
            per_ip_per_minute: self.per_ip_per_minute.unwrap_or(base.per_ip_per_minute),
            per_ip_burst: self.per_ip_burst.unwrap_or(base.per_ip_burst),
            per_token_per_minute: self
                .per_token_per_minute
                .unwrap_or(base.per_token_per_minute),
            per_token_burst: self.per_token_burst.unwrap_or(base.per_token_burst),
            max_body_bytes: self.max_body_bytes.unwrap_or(base.max_body_bytes),
            timeout_secs: self.timeout_secs.unwrap_or(base.timeout_secs),
            max_concurrent: self.max_concurrent.unwrap_or(base.max_concurrent),
            alert_after_refusals: self
                .alert_after_refusals
                .unwrap_or(base.alert_after_refusals),
        }
    }
}

/// Reads `[http.public]` over the public listener's defaults.
pub(crate) fn public_limits<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<ListenerLimits, D::Error> {
    Ok(PartialLimits::deserialize(d)?.over(ListenerLimits::open_to_all()))
}

/// Reads `[http.<listener>]` over the loopback-only defaults.
pub(crate) fn private_limits<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<ListenerLimits, D::Error> {
    Ok(PartialLimits::deserialize(d)?.over(ListenerLimits::default()))
}

impl ListenerLimits {
    /// The public listener's defaults: anyone may connect.
    pub fn open_to_all() -> Self {
        ListenerLimits {
            allow: vec![
                IpNet::V4(ipnet::Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0)),
                IpNet::V6(ipnet::Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 0)),
            ],
            per_ip_per_minute: 120,
            per_ip_burst: 30,
            per_token_per_minute: 600,
            per_token_burst: 60,
            max_body_bytes: 4 * 1024,
            timeout_secs: 10,
            ..ListenerLimits::default()
        }
    }

    /// Refuses limits that cannot work, naming the key.
    pub fn check(&self, listener: &str) -> Result<()> {
        let zero = |key: &str| {
            Err(Error::Config(format!(
                "http.{listener}.{key} must be above zero"
            )))
        };
        if self.per_ip_per_minute == 0 {
            return zero("per_ip_per_minute");
        }
        if self.per_ip_burst == 0 {
            return zero("per_ip_burst");
        }
        if self.per_token_per_minute == 0 {
            return zero("per_token_per_minute");
        }
        if self.per_token_burst == 0 {
            return zero("per_token_burst");
        }
        if self.timeout_secs == 0 {
            return zero("timeout_secs");
        }
        if self.max_concurrent == 0 {
            return zero("max_concurrent");
        }
        if self.max_body_bytes == 0 {
            return zero("max_body_bytes");
        }
        Ok(())
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: &'static str,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

/// The HTTP side's metrics, shared by every listener.
#[derive(Debug, Clone, Default)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    suspicious: Family<ListenerLabel, Counter>,
}

impl ApiMetrics {
    /// Registers the metrics under `rigmesh_api_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = ApiMetrics::default();
        let sub = registry.sub_registry_with_prefix("rigmesh_api");
        sub.register(
            "requests",
            "HTTP requests answered, by listener, route template and status",
            metrics.requests.clone(),
        );
        sub.register(
            "refusals",
            "HTTP requests refused, by listener and reason (rate_limited, too_large, timeout, forbidden_network, token_*, scope_missing)",
            metrics.refusals.clone(),
        );
        sub.register(
            "suspicious_sources",
            "Addresses and tokens whose refusals within a minute crossed the alert threshold",
            metrics.suspicious.clone(),
        );
        metrics
    }
}

/// Why the firewall or the token check refused a request; carried in the
/// response's extensions so the log line and the metrics can name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub &'static str);

/// What the token check learnt about a request, for the log line.
#[derive(Debug, Clone)]
pub(crate) struct RequestTag {
    /// The matched route template.
    pub(crate) route: String,
    /// The accepted token's name, if any (never the secret).
    pub(crate) token: Option<String>,
}

/// A JSON refusal: `{"error": code, "reason": text}` with the code in the
/// response's extensions.
pub(crate) fn refuse(status: StatusCode, code: &'static str, reason: String) -> Response {
    let mut response = (
        status,
        Json(serde_json::json!({"error": code, "reason": reason})),
    )
        .into_response();
    response.extensions_mut().insert(Refused(code));
    response
}

/// Where a firewall raises its alerts: the node's notifier once it runs.
#[derive(Clone, Default)]
pub struct AlertTarget {
    /// The notifier slot the node fills once notifications start.
    pub notify: Arc<OnceLock<crate::notify::NodeNotifier>>,
    /// The node's account, named as the issuer.
    pub account: Option<PublicKey>,
    /// Who hears about it.
    pub audience: Option<Audience>,
    /// The node's review queue, on a node with an operator audience.
    pub review: Option<crate::review::ReviewQueue>,
}

/// Who collects refusals: an address, or a token the node knows (by its
/// name), whichever addresses it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Address(IpAddr),
    Token(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Address(ip) => write!(f, "address {ip}"),
            Source::Token(name) => write!(f, "token {name}"),
        }
    }
}

/// A window of refusals from one source.
#[derive(Debug, Clone, Copy)]
struct RefusalWindow {
    since: Instant,
    count: u32,
    alerted: bool,
}

/// Addresses and tokens tracked at most; past this, old windows are dropped first.
const MAX_TRACKED: usize = 4096;
/// The window over which refusals are counted.
const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// Keys a rate limiter keeps before forgetting idle ones.
const MAX_LIMITER_KEYS: usize = 10_000;

/// One listener's firewall: its limits, limiters and metrics.
pub struct Firewall {
    listener: Listener,
    limits: ListenerLimits,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_token: DefaultKeyedRateLimiter<String>,
    metrics: ApiMetrics,
    refusals: Mutex<HashMap<Source, RefusalWindow>>,
    alerts: AlertTarget,
    audit: OnceLock<super::audit_trail::RequestAudit>,
}

impl std::fmt::Debug for Firewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firewall")
            .field("listener", &self.listener)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn quota(per_minute: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(rate).allow_burst(burst)
}

impl Firewall {
    /// A firewall for `listener` with `limits` (checked).
    pub fn new(
        listener: Listener,
        limits: ListenerLimits,
        metrics: ApiMetrics,
        alerts: AlertTarget,
    ) -> Result<Self> {
        limits.check(listener.name())?;
        Ok(Firewall {
            listener,
            per_ip: DefaultKeyedRateLimiter::keyed(quota(
                limits.per_ip_per_minute,
                limits.per_ip_burst,
            )),
            per_token: DefaultKeyedRateLimiter::keyed(quota(
                limits.per_token_per_minute,
                limits.per_token_burst,
            )),
            limits,
            metrics,
            refusals: Mutex::new(HashMap::new()),
            alerts,
            audit: OnceLock::new(),
        })
    }

    /// Records the requests this listener accepts that may change
    /// something in `audit` from now on (once; a second call is ignored).
    pub fn record_requests_in(&self, audit: super::audit_trail::RequestAudit) {
        let _ = self.audit.set(audit);
    }

    /// Where accepted requests are recorded, once set.
    pub(crate) fn audit(&self) -> Option<super::audit_trail::RequestAudit> {
        self.audit.get().cloned()
    }

    /// The listener it guards.
    pub fn listener(&self) -> Listener {
        self.listener
    }

    /// The limits in force.
    pub fn limits(&self) -> &ListenerLimits {
        &self.limits
    }

    /// True when `ip` is inside an allowed network.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.limits.allow.iter().any(|net| net.contains(&ip))
    }

    /// True when one more request with the token `id` is within its rate.
    pub(crate) fn admit_token(&self, id: &str) -> bool {
        if self.per_token.len() > MAX_LIMITER_KEYS {
            self.per_token.retain_recent();
        }
        self.per_token.check_key(&id.to_string()).is_ok()
    }

    /// True when one more request from `ip` is within its rate.
    fn admit_ip(&self, ip: IpAddr) -> bool {
        if self.per_ip.len() > MAX_LIMITER_KEYS {
            self.per_ip.retain_recent();
        }
        self.per_ip.check_key(&ip).is_ok()
    }

    /// Counts a refusal from `ip`, and against `token` when the request
    /// carried one the node knows.
    fn note_refusal(&self, ip: IpAddr, token: Option<&str>, reason: &'static str) {
        self.note_source(Source::Address(ip), reason);
        if let Some(name) = token {
            self.note_source(Source::Token(name.to_string()), reason);
        }
    }

    /// Counts a refusal of `source`; past the threshold within a minute, a
    /// warning, a metric, an alert and a review item, once per window;
    /// each further threshold's worth of refusals in the window adds to
    /// the review item's count (so a flood is counted without a write per
    /// request).
    fn note_source(&self, source: Source, reason: &'static str) {
        let threshold = self.limits.alert_after_refusals.max(1);
        let (crossed, more) = {
            let mut windows = self
                .refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            if windows.len() >= MAX_TRACKED && !windows.contains_key(&source) {
                windows.retain(|_, w| now.duration_since(w.since) < REFUSAL_WINDOW);
                if windows.len() >= MAX_TRACKED {
                    return;
                }
            }
            let window = windows.entry(source.clone()).or_insert(RefusalWindow {
                since: now,
                count: 0,
                alerted: false,
            });
            if now.duration_since(window.since) >= REFUSAL_WINDOW {
                *window = RefusalWindow {
                    since: now,
                    count: 0,
                    alerted: false,
                };
            }
            window.count = window.count.saturating_add(1);
            let crossed = !window.alerted && window.count >= threshold;
            if crossed {
                window.alerted = true;
            }
            let more = window.alerted && !crossed && window.count.is_multiple_of(threshold);
            (crossed, more)
        };
        if !crossed && !more {
            return;
        }
        let listener = self.listener.name();
        let detail = format!(
            "{source} was refused {threshold} times within a minute on the {listener} API (last: {reason})"
        );
        if more {
            if let Some(queue) = &self.alerts.review {
                queue.raise(
                    crate::review::Suspicion::new(
                        crate::review::rules::API_REFUSALS,
                        source.to_string(),
                        Severity::Warning,
                        detail,
                    )
                    .times(u64::from(threshold)),
                );
            }
            return;
        }
        self.metrics
            .suspicious
            .get_or_create(&ListenerLabel { listener })
            .inc();
        tracing::warn!(
            listener,
            source = %source,
            last_reason = reason,
            threshold,
            "suspicious: an address or token keeps getting refused"
        );
        if let Some(queue) = &self.alerts.review {
            queue.raise(
                crate::review::Suspicion::new(
                    crate::review::rules::API_REFUSALS,
                    source.to_string(),
                    Severity::Warning,
                    detail.clone(),
                )
                .times(u64::from(threshold)),
            );
        }
        if let (Some(notifier), Some(account), Some(audience)) = (
            self.alerts.notify.get(),
            self.alerts.account,
            self.alerts.audience,
        ) {
            notifier.sink().raise(&crate::notify::own_alert(
                account,
                audience,
                Severity::Warning,
                "api.refusals",
                None,
                detail,
            ));
        }
    }
}

/// A 429 refusal for `who` (this address, this token).
pub(crate) fn rate_limited(who: &str) -> Response {
    let mut response = refuse(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests from {who}; slow down"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The outermost middleware of every listener: source network, address
/// rate, then the log line and the metrics of whatever came back.
pub(crate) async fn guard(
    axum::extract::State(fw): axum::extract::State<Arc<Firewall>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let peer = request
        .extensions()
        .get::<ConnectInfo<super::Peer>>()
        .map(|ConnectInfo(super::Peer(addr))| addr.ip());
    let method = request.method().clone();
    let response = match peer {
        None => refuse(
            StatusCode::FORBIDDEN,
            "forbidden_network",
            "the source address is unknown".into(),
        ),
        Some(ip) if !fw.allows(ip) => refuse(
            StatusCode::FORBIDDEN,
            "forbidden_network",
            format!(
                "{ip} is not in a network allowed on the {} API",
                fw.listener.name()
            ),
        ),
        Some(ip) if !fw.admit_ip(ip) => rate_limited("this address"),
        Some(_) => next.run(request).await,
    };
    let status = response.status();
    let tag = response.extensions().get::<RequestTag>().cloned();
    let reason = response
        .extensions()
        .get::<Refused>()
        .map(|r| r.0)
        .or(match status {
            StatusCode::PAYLOAD_TOO_LARGE => Some("too_large"),
            StatusCode::REQUEST_TIMEOUT => Some("timeout"),
            _ => None,
        });
    let listener = fw.listener.name();
    let route = tag
        .as_ref()
        .map_or_else(|| "unmatched".to_string(), |t| t.route.clone());
    fw.metrics
        .requests
        .get_or_create(&RequestLabels {
            listener,
            route: route.clone(),
            status: status.as_u16(),
        })
        .inc();
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    // The body's length where it is known before streaming (every JSON
    // answer); a streamed body logs its lower bound.
    let bytes = axum::body::HttpBody::size_hint(response.body()).lower();
    let token = tag.and_then(|t| t.token);
    let peer_text = peer.map_or_else(|| "-".to_string(), |ip| ip.to_string());
    if let Some(reason) = reason {
        fw.metrics
            .refusals
            .get_or_create(&RefusalLabels { listener, reason })
            .inc();
        tracing::info!(
            listener,
            %method,
            route,
            status = status.as_u16(),
            latency_ms,
            bytes,
            peer = peer_text,
            token = token.as_deref().unwrap_or("-"),
            refused = reason,
            "http request"
        );
        if let Some(ip) = peer {
            fw.note_refusal(ip, token.as_deref(), reason);
        }
    } else {
        tracing::info!(
            listener,
            %method,
            route,
            status = status.as_u16(),
            latency_ms,
            bytes,
            peer = peer_text,
            token = token.as_deref().unwrap_or("-"),
            "http request"
        );
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_allow_loopback_only_and_public_allows_all() {
        let fw = Firewall::new(
            Listener::Customer,
            ListenerLimits::default(),
            ApiMetrics::default(),
            AlertTarget::default(),
        )
        .unwrap();
        assert!(fw.allows("127.0.0.1".parse().unwrap()));
        assert!(fw.allows("127.9.9.9".parse().unwrap()));
        assert!(fw.allows("::1".parse().unwrap()));
        assert!(fw.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!fw.allows("10.0.0.1".parse().unwrap()));
        let public = Firewall::new(
            Listener::Public,
            ListenerLimits::open_to_all(),
            ApiMetrics::default(),
            AlertTarget::default(),
        )
        .unwrap();
        assert!(public.allows("203.0.113.9".parse().unwrap()));
        assert!(public.allows("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn zero_limits_are_refused_by_name() {
        let limits = ListenerLimits {
            per_ip_burst: 0,
            ..ListenerLimits::default()
        };
        let err = limits.check("public").unwrap_err().to_string();
        assert!(err.contains("http.public.per_ip_burst"), "{err}");
    }
}
