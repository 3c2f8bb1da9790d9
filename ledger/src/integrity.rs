//! A coordinator's standing check of its books and audit chain, in rounds
//! whose work does not grow with the history.
//!
//! [`Ledger::check_books`] and [`Ledger::verify_audit`] walk the whole
//! journal and chain each time: right for an operator's check, but a
//! coordinator's books grow with every settlement and are kept for ever,
//! so a check that walked them all every few minutes would take longer
//! every day, hold the coordinator's other periodic duties up while it
//! ran, and read every page of the two largest trees each time.
//!
//! [`IntegrityCheck`] remembers where its last round left the books (how
//! long the journal was and what it added up to for each account) and the
//! chain (its head). Each round:
//! - replays only the journal entries written since onto those sums, and
//!   every stored balance must equal its sum (as in
//!   [`Ledger::check_books`]: none missing, none negative that must not
//!   be, held money equal to what came in from outside);
//! - walks only the audit records appended since, each linking on from
//!   the head it left;
//! - walks again, from the start, at most `per_round` of the older
//!   entries and as many records, into sums and a head of its own. When
//!   that walk reaches the point where it began (the point the rounds had
//!   reached then), it must arrive at the same sums and the same head, so
//!   an entry or record edited after it was first checked is found too.
//!   The next walk then begins at the rounds' latest point.
//!
//! The first round takes the books and the chain as they stand, without
//! reading the history; the first walk from the start then checks that
//! the history adds up to them. A problem found is reported by every
//! round after it: the rounds' own part does not move past a broken
//! link, and a journal whose walk arrived with other sums, or a chain
//! whose walk found a broken link or arrived at another head, is walked
//! again from its start, the rounds saying so until a walk arrives right
//! (so mending the books clears it, and nothing else does).

use std::collections::{HashMap, HashSet};

use crate::accounts::Account;
use crate::audit::{self, AuditHead, Break, BrokenLink, Walked};
use crate::columns::{AuditHeads, Balances, Slot, TypedStore};
use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::store::{Direction, Store};

/// Journal entries, and as many audit records, a coordinator's rounds walk
/// again: about a quarter of a second of one core per round here
/// (BENCHMARKS.md, the ledger bench).
pub const AGAIN_PER_ROUND: u64 = 50_000;

/// Where the books and the chain stood when checked.
#[derive(Debug, Clone, Default)]
struct Point {
    /// Journal entries before this point.
    journal: u64,
    /// What those entries add up to for each account they move.
    sums: HashMap<Account, i128>,
    /// The chain's head at this point.
    audit: AuditHead,
}

/// A walk of the history again, from its start to `until`.
#[derive(Debug)]
struct Again {
    /// Where the rounds stood when this walk began.
    until: Point,
    /// How far the walk has come.
    walked: Point,
    /// The journal's part arrived, with the sums it should have.
    journal_arrived: bool,
    /// What the last arrival of the journal's part found wrong: the
    /// journal is walked again from its start, and every round says so
    /// until that walk arrives with the sums it should have.
    journal_found: Option<String>,
    /// The chain's part arrived at the head it should have.
    audit_arrived: bool,
    /// What the chain's part last found wrong: a broken link on the way,
    /// or an arrival at another head. It is walked again from its start,
    /// every round saying so until a walk arrives at the right head (a
    /// walk that went on from the break would keep the hash of a record
    /// read there, and could not pass once that record is put back).
    audit_found: Option<BrokenLink>,
}

impl Again {
    fn to(until: Point) -> Self {
        Again {
            until,
            walked: Point::default(),
            journal_arrived: false,
            journal_found: None,
            audit_arrived: false,
            audit_found: None,
        }
    }
}

/// What one round of an [`IntegrityCheck`] checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Journal entries written since the round before, replayed.
    pub new_entries: u64,
    /// Audit records appended since the round before, walked.
    pub new_records: u64,
    /// Older journal entries replayed again.
    pub entries_again: u64,
    /// Older audit records walked again.
    pub records_again: u64,
    /// When the walk again reached where it began: the journal entries
    /// and audit records it checked from the start.
    pub history_checked: Option<(u64, u64)>,
    /// The first broken link of the audit chain found (the books' own
    /// problems are errors of [`IntegrityCheck::round`]).
    pub broken: Option<BrokenLink>,
}

/// The standing check; see the module's documentation.
#[derive(Debug)]
pub struct IntegrityCheck {
    per_round: u64,
    checked: Option<Point>,
    again: Option<Again>,
}

impl IntegrityCheck {
    /// A check whose rounds walk again at most `per_round` older journal
    /// entries and as many audit records (at least one of each).
    pub fn new(per_round: u64) -> Self {
        IntegrityCheck {
            per_round: per_round.max(1),
            checked: None,
            again: None,
        }
    }

    /// One round. A problem with the books is an error (a balance that
    /// does not equal its entries, a journal entry missing, unbalanced or
    /// undecodable, or history that no longer adds up to what it did); a
    /// broken audit chain is [`Round::broken`]. Nothing found wrong is
    /// moved past: the next round finds it again.
    pub fn round<S: Store>(&mut self, ledger: &Ledger<S>) -> Result<Round> {
        let mut round = Round::default();
        let checked = match self.checked.take() {
            Some(point) => point,
            None => {
                let point = ledger.standing()?;
                self.again = Some(Again::to(point.clone()));
                point
            }
        };
        let checked = self.checked.insert(checked);

        let books = ledger.check_books_from(checked.journal, &checked.sums)?;
        round.new_entries = books.report.entries.saturating_sub(checked.journal);
        for (account, added) in books.added {
            *checked.sums.entry(account).or_default() += added;
        }
        checked.journal = books.report.entries;

        let (report, head) = ledger.verify_audit_from(checked.audit)?;
        if let Some(broken) = report.broken {
            round.broken = Some(broken);
            return Ok(round);
        }
        round.new_records = head.next_seq.saturating_sub(checked.audit.next_seq);
        checked.audit = head;

        let again = self
            .again
            .get_or_insert_with(|| Again::to(Point::default()));
        let ((entries, records), broken) = Self::walk_again(ledger, again, self.per_round)?;
        round.entries_again = entries;
        round.records_again = records;
        if broken.is_some() {
            round.broken = broken;
            return Ok(round);
        }
        if again.journal_arrived && again.audit_arrived {
            round.history_checked = Some((again.until.journal, again.until.audit.next_seq));
            *again = Again::to(checked.clone());
        }
        Ok(round)
    }

    /// Walks `again` on by at most `per_round` journal entries and audit
    /// records, checking its arrival when it gets there: how many of each
    /// it walked, and the first broken link of the chain if any.
    fn walk_again<S: Store>(
        ledger: &Ledger<S>,
        again: &mut Again,
        per_round: u64,
    ) -> Result<((u64, u64), Option<BrokenLink>)> {
        let (until, walked) = (&again.until, &mut again.walked);
        let mut entries = 0;
        if walked.journal < until.journal {
            let to = walked.journal.saturating_add(per_round).min(until.journal);
            let mut added = HashMap::new();
            ledger.replay_journal(walked.journal, to, &mut added, &mut HashSet::new())?;
            for (account, added) in added {
                *walked.sums.entry(account).or_default() += added;
            }
            entries = to - walked.journal;
            walked.journal = to;
        }
        if walked.journal == until.journal && !again.journal_arrived {
            let sum = |sums: &HashMap<Account, i128>, account: &Account| {
                sums.get(account).copied().unwrap_or(0)
            };
            match until
                .sums
                .keys()
                .chain(walked.sums.keys())
                .find(|account| sum(&until.sums, account) != sum(&walked.sums, account))
            {
                Some(account) => {
                    // Said by every round until a walk of the journal
                    // from its start again arrives where it should.
                    again.journal_found = Some(format!(
                        "its first {} entries, replayed again, add {account} up to {} \
                         micro-credits, where the books stood at {} when the walk began",
                        until.journal,
                        sum(&walked.sums, account),
                        sum(&until.sums, account),
                    ));
                    *walked = Point {
                        audit: walked.audit,
                        ..Point::default()
                    };
                }
                None => {
                    again.journal_found = None;
                    again.journal_arrived = true;
                }
            }
        }
        if let Some(found) = &again.journal_found {
            return Err(Error::corrupt("journal", found.clone()));
        }
        let mut records = 0;
        if walked.audit.next_seq < until.audit.next_seq {
            let to = walked
                .audit
                .next_seq
                .saturating_add(per_round)
                .min(until.audit.next_seq);
            let found = match audit::walk_chain(
                ledger.audit_rows(walked.audit.next_seq, Some(to)),
                walked.audit,
            )? {
                Walked::Broken(report) => report.broken,
                Walked::Reached(reached) if reached.next_seq != to => {
                    // The slice stopped short: the record after the last
                    // one walked is not stored.
                    let found = match ledger.audit_rows(reached.next_seq, None).next() {
                        Some(row) => row?.0.ok(),
                        None => None,
                    };
                    Some(BrokenLink {
                        seq: reached.next_seq,
                        reason: match found {
                            Some(found) => Break::Missing { found },
                            None => Break::HeadMismatch {
                                expected: until.audit.next_seq,
                            },
                        },
                    })
                }
                Walked::Reached(reached) => {
                    records = to - walked.audit.next_seq;
                    walked.audit = reached;
                    None
                }
            };
            if found.is_some() {
                again.audit_found = found;
                walked.audit = AuditHead::default();
            }
        }
        if walked.audit.next_seq == until.audit.next_seq && !again.audit_arrived {
            if walked.audit == until.audit {
                again.audit_found = None;
                again.audit_arrived = true;
            } else {
                // Every record links to the one before, yet the chain ends
                // elsewhere than it did: records were rewritten, links and
                // all, since the point was checked.
                again.audit_found = Some(BrokenLink {
                    seq: until.audit.next_seq,
                    reason: Break::HeadMismatch {
                        expected: until.audit.next_seq,
                    },
                });
                walked.audit = AuditHead::default();
            }
        }
        if let Some(found) = &again.audit_found {
            return Ok(((entries, records), Some(found.clone())));
        }
        Ok(((entries, records), None))
    }
}

impl<S: Store> Ledger<S> {
    /// The books and the chain as they stand, read under the writers'
    /// lock so that they are those of one moment.
    fn standing(&self) -> Result<Point> {
        let _writers = self.lock();
        let mut sums = HashMap::new();
        for row in self.store().rows::<Balances>(Direction::Forward) {
            let (account, balance) = row?;
            sums.insert(account, i128::from(balance.units()));
        }
        Ok(Point {
            journal: self.journal_len()?,
            sums,
            audit: self
                .store()
                .get_in::<AuditHeads>(&Slot)?
                .unwrap_or_default(),
        })
    }
}
