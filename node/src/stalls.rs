//! How long the async executor the node runs on was kept from its tasks.
//!
//! Disk writes, full scans and heavy CPU work belong on blocking threads
//! (`spawn_blocking`) or dedicated ones; when one runs on the executor
//! instead, every task that shares the worker waits: gossip is not
//! forwarded, attestations are not answered, the API does not reply. A
//! small task asks to be woken every [`TICK`] and measures how late it
//! was woken. Its lateness is exported as a histogram
//! (`rigmesh_executor_lag_seconds`) and as the largest lateness seen
//! (`rigmesh_executor_lag_max_seconds`); a stall over [`WARN_AFTER`] is
//! logged. On a single-threaded runtime any blocking call on the executor
//! shows here in full, which is how the tests keep heavy work off it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// How often the watch asks to be woken.
pub const TICK: Duration = Duration::from_millis(50);

/// A lateness worth a warning in the log.
pub const WARN_AFTER: Duration = Duration::from_millis(250);

/// The executor's lateness, as measured by [`run`].
#[derive(Clone, Debug)]
pub struct StallMetrics {
    lag: Histogram,
    max: Gauge<f64, AtomicU64>,
    max_micros: Arc<AtomicU64>,
}

impl StallMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = StallMetrics {
            lag: Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
            max: Gauge::default(),
            max_micros: Arc::default(),
        };
        let r = registry.sub_registry_with_prefix("rigmesh_executor");
        r.register(
            "lag_seconds",
            "How late the executor woke a task that asked to be woken, per tick",
            metrics.lag.clone(),
        );
        r.register(
            "lag_max_seconds",
            "The largest lateness of the executor since the node started",
            metrics.max.clone(),
        );
        metrics
    }

    /// Records one tick woken `late` after it was due.
    fn record(&self, late: Duration) {
        self.lag.observe(late.as_secs_f64());
        let micros = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        let before = self.max_micros.fetch_max(micros, Ordering::Relaxed);
        if micros > before {
            self.max.set(late.as_secs_f64());
        }
    }

    /// The largest lateness recorded so far.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_micros.load(Ordering::Relaxed))
    }
}

/// Measures the executor's lateness every [`TICK`] until `stop` turns
/// true.
pub async fn run(metrics: StallMetrics, mut stop: watch::Receiver<bool>) {
    loop {
        let due = Instant::now() + TICK;
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(due.into()) => {
                let late = Instant::now().saturating_duration_since(due);
                metrics.record(late);
                if late >= WARN_AFTER {
                    tracing::warn!(
                        ms = late.as_millis() as u64,
                        "the executor was held up; something ran on it that should not"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_blocking_call_on_the_executor_shows_as_lag_and_awaiting_does_not() {
        let metrics = StallMetrics::register(&mut Registry::default());
        let (stop, stop_rx) = watch::channel(false);
        let watch = tokio::spawn(run(metrics.clone(), stop_rx));
        // Awaiting, however long, holds nobody up.
        tokio::time::sleep(TICK * 4).await;
        let calm = metrics.max();
        // A synchronous sleep on the one worker holds up every task on it.
        std::thread::sleep(Duration::from_millis(400));
        tokio::time::sleep(TICK * 2).await;
        let held = metrics.max();
        stop.send(true).unwrap();
        watch.await.unwrap();
        assert!(
            held >= Duration::from_millis(300),
            "a 400 ms block shows: {held:?}"
        );
        assert!(calm < held, "{calm:?} then {held:?}");
    }
}
