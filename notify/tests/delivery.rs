//! The delivery worker under failure and load: a dead endpoint, a flood,
//! and a restart in the middle of a burst.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{alert, secret_file, Pipeline, Recorder};
use rigmesh_notify::metrics::ChannelLabel;
use rigmesh_protocol::Severity;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_dead_endpoint_backs_off_then_becomes_a_dead_letter_and_an_operator_alert() {
    let dead = Recorder::start().await;
    dead.answer_with(503);
    let ops = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let broken = secret_file(dir.path(), "broken", &dead.url("/hook"));
    let healthy = secret_file(dir.path(), "healthy", &ops.url("/ops"));
    let config = format!(
        r#"
        [outbox]
        poll_ms = 10
        timeout_ms = 5000
        max_attempts = 5
        backoff_base_ms = 100
        backoff_max_ms = 10000
        [grouping]
        group_wait_ms = 10
        [[channels]]
        name = "broken"
        type = "slack"
        url = {{ file = "{broken}" }}
        [[channels]]
        name = "ops-chat"
        type = "slack"
        url = {{ file = "{healthy}" }}
        [[recipients]]
        name = "ops"
        channels = ["broken"]
        [[recipients.routes]]
        rules = ["notify."]
        channels = ["ops-chat"]
        "#
    );
    let pipeline = Pipeline::start(&config, &dir.path().join("db"));
    pipeline
        .handle
        .raise(alert("gpu.hot", Severity::Warning, 1))
        .await
        .unwrap();

    // The operators hear that the message was given up.
    let told = ops.log.wait_until(WAIT, |r| !r.is_empty()).await;
    let status = pipeline.wait_for_empty_outbox(WAIT).await;
    let text = told[0].json()["text"].as_str().unwrap().to_owned();
    assert!(text.contains("notify.dead_letter"), "{text}");
    assert!(text.contains("channel broken gave up"), "{text}");
    assert!(text.contains("after 5 attempts"), "{text}");
    assert!(text.contains("HTTP 503"), "{text}");

    // Five attempts reached the endpoint, each with the same key, and the
    // waits between them grew.
    let attempts = dead.log.all();
    assert_eq!(attempts.len(), 5);
    let keys: BTreeSet<_> = attempts
        .iter()
        .map(|r| r.header("idempotency-key").unwrap())
        .collect();
    assert_eq!(keys.len(), 1, "one key for every attempt");
    assert_eq!(status.dead, 1);
    let letter = &status.dead_letters[0];
    assert_eq!(letter.attempts, 5);
    assert_eq!(letter.attempt_times.len(), 5);
    assert!(
        letter.last_error.contains("HTTP 503"),
        "{}",
        letter.last_error
    );
    // Recorded waits: attempt n+1 comes at least half of 100·2^(n-1) ms
    // after attempt n (the rest is jitter), and they grow.
    let gaps: Vec<u64> = letter
        .attempt_times
        .windows(2)
        .map(|w| w[1].since(w[0]))
        .collect();
    for (n, gap) in gaps.iter().enumerate() {
        let step = 100u64 << n;
        assert!(
            *gap >= step / 2,
            "gap {n} is {gap} ms, step {step}: {gaps:?}"
        );
    }
    assert!(gaps[3] > gaps[0], "{gaps:?}");
    // The same waits as the endpoint saw them.
    let seen: Vec<u128> = attempts
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at).as_millis())
        .collect();
    for (n, gap) in seen.iter().enumerate() {
        assert!(*gap >= u128::from(50u64 << n), "{seen:?}");
    }

    let broken = ChannelLabel::of("broken");
    assert_eq!(pipeline.metrics.failed.get_or_create(&broken).get(), 5);
    assert_eq!(pipeline.metrics.dead.get_or_create(&broken).get(), 1);
    assert_eq!(
        pipeline
            .metrics
            .delivered
            .get_or_create(&ChannelLabel::of("ops-chat"))
            .get(),
        1
    );
    pipeline.stop().await;
}

#[tokio::test]
async fn a_flood_of_ten_thousand_alerts_becomes_a_digest_and_the_outbox_stays_bounded() {
    let server = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = secret_file(dir.path(), "chat", &server.url("/chat"));
    let config = format!(
        r#"
        [outbox]
        poll_ms = 20
        max_entries = 50
        [grouping]
        group_wait_ms = 300
        group_interval_ms = 2000
        max_alerts = 2000
        [[channels]]
        name = "chat"
        type = "slack"
        url = {{ file = "{url}" }}
        [[recipients]]
        name = "ops"
        channels = ["chat"]
        "#
    );
    let pipeline = Pipeline::start(&config, &dir.path().join("db"));
    let mut largest_outbox = 0;
    for i in 0..10_000u32 {
        pipeline
            .handle
            .raise(alert("lease.stalled", Severity::Warning, i))
            .await
            .unwrap();
        if i % 1_000 == 999 {
            largest_outbox = largest_outbox.max(pipeline.handle.status().await.unwrap().outbox_len);
        }
    }
    let got = server
        .log
        .wait_until(WAIT, |r| {
            r.iter().any(|m| {
                m.json()["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("10000 warning alerts"))
            })
        })
        .await;
    let status = pipeline.handle.status().await.unwrap();
    largest_outbox = largest_outbox.max(status.outbox_len);
    // Digests, not refusals, kept it small.
    assert!(largest_outbox <= 5, "outbox grew to {largest_outbox}");
    assert_eq!(pipeline.metrics.refused.get(), 0);
    assert!(
        got.len() <= 5,
        "{} messages for one flood: {:?}",
        got.len(),
        got.iter()
            .map(|m| m.json()["text"].clone())
            .collect::<Vec<_>>()
    );
    let last = got.last().unwrap().json()["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        last.contains("lease.stalled: lease.stalled number"),
        "{last}"
    );
    assert!(last.contains("… and 9980 more"), "{last}");
    assert!(
        last.len() < 8_000,
        "a digest, not a dump: {} bytes",
        last.len()
    );
    // Tracking stopped at its bound; the rest were counted only.
    assert_eq!(status.tracked_alerts, 2_000);
    assert_eq!(status.groups.len(), 1);
    assert_eq!(status.groups[0].untracked, 8_000);
    pipeline.stop().await;
}

#[tokio::test]
async fn a_restart_mid_burst_delivers_everything_and_repeats_only_under_the_same_key() {
    let server = Recorder::start().await;
    // A quarter of the messages are answered only after the client gave
    // up, the way a crash between sending and recording looks from the
    // receiver's side: the same message arrives again.
    server.slow_first_attempt(Duration::from_millis(600));
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "key", "restart-key");
    let config = format!(
        r#"
        [outbox]
        poll_ms = 20
        timeout_ms = 300
        backoff_base_ms = 50
        max_in_flight = 16
        [grouping]
        group_wait_ms = 20
        group_by = ["rule", "subject"]
        [[channels]]
        name = "hook"
        type = "webhook"
        url = "{url}"
        secret = {{ file = "{secret}" }}
        [[recipients]]
        name = "ops"
        channels = ["hook"]
        "#,
        url = server.url("/hook")
    );
    let db = dir.path().join("db");
    const TOTAL: u32 = 200;
    let first = Pipeline::start(&config, &db);
    for i in 0..TOTAL / 2 {
        first
            .handle
            .raise(alert("lease.stalled", Severity::Warning, i))
            .await
            .unwrap();
    }
    // Stop once some, not all, of the first half arrived.
    server.log.wait_until(WAIT, |r| r.len() >= 20).await;
    first.stop().await;
    let before = server.log.all().len();

    let second = Pipeline::start(&config, &db);
    for i in TOTAL / 2..TOTAL {
        second
            .handle
            .raise(alert("lease.stalled", Severity::Warning, i))
            .await
            .unwrap();
    }
    let subject_of = |r: &common::Received| r.json()["subject"].as_str().unwrap().to_owned();
    server
        .log
        .wait_until(WAIT, |r| {
            r.iter().map(subject_of).collect::<BTreeSet<_>>().len() == TOTAL as usize
        })
        .await;
    let status = second.wait_for_empty_outbox(WAIT).await;
    assert_eq!(status.dead, 0);
    let got = server.log.all();
    assert!(before < got.len(), "the second run delivered the rest");

    // Every alert arrived; a repeat always carries the key of the first.
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for request in &got {
        keys.entry(subject_of(request))
            .or_default()
            .insert(request.header("idempotency-key").unwrap());
    }
    for i in 0..TOTAL {
        let subject = format!("lease.stalled: lease.stalled number {i} (subject ");
        let seen = keys
            .iter()
            .find(|(s, _)| s.starts_with(&subject))
            .map(|(_, k)| k.len());
        assert_eq!(seen, Some(1), "alert {i}: {keys:?}");
    }
    let repeats = got.len() - keys.len();
    assert!(repeats > 0, "the slow answers caused repeats");
    second.stop().await;
}
