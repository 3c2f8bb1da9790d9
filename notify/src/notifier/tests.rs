//! The timing and muting rules, driven by explicit times.

use rigmesh_ledger::store::{MemoryStore, SledStore};
use rigmesh_protocol::{Alert, Audience, Id, PublicKey, Severity, UnixMillis};

use super::*;
use crate::config::{NotifyConfig, OutboxConfig};
use crate::outbox::Outbox;

const T0: UnixMillis = UnixMillis(1_800_000_000_000);
const SEC: u64 = 1_000;

fn config(extra: &str) -> NotifyConfig {
    NotifyConfig::from_toml(&format!(
        r#"
        [grouping]
        group_wait_ms = 30000
        group_interval_ms = 300000
        repeat_interval_ms = 3600000
        critical_repeat_ms = 120000
        digest_interval_ms = 3600000
        [[channels]]
        name = "mail"
        type = "email"
        server = "localhost"
        from = "rigmesh@example.com"
        to = ["ops@example.com"]
        [[channels]]
        name = "chat"
        type = "slack"
        url = {{ env = "UNUSED" }}
        [[channels]]
        name = "sms"
        type = "sms_gateway"
        url = "http://localhost/sms"
        to = ["+15550100"]
        [[channels]]
        name = "boss"
        type = "sms_gateway"
        url = "http://localhost/sms"
        to = ["+15550199"]
        {extra}
        "#
    ))
    .unwrap()
}

const OPS: &str = r#"
        [[recipients]]
        name = "ops"
        channels = ["mail", "chat", "sms"]
        escalation = [{ after_ms = 600000, channels = ["boss"] }]
"#;

fn notifier(extra: &str) -> Notifier<MemoryStore> {
    let outbox = Outbox::open(MemoryStore::new(), OutboxConfig::default()).unwrap();
    Notifier::open(outbox, config(extra), PublicKey([9; 32])).unwrap()
}

fn alert(rule: &str, severity: Severity, subject: u8) -> Alert {
    Alert {
        version: 1,
        issuer: PublicKey([1; 32]),
        severity,
        audience: Audience::Operators,
        rule: rule.into(),
        about: None,
        subject: Some(Id([subject; 32])),
        message: format!("{rule} on {subject}"),
        created_at: T0,
    }
}

/// The messages waiting in the outbox, as (channel, subject), removed.
fn take_sent(n: &Notifier<impl Store>) -> Vec<(String, String)> {
    let pending = n.outbox().pending(10_000).unwrap();
    for (seq, _) in &pending {
        n.outbox().delivered(*seq, T0).unwrap();
    }
    pending
        .into_iter()
        .map(|(_, e)| (e.outgoing.channel, e.outgoing.subject))
        .collect()
}

fn channels(sent: &[(String, String)]) -> Vec<&str> {
    let mut names: Vec<&str> = sent.iter().map(|(c, _)| c.as_str()).collect();
    names.sort_unstable();
    names
}

#[test]
fn related_alerts_wait_together_then_follow_the_group_and_repeat_intervals() {
    let mut n = notifier(OPS);
    for i in 0..3 {
        let raised = n
            .raise(
                &alert("gpu.dropped", Severity::Warning, i),
                T0.plus_ms(u64::from(i) * SEC),
            )
            .unwrap();
        assert!(matches!(raised, Raised::Grouped(_)));
    }
    n.tick(T0.plus_ms(29 * SEC)).unwrap();
    assert!(take_sent(&n).is_empty(), "nothing before the first wait");
    n.tick(T0.plus_ms(30 * SEC)).unwrap();
    let sent = take_sent(&n);
    // Warning: IM and email, one digest each, no SMS.
    assert_eq!(channels(&sent), ["chat", "mail"]);
    assert!(sent[0].1.starts_with("3 warning alerts"), "{}", sent[0].1);

    // A fourth alert waits for the group interval after the first message.
    n.raise(
        &alert("gpu.dropped", Severity::Warning, 9),
        T0.plus_ms(40 * SEC),
    )
    .unwrap();
    n.tick(T0.plus_ms(329 * SEC)).unwrap();
    assert!(take_sent(&n).is_empty());
    n.tick(T0.plus_ms(330 * SEC)).unwrap();
    let sent = take_sent(&n);
    assert_eq!(sent.len(), 2);
    assert!(sent[0].1.starts_with("4 warning alerts"), "{}", sent[0].1);

    // Nothing new: repeated after the repeat interval, not before.
    n.tick(T0.plus_ms(330 * SEC + 3_599 * SEC)).unwrap();
    assert!(take_sent(&n).is_empty());
    n.tick(T0.plus_ms(330 * SEC + 3_600 * SEC)).unwrap();
    assert_eq!(take_sent(&n).len(), 2);
}

#[test]
fn a_critical_group_repeats_and_escalates_until_acknowledged() {
    let mut n = notifier(OPS);
    let Raised::Grouped(ids) = n
        .raise(&alert("rig.offline", Severity::Critical, 1), T0)
        .unwrap()
    else {
        panic!("not grouped")
    };
    let id = ids[0].clone();
    n.tick(T0.plus_ms(30 * SEC)).unwrap();
    let first = take_sent(&n);
    assert_eq!(channels(&first), ["chat", "mail", "sms"]);
    let entry_url = n.ack_token(&id);

    // Repeats every critical_repeat_ms (2 min) while unacknowledged.
    n.tick(T0.plus_ms(149 * SEC)).unwrap();
    assert!(take_sent(&n).is_empty());
    n.tick(T0.plus_ms(150 * SEC)).unwrap();
    assert_eq!(channels(&take_sent(&n)), ["chat", "mail", "sms"]);

    // Ten minutes after the first message the boss is paged too.
    let mut escalated_at = None;
    for minute in 3..12 {
        let at = T0.plus_ms(30 * SEC + minute * 60 * SEC);
        n.tick(at).unwrap();
        if channels(&take_sent(&n)).contains(&"boss") {
            escalated_at = Some(at);
            break;
        }
    }
    assert_eq!(escalated_at, Some(T0.plus_ms(630 * SEC)));
    assert_eq!(n.group(&id).unwrap().escalated, 1);

    // A wrong token is refused; the right one stops the repeats.
    assert!(matches!(
        n.acknowledge(&id, "0000", "mallory", T0.plus_ms(700 * SEC)),
        Err(Error::BadToken(_))
    ));
    n.acknowledge(&id, &entry_url, "alice", T0.plus_ms(700 * SEC))
        .unwrap();
    n.tick(T0.plus_ms(100_000 * SEC)).unwrap();
    assert!(take_sent(&n).is_empty());
    assert_eq!(
        n.group(&id).unwrap().acknowledged.as_ref().unwrap().by,
        "alice"
    );
}

#[test]
fn a_resolved_group_says_so_once_and_closes() {
    let mut n = notifier(OPS);
    let a = alert("gpu.hot", Severity::Warning, 1);
    n.raise(&a, T0).unwrap();
    n.tick(T0.plus_ms(30 * SEC)).unwrap();
    assert_eq!(take_sent(&n).len(), 2);
    assert_eq!(n.resolve(&a, T0.plus_ms(60 * SEC)).unwrap(), 1);
    n.tick(T0.plus_ms(330 * SEC)).unwrap();
    let sent = take_sent(&n);
    assert_eq!(sent.len(), 2);
    assert!(sent[0].1.starts_with("RESOLVED"), "{}", sent[0].1);
    assert_eq!(n.groups().count(), 0);
    assert_eq!(n.tracked_alerts(), 0);
    n.tick(T0.plus_ms(100_000 * SEC)).unwrap();
    assert!(take_sent(&n).is_empty());
    // The closed group is kept for the record.
    let history = n.history(10).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].reason, CloseReason::Resolved);
    assert_eq!(history[0].closed_at, T0.plus_ms(330 * SEC));
    assert_eq!(history[0].group.messages, 1);
}

#[test]
fn a_down_coordinator_mutes_the_lease_alerts_it_causes() {
    let mut n = notifier(&format!(
        r#"{OPS}
        [[inhibit]]
        source_rules = ["coordinator.down"]
        target_rules = ["lease."]
        equal = ["issuer"]
        "#
    ));
    let down = alert("coordinator.down", Severity::Critical, 0);
    n.raise(&down, T0).unwrap();
    let muted = alert("lease.unsettled", Severity::Warning, 1);
    assert_eq!(n.raise(&muted, T0).unwrap(), Raised::Inhibited);
    let mut elsewhere = alert("lease.unsettled", Severity::Warning, 2);
    elsewhere.issuer = PublicKey([2; 32]);
    assert!(matches!(
        n.raise(&elsewhere, T0).unwrap(),
        Raised::Grouped(_)
    ));
    n.tick(T0.plus_ms(30 * SEC)).unwrap();
    let sent = take_sent(&n);
    let lease: Vec<_> = sent.iter().filter(|(_, s)| s.contains("lease")).collect();
    assert_eq!(lease.len(), 2, "{sent:?}");
    assert!(
        lease
            .iter()
            .all(|(_, s)| s.contains("lease.unsettled on 2") && !s.contains("on 1")),
        "{lease:?}"
    );
    assert!(sent.iter().any(|(_, s)| s.contains("coordinator.down")));

    // Once the coordinator is back, the lease alert still firing is sent.
    n.resolve(&down, T0.plus_ms(100 * SEC)).unwrap();
    n.tick(T0.plus_ms(329 * SEC)).unwrap();
    assert!(take_sent(&n).iter().all(|(_, s)| !s.contains("lease")));
    n.tick(T0.plus_ms(330 * SEC)).unwrap();
    let sent = take_sent(&n);
    assert!(
        sent.iter().any(|(_, s)| s.starts_with("2 warning alerts")),
        "{sent:?}"
    );
}

#[test]
fn silences_mute_until_they_lapse() {
    let mut n = notifier(OPS);
    let id = n
        .silence(
            Silence {
                id: 0,
                rule_prefix: "gpu.".into(),
                about: None,
                subject: None,
                recipient: None,
                starts_at: T0,
                ends_at: T0.plus_ms(600 * SEC),
                created_by: "alice".into(),
                comment: "maintenance".into(),
            },
            T0,
        )
        .unwrap();
    assert_eq!(
        n.raise(&alert("gpu.hot", Severity::Warning, 1), T0)
            .unwrap(),
        Raised::Silenced(id)
    );
    assert!(matches!(
        n.raise(&alert("rig.slow", Severity::Warning, 1), T0)
            .unwrap(),
        Raised::Grouped(_)
    ));
    let later = T0.plus_ms(600 * SEC);
    assert!(matches!(
        n.raise(&alert("gpu.hot", Severity::Warning, 1), later)
            .unwrap(),
        Raised::Grouped(_)
    ));
    n.tick(later).unwrap();
    assert_eq!(n.silences().count(), 0, "a lapsed silence is pruned");
}

#[test]
fn quiet_hours_hold_back_all_but_critical_alerts() {
    // 22:00 to 07:00 UTC; T0 is 2027-01-15 08:00 UTC, so start at 23:00.
    let night = UnixMillis(T0.0 - T0.0 % 86_400_000 + 23 * 3_600_000);
    let mut n = notifier(
        r#"
        [[recipients]]
        name = "ops"
        channels = ["mail", "chat", "sms"]
        quiet_hours = { start = "22:00", end = "07:00" }
        "#,
    );
    n.raise(&alert("gpu.hot", Severity::Warning, 1), night)
        .unwrap();
    n.raise(&alert("rig.offline", Severity::Critical, 1), night)
        .unwrap();
    n.tick(night.plus_ms(30 * SEC)).unwrap();
    let sent = take_sent(&n);
    assert_eq!(channels(&sent), ["chat", "mail", "sms"], "critical only");
    let morning = night.plus_ms(8 * 3_600_000);
    n.tick(morning.minus_ms(1)).unwrap();
    assert!(take_sent(&n)
        .iter()
        .all(|(_, subject)| !subject.contains("gpu.hot")));
    n.tick(morning).unwrap();
    let sent = take_sent(&n);
    assert!(sent.iter().any(|(_, s)| s.contains("gpu.hot")), "{sent:?}");
}

#[test]
fn info_alerts_go_out_as_one_email_digest() {
    let mut n = notifier(OPS);
    for i in 0..50 {
        n.raise(
            &alert("market.new_offer", Severity::Info, i),
            T0.plus_ms(u64::from(i)),
        )
        .unwrap();
    }
    n.tick(T0.plus_ms(3_599 * SEC)).unwrap();
    assert!(take_sent(&n).is_empty());
    n.tick(T0.plus_ms(3_600 * SEC)).unwrap();
    let pending = n.outbox().pending(100).unwrap();
    assert_eq!(pending.len(), 1);
    let digest = &pending[0].1.outgoing;
    assert_eq!(digest.channel, "mail");
    assert_eq!(digest.alerts, 50);
    assert!(digest.body.contains("… and 30 more"), "{}", digest.body);
    assert_eq!(n.groups().count(), 0, "the digest closes its group");
}

#[test]
fn floods_stay_within_the_group_and_alert_bounds() {
    let mut config = config(OPS);
    config.grouping.max_groups = 4;
    config.grouping.max_alerts = 100;
    let outbox = Outbox::open(MemoryStore::new(), OutboxConfig::default()).unwrap();
    let mut n = Notifier::open(outbox, config, PublicKey([9; 32])).unwrap();
    for i in 0..1_000u32 {
        let rule = format!("rule.{}", i % 10);
        let mut a = alert(&rule, Severity::Warning, 0);
        a.subject = Some(Id(*blake3::hash(&i.to_le_bytes()).as_bytes()));
        n.raise(&a, T0).unwrap();
    }
    assert_eq!(n.groups().count(), 5, "four groups and the overflow");
    assert_eq!(n.tracked_alerts(), 100);
    n.tick(T0.plus_ms(30 * SEC)).unwrap();
    let pending = n.outbox().pending(100).unwrap();
    assert_eq!(pending.len(), 10, "five digests on two channels");
    let total: u64 = pending
        .iter()
        .filter(|(_, e)| e.outgoing.channel == "mail")
        .map(|(_, e)| e.outgoing.alerts)
        .sum();
    assert_eq!(total, 1_000, "every alert is counted in some digest");
}

#[test]
fn groups_and_acknowledgements_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let outbox = Outbox::open(
            SledStore::open(dir.path()).unwrap(),
            OutboxConfig::default(),
        )
        .unwrap();
        Notifier::open(outbox, config(OPS), PublicKey([9; 32])).unwrap()
    };
    let id = {
        let mut n = open();
        let Raised::Grouped(ids) = n
            .raise(&alert("rig.offline", Severity::Critical, 1), T0)
            .unwrap()
        else {
            panic!("not grouped")
        };
        n.raise(&alert("gpu.hot", Severity::Warning, 1), T0)
            .unwrap();
        n.tick(T0.plus_ms(30 * SEC)).unwrap();
        let token = n.ack_token(&ids[0]);
        n.acknowledge(&ids[0], &token, "alice", T0.plus_ms(40 * SEC))
            .unwrap();
        n.raise(
            &alert("gpu.hot", Severity::Warning, 2),
            T0.plus_ms(50 * SEC),
        )
        .unwrap();
        ids[0].clone()
    };
    let mut n = open();
    assert_eq!(n.groups().count(), 2);
    assert_eq!(n.tracked_alerts(), 3);
    let group = n.group(&id).unwrap();
    assert_eq!(group.acknowledged.as_ref().unwrap().by, "alice");
    // The token is the same after the restart (the key is stored).
    let token = n.ack_token(&id);
    n.acknowledge(&id, &token, "alice", T0.plus_ms(60 * SEC))
        .unwrap();
    take_sent(&n);
    n.tick(T0.plus_ms(330 * SEC)).unwrap();
    let sent = take_sent(&n);
    assert!(
        sent.iter().all(|(_, s)| s.starts_with("2 warning alerts")),
        "{sent:?}"
    );
    assert_eq!(sent.len(), 2, "{sent:?}");

    // Resolved, the acknowledged group closes; its record keeps who
    // acknowledged it.
    n.resolve(
        &alert("rig.offline", Severity::Critical, 1),
        T0.plus_ms(340 * SEC),
    )
    .unwrap();
    n.tick(T0.plus_ms(340 * SEC)).unwrap();
    assert!(n.group(&id).is_none());
    let closed = n.history(10).unwrap();
    assert_eq!(closed[0].group.id, id);
    assert_eq!(closed[0].reason, CloseReason::Resolved);
    assert_eq!(closed[0].group.acknowledged.as_ref().unwrap().by, "alice");
}

#[test]
fn a_dead_letter_raises_one_operator_alert_and_never_loops() {
    let mut n = notifier(OPS);
    n.raise(&alert("gpu.hot", Severity::Warning, 1), T0)
        .unwrap();
    n.tick(T0.plus_ms(30 * SEC)).unwrap();
    let (seq, _) = n.outbox().pending(1).unwrap()[0].clone();
    let crate::outbox::Failure::Dead(dead) = n
        .outbox()
        .failed(seq, T0.plus_ms(31 * SEC), "HTTP 404: no such hook", true)
        .unwrap()
    else {
        panic!("not dead")
    };
    assert!(matches!(
        n.dead_letter(&dead, T0.plus_ms(31 * SEC)).unwrap(),
        Raised::Grouped(_)
    ));
    take_sent(&n);
    n.tick(T0.plus_ms(61 * SEC)).unwrap();
    let pending = n.outbox().pending(10).unwrap();
    let operator: Vec<_> = pending
        .iter()
        .filter(|(_, e)| e.outgoing.rule == DEAD_LETTER_RULE)
        .collect();
    assert_eq!(operator.len(), 2, "{pending:?}");
    assert!(operator[0].1.outgoing.body.contains("no such hook"));
    // The dead-letter alert's own failure does not raise another.
    let (seq, _) = operator[0];
    let crate::outbox::Failure::Dead(dead) = n
        .outbox()
        .failed(*seq, T0.plus_ms(62 * SEC), "down", true)
        .unwrap()
    else {
        panic!("not dead")
    };
    assert_eq!(
        n.dead_letter(&dead, T0.plus_ms(62 * SEC)).unwrap(),
        Raised::Unrouted
    );
}
