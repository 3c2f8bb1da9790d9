//! Crash safety: a child process (this same binary, told so by an
//! environment variable) runs ledger operations in a loop against a sled
//! ledger that flushes every write, and prints the audit sequence of each
//! operation after the call returns (acknowledged, so durable by the
//! ledger's rule). The parent kills it with SIGKILL at random moments,
//! reopens the ledger and checks that every acknowledged operation is
//! there, the journal replays to the balances, and the audit chain
//! verifies. Then it starts the child again on the same files.
//!
//! The operation at audit sequence `s` is a function of `s` alone, so the
//! parent knows what each acknowledgement promises:
//! `s % 4 == 0` deposit, `1` escrow lock, `2` metered window, `3` final
//! settlement (the last three touch several trees in one batch).
//!
//! A second phase kills a child whose writers run concurrently, so their
//! writes share flushes (the ledger's group commit): each of 8 threads
//! deposits under its own ids and prints each one after the call returns,
//! and every printed deposit must survive.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rigmesh_ledger::{Account, EscrowLock, FeeRate, Ledger, SettleTerms};
use rigmesh_protocol::{Credits, Id, PublicKey, UnixMillis};

const CHILD: &str = "RIGMESH_LEDGER_CRASH_CHILD";
const CONCURRENT_CHILD: &str = "RIGMESH_LEDGER_CRASH_CONCURRENT_CHILD";
const KILLS: usize = 24;
const CONCURRENT_KILLS: usize = 8;
const WRITERS: u64 = 8;

fn customer() -> PublicKey {
    PublicKey([1; 32])
}

fn supplier() -> PublicKey {
    PublicKey([2; 32])
}

fn id(tag: u8, n: u64) -> Id {
    let mut bytes = [tag; 32];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    Id(bytes)
}

/// The lease opened by the escrow lock at sequence `s`.
fn lease_of(s: u64) -> Id {
    id(0x1e, s)
}

fn cause(s: u64) -> rigmesh_ledger::Cause {
    rigmesh_ledger::Cause::new(customer(), id(0xca, s), UnixMillis(1_790_000_000_000 + s))
}

fn run(ledger: &Ledger, s: u64) -> rigmesh_ledger::Result<()> {
    match s % 4 {
        0 => ledger
            .deposit(
                customer(),
                Credits::from_units(10_000_000),
                id(0xde, s),
                &cause(s),
            )
            .map(drop),
        1 => ledger
            .lock_escrow(
                &EscrowLock {
                    lease: lease_of(s),
                    order: id(0x0e, s),
                    customer: customer(),
                    supplier: supplier(),
                    amount: Credits::from_units(1_000_000),
                    price_per_gpu_hour: Credits::from_units(1_000_000),
                },
                &cause(s),
            )
            .map(drop),
        2 => ledger
            .meter_window(&lease_of(s - 1), 0, 1_800_000, &cause(s))
            .map(drop),
        _ => ledger
            .settle(
                &lease_of(s - 2),
                &SettleTerms {
                    request: id(0x5e, s),
                    settlement_seq: 0,
                    fee_rate: FeeRate::from_ppm(10_000)?,
                    final_settlement: true,
                },
                &cause(s),
            )
            .map(drop),
    }
}

fn child(dir: &Path) {
    let ledger = Ledger::open(dir).unwrap();
    let mut s = ledger.audit_len().unwrap();
    let out = std::io::stdout();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        run(&ledger, s).unwrap();
        // Only now, after the call returned, is the operation acknowledged.
        let mut lock = out.lock();
        writeln!(lock, "{s}").unwrap();
        lock.flush().unwrap();
        s += 1;
    }
}

/// The deposit writer `w` makes in its `n`-th call (ids unique across
/// restarts: `start` is where this run of the child began).
fn concurrent_id(w: u64, n: u64) -> Id {
    id(0xd0 + w as u8, n)
}

fn concurrent_child(dir: &Path) {
    let ledger = std::sync::Arc::new(Ledger::open(dir).unwrap());
    // Each run starts past every id an earlier run could have used.
    let start = ledger.audit_len().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                let out = std::io::stdout();
                let mut n = start;
                while Instant::now() < deadline {
                    let cause = rigmesh_ledger::Cause::new(
                        customer(),
                        concurrent_id(w, n),
                        UnixMillis(1_790_000_000_000),
                    );
                    ledger
                        .deposit(
                            customer(),
                            Credits::from_units(1),
                            concurrent_id(w, n),
                            &cause,
                        )
                        .unwrap();
                    // Acknowledged only now that the call has returned.
                    let mut lock = out.lock();
                    writeln!(lock, "{w} {n}").unwrap();
                    lock.flush().unwrap();
                    n += 1;
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
}

/// Runs the concurrent phase in a directory of its own.
fn concurrent_phase(mut seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for round in 0..CONCURRENT_KILLS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(20 + seed % 180);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CONCURRENT_CHILD, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map(|l| {
                    let line = l.unwrap();
                    let (w, n) = line.trim().split_once(' ').unwrap();
                    (w.parse::<u64>().unwrap(), n.parse::<u64>().unwrap())
                })
                .collect::<Vec<_>>()
        });
        std::thread::sleep(delay);
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "child finished instead of being killed");
        let this_round = reader.join().unwrap();
        acked.extend(&this_round);
        let ledger = Ledger::open(dir.path()).unwrap();
        let audit = ledger.verify_audit().unwrap();
        assert!(audit.is_intact(), "audit chain broken: {:?}", audit.broken);
        for &(w, n) in &acked {
            assert!(
                ledger.is_posted(&concurrent_id(w, n)).unwrap(),
                "deposit {n} of writer {w} acknowledged and lost"
            );
        }
        let books = ledger.check_books().unwrap();
        assert_eq!(
            books.totals.held().unwrap(),
            books.totals.external.checked_neg().unwrap()
        );
        println!(
            "concurrent round {round}: killed after {:3} ms, {:3} acknowledged by {WRITERS} writers, {} audit records survive",
            delay.as_millis(),
            this_round.len(),
            audit.verified
        );
    }
    assert!(!acked.is_empty(), "the writers never acknowledged anything");
}

/// Checks that everything acknowledged so far survived.
fn check(dir: &Path, acked: &[u64]) -> u64 {
    let ledger = Ledger::open(dir).unwrap();
    let audit = ledger.verify_audit().unwrap();
    assert!(audit.is_intact(), "audit chain broken: {:?}", audit.broken);
    let books = ledger.check_books().unwrap();
    if let Some(max) = acked.iter().max() {
        assert!(
            audit.verified > *max,
            "acknowledged {max}, audit has {}",
            audit.verified
        );
    }
    for &s in acked {
        match s % 4 {
            0 => assert!(ledger.is_posted(&id(0xde, s)).unwrap(), "deposit {s} lost"),
            1 => assert!(
                ledger.lease_book(&lease_of(s)).unwrap().is_some(),
                "lock {s} lost"
            ),
            2 => {
                let book = ledger.lease_book(&lease_of(s - 1)).unwrap().unwrap();
                assert_eq!(book.metered_windows, 1, "window {s} lost");
            }
            _ => {
                let book = ledger.lease_book(&lease_of(s - 2)).unwrap().unwrap();
                assert!(book.closed, "settlement {s} lost");
                assert_eq!(
                    ledger.balance(&Account::Escrow(lease_of(s - 2))).unwrap(),
                    Credits::ZERO
                );
            }
        }
    }
    // Every completed cycle: 10 in, 1 locked, 0.5 paid (0.005 of it fee),
    // 0.5 back. Nothing is ever withdrawn.
    assert_eq!(
        books.totals.held().unwrap(),
        books.totals.external.checked_neg().unwrap()
    );
    audit.verified
}

fn main() {
    if let Ok(dir) = std::env::var(CHILD) {
        child(Path::new(&dir));
        return;
    }
    if let Ok(dir) = std::env::var(CONCURRENT_CHILD) {
        concurrent_child(Path::new(&dir));
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    println!("crash test: seed {seed}, {KILLS} kills");
    let mut acked: Vec<u64> = Vec::new();
    let mut records = 0;
    for round in 0..KILLS {
        // xorshift: enough randomness for kill times, reproducible by seed.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(20 + seed % 180);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map(|l| l.unwrap().trim().parse::<u64>().unwrap())
                .collect::<Vec<u64>>()
        });
        std::thread::sleep(delay);
        // SIGKILL: no destructors, no flush, no chance to tidy up.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "child finished instead of being killed");
        let this_round = reader.join().unwrap();
        acked.extend(&this_round);
        records = check(dir.path(), &acked);
        println!(
            "round {round:2}: killed after {:3} ms, {:3} acknowledged, {records} audit records survive",
            delay.as_millis(),
            this_round.len()
        );
    }
    assert!(!acked.is_empty(), "the child never acknowledged anything");
    concurrent_phase(seed);
    println!(
        "crash test passed: {KILLS} kills, {} acknowledged operations, {records} records, {:.1} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
}
