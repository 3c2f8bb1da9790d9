//! Market messages: who runs where (`NodeBinding`), what is for sale
//! (`Offer`) and what is wanted (`Bid`).

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::crypto::{Id, PublicKey};
use crate::error::{Error, Result};
use crate::kind::Kind;
use crate::money::Credits;
use crate::rules::{self, HOUR_MS, MAX_GPUS, MAX_GPU_MEMORY_MIB, MAX_LEASE_HOURS};
use crate::signed::Message;
use crate::time::UnixMillis;

/// Longest lifetime of a node binding: 30 days.
pub const NODE_BINDING_MAX_TTL_MS: u64 = 30 * 24 * HOUR_MS;
/// Longest lifetime of an offer: 24 hours (suppliers re-publish before expiry).
pub const OFFER_MAX_TTL_MS: u64 = 24 * HOUR_MS;
/// Longest lifetime of a standing bid: 24 hours.
pub const BID_MAX_TTL_MS: u64 = 24 * HOUR_MS;
/// Longest GPU model name, in bytes.
pub const MAX_MODEL_LEN: usize = 64;
/// Longest region name, in bytes.
pub const MAX_REGION_LEN: usize = 32;
/// Longest libp2p peer id, in bytes.
pub const MAX_PEER_ID_LEN: usize = 64;

/// An account states which libp2p peer speaks for it. The node key and the
/// account key are separate, so this is how a peer's messages are tied to
/// an account.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct NodeBinding {
    /// Protocol version (1).
    pub version: u16,
    /// The account binding itself; must sign.
    pub account: PublicKey,
    /// The libp2p `PeerId`, as its multihash bytes.
    pub peer_id: Vec<u8>,
    /// When it was made.
    pub created_at: UnixMillis,
    /// When it stops being valid.
    pub expires_at: UnixMillis,
}

impl Message for NodeBinding {
    const KIND: Kind = Kind::NodeBinding;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("account", self.account)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        Some(self.created_at)
    }

    fn expires_at(&self) -> Option<UnixMillis> {
        Some(self.expires_at)
    }

    fn check_fields(&self) -> Result<()> {
        rules::range(
            Self::KIND,
            "peer_id",
            self.peer_id.len(),
            1,
            MAX_PEER_ID_LEN,
        )?;
        rules::lifetime(
            Self::KIND,
            self.created_at,
            self.expires_at,
            NODE_BINDING_MAX_TTL_MS,
        )
    }
}

/// GPUs a supplier offers: what they are, how many, at what price, for how
/// long, and which physical devices (the hardware fingerprint).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Offer {
    /// Protocol version (1).
    pub version: u16,
    /// The supplier account; must sign.
    pub supplier: PublicKey,
    /// Grows with each re-publication by the supplier, so a newer offer
    /// replaces an older one for the same devices.
    pub sequence: u64,
    /// GPU model as NVML names it, e.g. `NVIDIA H100 80GB HBM3`.
    pub gpu_model: String,
    /// Memory of each GPU, MiB.
    pub gpu_memory_mib: u64,
    /// GPUs offered together.
    pub gpu_count: u16,
    /// Price of one GPU for one hour.
    pub price_per_gpu_hour: Credits,
    /// Shortest lease accepted, hours.
    pub min_hours: u32,
    /// Longest lease accepted, hours.
    pub max_hours: u32,
    /// Where the rig is, e.g. `eu-west`.
    pub region: String,
    /// blake3 of the offered devices' UUIDs; ties offers and attestations to
    /// the same hardware.
    pub hardware_fingerprint: Id,
    /// When it was made.
    pub created_at: UnixMillis,
    /// When it stops being valid.
    pub expires_at: UnixMillis,
}

impl Message for Offer {
    const KIND: Kind = Kind::Offer;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("supplier", self.supplier)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        Some(self.created_at)
    }

    fn expires_at(&self) -> Option<UnixMillis> {
        Some(self.expires_at)
    }

    fn check_fields(&self) -> Result<()> {
        let kind = Self::KIND;
        rules::text(kind, "gpu_model", &self.gpu_model, MAX_MODEL_LEN, false)?;
        rules::range(
            kind,
            "gpu_memory_mib",
            self.gpu_memory_mib,
            1,
            MAX_GPU_MEMORY_MIB,
        )?;
        rules::range(kind, "gpu_count", self.gpu_count, 1, MAX_GPUS)?;
        rules::positive(kind, "price_per_gpu_hour", self.price_per_gpu_hour)?;
        rules::range(kind, "min_hours", self.min_hours, 1, MAX_LEASE_HOURS)?;
        rules::range(
            kind,
            "max_hours",
            self.max_hours,
            self.min_hours,
            MAX_LEASE_HOURS,
        )?;
        rules::text(kind, "region", &self.region, MAX_REGION_LEN, false)?;
        if self.hardware_fingerprint.is_zero() {
            return Err(Error::field(kind, "hardware_fingerprint", "must be set"));
        }
        rules::lifetime(kind, self.created_at, self.expires_at, OFFER_MAX_TTL_MS)
    }
}

/// A customer's standing request, for suppliers to answer.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Bid {
    /// Protocol version (1).
    pub version: u16,
    /// The customer account; must sign.
    pub customer: PublicKey,
    /// GPU model wanted.
    pub gpu_model: String,
    /// Least memory per GPU, MiB.
    pub min_memory_mib: u64,
    /// GPUs wanted.
    pub gpu_count: u16,
    /// Most the customer pays per GPU-hour.
    pub max_price_per_gpu_hour: Credits,
    /// Lease length wanted, hours.
    pub hours: u32,
    /// Region wanted, if any.
    pub region: Option<String>,
    /// When it was made.
    pub created_at: UnixMillis,
    /// When it stops being valid.
    pub expires_at: UnixMillis,
}

impl Message for Bid {
    const KIND: Kind = Kind::Bid;

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
        rules::text(kind, "gpu_model", &self.gpu_model, MAX_MODEL_LEN, false)?;
        rules::range(
            kind,
            "min_memory_mib",
            self.min_memory_mib,
            0,
            MAX_GPU_MEMORY_MIB,
        )?;
        rules::range(kind, "gpu_count", self.gpu_count, 1, MAX_GPUS)?;
        rules::positive(kind, "max_price_per_gpu_hour", self.max_price_per_gpu_hour)?;
        rules::range(kind, "hours", self.hours, 1, MAX_LEASE_HOURS)?;
        if let Some(region) = &self.region {
            rules::text(kind, "region", region, MAX_REGION_LEN, false)?;
        }
        rules::lifetime(kind, self.created_at, self.expires_at, BID_MAX_TTL_MS)
    }
}
