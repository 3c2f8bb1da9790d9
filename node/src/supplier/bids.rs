//! Standing bids seen from the supplier's side: a customer waiting for GPUs
//! gossips a signed `Bid`; when the supplier's free GPUs meet it (model,
//! count, memory, region, lease length, and a price at or below the bid's
//! maximum), the supplier re-publishes its offer at once instead of at the
//! next refresh, so the customer need not wait for it.
//!
//! Re-publishing is rate-limited ([`REOFFER_INTERVAL_MS`]): a flood of bids
//! cannot make a supplier flood the offers topic.

use rigmesh_protocol::{Bid, Offer, Signed, UnixMillis};

use crate::customer::book::{meets, BookQuery};

/// At most one re-publication for bids per this many milliseconds.
pub const REOFFER_INTERVAL_MS: u64 = 2_000;

/// The offer among `offers` that serves `bid` at `now`, if any: it meets
/// the bid by the order book's rule, and the bid's lease length is one the
/// offer accepts. An expired bid is served by none.
pub fn serving<'a>(
    offers: &'a [Signed<Offer>],
    bid: &Bid,
    now: UnixMillis,
) -> Option<&'a Signed<Offer>> {
    if bid.expires_at <= now {
        return None;
    }
    let query = BookQuery::for_bid(bid);
    offers.iter().find(|offer| {
        let o = &offer.body;
        meets(o, &query, now) && (o.min_hours..=o.max_hours).contains(&bid.hours)
    })
}

/// When the supplier last offered again for a bid.
#[derive(Debug, Default)]
pub struct BidWatch {
    last: Option<UnixMillis>,
}

impl BidWatch {
    /// True when `bid` is served by one of `offers` and no re-publication
    /// for a bid happened in the last [`REOFFER_INTERVAL_MS`]; the caller
    /// then re-publishes its offers.
    pub fn answer_now(
        &mut self,
        offers: &[Signed<Offer>],
        bid: &Signed<Bid>,
        now: UnixMillis,
    ) -> bool {
        if serving(offers, &bid.body, now).is_none() {
            return false;
        }
        if self
            .last
            .is_some_and(|last| now.since(last) < REOFFER_INTERVAL_MS)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use rigmesh_protocol::{Id, Keypair, PROTOCOL_VERSION};

    use super::*;

    const T0: UnixMillis = UnixMillis(1_800_000_000_000);

    fn offer(price: &str) -> Signed<Offer> {
        let key = Keypair::from_seed([4; 32]);
        Signed::sign(
            Offer {
                version: PROTOCOL_VERSION,
                supplier: key.public(),
                sequence: 1,
                gpu_model: "A100".into(),
                gpu_memory_mib: 81_920,
                gpu_count: 4,
                price_per_gpu_hour: price.parse().unwrap(),
                min_hours: 1,
                max_hours: 8,
                region: "eu-west".into(),
                hardware_fingerprint: Id([1; 32]),
                created_at: T0,
                expires_at: T0.plus_ms(900_000),
            },
            &key,
        )
        .unwrap()
    }

    fn bid(edit: impl FnOnce(&mut Bid)) -> Signed<Bid> {
        let key = Keypair::from_seed([5; 32]);
        let mut body = Bid {
            version: PROTOCOL_VERSION,
            customer: key.public(),
            gpu_model: "A100".into(),
            min_memory_mib: 80_000,
            gpu_count: 2,
            max_price_per_gpu_hour: "1.80".parse().unwrap(),
            hours: 4,
            region: None,
            created_at: T0,
            expires_at: T0.plus_ms(300_000),
        };
        edit(&mut body);
        Signed::sign(body, &key).unwrap()
    }

    #[test]
    fn free_gpus_at_or_below_the_bid_s_price_answer_it_at_most_every_two_seconds() {
        let offers = [offer("2.10"), offer("1.80")];
        let mut watch = BidWatch::default();
        assert!(watch.answer_now(&offers, &bid(|_| {}), T0));
        assert!(
            !watch.answer_now(&offers, &bid(|_| {}), T0.plus_ms(1_999)),
            "rate-limited"
        );
        assert!(watch.answer_now(&offers, &bid(|_| {}), T0.plus_ms(2_000)));
        let later = T0.plus_ms(10_000);
        for (why, misfit) in [
            (
                "too cheap",
                bid(|b| b.max_price_per_gpu_hour = "1.79".parse().unwrap()),
            ),
            ("too many", bid(|b| b.gpu_count = 5)),
            ("too much memory", bid(|b| b.min_memory_mib = 90_000)),
            ("other region", bid(|b| b.region = Some("us-east".into()))),
            ("other model", bid(|b| b.gpu_model = "H100".into())),
            ("too long", bid(|b| b.hours = 9)),
            ("expired", bid(|b| b.expires_at = later)),
        ] {
            assert!(!watch.answer_now(&offers, &misfit, later), "{why}");
        }
        assert!(watch.answer_now(&offers, &bid(|b| b.region = Some("eu-west".into())), later));
        assert!(
            !BidWatch::default().answer_now(&[], &bid(|_| {}), T0),
            "nothing free"
        );
    }
}
