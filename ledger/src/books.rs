//! The books: balances, the journal and each lease's escrow, changed only
//! by balanced journal entries posted atomically with the balances they
//! move (one batch per call, with its audit record).
//!
//! The money path of a lease (specs/settlement.md sections 5 and 8):
//! [`Ledger::lock_escrow`] moves the customer's money into the lease's
//! escrow; [`Ledger::meter_window`] adds each window's billable
//! GPU-milliseconds to the lease's exact running total; [`Ledger::settle`]
//! charges that total once (the one rounding, [`crate::billing`]), pays the
//! supplier and the fee, and on the final settlement refunds the rest.
//!
//! No account but `External` ever goes below zero: a call that would take
//! one there fails with [`Error::InsufficientFunds`] and writes nothing.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

use bincode::{Decode, Encode};
use rigmesh_protocol::{Credits, Id, PublicKey, UnixMillis};

use crate::accounts::{require_positive, Account, JournalEntry, Movement};
use crate::audit::Action;
use crate::billing::{self, FeeRate, Payout, MS_PER_HOUR};
use crate::codec::Record;
use crate::columns::{
    Balances, ComparedHeads, Journal, JournalHeads, JournalIds, LeaseBooks, OpenByCustomer,
    OpenBySupplier, Rollups, Slot, TypedStore,
};
use crate::error::{Error, Result};
use crate::ledger::{Cause, Ledger, MAX_PAGE};
use crate::notices::Rollup;
use crate::store::{Batch, Direction, Store};

/// The next journal sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
pub struct JournalHead {
    /// Sequence the next entry gets (= entries so far).
    pub next_seq: u64,
}

impl Record for JournalHead {
    const WHAT: &'static str = "journal head";
}

/// How far a coordinator's comparison of its journal with the other
/// members' has come: every entry before `next_seq` was found posted at
/// every member that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
pub struct ComparedHead {
    /// The first journal sequence not confirmed yet.
    pub next_seq: u64,
}

impl Record for ComparedHead {
    const WHAT: &'static str = "compared head";
}

/// A lease's escrow and metering state.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LeaseBook {
    /// Id of the escrow order that funded it.
    pub order: Id,
    /// The customer (pays, gets refunds).
    pub customer: PublicKey,
    /// The supplier (gets paid).
    pub supplier: PublicKey,
    /// Agreed price of one GPU for one hour.
    pub price_per_gpu_hour: Credits,
    /// What the escrow was funded with.
    pub amount: Credits,
    /// Paid out of it so far (supplier shares and fees).
    pub paid: Credits,
    /// Sequence the next settlement must have.
    pub next_settlement_seq: u64,
    /// First window not yet settled.
    pub next_window: u64,
    /// Next window to meter (windows `next_window..metered_windows` are
    /// metered and waiting for settlement).
    pub metered_windows: u64,
    /// Exact billable GPU-milliseconds of the windows waiting.
    pub unsettled_gpu_ms: u64,
    /// True once the final settlement is applied.
    pub closed: bool,
}

impl LeaseBook {
    /// What the escrow still holds for payouts.
    pub fn available(&self) -> Result<Credits> {
        self.amount
            .checked_sub(self.paid)
            .ok_or(Error::Overflow("an escrow's remainder"))
    }
}

impl Record for LeaseBook {
    const WHAT: &'static str = "lease book";
}

/// Adds the write of `lease`'s book to `batch`, with the indexes of open
/// leases kept in step with it: an open book is listed under its customer
/// and its supplier, a closed one under neither. Every write of a lease's
/// book goes through here, so what an account has escrowed, or which
/// leases a supplier has open, is read from the account's own rows
/// rather than from every book ever written. `was_closed` is the stored
/// book's `closed` before this write (`None` for a new book): the index
/// rows are written only when that changes, as a book's order, customer
/// and supplier never do.
pub(crate) fn put_lease_book(
    batch: &mut Batch,
    lease: &Id,
    book: &LeaseBook,
    was_closed: Option<bool>,
) -> Result<()> {
    batch.put_in::<LeaseBooks>(lease, book)?;
    if was_closed == Some(book.closed) {
        return Ok(());
    }
    let (by_customer, by_supplier) = ((book.customer, *lease), (book.supplier, *lease));
    if book.closed {
        batch.delete_in::<OpenByCustomer>(&by_customer);
        batch.delete_in::<OpenBySupplier>(&by_supplier);
    } else {
        batch.put_in::<OpenByCustomer>(&by_customer, &book.order)?;
        batch.put_in::<OpenBySupplier>(&by_supplier, &book.order)?;
    }
    Ok(())
}

/// A customer's order to fund a lease (an applied escrow certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EscrowLock {
    /// The lease (id of its agreement).
    pub lease: Id,
    /// The escrow order's id; the journal entry's id.
    pub order: Id,
    /// Who pays.
    pub customer: PublicKey,
    /// Who will be paid.
    pub supplier: PublicKey,
    /// How much is locked.
    pub amount: Credits,
    /// Agreed price of one GPU for one hour.
    pub price_per_gpu_hour: Credits,
}

/// A settlement of the windows metered since the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleTerms {
    /// Id of the settlement request (entry ids derive from it).
    pub request: Id,
    /// Its sequence within the lease.
    pub settlement_seq: u64,
    /// The epoch's fee rate.
    pub fee_rate: FeeRate,
    /// True for the last settlement: refunds the rest and closes the lease.
    pub final_settlement: bool,
}

/// Sums over the balances, by kind of account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Users' balances.
    pub users: Credits,
    /// The fee account.
    pub fees: Credits,
    /// Every lease's escrow.
    pub escrow: Credits,
    /// Charged and not yet paid out (zero between calls).
    pub payable: Credits,
    /// Held out of escrows while disputes are reviewed.
    pub disputed: Credits,
    /// The external account: minus (deposits - withdrawals).
    pub external: Credits,
}

impl Totals {
    /// Everything held inside rigmesh: users + fees + escrow + payable +
    /// disputed. Equals deposits minus withdrawals.
    pub fn held(&self) -> Result<Credits> {
        self.users
            .checked_add(self.fees)
            .and_then(|c| c.checked_add(self.escrow))
            .and_then(|c| c.checked_add(self.payable))
            .and_then(|c| c.checked_add(self.disputed))
            .ok_or(Error::Overflow("the sum of balances"))
    }

    /// Adds `account`'s balance to its kind's sum.
    fn add(&mut self, account: &Account, balance: Credits) -> Result<()> {
        let slot = match account {
            Account::External => &mut self.external,
            Account::Fees => &mut self.fees,
            Account::User(_) => &mut self.users,
            Account::Escrow(_) => &mut self.escrow,
            Account::Payable(_) => &mut self.payable,
            Account::Disputed(_) => &mut self.disputed,
        };
        *slot = slot
            .checked_add(balance)
            .ok_or(Error::Overflow("the sum of balances"))?;
        Ok(())
    }
}

/// What [`Ledger::check_books`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BooksReport {
    /// Journal entries the check covers: where the journal stood.
    pub entries: u64,
    /// Accounts with a non-zero balance.
    pub accounts: u64,
    /// The balances' sums.
    pub totals: Totals,
}

/// What [`Ledger::check_books_from`] found: the report, and what the
/// entries it replayed added to each account.
pub(crate) struct BooksFrom {
    /// The report; its `entries` is where the journal stood.
    pub(crate) report: BooksReport,
    /// What the replayed entries added to each account they moved.
    pub(crate) added: HashMap<Account, i128>,
}

/// Journal entries being prepared for one batch, with the balances they
/// leave behind.
pub(crate) struct Posting<'a, S: Store> {
    store: &'a S,
    balances: HashMap<Account, Credits>,
    ids: Vec<Id>,
    next_seq: u64,
    batch: Batch,
}

impl<'a, S: Store> Posting<'a, S> {
    pub(crate) fn new(store: &'a S) -> Result<Self> {
        let head = store.get_in::<JournalHeads>(&Slot)?.unwrap_or_default();
        Ok(Posting {
            store,
            balances: HashMap::new(),
            ids: Vec::new(),
            next_seq: head.next_seq,
            batch: Batch::new(),
        })
    }

    fn balance(&mut self, account: Account) -> Result<Credits> {
        if let Some(balance) = self.balances.get(&account) {
            return Ok(*balance);
        }
        let stored = self
            .store
            .get_in::<Balances>(&account)?
            .unwrap_or(Credits::ZERO);
        self.balances.insert(account, stored);
        Ok(stored)
    }

    pub(crate) fn post(&mut self, entry: &JournalEntry) -> Result<u64> {
        entry.check()?;
        if self.ids.contains(&entry.id) || self.store.get_in::<JournalIds>(&entry.id)?.is_some() {
            return Err(Error::AlreadyPosted(entry.id));
        }
        let mut after = Vec::with_capacity(entry.legs.len());
        for leg in &entry.legs {
            let balance = self.balance(leg.account)?;
            let new = balance
                .checked_add(leg.amount)
                .ok_or(Error::Overflow("a balance"))?;
            if leg.account.must_stay_positive() && new.is_negative() {
                return Err(Error::InsufficientFunds {
                    account: leg.account,
                    balance,
                    needed: leg.amount.checked_neg().unwrap_or(Credits::MAX),
                });
            }
            after.push((leg.account, new));
        }
        self.balances.extend(after);
        let seq = self.next_seq;
        self.batch.put_in::<Journal>(&seq, entry)?;
        self.batch.put_in::<JournalIds>(&entry.id, &seq)?;
        self.ids.push(entry.id);
        self.next_seq = seq
            .checked_add(1)
            .ok_or(Error::Overflow("the journal sequence"))?;
        Ok(seq)
    }

    /// The batch: entries, the balances they leave (zero balances are
    /// removed, so finished leases leave no rows) and the journal head.
    pub(crate) fn finish(mut self) -> Result<Batch> {
        for (account, balance) in &self.balances {
            if balance.is_zero() {
                self.batch.delete_in::<Balances>(account);
            } else {
                self.batch.put_in::<Balances>(account, balance)?;
            }
        }
        self.batch.put_in::<JournalHeads>(
            &Slot,
            &JournalHead {
                next_seq: self.next_seq,
            },
        )?;
        Ok(self.batch)
    }
}

/// The journal entries of one settlement of `lease`: the charge out of the
/// escrow, the supplier's share, the fee and, when final, the refund, each
/// with an id derived from the settlement `request`.
pub(crate) fn settlement_posting<'a, S: Store>(
    store: &'a S,
    lease: &Id,
    request: &Id,
    payout: &Payout,
    (supplier, customer): (PublicKey, PublicKey),
    at: UnixMillis,
    cause: Id,
) -> Result<Posting<'a, S>> {
    let escrow = Account::Escrow(*lease);
    let payable = Account::Payable(*lease);
    let moves = [
        (Movement::UsageCharge, escrow, payable, payout.paid_now),
        (
            Movement::SupplierCredit,
            payable,
            Account::User(supplier),
            payout.supplier,
        ),
        (Movement::CoordinatorFee, payable, Account::Fees, payout.fee),
        (
            Movement::Refund,
            escrow,
            Account::User(customer),
            payout.refund,
        ),
        (
            Movement::DisputeHold,
            escrow,
            Account::Disputed(*lease),
            payout.held,
        ),
    ];
    let mut posting = Posting::new(store)?;
    for (movement, from, to, amount) in moves {
        if amount.is_zero() {
            continue;
        }
        posting.post(&JournalEntry::transfer(
            derived_entry_id(request, movement),
            movement,
            from,
            to,
            amount,
            at,
            cause,
        )?)?;
    }
    Ok(posting)
}

/// The id of the entry of `movement` caused by message `cause` (one
/// message can cause several movements, each posted at most once).
pub fn derived_entry_id(cause: &Id, movement: Movement) -> Id {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"rigmesh/ledger/entry/v1");
    hasher.update(cause.as_bytes());
    hasher.update(movement.name().as_bytes());
    Id(*hasher.finalize().as_bytes())
}

impl<S: Store> Ledger<S> {
    /// The balance of `account` (zero if it never held anything).
    pub fn balance(&self, account: &Account) -> Result<Credits> {
        Ok(self
            .store()
            .get_in::<Balances>(account)?
            .unwrap_or(Credits::ZERO))
    }

    /// Every account with a non-zero balance, in account order.
    pub fn balances(&self) -> Result<Vec<(Account, Credits)>> {
        self.store()
            .rows::<Balances>(Direction::Forward)
            .collect::<Result<Vec<_>>>()
    }

    /// A lease's escrow and metering state.
    pub fn lease_book(&self, lease: &Id) -> Result<Option<LeaseBook>> {
        self.store().get_in::<LeaseBooks>(lease)
    }

    /// Up to `limit` (at most [`MAX_PAGE`]) journal entries from `from_seq`.
    pub fn journal(&self, from_seq: u64, limit: usize) -> Result<Vec<(u64, JournalEntry)>> {
        self.store()
            .rows_in::<Journal>(
                Bound::Included(&from_seq),
                Bound::Unbounded,
                Direction::Forward,
            )
            .take(limit.min(MAX_PAGE))
            .collect()
    }

    /// Entries posted so far.
    pub fn journal_len(&self) -> Result<u64> {
        Ok(self
            .store()
            .get_in::<JournalHeads>(&Slot)?
            .unwrap_or_default()
            .next_seq)
    }

    /// The first journal sequence the comparison with the other members
    /// has not confirmed yet (zero before any comparison).
    pub fn compared_through(&self) -> Result<u64> {
        Ok(self
            .store()
            .get_in::<ComparedHeads>(&Slot)?
            .unwrap_or_default()
            .next_seq)
    }

    /// Records that every entry before `next_seq` was found posted at
    /// every member that answered; the mark never moves back, nor past
    /// the journal. Returns the mark as it stands.
    pub fn set_compared_through(&self, next_seq: u64, cause: &Cause) -> Result<u64> {
        let guard = self.lock();
        let len = self.journal_len()?;
        let before = self.compared_through()?;
        let next_seq = next_seq.min(len);
        if next_seq <= before {
            return Ok(before);
        }
        let mut batch = Batch::new();
        batch.put_in::<ComparedHeads>(&Slot, &ComparedHead { next_seq })?;
        self.commit(
            guard,
            batch,
            Action::BooksCompared,
            &format!("journal compared through entry {next_seq}"),
            cause,
        )?;
        Ok(next_seq)
    }

    /// The entry posted with `id`, with its journal sequence.
    pub fn entry(&self, id: &Id) -> Result<Option<(u64, JournalEntry)>> {
        let Some(seq) = self.store().get_in::<JournalIds>(id)? else {
            return Ok(None);
        };
        Ok(self
            .store()
            .get_in::<Journal>(&seq)?
            .map(|entry| (seq, entry)))
    }

    /// True if an entry with `id` is posted.
    pub fn is_posted(&self, id: &Id) -> Result<bool> {
        Ok(self.store().get_in::<JournalIds>(id)?.is_some())
    }

    /// Money enters `account` from outside; `deposit` is the deposit's
    /// unique id (a deposit is applied at most once). Returns the journal
    /// sequence.
    pub fn deposit(
        &self,
        account: PublicKey,
        amount: Credits,
        deposit: Id,
        cause: &Cause,
    ) -> Result<u64> {
        require_positive("deposit", amount)?;
        let entry = JournalEntry::transfer(
            deposit,
            Movement::Deposit,
            Account::External,
            Account::User(account),
            amount,
            cause.at,
            cause.message,
        )?;
        self.post_entries(
            &[entry],
            Action::Deposit,
            &format!("deposit {amount} to {account}"),
            cause,
        )
    }

    /// Money leaves `account`; fails, writing nothing, if the balance does
    /// not cover it.
    pub fn withdraw(
        &self,
        account: PublicKey,
        amount: Credits,
        withdrawal: Id,
        cause: &Cause,
    ) -> Result<u64> {
        require_positive("withdrawal", amount)?;
        let entry = JournalEntry::transfer(
            withdrawal,
            Movement::Withdrawal,
            Account::User(account),
            Account::External,
            amount,
            cause.at,
            cause.message,
        )?;
        self.post_entries(
            &[entry],
            Action::Withdrawal,
            &format!("withdraw {amount} from {account}"),
            cause,
        )
    }

    /// Posts a balanced entry between users, the fee account and the
    /// outside. Lease accounts (escrow, payable) change only through
    /// [`Ledger::lock_escrow`] and [`Ledger::settle`], which keep the lease
    /// books in step, so entries naming them are refused here.
    pub fn post(&self, entry: &JournalEntry, cause: &Cause) -> Result<u64> {
        if let Some(leg) = entry.legs.iter().find(|l| {
            matches!(
                l.account,
                Account::Escrow(_) | Account::Payable(_) | Account::Disputed(_)
            )
        }) {
            return Err(Error::WrongAccount {
                account: leg.account,
                movement: entry.movement.name(),
            });
        }
        self.post_entries(
            std::slice::from_ref(entry),
            Action::JournalPosted,
            &format!("{} entry {}", entry.movement, entry.id),
            cause,
        )
    }

    fn post_entries(
        &self,
        entries: &[JournalEntry],
        action: Action,
        detail: &str,
        cause: &Cause,
    ) -> Result<u64> {
        let lock = self.lock();
        let mut posting = Posting::new(self.store())?;
        let mut last = 0;
        for entry in entries {
            last = posting.post(entry)?;
        }
        self.commit(lock, posting.finish()?, action, detail, cause)?;
        Ok(last)
    }

    /// Locks `lock.amount` of the customer's balance in the lease's escrow
    /// and opens the lease's book. Refused, writing nothing, if the lease
    /// is already funded or the balance does not cover it.
    pub fn lock_escrow(&self, lock: &EscrowLock, cause: &Cause) -> Result<u64> {
        require_positive("escrow", lock.amount)?;
        require_positive("price", lock.price_per_gpu_hour)?;
        let guard = self.lock();
        if self.store().get_in::<LeaseBooks>(&lock.lease)?.is_some() {
            return Err(Error::lease(lock.lease, "already funded"));
        }
        let entry = JournalEntry::transfer(
            lock.order,
            Movement::EscrowLock,
            Account::User(lock.customer),
            Account::Escrow(lock.lease),
            lock.amount,
            cause.at,
            cause.message,
        )?;
        let mut posting = Posting::new(self.store())?;
        let seq = posting.post(&entry)?;
        let mut batch = posting.finish()?;
        put_lease_book(
            &mut batch,
            &lock.lease,
            &LeaseBook {
                order: lock.order,
                customer: lock.customer,
                supplier: lock.supplier,
                price_per_gpu_hour: lock.price_per_gpu_hour,
                amount: lock.amount,
                paid: Credits::ZERO,
                next_settlement_seq: 0,
                next_window: 0,
                metered_windows: 0,
                unsettled_gpu_ms: 0,
                closed: false,
            },
            None,
        )?;
        self.commit(
            guard,
            batch,
            Action::EscrowLocked,
            &format!("lock {} for lease {}", lock.amount, lock.lease),
            cause,
        )?;
        Ok(seq)
    }

    /// Adds window `window`'s billable GPU-milliseconds to the lease's
    /// running total. Windows are metered in order, each once; a disputed
    /// window is metered with 0.
    pub fn meter_window(
        &self,
        lease: &Id,
        window: u64,
        billable_gpu_ms: u64,
        cause: &Cause,
    ) -> Result<LeaseBook> {
        let guard = self.lock();
        let mut book = self
            .store()
            .get_in::<LeaseBooks>(lease)?
            .ok_or_else(|| Error::lease(*lease, "not funded"))?;
        if book.closed {
            return Err(Error::lease(*lease, "closed"));
        }
        if window != book.metered_windows {
            return Err(Error::lease(
                *lease,
                format!(
                    "window {window} metered out of order, next is {}",
                    book.metered_windows
                ),
            ));
        }
        let mut meter = billing::Meter::default();
        meter.add_window(book.unsettled_gpu_ms)?;
        meter.add_window(billable_gpu_ms)?;
        book.unsettled_gpu_ms = meter.gpu_ms();
        book.metered_windows = window
            .checked_add(1)
            .ok_or(Error::Overflow("the window sequence"))?;
        let mut batch = Batch::new();
        put_lease_book(&mut batch, lease, &book, Some(false))?;
        self.commit(
            guard,
            batch,
            Action::UsageMetered,
            &format!("lease {lease} window {window}: {billable_gpu_ms} GPU-ms"),
            cause,
        )?;
        Ok(book)
    }

    /// Settles the windows metered since the last settlement: charges the
    /// exact total once (capped at the escrow), pays the supplier and the
    /// fee, and on the final settlement refunds the rest and closes the
    /// lease. Updates the hourly rollups of both parties.
    pub fn settle(&self, lease: &Id, terms: &SettleTerms, cause: &Cause) -> Result<Payout> {
        let guard = self.lock();
        let mut book = self
            .store()
            .get_in::<LeaseBooks>(lease)?
            .ok_or_else(|| Error::lease(*lease, "not funded"))?;
        if book.closed {
            return Err(Error::lease(*lease, "closed"));
        }
        if terms.settlement_seq != book.next_settlement_seq {
            return Err(Error::lease(
                *lease,
                format!(
                    "settlement {} out of order, next is {}",
                    terms.settlement_seq, book.next_settlement_seq
                ),
            ));
        }
        let payout = billing::payout(
            book.price_per_gpu_hour,
            book.unsettled_gpu_ms,
            book.available()?,
            terms.fee_rate,
            terms.final_settlement,
        )?;
        let posting = settlement_posting(
            self.store(),
            lease,
            &terms.request,
            &payout,
            (book.supplier, book.customer),
            cause.at,
            cause.message,
        )?;
        let mut batch = posting.finish()?;

        book.paid = book
            .paid
            .checked_add(payout.paid_now)
            .ok_or(Error::Overflow("an escrow's paid total"))?;
        book.next_settlement_seq = book
            .next_settlement_seq
            .checked_add(1)
            .ok_or(Error::Overflow("the settlement sequence"))?;
        book.next_window = book.metered_windows;
        book.unsettled_gpu_ms = 0;
        book.closed = terms.final_settlement;
        // Open until now: refused above otherwise.
        put_lease_book(&mut batch, lease, &book, Some(false))?;
        self.add_rollups(&mut batch, &book, &payout, cause.at)?;

        self.commit(
            guard,
            batch,
            Action::Settled,
            &format!(
                "lease {lease} settlement {}: {} GPU-ms, paid {}, fee {}, supplier {}, refund {}{}",
                terms.settlement_seq,
                payout.billable_gpu_ms,
                payout.paid_now,
                payout.fee,
                payout.supplier,
                payout.refund,
                if terms.final_settlement {
                    ", final"
                } else {
                    ""
                }
            ),
            cause,
        )?;
        Ok(payout)
    }

    pub(crate) fn add_rollups(
        &self,
        batch: &mut Batch,
        book: &LeaseBook,
        payout: &Payout,
        at: UnixMillis,
    ) -> Result<()> {
        let hour = at.0 / MS_PER_HOUR;
        let mut rollups: HashMap<PublicKey, Rollup> = HashMap::new();
        for party in [book.customer, book.supplier] {
            if let Entry::Vacant(slot) = rollups.entry(party) {
                slot.insert(
                    self.store()
                        .get_in::<Rollups>(&(party, hour))?
                        .unwrap_or_default(),
                );
            }
        }
        let overflow = || Error::Overflow("an hourly rollup");
        if let Some(r) = rollups.get_mut(&book.customer) {
            r.used_gpu_ms = r
                .used_gpu_ms
                .checked_add(payout.billable_gpu_ms)
                .ok_or_else(overflow)?;
            r.spent = r.spent.checked_add(payout.paid_now).ok_or_else(overflow)?;
        }
        if let Some(r) = rollups.get_mut(&book.supplier) {
            r.supplied_gpu_ms = r
                .supplied_gpu_ms
                .checked_add(payout.billable_gpu_ms)
                .ok_or_else(overflow)?;
            r.earned = r.earned.checked_add(payout.supplier).ok_or_else(overflow)?;
        }
        for (party, rollup) in rollups {
            batch.put_in::<Rollups>(&(party, hour), &rollup)?;
        }
        Ok(())
    }

    /// Sums of all balances by kind of account.
    pub fn totals(&self) -> Result<Totals> {
        let mut totals = Totals::default();
        for row in self.store().rows::<Balances>(Direction::Forward) {
            let (account, balance) = row?;
            totals.add(&account, balance)?;
        }
        Ok(totals)
    }

    /// Replays the whole journal and checks the books: entries numbered
    /// without gaps up to the journal head, each balanced, and every stored
    /// balance equal to the sum of its legs (and none missing). Also
    /// checks that held money equals minus the external balance.
    ///
    /// Writers are kept out only at the two ends of the walk, not while it
    /// reads: the journal's head is read under the writers' lock, then the
    /// entries before it (never changed once written) are replayed and
    /// every balance is read without it; under the lock again, the entries
    /// written meanwhile are replayed and the balances they touched read
    /// once more. So the books compared are those of one moment (a batch
    /// written mid-walk does not look like books that do not add up),
    /// while votes and certificates go on being applied during the walk.
    pub fn check_books(&self) -> Result<BooksReport> {
        Ok(self.check_books_from(0, &HashMap::new())?.report)
    }

    /// Checks the books as [`Ledger::check_books`] does, but replays only
    /// the journal entries from `from`: `before` holds what the entries
    /// before it sum to for each account (walked before, and not read
    /// again). Returns what the entries from `from` added to each account,
    /// besides the report.
    pub(crate) fn check_books_from(
        &self,
        from: u64,
        before: &HashMap<Account, i128>,
    ) -> Result<BooksFrom> {
        let start = {
            let _writers = self.lock();
            self.journal_len()?
        };
        let mut added: HashMap<Account, i128> = HashMap::new();
        self.replay_journal(from, start, &mut added, &mut HashSet::new())?;
        let mut stored: BTreeMap<Account, Credits> = BTreeMap::new();
        for row in self.store().rows::<Balances>(Direction::Forward) {
            let (account, balance) = row?;
            stored.insert(account, balance);
        }
        let entries = {
            let _writers = self.lock();
            let end = self.journal_len()?;
            let mut touched = HashSet::new();
            self.replay_journal(start, end, &mut added, &mut touched)?;
            if let Some(row) = self
                .store()
                .rows_in::<Journal>(Bound::Included(&end), Bound::Unbounded, Direction::Forward)
                .next()
            {
                let (seq, _) = row?;
                return Err(Error::corrupt(
                    "journal",
                    format!("entry {seq} lies past the head ({end})"),
                ));
            }
            for account in touched {
                match self.store().get_in::<Balances>(&account)? {
                    Some(balance) => stored.insert(account, balance),
                    None => stored.remove(&account),
                };
            }
            end
        };
        let journal_sum = |account: &Account| {
            before.get(account).copied().unwrap_or(0) + added.get(account).copied().unwrap_or(0)
        };
        let mut totals = Totals::default();
        for (account, stored) in &stored {
            let journal = journal_sum(account);
            if journal != i128::from(stored.units()) {
                return Err(Error::BooksMismatch {
                    account: *account,
                    stored: *stored,
                    journal,
                });
            }
            if account.must_stay_positive() && stored.is_negative() {
                return Err(Error::corrupt("balances", format!("{account} is negative")));
            }
            totals.add(account, *stored)?;
        }
        if let Some((account, journal)) = before
            .keys()
            .chain(added.keys())
            .filter(|account| !stored.contains_key(account))
            .map(|account| (*account, journal_sum(account)))
            .find(|(_, sum)| *sum != 0)
        {
            return Err(Error::BooksMismatch {
                account,
                stored: Credits::ZERO,
                journal,
            });
        }
        let external = totals
            .external
            .checked_neg()
            .ok_or(Error::Overflow("the external balance"))?;
        if totals.held()? != external {
            return Err(Error::corrupt(
                "balances",
                format!(
                    "held {} but deposits - withdrawals is {external}",
                    totals.held()?
                ),
            ));
        }
        Ok(BooksFrom {
            report: BooksReport {
                entries,
                accounts: stored.len() as u64,
                totals,
            },
            added,
        })
    }

    /// Replays the journal entries `from..to` into `sums`, noting each
    /// account a leg moves in `touched`: they must be there, numbered
    /// without gaps, each balanced.
    pub(crate) fn replay_journal(
        &self,
        from: u64,
        to: u64,
        sums: &mut HashMap<Account, i128>,
        touched: &mut HashSet<Account>,
    ) -> Result<()> {
        let mut expected = from;
        for row in self.store().rows_in::<Journal>(
            Bound::Included(&from),
            Bound::Excluded(&to),
            Direction::Forward,
        ) {
            let (seq, entry) = row?;
            if seq != expected {
                return Err(Error::corrupt(
                    "journal",
                    format!("entry {expected} is missing (next is {seq})"),
                ));
            }
            entry.check()?;
            for leg in &entry.legs {
                *sums.entry(leg.account).or_default() += i128::from(leg.amount.units());
                touched.insert(leg.account);
            }
            expected += 1;
        }
        if expected != to {
            return Err(Error::corrupt(
                "journal",
                format!("{expected} entries, head says {to}"),
            ));
        }
        Ok(())
    }
}
