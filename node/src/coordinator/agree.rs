//! A coordinator's check that the other members of its set hold the same
//! books, every `[coordinators] books_compare_secs`, in two ways:
//!
//! - Journal entries. Honest members post the same entries under the same
//!   ids (each derived from the certificate or deposit behind it), in
//!   whatever order. Every entry this member posted at least one period
//!   ago is asked about once (`CoordinatorRequest::Posted`), oldest
//!   first, from the start of its journal; an entry another member has
//!   not posted is asked about again the next round, and so are new
//!   entries no other member answered about at all. An entry a member
//!   still lacks then (at least two periods after this member posted it)
//!   is a lasting difference, however much the accounts it touched have
//!   moved since.
//! - Balances. The accounts of the most recent journal entries are read as
//!   this member holds them and as every other member answers them
//!   (`CoordinatorRequest::AccountOf`): balance, debit sequence and
//!   escrow. A member that answers differently on two comparisons in a
//!   row, while neither side's value moved, holds other amounts than its
//!   entries say (a faulty member, or a bug).
//!
//! Either raises `books.disagree` (critical, for the operators) about the
//! member, once, until it agrees again on both.
//!
//! How far the journal comparison has come is kept in the ledger (the
//! oldest entry some member still lacks, or the first one not asked
//! about), so a restarted member goes on from there instead of asking
//! about its whole journal again. A journal that grows faster than the
//! comparison can ask falls behind: behind and not catching up on
//! [`BEHIND_ROUNDS`] rounds in a row raises `books.compare_behind`
//! (warning, for the operators), resolved once it has caught up.
//!
//! Honest members that applied the same certificates hold identical books
//! (specs/settlement.md 10): a lasting difference is a member that missed
//! certificates and does not catch up, a faulty member, or a bug.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rigmesh_ledger::{Account, Cause};
use rigmesh_protocol::rpc::{AccountState, MAX_POSTED_ASKED};
use rigmesh_protocol::{
    Alert, Audience, Credits, Id, PublicKey, Severity, UnixMillis, PROTOCOL_VERSION,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::coordinator::CoordinatorRole;
use crate::notify::AlertSink;
use crate::quorum::Quorum;

/// Rule of the alert.
pub const DISAGREE_RULE: &str = "books.disagree";
/// Rule of the alert about a comparison that does not keep up.
pub const BEHIND_RULE: &str = "books.compare_behind";
/// Rounds in a row a comparison is behind and not catching up before
/// the operators hear of it.
pub const BEHIND_ROUNDS: u32 = 3;

/// Accounts compared per round.
const ACCOUNTS_PER_ROUND: usize = 8;
/// Journal entries the accounts are taken from.
const RECENT_ENTRIES: u64 = 64;
/// New journal entries asked about per round, at most; a journal growing
/// faster than this per period is compared later, in order.
const NEW_ENTRIES_PER_ROUND: u64 = 16 * MAX_POSTED_ASKED as u64;
/// Entries a member is suspected of lacking that are asked about again,
/// at most (the oldest are kept).
const MAX_SUSPECTS: usize = MAX_POSTED_ASKED;

/// An account as one member holds it: balance, next debit sequence,
/// escrowed.
pub type View = (Credits, u64, Credits);

fn view(state: &AccountState) -> View {
    (state.balance, state.next_seq, state.escrowed)
}

/// What one round of comparison found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// `(member, account, mine, theirs)` for each account a member
    /// answered.
    pub balances: Vec<(PublicKey, PublicKey, View, View)>,
    /// Each member that answered every journal query of the round, with
    /// the ids asked that it has not posted.
    pub unposted: BTreeMap<PublicKey, Vec<Id>>,
}

/// A lasting difference with a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// It has not posted these entries, asked about twice in a row.
    Missing(Vec<Id>),
    /// It holds `account` as `theirs` where this member holds `mine`, twice
    /// in a row.
    Balance {
        /// The account.
        account: PublicKey,
        /// This member's view.
        mine: View,
        /// The other member's view.
        theirs: View,
    },
}

/// What to tell the operators about a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It disagrees.
    Disagrees(PublicKey, Finding),
    /// It agrees again after an alert.
    Agrees(PublicKey),
}

/// Differences seen in the last round, and the members alerted about.
#[derive(Debug, Default)]
pub struct AgreeWatch {
    last: BTreeMap<(PublicKey, PublicKey), (View, View)>,
    suspects: BTreeMap<PublicKey, BTreeSet<Id>>,
    alerted: BTreeSet<PublicKey>,
}

impl AgreeWatch {
    /// The entries to ask about again: those some member lacked when last
    /// asked.
    pub fn suspected(&self) -> BTreeSet<Id> {
        self.suspects.values().flatten().copied().collect()
    }

    /// Takes one round and says what changes for the operators.
    pub fn round(&mut self, round: &Round) -> Vec<Verdict> {
        let mut now: BTreeMap<(PublicKey, PublicKey), (View, View)> = BTreeMap::new();
        let mut findings: BTreeMap<PublicKey, Finding> = BTreeMap::new();
        let mut differing: BTreeSet<PublicKey> = BTreeSet::new();
        let mut compared: BTreeSet<PublicKey> = BTreeSet::new();
        for (member, unposted) in &round.unposted {
            compared.insert(*member);
            let before = self.suspects.remove(member).unwrap_or_default();
            if unposted.is_empty() {
                continue;
            }
            differing.insert(*member);
            let lasting: Vec<Id> = unposted
                .iter()
                .filter(|id| before.contains(id))
                .copied()
                .collect();
            if !lasting.is_empty() {
                findings.insert(*member, Finding::Missing(lasting));
            }
            let kept = unposted.iter().copied().take(MAX_SUSPECTS).collect();
            self.suspects.insert(*member, kept);
        }
        for (member, account, mine, theirs) in &round.balances {
            compared.insert(*member);
            if mine == theirs {
                continue;
            }
            differing.insert(*member);
            let key = (*member, *account);
            if self.last.get(&key) == Some(&(*mine, *theirs)) {
                findings.entry(*member).or_insert(Finding::Balance {
                    account: *account,
                    mine: *mine,
                    theirs: *theirs,
                });
            }
            now.insert(key, (*mine, *theirs));
        }
        let mut out = Vec::new();
        for (member, finding) in findings {
            if self.alerted.insert(member) {
                out.push(Verdict::Disagrees(member, finding));
            }
        }
        for member in compared {
            if !differing.contains(&member) && self.alerted.remove(&member) {
                out.push(Verdict::Agrees(member));
            }
        }
        self.last = now;
        out
    }
}

/// Watches how far the journal comparison is behind the journal.
#[derive(Debug, Default)]
pub struct BehindWatch {
    last: u64,
    rounds: u32,
    alerted: bool,
}

/// What changes for the operators about a comparison that falls behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behind {
    /// Behind by this many entries, and not catching up.
    FallingBehind(u64),
    /// Caught up after an alert.
    CaughtUp,
}

impl BehindWatch {
    /// Takes one round's distance behind the journal, in entries.
    pub fn round(&mut self, behind: u64) -> Option<Behind> {
        let catching_up = behind < self.last;
        self.last = behind;
        if behind == 0 {
            self.rounds = 0;
            return std::mem::take(&mut self.alerted).then_some(Behind::CaughtUp);
        }
        self.rounds = if catching_up { 0 } else { self.rounds + 1 };
        if self.rounds >= BEHIND_ROUNDS && !self.alerted {
            self.alerted = true;
            return Some(Behind::FallingBehind(behind));
        }
        None
    }
}

/// This member's own alert about its comparison falling behind; the same
/// rule and issuer resolve it.
pub fn behind_alert(me: PublicKey, message: String) -> Alert {
    crate::notify::own_alert(
        me,
        Audience::Operators,
        Severity::Warning,
        BEHIND_RULE,
        None,
        message,
    )
}

/// The alert about `member`; the same rule, issuer and member resolve it.
pub fn disagree_alert(me: PublicKey, member: PublicKey, message: String) -> Alert {
    Alert {
        version: PROTOCOL_VERSION,
        issuer: me,
        severity: Severity::Critical,
        audience: Audience::Operators,
        rule: DISAGREE_RULE.into(),
        about: Some(member),
        subject: None,
        message,
        created_at: UnixMillis::now(),
    }
}

/// The accounts of the most recent journal entries, at most
/// [`ACCOUNTS_PER_ROUND`], newest first.
fn recent_accounts(role: &CoordinatorRole) -> Vec<PublicKey> {
    let Ok(len) = role.ledger.journal_len() else {
        return Vec::new();
    };
    let from = len.saturating_sub(RECENT_ENTRIES);
    let Ok(entries) = role.ledger.journal(from, RECENT_ENTRIES as usize) else {
        return Vec::new();
    };
    let mut out: Vec<PublicKey> = Vec::new();
    for (_, entry) in entries.iter().rev() {
        for leg in &entry.legs {
            if let Account::User(key) = leg.account {
                if !out.contains(&key) && out.len() < ACCOUNTS_PER_ROUND {
                    out.push(key);
                }
            }
        }
    }
    out
}

/// Where the journal comparison stands: the next entry to ask about, and
/// the journal's length at the previous round (entries before it were
/// posted at least one period ago).
#[derive(Debug, Default, Clone, Copy)]
struct Cursor {
    next: u64,
    mark: Option<u64>,
}

impl Cursor {
    /// Where this member's comparison stood when it last recorded it.
    fn resumed(role: &CoordinatorRole) -> Cursor {
        let next = role.ledger.compared_through().unwrap_or_else(|err| {
            tracing::warn!(%err, "the journal comparison's mark cannot be read; starting from the first entry");
            0
        });
        Cursor { next, mark: None }
    }
}

/// The ids of entries posted at least one period ago and not asked about
/// yet, at most [`NEW_ENTRIES_PER_ROUND`]; moves the cursor past them.
fn new_entries(role: &CoordinatorRole, cursor: &mut Cursor) -> Vec<Id> {
    let Ok(len) = role.ledger.journal_len() else {
        return Vec::new();
    };
    let Some(mark) = cursor.mark.replace(len) else {
        return Vec::new();
    };
    let end = mark.min(cursor.next.saturating_add(NEW_ENTRIES_PER_ROUND));
    let mut ids = Vec::new();
    while cursor.next < end {
        let want = usize::try_from(end - cursor.next).unwrap_or(usize::MAX);
        let Ok(page) = role.ledger.journal(cursor.next, want) else {
            break;
        };
        let Some((last, _)) = page.last() else {
            break;
        };
        let last = *last;
        ids.extend(
            page.into_iter()
                .filter(|(seq, _)| *seq < end)
                .map(|(_, e)| e.id),
        );
        cursor.next = last.saturating_add(1).min(end).max(cursor.next + 1);
    }
    ids
}

impl Cursor {
    /// Entries posted at least one period ago that are not compared yet.
    fn behind(&self) -> u64 {
        self.mark.unwrap_or(0).saturating_sub(self.next)
    }
}

/// Records how far the comparison has come: up to the oldest entry some
/// member still lacks, or else to the cursor.
fn record_mark(role: &CoordinatorRole, next: u64, suspects: &BTreeSet<Id>) {
    let mut mark = next;
    for id in suspects {
        match role.ledger.entry(id) {
            Ok(Some((seq, _))) => mark = mark.min(seq),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(%err, "a journal entry cannot be read; the comparison's mark stays");
                return;
            }
        }
    }
    let me = role.key.public();
    let cause = Cause::new(me, Id([0; 32]), UnixMillis::now());
    if let Err(err) = role.ledger.set_compared_through(mark, &cause) {
        tracing::warn!(%err, "the journal comparison's mark cannot be recorded");
    }
}

/// Asks every member which of `ids` it has posted; returns, for each
/// member other than `me` that answered every query, the ids it lacks.
async fn unposted(
    role: &CoordinatorRole,
    quorum: &Quorum,
    ids: &[Id],
) -> BTreeMap<PublicKey, Vec<Id>> {
    let me = role.key.public();
    let mut lacking: BTreeMap<PublicKey, Vec<Id>> = BTreeMap::new();
    let mut answered: BTreeMap<PublicKey, usize> = BTreeMap::new();
    let chunks = ids.chunks(MAX_POSTED_ASKED);
    let asked = chunks.len();
    for chunk in chunks {
        for (member, posted) in quorum.posted(&role.key, chunk.to_vec()).await {
            if member == me {
                continue;
            }
            *answered.entry(member).or_default() += 1;
            let missing = chunk
                .iter()
                .zip(posted)
                .filter(|(_, posted)| !posted)
                .map(|(id, _)| *id);
            lacking.entry(member).or_default().extend(missing);
        }
    }
    answered
        .into_iter()
        .filter(|(_, n)| *n == asked)
        .map(|(member, _)| (member, lacking.remove(&member).unwrap_or_default()))
        .collect()
}

/// What the operators are told about a member's missing entries.
fn missing_message(
    role: &CoordinatorRole,
    member: PublicKey,
    ids: &[Id],
    every: Duration,
) -> String {
    let first = ids.first().map(|id| match role.ledger.entry(id) {
        Ok(Some((seq, entry))) => {
            let legs: Vec<String> = entry
                .legs
                .iter()
                .filter(|leg| !leg.amount.is_negative() && !leg.amount.is_zero())
                .map(|leg| format!("{} to {}", leg.amount, leg.account))
                .collect();
            format!(
                "{} entry {id} (journal entry {seq} here, {})",
                entry.movement,
                legs.join(", ")
            )
        }
        _ => format!("entry {id}"),
    });
    format!(
        "coordinator {member} has not posted {} journal entries this member posted at least {} s \
         earlier (asked on two comparisons in a row); the first: {}",
        ids.len(),
        every.as_secs(),
        first.unwrap_or_default()
    )
}

/// Compares this coordinator's books with the other members' every
/// `every`, until `stop` turns true.
pub fn watch_books(
    role: Arc<CoordinatorRole>,
    quorum: Quorum,
    every: Duration,
    alerts: AlertSink,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let me = role.key.public();
        let mut watch = AgreeWatch::default();
        let mut behind_watch = BehindWatch::default();
        let r = role.clone();
        let Ok(mut cursor) = tokio::task::spawn_blocking(move || Cursor::resumed(&r)).await else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                _ = tick.tick() => {}
            }
            let r = role.clone();
            let c = cursor;
            let Ok((accounts, fresh, c)) = tokio::task::spawn_blocking(move || {
                let mut c = c;
                let fresh = new_entries(&r, &mut c);
                (recent_accounts(&r), fresh, c)
            })
            .await
            else {
                continue;
            };
            let asked_from = cursor.next;
            cursor = c;
            let mut round = Round::default();
            let mut asked: Vec<Id> = watch.suspected().into_iter().collect();
            let suspected: BTreeSet<Id> = asked.iter().copied().collect();
            let taken = fresh.len();
            asked.extend(fresh.into_iter().filter(|id| !suspected.contains(id)));
            if !asked.is_empty() {
                round.unposted = unposted(&role, &quorum, &asked).await;
            }
            // New entries no other member answered about are not compared:
            // they are asked about again next round (a member alone in its
            // set has no one to ask).
            let alone = quorum.set().members().len() < 2;
            if taken > 0 && round.unposted.is_empty() && !alone {
                cursor.next = asked_from;
            } else if let Some(m) = &role.metrics {
                m.books_compared.inc_by(taken as u64);
            }
            let behind = cursor.behind();
            if let Some(m) = &role.metrics {
                m.books_compare_behind
                    .set(i64::try_from(behind).unwrap_or(i64::MAX));
            }
            match behind_watch.round(behind) {
                Some(Behind::FallingBehind(n)) => {
                    let message = format!(
                        "the comparison of this member's journal with the other members' is {n} entries \
                         behind and has not caught up on {BEHIND_ROUNDS} comparisons in a row: the journal \
                         grows faster than {NEW_ENTRIES_PER_ROUND} entries every {} s, or no other member \
                         answers",
                        every.as_secs()
                    );
                    tracing::warn!(behind = n, "the journal comparison falls behind");
                    alerts.raise(&behind_alert(me, message));
                }
                Some(Behind::CaughtUp) => {
                    tracing::info!("the journal comparison has caught up");
                    alerts.resolve(&behind_alert(me, String::new()));
                }
                None => {}
            }
            for account in accounts {
                let theirs = quorum.accounts(&role.key, account).await;
                let r = role.clone();
                let Ok(Ok(mine)) =
                    tokio::task::spawn_blocking(move || r.account_state(account)).await
                else {
                    continue;
                };
                for state in theirs.iter().filter(|s| s.coordinator != me) {
                    round
                        .balances
                        .push((state.coordinator, account, view(&mine), view(state)));
                }
            }
            for verdict in watch.round(&round) {
                match verdict {
                    Verdict::Disagrees(member, Finding::Missing(ids)) => {
                        let r = role.clone();
                        let message = tokio::task::spawn_blocking(move || {
                            missing_message(&r, member, &ids, every)
                        })
                        .await
                        .unwrap_or_default();
                        tracing::error!(%member, %message, "the books disagree");
                        alerts.raise(&disagree_alert(me, member, message));
                    }
                    Verdict::Disagrees(
                        member,
                        Finding::Balance {
                            account,
                            mine,
                            theirs,
                        },
                    ) => {
                        let message = format!(
                            "coordinator {member} holds account {account} as balance {}, debit seq {}, escrowed {}; \
                             this member holds {}, {}, {} (on two comparisons in a row)",
                            theirs.0, theirs.1, theirs.2, mine.0, mine.1, mine.2
                        );
                        tracing::error!(%member, %account, "the books disagree");
                        alerts.raise(&disagree_alert(me, member, message));
                    }
                    Verdict::Agrees(member) => {
                        tracing::info!(%member, "the books agree again");
                        alerts.resolve(&disagree_alert(me, member, String::new()));
                    }
                }
            }
            let r = role.clone();
            let (next, suspects) = (cursor.next, watch.suspected());
            let _ = tokio::task::spawn_blocking(move || record_mark(&r, next, &suspects)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use rigmesh_protocol::Keypair;

    use super::*;

    fn key(n: u8) -> PublicKey {
        Keypair::from_seed([n; 32]).public()
    }

    fn v(units: i64, seq: u64) -> View {
        (Credits::from_units(units), seq, Credits::ZERO)
    }

    fn id(n: u8) -> Id {
        Id([n; 32])
    }

    fn balances(seen: &[(PublicKey, PublicKey, View, View)]) -> Round {
        Round {
            balances: seen.to_vec(),
            ..Round::default()
        }
    }

    fn lacking(member: PublicKey, ids: &[Id]) -> Round {
        Round {
            unposted: BTreeMap::from([(member, ids.to_vec())]),
            ..Round::default()
        }
    }

    #[test]
    fn a_lasting_difference_alerts_once_and_agreement_resolves_it() {
        let mut w = AgreeWatch::default();
        let (m, a) = (key(1), key(2));
        let disagrees = |mine, theirs| {
            Verdict::Disagrees(
                m,
                Finding::Balance {
                    account: a,
                    mine,
                    theirs,
                },
            )
        };
        // In flight: once is nothing.
        assert!(w.round(&balances(&[(m, a, v(10, 1), v(5, 0))])).is_empty());
        // It moved on since: still nothing.
        assert!(w.round(&balances(&[(m, a, v(10, 1), v(7, 0))])).is_empty());
        // The same difference again: the member disagrees.
        assert_eq!(
            w.round(&balances(&[(m, a, v(10, 1), v(7, 0))])),
            vec![disagrees(v(10, 1), v(7, 0))]
        );
        // Raised once.
        assert!(w.round(&balances(&[(m, a, v(10, 1), v(7, 0))])).is_empty());
        // Agreeing again resolves it, once.
        assert_eq!(
            w.round(&balances(&[(m, a, v(10, 1), v(10, 1))])),
            vec![Verdict::Agrees(m)]
        );
        assert!(w.round(&balances(&[(m, a, v(10, 1), v(10, 1))])).is_empty());
    }

    #[test]
    fn agreeing_members_raise_nothing() {
        let mut w = AgreeWatch::default();
        for _ in 0..3 {
            let mut round = balances(&[
                (key(1), key(2), v(3, 0), v(3, 0)),
                (key(3), key(2), v(3, 0), v(3, 0)),
            ]);
            round.unposted = BTreeMap::from([(key(1), vec![]), (key(3), vec![])]);
            assert!(w.round(&round).is_empty());
            assert!(w.suspected().is_empty());
        }
    }

    #[test]
    fn an_entry_still_missing_when_asked_again_alerts_however_the_balances_move() {
        let mut w = AgreeWatch::default();
        let (m, a) = (key(1), key(2));
        // The member lacks entry 7; the account it touched keeps moving,
        // so no two balance comparisons are alike.
        let mut first = lacking(m, &[id(7)]);
        first.balances = vec![(m, a, v(10, 1), v(7, 1))];
        assert!(w.round(&first).is_empty());
        assert_eq!(w.suspected(), BTreeSet::from([id(7)]));
        let mut second = lacking(m, &[id(7), id(8)]);
        second.balances = vec![(m, a, v(12, 2), v(9, 2))];
        assert_eq!(
            w.round(&second),
            vec![Verdict::Disagrees(m, Finding::Missing(vec![id(7)]))]
        );
        assert_eq!(w.suspected(), BTreeSet::from([id(7), id(8)]));
        // Still lacking 8 only: no second alert, no resolution.
        assert!(w.round(&lacking(m, &[id(8)])).is_empty());
        // A member that does not answer is neither alerted nor resolved,
        // and what it lacked is asked about again.
        assert!(w.round(&Round::default()).is_empty());
        assert_eq!(w.suspected(), BTreeSet::from([id(8)]));
        // All posted and the balances agree: resolved.
        let mut caught_up = lacking(m, &[]);
        caught_up.balances = vec![(m, a, v(12, 2), v(12, 2))];
        assert_eq!(w.round(&caught_up), vec![Verdict::Agrees(m)]);
        assert!(w.suspected().is_empty());
    }

    #[test]
    fn an_entry_that_arrives_before_it_is_asked_again_raises_nothing() {
        let mut w = AgreeWatch::default();
        let m = key(1);
        assert!(w.round(&lacking(m, &[id(1), id(2)])).is_empty());
        // Each was lacking once, never twice.
        assert!(w.round(&lacking(m, &[id(3)])).is_empty());
        assert!(w.round(&lacking(m, &[])).is_empty());
    }

    #[test]
    fn what_a_member_is_suspected_of_lacking_stays_bounded() {
        let mut w = AgreeWatch::default();
        let many: Vec<Id> = (0..MAX_SUSPECTS + 100)
            .map(|n| {
                let mut bytes = [0u8; 32];
                bytes[..8].copy_from_slice(&(n as u64).to_be_bytes());
                Id(bytes)
            })
            .collect();
        w.round(&lacking(key(1), &many));
        assert_eq!(w.suspected().len(), MAX_SUSPECTS);
    }

    #[test]
    fn a_comparison_that_does_not_catch_up_alerts_once_and_resolves_when_it_has() {
        let mut w = BehindWatch::default();
        // A backlog worked off round by round (a first comparison of a
        // long journal) is no alarm.
        for behind in [100_000, 67_232, 34_464, 1_696, 0] {
            assert_eq!(w.round(behind), None, "{behind} behind");
        }
        // Growing, or standing still, for BEHIND_ROUNDS rounds: once.
        assert_eq!(w.round(10), None);
        assert_eq!(w.round(20), None);
        assert_eq!(w.round(20), Some(Behind::FallingBehind(20)));
        assert_eq!(w.round(40), None);
        assert_eq!(w.round(35), None);
        assert_eq!(w.round(0), Some(Behind::CaughtUp));
        assert_eq!(w.round(0), None);
        // Catching up on one round starts the count again.
        for behind in [10, 20, 15, 30, 40] {
            assert_eq!(w.round(behind), None, "{behind} behind");
        }
        assert_eq!(w.round(50), Some(Behind::FallingBehind(50)));
    }

    /// A coordinator on the ledger in `dir`, with one deposit posted for
    /// each of `references` (one journal entry each); their entry ids in
    /// journal order.
    fn role_with_deposits(
        dir: &std::path::Path,
        references: std::ops::Range<usize>,
    ) -> (CoordinatorRole, Vec<Id>) {
        use rigmesh_ledger::{Ledger, MarketStore};
        use rigmesh_protocol::rpc::{CoordinatorRequest, CoordinatorResponse};
        use rigmesh_protocol::{samples, Signed};
        let ledger = Arc::new(Ledger::open(&dir.join("books")).unwrap());
        let store = Arc::new(MarketStore::open(&dir.join("market")).unwrap());
        let role = CoordinatorRole::new(
            samples::coordinators()[0].clone(),
            crate::coordinator::health::tests::config(),
            ledger,
            store,
        );
        let before = role.ledger.journal_len().unwrap();
        let mut ids = Vec::new();
        for k in references {
            let mut deposit = samples::deposit().unwrap().body;
            deposit.reference = format!("payment {k}");
            let deposit = Signed::sign(deposit, &samples::admin()).unwrap();
            let now = deposit.body.created_at.plus_ms(1_000);
            let answer = role.answer(CoordinatorRequest::Deposit(deposit.clone()), now);
            assert_eq!(answer, CoordinatorResponse::Applied);
            ids.push(deposit.id().unwrap());
        }
        assert_eq!(
            role.ledger.journal_len().unwrap(),
            before + ids.len() as u64
        );
        (role, ids)
    }

    #[test]
    fn a_restarted_member_resumes_its_comparison_at_the_oldest_entry_still_lacking() {
        let dir = tempfile::tempdir().unwrap();
        let (role, ids) = role_with_deposits(dir.path(), 0..5);
        assert_eq!(Cursor::resumed(&role).next, 0, "nothing compared yet");

        // Asked about all five; some member still lacks the third.
        record_mark(&role, 5, &BTreeSet::from([ids[2]]));
        assert_eq!(Cursor::resumed(&role).next, 2);
        // The mark never moves back, nor past the journal.
        record_mark(&role, 1, &BTreeSet::new());
        assert_eq!(Cursor::resumed(&role).next, 2);
        record_mark(&role, 99, &BTreeSet::new());
        assert_eq!(Cursor::resumed(&role).next, 5);
        let audit = role.ledger.audit_records(0, 1_000).unwrap();
        let moves = audit
            .iter()
            .filter(|r| r.record.action == rigmesh_ledger::audit::Action::BooksCompared)
            .count();
        assert_eq!(moves, 2, "one audit record each time the mark moved");

        // A restart reads the mark from disk, and asks about the entries
        // after it only.
        drop(role);
        let (role, later) = role_with_deposits(dir.path(), 5..7);
        let mut cursor = Cursor::resumed(&role);
        assert_eq!(cursor.next, 5);
        assert!(
            new_entries(&role, &mut cursor).is_empty(),
            "the first round only marks the journal"
        );
        assert_eq!(cursor.behind(), 2);
        assert_eq!(new_entries(&role, &mut cursor), later);
        assert_eq!(cursor.behind(), 0);
    }
}
