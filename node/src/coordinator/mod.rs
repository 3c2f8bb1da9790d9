//! The coordinator role at run time: answers `/rigmesh/coordinator/1`
//! requests (escrow orders, withdrawals and settlement requests to vote on,
//! deposits, certificates to apply, account queries) with the ledger's
//! [`rigmesh_ledger::Coordinator`] rules, applies every certificate and
//! deposit that arrives by gossip or catch-up sync, retries those held
//! pending, and keeps its node binding published so clients can reach it.

use std::sync::Arc;
use std::time::Duration;

use rigmesh_ledger::{
    Account, Applied, Coordinator, CoordinatorConfig, Decided, IntegrityCheck, Ledger, MarketStore,
    Refusal, ReleaseEvidence, SettlementEvidence, HELD_FOR_REVIEW,
};
use rigmesh_protocol::rpc::{
    AccountState, CaseFile, CertificateFrame, CoordinatorRequest, CoordinatorResponse, HeldEntry,
    LeaseResponse, ReleaseBundle, SettlementBundle,
};
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{
    CheckedCertificates, Keypair, Kind, LeaseTermination, PublicKey, SettlementRequest, Signed,
    UnixMillis, UsageAck, UsageDispute,
};
use tokio::sync::{mpsc, watch};

use crate::network::{AcceptedMessage, InboundRequest, NodeHandle, Protocol};

pub mod agree;
pub mod health;
pub mod metrics;
pub mod reach;

/// Alerts waiting to be gossiped.
type Outbox = std::sync::Mutex<Vec<Signed<rigmesh_protocol::Alert>>>;

/// What the coordinator runtime needs.
#[derive(Debug)]
pub struct CoordinatorRole {
    /// This coordinator's member key.
    pub key: Keypair,
    /// The epoch's shared configuration.
    pub config: CoordinatorConfig,
    /// The books.
    pub ledger: Arc<Ledger>,
    /// The node's gossip store (acks and disputes held, bindings).
    pub store: Arc<MarketStore>,
    /// Alerts raised and not yet gossiped.
    pub outbox: Outbox,
    /// Reputation reports and market alerts.
    pub health: std::sync::Mutex<health::Watch>,
    /// Alerts already raised in the window, per rule and subject.
    pub limiter: std::sync::Mutex<health::AlertLimiter>,
    /// A deposit above this raises an operator alert.
    pub deposit_alert_above: Option<rigmesh_protocol::Credits>,
    /// Deposits applied from a direct request, to gossip: the admin's
    /// tool that sent them is short-lived and may have reached no gossip
    /// peer, so the coordinators spread them to every node's receipts.
    pub deposits_out: std::sync::Mutex<Vec<Signed<rigmesh_protocol::Deposit>>>,
    /// Terminations held from a direct request and not yet announced: the
    /// node's subscribers hear of every message it stores, and the
    /// coordinators gossip them on, since the customer's own gossip may
    /// have reached no peer (it hands them over before or without it).
    pub terminations_out: std::sync::Mutex<Vec<Signed<LeaseTermination>>>,
    /// Its metrics, when the node exports them.
    pub metrics: Option<metrics::CoordinatorMetrics>,
    /// The node's suspicious-activity review queue (withdrawals held for
    /// review open items in it).
    pub review: Option<crate::review::ReviewQueue>,
    /// Certificates checked in full, shared with the node's ingest, so
    /// that a certificate handed over and its gossiped copy are checked
    /// once between them.
    pub checked: Option<Arc<CheckedCertificates>>,
}

impl CoordinatorRole {
    fn rules(&self) -> Coordinator<'_, rigmesh_ledger::SledStore> {
        let rules = Coordinator::new(&self.ledger, &self.key, &self.config);
        match &self.checked {
            Some(checked) => rules.checking_once(checked),
            None => rules,
        }
    }

    /// A coordinator role over its books.
    pub fn new(
        key: Keypair,
        config: CoordinatorConfig,
        ledger: Arc<Ledger>,
        store: Arc<MarketStore>,
    ) -> Self {
        store.keep_unapplied();
        CoordinatorRole {
            key,
            config,
            ledger,
            store,
            outbox: Outbox::default(),
            health: std::sync::Mutex::new(health::Watch::default()),
            limiter: std::sync::Mutex::new(health::AlertLimiter::default()),
            deposit_alert_above: None,
            deposits_out: std::sync::Mutex::new(Vec::new()),
            terminations_out: std::sync::Mutex::new(Vec::new()),
            metrics: None,
            review: None,
            checked: None,
        }
    }

    /// Raises alerts, each at most once per rule, audience and subject in
    /// the limiter's window: anything that makes a coordinator raise one
    /// cannot make it store, flush and gossip a stream of them.
    fn push_alerts(&self, alerts: impl IntoIterator<Item = Signed<rigmesh_protocol::Alert>>) {
        let admitted: Vec<_> = {
            let mut limiter = self
                .limiter
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            alerts
                .into_iter()
                .filter(|a| limiter.admit(&a.body, a.body.created_at))
                .collect()
        };
        let raised: Vec<_> = admitted
            .into_iter()
            .map(|a| health::raise(&self.ledger, a))
            .collect();
        if let Some(m) = &self.metrics {
            for alert in &raised {
                m.alert(&alert.body.rule);
            }
        }
        if !raised.is_empty() {
            self.outbox
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(raised);
        }
    }

    /// Alerts raised since the last call.
    pub fn take_alerts(&self) -> Vec<Signed<rigmesh_protocol::Alert>> {
        std::mem::take(
            &mut *self
                .outbox
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Applies a certificate or deposit from any source.
    pub fn apply(&self, frame: &CertificateFrame, now: UnixMillis) -> Result<Applied, Refusal> {
        let rules = self.rules();
        let result = match frame {
            CertificateFrame::Escrow(c) => rules.apply_escrow(c, now),
            CertificateFrame::Settlement(c) => rules.apply_settlement(c, now),
            CertificateFrame::Withdrawal(c) => rules.apply_withdrawal(c, now),
            CertificateFrame::Deposit(d) => rules.apply_deposit(d, now),
            CertificateFrame::Release(c) => rules.apply_release(c, now),
            CertificateFrame::Resolution(c) => rules.apply_resolution(c, now),
        };
        if let (Some(m), Ok(Applied::Applied)) = (&self.metrics, &result) {
            m.applied(frame);
        }
        match (&result, frame) {
            (Ok(Applied::Applied), CertificateFrame::Settlement(c)) => {
                let r = &c.message.body;
                if let Err(err) = self
                    .store
                    .forget_locked_requests(&r.lease, r.settlement_seq.saturating_add(1))
                {
                    tracing::debug!(%err, "voted requests not pruned");
                }
                self.push_alerts(health::check_escrow(
                    &self.key,
                    &self.ledger,
                    &c.message.body.lease,
                    now,
                ));
            }
            (
                Ok(applied @ (Applied::Applied | Applied::Pending(_))),
                CertificateFrame::Deposit(d),
            ) => {
                self.check_deposit(d, matches!(applied, Applied::Pending(_)), now);
            }
            (Err(refusal), _) if refusal.code == "conflicting_certificate" => {
                self.push_alerts(health::conflict(
                    &self.key,
                    frame.subject().ok(),
                    &refusal.to_string(),
                    now,
                ));
            }
            _ => {}
        }
        result
    }

    /// The operator alert for a large deposit (applied or held).
    fn check_deposit(
        &self,
        deposit: &Signed<rigmesh_protocol::Deposit>,
        held: bool,
        now: UnixMillis,
    ) {
        if self
            .deposit_alert_above
            .is_some_and(|above| deposit.body.amount > above)
        {
            self.push_alerts(health::large_deposit(&self.key, deposit, held, now));
        }
    }

    /// An admin's decision on a held deposit or withdrawal.
    fn decide(
        &self,
        approval: &Signed<rigmesh_protocol::Approval>,
        now: UnixMillis,
    ) -> CoordinatorResponse {
        let held = self
            .ledger
            .held(
                rigmesh_ledger::CertificateKind::Deposit,
                &approval.body.subject,
            )
            .ok()
            .flatten();
        match self.rules().decide(approval, now) {
            Ok(Decided::Deposit(applied)) => {
                let deposit = held
                    .and_then(|h| Signed::<rigmesh_protocol::Deposit>::from_bytes(&h.bytes).ok());
                if let (Applied::Applied, Some(d)) = (&applied, deposit) {
                    self.check_deposit(&d, false, now);
                }
                CoordinatorResponse::Applied
            }
            Ok(Decided::Withdrawal(vote)) => CoordinatorResponse::Vote(vote),
            Ok(Decided::Rejected) => CoordinatorResponse::Applied,
            Err(refusal) => CoordinatorResponse::Refused(refusal.to_string()),
        }
    }

    /// What this coordinator holds for review, of `kind`.
    fn held(&self, kind: rigmesh_protocol::Kind) -> CoordinatorResponse {
        let column = match kind {
            rigmesh_protocol::Kind::Deposit => rigmesh_ledger::CertificateKind::Deposit,
            rigmesh_protocol::Kind::Withdrawal => rigmesh_ledger::CertificateKind::Withdrawal,
            other => {
                return CoordinatorResponse::Refused(format!(
                    "field: {other} is not held for review; deposit or withdrawal"
                ))
            }
        };
        // An expired withdrawal can no longer be voted for: not listed.
        let live = |bytes: &[u8]| match kind {
            rigmesh_protocol::Kind::Withdrawal => {
                Signed::<rigmesh_protocol::Withdrawal>::from_bytes(bytes).is_ok_and(|w| {
                    UnixMillis::now() <= w.body.expires_at.plus_ms(self.config.skew_ms)
                })
            }
            _ => true,
        };
        match self
            .ledger
            .awaiting_review(column, rigmesh_ledger::MAX_PAGE)
        {
            Ok(rows) => CoordinatorResponse::Held(
                rows.into_iter()
                    .filter(|(_, held)| live(&held.bytes))
                    .take(rigmesh_protocol::rpc::MAX_HELD_LISTED)
                    .map(|(subject, held)| HeldEntry {
                        kind,
                        subject,
                        message: held.bytes,
                        since: held.since,
                    })
                    .collect(),
            ),
            Err(err) => CoordinatorResponse::Refused(format!("internal: {err}")),
        }
    }

    /// The open dispute cases, as held entries: the settlement request
    /// that held each (its `held` is the amount).
    fn open_cases(&self) -> CoordinatorResponse {
        let rows = match self
            .ledger
            .dispute_cases(true, rigmesh_protocol::rpc::MAX_HELD_LISTED)
        {
            Ok(rows) => rows,
            Err(err) => return CoordinatorResponse::Refused(format!("internal: {err}")),
        };
        let mut out = Vec::with_capacity(rows.len());
        for (_, case) in rows {
            match self.settlement_request(&case.request) {
                Ok(Some(request)) => match request.to_bytes() {
                    Ok(bytes) => out.push(HeldEntry {
                        kind: rigmesh_protocol::Kind::DisputeResolution,
                        subject: case.request,
                        message: bytes,
                        since: case.opened_at,
                    }),
                    Err(err) => tracing::warn!(%err, "a case's request does not encode"),
                },
                Ok(None) => {}
                Err(err) => return CoordinatorResponse::Refused(format!("internal: {err}")),
            }
        }
        CoordinatorResponse::Held(out)
    }

    /// The applied settlement request `subject`, from its certificate.
    fn settlement_request(
        &self,
        subject: &rigmesh_protocol::Id,
    ) -> rigmesh_ledger::Result<Option<Signed<SettlementRequest>>> {
        let Some(bytes) = self
            .ledger
            .applied_certificate(rigmesh_ledger::CertificateKind::Settlement, subject)?
        else {
            return Ok(None);
        };
        Ok(rigmesh_protocol::SettlementCertificate::from_bytes(&bytes)
            .ok()
            .map(|c| c.message))
    }

    /// The file of the case at `(lease, settlement_seq)`: the request, the
    /// evidence this coordinator kept when it voted (as much as fits one
    /// response), and the resolution once applied.
    pub fn case_file(
        &self,
        lease: &rigmesh_protocol::Id,
        settlement_seq: u64,
    ) -> rigmesh_ledger::Result<Option<CaseFile>> {
        let Some(case) = self.ledger.dispute_case(lease, settlement_seq)? else {
            return Ok(None);
        };
        let Some(request) = self.settlement_request(&case.request)? else {
            return Ok(None);
        };
        let resolution = match case.resolution {
            Some(subject) => self
                .ledger
                .applied_certificate(rigmesh_ledger::CertificateKind::Resolution, &subject)?
                .and_then(|b| rigmesh_protocol::ResolutionCertificate::from_bytes(&b).ok())
                .map(|c| c.message),
            None => None,
        };
        let evidence = self
            .store
            .case_evidence(lease, settlement_seq)?
            .unwrap_or_default();
        let mut file = CaseFile {
            request,
            opened_at: case.opened_at,
            resolution,
            held_windows: evidence.held_windows,
            attestations: Vec::new(),
            disputes: Vec::new(),
            acks: Vec::new(),
        };
        // As much evidence as one response carries, disputes first.
        let budget = CoordinatorResponse::MAX_SIZE.saturating_sub(2 * 1024);
        let mut used = 0usize;
        let mut fits = |bytes: &[u8]| {
            used = used.saturating_add(bytes.len());
            used <= budget
        };
        for bytes in &evidence.disputes {
            match Signed::<UsageDispute>::from_bytes(bytes) {
                Ok(d) if fits(bytes) => file.disputes.push(d),
                _ => {}
            }
        }
        for bytes in &evidence.acks {
            match Signed::<UsageAck>::from_bytes(bytes) {
                Ok(k) if fits(bytes) => file.acks.push(k),
                _ => {}
            }
        }
        for bytes in &evidence.attestations {
            match Signed::<rigmesh_protocol::UsageAttestation>::from_bytes(bytes) {
                Ok(a) if fits(bytes) => file.attestations.push(a),
                _ => {}
            }
        }
        Ok(Some(file))
    }

    /// One round of reputation reports and alerts.
    pub fn watch_round(&self, now: UnixMillis) -> Vec<Signed<rigmesh_protocol::ReputationReport>> {
        let bans: Vec<(Vec<u8>, String)> = self
            .store
            .active_bans(now)
            .unwrap_or_default()
            .into_iter()
            .map(|b| (b.peer, b.reason))
            .collect();
        let (reports, alerts) = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .round(&self.key, self.config.set.epoch(), &self.ledger, &bans, now);
        self.push_alerts(alerts);
        reports
    }

    /// The answer to one request, given only once everything it rests on
    /// is on disk: an answer may read a concurrent writer's batch that
    /// the group commit has not flushed yet (a vote lock, a certificate
    /// applied), and must not be sent before it is durable.
    pub fn answer_durably(
        &self,
        request: CoordinatorRequest,
        now: UnixMillis,
    ) -> CoordinatorResponse {
        let response = self.answer(request, now);
        match self.ledger.sync() {
            Ok(()) => response,
            Err(err) => CoordinatorResponse::Refused(format!("internal: {err}")),
        }
    }

    /// The answer to one request.
    pub fn answer(&self, request: CoordinatorRequest, now: UnixMillis) -> CoordinatorResponse {
        let rules = self.rules();
        let voted = match request {
            CoordinatorRequest::Escrow {
                order,
                agreement,
                missing,
            } => {
                if let Err(refusal) = self.apply_missing(&missing, now) {
                    return CoordinatorResponse::Refused(refusal.to_string());
                }
                rules.vote_escrow(&order, &agreement, now)
            }
            CoordinatorRequest::Withdraw {
                withdrawal,
                missing,
            } => {
                if let Err(refusal) = self.apply_missing(&missing, now) {
                    return CoordinatorResponse::Refused(refusal.to_string());
                }
                match rules.vote_withdrawal(&withdrawal, now) {
                    Err(refusal) if refusal.code == HELD_FOR_REVIEW => {
                        if let Some(queue) = &self.review {
                            let w = &withdrawal.body;
                            queue.raise(crate::review::Suspicion::new(
                                crate::review::rules::WITHDRAWAL_HELD,
                                format!("account {}", w.account),
                                rigmesh_protocol::Severity::Warning,
                                format!(
                                    "withdrawal seq {} of {} credits to {:?} held for an admin's review: {refusal}",
                                    w.seq, w.amount, w.destination
                                ),
                            ));
                        }
                        return CoordinatorResponse::Pending(refusal.to_string());
                    }
                    voted => voted,
                }
            }
            CoordinatorRequest::Decide(approval) => return self.decide(&approval, now),
            CoordinatorRequest::Held(rigmesh_protocol::Kind::DisputeResolution) => {
                return self.open_cases()
            }
            CoordinatorRequest::Held(kind) => return self.held(kind),
            CoordinatorRequest::Resolve(resolution) => rules.vote_resolution(&resolution, now),
            CoordinatorRequest::Case {
                lease,
                settlement_seq,
            } => {
                return match self.case_file(&lease, settlement_seq) {
                    Ok(file) => CoordinatorResponse::Case(file.map(Box::new)),
                    Err(err) => CoordinatorResponse::Refused(format!("internal: {err}")),
                }
            }
            CoordinatorRequest::Settle(bundle) => self.vote_settlement(*bundle, now),
            CoordinatorRequest::Deposit(deposit) => {
                return self.apply_direct(CertificateFrame::Deposit(deposit), now)
            }
            CoordinatorRequest::Apply(frame) => return self.apply_direct(frame, now),
            CoordinatorRequest::Account(_) => {
                return CoordinatorResponse::Refused(
                    "query_unsigned: balances are private; ask with a signed account query".into(),
                )
            }
            CoordinatorRequest::AccountOf(query) => {
                if let Err(refusal) = self.may_read_account(&query, now) {
                    return CoordinatorResponse::Refused(refusal);
                }
                return match self.account_state(query.body.account) {
                    Ok(state) => CoordinatorResponse::Account(state),
                    Err(err) => CoordinatorResponse::Refused(format!("internal: {err}")),
                };
            }
            CoordinatorRequest::Posted { query, ids } => return self.posted(&query, &ids, now),
            CoordinatorRequest::Release(bundle) => self.vote_release(*bundle, now),
            CoordinatorRequest::CompleteDebit { debit, votes } => {
                rules.complete_debit(&debit, &votes, now)
            }
            CoordinatorRequest::Locked {
                lease,
                settlement_seq,
            } => {
                let request = self
                    .store
                    .locked_request(&lease, settlement_seq)
                    .ok()
                    .flatten()
                    .and_then(|bytes| Signed::<SettlementRequest>::from_bytes(&bytes).ok());
                return CoordinatorResponse::Locked(request);
            }
            CoordinatorRequest::Terminate(termination) => {
                return match self.hold_termination(&termination, now) {
                    Ok(()) => CoordinatorResponse::Applied,
                    Err(refusal) => CoordinatorResponse::Refused(refusal.to_string()),
                }
            }
        };
        match voted {
            Ok(vote) => CoordinatorResponse::Vote(vote),
            Err(refusal) => CoordinatorResponse::Refused(refusal.to_string()),
        }
    }

    /// Applies a certificate or deposit handed over directly, and queues a
    /// newly applied deposit for gossip.
    fn apply_direct(&self, frame: CertificateFrame, now: UnixMillis) -> CoordinatorResponse {
        let result = self.apply(&frame, now);
        if let (Ok(Applied::Applied), CertificateFrame::Deposit(deposit)) = (&result, frame) {
            self.deposits_out
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(deposit);
        }
        applied(result)
    }

    /// Keeps a customer's termination of a funded lease as settlement
    /// evidence (settlement.md 6.1), durably before answering. Only the
    /// customer of the escrow applied here can end a lease, so nobody can
    /// fill the store with terminations of leases that are not theirs.
    pub fn hold_termination(
        &self,
        termination: &Signed<LeaseTermination>,
        now: UnixMillis,
    ) -> Result<(), Refusal> {
        termination.verify_record()?;
        let t = &termination.body;
        rigmesh_protocol::Clock::at(now).check(
            rigmesh_protocol::Kind::LeaseTermination,
            Some(t.created_at),
            None,
        )?;
        let book = self.ledger.lease_book(&t.lease).map_err(Refusal::from)?;
        match book {
            Some(book) if book.customer == t.customer && book.supplier == t.supplier => {}
            Some(_) => {
                return Err(Refusal::new(
                    "lease_mismatch",
                    "the termination is not signed by the lease's customer",
                ))
            }
            None => {
                return Err(Refusal::new(
                    "escrow_mismatch",
                    format!("the escrow of lease {} is not applied here", t.lease),
                ))
            }
        }
        let id = termination.id()?;
        if self
            .store
            .contains(rigmesh_protocol::Kind::LeaseTermination, &id)
            .map_err(Refusal::from)?
        {
            return Ok(());
        }
        let bytes = termination.to_bytes()?;
        let record = rigmesh_ledger::MarketRecord {
            kind: rigmesh_protocol::Kind::LeaseTermination,
            id,
            bytes,
            offer: None,
            expires_at: None,
            lease: Some(t.lease),
            window: None,
            author: None,
            report: None,
            accounts: Vec::new(),
            made_at: None,
        };
        self.store
            .store(&[record])
            .and_then(|()| self.store.flush())
            .map_err(Refusal::from)?;
        tracing::info!(lease = %t.lease, ended_at = %t.created_at.0, "termination held");
        self.terminations_out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(termination.clone());
        Ok(())
    }

    /// The terminations held since the last call, to announce.
    pub fn take_terminations(&self) -> Vec<Signed<LeaseTermination>> {
        std::mem::take(
            &mut *self
                .terminations_out
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Applies the certificates handed with a request. A forged or
    /// malformed one ends the request: its refusal is the answer (and a
    /// strike), so one request cannot make the coordinator check
    /// thousands of them.
    fn apply_missing(&self, missing: &[CertificateFrame], now: UnixMillis) -> Result<(), Refusal> {
        if missing.len() > MAX_MISSING {
            return Err(Refusal::new(
                "field",
                format!(
                    "{} certificates handed with one request; at most {MAX_MISSING}",
                    missing.len()
                ),
            ));
        }
        for frame in missing {
            if let Err(refusal) = self.apply(frame, now) {
                if STRIKE_CODES.contains(&refusal.code) {
                    return Err(refusal);
                }
                tracing::info!(%refusal, "a certificate handed with a request was not applied");
            }
        }
        Ok(())
    }

    fn vote_settlement(
        &self,
        bundle: SettlementBundle,
        now: UnixMillis,
    ) -> Result<Signed<rigmesh_protocol::Vote>, Refusal> {
        // Nothing of the bundle is used before its own signatures check:
        // the request, then every attestation (a forged one is a strike).
        bundle.request.verify_record()?;
        for a in &bundle.attestations {
            a.verify_record()?;
        }
        if let Some(escrow) = bundle.escrow {
            let _ = self.apply(&CertificateFrame::Escrow(Box::new(escrow)), now);
        }
        for earlier in bundle.earlier {
            let _ = self.apply(&CertificateFrame::Settlement(Box::new(earlier)), now);
        }
        let r = &bundle.request.body;
        // The bundle may start with attestation first_window - 1, the one
        // the lease's settled head names.
        let mut attestations = bundle.attestations;
        let previous = match attestations.first() {
            Some(a) if r.first_window > 0 && a.body.seq + 1 == r.first_window => {
                Some(attestations.remove(0))
            }
            _ => None,
        };
        // Acks and disputes: those in the bundle plus those gossiped here,
        // of the windows the request settles only (the rules read no
        // other, and a long lease holds many).
        let lease = r.lease;
        let windows = (r.first_window, Some(r.last_window));
        let mut acks = bundle.acks;
        let mut disputes = bundle.disputes;
        acks.extend(
            self.store
                .about_lease_windows::<UsageAck>(&lease, windows.0, windows.1)
                .unwrap_or_default(),
        );
        disputes.extend(
            self.store
                .about_lease_windows::<UsageDispute>(&lease, windows.0, windows.1)
                .unwrap_or_default(),
        );
        let terminations = self
            .store
            .about_lease::<LeaseTermination>(&lease)
            .unwrap_or_default();
        let vote = self.rules().vote_settlement(
            &SettlementEvidence {
                request: &bundle.request,
                agreement: &bundle.agreement,
                attestations: &attestations,
                previous: previous.as_ref(),
                acks: &acks,
                disputes: &disputes,
                terminations: &terminations,
            },
            now,
        )?;
        if !r.held.is_zero() {
            self.keep_case_evidence(r, &attestations, &acks, &disputes);
        }
        // Kept so that anyone can complete it if its sender vanishes
        // (settlement.md 8.6).
        match bundle.request.to_bytes() {
            Ok(bytes) => {
                if let Err(err) = self
                    .store
                    .put_locked_request(&lease, r.settlement_seq, &bytes)
                {
                    tracing::warn!(%err, "the voted request is not kept");
                }
            }
            Err(err) => tracing::warn!(%err, "the voted request is not kept"),
        }
        // Only now are the attestations known to be the supplier's, signed
        // and chained to the lease's escrow here: nothing is derived from
        // them before.
        self.push_alerts(health::check_attestations(&self.key, &attestations, now));
        Ok(vote)
    }

    /// Keeps what an operator reviews of the windows a voted request
    /// holds: their attestations, and the customer's disputes and acks of
    /// another attestation in the range.
    fn keep_case_evidence(
        &self,
        r: &SettlementRequest,
        attestations: &[Signed<rigmesh_protocol::UsageAttestation>],
        acks: &[Signed<UsageAck>],
        disputes: &[Signed<UsageDispute>],
    ) {
        let range = r.first_window..=r.last_window;
        let ours = |lease: rigmesh_protocol::Id, customer: rigmesh_protocol::PublicKey, seq| {
            lease == r.lease && customer == r.customer && range.contains(&seq)
        };
        let disputes: Vec<&Signed<UsageDispute>> = disputes
            .iter()
            .filter(|d| ours(d.body.lease, d.body.customer, d.body.seq))
            .collect();
        let mut evidence = rigmesh_ledger::CaseEvidence::default();
        for a in attestations {
            let Ok(id) = a.id() else { continue };
            let seq = a.body.seq;
            let other_ack = |k: &&Signed<UsageAck>| {
                ours(k.body.lease, k.body.customer, k.body.seq)
                    && k.body.seq == seq
                    && k.body.attestation != id
            };
            let held = matches!(
                rigmesh_ledger::disputes::answer(
                    id,
                    acks.iter()
                        .filter(|k| ours(k.body.lease, k.body.customer, k.body.seq)
                            && k.body.seq == seq)
                        .map(|k| &k.body),
                    disputes
                        .iter()
                        .filter(|d| d.body.seq == seq)
                        .map(|d| &d.body),
                ),
                rigmesh_ledger::disputes::Answer::Held
            );
            if !held {
                continue;
            }
            evidence.held_windows += 1;
            if let Ok(bytes) = a.to_bytes() {
                evidence.attestations.push(bytes);
            }
            for k in acks.iter().filter(other_ack) {
                if let Ok(bytes) = k.to_bytes() {
                    evidence.acks.push(bytes);
                }
            }
            for d in disputes.iter().filter(|d| d.body.seq == seq) {
                if let Ok(bytes) = d.to_bytes() {
                    evidence.disputes.push(bytes);
                }
            }
        }
        if let Err(err) = self
            .store
            .put_case_evidence(&r.lease, r.settlement_seq, &evidence)
        {
            tracing::warn!(%err, lease = %r.lease, "the evidence of a dispute case is not kept");
        }
    }

    fn vote_release(
        &self,
        bundle: ReleaseBundle,
        now: UnixMillis,
    ) -> Result<Signed<rigmesh_protocol::Vote>, Refusal> {
        let r = &bundle.release.body;
        // The bundle may start with the attestation the lease's settled
        // head names.
        let mut attestations = bundle.attestations;
        let previous = match attestations.first() {
            Some(a) if r.first_window > 0 && a.body.seq + 1 == r.first_window => {
                Some(attestations.remove(0))
            }
            _ => None,
        };
        let lease = r.lease;
        let mut acks = bundle.acks;
        let mut disputes = bundle.disputes;
        let mut terminations = bundle.terminations;
        // From the first window the release covers: the rules read no
        // earlier one (an ack after it that the release leaves out is
        // refused).
        acks.extend(
            self.store
                .about_lease_windows::<UsageAck>(&lease, r.first_window, None)
                .unwrap_or_default(),
        );
        disputes.extend(
            self.store
                .about_lease_windows::<UsageDispute>(&lease, r.first_window, None)
                .unwrap_or_default(),
        );
        terminations.extend(
            self.store
                .about_lease::<LeaseTermination>(&lease)
                .unwrap_or_default(),
        );
        self.rules().vote_release(
            &ReleaseEvidence {
                release: &bundle.release,
                agreement: &bundle.agreement,
                attestations: &attestations,
                previous: previous.as_ref(),
                acks: &acks,
                disputes: &disputes,
                terminations: &terminations,
            },
            now,
        )
    }

    /// Whether `query` may read its account here: a valid signature, made
    /// within [`rigmesh_protocol::ACCOUNT_QUERY_FRESH_MS`] of now,
    /// by the account itself, a member of the set or an admin key.
    fn may_read_account(
        &self,
        query: &Signed<rigmesh_protocol::AccountQuery>,
        now: UnixMillis,
    ) -> Result<(), String> {
        if let Err(err) = query.verify_record() {
            return Err(format!("{}: {err}", err.code()));
        }
        let q = &query.body;
        let fresh = rigmesh_protocol::ACCOUNT_QUERY_FRESH_MS;
        if q.created_at.0.abs_diff(now.0) > fresh {
            return Err(format!(
                "query_stale: an account query must be made within {} s of the coordinator's clock",
                fresh / 1000
            ));
        }
        let allowed = q.asker == q.account
            || self.config.set.contains(&q.asker)
            || self.config.admins.contains(&q.asker);
        if !allowed {
            return Err(format!(
                "not_authorised: {} may not read the account of {}",
                q.asker, q.account
            ));
        }
        Ok(())
    }

    /// Which of `ids` this coordinator has posted, for a member or an
    /// admin key comparing books (specs/settlement.md 10.1).
    fn posted(
        &self,
        query: &Signed<rigmesh_protocol::AccountQuery>,
        ids: &[rigmesh_protocol::Id],
        now: UnixMillis,
    ) -> CoordinatorResponse {
        if let Err(refusal) = self.may_read_account(query, now) {
            return CoordinatorResponse::Refused(refusal);
        }
        let asker = query.body.asker;
        if query.body.account != asker
            || !(self.config.set.contains(&asker) || self.config.admins.contains(&asker))
        {
            return CoordinatorResponse::Refused(format!(
                "not_authorised: only a member or an admin key, asking with a query of its own account, \
                 may compare journals; {asker} asked with a query of {}",
                query.body.account
            ));
        }
        let most = rigmesh_protocol::rpc::MAX_POSTED_ASKED;
        if ids.len() > most {
            return CoordinatorResponse::Refused(format!(
                "too_many: at most {most} journal entries may be asked about at once, not {}",
                ids.len()
            ));
        }
        let posted: rigmesh_ledger::Result<Vec<bool>> =
            ids.iter().map(|id| self.ledger.is_posted(id)).collect();
        match posted {
            Ok(posted) => CoordinatorResponse::Posted(posted),
            Err(err) => CoordinatorResponse::Refused(format!("internal: {err}")),
        }
    }

    /// An account's state here.
    pub fn account_state(&self, account: PublicKey) -> rigmesh_ledger::Result<AccountState> {
        Ok(AccountState {
            account,
            epoch: self.config.set.epoch(),
            balance: self.ledger.balance(&Account::User(account))?,
            next_seq: self.ledger.next_debit_seq(&account)?,
            escrowed: self.ledger.escrowed_by(&account)?,
            coordinator: self.key.public(),
        })
    }
}

fn applied(result: Result<Applied, Refusal>) -> CoordinatorResponse {
    match result {
        Ok(Applied::Applied | Applied::AlreadyApplied) => CoordinatorResponse::Applied,
        Ok(Applied::Pending(why)) => CoordinatorResponse::Pending(why),
        Ok(Applied::Conflict { code, detail }) => {
            CoordinatorResponse::Refused(format!("{code}: {detail}"))
        }
        Err(refusal) => CoordinatorResponse::Refused(refusal.to_string()),
    }
}

fn frame_of(message: &WireMessage) -> Option<CertificateFrame> {
    match message {
        WireMessage::EscrowCertificate(c) => Some(CertificateFrame::Escrow(Box::new(c.clone()))),
        WireMessage::SettlementCertificate(c) => {
            Some(CertificateFrame::Settlement(Box::new(c.clone())))
        }
        WireMessage::WithdrawalCertificate(c) => {
            Some(CertificateFrame::Withdrawal(Box::new(c.clone())))
        }
        WireMessage::Deposit(d) => Some(CertificateFrame::Deposit(d.clone())),
        WireMessage::ReleaseCertificate(c) => Some(CertificateFrame::Release(Box::new(c.clone()))),
        WireMessage::ResolutionCertificate(c) => {
            Some(CertificateFrame::Resolution(Box::new(c.clone())))
        }
        _ => None,
    }
}

/// Deposits and certificates a pass over those listed unapplied reads at
/// once.
const UNAPPLIED_PAGE: usize = 500;

/// What one pass over the stored certificates did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Replayed {
    /// Deposits and certificates read from the store.
    read: usize,
    /// Of those, newly applied.
    applied: usize,
}

/// Applies `frame` (stored in the gossip store as `kind` and `id`) to the
/// books, and takes it off the store's list of those not yet applied
/// unless the books could not be read or written: applied, held pending
/// or refused, the books have had their say.
fn apply_listed(
    role: &CoordinatorRole,
    frame: &CertificateFrame,
    (kind, id): (Kind, rigmesh_protocol::Id),
    now: UnixMillis,
) -> Result<Applied, Refusal> {
    let result = role.apply(frame, now);
    if !matches!(&result, Err(refusal) if refusal.code == "internal") {
        if let Err(err) = role.store.applied(kind, &id) {
            tracing::warn!(%err, "could not take a certificate off the unapplied list");
        }
    }
    result
}

/// Applies the deposits and certificates the node's gossip store lists
/// as not yet applied (`MarketStore::keep_unapplied`), a page at a time.
/// Run at start and when this coordinator fell behind the messages its
/// node accepted: those it skipped, and those stored just before the
/// process stopped, are stored already, so catch-up sync never brings
/// them again, and a certificate whose direct delivery also failed would
/// otherwise never reach its books. The list holds only what the books
/// have not had yet, so a pass reads that, never every one stored. One
/// applied already meanwhile is recognised by its bytes and costs a
/// lookup; one whose predecessors are missing is held pending like any
/// other.
fn apply_stored(role: &CoordinatorRole, now: UnixMillis) -> Replayed {
    let mut done = Replayed {
        read: 0,
        applied: 0,
    };
    let mut after = None;
    loop {
        let page = match role.store.unapplied(after, UNAPPLIED_PAGE) {
            Ok(page) => page,
            Err(err) => {
                tracing::warn!(%err, "could not read the unapplied certificates");
                return done;
            }
        };
        for &(kind, id) in &page {
            let bytes = match role.store.get(kind, &id) {
                Ok(bytes) => bytes,
                Err(err) => {
                    tracing::warn!(%err, "could not read a stored certificate");
                    continue;
                }
            };
            let frame = bytes.and_then(|bytes| {
                WireMessage::decode(kind, &bytes)
                    .ok()
                    .as_ref()
                    .and_then(frame_of)
            });
            let Some(frame) = frame else {
                // Gone since, or not a certificate: nothing to apply.
                if let Err(err) = role.store.applied(kind, &id) {
                    tracing::warn!(%err, "could not take a certificate off the unapplied list");
                }
                continue;
            };
            done.read += 1;
            if let Ok(Applied::Applied) = apply_listed(role, &frame, (kind, id), now) {
                done.applied += 1;
            }
        }
        match page.last() {
            Some(last) if page.len() == UNAPPLIED_PAGE => after = Some(*last),
            _ => return done,
        }
    }
}

/// Most certificates handed with one escrow order or withdrawal.
const MAX_MISSING: usize = 64;

/// Requests answered at once; more wait for a slot.
const MAX_CONCURRENT_ANSWERS: usize = 16;

/// Rule of the alert a failed integrity check raises.
pub const INTEGRITY_RULE: &str = "books.integrity";

/// One round of the standing check of the books and the audit chain
/// (`rigmesh_ledger::integrity`); what is wrong, if anything.
fn integrity(
    check: &mut IntegrityCheck,
    ledger: &Ledger,
    metrics: Option<&metrics::CoordinatorMetrics>,
) -> Option<String> {
    let round = check.round(ledger);
    if let (Some(m), Ok(round)) = (metrics, &round) {
        m.integrity_entries
            .inc_by(round.new_entries + round.entries_again);
        m.integrity_records
            .inc_by(round.new_records + round.records_again);
        if round.history_checked.is_some() {
            m.integrity_history_walks.inc();
        }
    }
    match round {
        Err(err) => Some(format!("the books do not check: {err}")),
        Ok(round) => match round.broken {
            Some(broken) => Some(format!(
                "the audit chain breaks at record {}: {}",
                broken.seq, broken.reason
            )),
            None => {
                // Debug: on small books every round walks them whole.
                if let Some((entries, records)) = round.history_checked {
                    tracing::debug!(
                        entries,
                        records,
                        "the books' history was walked again and checks"
                    );
                }
                None
            }
        },
    }
}

/// This coordinator's own operators' alert about its books.
fn integrity_alert(key: &Keypair, problem: String) -> rigmesh_protocol::Alert {
    crate::notify::own_alert(
        key.public(),
        rigmesh_protocol::Audience::Operators,
        rigmesh_protocol::Severity::Critical,
        INTEGRITY_RULE,
        None,
        problem,
    )
}

/// Requests that may wait for a slot; more are answered `busy` at once.
const MAX_WAITING_ANSWERS: usize = 256;

/// Longest reason sent back, bytes: a refusal always fits the response
/// frame.
const MAX_REASON: usize = 1024;

fn bounded(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

/// Reason codes that only a malformed or forged request earns: an honest
/// client never sends one, whatever state the coordinators are in. Each is
/// a strike toward the sender's ban; other refusals (a balance not there
/// yet, a window not due) are answered and nothing more.
const STRIKE_CODES: &[&str] = &[
    "malformed",
    "too_large",
    "trailing_bytes",
    "frame",
    "invalid_key",
    "bad_signature",
    "wrong_signer",
    "unsupported_version",
    "field",
    "unknown_signer",
    "duplicate_signer",
    "too_few_votes",
    "not_admin",
    "broken_chain",
    "lease_mismatch",
];

/// How a refusal is counted: `None` for an answer that is no refusal,
/// `Some(strike)` for a refusal, with its reason code when it is one of
/// [`STRIKE_CODES`].
fn refusal_of(response: &CoordinatorResponse) -> Option<Option<&'static str>> {
    let CoordinatorResponse::Refused(reason) = response else {
        return None;
    };
    let code = reason.split(':').next().unwrap_or_default();
    Some(STRIKE_CODES.iter().copied().find(|c| *c == code))
}

/// Decodes and answers one coordinator request, off the async threads.
/// A malformed or forged request writes nothing: it is answered, counted
/// and struck against its sender.
async fn answer_bytes(
    role: Arc<CoordinatorRole>,
    bytes: Vec<u8>,
) -> (
    rigmesh_protocol::Result<Vec<u8>>,
    Option<Option<&'static str>>,
) {
    let metrics = role.metrics.clone();
    let (kind, response) = match CoordinatorRequest::from_bytes(&bytes) {
        Ok(request) => (
            metrics::request_kind(&request),
            tokio::task::spawn_blocking(move || role.answer_durably(request, UnixMillis::now()))
                .await
                .unwrap_or_else(|e| CoordinatorResponse::Refused(format!("internal: {e}"))),
        ),
        Err(err) => (
            "malformed",
            CoordinatorResponse::Refused(format!("malformed: {err}")),
        ),
    };
    if let Some(m) = &metrics {
        m.answered(kind, &response);
    }
    let refusal = refusal_of(&response);
    let response = match response {
        CoordinatorResponse::Refused(reason) => CoordinatorResponse::Refused(bounded(reason)),
        CoordinatorResponse::Pending(reason) => CoordinatorResponse::Pending(bounded(reason)),
        other => other,
    };
    (response.to_bytes(), refusal)
}

/// Ends an admitted request's time in the metrics when its task ends,
/// however it ends.
struct InFlight(Option<(metrics::CoordinatorMetrics, std::time::Instant)>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some((m, started)) = &self.0 {
            m.in_flight.dec();
            m.answer_seconds.observe(started.elapsed().as_secs_f64());
        }
    }
}

/// How often held certificates are retried and the binding checked.
const TICK: Duration = Duration::from_secs(2);

/// Least time between two passes over the stored certificates the books
/// have not had (at start, then after the coordinator fell behind its
/// gossip).
const REPLAY_EVERY_MS: u64 = 30_000;

/// Runs the coordinator until `stop` turns true, publishing reputation
/// reports and checks its books as often as `periods` says; its alerts are
/// gossiped and handed to `alerts_to`.
///
/// Three loops run side by side, so none waits on another: answering
/// requests, applying the certificates that arrive by gossip, and the
/// housekeeping of every [`TICK`] (held certificates retried, reports,
/// alerts, the integrity check, the binding). A gossiped certificate
/// waiting for its flush, or a tick publishing a burst of alerts, never
/// holds up the admission of a request.
pub async fn run(
    role: Arc<CoordinatorRole>,
    periods: Periods,
    network: NodeHandle,
    inbound: mpsc::Receiver<InboundRequest>,
    alerts_to: crate::notify::AlertSink,
    stop: watch::Receiver<bool>,
) {
    // Subscribed before anything is announced, so no certificate gossiped
    // from then on is missed.
    let accepted = network.subscribe();
    tracing::info!(member = %role.key.public(), epoch = role.config.set.epoch(), "coordinator ready");
    // Set at start, and when gossip skipped certificates (the subscriber
    // lagged): the housekeeping applies those its store lists as not
    // applied yet.
    let replay_due = Arc::new(std::sync::atomic::AtomicBool::new(true));
    tokio::join!(
        answer_requests(role.clone(), network.clone(), inbound, stop.clone()),
        apply_gossip(role.clone(), accepted, replay_due.clone(), stop.clone()),
        housekeeping(role, periods, network, alerts_to, replay_due, stop),
    );
}

/// How often a coordinator's periodic duties run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    /// Milliseconds between two rounds of reputation reports.
    pub report_every_ms: u64,
    /// Milliseconds between two rounds of the check of its books and
    /// audit chain (`rigmesh_ledger::integrity`).
    pub integrity_every_ms: u64,
    /// Milliseconds between two passes taking away the vote locks and
    /// evidence of leases finally settled longer ago than `closed_grace_ms`
    /// ([`Ledger::compact_closed_leases`]).
    pub compact_every_ms: u64,
    /// How long after its final settlement is applied a lease keeps them.
    pub closed_grace_ms: u64,
}

/// Most finally settled leases one pass compacts, so a pass stays short.
const CLOSED_COMPACT_LIMIT: usize = 1_000;

/// Returns once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Admits and answers requests until `stop`.
async fn answer_requests(
    role: Arc<CoordinatorRole>,
    network: NodeHandle,
    mut inbound: mpsc::Receiver<InboundRequest>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_ANSWERS));
    let admission = Arc::new(tokio::sync::Semaphore::new(
        MAX_CONCURRENT_ANSWERS + MAX_WAITING_ANSWERS,
    ));
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => return,
            Some(request) = inbound.recv() => {
                // Requests are answered concurrently, a bounded number at a
                // time: the ledger's locks and its one writer keep each vote
                // and each application atomic, and its group commit lets
                // the answers in flight share one flush of the books. Admission is bounded before
                // anything is spawned: past MAX_WAITING_ANSWERS waiting, a
                // request is answered `busy` at once (no strike; the sender
                // retries as after a timeout).
                let Ok(admitted) = admission.clone().try_acquire_owned() else {
                    let busy = CoordinatorResponse::Refused("busy: too many requests waiting; retry".into());
                    if let Some(m) = &role.metrics {
                        m.answered("unread", &busy);
                    }
                    if let Ok(bytes) = busy.to_bytes() {
                        if let Err(err) = network.respond(request.protocol, request.channel, bytes).await {
                            tracing::debug!(%err, "could not answer a request");
                        }
                    }
                    continue;
                };
                let (role, network, slots) = (role.clone(), network.clone(), slots.clone());
                let role_after = role.clone();
                let timer = role.metrics.clone().map(|m| {
                    m.in_flight.inc();
                    (m, std::time::Instant::now())
                });
                tokio::spawn(async move {
                    let _admitted = admitted;
                    let _timer = InFlight(timer);
                    let Ok(_slot) = slots.acquire_owned().await else { return };
                    let mut refused = None;
                    let response = match request.protocol {
                        Protocol::Coordinator => {
                            let (response, refusal) = answer_bytes(role, request.bytes).await;
                            refused = refusal;
                            response
                        }
                        Protocol::Lease => LeaseResponse::Refused("a coordinator does not lease GPUs".into()).to_bytes(),
                        Protocol::Sync => CoordinatorResponse::Refused("sync is served by the network".into()).to_bytes(),
                    };
                    match response {
                        Ok(bytes) => {
                            if let Err(err) = network.respond(request.protocol, request.channel, bytes).await {
                                tracing::debug!(%err, "could not answer a request");
                            }
                        }
                        Err(err) => tracing::warn!(%err, "could not encode an answer"),
                    }
                    // A termination this answer held: told to the node's
                    // subscribers and gossiped on (publishing writes the
                    // same keys again).
                    for termination in role_after.take_terminations() {
                        if let Err(err) = network.publish(&WireMessage::LeaseTermination(termination)).await {
                            tracing::debug!(%err, "termination held; not gossiped yet");
                        }
                    }
                    // Counted after the answer, so the sender hears why
                    // even when this strike bans it.
                    if let Some(strike) = refused {
                        if let Err(err) = network.refused(request.peer, strike).await {
                            tracing::debug!(%err, "could not count a refused request");
                        }
                    }
                });
            }
        }
    }
}

/// Applies the certificates gossip brings, one at a time, until `stop`.
async fn apply_gossip(
    role: Arc<CoordinatorRole>,
    mut accepted: tokio::sync::broadcast::Receiver<AcceptedMessage>,
    replay_due: Arc<std::sync::atomic::AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => return,
            message = accepted.recv() => {
                match message {
                    Ok(AcceptedMessage { message, id, .. }) => {
                        if let Some(frame) = frame_of(&message) {
                            let role = role.clone();
                            let listed = (message.kind(), id);
                            let result = tokio::task::spawn_blocking(move || apply_listed(&role, &frame, listed, UnixMillis::now())).await;
                            if let Ok(Err(refusal)) = result {
                                tracing::info!(%refusal, "gossiped certificate not applied");
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // What it skipped is in the store: applied from
                        // there on the next tick (one pass for any number
                        // of lags meanwhile).
                        tracing::warn!(skipped = n, "coordinator fell behind gossip; applying the stored certificates");
                        replay_due.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }
}

/// The periodic work, every [`TICK`], until `stop`.
async fn housekeeping(
    role: Arc<CoordinatorRole>,
    periods: Periods,
    network: NodeHandle,
    alerts_to: crate::notify::AlertSink,
    replay_due: Arc<std::sync::atomic::AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next_replay = UnixMillis(0);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut binding_due = UnixMillis(0);
    let mut report_due = UnixMillis(0);
    // The books and the audit chain are checked at start, then every
    // round; a failure is an operators' alert until a round passes again.
    // The check remembers where its rounds stand (taken out while one
    // runs; a round that panicked starts a new check).
    let mut integrity_due = UnixMillis(0);
    let mut checks: Option<IntegrityCheck> = None;
    let mut integrity_alerted = false;
    let mut compact_due = UnixMillis(0);
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => return,
            _ = tick.tick() => {
                let now = UnixMillis::now();
                // The binding first: until peers have it they cannot reach
                // this member, and on large books the rounds below hold
                // the first tick up (over a second on books of 100,000
                // leases, BENCHMARKS.md).
                if now >= binding_due {
                    binding_due = if crate::supplier::runtime::publish_binding(&role.key, &network, now).await {
                        now.plus_ms(crate::supplier::runtime::BINDING_REFRESH_MS)
                    } else {
                        now.plus_ms(2_000)
                    };
                }
                // At most one pass every REPLAY_EVERY_MS: a coordinator
                // that keeps falling behind is overloaded already, and one
                // pass after the last lag applies everything it skipped.
                if now >= next_replay && replay_due.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    next_replay = now.plus_ms(REPLAY_EVERY_MS);
                    let r = role.clone();
                    if let Ok(pass) = tokio::task::spawn_blocking(move || apply_stored(&r, now)).await {
                        if pass.read > 0 {
                            tracing::info!(read = pass.read, applied = pass.applied, "stored certificates the books had not had applied");
                        }
                    }
                }
                let r = role.clone();
                let _ = tokio::task::spawn_blocking(move || r.rules().retry_pending(now)).await;
                if now >= report_due {
                    report_due = now.plus_ms(periods.report_every_ms);
                    let r = role.clone();
                    let reports = tokio::task::spawn_blocking(move || r.watch_round(now)).await.unwrap_or_default();
                    for report in reports {
                        if let Err(err) = network.publish(&WireMessage::ReputationReport(report)).await {
                            tracing::debug!(%err, "report stored; not gossiped yet");
                        }
                    }
                }
                let deposits: Vec<_> = std::mem::take(
                    &mut *role
                        .deposits_out
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                for deposit in deposits {
                    if let Err(err) = network.publish(&WireMessage::Deposit(deposit)).await {
                        tracing::debug!(%err, "deposit not gossiped again");
                    }
                }
                for alert in role.take_alerts() {
                    alerts_to.raise(&alert.body);
                    if let Err(err) = network.publish(&WireMessage::Alert(alert)).await {
                        tracing::debug!(%err, "alert stored; not gossiped yet");
                    }
                }
                if now >= integrity_due {
                    integrity_due = now.plus_ms(periods.integrity_every_ms);
                    let r = role.clone();
                    let mut round = checks.take().unwrap_or_else(|| IntegrityCheck::new(rigmesh_ledger::integrity::AGAIN_PER_ROUND));
                    let started = std::time::Instant::now();
                    let result = tokio::task::spawn_blocking(move || {
                        let problem = integrity(&mut round, &r.ledger, r.metrics.as_ref());
                        (round, problem)
                    })
                    .await;
                    if let (Some(m), Ok((_, problem))) = (&role.metrics, &result) {
                        m.integrity_round_seconds.observe(started.elapsed().as_secs_f64());
                        m.integrity_failing.set(i64::from(problem.is_some()));
                    }
                    match result {
                        Ok((round, None)) => {
                            checks = Some(round);
                            if integrity_alerted {
                                integrity_alerted = false;
                                alerts_to.resolve(&integrity_alert(&role.key, String::new()));
                            }
                        }
                        Ok((round, Some(problem))) => {
                            checks = Some(round);
                            tracing::error!(%problem, "the books or the audit chain do not check");
                            integrity_alerted = true;
                            alerts_to.raise(&integrity_alert(&role.key, problem));
                        }
                        Err(err) => tracing::warn!(%err, "the integrity check did not run"),
                    }
                }
                if now >= compact_due {
                    let r = role.clone();
                    let before = now.minus_ms(periods.closed_grace_ms);
                    let pass = tokio::task::spawn_blocking(move || {
                        let cause = rigmesh_ledger::Cause::new(r.key.public(), rigmesh_protocol::Id::ZERO, now);
                        r.ledger.compact_closed_leases(before, CLOSED_COMPACT_LIMIT, &cause)
                    })
                    .await;
                    compact_due = match pass {
                        Ok(Ok(done)) => {
                            if let Some(m) = &role.metrics {
                                m.closed_leases_compacted.inc_by(done.leases);
                                m.closed_lease_keys_deleted.inc_by(done.keys);
                            }
                            if done.leases > 0 {
                                tracing::debug!(leases = done.leases, keys = done.keys, "vote locks and evidence of closed leases deleted");
                            }
                            // Behind: the next pass at the next tick.
                            if done.more { now } else { now.plus_ms(periods.compact_every_ms) }
                        }
                        Ok(Err(err)) => {
                            tracing::warn!(%err, "closed leases not compacted");
                            now.plus_ms(periods.compact_every_ms)
                        }
                        Err(err) => {
                            tracing::warn!(%err, "the compaction of closed leases failed");
                            now.plus_ms(periods.compact_every_ms)
                        }
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod integrity_tests {
    use super::*;

    #[test]
    fn rounds_pass_until_the_books_break_and_the_alert_is_for_operators() {
        use rigmesh_ledger::columns::{Audit, Balances};
        use rigmesh_ledger::Store;
        use rigmesh_protocol::Id;
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut check = IntegrityCheck::new(rigmesh_ledger::integrity::AGAIN_PER_ROUND);
        assert_eq!(integrity(&mut check, &ledger, None), None);
        let at = |n: u64| {
            rigmesh_ledger::Cause::new(PublicKey([1; 32]), Id([n as u8; 32]), UnixMillis(n))
        };
        for n in 1..4 {
            ledger
                .deposit(
                    PublicKey([2; 32]),
                    rigmesh_protocol::Credits::from_units(5),
                    Id([n as u8; 32]),
                    &at(n),
                )
                .unwrap();
        }
        assert_eq!(integrity(&mut check, &ledger, None), None);

        // An audit record edited before the walk gets back to it.
        let original = ledger.audit_records(1, 1).unwrap().remove(0);
        let mut record = original.clone();
        record.record.detail = "deposit 5000 to someone else".into();
        let mut batch = rigmesh_ledger::Batch::new();
        batch.put_in::<Audit>(&1, &record).unwrap();
        ledger.store().write(&batch).unwrap();
        let problem = integrity(&mut check, &ledger, None).unwrap();
        assert!(
            problem.contains("audit chain breaks at record 1"),
            "{problem}"
        );

        // A balance that is not what its journal says (the record put
        // back), at the next round.
        let mut batch = rigmesh_ledger::Batch::new();
        batch.put_in::<Audit>(&1, &original).unwrap();
        batch
            .put_in::<Balances>(
                &Account::User(PublicKey([2; 32])),
                &rigmesh_protocol::Credits::from_units(1),
            )
            .unwrap();
        ledger.store().write(&batch).unwrap();
        let problem = integrity(&mut check, &ledger, None).unwrap();
        assert!(
            problem.starts_with("the books do not check: books do not balance"),
            "{problem}"
        );
        let key = Keypair::from_seed([3; 32]);
        let alert = integrity_alert(&key, "the books do not check".into());
        assert_eq!(alert.rule, INTEGRITY_RULE);
        assert_eq!(alert.audience, rigmesh_protocol::Audience::Operators);
        assert_eq!(alert.severity, rigmesh_protocol::Severity::Critical);
    }
}

#[cfg(test)]
mod catch_up_tests {
    use super::*;
    use rigmesh_ledger::MarketRecord;
    use rigmesh_protocol::{samples, wire::WireMessage, Credits};

    /// The sample deposit with reference `n`, so each is another.
    fn deposit(n: u64) -> Signed<rigmesh_protocol::Deposit> {
        let mut body = samples::deposit().unwrap().body;
        body.reference = format!("payment {n}");
        Signed::sign(body, &samples::admin()).unwrap()
    }

    /// Stored by ingest, never handed to the coordinator.
    fn store(store: &MarketStore, deposit: &Signed<rigmesh_protocol::Deposit>) {
        let message = WireMessage::Deposit(deposit.clone());
        store
            .store(&[MarketRecord::of(
                &message,
                message.id().unwrap(),
                message.to_bytes().unwrap(),
            )])
            .unwrap();
    }

    /// A coordinator whose books missed deposits its node stored (its
    /// queue lagged, or the process stopped between the write and the
    /// books) finds them listed in its store, after a restart too, and
    /// applies them; a pass reads only those, and those it holds already
    /// are not applied twice.
    #[test]
    fn a_coordinator_applies_what_its_store_holds_and_its_books_missed_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let ledger = Arc::new(Ledger::open(&dir.path().join("books")).unwrap());
            let market = Arc::new(MarketStore::open(&dir.path().join("market")).unwrap());
            CoordinatorRole::new(
                samples::coordinators()[0].clone(),
                health::tests::config(),
                ledger,
                market,
            )
        };
        let role = open();
        let first = deposit(0);
        let now = first.body.created_at.plus_ms(1_000);
        let account = Account::User(first.body.account);
        let balance = |role: &CoordinatorRole| role.ledger.balance(&account).unwrap();
        let times = |n: i64| Credits::from_units(first.body.amount.units() * n);

        // Stored, never handed to the books; the process stops.
        store(&role.store, &first);
        store(&role.store, &deposit(1));
        assert_eq!(balance(&role), Credits::ZERO);
        role.store.flush().unwrap();
        drop(role);

        let role = open();
        let pass = apply_stored(&role, now);
        assert_eq!((pass.read, pass.applied), (2, 2));
        assert_eq!(balance(&role), times(2));
        // Nothing listed is left: the next pass reads nothing.
        assert_eq!(
            apply_stored(&role, now),
            Replayed {
                read: 0,
                applied: 0
            }
        );

        // One the books had already (handed over directly) is read once,
        // found applied, and taken off; one more is applied.
        let direct = deposit(2);
        store(&role.store, &direct);
        let frame = frame_of(&WireMessage::Deposit(direct.clone())).unwrap();
        assert_eq!(role.apply(&frame, now).unwrap(), Applied::Applied);
        store(&role.store, &deposit(3));
        let pass = apply_stored(&role, now);
        assert_eq!((pass.read, pass.applied), (2, 1));
        assert_eq!(balance(&role), times(4));
        assert_eq!(role.store.unapplied(None, 10).unwrap(), []);

        // Applied as gossip brings it, a deposit is taken off at once.
        let gossiped = deposit(4);
        store(&role.store, &gossiped);
        let message = WireMessage::Deposit(gossiped.clone());
        let listed = (message.kind(), message.id().unwrap());
        assert_eq!(role.store.unapplied(None, 10).unwrap(), [listed]);
        let frame = frame_of(&message).unwrap();
        assert_eq!(
            apply_listed(&role, &frame, listed, now).unwrap(),
            Applied::Applied
        );
        assert_eq!(role.store.unapplied(None, 10).unwrap(), []);
        assert_eq!(balance(&role), times(5));
        role.ledger.check_books().unwrap();
    }
}

#[cfg(test)]
mod posted_tests {
    use super::*;
    use rigmesh_protocol::{samples, AccountQuery, PROTOCOL_VERSION};

    fn query(asker: &Keypair, account: PublicKey, at: UnixMillis) -> Signed<AccountQuery> {
        Signed::sign(
            AccountQuery {
                version: PROTOCOL_VERSION,
                account,
                asker: asker.public(),
                created_at: at,
            },
            asker,
        )
        .unwrap()
    }

    fn refusal(response: CoordinatorResponse) -> String {
        match response {
            CoordinatorResponse::Refused(why) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Members (and only members or admin keys) learn which journal
    /// entries a coordinator holds; an over-long question is refused.
    #[test]
    fn members_learn_which_entries_are_posted_and_no_one_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::open(&dir.path().join("books")).unwrap());
        let store = Arc::new(MarketStore::open(&dir.path().join("market")).unwrap());
        let members = samples::coordinators();
        let role = CoordinatorRole::new(members[0].clone(), health::tests::config(), ledger, store);
        let deposit = samples::deposit().unwrap();
        let now = deposit.body.created_at.plus_ms(1_000);
        assert!(matches!(
            role.answer(CoordinatorRequest::Deposit(deposit.clone()), now),
            CoordinatorResponse::Applied
        ));
        let applied = deposit.id().unwrap();
        let unknown = rigmesh_protocol::Id([9; 32]);
        let member = &members[1];

        let asked = CoordinatorRequest::Posted {
            query: query(member, member.public(), now),
            ids: vec![unknown, applied],
        };
        assert_eq!(
            role.answer(asked, now),
            CoordinatorResponse::Posted(vec![false, true])
        );

        let stranger = Keypair::from_seed([0x5a; 32]);
        let cases = [
            // Not a member.
            (
                query(&stranger, stranger.public(), now),
                1,
                "not_authorised",
            ),
            // A member's query of another account does not ask this.
            (query(member, stranger.public(), now), 1, "not_authorised"),
            (
                query(member, member.public(), UnixMillis(now.0 - 600_000)),
                1,
                "query_stale",
            ),
            (
                query(member, member.public(), now),
                rigmesh_protocol::rpc::MAX_POSTED_ASKED + 1,
                "too_many",
            ),
        ];
        for (query, asked, code) in cases {
            let why = refusal(role.answer(
                CoordinatorRequest::Posted {
                    query,
                    ids: vec![applied; asked],
                },
                now,
            ));
            assert!(why.starts_with(code), "{code}: {why}");
        }
    }
}
