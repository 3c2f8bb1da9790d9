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
    /// When its message was made.
    #[serde(default)]
    pub created_at: UnixMillis,
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

/// The most recent receipts naming an account, and how many there are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Receipts {
    /// Every receipt this node holds for the account.
    pub total: usize,
    /// The most recent of them, oldest first.
    pub listed: Vec<Receipt>,
}

/// A receipt found, whose signatures are checked, and whose bytes are
/// written out, only if it is listed.
struct Found<'a> {
    created_at: UnixMillis,
    receipt: Receipt,
    finish: Box<dyn FnOnce() -> (bool, String) + 'a>,
}

impl<'a> Found<'a> {
    fn deposit(deposit: Signed<Deposit>, admins: &'a [PublicKey]) -> Self {
        let receipt = Receipt {
            kind: Kind::Deposit,
            subject: deposit.id().unwrap_or(Id::ZERO),
            lease: None,
            amount: deposit.body.amount,
            votes: 0,
            verified: false,
            created_at: deposit.body.created_at,
            bytes: String::new(),
        };
        Found {
            created_at: deposit.body.created_at,
            receipt,
            finish: Box::new(move || {
                (
                    admins.contains(&deposit.body.admin) && deposit.verify_record().is_ok(),
                    deposit.to_bytes().map(hex::encode).unwrap_or_default(),
                )
            }),
        }
    }

    fn certificate<T: rigmesh_protocol::Certifiable + 'a>(
        kind: Kind,
        certificate: rigmesh_protocol::Certificate<T>,
        lease: Option<Id>,
        amount: Credits,
        set: Option<&'a CoordinatorSet>,
    ) -> Self {
        let created_at = rigmesh_protocol::Message::created_at(&certificate.message.body)
            .unwrap_or(UnixMillis(0));
        let receipt = Receipt {
            kind,
            subject: certificate.subject().unwrap_or(Id::ZERO),
            lease,
            amount,
            votes: certificate.votes.len(),
            verified: false,
            created_at,
            bytes: String::new(),
        };
        Found {
            created_at,
            receipt,
            finish: Box::new(move || {
                (
                    set.is_some_and(|s| certificate.verify(s).is_ok()),
                    certificate.to_bytes().map(hex::encode).unwrap_or_default(),
                )
            }),
        }
    }
}

/// The `limit` most recent receipts naming `account` (by the time their
/// message was made, oldest first), out of every one this node holds.
/// Only the most recent of each kind are read, through the account
/// index's time order, and only those listed have their signatures
/// checked against the set: an account with years of settlements does
/// not pay for every one of them on each report. A deposit is verified
/// only when it is signed by one of `admins`, the coordinator set's
/// configured admin keys: anyone can sign a deposit that names their own
/// key as its admin.
pub fn receipts(
    store: &MarketStore,
    set: Option<&CoordinatorSet>,
    admins: &[PublicKey],
    account: &PublicKey,
    limit: usize,
) -> Receipts {
    let neg = |c: Credits| c.checked_neg().unwrap_or(Credits::ZERO);
    let mut latest = Latest {
        store,
        account,
        limit,
        total: 0,
        found: Vec::new(),
    };
    latest.read(Kind::Deposit, |bytes| {
        let d = Signed::<Deposit>::from_bytes(bytes).ok()?;
        (d.body.account == *account).then(|| Found::deposit(d, admins))
    });
    latest.read(Kind::EscrowCertificate, |bytes| {
        let c = rigmesh_protocol::EscrowCertificate::from_bytes(bytes).ok()?;
        let o = &c.message.body;
        if o.account != *account {
            return None;
        }
        let (lease, amount) = (Some(o.lease), neg(o.amount));
        Some(Found::certificate(
            Kind::EscrowCertificate,
            c,
            lease,
            amount,
            set,
        ))
    });
    latest.read(Kind::SettlementCertificate, |bytes| {
        let c = rigmesh_protocol::SettlementCertificate::from_bytes(bytes).ok()?;
        let r = &c.message.body;
        let amount = share(
            account,
            (r.supplier, r.supplier_amount),
            (r.customer, r.refund),
        )?;
        let lease = Some(r.lease);
        Some(Found::certificate(
            Kind::SettlementCertificate,
            c,
            lease,
            amount,
            set,
        ))
    });
    latest.read(Kind::ReleaseCertificate, |bytes| {
        let c = rigmesh_protocol::ReleaseCertificate::from_bytes(bytes).ok()?;
        let r = &c.message.body;
        let amount = share(
            account,
            (r.supplier, r.supplier_amount),
            (r.customer, r.refund),
        )?;
        let lease = Some(r.lease);
        Some(Found::certificate(
            Kind::ReleaseCertificate,
            c,
            lease,
            amount,
            set,
        ))
    });
    latest.read(Kind::ResolutionCertificate, |bytes| {
        let c = rigmesh_protocol::ResolutionCertificate::from_bytes(bytes).ok()?;
        let r = &c.message.body;
        let refund = r
            .held
            .checked_sub(r.supplier_share)
            .unwrap_or(Credits::ZERO);
        let amount = share(
            account,
            (r.supplier, r.supplier_share),
            (r.customer, refund),
        )?;
        let lease = Some(r.lease);
        Some(Found::certificate(
            Kind::ResolutionCertificate,
            c,
            lease,
            amount,
            set,
        ))
    });
    latest.read(Kind::WithdrawalCertificate, |bytes| {
        let c = rigmesh_protocol::WithdrawalCertificate::from_bytes(bytes).ok()?;
        let w = &c.message.body;
        if w.account != *account {
            return None;
        }
        let amount = neg(w.amount);
        Some(Found::certificate(
            Kind::WithdrawalCertificate,
            c,
            None,
            amount,
            set,
        ))
    });
    let Latest {
        total, mut found, ..
    } = latest;
    // Stable: receipts of one moment stay in the order of their kinds.
    found.sort_by_key(|f| f.created_at);
    let read = found.len();
    let listed = found
        .into_iter()
        .skip(read.saturating_sub(limit))
        .map(|f| {
            let (verified, bytes) = (f.finish)();
            Receipt {
                verified,
                bytes,
                ..f.receipt
            }
        })
        .collect();
    Receipts { total, listed }
}

/// The most recent receipts of each kind, gathered.
struct Latest<'s, 'a> {
    store: &'s MarketStore,
    account: &'s PublicKey,
    limit: usize,
    /// Every receipt of the kinds read, as the account index counts them.
    total: usize,
    found: Vec<Found<'a>>,
}

impl<'a> Latest<'_, 'a> {
    /// Counts `kind`'s receipts and keeps, the most recent first, up to
    /// `limit` that `make` makes a receipt of (what does not decode, or
    /// does not name the account, is passed over).
    fn read(&mut self, kind: Kind, mut make: impl FnMut(&[u8]) -> Option<Found<'a>>) {
        self.total += self
            .store
            .count_about_account(self.account, kind)
            .unwrap_or(0);
        let start = self.found.len();
        for bytes in self.store.about_account_latest(self.account, kind) {
            if self.found.len() - start == self.limit {
                break;
            }
            let Ok(bytes) = bytes else { break };
            if let Some(found) = make(&bytes) {
                self.found.push(found);
            }
        }
        // Oldest first, as the index orders them (a tie by id).
        if let Some(kind_found) = self.found.get_mut(start..) {
            kind_found.reverse();
        }
    }
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

        let all = receipts(
            &store,
            Some(&set),
            &admins,
            &samples::customer().public(),
            100,
        );
        assert_eq!(all.total, 3);
        let customer = all.listed;
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
        let supplier = receipts(
            &store,
            Some(&set),
            &admins,
            &samples::supplier().public(),
            100,
        )
        .listed;
        assert_eq!(supplier.len(), 1);
        assert_eq!(supplier[0].amount, settlement.message.body.supplier_amount);
        assert_eq!(
            receipts(&store, Some(&set), &admins, &PublicKey([7; 32]), 100),
            Receipts::default()
        );
        // The most recent only, oldest first, and how many there are.
        let last = receipts(
            &store,
            Some(&set),
            &admins,
            &samples::customer().public(),
            2,
        );
        assert_eq!(last.total, 3);
        assert_eq!(last.listed, customer[1..]);
        assert_eq!(
            store.messages_scanned(),
            scanned,
            "no receipt query walked the stored messages"
        );
    }

    /// Deposits made at `times` (ms after T0, may be negative).
    fn deposits(times: &[i64]) -> Vec<WireMessage> {
        times
            .iter()
            .map(|&t| {
                let mut body = samples::deposit().unwrap().body;
                body.created_at = UnixMillis((samples::T0.0 as i64 + t) as u64);
                body.reference = format!("payment at {t}");
                WireMessage::Deposit(Signed::sign(body, &samples::admin()).unwrap())
            })
            .collect()
    }

    #[test]
    fn the_most_recent_receipts_are_those_a_full_listing_ends_with() {
        let store = MarketStore::temporary().unwrap();
        let set = samples::coordinator_set().unwrap();
        let admins = [samples::admin().public()];
        // Deposits before, around and after the sample escrow and
        // settlement, stored out of order.
        let times: Vec<i64> = (0..24).map(|i| (i * 7_919) % 40_000 - 20_000).collect();
        put(&store, &deposits(&times));
        put(
            &store,
            &[
                WireMessage::SettlementCertificate(samples::settlement_certificate().unwrap()),
                WireMessage::EscrowCertificate(samples::escrow_certificate().unwrap()),
            ],
        );
        let customer = samples::customer().public();
        let all = receipts(&store, Some(&set), &admins, &customer, 1_000);
        assert_eq!((all.total, all.listed.len()), (26, 26));
        assert!(all
            .listed
            .windows(2)
            .all(|w| w[0].created_at <= w[1].created_at));
        for n in 0..=27 {
            let latest = receipts(&store, Some(&set), &admins, &customer, n);
            assert_eq!(latest.total, 26);
            assert_eq!(
                latest.listed,
                all.listed[26usize.saturating_sub(n)..],
                "the {n} most recent"
            );
        }
    }
}
