//! Funding a lease (specs/settlement.md section 5): the customer signs an
//! `EscrowOrder` for the lease's full cost, or less when a budget cap
//! allows less (the escrow is then the cap, held by the coordinators: no
//! settlement pays past it), at its account's next debit
//! sequence number, gathers a quorum of coordinator votes into an
//! `EscrowCertificate`, hands it to every coordinator and gossips it, then
//! gives it to the supplier, which starts metering once it has checked it.

use libp2p::PeerId;
use rigmesh_protocol::rpc::{CertificateFrame, CoordinatorRequest, LeaseRequest, LeaseResponse};
use rigmesh_protocol::{
    Credits, EscrowCertificate, EscrowOrder, Keypair, LeaseAgreement, Signed, UnixMillis,
    PROTOCOL_VERSION,
};

use super::runtime::BidError;
use crate::network::{NodeHandle, Protocol};
use crate::quorum::Quorum;
use crate::supplier::desk::lease_cost;

/// How long an escrow order may gather votes.
const ORDER_TTL_MS: u64 = 10 * 60_000;

/// Escrows the lease's full cost, or `limit` when that is less, and hands
/// the certificate to the supplier.
pub async fn fund(
    key: &Keypair,
    quorum: &Quorum,
    network: &NodeHandle,
    supplier: PeerId,
    agreement: &Signed<LeaseAgreement>,
    limit: Option<Credits>,
) -> Result<EscrowCertificate, BidError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| BidError::Failed(format!("{what}: {e}"));
    let cost = lease_cost(agreement)
        .ok_or_else(|| BidError::Failed("the lease's cost overflows".into()))?;
    let amount = limit.map_or(cost, |limit| cost.min(limit));
    if amount <= Credits::ZERO {
        return Err(BidError::Refused(
            "the budget leaves nothing to escrow for this lease".into(),
        ));
    }
    let seq = quorum
        .next_seq(key.public())
        .await
        .map_err(|e| BidError::Refused(format!("escrow not possible now: {e}")))?;
    let now = UnixMillis::now();
    let order = Signed::sign(
        EscrowOrder {
            version: PROTOCOL_VERSION,
            account: key.public(),
            seq,
            epoch: quorum.set().epoch(),
            lease: agreement.id().map_err(|e| failed("lease id", &e))?,
            supplier: agreement.body.supplier,
            amount,
            created_at: now,
            expires_at: now.plus_ms(ORDER_TTL_MS),
        },
        key,
    )
    .map_err(|e| failed("signing the escrow order", &e))?;
    let request = CoordinatorRequest::Escrow {
        order: order.clone(),
        agreement: Box::new(agreement.clone()),
        missing: Vec::new(),
    };
    let certificate = quorum
        .certify(&order, &request)
        .await
        .map_err(|e| BidError::Refused(format!("escrow of {amount} not certified: {e}")))?;
    let applied = quorum
        .deliver(CertificateFrame::Escrow(Box::new(certificate.clone())))
        .await;
    tracing::info!(lease = %order.body.lease, %amount, seq, applied, "escrow certified");
    let bytes = LeaseRequest::Fund(Box::new(certificate.clone()))
        .to_bytes()
        .map_err(|e| failed("encoding", &e))?;
    let response = network
        .request(supplier, Protocol::Lease, bytes)
        .await
        .map_err(|e| failed("handing the escrow to the supplier", &e))?;
    match LeaseResponse::from_bytes(&response).map_err(|e| failed("supplier's answer", &e))? {
        LeaseResponse::Accepted => Ok(certificate),
        LeaseResponse::Refused(reason) => Err(BidError::Refused(format!(
            "the supplier refused the escrow: {reason}"
        ))),
        LeaseResponse::Agreed(_) => Err(BidError::Failed(
            "the supplier answered the escrow with an agreement".into(),
        )),
    }
}
