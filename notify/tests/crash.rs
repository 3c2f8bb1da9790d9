//! Crash safety of delivery: a child process (this same binary, told so by
//! an environment variable) runs the notifier over a sled directory,
//! raises alerts one by one with `raise_durably` and prints the number of
//! each once it is confirmed. The parent, which runs the receiving
//! webhook server, kills the child with SIGKILL at random moments and
//! starts it again on the same directory. At the end every confirmed
//! alert must have reached the server, and every repeat (a message sent
//! but not recorded before a kill) must carry the key of its first copy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{alert, secret_file, Pipeline, Recorder};
use rigmesh_protocol::Severity;

const CHILD: &str = "RIGMESH_NOTIFY_CRASH_CHILD";
const FROM: &str = "RIGMESH_NOTIFY_CRASH_FROM";
const COUNT: &str = "RIGMESH_NOTIFY_CRASH_COUNT";
const KILLS: u32 = 8;
const PER_ROUND: u32 = 100;

fn config(url: &str, secret: &str) -> String {
    format!(
        r#"
        [outbox]
        poll_ms = 10
        timeout_ms = 1000
        backoff_base_ms = 20
        max_attempts = 50
        [grouping]
        group_wait_ms = 0
        group_by = ["rule", "subject"]
        [[channels]]
        name = "hook"
        type = "webhook"
        url = "{url}"
        secret = {{ file = "{secret}" }}
        [[recipients]]
        name = "ops"
        channels = ["hook"]
        "#
    )
}

/// Raises alerts `from..from + count`, printing each once durable, then
/// keeps delivering until killed.
fn child(dir: &Path, from: u32, count: u32) {
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pipeline = Pipeline::start(&config, &dir.join("db"));
        let out = std::io::stdout();
        for i in from..from + count {
            pipeline
                .handle
                .raise_durably(alert("lease.stalled", Severity::Warning, i))
                .await
                .unwrap();
            let mut lock = out.lock();
            writeln!(lock, "{i}").unwrap();
            lock.flush().unwrap();
        }
        std::future::pending::<()>().await;
    });
}

/// The alert number in a webhook message's subject.
fn number(request: &common::Received) -> u32 {
    let body = request.json();
    let subject = body["subject"].as_str().unwrap();
    let rest = subject.split("number ").nth(1).unwrap();
    rest.split(' ').next().unwrap().parse().unwrap()
}

fn main() {
    if let Ok(dir) = std::env::var(CHILD) {
        let from = std::env::var(FROM).unwrap().parse().unwrap();
        let count = std::env::var(COUNT).unwrap().parse().unwrap();
        child(Path::new(&dir), from, count);
        return;
    }
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(Recorder::start());
    // A receiver that takes its time keeps deliveries in flight, so kills
    // land between sending and recording.
    server.answer_after(Duration::from_millis(10));
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "key", "crash-key");
    std::fs::write(
        dir.path().join("config.toml"),
        config(&server.url("/hook"), &secret),
    )
    .unwrap();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    println!("notify crash test: seed {seed}, {KILLS} kills");
    let mut durable: BTreeSet<u32> = BTreeSet::new();
    let spawn = |from: u32, count: u32| {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD, dir.path())
            .env(FROM, from.to_string())
            .env(COUNT, count.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map(|l| l.unwrap().trim().parse::<u32>().unwrap())
                .collect::<Vec<u32>>()
        });
        (child, reader)
    };
    for round in 0..=KILLS {
        // The last run raises nothing new: it only finishes the deliveries.
        let count = if round == KILLS { 0 } else { PER_ROUND };
        let (mut child, reader) = spawn(round * PER_ROUND, count);
        if round == KILLS {
            // The last run is not killed until it has delivered
            // everything confirmed in all runs.
            let want = durable.clone();
            runtime.block_on(server.log.wait_until(Duration::from_secs(60), |r| {
                let got: BTreeSet<u32> = r.iter().map(number).collect();
                want.is_subset(&got)
            }));
        } else {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(50 + seed % 350));
        }
        // SIGKILL: no destructors, no flush, no chance to tidy up.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "child finished instead of being killed");
        let confirmed = reader.join().unwrap();
        durable.extend(&confirmed);
        println!(
            "round {round}: {} confirmed, {} requests received so far",
            confirmed.len(),
            server.log.all().len()
        );
    }
    let got = server.log.all();
    let mut keys: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for request in &got {
        keys.entry(number(request))
            .or_default()
            .insert(request.header("idempotency-key").unwrap());
    }
    for i in &durable {
        let seen = keys.get(i).map(BTreeSet::len);
        assert_eq!(
            seen,
            Some(1),
            "confirmed alert {i} arrived under keys {seen:?}"
        );
    }
    for (i, k) in &keys {
        assert_eq!(k.len(), 1, "alert {i} arrived under {} keys", k.len());
    }
    assert!(!durable.is_empty(), "the child never confirmed an alert");
    println!(
        "notify crash test passed: {KILLS} kills, {} confirmed alerts, {} requests ({} repeats), {:.1} s",
        durable.len(),
        got.len(),
        got.len() - keys.len(),
        started.elapsed().as_secs_f64()
    );
}
