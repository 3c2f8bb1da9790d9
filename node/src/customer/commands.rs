//! What the local API asks of the customer role and what it answers: the
//! bid, the lease and standing-bid views, the errors, and the commands the
//! API sends to the role's task (each with a oneshot for the answer).

use rigmesh_protocol::{Credits, Id, PublicKey};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::report::{AccountReport, BudgetReport, UsageReport};
use super::spending::BudgetChange;
use super::standing::BidStatus;

/// What a customer asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BidRequest {
    /// GPU model, as offers name it.
    pub gpu: String,
    /// GPUs wanted.
    pub count: u16,
    /// Most per GPU-hour.
    pub max_price: Credits,
    /// Lease length, hours.
    pub hours: u32,
    /// Least memory per GPU, MiB.
    #[serde(default)]
    pub min_memory_mib: u64,
    /// Region wanted.
    #[serde(default)]
    pub region: Option<String>,
    /// Cap on what this lease may cost.
    #[serde(default)]
    pub budget: Option<Credits>,
    /// Metering window, seconds (60 by default).
    #[serde(default)]
    pub window_secs: Option<u32>,
    /// Least supplier reputation, basis points (10000 is spotless; a
    /// supplier without reports has 5000).
    #[serde(default)]
    pub min_reputation_bp: u16,
    /// When nothing matches now, how long the bid may stand waiting for an
    /// offer, seconds (none or 0: answer at once; at most 24 h).
    #[serde(default)]
    pub wait_secs: Option<u64>,
}

/// A lease as the customer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// Lease id.
    pub lease: Id,
    /// The supplier.
    pub supplier: PublicKey,
    /// GPU model.
    pub gpu_model: String,
    /// Device indices leased.
    pub gpus: Vec<u16>,
    /// Price per GPU-hour.
    pub price_per_gpu_hour: Credits,
    /// Lease length, hours.
    pub hours: u32,
    /// Most the lease can cost (price x GPUs x hours): the amount to escrow.
    pub max_cost: Credits,
    /// Spent so far (acked windows).
    pub spent: Credits,
    /// Windows acked.
    pub acked_windows: u64,
    /// Windows disputed.
    pub disputed_windows: u64,
    /// True once the budget cap stopped the lease.
    pub stopped_at_cap: bool,
    /// Where the lease is: running, stopped at the cap, ended (its time
    /// is up, or it was ended) or unwatched; the same state `usage` and
    /// `account` show.
    pub state: crate::customer::report::LeaseState,
    /// Locked in escrow for the lease (absent without coordinators).
    #[serde(default)]
    pub escrowed: Option<Credits>,
    /// Subject id of the lease's escrow certificate.
    #[serde(default)]
    pub escrow_certificate: Option<Id>,
    /// What the coordinators have certified for the lease so far (paid,
    /// refunded, windows, closed), from the settlement certificates this
    /// node holds.
    #[serde(default)]
    pub settlement: Option<crate::receipts::LeaseSettlement>,
}

/// Why a bid did not produce a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", content = "reason", rename_all = "snake_case")]
pub enum BidError {
    /// No offer meets the bid; the explanation gives the counts.
    #[error("no match: {0}")]
    NoMatch(String),
    /// The supplier refused.
    #[error("refused by the supplier: {0}")]
    Refused(String),
    /// The bid itself cannot be made (a field out of range, too long a
    /// wait, too many bids waiting).
    #[error("invalid bid: {0}")]
    Invalid(String),
    /// Anything else (network, ledger, bad input).
    #[error("{0}")]
    Failed(String),
    /// The node cannot take the bid now (too many bids wait for the one
    /// being agreed, or the node is stopping); nothing was done.
    #[error("busy: {0}")]
    Busy(String),
}

/// What a bid became.
#[derive(Debug, Clone, PartialEq)]
pub enum BidOutcome {
    /// A lease, made at once.
    Leased(LeaseStatus),
    /// Nothing matched now; the bid stands and waits.
    Waiting(BidStatus),
}

/// Why a request other than a bid was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", content = "reason", rename_all = "snake_case")]
pub enum RequestError {
    /// No such lease or bid here.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request cannot be applied as asked.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The node failed (its records could not be read or written).
    #[error("{0}")]
    Failed(String),
    /// As many reports as the node reads at once are being read; ask
    /// again in a moment.
    #[error("busy: {0}")]
    Busy(String),
}

/// How much of the account a report lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountAsk {
    /// Most leases listed, those that start last.
    pub leases: usize,
    /// Most receipts listed, the most recent.
    pub receipts: usize,
}

/// Commands from the local API.
#[derive(Debug)]
pub enum CustomerCommand {
    /// Lease the best matching offer now, or stand the bid if it may wait.
    Bid(BidRequest, oneshot::Sender<Result<BidOutcome, BidError>>),
    /// The leases of this node.
    Leases(oneshot::Sender<Result<Vec<LeaseStatus>, RequestError>>),
    /// The standing bids, waiting and recently finished.
    Bids(oneshot::Sender<Vec<BidStatus>>),
    /// One standing bid.
    BidStatus(Id, oneshot::Sender<Option<BidStatus>>),
    /// Stop a waiting bid.
    CancelBid(Id, oneshot::Sender<Result<BidStatus, RequestError>>),
    /// A lease's windows, at most this many.
    Usage(
        Id,
        usize,
        oneshot::Sender<Result<UsageReport, RequestError>>,
    ),
    /// The caps and the spend against them.
    Budget(oneshot::Sender<Result<BudgetReport, RequestError>>),
    /// Change a cap.
    SetBudget(
        BudgetChange,
        oneshot::Sender<Result<BudgetReport, RequestError>>,
    ),
    /// The account as this node knows it, with at most so many leases
    /// and receipts (the most recent).
    Account(
        AccountAsk,
        oneshot::Sender<Result<AccountReport, RequestError>>,
    ),
    /// End a running lease: a signed termination the supplier honours at
    /// the end of the window in progress.
    EndLease(Id, oneshot::Sender<Result<LeaseStatus, RequestError>>),
    /// Raise a `forecast.cap` alert about a cap (`None`: the account's)
    /// that the spend forecast reaches soon; answered once it is kept.
    ForecastAlert(Option<Id>, String, oneshot::Sender<()>),
    /// Dispute every window of a lease from now on with the customer's own
    /// observation (`None` stops).
    Contest(
        Id,
        Option<crate::customer::usage::Contest>,
        oneshot::Sender<Result<LeaseStatus, RequestError>>,
    ),
}
