//! Caps held by the quorum (specs/settlement.md 5.1, 5.5, 6.1, 13.7), as
//! a property over random markets: four honest coordinators on sled, one
//! customer with a lease cap and an account cap, leases whose windows are
//! acked, disputed, left unanswered or come after a termination, settled
//! in random partial settlements, with a greedy request (more than the
//! rules pay) tried before each honest one, caps raised mid-lease (the
//! escrow topped up) and coordinators restarted between steps. On every
//! coordinator, after every step: balances + escrow = deposits -
//! withdrawals, the books agree, no lease costs more than its cap, and all
//! together cost no more than the account cap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use proptest::prelude::*;
use rigmesh_ledger::{
    Account, Applied, Coordinator, CoordinatorConfig, Durability, FeeRate, Ledger,
    SettlementEvidence, SledStore,
};
use rigmesh_protocol::samples::{self, T0};
use rigmesh_protocol::{
    Certifiable, Certificate, Credits, EscrowOrder, GpuUsage, Id, Keypair, LeaseAgreement,
    LeaseProposal, LeaseTermination, SettlementRequest, Signed, TerminationReason, UnixMillis,
    UsageAck, UsageAttestation, UsageDispute, Vote, PROTOCOL_VERSION,
};

const UNACKED_MS: u64 = 120_000;
const WINDOW_MS: u64 = 1_000;

/// What the customer did with one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ack,
    Dispute,
    Nothing,
}

#[derive(Debug, Clone)]
struct LeasePlan {
    /// Price per GPU-hour, whole credits.
    price: i64,
    /// The lease's own cap, micro-credits.
    cap: i64,
    /// Billable GPU-ms and the customer's answer, per window.
    windows: Vec<(u64, Answer)>,
    /// The window during which the customer ends the lease, if it does.
    terminated_in: Option<usize>,
    /// How many windows each settlement covers; the rest go in the final.
    partials: Vec<usize>,
    /// After this many settlements the customer raises the lease's cap to
    /// the second value (the escrow is topped up).
    raise: Option<(usize, i64)>,
    /// After each settlement, the coordinator restarted then, if any.
    restarts: Vec<Option<usize>>,
}

fn plan() -> impl Strategy<Value = LeasePlan> {
    (
        1i64..=9,
        1_000i64..=12_000,
        prop::collection::vec(
            (
                0u64..=WINDOW_MS,
                prop_oneof![
                    3 => Just(Answer::Ack),
                    1 => Just(Answer::Dispute),
                    2 => Just(Answer::Nothing)
                ],
            ),
            1..=10,
        ),
        prop::option::of(0usize..10),
        prop::collection::vec(1usize..=4, 0..=3),
        prop::option::of((0usize..=3, 1i64..=12_000)),
        prop::collection::vec(prop::option::of(0usize..4), 0..=4),
    )
        .prop_map(
            |(price, cap, windows, terminated_in, partials, raise, restarts)| LeasePlan {
                price,
                cap,
                terminated_in: terminated_in.filter(|w| *w < windows.len()),
                windows,
                raise: raise.map(|(after, by)| (after, cap + by)),
                partials,
                restarts,
            },
        )
}

struct Net {
    keys: Vec<Keypair>,
    dirs: Vec<tempfile::TempDir>,
    ledgers: Vec<Ledger<SledStore>>,
    config: CoordinatorConfig,
}

impl Net {
    fn new() -> Self {
        let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        Net {
            keys: samples::coordinators(),
            ledgers: dirs
                .iter()
                .map(|d| Ledger::open(&d.path().join("books")).unwrap())
                .collect(),
            dirs,
            config: CoordinatorConfig {
                set: samples::coordinator_set().unwrap(),
                fee_rate: FeeRate::from_ppm(10_000).unwrap(),
                unacked_timeout_ms: UNACKED_MS,
                admins: Vec::new(),
                review: Default::default(),
                skew_ms: 30_000,
                release_grace_ms: 600_000,
            },
        }
    }

    fn c(&self, i: usize) -> Coordinator<'_, SledStore> {
        Coordinator::new(&self.ledgers[i], &self.keys[i], &self.config)
    }

    /// Stops coordinator `i` and starts it again from its sled files.
    fn restart(&mut self, i: usize) {
        let path = self.dirs[i].path().join("books");
        let stand_in =
            Ledger::with_store(SledStore::temporary().unwrap(), Durability::Flushed).unwrap();
        drop(std::mem::replace(&mut self.ledgers[i], stand_in));
        self.ledgers[i] = Ledger::open(&path).unwrap();
    }

    /// Votes from every member; a certificate from those that voted.
    fn certify<T: Certifiable>(
        &self,
        message: &Signed<T>,
        vote: impl Fn(usize) -> Result<Signed<Vote>, rigmesh_ledger::Refusal>,
    ) -> Option<Certificate<T>> {
        let votes: Vec<Signed<Vote>> = (0..4).filter_map(|i| vote(i).ok()).collect();
        (votes.len() >= 3).then(|| Certificate::assemble(message.clone(), &votes).unwrap())
    }

    fn check(&self) {
        let first = self.c(0).snapshot().unwrap();
        for (i, ledger) in self.ledgers.iter().enumerate() {
            let report = ledger.check_books().unwrap();
            assert_eq!(
                report.totals.held().unwrap(),
                report.totals.external.checked_neg().unwrap(),
                "coordinator {i}: balances + escrow = deposits - withdrawals"
            );
            assert_eq!(self.c(i).snapshot().unwrap(), first, "coordinator {i}");
        }
    }
}

fn now() -> UnixMillis {
    T0.plus_ms(3_600_000)
}

struct Built {
    agreement: Signed<LeaseAgreement>,
    attestations: Vec<Signed<UsageAttestation>>,
    acks: Vec<Signed<UsageAck>>,
    disputes: Vec<Signed<UsageDispute>>,
    terminations: Vec<Signed<LeaseTermination>>,
}

fn build(plan: &LeasePlan, nonce: u64, customer: &Keypair, supplier: &Keypair) -> Built {
    let t = T0.plus_ms(nonce * 100_000);
    let proposal = Signed::sign(
        LeaseProposal {
            version: PROTOCOL_VERSION,
            customer: customer.public(),
            supplier: supplier.public(),
            offer: Id([3; 32]),
            gpu_count: 1,
            price_per_gpu_hour: Credits::from_units(plan.price * 1_000_000),
            hours: 1,
            window_secs: 1,
            nonce,
            created_at: t,
            expires_at: t.plus_ms(60_000),
        },
        customer,
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
        supplier,
    )
    .unwrap();
    let lease = agreement.id().unwrap();
    let mut built = Built {
        agreement,
        attestations: Vec::new(),
        acks: Vec::new(),
        disputes: Vec::new(),
        terminations: Vec::new(),
    };
    let mut prev = Id::ZERO;
    for (seq, (gpu_ms, answer)) in plan.windows.iter().enumerate() {
        let start = t.plus_ms(seq as u64 * WINDOW_MS);
        let a = Signed::sign(
            UsageAttestation {
                version: PROTOCOL_VERSION,
                lease,
                supplier: supplier.public(),
                customer: customer.public(),
                seq: seq as u64,
                prev,
                window_start: start,
                window_end: start.plus_ms(WINDOW_MS),
                gpus: vec![GpuUsage {
                    gpu_index: 0,
                    billable_ms: *gpu_ms,
                    mean_util_bp: 5_000,
                    peak_util_bp: 9_000,
                    peak_memory_mib: 100,
                    energy_mj: 1_000,
                }],
                billable_gpu_ms: *gpu_ms,
                created_at: start.plus_ms(WINDOW_MS),
            },
            supplier,
        )
        .unwrap();
        prev = a.id().unwrap();
        match answer {
            Answer::Ack => built.acks.push(
                Signed::sign(
                    UsageAck {
                        version: PROTOCOL_VERSION,
                        lease,
                        customer: customer.public(),
                        attestation: prev,
                        seq: seq as u64,
                        created_at: start.plus_ms(WINDOW_MS + 10),
                    },
                    customer,
                )
                .unwrap(),
            ),
            Answer::Dispute => built.disputes.push(
                Signed::sign(
                    UsageDispute {
                        version: PROTOCOL_VERSION,
                        lease,
                        customer: customer.public(),
                        attestation: prev,
                        seq: seq as u64,
                        reason: rigmesh_protocol::DisputeReason::NotDelivered,
                        detail: String::new(),
                        created_at: start.plus_ms(WINDOW_MS + 10),
                    },
                    customer,
                )
                .unwrap(),
            ),
            Answer::Nothing => {}
        }
        built.attestations.push(a);
    }
    if let Some(w) = plan.terminated_in {
        built.terminations.push(
            Signed::sign(
                LeaseTermination {
                    version: PROTOCOL_VERSION,
                    lease,
                    customer: customer.public(),
                    supplier: supplier.public(),
                    reason: TerminationReason::CustomerRequest,
                    detail: String::new(),
                    created_at: t.plus_ms(w as u64 * WINDOW_MS + WINDOW_MS / 2),
                },
                customer,
            )
            .unwrap(),
        );
    }
    built
}

/// GPU-ms the rules pay and hold for review in `range` (spec sections 7
/// and 6.1): a window disputed as not delivered is held.
fn payable(plan: &LeasePlan, range: std::ops::Range<usize>) -> (u64, u64) {
    range
        .map(|i| {
            let (gpu_ms, answer) = plan.windows[i];
            let after_end = plan.terminated_in.is_some_and(|w| i > w);
            match answer {
                Answer::Ack => (gpu_ms, 0),
                Answer::Dispute => (0, gpu_ms),
                Answer::Nothing if after_end => (0, 0),
                Answer::Nothing => (gpu_ms, 0),
            }
        })
        .fold((0, 0), |(p, h), (a, b)| (p + a, h + b))
}

/// The customer's escrow order `seq` of `amount` for `agreement`'s lease.
fn escrow_order(
    customer: &Keypair,
    agreement: &Signed<LeaseAgreement>,
    seq: u64,
    amount: i64,
) -> Signed<EscrowOrder> {
    Signed::sign(
        EscrowOrder {
            version: PROTOCOL_VERSION,
            account: customer.public(),
            seq,
            epoch: samples::EPOCH,
            lease: agreement.id().unwrap(),
            supplier: agreement.body.supplier,
            amount: Credits::from_units(amount),
            created_at: now(),
            expires_at: now().plus_ms(600_000),
        },
        customer,
    )
    .unwrap()
}

fn run(plans: Vec<LeasePlan>, account_cap: i64, deposit: i64) {
    let mut net = Net::new();
    let customer = samples::customer();
    let supplier = samples::supplier();
    for ledger in &net.ledgers {
        ledger
            .apply_deposit(
                &Id([1; 32]),
                &customer.public(),
                Credits::from_units(deposit),
                &Id([1; 32]),
                vec![1],
                &rigmesh_ledger::Cause::new(net.keys[0].public(), Id([1; 32]), T0),
            )
            .unwrap();
    }
    let mut committed: i64 = 0;
    let mut seq = 0u64;
    let mut costs = Vec::new();
    for (n, plan) in plans.iter().enumerate() {
        let built = build(plan, n as u64 + 1, &customer, &supplier);
        let lease = built.agreement.id().unwrap();
        let cost = plan.price * 1_000_000; // one GPU-hour
                                           // The customer's rule: the escrow is at most the lease's cap and
                                           // what the account cap leaves.
        let left = account_cap - committed;
        let amount = cost.min(plan.cap).min(left);
        if amount <= 0 {
            continue;
        }
        let order = escrow_order(&customer, &built.agreement, seq, amount);
        let Some(escrow) = net.certify(&order, |i| {
            net.c(i).vote_escrow(&order, &built.agreement, now())
        }) else {
            // Not enough money: nothing moved.
            net.check();
            continue;
        };
        for i in 0..4 {
            assert_eq!(
                net.c(i).apply_escrow(&escrow, now()).unwrap(),
                Applied::Applied
            );
        }
        seq += 1;
        committed += amount;
        net.check();

        let mut first = 0usize;
        let mut settlement_seq = 0u64;
        let mut available = Credits::from_units(amount);
        let mut escrowed = amount;
        let mut cap = plan.cap;
        let mut settled = 0usize;
        let mut chunks = plan.partials.clone();
        loop {
            let remaining = plan.windows.len() - first;
            let take = chunks.first().copied().unwrap_or(remaining);
            let last = remaining <= take || chunks.is_empty();
            let take = if last { remaining } else { take };
            if !chunks.is_empty() {
                chunks.remove(0);
            }
            let range = first..first + take;
            // The cap goes up: the escrow is topped up to what the caps
            // and the lease's cost now allow (never past the account cap).
            if let Some((_, raised)) = plan.raise.filter(|(after, _)| *after == settled) {
                cap = raised;
                let delta = cost.min(raised).min(account_cap - (committed - escrowed)) - escrowed;
                if delta > 0 {
                    let top_up = escrow_order(&customer, &built.agreement, seq, delta);
                    if let Some(certificate) = net.certify(&top_up, |i| {
                        net.c(i).vote_escrow(&top_up, &built.agreement, now())
                    }) {
                        for i in 0..4 {
                            assert_eq!(
                                net.c(i).apply_escrow(&certificate, now()).unwrap(),
                                Applied::Applied
                            );
                        }
                        seq += 1;
                        escrowed += delta;
                        committed += delta;
                        available = available.checked_add(Credits::from_units(delta)).unwrap();
                    }
                    net.check();
                }
            }
            let honest = net
                .c(0)
                .payout(
                    &built.agreement,
                    payable(plan, range.clone()),
                    available,
                    last,
                )
                .unwrap();
            let request = |extra: i64| {
                Signed::sign(
                    SettlementRequest {
                        version: PROTOCOL_VERSION,
                        lease,
                        supplier: supplier.public(),
                        customer: customer.public(),
                        settlement_seq,
                        epoch: samples::EPOCH,
                        escrow: order.id().unwrap(),
                        first_window: range.start as u64,
                        last_window: range.end as u64 - 1,
                        attestation_head: built.attestations[range.end - 1].id().unwrap(),
                        billable_gpu_ms: honest.billable_gpu_ms,
                        supplier_amount: Credits::from_units(honest.supplier.units() + extra),
                        fee: honest.fee,
                        refund: if last {
                            Credits::from_units(honest.refund.units() - extra)
                        } else {
                            honest.refund
                        },
                        held: honest.held,
                        final_settlement: last,
                        created_at: now(),
                    },
                    &supplier,
                )
                .unwrap()
            };
            let previous = (range.start > 0).then(|| built.attestations[range.start - 1].clone());
            let vote_for = |r: &Signed<SettlementRequest>, i: usize| {
                net.c(i).vote_settlement(
                    &SettlementEvidence {
                        request: r,
                        agreement: &built.agreement,
                        attestations: &built.attestations[range.clone()],
                        previous: previous.as_ref(),
                        acks: &built.acks,
                        disputes: &built.disputes,
                        terminations: &built.terminations,
                    },
                    now(),
                )
            };
            // A supplier asking for one micro-credit more gets no vote.
            let greedy = request(1);
            assert!(
                net.certify(&greedy, |i| vote_for(&greedy, i)).is_none(),
                "an overpaying request was certified"
            );
            let fair = request(0);
            let cert = net
                .certify(&fair, |i| vote_for(&fair, i))
                .expect("the honest request is certified");
            for i in 0..4 {
                assert_eq!(
                    net.c(i).apply_settlement(&cert, now()).unwrap(),
                    Applied::Applied
                );
            }
            net.check();
            if let Some(Some(i)) = plan.restarts.get(settled) {
                net.restart(*i);
                net.check();
            }
            settled += 1;
            let paid = honest
                .supplier
                .checked_add(honest.fee)
                .and_then(|p| p.checked_add(honest.held))
                .unwrap();
            available = available.checked_sub(paid).unwrap();
            settlement_seq += 1;
            first = range.end;
            if last {
                break;
            }
        }
        let cost_of_lease = escrowed - available.units();
        assert!(
            cost_of_lease <= cap,
            "lease {n} cost {cost_of_lease} > cap {cap}"
        );
        // What the lease did not cost comes back to the account's cap.
        committed -= available.units();
        costs.push(cost_of_lease);
    }
    let spent: i64 = costs.iter().sum();
    assert!(
        spent <= account_cap,
        "spent {spent} > account cap {account_cap}"
    );
    let balance = net.ledgers[0]
        .balance(&Account::User(customer.public()))
        .unwrap();
    assert_eq!(
        balance.units(),
        deposit - spent,
        "the customer paid exactly the costs"
    );
    for ledger in &net.ledgers {
        assert_eq!(
            ledger.escrowed_by(&customer.public()).unwrap(),
            Credits::ZERO
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn caps_hold_on_every_coordinator(
        plans in prop::collection::vec(plan(), 1..=4),
        account_cap in 2_000i64..=40_000,
        deposit in 1_000i64..=60_000,
    ) {
        run(plans, account_cap, deposit);
    }
}
