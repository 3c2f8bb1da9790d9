//! Reputation as this node sees it: the coordinators' signed
//! `ReputationReport`s gossiped to it, the newest report of each
//! coordinator of the set, and the median of their scores (so no f
//! coordinators can move it past the honest ones). The customer's order
//! book ranks suppliers by it; a supplier may refuse customers whose score
//! is too low. An account with no report has the neutral default.
//!
//! These functions read every stored report; a running node looks scores
//! up in its order book instead ([`crate::orderbook::OrderBook::score`]),
//! which keeps the same newest reports as they are stored.

use std::collections::BTreeMap;

use rigmesh_ledger::MarketStore;
use rigmesh_protocol::{CoordinatorSet, PublicKey, ReputationReport, Role, UnixMillis};

/// Each reported supplier's score, basis points.
pub fn supplier_scores(
    store: &MarketStore,
    set: Option<&CoordinatorSet>,
    now: UnixMillis,
) -> BTreeMap<PublicKey, u16> {
    scores(store, set, Role::Supplier, now)
}

/// The median score of `subject` as a customer, basis points, if any
/// coordinator of `set` reported one.
pub fn customer_score(
    store: &MarketStore,
    set: &CoordinatorSet,
    subject: &PublicKey,
    now: UnixMillis,
) -> Option<u16> {
    scores(store, Some(set), Role::Customer, now)
        .get(subject)
        .copied()
}

/// Each reported account's score in `role`, basis points.
fn scores(
    store: &MarketStore,
    set: Option<&CoordinatorSet>,
    role: Role,
    now: UnixMillis,
) -> BTreeMap<PublicKey, u16> {
    let Some(set) = set else {
        return BTreeMap::new();
    };
    let mut newest: BTreeMap<(PublicKey, PublicKey), (UnixMillis, u16)> = BTreeMap::new();
    for report in store.all::<ReputationReport>(now).unwrap_or_default() {
        let r = &report.body;
        if r.role != role || r.epoch != set.epoch() || !set.contains(&r.coordinator) {
            continue;
        }
        let slot = newest
            .entry((r.subject, r.coordinator))
            .or_insert((r.created_at, r.score_bp));
        if r.created_at > slot.0 {
            *slot = (r.created_at, r.score_bp);
        }
    }
    let mut by_subject: BTreeMap<PublicKey, Vec<u16>> = BTreeMap::new();
    for ((subject, _), (_, score)) in newest {
        by_subject.entry(subject).or_default().push(score);
    }
    by_subject
        .into_iter()
        .filter_map(|(subject, mut scores)| {
            scores.sort_unstable();
            let median = scores.get((scores.len().saturating_sub(1)) / 2).copied()?;
            Some((subject, median))
        })
        .collect()
}
