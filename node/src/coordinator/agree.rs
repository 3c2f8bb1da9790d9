//! A coordinator's check that the other members of its set hold the same
//! books. Every `[coordinators] books_compare_secs` it takes the accounts
//! of its most recent journal entries, reads each as it holds it and as
//! every other member answers it (`CoordinatorRequest::Account`), and
//! compares balance, debit sequence and escrow. Certificates reach the
//! members one after another, so one difference means little: a member
//! that answers differently on two comparisons in a row, while neither
//! side's value moved, disagrees, and `books.disagree` (critical, for the
//! operators) is raised about it, once, until it agrees again.
//!
//! Honest members that applied the same certificates hold identical books
//! (specs/settlement.md 10): a lasting difference is a member that missed
//! certificates and does not catch up, a faulty member, or a bug.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rigmesh_ledger::Account;
use rigmesh_protocol::rpc::AccountState;
use rigmesh_protocol::{
    Alert, Audience, Credits, PublicKey, Severity, UnixMillis, PROTOCOL_VERSION,
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

/// An account as one member holds it: balance, next debit sequence,
/// escrowed.
pub type View = (Credits, u64, Credits);

fn view(state: &AccountState) -> View {
    (state.balance, state.next_seq, state.escrowed)
}

/// What to tell the operators about a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It disagrees about `account`: this member's view, then its.
    Disagrees(PublicKey, PublicKey, View, View),
    /// It agrees again after an alert.
    Agrees(PublicKey),
}

/// Differences seen in the last round, and the members alerted about.
#[derive(Debug, Default)]
pub struct AgreeWatch {
    last: BTreeMap<(PublicKey, PublicKey), (View, View)>,
    alerted: BTreeSet<PublicKey>,
}

impl AgreeWatch {
    /// Takes one round of `(member, account, mine, theirs)` and says what
    /// changes for the operators.
    pub fn round(&mut self, seen: &[(PublicKey, PublicKey, View, View)]) -> Vec<Verdict> {
        let mut now: BTreeMap<(PublicKey, PublicKey), (View, View)> = BTreeMap::new();
        let mut out = Vec::new();
        let mut differing: BTreeSet<PublicKey> = BTreeSet::new();
        let mut compared: BTreeSet<PublicKey> = BTreeSet::new();
        for (member, account, mine, theirs) in seen {
            compared.insert(*member);
            if mine == theirs {
                continue;
            }
            differing.insert(*member);
            let key = (*member, *account);
            let lasting = self.last.get(&key) == Some(&(*mine, *theirs));
            now.insert(key, (*mine, *theirs));
            if lasting && self.alerted.insert(*member) {
                out.push(Verdict::Disagrees(*member, *account, *mine, *theirs));
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
            let Ok(accounts) = tokio::task::spawn_blocking(move || recent_accounts(&r)).await
            else {
                continue;
            };
            let mut seen = Vec::new();
            for account in accounts {
                let theirs = quorum.accounts(&role.key, account).await;
                let r = role.clone();
                let Ok(Ok(mine)) =
                    tokio::task::spawn_blocking(move || r.account_state(account)).await
                else {
                    continue;
                };
                for state in theirs.iter().filter(|s| s.coordinator != me) {
                    seen.push((state.coordinator, account, view(&mine), view(state)));
                }
            }
            for verdict in watch.round(&seen) {
                match verdict {
                    Verdict::Disagrees(member, account, mine, theirs) => {
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

    #[test]
    fn a_lasting_difference_alerts_once_and_agreement_resolves_it() {
        let mut w = AgreeWatch::default();
        let (m, a) = (key(1), key(2));
        // In flight: once is nothing.
        assert!(w.round(&[(m, a, v(10, 1), v(5, 0))]).is_empty());
        // It moved on since: still nothing.
        assert!(w.round(&[(m, a, v(10, 1), v(7, 0))]).is_empty());
        // The same difference again: the member disagrees.
        assert_eq!(
            w.round(&[(m, a, v(10, 1), v(7, 0))]),
            vec![Verdict::Disagrees(m, a, v(10, 1), v(7, 0))]
        );
        // Raised once.
        assert!(w.round(&[(m, a, v(10, 1), v(7, 0))]).is_empty());
        // Agreeing again resolves it, once.
        assert_eq!(
            w.round(&[(m, a, v(10, 1), v(10, 1))]),
            vec![Verdict::Agrees(m)]
        );
        assert!(w.round(&[(m, a, v(10, 1), v(10, 1))]).is_empty());
    }

    #[test]
    fn agreeing_members_raise_nothing() {
        let mut w = AgreeWatch::default();
        for _ in 0..3 {
            assert!(w
                .round(&[
                    (key(1), key(2), v(3, 0), v(3, 0)),
                    (key(3), key(2), v(3, 0), v(3, 0))
                ])
                .is_empty());
        }
    }
}
