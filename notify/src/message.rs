//! What goes out: one rendered notification for one channel, as stored in
//! the outbox. Its idempotency key is fixed when it is queued and travels
//! with every attempt, so a receiver can recognise a repeat after a crash
//! between sending and recording the delivery.

use bincode::{Decode, Encode};
use rigmesh_ledger::codec::Record;
use rigmesh_protocol::{Severity, UnixMillis};

/// A notification ready for one channel.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Outgoing {
    /// Idempotency key: 32 hex digits, the same on every attempt.
    pub key: String,
    /// The channel that delivers it.
    pub channel: String,
    /// The group it reports on (acknowledgements name it).
    pub group: String,
    /// The rule of the group's first alert.
    pub rule: String,
    /// Severity of the group.
    pub severity: Severity,
    /// One line (an email's subject, an SMS's whole text).
    pub subject: String,
    /// The full text.
    pub body: String,
    /// Link that acknowledges the group, if acknowledgement applies.
    pub ack_url: Option<String>,
    /// Alerts it reports on (more than one: a digest).
    pub alerts: u64,
    /// When it was queued.
    pub created_at: UnixMillis,
}

impl Record for Outgoing {
    const WHAT: &'static str = "outgoing notification";
}

impl Outgoing {
    /// The text for channels that show one block of text (chat, SMS
    /// gateways): subject, body and the acknowledgement link.
    pub fn text(&self) -> String {
        let mut text = format!("{}\n\n{}", self.subject, self.body);
        if let Some(url) = &self.ack_url {
            text.push_str("\n\nAcknowledge: ");
            text.push_str(url);
        }
        text
    }

    /// A short text for SMS: the subject and the link.
    pub fn short_text(&self) -> String {
        match &self.ack_url {
            Some(url) => format!("{} (ack: {url})", self.subject),
            None => self.subject.clone(),
        }
    }
}

/// `text` cut to at most `max` characters, marked when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The lowercase name of a severity.
pub fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_counts_characters_and_marks_the_cut() {
        assert_eq!(truncate("héllo", 5), "héllo");
        assert_eq!(truncate("héllo world", 5), "héll…");
        assert_eq!(truncate("héllo world", 5).chars().count(), 5);
    }
}
