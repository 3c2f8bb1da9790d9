//! Operator actions on the coordinator set, each an admin-signed message
//! handed to every coordinator: a deposit (an external top-up), an
//! approval or rejection of a deposit or withdrawal held for review, and
//! the resolution of a dispute case. The admin key signs where the
//! operator is; these functions only carry the signed message, so the
//! same code serves the CLI's short-lived relay node and a coordinator's
//! operator API (whose [`Quorum`] answers for its own member directly).
//! Each returns a typed outcome with every coordinator's answer, so a
//! refusal is reported per coordinator rather than as one count.

use std::collections::BTreeMap;

use rigmesh_protocol::rpc::{
    CaseFile, CertificateFrame, CoordinatorRequest, CoordinatorResponse, HeldEntry,
};
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{
    Approval, Credits, Deposit, DisputeResolution, Id, Kind, PublicKey, Signed, VoteSignature,
    Withdrawal,
};

use crate::error::{Error, Result};
use crate::quorum::{NoQuorum, Quorum};

/// The reason code coordinators give for a deposit whose admin key and
/// reference another deposit took.
pub const REFERENCE_USED: &str = "reference_used";

/// What one coordinator answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberAnswer {
    /// It applied the message (or had already).
    Applied,
    /// It voted for it.
    Voted,
    /// It holds it, waiting for something (a second admin's approval).
    Pending(String),
    /// It refused it, for this reason.
    Refused(String),
    /// It was not reached, or its answer was lost.
    Unreachable(String),
}

impl MemberAnswer {
    fn of(answer: &std::result::Result<CoordinatorResponse, String>) -> Self {
        match answer {
            Ok(CoordinatorResponse::Applied) => MemberAnswer::Applied,
            Ok(CoordinatorResponse::Vote(_)) => MemberAnswer::Voted,
            Ok(CoordinatorResponse::Pending(r)) => MemberAnswer::Pending(r.clone()),
            Ok(CoordinatorResponse::Refused(r)) => MemberAnswer::Refused(r.clone()),
            Ok(_) => MemberAnswer::Refused("an answer of another kind".into()),
            Err(e) => MemberAnswer::Unreachable(e.clone()),
        }
    }

    /// `applied`, `voted`, `pending`, `refused` or `unreachable`.
    pub fn name(&self) -> &'static str {
        match self {
            MemberAnswer::Applied => "applied",
            MemberAnswer::Voted => "voted",
            MemberAnswer::Pending(_) => "pending",
            MemberAnswer::Refused(_) => "refused",
            MemberAnswer::Unreachable(_) => "unreachable",
        }
    }

    /// The reason given, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            MemberAnswer::Applied | MemberAnswer::Voted => None,
            MemberAnswer::Pending(r) | MemberAnswer::Refused(r) | MemberAnswer::Unreachable(r) => {
                Some(r)
            }
        }
    }
}

/// Every coordinator's answer, by member key, in the set's order.
pub type Answers = Vec<(PublicKey, MemberAnswer)>;

fn answers_of(
    answers: &[(PublicKey, std::result::Result<CoordinatorResponse, String>)],
) -> Answers {
    answers
        .iter()
        .map(|(m, a)| (*m, MemberAnswer::of(a)))
        .collect()
}

/// The answers behind a certificate round that formed no quorum: members
/// that gave a reason with it, the rest as having voted.
fn answers_of_round(quorum: &Quorum, no: &NoQuorum) -> Answers {
    quorum
        .set()
        .members()
        .iter()
        .map(|m| match no.refusals.get(&m.to_string()) {
            Some(reason) => (*m, MemberAnswer::Refused(reason.clone())),
            None => (*m, MemberAnswer::Voted),
        })
        .collect()
}

/// The answers behind a certificate: its voters, and the others as not
/// heard from in time (their vote was not needed or not received).
fn answers_of_votes(quorum: &Quorum, votes: &[VoteSignature]) -> Answers {
    quorum
        .set()
        .members()
        .iter()
        .map(|m| {
            if votes.iter().any(|v| v.coordinator == *m) {
                (*m, MemberAnswer::Voted)
            } else {
                (
                    *m,
                    MemberAnswer::Unreachable("no vote in the certificate".into()),
                )
            }
        })
        .collect()
}

/// The answers as text lines, `  <member>: <reason>`, for the members
/// that gave a reason.
pub fn reasons(answers: &Answers) -> String {
    answers
        .iter()
        .filter_map(|(m, a)| a.reason().map(|r| format!("\n  {m}: {r}")))
        .collect()
}

/// The answers as JSON: `[{"coordinator", "answer", "reason"}]`.
pub fn answers_json(answers: &Answers) -> serde_json::Value {
    serde_json::Value::Array(
        answers
            .iter()
            .map(|(m, a)| {
                serde_json::json!({
                    "coordinator": m.to_string(),
                    "answer": a.name(),
                    "reason": a.reason(),
                })
            })
            .collect(),
    )
}

/// Where a deposit stands once every coordinator was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DepositState {
    /// A quorum applied it: the account is credited.
    Applied,
    /// A quorum holds it (with those that applied it) until a second
    /// admin key approves it.
    AwaitingApproval,
    /// The admin key already used the reference for another deposit;
    /// nothing was credited. The coordinator's words.
    ReferenceUsed(String),
    /// Neither: too few coordinators took it.
    NotApplied,
}

impl DepositState {
    /// `applied`, `awaiting_approval`, `reference_used` or `not_applied`.
    pub fn name(&self) -> &'static str {
        match self {
            DepositState::Applied => "applied",
            DepositState::AwaitingApproval => "awaiting_approval",
            DepositState::ReferenceUsed(_) => "reference_used",
            DepositState::NotApplied => "not_applied",
        }
    }
}

/// What became of a deposit.
#[derive(Debug, Clone)]
pub struct DepositOutcome {
    /// Its id.
    pub deposit: Id,
    /// Where it stands.
    pub state: DepositState,
    /// Coordinators that applied it.
    pub applied_by: usize,
    /// Coordinators that hold it for approval.
    pub held_by: usize,
    /// Coordinators needed.
    pub quorum: usize,
    /// Every coordinator's answer.
    pub answers: Answers,
}

impl DepositOutcome {
    /// As JSON, the shape both the CLI and the operator API print.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "deposit": self.deposit.to_string(),
            "state": self.state.name(),
            "applied_by": self.applied_by,
            "held_by": self.held_by,
            "quorum": self.quorum,
            "answers": answers_json(&self.answers),
        })
    }
}

/// Hands a signed deposit to every coordinator; once any applied it, it
/// is gossiped too, so coordinators that were not reached catch up.
pub async fn submit_deposit(quorum: &Quorum, deposit: Signed<Deposit>) -> Result<DepositOutcome> {
    let id = deposit.id()?;
    let raw = quorum
        .ask_all(&CoordinatorRequest::Apply(CertificateFrame::Deposit(
            deposit.clone(),
        )))
        .await;
    let answers = answers_of(&raw);
    let need = quorum.set().quorum();
    let applied = answers
        .iter()
        .filter(|(_, a)| *a == MemberAnswer::Applied)
        .count();
    let pending = answers
        .iter()
        .filter(|(_, a)| matches!(a, MemberAnswer::Pending(_)))
        .count();
    let used = answers.iter().find_map(|(_, a)| match a {
        MemberAnswer::Refused(r) if r.starts_with(REFERENCE_USED) => Some(r.clone()),
        _ => None,
    });
    if applied > 0 {
        if let Err(err) = quorum
            .network()
            .publish(&WireMessage::Deposit(deposit))
            .await
        {
            tracing::debug!(%err, "deposit not gossiped");
        }
    }
    let state = match used {
        Some(reason) if applied == 0 && pending == 0 => DepositState::ReferenceUsed(reason),
        _ if applied >= need => DepositState::Applied,
        _ if pending + applied >= need => DepositState::AwaitingApproval,
        _ => DepositState::NotApplied,
    };
    Ok(DepositOutcome {
        deposit: id,
        state,
        applied_by: applied,
        held_by: pending,
        quorum: need,
        answers,
    })
}

/// What the coordinators hold of `kind` for a decision (deposits,
/// withdrawals, or dispute cases), each once, with how many hold it.
pub async fn held(quorum: &Quorum, kind: Kind) -> BTreeMap<Id, (HeldEntry, usize)> {
    let mut out: BTreeMap<Id, (HeldEntry, usize)> = BTreeMap::new();
    for (_, answer) in quorum.ask_all(&CoordinatorRequest::Held(kind)).await {
        if let Ok(CoordinatorResponse::Held(entries)) = answer {
            for entry in entries {
                out.entry(entry.subject)
                    .and_modify(|(_, n)| *n += 1)
                    .or_insert((entry, 1));
            }
        }
    }
    out
}

/// A held deposit or withdrawal, decoded for people: account, amount and
/// a line about it.
pub fn describe_held(kind: Kind, entry: &HeldEntry) -> (String, String, String) {
    match kind {
        Kind::Deposit => match Signed::<Deposit>::from_bytes(&entry.message) {
            Ok(d) => (
                d.body.account.to_string(),
                d.body.amount.to_string(),
                format!("reference {:?} by admin {}", d.body.reference, d.body.admin),
            ),
            Err(e) => (String::new(), String::new(), e.to_string()),
        },
        _ => match Signed::<Withdrawal>::from_bytes(&entry.message) {
            Ok(w) => (
                w.body.account.to_string(),
                w.body.amount.to_string(),
                format!("to {:?}, seq {}", w.body.destination, w.body.seq),
            ),
            Err(e) => (String::new(), String::new(), e.to_string()),
        },
    }
}

/// Where a decision on a held deposit or withdrawal stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionState {
    /// A quorum took it (for an approved withdrawal: certified and handed
    /// to every coordinator).
    Taken,
    /// No coordinator holds the withdrawal for review.
    NotHeld,
    /// Too few coordinators took it.
    NotTaken,
}

impl DecisionState {
    /// `taken`, `not_held` or `not_taken`.
    pub fn name(&self) -> &'static str {
        match self {
            DecisionState::Taken => "taken",
            DecisionState::NotHeld => "not_held",
            DecisionState::NotTaken => "not_taken",
        }
    }
}

/// What became of an approval or rejection.
#[derive(Debug, Clone)]
pub struct DecisionOutcome {
    /// `deposit` or `withdrawal`.
    pub kind: Kind,
    /// The held deposit or withdrawal.
    pub subject: Id,
    /// True for an approval.
    pub approve: bool,
    /// Where it stands.
    pub state: DecisionState,
    /// Coordinators that took it (votes, for an approved withdrawal).
    pub taken_by: usize,
    /// Coordinators needed.
    pub quorum: usize,
    /// An approved withdrawal's certificate, canonical bytes.
    pub certificate: Option<Vec<u8>>,
    /// Every coordinator's answer.
    pub answers: Answers,
}

impl DecisionOutcome {
    /// `approved` or `rejected`.
    pub fn verb(&self) -> &'static str {
        if self.approve {
            "approved"
        } else {
            "rejected"
        }
    }

    /// As JSON, the shape both the CLI and the operator API print.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind.name(),
            "id": self.subject.to_string(),
            "decision": self.verb(),
            "state": self.state.name(),
            "coordinators": self.taken_by,
            "quorum": self.quorum,
            "certificate": self.certificate.as_ref().map(hex::encode),
            "answers": answers_json(&self.answers),
        })
    }

    /// Why it was not taken, in words (with each coordinator's reason).
    pub fn failure(&self) -> String {
        match self.state {
            DecisionState::Taken => String::new(),
            DecisionState::NotHeld => format!(
                "no coordinator holds {} {} for review",
                self.kind.name(),
                self.subject
            ),
            DecisionState::NotTaken if self.kind == Kind::Withdrawal && self.approve => format!(
                "withdrawal not certified: {} of {} votes{}",
                self.taken_by,
                self.quorum,
                reasons(&self.answers)
            ),
            DecisionState::NotTaken => format!(
                "only {} coordinators took the decision; {} needed{}",
                self.taken_by,
                self.quorum,
                reasons(&self.answers)
            ),
        }
    }
}

/// Hands an admin's approval or rejection of a held deposit or withdrawal
/// to every coordinator. An approved withdrawal is voted on: a quorum of
/// votes is its certificate, handed to every coordinator and gossiped.
pub async fn submit_approval(
    quorum: &Quorum,
    approval: Signed<Approval>,
) -> Result<DecisionOutcome> {
    let kind = approval.body.subject_kind;
    if !matches!(kind, Kind::Deposit | Kind::Withdrawal) {
        return Err(Error::Refused(format!(
            "an approval decides a deposit or a withdrawal, not a {}",
            kind.name()
        )));
    }
    let need = quorum.set().quorum();
    let mut outcome = DecisionOutcome {
        kind,
        subject: approval.body.subject,
        approve: approval.body.approve,
        state: DecisionState::NotTaken,
        taken_by: 0,
        quorum: need,
        certificate: None,
        answers: Vec::new(),
    };
    let request = CoordinatorRequest::Decide(approval);
    if kind == Kind::Withdrawal && outcome.approve {
        let Some((entry, _)) = held(quorum, kind).await.remove(&outcome.subject) else {
            outcome.state = DecisionState::NotHeld;
            return Ok(outcome);
        };
        let withdrawal = Signed::<Withdrawal>::from_bytes(&entry.message)?;
        match quorum.certify(&withdrawal, &request).await {
            Ok(certificate) => {
                outcome.taken_by = certificate.votes.len();
                outcome.certificate = Some(certificate.to_bytes()?);
                outcome.answers = answers_of_votes(quorum, &certificate.votes);
                outcome.state = DecisionState::Taken;
                quorum
                    .deliver(CertificateFrame::Withdrawal(Box::new(certificate)))
                    .await;
            }
            Err(no) => {
                outcome.taken_by = no.votes;
                outcome.answers = answers_of_round(quorum, &no);
            }
        }
        return Ok(outcome);
    }
    let raw = quorum.ask_all(&request).await;
    outcome.answers = answers_of(&raw);
    outcome.taken_by = outcome
        .answers
        .iter()
        .filter(|(_, a)| *a == MemberAnswer::Applied)
        .count();
    if outcome.taken_by >= need {
        outcome.state = DecisionState::Taken;
    }
    Ok(outcome)
}

/// The case file of a dispute case from every coordinator that holds it;
/// the one with the most evidence first.
pub async fn case_files(quorum: &Quorum, lease: Id, settlement_seq: u64) -> Vec<CaseFile> {
    let mut out: Vec<CaseFile> = quorum
        .ask_all(&CoordinatorRequest::Case {
            lease,
            settlement_seq,
        })
        .await
        .into_iter()
        .filter_map(|(_, answer)| match answer {
            Ok(CoordinatorResponse::Case(Some(file))) => Some(*file),
            _ => None,
        })
        .collect();
    out.sort_by_key(|f| std::cmp::Reverse(f.attestations.len() + f.disputes.len()));
    out
}

/// What became of a dispute resolution.
#[derive(Debug, Clone)]
pub struct ResolutionOutcome {
    /// The resolution as signed.
    pub resolution: DisputeResolution,
    /// Its certificate (canonical bytes) once a quorum voted.
    pub certificate: Option<Vec<u8>>,
    /// Votes received.
    pub votes: usize,
    /// Votes needed.
    pub quorum: usize,
    /// Coordinators that applied the certificate.
    pub applied_by: usize,
    /// Every coordinator's answer to the vote.
    pub answers: Answers,
}

impl ResolutionOutcome {
    /// True once certified.
    pub fn certified(&self) -> bool {
        self.certificate.is_some()
    }

    /// What goes back to the customer.
    pub fn refund(&self) -> Credits {
        self.resolution
            .held
            .checked_sub(self.resolution.supplier_share)
            .unwrap_or(Credits::ZERO)
    }

    /// As JSON, the shape both the CLI and the operator API print.
    pub fn to_json(&self) -> serde_json::Value {
        let b = &self.resolution;
        serde_json::json!({
            "case": format!("{}:{}", b.lease, b.settlement_seq),
            "state": if self.certified() { "resolved" } else { "not_certified" },
            "supplier_share": b.supplier_share.to_string(),
            "refund": self.refund().to_string(),
            "against": b.against,
            "votes": self.votes,
            "quorum": self.quorum,
            "applied_by": self.applied_by,
            "certificate": self.certificate.as_ref().map(hex::encode),
            "answers": answers_json(&self.answers),
        })
    }
}

/// Asks every coordinator to vote for an admin's resolution of a dispute
/// case; a quorum of votes is its certificate, handed to every
/// coordinator and gossiped.
pub async fn submit_resolution(
    quorum: &Quorum,
    resolution: Signed<DisputeResolution>,
) -> Result<ResolutionOutcome> {
    resolution.verify_record()?;
    let mut outcome = ResolutionOutcome {
        resolution: resolution.body.clone(),
        certificate: None,
        votes: 0,
        quorum: quorum.set().quorum(),
        applied_by: 0,
        answers: Vec::new(),
    };
    let request = CoordinatorRequest::Resolve(resolution.clone());
    match quorum.certify(&resolution, &request).await {
        Ok(certificate) => {
            outcome.votes = certificate.votes.len();
            outcome.certificate = Some(certificate.to_bytes()?);
            outcome.answers = answers_of_votes(quorum, &certificate.votes);
            outcome.applied_by = quorum
                .deliver(CertificateFrame::Resolution(Box::new(certificate)))
                .await;
        }
        Err(no) => {
            outcome.votes = no.votes;
            outcome.answers = answers_of_round(quorum, &no);
        }
    }
    Ok(outcome)
}
