//! The order book: offers stored by id, one live offer per supplier's
//! device set (a higher `sequence` replaces a lower one), and an index by
//! GPU model then price, so "the N cheapest offers of model X with at least
//! V MiB per GPU" walks the model's offers cheapest first and stops after
//! N matches, instead of reading every offer.
//!
//! Offers are stored as their canonical signed bytes; the node verifies
//! them before they get here.

use std::ops::Bound;

use bincode::{Decode, Encode};
use rigmesh_protocol::{Credits, Id, Offer, PublicKey, Signed, UnixMillis};

use crate::audit::Action;
use crate::codec::Record;
use crate::columns::{LiveOffers, OfferIndex, Offers, TypedStore};
use crate::error::{Error, Result};
use crate::keys::ShortBytes;
use crate::ledger::{Cause, Ledger};
use crate::store::{Batch, Direction, Store};

/// Most offers one query returns.
pub const MAX_OFFER_QUERY: usize = 1_000;

/// A stored offer: its signed bytes and the fields the indexes use.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OfferRecord {
    /// Canonical bytes of the `Signed<Offer>`.
    pub bytes: Vec<u8>,
    /// The supplier.
    pub supplier: PublicKey,
    /// The offered devices.
    pub fingerprint: Id,
    /// The supplier's sequence for these devices.
    pub sequence: u64,
    /// GPU model.
    pub gpu_model: String,
    /// Price of one GPU for one hour.
    pub price_per_gpu_hour: Credits,
    /// When it expires.
    pub expires_at: UnixMillis,
}

impl Record for OfferRecord {
    const WHAT: &'static str = "offer";
}

/// The live offer of a device set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct LiveOffer {
    /// Its sequence.
    pub sequence: u64,
    /// Its id.
    pub offer: Id,
}

impl Record for LiveOffer {
    const WHAT: &'static str = "live offer";
}

/// What the model/price index holds beside each key, so a query filters
/// without decoding offers it does not return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct OfferSummary {
    /// Memory of each GPU, MiB.
    pub gpu_memory_mib: u64,
    /// GPUs offered together.
    pub gpu_count: u16,
    /// When it expires.
    pub expires_at: UnixMillis,
}

impl Record for OfferSummary {
    const WHAT: &'static str = "offer summary";
}

/// What storing an offer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferOutcome {
    /// Stored; it is the live offer of its devices.
    Stored,
    /// Stored, replacing the older offer with this id.
    Replaced(Id),
    /// Not stored: the live offer of these devices has the same or a
    /// higher sequence.
    Stale,
}

/// "The cheapest offers of this model with at least this much."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferQuery {
    /// GPU model, exactly as offers name it.
    pub gpu_model: String,
    /// Least memory per GPU, MiB.
    pub min_memory_mib: u64,
    /// Least GPUs offered together.
    pub min_gpus: u16,
    /// Highest price per GPU-hour, if any.
    pub max_price: Option<Credits>,
    /// Offers expired at this time are skipped.
    pub now: UnixMillis,
    /// How many (at most [`MAX_OFFER_QUERY`]).
    pub limit: usize,
}

fn model_key(model: &str) -> Result<ShortBytes> {
    ShortBytes::new("GPU model", model.as_bytes())
}

fn decode_offer(bytes: &[u8]) -> Result<Signed<Offer>> {
    Signed::<Offer>::from_bytes(bytes).map_err(|e| Error::corrupt("offer", e.to_string()))
}

impl<S: Store> Ledger<S> {
    /// Stores an offer (already verified by the caller) unless the live
    /// offer of the same devices is as new; a newer one replaces it.
    pub fn put_offer(&self, offer: &Signed<Offer>, cause: &Cause) -> Result<OfferOutcome> {
        let body = &offer.body;
        let id = offer.id()?;
        let model = model_key(&body.gpu_model)?;
        let device = (body.supplier, body.hardware_fingerprint);
        let guard = self.lock();
        let mut batch = Batch::new();
        let mut outcome = OfferOutcome::Stored;
        if let Some(live) = self.store().get_in::<LiveOffers>(&device)? {
            if live.sequence >= body.sequence {
                return Ok(OfferOutcome::Stale);
            }
            self.remove_offer_writes(&mut batch, &live.offer)?;
            outcome = OfferOutcome::Replaced(live.offer);
        }
        batch.put_in::<Offers>(
            &id,
            &OfferRecord {
                bytes: offer.to_bytes()?,
                supplier: body.supplier,
                fingerprint: body.hardware_fingerprint,
                sequence: body.sequence,
                gpu_model: body.gpu_model.clone(),
                price_per_gpu_hour: body.price_per_gpu_hour,
                expires_at: body.expires_at,
            },
        )?;
        batch.put_in::<OfferIndex>(
            &(model, body.price_per_gpu_hour, id),
            &OfferSummary {
                gpu_memory_mib: body.gpu_memory_mib,
                gpu_count: body.gpu_count,
                expires_at: body.expires_at,
            },
        )?;
        batch.put_in::<LiveOffers>(
            &device,
            &LiveOffer {
                sequence: body.sequence,
                offer: id,
            },
        )?;
        let detail = match outcome {
            OfferOutcome::Replaced(old) => format!("offer {id} replaces {old}"),
            _ => format!("offer {id}"),
        };
        self.commit(guard, batch, Action::OfferStored, &detail, cause)?;
        Ok(outcome)
    }

    /// The writes that remove offer `id` from every offer column.
    fn remove_offer_writes(&self, batch: &mut Batch, id: &Id) -> Result<bool> {
        let Some(record) = self.store().get_in::<Offers>(id)? else {
            return Ok(false);
        };
        batch.delete_in::<Offers>(id);
        batch.delete_in::<OfferIndex>(&(
            model_key(&record.gpu_model)?,
            record.price_per_gpu_hour,
            *id,
        ));
        let device = (record.supplier, record.fingerprint);
        if let Some(live) = self.store().get_in::<LiveOffers>(&device)? {
            if live.offer == *id {
                batch.delete_in::<LiveOffers>(&device);
            }
        }
        Ok(true)
    }

    /// Removes an offer; false if it was not stored.
    pub fn remove_offer(&self, id: &Id, cause: &Cause) -> Result<bool> {
        let guard = self.lock();
        let mut batch = Batch::new();
        if !self.remove_offer_writes(&mut batch, id)? {
            return Ok(false);
        }
        self.commit(
            guard,
            batch,
            Action::OfferRemoved,
            &format!("offer {id}"),
            cause,
        )?;
        Ok(true)
    }

    /// Removes up to `limit` offers expired at `now`; returns how many.
    /// Walks the offers in id order (maintenance, not a query path).
    pub fn remove_expired_offers(
        &self,
        now: UnixMillis,
        limit: usize,
        cause: &Cause,
    ) -> Result<usize> {
        let guard = self.lock();
        let mut batch = Batch::new();
        let mut removed = 0;
        for row in self.store().rows::<Offers>(Direction::Forward) {
            if removed >= limit {
                break;
            }
            let (id, record) = row?;
            if record.expires_at < now {
                self.remove_offer_writes(&mut batch, &id)?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.commit(
                guard,
                batch,
                Action::OfferRemoved,
                &format!("{removed} expired offers"),
                cause,
            )?;
        }
        Ok(removed)
    }

    /// A stored offer.
    pub fn offer(&self, id: &Id) -> Result<Option<Signed<Offer>>> {
        match self.store().get_in::<Offers>(id)? {
            Some(record) => Ok(Some(decode_offer(&record.bytes)?)),
            None => Ok(None),
        }
    }

    /// The live offer id of a supplier's device set.
    pub fn live_offer(&self, supplier: &PublicKey, fingerprint: &Id) -> Result<Option<LiveOffer>> {
        self.store()
            .get_in::<LiveOffers>(&(*supplier, *fingerprint))
    }

    /// The cheapest unexpired offers matching `query`, cheapest first (ties
    /// by offer id).
    pub fn cheapest_offers(&self, query: &OfferQuery) -> Result<Vec<Signed<Offer>>> {
        let ids = self.cheapest_offer_ids(query)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            // An index row without its offer is skipped, not fatal: the
            // index is rebuilt from offers, never the other way round.
            if let Some(offer) = self.offer(&id)? {
                out.push(offer);
            }
        }
        Ok(out)
    }

    /// The ids of [`Ledger::cheapest_offers`], read from the index alone.
    pub fn cheapest_offer_ids(&self, query: &OfferQuery) -> Result<Vec<Id>> {
        let limit = query.limit.min(MAX_OFFER_QUERY);
        let model = model_key(&query.gpu_model)?;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let rows = match query.max_price {
            Some(max) => self.store().rows_in::<OfferIndex>(
                Bound::Included(&(model.clone(), Credits::from_units(i64::MIN), Id::ZERO)),
                Bound::Included(&(model, max, Id([0xff; 32]))),
                Direction::Forward,
            ),
            None => self
                .store()
                .rows_with::<OfferIndex, ShortBytes>(&model, Direction::Forward),
        };
        for row in rows {
            let ((_, _, id), summary) = row?;
            if summary.gpu_memory_mib >= query.min_memory_mib
                && summary.gpu_count >= query.min_gpus
                && summary.expires_at >= query.now
            {
                out.push(id);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}
