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
        let hex = stdout(rigmesh().args(["message", "sample", kind]));
        rigmesh()
            .args(["message", "verify", kind, "--at", &at, "--coordinators"])
            .arg(&set)
            .write_stdin(hex)
            .assert()
            .success();
    }
    let hex = stdout(rigmesh().args(["message", "sample", "escrow_certificate"]));
    rigmesh()
        .args(["message", "verify", "escrow_certificate", "--at", &at])
        .write_stdin(hex)
        .assert()
        .code(3);
    let kinds = stdout(rigmesh().args(["message", "kinds"]));
    assert_eq!(kinds.lines().count(), 22, "a header and the 21 kinds");
}
