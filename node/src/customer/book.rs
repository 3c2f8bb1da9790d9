//! The customer's order book: which stored offers fit what the customer
//! asked for, best first, and, when none does, how many offers each filter
//! turned away, so "no match" comes with numbers the customer can act on.
//!
//! The ranking is: lower price per GPU-hour first; at equal price, higher
//! supplier reputation first; at equal reputation, the newer offer first
//! (higher `created_at`: a supplier who re-published recently is more
//! likely to still be online); remaining ties keep the ledger's order
//! (offer id), so the ranking is deterministic.
//!
//! Reputation is a score in basis points (10000 is spotless) supplied by
//! the caller. A supplier without reports scores
//! [`DEFAULT_REPUTATION_BP`] (neutral), which passes the default minimum
//! of zero and ranks below suppliers with a good record at the same price.

use std::cmp::Reverse;
use std::fmt;

use rigmesh_ledger::offers::MAX_OFFER_QUERY;
use rigmesh_ledger::{Ledger, OfferQuery, Store};
use rigmesh_protocol::{Bid, Credits, Offer, PublicKey, Signed, UnixMillis};

use crate::error::{Error, Result};

/// Reputation of a supplier no coordinator has reported on: neutral, half
/// of a spotless 10000, so an unknown supplier is neither trusted like a
/// proven one nor shut out of the market.
pub const DEFAULT_REPUTATION_BP: u16 = 5_000;

/// The reputation of a spotless record, basis points.
pub const FULL_REPUTATION_BP: u16 = 10_000;

/// The reputation source to use before any reports exist: every supplier
/// scores [`DEFAULT_REPUTATION_BP`].
pub fn unreported(_supplier: &PublicKey) -> u16 {
    DEFAULT_REPUTATION_BP
}

/// What the customer is looking for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookQuery {
    /// GPU model, exactly as offers name it (NVML's name).
    pub gpu_model: String,
    /// Least memory per GPU, MiB.
    pub min_memory_mib: u64,
    /// GPUs wanted; an offer must have at least this many.
    pub count: u16,
    /// Highest price per GPU-hour the customer pays, if any.
    pub max_price: Option<Credits>,
    /// Region wanted, if any (exact match).
    pub region: Option<String>,
    /// Least supplier reputation, basis points (0 accepts everyone).
    pub min_reputation_bp: u16,
}

impl BookQuery {
    /// A query for `count` GPUs of `gpu_model` with no other constraint.
    pub fn new(gpu_model: impl Into<String>, count: u16) -> Self {
        BookQuery {
            gpu_model: gpu_model.into(),
            min_memory_mib: 0,
            count,
            max_price: None,
            region: None,
            min_reputation_bp: 0,
        }
    }

    /// What a standing bid asks for, as a query (any reputation).
    pub fn for_bid(bid: &Bid) -> Self {
        BookQuery {
            gpu_model: bid.gpu_model.clone(),
            min_memory_mib: bid.min_memory_mib,
            count: bid.gpu_count,
            max_price: Some(bid.max_price_per_gpu_hour),
            region: bid.region.clone(),
            min_reputation_bp: 0,
        }
    }
}

/// True when `offer` is unexpired at `now` and meets every filter of
/// `query` but reputation (which needs a reputation source): the same rule
/// [`best_offers`] applies, for one offer. Suppliers use it to see whether
/// their offer answers a standing bid, customers to see whether a newly
/// gossiped offer is worth a fresh look at the book.
pub fn meets(offer: &Offer, query: &BookQuery, now: UnixMillis) -> bool {
    offer.gpu_model == query.gpu_model
        && offer.expires_at > now
        && Misfit::of(offer, query, FULL_REPUTATION_BP).fits()
}

/// The terms of an offer the filters of a query read: what the in-memory
/// order book keeps of each offer is enough to judge it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Terms<'a> {
    pub(crate) price: Credits,
    pub(crate) memory_mib: u64,
    pub(crate) gpus: u16,
    pub(crate) region: &'a str,
}

impl<'a> Terms<'a> {
    fn of(offer: &'a Offer) -> Self {
        Terms {
            price: offer.price_per_gpu_hour,
            memory_mib: offer.gpu_memory_mib,
            gpus: offer.gpu_count,
            region: &offer.region,
        }
    }
}

/// Which filters of a query one offer fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Misfit {
    price: bool,
    memory: bool,
    count: bool,
    region: bool,
    reputation: bool,
}

impl Misfit {
    fn of(offer: &Offer, query: &BookQuery, reputation_bp: u16) -> Self {
        Self::of_terms(Terms::of(offer), query, reputation_bp)
    }

    /// The filters of `query` that an offer with `terms`, from a supplier
    /// scored `reputation_bp`, fails (the model and expiry are the
    /// caller's to check).
    pub(crate) fn of_terms(terms: Terms<'_>, query: &BookQuery, reputation_bp: u16) -> Self {
        Misfit {
            price: query.max_price.is_some_and(|max| terms.price > max),
            memory: terms.memory_mib < query.min_memory_mib,
            count: terms.gpus < query.count,
            region: query
                .region
                .as_deref()
                .is_some_and(|region| region != terms.region),
            reputation: reputation_bp < query.min_reputation_bp,
        }
    }

    /// True when it fails no filter.
    pub(crate) fn fits(self) -> bool {
        self == Misfit::default()
    }
}

fn ledger_error(e: rigmesh_ledger::Error) -> Error {
    Error::Store(e.to_string())
}

/// The offers matching `query` at `now`, best first (see the module
/// documentation for the ranking). `reputation` scores a supplier in basis
/// points; pass [`unreported`] until reports exist.
///
/// The ledger's price index narrows the search to the model, price, memory
/// and count; region and reputation are checked on what it returns. The
/// ledger returns at most [`MAX_OFFER_QUERY`] offers per query, so with
/// more candidates than that only the cheapest are considered.
pub fn best_offers<S: Store>(
    ledger: &Ledger<S>,
    query: &BookQuery,
    reputation: &dyn Fn(&PublicKey) -> u16,
    now: UnixMillis,
) -> Result<Vec<Signed<Offer>>> {
    let candidates = ledger
        .cheapest_offers(&OfferQuery {
            gpu_model: query.gpu_model.clone(),
            min_memory_mib: query.min_memory_mib,
            min_gpus: query.count,
            max_price: query.max_price,
            now,
            limit: MAX_OFFER_QUERY,
        })
        .map_err(ledger_error)?;
    let mut ranked: Vec<(u16, Signed<Offer>)> = candidates
        .into_iter()
        .map(|offer| (reputation(&offer.body.supplier), offer))
        .filter(|(score, offer)| Misfit::of(&offer.body, query, *score).fits())
        .collect();
    // A stable sort keeps the ledger's id order among full ties.
    ranked.sort_by_key(|(score, offer)| {
        (
            offer.body.price_per_gpu_hour,
            Reverse(*score),
            Reverse(offer.body.created_at),
        )
    });
    Ok(ranked.into_iter().map(|(_, offer)| offer).collect())
}

/// Why a query matched nothing, in numbers. Each count is the number of
/// unexpired offers for the model that fail that one filter; an offer that
/// fails several is counted under each, so the counts can add up to more
/// than [`NoMatch::offers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoMatch {
    /// The model asked for.
    pub gpu_model: String,
    /// Unexpired offers for the model.
    pub offers: usize,
    /// Of those, how many match every filter (zero when nothing matched).
    pub matching: usize,
    /// Offers above the maximum price.
    pub above_max_price: usize,
    /// The cheapest price among the offers above the maximum price.
    pub cheapest_above_max: Option<Credits>,
    /// Offers with less memory per GPU than asked.
    pub too_little_memory: usize,
    /// Offers with fewer GPUs than asked.
    pub too_few_gpus: usize,
    /// Offers in another region.
    pub wrong_region: usize,
    /// Offers from suppliers below the minimum reputation.
    pub below_reputation: usize,
    /// False when the model has more offers than one ledger query returns
    /// ([`MAX_OFFER_QUERY`]); the counts then cover the cheapest of them.
    pub complete: bool,
    /// The query the counts are about, for the explanation's wording.
    pub query: BookQuery,
}

/// Counts, for each filter of `query`, the unexpired offers for its model
/// that the filter turns away, with the same `reputation` source as
/// [`best_offers`].
pub fn explain_no_match<S: Store>(
    ledger: &Ledger<S>,
    query: &BookQuery,
    reputation: &dyn Fn(&PublicKey) -> u16,
    now: UnixMillis,
) -> Result<NoMatch> {
    // Every unexpired offer for the model: no filter but the model.
    let offers = ledger
        .cheapest_offers(&OfferQuery {
            gpu_model: query.gpu_model.clone(),
            min_memory_mib: 0,
            min_gpus: 0,
            max_price: None,
            now,
            limit: MAX_OFFER_QUERY,
        })
        .map_err(ledger_error)?;
    let mut report = NoMatch::empty(query);
    for offer in &offers {
        let body = &offer.body;
        report.count(Terms::of(body), reputation(&body.supplier));
    }
    report.complete = offers.len() < MAX_OFFER_QUERY;
    Ok(report)
}

impl NoMatch {
    /// No offer counted yet for `query`.
    pub(crate) fn empty(query: &BookQuery) -> Self {
        NoMatch {
            gpu_model: query.gpu_model.clone(),
            offers: 0,
            matching: 0,
            above_max_price: 0,
            cheapest_above_max: None,
            too_little_memory: 0,
            too_few_gpus: 0,
            wrong_region: 0,
            below_reputation: 0,
            complete: true,
            query: query.clone(),
        }
    }

    /// Counts one unexpired offer of the model, with `terms`, from a
    /// supplier scored `reputation_bp`.
    pub(crate) fn count(&mut self, terms: Terms<'_>, reputation_bp: u16) {
        let misfit = Misfit::of_terms(terms, &self.query, reputation_bp);
        self.offers += 1;
        if misfit.fits() {
            self.matching += 1;
        }
        if misfit.price {
            self.above_max_price += 1;
            self.cheapest_above_max = Some(
                self.cheapest_above_max
                    .map_or(terms.price, |cheapest| cheapest.min(terms.price)),
            );
        }
        self.too_little_memory += usize::from(misfit.memory);
        self.too_few_gpus += usize::from(misfit.count);
        self.wrong_region += usize::from(misfit.region);
        self.below_reputation += usize::from(misfit.reputation);
    }
}

/// A price with at least two decimal places, as prices are read ("2.10").
fn price_text(price: Credits) -> String {
    let text = price.to_string();
    match text.split_once('.') {
        Some((_, fraction)) if fraction.len() >= 2 => text,
        Some(_) => format!("{text}0"),
        None => format!("{text}.00"),
    }
}

/// A reputation in basis points as a fraction of 1 ("0.8", "0.85", "1").
fn reputation_text(bp: u16) -> String {
    let whole = bp / FULL_REPUTATION_BP;
    let fraction = bp % FULL_REPUTATION_BP;
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:04}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

impl fmt::Display for NoMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.offers == 0 {
            return write!(f, "no offers for {}", self.gpu_model);
        }
        write!(
            f,
            "{} for {}",
            plural(self.offers, "offer", "offers"),
            self.gpu_model
        )?;
        if !self.complete {
            write!(f, " (counted over the {MAX_OFFER_QUERY} cheapest)")?;
        }
        let mut reasons = Vec::new();
        if self.above_max_price > 0 {
            let mut reason = format!("{} above your max price", self.above_max_price);
            if let Some(cheapest) = self.cheapest_above_max {
                reason.push_str(&format!(" (cheapest {})", price_text(cheapest)));
            }
            reasons.push(reason);
        }
        if self.too_little_memory > 0 {
            reasons.push(format!(
                "{} with less than {} MiB per GPU",
                self.too_little_memory, self.query.min_memory_mib
            ));
        }
        if self.too_few_gpus > 0 {
            reasons.push(format!(
                "{} with fewer than {} GPUs",
                self.too_few_gpus, self.query.count
            ));
        }
        if self.wrong_region > 0 {
            let region = self.query.region.as_deref().unwrap_or_default();
            reasons.push(format!("{} outside {region}", self.wrong_region));
        }
        if self.below_reputation > 0 {
            reasons.push(format!(
                "{} from suppliers below reputation {}",
                self.below_reputation,
                reputation_text(self.query.min_reputation_bp)
            ));
        }
        if !reasons.is_empty() {
            write!(f, "; {}", reasons.join(", "))?;
        }
        if self.matching > 0 {
            write!(f, "; {} match", self.matching)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rigmesh_ledger::Cause;
    use rigmesh_protocol::{Id, Keypair, PROTOCOL_VERSION};

    use super::*;

    const T0: UnixMillis = UnixMillis(1_800_000_000_000);

    struct Spec {
        seed: u8,
        model: &'static str,
        memory: u64,
        count: u16,
        price: &'static str,
        region: &'static str,
        age_ms: u64,
    }

    fn spec(seed: u8, price: &'static str) -> Spec {
        Spec {
            seed,
            model: "A100",
            memory: 81_920,
            count: 8,
            price,
            region: "eu-west",
            age_ms: 10_000,
        }
    }

    fn offer(spec: &Spec) -> Signed<Offer> {
        let key = Keypair::from_seed([spec.seed; 32]);
        let created_at = T0.minus_ms(spec.age_ms);
        Signed::sign(
            Offer {
                version: PROTOCOL_VERSION,
                supplier: key.public(),
                sequence: 1,
                gpu_model: spec.model.into(),
                gpu_memory_mib: spec.memory,
                gpu_count: spec.count,
                price_per_gpu_hour: spec.price.parse().unwrap(),
                min_hours: 1,
                max_hours: 72,
                region: spec.region.into(),
                hardware_fingerprint: Id(*blake3::hash(&[spec.seed]).as_bytes()),
                created_at,
                expires_at: created_at.plus_ms(3_600_000),
            },
            &key,
        )
        .unwrap()
    }

    fn book(specs: &[Spec]) -> (Ledger<rigmesh_ledger::MemoryStore>, Vec<Signed<Offer>>) {
        let ledger = Ledger::in_memory().unwrap();
        let offers: Vec<_> = specs.iter().map(offer).collect();
        for o in &offers {
            let cause = Cause::new(o.body.supplier, o.id().unwrap(), T0);
            ledger.put_offer(o, &cause).unwrap();
        }
        (ledger, offers)
    }

    fn scores(pairs: &[(u8, u16)]) -> HashMap<PublicKey, u16> {
        pairs
            .iter()
            .map(|(seed, bp)| (Keypair::from_seed([*seed; 32]).public(), *bp))
            .collect()
    }

    #[test]
    fn offers_rank_by_price_then_reputation_then_freshness() {
        let specs = vec![
            Spec {
                age_ms: 5_000,
                ..spec(1, "2.00")
            }, // same price, lower reputation
            Spec {
                age_ms: 9_000,
                ..spec(2, "2.00")
            }, // same price and reputation as 3, older
            Spec {
                age_ms: 1_000,
                ..spec(3, "2.00")
            }, // the newest of the 2.00 / 0.95 pair
            spec(4, "1.50"), // cheapest
            spec(5, "3.00"), // above the max price
            Spec {
                region: "us-east",
                ..spec(6, "1.00")
            },
            Spec {
                memory: 40_960,
                ..spec(7, "1.00")
            },
            Spec {
                count: 2,
                ..spec(8, "1.00")
            },
            spec(9, "1.00"), // reputation below the minimum
            Spec {
                model: "H100",
                ..spec(10, "1.00")
            },
        ];
        let (ledger, offers) = book(&specs);
        let reputation = scores(&[(1, 9_000), (2, 9_500), (3, 9_500), (4, 8_000), (9, 7_999)]);
        let query = BookQuery {
            min_memory_mib: 80_000,
            max_price: Some("2.50".parse().unwrap()),
            region: Some("eu-west".into()),
            min_reputation_bp: 8_000,
            ..BookQuery::new("A100", 4)
        };
        let lookup = |k: &PublicKey| *reputation.get(k).unwrap_or(&DEFAULT_REPUTATION_BP);
        let best = best_offers(&ledger, &query, &lookup, T0).unwrap();
        let expected: Vec<_> = [3usize, 2, 1, 0]
            .iter()
            .map(|i| offers[*i].clone())
            .collect();
        assert_eq!(best, expected);
    }

    #[test]
    fn the_max_price_itself_is_affordable() {
        let (ledger, offers) = book(&[spec(1, "2.50"), spec(2, "2.500001")]);
        let query = BookQuery {
            max_price: Some("2.50".parse().unwrap()),
            ..BookQuery::new("A100", 8)
        };
        let best = best_offers(&ledger, &query, &unreported, T0).unwrap();
        assert_eq!(best, offers[..1]);
        let why = explain_no_match(&ledger, &query, &unreported, T0).unwrap();
        assert_eq!((why.matching, why.above_max_price), (1, 1));
        assert_eq!(
            why.to_string(),
            "2 offers for A100; 1 above your max price (cheapest 2.500001); 1 match"
        );
    }

    #[test]
    fn unreported_suppliers_score_the_documented_default() {
        let (ledger, offers) = book(&[spec(1, "2.00")]);
        let mut query = BookQuery::new("A100", 1);
        assert_eq!(
            best_offers(&ledger, &query, &unreported, T0).unwrap(),
            offers
        );
        query.min_reputation_bp = DEFAULT_REPUTATION_BP + 1;
        assert!(best_offers(&ledger, &query, &unreported, T0)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn no_match_explains_itself_in_numbers() {
        // 12 A100 offers: 9 above 2.00 (cheapest 2.10), 3 cheap ones from
        // suppliers scored 0.7; one H100 offer that must not be counted.
        let prices = [
            "2.10", "2.20", "2.30", "2.40", "2.50", "2.60", "2.70", "2.80", "2.90",
        ];
        let mut specs: Vec<Spec> = prices
            .iter()
            .enumerate()
            .map(|(i, p)| spec(u8::try_from(i).unwrap() + 1, p))
            .collect();
        for seed in 20..23 {
            specs.push(spec(seed, "1.80"));
        }
        specs.push(Spec {
            model: "H100",
            ..spec(30, "1.00")
        });
        let (ledger, _) = book(&specs);
        let reputation = scores(&[(20, 7_000), (21, 7_000), (22, 7_000)]);
        let lookup = |k: &PublicKey| *reputation.get(k).unwrap_or(&9_000);
        let query = BookQuery {
            max_price: Some("2.00".parse().unwrap()),
            min_reputation_bp: 8_000,
            ..BookQuery::new("A100", 1)
        };
        assert!(best_offers(&ledger, &query, &lookup, T0)
            .unwrap()
            .is_empty());
        let why = explain_no_match(&ledger, &query, &lookup, T0).unwrap();
        assert_eq!(why.offers, 12);
        assert_eq!(why.matching, 0);
        assert_eq!(why.above_max_price, 9);
        assert_eq!(why.cheapest_above_max, Some("2.1".parse().unwrap()));
        assert_eq!(why.below_reputation, 3);
        assert_eq!(
            (why.too_little_memory, why.too_few_gpus, why.wrong_region),
            (0, 0, 0)
        );
        assert_eq!(
            why.to_string(),
            "12 offers for A100; 9 above your max price (cheapest 2.10), \
             3 from suppliers below reputation 0.8"
        );
    }

    #[test]
    fn every_filter_is_counted_and_expired_offers_are_not() {
        let specs = vec![
            Spec {
                memory: 40_960,
                ..spec(1, "1.00")
            },
            Spec {
                memory: 40_960,
                count: 1,
                ..spec(2, "1.00")
            },
            Spec {
                region: "us-east",
                ..spec(3, "1.00")
            },
            Spec {
                age_ms: 2 * 3_600_000,
                ..spec(4, "1.00")
            }, // expired an hour ago
        ];
        let (ledger, _) = book(&specs);
        let query = BookQuery {
            min_memory_mib: 80_000,
            region: Some("eu-west".into()),
            ..BookQuery::new("A100", 2)
        };
        let why = explain_no_match(&ledger, &query, &unreported, T0).unwrap();
        assert_eq!(why.offers, 3);
        assert_eq!(why.too_little_memory, 2);
        assert_eq!(why.too_few_gpus, 1);
        assert_eq!(why.wrong_region, 1);
        assert_eq!(why.above_max_price, 0);
        assert_eq!(
            why.to_string(),
            "3 offers for A100; 2 with less than 80000 MiB per GPU, \
             1 with fewer than 2 GPUs, 1 outside eu-west"
        );
        let none = explain_no_match(&ledger, &BookQuery::new("B200", 1), &unreported, T0).unwrap();
        assert_eq!(none.to_string(), "no offers for B200");
    }

    #[test]
    fn one_offer_meets_a_bid_by_the_book_s_rule() {
        let o = offer(&spec(1, "2.00")).body;
        let bid = rigmesh_protocol::Bid {
            version: PROTOCOL_VERSION,
            customer: Keypair::from_seed([9; 32]).public(),
            gpu_model: "A100".into(),
            min_memory_mib: 80_000,
            gpu_count: 8,
            max_price_per_gpu_hour: "2.00".parse().unwrap(),
            hours: 4,
            region: Some("eu-west".into()),
            created_at: T0,
            expires_at: T0.plus_ms(600_000),
        };
        let query = BookQuery::for_bid(&bid);
        assert!(meets(&o, &query, T0), "the max price itself is affordable");
        let cheaper = BookQuery {
            max_price: Some("1.99".parse().unwrap()),
            ..query.clone()
        };
        assert!(!meets(&o, &cheaper, T0));
        let more = BookQuery {
            count: 9,
            ..query.clone()
        };
        assert!(!meets(&o, &more, T0));
        let elsewhere = BookQuery {
            region: Some("us-east".into()),
            ..query.clone()
        };
        assert!(!meets(&o, &elsewhere, T0));
        let other_model = BookQuery {
            gpu_model: "H100".into(),
            ..query.clone()
        };
        assert!(!meets(&o, &other_model, T0));
        assert!(!meets(&o, &query, o.expires_at), "expired");
    }

    #[test]
    fn numbers_are_written_the_way_people_read_them() {
        assert_eq!(price_text("2.1".parse().unwrap()), "2.10");
        assert_eq!(price_text("3".parse().unwrap()), "3.00");
        assert_eq!(price_text("2.125".parse().unwrap()), "2.125");
        assert_eq!(reputation_text(8_000), "0.8");
        assert_eq!(reputation_text(8_550), "0.855");
        assert_eq!(reputation_text(10_000), "1");
        assert_eq!(reputation_text(0), "0");
    }
}
