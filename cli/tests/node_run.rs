//! `rigmesh node run` as an operator runs it: it starts, prints where it
//! listens, answers /health, keeps its key across restarts, and stops
//! cleanly on SIGINT.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn start(data_dir: &std::path::Path) -> (Child, Vec<String>) {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("rigmesh"))
        .args([
            "node",
            "run",
            "--role",
            "relay",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .args(["--monitoring", "127.0.0.1:0", "--data-dir"])
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

fn interrupt(mut child: Child) {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "node did not stop cleanly: {status}");
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
