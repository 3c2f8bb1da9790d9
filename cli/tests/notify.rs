//! `rigmesh notify` through the binary, against a customer node started
//! with a `[notify]` section in its config file: the channels listed
//! without their secret, a test message that a real local webhook server
//! receives signed, the rules, the log, silences added, listed and
//! expired, and acknowledgement refused for a group that does not exist; a
//! channel added at run time delivers a test message, is still there after
//! a restart and is removed, while a channel of the config file cannot be;
//! a `[notify]` section that names a channel it does not define stops the
//! node at start with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use common::{interrupt, printed, start_with};
use rigmesh_notify::channel::webhook;

const SECRET: &str = "cli-test-secret-abcdef";

/// A webhook server on a free loopback port, on its own thread; each
/// request that passes the signature check sends its body's subject.
fn webhook_server() -> (String, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::sync_channel(64);
    let (url_tx, url_rx) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            url_tx
                .send(format!("http://{}/hook", listener.local_addr().unwrap()))
                .unwrap();
            let app = axum::Router::new().route(
                "/hook",
                axum::routing::post(
                    move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                        let tx = tx.clone();
                        async move {
                            let h = |n: &str| {
                                headers
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string()
                            };
                            let now = rigmesh_protocol::UnixMillis::now().0 / 1_000;
                            if webhook::verify(
                                SECRET.as_bytes(),
                                &h(webhook::TIMESTAMP_HEADER),
                                &h(webhook::SIGNATURE_HEADER),
                                &body,
                                now,
                                webhook::DEFAULT_TOLERANCE_SECS,
                            )
                            .is_err()
                            {
                                return axum::http::StatusCode::UNAUTHORIZED;
                            }
                            let parsed: webhook::WebhookBody =
                                serde_json::from_slice(&body).unwrap();
                            let _ = tx.try_send(parsed.subject);
                            axum::http::StatusCode::OK
                        }
                    },
                ),
            );
            axum::serve(listener, app).await.unwrap();
        });
    });
    (url_rx.recv().unwrap(), rx)
}

fn rigmesh(args: &[&str], api: &str, dir: &std::path::Path) -> Output {
    Command::new(assert_cmd::cargo::cargo_bin("rigmesh"))
        .args(args)
        .args(["--api", api, "--data-dir"])
        .arg(dir)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn notify_commands_list_test_and_log_the_nodes_channels() {
    let (url, received) = webhook_server();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            role = "customer"
            [[notify.channels]]
            name = "hook"
            type = "webhook"
            url = "{url}"
            secret = {{ file = "{}" }}
            [[notify.recipients]]
            name = "me"
            audience = ["customer"]
            channels = ["hook"]
            "#,
            secret.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("customer");
    let (node, lines) = start_with(&data, &["--config", config.to_str().unwrap()]);
    let api = printed(&lines, "customer api on http://");

    let out = ok(&rigmesh(&["notify", "channels", "list"], &api, &data));
    assert!(
        out.contains("hook") && out.contains("webhook") && out.contains(&url),
        "{out}"
    );
    assert!(!out.contains(SECRET), "{out}");

    let out = ok(&rigmesh(
        &["notify", "channels", "test", "hook"],
        &api,
        &data,
    ));
    assert!(
        out.contains("test message delivered by channel hook"),
        "{out}"
    );
    assert_eq!(
        received.recv_timeout(Duration::from_secs(20)).unwrap(),
        "rigmesh: test notification"
    );
    let out = rigmesh(&["notify", "channels", "test", "nowhere"], &api, &data);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no channel \"nowhere\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = ok(&rigmesh(&["notify", "rules"], &api, &data));
    assert!(out.contains("recipient me"), "{out}");
    assert!(out.contains("critical     hook"), "{out}");
    assert!(out.contains("grouping: first wait 30s"), "{out}");

    let out = ok(&rigmesh(&["notify", "log"], &api, &data));
    assert!(out.contains("no open alert groups"), "{out}");
    let out = ok(&rigmesh(&["notify", "log", "--json"], &api, &data));
    let log: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(log["outbox_len"], 0, "{log}");

    // Silences: added with a matcher, an expiry and a comment, listed,
    // expired; a silence without a matcher is refused with the reason.
    let out = ok(&rigmesh(&["notify", "silences", "list"], &api, &data));
    assert!(out.contains("no silences"), "{out}");
    let out = ok(&rigmesh(
        &[
            "notify",
            "silences",
            "add",
            "--rule",
            "budget.",
            "--for",
            "2h",
            "--by",
            "alice",
            "--comment",
            "raising the cap",
        ],
        &api,
        &data,
    ));
    assert!(out.contains("silence 1 added, until "), "{out}");
    let out = ok(&rigmesh(&["notify", "silences", "list"], &api, &data));
    assert!(
        out.contains("active")
            && out.contains("alice")
            && out.contains("rule budget.*; raising the cap"),
        "{out}"
    );
    let out = rigmesh(
        &[
            "notify",
            "silences",
            "add",
            "--for",
            "1h",
            "--comment",
            "all",
        ],
        &api,
        &data,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs a matcher"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ok(&rigmesh(
        &["notify", "silences", "expire", "1"],
        &api,
        &data,
    ));
    assert!(out.contains("silence 1 expired"), "{out}");
    let out = rigmesh(&["notify", "silences", "expire", "1"], &api, &data);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no silence 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ok(&rigmesh(&["notify", "silences", "list"], &api, &data));
    assert!(out.contains("no silences"), "{out}");

    let out = rigmesh(&["notify", "ack", "00ff00ff00ff00ff"], &api, &data);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no open alert group 00ff00ff00ff00ff"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    interrupt(node);
}

#[test]
fn a_notify_section_naming_an_undefined_channel_stops_the_node_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "role = \"customer\"\n[[notify.recipients]]\nname = \"me\"\nchannels = [\"pager\"]\n",
    )
    .unwrap();
    let out = Command::new(assert_cmd::cargo::cargo_bin("rigmesh"))
        .args([
            "node",
            "run",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[notify]") && stderr.contains("\"pager\""),
        "{stderr}"
    );
}

#[test]
fn a_channel_added_at_run_time_delivers_outlives_a_restart_and_is_removed() {
    let (config_url, _config_received) = webhook_server();
    let (url, received) = webhook_server();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            role = "customer"
            [[notify.channels]]
            name = "hook"
            type = "webhook"
            url = "{config_url}"
            secret = {{ file = "{}" }}
            [[notify.recipients]]
            name = "me"
            audience = ["customer"]
            channels = ["hook"]
            "#,
            secret.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("customer");
    let (node, lines) = start_with(&data, &["--config", config.to_str().unwrap()]);
    let api = printed(&lines, "customer api on http://");
    let add = |name: &str, secret: &std::path::Path| {
        rigmesh(
            &[
                "notify",
                "channels",
                "add",
                name,
                "--type",
                "webhook",
                "--url",
                &url,
                "--secret-file",
                secret.to_str().unwrap(),
                "--recipient",
                "me",
            ],
            &api,
            &data,
        )
    };

    // Refused with the reason: a secret in the node's data directory, a
    // name taken by the config file, a channel of the file removed.
    let out = add("ops", &data.join("api").join("customer.token"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("data directory"), "{stderr}");
    let out = add("hook", &secret);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = rigmesh(&["notify", "channels", "remove", "hook"], &api, &data);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("defined in the node's config file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Added, listed as added without its secret, routed, and a test message
    // reaches the receiver, signed.
    let out = ok(&add("ops", &secret));
    assert!(out.contains("channel ops added: webhook"), "{out}");
    let out = ok(&rigmesh(&["notify", "channels", "list"], &api, &data));
    assert!(
        out.lines()
            .any(|l| l.starts_with("ops") && l.contains("added") && l.contains(&url)),
        "{out}"
    );
    assert!(!out.contains(SECRET), "{out}");
    let out = ok(&rigmesh(&["notify", "rules"], &api, &data));
    assert!(out.contains("critical     hook, ops"), "{out}");
    ok(&rigmesh(
        &["notify", "channels", "test", "ops"],
        &api,
        &data,
    ));
    assert_eq!(
        received.recv_timeout(Duration::from_secs(20)).unwrap(),
        "rigmesh: test notification"
    );
    interrupt(node);

    // After a restart it is still there and still delivers.
    let (node, lines) = start_with(&data, &["--config", config.to_str().unwrap()]);
    let api = printed(&lines, "customer api on http://");
    let out = ok(&rigmesh(
        &["notify", "channels", "list", "--json"],
        &api,
        &data,
    ));
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ops = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ops")
        .unwrap_or_else(|| panic!("ops not listed after the restart: {listed}"));
    assert_eq!(ops["source"], "added");
    ok(&rigmesh(
        &["notify", "channels", "test", "ops"],
        &api,
        &data,
    ));
    assert_eq!(
        received.recv_timeout(Duration::from_secs(20)).unwrap(),
        "rigmesh: test notification"
    );

    // Removed: gone from the list and the rules; removing it again fails.
    let out = ok(&rigmesh(
        &["notify", "channels", "remove", "ops"],
        &api,
        &data,
    ));
    assert!(out.contains("channel ops removed"), "{out}");
    let out = ok(&rigmesh(&["notify", "channels", "list"], &api, &data));
    assert!(!out.lines().any(|l| l.starts_with("ops")), "{out}");
    let out = ok(&rigmesh(&["notify", "rules"], &api, &data));
    assert!(out.contains("critical     hook\n"), "{out}");
    let out = rigmesh(&["notify", "channels", "remove", "ops"], &api, &data);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no channel \"ops\" was added"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    interrupt(node);
}
