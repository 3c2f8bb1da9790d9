//! The order book held in memory: every live offer of the node's gossip
//! store, kept as compact terms and indexed for what a bid and the offer
//! listings ask (GPU model, region, price, then freshness), so neither a
//! bid, `GET /v1/offers`, the market statistics nor the market sampler
//! read the store.
//!
//! The book is loaded once at start from the store, on a blocking thread,
//! and kept up to date by [`BookedStore`]: the network writes every
//! accepted message through it (gossip ingest, catch-up sync and the
//! node's own publications alike), and each offer the store takes enters
//! the book in the same call. Updating at the write rather than from the
//! broadcast of accepted messages means the book cannot fall behind:
//! there is no receiver to lag, so no offer is lost to a burst and no
//! reload has to race the writes. Loading and writing may
//! interleave: both keep the higher sequence of a device set, so they
//! converge on what the store holds.
//!
//! Rules, the store's own: one live offer per supplier's device set
//! (supplier and hardware fingerprint); an offer with a higher sequence
//! replaces it, one with an equal or lower sequence changes nothing (an
//! offer is indexed only once the store reports it as the live offer of
//! its devices). An offer leaves the book when it expires: queries skip
//! it from its `expires_at`, and expired entries are swept on each write
//! and by [`OrderBook::sweep`].
//!
//! The reputation that ranks suppliers comes from the same place: the
//! coordinators' signed reports are kept here as they are stored (the
//! newest of each coordinator, subject, role and epoch), so a bid looks
//! up the suppliers it ranks instead of reading every report ever stored.
//!
//! Bound: the store keeps one offer per device set and none past its
//! expiry, at most a day after it was made (`OFFER_MAX_TTL_MS`). The book
//! holds at most [`MAX_OFFERS`]; past that it refuses offers for device
//! sets it does not hold (counted in [`OrderBook::refused`] and logged),
//! while re-publications of device sets it holds still apply. An offer
//! costs about 630 bytes here, fields and indexes together (63 MB for
//! 100,000 offers in the `orderbook` bench), so the cap is some 630 MB.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rigmesh_ledger::MarketStore;
use rigmesh_protocol::rpc::SyncTopic;
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{
    CoordinatorSet, Credits, Id, Kind, Offer, PublicKey, ReputationReport, Role, Signature, Signed,
    UnixMillis,
};

use crate::customer::book::{BookQuery, Misfit, NoMatch, Terms};
use crate::error::{Error, Result};
use crate::network::store::{
    AcceptedMessage, MessageStore, OffenceState, PeerBan, StoreResult, SyncPage,
};

/// The most offers the book holds (see the module documentation).
pub const MAX_OFFERS: usize = 1_000_000;

/// Offers read from the store per page while loading; the book's lock is
/// taken once per page, so queries go on between pages.
const LOAD_PAGE: usize = 1_000;

/// Where a listing stands: the sort key (price, newest first, offer id) of
/// the last offer it answered, written as text for a query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    price: i64,
    created_at: u64,
    id: [u8; 32],
}

impl Cursor {
    /// The cursor as `price_createdat_idhex`.
    pub fn to_text(&self) -> String {
        format!(
            "{}_{}_{}",
            self.price,
            self.created_at,
            hex::encode(self.id)
        )
    }

    /// Reads a cursor written by [`Cursor::to_text`]; `None` for anything
    /// else.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, '_');
        let price = parts.next()?.parse().ok()?;
        let created_at = parts.next()?.parse().ok()?;
        let id: [u8; 32] = hex::decode(parts.next()?).ok()?.try_into().ok()?;
        Some(Cursor {
            price,
            created_at,
            id,
        })
    }

    /// The first rank after this cursor.
    fn after(&self) -> Bound<Rank> {
        Bound::Excluded(Rank {
            price: self.price,
            newest: Reverse(self.created_at),
            id: self.id,
            slot: u32::MAX,
        })
    }
}

/// An index key: cheapest first, then newest, then by offer id, so the
/// order is total and the same on every node. `slot` only finds the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    price: i64,
    newest: Reverse<u64>,
    id: [u8; 32],
    slot: u32,
}

impl Rank {
    fn cursor(&self) -> Cursor {
        Cursor {
            price: self.price,
            created_at: self.newest.0,
            id: self.id,
        }
    }
}

/// What the book keeps of one offer: every field of the signed offer,
/// with the model and region as numbers into the book's name tables, so
/// the signed offer can be rebuilt exactly when one is answered.
#[derive(Debug, Clone)]
struct Entry {
    id: Id,
    supplier: PublicKey,
    fingerprint: Id,
    signature: Signature,
    sequence: u64,
    memory_mib: u64,
    price: Credits,
    created_at: UnixMillis,
    expires_at: UnixMillis,
    min_hours: u32,
    max_hours: u32,
    model: u32,
    region: u32,
    gpus: u16,
    version: u16,
}

/// Model and region names, each held once, dropped when no offer names
/// them any more (so strings from expired offers do not pile up).
#[derive(Debug, Default)]
struct Names {
    names: Vec<(Arc<str>, u32)>,
    ids: HashMap<Arc<str>, u32>,
    free: Vec<u32>,
}

impl Names {
    fn find(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    fn get(&self, id: u32) -> &str {
        self.names
            .get(id as usize)
            .map_or("", |(name, _)| name.as_ref())
    }

    fn take(&mut self, name: &str) -> u32 {
        if let Some(id) = self.find(name) {
            if let Some((_, uses)) = self.names.get_mut(id as usize) {
                *uses += 1;
            }
            return id;
        }
        let name: Arc<str> = Arc::from(name);
        let id = match self.free.pop() {
            Some(id) => {
                if let Some(slot) = self.names.get_mut(id as usize) {
                    *slot = (name.clone(), 1);
                }
                id
            }
            None => {
                // Names are fewer than offers, which the book caps far
                // below u32::MAX.
                let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
                self.names.push((name.clone(), 1));
                id
            }
        };
        self.ids.insert(name, id);
        id
    }

    fn release(&mut self, id: u32) {
        let Some((name, uses)) = self.names.get_mut(id as usize) else {
            return;
        };
        *uses = uses.saturating_sub(1);
        if *uses == 0 {
            self.ids.remove(name.as_ref());
            *name = Arc::from("");
            self.free.push(id);
        }
    }
}

/// What [`Book::insert`] did with an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Added,
    Replaced,
    Ignored,
    Full,
}

/// The book's state, behind the [`OrderBook`]'s lock.
#[derive(Debug, Default)]
struct Book {
    models: Names,
    regions: Names,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// The live offer of each device set, by supplier first so a
    /// supplier's offers are one range.
    by_device: BTreeMap<(PublicKey, Id), u32>,
    /// Every offer, in rank order.
    all: BTreeSet<Rank>,
    /// Offers of each model, in rank order.
    by_model: HashMap<u32, BTreeSet<Rank>>,
    /// Offers of each (model, region), in rank order.
    by_place: HashMap<(u32, u32), BTreeSet<Rank>>,
    /// When each offer expires.
    by_expiry: BTreeSet<(u64, u32)>,
}

impl Book {
    fn entry(&self, slot: u32) -> Option<&Entry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    fn rank(slot: u32, e: &Entry) -> Rank {
        Rank {
            price: e.price.units(),
            newest: Reverse(e.created_at.0),
            id: e.id.0,
            slot,
        }
    }

    fn insert(&mut self, offer: &Signed<Offer>, id: Id, now: UnixMillis) -> Change {
        let o = &offer.body;
        // Verified offers are signed by their supplier; the book rebuilds
        // the envelope with the supplier as signer, so anything else is
        // not kept.
        if offer.signer != o.supplier {
            return Change::Ignored;
        }
        let device = (o.supplier, o.hardware_fingerprint);
        let replaced = match self.by_device.get(&device) {
            Some(&slot) => {
                if self.entry(slot).is_some_and(|e| e.sequence >= o.sequence) {
                    return Change::Ignored;
                }
                self.remove(slot);
                true
            }
            None => false,
        };
        // A newer offer that has already expired is how a supplier
        // withdraws one (its GPUs are all leased): the older offer goes,
        // and nothing takes its place.
        if o.expires_at <= now {
            return if replaced {
                Change::Replaced
            } else {
                Change::Ignored
            };
        }
        if !replaced && self.by_device.len() >= MAX_OFFERS {
            return Change::Full;
        }
        let entry = Entry {
            id,
            supplier: o.supplier,
            fingerprint: o.hardware_fingerprint,
            signature: offer.signature,
            sequence: o.sequence,
            memory_mib: o.gpu_memory_mib,
            price: o.price_per_gpu_hour,
            created_at: o.created_at,
            expires_at: o.expires_at,
            min_hours: o.min_hours,
            max_hours: o.max_hours,
            model: self.models.take(&o.gpu_model),
            region: self.regions.take(&o.region),
            gpus: o.gpu_count,
            version: o.version,
        };
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                // At most MAX_OFFERS slots are ever in use.
                let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(None);
                slot
            }
        };
        let rank = Self::rank(slot, &entry);
        self.all.insert(rank);
        self.by_model.entry(entry.model).or_default().insert(rank);
        self.by_place
            .entry((entry.model, entry.region))
            .or_default()
            .insert(rank);
        self.by_expiry.insert((entry.expires_at.0, slot));
        self.by_device.insert(device, slot);
        if let Some(place) = self.slots.get_mut(slot as usize) {
            *place = Some(entry);
        }
        if replaced {
            Change::Replaced
        } else {
            Change::Added
        }
    }

    fn remove(&mut self, slot: u32) {
        let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        let rank = Self::rank(slot, &entry);
        self.all.remove(&rank);
        if let Some(set) = self.by_model.get_mut(&entry.model) {
            set.remove(&rank);
            if set.is_empty() {
                self.by_model.remove(&entry.model);
            }
        }
        let place = (entry.model, entry.region);
        if let Some(set) = self.by_place.get_mut(&place) {
            set.remove(&rank);
            if set.is_empty() {
                self.by_place.remove(&place);
            }
        }
        self.by_expiry.remove(&(entry.expires_at.0, slot));
        self.by_device.remove(&(entry.supplier, entry.fingerprint));
        self.models.release(entry.model);
        self.regions.release(entry.region);
        self.free.push(slot);
    }

    /// Drops every offer expired at `now`; returns how many.
    fn sweep(&mut self, now: UnixMillis) -> usize {
        let mut dropped = 0;
        while let Some(&(expires_at, slot)) = self.by_expiry.first() {
            if expires_at > now.0 {
                break;
            }
            self.remove(slot);
            dropped += 1;
        }
        dropped
    }

    fn signed(&self, e: &Entry) -> Signed<Offer> {
        Signed {
            body: Offer {
                version: e.version,
                supplier: e.supplier,
                sequence: e.sequence,
                gpu_model: self.models.get(e.model).to_string(),
                gpu_memory_mib: e.memory_mib,
                gpu_count: e.gpus,
                price_per_gpu_hour: e.price,
                min_hours: e.min_hours,
                max_hours: e.max_hours,
                region: self.regions.get(e.region).to_string(),
                hardware_fingerprint: e.fingerprint,
                created_at: e.created_at,
                expires_at: e.expires_at,
            },
            signer: e.supplier,
            signature: e.signature,
        }
    }

    fn terms<'a>(&'a self, e: &Entry) -> Terms<'a> {
        Terms {
            price: e.price,
            memory_mib: e.memory_mib,
            gpus: e.gpus,
            region: self.regions.get(e.region),
        }
    }

    /// The ranks a query for `model` (and `region`) walks: `None` when no
    /// live offer names them.
    fn set_for(&self, model: Option<&str>, region: Option<&str>) -> Option<&BTreeSet<Rank>> {
        match (model, region) {
            (None, _) => Some(&self.all),
            (Some(model), None) => self.by_model.get(&self.models.find(model)?),
            (Some(model), Some(region)) => self
                .by_place
                .get(&(self.models.find(model)?, self.regions.find(region)?)),
        }
    }
}

/// Filters of an offer listing; `None` filters nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfferFilter {
    /// GPU model (exact).
    pub gpu_model: Option<String>,
    /// Region (exact).
    pub region: Option<String>,
    /// Most per GPU-hour.
    pub max_price: Option<Credits>,
    /// At least this many GPUs in the offer.
    pub min_gpus: Option<u32>,
    /// At least this much memory per GPU, MiB.
    pub min_memory_mib: Option<u64>,
    /// Only this supplier's offers.
    pub supplier: Option<PublicKey>,
}

impl OfferFilter {
    fn admits(&self, book: &Book, e: &Entry) -> bool {
        self.max_price.is_none_or(|p| e.price <= p)
            && self.min_gpus.is_none_or(|n| u32::from(e.gpus) >= n)
            && self.min_memory_mib.is_none_or(|m| e.memory_mib >= m)
            && self.supplier.is_none_or(|s| e.supplier == s)
            && self
                .region
                .as_deref()
                .is_none_or(|r| book.regions.get(e.region) == r)
            && self
                .gpu_model
                .as_deref()
                .is_none_or(|m| book.models.get(e.model) == m)
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfferPage {
    /// The offers, cheapest first, then newest, then by offer id.
    pub offers: Vec<Signed<Offer>>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
    /// Offers matching the filter over all pages, when asked for.
    pub total: Option<usize>,
}

/// Counts over the live offers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarketSummary {
    /// Live offers.
    pub offers: usize,
    /// Suppliers with a live offer.
    pub suppliers: usize,
    /// GPUs offered.
    pub gpus: u64,
    /// GPU models offered.
    pub gpu_models: usize,
    /// Regions offers come from.
    pub regions: BTreeSet<String>,
}

/// Reports are keyed by role, subject, coordinator and epoch, so one
/// subject's reports in a role are one range.
type ReportKey = (u8, PublicKey, PublicKey, u64);

fn role_tag(role: Role) -> u8 {
    match role {
        Role::Supplier => 0,
        Role::Customer => 1,
    }
}

/// The newest report of each coordinator about each account: when it was
/// made, its id (the lower id wins a tie, as a scan in id order keeps the
/// first) and its score.
#[derive(Debug, Default)]
struct Reports {
    newest: BTreeMap<ReportKey, (UnixMillis, Id, u16)>,
}

impl Reports {
    fn insert(&mut self, report: &Signed<ReputationReport>, id: Id) {
        let r = &report.body;
        let key = (role_tag(r.role), r.subject, r.coordinator, r.epoch);
        let value = (r.created_at, id, r.score_bp);
        match self.newest.get_mut(&key) {
            Some(held) => {
                if (r.created_at, Reverse(id)) > (held.0, Reverse(held.1)) {
                    *held = value;
                }
            }
            None => {
                self.newest.insert(key, value);
            }
        }
    }

    /// The median of the newest scores of `subject` in `role` by the
    /// members of `set` in its epoch (the lower middle of an even count).
    fn score(&self, role: Role, subject: &PublicKey, set: &CoordinatorSet) -> Option<u16> {
        let tag = role_tag(role);
        let from = (tag, *subject, PublicKey([0; 32]), 0);
        let to = (tag, *subject, PublicKey([0xFF; 32]), u64::MAX);
        let mut scores: Vec<u16> = self
            .newest
            .range(from..=to)
            .filter(|((_, _, coordinator, epoch), _)| {
                *epoch == set.epoch() && set.contains(coordinator)
            })
            .map(|(_, (_, _, score))| *score)
            .collect();
        scores.sort_unstable();
        scores.get(scores.len().checked_sub(1)? / 2).copied()
    }
}

/// The order book's metrics, `rigmesh_orderbook_*`.
#[derive(Debug, Clone, Default)]
pub struct OrderBookMetrics {
    /// Offers held (`rigmesh_orderbook_offers`).
    pub offers: prometheus_client::metrics::gauge::Gauge,
    /// Offers not listed because the book was full
    /// (`rigmesh_orderbook_refused_total`).
    pub refused: prometheus_client::metrics::counter::Counter,
}

impl OrderBookMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("rigmesh_orderbook");
        r.register(
            "offers",
            "Offers held in the order book",
            metrics.offers.clone(),
        );
        r.register(
            "refused",
            "Offers for new devices not listed because the order book was full",
            metrics.refused.clone(),
        );
        metrics
    }
}

/// The node's order book (see the module documentation).
#[derive(Debug)]
pub struct OrderBook {
    metrics: OrderBookMetrics,
    book: RwLock<Book>,
    /// Apart from the offers, so a ranking that holds the offers' lock can
    /// read scores.
    reports: RwLock<Reports>,
    loaded: tokio::sync::watch::Sender<bool>,
    refused: AtomicU64,
}

impl Default for OrderBook {
    fn default() -> Self {
        OrderBook {
            metrics: OrderBookMetrics::default(),
            book: RwLock::default(),
            reports: RwLock::default(),
            loaded: tokio::sync::watch::Sender::new(false),
            refused: AtomicU64::new(0),
        }
    }
}

impl OrderBook {
    /// An empty book, not yet loaded.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty book, not yet loaded, that keeps `metrics` up to date.
    pub fn with_metrics(metrics: OrderBookMetrics) -> Self {
        OrderBook {
            metrics,
            ..Self::default()
        }
    }

    /// A book loaded from `store` now, on the calling thread (for tests
    /// and tools; the node loads off the executor with [`Self::load`]).
    pub fn loaded_from(store: &MarketStore) -> Result<Self> {
        let book = Self::new();
        book.load(store)?;
        Ok(book)
    }

    // The lock only guards plain data and no code panics while holding
    // it, so a poisoned lock still holds a consistent book.
    fn read(&self) -> RwLockReadGuard<'_, Book> {
        self.book.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Book> {
        self.book.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads every live offer of `store` into the book, a page at a time,
    /// and marks the book loaded; returns how many offers were read. It
    /// reads the disk: call it on a blocking thread. Offers already in
    /// the book stay unless a read one replaces them, so it may run while
    /// writes come in through [`BookedStore`].
    pub fn load(&self, store: &MarketStore) -> Result<usize> {
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = store
                .page(
                    &[Kind::ReputationReport],
                    cursor.as_deref(),
                    LOAD_PAGE,
                    UnixMillis::now(),
                )
                .map_err(|e| Error::Store(e.to_string()))?;
            let mut reports = Vec::with_capacity(page.items.len());
            for (_, bytes) in &page.items {
                match Signed::<ReputationReport>::from_bytes(bytes).and_then(|r| Ok((r.id()?, r))) {
                    Ok(report) => reports.push(report),
                    Err(err) => tracing::warn!(%err, "skipping an unreadable stored report"),
                }
            }
            self.apply_reports(reports.iter().map(|(id, r)| (*id, r)));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut cursor: Option<Vec<u8>> = None;
        let mut read = 0;
        loop {
            let now = UnixMillis::now();
            let page = store
                .page(&[Kind::Offer], cursor.as_deref(), LOAD_PAGE, now)
                .map_err(|e| Error::Store(e.to_string()))?;
            let mut offers = Vec::with_capacity(page.items.len());
            for (_, bytes) in &page.items {
                match Signed::<Offer>::from_bytes(bytes).and_then(|o| Ok((o.id()?, o))) {
                    Ok(offer) => offers.push(offer),
                    Err(err) => tracing::warn!(%err, "skipping an unreadable stored offer"),
                }
            }
            read += offers.len();
            self.apply(offers.iter().map(|(id, o)| (*id, o)), now);
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        self.loaded.send_replace(true);
        Ok(read)
    }

    /// Waits until the first load has finished, so no query answers from
    /// a half-read book.
    pub async fn ready(&self) {
        let mut loaded = self.loaded.subscribe();
        // The sender lives in `self`, so the wait ends only by loading.
        let _ = loaded.wait_for(|l| *l).await;
    }

    /// True once the first load has finished.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Puts offers the store has taken into the book (the rules are in the
    /// module documentation) and drops those expired at `now`.
    pub fn apply<'a>(
        &self,
        offers: impl IntoIterator<Item = (Id, &'a Signed<Offer>)>,
        now: UnixMillis,
    ) {
        let mut full = 0u64;
        {
            let mut book = self.write();
            for (id, offer) in offers {
                if book.insert(offer, id, now) == Change::Full {
                    full += 1;
                }
            }
            book.sweep(now);
            self.metrics
                .offers
                .set(i64::try_from(book.by_device.len()).unwrap_or(i64::MAX));
        }
        if full > 0 {
            self.refused.fetch_add(full, Ordering::Relaxed);
            self.metrics.refused.inc_by(full);
            tracing::warn!(
                refused = full,
                max = MAX_OFFERS,
                "the order book is full; offers for new devices are not listed"
            );
        }
    }

    /// Keeps the coordinators' reports the store has taken, the newest of
    /// each coordinator, subject, role and epoch.
    pub fn apply_reports<'a>(
        &self,
        reports: impl IntoIterator<Item = (Id, &'a Signed<ReputationReport>)>,
    ) {
        let mut held = self.reports.write().unwrap_or_else(PoisonError::into_inner);
        for (id, report) in reports {
            held.insert(report, id);
        }
    }

    /// The median score, basis points, that the members of `set` give
    /// `subject` in `role` in their newest reports; `None` when none of
    /// them reported on it.
    pub fn score(&self, role: Role, subject: &PublicKey, set: &CoordinatorSet) -> Option<u16> {
        self.reports
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .score(role, subject, set)
    }

    /// Drops the offers expired at `now`; returns how many.
    pub fn sweep(&self, now: UnixMillis) -> usize {
        let mut book = self.write();
        let dropped = book.sweep(now);
        self.metrics
            .offers
            .set(i64::try_from(book.by_device.len()).unwrap_or(i64::MAX));
        dropped
    }

    /// Offers held (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.read().by_device.len()
    }

    /// True when it holds no offer.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offers for new device sets refused because the book was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Up to `limit` offers matching `query` at `now`, best first: the
    /// ranking of [`crate::customer::book`] (price, then reputation, then
    /// newest, then offer id). The walk goes up the model's (or model and
    /// region's) price index and stops at the first price above the
    /// `limit`-th match, so it reads only the cheap end of the book.
    pub fn best(
        &self,
        query: &BookQuery,
        reputation: &dyn Fn(&PublicKey) -> u16,
        now: UnixMillis,
        limit: usize,
    ) -> Vec<Signed<Offer>> {
        if limit == 0 {
            return Vec::new();
        }
        let book = self.read();
        let Some(set) = book.set_for(Some(&query.gpu_model), query.region.as_deref()) else {
            return Vec::new();
        };
        let max_price = query.max_price.map(Credits::units);
        let mut found: Vec<(u16, Rank)> = Vec::new();
        let mut bar: Option<i64> = None;
        for rank in set {
            if max_price.is_some_and(|max| rank.price > max) || bar.is_some_and(|b| rank.price > b)
            {
                break;
            }
            let Some(e) = book.entry(rank.slot) else {
                continue;
            };
            if e.expires_at <= now {
                continue;
            }
            let score = reputation(&e.supplier);
            if !Misfit::of_terms(book.terms(e), query, score).fits() {
                continue;
            }
            found.push((score, *rank));
            if found.len() == limit {
                bar = Some(rank.price);
            }
        }
        // Stable: among equal price and reputation the walk's order
        // (newest, then id) stays.
        found.sort_by_key(|(score, rank)| (rank.price, Reverse(*score)));
        found
            .iter()
            .take(limit)
            .filter_map(|(_, rank)| book.entry(rank.slot).map(|e| book.signed(e)))
            .collect()
    }

    /// Why `query` matched nothing, counted over every unexpired offer for
    /// its model (see [`NoMatch`]).
    pub fn explain(
        &self,
        query: &BookQuery,
        reputation: &dyn Fn(&PublicKey) -> u16,
        now: UnixMillis,
    ) -> NoMatch {
        let mut report = NoMatch::empty(query);
        let book = self.read();
        if let Some(set) = book.set_for(Some(&query.gpu_model), None) {
            for rank in set {
                let Some(e) = book.entry(rank.slot) else {
                    continue;
                };
                if e.expires_at > now {
                    report.count(book.terms(e), reputation(&e.supplier));
                }
            }
        }
        report
    }

    /// Up to `limit` offers matching `filter` at `now` after `after`,
    /// cheapest first, then newest, then by offer id, with the cursor of
    /// the next page; with `count_total`, also how many match in all.
    pub fn page(
        &self,
        filter: &OfferFilter,
        after: Option<Cursor>,
        limit: usize,
        now: UnixMillis,
        count_total: bool,
    ) -> OfferPage {
        let book = self.read();
        // A supplier's own offers are one range of the device index; any
        // other listing walks the narrowest rank index its filter allows.
        let own: Vec<Rank> = match filter.supplier {
            Some(supplier) => {
                let from = (supplier, Id([0; 32]));
                let to = (supplier, Id([0xFF; 32]));
                let mut ranks: Vec<Rank> = book
                    .by_device
                    .range(from..=to)
                    .filter_map(|(_, slot)| book.entry(*slot).map(|e| Book::rank(*slot, e)))
                    .collect();
                ranks.sort_unstable();
                ranks
            }
            None => Vec::new(),
        };
        let start = after.map_or(Bound::Unbounded, |c| c.after());
        let mut page = OfferPage::default();
        let mut last: Option<Rank> = None;
        for e in matching(&book, filter, &own, start, now) {
            if page.offers.len() == limit {
                page.next = last.map(|r| r.cursor());
                break;
            }
            page.offers.push(book.signed(e.1));
            last = Some(e.0);
        }
        if count_total {
            page.total = Some(matching(&book, filter, &own, Bound::Unbounded, now).count());
        }
        page
    }

    /// The GPU models of `supplier`'s offers in the book.
    pub fn models_of(&self, supplier: &PublicKey) -> BTreeSet<String> {
        let book = self.read();
        let first = (*supplier, Id([0; 32]));
        book.by_device
            .range(first..)
            .take_while(|((owner, _), _)| owner == supplier)
            .filter_map(|(_, slot)| book.entry(*slot))
            .map(|e| book.models.get(e.model).to_string())
            .collect()
    }

    /// Per GPU model, the price of each live offer, lowest first.
    pub fn prices(&self, now: UnixMillis) -> BTreeMap<String, Vec<Credits>> {
        let book = self.read();
        let mut out = BTreeMap::new();
        for (model, set) in &book.by_model {
            let prices: Vec<Credits> = set
                .iter()
                .filter_map(|rank| book.entry(rank.slot))
                .filter(|e| e.expires_at > now)
                .map(|e| e.price)
                .collect();
            if !prices.is_empty() {
                out.insert(book.models.get(*model).to_string(), prices);
            }
        }
        out
    }

    /// Counts over the offers live at `now`.
    pub fn summary(&self, now: UnixMillis) -> MarketSummary {
        let book = self.read();
        let mut summary = MarketSummary::default();
        let mut models = BTreeSet::new();
        let mut regions = BTreeSet::new();
        let mut last_supplier: Option<PublicKey> = None;
        for (device, slot) in &book.by_device {
            let Some(e) = book.entry(*slot) else {
                continue;
            };
            if e.expires_at <= now {
                continue;
            }
            summary.offers += 1;
            summary.gpus += u64::from(e.gpus);
            // The index is sorted by supplier, so each supplier's offers
            // are consecutive.
            if last_supplier != Some(device.0) {
                summary.suppliers += 1;
                last_supplier = Some(device.0);
            }
            models.insert(e.model);
            regions.insert(e.region);
        }
        summary.gpu_models = models.len();
        summary.regions = regions
            .into_iter()
            .map(|r| book.regions.get(r).to_string())
            .collect();
        summary
    }
}

/// The live offers matching `filter` from `start` on, in rank order:
/// `own` (already sorted) when the filter names a supplier, otherwise the
/// narrowest rank index the filter allows, up to its price cap.
fn matching<'a>(
    book: &'a Book,
    filter: &'a OfferFilter,
    own: &'a [Rank],
    start: Bound<Rank>,
    now: UnixMillis,
) -> impl Iterator<Item = (Rank, &'a Entry)> + 'a {
    let ranks: Box<dyn Iterator<Item = &'a Rank> + 'a> = if filter.supplier.is_some() {
        let skip = match start {
            Bound::Excluded(c) => own.partition_point(|r| *r <= c),
            _ => 0,
        };
        Box::new(own.iter().skip(skip))
    } else {
        match book.set_for(filter.gpu_model.as_deref(), filter.region.as_deref()) {
            Some(set) => Box::new(set.range((start, Bound::Unbounded))),
            None => Box::new(std::iter::empty()),
        }
    };
    let max_price = filter.max_price.map(Credits::units);
    ranks
        .take_while(move |rank| max_price.is_none_or(|max| rank.price <= max))
        .filter_map(move |rank| {
            let e = book.entry(rank.slot)?;
            (e.expires_at > now && filter.admits(book, e)).then_some((*rank, e))
        })
}

/// The node's [`MessageStore`]: the ledger's market store, with every
/// offer it takes put into the order book in the same call.
#[derive(Debug, Clone)]
pub struct BookedStore {
    store: Arc<MarketStore>,
    book: Arc<OrderBook>,
}

impl BookedStore {
    /// Writes to `store` and keeps `book` up to date.
    pub fn new(store: Arc<MarketStore>, book: Arc<OrderBook>) -> Self {
        BookedStore { store, book }
    }
}

impl MessageStore for BookedStore {
    fn contains(&self, kind: Kind, id: &Id) -> StoreResult<bool> {
        MessageStore::contains(&*self.store, kind, id)
    }

    fn offer_sequence(&self, supplier: &PublicKey, fingerprint: &Id) -> StoreResult<Option<u64>> {
        MessageStore::offer_sequence(&*self.store, supplier, fingerprint)
    }

    fn author_count(&self, kind: Kind, author: &PublicKey, at_most: usize) -> StoreResult<usize> {
        MessageStore::author_count(&*self.store, kind, author, at_most)
    }

    fn lease_compacted(&self, lease: &Id) -> StoreResult<bool> {
        MessageStore::lease_compacted(&*self.store, lease)
    }

    fn certificate_refused(
        &self,
        kind: Kind,
        lease: &Id,
        parties: (&PublicKey, &PublicKey),
        created_at: UnixMillis,
        now: UnixMillis,
    ) -> StoreResult<Option<&'static str>> {
        MessageStore::certificate_refused(&*self.store, kind, lease, parties, created_at, now)
    }

    fn store(&self, batch: &[AcceptedMessage]) -> StoreResult<()> {
        MessageStore::store(&*self.store, batch)?;
        let mut taken = Vec::new();
        let mut reports = Vec::new();
        for message in batch {
            let offer = match &message.message {
                WireMessage::Offer(offer) => offer,
                WireMessage::ReputationReport(report) => {
                    reports.push((message.id, report));
                    continue;
                }
                _ => continue,
            };
            let o = &offer.body;
            // The store skips an offer older than the live one of its
            // devices, even one it has pruned; the book follows it.
            match self
                .store
                .offer_sequence(&o.supplier, &o.hardware_fingerprint)
            {
                Ok(Some(sequence)) if sequence == o.sequence => taken.push((message.id, offer)),
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(%err, "an offer was stored but not put in the order book");
                }
            }
        }
        if !taken.is_empty() {
            self.book.apply(taken, UnixMillis::now());
        }
        if !reports.is_empty() {
            self.book.apply_reports(reports);
        }
        Ok(())
    }

    fn sync_page(
        &self,
        topic: SyncTopic,
        cursor: Option<&[u8]>,
        limit: usize,
        now: UnixMillis,
    ) -> StoreResult<SyncPage> {
        MessageStore::sync_page(&*self.store, topic, cursor, limit, now)
    }

    fn save_offences(&self, offences: &[OffenceState], bans: &[PeerBan]) -> StoreResult<()> {
        MessageStore::save_offences(&*self.store, offences, bans)
    }

    fn offences(&self) -> StoreResult<Vec<OffenceState>> {
        MessageStore::offences(&*self.store)
    }

    fn active_bans(&self, now: UnixMillis) -> StoreResult<Vec<PeerBan>> {
        MessageStore::active_bans(&*self.store, now)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;

    use rigmesh_ledger::{Cause, Ledger};
    use rigmesh_protocol::{Keypair, PROTOCOL_VERSION};

    use super::*;
    use crate::customer::book::{best_offers, explain_no_match, unreported};

    const T0: UnixMillis = UnixMillis(1_800_000_000_000);
    const MODELS: [&str; 3] = ["A100", "H100", "L4"];
    const REGIONS: [&str; 3] = ["eu", "us", "ap"];

    /// A small deterministic generator, so the cases are the same on
    /// every run.
    struct Dice(u64);

    impl Dice {
        fn roll(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }

        fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
            of[self.roll(of.len() as u64) as usize]
        }
    }

    fn offer(key: &Keypair, device: u64, sequence: u64, dice: &mut Dice) -> Signed<Offer> {
        let created_at = T0.minus_ms(dice.roll(3_600_000));
        Signed::sign(
            Offer {
                version: PROTOCOL_VERSION,
                supplier: key.public(),
                sequence,
                gpu_model: dice.pick(&MODELS).into(),
                gpu_memory_mib: [24_576, 40_960, 81_920][dice.roll(3) as usize],
                gpu_count: 1 + dice.roll(8) as u16,
                // Few distinct prices, so ties on price are common.
                price_per_gpu_hour: Credits::from_units(1_000_000 + 100_000 * dice.roll(10) as i64),
                min_hours: 1,
                max_hours: 72,
                region: dice.pick(&REGIONS).into(),
                hardware_fingerprint: Id(*blake3::hash(&device.to_be_bytes()).as_bytes()),
                created_at,
                // A few are already expired at T0.
                expires_at: created_at.plus_ms(dice.roll(4 * 3_600_000) + 1),
            },
            key,
        )
        .unwrap()
    }

    fn market(n: u64) -> (Vec<Signed<Offer>>, HashMap<PublicKey, u16>) {
        let mut dice = Dice(7);
        let keys: Vec<Keypair> = (0..20u8).map(|i| Keypair::from_seed([i; 32])).collect();
        let offers = (0..n)
            .map(|i| offer(&keys[(i % 20) as usize], i, 1, &mut dice))
            .collect();
        let scores = keys
            .iter()
            .map(|k| (k.public(), 4_000 + 500 * dice.roll(13) as u16))
            .collect();
        (offers, scores)
    }

    fn book_of(offers: &[Signed<Offer>]) -> OrderBook {
        let book = OrderBook::new();
        book.apply(
            offers.iter().map(|o| (o.id().unwrap(), o)),
            T0.minus_ms(10 * 3_600_000),
        );
        book
    }

    #[test]
    fn the_book_ranks_like_the_ledger_book_and_explains_the_same() {
        let (offers, scores) = market(600);
        let ledger = Ledger::in_memory().unwrap();
        for o in &offers {
            let cause = Cause::new(o.body.supplier, o.id().unwrap(), T0);
            ledger.put_offer(o, &cause).unwrap();
        }
        let book = book_of(&offers);
        let reputation = |k: &PublicKey| scores.get(k).copied().unwrap_or(5_000);
        let mut dice = Dice(11);
        let mut matched = 0;
        for _ in 0..200 {
            let query = BookQuery {
                gpu_model: dice.pick(&MODELS).into(),
                min_memory_mib: [0, 40_000, 80_000][dice.roll(3) as usize],
                count: 1 + dice.roll(8) as u16,
                max_price: (dice.roll(2) == 0)
                    .then(|| Credits::from_units(1_000_000 + 100_000 * dice.roll(10) as i64)),
                region: (dice.roll(2) == 0).then(|| dice.pick(&REGIONS).into()),
                min_reputation_bp: [0, 6_000, 9_000][dice.roll(3) as usize],
            };
            let expected = best_offers(&ledger, &query, &reputation, T0).unwrap();
            for limit in [1, 3, 1_000] {
                let got = book.best(&query, &reputation, T0, limit);
                let want: Vec<_> = expected.iter().take(limit).cloned().collect();
                assert_eq!(got, want, "{query:?}, limit {limit}");
            }
            matched += usize::from(!expected.is_empty());
            let why = explain_no_match(&ledger, &query, &reputation, T0).unwrap();
            assert_eq!(book.explain(&query, &reputation, T0), why, "{query:?}");
        }
        assert!(matched > 20, "the cases must match something: {matched}");
        // What the book answers is the signed offer itself.
        let any = book.best(&BookQuery::new("A100", 1), &unreported, T0, 1);
        assert!(offers.contains(&any[0]));
        any[0].verify_signatures().unwrap();
    }

    #[test]
    fn a_higher_sequence_replaces_and_a_lower_or_equal_one_changes_nothing() {
        let key = Keypair::from_seed([1; 32]);
        let mut dice = Dice(3);
        let first = offer(&key, 1, 5, &mut dice);
        let newer = Signed::sign(
            Offer {
                sequence: 6,
                price_per_gpu_hour: Credits::from_units(9_000_000),
                ..first.body.clone()
            },
            &key,
        )
        .unwrap();
        let older = Signed::sign(
            Offer {
                sequence: 4,
                price_per_gpu_hour: Credits::from_units(1),
                ..first.body.clone()
            },
            &key,
        )
        .unwrap();
        let at = first.body.created_at;
        let book = OrderBook::new();
        book.apply([(first.id().unwrap(), &first)], at);
        book.apply([(newer.id().unwrap(), &newer)], at);
        book.apply([(older.id().unwrap(), &older)], at);
        book.apply([(first.id().unwrap(), &first)], at);
        assert_eq!(book.len(), 1);
        let query = BookQuery::new(first.body.gpu_model.clone(), 1);
        assert_eq!(book.best(&query, &unreported, at, 10), vec![newer]);
        // A supplier withdraws an offer with a newer one that expires at
        // once: the offer leaves the book and nothing takes its place.
        let withdrawal = Signed::sign(
            Offer {
                sequence: 7,
                created_at: at,
                expires_at: at.plus_ms(1),
                ..first.body.clone()
            },
            &key,
        )
        .unwrap();
        book.apply([(withdrawal.id().unwrap(), &withdrawal)], at.plus_ms(1));
        assert!(book.is_empty());
        assert!(book.best(&query, &unreported, at, 10).is_empty());
    }

    #[test]
    fn expired_offers_are_not_answered_and_are_swept_with_their_names() {
        let (offers, _) = market(300);
        let book = book_of(&offers);
        let live = offers.iter().filter(|o| o.body.expires_at > T0).count();
        assert!(live < offers.len() && live > 0);
        let all = book.page(&OfferFilter::default(), None, 1_000, T0, true);
        assert_eq!(all.total, Some(live));
        assert!(all.offers.iter().all(|o| o.body.expires_at > T0));
        assert_eq!(book.summary(T0).offers, live);
        let held = book.len();
        assert_eq!(book.sweep(T0), held - live);
        assert_eq!(book.len(), live);
        let end = UnixMillis(u64::MAX - 1);
        assert_eq!(book.sweep(end), live);
        assert!(book.is_empty());
        let inner = book.read();
        assert!(inner.models.ids.is_empty() && inner.regions.ids.is_empty());
        assert!(inner.all.is_empty() && inner.by_model.is_empty() && inner.by_place.is_empty());
    }

    #[test]
    fn pages_follow_each_other_without_repeats_or_gaps() {
        let (offers, _) = market(500);
        let book = book_of(&offers);
        for filter in [
            OfferFilter::default(),
            OfferFilter {
                gpu_model: Some("H100".into()),
                ..Default::default()
            },
            OfferFilter {
                gpu_model: Some("H100".into()),
                region: Some("eu".into()),
                min_gpus: Some(4),
                ..Default::default()
            },
            OfferFilter {
                region: Some("us".into()),
                max_price: Some(Credits::from_units(1_500_000)),
                min_memory_mib: Some(40_960),
                ..Default::default()
            },
            OfferFilter {
                supplier: Some(offers[3].body.supplier),
                ..Default::default()
            },
        ] {
            let mut expected: Vec<&Signed<Offer>> = offers
                .iter()
                .filter(|o| {
                    let b = &o.body;
                    b.expires_at > T0
                        && filter.gpu_model.as_ref().is_none_or(|m| *m == b.gpu_model)
                        && filter.region.as_ref().is_none_or(|r| *r == b.region)
                        && filter.max_price.is_none_or(|p| b.price_per_gpu_hour <= p)
                        && filter.min_gpus.is_none_or(|n| u32::from(b.gpu_count) >= n)
                        && filter.min_memory_mib.is_none_or(|m| b.gpu_memory_mib >= m)
                        && filter.supplier.is_none_or(|s| s == b.supplier)
                })
                .collect();
            expected.sort_by_key(|o| {
                (
                    o.body.price_per_gpu_hour,
                    Reverse(o.body.created_at),
                    o.id().unwrap(),
                )
            });
            assert!(!expected.is_empty(), "{filter:?}");
            let mut listed = Vec::new();
            let mut after = None;
            loop {
                let page = book.page(&filter, after, 7, T0, true);
                assert_eq!(page.total, Some(expected.len()));
                assert!(page.offers.len() <= 7);
                listed.extend(page.offers);
                match page.next {
                    Some(next) => {
                        // The cursor survives its text form.
                        after = Some(Cursor::parse(&next.to_text()).unwrap());
                    }
                    None => break,
                }
            }
            let expected: Vec<Signed<Offer>> = expected.into_iter().cloned().collect();
            assert_eq!(listed, expected, "{filter:?}");
        }
        assert_eq!(Cursor::parse("12"), None);
        assert_eq!(Cursor::parse("1_2_zz"), None);
    }

    #[test]
    fn the_booked_store_lists_only_what_the_store_took() {
        let store = Arc::new(MarketStore::temporary().unwrap());
        let book = Arc::new(OrderBook::loaded_from(&store).unwrap());
        let booked = BookedStore::new(store.clone(), book.clone());
        let key = Keypair::from_seed([2; 32]);
        let now = UnixMillis::now();
        let make = |sequence: u64, price: i64| {
            Signed::sign(
                Offer {
                    version: PROTOCOL_VERSION,
                    supplier: key.public(),
                    sequence,
                    gpu_model: "A100".into(),
                    gpu_memory_mib: 81_920,
                    gpu_count: 8,
                    price_per_gpu_hour: Credits::from_units(price),
                    min_hours: 1,
                    max_hours: 8,
                    region: "eu".into(),
                    hardware_fingerprint: Id([9; 32]),
                    created_at: now,
                    expires_at: now.plus_ms(600_000),
                },
                &key,
            )
            .unwrap()
        };
        let accepted = |o: &Signed<Offer>| AcceptedMessage {
            id: o.id().unwrap(),
            bytes: o.to_bytes().unwrap(),
            message: WireMessage::Offer(o.clone()),
        };
        let newer = make(2, 2_000_000);
        booked.store(&[accepted(&newer)]).unwrap();
        // Gone from the book (as after its expiry) but still the store's
        // live offer of the devices: an older one must not take its place.
        book.write().remove(0);
        booked.store(&[accepted(&make(1, 1_000_000))]).unwrap();
        assert!(book.is_empty(), "the store skipped the older offer");
        let newest = make(3, 3_000_000);
        booked.store(&[accepted(&newest)]).unwrap();
        let query = BookQuery::new("A100", 1);
        assert_eq!(book.best(&query, &unreported, now, 5), vec![newest]);
        // A book read from the store afresh holds the same.
        let reread = OrderBook::loaded_from(&store).unwrap();
        assert_eq!(
            reread.page(&OfferFilter::default(), None, 10, now, true),
            book.page(&OfferFilter::default(), None, 10, now, true)
        );
        assert_eq!(store.offers_scanned(), 1, "only the re-read scanned");
    }

    #[test]
    fn scores_are_those_a_read_of_every_stored_report_gives() {
        let store = Arc::new(MarketStore::temporary().unwrap());
        let book = Arc::new(OrderBook::loaded_from(&store).unwrap());
        let booked = BookedStore::new(store.clone(), book.clone());
        let coordinators: Vec<Keypair> = (0..5u8)
            .map(|i| Keypair::from_seed([100 + i; 32]))
            .collect();
        // Four members in epoch 2; the fifth key is not one of them.
        let set = CoordinatorSet::new(2, coordinators[..4].iter().map(Keypair::public).collect())
            .unwrap();
        let subjects: Vec<Keypair> = (0..6u8)
            .map(|i| Keypair::from_seed([200 + i; 32]))
            .collect();
        let mut dice = Dice(5);
        let mut batch = Vec::new();
        for _ in 0..300 {
            let coordinator = &coordinators[dice.roll(5) as usize];
            let report = Signed::sign(
                ReputationReport {
                    version: PROTOCOL_VERSION,
                    coordinator: coordinator.public(),
                    epoch: 1 + dice.roll(2),
                    subject: subjects[dice.roll(6) as usize].public(),
                    role: if dice.roll(2) == 0 {
                        Role::Supplier
                    } else {
                        Role::Customer
                    },
                    score_bp: dice.roll(10_001) as u16,
                    completed_leases: 0,
                    disputes_lost: 0,
                    missed_windows: 0,
                    refused_leases: 0,
                    fingerprint_changes: 0,
                    period_start: T0.minus_ms(86_400_000),
                    period_end: T0,
                    // Few distinct times, so newer and tied reports occur.
                    created_at: T0.plus_ms(dice.roll(5)),
                },
                coordinator,
            )
            .unwrap();
            batch.push(AcceptedMessage {
                id: report.id().unwrap(),
                bytes: report.to_bytes().unwrap(),
                message: WireMessage::ReputationReport(report),
            });
            if batch.len() == 17 {
                booked.store(&batch).unwrap();
                batch.clear();
            }
        }
        booked.store(&batch).unwrap();
        let reread = OrderBook::loaded_from(&store).unwrap();
        let suppliers = crate::customer::reputation::supplier_scores(&store, Some(&set), T0);
        assert!(!suppliers.is_empty());
        for subject in &subjects {
            let key = subject.public();
            let expected = suppliers.get(&key).copied();
            assert_eq!(book.score(Role::Supplier, &key, &set), expected);
            assert_eq!(reread.score(Role::Supplier, &key, &set), expected);
            let as_customer = crate::customer::reputation::customer_score(&store, &set, &key, T0);
            assert_eq!(book.score(Role::Customer, &key, &set), as_customer);
        }
    }
}
