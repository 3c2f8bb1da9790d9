//! The customer's commands through the binary, against real nodes on
//! loopback: `rigmesh usage`, `rigmesh budget set/show`, `rigmesh account`
//! (tables and `--json`), and `rigmesh bid --wait` waiting for a supplier
//! that comes online, with Ctrl-C cancelling a waiting bid.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{a100, interrupt, printed, start_with, supplier_config};

/// `rigmesh <args> --api <api> --data-dir <dir>`.
struct Customer {
    api: String,
    dir: PathBuf,
}

impl Customer {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(assert_cmd::cargo::cargo_bin("rigmesh"));
        command
            .args(args)
            .args(["--api", &self.api, "--data-dir"])
            .arg(&self.dir);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.ok(&args)).unwrap()
    }
}

fn customer_node(dir: &Path, extra: &[&str]) -> (Child, Customer, String) {
    let data = dir.join("customer");
    let mut args = vec!["--role", "customer"];
    args.extend_from_slice(extra);
    let (child, lines) = start_with(&data, &args);
    let customer = Customer {
        api: printed(&lines, "customer api on http://"),
        dir: data,
    };
    (child, customer, printed(&lines, "listening on "))
}

fn supplier_node(dir: &Path, extra: &[&str]) -> (Child, String) {
    let config = supplier_config(dir, &a100());
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (child, lines) = start_with(&dir.join("supplier"), &args);
    (child, printed(&lines, "listening on "))
}

#[test]
fn usage_budget_and_account_show_what_a_lease_costs() {
    let dir = tempfile::tempdir().unwrap();
    let (supplier, addr) = supplier_node(dir.path(), &[]);
    let (node, customer, _) = customer_node(dir.path(), &["--bootstrap", &addr]);
    let model = a100();
    let bid = [
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
    ];
    let mut lease = None;
    for _ in 0..100 {
        let out = customer.run(&bid);
        if out.status.success() {
            lease = Some(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap());
            break;
        }
        assert_eq!(out.status.code(), Some(4), "exit 4 until the offer arrives");
        std::thread::sleep(Duration::from_millis(100));
    }
    let lease = lease.expect("the offer reached the customer");
    let id = lease["lease"].as_str().unwrap().to_string();
    let prefix = &id[..10];

    // Caps: an account cap and, by a prefix of its id, the lease's.
    let out = customer.ok(&["budget", "set", "--account", "5"]);
    assert!(out.contains("account cap  5 ("), "{out}");
    let shown = customer.json(&["budget", "set", "--lease", prefix, "--cap", "2.50"]);
    assert_eq!(shown["leases"][0]["lease"], id.as_str());
    assert_eq!(shown["leases"][0]["cap"], "2.5");
    let shown = customer.json(&["budget", "show"]);
    assert_eq!(shown["account"]["cap"], "5");
    let table = customer.ok(&["budget", "show"]);
    assert!(table.contains("lease caps"), "{table}");
    assert!(table.contains(&id[..12]), "{table}");
    // A malformed amount is a usage error and changes nothing.
    let out = customer.run(&["budget", "set", "--account", "five"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("five"));
    let out = customer.run(&["budget", "set", "--account", "-1"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(customer.json(&["budget", "show"])["account"]["cap"], "5");

    // Usage: windows are metered each second and acked.
    let mut usage = serde_json::Value::Null;
    for _ in 0..100 {
        usage = customer.json(&["usage", prefix]);
        if usage["windows"].as_array().unwrap().len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(usage["lease"], id.as_str());
    assert!(usage["windows"].as_array().unwrap().len() >= 2, "{usage}");
    assert_eq!(usage["windows"][0]["status"], "acked");
    assert_eq!(usage["budget"]["lease"]["cap"], "2.5");
    assert_eq!(usage["budget"]["account"]["cap"], "5");
    let table = customer.ok(&["usage", &id, "--windows", "5"]);
    assert!(table.contains(&format!("lease      {id}")), "{table}");
    assert!(table.contains("state      running"), "{table}");
    assert!(table.contains("acked"), "{table}");
    assert!(table.contains("0:00:00-0:00:01"), "{table}");
    let out = customer.run(&["usage", "ffffffffffff"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no lease on this node starts with"));

    // The account: spend, leases, caps.
    let account = customer.json(&["account"]);
    assert_eq!(account["active_leases"], 1);
    assert_eq!(account["leases"][0]["lease"], id.as_str());
    assert_eq!(account["leases"][0]["state"], "running");
    assert_eq!(account["budget"]["account"]["cap"], "5");
    let spent: rigmesh_protocol::Credits = account["spent"].as_str().unwrap().parse().unwrap();
    assert!(spent > rigmesh_protocol::Credits::ZERO);
    let table = customer.ok(&["account"]);
    assert!(table.contains("(1 running)"), "{table}");
    assert!(table.contains(&id[..12]), "{table}");
    assert!(table.contains("no disputes with suppliers"), "{table}");

    interrupt(node);
    interrupt(supplier);
}

/// Reads a child's stderr on a thread, line by line.
fn lines_of(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line containing `text`; returns every line read.
fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, text: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let found = line.contains(text);
            seen.push(line);
            if found {
                return seen;
            }
        }
    }
    panic!("no line with {text:?}: {seen:?}");
}

fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bid_wait_leases_when_a_supplier_comes_online() {
    let dir = tempfile::tempdir().unwrap();
    let (node, customer, addr) = customer_node(dir.path(), &[]);
    let model = a100();
    let bid = |wait: &str| {
        customer
            .command(&[
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
                "--wait",
                wait,
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // Ctrl-C while waiting cancels the bid on the node.
    let mut given_up = bid("5m");
    let lines = lines_of(&mut given_up);
    wait_for_line(&lines, "Ctrl-C cancels");
    Command::new("kill")
        .args(["-INT", &given_up.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(wait_exit(&mut given_up, 10).code(), Some(130));
    wait_for_line(&lines, "cancelled");

    let mut waiting = bid("60s");
    let lines = lines_of(&mut waiting);
    let said = wait_for_line(&lines, "stands until");
    assert!(
        said.iter()
            .any(|l| l.contains(&format!("nothing matches now: no offers for {model}"))),
        "{said:?}"
    );
    let (supplier, _) = supplier_node(dir.path(), &["--bootstrap", &addr]);
    let status = wait_exit(&mut waiting, 40);
    let mut out = String::new();
    std::io::Read::read_to_string(waiting.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{status}: {out}");
    let lease: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(lease["price_per_gpu_hour"], "1.8");
    assert_eq!(lease["gpus"].as_array().unwrap().len(), 2);
    let waited = lease["waited_ms"].as_u64().unwrap();
    assert!(waited > 0 && waited < 60_000, "waited {waited} ms");
    assert!(lease["bid"].as_str().is_some());
    let leases = customer.json(&["leases"]);
    assert_eq!(
        leases.as_array().unwrap().len(),
        1,
        "only the bid that waited leased"
    );
    assert_eq!(leases[0]["lease"], lease["lease"]);

    interrupt(node);
    interrupt(supplier);
}

/// Runs `command` with stdout a pipe whose reader is already gone, as in
/// `rigmesh account | head -0`.
fn into_closed_pipe(mut command: Command) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    command
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_reader_that_goes_away_ends_a_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (node, customer, _) = customer_node(dir.path(), &[]);
    for args in [
        &["account"][..],
        &["budget", "show"],
        &["leases"],
        &["account", "--json"],
    ] {
        let out = into_closed_pipe(customer.command(args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    interrupt(node);
}

#[test]
fn an_ended_lease_is_ended_everywhere_and_cannot_be_ended_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (supplier, addr) = supplier_node(dir.path(), &[]);
    let (node, customer, _) = customer_node(dir.path(), &["--bootstrap", &addr]);
    let model = a100();
    let bid = [
        "bid",
        "--gpu",
        &model,
        "--max-price",
        "2",
        "--hours",
        "1",
        "--window-secs",
        "1",
        "--json",
    ];
    let mut lease = None;
    for _ in 0..100 {
        let out = customer.run(&bid);
        if out.status.success() {
            lease = Some(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap());
            break;
        }
        assert_eq!(out.status.code(), Some(4), "exit 4 until the offer arrives");
        std::thread::sleep(Duration::from_millis(100));
    }
    let lease = lease.expect("the offer reached the customer");
    assert_eq!(lease["state"], "running");
    let id = lease["lease"].as_str().unwrap().to_string();
    assert!(customer.ok(&["leases"]).contains("state      running"));

    let out = customer.ok(&["end", &id[..10]]);
    assert!(out.contains("ends after the window in progress"), "{out}");
    // At once, and the same in every view.
    assert_eq!(customer.json(&["leases"])[0]["state"], "ended");
    assert_eq!(customer.json(&["usage", &id])["state"], "ended");
    let account = customer.json(&["account"]);
    assert_eq!(account["leases"][0]["state"], "ended");
    assert_eq!(account["active_leases"], 0);
    assert!(customer
        .ok(&["account"])
        .contains("across 1 lease (0 running)"));
    assert!(customer.ok(&["leases"]).contains("state      ended"));
    assert!(customer.ok(&["usage", &id]).contains("state      ended"));

    // A second `end` says why, without asking the supplier.
    let out = customer.run(&["end", &id]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("lease {id} has already ended: you ended it")),
        "{err}"
    );
    assert!(!err.contains("supplier"), "{err}");

    // Still ended after the node restarts.
    interrupt(node);
    let (node, customer, _) = customer_node(dir.path(), &["--bootstrap", &addr]);
    assert_eq!(customer.json(&["account"])["leases"][0]["state"], "ended");
    interrupt(node);
    interrupt(supplier);
}

#[test]
fn a_wrong_token_is_said_to_be_unrecognised() {
    let dir = tempfile::tempdir().unwrap();
    let (node, customer, _) = customer_node(dir.path(), &[]);
    // Another directory holding a token this node never issued.
    let other = dir.path().join("other");
    std::fs::create_dir_all(other.join("api")).unwrap();
    let token = other.join("api/customer.token");
    std::fs::write(&token, "f".repeat(64)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let stranger = Customer {
        api: customer.api.clone(),
        dir: other,
    };
    for args in [&["account"][..], &["offers"], &["leases"]] {
        let out = stranger.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("the token is not recognised by this node"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("http status"), "{err}");
    }
    interrupt(node);
}

#[test]
fn a_waiting_bid_redraws_one_progress_line_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let (node, customer, _) = customer_node(dir.path(), &[]);
    let args = [
        "bid",
        "--gpu",
        "NVIDIA A100 nowhere",
        "--max-price",
        "2",
        "--hours",
        "1",
        "--wait",
        "5s",
    ];
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    // `script` gives the bid a terminal, as a person's shell would.
    let line = format!(
        "'{}' {} --api '{}' --data-dir '{}'",
        assert_cmd::cargo::cargo_bin("rigmesh").display(),
        quoted.join(" "),
        customer.api,
        customer.dir.display()
    );
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{screen}");
    assert!(screen.contains("\r\x1b[2Kwaiting ("), "{screen:?}");
    assert!(
        screen.contains("no match: no offers for NVIDIA A100 nowhere"),
        "{screen}"
    );

    // Off a terminal: plain lines only.
    let out = customer.run(&args);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains('\x1b') && !err.contains('\r'), "{err:?}");
    interrupt(node);
}
