//! `rigmesh node run` as an operator runs it: it starts, prints where it
//! listens, answers /health, keeps its key across restarts, and stops
//! cleanly on SIGINT.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::{interrupt, start, start_with, supplier_config};

fn health(lines: &[String]) -> String {
    let url = lines
        .iter()
        .find_map(|l| l.strip_prefix("monitoring on http://"))
        .unwrap();
    let mut stream = std::net::TcpStream::connect(url).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn node_runs_answers_health_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = start(dir.path());
    let peer = lines
        .iter()
        .find_map(|l| l.strip_prefix("peer id "))
        .unwrap()
        .to_string();
    assert!(lines
        .iter()
        .any(|l| l.starts_with("listening on /ip4/127.0.0.1/tcp/") && l.ends_with(&peer)));
    let response = health(&lines);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(&peer), "{response}");
    interrupt(child);

    // Same data dir, same identity.
    let (child, lines) = start(dir.path());
    assert!(lines.contains(&format!("peer id {peer}")));
    interrupt(child);
}

#[test]
fn a_bad_config_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "role = \"miner\"\n").unwrap();
    let out = Command::new(assert_cmd::cargo::cargo_bin("rigmesh"))
        .args(["node", "run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("node.toml"), "{err}");
    assert!(err.contains("unknown variant"), "{err}");
}

#[test]
fn a_supplier_node_offers_its_simulated_gpus_to_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let model = rigmesh_node::telemetry::SimProfile::builtin("a100x4")
        .unwrap()
        .gpus[0]
        .model
        .clone();
    let config = supplier_config(dir.path(), &model);
    let data = dir.path().join("data");
    let (child, lines) = start_with(&data, &["--config", config.to_str().unwrap()]);
    let api = lines
        .iter()
        .find_map(|l| l.strip_prefix("customer api on http://"))
        .unwrap()
        .to_string();
    let offers = |extra: &[&str]| {
        Command::new(assert_cmd::cargo::cargo_bin("rigmesh"))
            .args(["offers", "--api", &api, "--data-dir"])
            .arg(&data)
            .args(extra)
            .output()
            .unwrap()
    };
    let mut listed = serde_json::Value::Null;
    for _ in 0..50 {
        let out = offers(&["--json"]);
        if out.status.success() {
            listed = serde_json::from_slice(&out.stdout).unwrap();
            break;
        }
        assert_eq!(out.status.code(), Some(4), "exit 4 means no match yet");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(listed[0]["body"]["gpu_model"], model.as_str());
    assert_eq!(listed[0]["body"]["gpu_count"], 4);
    assert_eq!(listed[0]["body"]["price_per_gpu_hour"], "1.8");
    // A filter nothing meets: a clear message and exit 4.
    let out = offers(&["--max-price", "1.00"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no offer matches"));
    let table = offers(&[]);
    assert!(String::from_utf8_lossy(&table.stdout).contains(&model));
    interrupt(child);
}

#[test]
fn rigmesh_bid_leases_gpus_from_a_supplier_node() {
    let dir = tempfile::tempdir().unwrap();
    let model = rigmesh_node::telemetry::SimProfile::builtin("a100x4")
        .unwrap()
        .gpus[0]
        .model
        .clone();
    let config = supplier_config(dir.path(), &model);
    let (supplier, lines) = start_with(
        &dir.path().join("s"),
        &["--config", config.to_str().unwrap()],
    );
    let addr = lines
        .iter()
        .find_map(|l| l.strip_prefix("listening on "))
        .unwrap()
        .to_string();
    let customer_dir = dir.path().join("c");
    let (customer, lines) =
        start_with(&customer_dir, &["--role", "customer", "--bootstrap", &addr]);
    let api = lines
        .iter()
        .find_map(|l| l.strip_prefix("customer api on http://"))
        .unwrap()
        .to_string();
    let rigmesh = |args: &[&str]| {
        Command::new(assert_cmd::cargo::cargo_bin("rigmesh"))
            .args(args)
            .args(["--api", &api, "--data-dir"])
            .arg(&customer_dir)
            .output()
            .unwrap()
    };
    let mut leased = None;
    for _ in 0..100 {
        let out = rigmesh(&[
            "bid",
            "--gpu",
            &model,
            "--count",
            "2",
            "--max-price",
            "2",
            "--hours",
            "1",
            "--window-secs",
            "1",
            "--json",
        ]);
        if out.status.success() {
            leased = Some(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap());
            break;
        }
        assert_eq!(
            out.status.code(),
            Some(4),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let lease = leased.expect("the offer reached the customer");
    assert_eq!(lease["price_per_gpu_hour"], "1.8");
    // Windows are metered and acked.
    let mut acked = 0;
    for _ in 0..100 {
        let out = rigmesh(&["leases", "--json"]);
        assert!(out.status.success());
        let leases: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        acked = leases[0]["acked_windows"].as_u64().unwrap_or(0);
        if acked >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(acked >= 2, "acked {acked}");
    // Too cheap a bid: exit 4 with the explanation.
    let out = rigmesh(&["bid", "--gpu", &model, "--max-price", "0.5", "--hours", "1"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("above your max price"));
    interrupt(customer);
    interrupt(supplier);
}
