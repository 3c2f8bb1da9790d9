//! The customer's network chores besides bids: handing a lease's
//! termination to the coordinators and the supplier, and asking the
//! coordinators for the escrow of a lease its supplier never settled. Each
//! waits on remote parties (a quorum round, a supplier that may be gone),
//! so each runs in a task of its own while the customer's loop goes on
//! answering attestations; the loop takes each outcome back and makes the
//! change of state itself.
//!
//! At most one chore per lease is under way (a second one for a lease
//! waits for the loop's next look), so the chores are bounded by the
//! customer's own leases; at most [`MAX_RUNNING`] talk to the network at
//! once, the rest wait for a turn.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rigmesh_ledger::MarketStore;
use rigmesh_protocol::rpc::{CertificateFrame, CoordinatorRequest};
use rigmesh_protocol::{Id, Keypair, LeaseAgreement, Signed, TerminationReason, UnixMillis};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;

use super::commands::{LeaseStatus, RequestError};
use crate::network::NodeHandle;
use crate::quorum::Quorum;

/// Chores talking to the network at once.
pub(super) const MAX_RUNNING: usize = 8;

/// What a chore needs of the customer: its key and how it reaches the
/// others.
#[derive(Clone)]
pub(super) struct Net {
    pub(super) key: Keypair,
    pub(super) store: Arc<MarketStore>,
    pub(super) network: NodeHandle,
    pub(super) quorum: Option<Quorum>,
}

/// Why a lease is being ended, and who waits for it.
pub(super) enum EndFor {
    /// The user asked (`rigmesh end`) at `at`; the answer goes on `reply`.
    User {
        /// When the user asked.
        at: UnixMillis,
        /// The caller's answer.
        reply: oneshot::Sender<Result<LeaseStatus, RequestError>>,
    },
    /// Its supplier attested nothing for too long.
    Silent,
    /// A budget cap stopped it.
    Cap,
    /// Its escrow was certified after its bid had failed.
    Unused,
}

/// How an escrow release went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Release {
    /// The release is certified and delivered.
    Certified,
    /// A settlement request members were locked on is certified instead;
    /// the release is to be asked for again at once.
    CompletedLocked,
    /// Not certified yet; asked for again later.
    NotYet,
}

/// What a chore brings back to the loop.
pub(super) enum Done {
    /// A termination was handed out; `refusal` says why it did not get
    /// through, when it did not.
    Ended {
        lease: Id,
        refusal: Option<String>,
        why: EndFor,
    },
    /// An escrow release was asked for.
    Released { lease: Id, outcome: Release },
}

/// The chores under way.
pub(super) struct Chores {
    set: JoinSet<Done>,
    leases: BTreeMap<Id, &'static str>,
    tasks: HashMap<tokio::task::Id, Id>,
    releases: Vec<tokio::task::AbortHandle>,
    turns: Arc<Semaphore>,
}

impl Default for Chores {
    fn default() -> Self {
        Chores {
            set: JoinSet::new(),
            leases: BTreeMap::new(),
            tasks: HashMap::new(),
            releases: Vec::new(),
            turns: Arc::new(Semaphore::new(MAX_RUNNING)),
        }
    }
}

impl Chores {
    /// What is under way for `lease`, if anything: `"termination"` or
    /// `"release"`.
    pub(super) fn under_way(&self, lease: &Id) -> Option<&'static str> {
        self.leases.get(lease).copied()
    }

    /// Hands `agreement`'s termination out in a task; gives `why` back
    /// (and starts nothing) when a chore of that lease is under way.
    pub(super) fn end(
        &mut self,
        net: &Net,
        agreement: Signed<LeaseAgreement>,
        reason: TerminationReason,
        detail: String,
        why: EndFor,
    ) -> Result<(), EndFor> {
        let Ok(lease) = agreement.id() else {
            return Err(why);
        };
        if self.leases.contains_key(&lease) {
            return Err(why);
        }
        self.leases.insert(lease, "termination");
        let (net, turns) = (net.clone(), self.turns.clone());
        let task = self.set.spawn(async move {
            let _turn = turns.acquire_owned().await;
            let refusal = super::runtime::end_lease(
                &net.key,
                &net.store,
                &net.network,
                net.quorum.as_ref(),
                &agreement,
                reason,
                detail,
            )
            .await;
            Done::Ended {
                lease,
                refusal,
                why,
            }
        });
        self.tasks.insert(task.id(), lease);
        Ok(())
    }

    /// Asks the coordinators for `agreement`'s escrow back in a task;
    /// false (and nothing started) when a chore of that lease is under way or there are no
    /// coordinators.
    pub(super) fn release(
        &mut self,
        net: &Net,
        rules: rigmesh_ledger::CoordinatorConfig,
        agreement: Signed<LeaseAgreement>,
    ) -> bool {
        let Ok(lease) = agreement.id() else {
            return false;
        };
        if self.leases.contains_key(&lease) || net.quorum.is_none() {
            return false;
        }
        self.leases.insert(lease, "release");
        let (net, turns) = (net.clone(), self.turns.clone());
        let task = self.set.spawn(async move {
            let _turn = turns.acquire_owned().await;
            let outcome = release(&net, &rules, lease, &agreement).await;
            Done::Released { lease, outcome }
        });
        self.tasks.insert(task.id(), lease);
        self.releases.retain(|r| !r.is_finished());
        self.releases.push(task);
        true
    }

    /// The next chore done; `None` when none is under way.
    pub(super) async fn next(&mut self) -> Option<Done> {
        loop {
            let (task, done) = match self.set.join_next_with_id().await? {
                Ok((task, done)) => (task, Some(done)),
                Err(err) => {
                    tracing::error!(%err, "a customer chore ended without an outcome");
                    (err.id(), None)
                }
            };
            // The lease is free for the loop's next look, whatever became
            // of its chore.
            if let Some(lease) = self.tasks.remove(&task) {
                self.leases.remove(&lease);
            }
            if done.is_some() {
                return done;
            }
        }
    }

    /// Stops the releases under way (each is asked for again after a
    /// restart); terminations go on.
    pub(super) fn abort_releases(&mut self) {
        for release in self.releases.drain(..) {
            release.abort();
        }
    }

    /// Chores under way.
    pub(super) fn len(&self) -> usize {
        self.set.len()
    }
}

/// Asks for `lease`'s escrow back (settlement.md 8.5): a settlement request
/// of the supplier that members are locked on at the release's sequence
/// number is completed first (8.6); the release goes out only when a
/// quorum says it holds no lock there.
async fn release(
    net: &Net,
    rules: &rigmesh_ledger::CoordinatorConfig,
    lease: Id,
    agreement: &Signed<LeaseAgreement>,
) -> Release {
    let Some(quorum) = net.quorum.as_ref() else {
        return Release::NotYet;
    };
    let now = UnixMillis::now();
    let built = super::release::build(&net.store, rules, &net.key, agreement, now);
    let (release, bundle) = match built {
        Ok(built) => built,
        Err(reason) => {
            tracing::debug!(%lease, %reason, "no escrow release");
            return Release::NotYet;
        }
    };
    let (locked, free) = quorum.locked(lease, release.body.settlement_seq).await;
    if !locked.is_empty() {
        return complete_locked(net, quorum, lease, agreement, locked).await;
    }
    if free < quorum.set().quorum() {
        tracing::info!(%lease, free, "escrow release waits: too few members say they hold no vote at its sequence number");
        return Release::NotYet;
    }
    let request = CoordinatorRequest::Release(Box::new(bundle));
    match quorum.certify(&release, &request).await {
        Ok(certificate) => {
            let r = &certificate.message.body;
            tracing::info!(%lease, supplier = %r.supplier_amount, fee = %r.fee, refund = %r.refund, "escrow released: the supplier never settled the lease");
            let applied = quorum
                .deliver(CertificateFrame::Release(Box::new(certificate)))
                .await;
            tracing::debug!(%lease, applied, "release delivered");
            Release::Certified
        }
        Err(refused) => {
            tracing::info!(%lease, %refused, "escrow release not certified yet");
            Release::NotYet
        }
    }
}

/// Members are locked on a settlement request of the supplier at the
/// sequence number the release needs: the supplier sent it, got some votes
/// and no quorum, and went away. The customer completes that request
/// itself with the evidence its store holds (settlement.md 8.6); its
/// release then takes the next sequence number.
async fn complete_locked(
    net: &Net,
    quorum: &Quorum,
    lease: Id,
    agreement: &Signed<LeaseAgreement>,
    locked: Vec<Signed<rigmesh_protocol::SettlementRequest>>,
) -> Release {
    for request in locked {
        let settlement_seq = request.body.settlement_seq;
        let bundle = match super::release::settlement_bundle(
            &net.store,
            &net.key,
            agreement,
            request.clone(),
        ) {
            Ok(bundle) => bundle,
            Err(reason) => {
                tracing::info!(%lease, %reason, "a locked settlement request is not completed");
                continue;
            }
        };
        let frame = CoordinatorRequest::Settle(Box::new(bundle));
        match quorum.certify(&request, &frame).await {
            Ok(certificate) => {
                tracing::info!(%lease, settlement_seq, "completed the supplier's settlement request that members were locked on");
                quorum
                    .deliver(CertificateFrame::Settlement(Box::new(certificate)))
                    .await;
                return Release::CompletedLocked;
            }
            Err(refused) => {
                tracing::info!(%lease, %refused, "the locked settlement request is not certified yet")
            }
        }
    }
    Release::NotYet
}
