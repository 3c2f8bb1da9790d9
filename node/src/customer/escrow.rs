//! Funding a lease (specs/settlement.md section 5): the customer signs an
//! `EscrowOrder` for the lease's full cost, or less when a budget cap
//! allows less (the escrow is then the cap, held by the coordinators: no
//! settlement pays past it), at its account's next debit
//! sequence number, gathers a quorum of coordinator votes into an
//! `EscrowCertificate`, hands it to every coordinator and gossips it, then
//! gives it to the supplier, which starts metering once it has checked it.

use libp2p::PeerId;
use rigmesh_protocol::rpc::{CertificateFrame, DebitRequest, LeaseRequest, LeaseResponse};
use rigmesh_protocol::{
    Credits, EscrowCertificate, EscrowOrder, Keypair, LeaseAgreement, Signed, UnixMillis,
    PROTOCOL_VERSION,
};

use super::runtime::BidError;
use crate::network::{NodeHandle, Protocol};
use crate::quorum::{Completed, DebitError, Quorum};
use crate::supplier::desk::lease_cost;

/// How long an escrow order may gather votes.
const ORDER_TTL_MS: u64 = 10 * 60_000;

/// Escrows the lease's full cost, or `limit` when that is less, and hands
/// the certificate to the supplier. An earlier debit of the account that
/// was still in flight is completed first (settlement.md 14.2); if it was
/// the escrow of another lease, its certificate lands in `orphans`, for
/// the caller to end that lease and have its escrow released.
pub async fn fund(
    key: &Keypair,
    quorum: &Quorum,
    network: &NodeHandle,
    supplier: PeerId,
    agreement: &Signed<LeaseAgreement>,
    limit: Option<Credits>,
    orphans: &mut Vec<Completed>,
) -> Result<EscrowCertificate, BidError> {
    let cost = lease_cost(agreement)
        .ok_or_else(|| BidError::Failed("the lease's cost overflows".into()))?;
    let amount = limit.map_or(cost, |limit| cost.min(limit));
    if amount <= Credits::ZERO {
        return Err(BidError::Refused(
            "the budget leaves nothing to escrow for this lease".into(),
        ));
    }
    let certificate = order(key, quorum, agreement, amount, orphans).await?;
    hand_over(network, supplier, &certificate).await?;
    Ok(certificate)
}

/// Tops up the escrow of a running lease by `amount` (its cap was
/// raised): a new escrow order for the same lease, certified, handed to
/// every coordinator and to the supplier, which meters on until the
/// larger escrow is spent.
pub async fn top_up(
    key: &Keypair,
    quorum: &Quorum,
    network: &NodeHandle,
    supplier: PeerId,
    agreement: &Signed<LeaseAgreement>,
    amount: Credits,
    orphans: &mut Vec<Completed>,
) -> Result<EscrowCertificate, BidError> {
    let certificate = order(key, quorum, agreement, amount, orphans).await?;
    // Certified and applied, the top-up is the lease's money whether or
    // not the supplier hears of it now (it also arrives by gossip, and a
    // final settlement refunds what it does not pay).
    if let Err(err) = hand_over(network, supplier, &certificate).await {
        tracing::info!(%err, "the supplier did not take the top-up");
    }
    Ok(certificate)
}

/// Signs an escrow order of `amount` for `agreement`'s lease at the
/// account's next debit sequence number and gets it certified.
async fn order(
    key: &Keypair,
    quorum: &Quorum,
    agreement: &Signed<LeaseAgreement>,
    amount: Credits,
    orphans: &mut Vec<Completed>,
) -> Result<EscrowCertificate, BidError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| BidError::Failed(format!("{what}: {e}"));
    let lease = agreement.id().map_err(|e| failed("lease id", &e))?;
    let debited = quorum
        .debit(key, |seq| {
            let now = UnixMillis::now();
            Signed::sign(
                EscrowOrder {
                    version: PROTOCOL_VERSION,
                    account: key.public(),
                    seq,
                    epoch: quorum.set().epoch(),
                    lease,
                    supplier: agreement.body.supplier,
                    amount,
                    created_at: now,
                    expires_at: now.plus_ms(ORDER_TTL_MS),
                },
                key,
            )
            .map(|order| DebitRequest::Escrow {
                order,
                agreement: agreement.clone(),
            })
            .map_err(|e| format!("signing the escrow order: {e}"))
        })
        .await;
    let debited = match debited {
        Ok(debited) => debited,
        Err(DebitError::Failed(reason)) => return Err(BidError::Failed(reason)),
        Err(e) => {
            return Err(BidError::Refused(format!(
                "escrow of {amount} not certified: {e}"
            )))
        }
    };
    if let Some(earlier) = debited.earlier {
        orphans.push(earlier);
    }
    let certificate = match debited.certificate {
        CertificateFrame::Escrow(certificate) => *certificate,
        other => {
            return Err(BidError::Failed(format!(
                "certified {:?} instead of an escrow",
                other.kind()
            )))
        }
    };
    tracing::info!(%lease, %amount, seq = certificate.message.body.seq, "escrow certified");
    Ok(certificate)
}

/// Hands an escrow certificate to the lease's supplier.
async fn hand_over(
    network: &NodeHandle,
    supplier: PeerId,
    certificate: &EscrowCertificate,
) -> Result<(), BidError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| BidError::Failed(format!("{what}: {e}"));
    let bytes = LeaseRequest::Fund(Box::new(certificate.clone()))
        .to_bytes()
        .map_err(|e| failed("encoding", &e))?;
    let response = network
        .request(supplier, Protocol::Lease, bytes)
        .await
        .map_err(|e| failed("handing the escrow to the supplier", &e))?;
    match LeaseResponse::from_bytes(&response).map_err(|e| failed("supplier's answer", &e))? {
        LeaseResponse::Accepted => Ok(()),
        LeaseResponse::Refused(reason) => Err(BidError::Refused(format!(
            "the supplier refused the escrow: {reason}"
        ))),
        LeaseResponse::Agreed(_) => Err(BidError::Failed(
            "the supplier answered the escrow with an agreement".into(),
        )),
    }
}
