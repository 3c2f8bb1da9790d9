//! Helpers for driving `rigmesh node run` and the commands that talk to it.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub fn start(data_dir: &std::path::Path) -> (Child, Vec<String>) {
    start_with(data_dir, &["--role", "relay"])
}

pub fn start_with(data_dir: &std::path::Path, extra: &[&str]) -> (Child, Vec<String>) {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("rigmesh"))
        .args(["node", "run", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(extra)
        .args([
            "--monitoring",
            "127.0.0.1:0",
            "--customer-api",
            "127.0.0.1:0",
        ])
        .args([
            "--supplier-api",
            "127.0.0.1:0",
            "--public-api",
            "127.0.0.1:0",
        ])
        .args([
            "--analytics-api",
            "127.0.0.1:0",
            "--operator-api",
            "127.0.0.1:0",
        ])
        .args(["--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    while !lines
        .iter()
        .any(|l: &String| l.starts_with("monitoring on"))
    {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "node exited early: {lines:?}"
        );
        lines.push(line.trim().to_string());
    }
    (child, lines)
}

pub fn interrupt(mut child: Child) {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "node did not stop cleanly: {status}");
}

/// A supplier config on four simulated A100s priced at 1.80.
pub fn supplier_config(dir: &std::path::Path, model: &str) -> std::path::PathBuf {
    let config = dir.join("supplier.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"supplier\"\n[supplier]\ngpus = {{ sim = {{ builtin = \"a100x4\" }} }}\n[supplier.prices]\n\"{model}\" = \"1.80\"\n"
        ),
    )
    .unwrap();
    config
}

/// The address a started node prints after `prefix` (e.g. `customer api on http://`).
pub fn printed(lines: &[String], prefix: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap()
        .to_string()
}

/// The GPU model of the simulated a100x4 rig.
pub fn a100() -> String {
    rigmesh_node::telemetry::SimProfile::builtin("a100x4")
        .unwrap()
        .gpus[0]
        .model
        .clone()
}
