//! `rigmesh token create|list|revoke` against a real customer node: a new
//! token is printed once, works for its scopes only, is listed without
//! its secret, and is refused once revoked; `rigmesh audit` reads a
//! coordinator's audit chain and books through its operator API, and
//! `rigmesh admin review` lists and acknowledges its review queue.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{interrupt, printed, start_with};

fn rigmesh(args: &[&str], api: &str, data: &Path) -> Output {
    Command::new(assert_cmd::cargo::cargo_bin("rigmesh"))
        .args(args)
        .args(["--api", api, "--data-dir"])
        .arg(data)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn a_token_is_made_used_listed_and_revoked_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("customer");
    let (node, lines) = start_with(&data, &["--role", "customer"]);
    let api = printed(&lines, "customer api on http://");

    let out = rigmesh(
        &[
            "token",
            "create",
            "--scope",
            "customer:read",
            "--expires",
            "30d",
            "--name",
            "dash",
        ],
        &api,
        &data,
    );
    let token = stdout(&out).trim().to_string();
    assert_eq!(token.len(), 64, "{token}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("shown this once"), "{said}");
    let file = dir.path().join("dash.token");
    std::fs::write(&file, &token).unwrap();
    let file = file.to_str().unwrap();

    // It reads the account...
    stdout(&rigmesh(&["account", "--token-file", file], &api, &data));
    // ...and cannot make tokens.
    let out = rigmesh(
        &[
            "token",
            "create",
            "--scope",
            "customer:read",
            "--token-file",
            file,
        ],
        &api,
        &data,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tokens:manage"), "{err}");

    let list = stdout(&rigmesh(&["token", "list", "--json"], &api, &data));
    assert!(
        list.contains("\"dash\"") && list.contains("customer-cli"),
        "{list}"
    );
    assert!(!list.contains(&token), "no secret in the list: {list}");
    let table = stdout(&rigmesh(&["token", "list"], &api, &data));
    assert!(
        table.contains("dash") && table.contains("customer:read"),
        "{table}"
    );

    stdout(&rigmesh(&["token", "revoke", "dash"], &api, &data));
    let out = rigmesh(&["account", "--token-file", file], &api, &data);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("revoked"), "{err}");

    // A scope that does not exist is a usage error naming the real ones.
    let out = rigmesh(
        &["token", "create", "--scope", "customer:write"],
        &api,
        &data,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("customer:trade"));
    interrupt(node);
}

#[test]
fn a_coordinators_audit_chain_and_books_are_read_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator");
    std::fs::create_dir_all(&data).unwrap();
    rigmesh_node::keyfile::write_seed(&data.join("account.key"), &[0x61; 32]).unwrap();
    let member = rigmesh_protocol::Keypair::from_seed([0x61; 32]).public();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!("[coordinators]\nepoch = 1\nmembers = [\"{member}\"]\n"),
    )
    .unwrap();
    let (node, lines) = start_with(
        &data,
        &[
            "--role",
            "coordinator",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let api = printed(&lines, "operator api on http://");
    let verify = stdout(&rigmesh(&["audit", "verify"], &api, &data));
    assert!(verify.contains("the audit chain is intact"), "{verify}");
    let tail = stdout(&rigmesh(
        &["audit", "tail", "--limit", "5", "--json"],
        &api,
        &data,
    ));
    let page: serde_json::Value = serde_json::from_str(&tail).unwrap();
    assert!(page["length"].as_u64().is_some(), "{page}");
    let books = stdout(&rigmesh(&["audit", "books"], &api, &data));
    assert!(books.contains("the books check"), "{books}");
    // Without the operator's token, nothing is read.
    let refused = rigmesh(&["audit", "verify"], &api, &dir.path().join("elsewhere"));
    assert!(!refused.status.success());
    interrupt(node);
}

#[test]
fn a_coordinators_review_queue_is_listed_and_acknowledged_from_the_cli() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator");
    std::fs::create_dir_all(&data).unwrap();
    rigmesh_node::keyfile::write_seed(&data.join("account.key"), &[0x61; 32]).unwrap();
    let member = rigmesh_protocol::Keypair::from_seed([0x61; 32]).public();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!("[coordinators]\nepoch = 1\nmembers = [\"{member}\"]\n"),
    )
    .unwrap();
    let (node, lines) = start_with(
        &data,
        &[
            "--role",
            "coordinator",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let api = printed(&lines, "operator api on http://");
    let empty = stdout(&rigmesh(&["admin", "review", "list"], &api, &data));
    assert!(empty.contains("no open review items"), "{empty}");

    // 50 guessed tokens: the operator listener's alert threshold.
    for i in 0..50 {
        let mut stream = std::net::TcpStream::connect(&api).unwrap();
        write!(
            stream,
            "GET /v1/books HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {i:064x}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    // The item is written by the queue's own thread: ask until it is in.
    let mut items = Vec::new();
    for _ in 0..100 {
        let page = stdout(&rigmesh(
            &["admin", "review", "list", "--json"],
            &api,
            &data,
        ));
        let page: serde_json::Value = serde_json::from_str(&page).unwrap();
        items = page["items"].as_array().unwrap().clone();
        if !items.is_empty() {
            break;
        }
    }
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["rule"], "api.refusals");
    assert_eq!(items[0]["subject"], "address 127.0.0.1");
    let id = items[0]["id"].as_u64().unwrap().to_string();
    let table = stdout(&rigmesh(&["admin", "review", "list"], &api, &data));
    assert!(
        table.contains("api.refusals") && table.contains("address 127.0.0.1"),
        "{table}"
    );

    let acked = stdout(&rigmesh(
        &[
            "admin",
            "review",
            "ack",
            &id,
            "--note",
            "my own script's typo",
        ],
        &api,
        &data,
    ));
    assert!(acked.contains("acknowledged by operator-cli"), "{acked}");
    let again = rigmesh(
        &["admin", "review", "ack", &id, "--note", "again"],
        &api,
        &data,
    );
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("was acknowledged by operator-cli"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let unknown = rigmesh(
        &["admin", "review", "ack", "999", "--note", "n"],
        &api,
        &data,
    );
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no review item 999"));
    let open = stdout(&rigmesh(&["admin", "review", "list"], &api, &data));
    assert!(open.contains("no open review items"), "{open}");
    let all = stdout(&rigmesh(&["admin", "review", "list", "--all"], &api, &data));
    assert!(all.contains("my own script's typo"), "{all}");
    interrupt(node);
}

/// `rigmesh admin ... --operator-api`: a deposit signed here and carried
/// by a one-member coordinator set's operator API is credited once (the
/// reference reused exits 5), and a ban is added, listed and lifted.
#[test]
fn admin_commands_go_through_a_coordinators_operator_api() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator");
    std::fs::create_dir_all(&data).unwrap();
    rigmesh_node::keyfile::write_seed(&data.join("account.key"), &[0x62; 32]).unwrap();
    let member = rigmesh_protocol::Keypair::from_seed([0x62; 32]).public();
    let admin_key = dir.path().join("admin.key");
    rigmesh_node::keyfile::write_seed(&admin_key, &[0x63; 32]).unwrap();
    let admin = rigmesh_protocol::Keypair::from_seed([0x63; 32]).public();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!("[coordinators]\nepoch = 1\nmembers = [\"{member}\"]\nadmin = \"{admin}\"\n"),
    )
    .unwrap();
    let (node, lines) = start_with(
        &data,
        &[
            "--role",
            "coordinator",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let api = printed(&lines, "operator api on http://");
    let admin = |args: &[&str]| {
        Command::new(assert_cmd::cargo::cargo_bin("rigmesh"))
            .arg("admin")
            .args(args)
            .args(["--operator-api", &api, "--data-dir"])
            .arg(&data)
            .output()
            .unwrap()
    };
    let account = "cd".repeat(32);
    let key = admin_key.to_str().unwrap();
    let deposit = |amount: &str| {
        admin(&[
            "deposit",
            "--admin-key",
            key,
            "--account",
            &account,
            "--amount",
            amount,
            "--reference",
            "wire-api-1",
            "--json",
        ])
    };
    let first = deposit("12");
    let outcome: serde_json::Value = serde_json::from_str(&stdout(&first)).unwrap();
    assert_eq!(outcome["state"], "applied", "{outcome}");
    assert_eq!(outcome["applied_by"], 1, "{outcome}");
    let reused = deposit("99");
    assert_eq!(
        reused.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&reused.stderr)
    );
    let books = stdout(&rigmesh(&["audit", "books", "--json"], &api, &data));
    assert!(books.contains("12"), "{books}");
    assert!(!books.contains("111"), "credited once: {books}");
    let tail = stdout(&rigmesh(&["audit", "tail", "--limit", "50"], &api, &data));
    assert!(
        tail.contains("OperatorRequest") && tail.contains("operator-cli"),
        "{tail}"
    );

    let peer = libp2p::PeerId::random().to_string();
    let added = admin(&["bans", "add", &peer, "--secs", "600", "--reason", "spam"]);
    assert!(stdout(&added).contains("banned until"));
    let listed = stdout(&admin(&["bans", "list"]));
    assert!(
        listed.contains(&peer) && listed.contains("spam"),
        "{listed}"
    );
    stdout(&admin(&["bans", "remove", &peer]));
    let listed = stdout(&admin(&["bans", "list"]));
    assert!(listed.contains("no ban is in force"), "{listed}");
    let again = admin(&["bans", "remove", &peer]);
    assert!(!again.status.success(), "nothing left to lift");
    interrupt(node);
}
