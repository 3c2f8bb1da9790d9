//! Alert groups: the alerts one recipient gets under one key (severity and
//! the `group_by` fields), the times their messages go out, and how a
//! message reads: one alert in full, or a digest of many. A group is the
//! unit of acknowledgement and escalation.

use bincode::{Decode, Encode};
use rigmesh_ledger::codec::Record;
use rigmesh_protocol::{Alert, Id, PublicKey, Severity, UnixMillis};

use crate::config::AlertField;
use crate::message::{severity_name, truncate};

/// Longest alert text kept per alert.
const MAX_TEXT: usize = 1_024;
/// Longest subject line.
const MAX_SUBJECT: usize = 120;

/// Who acknowledged a group, and when.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Acknowledgement {
    /// When.
    pub at: UnixMillis,
    /// Who (as they gave it).
    pub by: String,
}

/// A group's state without its alerts (those are stored one by one).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GroupState {
    /// Id: 16 hex digits derived from recipient, severity and label.
    pub id: String,
    /// Index of the recipient in the config.
    pub recipient: u32,
    /// Recipient name (the config may be reordered across restarts).
    pub recipient_name: String,
    /// Severity of every alert in it.
    pub severity: Severity,
    /// The `group_by` values, joined.
    pub label: String,
    /// Rule of its first alert.
    pub rule: String,
    /// Channels chosen for it when it was created.
    pub channels: Vec<String>,
    /// Alerts counted but not tracked one by one (beyond the bound).
    pub untracked: u64,
    /// Alerts (new or fired again) since the last message.
    pub new_alerts: u64,
    /// When its first alert came.
    pub created_at: UnixMillis,
    /// When its first message went out.
    pub first_sent: Option<UnixMillis>,
    /// When its last message went out.
    pub last_sent: Option<UnixMillis>,
    /// When it is next looked at.
    pub next_at: UnixMillis,
    /// Messages sent so far (part of each message's idempotency key).
    pub messages: u64,
    /// Set once acknowledged: repeats stop and escalation halts.
    pub acknowledged: Option<Acknowledgement>,
    /// Escalation steps taken.
    pub escalated: u32,
}

impl Record for GroupState {
    const WHAT: &'static str = "alert group";
}

/// One alert as its group keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TrackedAlert {
    /// The rule.
    pub rule: String,
    /// The raising node.
    pub issuer: PublicKey,
    /// The account concerned.
    pub about: Option<PublicKey>,
    /// The message concerned.
    pub subject: Option<Id>,
    /// Its text.
    pub message: String,
    /// First raised.
    pub first_seen: UnixMillis,
    /// Last raised.
    pub last_seen: UnixMillis,
    /// Times raised.
    pub count: u64,
    /// Set when resolved.
    pub resolved_at: Option<UnixMillis>,
}

impl Record for TrackedAlert {
    const WHAT: &'static str = "tracked alert";
}

impl TrackedAlert {
    pub(crate) fn new(alert: &Alert, now: UnixMillis) -> Self {
        TrackedAlert {
            rule: alert.rule.clone(),
            issuer: alert.issuer,
            about: alert.about,
            subject: alert.subject,
            message: truncate(&alert.message, MAX_TEXT),
            first_seen: now,
            last_seen: now,
            count: 1,
            resolved_at: None,
        }
    }

    /// The value of `field`, as grouping and inhibition compare it.
    pub fn field(&self, field: AlertField) -> String {
        field_of(field, &self.rule, &self.issuer, &self.about, &self.subject)
    }
}

pub(crate) fn field_of(
    field: AlertField,
    rule: &str,
    issuer: &PublicKey,
    about: &Option<PublicKey>,
    subject: &Option<Id>,
) -> String {
    match field {
        AlertField::Rule => rule.to_owned(),
        AlertField::Issuer => issuer.to_string(),
        AlertField::About => about.map(|a| a.to_string()).unwrap_or_default(),
        AlertField::Subject => subject.map(|s| s.to_string()).unwrap_or_default(),
    }
}

/// An alert's identity: the same rule about the same things from the same
/// node is the same alert raised again.
pub fn fingerprint(alert: &Alert) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(alert.rule.as_bytes());
    hasher.update(&[0]);
    hasher.update(alert.issuer.as_bytes());
    if let Some(about) = &alert.about {
        hasher.update(b"a");
        hasher.update(about.as_bytes());
    }
    if let Some(subject) = &alert.subject {
        hasher.update(b"s");
        hasher.update(subject.as_bytes());
    }
    short_hex(hasher.finalize().as_bytes(), 16)
}

/// The id of the group `recipient` / `severity` / `label`.
pub fn group_id(recipient: &str, severity: Severity, label: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in [recipient, severity_name(severity), label] {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    short_hex(hasher.finalize().as_bytes(), 8)
}

pub(crate) fn short_hex(bytes: &[u8], len: usize) -> String {
    hex::encode(bytes.get(..len).unwrap_or(bytes))
}

/// Formats a time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(time: UnixMillis) -> String {
    let secs = time.0 / 1_000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// A rendered message: subject and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One line.
    pub subject: String,
    /// The text.
    pub body: String,
    /// Alerts it reports on.
    pub alerts: u64,
}

fn describe(alert: &TrackedAlert) -> String {
    let mut line = format!("{}: {}", alert.rule, first_line(&alert.message));
    if let Some(about) = alert.about {
        line.push_str(&format!(" (account {})", short_hex(about.as_bytes(), 8)));
    }
    if let Some(subject) = alert.subject {
        line.push_str(&format!(" (subject {})", short_hex(subject.as_bytes(), 8)));
    }
    if alert.count > 1 {
        line.push_str(&format!(" ×{}", alert.count));
    }
    line
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// Renders the message for `group` over its `firing` and newly `resolved`
/// alerts; `digest_lines` bounds the alerts listed.
pub fn render(
    group: &GroupState,
    firing: &[&TrackedAlert],
    resolved: usize,
    digest_lines: usize,
) -> Rendered {
    let total = firing.len() as u64 + group.untracked;
    let severity = severity_name(group.severity);
    if total == 0 {
        return Rendered {
            subject: truncate(&format!("RESOLVED: {}", group.label), MAX_SUBJECT),
            body: format!(
                "Every {severity} alert of group {} ({}) is resolved.",
                group.id, group.label
            ),
            alerts: 0,
        };
    }
    if let ([only], 0) = (firing, group.untracked) {
        let mut body = format!(
            "{}\n\nrule: {}\nseverity: {severity}\nissuer: {}\nfirst seen: {}\nlast seen: {}\ntimes raised: {}\n",
            only.message,
            only.rule,
            only.issuer,
            utc(only.first_seen),
            utc(only.last_seen),
            only.count
        );
        if let Some(about) = only.about {
            body.push_str(&format!("account: {about}\n"));
        }
        if let Some(subject) = only.subject {
            body.push_str(&format!("subject: {subject}\n"));
        }
        if resolved > 0 {
            body.push_str(&format!("resolved since the last message: {resolved}\n"));
        }
        return Rendered {
            subject: truncate(&describe(only), MAX_SUBJECT),
            body,
            alerts: 1,
        };
    }
    let mut body = format!("{total} {severity} alerts ({}):\n\n", group.label);
    for alert in firing.iter().take(digest_lines) {
        body.push_str("- ");
        body.push_str(&describe(alert));
        body.push('\n');
    }
    let listed = firing.len().min(digest_lines) as u64;
    if total > listed {
        body.push_str(&format!("… and {} more\n", total - listed));
    }
    if resolved > 0 {
        body.push_str(&format!("\nresolved since the last message: {resolved}\n"));
    }
    Rendered {
        subject: truncate(
            &format!("{total} {severity} alerts: {}", group.label),
            MAX_SUBJECT,
        ),
        body,
        alerts: total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(UnixMillis(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(UnixMillis(951_782_400_000)), "2000-02-29 00:00:00 UTC");
        assert_eq!(
            utc(UnixMillis(1_796_036_361_000)),
            "2026-11-30 10:59:21 UTC"
        );
    }
}
