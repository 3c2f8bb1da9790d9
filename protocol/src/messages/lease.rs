//! Lease negotiation: a customer's `LeaseProposal` on an offer, and the
//! supplier's `LeaseAgreement`, which carries the signed proposal so the one
//! record shows that both sides agreed. The agreement's id is the lease id.
//! A customer that ends a lease early signs a `LeaseTermination`.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::crypto::{Id, PublicKey, VerifyItem};
use crate::error::{Error, Result};
use crate::kind::Kind;
use crate::money::Credits;
use crate::rules::{self, HOUR_MS, MAX_GPUS, MAX_LEASE_HOURS, MAX_WINDOW_SECS};
use crate::signed::{Message, Signed};
use crate::time::UnixMillis;

/// Device indices on one rig are below this.
pub const MAX_GPU_INDEX: u16 = 1024;

/// Longest lifetime of a proposal: 10 minutes; negotiation is interactive.
pub const PROPOSAL_MAX_TTL_MS: u64 = 10 * 60 * 1000;

/// Longest free-text detail of a lease termination, bytes.
pub const MAX_TERMINATION_DETAIL_LEN: usize = 256;

/// A customer asks a supplier for GPUs of one of its offers.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct LeaseProposal {
    /// Protocol version (1).
    pub version: u16,
    /// The customer account; must sign.
    pub customer: PublicKey,
    /// The supplier the offer belongs to.
    pub supplier: PublicKey,
    /// Id of the offer being taken.
    pub offer: Id,
    /// GPUs wanted (at most the offer's count).
    pub gpu_count: u16,
    /// Price per GPU-hour the customer agrees to (at least the offer's).
    pub price_per_gpu_hour: Credits,
    /// Lease length, hours.
    pub hours: u32,
    /// Metering window, seconds: one attestation per window.
    pub window_secs: u32,
    /// Makes two otherwise equal proposals distinct.
    pub nonce: u64,
    /// When it was made.
    pub created_at: UnixMillis,
    /// Answer by then.
    pub expires_at: UnixMillis,
}

impl Message for LeaseProposal {
    const KIND: Kind = Kind::LeaseProposal;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("customer", self.customer)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        Some(self.created_at)
    }

    fn expires_at(&self) -> Option<UnixMillis> {
        Some(self.expires_at)
    }

    fn check_fields(&self) -> Result<()> {
        let kind = Self::KIND;
        if self.customer == self.supplier {
            return Err(Error::field(
                kind,
                "supplier",
                "a customer cannot lease from itself",
            ));
        }
        if self.offer.is_zero() {
            return Err(Error::field(kind, "offer", "must be set"));
        }
        rules::range(kind, "gpu_count", self.gpu_count, 1, MAX_GPUS)?;
        rules::positive(kind, "price_per_gpu_hour", self.price_per_gpu_hour)?;
        rules::range(kind, "hours", self.hours, 1, MAX_LEASE_HOURS)?;
        rules::range(kind, "window_secs", self.window_secs, 1, MAX_WINDOW_SECS)?;
        rules::lifetime(kind, self.created_at, self.expires_at, PROPOSAL_MAX_TTL_MS)
    }
}

/// The supplier accepts a proposal. Both parties' signatures are in it: the
/// customer's on the embedded proposal, the supplier's on the whole.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct LeaseAgreement {
    /// Protocol version (1).
    pub version: u16,
    /// The supplier account; must sign.
    pub supplier: PublicKey,
    /// The customer's signed proposal, unchanged.
    pub proposal: Signed<LeaseProposal>,
    /// Which of the supplier's GPUs (device indices) the lease gets.
    pub gpu_indices: Vec<u16>,
    /// blake3 of the leased devices' UUIDs.
    pub hardware_fingerprint: Id,
    /// Billing starts here.
    pub starts_at: UnixMillis,
    /// Billing ends here: `starts_at` plus the proposal's hours.
    pub ends_at: UnixMillis,
    /// When it was made.
    pub created_at: UnixMillis,
}

impl LeaseAgreement {
    /// Metering window length in milliseconds.
    pub fn window_ms(&self) -> u64 {
        u64::from(self.proposal.body.window_secs) * 1000
    }
}

impl Message for LeaseAgreement {
    const KIND: Kind = Kind::LeaseAgreement;

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
        // The proposal is a record here: its expiry mattered at acceptance.
        self.proposal.check_body()?;
        let proposal = &self.proposal.body;
        if proposal.supplier != self.supplier {
            return Err(Error::field(
                kind,
                "supplier",
                format!("proposal was made to {}", proposal.supplier),
            ));
        }
        if self.gpu_indices.len() != usize::from(proposal.gpu_count) {
            return Err(Error::field(
                kind,
                "gpu_indices",
                format!(
                    "{} GPUs assigned, the proposal asks for {}",
                    self.gpu_indices.len(),
                    proposal.gpu_count
                ),
            ));
        }
        if self.gpu_indices.iter().any(|i| *i >= MAX_GPU_INDEX) {
            return Err(Error::field(
                kind,
                "gpu_indices",
                format!("device indices must be below {MAX_GPU_INDEX}"),
            ));
        }
        let mut sorted = self.gpu_indices.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.gpu_indices.len() {
            return Err(Error::field(kind, "gpu_indices", "a GPU is assigned twice"));
        }
        if self.hardware_fingerprint.is_zero() {
            return Err(Error::field(kind, "hardware_fingerprint", "must be set"));
        }
        let length = u64::from(proposal.hours) * HOUR_MS;
        if self.ends_at.since(self.starts_at) != length {
            return Err(Error::field(
                kind,
                "ends_at",
                format!("must be starts_at + {} h", proposal.hours),
            ));
        }
        if self.created_at > proposal.expires_at {
            return Err(Error::field(
                kind,
                "created_at",
                "is after the proposal expired",
            ));
        }
        if self.starts_at < self.created_at
            || self.starts_at.since(self.created_at) > PROPOSAL_MAX_TTL_MS
        {
            return Err(Error::field(
                kind,
                "starts_at",
                "must be within 10 minutes after the agreement was made",
            ));
        }
        Ok(())
    }

    fn inner_signatures(&self) -> Result<Vec<VerifyItem>> {
        self.proposal.verify_items()
    }
}

/// Why a customer ends a lease early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminationReason {
    /// The customer's spending cap is reached.
    BudgetCap,
    /// The customer no longer needs the GPUs.
    CustomerRequest,
    /// The supplier did not deliver or metered wrongly.
    SupplierMisbehaviour,
    /// Anything else; see the detail.
    Other,
}

/// The customer ends lease `lease` before its `ends_at`. The supplier
/// honours it at the end of the metering window that contains `created_at`:
/// it attests that window as the last one and then settles finally.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct LeaseTermination {
    /// Protocol version (1).
    pub version: u16,
    /// The lease (id of the agreement).
    pub lease: Id,
    /// The customer account; must sign.
    pub customer: PublicKey,
    /// The supplier of the lease.
    pub supplier: PublicKey,
    /// Why.
    pub reason: TerminationReason,
    /// Human-readable detail; may be empty.
    pub detail: String,
    /// When it was made; fixes the last window.
    pub created_at: UnixMillis,
}

impl Message for LeaseTermination {
    const KIND: Kind = Kind::LeaseTermination;

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
        let kind = Self::KIND;
        if self.lease.is_zero() {
            return Err(Error::field(kind, "lease", "must be set"));
        }
        if self.customer == self.supplier {
            return Err(Error::field(
                kind,
                "supplier",
                "a customer cannot lease from itself",
            ));
        }
        rules::text(
            kind,
            "detail",
            &self.detail,
            MAX_TERMINATION_DETAIL_LEN,
            true,
        )
    }
}
