//! Supplier reputation as the customer's order book sees it: the
//! coordinators' signed `ReputationReport`s gossiped to this node, the
//! newest report of each coordinator of the set, and the median of their
//! scores (so no f coordinators can move it past the honest ones).
//! A supplier with no report has the neutral default.

use std::collections::BTreeMap;

use rigmesh_ledger::MarketStore;
use rigmesh_protocol::{CoordinatorSet, PublicKey, ReputationReport, Role, UnixMillis};

/// Each reported supplier's score, basis points.
pub fn supplier_scores(
    store: &MarketStore,
    set: Option<&CoordinatorSet>,
    now: UnixMillis,
) -> BTreeMap<PublicKey, u16> {
    let Some(set) = set else {
        return BTreeMap::new();
    };
    let mut newest: BTreeMap<(PublicKey, PublicKey), (UnixMillis, u16)> = BTreeMap::new();
    for report in store.all::<ReputationReport>(now).unwrap_or_default() {
        let r = &report.body;
        if r.role != Role::Supplier || r.epoch != set.epoch() || !set.contains(&r.coordinator) {
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
