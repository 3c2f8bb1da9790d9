//! Crash safety of the coordinator's own write paths: a child process
//! (this same binary, told so by an environment variable) plays one
//! coordinator of a four-member set over a sled ledger, lease after lease,
//! through the calls production makes: `vote_escrow` (the debit lock),
//! `apply_escrow` (the debit), `vote_settlement` (the settlement lock and
//! its evidence) and `apply_settlement` (the payout), with real signed
//! messages and certificates. It prints each step after the call returned.
//! The parent kills it with SIGKILL at random moments, reopens the ledger
//! and checks that every acknowledged step is there: the vote locks, the
//! applied debits and settlements, balanced books and an intact audit
//! chain; then it starts the child again on the same files, which resumes
//! where the ledger says it stopped (every step is idempotent).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rigmesh_ledger::{
    Account, Applied, Coordinator, CoordinatorConfig, FeeRate, Ledger, SettlementEvidence,
};
use rigmesh_protocol::samples::{self, T0};
use rigmesh_protocol::{
    Certifiable, Certificate, Credits, EscrowOrder, GpuUsage, Id, LeaseAgreement, LeaseProposal,
    SettlementRequest, Signed, UnixMillis, UsageAck, UsageAttestation, Vote, PROTOCOL_VERSION,
};

const CHILD: &str = "RIGMESH_COORDINATOR_CRASH_CHILD";
const KILLS: usize = 16;
const ESCROW: i64 = 1_000_000;

fn config() -> CoordinatorConfig {
    CoordinatorConfig {
        set: samples::coordinator_set().unwrap(),
        fee_rate: FeeRate::from_ppm(10_000).unwrap(),
        unacked_timeout_ms: 120_000,
        admins: Vec::new(),
        review: Default::default(),
        skew_ms: 30_000,
        release_grace_ms: 600_000,
    }
}

fn now() -> UnixMillis {
    T0.plus_ms(3_600_000)
}

/// Lease `n` of the sample customer with the sample supplier: its
/// agreement, escrow order (debit `n`), one acked window, and the final
/// settlement request the rules pay for it.
struct Lease {
    agreement: Signed<LeaseAgreement>,
    order: Signed<EscrowOrder>,
    attestation: Signed<UsageAttestation>,
    ack: Signed<UsageAck>,
    request: Signed<SettlementRequest>,
}

fn lease(n: u64) -> Lease {
    let (customer, supplier) = (samples::customer(), samples::supplier());
    let t = T0.plus_ms(n * 10);
    let proposal = Signed::sign(
        LeaseProposal {
            version: PROTOCOL_VERSION,
            customer: customer.public(),
            supplier: supplier.public(),
            offer: Id([3; 32]),
            gpu_count: 1,
            price_per_gpu_hour: Credits::from_units(3_600_000),
            hours: 1,
            window_secs: 60,
            nonce: n,
            created_at: t,
            expires_at: t.plus_ms(60_000),
        },
        &customer,
    )
    .unwrap();
    let agreement = Signed::sign(
        LeaseAgreement {
            version: PROTOCOL_VERSION,
            supplier: supplier.public(),
            proposal,
            gpu_indices: vec![0],
            hardware_fingerprint: Id([4; 32]),
            starts_at: t,
            ends_at: t.plus_ms(3_600_000),
            created_at: t,
        },
        &supplier,
    )
    .unwrap();
    let id = agreement.id().unwrap();
    let order = Signed::sign(
        EscrowOrder {
            version: PROTOCOL_VERSION,
            account: customer.public(),
            seq: n,
            epoch: samples::EPOCH,
            lease: id,
            supplier: supplier.public(),
            amount: Credits::from_units(ESCROW),
            created_at: now(),
            expires_at: now().plus_ms(600_000),
        },
        &customer,
    )
    .unwrap();
    let attestation = Signed::sign(
        UsageAttestation {
            version: PROTOCOL_VERSION,
            lease: id,
            supplier: supplier.public(),
            customer: customer.public(),
            seq: 0,
            prev: Id::ZERO,
            window_start: t,
            window_end: t.plus_ms(60_000),
            gpus: vec![GpuUsage {
                gpu_index: 0,
                billable_ms: 60_000,
                mean_util_bp: 5_000,
                peak_util_bp: 9_000,
                peak_memory_mib: 100,
                energy_mj: 1_000,
            }],
            billable_gpu_ms: 60_000,
            created_at: t.plus_ms(60_000),
        },
        &supplier,
    )
    .unwrap();
    let ack = Signed::sign(
        UsageAck {
            version: PROTOCOL_VERSION,
            lease: id,
            customer: customer.public(),
            attestation: attestation.id().unwrap(),
            seq: 0,
            created_at: t.plus_ms(61_000),
        },
        &customer,
    )
    .unwrap();
    // One GPU-minute at 3.6 per GPU-hour is 0.06; 1 % of it is the fee.
    let request = Signed::sign(
        SettlementRequest {
            version: PROTOCOL_VERSION,
            lease: id,
            supplier: supplier.public(),
            customer: customer.public(),
            settlement_seq: 0,
            epoch: samples::EPOCH,
            escrow: order.id().unwrap(),
            first_window: 0,
            last_window: 0,
            attestation_head: attestation.id().unwrap(),
            billable_gpu_ms: 60_000,
            supplier_amount: Credits::from_units(59_400),
            fee: Credits::from_units(600),
            refund: Credits::from_units(ESCROW - 60_000),
            held: Credits::ZERO,
            final_settlement: true,
            created_at: now(),
        },
        &supplier,
    )
    .unwrap();
    Lease {
        agreement,
        order,
        attestation,
        ack,
        request,
    }
}

/// The other three members' votes, with this coordinator's own.
fn certificate<T: Certifiable>(message: &Signed<T>, own: Signed<Vote>) -> Certificate<T> {
    let mut votes = vec![own];
    for key in samples::coordinators().iter().skip(1) {
        votes.push(
            Signed::sign(Certificate::vote_for(message, key.public()).unwrap(), key).unwrap(),
        );
    }
    Certificate::assemble(message.clone(), &votes).unwrap()
}

/// Step `k`: lease `k / 4`, then its escrow vote, escrow application,
/// settlement vote and settlement application.
fn step(c: &Coordinator<'_, rigmesh_ledger::SledStore>, k: u64) {
    let l = lease(k / 4);
    match k % 4 {
        0 => {
            c.vote_escrow(&l.order, &l.agreement, now()).unwrap();
        }
        1 => {
            let vote = c.vote_escrow(&l.order, &l.agreement, now()).unwrap();
            let applied = c.apply_escrow(&certificate(&l.order, vote), now()).unwrap();
            assert!(matches!(
                applied,
                Applied::Applied | Applied::AlreadyApplied
            ));
        }
        2 => {
            vote_settlement(c, &l);
        }
        _ => {
            let vote = vote_settlement(c, &l);
            let applied = c
                .apply_settlement(&certificate(&l.request, vote), now())
                .unwrap();
            assert!(matches!(
                applied,
                Applied::Applied | Applied::AlreadyApplied
            ));
        }
    }
}

fn vote_settlement(c: &Coordinator<'_, rigmesh_ledger::SledStore>, l: &Lease) -> Signed<Vote> {
    c.vote_settlement(
        &SettlementEvidence {
            request: &l.request,
            agreement: &l.agreement,
            attestations: std::slice::from_ref(&l.attestation),
            previous: None,
            acks: std::slice::from_ref(&l.ack),
            disputes: &[],
            terminations: &[],
        },
        now(),
    )
    .unwrap()
}

/// Where the ledger says the child stopped: the first step not yet done.
fn resume_point(ledger: &Ledger) -> u64 {
    let customer = samples::customer().public();
    let applied = ledger.next_debit_seq(&customer).unwrap();
    if applied > 0 {
        let l = lease(applied - 1);
        let id = l.agreement.id().unwrap();
        let book = ledger.lease_book(&id).unwrap().unwrap();
        if !book.closed {
            return if ledger.settlement_lock(&id, 0).unwrap().is_some() {
                4 * (applied - 1) + 3
            } else {
                4 * (applied - 1) + 2
            };
        }
    }
    if ledger.debit_lock(&customer, applied).unwrap().is_some() {
        4 * applied + 1
    } else {
        4 * applied
    }
}

fn child(dir: &Path) {
    let ledger = Ledger::open(dir).unwrap();
    let key = samples::coordinators().remove(0);
    let config = config();
    let c = Coordinator::new(&ledger, &key, &config);
    let funds = Id([0xf0; 32]);
    if !ledger.is_applied(&funds).unwrap() {
        ledger
            .apply_deposit(
                &funds,
                &samples::customer().public(),
                Credits::from_units(1_000_000_000_000),
                &funds,
                vec![1],
                &rigmesh_ledger::Cause::new(key.public(), funds, T0),
            )
            .unwrap();
    }
    let mut k = resume_point(&ledger);
    let out = std::io::stdout();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        step(&c, k);
        // Only now, after the call returned, is the step acknowledged.
        let mut lock = out.lock();
        writeln!(lock, "{k}").unwrap();
        lock.flush().unwrap();
        k += 1;
    }
}

/// Checks that every acknowledged step survived.
fn check(dir: &Path, acked: &[u64]) -> u64 {
    let ledger = Ledger::open(dir).unwrap();
    let audit = ledger.verify_audit().unwrap();
    assert!(audit.is_intact(), "audit chain broken: {:?}", audit.broken);
    let books = ledger.check_books().unwrap();
    assert_eq!(
        books.totals.held().unwrap(),
        books.totals.external.checked_neg().unwrap(),
        "balances + escrow = deposits - withdrawals"
    );
    let customer = samples::customer().public();
    for &k in acked {
        let l = lease(k / 4);
        let id = l.agreement.id().unwrap();
        let n = k / 4;
        match k % 4 {
            // The lock of debit n stays until debit n + 1 is applied.
            0 => assert!(
                ledger.debit_lock(&customer, n).unwrap() == Some(l.order.id().unwrap())
                    || ledger.next_debit_seq(&customer).unwrap() > n + 1,
                "escrow vote {n} lost"
            ),
            1 => assert!(
                ledger.next_debit_seq(&customer).unwrap() > n,
                "escrow {n} lost"
            ),
            2 => assert_eq!(
                ledger.settlement_lock(&id, 0).unwrap(),
                Some(l.request.id().unwrap()),
                "settlement vote {n} lost"
            ),
            _ => {
                let book = ledger.lease_book(&id).unwrap().unwrap();
                assert!(book.closed, "settlement {n} lost");
                assert_eq!(ledger.balance(&Account::Escrow(id)).unwrap(), Credits::ZERO);
            }
        }
    }
    // Every closed lease paid the supplier 0.0594 and the fee 0.0006.
    let closed = acked.iter().filter(|k| *k % 4 == 3).count() as i64;
    let supplier = ledger
        .balance(&Account::User(samples::supplier().public()))
        .unwrap();
    assert!(supplier.units() >= closed * 59_400);
    assert_eq!(
        ledger.balance(&Account::Fees).unwrap().units(),
        supplier.units() / 99,
        "fees and payouts move together"
    );
    audit.verified
}

fn main() {
    if let Ok(dir) = std::env::var(CHILD) {
        child(Path::new(&dir));
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    println!("coordinator crash test: seed {seed}, {KILLS} kills");
    let mut acked: Vec<u64> = Vec::new();
    let mut records = 0;
    for round in 0..KILLS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(40 + seed % 260);
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
            "round {round:2}: killed after {:3} ms, {:3} steps acknowledged, {records} audit records survive",
            delay.as_millis(),
            this_round.len()
        );
    }
    assert!(!acked.is_empty(), "the child never acknowledged anything");
    println!(
        "coordinator crash test passed: {KILLS} kills, {} acknowledged steps, {records} records, {:.1} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
}
