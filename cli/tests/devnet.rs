//! `rigmesh devnet`, the README's run command, through the binary: the
//! scenario goes from bid to final settlement and the four coordinators'
//! books agree; the budget alert is delivered to the devnet's webhook sink;
//! a kept directory runs again, a temporary one is removed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use assert_cmd::Command;

#[test]
fn the_devnet_plays_a_lease_from_bid_to_final_settlement() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::cargo_bin("rigmesh")
        .unwrap()
        .args(["devnet", "--dir"])
        .arg(dir.path())
        .timeout(std::time::Duration::from_secs(240))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for step in [
        "4 coordinators (f = 1), 3 suppliers, 1 customer",
        "token ",
        "leased: lease ",
        "escrowed 0.02 ",
        "window 0 attested",
        "acknowledged by the customer",
        "alert (info) budget.50",
        "of its budget of 0.02 (past the 50 % mark)",
        "the customer ended the lease (BudgetCap)",
        "(final)",
        "alert (critical) budget.100",
        "notifications to webhook http://127.0.0.1:",
        "notification delivered: budget.100",
        "cap 0.02   settled ",
        "books (identical on all 4 coordinators)",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    // What was settled is at most the cap, to the micro-credit, and the
    // customer's node shows exactly what was settled.
    let line = stdout.lines().find(|l| l.starts_with("cap 0.02")).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let settled: rigmesh_protocol::Credits = words[3].parse().unwrap();
    assert!(settled <= "0.02".parse().unwrap(), "{line}");
    assert_eq!(words.last().unwrap(), &words[3], "{line}");
    // The cheapest H100 offer (the market data's 10th percentile) wins.
    assert!(stdout.contains("at 1.8/GPU-h"), "{stdout}");
    // The budget alert reached the sink, signed, through the webhook.
    let delivery = stdout
        .lines()
        .find(|l| l.contains("notification delivered: budget.100"))
        .unwrap();
    assert!(
        delivery.contains("(critical) to webhook http://127.0.0.1:"),
        "{delivery}"
    );
    assert!(delivery.ends_with("signature checked"), "{delivery}");
    assert!(!stdout.contains("webhook sink refused"), "{stdout}");
    // Its API is gone when it exits: nothing says to try it.
    assert!(!stdout.contains("try: "), "{stdout}");

    // The same directory again: the same market starts and is funded.
    let again = Command::cargo_bin("rigmesh")
        .unwrap()
        .args(["devnet", "--no-scenario", "--dir"])
        .arg(dir.path())
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&again.stdout);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("4 coordinators (f = 1)"), "{stdout}");
}

#[test]
fn a_devnet_without_a_directory_leaves_no_files_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let output = Command::cargo_bin("rigmesh")
        .unwrap()
        .args(["devnet", "--no-scenario"])
        .env("TMPDIR", tmp.path())
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("data dir "), "{stdout}");
    assert!(!stdout.contains("try: "), "{stdout}");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
