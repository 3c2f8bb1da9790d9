//! Four coordinators (f = 1) following specs/settlement.md over their own
//! ledgers: escrow and settlement certificates form from honest votes only,
//! equivocation and a Byzantine member cannot double-spend or certify a
//! wrong payout, and every honest coordinator ends with the same books.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use rigmesh_ledger::reputation::{self, Side, SCALE};
use rigmesh_ledger::{
    Account, Applied, Coordinator, CoordinatorConfig, Decided, FeeRate, Ledger, MemoryStore,
    ReviewRules, SettlementEvidence,
};
use rigmesh_protocol::samples::{self, T0};
use rigmesh_protocol::{
    Approval, Certificate, CheckedCertificates, Credits, Deposit, EscrowCertificate, EscrowOrder,
    Id, Keypair, Kind, SettlementRequest, Signed, UnixMillis, Vote,
};

const UNACKED_MS: u64 = 120_000;

struct Net {
    keys: Vec<Keypair>,
    ledgers: Vec<Ledger<MemoryStore>>,
    config: CoordinatorConfig,
}

impl Net {
    fn new() -> Self {
        let keys = samples::coordinators();
        let ledgers = (0..4).map(|_| Ledger::in_memory().unwrap()).collect();
        let config = CoordinatorConfig {
            set: samples::coordinator_set().unwrap(),
            fee_rate: FeeRate::from_ppm(10_000).unwrap(),
            unacked_timeout_ms: UNACKED_MS,
            admins: vec![Keypair::from_seed([0x41; 32]).public()],
            review: Default::default(),
            skew_ms: 30_000,
            release_grace_ms: 600_000,
        };
        Net {
            keys,
            ledgers,
            config,
        }
    }

    fn c(&self, i: usize) -> Coordinator<'_, MemoryStore> {
        Coordinator::new(&self.ledgers[i], &self.keys[i], &self.config)
    }

    fn deposit_everywhere(&self, account: &Keypair, units: i64) {
        let subject = Id(*blake3::hash(&units.to_le_bytes()).as_bytes());
        for ledger in &self.ledgers {
            let cause = rigmesh_ledger::Cause::new(self.keys[0].public(), subject, T0);
            ledger
                .apply_deposit(
                    &subject,
                    &account.public(),
                    Credits::from_units(units),
                    &subject,
                    vec![1],
                    &cause,
                )
                .unwrap();
        }
    }

    fn books(&self, i: usize) -> BTreeMap<String, Credits> {
        self.c(i).snapshot().unwrap()
    }

    /// Checks the money invariant on each listed coordinator and that they
    /// all hold the same balances.
    fn assert_agree(&self, which: &[usize]) {
        let first = self.books(which[0]);
        for &i in which {
            let report = self.ledgers[i].check_books().unwrap();
            let external = report.totals.external.checked_neg().unwrap();
            assert_eq!(report.totals.held().unwrap(), external, "coordinator {i}");
            assert_eq!(self.books(i), first, "coordinator {i} disagrees");
        }
    }
}

fn now() -> UnixMillis {
    T0.plus_ms(70_000)
}

fn collect<T: rigmesh_protocol::Certifiable>(
    message: &Signed<T>,
    votes: Vec<Signed<Vote>>,
) -> Certificate<T> {
    Certificate::assemble(message.clone(), &votes).unwrap()
}

fn order(seq: u64, amount: i64, nonce: u64) -> Signed<EscrowOrder> {
    let mut body = samples::escrow_order().unwrap().body;
    body.seq = seq;
    body.amount = Credits::from_units(amount);
    body.created_at = body.created_at.plus_ms(nonce);
    Signed::sign(body, &samples::customer()).unwrap()
}

fn funded(net: &Net) -> EscrowCertificate {
    net.deposit_everywhere(&samples::customer(), 50_000_000);
    let agreement = samples::lease_agreement().unwrap();
    let order = samples::escrow_order().unwrap();
    let votes = (0..4)
        .map(|i| net.c(i).vote_escrow(&order, &agreement, now()).unwrap())
        .collect::<Vec<_>>();
    let cert = collect(&order, votes[..3].to_vec());
    for i in 0..4 {
        assert_eq!(
            net.c(i).apply_escrow(&cert, now()).unwrap(),
            Applied::Applied
        );
    }
    cert
}

/// Every coordinator's vote for `request`, the sample lease's first
/// window with its attestation and ack.
fn settlement_votes(net: &Net, request: &Signed<SettlementRequest>) -> Vec<Signed<Vote>> {
    let agreement = samples::lease_agreement().unwrap();
    let attestations = [samples::usage_attestation().unwrap()];
    let acks = [samples::usage_ack().unwrap()];
    let evidence = SettlementEvidence {
        request,
        agreement: &agreement,
        attestations: &attestations,
        previous: None,
        acks: &acks,
        disputes: &[],
        terminations: &[],
    };
    (0..4)
        .map(|i| net.c(i).vote_settlement(&evidence, now()).unwrap())
        .collect()
}

/// The sample lease's one window settled finally: the request, which
/// refunds the rest of the first escrow, and its evidence.
struct FinalWindow {
    request: Signed<SettlementRequest>,
    agreement: Signed<rigmesh_protocol::LeaseAgreement>,
    attestations: [Signed<rigmesh_protocol::UsageAttestation>; 1],
    acks: [Signed<rigmesh_protocol::UsageAck>; 1],
}

impl FinalWindow {
    fn new() -> Self {
        let mut body = samples::settlement_request().unwrap().body;
        body.final_settlement = true;
        body.refund = Credits::from_units(19_920_000 - 71_899 - 726);
        FinalWindow {
            request: Signed::sign(body, &samples::supplier()).unwrap(),
            agreement: samples::lease_agreement().unwrap(),
            attestations: [samples::usage_attestation().unwrap()],
            acks: [samples::usage_ack().unwrap()],
        }
    }

    fn evidence(&self) -> SettlementEvidence<'_> {
        SettlementEvidence {
            request: &self.request,
            agreement: &self.agreement,
            attestations: &self.attestations,
            previous: None,
            acks: &self.acks,
            disputes: &[],
            terminations: &[],
        }
    }
}

#[test]
fn escrow_and_settlement_certify_and_every_coordinator_agrees() {
    let net = Net::new();
    funded(&net);
    let customer = Account::User(samples::customer().public());
    assert_eq!(
        net.ledgers[0].balance(&customer).unwrap(),
        Credits::from_units(50_000_000 - 19_920_000)
    );

    let request = samples::settlement_request().unwrap();
    let votes = settlement_votes(&net, &request);
    let cert = collect(&request, votes[1..].to_vec());
    for i in 0..4 {
        assert_eq!(
            net.c(i).apply_settlement(&cert, now()).unwrap(),
            Applied::Applied
        );
        assert_eq!(
            net.c(i).apply_settlement(&cert, now()).unwrap(),
            Applied::AlreadyApplied
        );
    }
    let supplier = Account::User(samples::supplier().public());
    assert_eq!(
        net.ledgers[2].balance(&supplier).unwrap(),
        Credits::from_units(71_899)
    );
    assert_eq!(
        net.ledgers[2].balance(&Account::Fees).unwrap(),
        Credits::from_units(726)
    );
    net.assert_agree(&[0, 1, 2, 3]);

    // Reputation evidence came with the certificate: one window, acked,
    // 105 of 120 possible GPU-seconds delivered (GPU 5 dropped out).
    let supplier_key = samples::supplier().public();
    let e = net.ledgers[1]
        .evidence(&supplier_key, Side::Supplier, now())
        .unwrap();
    assert_eq!(e.windows, SCALE);
    assert_eq!(e.short, SCALE);
    assert_eq!(reputation::supplier_score(&e), 8_750);
    let customer_key = samples::customer().public();
    let c = net.ledgers[1]
        .evidence(&customer_key, Side::Customer, now())
        .unwrap();
    assert_eq!(reputation::customer_score(&c), 10_000);
}

#[test]
fn an_equivocating_customer_cannot_get_both_orders_certified() {
    let net = Net::new();
    net.deposit_everywhere(&samples::customer(), 25_000_000);
    let agreement = samples::lease_agreement().unwrap();
    let a = order(0, 19_920_000, 0);
    let b = order(0, 20_000_000, 1);
    // Coordinators 0 and 1 see `a` first, 2 sees `b` first; 3 is Byzantine
    // and votes for both.
    let mut votes_a = vec![];
    let mut votes_b = vec![];
    for i in 0..3 {
        let (first, second) = if i < 2 { (&a, &b) } else { (&b, &a) };
        let vote = net.c(i).vote_escrow(first, &agreement, now()).unwrap();
        let refused = net.c(i).vote_escrow(second, &agreement, now()).unwrap_err();
        assert_eq!(refused.code, "conflicting_order");
        if i < 2 {
            votes_a.push(vote)
        } else {
            votes_b.push(vote)
        }
    }
    let liar = &net.keys[3];
    for (m, votes) in [(&a, &mut votes_a), (&b, &mut votes_b)] {
        votes.push(Signed::sign(Certificate::vote_for(m, liar.public()).unwrap(), liar).unwrap());
    }
    let cert_a = collect(&a, votes_a);
    let cert_b = collect(&b, votes_b);
    assert!(cert_a.verify(&net.config.set).is_ok());
    assert!(
        cert_b.verify(&net.config.set).is_err(),
        "two votes are no quorum"
    );
    for i in 0..3 {
        assert!(net.c(i).apply_escrow(&cert_b, now()).is_err());
        assert_eq!(
            net.c(i).apply_escrow(&cert_a, now()).unwrap(),
            Applied::Applied
        );
    }
    let customer = Account::User(samples::customer().public());
    assert_eq!(
        net.ledgers[0].balance(&customer).unwrap(),
        Credits::from_units(25_000_000 - 19_920_000)
    );
    net.assert_agree(&[0, 1, 2]);
}

/// An account's vote locks do not pile up with its debits: once debit
/// s + 1 is applied at a member, the member's lock of debit s is gone
/// and the lock of s + 1 stays. Debit s's order sent again is refused as
/// a used sequence number and moves nothing; the latest one sent again
/// gets the same vote as before.
#[test]
fn a_members_lock_of_a_debit_goes_once_the_next_debit_is_applied() {
    let net = Net::new();
    let first = funded(&net);
    let customer = samples::customer().public();
    let agreement = samples::lease_agreement().unwrap();
    let mut latest = None;
    for seq in 1..4 {
        // A top-up of the lease's escrow: the account's next debit.
        let top_up = order(seq, 1_000_000, seq);
        let votes: Vec<_> = (0..4)
            .map(|i| net.c(i).vote_escrow(&top_up, &agreement, now()).unwrap())
            .collect();
        let cert = collect(&top_up, votes[..3].to_vec());
        for i in 0..4 {
            assert_eq!(
                net.ledgers[i].debit_lock(&customer, seq - 1).unwrap(),
                Some(if seq == 1 {
                    first.message.id().unwrap()
                } else {
                    order(seq - 1, 1_000_000, seq - 1).id().unwrap()
                }),
                "member {i} holds debit {}'s lock until {seq} is applied",
                seq - 1
            );
            assert_eq!(
                net.c(i).apply_escrow(&cert, now()).unwrap(),
                Applied::Applied
            );
            assert_eq!(net.ledgers[i].debit_lock(&customer, seq - 1).unwrap(), None);
            assert_eq!(
                net.ledgers[i].debit_lock(&customer, seq).unwrap(),
                Some(top_up.id().unwrap())
            );
        }
        latest = Some((top_up, votes));
    }
    net.assert_agree(&[0, 1, 2, 3]);
    let books = net.books(0);

    // The first order again, and a top-up at an old sequence number that
    // no member ever voted for: both refused, nothing moves.
    for again in [first.message.clone(), order(1, 5_000_000, 99)] {
        for i in 0..4 {
            let refused = net.c(i).vote_escrow(&again, &agreement, now()).unwrap_err();
            assert_eq!(refused.code, "seq_used", "{refused}");
        }
    }
    assert_eq!(net.books(0), books);
    net.assert_agree(&[0, 1, 2, 3]);

    // The latest debit's order again: the same vote, bit for bit.
    let (top_up, votes) = latest.unwrap();
    for (i, vote) in votes.iter().enumerate() {
        assert_eq!(
            &net.c(i).vote_escrow(&top_up, &agreement, now()).unwrap(),
            vote
        );
    }
}

#[test]
fn no_wrong_payout_is_certified() {
    let net = Net::new();
    funded(&net);
    let agreement = samples::lease_agreement().unwrap();
    let attestations = [samples::usage_attestation().unwrap()];
    let acks = [samples::usage_ack().unwrap()];
    let mut greedy = samples::settlement_request().unwrap().body;
    greedy.supplier_amount = Credits::from_units(1_000_000);
    let greedy = Signed::sign(greedy, &samples::supplier()).unwrap();
    let evidence = SettlementEvidence {
        request: &greedy,
        agreement: &agreement,
        attestations: &attestations,
        previous: None,
        acks: &acks,
        disputes: &[],
        terminations: &[],
    };
    for i in 0..3 {
        let refusal = net.c(i).vote_settlement(&evidence, now()).unwrap_err();
        assert_eq!(refusal.code, "payout_mismatch");
        // The refusal is in the audit chain and nothing else moved.
        assert!(net.ledgers[i]
            .settlement_lock(&greedy.body.lease, 0)
            .unwrap()
            .is_none());
    }
    // Only the Byzantine member signs it: no certificate.
    let liar = &net.keys[3];
    let vote = Signed::sign(Certificate::vote_for(&greedy, liar.public()).unwrap(), liar).unwrap();
    let cert = collect(&greedy, vec![vote]);
    assert_eq!(
        net.c(0).apply_settlement(&cert, now()).unwrap_err().code,
        "too_few_votes"
    );
    net.assert_agree(&[0, 1, 2, 3]);
}

#[test]
fn disputed_and_unanswered_windows() {
    let net = Net::new();
    funded(&net);
    let agreement = samples::lease_agreement().unwrap();
    let attestations = [samples::usage_attestation().unwrap()];
    let request = samples::settlement_request().unwrap();
    let no_answer = SettlementEvidence {
        request: &request,
        agreement: &agreement,
        attestations: &attestations,
        previous: None,
        acks: &[],
        disputes: &[],
        terminations: &[],
    };
    assert_eq!(
        net.c(0)
            .vote_settlement(&no_answer, now())
            .unwrap_err()
            .code,
        "window_not_due"
    );
    // Past the timeout the window counts as accepted.
    let later = attestations[0].body.window_end.plus_ms(UNACKED_MS);
    let mut body = request.body.clone();
    body.created_at = later;
    let timely = Signed::sign(body, &samples::supplier()).unwrap();
    let evidence = SettlementEvidence {
        request: &timely,
        ..no_answer
    };
    assert!(net.c(0).vote_settlement(&evidence, later).is_ok());

    // A dispute whose reason the attestation's own checks refute (it bills
    // no more than the window allows) is decided by rule: paid in full.
    let refuted = [samples::usage_dispute().unwrap()];
    let evidence = SettlementEvidence {
        request: &request,
        disputes: &refuted,
        ..no_answer
    };
    assert!(net.c(1).vote_settlement(&evidence, now()).is_ok());

    // A dispute no rule decides holds the window's charge for review: paid
    // nothing, and not refunded either.
    let mut dispute = samples::usage_dispute().unwrap().body;
    dispute.reason = rigmesh_protocol::DisputeReason::NotDelivered;
    let disputes = [Signed::sign(dispute, &samples::customer()).unwrap()];
    let mut body = request.body.clone();
    body.billable_gpu_ms = 0;
    body.supplier_amount = Credits::ZERO;
    body.fee = Credits::ZERO;
    let paid_nothing = body.clone();
    body.held = Credits::from_units(72_625);
    let holding = Signed::sign(body, &samples::supplier()).unwrap();
    let evidence = SettlementEvidence {
        request: &holding,
        disputes: &disputes,
        ..no_answer
    };
    assert!(net.c(2).vote_settlement(&evidence, now()).is_ok());
    for wrong in [
        Signed::sign(paid_nothing, &samples::supplier()).unwrap(),
        request.clone(),
    ] {
        let evidence = SettlementEvidence {
            request: &wrong,
            disputes: &disputes,
            ..no_answer
        };
        assert_eq!(
            net.c(3).vote_settlement(&evidence, now()).unwrap_err().code,
            "payout_mismatch"
        );
    }
}

#[test]
fn overdraws_and_gaps_are_refused_and_early_certificates_wait() {
    let net = Net::new();
    net.deposit_everywhere(&samples::customer(), 10_000_000);
    let agreement = samples::lease_agreement().unwrap();
    let big = samples::escrow_order().unwrap();
    assert_eq!(
        net.c(0)
            .vote_escrow(&big, &agreement, now())
            .unwrap_err()
            .code,
        "insufficient_balance"
    );
    assert!(net.ledgers[0]
        .debit_lock(&big.body.account, 0)
        .unwrap()
        .is_none());
    let ahead = order(1, 1_000_000, 0);
    assert_eq!(
        net.c(0)
            .vote_escrow(&ahead, &agreement, now())
            .unwrap_err()
            .code,
        "seq_ahead"
    );

    // Coordinator 3 misses the escrow, then sees the settlement first: it
    // holds it, and applies both once the escrow arrives.
    net.deposit_everywhere(&samples::customer(), 20_000_000);
    let order = samples::escrow_order().unwrap();
    let votes = (0..3)
        .map(|i| net.c(i).vote_escrow(&order, &agreement, now()).unwrap())
        .collect();
    let escrow = collect(&order, votes);
    for i in 0..3 {
        net.c(i).apply_escrow(&escrow, now()).unwrap();
    }
    let request: Signed<SettlementRequest> = samples::settlement_request().unwrap();
    let attestations = [samples::usage_attestation().unwrap()];
    let acks = [samples::usage_ack().unwrap()];
    let evidence = SettlementEvidence {
        request: &request,
        agreement: &agreement,
        attestations: &attestations,
        previous: None,
        acks: &acks,
        disputes: &[],
        terminations: &[],
    };
    let votes = (0..3)
        .map(|i| net.c(i).vote_settlement(&evidence, now()).unwrap())
        .collect();
    let settlement = collect(&request, votes);
    for i in 0..3 {
        net.c(i).apply_settlement(&settlement, now()).unwrap();
    }
    assert!(matches!(
        net.c(3).apply_settlement(&settlement, now()).unwrap(),
        Applied::Pending(_)
    ));
    assert_eq!(net.ledgers[3].pending_certificates().unwrap().len(), 1);
    assert_eq!(
        net.c(3).apply_escrow(&escrow, now()).unwrap(),
        Applied::Applied
    );
    assert!(net.ledgers[3].pending_certificates().unwrap().is_empty());
    net.assert_agree(&[0, 1, 2, 3]);
    // Coordinator 3 did not vote for the settlement: it counts the
    // certificate's own numbers only, the voters what they checked.
    let supplier_key = samples::supplier().public();
    let score = |i: usize| {
        reputation::supplier_score(
            &net.ledgers[i]
                .evidence(&supplier_key, Side::Supplier, now())
                .unwrap(),
        )
    };
    assert_eq!(score(3), 10_000);
    assert_eq!(score(0), 8_750);
}

#[test]
fn a_termination_makes_later_unanswered_windows_unpayable_but_not_acked_ones() {
    let net = Net::new();
    funded(&net);
    let agreement = samples::lease_agreement().unwrap();
    let attestations = [samples::usage_attestation().unwrap()];
    let window_start = attestations[0].body.window_start;
    let later = attestations[0].body.window_end.plus_ms(UNACKED_MS);
    let terminated_at = |at: UnixMillis, by: &Keypair| {
        let mut body = samples::lease_termination().unwrap().body;
        body.customer = by.public();
        body.created_at = at;
        Signed::sign(body, by).unwrap()
    };
    let before = [terminated_at(
        UnixMillis(window_start.0 - 1),
        &samples::customer(),
    )];
    // The supplier asks for the whole window, unanswered past the timeout.
    let mut body = samples::settlement_request().unwrap().body;
    body.created_at = later;
    let full = Signed::sign(body.clone(), &samples::supplier()).unwrap();
    body.billable_gpu_ms = 0;
    body.supplier_amount = Credits::ZERO;
    body.fee = Credits::ZERO;
    let nothing = Signed::sign(body, &samples::supplier()).unwrap();
    let unanswered = SettlementEvidence {
        request: &full,
        agreement: &agreement,
        attestations: &attestations,
        previous: None,
        acks: &[],
        disputes: &[],
        terminations: &before,
    };
    // The window started after the customer ended the lease: it is never
    // paid by the timeout, so only the request that pays nothing is voted.
    let refused = net.c(0).vote_settlement(&unanswered, later).unwrap_err();
    assert_eq!(refused.code, "payout_mismatch", "{refused}");
    assert!(net
        .c(0)
        .vote_settlement(
            &SettlementEvidence {
                request: &nothing,
                ..unanswered
            },
            later
        )
        .is_ok());
    // A window the customer acked is paid, termination or not.
    let acks = [samples::usage_ack().unwrap()];
    assert!(net
        .c(1)
        .vote_settlement(
            &SettlementEvidence {
                acks: &acks,
                ..unanswered
            },
            later
        )
        .is_ok());
    // A termination made while the window ran leaves it payable.
    let during = [terminated_at(window_start, &samples::customer())];
    assert!(net
        .c(2)
        .vote_settlement(
            &SettlementEvidence {
                terminations: &during,
                ..unanswered
            },
            later
        )
        .is_ok());
    // Nobody but the lease's customer can end it.
    let forged = [terminated_at(
        UnixMillis(window_start.0 - 1),
        &samples::supplier(),
    )];
    assert!(net
        .c(3)
        .vote_settlement(
            &SettlementEvidence {
                terminations: &forged,
                ..unanswered
            },
            later
        )
        .is_ok());
}

#[test]
fn a_customer_releases_the_escrow_of_a_lease_its_supplier_never_settled() {
    use rigmesh_ledger::ReleaseEvidence;
    use rigmesh_protocol::EscrowRelease;
    let net = Net::new();
    funded(&net);
    let agreement = samples::lease_agreement().unwrap();
    let attestations = [samples::usage_attestation().unwrap()];
    let acks = [samples::usage_ack().unwrap()];
    let release = samples::escrow_release().unwrap();
    let due = agreement.body.ends_at.plus_ms(net.config.release_grace_ms);
    let evidence = ReleaseEvidence {
        release: &release,
        agreement: &agreement,
        attestations: &attestations,
        previous: None,
        acks: &acks,
        disputes: &[],
        terminations: &[],
    };
    // While the supplier may still settle, no release.
    let early = net
        .c(0)
        .vote_release(&evidence, due.minus_ms(1))
        .unwrap_err();
    assert_eq!(early.code, "release_not_due", "{early}");
    // A release that leaves out the window the customer acked would take
    // back what the supplier earned.
    let mut body = release.body.clone();
    body.windows = 0;
    body.attestation_head = Id::ZERO;
    body.billable_gpu_ms = 0;
    body.supplier_amount = Credits::ZERO;
    body.fee = Credits::ZERO;
    body.refund = Credits::from_units(19_920_000);
    let nothing = Signed::sign(body, &samples::customer()).unwrap();
    let left_out = net
        .c(1)
        .vote_release(
            &ReleaseEvidence {
                release: &nothing,
                attestations: &[],
                ..evidence
            },
            due,
        )
        .unwrap_err();
    assert_eq!(left_out.code, "acked_window_left_out", "{left_out}");
    // One that pays the supplier less than the rules do gets no vote.
    let mut body = release.body.clone();
    body.supplier_amount = Credits::from_units(1);
    body.refund = Credits::from_units(19_920_000 - 727);
    let stingy = Signed::sign(body, &samples::customer()).unwrap();
    let refused = net
        .c(2)
        .vote_release(
            &ReleaseEvidence {
                release: &stingy,
                ..evidence
            },
            due,
        )
        .unwrap_err();
    assert_eq!(refused.code, "payout_mismatch", "{refused}");

    // The release the rules pay is certified and settles the lease.
    let votes = (0..4)
        .map(|i| net.c(i).vote_release(&evidence, due).unwrap())
        .collect::<Vec<_>>();
    let cert: Certificate<EscrowRelease> = collect(&release, votes[..3].to_vec());
    for i in 0..4 {
        assert_eq!(
            net.c(i).apply_release(&cert, due).unwrap(),
            Applied::Applied
        );
        assert_eq!(
            net.c(i).apply_release(&cert, due).unwrap(),
            Applied::AlreadyApplied
        );
    }
    net.assert_agree(&[0, 1, 2, 3]);
    let lease = agreement.id().unwrap();
    for ledger in &net.ledgers {
        assert!(ledger.lease_book(&lease).unwrap().unwrap().closed);
        assert_eq!(
            ledger
                .balance(&Account::User(samples::supplier().public()))
                .unwrap(),
            Credits::from_units(71_899)
        );
        assert_eq!(
            ledger
                .balance(&Account::User(samples::customer().public()))
                .unwrap(),
            Credits::from_units(50_000_000 - 72_625)
        );
        assert_eq!(
            ledger.escrowed_by(&samples::customer().public()).unwrap(),
            Credits::ZERO
        );
    }
    // The supplier's late settlement of the same window is refused: the
    // lease is closed, nothing is paid twice.
    let request = samples::settlement_request().unwrap();
    let late = net
        .c(0)
        .vote_settlement(
            &SettlementEvidence {
                request: &request,
                agreement: &agreement,
                attestations: &attestations,
                previous: None,
                acks: &acks,
                disputes: &[],
                terminations: &[],
            },
            due,
        )
        .unwrap_err();
    assert_eq!(late.code, "lease_closed", "{late}");
}

fn admin_deposit(admin: &Keypair, units: i64, reference: &str, nonce: u64) -> Signed<Deposit> {
    let mut body = samples::deposit().unwrap().body;
    body.admin = admin.public();
    body.amount = Credits::from_units(units);
    body.reference = reference.into();
    body.created_at = body.created_at.plus_ms(nonce);
    Signed::sign(body, admin).unwrap()
}

fn decision(admin: &Keypair, kind: Kind, subject: Id, approve: bool) -> Signed<Approval> {
    Signed::sign(
        Approval {
            version: rigmesh_protocol::PROTOCOL_VERSION,
            epoch: samples::EPOCH,
            admin: admin.public(),
            subject_kind: kind,
            subject,
            approve,
            created_at: now(),
        },
        admin,
    )
    .unwrap()
}

fn reviewed_net() -> Net {
    let mut net = Net::new();
    net.config.admins = vec![samples::admin().public(), samples::second_admin().public()];
    net.config.review = ReviewRules {
        deposit_approval_above: Some(Credits::from_units(100_000_000)),
        withdrawal_review_above: Some(Credits::from_units(5_000_000)),
        review_new_destinations: false,
    };
    net
}

fn customer_balance(net: &Net, i: usize) -> Credits {
    net.ledgers[i]
        .balance(&Account::User(samples::customer().public()))
        .unwrap()
}

#[test]
fn a_deposit_reference_credits_once_and_a_retry_is_idempotent() {
    let net = reviewed_net();
    let admin = samples::admin();
    let first = admin_deposit(&admin, 7_000_000, "wire 42", 0);
    let again = admin_deposit(&admin, 7_000_000, "wire 42", 1);
    for i in 0..4 {
        assert_eq!(
            net.c(i).apply_deposit(&first, now()).unwrap(),
            Applied::Applied
        );
        // The same signed deposit again (a retry after a timeout).
        assert_eq!(
            net.c(i).apply_deposit(&first, now()).unwrap(),
            Applied::AlreadyApplied
        );
        // Another deposit that reuses the reference.
        let refused = net.c(i).apply_deposit(&again, now()).unwrap_err();
        assert_eq!(refused.code, rigmesh_ledger::REFERENCE_USED);
        assert_eq!(customer_balance(&net, i), Credits::from_units(7_000_000));
    }
    // Another admin key's reference is its own.
    let other = admin_deposit(&samples::second_admin(), 1_000_000, "wire 42", 2);
    assert_eq!(
        net.c(0).apply_deposit(&other, now()).unwrap(),
        Applied::Applied
    );
    assert_eq!(customer_balance(&net, 0), Credits::from_units(8_000_000));
}

#[test]
fn a_large_deposit_waits_for_a_second_admin_and_its_own_admin_cannot_approve_it() {
    let net = reviewed_net();
    let admin = samples::admin();
    let big = admin_deposit(&admin, 500_000_000, "wire 43", 0);
    let id = big.id().unwrap();
    for i in 0..4 {
        let held = net.c(i).apply_deposit(&big, now()).unwrap();
        assert!(matches!(held, Applied::Pending(_)), "{held:?}");
        // Held: the reference is taken, nothing is credited.
        let reuse = admin_deposit(&admin, 1_000_000, "wire 43", 9);
        assert_eq!(
            net.c(i).apply_deposit(&reuse, now()).unwrap_err().code,
            rigmesh_ledger::REFERENCE_USED
        );
        assert_eq!(customer_balance(&net, i), Credits::ZERO);
        let own = net
            .c(i)
            .decide(&decision(&admin, Kind::Deposit, id, true), now())
            .unwrap_err();
        assert_eq!(own.code, "same_admin");
        assert_eq!(customer_balance(&net, i), Credits::ZERO);
        let stranger = Keypair::from_seed([0x77; 32]);
        let not_admin = net
            .c(i)
            .decide(&decision(&stranger, Kind::Deposit, id, true), now())
            .unwrap_err();
        assert_eq!(not_admin.code, "not_admin");
    }
    let approval = decision(&samples::second_admin(), Kind::Deposit, id, true);
    for i in 0..4 {
        assert_eq!(
            net.c(i).decide(&approval, now()).unwrap(),
            Decided::Deposit(Applied::Applied)
        );
        assert_eq!(
            net.c(i).decide(&approval, now()).unwrap(),
            Decided::Deposit(Applied::AlreadyApplied)
        );
        assert_eq!(customer_balance(&net, i), Credits::from_units(500_000_000));
        assert_eq!(
            net.c(i).apply_deposit(&big, now()).unwrap(),
            Applied::AlreadyApplied
        );
    }
    net.assert_agree(&[0, 1, 2, 3]);
}

#[test]
fn a_large_withdrawal_gets_no_vote_until_an_admin_approves_it() {
    let net = reviewed_net();
    net.deposit_everywhere(&samples::customer(), 50_000_000);
    let mut body = samples::withdrawal().unwrap().body;
    body.seq = 0;
    body.amount = Credits::from_units(20_000_000);
    body.created_at = now();
    body.expires_at = now().plus_ms(600_000);
    let withdrawal = Signed::sign(body, &samples::customer()).unwrap();
    let id = withdrawal.id().unwrap();
    for i in 0..4 {
        let held = net.c(i).vote_withdrawal(&withdrawal, now()).unwrap_err();
        assert_eq!(held.code, rigmesh_ledger::HELD_FOR_REVIEW);
        assert_eq!(
            net.ledgers[i]
                .debit_lock(&withdrawal.body.account, 0)
                .unwrap(),
            None
        );
        let listed = net.ledgers[i]
            .awaiting_review(rigmesh_ledger::CertificateKind::Withdrawal, 10)
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, id);
    }
    let approval = decision(&samples::admin(), Kind::Withdrawal, id, true);
    let votes: Vec<_> = (0..3)
        .map(|i| match net.c(i).decide(&approval, now()).unwrap() {
            Decided::Withdrawal(vote) => vote,
            other => panic!("{other:?}"),
        })
        .collect();
    let cert = collect(&withdrawal, votes);
    for i in 0..4 {
        assert_eq!(
            net.c(i).apply_withdrawal(&cert, now()).unwrap(),
            Applied::Applied
        );
        assert_eq!(customer_balance(&net, i), Credits::from_units(30_000_000));
    }
    // A rejected one is dropped and never voted for.
    let mut body = withdrawal.body.clone();
    body.seq = 1;
    let second = Signed::sign(body, &samples::customer()).unwrap();
    assert_eq!(
        net.c(0).vote_withdrawal(&second, now()).unwrap_err().code,
        rigmesh_ledger::HELD_FOR_REVIEW
    );
    let reject = decision(
        &samples::admin(),
        Kind::Withdrawal,
        second.id().unwrap(),
        false,
    );
    assert_eq!(net.c(0).decide(&reject, now()).unwrap(), Decided::Rejected);
    assert!(net.ledgers[0]
        .awaiting_review(rigmesh_ledger::CertificateKind::Withdrawal, 10)
        .unwrap()
        .is_empty());
    net.assert_agree(&[0, 1, 2, 3]);
}

#[test]
fn a_withdrawal_to_a_new_destination_waits_and_a_used_one_does_not() {
    let mut net = reviewed_net();
    net.config.review.withdrawal_review_above = None;
    net.config.review.review_new_destinations = true;
    net.deposit_everywhere(&samples::customer(), 50_000_000);
    let withdrawal = |seq: u64| {
        let mut body = samples::withdrawal().unwrap().body;
        body.seq = seq;
        body.amount = Credits::from_units(1_000_000);
        body.created_at = now();
        body.expires_at = now().plus_ms(600_000);
        Signed::sign(body, &samples::customer()).unwrap()
    };
    let first = withdrawal(0);
    assert_eq!(
        net.c(0).vote_withdrawal(&first, now()).unwrap_err().code,
        rigmesh_ledger::HELD_FOR_REVIEW
    );
    let approval = decision(
        &samples::admin(),
        Kind::Withdrawal,
        first.id().unwrap(),
        true,
    );
    let votes: Vec<_> = (0..3)
        .map(|i| {
            let _ = net.c(i).vote_withdrawal(&first, now());
            match net.c(i).decide(&approval, now()).unwrap() {
                Decided::Withdrawal(vote) => vote,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    let cert = collect(&first, votes);
    for i in 0..4 {
        net.c(i).apply_withdrawal(&cert, now()).unwrap();
    }
    // The destination is known now: the next withdrawal to it is voted for.
    net.c(0).vote_withdrawal(&withdrawal(1), now()).unwrap();
}

#[test]
fn refusals_write_nothing() {
    let net = reviewed_net();
    let before = net.ledgers[0].audit_len().unwrap();
    let stranger = Keypair::from_seed([0x77; 32]);
    for n in 0..50 {
        let forged = admin_deposit(&stranger, 1_000_000, &format!("forged {n}"), n);
        assert_eq!(
            net.c(0).apply_deposit(&forged, now()).unwrap_err().code,
            "not_admin"
        );
    }
    assert_eq!(net.ledgers[0].audit_len().unwrap(), before);
    // An accepted deposit is audited.
    net.c(0)
        .apply_deposit(&admin_deposit(&samples::admin(), 1, "ok", 0), now())
        .unwrap();
    assert!(net.ledgers[0].audit_len().unwrap() > before);
}

#[test]
fn an_account_has_one_withdrawal_held_per_seq_until_it_expires() {
    let net = reviewed_net();
    net.deposit_everywhere(&samples::customer(), 50_000_000);
    let withdrawal = |nonce: u64| {
        let mut body = samples::withdrawal().unwrap().body;
        body.seq = 0;
        body.amount = Credits::from_units(20_000_000);
        body.created_at = now().plus_ms(nonce);
        body.expires_at = now().plus_ms(600_000);
        Signed::sign(body, &samples::customer()).unwrap()
    };
    let first = withdrawal(0);
    let c = net.c(0);
    assert_eq!(
        c.vote_withdrawal(&first, now()).unwrap_err().code,
        rigmesh_ledger::HELD_FOR_REVIEW
    );
    // The same one again is the same answer; another at the seq is not held.
    assert_eq!(
        c.vote_withdrawal(&first, now()).unwrap_err().code,
        rigmesh_ledger::HELD_FOR_REVIEW
    );
    for nonce in 1..20 {
        assert_eq!(
            c.vote_withdrawal(&withdrawal(nonce), now())
                .unwrap_err()
                .code,
            "conflicting_order"
        );
    }
    let held = || {
        net.ledgers[0]
            .awaiting_review(rigmesh_ledger::CertificateKind::Withdrawal, 100)
            .unwrap()
    };
    assert_eq!(held().len(), 1);
    // Once the first has expired, a new one takes its place.
    let later = now().plus_ms(700_000);
    let mut body = withdrawal(0).body;
    body.created_at = later;
    body.expires_at = later.plus_ms(600_000);
    let second = Signed::sign(body, &samples::customer()).unwrap();
    assert_eq!(
        c.vote_withdrawal(&second, later).unwrap_err().code,
        rigmesh_ledger::HELD_FOR_REVIEW
    );
    assert_eq!(held().len(), 1);
    assert_eq!(held()[0].0, second.id().unwrap());
    // Rejected, it frees the seq for the next one.
    let reject = decision(
        &samples::admin(),
        Kind::Withdrawal,
        second.id().unwrap(),
        false,
    );
    assert_eq!(c.decide(&reject, later).unwrap(), Decided::Rejected);
    let mut body = second.body.clone();
    body.created_at = later.plus_ms(1);
    let third = Signed::sign(body, &samples::customer()).unwrap();
    assert_eq!(
        c.vote_withdrawal(&third, later).unwrap_err().code,
        rigmesh_ledger::HELD_FOR_REVIEW
    );
}

#[test]
fn an_order_that_gathered_votes_before_it_expired_can_still_be_completed() {
    use rigmesh_protocol::rpc::DebitRequest;
    let net = Net::new();
    net.deposit_everywhere(&samples::customer(), 25_000_000);
    let agreement = samples::lease_agreement().unwrap();
    let o = order(0, 19_920_000, 0);
    // Only coordinator 0 is reached before the order expires.
    let first = net.c(0).vote_escrow(&o, &agreement, now()).unwrap();
    let late = o.body.expires_at.plus_ms(net.config.skew_ms + 1);
    let expired = net.c(1).vote_escrow(&o, &agreement, late).unwrap_err();
    assert_eq!(expired.code, "expired", "{expired}");
    let debit = DebitRequest::Escrow {
        order: o.clone(),
        agreement: agreement.clone(),
    };

    // No proof, a vote by someone outside the set, or a member's vote for
    // another order: still refused, and nothing is locked.
    let outsider = Keypair::from_seed([0x77; 32]);
    let forged = Signed::sign(
        Certificate::vote_for(&o, outsider.public()).unwrap(),
        &outsider,
    )
    .unwrap();
    let other = order(0, 19_000_000, 5);
    let elsewhere = net.c(2).vote_escrow(&other, &agreement, now()).unwrap();
    for votes in [vec![], vec![forged], vec![elsewhere]] {
        let refused = net.c(1).complete_debit(&debit, &votes, late).unwrap_err();
        assert_eq!(refused.code, "no_vote_proof", "{refused}");
    }
    assert_eq!(
        net.ledgers[1]
            .debit_lock(&samples::customer().public(), 0)
            .unwrap(),
        None
    );

    // With coordinator 0's vote as the proof, 1 and 3 vote after expiry
    // and the certificate forms; 2, locked on the other order, refuses.
    let mut votes = vec![first.clone()];
    for i in [1, 3] {
        votes.push(
            net.c(i)
                .complete_debit(&debit, std::slice::from_ref(&first), late)
                .unwrap(),
        );
    }
    let refused = net
        .c(2)
        .complete_debit(&debit, std::slice::from_ref(&first), late)
        .unwrap_err();
    assert_eq!(refused.code, "conflicting_order");
    let cert = collect(&o, votes);
    assert!(cert.verify(&net.config.set).is_ok());
    for i in 0..4 {
        assert_eq!(
            net.c(i).apply_escrow(&cert, late).unwrap(),
            Applied::Applied
        );
    }
    let customer = Account::User(samples::customer().public());
    for i in 0..4 {
        assert_eq!(
            net.ledgers[i].balance(&customer).unwrap(),
            Credits::from_units(25_000_000 - 19_920_000)
        );
    }
    net.assert_agree(&[0, 1, 2, 3]);
}

#[test]
fn a_top_up_and_the_final_settlement_agree_in_either_order() {
    let net = Net::new();
    funded(&net);
    // The final settlement of the sample window, voted on before the
    // top-up is applied anywhere: it refunds the rest of the first escrow.
    let last_window = FinalWindow::new();
    let agreement = &last_window.agreement;
    let votes = (0..4)
        .map(|i| {
            net.c(i)
                .vote_settlement(&last_window.evidence(), now())
                .unwrap()
        })
        .collect::<Vec<_>>();
    let last = collect(&last_window.request, votes[..3].to_vec());
    // A top-up of 1 credit (the customer raised its cap), certified too.
    let top_up = order(1, 1_000_000, 9);
    let votes = (0..4)
        .map(|i| net.c(i).vote_escrow(&top_up, agreement, now()).unwrap())
        .collect::<Vec<_>>();
    let top_up_cert = collect(&top_up, votes[..3].to_vec());

    // Coordinators 0 and 1 apply the top-up first, 2 and 3 the final
    // settlement first: the same books either way, and everything the
    // lease did not pay is back with the customer.
    for i in 0..4 {
        let c = net.c(i);
        if i < 2 {
            assert_eq!(
                c.apply_escrow(&top_up_cert, now()).unwrap(),
                Applied::Applied
            );
            assert_eq!(c.apply_settlement(&last, now()).unwrap(), Applied::Applied);
        } else {
            assert_eq!(c.apply_settlement(&last, now()).unwrap(), Applied::Applied);
            assert_eq!(
                c.apply_escrow(&top_up_cert, now()).unwrap(),
                Applied::Applied
            );
        }
        let book = net.ledgers[i]
            .lease_book(&agreement.id().unwrap())
            .unwrap()
            .unwrap();
        assert!(book.closed);
        assert_eq!(book.paid, Credits::from_units(71_899 + 726));
    }
    let customer = Account::User(samples::customer().public());
    for i in 0..4 {
        assert_eq!(
            net.ledgers[i].balance(&customer).unwrap(),
            Credits::from_units(50_000_000 - 71_899 - 726),
            "coordinator {i}"
        );
        assert_eq!(
            net.ledgers[i]
                .next_debit_seq(&samples::customer().public())
                .unwrap(),
            2
        );
    }
    net.assert_agree(&[0, 1, 2, 3]);
    // Once the lease is closed, no coordinator votes for another top-up.
    let late = order(2, 1_000_000, 10);
    let refused = net.c(0).vote_escrow(&late, agreement, now()).unwrap_err();
    assert_eq!(refused.code, "lease_closed");
}

#[test]
fn an_applied_certificate_sent_again_is_answered_at_once_but_a_forged_copy_is_still_checked() {
    let net = Net::new();
    let cert = funded(&net);
    let before = net.ledgers[0].audit_len().unwrap();
    // The same bytes again (as a supplier sends the escrow certificate
    // with every settlement request): already applied, nothing written.
    assert_eq!(
        net.c(0).apply_escrow(&cert, now()).unwrap(),
        Applied::AlreadyApplied
    );
    assert_eq!(net.ledgers[0].audit_len().unwrap(), before);
    // The same subject with one vote's signature forged: other bytes, so
    // its votes are checked, and it is refused as a forgery.
    let mut forged = cert.clone();
    forged.votes[0].signature = forged.votes[1].signature;
    let refusal = net.c(0).apply_escrow(&forged, now()).unwrap_err();
    assert_eq!(refusal.code, "bad_signature", "{refusal}");
    // And a copy with a vote too few is no certificate at all.
    let mut short = cert.clone();
    short.votes.pop();
    let refusal = net.c(0).apply_escrow(&short, now()).unwrap_err();
    assert_eq!(refusal.code, "too_few_votes", "{refusal}");
    net.assert_agree(&[0, 1, 2, 3]);
}

#[test]
fn a_certificate_its_ingest_checked_is_applied_without_a_second_check_and_a_forgery_is_not() {
    let net = Net::new();
    funded(&net);
    let request = samples::settlement_request().unwrap();
    let votes = settlement_votes(&net, &request);
    let cert = collect(&request, votes[1..].to_vec());
    // Coordinator 0's ingest checked the gossiped copy first.
    let checked = CheckedCertificates::new(net.config.set.clone(), 64);
    checked.verify(&cert, &net.config.set).unwrap();
    // A forged copy handed over next (one vote's signature swapped):
    // other bytes, so checked in full and refused; nothing written.
    let before = net.ledgers[0].audit_len().unwrap();
    let mut forged = cert.clone();
    forged.votes[0].signature = forged.votes[1].signature;
    let refusal = net
        .c(0)
        .checking_once(&checked)
        .apply_settlement(&forged, now())
        .unwrap_err();
    assert_eq!(refusal.code, "bad_signature", "{refusal}");
    assert_eq!(net.ledgers[0].audit_len().unwrap(), before);
    assert_eq!(checked.skipped(), 0);
    // The genuine certificate handed over: applied on the ingest's check.
    assert_eq!(
        net.c(0)
            .checking_once(&checked)
            .apply_settlement(&cert, now())
            .unwrap(),
        Applied::Applied
    );
    assert_eq!(checked.skipped(), 1);
    for i in 1..4 {
        assert_eq!(
            net.c(i).apply_settlement(&cert, now()).unwrap(),
            Applied::Applied
        );
    }
    net.assert_agree(&[0, 1, 2, 3]);
}

#[test]
fn a_closed_lease_keeps_its_vote_locks_and_evidence_for_the_grace_and_then_takes_no_vote() {
    use rigmesh_ledger::audit::Action;
    use rigmesh_ledger::columns::{ClosedLeases, SchemaVersions, Slot, TypedStore};
    use rigmesh_ledger::schema::SchemaVersion;
    use rigmesh_ledger::store::Direction;
    use rigmesh_ledger::{Batch, Cause, ClosedCompaction, Durability, Store};

    let net = Net::new();
    funded(&net);
    // The lease's one window, settled finally.
    let last_window = FinalWindow::new();
    let lease = last_window.agreement.id().unwrap();
    let subject = last_window.request.id().unwrap();
    let evidence = last_window.evidence();
    let votes = (0..4)
        .map(|i| net.c(i).vote_settlement(&evidence, now()).unwrap())
        .collect::<Vec<_>>();
    let cert = collect(&last_window.request, votes[..3].to_vec());
    let compact = |i: usize, before: UnixMillis, limit: usize| {
        let cause = Cause::new(net.keys[i].public(), Id::ZERO, now());
        net.ledgers[i]
            .compact_closed_leases(before, limit, &cause)
            .unwrap()
    };
    let far = now().plus_ms(365 * 24 * 3600 * 1000);
    // Open, the lease keeps everything, whatever the grace.
    assert_eq!(compact(0, far, 100), ClosedCompaction::default());
    assert_eq!(
        net.ledgers[0].settlement_lock(&lease, 0).unwrap(),
        Some(subject)
    );
    for i in 0..4 {
        assert_eq!(
            net.c(i).apply_settlement(&cert, now()).unwrap(),
            Applied::Applied
        );
    }

    // Closed at now(): within the grace nothing goes, and a member that
    // lost the vote it sent signs it again.
    assert_eq!(compact(0, now(), 100), ClosedCompaction::default());
    assert!(net.c(0).vote_settlement(&evidence, now()).is_ok());
    assert_eq!(
        compact(0, now().plus_ms(1), 0),
        ClosedCompaction {
            more: true,
            ..ClosedCompaction::default()
        }
    );
    let audit_before = net.ledgers[0].verify_audit().unwrap().verified;

    // Past it: the lock, the window counts behind the vote and the settled
    // head go, in one write with its audit record.
    assert_eq!(
        compact(0, now().plus_ms(1), 100),
        ClosedCompaction {
            leases: 1,
            keys: 3,
            more: false
        }
    );
    let ledger = &net.ledgers[0];
    assert_eq!(ledger.settlement_lock(&lease, 0).unwrap(), None);
    assert_eq!(ledger.settlement_head(&lease).unwrap(), None);
    assert_eq!(ledger.vote_evidence(&subject).unwrap(), None);
    assert_eq!(
        ledger
            .store()
            .rows::<ClosedLeases>(Direction::Forward)
            .count(),
        0
    );
    let audit = ledger.verify_audit().unwrap();
    assert_eq!(audit.broken, None);
    assert_eq!(audit.verified, audit_before + 1);
    let last = ledger.audit_records(audit_before, 1).unwrap().remove(0);
    assert_eq!(last.record.action, Action::ClosedLeasesCompacted);
    assert_eq!(compact(0, far, 100), ClosedCompaction::default());

    // The money is where it was, alike at all four; the certificate sent
    // again is known applied; the request is refused as the lease is
    // closed, where a member that kept its lock signs it again.
    net.assert_agree(&[0, 1, 2, 3]);
    assert_eq!(
        net.c(0).apply_settlement(&cert, now()).unwrap(),
        Applied::AlreadyApplied
    );
    let refused = net.c(0).vote_settlement(&evidence, now()).unwrap_err();
    assert_eq!(refused.code, "lease_closed");
    assert!(net.c(1).vote_settlement(&evidence, now()).is_ok());
    // Its lock gone, the compacted member still votes for no other
    // request at the same sequence, nor at the next: a supplier asking to
    // be paid the refund too gets nothing, and no money moves.
    for seq in [0, 1] {
        let mut body = last_window.request.body.clone();
        body.settlement_seq = seq;
        body.supplier_amount = body.supplier_amount.checked_add(body.refund).unwrap();
        body.refund = Credits::ZERO;
        let greedy = Signed::sign(body, &samples::supplier()).unwrap();
        let evidence = SettlementEvidence {
            request: &greedy,
            ..last_window.evidence()
        };
        let refused = net.c(0).vote_settlement(&evidence, now()).unwrap_err();
        assert_eq!(refused.code, "lease_closed", "settlement {seq}");
    }
    net.assert_agree(&[0, 1, 2, 3]);

    // A store of version 4, whose closed leases are not listed, lists them
    // when it is opened, so they are taken away a grace after the upgrade.
    let store = net.ledgers[3].store().clone();
    let mut batch = Batch::new();
    for row in store.rows::<ClosedLeases>(Direction::Forward) {
        batch.delete_in::<ClosedLeases>(&row.unwrap().0);
    }
    batch
        .put_in::<SchemaVersions>(&Slot, &SchemaVersion(4))
        .unwrap();
    store.write(&batch).unwrap();
    let upgraded = Ledger::with_store(store.clone(), Durability::Flushed).unwrap();
    let listed: Vec<_> = store
        .rows::<ClosedLeases>(Direction::Forward)
        .map(|row| row.unwrap())
        .collect();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].0 .1, listed[0].1), (lease, 0));
    let cause = Cause::new(net.keys[3].public(), Id::ZERO, now());
    assert_eq!(
        upgraded.compact_closed_leases(far, 100, &cause).unwrap(),
        ClosedCompaction {
            leases: 1,
            keys: 3,
            more: false
        }
    );
    assert_eq!(upgraded.settlement_lock(&lease, 0).unwrap(), None);
}
