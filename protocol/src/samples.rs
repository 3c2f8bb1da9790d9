//! Deterministic example messages, one per kind, signed by fixed keys.
//!
//! They are the source of the test vectors in `specs/vectors/`, seed the
//! fuzz corpus, and let `rigmesh message sample <kind>` show a newcomer a
//! real, valid message. Fixed seeds make every byte reproducible; never use
//! these keys for anything else.

use crate::crypto::{Id, Keypair};
use crate::error::Result;
use crate::kind::Kind;
use crate::messages::lease::{LeaseAgreement, LeaseProposal, LeaseTermination, TerminationReason};
use crate::messages::market::{Bid, NodeBinding, Offer};
use crate::messages::reputation::{Alert, Audience, ReputationReport, Role, Severity};
use crate::messages::settlement::{
    AccountQuery, Approval, Certificate, CoordinatorSet, DecidedAgainst, Deposit,
    DisputeResolution, EscrowOrder, EscrowRelease, SettlementRequest, Vote, Withdrawal,
};
use crate::messages::usage::{DisputeReason, GpuUsage, UsageAck, UsageAttestation, UsageDispute};
use crate::money::Credits;
use crate::signed::{Signed, PROTOCOL_VERSION};
use crate::time::UnixMillis;
use crate::wire::WireMessage;

/// The time every sample is made at: 2026-09-21T14:13:20Z.
pub const T0: UnixMillis = UnixMillis(1_790_000_000_000);

/// Seed of the sample supplier key.
pub const SUPPLIER_SEED: [u8; 32] = [0x11; 32];
/// Seed of the sample customer key.
pub const CUSTOMER_SEED: [u8; 32] = [0x22; 32];
/// Seeds of the four sample coordinators (epoch 1, f = 1, quorum 3).
pub const COORDINATOR_SEEDS: [[u8; 32]; 4] = [[0x31; 32], [0x32; 32], [0x33; 32], [0x34; 32]];
/// Epoch of the sample coordinator set.
pub const EPOCH: u64 = 1;
/// Seed of the sample coordinator set's administrative key (deposits).
pub const ADMIN_SEED: [u8; 32] = [0x41; 32];
/// Seed of the sample coordinator set's second administrative key
/// (approvals).
pub const SECOND_ADMIN_SEED: [u8; 32] = [0x42; 32];

/// The sample supplier.
pub fn supplier() -> Keypair {
    Keypair::from_seed(SUPPLIER_SEED)
}

/// The sample customer.
pub fn customer() -> Keypair {
    Keypair::from_seed(CUSTOMER_SEED)
}

/// The sample administrative key, which signs deposits.
pub fn admin() -> Keypair {
    Keypair::from_seed(ADMIN_SEED)
}

/// The sample second administrative key, which approves what the first
/// deposits.
pub fn second_admin() -> Keypair {
    Keypair::from_seed(SECOND_ADMIN_SEED)
}

/// The sample coordinators.
pub fn coordinators() -> Vec<Keypair> {
    COORDINATOR_SEEDS
        .iter()
        .map(|s| Keypair::from_seed(*s))
        .collect()
}

/// The sample coordinator set.
pub fn coordinator_set() -> Result<CoordinatorSet> {
    CoordinatorSet::new(EPOCH, coordinators().iter().map(Keypair::public).collect())
}

fn credits(units: i64) -> Credits {
    Credits::from_units(units)
}

/// The seed of the key that signs the sample of `kind`.
pub fn signer_seed(kind: Kind) -> [u8; 32] {
    match kind {
        Kind::Bid
        | Kind::LeaseProposal
        | Kind::EscrowOrder
        | Kind::EscrowCertificate
        | Kind::UsageAck
        | Kind::UsageDispute
        | Kind::Withdrawal
        | Kind::WithdrawalCertificate
        | Kind::LeaseTermination
        | Kind::EscrowRelease
        | Kind::ReleaseCertificate
        | Kind::AccountQuery => CUSTOMER_SEED,
        Kind::Vote | Kind::ReputationReport => COORDINATOR_SEEDS[0],
        Kind::Deposit | Kind::DisputeResolution | Kind::ResolutionCertificate => ADMIN_SEED,
        Kind::Approval => SECOND_ADMIN_SEED,
        _ => SUPPLIER_SEED,
    }
}

/// A node binding of the supplier.
pub fn node_binding() -> Result<Signed<NodeBinding>> {
    node_binding_at(T0)
}

/// [`node_binding`], made at `t0` instead of [`T0`].
pub fn node_binding_at(t0: UnixMillis) -> Result<Signed<NodeBinding>> {
    Signed::sign(
        NodeBinding {
            version: PROTOCOL_VERSION,
            account: supplier().public(),
            peer_id: vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20, 0xab, 0xcd],
            created_at: t0,
            expires_at: t0.plus_ms(7 * 24 * 3_600_000),
        },
        &supplier(),
    )
}

/// An offer of 8 H100s at 2.49 credits per GPU-hour.
pub fn offer() -> Result<Signed<Offer>> {
    offer_at(T0)
}

/// [`offer`], made at `t0` instead of [`T0`].
pub fn offer_at(t0: UnixMillis) -> Result<Signed<Offer>> {
    Signed::sign(
        Offer {
            version: PROTOCOL_VERSION,
            supplier: supplier().public(),
            sequence: 3,
            gpu_model: "NVIDIA H100 80GB HBM3".into(),
            gpu_memory_mib: 81_559,
            gpu_count: 8,
            price_per_gpu_hour: credits(2_490_000),
            min_hours: 1,
            max_hours: 72,
            region: "eu-west".into(),
            hardware_fingerprint: Id(*blake3::hash(b"sample rig").as_bytes()),
            created_at: t0,
            expires_at: t0.plus_ms(3_600_000),
        },
        &supplier(),
    )
}

/// A standing bid for 2 H100s.
pub fn bid() -> Result<Signed<Bid>> {
    bid_at(T0)
}

/// [`bid`], made at `t0` instead of [`T0`].
pub fn bid_at(t0: UnixMillis) -> Result<Signed<Bid>> {
    Signed::sign(
        Bid {
            version: PROTOCOL_VERSION,
            customer: customer().public(),
            gpu_model: "NVIDIA H100 80GB HBM3".into(),
            min_memory_mib: 80_000,
            gpu_count: 2,
            max_price_per_gpu_hour: credits(2_750_000),
            hours: 4,
            region: Some("eu-west".into()),
            created_at: t0,
            expires_at: t0.plus_ms(600_000),
        },
        &customer(),
    )
}

/// The customer proposes 2 GPUs of [`offer`] for 4 hours.
pub fn lease_proposal() -> Result<Signed<LeaseProposal>> {
    lease_proposal_at(T0)
}

/// [`lease_proposal`], made at `t0` instead of [`T0`].
pub fn lease_proposal_at(t0: UnixMillis) -> Result<Signed<LeaseProposal>> {
    Signed::sign(
        LeaseProposal {
            version: PROTOCOL_VERSION,
            customer: customer().public(),
            supplier: supplier().public(),
            offer: offer_at(t0)?.id()?,
            gpu_count: 2,
            price_per_gpu_hour: credits(2_490_000),
            hours: 4,
            window_secs: 60,
            nonce: 42,
            created_at: t0.plus_ms(1_000),
            expires_at: t0.plus_ms(301_000),
        },
        &customer(),
    )
}

/// The supplier accepts [`lease_proposal`] on GPUs 2 and 5.
pub fn lease_agreement() -> Result<Signed<LeaseAgreement>> {
    lease_agreement_at(T0)
}

/// [`lease_agreement`], made at `t0` instead of [`T0`].
pub fn lease_agreement_at(t0: UnixMillis) -> Result<Signed<LeaseAgreement>> {
    let starts_at = t0.plus_ms(2_000);
    Signed::sign(
        LeaseAgreement {
            version: PROTOCOL_VERSION,
            supplier: supplier().public(),
            proposal: lease_proposal_at(t0)?,
            gpu_indices: vec![2, 5],
            hardware_fingerprint: Id(*blake3::hash(b"sample rig gpus 2,5").as_bytes()),
            starts_at,
            ends_at: starts_at.plus_ms(4 * 3_600_000),
            created_at: t0.plus_ms(2_000),
        },
        &supplier(),
    )
}

/// The customer escrows 4 h x 2 GPUs x 2.49 = 19.92 credits for the lease.
pub fn escrow_order() -> Result<Signed<EscrowOrder>> {
    escrow_order_at(T0)
}

/// [`escrow_order`], made at `t0` instead of [`T0`].
pub fn escrow_order_at(t0: UnixMillis) -> Result<Signed<EscrowOrder>> {
    Signed::sign(
        EscrowOrder {
            version: PROTOCOL_VERSION,
            account: customer().public(),
            seq: 0,
            epoch: EPOCH,
            lease: lease_agreement_at(t0)?.id()?,
            supplier: supplier().public(),
            amount: credits(19_920_000),
            created_at: t0.plus_ms(3_000),
            expires_at: t0.plus_ms(603_000),
        },
        &customer(),
    )
}

/// Coordinator 0's vote for [`escrow_order`].
pub fn vote() -> Result<Signed<Vote>> {
    vote_at(T0)
}

/// [`vote`], made at `t0` instead of [`T0`].
pub fn vote_at(t0: UnixMillis) -> Result<Signed<Vote>> {
    let coordinator = Keypair::from_seed(COORDINATOR_SEEDS[0]);
    Signed::sign(
        Certificate::vote_for(&escrow_order_at(t0)?, coordinator.public())?,
        &coordinator,
    )
}

fn certify<T: crate::messages::settlement::Certifiable>(
    message: Signed<T>,
) -> Result<Certificate<T>> {
    // Three of four: exactly a quorum, with coordinator 2 silent.
    let votes = [0usize, 1, 3]
        .iter()
        .filter_map(|i| COORDINATOR_SEEDS.get(*i))
        .map(|seed| {
            let key = Keypair::from_seed(*seed);
            Signed::sign(Certificate::vote_for(&message, key.public())?, &key)
        })
        .collect::<Result<Vec<_>>>()?;
    Certificate::assemble(message, &votes)
}

/// [`escrow_order`] certified by coordinators 0, 1 and 3.
pub fn escrow_certificate() -> Result<Certificate<EscrowOrder>> {
    escrow_certificate_at(T0)
}

/// [`escrow_certificate`], made at `t0` instead of [`T0`].
pub fn escrow_certificate_at(t0: UnixMillis) -> Result<Certificate<EscrowOrder>> {
    certify(escrow_order_at(t0)?)
}

/// The first window of the lease: GPU 2 fully used, GPU 5 dropped out
/// after 45 s.
pub fn usage_attestation() -> Result<Signed<UsageAttestation>> {
    usage_attestation_at(T0)
}

/// [`usage_attestation`], made at `t0` instead of [`T0`].
pub fn usage_attestation_at(t0: UnixMillis) -> Result<Signed<UsageAttestation>> {
    let agreement = lease_agreement_at(t0)?;
    let start = agreement.body.starts_at;
    Signed::sign(
        UsageAttestation {
            version: PROTOCOL_VERSION,
            lease: agreement.id()?,
            supplier: supplier().public(),
            customer: customer().public(),
            seq: 0,
            prev: Id::ZERO,
            window_start: start,
            window_end: start.plus_ms(60_000),
            gpus: vec![
                GpuUsage {
                    gpu_index: 2,
                    billable_ms: 60_000,
                    mean_util_bp: 9_350,
                    peak_util_bp: 10_000,
                    peak_memory_mib: 74_112,
                    energy_mj: 41_400_000,
                },
                GpuUsage {
                    gpu_index: 5,
                    billable_ms: 45_000,
                    mean_util_bp: 7_010,
                    peak_util_bp: 9_800,
                    peak_memory_mib: 70_000,
                    energy_mj: 29_100_000,
                },
            ],
            billable_gpu_ms: 105_000,
            created_at: start.plus_ms(60_250),
        },
        &supplier(),
    )
}

/// The customer accepts [`usage_attestation`].
pub fn usage_ack() -> Result<Signed<UsageAck>> {
    usage_ack_at(T0)
}

/// [`usage_ack`], made at `t0` instead of [`T0`].
pub fn usage_ack_at(t0: UnixMillis) -> Result<Signed<UsageAck>> {
    let attestation = usage_attestation_at(t0)?;
    Signed::sign(
        UsageAck {
            version: PROTOCOL_VERSION,
            lease: attestation.body.lease,
            customer: customer().public(),
            attestation: attestation.id()?,
            seq: 0,
            created_at: attestation.body.created_at.plus_ms(500),
        },
        &customer(),
    )
}

/// The customer disputes [`usage_attestation`].
pub fn usage_dispute() -> Result<Signed<UsageDispute>> {
    usage_dispute_at(T0)
}

/// [`usage_dispute`], made at `t0` instead of [`T0`].
pub fn usage_dispute_at(t0: UnixMillis) -> Result<Signed<UsageDispute>> {
    let attestation = usage_attestation_at(t0)?;
    Signed::sign(
        UsageDispute {
            version: PROTOCOL_VERSION,
            lease: attestation.body.lease,
            customer: customer().public(),
            attestation: attestation.id()?,
            seq: 0,
            reason: DisputeReason::Overbilled,
            detail: "GPU 5 was unreachable from 00:00:30".into(),
            created_at: attestation.body.created_at.plus_ms(500),
        },
        &customer(),
    )
}

/// The supplier settles the first window: 105 GPU-seconds at 2.49 per
/// GPU-hour is 0.072625 credits, of which 1 % goes to the coordinators.
pub fn settlement_request() -> Result<Signed<SettlementRequest>> {
    settlement_request_at(T0)
}

/// [`settlement_request`], made at `t0` instead of [`T0`].
pub fn settlement_request_at(t0: UnixMillis) -> Result<Signed<SettlementRequest>> {
    let attestation = usage_attestation_at(t0)?;
    Signed::sign(
        SettlementRequest {
            version: PROTOCOL_VERSION,
            lease: attestation.body.lease,
            supplier: supplier().public(),
            customer: customer().public(),
            settlement_seq: 0,
            epoch: EPOCH,
            escrow: escrow_order_at(t0)?.id()?,
            first_window: 0,
            last_window: 0,
            attestation_head: attestation.id()?,
            billable_gpu_ms: 105_000,
            supplier_amount: credits(71_899),
            fee: credits(726),
            refund: Credits::ZERO,
            held: Credits::ZERO,
            final_settlement: false,
            created_at: attestation.body.created_at.plus_ms(1_000),
        },
        &supplier(),
    )
}

/// [`settlement_request`] certified by coordinators 0, 1 and 3.
pub fn settlement_certificate() -> Result<Certificate<SettlementRequest>> {
    settlement_certificate_at(T0)
}

/// [`settlement_certificate`], made at `t0` instead of [`T0`].
pub fn settlement_certificate_at(t0: UnixMillis) -> Result<Certificate<SettlementRequest>> {
    certify(settlement_request_at(t0)?)
}

/// The supplier never settled: after the grace period the customer has
/// the acked first window paid (as [`settlement_request`] computes it) and
/// the rest of the escrow, 19.92 credits, released back to it.
pub fn escrow_release() -> Result<Signed<EscrowRelease>> {
    escrow_release_at(T0)
}

/// [`escrow_release`], made at `t0` instead of [`T0`].
pub fn escrow_release_at(t0: UnixMillis) -> Result<Signed<EscrowRelease>> {
    let attestation = usage_attestation_at(t0)?;
    let order = escrow_order_at(t0)?;
    Signed::sign(
        EscrowRelease {
            version: PROTOCOL_VERSION,
            lease: attestation.body.lease,
            customer: customer().public(),
            supplier: supplier().public(),
            settlement_seq: 0,
            epoch: EPOCH,
            escrow: order.id()?,
            first_window: 0,
            windows: 1,
            attestation_head: attestation.id()?,
            billable_gpu_ms: 105_000,
            supplier_amount: credits(71_899),
            fee: credits(726),
            refund: credits(order.body.amount.units() - 72_625),
            created_at: t0.plus_ms(100_000),
        },
        &customer(),
    )
}

/// [`escrow_release`] certified by coordinators 0, 1 and 3.
pub fn release_certificate() -> Result<Certificate<EscrowRelease>> {
    release_certificate_at(T0)
}

/// [`release_certificate`], made at `t0` instead of [`T0`].
pub fn release_certificate_at(t0: UnixMillis) -> Result<Certificate<EscrowRelease>> {
    certify(escrow_release_at(t0)?)
}

/// Coordinator 0 scores the supplier.
pub fn reputation_report() -> Result<Signed<ReputationReport>> {
    reputation_report_at(T0)
}

/// [`reputation_report`], made at `t0` instead of [`T0`].
pub fn reputation_report_at(t0: UnixMillis) -> Result<Signed<ReputationReport>> {
    let coordinator = Keypair::from_seed(COORDINATOR_SEEDS[0]);
    Signed::sign(
        ReputationReport {
            version: PROTOCOL_VERSION,
            coordinator: coordinator.public(),
            epoch: EPOCH,
            subject: supplier().public(),
            role: Role::Supplier,
            score_bp: 9_420,
            completed_leases: 17,
            disputes_lost: 1,
            missed_windows: 3,
            refused_leases: 0,
            fingerprint_changes: 0,
            period_start: t0.minus_ms(30 * 24 * 3_600_000),
            period_end: t0,
            created_at: t0.plus_ms(5_000),
        },
        &coordinator,
    )
}

/// The supplier's node reports a GPU that dropped out.
pub fn alert() -> Result<Signed<Alert>> {
    alert_at(T0)
}

/// [`alert`], made at `t0` instead of [`T0`].
pub fn alert_at(t0: UnixMillis) -> Result<Signed<Alert>> {
    Signed::sign(
        Alert {
            version: PROTOCOL_VERSION,
            issuer: supplier().public(),
            severity: Severity::Critical,
            audience: Audience::Supplier,
            rule: "gpu.dropped".into(),
            about: Some(supplier().public()),
            subject: Some(lease_agreement_at(t0)?.id()?),
            message: "GPU 5 (NVIDIA H100 80GB HBM3) stopped answering NVML".into(),
            created_at: t0.plus_ms(47_000),
        },
        &supplier(),
    )
}

/// The admin key tops the customer's account up with 50 credits.
pub fn deposit() -> Result<Signed<Deposit>> {
    deposit_at(T0)
}

/// [`deposit`], made at `t0` instead of [`T0`].
pub fn deposit_at(t0: UnixMillis) -> Result<Signed<Deposit>> {
    Signed::sign(
        Deposit {
            version: PROTOCOL_VERSION,
            epoch: EPOCH,
            admin: admin().public(),
            account: customer().public(),
            amount: credits(50_000_000),
            reference: "payment 2026-09-21/0001".into(),
            created_at: t0,
        },
        &admin(),
    )
}

/// The second admin key approves [`deposit`].
pub fn approval() -> Result<Signed<Approval>> {
    approval_at(T0)
}

/// [`approval`], made at `t0` instead of [`T0`].
pub fn approval_at(t0: UnixMillis) -> Result<Signed<Approval>> {
    Signed::sign(
        Approval {
            version: PROTOCOL_VERSION,
            epoch: EPOCH,
            admin: second_admin().public(),
            subject_kind: Kind::Deposit,
            subject: deposit_at(t0)?.id()?,
            approve: true,
            created_at: t0.plus_ms(60_000),
        },
        &second_admin(),
    )
}

/// The admin splits a case of 72,625 micro-credits held by the first
/// settlement of the lease: half to the supplier, nobody blamed.
pub fn dispute_resolution() -> Result<Signed<DisputeResolution>> {
    dispute_resolution_at(T0)
}

/// [`dispute_resolution`], made at `t0` instead of [`T0`].
pub fn dispute_resolution_at(t0: UnixMillis) -> Result<Signed<DisputeResolution>> {
    Signed::sign(
        DisputeResolution {
            version: PROTOCOL_VERSION,
            epoch: EPOCH,
            admin: admin().public(),
            lease: lease_agreement_at(t0)?.id()?,
            supplier: supplier().public(),
            customer: customer().public(),
            settlement_seq: 0,
            held: credits(72_625),
            supplier_share: credits(36_312),
            against: DecidedAgainst::Neither,
            note: "the GPU dropped out for half the window".into(),
            created_at: t0.plus_ms(95_000),
        },
        &admin(),
    )
}

/// The customer asks a coordinator for its own account's state.
pub fn account_query() -> Result<Signed<AccountQuery>> {
    account_query_at(T0)
}

/// [`account_query`], made at `t0` instead of [`T0`].
pub fn account_query_at(t0: UnixMillis) -> Result<Signed<AccountQuery>> {
    Signed::sign(
        AccountQuery {
            version: PROTOCOL_VERSION,
            account: customer().public(),
            asker: customer().public(),
            created_at: t0.plus_ms(100_000),
        },
        &customer(),
    )
}

/// [`dispute_resolution`] certified by coordinators 0, 1 and 3.
pub fn resolution_certificate() -> Result<Certificate<DisputeResolution>> {
    resolution_certificate_at(T0)
}

/// [`resolution_certificate`], made at `t0` instead of [`T0`].
pub fn resolution_certificate_at(t0: UnixMillis) -> Result<Certificate<DisputeResolution>> {
    certify(dispute_resolution_at(t0)?)
}

/// The customer withdraws 10 credits at `seq` 1, the debit after
/// [`escrow_order`].
pub fn withdrawal() -> Result<Signed<Withdrawal>> {
    withdrawal_at(T0)
}

/// [`withdrawal`], made at `t0` instead of [`T0`].
pub fn withdrawal_at(t0: UnixMillis) -> Result<Signed<Withdrawal>> {
    Signed::sign(
        Withdrawal {
            version: PROTOCOL_VERSION,
            account: customer().public(),
            seq: 1,
            epoch: EPOCH,
            amount: credits(10_000_000),
            destination: "iban:DE89370400440532013000".into(),
            created_at: t0.plus_ms(90_000),
            expires_at: t0.plus_ms(690_000),
        },
        &customer(),
    )
}

/// [`withdrawal`] certified by coordinators 0, 1 and 3.
pub fn withdrawal_certificate() -> Result<Certificate<Withdrawal>> {
    withdrawal_certificate_at(T0)
}

/// [`withdrawal_certificate`], made at `t0` instead of [`T0`].
pub fn withdrawal_certificate_at(t0: UnixMillis) -> Result<Certificate<Withdrawal>> {
    certify(withdrawal_at(t0)?)
}

/// The customer ends the lease during its second window.
pub fn lease_termination() -> Result<Signed<LeaseTermination>> {
    lease_termination_at(T0)
}

/// [`lease_termination`], made at `t0` instead of [`T0`].
pub fn lease_termination_at(t0: UnixMillis) -> Result<Signed<LeaseTermination>> {
    Signed::sign(
        LeaseTermination {
            version: PROTOCOL_VERSION,
            lease: lease_agreement_at(t0)?.id()?,
            customer: customer().public(),
            supplier: supplier().public(),
            reason: TerminationReason::CustomerRequest,
            detail: "training run finished early".into(),
            created_at: t0.plus_ms(95_000),
        },
        &customer(),
    )
}

/// The sample of `kind`.
pub fn sample(kind: Kind) -> Result<WireMessage> {
    sample_at(kind, T0)
}

/// The sample of `kind`, made at `t0` instead of [`T0`]: the same story
/// with other dates, for a message that is valid now.
pub fn sample_at(kind: Kind, t0: UnixMillis) -> Result<WireMessage> {
    Ok(match kind {
        Kind::NodeBinding => WireMessage::NodeBinding(node_binding_at(t0)?),
        Kind::Offer => WireMessage::Offer(offer_at(t0)?),
        Kind::Bid => WireMessage::Bid(bid_at(t0)?),
        Kind::LeaseProposal => WireMessage::LeaseProposal(lease_proposal_at(t0)?),
        Kind::LeaseAgreement => WireMessage::LeaseAgreement(lease_agreement_at(t0)?),
        Kind::EscrowOrder => WireMessage::EscrowOrder(escrow_order_at(t0)?),
        Kind::Vote => WireMessage::Vote(vote_at(t0)?),
        Kind::EscrowCertificate => WireMessage::EscrowCertificate(escrow_certificate_at(t0)?),
        Kind::SettlementCertificate => {
            WireMessage::SettlementCertificate(settlement_certificate_at(t0)?)
        }
        Kind::UsageAttestation => WireMessage::UsageAttestation(usage_attestation_at(t0)?),
        Kind::UsageAck => WireMessage::UsageAck(usage_ack_at(t0)?),
        Kind::UsageDispute => WireMessage::UsageDispute(usage_dispute_at(t0)?),
        Kind::SettlementRequest => WireMessage::SettlementRequest(settlement_request_at(t0)?),
        Kind::ReputationReport => WireMessage::ReputationReport(reputation_report_at(t0)?),
        Kind::Alert => WireMessage::Alert(alert_at(t0)?),
        Kind::Deposit => WireMessage::Deposit(deposit_at(t0)?),
        Kind::Withdrawal => WireMessage::Withdrawal(withdrawal_at(t0)?),
        Kind::WithdrawalCertificate => {
            WireMessage::WithdrawalCertificate(withdrawal_certificate_at(t0)?)
        }
        Kind::LeaseTermination => WireMessage::LeaseTermination(lease_termination_at(t0)?),
        Kind::EscrowRelease => WireMessage::EscrowRelease(escrow_release_at(t0)?),
        Kind::ReleaseCertificate => WireMessage::ReleaseCertificate(release_certificate_at(t0)?),
        Kind::Approval => WireMessage::Approval(approval_at(t0)?),
        Kind::DisputeResolution => WireMessage::DisputeResolution(dispute_resolution_at(t0)?),
        Kind::ResolutionCertificate => {
            WireMessage::ResolutionCertificate(resolution_certificate_at(t0)?)
        }
        Kind::AccountQuery => WireMessage::AccountQuery(account_query_at(t0)?),
    })
}
