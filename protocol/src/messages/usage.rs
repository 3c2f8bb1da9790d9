//! Metering: the supplier's hash-chained `UsageAttestation` per window, and
//! the customer's answer to each, a `UsageAck` or a `UsageDispute`.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::crypto::{Id, PublicKey};
use crate::error::{Error, Result};
use crate::kind::Kind;
use crate::rules::{self, FULL_UTILISATION_BP, MAX_GPUS, MAX_GPU_MEMORY_MIB, MAX_WINDOW_SECS};
use crate::signed::Message;
use crate::time::UnixMillis;

/// Longest free-text detail of a dispute, bytes.
pub const MAX_DISPUTE_DETAIL_LEN: usize = 256;

/// What one GPU did during one metering window.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct GpuUsage {
    /// Device index on the supplier's rig (one of the agreement's).
    pub gpu_index: u16,
    /// Milliseconds the GPU was leased and healthy in the window.
    pub billable_ms: u64,
    /// Mean SM utilisation, basis points (10000 = 100 %).
    pub mean_util_bp: u16,
    /// Peak SM utilisation, basis points.
    pub peak_util_bp: u16,
    /// Peak memory used, MiB.
    pub peak_memory_mib: u64,
    /// Energy used in the window, millijoules.
    pub energy_mj: u64,
}

/// A supplier's signed account of one window of a lease. Attestations of a
/// lease form a chain: `seq` counts from 0 and `prev` is the id of the
/// previous one (zero for the first).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct UsageAttestation {
    /// Protocol version (1).
    pub version: u16,
    /// The lease (id of the agreement).
    pub lease: Id,
    /// The supplier account; must sign.
    pub supplier: PublicKey,
    /// The customer account the lease belongs to.
    pub customer: PublicKey,
    /// Position in the lease's chain, from 0.
    pub seq: u64,
    /// Id of attestation `seq - 1`; zero when `seq` is 0.
    pub prev: Id,
    /// Window start (inclusive).
    pub window_start: UnixMillis,
    /// Window end (exclusive).
    pub window_end: UnixMillis,
    /// One entry per leased GPU, by ascending index.
    pub gpus: Vec<GpuUsage>,
    /// Sum of the GPUs' `billable_ms`: what the window charges for.
    pub billable_gpu_ms: u64,
    /// When it was made.
    pub created_at: UnixMillis,
}

impl Message for UsageAttestation {
    const KIND: Kind = Kind::UsageAttestation;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("supplier", self.supplier)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        Some(self.created_at)
    }

    fn check_fields(&self) -> Result<()> {
        let kind = Self::KIND;
        if self.lease.is_zero() {
            return Err(Error::field(kind, "lease", "must be set"));
        }
        if (self.seq == 0) != self.prev.is_zero() {
            return Err(Error::field(
                kind,
                "prev",
                "must be zero exactly when seq is 0",
            ));
        }
        if self.window_end <= self.window_start {
            return Err(Error::field(
                kind,
                "window_end",
                "must be after window_start (no zero-length windows)",
            ));
        }
        let window_ms = self.window_end.since(self.window_start);
        if window_ms > u64::from(MAX_WINDOW_SECS) * 1000 {
            return Err(Error::field(
                kind,
                "window_end",
                format!("window of {window_ms} ms is over {MAX_WINDOW_SECS} s"),
            ));
        }
        if self.created_at < self.window_end {
            return Err(Error::field(
                kind,
                "created_at",
                "is before the window it attests ended",
            ));
        }
        rules::range(kind, "gpus", self.gpus.len(), 1, usize::from(MAX_GPUS))?;
        let mut total: u64 = 0;
        let mut last_index: Option<u16> = None;
        for gpu in &self.gpus {
            if last_index.is_some_and(|last| gpu.gpu_index <= last) {
                return Err(Error::field(
                    kind,
                    "gpus.gpu_index",
                    "must be strictly ascending (no GPU twice)",
                ));
            }
            last_index = Some(gpu.gpu_index);
            rules::range(kind, "gpus.billable_ms", gpu.billable_ms, 0, window_ms)?;
            rules::range(
                kind,
                "gpus.peak_util_bp",
                gpu.peak_util_bp,
                0,
                FULL_UTILISATION_BP,
            )?;
            rules::range(
                kind,
                "gpus.mean_util_bp",
                gpu.mean_util_bp,
                0,
                gpu.peak_util_bp,
            )?;
            rules::range(
                kind,
                "gpus.peak_memory_mib",
                gpu.peak_memory_mib,
                0,
                MAX_GPU_MEMORY_MIB,
            )?;
            total = total.saturating_add(gpu.billable_ms);
        }
        if total != self.billable_gpu_ms {
            return Err(Error::field(
                kind,
                "billable_gpu_ms",
                format!("is {}, the GPUs add up to {total}", self.billable_gpu_ms),
            ));
        }
        Ok(())
    }
}

/// The customer accepts attestation `seq` of a lease.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct UsageAck {
    /// Protocol version (1).
    pub version: u16,
    /// The lease.
    pub lease: Id,
    /// The customer account; must sign.
    pub customer: PublicKey,
    /// Id of the attestation accepted.
    pub attestation: Id,
    /// Its `seq`.
    pub seq: u64,
    /// When it was made.
    pub created_at: UnixMillis,
}

impl Message for UsageAck {
    const KIND: Kind = Kind::UsageAck;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("customer", self.customer)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        Some(self.created_at)
    }

    fn check_fields(&self) -> Result<()> {
        for (field, id) in [("lease", self.lease), ("attestation", self.attestation)] {
            if id.is_zero() {
                return Err(Error::field(Self::KIND, field, "must be set"));
            }
        }
        Ok(())
    }
}

/// Why a customer refuses an attestation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputeReason {
    /// The signature does not verify.
    BadSignature,
    /// `seq` or `prev` does not continue the chain.
    BrokenChain,
    /// The window overlaps the previous one or leaves the lease's time.
    OverlappingWindow,
    /// The numbers do not add up.
    ArithmeticMismatch,
    /// GPUs other than the agreement's are billed.
    WrongGpus,
    /// Billed time exceeds what the window allows.
    Overbilled,
    /// The customer's node observed the GPUs unreachable or idle-dead.
    NotDelivered,
    /// Anything else; see the detail.
    Other,
}

/// The customer refuses attestation `seq` of a lease, with a reason.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct UsageDispute {
    /// Protocol version (1).
    pub version: u16,
    /// The lease.
    pub lease: Id,
    /// The customer account; must sign.
    pub customer: PublicKey,
    /// Id of the attestation disputed.
    pub attestation: Id,
    /// Its `seq`.
    pub seq: u64,
    /// Why.
    pub reason: DisputeReason,
    /// Human-readable detail.
    pub detail: String,
    /// When it was made.
    pub created_at: UnixMillis,
}

impl Message for UsageDispute {
    const KIND: Kind = Kind::UsageDispute;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("customer", self.customer)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        Some(self.created_at)
    }

    fn check_fields(&self) -> Result<()> {
        for (field, id) in [("lease", self.lease), ("attestation", self.attestation)] {
            if id.is_zero() {
                return Err(Error::field(Self::KIND, field, "must be set"));
            }
        }
        rules::text(
            Self::KIND,
            "detail",
            &self.detail,
            MAX_DISPUTE_DETAIL_LEN,
            true,
        )
    }
}
