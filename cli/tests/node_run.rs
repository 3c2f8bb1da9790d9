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
    monitoring_get(lines, "/health")
}

fn monitoring_get(lines: &[String], path: &str) -> String {
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
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
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

/// The binary's allocator is read on `/metrics`: its live heap, within
/// the pages that hold it, within what the allocator keeps resident.
#[test]
fn the_node_reports_its_live_heap_apart_from_its_resident_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = start(dir.path());
    let metrics = monitoring_get(&lines, "/metrics");
    interrupt(child);
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
    };
    let allocated = sample("rigmesh_allocator_allocated_bytes");
    let active = sample("rigmesh_allocator_active_bytes");
    let resident = sample("rigmesh_allocator_resident_bytes");
    // A running node holds at least a megabyte (its stores, its swarm).
    assert!(allocated > 1e6, "allocated {allocated}");
    assert!(
        allocated <= active,
        "allocated {allocated}, active {active}"
    );
    assert!(active <= resident, "active {active}, resident {resident}");
    assert!(sample("rigmesh_allocator_metadata_bytes") > 0.0);
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
    // A supplier node serves no customer API; the market is on its public one.
    assert!(!lines.iter().any(|l| l.starts_with("customer api on")));
    let api = lines
        .iter()
        .find_map(|l| l.strip_prefix("public api on http://"))
        .unwrap()
        .to_string();
    let offers = |extra: &[&str]| {
        Command::new(assert_cmd::cargo::cargo_bin("rigmesh"))
            .args(["offers", "--public", "--api", &api, "--data-dir"])
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

#[test]
fn a_supplier_priced_at_zero_or_below_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::a100();
    for price in ["0", "-1.5"] {
        let config = dir.path().join("supplier.toml");
        std::fs::write(
            &config,
            format!(
                "role = \"supplier\"\n[supplier]\ngpus = {{ sim = {{ builtin = \"a100x4\" }} }}\n\
                 [supplier.prices]\n\"{model}\" = \"{price}\"\n"
            ),
        )
        .unwrap();
        let out = Command::new(assert_cmd::cargo::cargo_bin("rigmesh"))
            .args(["node", "run", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args([
                "--monitoring",
                "127.0.0.1:0",
                "--customer-api",
                "127.0.0.1:0",
            ])
            .args(["--supplier-api", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "price {price}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.contains(&format!("\"{model}\" = \"{price}\""))
                && err.contains("a price must be above zero"),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "it never started");
    }
}

/// `rigmesh node run` with loopback listeners on free ports and `extra`,
/// expected to fail at start: its exit code and stderr.
fn refused_at_start(data_dir: &std::path::Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["node", "run"];
    if !extra.contains(&"--listen") {
        args.extend_from_slice(&["--listen", "/ip4/127.0.0.1/tcp/0"]);
    }
    for (flag, value) in [
        ("--monitoring", "127.0.0.1:0"),
        ("--customer-api", "127.0.0.1:0"),
        ("--supplier-api", "127.0.0.1:0"),
        ("--public-api", "127.0.0.1:0"),
        ("--analytics-api", "127.0.0.1:0"),
        ("--operator-api", "127.0.0.1:0"),
    ] {
        if !extra.contains(&flag) {
            args.extend_from_slice(&[flag, value]);
        }
    }
    args.extend_from_slice(extra);
    let out = Command::new(assert_cmd::cargo::cargo_bin("rigmesh"))
        .args(&args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "{args:?} started");
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn start_failures_say_what_and_why_once() {
    let dir = tempfile::tempdir().unwrap();
    // An address this machine does not have: the OS's reason, given once.
    let (code, err) = refused_at_start(
        &dir.path().join("a"),
        &["--listen", "/ip4/192.0.2.1/tcp/4600"],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("listening on /ip4/192.0.2.1/tcp/4600: ")
            && err.contains("ssign requested address"),
        "{err}"
    );
    assert_eq!(err.matches("os error").count(), 1, "{err}");

    // A port another program holds: which listener it was.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().to_string();
    let (code, err) = refused_at_start(&dir.path().join("b"), &["--customer-api", &port]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            "the customer API's listener on {port}: Address already in use"
        )),
        "{err}"
    );
    assert_eq!(err.matches("os error").count(), 1, "{err}");

    // A data directory another node uses: said so, with its pid.
    let data = dir.path().join("c");
    let (child, _) = start(&data);
    let (code, err) = refused_at_start(&data, &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            "the data directory {} is in use by another node (pid {})",
            data.display(),
            child.id()
        )),
        "{err}"
    );
    assert!(!err.contains("Os {"), "no Rust structures: {err}");
    interrupt(child);
}

/// Also: `--log-format json` writes each log event as one JSON object.
#[test]
fn an_unreachable_bootstrap_peer_is_warned_of_and_not_healthy() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let bootstrap = format!("/ip4/127.0.0.1/tcp/{port}");
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("rigmesh"))
        .args(["--log-format", "json"])
        .args(["node", "run", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args([
            "--monitoring",
            "127.0.0.1:0",
            "--customer-api",
            "127.0.0.1:0",
        ])
        .args(["--supplier-api", "127.0.0.1:0", "--bootstrap", &bootstrap])
        .args(["--public-api", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    std::thread::spawn(move || {
        use std::io::BufRead;
        // Reads to the end, so the node never blocks on a full pipe.
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.try_send(line);
        }
    });
    let warning = rx
        .iter()
        .find(|l| l.contains("bootstrap peer unreachable"))
        .unwrap();
    let event: serde_json::Value = serde_json::from_str(&warning)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {warning}"));
    assert_eq!(event["level"], "WARN", "{warning}");
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .contains("bootstrap peer unreachable"),
        "{warning}"
    );
    assert!(warning.contains(&bootstrap), "{warning}");
    let mut lines = Vec::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    while !lines
        .iter()
        .any(|l: &String| l.starts_with("monitoring on"))
    {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        lines.push(line.trim().to_string());
    }
    let response = health(&lines);
    assert!(response.contains(r#""status":"degraded""#), "{response}");
    assert!(response.contains(&bootstrap), "{response}");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}
