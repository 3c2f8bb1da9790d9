//! Test conveniences over the ledger's market store.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use rigmesh_ledger::{BanRecord, MarketStore};
use rigmesh_protocol::{Id, Kind, UnixMillis};

/// Short, panicking reads for assertions.
pub trait StoreExt {
    fn has(&self, kind: Kind, id: &Id) -> bool;
    fn bans(&self) -> Vec<BanRecord>;
}

impl StoreExt for MarketStore {
    fn has(&self, kind: Kind, id: &Id) -> bool {
        self.contains(kind, id).unwrap()
    }

    fn bans(&self) -> Vec<BanRecord> {
        self.active_bans(UnixMillis::now()).unwrap()
    }
}

/// A ledger store in a fresh temporary sled database.
pub fn temp_store() -> MarketStore {
    MarketStore::temporary().unwrap()
}
