//! Talking to the coordinator set as a client (customers, suppliers, the
//! admin tool): send a request to every member at once, check each vote as
//! it comes back, and assemble a certificate from a quorum of them
//! (specs/settlement.md 5.3 and 8.4); hand certificates to every member;
//! ask members for an account's state.
//!
//! Members are found through their signed node bindings, like suppliers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use libp2p::PeerId;
use rigmesh_ledger::MarketStore;
use rigmesh_protocol::rpc::{
    AccountState, CertificateFrame, CoordinatorRequest, CoordinatorResponse,
};
use rigmesh_protocol::{
    Certifiable, Certificate, CoordinatorSet, NodeBinding, PublicKey, Signed, UnixMillis, Vote,
};

use crate::network::{NodeHandle, Protocol};

/// Why no certificate formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{votes} of {need} votes needed; {}", .refusals.iter().map(|(k, r)| format!("{k}: {r}")).collect::<Vec<_>>().join("; "))]
pub struct NoQuorum {
    /// Valid votes received.
    pub votes: usize,
    /// Votes needed.
    pub need: usize,
    /// Members that answered with a reason instead of a vote. Only these
    /// are known not to have voted: a member that was not reached, timed
    /// out or whose answer was lost may still have voted (and so be locked
    /// on the message).
    pub refused: usize,
    /// What each member that did not vote said (or why it was not reached).
    pub refusals: BTreeMap<String, String>,
}

/// The coordinator set as seen by a client node.
#[derive(Debug, Clone)]
pub struct Quorum {
    set: CoordinatorSet,
    network: NodeHandle,
    store: Arc<MarketStore>,
    timeout: Duration,
}

impl Quorum {
    /// A client of `set` over `network`, finding members through `store`.
    pub fn new(
        set: CoordinatorSet,
        network: NodeHandle,
        store: Arc<MarketStore>,
        timeout: Duration,
    ) -> Self {
        Quorum {
            set,
            network,
            store,
            timeout,
        }
    }

    /// The coordinator set.
    pub fn set(&self) -> &CoordinatorSet {
        &self.set
    }

    /// Each member with the peer its newest binding names, if known.
    pub fn members(&self, now: UnixMillis) -> Vec<(PublicKey, Option<PeerId>)> {
        let bindings = self.store.all::<NodeBinding>(now).unwrap_or_default();
        self.set
            .members()
            .iter()
            .map(|member| {
                let peer = bindings
                    .iter()
                    .filter(|b| b.body.account == *member && b.body.expires_at > now)
                    .max_by_key(|b| b.body.created_at)
                    .and_then(|b| PeerId::from_bytes(&b.body.peer_id).ok());
                (*member, peer)
            })
            .collect()
    }

    /// Sends `request` to every member and returns each answer.
    pub async fn ask_all(
        &self,
        request: &CoordinatorRequest,
    ) -> Vec<(PublicKey, Result<CoordinatorResponse, String>)> {
        let bytes = match request.to_bytes() {
            Ok(bytes) => bytes,
            Err(err) => {
                return self
                    .set
                    .members()
                    .iter()
                    .map(|m| (*m, Err(err.to_string())))
                    .collect()
            }
        };
        let asks = self
            .members(UnixMillis::now())
            .into_iter()
            .map(|(member, peer)| {
                let bytes = bytes.clone();
                async move {
                    let Some(peer) = peer else {
                        return (member, Err("no node binding known".to_string()));
                    };
                    let answer = tokio::time::timeout(
                        self.timeout,
                        self.network.request(peer, Protocol::Coordinator, bytes),
                    )
                    .await;
                    let result = match answer {
                        Err(_) => Err("timed out".to_string()),
                        Ok(Err(err)) => Err(err.to_string()),
                        Ok(Ok(bytes)) => {
                            CoordinatorResponse::from_bytes(&bytes).map_err(|e| e.to_string())
                        }
                    };
                    (member, result)
                }
            });
        join_all(asks).await
    }

    /// Asks every member to vote for `message` with `request`, checks each
    /// vote and assembles a certificate from those that are valid.
    pub async fn certify<T: Certifiable>(
        &self,
        message: &Signed<T>,
        request: &CoordinatorRequest,
    ) -> Result<Certificate<T>, NoQuorum> {
        let mut votes: Vec<Signed<Vote>> = Vec::new();
        let mut refusals = BTreeMap::new();
        let mut refused = 0;
        for (member, answer) in self.ask_all(request).await {
            match answer {
                Ok(CoordinatorResponse::Vote(vote)) => match check_vote(message, &vote, &member) {
                    Ok(()) => votes.push(vote),
                    Err(reason) => {
                        tracing::warn!(%member, %reason, "invalid vote");
                        refusals.insert(member.to_string(), format!("invalid vote: {reason}"));
                    }
                },
                Ok(CoordinatorResponse::Refused(reason)) => {
                    refused += 1;
                    refusals.insert(member.to_string(), reason);
                }
                Ok(CoordinatorResponse::Pending(reason)) => {
                    refusals.insert(member.to_string(), reason);
                }
                Ok(other) => {
                    refusals.insert(member.to_string(), format!("unexpected answer {other:?}"));
                }
                Err(reason) => {
                    refusals.insert(member.to_string(), reason);
                }
            }
        }
        let need = self.set.quorum();
        if votes.len() < need {
            return Err(NoQuorum {
                votes: votes.len(),
                need,
                refused,
                refusals,
            });
        }
        Certificate::assemble(message.clone(), &votes).map_err(|e| NoQuorum {
            votes: votes.len(),
            need,
            refused,
            refusals: [("assemble".to_string(), e.to_string())].into(),
        })
    }

    /// Hands a certificate (or deposit) to every member and gossips it;
    /// returns how many members applied it (or had already).
    pub async fn deliver(&self, frame: CertificateFrame) -> usize {
        if let Err(err) = self.network.publish(&frame.clone().into_wire()).await {
            tracing::debug!(%err, "certificate stored; not gossiped yet");
        }
        let answers = self.ask_all(&CoordinatorRequest::Apply(frame)).await;
        answers
            .iter()
            .filter(|(_, a)| matches!(a, Ok(CoordinatorResponse::Applied)))
            .count()
    }

    /// Hands a lease's termination to every member (settlement.md 6.1);
    /// returns how many hold it. Once a quorum holds it, no settlement
    /// certificate can pay a window that starts after it unless the
    /// customer acked that window: every quorum shares an honest member
    /// with the one that holds it.
    pub async fn terminate(
        &self,
        termination: &Signed<rigmesh_protocol::LeaseTermination>,
    ) -> usize {
        let request = CoordinatorRequest::Terminate(termination.clone());
        self.ask_all(&request)
            .await
            .iter()
            .filter(|(_, a)| matches!(a, Ok(CoordinatorResponse::Applied)))
            .count()
    }

    /// What each reachable member says of `account`.
    pub async fn accounts(&self, account: PublicKey) -> Vec<AccountState> {
        self.ask_all(&CoordinatorRequest::Account(account))
            .await
            .into_iter()
            .filter_map(|(member, answer)| match answer {
                Ok(CoordinatorResponse::Account(state)) if state.coordinator == member => {
                    Some(state)
                }
                _ => None,
            })
            .collect()
    }

    /// The account's next debit sequence number as the set knows it: the
    /// (f+1)-th highest value reported, so at least one honest member has
    /// applied that many debits and no f members can push it higher.
    ///
    /// Fails unless a quorum answers: a debit sent while fewer members are
    /// up could gather some votes but no certificate, and those votes
    /// would lock the sequence number (specs/settlement.md section 14).
    pub async fn next_seq(&self, account: PublicKey) -> Result<u64, NoQuorum> {
        let states = self.accounts(account).await;
        let need = self.set.quorum();
        let mut seqs: Vec<u64> = states.iter().map(|s| s.next_seq).collect();
        if seqs.len() < need {
            return Err(NoQuorum {
                votes: seqs.len(),
                need,
                refused: 0,
                refusals: [(
                    "coordinators".to_string(),
                    format!(
                        "only {} of {} coordinators answered; {need} are needed",
                        seqs.len(),
                        self.set.members().len()
                    ),
                )]
                .into(),
            });
        }
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        Ok(seqs.get(self.set.max_faulty()).copied().unwrap_or(0))
    }
}

impl Quorum {
    /// Moves `amount` out of `key`'s account to an external `destination`:
    /// a withdrawal at the account's next debit sequence number, certified
    /// by a quorum and handed to every coordinator.
    pub async fn withdraw(
        &self,
        key: &rigmesh_protocol::Keypair,
        amount: rigmesh_protocol::Credits,
        destination: &str,
    ) -> Result<rigmesh_protocol::WithdrawalCertificate, NoQuorum> {
        let seq = self.next_seq(key.public()).await?;
        let now = UnixMillis::now();
        let failed = |e: rigmesh_protocol::Error| NoQuorum {
            votes: 0,
            need: self.set.quorum(),
            refused: 0,
            refusals: [("withdrawal".to_string(), e.to_string())].into(),
        };
        let withdrawal = Signed::sign(
            rigmesh_protocol::Withdrawal {
                version: rigmesh_protocol::PROTOCOL_VERSION,
                account: key.public(),
                seq,
                epoch: self.set.epoch(),
                amount,
                destination: destination.to_string(),
                created_at: now,
                // The longest lifetime: one held for review waits for an
                // admin until then (settlement.md 4.3).
                expires_at: now
                    .plus_ms(rigmesh_protocol::messages::settlement::ESCROW_ORDER_MAX_TTL_MS),
            },
            key,
        )
        .map_err(failed)?;
        let request = CoordinatorRequest::Withdraw {
            withdrawal: withdrawal.clone(),
            missing: Vec::new(),
        };
        let certificate = self.certify(&withdrawal, &request).await?;
        self.deliver(CertificateFrame::Withdrawal(Box::new(certificate.clone())))
            .await;
        Ok(certificate)
    }
}

/// Checks a vote the way a certificate's receiver will: a member's, for
/// this message, with a valid signature.
fn check_vote<T: Certifiable>(
    message: &Signed<T>,
    vote: &Signed<Vote>,
    member: &PublicKey,
) -> Result<(), String> {
    if vote.signer != *member {
        return Err(format!("signed by {} instead", vote.signer));
    }
    let expected = Certificate::vote_for(message, *member).map_err(|e| e.to_string())?;
    if vote.body != expected {
        return Err("for another message".into());
    }
    vote.verify_record().map_err(|e| e.to_string())
}
