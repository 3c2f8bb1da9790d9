//! The `rigmesh` binary driven as a user would: keys, signing an offer,
//! verifying good and bad messages, and the exit codes scripts rely on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use assert_cmd::Command;

fn rigmesh() -> Command {
    Command::cargo_bin("rigmesh").unwrap()
}

fn stdout(cmd: &mut Command) -> String {
    let out = cmd.assert().success().get_output().stdout.clone();
    String::from_utf8(out).unwrap()
}

#[test]
fn new_key_then_signed_offer_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("supplier.key");
    let public = stdout(rigmesh().args(["keys", "new", "--out"]).arg(&key));
    assert_eq!(public.trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "key file must be private");
    }
    // A second `keys new` must not clobber the key.
    rigmesh()
        .args(["keys", "new", "--out"])
        .arg(&key)
        .assert()
        .code(1);
    let shown = stdout(rigmesh().args(["keys", "show", "--key-file"]).arg(&key));
    assert_eq!(shown, public);

    let offer_hex = stdout(
        rigmesh()
            .args(["offer", "create", "--key-file"])
            .arg(&key)
            .args(["--gpu", "NVIDIA H100 80GB HBM3", "--count", "8"])
            .args([
                "--price",
                "2.49",
                "--gpu-uuid",
                "GPU-a",
                "--gpu-uuid",
                "GPU-b",
            ]),
    );
    let verdict = stdout(
        rigmesh()
            .args(["message", "verify", "offer", "--json"])
            .write_stdin(offer_hex.clone()),
    );
    let v: serde_json::Value = serde_json::from_str(&verdict).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["message"]["body"]["supplier"], public.trim());
    assert_eq!(v["message"]["body"]["price_per_gpu_hour"], "2.49");

    // One changed hex digit: refused as invalid, exit 3.
    let mut tampered = offer_hex.trim().to_string();
    let i = 120;
    let c = if &tampered[i..=i] == "0" { "1" } else { "0" };
    tampered.replace_range(i..=i, c);
    let out = rigmesh()
        .args(["message", "verify", "offer", "--hex", &tampered])
        .assert()
        .code(3)
        .get_output()
        .stdout
        .clone();
    assert!(String::from_utf8(out).unwrap().starts_with("invalid offer"));
}

#[test]
fn bad_input_gets_a_clear_error_and_exit_1() {
    let out = rigmesh()
        .args(["message", "verify", "offr", "--hex", "00"])
        .assert()
        .code(1)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8(out).unwrap();
    assert!(err.contains("unknown kind \"offr\""), "{err}");
    assert!(err.contains("offer"), "{err}");

    let out = rigmesh()
        .args(["message", "verify", "offer", "--hex", "zz"])
        .assert()
        .code(1)
        .get_output()
        .stderr
        .clone();
    assert!(String::from_utf8(out).unwrap().contains("not valid hex"));

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, "abcd\n").unwrap();
    rigmesh()
        .args(["offer", "create", "--key-file"])
        .arg(&key)
        .args(["--gpu", "A100", "--price", "1", "--gpu-uuid", "x"])
        .assert()
        .code(1);
    // Over-precise price: refused by the argument parser (clap's usage exit 2).
    let out = rigmesh()
        .args(["offer", "create", "--key-file"])
        .arg(&key)
        .args(["--gpu", "A100", "--price", "1.0000001", "--gpu-uuid", "x"])
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    assert!(String::from_utf8(out).unwrap().contains("decimal places"));
}

#[test]
fn samples_verify_as_records_and_certificates_need_a_set() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("coordinators.json");
    let members: Vec<String> = rigmesh_protocol::samples::coordinators()
        .iter()
        .map(|k| k.public().to_string())
        .collect();
    std::fs::write(
        &set,
        serde_json::json!({"epoch": 1, "members": members}).to_string(),
    )
    .unwrap();
    let at = (rigmesh_protocol::samples::T0.0 + 120_000).to_string();
    for kind in ["offer", "usage-attestation", "escrow_certificate"] {
        let hex = stdout(rigmesh().args(["message", "sample", kind, "--vector"]));
        rigmesh()
            .args(["message", "verify", kind, "--at", &at, "--coordinators"])
            .arg(&set)
            .write_stdin(hex)
            .assert()
            .success();
    }
    let hex = stdout(rigmesh().args(["message", "sample", "escrow_certificate", "--vector"]));
    rigmesh()
        .args(["message", "verify", "escrow_certificate", "--at", &at])
        .write_stdin(hex)
        .assert()
        .code(3);
    let kinds = stdout(rigmesh().args(["message", "kinds"]));
    assert_eq!(kinds.lines().count(), 26, "a header and the 25 kinds");
}

/// Runs `rigmesh args`, expects a usage error (exit 2) whose message holds
/// every one of `says`.
fn refused(args: &[&str], says: &[&str]) {
    let out = rigmesh().args(args).assert().code(2).get_output().clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    for s in says {
        assert!(stderr.contains(s), "{args:?}: {s:?} not in {stderr}");
    }
    assert!(out.stdout.is_empty(), "{args:?}");
}

#[test]
fn out_of_range_arguments_are_refused_by_the_cli_with_the_real_range() {
    // No node runs here: had any of these been sent, the error would be a
    // connection or token error (exit 1), not a usage error.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let bid = |extra: &[&str]| {
        let mut args = vec!["bid", "--data-dir", data, "--gpu", "NVIDIA A100"];
        args.extend_from_slice(extra);
        for (flag, value) in [("--hours", "1"), ("--max-price", "2")] {
            if !extra.iter().any(|a| a.starts_with(flag)) {
                args.extend_from_slice(&[flag, value]);
            }
        }
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--max-price=-1"],
            &["--max-price", "-1 is not above zero"],
        ),
        (&["--max-price=0"], &["--max-price", "0 is not above zero"]),
        (&["--count", "0"], &["--count", "0 is not in 1..=64"]),
        (&["--count", "1000000"], &["--count", "1..=64"]),
        (&["--count", "65"], &["--count", "65 is not in 1..=64"]),
        (&["--hours", "0"], &["--hours", "0 is not in 1..=8784"]),
        (
            &["--hours", "100000"],
            &["--hours", "100000 is not in 1..=8784"],
        ),
        (
            &["--window-secs", "0"],
            &["--window-secs", "0 is not in 1..=3600"],
        ),
        (&["--budget=-5"], &["--budget", "-5 is not above zero"]),
        (
            &["--min-reputation-bp", "10001"],
            &["10001 is not in 0..=10000"],
        ),
    ];
    for (extra, says) in cases {
        let args = bid(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&args, says);
    }
    refused(
        &["offers", "--data-dir", data, "--max-price=-1"],
        &["--max-price", "-1 is not above zero"],
    );
    // Money leaving or entering an account: nothing is signed or sent.
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "").unwrap();
    let config = config.to_str().unwrap();
    let key = dir.path().join("account.key");
    rigmesh()
        .args(["keys", "new", "--out"])
        .arg(&key)
        .assert()
        .success();
    let key = key.to_str().unwrap();
    refused(
        &[
            "withdraw",
            "--config",
            config,
            "--key-file",
            key,
            "--amount=-40",
            "--destination",
            "iban:x",
        ],
        &["--amount", "-40 is not above zero"],
    );
    refused(
        &[
            "admin",
            "deposit",
            "--config",
            config,
            "--admin-key",
            key,
            "--account",
            &"ab".repeat(32),
            "--amount=-100",
            "--reference",
            "wire-1",
        ],
        &["--amount", "-100 is not above zero"],
    );
    refused(
        &[
            "offer",
            "create",
            "--key-file",
            key,
            "--gpu",
            "NVIDIA A100",
            "--price",
            "0",
            "--gpu-uuid",
            "GPU-a",
        ],
        &["--price", "0 is not above zero"],
    );
}

#[test]
fn a_reader_that_goes_away_ends_a_command_quietly() {
    for args in [&["message", "kinds"][..], &["message", "sample", "offer"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("rigmesh"))
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    // An error with nobody reading stderr: still exit 1, not a panic.
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = std::process::Command::new(assert_cmd::cargo::cargo_bin("rigmesh"))
        .args(["keys", "show", "--key-file"])
        .arg(dir.path().join("missing.key"))
        .stderr(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

#[test]
fn every_sample_verifies_now() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("coordinators.json");
    let members: Vec<String> = rigmesh_protocol::samples::coordinators()
        .iter()
        .map(|k| k.public().to_string())
        .collect();
    std::fs::write(
        &set,
        serde_json::json!({"epoch": 1, "members": members}).to_string(),
    )
    .unwrap();
    for kind in rigmesh_protocol::Kind::ALL {
        let hex = stdout(rigmesh().args(["message", "sample", kind.name()]));
        let out = rigmesh()
            .args(["message", "verify", kind.name(), "--coordinators"])
            .arg(&set)
            .write_stdin(hex)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{kind}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // The fixed vector is what specs/vectors holds, and it has expired.
    let vector = stdout(rigmesh().args(["message", "sample", "offer", "--vector"]));
    let expected = rigmesh_protocol::samples::offer()
        .unwrap()
        .to_bytes()
        .unwrap();
    assert_eq!(vector.trim(), hex::encode(expected));
    let out = rigmesh()
        .args(["message", "verify", "offer"])
        .write_stdin(vector)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn completions_config_reference_and_help_say_what_a_user_needs() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef rigmesh"),
        ("fish", "complete -c rigmesh"),
    ] {
        let script = stdout(rigmesh().args(["completions", shell]));
        assert!(script.contains(marker), "{shell}: {script}");
        for word in ["devnet", "max-price", "window-secs", "completions"] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
    }
    rigmesh().args(["completions", "tcsh"]).assert().code(2);

    let example = stdout(rigmesh().args(["node", "config", "--example"]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, &example).unwrap();
    let loaded = rigmesh_node::config::NodeConfig::load(&file).unwrap();
    assert_eq!(loaded, rigmesh_node::config::NodeConfig::default());
    for key in [
        "role = \"relay\"",
        "customer_api = \"127.0.0.1:9610\"",
        "ingest_queue = 4096",
        "offer_ttl_secs = 900",
        "# [coordinators]",
        "# unacked_timeout_secs = 120",
    ] {
        assert!(example.contains(key), "{key:?} not in:\n{example}");
    }

    let help = stdout(rigmesh().arg("--help"));
    for said in [
        "RIGMESH_LOG",
        "130 interrupted",
        "2 bad arguments",
        "rigmesh completions",
        "node config --example",
    ] {
        assert!(help.contains(said), "{said:?} not in --help:\n{help}");
    }
}

#[test]
fn an_os_error_is_said_once_with_the_file_it_concerns() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.key");
    let out = rigmesh()
        .args(["keys", "show", "--key-file"])
        .arg(&missing)
        .assert()
        .code(1)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8(out).unwrap();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}
