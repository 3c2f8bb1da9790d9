//! Receipts: the certificates behind an account's money, as this node has
//! them (its own and those it received by gossip or sync): deposits,
//! escrow, settlement and withdrawal certificates naming the account. Each
//! comes with its canonical bytes, so it can be checked offline against the
//! coordinator set (`rigmesh message verify <kind> --coordinators <set>`),
//! and with the result of that check here.

use rigmesh_ledger::MarketStore;
use rigmesh_protocol::{CoordinatorSet, Credits, Deposit, Id, Kind, PublicKey, Signed};
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

impl LeaseSettlement {
    /// Adds one certified settlement (or release) of the lease.
    fn add(&mut self, paid: Credits, refund: Credits, windows_end: Option<u64>, last: bool) {
        self.paid = self.paid.checked_add(paid).unwrap_or(self.paid);
        self.refunded = self.refunded.checked_add(refund).unwrap_or(self.refunded);
        if let Some(end) = windows_end {
            self.windows = self.windows.max(end);
        }
        self.closed |= last;
    }
}

/// The settlements of `lease` this node holds, summed; a lease its
/// supplier left unsettled ends with the customer's release.
pub fn lease_settlement(store: &MarketStore, lease: &Id) -> LeaseSettlement {
    let mut out = LeaseSettlement::default();
    let paid = |supplier: Credits, fee: Credits| supplier.checked_add(fee).unwrap_or(supplier);
    for cert in store
        .certificates_about_lease::<rigmesh_protocol::SettlementRequest>(lease)
        .unwrap_or_default()
    {
        let r = &cert.message.body;
        out.add(
            paid(r.supplier_amount, r.fee),
            r.refund,
            Some(r.last_window + 1),
            r.final_settlement,
        );
    }
    for cert in store
        .certificates_about_lease::<rigmesh_protocol::EscrowRelease>(lease)
        .unwrap_or_default()
    {
        let r = &cert.message.body;
        out.add(
            paid(r.supplier_amount, r.fee),
            r.refund,
            r.last_window().map(|last| last + 1),
            true,
        );
    }
    out
}

/// Every receipt naming `account`, oldest kind first. A deposit is
/// verified only when it is signed by one of `admins`, the coordinator
/// set's configured admin keys: anyone can sign a deposit that names
/// their own key as its admin.
pub fn receipts(
    store: &MarketStore,
    set: Option<&CoordinatorSet>,
    admins: &[PublicKey],
    account: &PublicKey,
) -> Vec<Receipt> {
    let mut out = Vec::new();
    let neg = |c: Credits| c.checked_neg().unwrap_or(Credits::ZERO);
    let deposits = store
        .about_account(account, Kind::Deposit)
        .unwrap_or_default()
        .iter()
        .filter_map(|bytes| Signed::<Deposit>::from_bytes(bytes).ok())
        .collect::<Vec<_>>();
    for d in deposits {
        if d.body.account != *account {
            continue;
        }
        let verified = admins.contains(&d.body.admin) && d.verify_record().is_ok();
        out.push(receipt(Kind::Deposit, &d, None, d.body.amount, 0, verified));
    }
    for c in certificates_of::<rigmesh_protocol::EscrowOrder>(store, account) {
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
    for c in certificates_of::<rigmesh_protocol::SettlementRequest>(store, account) {
        let r = &c.message.body;
        let Some(amount) = share(
            account,
            (r.supplier, r.supplier_amount),
            (r.customer, r.refund),
        ) else {
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
    for c in certificates_of::<rigmesh_protocol::EscrowRelease>(store, account) {
        let r = &c.message.body;
        let Some(amount) = share(
            account,
            (r.supplier, r.supplier_amount),
            (r.customer, r.refund),
        ) else {
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
    for c in certificates_of::<rigmesh_protocol::DisputeResolution>(store, account) {
        let r = &c.message.body;
        let refund = r
            .held
            .checked_sub(r.supplier_share)
            .unwrap_or(Credits::ZERO);
        let Some(amount) = share(
            account,
            (r.supplier, r.supplier_share),
            (r.customer, refund),
        ) else {
            continue;
        };
        let verified = set.is_some_and(|s| c.verify(s).is_ok());
        out.push(receipt_of(
            Kind::ResolutionCertificate,
            &c,
            Some(r.lease),
            amount,
            verified,
        ));
    }
    for c in certificates_of::<rigmesh_protocol::Withdrawal>(store, account) {
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

/// The stored certificates of `T` that move `account`'s money, read
/// through the store's account index; one that no longer decodes is
/// left out.
fn certificates_of<T: rigmesh_protocol::Certifiable>(
    store: &MarketStore,
    account: &PublicKey,
) -> Vec<rigmesh_protocol::Certificate<T>> {
    store
        .about_account(account, T::CERTIFICATE)
        .unwrap_or_default()
        .iter()
        .filter_map(|bytes| rigmesh_protocol::Certificate::<T>::from_bytes(bytes).ok())
        .collect()
}

/// What a settlement (or release) credits `account`: the supplier's share
/// or the customer's refund; `None` when it names neither.
fn share(
    account: &PublicKey,
    supplier: (PublicKey, Credits),
    customer: (PublicKey, Credits),
) -> Option<Credits> {
    if supplier.0 == *account {
        Some(supplier.1)
    } else if customer.0 == *account {
        Some(customer.1)
    } else {
        None
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rigmesh_ledger::MarketRecord;
    use rigmesh_protocol::{samples, wire::WireMessage};

    fn put(store: &MarketStore, messages: &[WireMessage]) {
        let records: Vec<MarketRecord> = messages
            .iter()
            .map(|m| MarketRecord::of(m, m.id().unwrap(), m.to_bytes().unwrap()))
            .collect();
        store.store(&records).unwrap();
    }

    #[test]
    fn receipts_are_read_through_the_account_index_among_many_other_messages() {
        let store = MarketStore::temporary().unwrap();
        let set = samples::coordinator_set().unwrap();
        let admins = [samples::admin().public()];
        let t0 = samples::T0;
        // The market around them: offers and reports that are no one's
        // receipts, then the customer's own money.
        let noise: Vec<WireMessage> = (0..300u64)
            .flat_map(|i| {
                [
                    WireMessage::Offer(samples::offer_at(t0.plus_ms(i)).unwrap()),
                    WireMessage::Bid(samples::bid_at(t0.plus_ms(i)).unwrap()),
                ]
            })
            .collect();
        put(&store, &noise);
        put(
            &store,
            &[
                WireMessage::Deposit(samples::deposit().unwrap()),
                WireMessage::EscrowCertificate(samples::escrow_certificate().unwrap()),
                WireMessage::SettlementCertificate(samples::settlement_certificate().unwrap()),
            ],
        );
        let scanned = store.messages_scanned();

        let customer = receipts(&store, Some(&set), &admins, &samples::customer().public());
        let kinds: Vec<Kind> = customer.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::Deposit,
                Kind::EscrowCertificate,
                Kind::SettlementCertificate
            ]
        );
        assert!(customer.iter().all(|r| r.verified));
        let deposit = samples::deposit().unwrap();
        assert_eq!(customer[0].amount, deposit.body.amount);
        let escrow = samples::escrow_certificate().unwrap();
        assert_eq!(
            customer[1].amount,
            escrow.message.body.amount.checked_neg().unwrap()
        );
        let settlement = samples::settlement_certificate().unwrap();
        assert_eq!(customer[2].amount, settlement.message.body.refund);
        // The supplier is paid by the settlement and nothing else here.
        let supplier = receipts(&store, Some(&set), &admins, &samples::supplier().public());
        assert_eq!(supplier.len(), 1);
        assert_eq!(supplier[0].amount, settlement.message.body.supplier_amount);
        assert!(receipts(&store, Some(&set), &admins, &PublicKey([7; 32])).is_empty());
        assert_eq!(
            store.messages_scanned(),
            scanned,
            "no receipt query walked the stored messages"
        );
    }
}
