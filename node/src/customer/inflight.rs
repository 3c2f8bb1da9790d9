//! The customer's bid in flight and the bids queued behind it. The network
//! part of a bid (completing an earlier debit, the proposal, the
//! supplier's agreement, the escrow) runs in its own task, so the
//! customer's loop goes on answering attestations of running leases while
//! a supplier is slow or silent; the loop takes the outcome back and makes
//! every change of state itself.
//!
//! One bid is in flight at a time. The escrow limit of a bid is what the
//! account's cap leaves after every other lease's escrow: two bids in
//! flight at once would each see the other's escrow as free, and two
//! escrow orders would race for the account's debit sequence number.
//! Further bids wait here, at most [`MAX_QUEUED_BIDS`], in the order they
//! came; beyond that a bid is answered busy at once.
//!
//! The escrow top-ups a raised cap calls for are debits of the same
//! account, so they take the same slot: while they run in their task no
//! bid starts, and while a bid is in flight they wait for it.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rigmesh_protocol::{EscrowCertificate, Id, LeaseAgreement, Signed};
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};

use super::commands::{BidError, BidOutcome, BidRequest, LeaseStatus};

/// Bids that may wait behind the one in flight; more are answered busy.
pub const MAX_QUEUED_BIDS: usize = 64;

/// What a bid's network part agreed: the signed agreement, its escrow
/// (with coordinators) and the lease as the API shows it.
pub(super) type Agreed = (
    Signed<LeaseAgreement>,
    Option<EscrowCertificate>,
    LeaseStatus,
);

/// What a bid's task brings back to the loop.
pub(super) struct BidDone {
    /// The lease agreed, or why not.
    pub(super) result: Result<Agreed, BidError>,
    /// Escrows of earlier orders of the account completed on the way, for
    /// the loop to adopt.
    pub(super) orphans: Vec<crate::quorum::Completed>,
}

/// Where a bid's outcome goes.
pub(super) enum Purpose {
    /// A `bid` from the local API, answered on `reply`; when it may wait
    /// (`wait` seconds) and nothing was leased, it stands.
    Command {
        /// The caller, answered once.
        reply: Caller,
        /// How long the bid may stand, when it may.
        wait: Option<u64>,
    },
    /// Another look at the book for a standing bid; `last` when its wait is
    /// over, so a failure ends it.
    Standing {
        /// The standing bid.
        id: Id,
        /// Whether this is the look at the end of its wait.
        last: bool,
    },
}

/// The answer a bid from the local API waits for.
pub(super) type Reply = oneshot::Sender<Result<BidOutcome, BidError>>;

/// The caller of a bid from the local API, answered once. It stops
/// waiting when its request times out or its connection closes; the bid's
/// task asks whether it still waits through a [`CallerWatch`], which holds
/// no claim on the answer.
pub(super) struct Caller(Arc<Reply>);

impl Caller {
    /// The caller answered on `reply`.
    pub(super) fn new(reply: Reply) -> Self {
        Caller(Arc::new(reply))
    }

    /// What the bid's task asks whether the caller still waits.
    pub(super) fn watch(&self) -> CallerWatch {
        CallerWatch(Some(Arc::downgrade(&self.0)))
    }

    /// True once the caller stopped waiting.
    pub(super) fn is_gone(&self) -> bool {
        self.0.is_closed()
    }

    /// Answers the caller; gives the outcome back (`Some`) when the
    /// caller is gone. A watch holds no claim on the answer, only for the
    /// moment it looks (the loop answers once the bid's task, and its
    /// watch, are over).
    pub(super) fn answer(
        self,
        outcome: Result<BidOutcome, BidError>,
    ) -> Option<Result<BidOutcome, BidError>> {
        match Arc::try_unwrap(self.0) {
            Ok(reply) => reply.send(outcome).err(),
            Err(_) => Some(outcome),
        }
    }
}

/// Whether the caller of a bid still waits, as the bid's task sees it.
pub(super) struct CallerWatch(Option<Weak<Reply>>);

impl CallerWatch {
    /// Nobody waits on a standing bid's look at the book: never gone.
    pub(super) fn nobody() -> Self {
        CallerWatch(None)
    }

    /// True once the caller stopped waiting.
    pub(super) fn gone(&self) -> bool {
        match &self.0 {
            None => false,
            Some(reply) => reply.upgrade().is_none_or(|r| r.is_closed()),
        }
    }
}

/// A bid from the local API waiting for the one in flight to end.
pub(super) struct Queued {
    pub(super) request: BidRequest,
    pub(super) reply: Reply,
    pub(super) wait: Option<u64>,
    since: Instant,
}

impl Queued {
    /// A bid that arrived now.
    pub(super) fn new(request: BidRequest, reply: Reply, wait: Option<u64>) -> Self {
        Queued {
            request,
            reply,
            wait,
            since: Instant::now(),
        }
    }
}

/// A top-up of one running lease's escrow: what the loop decided, and how
/// it went.
pub(super) struct TopUp {
    /// The lease.
    pub(super) lease: Id,
    /// Added to its escrow.
    pub(super) delta: rigmesh_protocol::Credits,
    /// The escrow it makes.
    pub(super) target: rigmesh_protocol::Credits,
    /// Certified and applied, or why not.
    pub(super) result: Result<(), BidError>,
}

/// What a task of top-ups brings back to the loop.
pub(super) struct TopUpsDone {
    /// Each lease's top-up, in the order they were made.
    pub(super) top_ups: Vec<TopUp>,
    /// Escrows of earlier orders of the account completed on the way.
    pub(super) orphans: Vec<crate::quorum::Completed>,
}

/// What ended in the bid slot.
pub(super) enum SlotDone {
    /// A bid.
    Bid(Box<Finished>),
    /// Top-ups of escrows (an error when their task panicked).
    TopUps(Result<TopUpsDone, JoinError>),
}

/// A bid whose task runs.
struct InFlight {
    request: BidRequest,
    purpose: Purpose,
    /// The task's handle: a one-slot channel for its outcome that also
    /// says when the task panicked, so the loop never waits on an answer
    /// that cannot come.
    task: JoinHandle<BidDone>,
}

/// A bid's task ended: what it asked for, whom to tell, and its outcome
/// (an error when the task panicked or was cancelled).
pub(super) struct Finished {
    pub(super) request: BidRequest,
    pub(super) purpose: Purpose,
    pub(super) done: Result<BidDone, JoinError>,
}

/// The bid queue's and the report slots' metrics (`rigmesh_customer_`).
#[derive(Clone, Debug)]
pub struct BidQueueMetrics {
    /// Bids waiting behind the one in flight.
    pub queued: Gauge,
    /// Whether a bid is in flight (0 or 1).
    pub in_flight: Gauge,
    /// Seconds a bid from the API waited before its turn.
    pub wait_seconds: Histogram,
    /// Bids answered busy because the queue was full.
    pub busy: Counter,
    /// Bids whose caller stopped waiting while they were in flight: not
    /// carried to an escrow, or the lease they made ended at once.
    pub abandoned: Counter,
    /// Reports (leases, usage, budget, account) being read in their own
    /// tasks now.
    pub reports_reading: Gauge,
    /// Reports answered busy because as many as are read at once were.
    pub reports_busy: Counter,
}

impl Default for BidQueueMetrics {
    fn default() -> Self {
        BidQueueMetrics {
            queued: Gauge::default(),
            in_flight: Gauge::default(),
            wait_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 10)),
            busy: Counter::default(),
            abandoned: Counter::default(),
            reports_reading: Gauge::default(),
            reports_busy: Counter::default(),
        }
    }
}

impl BidQueueMetrics {
    /// Creates the metrics and registers them under `rigmesh_customer_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("rigmesh_customer");
        r.register(
            "bids_queued",
            "Bids waiting behind the bid in flight",
            metrics.queued.clone(),
        );
        r.register(
            "bids_in_flight",
            "Bids agreeing a lease with a supplier now (at most one)",
            metrics.in_flight.clone(),
        );
        r.register(
            "bid_wait_seconds",
            "Seconds a bid waited behind the bid in flight before its turn",
            metrics.wait_seconds.clone(),
        );
        r.register(
            "bids_busy",
            "Bids answered busy because the bid queue was full",
            metrics.busy.clone(),
        );
        r.register(
            "bids_abandoned",
            "Bids whose caller stopped waiting (its request timed out or its connection closed) while they were in flight: not carried to an escrow, or the lease they made ended at once",
            metrics.abandoned.clone(),
        );
        r.register(
            "reports_reading",
            "Reports (leases, usage, budget, account) being read now",
            metrics.reports_reading.clone(),
        );
        r.register(
            "reports_busy",
            "Reports answered busy because as many as are read at once were",
            metrics.reports_busy.clone(),
        );
        metrics
    }
}

/// The bid in flight and the bids queued behind it.
#[derive(Default)]
pub(super) struct BidQueue {
    in_flight: Option<InFlight>,
    /// Top-ups of running leases' escrows, whose task runs.
    top_ups: Option<JoinHandle<TopUpsDone>>,
    queue: VecDeque<Queued>,
    /// Standing bids to look at the book for again, one at a time, after
    /// something arrived that may let them match.
    pub(super) standing_search: VecDeque<Id>,
    metrics: BidQueueMetrics,
}

impl BidQueue {
    /// An empty queue that counts into `metrics`.
    pub(super) fn new(metrics: BidQueueMetrics) -> Self {
        BidQueue {
            metrics,
            ..BidQueue::default()
        }
    }

    /// Whether a bid or the top-ups of escrows are in flight: the
    /// account's debits are taken one at a time.
    pub(super) fn busy(&self) -> bool {
        self.in_flight.is_some() || self.top_ups.is_some()
    }

    /// The standing bid whose look at the book is in flight.
    pub(super) fn standing_in_flight(&self) -> Option<Id> {
        match self.in_flight.as_ref().map(|f| &f.purpose) {
            Some(Purpose::Standing { id, .. }) => Some(*id),
            _ => None,
        }
    }

    /// Whether a new bid is turned away because [`MAX_QUEUED_BIDS`]
    /// already wait; each one turned away is counted.
    pub(super) fn refuses_another(&self) -> bool {
        let full = self.queue.len() >= MAX_QUEUED_BIDS;
        if full {
            self.metrics.busy.inc();
        }
        full
    }

    /// Queues a bid behind the one in flight (the caller checked
    /// [`Self::refuses_another`]).
    pub(super) fn enqueue(&mut self, bid: Queued) {
        self.queue.push_back(bid);
        self.count_queue();
    }

    /// The next queued bid whose caller still waits for the answer (one
    /// that gave up is not leased for nobody).
    pub(super) fn next_queued(&mut self) -> Option<Queued> {
        while let Some(bid) = self.queue.pop_front() {
            self.count_queue();
            self.metrics
                .wait_seconds
                .observe(bid.since.elapsed().as_secs_f64());
            if bid.reply.is_closed() {
                tracing::info!(gpu = %bid.request.gpu, "a queued bid's caller is gone; not placed");
                continue;
            }
            return Some(bid);
        }
        None
    }

    /// Counts a bid from the API that found nothing in flight: it waited
    /// for nothing.
    pub(super) fn went_at_once(&self) {
        self.metrics.wait_seconds.observe(0.0);
    }

    /// Counts a bid whose caller stopped waiting while it was in flight.
    pub(super) fn abandoned(&self) {
        self.metrics.abandoned.inc();
    }

    /// Every queued bid, taken out (the node is stopping).
    pub(super) fn drain(&mut self) -> Vec<Queued> {
        let all: Vec<Queued> = self.queue.drain(..).collect();
        self.count_queue();
        all
    }

    /// Starts `task`, the network part of `request`, whose outcome goes to
    /// `purpose`. Only called when no bid is in flight.
    pub(super) fn launch<F>(&mut self, request: BidRequest, purpose: Purpose, task: F)
    where
        F: std::future::Future<Output = BidDone> + Send + 'static,
    {
        debug_assert!(self.in_flight.is_none(), "one bid in flight at a time");
        self.in_flight = Some(InFlight {
            request,
            purpose,
            task: tokio::spawn(task),
        });
        self.metrics.in_flight.set(1);
    }

    /// Waits for the bid in flight to end; `None` at once when none is
    /// (so a `select!` branch on it is off). Cancel safe: dropped before
    /// the end, the bid stays in flight.
    pub(super) async fn finished(&mut self) -> Option<Finished> {
        let done = (&mut self.in_flight.as_mut()?.task).await;
        self.metrics.in_flight.set(0);
        let flight = self.in_flight.take()?;
        Some(Finished {
            request: flight.request,
            purpose: flight.purpose,
            done,
        })
    }

    /// Waits for what is in flight, a bid or top-ups, to end; `None` at
    /// once when nothing is. Cancel safe.
    pub(super) async fn done(&mut self) -> Option<SlotDone> {
        if self.top_ups.is_some() {
            return self.top_ups_finished().await.map(SlotDone::TopUps);
        }
        self.finished().await.map(|f| SlotDone::Bid(Box::new(f)))
    }

    /// Starts `task`, the top-ups of running leases' escrows. Only called
    /// when nothing is in flight.
    pub(super) fn launch_top_ups<F>(&mut self, task: F)
    where
        F: std::future::Future<Output = TopUpsDone> + Send + 'static,
    {
        debug_assert!(!self.busy(), "one debit in flight at a time");
        self.top_ups = Some(tokio::spawn(task));
    }

    /// Waits for the top-ups in flight to end; `None` at once when none
    /// are. Cancel safe like [`Self::finished`].
    pub(super) async fn top_ups_finished(&mut self) -> Option<Result<TopUpsDone, JoinError>> {
        let done = self.top_ups.as_mut()?.await;
        self.top_ups = None;
        Some(done)
    }

    fn count_queue(&self) {
        self.metrics
            .queued
            .set(i64::try_from(self.queue.len()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rigmesh_protocol::Credits;

    fn request(gpu: &str) -> BidRequest {
        BidRequest {
            gpu: gpu.into(),
            count: 1,
            max_price: Credits::from_units(1_000_000),
            hours: 1,
            min_memory_mib: 0,
            region: None,
            budget: None,
            window_secs: None,
            min_reputation_bp: 0,
            wait_secs: None,
        }
    }

    type Answer = oneshot::Receiver<Result<BidOutcome, BidError>>;

    fn queued(gpu: &str) -> (Queued, Answer) {
        let (tx, rx) = oneshot::channel();
        (Queued::new(request(gpu), tx, None), rx)
    }

    /// The bid's task sees its caller go once the caller's side is
    /// dropped (the request timed out); the loop's answer then comes back
    /// to it, while a caller that waits gets it.
    #[test]
    fn a_caller_that_left_is_seen_gone_and_its_answer_comes_back() {
        let (tx, mut rx) = oneshot::channel();
        let caller = Caller::new(tx);
        let watch = caller.watch();
        assert!(!watch.gone() && !caller.is_gone());
        assert!(caller
            .answer(Err(BidError::Busy("answered".into())))
            .is_none());
        assert!(matches!(rx.try_recv(), Ok(Err(BidError::Busy(_)))));
        assert!(watch.gone(), "answered: nobody waits any more");

        let (tx, rx) = oneshot::channel();
        let caller = Caller::new(tx);
        let watch = caller.watch();
        drop(rx);
        assert!(watch.gone() && caller.is_gone());
        let back = caller.answer(Err(BidError::Busy("nobody hears it".into())));
        assert!(matches!(back, Some(Err(BidError::Busy(_)))));

        assert!(!CallerWatch::nobody().gone(), "a standing bid's look");
    }

    #[tokio::test]
    async fn nothing_in_flight_finishes_at_once_with_nothing() {
        let mut queue = BidQueue::default();
        assert!(!queue.busy());
        assert!(queue.finished().await.is_none());
    }

    #[tokio::test]
    async fn a_bid_task_that_panics_is_seen_as_finished_with_an_error() {
        let mut queue = BidQueue::default();
        let (tx, _rx) = oneshot::channel();
        queue.launch(
            request("A100"),
            Purpose::Command {
                reply: Caller::new(tx),
                wait: None,
            },
            async { panic!("the bid's task failed") },
        );
        assert!(queue.busy());
        let finished = queue.finished().await.expect("a bid was in flight");
        assert!(finished.done.as_ref().err().is_some_and(|e| e.is_panic()));
        assert_eq!(finished.request.gpu, "A100");
        assert!(matches!(finished.purpose, Purpose::Command { .. }));
        assert!(!queue.busy(), "the next bid may start");
    }

    #[tokio::test]
    async fn bids_wait_while_escrows_are_topped_up() {
        let mut queue = BidQueue::default();
        assert!(queue.top_ups_finished().await.is_none());
        let (release, hold) = oneshot::channel::<()>();
        queue.launch_top_ups(async move {
            let _ = hold.await;
            TopUpsDone {
                top_ups: Vec::new(),
                orphans: Vec::new(),
            }
        });
        assert!(queue.busy(), "no bid starts while the top-ups debit");
        release.send(()).unwrap();
        let done = queue
            .top_ups_finished()
            .await
            .expect("top-ups were in flight");
        assert!(done.unwrap().top_ups.is_empty());
        assert!(!queue.busy(), "the next bid may start");
    }

    #[tokio::test]
    async fn queued_bids_come_out_in_order_skipping_callers_that_left() {
        let metrics = BidQueueMetrics::default();
        let mut queue = BidQueue::new(metrics.clone());
        let (first, _a) = queued("first");
        let (gone, b) = queued("gone");
        let (third, _c) = queued("third");
        for bid in [first, gone, third] {
            assert!(!queue.refuses_another());
            queue.enqueue(bid);
        }
        assert_eq!(metrics.queued.get(), 3);
        drop(b);
        assert_eq!(queue.next_queued().unwrap().request.gpu, "first");
        assert_eq!(queue.next_queued().unwrap().request.gpu, "third");
        assert!(queue.next_queued().is_none());
        assert_eq!(metrics.queued.get(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_counts_it() {
        let metrics = BidQueueMetrics::default();
        let mut queue = BidQueue::new(metrics.clone());
        let mut answers = Vec::new();
        for i in 0..MAX_QUEUED_BIDS {
            assert!(!queue.refuses_another(), "bid {i}");
            let (bid, rx) = queued("A100");
            queue.enqueue(bid);
            answers.push(rx);
        }
        assert!(queue.refuses_another());
        assert_eq!(metrics.busy.get(), 1);
        assert_eq!(queue.drain().len(), MAX_QUEUED_BIDS);
        assert!(!queue.refuses_another());
    }
}
