//! A coordinator's standing check of its books and audit chain
//! (`rigmesh_ledger::integrity`): each round checks what was written since
//! the round before and walks a bounded slice of the history again; what
//! is wrong is found, whether it was written since or edited in a history
//! checked before, and is found again by every round after.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[macro_use]
mod common;

use common::{cause, credits, id, key};
use proptest::prelude::*;
use rigmesh_ledger::audit::{Break, SealedAudit};
use rigmesh_ledger::columns::{Audit, Balances, Journal};
use rigmesh_ledger::integrity::Round;
use rigmesh_ledger::{
    Account, Batch, BrokenLink, Error, IntegrityCheck, JournalEntry, Ledger, Movement, Store,
};

/// `n` deposits of 1 credit, spread over three accounts, numbered from
/// `from`.
fn deposits<S: Store>(ledger: &Ledger<S>, from: u64, n: u64) {
    for i in from..from + n {
        ledger
            .deposit(key(1 + (i % 3) as u8), credits("1"), id(i), &cause(i))
            .unwrap();
    }
}

/// Rounds until one says the walk again reached where it began; every
/// round before must pass. Returns the rounds, that one included.
fn rounds_to_a_checked_history<S: Store>(
    check: &mut IntegrityCheck,
    ledger: &Ledger<S>,
) -> Vec<Round> {
    let mut rounds = Vec::new();
    for _ in 0..1_000 {
        let round = check.round(ledger).unwrap();
        assert_eq!(round.broken, None);
        let done = round.history_checked.is_some();
        rounds.push(round);
        if done {
            return rounds;
        }
    }
    panic!("the walk again never reached where it began");
}

fn rounds_read_what_is_new_and_walk_the_history_again_in_slices<S: Store>(ledger: Ledger<S>) {
    deposits(&ledger, 0, 20);
    let (entries, records) = (ledger.journal_len().unwrap(), ledger.audit_len().unwrap());
    assert_eq!((entries, records), (20, 20));
    let mut check = IntegrityCheck::new(7);

    // The first round takes the books as they stand; its walk from the
    // start covers 7 entries and 7 records of the 20.
    let first = check.round(&ledger).unwrap();
    assert_eq!((first.new_entries, first.new_records), (0, 0));
    assert_eq!((first.entries_again, first.records_again), (7, 7));
    assert_eq!(first.history_checked, None);

    // What is written between rounds is what the next round replays.
    deposits(&ledger, 100, 4);
    let second = check.round(&ledger).unwrap();
    assert_eq!((second.new_entries, second.new_records), (4, 4));
    assert_eq!((second.entries_again, second.records_again), (7, 7));
    assert_eq!(second.history_checked, None);

    // The walk stops where the rounds stood when it began (20 of each),
    // not at the 24 written since.
    let third = check.round(&ledger).unwrap();
    assert_eq!((third.new_entries, third.new_records), (0, 0));
    assert_eq!((third.entries_again, third.records_again), (6, 6));
    assert_eq!(third.history_checked, Some((20, 20)));

    // The next walk goes to where the rounds stand now: 24 in 4 rounds.
    let rounds = rounds_to_a_checked_history(&mut check, &ledger);
    assert_eq!(rounds.len(), 4);
    assert!(rounds
        .iter()
        .all(|r| r.entries_again <= 7 && r.records_again <= 7));
    assert_eq!(rounds.last().unwrap().history_checked, Some((24, 24)));
    // The full check agrees with what the rounds walked.
    assert_eq!(ledger.check_books().unwrap().entries, 24);
    assert!(ledger.verify_audit().unwrap().is_intact());
}

fn an_edited_balance_is_found_by_every_round_until_it_is_put_back<S: Store>(ledger: Ledger<S>) {
    deposits(&ledger, 0, 6);
    let mut check = IntegrityCheck::new(100);
    check.round(&ledger).unwrap();
    let account = Account::User(key(2));
    let held = ledger.balance(&account).unwrap();
    assert_eq!(held, credits("2"));

    let mut batch = Batch::new();
    batch.put_in::<Balances>(&account, &credits("5")).unwrap();
    ledger.store().write(&batch).unwrap();
    for _ in 0..3 {
        match check.round(&ledger) {
            Err(Error::BooksMismatch {
                account: found,
                stored,
                journal,
            }) => {
                assert_eq!(found, account);
                assert_eq!(stored, credits("5"));
                assert_eq!(journal, i128::from(held.units()));
            }
            other => panic!("an edited balance went unnoticed: {other:?}"),
        }
    }

    let mut batch = Batch::new();
    batch.put_in::<Balances>(&account, &held).unwrap();
    ledger.store().write(&batch).unwrap();
    deposits(&ledger, 10, 2);
    let round = check.round(&ledger).unwrap();
    assert_eq!(round.new_entries, 2);
    assert_eq!(round.broken, None);
}

fn history_edited_after_it_was_checked_is_found_when_walked_again<S: Store>(ledger: Ledger<S>) {
    deposits(&ledger, 0, 30);
    let mut check = IntegrityCheck::new(10);
    rounds_to_a_checked_history(&mut check, &ledger);

    // Record 25 says something else, its hash recomputed: its successor
    // no longer links to it. Later, entry 12 pays key(3) what it paid
    // key(1): still balanced, so only its sums give it away.
    let (_, mut entry): (u64, JournalEntry) = ledger.journal(12, 1).unwrap().remove(0);
    let original = entry.clone();
    let to = entry
        .legs
        .iter_mut()
        .find(|leg| leg.account == Account::User(key(1)))
        .unwrap();
    to.account = Account::User(key(3));
    let record: SealedAudit = ledger.audit_records(25, 1).unwrap().remove(0);
    let mut edited = record.record.clone();
    edited.detail = "deposit 1 to someone else".into();
    let mut batch = Batch::new();
    batch.put_in::<Audit>(&25, &edited.seal().unwrap()).unwrap();
    ledger.store().write(&batch).unwrap();
    // The full check finds the record at once; the rounds, when their
    // walk gets back there: records 0..10 and 10..20 pass, 20..30 does
    // not. The chain is then walked again from its start, every round
    // saying so, and the walk finds it again when it gets back there.
    assert_eq!(
        ledger.verify_audit().unwrap().broken.map(|b| b.seq),
        Some(26)
    );
    for _ in 0..2 {
        let round = check.round(&ledger).unwrap();
        assert_eq!(round.broken, None);
    }
    let broken = BrokenLink {
        seq: 26,
        reason: Break::WrongLink,
    };
    let mut walked = Vec::new();
    for _ in 0..4 {
        let round = check.round(&ledger).unwrap();
        assert_eq!(round.broken, Some(broken.clone()));
        walked.push(round.records_again);
    }
    assert_eq!(walked, [0, 10, 10, 0]);

    // With the record put back, the walk from the start says so until it
    // arrives, and the next one finds entry 12 by its sums at its end,
    // and so does every round after.
    let mut batch = Batch::new();
    batch.put_in::<Audit>(&25, &record).unwrap();
    batch.put_in::<Journal>(&12, &entry).unwrap();
    ledger.store().write(&batch).unwrap();
    for _ in 0..2 {
        assert_eq!(check.round(&ledger).unwrap().broken, Some(broken.clone()));
    }
    assert_eq!(
        check.round(&ledger).unwrap().history_checked,
        Some((30, 30))
    );
    assert!(matches!(
        ledger.check_books(),
        Err(Error::BooksMismatch { .. })
    ));
    for _ in 0..2 {
        assert_eq!(check.round(&ledger).unwrap().broken, None);
    }
    // Every round says so, the journal walked again from its start
    // meanwhile: only a walk arriving with the right sums clears it.
    for _ in 0..3 {
        let err = check.round(&ledger).unwrap_err();
        assert!(
            err.to_string().contains("first 30 entries, replayed again"),
            "{err}"
        );
    }
    // Entry 12 put back while the walk is at 20: this walk read it
    // edited and arrives wrong; the one after it, three rounds on, is the
    // first to pass.
    let mut batch = Batch::new();
    batch.put_in::<Journal>(&12, &original).unwrap();
    ledger.store().write(&batch).unwrap();
    for _ in 0..3 {
        assert!(check.round(&ledger).is_err());
    }
    let round = check.round(&ledger).unwrap();
    assert_eq!(round.history_checked, Some((30, 30)));
    assert_eq!(ledger.check_books().unwrap().entries, 30);
}

fn a_chain_rewritten_links_and_all_is_found_at_the_walks_end_until_put_back<S: Store>(
    ledger: Ledger<S>,
) {
    deposits(&ledger, 0, 20);
    let mut check = IntegrityCheck::new(10);
    rounds_to_a_checked_history(&mut check, &ledger);

    // Record 5 says something else, and every record after it is sealed
    // again to link to the one before: each link holds, but the chain
    // ends at another hash than the one checked.
    let original: Vec<SealedAudit> = ledger.audit_records(0, 20).unwrap();
    let mut rewritten = original.clone();
    rewritten[5].record.detail = "deposit 1 to someone else".into();
    let mut batch = Batch::new();
    for seq in 5..20 {
        if seq > 5 {
            rewritten[seq].record.prev = rewritten[seq - 1].hash;
        }
        rewritten[seq] = rewritten[seq].record.clone().seal().unwrap();
        batch
            .put_in::<Audit>(&(seq as u64), &rewritten[seq])
            .unwrap();
    }
    ledger.store().write(&batch).unwrap();
    let at_the_end = Some(BrokenLink {
        seq: 20,
        reason: Break::HeadMismatch { expected: 20 },
    });
    // Records 0..10 link; 10..20 arrive at another head; then the chain
    // is walked again from its start, every round saying so.
    assert_eq!(check.round(&ledger).unwrap().broken, None);
    for _ in 0..3 {
        assert_eq!(check.round(&ledger).unwrap().broken, at_the_end);
    }
    // Put back as the walk starts again: the round walking 0..10 still
    // says so, the one arriving at the right head clears it.
    let mut batch = Batch::new();
    for (seq, record) in original.iter().enumerate().skip(5) {
        batch.put_in::<Audit>(&(seq as u64), record).unwrap();
    }
    ledger.store().write(&batch).unwrap();
    assert_eq!(check.round(&ledger).unwrap().broken, at_the_end);
    let round = check.round(&ledger).unwrap();
    assert_eq!(round.broken, None);
    assert_eq!(round.history_checked, Some((20, 20)));
}

fn a_record_put_back_after_the_walk_read_it_edited_clears_once_walked_again<S: Store>(
    ledger: Ledger<S>,
) {
    deposits(&ledger, 0, 30);
    let mut check = IntegrityCheck::new(10);
    rounds_to_a_checked_history(&mut check, &ledger);

    // Record 19, the last of the walk's second slice, says something
    // else, its hash recomputed: the slice 10..20 links, and the walk
    // finds the break at 20, whose link names the record as it was.
    let record: SealedAudit = ledger.audit_records(19, 1).unwrap().remove(0);
    let mut edited = record.record.clone();
    edited.detail = "deposit 1 to someone else".into();
    let mut batch = Batch::new();
    batch.put_in::<Audit>(&19, &edited.seal().unwrap()).unwrap();
    ledger.store().write(&batch).unwrap();
    let broken = Some(BrokenLink {
        seq: 20,
        reason: Break::WrongLink,
    });
    assert_eq!(check.round(&ledger).unwrap().broken, None);
    assert_eq!(check.round(&ledger).unwrap().broken, None);
    assert_eq!(check.round(&ledger).unwrap().broken, broken);

    // Put back: the walk, from the start again, reads it as it was. It
    // says so until it arrives, then the chain passes.
    let mut batch = Batch::new();
    batch.put_in::<Audit>(&19, &record).unwrap();
    ledger.store().write(&batch).unwrap();
    for _ in 0..2 {
        assert_eq!(check.round(&ledger).unwrap().broken, broken);
    }
    let round = check.round(&ledger).unwrap();
    assert_eq!(round.broken, None);
    assert_eq!(round.history_checked, Some((30, 30)));
    assert_eq!(ledger.verify_audit().unwrap().broken, None);
    rounds_to_a_checked_history(&mut check, &ledger);
}

fn the_first_round_trusts_the_balances_and_its_walk_checks_their_history<S: Store>(
    ledger: Ledger<S>,
) {
    deposits(&ledger, 0, 9);
    // Before any round, entry 4 says key(1) got key(2)'s deposit.
    let (_, mut entry): (u64, JournalEntry) = ledger.journal(4, 1).unwrap().remove(0);
    assert_eq!(entry.movement, Movement::Deposit);
    for leg in &mut entry.legs {
        if leg.account == Account::User(key(2)) {
            leg.account = Account::User(key(1));
        }
    }
    let mut batch = Batch::new();
    batch.put_in::<Journal>(&4, &entry).unwrap();
    ledger.store().write(&batch).unwrap();

    let mut check = IntegrityCheck::new(5);
    let first = check.round(&ledger).unwrap();
    assert_eq!(first.broken, None);
    assert_eq!((first.entries_again, first.records_again), (5, 5));
    let err = check.round(&ledger).unwrap_err();
    assert!(
        err.to_string().contains("first 9 entries, replayed again"),
        "{err}"
    );
}

on_both_backends!(
    rounds_read_what_is_new_and_walk_the_history_again_in_slices,
    an_edited_balance_is_found_by_every_round_until_it_is_put_back,
    history_edited_after_it_was_checked_is_found_when_walked_again,
    the_first_round_trusts_the_balances_and_its_walk_checks_their_history,
    a_chain_rewritten_links_and_all_is_found_at_the_walks_end_until_put_back,
    a_record_put_back_after_the_walk_read_it_edited_clears_once_walked_again,
);

#[test]
fn a_record_deleted_from_checked_history_is_found_by_the_walk() {
    for (deleted, reason) in [
        (6, Break::Missing { found: 7 }),
        (8, Break::HeadMismatch { expected: 9 }),
    ] {
        let ledger = common::sled_ledger();
        deposits(&ledger, 0, 9);
        let mut check = IntegrityCheck::new(5);
        assert_eq!(check.round(&ledger).unwrap().broken, None);
        let mut batch = Batch::new();
        batch.delete_in::<Audit>(&deleted);
        ledger.store().write(&batch).unwrap();
        // The rounds' own part reads nothing before the head; the walk,
        // at 5 of 9, gets there now, and stays there.
        for _ in 0..2 {
            assert_eq!(
                check.round(&ledger).unwrap().broken,
                Some(BrokenLink {
                    seq: deleted,
                    reason: reason.clone()
                })
            );
        }
    }
}

#[test]
fn rounds_pass_while_deposits_are_written_and_read_each_entry_once() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = std::sync::Arc::new(Ledger::open(dir.path()).unwrap());
    deposits(&ledger, 0, 40);
    let mut check = IntegrityCheck::new(16);
    assert_eq!(check.round(&*ledger).unwrap().broken, None);
    let writer = {
        let ledger = ledger.clone();
        std::thread::spawn(move || deposits(&ledger, 1_000, 300))
    };
    // Rounds one after another while the writer goes on: each reads the
    // heads, replays what came before them unlocked, and what was written
    // meanwhile under the lock; none may see books that do not add up.
    let (mut new_entries, mut new_records, mut rounds) = (0, 0, 0);
    while !writer.is_finished() {
        let round = check
            .round(&*ledger)
            .unwrap_or_else(|e| panic!("round {rounds} failed mid-write: {e}"));
        assert_eq!(round.broken, None, "round {rounds} mid-write");
        new_entries += round.new_entries;
        new_records += round.new_records;
        rounds += 1;
    }
    writer.join().unwrap();
    let round = check.round(&*ledger).unwrap();
    new_entries += round.new_entries;
    new_records += round.new_records;
    assert!(rounds > 1, "rounds ran while the deposits were written");
    // Every deposit written after the first round was replayed by exactly
    // one round after it, and its audit record walked by one.
    assert_eq!(new_entries, 300);
    assert_eq!(new_records, 300);
    let walked = rounds_to_a_checked_history(&mut check, &*ledger);
    assert!(walked
        .iter()
        .filter_map(|r| r.history_checked)
        .all(|(entries, records)| entries <= 340 && records <= 340));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Any history, checked in rounds of any size while it is written,
    /// passes every round; a balanced edit of any entry, at any time,
    /// is found within two walks of the history, as the full check finds
    /// it.
    #[test]
    fn rounds_pass_honest_books_and_find_any_edit_within_two_walks(
        writes in proptest::collection::vec((0u8..3, 1i64..1_000_000, any::<bool>()), 1..60),
        per_round in 1u64..20,
        rounds_between in 0usize..4,
        edit in any::<prop::sample::Index>(),
        edit_after in any::<prop::sample::Index>(),
    ) {
        let ledger = Ledger::in_memory().unwrap();
        let mut check = IntegrityCheck::new(per_round);
        let edit_after = edit_after.index(writes.len());
        let mut edited = false;
        for (n, (who, units, withdraw)) in writes.iter().enumerate() {
            let n = n as u64;
            let account = key(1 + who);
            let amount = rigmesh_protocol::Credits::from_units(*units);
            if *withdraw && ledger.balance(&Account::User(account)).unwrap() >= amount {
                ledger.withdraw(account, amount, id(n), &cause(n)).unwrap();
            } else {
                ledger.deposit(account, amount, id(n), &cause(n)).unwrap();
            }
            if n as usize == edit_after {
                // Every entry moves one user's money from or to outside:
                // giving it to another user keeps it balanced.
                let len = ledger.journal_len().unwrap();
                let seq = edit.index(len as usize) as u64;
                let (_, mut entry) = ledger.journal(seq, 1).unwrap().remove(0);
                for leg in &mut entry.legs {
                    if let Account::User(user) = leg.account {
                        leg.account = Account::User(key(1 + (user.0[0] % 3)));
                    }
                }
                let mut batch = Batch::new();
                batch.put_in::<Journal>(&seq, &entry).unwrap();
                ledger.store().write(&batch).unwrap();
                edited = true;
            }
            if !edited {
                for _ in 0..rounds_between {
                    let round = check.round(&ledger).unwrap();
                    prop_assert_eq!(round.broken, None);
                }
            }
        }
        prop_assert!(edited);
        prop_assert!(ledger.check_books().is_err());
        let mut walks = 0;
        let mut found = false;
        for _ in 0..1_000 {
            match check.round(&ledger) {
                Err(_) => {
                    found = true;
                    break;
                }
                Ok(round) => {
                    prop_assert_eq!(round.broken, None);
                    if round.history_checked.is_some() {
                        walks += 1;
                        prop_assert!(walks < 2, "two walks of the history passed an edited entry");
                    }
                }
            }
        }
        prop_assert!(found);
    }
}
