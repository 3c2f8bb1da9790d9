//! Money invariants under arbitrary sequences of operations:
//! - held money (users + fees + escrow + payable) always equals deposits
//!   minus withdrawals, no account but `External` goes negative, the
//!   journal replays to the stored balances, and a refused operation
//!   changes nothing; an account's escrowed total and a supplier's open
//!   leases, read from their indexes, always agree with the lease books;
//! - metering a lease in one window or in many, then settling, gives the
//!   same amounts to the last micro-credit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{cause, id, key};
use proptest::prelude::*;
use rigmesh_ledger::billing::FeeRate;
use rigmesh_ledger::{Account, EscrowLock, Ledger, MemoryStore, SettleTerms};
use rigmesh_protocol::Credits;

const USERS: u8 = 4;
const LEASES: u64 = 3;

#[derive(Debug, Clone)]
enum Op {
    Deposit {
        user: u8,
        units: i64,
    },
    Withdraw {
        user: u8,
        units: i64,
    },
    Lock {
        lease: u64,
        customer: u8,
        supplier: u8,
        units: i64,
        price: i64,
    },
    Meter {
        lease: u64,
        gpu_ms: u64,
    },
    Settle {
        lease: u64,
        ppm: u32,
        last: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS;
    let lease = 0..LEASES;
    prop_oneof![
        (user.clone(), 1i64..50_000_000).prop_map(|(user, units)| Op::Deposit { user, units }),
        (user.clone(), 1i64..50_000_000).prop_map(|(user, units)| Op::Withdraw { user, units }),
        (
            lease.clone(),
            user.clone(),
            user,
            1i64..40_000_000,
            1i64..5_000_000
        )
            .prop_map(|(lease, customer, supplier, units, price)| Op::Lock {
                lease,
                customer,
                supplier,
                units,
                price
            }),
        (lease.clone(), 0u64..20_000_000).prop_map(|(lease, gpu_ms)| Op::Meter { lease, gpu_ms }),
        (lease, 0u32..100_000, any::<bool>()).prop_map(|(lease, ppm, last)| Op::Settle {
            lease,
            ppm,
            last
        }),
    ]
}

/// Applies `op`; errors (overdrafts, out-of-order windows, closed leases)
/// are part of the sequence and must leave everything as it was.
fn apply(ledger: &Ledger<MemoryStore>, op: &Op, n: u64, deposits: &mut i64, withdrawals: &mut i64) {
    let lease_id = |lease: u64| id(1_000 + lease);
    let before = (ledger.journal_len().unwrap(), ledger.totals().unwrap());
    let result = match op {
        Op::Deposit { user, units } => ledger
            .deposit(key(*user), Credits::from_units(*units), id(n), &cause(n))
            .map(|_| *deposits += units),
        Op::Withdraw { user, units } => ledger
            .withdraw(key(*user), Credits::from_units(*units), id(n), &cause(n))
            .map(|_| *withdrawals += units),
        Op::Lock {
            lease,
            customer,
            supplier,
            units,
            price,
        } => ledger
            .lock_escrow(
                &EscrowLock {
                    lease: lease_id(*lease),
                    order: id(n),
                    customer: key(*customer),
                    supplier: key(*supplier),
                    amount: Credits::from_units(*units),
                    price_per_gpu_hour: Credits::from_units(*price),
                },
                &cause(n),
            )
            .map(|_| ()),
        Op::Meter { lease, gpu_ms } => {
            let next = ledger
                .lease_book(&lease_id(*lease))
                .unwrap()
                .map_or(0, |b| b.metered_windows);
            ledger
                .meter_window(&lease_id(*lease), next, *gpu_ms, &cause(n))
                .map(|_| ())
        }
        Op::Settle { lease, ppm, last } => {
            let seq = ledger
                .lease_book(&lease_id(*lease))
                .unwrap()
                .map_or(0, |b| b.next_settlement_seq);
            ledger
                .settle(
                    &lease_id(*lease),
                    &SettleTerms {
                        request: id(n),
                        settlement_seq: seq,
                        fee_rate: FeeRate::from_ppm(*ppm).unwrap(),
                        final_settlement: *last,
                    },
                    &cause(n),
                )
                .map(|_| ())
        }
    };
    if result.is_err() {
        assert_eq!(
            (ledger.journal_len().unwrap(), ledger.totals().unwrap()),
            before
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn held_money_is_always_deposits_minus_withdrawals(ops in proptest::collection::vec(op(), 1..60)) {
        let ledger = Ledger::in_memory().unwrap();
        let (mut deposits, mut withdrawals) = (0i64, 0i64);
        for (n, op) in ops.iter().enumerate() {
            apply(&ledger, op, n as u64, &mut deposits, &mut withdrawals);
            let totals = ledger.totals().unwrap();
            prop_assert_eq!(totals.held().unwrap().units(), deposits - withdrawals);
            prop_assert_eq!(totals.payable, Credits::ZERO);
            for user in 0..USERS {
                prop_assert!(!ledger.balance(&Account::User(key(user))).unwrap().is_negative());
            }
            let mut open = Vec::new();
            for lease in 0..LEASES {
                if let Some(book) = ledger.lease_book(&id(1_000 + lease)).unwrap() {
                    let escrow = ledger.balance(&Account::Escrow(id(1_000 + lease))).unwrap();
                    let expected = if book.closed { Credits::ZERO } else { book.available().unwrap() };
                    prop_assert_eq!(escrow, expected);
                    if !book.closed {
                        open.push((id(1_000 + lease), book));
                    }
                }
            }
            // What each user has escrowed, and the leases it is paid on,
            // are read from its own rows: they agree with the books.
            for user in 0..USERS {
                let escrowed = open
                    .iter()
                    .filter(|(_, b)| b.customer == key(user))
                    .fold(Credits::ZERO, |sum, (_, b)| sum.checked_add(b.available().unwrap()).unwrap());
                prop_assert_eq!(ledger.escrowed_by(&key(user)).unwrap(), escrowed);
                let mut paid_on: Vec<_> = open
                    .iter()
                    .filter(|(_, b)| b.supplier == key(user))
                    .map(|(lease, _)| *lease)
                    .collect();
                paid_on.sort();
                let listed: Vec<_> = ledger
                    .open_leases_of_supplier(&key(user))
                    .unwrap()
                    .into_iter()
                    .map(|(lease, _)| lease)
                    .collect();
                prop_assert_eq!(listed, paid_on);
            }
        }
        let report = ledger.check_books().unwrap();
        prop_assert_eq!(report.totals.held().unwrap().units(), deposits - withdrawals);
        prop_assert!(ledger.verify_audit().unwrap().is_intact());
    }

    #[test]
    fn metering_in_one_window_or_many_pays_the_same(
        price in 1i64..50_000_000,
        windows in proptest::collection::vec(0u64..7_200_000, 1..40),
        escrow in 1i64..1_000_000_000,
        ppm in 0u32..200_000,
    ) {
        let settle = |split: bool| {
            let ledger = Ledger::in_memory().unwrap();
            let (customer, supplier, lease) = (key(1), key(2), id(500));
            ledger.deposit(customer, Credits::from_units(escrow), id(1), &cause(1)).unwrap();
            ledger
                .lock_escrow(
                    &EscrowLock {
                        lease,
                        order: id(2),
                        customer,
                        supplier,
                        amount: Credits::from_units(escrow),
                        price_per_gpu_hour: Credits::from_units(price),
                    },
                    &cause(2),
                )
                .unwrap();
            if split {
                for (w, gpu_ms) in windows.iter().enumerate() {
                    ledger.meter_window(&lease, w as u64, *gpu_ms, &cause(3)).unwrap();
                }
            } else {
                ledger.meter_window(&lease, 0, windows.iter().sum(), &cause(3)).unwrap();
            }
            let payout = ledger
                .settle(
                    &lease,
                    &SettleTerms {
                        request: id(4),
                        settlement_seq: 0,
                        fee_rate: FeeRate::from_ppm(ppm).unwrap(),
                        final_settlement: true,
                    },
                    &cause(4),
                )
                .unwrap();
            let balances = [
                ledger.balance(&Account::User(customer)).unwrap(),
                ledger.balance(&Account::User(supplier)).unwrap(),
                ledger.balance(&Account::Fees).unwrap(),
                ledger.balance(&Account::Escrow(lease)).unwrap(),
            ];
            (payout, balances)
        };
        let (one, one_balances) = settle(false);
        let (many, many_balances) = settle(true);
        prop_assert_eq!(one, many);
        prop_assert_eq!(one_balances, many_balances);
        prop_assert_eq!(
            one_balances.iter().map(|c| c.units()).sum::<i64>(),
            escrow
        );
    }
}

mod garbage_on_disk {
    //! Arbitrary bytes where records and keys should be: every read path
    //! answers with a value or an error, never a panic.

    use proptest::prelude::*;
    use rigmesh_ledger::audit::SealedAudit;
    use rigmesh_ledger::codec::Record;
    use rigmesh_ledger::columns::TREES;
    use rigmesh_ledger::keys::{Key, ShortBytes};
    use rigmesh_ledger::offers::OfferRecord;
    use rigmesh_ledger::schema::SchemaVersion;
    use rigmesh_ledger::{
        Account, Durability, JournalEntry, LeaseBook, Ledger, MemoryStore, Notification,
        OfferQuery, PeerScore, Rollup, Store,
    };
    use rigmesh_protocol::{Credits, Id, PublicKey, UnixMillis};

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = JournalEntry::from_record(&bytes);
            let _ = SealedAudit::from_record(&bytes);
            let _ = LeaseBook::from_record(&bytes);
            let _ = OfferRecord::from_record(&bytes);
            let _ = Notification::from_record(&bytes);
            let _ = PeerScore::from_record(&bytes);
            let _ = Rollup::from_record(&bytes);
            let _ = Credits::from_record(&bytes);
            let _ = SchemaVersion::from_record(&bytes);
            let _ = Account::from_key(&bytes);
            let _ = <(ShortBytes, Credits, Id)>::from_key(&bytes);
            let _ = <(PublicKey, u64)>::from_key(&bytes);
            let _ = <(UnixMillis, Id)>::from_key(&bytes);
        }

        #[test]
        fn a_ledger_full_of_garbage_answers_with_errors(
            rows in proptest::collection::vec(
                (0..TREES.len(), proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..80)),
                1..30,
            )
        ) {
            let store = MemoryStore::new();
            for (tree, key, value) in &rows {
                store.put(TREES[*tree], key, value).unwrap();
            }
            // Opening may refuse (a garbage schema version); reading must not panic.
            if let Ok(ledger) = Ledger::with_store(store, Durability::Buffered) {
                let _ = ledger.verify_audit();
                let _ = ledger.check_books();
                let _ = ledger.totals();
                let _ = ledger.journal(0, 100);
                let _ = ledger.audit_records(0, 100);
                let _ = ledger.pending_notifications(100);
                let _ = ledger.banned_peers(UnixMillis(0), 100);
                let _ = ledger.cheapest_offers(&OfferQuery {
                    gpu_model: String::new(),
                    min_memory_mib: 0,
                    min_gpus: 0,
                    max_price: None,
                    now: UnixMillis(0),
                    limit: 100,
                });
                let _ = ledger.deposit(PublicKey([1; 32]), Credits::from_units(1), Id([2; 32]), &super::cause(1));
            }
        }
    }
}
