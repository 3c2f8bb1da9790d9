//! Receipts: the certificates behind an account's money, as this node has
//! them (its own and those it received by gossip or sync): deposits,
//! escrow, settlement and withdrawal certificates naming the account. Each
//! comes with its canonical bytes, so it can be checked offline against the
//! coordinator set (`rigmesh message verify <kind> --coordinators <set>`),
//! and with the result of that check here.

use rigmesh_ledger::MarketStore;
use rigmesh_protocol::{CoordinatorSet, Credits, Deposit, Id, Kind, PublicKey, Signed, UnixMillis};
use serde::{Deserialize, Serialize};

/// One certificate behind an account's balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Its kind (`deposit`, `escrow_certificate`, `settlement_certificate`,
    /// `withdrawal_certificate`).
    pub kind: Kind,
    /// The certified message's id.
    pub subject: Id,
    /// The lease it is about, if any.
    #[serde(default)]
    pub lease: Option<Id>,
    /// What it moves for the account: positive in, negative out (escrow
    /// out, payouts and refunds in).
    pub amount: Credits,
    /// Coordinator votes it carries (0 for a deposit).
    pub votes: usize,
    /// True when it verifies against the coordinator set here.
    pub verified: bool,
    /// Canonical bytes, hex.
    pub bytes: String,
}

/// What a settlement moves for the supplier and the customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LeaseSettlement {
    /// Paid out of the escrow so far (supplier share and fee).
    pub paid: Credits,
    /// Refunded to the customer by the final settlement.
    pub refunded: Credits,
    /// Windows settled.
    pub windows: u64,
    /// True once the final settlement is certified.
    pub closed: bool,
}

/// The settlements of `lease` this node holds, summed.
pub fn lease_settlement(store: &MarketStore, lease: &Id) -> LeaseSettlement {
    let mut out = LeaseSettlement::default();
    for cert in store
        .certificates_about_lease::<rigmesh_protocol::SettlementRequest>(lease)
        .unwrap_or_default()
    {
        let r = &cert.message.body;
        out.paid = out
            .paid
            .checked_add(r.supplier_amount)
            .and_then(|p| p.checked_add(r.fee))
            .unwrap_or(out.paid);
        out.refunded = out.refunded.checked_add(r.refund).unwrap_or(out.refunded);
        out.windows = out.windows.max(r.last_window + 1);
        out.closed |= r.final_settlement;
    }
    // A lease its supplier left unsettled ends with the customer's release.
    for cert in store
        .certificates_about_lease::<rigmesh_protocol::EscrowRelease>(lease)
        .unwrap_or_default()
    {
        let r = &cert.message.body;
        out.paid = out
            .paid
            .checked_add(r.supplier_amount)
            .and_then(|p| p.checked_add(r.fee))
            .unwrap_or(out.paid);
        out.refunded = out.refunded.checked_add(r.refund).unwrap_or(out.refunded);
        if let Some(last) = r.last_window() {
            out.windows = out.windows.max(last + 1);
        }
        out.closed = true;
    }
    out
}

/// Every receipt naming `account`, oldest kind first.
pub fn receipts(
    store: &MarketStore,
    set: Option<&CoordinatorSet>,
    account: &PublicKey,
    now: UnixMillis,
) -> Vec<Receipt> {
    let mut out = Vec::new();
    let neg = |c: Credits| c.checked_neg().unwrap_or(Credits::ZERO);
    for d in store.all::<Deposit>(now).unwrap_or_default() {
        if d.body.account != *account {
            continue;
        }
        let verified = d.verify_record().is_ok();
        out.push(receipt(Kind::Deposit, &d, None, d.body.amount, 0, verified));
    }
    for c in store
        .certificates::<rigmesh_protocol::EscrowOrder>(now)
        .unwrap_or_default()
    {
        let o = &c.message.body;
        if o.account != *account {
            continue;
        }
        let verified = set.is_some_and(|s| c.verify(s).is_ok());
        out.push(receipt_of(
            Kind::EscrowCertificate,
            &c,
            Some(o.lease),
            neg(o.amount),
            verified,
        ));
    }
    for c in store
        .certificates::<rigmesh_protocol::SettlementRequest>(now)
        .unwrap_or_default()
    {
        let r = &c.message.body;
        let amount = if r.supplier == *account {
            r.supplier_amount
        } else if r.customer == *account {
            r.refund
        } else {
            continue;
        };
        let verified = set.is_some_and(|s| c.verify(s).is_ok());
        out.push(receipt_of(
            Kind::SettlementCertificate,
            &c,
            Some(r.lease),
            amount,
            verified,
        ));
    }
    for c in store
        .certificates::<rigmesh_protocol::EscrowRelease>(now)
        .unwrap_or_default()
    {
        let r = &c.message.body;
        let amount = if r.supplier == *account {
            r.supplier_amount
        } else if r.customer == *account {
            r.refund
        } else {
            continue;
        };
        let verified = set.is_some_and(|s| c.verify(s).is_ok());
        out.push(receipt_of(
            Kind::ReleaseCertificate,
            &c,
            Some(r.lease),
            amount,
            verified,
        ));
    }
    for c in store
        .certificates::<rigmesh_protocol::Withdrawal>(now)
        .unwrap_or_default()
    {
        let w = &c.message.body;
        if w.account != *account {
            continue;
        }
        let verified = set.is_some_and(|s| c.verify(s).is_ok());
        out.push(receipt_of(
            Kind::WithdrawalCertificate,
            &c,
            None,
            neg(w.amount),
            verified,
        ));
    }
    out
}

fn receipt<T: rigmesh_protocol::Message>(
    kind: Kind,
    message: &Signed<T>,
    lease: Option<Id>,
    amount: Credits,
    votes: usize,
    verified: bool,
) -> Receipt {
    Receipt {
        kind,
        subject: message.id().unwrap_or(Id::ZERO),
        lease,
        amount,
        votes,
        verified,
        bytes: message.to_bytes().map(hex::encode).unwrap_or_default(),
    }
}

fn receipt_of<T: rigmesh_protocol::Certifiable>(
    kind: Kind,
    certificate: &rigmesh_protocol::Certificate<T>,
    lease: Option<Id>,
    amount: Credits,
    verified: bool,
) -> Receipt {
    Receipt {
        kind,
        subject: certificate.subject().unwrap_or(Id::ZERO),
        lease,
        amount,
        votes: certificate.votes.len(),
        verified,
        bytes: certificate.to_bytes().map(hex::encode).unwrap_or_default(),
    }
}
