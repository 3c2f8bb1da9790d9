//! A coordinator's check that the other members of its set hold the same
//! books, every `[coordinators] books_compare_secs`, in two ways:
//!
//! - Journal entries. Honest members post the same entries under the same
//!   ids (each derived from the certificate or deposit behind it), in
//!   whatever order. Every entry this member posted at least one period
//!   ago is asked about once (`CoordinatorRequest::Posted`), oldest
//!   first, from the start of its journal; an entry another member has
//!   not posted is asked about again the next round. An entry a member
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
//! Honest members that applied the same certificates hold identical books
//! (specs/settlement.md 10): a lasting difference is a member that missed
//! certificates and does not catch up, a faulty member, or a bug.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rigmesh_ledger::Account;
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
    let behind = mark.saturating_sub(cursor.next);
    if let Some(m) = &role.metrics {
        m.books_compared.inc_by(ids.len() as u64);
        m.books_compare_behind
            .set(i64::try_from(behind).unwrap_or(i64::MAX));
    }
    if behind > 0 {
        tracing::debug!(
            behind,
            "the journal comparison is behind this member's journal"
        );
    }
    ids
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
        let mut cursor = Cursor::default();
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
            cursor = c;
            let mut round = Round::default();
            let mut asked: Vec<Id> = watch.suspected().into_iter().collect();
            let suspected: BTreeSet<Id> = asked.iter().copied().collect();
            asked.extend(fresh.into_iter().filter(|id| !suspected.contains(id)));
            if !asked.is_empty() {
                round.unposted = unposted(&role, &quorum, &asked).await;
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
}
