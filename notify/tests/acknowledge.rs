//! Acknowledgement through the link in the message, and escalation, with
//! the worker on a manual clock: time moves only when the test moves it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{alert, secret_file, Pipeline, Recorder};
use rigmesh_notify::{Error, ManualClock};
use rigmesh_protocol::{Severity, UnixMillis};

const WAIT: Duration = Duration::from_secs(20);

/// Waits until every delivery the receiver has seen is recorded by the
/// worker (the outbox is empty). A claimed delivery is leased for a while
/// by the pipeline's clock: moving the manual clock past the lease while
/// the worker has not recorded the answer yet would make it send the
/// message again, which a real clock never does in the middle of a test.
async fn recorded(pipeline: &Pipeline) {
    tokio::time::timeout(WAIT, async {
        while pipeline.handle.status().await.unwrap().outbox_len > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the deliveries recorded");
}

#[tokio::test]
async fn a_critical_alert_repeats_escalates_and_stops_once_acknowledged_by_its_link() {
    let server = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ops = secret_file(dir.path(), "ops", &server.url("/ops"));
    let boss = secret_file(dir.path(), "boss", &server.url("/boss"));
    let config = format!(
        r#"
        ack_url = "https://node.example/notify/ack"
        [outbox]
        poll_ms = 10
        [grouping]
        group_wait_ms = 1000
        critical_repeat_ms = 60000
        [[channels]]
        name = "ops"
        type = "slack"
        url = {{ file = "{ops}" }}
        [[channels]]
        name = "boss"
        type = "slack"
        url = {{ file = "{boss}" }}
        [[recipients]]
        name = "oncall"
        channels = ["ops"]
        escalation = [{{ after_ms = 120000, channels = ["boss"] }}]
        "#
    );
    let clock = ManualClock::new(UnixMillis(1_800_000_000_000));
    let pipeline = Pipeline::start_with_clock(&config, &dir.path().join("db"), clock.clone());
    pipeline
        .handle
        .raise(alert("rig.offline", Severity::Critical, 1))
        .await
        .unwrap();
    // Held for the first wait, then sent.
    pipeline.handle.status().await.unwrap();
    pipeline.handle.status().await.unwrap();
    assert!(server.log.all().is_empty());
    clock.advance(1_000);
    let first = server.log.wait_until(WAIT, |r| !r.is_empty()).await;
    let text = first[0].json()["text"].as_str().unwrap().to_owned();
    let link = text
        .lines()
        .find_map(|l| l.strip_prefix("Acknowledge: "))
        .unwrap_or_else(|| panic!("no link in {text}"));
    let (group, token) = link
        .strip_prefix("https://node.example/notify/ack/")
        .and_then(|rest| rest.split_once("?token="))
        .unwrap_or_else(|| panic!("link {link}"));

    // Unacknowledged: again after the critical repeat, with a new key.
    recorded(&pipeline).await;
    clock.advance(60_000);
    let second = server.log.wait_until(WAIT, |r| r.len() >= 2).await;
    assert_eq!(second[1].path, "/ops");
    assert_ne!(
        second[0].header("idempotency-key"),
        second[1].header("idempotency-key")
    );
    // Two minutes after the first message the next step is paged too.
    recorded(&pipeline).await;
    clock.advance(60_000);
    let third = server.log.wait_until(WAIT, |r| r.len() >= 4).await;
    let mut paths: Vec<&str> = third[2..].iter().map(|r| r.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/boss", "/ops"]);

    // A forged token is refused; the link's token is taken.
    assert!(matches!(
        pipeline.handle.acknowledge(group, "00", "mallory").await,
        Err(Error::BadToken(_))
    ));
    pipeline
        .handle
        .acknowledge(group, token, "alice")
        .await
        .unwrap();

    // Hours later nothing more has been sent. Two status calls in a row:
    // the worker runs a full step (tick and delivery) between them.
    recorded(&pipeline).await;
    clock.advance(6 * 3_600_000);
    pipeline.handle.status().await.unwrap();
    let status = pipeline.handle.status().await.unwrap();
    assert_eq!(status.outbox_len, 0);
    assert_eq!(server.log.all().len(), 4);
    let state = status.groups.iter().find(|g| g.id == group).unwrap();
    assert_eq!(state.messages, 3);
    assert_eq!(state.escalated, 1);
    assert_eq!(state.acknowledged.as_ref().unwrap().by, "alice");
    pipeline.stop().await;
}

#[tokio::test]
async fn a_rejected_webhook_is_a_dead_letter_at_once() {
    let server = Recorder::start().await;
    server.answer_with(404);
    let dir = tempfile::tempdir().unwrap();
    let url = secret_file(dir.path(), "gone", &server.url("/gone"));
    let config = format!(
        r#"
        [outbox]
        poll_ms = 10
        max_attempts = 8
        backoff_base_ms = 10
        [grouping]
        group_wait_ms = 0
        [[channels]]
        name = "gone"
        type = "discord"
        url = {{ file = "{url}" }}
        [[recipients]]
        name = "ops"
        channels = ["gone"]
        "#
    );
    let pipeline = Pipeline::start(&config, &dir.path().join("db"));
    pipeline
        .handle
        .raise(alert("gpu.hot", Severity::Warning, 2))
        .await
        .unwrap();
    // The dead-letter alert goes to the same (dead) hook and is given up
    // too, without raising a third: two requests in all.
    server.log.wait_until(WAIT, |r| r.len() >= 2).await;
    let status = pipeline.wait_for_empty_outbox(WAIT).await;
    assert_eq!(status.dead, 2);
    assert!(status.dead_letters.iter().all(|d| d.attempts == 1));
    assert!(status.dead_letters[0].last_error.contains("HTTP 404"));
    assert_eq!(server.log.all().len(), 2);
    pipeline.stop().await;
}
