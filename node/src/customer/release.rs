//! Getting the escrow of a lease back when its supplier never settles it
//! finally (specs/settlement.md 8.5): once the lease has ended (its
//! `ends_at`, or this node's termination) and the set's grace period has
//! passed with no final settlement, the customer signs an `EscrowRelease`
//! covering the attestations it holds after the last settlement, paying
//! what the rules pay for them (acked windows always), and gathers a
//! quorum certificate that refunds the rest of the escrow.
//!
//! Everything comes from this node's store: the lease's settlement
//! certificates say where settlement stopped and what was paid, the
//! supplier's attestations and this node's acks, disputes and
//! terminations are the evidence.

use rigmesh_ledger::disputes::{answer, Answer};
use rigmesh_ledger::{termination_point, CoordinatorConfig, MarketStore};
use rigmesh_protocol::rpc::ReleaseBundle;
use rigmesh_protocol::{
    Credits, EscrowOrder, EscrowRelease, Id, Keypair, LeaseAgreement, LeaseTermination, Signed,
    UnixMillis, UsageAck, UsageAttestation, UsageDispute, PROTOCOL_VERSION,
};

/// When a lease ended as the coordinators will judge it: its `ends_at`,
/// or the earliest termination this node signed.
pub fn ended_at(
    store: &MarketStore,
    agreement: &Signed<LeaseAgreement>,
    key: &Keypair,
) -> UnixMillis {
    let lease = agreement.id().unwrap_or(Id::ZERO);
    let terminations: Vec<Signed<LeaseTermination>> = store.about_lease(&lease).unwrap_or_default();
    termination_point(&lease, &key.public(), &terminations)
        .map_or(agreement.body.ends_at, |t| t.min(agreement.body.ends_at))
}

/// The escrow release of `agreement`'s lease as this node's store has it,
/// with the bundle the coordinators vote on.
pub fn build(
    store: &MarketStore,
    rules: &CoordinatorConfig,
    key: &Keypair,
    agreement: &Signed<LeaseAgreement>,
    now: UnixMillis,
) -> Result<(Signed<EscrowRelease>, ReleaseBundle), String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let lease = agreement.id().map_err(|e| text(&e))?;
    let supplier = agreement.body.supplier;
    let me = key.public();
    let (order, escrowed) = escrows(store, &lease, &me)?;
    let mut settlements = store
        .certificates_about_lease::<rigmesh_protocol::SettlementRequest>(&lease)
        .map_err(|e| text(&e))?;
    settlements.sort_by_key(|c| c.message.body.settlement_seq);
    if settlements.iter().any(|c| c.message.body.final_settlement) {
        return Err(format!("lease {lease} is settled finally"));
    }
    let mut paid = Credits::ZERO;
    for c in &settlements {
        let r = &c.message.body;
        paid = paid
            .checked_add(r.supplier_amount)
            .and_then(|p| p.checked_add(r.fee))
            .ok_or("settled amounts overflow")?;
    }
    let settlement_seq = settlements.len() as u64;
    let (first_window, head) = match settlements.last() {
        Some(c) => (
            c.message.body.last_window.saturating_add(1),
            c.message.body.attestation_head,
        ),
        None => (0, Id::ZERO),
    };
    let available = escrowed.checked_sub(paid).ok_or("paid past the escrow")?;

    // From the settled head on: what a release covers, and no window
    // settled before it.
    let mut held: Vec<Signed<UsageAttestation>> = store
        .about_lease_windows::<UsageAttestation>(&lease, first_window.saturating_sub(1), None)
        .map_err(|e| text(&e))?
        .into_iter()
        .filter(|a| a.signer == supplier && a.verify_record().is_ok())
        .collect();
    held.sort_by_key(|a| a.body.seq);
    let previous = held
        .iter()
        .find(|a| first_window > 0 && a.id().ok() == Some(head))
        .cloned();
    // The chain from where settlement stopped, as far as it links.
    let mut covered: Vec<Signed<UsageAttestation>> = Vec::new();
    let mut prev = head;
    for seq in first_window.. {
        let Some(next) = held
            .iter()
            .find(|a| a.body.seq == seq && a.body.prev == prev)
        else {
            break;
        };
        prev = next.id().map_err(|e| text(&e))?;
        covered.push(next.clone());
    }
    let acks: Vec<Signed<UsageAck>> = store
        .about_lease_windows::<UsageAck>(&lease, first_window, None)
        .map_err(|e| text(&e))?
        .into_iter()
        .filter(|k| k.signer == me)
        .collect();
    let disputes: Vec<Signed<UsageDispute>> = store
        .about_lease_windows::<UsageDispute>(&lease, first_window, None)
        .map_err(|e| text(&e))?
        .into_iter()
        .filter(|d| d.signer == me)
        .collect();
    let terminations: Vec<Signed<LeaseTermination>> = store
        .about_lease::<LeaseTermination>(&lease)
        .map_err(|e| text(&e))?
        .into_iter()
        .filter(|t| t.signer == me)
        .collect();
    let ended = termination_point(&lease, &me, &terminations);
    // What the rules pay in a release (settlement.md 7, 8.5, 6.1): acked
    // windows, and those left unanswered before the termination; disputed
    // ones (held or refuted alike) and those unanswered after it, nothing.
    // The grace period is past the unacked timeout, so nothing is
    // undecided.
    let mut gpu_ms: u64 = 0;
    for a in &covered {
        let id = a.id().map_err(|e| text(&e))?;
        let b = &a.body;
        let after_end = ended.is_some_and(|end| b.window_start > end);
        let pays = match answer(
            id,
            acks.iter().filter(|k| k.body.seq == b.seq).map(|k| &k.body),
            disputes
                .iter()
                .filter(|d| d.body.seq == b.seq)
                .map(|d| &d.body),
        ) {
            Answer::Acked => true,
            Answer::None => !after_end,
            Answer::Refuted | Answer::Held => false,
        };
        if pays {
            gpu_ms = gpu_ms
                .checked_add(b.billable_gpu_ms)
                .ok_or("metered GPU-milliseconds overflow")?;
        }
    }
    let payout = rigmesh_ledger::billing::payout(
        agreement.body.proposal.body.price_per_gpu_hour,
        gpu_ms,
        available,
        rules.fee_rate,
        true,
    )
    .map_err(|e| text(&e))?;
    let release = Signed::sign(
        EscrowRelease {
            version: PROTOCOL_VERSION,
            lease,
            customer: me,
            supplier,
            settlement_seq,
            epoch: rules.set.epoch(),
            escrow: order.subject().map_err(|e| text(&e))?,
            first_window,
            windows: covered.len() as u64,
            attestation_head: if covered.is_empty() { Id::ZERO } else { prev },
            billable_gpu_ms: payout.billable_gpu_ms,
            supplier_amount: payout.supplier,
            fee: payout.fee,
            refund: payout.refund,
            // Fixed by the lease's end, not the clock: built again from
            // the same evidence, the release is the same message, so a
            // retry never conflicts with the votes an earlier try got.
            created_at: ended_at(store, agreement, key)
                .plus_ms(rules.release_grace_ms)
                .min(now),
        },
        key,
    )
    .map_err(|e| text(&e))?;
    let mut attestations = Vec::with_capacity(covered.len() + 1);
    attestations.extend(previous);
    attestations.extend(covered);
    let bundle = ReleaseBundle {
        release: release.clone(),
        agreement: agreement.clone(),
        attestations,
        acks,
        disputes,
        terminations,
    };
    Ok((release, bundle))
}

/// The first escrow certificate of `account`'s `lease` in `store` (the
/// one settlements name) and what all of them hold together (top-ups
/// included, settlement.md 5.5).
fn escrows(
    store: &MarketStore,
    lease: &Id,
    account: &rigmesh_protocol::PublicKey,
) -> Result<(rigmesh_protocol::EscrowCertificate, Credits), String> {
    let mut orders: Vec<rigmesh_protocol::EscrowCertificate> = store
        .certificates_about_lease::<EscrowOrder>(lease)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|c| c.message.body.lease == *lease && c.message.body.account == *account)
        .collect();
    orders.sort_by_key(|c| c.message.body.seq);
    let mut total = Credits::ZERO;
    for c in &orders {
        total = total
            .checked_add(c.message.body.amount)
            .ok_or("escrowed amounts overflow")?;
    }
    let first = orders
        .into_iter()
        .next()
        .ok_or_else(|| format!("no escrow certificate of lease {lease} here"))?;
    Ok((first, total))
}

/// The evidence for a settlement request of `agreement`'s lease that some
/// coordinators voted for and that its supplier never completed, as this
/// node's store has it, so that the customer can complete it
/// (settlement.md 8.6).
pub fn settlement_bundle(
    store: &MarketStore,
    key: &Keypair,
    agreement: &Signed<LeaseAgreement>,
    request: Signed<rigmesh_protocol::SettlementRequest>,
) -> Result<rigmesh_protocol::rpc::SettlementBundle, String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let lease = agreement.id().map_err(|e| text(&e))?;
    let me = key.public();
    let r = &request.body;
    if r.lease != lease || r.supplier != agreement.body.supplier || r.customer != me {
        return Err("the request is not for this lease".into());
    }
    request
        .verify_record()
        .map_err(|e| format!("the request does not verify: {e}"))?;
    let (escrow, _) = escrows(store, &lease, &me)?;
    let mut earlier = store
        .certificates_about_lease::<rigmesh_protocol::SettlementRequest>(&lease)
        .map_err(|e| text(&e))?;
    earlier.retain(|c| c.message.body.settlement_seq < r.settlement_seq);
    earlier.sort_by_key(|c| c.message.body.settlement_seq);
    let from = r.first_window.saturating_sub(1);
    let (first, last) = (r.first_window, r.last_window);
    let mut attestations: Vec<Signed<UsageAttestation>> = store
        .about_lease_windows::<UsageAttestation>(&lease, from, Some(last))
        .map_err(|e| text(&e))?
        .into_iter()
        .filter(|a| a.signer == agreement.body.supplier && a.verify_record().is_ok())
        .collect();
    attestations.sort_by_key(|a| a.body.seq);
    attestations.dedup_by_key(|a| a.body.seq);
    let mine = |signer: &rigmesh_protocol::PublicKey| *signer == me;
    Ok(rigmesh_protocol::rpc::SettlementBundle {
        request,
        agreement: agreement.clone(),
        escrow: Some(escrow),
        attestations,
        acks: store
            .about_lease_windows::<UsageAck>(&lease, first, Some(last))
            .map_err(|e| text(&e))?
            .into_iter()
            .filter(|k| mine(&k.signer))
            .collect(),
        disputes: store
            .about_lease_windows::<UsageDispute>(&lease, first, Some(last))
            .map_err(|e| text(&e))?
            .into_iter()
            .filter(|d| mine(&d.signer))
            .collect(),
        earlier,
    })
}
