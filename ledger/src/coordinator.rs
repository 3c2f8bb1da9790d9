//! The coordinator's rules (specs/settlement.md): when an honest
//! coordinator votes for an escrow order, a withdrawal or a settlement
//! request, how it computes a payout, and how it applies certificates and
//! deposits. Pure protocol logic over a [`Ledger`]; the node carries the
//! messages.
//!
//! Every refusal is a [`Refusal`] with a reason code of the spec's section
//! 11; it is logged and changes nothing, not even the audit chain.

use std::collections::BTreeMap;

use rigmesh_protocol::rpc::DebitRequest;
use rigmesh_protocol::{
    Certifiable, Certificate, CheckedCertificates, Clock, CoordinatorSet, Credits, Deposit,
    DisputeResolution, EscrowCertificate, EscrowOrder, EscrowRelease, Id, Keypair, LeaseAgreement,
    LeaseTermination, PublicKey, ReleaseCertificate, ResolutionCertificate, SettlementCertificate,
    SettlementRequest, Signed, UnixMillis, UsageAck, UsageAttestation, UsageDispute, Vote,
    Withdrawal, WithdrawalCertificate,
};

use crate::billing::{self, FeeRate, Payout};
use crate::certified::{Applied, Lock};
use crate::disputes::Answer;
use crate::error::Error;
use crate::ledger::{Cause, Ledger};
use crate::messages::CertificateKind;
use crate::reputation::WindowCounts;
use crate::review::Hold;
use crate::store::Store;

/// The configuration every coordinator of an epoch shares (section 12).
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The coordinator set of the current epoch.
    pub set: CoordinatorSet,
    /// The fee rate.
    pub fee_rate: FeeRate,
    /// After this long past a window's end, an unanswered attestation
    /// counts as accepted.
    pub unacked_timeout_ms: u64,
    /// The admin keys: their deposits are accepted (none: deposits are
    /// refused), and their approvals decide what is held for review.
    pub admins: Vec<PublicKey>,
    /// Which deposits and withdrawals wait for an admin's decision.
    pub review: ReviewRules,
    /// Clock skew tolerated.
    pub skew_ms: u64,
    /// How long after a lease's end (its `ends_at`, or its termination)
    /// its supplier may settle it finally before the customer can have
    /// the escrow released (section 8.5).
    pub release_grace_ms: u64,
}

/// Which deposits and withdrawals a coordinator holds for an admin's
/// decision (section 4.3). The default holds nothing.
#[derive(Debug, Clone, Default)]
pub struct ReviewRules {
    /// A deposit above this amount is applied only once a second admin key
    /// approves it.
    pub deposit_approval_above: Option<Credits>,
    /// A withdrawal above this amount gets no vote until an admin
    /// approves it.
    pub withdrawal_review_above: Option<Credits>,
    /// A withdrawal to a destination its account has no applied
    /// withdrawal to gets no vote until an admin approves it.
    pub review_new_destinations: bool,
}

/// The reason code of a withdrawal held for an admin's review: not a
/// refusal of the request, an answer that it waits.
pub const HELD_FOR_REVIEW: &str = "held_for_review";

/// What an admin's [`rigmesh_protocol::Approval`] did here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    /// The approved deposit is applied (or was before).
    Deposit(Applied),
    /// The approved withdrawal has this coordinator's vote.
    Withdrawal(Signed<Vote>),
    /// The held message is dropped.
    Rejected,
}

/// Why a coordinator did not vote or apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct Refusal {
    /// Reason code (specs/settlement.md section 11 or a protocol error code).
    pub code: &'static str,
    /// What was wrong.
    pub detail: String,
}

impl Refusal {
    /// A refusal with a reason code and what was wrong.
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Refusal {
            code,
            detail: detail.into(),
        }
    }
}

impl From<rigmesh_protocol::Error> for Refusal {
    fn from(e: rigmesh_protocol::Error) -> Self {
        Refusal::new(e.code(), e.to_string())
    }
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal::new("internal", e.to_string())
    }
}

/// The reason code of a deposit whose `(admin, reference)` another
/// deposit took.
pub const REFERENCE_USED: &str = "reference_used";

fn held_at_seq(other: Id, w: &Withdrawal) -> Refusal {
    Refusal::new(
        "conflicting_order",
        format!(
            "withdrawal {other} of {} at seq {} waits for review",
            w.account, w.seq
        ),
    )
}

fn reference_used(other: Id) -> Refusal {
    Refusal::new(
        REFERENCE_USED,
        format!("deposit {other} already uses this admin key's reference"),
    )
}

/// How a window stands at vote time (section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowStatus {
    /// The customer acknowledged it.
    Acked,
    /// No answer, and the timeout passed.
    AcceptedByTimeout,
    /// The customer disputed it and no rule decides the dispute, or
    /// answered about another attestation: held for review.
    Disputed,
    /// Disputed, but decided by rule against the customer (the customer
    /// acked this very attestation, or every reason given is one the
    /// attestation's checks refute): paid.
    Refuted,
    /// Not yet decided.
    Undecided,
    /// Not acked, and it started after the customer's signed termination
    /// of the lease: never payable (section 6.1).
    AfterTermination,
}

/// What a supplier sends with a settlement request (section 8.1).
#[derive(Debug, Clone, Copy)]
pub struct SettlementEvidence<'a> {
    /// The request.
    pub request: &'a Signed<SettlementRequest>,
    /// The lease agreement.
    pub agreement: &'a Signed<LeaseAgreement>,
    /// Attestations `first_window..=last_window`, in order.
    pub attestations: &'a [Signed<UsageAttestation>],
    /// Attestation `first_window - 1` when `first_window > 0`.
    pub previous: Option<&'a Signed<UsageAttestation>>,
    /// The customer's acks the coordinator holds (bundle and gossip).
    pub acks: &'a [Signed<UsageAck>],
    /// The customer's disputes the coordinator holds.
    pub disputes: &'a [Signed<UsageDispute>],
    /// The customer's terminations of the lease the coordinator holds.
    pub terminations: &'a [Signed<LeaseTermination>],
}

/// What a settlement request or an escrow release claims, for the rules
/// they share.
#[derive(Debug, Clone, Copy)]
struct Claim {
    lease: Id,
    supplier: PublicKey,
    customer: PublicKey,
    settlement_seq: u64,
    escrow: Id,
    first_window: u64,
    /// `None`: no window is covered (a release may cover none).
    last_window: Option<u64>,
    attestation_head: Id,
    billable_gpu_ms: u64,
    supplier_amount: Credits,
    fee: Credits,
    refund: Credits,
    held: Credits,
    final_settlement: bool,
}

/// When the lease's customer ended it: the earliest `created_at` of the
/// valid terminations signed by that customer for that lease.
pub fn termination_point(
    lease: &Id,
    customer: &PublicKey,
    terminations: &[Signed<LeaseTermination>],
) -> Option<UnixMillis> {
    terminations
        .iter()
        .filter(|t| {
            t.body.lease == *lease && t.body.customer == *customer && t.verify_record().is_ok()
        })
        .map(|t| t.body.created_at)
        .min()
}

/// What a customer sends with an escrow release (section 8.5).
#[derive(Debug, Clone, Copy)]
pub struct ReleaseEvidence<'a> {
    /// The release.
    pub release: &'a Signed<EscrowRelease>,
    /// The lease agreement.
    pub agreement: &'a Signed<LeaseAgreement>,
    /// The covered attestations, in order.
    pub attestations: &'a [Signed<UsageAttestation>],
    /// Attestation `first_window - 1` when `first_window > 0`.
    pub previous: Option<&'a Signed<UsageAttestation>>,
    /// The customer's acks the coordinator holds (bundle and gossip).
    pub acks: &'a [Signed<UsageAck>],
    /// The customer's disputes the coordinator holds.
    pub disputes: &'a [Signed<UsageDispute>],
    /// The customer's terminations of the lease the coordinator holds.
    pub terminations: &'a [Signed<LeaseTermination>],
}

/// The windows a settlement or release covers and what was said of them.
#[derive(Debug, Clone, Copy)]
struct Windows<'a> {
    agreement: &'a Signed<LeaseAgreement>,
    attestations: &'a [Signed<UsageAttestation>],
    previous: Option<&'a Signed<UsageAttestation>>,
    acks: &'a [Signed<UsageAck>],
    disputes: &'a [Signed<UsageDispute>],
    terminations: &'a [Signed<LeaseTermination>],
}

impl<'a> From<&SettlementEvidence<'a>> for Windows<'a> {
    fn from(ev: &SettlementEvidence<'a>) -> Self {
        Windows {
            agreement: ev.agreement,
            attestations: ev.attestations,
            previous: ev.previous,
            acks: ev.acks,
            disputes: ev.disputes,
            terminations: ev.terminations,
        }
    }
}

impl<'a> From<&ReleaseEvidence<'a>> for Windows<'a> {
    fn from(ev: &ReleaseEvidence<'a>) -> Self {
        Windows {
            agreement: ev.agreement,
            attestations: ev.attestations,
            previous: ev.previous,
            acks: ev.acks,
            disputes: ev.disputes,
            terminations: ev.terminations,
        }
    }
}

/// The window counts behind a settlement request (reputation evidence).
fn window_counts(ev: &Windows<'_>, statuses: &[(u64, WindowStatus)]) -> WindowCounts {
    let gpus = ev.agreement.body.gpu_indices.len() as u64;
    let window_ms = ev.agreement.body.window_ms();
    let mut counts = WindowCounts::default();
    for (a, (_, status)) in ev.attestations.iter().zip(statuses) {
        let b = &a.body;
        let possible = gpus.saturating_mul(b.window_end.since(b.window_start).min(window_ms));
        counts.windows += 1;
        counts.possible_gpu_ms = counts.possible_gpu_ms.saturating_add(possible);
        counts.attested_gpu_ms = counts.attested_gpu_ms.saturating_add(b.billable_gpu_ms);
        if b.billable_gpu_ms < possible {
            counts.short += 1;
        }
        match status {
            WindowStatus::Acked | WindowStatus::Refuted => counts.acked += 1,
            WindowStatus::AcceptedByTimeout | WindowStatus::AfterTermination => {
                counts.unanswered += 1
            }
            WindowStatus::Disputed => counts.disputed += 1,
            WindowStatus::Undecided => {}
        }
    }
    counts
}

/// A coordinator: its key, the epoch's configuration and its ledger.
#[derive(Debug)]
pub struct Coordinator<'l, S: Store> {
    /// The books.
    pub ledger: &'l Ledger<S>,
    key: &'l Keypair,
    config: &'l CoordinatorConfig,
    checked: Option<&'l CheckedCertificates>,
}

impl<'l, S: Store> Coordinator<'l, S> {
    /// A coordinator over `ledger`.
    pub fn new(ledger: &'l Ledger<S>, key: &'l Keypair, config: &'l CoordinatorConfig) -> Self {
        Coordinator {
            ledger,
            key,
            config,
            checked: None,
        }
    }

    /// Checks certificates through `checked` (shared with the node's
    /// ingest): bytes that passed against the epoch's set before, handed
    /// over or gossiped, are not checked again.
    pub fn checking_once(mut self, checked: &'l CheckedCertificates) -> Self {
        self.checked = Some(checked);
        self
    }

    fn me(&self) -> PublicKey {
        self.key.public()
    }

    fn clock(&self, now: UnixMillis) -> Clock {
        Clock {
            now,
            skew_ms: self.config.skew_ms,
        }
    }

    fn cause(&self, subject: Id, now: UnixMillis) -> Cause {
        Cause::new(self.me(), subject, now)
    }

    /// Logs a refusal and returns it. A refusal changes nothing and writes
    /// nothing: anyone can send a refused request, so the audit chain keeps
    /// accepted money actions only, and the node counts refusals per peer
    /// instead (section 11).
    fn refuse(&self, what: &str, subject: Id, _now: UnixMillis, refusal: Refusal) -> Refusal {
        tracing::info!(what, %subject, code = refusal.code, detail = %refusal.detail, "refused");
        refusal
    }

    fn is_admin(&self, key: &PublicKey) -> bool {
        self.config.admins.contains(key)
    }

    /// True if a withdrawal needs an admin's approval before a vote.
    fn needs_review(&self, w: &Withdrawal) -> Result<bool, Refusal> {
        let rules = &self.config.review;
        if rules
            .withdrawal_review_above
            .is_some_and(|above| w.amount > above)
        {
            return Ok(true);
        }
        Ok(rules.review_new_destinations
            && !self.ledger.known_destination(&w.account, &w.destination)?)
    }

    fn sign_vote<T: Certifiable>(&self, message: &Signed<T>) -> Result<Signed<Vote>, Refusal> {
        let vote = Certificate::vote_for(message, self.me())?;
        Ok(Signed::sign(vote, self.key)?)
    }

    fn check_epoch(&self, epoch: u64) -> Result<(), Refusal> {
        if epoch != self.config.set.epoch() {
            return Err(Refusal::new(
                "wrong_epoch",
                format!(
                    "addressed to epoch {epoch}, this is epoch {}",
                    self.config.set.epoch()
                ),
            ));
        }
        Ok(())
    }

    /// The voting rule for an escrow order (section 5.2).
    pub fn vote_escrow(
        &self,
        order: &Signed<EscrowOrder>,
        agreement: &Signed<LeaseAgreement>,
        now: UnixMillis,
    ) -> Result<Signed<Vote>, Refusal> {
        let subject = order.id().unwrap_or(Id::ZERO);
        self.escrow_rules(order, agreement, subject, now, false)
            .map_err(|r| self.refuse("vote on escrow order", subject, now, r))
    }

    /// The voting rule for a debit that already holds votes (section
    /// 14.2): the rule of its kind, except that a valid vote of a member
    /// for it stands in for its expiry, which only bounds a first vote.
    pub fn complete_debit(
        &self,
        debit: &DebitRequest,
        votes: &[Signed<Vote>],
        now: UnixMillis,
    ) -> Result<Signed<Vote>, Refusal> {
        match debit {
            DebitRequest::Escrow { order, agreement } => {
                let subject = order.id().unwrap_or(Id::ZERO);
                self.vote_proof(order, votes)
                    .and_then(|()| self.escrow_rules(order, agreement, subject, now, true))
                    .map_err(|r| self.refuse("vote on escrow order", subject, now, r))
            }
            DebitRequest::Withdraw(withdrawal) => {
                let subject = withdrawal.id().unwrap_or(Id::ZERO);
                self.vote_proof(withdrawal, votes)
                    .and_then(|()| self.withdrawal_rules(withdrawal, subject, now, true))
                    .map_err(|r| self.refuse_unless_held("vote on withdrawal", subject, now, r))
            }
        }
    }

    /// Checks that `votes` hold a valid vote of a member of this epoch for
    /// `message`: proof that the message was timely when first voted for.
    fn vote_proof<T: Certifiable>(
        &self,
        message: &Signed<T>,
        votes: &[Signed<Vote>],
    ) -> Result<(), Refusal> {
        message.verify_record()?;
        let proven = votes.iter().any(|vote| {
            self.config.set.contains(&vote.signer)
                && Certificate::vote_for(message, vote.signer)
                    .is_ok_and(|expected| vote.body == expected)
                && vote.verify_record().is_ok()
        });
        if proven {
            Ok(())
        } else {
            Err(Refusal::new(
                "no_vote_proof",
                "no valid vote of a member for this debit came with it",
            ))
        }
    }

    fn escrow_rules(
        &self,
        order: &Signed<EscrowOrder>,
        agreement: &Signed<LeaseAgreement>,
        subject: Id,
        now: UnixMillis,
        proven: bool,
    ) -> Result<Signed<Vote>, Refusal> {
        order.verify_record()?;
        let o = &order.body;
        if self.ledger.debit_lock(&o.account, o.seq)? == Some(subject) {
            return self.sign_vote(order);
        }
        if proven {
            self.clock(now).check(
                rigmesh_protocol::Kind::EscrowOrder,
                Some(o.created_at),
                None,
            )?;
        } else {
            order.verify(&self.clock(now))?;
        }
        self.check_epoch(o.epoch)?;
        agreement
            .verify_record()
            .map_err(|e| Refusal::new("lease_mismatch", e.to_string()))?;
        let lease = agreement.id()?;
        if lease != o.lease
            || agreement.body.proposal.body.customer != o.account
            || agreement.body.supplier != o.supplier
        {
            return Err(Refusal::new(
                "lease_mismatch",
                "the order's lease, account or supplier is not the agreement's",
            ));
        }
        self.debit_rules(&o.account, o.seq, subject)?;
        // A second order for a funded lease tops its escrow up (a raised
        // cap); a closed lease takes none.
        if let Some(book) = self.ledger.lease_book(&o.lease)? {
            if book.closed {
                return Err(Refusal::new(
                    "lease_closed",
                    format!("lease {} is settled finally", o.lease),
                ));
            }
        }
        self.check_balance(&o.account, o.amount)?;
        self.take_debit_lock(&o.account, o.seq, subject, now)?;
        self.sign_vote(order)
    }

    /// Rules 6 and 7 of 5.2: the lock and the sequence.
    fn debit_rules(&self, account: &PublicKey, seq: u64, subject: Id) -> Result<(), Refusal> {
        if let Some(other) = self.ledger.debit_lock(account, seq)? {
            if other != subject {
                return Err(Refusal::new(
                    "conflicting_order",
                    format!("already voted for {other} at {account} seq {seq}"),
                ));
            }
        }
        let next = self.ledger.next_debit_seq(account)?;
        if seq < next {
            return Err(Refusal::new(
                "seq_used",
                format!("seq {seq} is used; next is {next}"),
            ));
        }
        if seq > next {
            return Err(Refusal::new(
                "seq_ahead",
                format!("seq {seq} is ahead; debits from {next} are not applied here"),
            ));
        }
        Ok(())
    }

    fn check_balance(&self, account: &PublicKey, amount: Credits) -> Result<(), Refusal> {
        let balance = self.ledger.balance(&crate::Account::User(*account))?;
        if balance < amount {
            return Err(Refusal::new(
                "insufficient_balance",
                format!("{account} holds {balance}, the order takes {amount}"),
            ));
        }
        Ok(())
    }

    fn take_debit_lock(
        &self,
        account: &PublicKey,
        seq: u64,
        subject: Id,
        now: UnixMillis,
    ) -> Result<(), Refusal> {
        match self
            .ledger
            .lock_debit(account, seq, &subject, &self.cause(subject, now))?
        {
            Lock::Taken | Lock::Same => Ok(()),
            Lock::Other(other) => Err(Refusal::new(
                "conflicting_order",
                format!("already voted for {other} at {account} seq {seq}"),
            )),
        }
    }

    /// The voting rule for a withdrawal: the escrow order's rule without a
    /// lease (specs/settlement.md section 4).
    pub fn vote_withdrawal(
        &self,
        withdrawal: &Signed<Withdrawal>,
        now: UnixMillis,
    ) -> Result<Signed<Vote>, Refusal> {
        let subject = withdrawal.id().unwrap_or(Id::ZERO);
        self.withdrawal_rules(withdrawal, subject, now, false)
            .map_err(|r| self.refuse_unless_held("vote on withdrawal", subject, now, r))
    }

    /// A refusal, except the answer that a withdrawal is held for review
    /// (which is not one).
    fn refuse_unless_held(&self, what: &str, subject: Id, now: UnixMillis, r: Refusal) -> Refusal {
        if r.code == HELD_FOR_REVIEW {
            r
        } else {
            self.refuse(what, subject, now, r)
        }
    }

    fn withdrawal_rules(
        &self,
        withdrawal: &Signed<Withdrawal>,
        subject: Id,
        now: UnixMillis,
        proven: bool,
    ) -> Result<Signed<Vote>, Refusal> {
        withdrawal.verify_record()?;
        let w = &withdrawal.body;
        if self.ledger.debit_lock(&w.account, w.seq)? == Some(subject) {
            return self.sign_vote(withdrawal);
        }
        if proven {
            self.clock(now)
                .check(rigmesh_protocol::Kind::Withdrawal, Some(w.created_at), None)?;
        } else {
            withdrawal.verify(&self.clock(now))?;
        }
        self.check_epoch(w.epoch)?;
        self.debit_rules(&w.account, w.seq, subject)?;
        self.check_balance(&w.account, w.amount)?;
        if self.needs_review(w)? {
            let approved = self
                .ledger
                .held(CertificateKind::Withdrawal, &subject)?
                .is_some_and(|h| h.approved_by.is_some());
            if !approved {
                return self.hold_withdrawal(withdrawal, subject, now);
            }
        }
        self.take_debit_lock(&w.account, w.seq, subject, now)?;
        self.sign_vote(withdrawal)
    }

    /// Holds a withdrawal for review and answers that it waits. An account
    /// has at most one withdrawal held per sequence number: another waits
    /// only once the first has expired (it then replaces it).
    fn hold_withdrawal(
        &self,
        withdrawal: &Signed<Withdrawal>,
        subject: Id,
        now: UnixMillis,
    ) -> Result<Signed<Vote>, Refusal> {
        let w = &withdrawal.body;
        let mut replaces = None;
        if let Some(other) = self.ledger.held_debit(&w.account, w.seq)? {
            if other != subject {
                let live = self
                    .ledger
                    .held(CertificateKind::Withdrawal, &other)?
                    .and_then(|h| Signed::<Withdrawal>::from_bytes(&h.bytes).ok())
                    .is_some_and(|o| now <= o.body.expires_at.plus_ms(self.config.skew_ms));
                if live {
                    return Err(held_at_seq(other, w));
                }
                replaces = Some(other);
            }
        }
        let hold = self.ledger.hold(
            CertificateKind::Withdrawal,
            &subject,
            withdrawal.to_bytes()?,
            None,
            Some(crate::review::HeldDebit {
                at: (w.account, w.seq),
                replaces,
            }),
            &format!(
                "withdrawal {subject}: {} from {} to {:?} held for review",
                w.amount, w.account, w.destination
            ),
            &self.cause(subject, now),
        )?;
        match hold {
            Hold::Held => {
                tracing::warn!(%subject, account = %w.account, amount = %w.amount, "withdrawal held for review");
            }
            Hold::DebitHeld(other) => return Err(held_at_seq(other, w)),
            Hold::AlreadyHeld(_) | Hold::ReferenceUsed(_) => {}
        }
        Err(Refusal::new(
            HELD_FOR_REVIEW,
            format!("withdrawal {subject} waits for an admin's approval"),
        ))
    }

    /// An admin's decision on a held deposit or withdrawal (section 4.3):
    /// approving a deposit applies it (a second admin key must approve
    /// what the first deposited); approving a withdrawal lets this
    /// coordinator vote for it under the usual rules; rejecting drops it.
    pub fn decide(
        &self,
        approval: &Signed<rigmesh_protocol::Approval>,
        now: UnixMillis,
    ) -> Result<Decided, Refusal> {
        let subject = approval.body.subject;
        let rules = || -> Result<Decided, Refusal> {
            approval.verify(&self.clock(now))?;
            let a = &approval.body;
            if !self.is_admin(&a.admin) {
                return Err(Refusal::new(
                    "not_admin",
                    format!("{} is not an admin key of this coordinator set", a.admin),
                ));
            }
            self.check_epoch(a.epoch)?;
            match a.subject_kind {
                rigmesh_protocol::Kind::Deposit => self.decide_deposit(a, now),
                _ => self.decide_withdrawal(a, now),
            }
        };
        rules().map_err(|r| self.refuse("decide on held message", subject, now, r))
    }

    fn decide_deposit(
        &self,
        a: &rigmesh_protocol::Approval,
        now: UnixMillis,
    ) -> Result<Decided, Refusal> {
        let subject = a.subject;
        let Some(held) = self.ledger.held(CertificateKind::Deposit, &subject)? else {
            if a.approve && self.ledger.is_applied(&subject)? {
                return Ok(Decided::Deposit(Applied::AlreadyApplied));
            }
            return Err(Refusal::new(
                "not_held",
                format!("no deposit {subject} waits for approval here"),
            ));
        };
        let deposit = Signed::<Deposit>::from_bytes(&held.bytes)?;
        let d = &deposit.body;
        let reference = crate::review::reference_key(&d.admin, &d.reference);
        if !a.approve {
            self.ledger.reject_held(
                CertificateKind::Deposit,
                &subject,
                Some(reference),
                None,
                &a.admin,
                &self.cause(subject, now),
            )?;
            return Ok(Decided::Rejected);
        }
        if a.admin == d.admin {
            return Err(Refusal::new(
                "same_admin",
                "a deposit needs the approval of an admin key other than the one that signed it",
            ));
        }
        let applied = self.ledger.apply_deposit(
            &subject,
            &d.account,
            d.amount,
            &reference,
            held.bytes,
            &self.cause(subject, now),
        )?;
        match applied {
            Applied::Conflict { code, detail } => Err(Refusal::new(code, detail)),
            applied => Ok(Decided::Deposit(applied)),
        }
    }

    fn decide_withdrawal(
        &self,
        a: &rigmesh_protocol::Approval,
        now: UnixMillis,
    ) -> Result<Decided, Refusal> {
        let subject = a.subject;
        let Some(held) = self.ledger.held(CertificateKind::Withdrawal, &subject)? else {
            return Err(Refusal::new(
                "not_held",
                format!("no withdrawal {subject} waits for review here"),
            ));
        };
        let withdrawal = Signed::<Withdrawal>::from_bytes(&held.bytes)?;
        let cause = self.cause(subject, now);
        if !a.approve {
            let w = &withdrawal.body;
            self.ledger.reject_held(
                CertificateKind::Withdrawal,
                &subject,
                None,
                Some((w.account, w.seq)),
                &a.admin,
                &cause,
            )?;
            return Ok(Decided::Rejected);
        }
        if a.admin == withdrawal.body.account {
            return Err(Refusal::new(
                "same_admin",
                "an admin key cannot approve its own withdrawal",
            ));
        }
        self.ledger
            .approve_held(CertificateKind::Withdrawal, &subject, &a.admin, &cause)?;
        self.vote_withdrawal(&withdrawal, now)
            .map(Decided::Withdrawal)
    }

    /// Applies a deposit: only one signed by one of the epoch's admin
    /// keys, for this epoch, at most once, and at most one deposit per
    /// `(admin, reference)`. A deposit above the approval threshold is held
    /// until a second admin key approves it ([`Coordinator::decide`]).
    pub fn apply_deposit(
        &self,
        deposit: &Signed<Deposit>,
        now: UnixMillis,
    ) -> Result<Applied, Refusal> {
        let subject = deposit.id().unwrap_or(Id::ZERO);
        let rules = || -> Result<Applied, Refusal> {
            deposit.verify_record()?;
            let d = &deposit.body;
            if !self.is_admin(&d.admin) {
                return Err(Refusal::new(
                    "not_admin",
                    format!("{} is not an admin key of this coordinator set", d.admin),
                ));
            }
            self.check_epoch(d.epoch)?;
            if self.ledger.is_applied(&subject)? {
                return Ok(Applied::AlreadyApplied);
            }
            let reference = crate::review::reference_key(&d.admin, &d.reference);
            let cause = self.cause(subject, now);
            let waiting = || {
                Applied::Pending(format!(
                    "deposit {subject} waits for the approval of a second admin key"
                ))
            };
            if self
                .config
                .review
                .deposit_approval_above
                .is_some_and(|above| d.amount > above)
            {
                return match self.ledger.hold(
                    CertificateKind::Deposit,
                    &subject,
                    deposit.to_bytes()?,
                    Some(reference),
                    None,
                    &format!(
                        "deposit {subject}: {} to {} by {} held for a second admin's approval",
                        d.amount, d.account, d.admin
                    ),
                    &cause,
                )? {
                    Hold::Held | Hold::AlreadyHeld(_) => Ok(waiting()),
                    Hold::ReferenceUsed(other) => Err(reference_used(other)),
                    Hold::DebitHeld(other) => Err(reference_used(other)),
                };
            }
            Ok(self.ledger.apply_deposit(
                &subject,
                &d.account,
                d.amount,
                &reference,
                deposit.to_bytes()?,
                &cause,
            )?)
        };
        let result = match rules() {
            Ok(Applied::Conflict { code, detail }) if code == REFERENCE_USED => {
                Err(Refusal::new(code, detail))
            }
            other => other,
        };
        self.after_apply("apply deposit", subject, now, result)
    }

    /// Applies a withdrawal certificate from any source.
    pub fn apply_withdrawal(
        &self,
        certificate: &WithdrawalCertificate,
        now: UnixMillis,
    ) -> Result<Applied, Refusal> {
        self.apply_certified("apply withdrawal certificate", certificate, now, |cause| {
            self.ledger.apply_withdrawal_certificate(certificate, cause)
        })
    }

    /// Verifies a certificate against the set, applies it with `apply`,
    /// and records a refusal or conflict in the audit chain.
    fn apply_certified<T: Certifiable>(
        &self,
        what: &str,
        certificate: &Certificate<T>,
        now: UnixMillis,
        apply: impl FnOnce(&Cause) -> crate::Result<Applied>,
    ) -> Result<Applied, Refusal> {
        let subject = certificate.subject().unwrap_or(Id::ZERO);
        // Byte for byte the certificate applied here, whose votes were
        // checked then: it changes nothing and needs no second check.
        // Suppliers send a lease's escrow and last settlement certificate
        // with every request, and coordinators hear each certificate from
        // its sender and again by gossip; each would otherwise cost a
        // quorum of signature checks. Any other bytes are checked in full,
        // unless the same bytes passed the node's ingest a moment ago (the
        // gossiped copy came first).
        if self.applied_as(certificate, &subject) {
            return Ok(Applied::AlreadyApplied);
        }
        let verified = match self.checked {
            Some(checked) => checked.verify(certificate, &self.config.set),
            None => certificate.verify(&self.config.set),
        };
        let result = verified
            .map_err(Refusal::from)
            .and_then(|()| Ok(apply(&self.cause(subject, now))?));
        self.after_apply(what, subject, now, result)
    }

    /// True when `certificate` is applied here with exactly these bytes.
    fn applied_as<T: Certifiable>(&self, certificate: &Certificate<T>, subject: &Id) -> bool {
        let Ok(kind) = crate::CertificateKind::of(T::CERTIFICATE) else {
            return false;
        };
        matches!(self.ledger.is_applied(subject), Ok(true))
            && matches!(
                (self.ledger.applied_certificate(kind, subject), certificate.to_bytes()),
                (Ok(Some(stored)), Ok(bytes)) if stored == bytes
            )
    }

    /// The status of each window `first..=last` of a lease at `now`.
    pub fn window_status(
        &self,
        attestation: &Signed<UsageAttestation>,
        id: Id,
        acks: &[Signed<UsageAck>],
        disputes: &[Signed<UsageDispute>],
        now: UnixMillis,
    ) -> WindowStatus {
        let a = &attestation.body;
        let by_customer = |lease: Id, customer: PublicKey, seq: u64| {
            lease == a.lease && customer == a.customer && seq == a.seq
        };
        let acks = acks
            .iter()
            .filter(|k| {
                by_customer(k.body.lease, k.body.customer, k.body.seq) && k.verify_record().is_ok()
            })
            .map(|k| &k.body);
        let disputes = disputes
            .iter()
            .filter(|d| {
                by_customer(d.body.lease, d.body.customer, d.body.seq) && d.verify_record().is_ok()
            })
            .map(|d| &d.body);
        let acked = match crate::disputes::answer(id, acks, disputes) {
            Answer::Held => return WindowStatus::Disputed,
            Answer::Refuted => return WindowStatus::Refuted,
            Answer::Acked => true,
            Answer::None => false,
        };
        if acked {
            WindowStatus::Acked
        } else if now >= a.window_end.plus_ms(self.config.unacked_timeout_ms) {
            WindowStatus::AcceptedByTimeout
        } else {
            WindowStatus::Undecided
        }
    }

    /// The voting rule for a settlement request (section 8.2).
    pub fn vote_settlement(
        &self,
        evidence: &SettlementEvidence<'_>,
        now: UnixMillis,
    ) -> Result<Signed<Vote>, Refusal> {
        let subject = evidence.request.id().unwrap_or(Id::ZERO);
        self.settlement_rules(evidence, subject, now)
            .map_err(|r| self.refuse("vote on settlement request", subject, now, r))
    }

    fn settlement_rules(
        &self,
        ev: &SettlementEvidence<'_>,
        subject: Id,
        now: UnixMillis,
    ) -> Result<Signed<Vote>, Refusal> {
        ev.request.verify_record()?;
        let r = &ev.request.body;
        if self.ledger.settlement_lock(&r.lease, r.settlement_seq)? == Some(subject) {
            return self.sign_vote(ev.request);
        }
        self.clock(now).check(
            rigmesh_protocol::Kind::SettlementRequest,
            Some(r.created_at),
            None,
        )?;
        self.check_epoch(r.epoch)?;
        let claim = Claim {
            lease: r.lease,
            supplier: r.supplier,
            customer: r.customer,
            settlement_seq: r.settlement_seq,
            escrow: r.escrow,
            first_window: r.first_window,
            last_window: Some(r.last_window),
            attestation_head: r.attestation_head,
            billable_gpu_ms: r.billable_gpu_ms,
            supplier_amount: r.supplier_amount,
            fee: r.fee,
            refund: r.refund,
            held: r.held,
            final_settlement: r.final_settlement,
        };
        let (counts, refuted) = self.claim_rules(&claim, &Windows::from(ev), subject, now, None)?;
        self.lock_and_vote(&claim, subject, (&counts, refuted), ev.request, now)
    }

    /// The voting rule for an escrow release (section 8.5): the rules of
    /// a final settlement, signed by the customer, once the lease has
    /// ended and its grace period has passed with no final settlement.
    pub fn vote_release(
        &self,
        evidence: &ReleaseEvidence<'_>,
        now: UnixMillis,
    ) -> Result<Signed<Vote>, Refusal> {
        let subject = evidence.release.id().unwrap_or(Id::ZERO);
        self.release_rules(evidence, subject, now)
            .map_err(|r| self.refuse("vote on escrow release", subject, now, r))
    }

    fn release_rules(
        &self,
        ev: &ReleaseEvidence<'_>,
        subject: Id,
        now: UnixMillis,
    ) -> Result<Signed<Vote>, Refusal> {
        let release = ev.release;
        release.verify_record()?;
        let r = &release.body;
        if self.ledger.settlement_lock(&r.lease, r.settlement_seq)? == Some(subject) {
            return self.sign_vote(release);
        }
        self.clock(now).check(
            rigmesh_protocol::Kind::EscrowRelease,
            Some(r.created_at),
            None,
        )?;
        self.check_epoch(r.epoch)?;
        let claim = Claim {
            lease: r.lease,
            supplier: r.supplier,
            customer: r.customer,
            settlement_seq: r.settlement_seq,
            escrow: r.escrow,
            first_window: r.first_window,
            last_window: r.last_window(),
            attestation_head: r.attestation_head,
            billable_gpu_ms: r.billable_gpu_ms,
            supplier_amount: r.supplier_amount,
            fee: r.fee,
            refund: r.refund,
            held: Credits::ZERO,
            final_settlement: true,
        };
        let (counts, _) = self.claim_rules(
            &claim,
            &Windows::from(ev),
            subject,
            now,
            Some(self.config.release_grace_ms),
        )?;
        self.lock_and_vote(&claim, subject, (&counts, 0), release, now)
    }

    fn lock_and_vote<T: Certifiable>(
        &self,
        claim: &Claim,
        subject: Id,
        (counts, refuted): (&WindowCounts, u64),
        message: &Signed<T>,
        now: UnixMillis,
    ) -> Result<Signed<Vote>, Refusal> {
        match self.ledger.lock_settlement(
            &claim.lease,
            claim.settlement_seq,
            &subject,
            counts,
            refuted,
            &self.cause(subject, now),
        )? {
            Lock::Taken | Lock::Same => self.sign_vote(message),
            Lock::Other(other) => Err(Refusal::new(
                "conflicting_request",
                format!("already voted for {other}"),
            )),
        }
    }

    /// Rules 5 to 13 of 8.2 for a settlement or an escrow release; with
    /// `release_grace`, also the release's rules of 8.5. Returns the
    /// window counts for reputation and the disputes a rule decided
    /// against the customer.
    fn claim_rules(
        &self,
        claim: &Claim,
        ev: &Windows<'_>,
        subject: Id,
        now: UnixMillis,
        release_grace: Option<u64>,
    ) -> Result<(WindowCounts, u64), Refusal> {
        let g = ev.agreement;
        g.verify_record()
            .map_err(|e| Refusal::new("lease_mismatch", e.to_string()))?;
        if g.id()? != claim.lease
            || g.body.supplier != claim.supplier
            || g.body.proposal.body.customer != claim.customer
        {
            return Err(Refusal::new(
                "lease_mismatch",
                "the request's lease, supplier or customer is not the agreement's",
            ));
        }
        let Some(book) = self.ledger.lease_book(&claim.lease)? else {
            return Err(Refusal::new(
                "escrow_mismatch",
                format!("the escrow of lease {} is not applied here", claim.lease),
            ));
        };
        if book.order != claim.escrow
            || book.customer != claim.customer
            || book.supplier != claim.supplier
        {
            return Err(Refusal::new(
                "escrow_mismatch",
                "the applied escrow is not the one the request names",
            ));
        }
        if book.closed {
            return Err(Refusal::new("lease_closed", "the lease is closed"));
        }
        if let Some(other) = self
            .ledger
            .settlement_lock(&claim.lease, claim.settlement_seq)?
        {
            if other != subject {
                return Err(Refusal::new(
                    "conflicting_request",
                    format!(
                        "already voted for {other} at settlement {}",
                        claim.settlement_seq
                    ),
                ));
            }
        }
        if claim.settlement_seq < book.next_settlement_seq {
            return Err(Refusal::new(
                "settlement_seq_used",
                format!("next settlement is {}", book.next_settlement_seq),
            ));
        }
        if claim.settlement_seq > book.next_settlement_seq {
            return Err(Refusal::new(
                "settlement_seq_ahead",
                format!("next settlement is {}", book.next_settlement_seq),
            ));
        }
        if claim.first_window != book.next_window {
            return Err(Refusal::new(
                "window_gap",
                format!(
                    "first_window {} but the next window to settle is {}",
                    claim.first_window, book.next_window
                ),
            ));
        }
        if let Some(grace) = release_grace {
            let ended = termination_point(&claim.lease, &claim.customer, ev.terminations)
                .map_or(g.body.ends_at, |t| t.min(g.body.ends_at));
            let due = ended.plus_ms(grace);
            if now < due {
                return Err(Refusal::new(
                    "release_not_due",
                    format!(
                        "the lease ended at {}; its supplier may settle it until {}",
                        ended.0, due.0
                    ),
                ));
            }
            // Every window the customer acked is the supplier's: a release
            // that leaves one out would take it back.
            let last = claim.last_window;
            if let Some(ack) = ev.acks.iter().find(|k| {
                k.body.lease == claim.lease
                    && k.body.customer == claim.customer
                    && k.body.seq >= claim.first_window
                    && last.is_none_or(|last| k.body.seq > last)
                    && k.verify_record().is_ok()
            }) {
                return Err(Refusal::new(
                    "acked_window_left_out",
                    format!("window {} was acked but is not covered", ack.body.seq),
                ));
            }
        }
        let statuses = match claim.last_window {
            Some(last) => self.check_chain(claim, last, ev, now)?,
            None => Vec::new(),
        };
        if let Some((seq, _)) = statuses.iter().find(|(_, s)| *s == WindowStatus::Undecided) {
            return Err(Refusal::new(
                "window_not_due",
                format!("window {seq} is neither acked, disputed nor past the timeout"),
            ));
        }
        // A settlement pays what is acked, accepted or refuted by rule and
        // holds what is disputed; a release, the customer's own claim,
        // pays only what it acked or let pass and holds nothing.
        let release = release_grace.is_some();
        let mut meter = billing::Meter::default();
        let mut held = billing::Meter::default();
        let mut refuted = 0u64;
        for (a, (_, status)) in ev.attestations.iter().zip(&statuses) {
            let ms = a.body.billable_gpu_ms;
            let (paid, hold) = match status {
                WindowStatus::Acked | WindowStatus::AcceptedByTimeout => (ms, 0),
                WindowStatus::Refuted if !release => {
                    refuted += 1;
                    (ms, 0)
                }
                WindowStatus::Disputed if !release => (0, ms),
                WindowStatus::Refuted
                | WindowStatus::Disputed
                | WindowStatus::Undecided
                | WindowStatus::AfterTermination => (0, 0),
            };
            meter
                .add_window(paid)
                .map_err(|e| Refusal::new("payout_mismatch", e.to_string()))?;
            held.add_window(hold)
                .map_err(|e| Refusal::new("payout_mismatch", e.to_string()))?;
        }
        let payout = self
            .payout(
                g,
                (meter.gpu_ms(), held.gpu_ms()),
                book.available()?,
                claim.final_settlement,
            )
            .map_err(|e| Refusal::new("payout_mismatch", e.to_string()))?;
        if payout.billable_gpu_ms != claim.billable_gpu_ms
            || payout.supplier != claim.supplier_amount
            || payout.fee != claim.fee
            || payout.refund != claim.refund
            || payout.held != claim.held
        {
            return Err(Refusal::new(
                "payout_mismatch",
                format!(
                    "computed {} GPU-ms, supplier {}, fee {}, refund {}, held {}; the request states {}, {}, {}, {}, {}",
                    payout.billable_gpu_ms,
                    payout.supplier,
                    payout.fee,
                    payout.refund,
                    payout.held,
                    claim.billable_gpu_ms,
                    claim.supplier_amount,
                    claim.fee,
                    claim.refund,
                    claim.held
                ),
            ));
        }
        Ok((window_counts(ev, &statuses), refuted))
    }

    /// The payout of section 8.3 for `gpu_ms` paid and `held_gpu_ms`
    /// held for review of lease `agreement`.
    pub fn payout(
        &self,
        agreement: &Signed<LeaseAgreement>,
        (gpu_ms, held_gpu_ms): (u64, u64),
        available: Credits,
        final_settlement: bool,
    ) -> crate::Result<Payout> {
        billing::payout_holding(
            agreement.body.proposal.body.price_per_gpu_hour,
            gpu_ms,
            held_gpu_ms,
            available,
            self.config.fee_rate,
            final_settlement,
        )
    }

    /// Rule 11 of 8.2: the attestations continue the chain and fit the
    /// lease; returns each window's status.
    fn check_chain(
        &self,
        r: &Claim,
        last_window: u64,
        ev: &Windows<'_>,
        now: UnixMillis,
    ) -> Result<Vec<(u64, WindowStatus)>, Refusal> {
        let g = &ev.agreement.body;
        let broken = |detail: String| Refusal::new("broken_chain", detail);
        let count = last_window
            .checked_sub(r.first_window)
            .and_then(|n| n.checked_add(1))
            .ok_or_else(|| broken("empty range".into()))?;
        if ev.attestations.len() as u64 != count {
            return Err(broken(format!(
                "{} attestations for {count} windows",
                ev.attestations.len()
            )));
        }
        let head = self.ledger.settlement_head(&r.lease)?;
        let (mut prev_id, mut prev_end) = if r.first_window == 0 {
            (Id::ZERO, None)
        } else {
            let previous = ev
                .previous
                .ok_or_else(|| broken("attestation first_window - 1 is missing".into()))?;
            let id = previous.id()?;
            if Some(id) != head || previous.verify_record().is_err() {
                return Err(broken(
                    "attestation first_window - 1 is not the settled head".into(),
                ));
            }
            (id, Some(previous.body.window_end))
        };
        let mut wanted: Vec<u16> = g.gpu_indices.clone();
        wanted.sort_unstable();
        let ended = termination_point(&r.lease, &r.customer, ev.terminations);
        let window_ms = ev.agreement.body.window_ms();
        let mut out = Vec::with_capacity(ev.attestations.len());
        for (i, a) in ev.attestations.iter().enumerate() {
            let seq = r.first_window + i as u64;
            a.verify_record()
                .map_err(|e| broken(format!("attestation {seq}: {e}")))?;
            let b = &a.body;
            if b.lease != r.lease
                || b.supplier != r.supplier
                || b.customer != r.customer
                || b.seq != seq
                || b.prev != prev_id
            {
                return Err(broken(format!("attestation {seq} does not link")));
            }
            if b.window_start < g.starts_at
                || b.window_end > g.ends_at
                || prev_end.is_some_and(|end| b.window_start < end)
                || b.window_end.since(b.window_start) > window_ms
            {
                return Err(broken(format!(
                    "attestation {seq} does not fit the lease's time"
                )));
            }
            let mut gpus: Vec<u16> = b.gpus.iter().map(|u| u.gpu_index).collect();
            gpus.sort_unstable();
            if gpus != wanted {
                return Err(broken(format!(
                    "attestation {seq} bills GPUs {gpus:?}, the lease has {wanted:?}"
                )));
            }
            let id = a.id()?;
            let mut status = self.window_status(a, id, ev.acks, ev.disputes, now);
            // What the customer did not ack after it ended the lease is
            // not payable, however long it stays unanswered.
            if ended.is_some_and(|end| b.window_start > end)
                && matches!(
                    status,
                    WindowStatus::AcceptedByTimeout | WindowStatus::Undecided
                )
            {
                status = WindowStatus::AfterTermination;
            }
            out.push((seq, status));
            prev_id = id;
            prev_end = Some(b.window_end);
        }
        if prev_id != r.attestation_head {
            return Err(broken(
                "attestation_head is not the last attestation".into(),
            ));
        }
        Ok(out)
    }

    /// Applies an escrow certificate from any source (section 5.4).
    pub fn apply_escrow(
        &self,
        certificate: &EscrowCertificate,
        now: UnixMillis,
    ) -> Result<Applied, Refusal> {
        self.apply_certified("apply escrow certificate", certificate, now, |cause| {
            self.ledger.apply_escrow_certificate(certificate, cause)
        })
    }

    /// Applies an escrow release certificate from any source (section 8.5).
    pub fn apply_release(
        &self,
        certificate: &ReleaseCertificate,
        now: UnixMillis,
    ) -> Result<Applied, Refusal> {
        self.apply_certified("apply release certificate", certificate, now, |cause| {
            self.ledger.apply_release_certificate(certificate, cause)
        })
    }

    /// The voting rule for an admin's resolution of a dispute case
    /// (section 7.2): signed by a configured admin key, addressed to this
    /// epoch, for a case this coordinator holds open with the same amount,
    /// and the first resolution of that case it votes for.
    pub fn vote_resolution(
        &self,
        resolution: &Signed<DisputeResolution>,
        now: UnixMillis,
    ) -> Result<Signed<Vote>, Refusal> {
        let subject = resolution.id().unwrap_or(Id::ZERO);
        self.resolution_rules(resolution, subject, now)
            .map_err(|r| self.refuse("vote on dispute resolution", subject, now, r))
    }

    fn resolution_rules(
        &self,
        resolution: &Signed<DisputeResolution>,
        subject: Id,
        now: UnixMillis,
    ) -> Result<Signed<Vote>, Refusal> {
        resolution.verify_record()?;
        let r = &resolution.body;
        if self.ledger.resolution_lock(&r.lease, r.settlement_seq)? == Some(subject) {
            return self.sign_vote(resolution);
        }
        self.clock(now).check(
            rigmesh_protocol::Kind::DisputeResolution,
            Some(r.created_at),
            None,
        )?;
        self.check_epoch(r.epoch)?;
        if !self.is_admin(&r.admin) {
            return Err(Refusal::new(
                "not_admin",
                format!("{} is not an admin key of this set", r.admin),
            ));
        }
        let case = self.ledger.dispute_case(&r.lease, r.settlement_seq)?;
        if let Some(detail) = crate::disputes::resolution_mismatch(case.as_ref(), r) {
            return Err(Refusal::new("no_such_case", detail));
        }
        match self.ledger.lock_resolution(
            &r.lease,
            r.settlement_seq,
            &subject,
            &self.cause(subject, now),
        )? {
            Lock::Taken | Lock::Same => self.sign_vote(resolution),
            Lock::Other(other) => Err(Refusal::new(
                "conflicting_request",
                format!("already voted for resolution {other} of this case"),
            )),
        }
    }

    /// Applies a dispute resolution certificate from any source.
    pub fn apply_resolution(
        &self,
        certificate: &ResolutionCertificate,
        now: UnixMillis,
    ) -> Result<Applied, Refusal> {
        self.apply_certified("apply resolution certificate", certificate, now, |cause| {
            self.ledger.apply_resolution_certificate(certificate, cause)
        })
    }

    /// Applies a settlement certificate from any source (section 8.4).
    pub fn apply_settlement(
        &self,
        certificate: &SettlementCertificate,
        now: UnixMillis,
    ) -> Result<Applied, Refusal> {
        self.apply_certified("apply settlement certificate", certificate, now, |cause| {
            self.ledger.apply_settlement_certificate(certificate, cause)
        })
    }

    fn after_apply(
        &self,
        what: &str,
        subject: Id,
        now: UnixMillis,
        result: Result<Applied, Refusal>,
    ) -> Result<Applied, Refusal> {
        match result {
            Ok(Applied::Conflict { code, detail }) => {
                tracing::error!(%subject, code, %detail, "conflicting certificate");
                Err(self.refuse(what, subject, now, Refusal::new(code, detail)))
            }
            Ok(applied) => {
                if applied == Applied::Applied {
                    self.retry_pending(now);
                }
                Ok(applied)
            }
            Err(refusal) => Err(self.refuse(what, subject, now, refusal)),
        }
    }

    /// Applies whatever pending certificates now can be, until none moves.
    pub fn retry_pending(&self, now: UnixMillis) -> usize {
        let mut applied = 0;
        loop {
            let Ok(pending) = self.ledger.pending_certificates() else {
                return applied;
            };
            let mut progress = false;
            for (kind, subject, bytes) in pending {
                let cause = self.cause(subject, now);
                let result = match kind {
                    CertificateKind::Escrow => EscrowCertificate::from_bytes(&bytes)
                        .map_err(Error::from)
                        .and_then(|c| self.ledger.apply_escrow_certificate(&c, &cause)),
                    CertificateKind::Settlement => SettlementCertificate::from_bytes(&bytes)
                        .map_err(Error::from)
                        .and_then(|c| self.ledger.apply_settlement_certificate(&c, &cause)),
                    CertificateKind::Withdrawal => WithdrawalCertificate::from_bytes(&bytes)
                        .map_err(Error::from)
                        .and_then(|c| self.ledger.apply_withdrawal_certificate(&c, &cause)),
                    CertificateKind::Release => ReleaseCertificate::from_bytes(&bytes)
                        .map_err(Error::from)
                        .and_then(|c| self.ledger.apply_release_certificate(&c, &cause)),
                    CertificateKind::Resolution => ResolutionCertificate::from_bytes(&bytes)
                        .map_err(Error::from)
                        .and_then(|c| self.ledger.apply_resolution_certificate(&c, &cause)),
                    CertificateKind::Deposit => continue,
                };
                if matches!(result, Ok(Applied::Applied)) {
                    applied += 1;
                    progress = true;
                }
            }
            if !progress {
                return applied;
            }
        }
    }

    /// Every balance this coordinator holds, by account name: what the
    /// fault tests compare across coordinators.
    pub fn snapshot(&self) -> crate::Result<BTreeMap<String, Credits>> {
        Ok(self
            .ledger
            .balances()?
            .into_iter()
            .map(|(account, balance)| (account.to_string(), balance))
            .collect())
    }
}
