//! The network's [`MessageStore`] over the ledger's [`MarketStore`].

use libp2p::PeerId;
use rigmesh_ledger::{BanRecord, MarketRecord, MarketStore, OfferKey};
use rigmesh_protocol::rpc::SyncTopic;
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{Id, Kind, PublicKey, UnixMillis};

use crate::network::store::{AcceptedMessage, MessageStore, PeerBan, StoreResult, SyncPage};

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

impl MessageStore for MarketStore {
    fn contains(&self, kind: Kind, id: &Id) -> StoreResult<bool> {
        MarketStore::contains(self, kind, id).map_err(text)
    }

    fn offer_sequence(&self, supplier: &PublicKey, fingerprint: &Id) -> StoreResult<Option<u64>> {
        MarketStore::offer_sequence(self, supplier, fingerprint).map_err(text)
    }

    fn store(&self, batch: &[AcceptedMessage]) -> StoreResult<()> {
        let records: Vec<MarketRecord> = batch
            .iter()
            .map(|m| MarketRecord {
                kind: m.kind(),
                id: m.id,
                bytes: m.bytes.clone(),
                offer: match &m.message {
                    WireMessage::Offer(o) => Some(OfferKey {
                        supplier: o.body.supplier,
                        fingerprint: o.body.hardware_fingerprint,
                        sequence: o.body.sequence,
                        expires_at: o.body.expires_at,
                    }),
                    _ => None,
                },
                expires_at: match &m.message {
                    WireMessage::NodeBinding(b) => Some(b.body.expires_at),
                    WireMessage::Bid(b) => Some(b.body.expires_at),
                    _ => None,
                },
                lease: match &m.message {
                    WireMessage::UsageAttestation(a) => Some(a.body.lease),
                    WireMessage::UsageAck(a) => Some(a.body.lease),
                    WireMessage::UsageDispute(d) => Some(d.body.lease),
                    WireMessage::LeaseTermination(t) => Some(t.body.lease),
                    WireMessage::SettlementCertificate(c) => Some(c.message.body.lease),
                    WireMessage::ReleaseCertificate(c) => Some(c.message.body.lease),
                    WireMessage::ResolutionCertificate(c) => Some(c.message.body.lease),
                    _ => None,
                },
            })
            .collect();
        MarketStore::store(self, &records).map_err(text)
    }

    fn sync_page(
        &self,
        topic: SyncTopic,
        cursor: Option<&[u8]>,
        limit: usize,
        now: UnixMillis,
    ) -> StoreResult<SyncPage> {
        let kinds: &[Kind] = match topic {
            // Offers travel with the bindings that say how to reach their
            // suppliers.
            SyncTopic::Offers => &[Kind::Offer, Kind::NodeBinding],
            SyncTopic::Certificates => &[
                Kind::EscrowCertificate,
                Kind::SettlementCertificate,
                Kind::WithdrawalCertificate,
                Kind::ReleaseCertificate,
                Kind::ResolutionCertificate,
                Kind::Deposit,
            ],
        };
        let page = self.page(kinds, cursor, limit, now).map_err(text)?;
        Ok(SyncPage {
            items: page.items,
            next: page.next,
        })
    }

    fn record_ban(&self, ban: &PeerBan) -> StoreResult<()> {
        MarketStore::record_ban(
            self,
            &BanRecord {
                peer: ban.peer.to_bytes(),
                until: ban.until,
                reason: ban.reason.clone(),
            },
        )
        .map_err(text)?;
        // A ban must survive a crash right after it.
        self.flush().map_err(text)
    }

    fn active_bans(&self, now: UnixMillis) -> StoreResult<Vec<PeerBan>> {
        let records = MarketStore::active_bans(self, now).map_err(text)?;
        let mut bans = Vec::with_capacity(records.len());
        for record in records {
            match PeerId::from_bytes(&record.peer) {
                Ok(peer) => bans.push(PeerBan {
                    peer,
                    until: record.until,
                    reason: record.reason,
                }),
                Err(e) => tracing::warn!(%e, "skipping an unreadable ban record"),
            }
        }
        Ok(bans)
    }
}
