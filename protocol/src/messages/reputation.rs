//! Market health: coordinators' signed `ReputationReport`s and the `Alert`s
//! any node raises.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::crypto::{Id, PublicKey};
use crate::error::{Error, Result};
use crate::kind::Kind;
use crate::rules::{self, FULL_UTILISATION_BP};
use crate::signed::Message;
use crate::time::UnixMillis;

/// Longest alert rule name, bytes.
pub const MAX_ALERT_RULE_LEN: usize = 64;
/// Longest alert text, bytes.
pub const MAX_ALERT_MESSAGE_LEN: usize = 1024;

/// Which side of the market a score is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A rig owner.
    Supplier,
    /// A renter.
    Customer,
}

/// A coordinator's score of one account over a period, with the certified
/// evidence counts it was derived from.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct ReputationReport {
    /// Protocol version (1).
    pub version: u16,
    /// The scoring coordinator; must sign.
    pub coordinator: PublicKey,
    /// Coordinator epoch.
    pub epoch: u64,
    /// The account scored.
    pub subject: PublicKey,
    /// Its role in the evidence.
    pub role: Role,
    /// Score in basis points: 10000 is spotless.
    pub score_bp: u16,
    /// Leases completed and settled.
    pub completed_leases: u32,
    /// Disputes decided against the subject.
    pub disputes_lost: u32,
    /// Metering windows a supplier failed to attest.
    pub missed_windows: u32,
    /// Valid proposals a supplier refused.
    pub refused_leases: u32,
    /// Times a supplier's hardware fingerprint changed under a lease.
    pub fingerprint_changes: u32,
    /// Start of the evidence period.
    pub period_start: UnixMillis,
    /// End of the evidence period.
    pub period_end: UnixMillis,
    /// When it was made.
    pub created_at: UnixMillis,
}

impl Message for ReputationReport {
    const KIND: Kind = Kind::ReputationReport;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("coordinator", self.coordinator)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        Some(self.created_at)
    }

    fn check_fields(&self) -> Result<()> {
        let kind = Self::KIND;
        rules::range(kind, "score_bp", self.score_bp, 0, FULL_UTILISATION_BP)?;
        if self.period_end <= self.period_start {
            return Err(Error::field(
                kind,
                "period_end",
                "must be after period_start",
            ));
        }
        if self.created_at < self.period_end {
            return Err(Error::field(
                kind,
                "created_at",
                "is before the period it reports ended",
            ));
        }
        Ok(())
    }
}

/// How urgent an alert is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For the record.
    Info,
    /// Needs attention soon.
    Warning,
    /// Needs attention now (money or hardware at risk).
    Critical,
}

/// Who an alert is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// The supplier named in `about`.
    Supplier,
    /// The customer named in `about`.
    Customer,
    /// Coordinator operators.
    Operators,
}

/// A signed notice raised by a rule.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Alert {
    /// Protocol version (1).
    pub version: u16,
    /// The node account raising it; must sign.
    pub issuer: PublicKey,
    /// How urgent.
    pub severity: Severity,
    /// Who it is for.
    pub audience: Audience,
    /// Machine-readable rule name, e.g. `gpu.dropped`, `budget.80`.
    pub rule: String,
    /// The account it concerns, if any.
    pub about: Option<PublicKey>,
    /// The message it concerns (lease, offer, attestation), if any.
    pub subject: Option<Id>,
    /// Human-readable text.
    pub message: String,
    /// When it was raised.
    pub created_at: UnixMillis,
}

impl Message for Alert {
    const KIND: Kind = Kind::Alert;

    fn version(&self) -> u16 {
        self.version
    }

    fn author(&self) -> (&'static str, PublicKey) {
        ("issuer", self.issuer)
    }

    fn created_at(&self) -> Option<UnixMillis> {
        Some(self.created_at)
    }

    fn check_fields(&self) -> Result<()> {
        let kind = Self::KIND;
        rules::text(kind, "rule", &self.rule, MAX_ALERT_RULE_LEN, false)?;
        if !self
            .rule
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(Error::field(
                kind,
                "rule",
                "only ASCII letters, digits, '.', '_' and '-'",
            ));
        }
        rules::text(kind, "message", &self.message, MAX_ALERT_MESSAGE_LEN, false)?;
        if matches!(self.audience, Audience::Supplier | Audience::Customer) && self.about.is_none()
        {
            return Err(Error::field(
                kind,
                "about",
                "an alert for a supplier or customer must name the account",
            ));
        }
        Ok(())
    }
}
