//! The ledger's behaviour, each case run on both backends: money moves only
//! by balanced entries, refusals write nothing, the order book answers
//! "cheapest N" from its index, evidence is kept by typed keys, every write
//! is audited and tampering is found, and bad bytes on disk are errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[macro_use]
mod common;

use std::str::FromStr;

use common::{cause, credits, id, key, offer};
use rigmesh_ledger::accounts::positive_amount;
use rigmesh_ledger::audit::{Action, Break};
use rigmesh_ledger::billing::FeeRate;
use rigmesh_ledger::codec::Record;
use rigmesh_ledger::columns::{Audit, Balances, Column, Offers, SchemaVersions, Slot};
use rigmesh_ledger::notices::MAX_OUTBOX;
use rigmesh_ledger::schema::{SchemaVersion, SCHEMA_VERSION};
use rigmesh_ledger::{
    Account, Batch, BrokenLink, CertificateKind, Durability, Error, EscrowLock, JournalEntry,
    Ledger, Leg, MemoryStore, Movement, Notification, OfferOutcome, OfferQuery, PeerScore,
    PutOutcome, SettleTerms, SledStore, Store,
};
use rigmesh_protocol::{samples, Credits, EscrowOrder, Id, SettlementRequest, UnixMillis};
use rust_decimal::Decimal;

/// What a refused call must leave untouched.
fn snapshot<S: Store>(ledger: &Ledger<S>) -> (u64, u64, Credits, Credits) {
    (
        ledger.journal_len().unwrap(),
        ledger.verify_audit().unwrap().verified,
        ledger.totals().unwrap().held().unwrap(),
        ledger.totals().unwrap().external,
    )
}

fn deposits_withdrawals_and_overdrafts<S: Store>(ledger: Ledger<S>) {
    let alice = key(1);
    ledger
        .deposit(alice, credits("10"), id(1), &cause(1))
        .unwrap();
    ledger
        .withdraw(alice, credits("3.25"), id(2), &cause(2))
        .unwrap();
    assert_eq!(
        ledger.balance(&Account::User(alice)).unwrap(),
        credits("6.75")
    );
    assert_eq!(ledger.totals().unwrap().external, credits("-6.75"));

    let before = snapshot(&ledger);
    let err = ledger
        .withdraw(alice, credits("6.750001"), id(3), &cause(3))
        .unwrap_err();
    match err {
        Error::InsufficientFunds {
            account,
            balance,
            needed,
        } => {
            assert_eq!(account, Account::User(alice));
            assert_eq!(balance, credits("6.75"));
            assert_eq!(needed, credits("6.750001"));
        }
        other => panic!("{other}"),
    }
    assert_eq!(snapshot(&ledger), before);
    assert!(!ledger.is_posted(&id(3)).unwrap());

    // A deposit is applied at most once.
    let err = ledger
        .deposit(alice, credits("1"), id(1), &cause(4))
        .unwrap_err();
    assert!(
        matches!(err, Error::AlreadyPosted(i) if i == id(1)),
        "{err}"
    );
    assert_eq!(snapshot(&ledger), before);

    // Negative and zero amounts.
    assert!(matches!(
        ledger.deposit(alice, Credits::from_units(-1), id(5), &cause(5)),
        Err(Error::Amount(_))
    ));
    assert!(matches!(
        ledger.withdraw(alice, Credits::ZERO, id(6), &cause(6)),
        Err(Error::Amount(_))
    ));
    // Over-precise input never becomes an amount.
    let err = positive_amount(Decimal::from_str("1.0000001").unwrap()).unwrap_err();
    assert!(err.to_string().contains("decimal places"), "{err}");
    assert_eq!(snapshot(&ledger), before);
    ledger.check_books().unwrap();
}

fn unbalanced_and_misplaced_entries_write_nothing<S: Store>(ledger: Ledger<S>) {
    let (alice, bob) = (key(1), key(2));
    ledger
        .deposit(alice, credits("5"), id(1), &cause(1))
        .unwrap();
    let before = snapshot(&ledger);
    let leg = |account, units| Leg {
        account,
        amount: Credits::from_units(units),
    };
    let mut entry = JournalEntry {
        id: id(9),
        movement: Movement::SupplierCredit,
        legs: vec![leg(Account::User(alice), -5), leg(Account::User(bob), 4)],
        at: UnixMillis(1),
        cause: Id::ZERO,
    };
    let err = ledger.post(&entry, &cause(2)).unwrap_err();
    assert!(matches!(err, Error::Unbalanced { .. }), "{err}");
    assert_eq!(snapshot(&ledger), before);

    // Lease accounts change only with their lease books.
    entry.legs = vec![
        leg(Account::User(alice), -5),
        leg(Account::Escrow(id(7)), 5),
    ];
    assert!(matches!(
        ledger.post(&entry, &cause(3)),
        Err(Error::WrongAccount { .. })
    ));
    // Money does not come from outside except by deposit.
    entry.legs = vec![leg(Account::External, -5), leg(Account::User(bob), 5)];
    assert!(matches!(
        ledger.post(&entry, &cause(4)),
        Err(Error::WrongAccount { .. })
    ));
    assert_eq!(snapshot(&ledger), before);

    // A balanced one goes through.
    entry.legs = vec![leg(Account::User(alice), -2), leg(Account::User(bob), 2)];
    ledger.post(&entry, &cause(5)).unwrap();
    assert_eq!(
        ledger.balance(&Account::User(bob)).unwrap(),
        credits("0.000002")
    );
    ledger.check_books().unwrap();
}

fn a_lease_from_escrow_to_final_settlement<S: Store>(ledger: Ledger<S>) {
    let customer = samples::customer().public();
    let supplier = samples::supplier().public();
    let lease = id(100);
    ledger
        .deposit(customer, credits("25"), id(1), &cause(1))
        .unwrap();
    let lock = EscrowLock {
        lease,
        order: id(2),
        customer,
        supplier,
        amount: credits("19.92"),
        price_per_gpu_hour: credits("2.49"),
    };
    ledger.lock_escrow(&lock, &cause(2)).unwrap();
    assert_eq!(
        ledger.balance(&Account::User(customer)).unwrap(),
        credits("5.08")
    );
    assert_eq!(
        ledger.balance(&Account::Escrow(lease)).unwrap(),
        credits("19.92")
    );
    assert!(matches!(
        ledger.lock_escrow(
            &EscrowLock {
                order: id(3),
                ..lock
            },
            &cause(3)
        ),
        Err(Error::Lease { .. })
    ));

    // The specification's example window: 105,000 GPU-ms at 2.49, 1 % fee.
    ledger.meter_window(&lease, 0, 105_000, &cause(4)).unwrap();
    assert!(matches!(
        ledger.meter_window(&lease, 0, 1, &cause(5)),
        Err(Error::Lease { .. })
    ));
    let fee_rate = FeeRate::new(Decimal::from_str("0.01").unwrap()).unwrap();
    let terms = SettleTerms {
        request: id(6),
        settlement_seq: 0,
        fee_rate,
        final_settlement: false,
    };
    let payout = ledger.settle(&lease, &terms, &cause(6)).unwrap();
    assert_eq!(payout.gross, credits("0.072625"));
    assert_eq!(payout.fee, credits("0.000726"));
    assert_eq!(payout.supplier, credits("0.071899"));
    assert_eq!(
        ledger.balance(&Account::User(supplier)).unwrap(),
        credits("0.071899")
    );
    assert_eq!(ledger.balance(&Account::Fees).unwrap(), credits("0.000726"));
    assert_eq!(
        ledger.balance(&Account::Payable(lease)).unwrap(),
        Credits::ZERO
    );
    assert_eq!(
        ledger.balance(&Account::Escrow(lease)).unwrap(),
        credits("19.847375")
    );
    // The same settlement sequence cannot be paid twice.
    assert!(matches!(
        ledger.settle(&lease, &terms, &cause(7)),
        Err(Error::Lease { .. })
    ));

    for window in 1..=3 {
        ledger
            .meter_window(&lease, window, 3_600_000, &cause(10 + window))
            .unwrap();
    }
    let last = SettleTerms {
        request: id(20),
        settlement_seq: 1,
        fee_rate,
        final_settlement: true,
    };
    let payout = ledger.settle(&lease, &last, &cause(20)).unwrap();
    assert_eq!(payout.gross, credits("7.47"));
    assert_eq!(payout.refund, credits("12.377375"));
    let book = ledger.lease_book(&lease).unwrap().unwrap();
    assert!(book.closed);
    assert_eq!(book.next_window, 4);
    assert_eq!(
        ledger.balance(&Account::Escrow(lease)).unwrap(),
        Credits::ZERO
    );
    assert!(matches!(
        ledger.meter_window(&lease, 4, 1, &cause(21)),
        Err(Error::Lease { .. })
    ));

    let totals = ledger.totals().unwrap();
    assert_eq!(totals.held().unwrap(), credits("25"));
    assert_eq!(totals.escrow, Credits::ZERO);
    let report = ledger.check_books().unwrap();
    assert_eq!(report.totals, totals);
    // Deposit, lock, charge+credit+fee, charge+credit+fee+refund.
    assert_eq!(report.entries, 9);

    // The hour's rollups: what the customer spent, what the supplier earned.
    let hour = ledger
        .rollups(&customer, samples::T0, samples::T0.plus_ms(100))
        .unwrap();
    assert_eq!(hour.len(), 1);
    assert_eq!(hour[0].1.spent, credits("7.542625"));
    assert_eq!(hour[0].1.used_gpu_ms, 105_000 + 3 * 3_600_000);
    let earned = ledger.rollups(&supplier, samples::T0, samples::T0).unwrap();
    assert_eq!(
        earned[0].1.earned,
        ledger.balance(&Account::User(supplier)).unwrap()
    );
    assert!(ledger.verify_audit().unwrap().is_intact());
}

fn escrow_refusals_write_nothing<S: Store>(ledger: Ledger<S>) {
    let (customer, supplier) = (key(1), key(2));
    ledger
        .deposit(customer, credits("1"), id(1), &cause(1))
        .unwrap();
    let before = snapshot(&ledger);
    let lock = EscrowLock {
        lease: id(50),
        order: id(2),
        customer,
        supplier,
        amount: credits("1.000001"),
        price_per_gpu_hour: credits("1"),
    };
    assert!(matches!(
        ledger.lock_escrow(&lock, &cause(2)),
        Err(Error::InsufficientFunds { .. })
    ));
    assert!(ledger.lease_book(&id(50)).unwrap().is_none());
    assert!(matches!(
        ledger.lock_escrow(
            &EscrowLock {
                price_per_gpu_hour: Credits::ZERO,
                amount: credits("1"),
                ..lock
            },
            &cause(3)
        ),
        Err(Error::Amount(_))
    ));
    assert!(matches!(
        ledger.meter_window(&id(51), 0, 5, &cause(4)),
        Err(Error::Lease { .. })
    ));
    assert_eq!(snapshot(&ledger), before);
}

fn the_cheapest_offers_come_from_the_index<S: Store>(ledger: Ledger<S>) {
    let h100 = "NVIDIA H100 80GB HBM3";
    let prices = ["2.49", "1.99", "3.10", "1.50", "2.00", "1.75"];
    let memories = [81_559, 81_559, 81_559, 40_960, 81_559, 81_559];
    for (i, (price, memory)) in prices.iter().zip(memories).enumerate() {
        let o = offer(i as u8 + 1, 1, 1, h100, memory, price);
        assert_eq!(
            ledger.put_offer(&o, &cause(i as u64)).unwrap(),
            OfferOutcome::Stored
        );
    }
    ledger
        .put_offer(&offer(40, 1, 1, "NVIDIA A100", 81_559, "0.90"), &cause(40))
        .unwrap();
    let query = OfferQuery {
        gpu_model: h100.into(),
        min_memory_mib: 80_000,
        min_gpus: 1,
        max_price: None,
        now: samples::T0,
        limit: 3,
    };
    let found: Vec<Credits> = ledger
        .cheapest_offers(&query)
        .unwrap()
        .iter()
        .map(|o| o.body.price_per_gpu_hour)
        .collect();
    // 1.50 has too little memory; the A100 is another model.
    assert_eq!(
        found,
        vec![credits("1.75"), credits("1.99"), credits("2.00")]
    );

    let capped = OfferQuery {
        max_price: Some(credits("1.99")),
        limit: 10,
        ..query.clone()
    };
    assert_eq!(ledger.cheapest_offer_ids(&capped).unwrap().len(), 2);

    // A newer offer for the same devices replaces the old one in the index.
    let old = offer(6, 1, 1, h100, 81_559, "1.75");
    let newer = offer(6, 1, 2, h100, 81_559, "9.00");
    assert_eq!(
        ledger.put_offer(&newer, &cause(50)).unwrap(),
        OfferOutcome::Replaced(old.id().unwrap())
    );
    assert_eq!(
        ledger.put_offer(&old, &cause(51)).unwrap(),
        OfferOutcome::Stale
    );
    assert!(ledger.offer(&old.id().unwrap()).unwrap().is_none());
    let found: Vec<Credits> = ledger
        .cheapest_offers(&query)
        .unwrap()
        .iter()
        .map(|o| o.body.price_per_gpu_hour)
        .collect();
    assert_eq!(
        found,
        vec![credits("1.99"), credits("2.00"), credits("2.49")]
    );

    // Expired offers are skipped by queries and removed by maintenance.
    let later = OfferQuery {
        now: UnixMillis(u64::MAX),
        ..query.clone()
    };
    assert!(ledger.cheapest_offers(&later).unwrap().is_empty());
    let cheapest = ledger.cheapest_offer_ids(&query).unwrap()[0];
    assert!(ledger.remove_offer(&cheapest, &cause(60)).unwrap());
    assert!(!ledger.remove_offer(&cheapest, &cause(61)).unwrap());
    assert_eq!(
        ledger
            .remove_expired_offers(UnixMillis(u64::MAX), 100, &cause(62))
            .unwrap(),
        6
    );
    assert!(ledger.cheapest_offer_ids(&query).unwrap().is_empty());
    assert!(ledger.verify_audit().unwrap().is_intact());
}

fn evidence_is_kept_by_typed_keys<S: Store>(ledger: Ledger<S>) {
    let bid = samples::bid().unwrap();
    assert_eq!(ledger.put_bid(&bid, &cause(1)).unwrap(), PutOutcome::Stored);
    assert_eq!(
        ledger.put_bid(&bid, &cause(1)).unwrap(),
        PutOutcome::Unchanged
    );
    assert_eq!(ledger.bid(&bid.id().unwrap()).unwrap(), Some(bid));

    let agreement = samples::lease_agreement().unwrap();
    let (lease, outcome) = ledger.put_lease(&agreement, &cause(2)).unwrap();
    assert_eq!(outcome, PutOutcome::Stored);
    assert_eq!(ledger.lease(&lease).unwrap(), Some(agreement));

    let first = samples::usage_attestation().unwrap();
    let lease_id = first.body.lease;
    let supplier = samples::supplier();
    let mut chain = vec![first.clone()];
    for seq in 1..5u64 {
        let mut body = first.body.clone();
        body.seq = seq;
        body.prev = chain.last().unwrap().id().unwrap();
        chain.push(rigmesh_protocol::Signed::sign(body, &supplier).unwrap());
    }
    for a in chain.iter().rev() {
        assert_eq!(
            ledger.put_attestation(a, &cause(3)).unwrap(),
            PutOutcome::Stored
        );
    }
    let mut other = first.body.clone();
    other.billable_gpu_ms += 1;
    let conflicting = rigmesh_protocol::Signed::sign(other, &supplier).unwrap();
    assert_eq!(
        ledger.put_attestation(&conflicting, &cause(4)).unwrap(),
        PutOutcome::Conflict
    );
    let from_two = ledger.attestations(&lease_id, 2, 10).unwrap();
    assert_eq!(from_two, chain[2..].to_vec());
    assert_eq!(ledger.attestation(&lease_id, 0).unwrap(), Some(first));
    assert!(ledger.attestations(&id(999), 0, 10).unwrap().is_empty());

    let escrow = samples::escrow_certificate().unwrap();
    let (subject, _) = ledger.put_certificate(&escrow, &cause(5)).unwrap();
    let settlement = samples::settlement_certificate().unwrap();
    let (settled, _) = ledger.put_certificate(&settlement, &cause(6)).unwrap();
    assert_eq!(
        ledger.certificate::<EscrowOrder>(&subject).unwrap(),
        Some(escrow)
    );
    assert_eq!(
        ledger.certificate::<SettlementRequest>(&settled).unwrap(),
        Some(settlement)
    );
    // Kinds do not mix: an escrow subject is not a settlement certificate.
    assert!(ledger
        .certificate::<SettlementRequest>(&subject)
        .unwrap()
        .is_none());
    assert!(CertificateKind::of(rigmesh_protocol::Kind::Offer).is_err());

    let alert = samples::alert().unwrap();
    ledger.put_alert(&alert, &cause(7)).unwrap();
    assert_eq!(
        ledger.alerts(alert.body.created_at, 10).unwrap(),
        vec![alert.clone()]
    );
    assert!(ledger
        .alerts(alert.body.created_at.plus_ms(1), 10)
        .unwrap()
        .is_empty());
}

fn outbox_and_peer_scores<S: Store>(ledger: Ledger<S>) {
    let note = |n: u8| Notification {
        created_at: UnixMillis(u64::from(n)),
        channel: "webhook".into(),
        recipient: "https://example.invalid/hook".into(),
        payload: vec![n; 10],
        attempts: 0,
    };
    let a = ledger.enqueue_notification(&note(1), &cause(1)).unwrap();
    let b = ledger.enqueue_notification(&note(2), &cause(2)).unwrap();
    assert!(ledger.record_attempt(a, &cause(3)).unwrap());
    let pending = ledger.pending_notifications(10).unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].1.attempts, 1);
    assert!(ledger.mark_delivered(a, &cause(4)).unwrap());
    assert!(!ledger.mark_delivered(a, &cause(5)).unwrap());
    assert_eq!(ledger.pending_notifications(10).unwrap()[0].0, b);
    let huge = Notification {
        payload: vec![0; 64 * 1024 + 1],
        ..note(3)
    };
    assert!(matches!(
        ledger.enqueue_notification(&huge, &cause(6)),
        Err(Error::TooLarge { .. })
    ));

    let peer = [7u8; 38];
    ledger
        .set_peer_score(
            &peer,
            &PeerScore {
                score: -50,
                banned_until: UnixMillis(1_000),
                reason: "invalid signatures".into(),
            },
            &cause(7),
        )
        .unwrap();
    ledger
        .set_peer_score(
            &[8u8; 38],
            &PeerScore {
                score: 10,
                ..PeerScore::default()
            },
            &cause(8),
        )
        .unwrap();
    assert_eq!(ledger.peer_score(&peer).unwrap().unwrap().score, -50);
    assert_eq!(ledger.banned_peers(UnixMillis(999), 10).unwrap().len(), 1);
    assert!(ledger
        .banned_peers(UnixMillis(1_000), 10)
        .unwrap()
        .is_empty());
    assert!(ledger
        .set_peer_score(&[0; 300], &PeerScore::default(), &cause(9))
        .is_err());
}

fn every_write_is_audited_and_tampering_is_found<S: Store>(ledger: Ledger<S>) {
    let alice = key(1);
    for n in 0..5 {
        ledger
            .deposit(alice, credits("1"), id(n), &cause(n))
            .unwrap();
    }
    ledger
        .record_refusal("vote", "insufficient_balance", &cause(9))
        .unwrap();
    let records = ledger.audit_records(0, 100).unwrap();
    assert_eq!(records.len(), 6);
    assert_eq!(records[2].record.action, Action::Deposit);
    assert_eq!(records[2].record.subject, id(2));
    assert_eq!(records[5].record.action, Action::Refused);
    assert!(records[5].record.detail.contains("insufficient_balance"));
    let report = ledger.verify_audit().unwrap();
    assert!(report.is_intact());
    assert_eq!(report.verified, 6);

    // Edit record 3's content and store it with a valid checksum.
    let mut edited = records[3].clone();
    edited.record.detail = "deposit 1000 to someone else".into();
    let mut batch = Batch::new();
    batch.put_in::<Audit>(&3, &edited).unwrap();
    ledger.store().write(&batch).unwrap();
    let report = ledger.verify_audit().unwrap();
    assert_eq!(
        report.broken,
        Some(BrokenLink {
            seq: 3,
            reason: Break::Edited
        })
    );
    assert_eq!(report.verified, 3);

    // Re-hashing the edited record moves the break to the next link.
    let mut batch = Batch::new();
    batch
        .put_in::<Audit>(&3, &edited.record.clone().seal().unwrap())
        .unwrap();
    ledger.store().write(&batch).unwrap();
    assert_eq!(
        ledger.verify_audit().unwrap().broken,
        Some(BrokenLink {
            seq: 4,
            reason: Break::WrongLink
        })
    );

    // Raw bit rot in record 1 is reported at record 1.
    let key = 1u64.to_be_bytes();
    let mut raw = ledger.store().get(Audit::TREE, &key).unwrap().unwrap();
    raw[10] ^= 0x40;
    ledger.store().put(Audit::TREE, &key, &raw).unwrap();
    let broken = ledger.verify_audit().unwrap().broken.unwrap();
    assert_eq!(broken.seq, 1);
    assert!(
        matches!(broken.reason, Break::Unreadable(_)),
        "{:?}",
        broken.reason
    );

    // Deleting a record is a gap at that record.
    let good = records[1].record.clone().seal().unwrap();
    ledger
        .store()
        .put(Audit::TREE, &key, &good.to_record().unwrap())
        .unwrap();
    ledger
        .store()
        .delete(Audit::TREE, &2u64.to_be_bytes())
        .unwrap();
    assert_eq!(
        ledger.verify_audit().unwrap().broken,
        Some(BrokenLink {
            seq: 2,
            reason: Break::Missing { found: 3 }
        })
    );
}

fn corrupt_bytes_on_disk_are_errors<S: Store>(ledger: Ledger<S>) {
    let alice = key(1);
    ledger
        .deposit(alice, credits("2"), id(1), &cause(1))
        .unwrap();
    let o = offer(3, 1, 1, "NVIDIA L4", 23_034, "0.40");
    ledger.put_offer(&o, &cause(2)).unwrap();
    let store = ledger.store();

    let account_key = rigmesh_ledger::keys::Key::to_key(&Account::User(alice));
    let mut raw = store.get(Balances::TREE, &account_key).unwrap().unwrap();
    raw[3] ^= 1;
    store.put(Balances::TREE, &account_key, &raw).unwrap();
    let err = ledger.balance(&Account::User(alice)).unwrap_err();
    assert!(err.to_string().contains("balance"), "{err}");
    // A write that would read the corrupt balance fails and writes nothing.
    let journal = ledger.journal_len().unwrap();
    assert!(ledger
        .withdraw(alice, credits("1"), id(2), &cause(3))
        .is_err());
    assert_eq!(ledger.journal_len().unwrap(), journal);
    assert!(ledger.check_books().is_err());

    // An offer record whose signed bytes are garbage, checksum intact.
    let offer_id = o.id().unwrap();
    let offer_key = rigmesh_ledger::keys::Key::to_key(&offer_id);
    let mut record = rigmesh_ledger::offers::OfferRecord::from_record(
        &store.get(Offers::TREE, &offer_key).unwrap().unwrap(),
    )
    .unwrap();
    record.bytes.truncate(7);
    store
        .put(Offers::TREE, &offer_key, &record.to_record().unwrap())
        .unwrap();
    assert!(matches!(
        ledger.offer(&offer_id),
        Err(Error::Undecodable { .. })
    ));
    let query = OfferQuery {
        gpu_model: "NVIDIA L4".into(),
        min_memory_mib: 0,
        min_gpus: 1,
        max_price: None,
        now: samples::T0,
        limit: 5,
    };
    assert!(ledger.cheapest_offers(&query).is_err());

    // Truncated and empty values.
    store.put(Offers::TREE, &offer_key, &[]).unwrap();
    assert!(ledger.offer(&offer_id).is_err());
    store
        .put(Offers::TREE, &offer_key, &[1, 2, 3, 4, 5])
        .unwrap();
    assert!(ledger.offer(&offer_id).is_err());
}

on_both_backends!(
    deposits_withdrawals_and_overdrafts,
    unbalanced_and_misplaced_entries_write_nothing,
    a_lease_from_escrow_to_final_settlement,
    escrow_refusals_write_nothing,
    the_cheapest_offers_come_from_the_index,
    evidence_is_kept_by_typed_keys,
    outbox_and_peer_scores,
    every_write_is_audited_and_tampering_is_found,
    corrupt_bytes_on_disk_are_errors,
);

#[test]
fn the_books_and_the_audit_chain_check_while_deposits_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = std::sync::Arc::new(Ledger::open(dir.path()).unwrap());
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let ledger = ledger.clone();
        let written = written.clone();
        std::thread::spawn(move || {
            for n in 0..300u64 {
                ledger
                    .deposit(key(1), credits("1"), id(1_000 + n), &cause(n))
                    .unwrap();
                written.store(n + 1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    // A check holds the writers' lock, and checks one right after another
    // kept the writer out for minutes: each check waits for a deposit more.
    let mut checks = 0;
    let mut checked_at = 0;
    while !writer.is_finished() {
        let now = written.load(std::sync::atomic::Ordering::SeqCst);
        if now == checked_at {
            std::thread::yield_now();
            continue;
        }
        checked_at = now;
        let report = ledger.check_books().unwrap_or_else(|e| {
            panic!("the books did not check after {checks} checks mid-write: {e}")
        });
        assert_eq!(
            report.totals.held().unwrap(),
            report.totals.external.checked_neg().unwrap()
        );
        // The audit chain too: its walk must not read a head older than
        // the records a writer appended meanwhile.
        let audit = ledger.verify_audit().unwrap();
        assert!(
            audit.is_intact(),
            "the audit chain did not check after {checks} checks mid-write: {audit:?}"
        );
        checks += 1;
    }
    writer.join().unwrap();
    assert!(checks > 0, "checked while the deposits were written");
    ledger.check_books().unwrap();
    assert!(ledger.verify_audit().unwrap().is_intact());
}

#[test]
fn the_outbox_is_bounded() {
    let ledger = common::memory_ledger();
    let note = Notification {
        created_at: UnixMillis(0),
        channel: "email".into(),
        recipient: "ops@example.invalid".into(),
        payload: Vec::new(),
        attempts: 0,
    };
    for n in 0..MAX_OUTBOX as u64 {
        ledger.enqueue_notification(&note, &cause(n)).unwrap();
    }
    assert!(matches!(
        ledger.enqueue_notification(&note, &cause(0)),
        Err(Error::Full { what: "outbox", .. })
    ));
    assert!(ledger.mark_delivered(0, &cause(1)).unwrap());
    ledger.enqueue_notification(&note, &cause(2)).unwrap();
}

#[test]
fn a_newer_schema_is_refused_and_a_fresh_store_gets_the_current_one() {
    let store = MemoryStore::new();
    drop(Ledger::with_store(store.clone(), Durability::Flushed).unwrap());
    assert_eq!(
        rigmesh_ledger::schema::stored_version(&store).unwrap(),
        Some(SCHEMA_VERSION)
    );

    let mut batch = Batch::new();
    batch
        .put_in::<SchemaVersions>(&Slot, &SchemaVersion(SCHEMA_VERSION + 1))
        .unwrap();
    store.write(&batch).unwrap();
    let err = Ledger::with_store(store.clone(), Durability::Flushed).unwrap_err();
    assert!(
        matches!(err, Error::SchemaTooNew { found, supported } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade"), "{err}");

    // An older version with no migration path.
    let mut batch = Batch::new();
    batch
        .put_in::<SchemaVersions>(&Slot, &SchemaVersion(0))
        .unwrap();
    store.write(&batch).unwrap();
    assert!(matches!(
        Ledger::with_store(store.clone(), Durability::Flushed),
        Err(Error::NoMigration { found: 0, .. })
    ));

    // A version that is not 4 bytes.
    store.put(SchemaVersions::TREE, &[0], &[1, 2, 3]).unwrap();
    assert!(matches!(
        Ledger::with_store(store, Durability::Flushed),
        Err(Error::Undecodable { .. })
    ));
}

#[test]
fn migrations_run_in_order_each_with_its_version() {
    use rigmesh_ledger::migrations::Migration;
    use rigmesh_ledger::schema::{open_schema_to, stored_version};

    fn one_to_two(_: &dyn Store) -> rigmesh_ledger::Result<Batch> {
        let mut batch = Batch::new();
        batch.put("test/migrated", b"step".to_vec(), b"1->2".to_vec());
        Ok(batch)
    }
    fn two_to_three(store: &dyn Store) -> rigmesh_ledger::Result<Batch> {
        // Sees the previous step's writes.
        assert!(store.get("test/migrated", b"step").unwrap().is_some());
        let mut batch = Batch::new();
        batch.put("test/migrated", b"step".to_vec(), b"2->3".to_vec());
        Ok(batch)
    }
    let list = [
        Migration {
            from: 2,
            description: "second",
            run: two_to_three,
        },
        Migration {
            from: 1,
            description: "first",
            run: one_to_two,
        },
    ];
    let store = MemoryStore::new();
    let mut batch = Batch::new();
    batch
        .put_in::<SchemaVersions>(&Slot, &SchemaVersion(1))
        .unwrap();
    store.write(&batch).unwrap();
    assert_eq!(open_schema_to(&store, &list, 3).unwrap(), Some(1));
    assert_eq!(stored_version(&store).unwrap(), Some(3));
    assert_eq!(
        store.get("test/migrated", b"step").unwrap(),
        Some(b"2->3".to_vec())
    );

    // A gap in the path is refused before any step runs.
    let store = MemoryStore::new();
    store.write(&batch).unwrap();
    assert!(open_schema_to(&store, &list[..1], 3).is_err());
    assert_eq!(stored_version(&store).unwrap(), Some(1));
    assert!(store.get("test/migrated", b"step").unwrap().is_none());
}

#[test]
fn a_sled_ledger_is_whole_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let lease = id(77);
    {
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger
            .deposit(key(1), credits("3"), id(1), &cause(1))
            .unwrap();
        ledger
            .lock_escrow(
                &EscrowLock {
                    lease,
                    order: id(2),
                    customer: key(1),
                    supplier: key(2),
                    amount: credits("2"),
                    price_per_gpu_hour: credits("1"),
                },
                &cause(2),
            )
            .unwrap();
        ledger
            .meter_window(&lease, 0, 1_800_000, &cause(3))
            .unwrap();
    }
    let ledger: Ledger<SledStore> = Ledger::open(dir.path()).unwrap();
    assert_eq!(
        ledger.lease_book(&lease).unwrap().unwrap().unsettled_gpu_ms,
        1_800_000
    );
    let payout = ledger
        .settle(
            &lease,
            &SettleTerms {
                request: id(4),
                settlement_seq: 0,
                fee_rate: FeeRate::ZERO,
                final_settlement: true,
            },
            &cause(4),
        )
        .unwrap();
    assert_eq!(payout.supplier, credits("0.5"));
    assert_eq!(payout.refund, credits("1.5"));
    assert_eq!(
        ledger.check_books().unwrap().totals.held().unwrap(),
        credits("3")
    );
    assert!(ledger.verify_audit().unwrap().is_intact());
}

#[test]
fn the_migration_to_version_2_gives_applied_deposits_their_references() {
    use rigmesh_ledger::columns::{DepositReferences, KnownDestinations, TypedStore};

    let store = MemoryStore::new();
    let ledger = Ledger::with_store(store.clone(), Durability::Flushed).unwrap();
    let deposit = samples::deposit().unwrap();
    let id = deposit.id().unwrap();
    let d = &deposit.body;
    let reference = rigmesh_ledger::reference_key(&d.admin, &d.reference);
    ledger
        .apply_deposit(
            &id,
            &d.account,
            d.amount,
            &reference,
            deposit.to_bytes().unwrap(),
            &rigmesh_ledger::Cause::new(d.admin, id, d.created_at),
        )
        .unwrap();
    drop(ledger);
    // As a version 1 store holds it: the deposit, and no reference.
    let mut batch = Batch::new();
    batch.delete_in::<DepositReferences>(&reference);
    batch
        .put_in::<SchemaVersions>(&Slot, &SchemaVersion(1))
        .unwrap();
    store.write(&batch).unwrap();
    assert_eq!(store.get_in::<DepositReferences>(&reference).unwrap(), None);

    let ledger = Ledger::with_store(store.clone(), Durability::Flushed).unwrap();
    assert_eq!(
        rigmesh_ledger::schema::stored_version(&store).unwrap(),
        Some(SCHEMA_VERSION)
    );
    assert_eq!(
        ledger.deposit_reference(&d.admin, &d.reference).unwrap(),
        Some(id)
    );
    assert_eq!(
        store
            .rows::<KnownDestinations>(rigmesh_ledger::store::Direction::Forward)
            .count(),
        0
    );
}

#[test]
fn the_migration_to_version_3_lists_the_open_leases_under_their_accounts() {
    use rigmesh_ledger::columns::{OpenByCustomer, OpenBySupplier, TypedStore};
    use rigmesh_ledger::store::Direction;

    let store = MemoryStore::new();
    let ledger = Ledger::with_store(store.clone(), Durability::Flushed).unwrap();
    let (customer, supplier) = (key(1), key(2));
    ledger
        .deposit(customer, credits("30"), id(1), &cause(1))
        .unwrap();
    for (lease, order, amount) in [(id(100), id(2), "10"), (id(101), id(3), "12")] {
        let lock = EscrowLock {
            lease,
            order,
            customer,
            supplier,
            amount: credits(amount),
            price_per_gpu_hour: credits("2"),
        };
        ledger.lock_escrow(&lock, &cause(2)).unwrap();
    }
    // Lease 101 is finally settled: its book is closed.
    let terms = SettleTerms {
        request: id(4),
        settlement_seq: 0,
        fee_rate: FeeRate::from_ppm(10_000).unwrap(),
        final_settlement: true,
    };
    ledger.settle(&id(101), &terms, &cause(4)).unwrap();
    assert_eq!(ledger.escrowed_by(&customer).unwrap(), credits("10"));
    drop(ledger);
    // As a version 2 store holds it: the books, and no index.
    let mut batch = Batch::new();
    for lease in [id(100), id(101)] {
        batch.delete_in::<OpenByCustomer>(&(customer, lease));
        batch.delete_in::<OpenBySupplier>(&(supplier, lease));
    }
    batch
        .put_in::<SchemaVersions>(&Slot, &SchemaVersion(2))
        .unwrap();
    store.write(&batch).unwrap();
    assert_eq!(store.rows::<OpenByCustomer>(Direction::Forward).count(), 0);

    let ledger = Ledger::with_store(store.clone(), Durability::Flushed).unwrap();
    assert_eq!(
        rigmesh_ledger::schema::stored_version(&store).unwrap(),
        Some(SCHEMA_VERSION)
    );
    assert_eq!(ledger.escrowed_by(&customer).unwrap(), credits("10"));
    let open: Vec<Id> = ledger
        .open_leases_of_supplier(&supplier)
        .unwrap()
        .into_iter()
        .map(|(lease, _)| lease)
        .collect();
    assert_eq!(open, [id(100)]);
    assert_eq!(ledger.escrowed_by(&supplier).unwrap(), Credits::ZERO);
    assert!(ledger
        .open_leases_of_supplier(&customer)
        .unwrap()
        .is_empty());
}

#[test]
fn the_migration_to_version_4_lists_the_open_dispute_cases() {
    use rigmesh_ledger::columns::{DisputeCases, OpenCases, TypedStore};
    use rigmesh_ledger::store::Direction;
    use rigmesh_ledger::DisputeCase;

    let store = MemoryStore::new();
    drop(Ledger::with_store(store.clone(), Durability::Flushed).unwrap());
    let case = |n: u64, resolution: Option<Id>| DisputeCase {
        request: id(n),
        supplier: key(2),
        customer: key(1),
        held: credits("1"),
        first_window: 0,
        last_window: 9,
        opened_at: UnixMillis(1_000),
        resolution,
    };
    // As a version 3 store holds them: cases, some resolved, and no index.
    let mut batch = Batch::new();
    for (lease, seq, c) in [
        (id(100), 0, case(10, Some(id(20)))),
        (id(100), 1, case(11, None)),
        (id(101), 0, case(12, Some(id(21)))),
        (id(102), 3, case(13, None)),
    ] {
        batch.put_in::<DisputeCases>(&(lease, seq), &c).unwrap();
    }
    batch
        .put_in::<SchemaVersions>(&Slot, &SchemaVersion(3))
        .unwrap();
    store.write(&batch).unwrap();
    assert_eq!(store.rows::<OpenCases>(Direction::Forward).count(), 0);

    let ledger = Ledger::with_store(store.clone(), Durability::Flushed).unwrap();
    assert_eq!(
        rigmesh_ledger::schema::stored_version(&store).unwrap(),
        Some(SCHEMA_VERSION)
    );
    let open: Vec<((Id, u64), Id)> = ledger
        .dispute_cases(true, 10)
        .unwrap()
        .into_iter()
        .map(|(key, c)| (key, c.request))
        .collect();
    assert_eq!(open, [((id(100), 1), id(11)), ((id(102), 3), id(13))]);
    assert_eq!(ledger.dispute_cases(true, 1).unwrap().len(), 1);
    assert_eq!(ledger.dispute_cases(false, 10).unwrap().len(), 4);
}
