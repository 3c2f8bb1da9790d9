//! The suspicious-activity review queue of a node with an operator
//! audience (specs/security.md, "Review queue"): every suspicious event
//! the node notices (refusal bursts on its HTTP listeners, invalid or
//! flooding libp2p peers and their bans, large deposits, withdrawals held
//! for review, books that disagree or fail their checks) becomes an item
//! an operator lists and acknowledges with a note. Alerts still go to the
//! notifier; the queue is the record of what a person has looked at.
//!
//! Events of one rule and subject merge into the open item (its count and
//! last sighting grow), so a flood is one item, not thousands. Open items
//! are capped; past the cap a new subject is counted on its rule's item
//! for other subjects, with a metric and a log line.
//!
//! The table is sled ([`store`]), owned by one dedicated thread: raising
//! never waits (a full queue drops the event with a metric, as the
//! notifier does), and the thread applies whatever is queued and flushes
//! once before answering the acknowledgements and listings among it.

use std::path::Path;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rigmesh_protocol::{Alert, Audience, PublicKey, Severity, UnixMillis};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

mod network;
mod store;

pub use network::watch_offences;
use store::ReviewStore;

/// Open items kept at most, by default.
pub const DEFAULT_MAX_OPEN: usize = 1000;
/// Longest acknowledgement note, in bytes.
pub const MAX_NOTE: usize = 1000;
/// Longest detail kept, in bytes.
pub const MAX_DETAIL: usize = 1000;
/// Longest subject kept, in bytes.
const MAX_SUBJECT: usize = 200;
/// Longest rule kept, in bytes.
const MAX_RULE: usize = 64;
/// The subject of a rule's item for the subjects past the cap.
pub const OTHER_SUBJECTS: &str = "(other subjects)";
/// Events, acknowledgements and listings waiting for the writer.
const QUEUE: usize = 1024;
/// Most operations the writer applies before one flush.
const GROUP: usize = 256;

/// Rules of the review queue that do not come from alerts.
pub mod rules {
    /// One address (or token) kept getting refused by an HTTP listener
    /// (401, 403, 429 and the firewall's other refusals).
    pub const API_REFUSALS: &str = "api.refusals";
    /// A libp2p peer sent invalid, forged or malformed messages or
    /// requests (each one a strike).
    pub const PEER_INVALID: &str = "peer.invalid";
    /// A libp2p peer kept asking past its request budget.
    pub const PEER_FLOOD: &str = "peer.flood";
    /// A libp2p peer or address was banned.
    pub const PEER_BANNED: &str = "peer.banned";
    /// A withdrawal was held for an admin's review.
    pub const WITHDRAWAL_HELD: &str = "withdrawal.held";
}

/// Operators' alert rules that also open review items.
const ALERT_RULES: &[&str] = &[
    "deposit.large",
    "certificate.conflict",
    "usage.implausible_power",
    "books.disagree",
    "books.integrity",
];

/// One suspicious event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspicion {
    /// Its rule (`api.refusals`, `peer.banned`, ...).
    pub rule: String,
    /// Who or what it is about: `address 10.0.0.9`, `token ci`,
    /// `peer 12D3...`, `account <hex>`.
    pub subject: String,
    /// How bad.
    pub severity: Severity,
    /// What happened, in words.
    pub detail: String,
    /// How many events this one stands for (a burst reported at once).
    pub count: u64,
    /// When.
    pub at: UnixMillis,
}

impl Suspicion {
    /// One event of `rule` about `subject`, now.
    pub fn new(
        rule: &str,
        subject: impl Into<String>,
        severity: Severity,
        detail: impl Into<String>,
    ) -> Self {
        Suspicion {
            rule: clip(rule, MAX_RULE),
            subject: clip(&subject.into(), MAX_SUBJECT),
            severity,
            detail: clip(&detail.into(), MAX_DETAIL),
            count: 1,
            at: UnixMillis::now(),
        }
    }

    /// The same, standing for `count` events.
    pub fn times(mut self, count: u64) -> Self {
        self.count = count.max(1);
        self
    }

    /// The review item an operators' alert this node raised opens, if its
    /// rule is one the queue keeps: the subject is the account the alert
    /// is about, else the thing it names.
    pub fn from_alert(alert: &Alert) -> Option<Self> {
        if alert.audience != Audience::Operators || !ALERT_RULES.contains(&alert.rule.as_str()) {
            return None;
        }
        let subject = match (alert.about, alert.subject) {
            (Some(account), _) => format!("account {account}"),
            (None, Some(id)) => id.to_string(),
            (None, None) => "-".to_string(),
        };
        let mut event = Suspicion::new(&alert.rule, subject, alert.severity, &alert.message);
        event.at = alert.created_at;
        Some(event)
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub(crate) fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_string()
}

/// Where an item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewState {
    /// Nobody has looked at it yet.
    Open,
    /// An operator looked at it and said what they made of it.
    Acknowledged,
}

/// Who acknowledged an item, when, and what they made of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledgement {
    /// The name of the token that acknowledged it.
    pub by: String,
    /// Their note.
    pub note: String,
    /// When.
    pub at: UnixMillis,
}

/// One item of the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewItem {
    /// Its number on this node, from 1.
    pub id: u64,
    /// The rule that raised it.
    pub rule: String,
    /// Who or what it is about.
    pub subject: String,
    /// The worst severity of its events.
    pub severity: Severity,
    /// The latest event, in words.
    pub detail: String,
    /// The first event.
    pub first_seen: UnixMillis,
    /// The latest event.
    pub last_seen: UnixMillis,
    /// Events merged into it.
    pub count: u64,
    /// Open or acknowledged.
    pub state: ReviewState,
    /// The acknowledgement, once made.
    pub acknowledged: Option<Acknowledgement>,
}

/// Which items a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewFilter {
    /// The open ones.
    #[default]
    Open,
    /// The acknowledged ones.
    Acknowledged,
    /// Both.
    All,
}

impl ReviewFilter {
    fn admits(self, state: ReviewState) -> bool {
        match self {
            ReviewFilter::Open => state == ReviewState::Open,
            ReviewFilter::Acknowledged => state == ReviewState::Acknowledged,
            ReviewFilter::All => true,
        }
    }
}

/// What recording an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raised {
    /// It opened item `id`.
    New(u64),
    /// It was merged into open item `id`.
    Merged(u64),
    /// The open items were at their cap: it was counted on its rule's
    /// item for other subjects, `id`.
    Overflow(u64),
}

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// Done; the item as it now stands.
    Acknowledged(ReviewItem),
    /// There is no such item.
    Unknown,
    /// It was acknowledged before (as it stands).
    Already(ReviewItem),
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

/// The queue's metrics, under `rigmesh_review_`.
#[derive(Debug, Clone, Default)]
pub struct ReviewMetrics {
    open: Gauge,
    raised: Family<RuleLabel, Counter>,
    overflow: Counter,
    dropped: Counter,
}

impl ReviewMetrics {
    /// Registers the metrics under `rigmesh_review_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = ReviewMetrics::default();
        let sub = registry.sub_registry_with_prefix("rigmesh_review");
        sub.register(
            "open_items",
            "Review items open (not acknowledged)",
            metrics.open.clone(),
        );
        sub.register(
            "raised",
            "Review items opened, by rule",
            metrics.raised.clone(),
        );
        sub.register(
            "overflow",
            "Events on new subjects counted on their rule's item for other subjects because the open items were at their cap",
            metrics.overflow.clone(),
        );
        sub.register(
            "dropped",
            "Suspicious events not recorded because the review queue's writer was behind or stopped",
            metrics.dropped.clone(),
        );
        metrics
    }
}

enum Op {
    Raise(Suspicion),
    Ack {
        id: u64,
        by: String,
        note: String,
        reply: oneshot::Sender<Result<AckOutcome>>,
    },
    List {
        filter: ReviewFilter,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<ReviewItem>>>,
    },
    Close(oneshot::Sender<()>),
}

/// The handle to a node's review queue. Cheap to clone.
#[derive(Clone)]
pub struct ReviewQueue {
    ops: mpsc::Sender<Op>,
    metrics: ReviewMetrics,
    /// The node's own account: alerts other coordinators signed are
    /// theirs to review.
    account: Option<PublicKey>,
}

impl std::fmt::Debug for ReviewQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReviewQueue").finish_non_exhaustive()
    }
}

fn stopped() -> Error {
    Error::Store("the review queue has stopped".into())
}

impl ReviewQueue {
    /// Opens the queue in `dir` and starts its writer thread. Blocking:
    /// call it before the node's tasks start or off the executor.
    pub fn open(
        dir: &Path,
        max_open: usize,
        account: Option<PublicKey>,
        metrics: ReviewMetrics,
    ) -> Result<Self> {
        Self::start(ReviewStore::open(dir, max_open)?, account, metrics)
    }

    fn start(
        store: ReviewStore,
        account: Option<PublicKey>,
        metrics: ReviewMetrics,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        metrics
            .open
            .set(i64::try_from(store.open_count()).unwrap_or(i64::MAX));
        let writer_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("review-queue".into())
            .spawn(move || run_writer(store, rx, writer_metrics))
            .map_err(|e| Error::Io {
                path: "the review queue's writer thread".into(),
                source: e,
            })?;
        Ok(ReviewQueue {
            ops: tx,
            metrics,
            account,
        })
    }

    /// Records a suspicious event; never waits. A full queue drops it
    /// with a metric and a log line.
    pub fn raise(&self, event: Suspicion) {
        if let Err(err) = self.ops.try_send(Op::Raise(event)) {
            self.metrics.dropped.inc();
            let (rule, subject) = match &err {
                mpsc::error::TrySendError::Full(Op::Raise(e))
                | mpsc::error::TrySendError::Closed(Op::Raise(e)) => {
                    (e.rule.clone(), e.subject.clone())
                }
                _ => (String::new(), String::new()),
            };
            tracing::debug!(%rule, %subject, "review queue full: suspicious event not recorded");
        }
    }

    /// Records the review item of an alert this node raised, if its rule
    /// is one the queue keeps (alerts other coordinators signed are
    /// theirs to review).
    pub fn raise_alert(&self, alert: &Alert) {
        if self.account.is_some_and(|me| me != alert.issuer) {
            return;
        }
        if let Some(event) = Suspicion::from_alert(alert) {
            self.raise(event);
        }
    }

    /// Acknowledges item `id` as `by` with `note` (checked by the caller:
    /// not empty, at most [`MAX_NOTE`] bytes); answered once on disk.
    pub async fn acknowledge(&self, id: u64, by: String, note: String) -> Result<AckOutcome> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(Op::Ack {
                id,
                by,
                note,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Items in `filter`'s state, newest first, at most `limit`; events
    /// raised before the call are in it.
    pub async fn list(&self, filter: ReviewFilter, limit: usize) -> Result<Vec<ReviewItem>> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(Op::List {
                filter,
                limit,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Flushes what is queued and stops the writer, releasing the table
    /// (a node restarted on the same directory opens it again).
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.ops.send(Op::Close(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// A reply the writer sends once the batch it came in is on disk.
type Answer = Box<dyn FnOnce(&ReviewStore)>;

/// The writer: takes what is queued, applies it, flushes once, then
/// answers; ends on `Close` or when every handle is dropped.
fn run_writer(mut store: ReviewStore, mut ops: mpsc::Receiver<Op>, metrics: ReviewMetrics) {
    let mut batch = Vec::with_capacity(GROUP);
    loop {
        batch.clear();
        let Some(first) = ops.blocking_recv() else {
            break;
        };
        batch.push(first);
        while batch.len() < GROUP {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut answers: Vec<Answer> = Vec::new();
        let mut close = None;
        for op in batch.drain(..) {
            match op {
                Op::Raise(event) => record(&mut store, event, &metrics),
                Op::Ack {
                    id,
                    by,
                    note,
                    reply,
                } => {
                    let outcome = store.ack(id, by.clone(), note, UnixMillis::now());
                    if let Ok(AckOutcome::Acknowledged(item)) = &outcome {
                        tracing::info!(id, rule = %item.rule, subject = %item.subject, %by, "review item acknowledged");
                    }
                    answers.push(Box::new(move |_| {
                        let _ = reply.send(outcome);
                    }));
                }
                Op::List {
                    filter,
                    limit,
                    reply,
                } => answers.push(Box::new(move |store| {
                    let _ = reply.send(store.list(filter, limit));
                })),
                Op::Close(reply) => close = Some(reply),
            }
        }
        metrics
            .open
            .set(i64::try_from(store.open_count()).unwrap_or(i64::MAX));
        if let Err(err) = store.flush() {
            tracing::warn!(%err, "review queue not flushed");
        }
        for answer in answers {
            answer(&store);
        }
        if let Some(reply) = close {
            drop(store);
            let _ = reply.send(());
            return;
        }
    }
    if let Err(err) = store.flush() {
        tracing::warn!(%err, "review queue not flushed");
    }
}

fn record(store: &mut ReviewStore, event: Suspicion, metrics: &ReviewMetrics) {
    let (rule, subject) = (event.rule.clone(), event.subject.clone());
    match store.raise(event) {
        Ok(Raised::New(id)) => {
            metrics
                .raised
                .get_or_create(&RuleLabel { rule: rule.clone() })
                .inc();
            tracing::warn!(id, %rule, %subject, "review item opened");
        }
        Ok(Raised::Merged(_)) => {}
        Ok(Raised::Overflow(id)) => {
            metrics.overflow.inc();
            tracing::warn!(
                id,
                %rule,
                %subject,
                "review queue at its cap of open items: counted on the rule's item for other subjects"
            );
        }
        Err(err) => {
            metrics.dropped.inc();
            tracing::warn!(%err, %rule, %subject, "suspicious event not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(rule: &str, subject: &str, at: u64) -> Suspicion {
        let mut e = Suspicion::new(rule, subject, Severity::Warning, format!("seen at {at}"));
        e.at = UnixMillis(at);
        e
    }

    #[test]
    fn events_of_one_rule_and_subject_merge_while_open() {
        let mut store = ReviewStore::temporary(10).unwrap();
        let first = store
            .raise(event("api.refusals", "address 10.0.0.9", 100))
            .unwrap();
        let Raised::New(id) = first else {
            panic!("{first:?}")
        };
        assert_eq!(
            store
                .raise(event("api.refusals", "address 10.0.0.9", 200).times(49))
                .unwrap(),
            Raised::Merged(id)
        );
        let mut critical = event("api.refusals", "address 10.0.0.9", 150);
        critical.severity = Severity::Critical;
        store.raise(critical).unwrap();
        // Another subject, another rule: items of their own.
        assert!(matches!(
            store.raise(event("api.refusals", "address 10.0.0.8", 300)).unwrap(),
            Raised::New(other) if other != id
        ));
        assert!(matches!(
            store
                .raise(event("peer.banned", "address 10.0.0.9", 300))
                .unwrap(),
            Raised::New(_)
        ));
        let items = store.list(ReviewFilter::Open, 100).unwrap();
        assert_eq!(items.len(), 3);
        let item = items.iter().find(|i| i.id == id).unwrap();
        assert_eq!(item.count, 51);
        assert_eq!(
            (item.first_seen, item.last_seen),
            (UnixMillis(100), UnixMillis(200))
        );
        assert_eq!(
            item.severity,
            Severity::Critical,
            "the worst severity stays"
        );
        // Newest first.
        assert!(items.windows(2).all(|w| w[0].id > w[1].id));
    }

    #[test]
    fn open_items_are_capped_and_the_rest_counted_per_rule() {
        let mut store = ReviewStore::temporary(3).unwrap();
        for i in 0..3 {
            store
                .raise(event("peer.invalid", &format!("peer {i}"), i))
                .unwrap();
        }
        let over = store.raise(event("peer.invalid", "peer 3", 10)).unwrap();
        let Raised::Overflow(id) = over else {
            panic!("{over:?}")
        };
        assert_eq!(
            store.raise(event("peer.invalid", "peer 4", 11)).unwrap(),
            Raised::Overflow(id)
        );
        // A subject already open still merges into its own item.
        assert!(matches!(
            store.raise(event("peer.invalid", "peer 0", 12)).unwrap(),
            Raised::Merged(_)
        ));
        let items = store.list(ReviewFilter::Open, 100).unwrap();
        assert_eq!(items.len(), 4, "the cap plus one item for other subjects");
        let others = items.iter().find(|i| i.id == id).unwrap();
        assert_eq!(others.subject, OTHER_SUBJECTS);
        assert_eq!(others.count, 2);
        assert!(others.detail.contains("peer 4"), "{}", others.detail);
    }

    #[test]
    fn an_item_is_acknowledged_once_and_a_new_event_opens_a_new_item() {
        let mut store = ReviewStore::temporary(10).unwrap();
        let Raised::New(id) = store
            .raise(event("deposit.large", "account ab", 1))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            store
                .ack(id + 100, "ops".into(), "n".into(), UnixMillis(5))
                .unwrap(),
            AckOutcome::Unknown
        );
        let AckOutcome::Acknowledged(item) = store
            .ack(id, "ops".into(), "known customer".into(), UnixMillis(5))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(item.state, ReviewState::Acknowledged);
        let ack = item.acknowledged.unwrap();
        assert_eq!(
            (ack.by.as_str(), ack.note.as_str(), ack.at),
            ("ops", "known customer", UnixMillis(5))
        );
        assert!(matches!(
            store.ack(id, "other".into(), "again".into(), UnixMillis(6)).unwrap(),
            AckOutcome::Already(i) if i.acknowledged.as_ref().unwrap().by == "ops"
        ));
        assert!(store.list(ReviewFilter::Open, 10).unwrap().is_empty());
        let again = store
            .raise(event("deposit.large", "account ab", 9))
            .unwrap();
        assert!(matches!(again, Raised::New(new) if new != id), "{again:?}");
        assert_eq!(store.list(ReviewFilter::All, 10).unwrap().len(), 2);
        assert_eq!(store.list(ReviewFilter::Acknowledged, 10).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_queue_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            ReviewQueue::open(
                &dir.path().join("review"),
                DEFAULT_MAX_OPEN,
                None,
                ReviewMetrics::default(),
            )
            .unwrap()
        };
        let queue = open();
        queue.raise(event("withdrawal.held", "account cd", 1));
        queue.raise(event("withdrawal.held", "account cd", 2));
        queue.raise(event("peer.banned", "peer x", 3));
        let items = queue.list(ReviewFilter::Open, 10).await.unwrap();
        assert_eq!(items.len(), 2);
        let held = items
            .iter()
            .find(|i| i.rule == "withdrawal.held")
            .unwrap()
            .id;
        let acked = queue
            .acknowledge(held, "ops".into(), "asked the customer".into())
            .await
            .unwrap();
        assert!(matches!(acked, AckOutcome::Acknowledged(_)));
        queue.close().await;
        // Closed: a late event is dropped, not a panic.
        queue.raise(event("peer.banned", "peer y", 4));

        let queue = open();
        let all = queue.list(ReviewFilter::All, 10).await.unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
        let held = all.iter().find(|i| i.rule == "withdrawal.held").unwrap();
        assert_eq!(held.count, 2);
        assert_eq!(held.state, ReviewState::Acknowledged);
        assert_eq!(
            held.acknowledged.as_ref().unwrap().note,
            "asked the customer"
        );
        // The open index came back: the banned peer's item merges, and
        // ids go on after the highest.
        queue.raise(event("peer.banned", "peer x", 5));
        queue.raise(event("peer.banned", "peer z", 6));
        let open_now = queue.list(ReviewFilter::Open, 10).await.unwrap();
        assert_eq!(open_now.len(), 2);
        assert_eq!(
            open_now
                .iter()
                .find(|i| i.subject == "peer x")
                .unwrap()
                .count,
            2
        );
        assert_eq!(open_now[0].id, 3);
        queue.close().await;
    }

    #[test]
    fn only_operators_alerts_of_review_rules_open_items() {
        let key = rigmesh_protocol::Keypair::from_seed([7; 32]);
        let mut alert = crate::notify::own_alert(
            key.public(),
            Audience::Operators,
            Severity::Critical,
            "books.integrity",
            None,
            "the books do not check".into(),
        );
        let event = Suspicion::from_alert(&alert).unwrap();
        assert_eq!(event.rule, "books.integrity");
        assert_eq!(event.subject, format!("account {}", key.public()));
        assert_eq!(event.severity, Severity::Critical);
        alert.rule = "reputation.low".into();
        assert!(Suspicion::from_alert(&alert).is_none());
        alert.rule = "deposit.large".into();
        alert.audience = Audience::Customer;
        assert!(Suspicion::from_alert(&alert).is_none());
    }

    #[test]
    fn long_text_is_clipped_on_a_character_boundary() {
        let text = "é".repeat(600);
        let clipped = clip(&text, MAX_DETAIL);
        assert!(clipped.len() <= MAX_DETAIL);
        assert!(clipped.chars().all(|c| c == 'é'));
    }
}
