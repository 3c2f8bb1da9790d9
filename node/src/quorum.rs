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
    AccountState, CertificateFrame, CoordinatorRequest, CoordinatorResponse, DebitRequest,
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
    /// This node's own coordinator role, when it is a member: a node
    /// cannot send itself a request over the network, so its own answer
    /// comes from the role directly.
    local: Option<Arc<crate::coordinator::CoordinatorRole>>,
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
            local: None,
        }
    }

    /// The same client, answering for `role`'s member itself instead of
    /// over the network (for a coordinator acting on the set, such as its
    /// operator API).
    pub fn with_local(mut self, role: Arc<crate::coordinator::CoordinatorRole>) -> Self {
        self.local = Some(role);
        self
    }

    /// The network it talks over.
    pub fn network(&self) -> &NodeHandle {
        &self.network
    }

    /// The coordinator set.
    pub fn set(&self) -> &CoordinatorSet {
        &self.set
    }

    /// Each member with the peer its newest binding names, if known; each
    /// member's bindings are read by author, so a quorum call costs the
    /// members' few bindings, not every binding the market holds.
    pub fn members(&self, now: UnixMillis) -> Vec<(PublicKey, Option<PeerId>)> {
        self.set
            .members()
            .iter()
            .map(|member| {
                let peer = self
                    .store
                    .by_author::<NodeBinding>(member, now)
                    .unwrap_or_default()
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
                let local = self
                    .local
                    .clone()
                    .filter(|role| role.key.public() == member);
                async move {
                    if let Some(role) = local {
                        // Decoded from the same bytes a member would
                        // receive, so it is held to the same limits.
                        let answer = tokio::task::spawn_blocking(move || {
                            CoordinatorRequest::from_bytes(&bytes)
                                .map(|request| role.answer_durably(request, UnixMillis::now()))
                                .map_err(|e| e.to_string())
                        })
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|answer| answer);
                        return (member, answer);
                    }
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
        self.certify_votes(message, request)
            .await
            .map_err(|(no, _)| no)
    }

    /// As [`Quorum::certify`]; without a quorum, also returns the valid
    /// votes that came back.
    async fn certify_votes<T: Certifiable>(
        &self,
        message: &Signed<T>,
        request: &CoordinatorRequest,
    ) -> Result<Certificate<T>, (NoQuorum, Vec<Signed<Vote>>)> {
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
            return Err((
                NoQuorum {
                    votes: votes.len(),
                    need,
                    refused,
                    refusals,
                },
                votes,
            ));
        }
        Certificate::assemble(message.clone(), &votes).map_err(|e| {
            (
                NoQuorum {
                    votes: votes.len(),
                    need,
                    refused,
                    refusals: [("assemble".to_string(), e.to_string())].into(),
                },
                votes.clone(),
            )
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

    /// The settlement requests members voted for on `lease` at
    /// `settlement_seq`, each once, and how many members answered that
    /// they voted for none (settlement.md 8.6).
    pub async fn locked(
        &self,
        lease: rigmesh_protocol::Id,
        settlement_seq: u64,
    ) -> (Vec<Signed<rigmesh_protocol::SettlementRequest>>, usize) {
        let mut found: Vec<Signed<rigmesh_protocol::SettlementRequest>> = Vec::new();
        let mut free = 0;
        let request = CoordinatorRequest::Locked {
            lease,
            settlement_seq,
        };
        for (_, answer) in self.ask_all(&request).await {
            match answer {
                Ok(CoordinatorResponse::Locked(Some(r)))
                    if r.body.lease == lease
                        && r.body.settlement_seq == settlement_seq
                        && !found.contains(&r) =>
                {
                    found.push(r);
                }
                Ok(CoordinatorResponse::Locked(None)) => free += 1,
                _ => {}
            }
        }
        (found, free)
    }

    /// What each reachable member says of `account`, asked by `asker`
    /// (the account itself, a member or an admin key: coordinators answer
    /// no one else).
    pub async fn accounts(
        &self,
        asker: &rigmesh_protocol::Keypair,
        account: PublicKey,
    ) -> Vec<AccountState> {
        let Some(query) = account_query(asker, account) else {
            return Vec::new();
        };
        self.ask_all(&CoordinatorRequest::AccountOf(query))
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

    /// For each member that answers, which of `ids` (at most
    /// [`rigmesh_protocol::rpc::MAX_POSTED_ASKED`]) it has posted, in
    /// order; asked by `asker`, a member or an admin key.
    pub async fn posted(
        &self,
        asker: &rigmesh_protocol::Keypair,
        ids: Vec<rigmesh_protocol::Id>,
    ) -> Vec<(PublicKey, Vec<bool>)> {
        let Some(query) = account_query(asker, asker.public()) else {
            return Vec::new();
        };
        let asked = ids.len();
        self.ask_all(&CoordinatorRequest::Posted { query, ids })
            .await
            .into_iter()
            .filter_map(|(member, answer)| match answer {
                Ok(CoordinatorResponse::Posted(posted)) if posted.len() == asked => {
                    Some((member, posted))
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
    pub async fn next_seq(&self, key: &rigmesh_protocol::Keypair) -> Result<u64, NoQuorum> {
        let states = self.accounts(key, key.public()).await;
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

/// Why a debit was not certified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DebitError {
    /// No quorum voted for it (or answered the account query).
    #[error("{0}")]
    NoQuorum(#[from] NoQuorum),
    /// An earlier debit of the account gathered votes but no certificate
    /// yet; it must be completed before another is signed.
    #[error("the account's debit at seq {0} holds votes but no certificate yet; it is completed before any other debit (try again)")]
    Stalled(u64),
    /// The request could not be built, encoded or kept.
    #[error("{0}")]
    Failed(String),
}

/// A certified debit.
#[derive(Debug, Clone)]
pub struct Debited {
    /// Its certificate, handed to every member.
    pub certificate: CertificateFrame,
    /// An earlier debit of the account that was still in flight and was
    /// completed first.
    pub earlier: Option<Completed>,
}

/// An earlier debit completed before a new one was signed.
#[derive(Debug, Clone)]
pub struct Completed {
    /// The debit as it was first sent.
    pub debit: DebitRequest,
    /// Its certificate, handed to every member.
    pub certificate: CertificateFrame,
}

/// What kind of debit it is, for the log.
fn debit_kind(debit: &DebitRequest) -> &'static str {
    match debit {
        DebitRequest::Escrow { .. } => "escrow",
        DebitRequest::Withdraw(_) => "withdrawal",
    }
}

impl Quorum {
    /// Certifies `debit` and hands the certificate to every member: first
    /// with the request that asks for votes, then, if some members voted
    /// but no quorum formed, with those votes as the proof that it was
    /// timely (settlement.md 14.2), so members that refused it as expired
    /// vote too. Returns the certificate, or why none formed and how many
    /// members voted.
    async fn certify_debit(&self, debit: &DebitRequest) -> Result<CertificateFrame, NoQuorum> {
        let frame = match self
            .ask_debit(debit, &debit.first_request(Vec::new()))
            .await
        {
            Ok(frame) => frame,
            Err((no, votes)) if votes.is_empty() => return Err(no),
            Err((_, votes)) => {
                let again = CoordinatorRequest::CompleteDebit {
                    debit: Box::new(debit.clone()),
                    votes,
                };
                self.ask_debit(debit, &again).await.map_err(|(no, _)| no)?
            }
        };
        self.deliver(frame.clone()).await;
        Ok(frame)
    }

    /// One round of votes for `debit` with `request`: its certificate, or
    /// why none formed with the valid votes that came back.
    async fn ask_debit(
        &self,
        debit: &DebitRequest,
        request: &CoordinatorRequest,
    ) -> Result<CertificateFrame, (NoQuorum, Vec<Signed<Vote>>)> {
        match debit {
            DebitRequest::Escrow { order, .. } => self
                .certify_votes(order, request)
                .await
                .map(|c| CertificateFrame::Escrow(Box::new(c))),
            DebitRequest::Withdraw(w) => self
                .certify_votes(w, request)
                .await
                .map(|c| CertificateFrame::Withdrawal(Box::new(c))),
        }
    }

    /// Completes `account`'s debit still in flight, if one is kept and
    /// the set has not applied it: before another debit is signed, since
    /// members that voted for it are locked on it. Returns its certificate
    /// when it is completed now, `None` when none was in flight (or it
    /// held no vote and is dropped).
    pub async fn complete_pending(
        &self,
        key: &rigmesh_protocol::Keypair,
    ) -> Result<Option<Completed>, DebitError> {
        let account = key.public();
        let failed = |e: &dyn std::fmt::Display| DebitError::Failed(e.to_string());
        let Some((seq, bytes)) = self.store.pending_debit(&account).map_err(|e| failed(&e))? else {
            return Ok(None);
        };
        let next = self.next_seq(key).await?;
        if seq < next {
            // Applied by the set (its certificate reached a quorum).
            self.store
                .clear_pending_debit(&account, seq)
                .map_err(|e| failed(&e))?;
            return Ok(None);
        }
        let debit = match CoordinatorRequest::from_bytes(&bytes) {
            Ok(CoordinatorRequest::Escrow {
                order, agreement, ..
            }) => DebitRequest::Escrow {
                order,
                agreement: *agreement,
            },
            Ok(CoordinatorRequest::Withdraw { withdrawal, .. }) => {
                DebitRequest::Withdraw(withdrawal)
            }
            _ => {
                tracing::error!(%account, seq, "the kept debit does not decode; dropped");
                self.store
                    .clear_pending_debit(&account, seq)
                    .map_err(|e| failed(&e))?;
                return Ok(None);
            }
        };
        let what = debit_kind(&debit);
        match self.certify_debit(&debit).await {
            Ok(certificate) => {
                tracing::info!(%account, seq, what, "an earlier debit in flight is certified");
                self.store
                    .clear_pending_debit(&account, seq)
                    .map_err(|e| failed(&e))?;
                Ok(Some(Completed { debit, certificate }))
            }
            Err(no) if no.votes == 0 && no.refused >= self.set.quorum() => {
                // A quorum answered without a vote: those members are not
                // locked on it, so a new debit at this seq can still be
                // certified, and at most one of the two ever will.
                tracing::info!(%account, seq, what, reasons = %no, "an earlier debit held no vote; dropped");
                self.store
                    .clear_pending_debit(&account, seq)
                    .map_err(|e| failed(&e))?;
                Ok(None)
            }
            Err(no) => {
                tracing::warn!(%account, seq, what, reasons = %no, "an earlier debit is not certified yet");
                Err(DebitError::Stalled(seq))
            }
        }
    }

    /// Certifies a debit of `key`'s account at its next sequence number, built
    /// by `build`: kept durably before it is sent (so it is completed,
    /// never abandoned, if no quorum forms now or this node stops), and
    /// forgotten once certified or once every member has refused it.
    pub async fn debit(
        &self,
        key: &rigmesh_protocol::Keypair,
        build: impl FnOnce(u64) -> Result<DebitRequest, String>,
    ) -> Result<Debited, DebitError> {
        let account = key.public();
        let failed = |e: &dyn std::fmt::Display| DebitError::Failed(e.to_string());
        let earlier = self.complete_pending(key).await?;
        let seq = self.next_seq(key).await?;
        let debit = build(seq).map_err(DebitError::Failed)?;
        let bytes = debit
            .first_request(Vec::new())
            .to_bytes()
            .map_err(|e| failed(&e))?;
        self.store
            .put_pending_debit(&account, seq, &bytes)
            .map_err(|e| failed(&e))?;
        match self.certify_debit(&debit).await {
            Ok(certificate) => {
                self.store
                    .clear_pending_debit(&account, seq)
                    .map_err(|e| failed(&e))?;
                Ok(Debited {
                    certificate,
                    earlier,
                })
            }
            Err(no) => {
                if no.votes == 0 && no.refused >= self.set.quorum() {
                    self.store
                        .clear_pending_debit(&account, seq)
                        .map_err(|e| failed(&e))?;
                }
                Err(no.into())
            }
        }
    }

    /// Moves `amount` out of `key`'s account to an external `destination`:
    /// a withdrawal at the account's next debit sequence number, certified
    /// by a quorum and handed to every coordinator.
    pub async fn withdraw(
        &self,
        key: &rigmesh_protocol::Keypair,
        amount: rigmesh_protocol::Credits,
        destination: &str,
    ) -> Result<rigmesh_protocol::WithdrawalCertificate, DebitError> {
        let debited = self
            .debit(key, |seq| {
                let now = UnixMillis::now();
                Signed::sign(
                    rigmesh_protocol::Withdrawal {
                        version: rigmesh_protocol::PROTOCOL_VERSION,
                        account: key.public(),
                        seq,
                        epoch: self.set.epoch(),
                        amount,
                        destination: destination.to_string(),
                        created_at: now,
                        // The longest lifetime: one held for review waits
                        // for an admin until then (settlement.md 4.3).
                        expires_at: now.plus_ms(
                            rigmesh_protocol::messages::settlement::ESCROW_ORDER_MAX_TTL_MS,
                        ),
                    },
                    key,
                )
                .map(DebitRequest::Withdraw)
                .map_err(|e| e.to_string())
            })
            .await?;
        match debited.certificate {
            CertificateFrame::Withdrawal(certificate) => Ok(*certificate),
            other => Err(DebitError::Failed(format!(
                "certified {:?} instead of a withdrawal",
                other.kind()
            ))),
        }
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

/// `asker`'s signed query of `account`, made now; `None` (logged) when it
/// cannot be signed.
fn account_query(
    asker: &rigmesh_protocol::Keypair,
    account: PublicKey,
) -> Option<Signed<rigmesh_protocol::AccountQuery>> {
    Signed::sign(
        rigmesh_protocol::AccountQuery {
            version: rigmesh_protocol::PROTOCOL_VERSION,
            account,
            asker: asker.public(),
            created_at: UnixMillis::now(),
        },
        asker,
    )
    .map_err(|err| tracing::warn!(%err, "could not sign an account query"))
    .ok()
}
