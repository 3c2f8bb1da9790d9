//! Silences: an operator's "not now" for alerts matching a rule prefix and
//! optionally an account, a subject or a recipient, until a set time.
//! They are kept in the store, so a restart does not wake anyone who asked
//! for quiet, and they lapse by themselves.

use bincode::{Decode, Encode};
use rigmesh_ledger::codec::Record;
use rigmesh_protocol::{Id, PublicKey, UnixMillis};

use crate::group::TrackedAlert;

/// A silence.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Silence {
    /// Id, assigned when it is added.
    pub id: u64,
    /// Rule-name prefix; empty matches every rule.
    pub rule_prefix: String,
    /// Only alerts about this account.
    pub about: Option<PublicKey>,
    /// Only alerts about this message.
    pub subject: Option<Id>,
    /// Only for this recipient.
    pub recipient: Option<String>,
    /// Starts.
    pub starts_at: UnixMillis,
    /// Lapses.
    pub ends_at: UnixMillis,
    /// Who asked for it.
    pub created_by: String,
    /// Why.
    pub comment: String,
}

impl Record for Silence {
    const WHAT: &'static str = "silence";
}

impl Silence {
    /// True while it holds.
    pub fn active(&self, now: UnixMillis) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    /// True when it mutes `alert` for `recipient` at `now`.
    pub fn mutes(&self, alert: &TrackedAlert, recipient: &str, now: UnixMillis) -> bool {
        self.active(now)
            && alert.rule.starts_with(self.rule_prefix.as_str())
            && self.about.is_none_or(|a| alert.about == Some(a))
            && self.subject.is_none_or(|s| alert.subject == Some(s))
            && self.recipient.as_deref().is_none_or(|r| r == recipient)
    }
}
