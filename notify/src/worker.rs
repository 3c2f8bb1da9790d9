//! The delivery worker: one tokio task that owns the [`Notifier`], takes
//! commands from cheap cloneable [`NotifyHandle`]s over a bounded queue,
//! turns due groups into outbox entries, and delivers due entries through
//! their channels, at most `max_in_flight` at once. Every store access and
//! every send runs in `spawn_blocking`; the task itself only waits.
//!
//! The loop ends when `shutdown` resolves or every handle is dropped; it
//! then waits (up to one attempt's timeout) for deliveries in progress and
//! records them. An entry whose outcome was never recorded (a crash) is
//! tried again after its claim lapses, with the same idempotency key.
//! Once the task's `JoinHandle` completes, the store has been let go of,
//! so the same directory can be opened again in the same process.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rigmesh_ledger::store::Store;
use rigmesh_protocol::{Alert, PublicKey, UnixMillis};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::added::{self, AddedChannel};
use crate::channel::{Channel, Channels};
use crate::clock::Clock;
use crate::config::NotifyConfig;
use crate::error::{Error, Result};
use crate::group::GroupState;
use crate::metrics::{ChannelLabel, NotifyMetrics};
use crate::notifier::{ClosedGroup, Notifier, Raised};
use crate::outbox::{Failure, Outbox, OutboxEntry};
use crate::silence::Silence;

/// Commands waiting for the worker, at most.
pub const COMMAND_QUEUE: usize = 1_024;
/// Commands applied in one blocking call, at most.
const COMMAND_BATCH: usize = 256;

enum Command {
    Raise(Box<Alert>),
    RaiseDurably {
        alert: Box<Alert>,
        reply: oneshot::Sender<Result<Raised>>,
    },
    Resolve(Box<Alert>),
    Acknowledge {
        group: String,
        /// None: the caller is authorised otherwise (the node's own API).
        token: Option<String>,
        by: String,
        reply: oneshot::Sender<Result<()>>,
    },
    Silence {
        silence: Box<Silence>,
        reply: oneshot::Sender<Result<u64>>,
    },
    ExpireSilence {
        id: u64,
        reply: oneshot::Sender<Result<bool>>,
    },
    AddChannel {
        added: Box<AddedChannel>,
        reply: oneshot::Sender<Result<()>>,
    },
    RemoveChannel {
        name: String,
        reply: oneshot::Sender<Result<bool>>,
    },
    Status {
        reply: oneshot::Sender<Result<Status>>,
    },
}

/// What the notifier holds, for an operator's status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Notifications waiting in the outbox.
    pub outbox_len: u64,
    /// Dead letters kept (the newest [`Status::dead_letters`] of them).
    pub dead: u64,
    /// Up to 100 dead letters, oldest first.
    pub dead_letters: Vec<OutboxEntry>,
    /// The alert groups.
    pub groups: Vec<GroupState>,
    /// Alerts tracked one by one.
    pub tracked_alerts: usize,
    /// Up to 100 closed groups, newest first.
    pub history: Vec<ClosedGroup>,
    /// Up to 100 deliveries, newest first.
    pub sent: Vec<crate::outbox::Delivered>,
    /// Notifications waiting (up to 100), in queue order.
    pub pending: Vec<OutboxEntry>,
    /// The silences that hold or have yet to start, by id.
    pub silences: Vec<Silence>,
}

/// What the worker shares with its handles: the channels it delivers on
/// and the config it runs with, both changed only by the worker, when a
/// channel is added or removed at run time.
#[derive(Debug)]
struct Shared {
    channels: RwLock<Channels>,
    config: RwLock<NotifyConfig>,
}

impl Shared {
    fn channel(&self, name: &str) -> Result<Arc<Channel>> {
        self.channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .shared(name)
    }
}

/// A cheap, cloneable handle to a running worker.
#[derive(Debug, Clone)]
pub struct NotifyHandle {
    commands: mpsc::Sender<Command>,
    metrics: NotifyMetrics,
    shared: Arc<Shared>,
}

impl NotifyHandle {
    /// The config the notifier runs with now: the file's, with the
    /// channels added at run time.
    pub fn config(&self) -> NotifyConfig {
        self.shared
            .config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The channel named `name`, ready to send (a test message).
    pub fn channel(&self, name: &str) -> Result<Arc<Channel>> {
        self.shared.channel(name)
    }

    /// Adds a channel at run time: its secret is read, it is kept in the
    /// store (so it outlives a restart) and its recipients route to it.
    pub async fn add_channel(&self, added: AddedChannel) -> Result<()> {
        self.ask(|reply| Command::AddChannel {
            added: Box::new(added),
            reply,
        })
        .await
    }

    /// Removes a channel added at run time; false if `name` was not one
    /// (a channel of the config file, or none).
    pub async fn remove_channel(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.ask(|reply| Command::RemoveChannel { name, reply })
            .await
    }

    /// Hands `alert` to the notifier, waiting while its queue is full.
    pub async fn raise(&self, alert: Alert) -> Result<()> {
        self.commands
            .send(Command::Raise(Box::new(alert)))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Hands `alert` to the notifier and returns once it is on disk (its
    /// batch flushed), with what became of it: after this returns, a crash
    /// cannot lose it.
    pub async fn raise_durably(&self, alert: Alert) -> Result<Raised> {
        self.ask(|reply| Command::RaiseDurably {
            alert: Box::new(alert),
            reply,
        })
        .await
    }

    /// Hands `alert` to the notifier if its queue has room; otherwise drops
    /// it, counts it and returns false (for callers that must not wait).
    pub fn try_raise(&self, alert: Alert) -> bool {
        match self.commands.try_send(Command::Raise(Box::new(alert))) {
            Ok(()) => true,
            Err(_) => {
                self.metrics.dropped_alerts.inc();
                tracing::warn!("notifier queue full: alert dropped");
                false
            }
        }
    }

    /// Marks `alert` resolved if the queue has room; otherwise drops the
    /// resolution, counts it and returns false (for callers that must not
    /// wait; the alert then stays firing until acknowledged).
    pub fn try_resolve(&self, alert: Alert) -> bool {
        match self.commands.try_send(Command::Resolve(Box::new(alert))) {
            Ok(()) => true,
            Err(_) => {
                self.metrics.dropped_alerts.inc();
                tracing::warn!("notifier queue full: resolution dropped");
                false
            }
        }
    }

    /// Marks `alert` resolved.
    pub async fn resolve(&self, alert: Alert) -> Result<()> {
        self.commands
            .send(Command::Resolve(Box::new(alert)))
            .await
            .map_err(|_| Error::Stopped)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// Acknowledges a group with the token from its message.
    pub async fn acknowledge(&self, group: &str, token: &str, by: &str) -> Result<()> {
        let (group, token, by) = (group.to_owned(), Some(token.to_owned()), by.to_owned());
        self.ask(|reply| Command::Acknowledge {
            group,
            token,
            by,
            reply,
        })
        .await
    }

    /// Acknowledges a group for a caller the embedding program has already
    /// authenticated (a node's API with its bearer token), without the
    /// group's token.
    pub async fn acknowledge_authorized(&self, group: &str, by: &str) -> Result<()> {
        let (group, by) = (group.to_owned(), by.to_owned());
        self.ask(|reply| Command::Acknowledge {
            group,
            token: None,
            by,
            reply,
        })
        .await
    }

    /// Adds a silence; returns its id.
    pub async fn silence(&self, silence: Silence) -> Result<u64> {
        self.ask(|reply| Command::Silence {
            silence: Box::new(silence),
            reply,
        })
        .await
    }

    /// Ends a silence.
    pub async fn expire_silence(&self, id: u64) -> Result<bool> {
        self.ask(|reply| Command::ExpireSilence { id, reply }).await
    }

    /// The notifier's state.
    pub async fn status(&self) -> Result<Status> {
        self.ask(|reply| Command::Status { reply }).await
    }
}

/// Opens everything from `config` over `store` (the outbox, the
/// notifier's state, the channels with their secrets) and starts the
/// worker. `issuer` is the node's account, named in its own alerts.
pub fn start<S, C>(
    config: NotifyConfig,
    store: S,
    issuer: PublicKey,
    clock: C,
    metrics: NotifyMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(NotifyHandle, JoinHandle<()>)>
where
    S: Store + 'static,
    C: Clock,
{
    let config = added::merge(config, &store)?;
    let outbox = Outbox::open(store, config.outbox.clone())?;
    let channels = Channels::build(
        &config.channels,
        Duration::from_millis(config.outbox.timeout_ms),
    )?;
    let notifier = Notifier::open(outbox, config, issuer)?;
    Ok(spawn(notifier, channels, clock, metrics, shutdown))
}

/// Starts the worker over an opened notifier on the current tokio runtime.
pub fn spawn<S, C>(
    notifier: Notifier<S>,
    channels: Channels,
    clock: C,
    metrics: NotifyMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (NotifyHandle, JoinHandle<()>)
where
    S: Store + 'static,
    C: Clock,
{
    let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
    let shared = Arc::new(Shared {
        channels: RwLock::new(channels),
        config: RwLock::new(notifier.config().clone()),
    });
    let handle = NotifyHandle {
        commands,
        metrics: metrics.clone(),
        shared: shared.clone(),
    };
    let worker = Worker {
        notifier: Arc::new(Mutex::new(notifier)),
        shared,
        clock: Arc::new(clock),
        metrics,
    };
    let task = tokio::spawn(worker.run(queue, shutdown));
    (handle, task)
}

struct Worker<S: Store, C: Clock> {
    notifier: Arc<Mutex<Notifier<S>>>,
    shared: Arc<Shared>,
    clock: Arc<C>,
    metrics: NotifyMetrics,
}

type Delivery = (u64, OutboxEntry, Result<()>);

impl<S: Store + 'static, C: Clock> Worker<S, C> {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Notifier<S>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let notifier = self.notifier.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = notifier.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }

    async fn run(
        self,
        mut queue: mpsc::Receiver<Command>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let (max_in_flight, poll_ms, timeout_ms) = {
            let n = self.notifier.lock().unwrap_or_else(PoisonError::into_inner);
            let c = n.outbox().config();
            (c.max_in_flight, c.poll_ms, c.timeout_ms)
        };
        // A claim outlives one attempt, so it lapses only for a crashed
        // worker's entries.
        let lease_ms = timeout_ms.saturating_mul(2).saturating_add(1_000);
        let mut in_flight: JoinSet<Delivery> = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let free = max_in_flight.saturating_sub(in_flight.len());
            let wake = match self.step(free, lease_ms, &mut in_flight).await {
                Ok(wake) => wake,
                Err(e) => {
                    tracing::warn!(error = %e, "notifier step failed");
                    None
                }
            };
            let now = self.clock.now();
            // With every slot busy, entries already due must wait for a
            // delivery to finish (which wakes the select), not spin.
            let wake = wake.filter(|_| in_flight.len() < max_in_flight);
            let sleep_ms = wake.map_or(poll_ms, |w| w.since(now).min(poll_ms)).max(1);
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    self.record(done).await;
                }
                command = queue.recv() => {
                    let Some(first) = command else { break };
                    let mut batch = vec![first];
                    while batch.len() < COMMAND_BATCH {
                        match queue.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    self.apply(batch).await;
                }
                () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
            }
        }
        // Commands already accepted are applied before stopping: an alert
        // a caller handed over is never lost to a shutdown.
        queue.close();
        let mut rest = Vec::new();
        while let Ok(command) = queue.try_recv() {
            rest.push(command);
            if rest.len() == COMMAND_BATCH {
                self.apply(std::mem::take(&mut rest)).await;
            }
        }
        if !rest.is_empty() {
            self.apply(rest).await;
        }
        // Deliveries still in flight get one attempt's time to finish. Only
        // the wait is cut short, never a recording: a recording cancelled
        // half way would leave its blocking task holding the store open.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        while let Ok(Some(done)) = tokio::time::timeout_at(deadline, in_flight.join_next()).await {
            self.record(done).await;
        }
    }

    /// Sends due groups to the outbox and starts up to `free` deliveries;
    /// returns when something is next due.
    async fn step(
        &self,
        free: usize,
        lease_ms: u64,
        in_flight: &mut JoinSet<Delivery>,
    ) -> Result<Option<UnixMillis>> {
        let now = self.clock.now();
        let (tick, claimed, wake, len) = self
            .blocking(move |n| {
                let tick = n.tick(now)?;
                let claimed = if free > 0 {
                    n.outbox().claim(now, free, lease_ms)?
                } else {
                    Vec::new()
                };
                let wake = match (n.next_wake(), n.outbox().next_due()?) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                Ok((tick, claimed, wake, n.outbox().len()?))
            })
            .await?;
        for channel in &tick.queued {
            self.metrics
                .queued
                .get_or_create(&ChannelLabel::of(channel))
                .inc();
        }
        if tick.refused > 0 {
            self.metrics.refused.inc_by(tick.refused as u64);
            tracing::warn!(refused = tick.refused, "notification outbox full");
        }
        self.metrics
            .outbox_len
            .set(i64::try_from(len).unwrap_or(i64::MAX));
        for (seq, entry) in claimed {
            let shared = self.shared.clone();
            in_flight.spawn(async move {
                let message = entry.outgoing.clone();
                let sent = tokio::task::spawn_blocking(move || {
                    shared.channel(&message.channel)?.send(&message)
                })
                .await
                .map_err(|e| Error::Task(e.to_string()))
                .and_then(|r| r);
                (seq, entry, sent)
            });
        }
        Ok(wake)
    }

    async fn record(&self, done: std::result::Result<Delivery, tokio::task::JoinError>) {
        let Ok((seq, entry, sent)) = done else {
            return;
        };
        let now = self.clock.now();
        let label = ChannelLabel::of(&entry.outgoing.channel);
        match sent {
            Ok(()) => {
                let result = self.blocking(move |n| n.outbox().delivered(seq, now)).await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "recording a delivery failed");
                }
                self.metrics.delivered.get_or_create(&label).inc();
                let secs = now.since(entry.outgoing.created_at) as f64 / 1_000.0;
                self.metrics.latency.observe(secs);
            }
            Err(e) => {
                self.metrics.failed.get_or_create(&label).inc();
                tracing::warn!(channel = %entry.outgoing.channel, error = %e, "delivery failed");
                let reason = e.to_string();
                let permanent = e.is_permanent();
                let result = self
                    .blocking(
                        move |n| match n.outbox().failed(seq, now, &reason, permanent)? {
                            Failure::Dead(dead) => {
                                n.dead_letter(&dead, now)?;
                                Ok(true)
                            }
                            Failure::Retry(_) | Failure::Gone => Ok(false),
                        },
                    )
                    .await;
                match result {
                    Ok(true) => {
                        self.metrics.dead.get_or_create(&label).inc();
                        tracing::error!(
                            channel = %entry.outgoing.channel,
                            key = %entry.outgoing.key,
                            "notification given up"
                        );
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "recording a failed delivery failed"),
                }
            }
        }
    }

    async fn apply(&self, batch: Vec<Command>) {
        let now = self.clock.now();
        let shared = self.shared.clone();
        let result = self
            .blocking(move |n| {
                let mut confirmations = Vec::new();
                for command in batch {
                    match command {
                        Command::Raise(alert) => {
                            if let Err(e) = n.raise(&alert, now) {
                                tracing::warn!(rule = %alert.rule, error = %e, "alert not taken");
                            }
                        }
                        Command::RaiseDurably { alert, reply } => {
                            confirmations.push((reply, n.raise(&alert, now)));
                        }
                        Command::Resolve(alert) => {
                            if let Err(e) = n.resolve(&alert, now) {
                                tracing::warn!(rule = %alert.rule, error = %e, "resolution not taken");
                            }
                        }
                        Command::Acknowledge {
                            group,
                            token,
                            by,
                            reply,
                        } => {
                            let acknowledged = match token {
                                Some(token) => n.acknowledge(&group, &token, &by, now),
                                None => n.acknowledge_authorized(&group, &by, now),
                            };
                            let _ = reply.send(acknowledged);
                        }
                        Command::Silence { silence, reply } => {
                            let _ = reply.send(n.silence(*silence, now));
                        }
                        Command::ExpireSilence { id, reply } => {
                            let _ = reply.send(n.expire_silence(id));
                        }
                        Command::AddChannel { added, reply } => {
                            let _ = reply.send(add_channel(n, &shared, &added));
                        }
                        Command::RemoveChannel { name, reply } => {
                            let _ = reply.send(remove_channel(n, &shared, &name));
                        }
                        Command::Status { reply } => {
                            let status = (|| {
                                let head = n.outbox().head()?;
                                Ok(Status {
                                    outbox_len: head.len,
                                    dead: head.dead,
                                    dead_letters: n
                                        .outbox()
                                        .dead_letters(100)?
                                        .into_iter()
                                        .map(|(_, e)| e)
                                        .collect(),
                                    groups: n.groups().cloned().collect(),
                                    tracked_alerts: n.tracked_alerts(),
                                    history: n.history(100)?,
                                    sent: n.outbox().sent(100)?,
                                    pending: n
                                        .outbox()
                                        .pending(100)?
                                        .into_iter()
                                        .map(|(_, e)| e)
                                        .collect(),
                                    silences: n
                                        .silences()
                                        .filter(|s| s.ends_at > now)
                                        .cloned()
                                        .collect(),
                                })
                            })();
                            let _ = reply.send(status);
                        }
                    }
                }
                // One flush for the whole batch (group commit): an alert
                // is durable once the batch that took it returns, and only
                // then is it confirmed.
                let flushed = n.flush();
                for (reply, raised) in confirmations {
                    let answer = match &flushed {
                        Ok(()) => raised,
                        Err(e) => Err(Error::Task(format!("flush failed: {e}"))),
                    };
                    let _ = reply.send(answer);
                }
                flushed
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "notifier commands failed");
        }
    }
}

/// Adds `added` to the running notifier: checked against the config, its
/// secret read (the channel built), kept in the store, then routed to.
fn add_channel<S: Store>(n: &mut Notifier<S>, shared: &Shared, added: &AddedChannel) -> Result<()> {
    let store = n.outbox().store();
    if added::load(store)?.len() >= added::MAX_ADDED {
        return Err(Error::Full {
            what: "channels added at run time",
            max: added::MAX_ADDED,
        });
    }
    let mut config = n.config().clone();
    added.apply_to(&mut config)?;
    config.check()?;
    let channel = Channel::build(
        &added.channel,
        Duration::from_millis(config.outbox.timeout_ms),
    )?;
    added::save(store, added)?;
    n.reconfigure(config.clone())?;
    shared
        .channels
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(channel);
    *shared
        .config
        .write()
        .unwrap_or_else(PoisonError::into_inner) = config;
    Ok(())
}

/// Removes channel `name` if it was added at run time. A route or an
/// escalation step of the config that names it keeps it.
fn remove_channel<S: Store>(n: &mut Notifier<S>, shared: &Shared, name: &str) -> Result<bool> {
    let store = n.outbox().store();
    if store.get(added::ADDED_CHANNELS, name.as_bytes())?.is_none() {
        return Ok(false);
    }
    let mut config = n.config().clone();
    added::remove_from(&mut config, name);
    config.check()?;
    added::forget(store, name)?;
    n.reconfigure(config.clone())?;
    shared
        .channels
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(name);
    *shared
        .config
        .write()
        .unwrap_or_else(PoisonError::into_inner) = config;
    Ok(true)
}
