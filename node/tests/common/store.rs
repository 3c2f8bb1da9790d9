//! An in-memory `MessageStore` for network tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use rigmesh_node::network::store::StoreResult;
use rigmesh_node::network::{AcceptedMessage, MessageStore, PeerBan, SyncPage};
use rigmesh_protocol::rpc::SyncTopic;
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{Id, Kind, PublicKey, UnixMillis};

#[derive(Default)]
pub struct TestStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    messages: BTreeMap<(Kind, Id), Vec<u8>>,
    offers: BTreeMap<(PublicKey, Id), (u64, Id)>,
    bans: Vec<PeerBan>,
}

impl TestStore {
    pub fn has(&self, kind: Kind, id: &Id) -> bool {
        self.inner
            .lock()
            .unwrap()
            .messages
            .contains_key(&(kind, *id))
    }
    pub fn count(&self, kind: Kind) -> usize {
        self.inner
            .lock()
            .unwrap()
            .messages
            .keys()
            .filter(|(k, _)| *k == kind)
            .count()
    }
    pub fn bans(&self) -> Vec<PeerBan> {
        self.inner.lock().unwrap().bans.clone()
    }
}

impl MessageStore for TestStore {
    fn contains(&self, kind: Kind, id: &Id) -> StoreResult<bool> {
        Ok(self.has(kind, id))
    }
    fn offer_sequence(&self, supplier: &PublicKey, fingerprint: &Id) -> StoreResult<Option<u64>> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .offers
            .get(&(*supplier, *fingerprint))
            .map(|(s, _)| *s))
    }
    fn store(&self, batch: &[AcceptedMessage]) -> StoreResult<()> {
        let mut inner = self.inner.lock().unwrap();
        for m in batch {
            if let WireMessage::Offer(o) = &m.message {
                let key = (o.body.supplier, o.body.hardware_fingerprint);
                if let Some((_, old)) = inner.offers.insert(key, (o.body.sequence, m.id)) {
                    inner.messages.remove(&(Kind::Offer, old));
                }
            }
            inner.messages.insert((m.kind(), m.id), m.bytes.clone());
        }
        Ok(())
    }
    fn sync_page(
        &self,
        topic: SyncTopic,
        cursor: Option<&[u8]>,
        limit: usize,
        _now: UnixMillis,
    ) -> StoreResult<SyncPage> {
        let inner = self.inner.lock().unwrap();
        let kinds: &[Kind] = match topic {
            SyncTopic::Offers => &[Kind::Offer],
            SyncTopic::Certificates => &[Kind::EscrowCertificate, Kind::SettlementCertificate],
        };
        let after = cursor.map(|c| c.to_vec());
        let mut items = Vec::new();
        let mut next = None;
        for ((kind, id), bytes) in inner.messages.iter() {
            if !kinds.contains(kind) {
                continue;
            }
            let key = [vec![kind.tag()], id.0.to_vec()].concat();
            if after.as_ref().is_some_and(|a| key <= *a) {
                continue;
            }
            if items.len() == limit {
                break;
            }
            items.push((*kind, bytes.clone()));
            next = Some(key);
        }
        if items.len() < limit {
            next = None;
        }
        Ok(SyncPage { items, next })
    }
    fn record_ban(&self, ban: &PeerBan) -> StoreResult<()> {
        self.inner.lock().unwrap().bans.push(ban.clone());
        Ok(())
    }
    fn active_bans(&self, now: UnixMillis) -> StoreResult<Vec<PeerBan>> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .bans
            .iter()
            .filter(|b| b.until > now)
            .cloned()
            .collect())
    }
}
