//! Strikes and bans, kept by peer id and by remote IP address, so that
//! neither reconnecting nor a fresh peer id from the same host starts a
//! misbehaving peer over.
//!
//! A strike has a weight (1 for an invalid message or a forged request, a
//! fraction for a request refused for the rate limit) and decays
//! continuously with a half-life, so an honest peer's rare errors never add
//! up to a ban. Past its threshold an offender is banned; each later ban of
//! the same offender lasts twice the one before, up to a cap. This is pure
//! bookkeeping over wall-clock milliseconds (bans outlive restarts); the
//! event loop applies the bans to the swarm and hands changed records to
//! the store worker.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use libp2p::multiaddr::Protocol as AddrProtocol;
use libp2p::{Multiaddr, PeerId};
use rigmesh_protocol::UnixMillis;

use super::config::NetworkLimits;

/// Strike scores below this are treated as none (and forgotten).
const NEGLIGIBLE: f64 = 0.001;

/// Who is struck or banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Offender {
    /// A libp2p peer id.
    Peer(PeerId),
    /// A remote IP address, whatever peer ids connect from it.
    Address(IpAddr),
}

impl Offender {
    /// `peer` or `address`: the metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Offender::Peer(_) => "peer",
            Offender::Address(_) => "address",
        }
    }

    /// Its stored form: the peer id's bytes, or the address's multiaddr
    /// bytes (`/ip4/..`, `/ip6/..`); the two never overlap (a multihash
    /// starts with 0x00 or 0x12, a multiaddr ip with 0x04 or 0x29).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Offender::Peer(peer) => peer.to_bytes(),
            Offender::Address(ip) => Multiaddr::from(*ip).to_vec(),
        }
    }

    /// Reads [`Offender::to_bytes`]; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if let Ok(peer) = PeerId::from_bytes(bytes) {
            return Some(Offender::Peer(peer));
        }
        let addr = Multiaddr::try_from(bytes.to_vec()).ok()?;
        let mut parts = addr.iter();
        let ip = match parts.next()? {
            AddrProtocol::Ip4(ip) => IpAddr::V4(ip),
            AddrProtocol::Ip6(ip) => IpAddr::V6(ip),
            _ => return None,
        };
        parts.next().is_none().then_some(Offender::Address(ip))
    }
}

impl fmt::Display for Offender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Offender::Peer(peer) => write!(f, "peer {peer}"),
            Offender::Address(ip) => write!(f, "address {ip}"),
        }
    }
}

/// The IP address a multiaddr starts with, if any (not for relayed or
/// memory addresses). A relayed address starts with the relay's IP, which
/// must never take the blame for the peers it relays.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| matches!(p, AddrProtocol::P2pCircuit)) {
        return None;
    }
    match addr.iter().next()? {
        AddrProtocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        AddrProtocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// Joins stored strike records and the bans in force into standings.
pub fn restored(
    stored: Vec<super::store::OffenceState>,
    bans: Vec<super::store::PeerBan>,
) -> Vec<(Offender, Standing)> {
    let mut out: HashMap<Offender, Standing> = stored
        .into_iter()
        .map(|o| {
            let standing = Standing {
                strikes: o.strikes,
                updated: o.updated,
                bans: o.bans,
                banned_until: UnixMillis(0),
            };
            (o.offender, standing)
        })
        .collect();
    for ban in bans {
        let standing = out.entry(ban.offender).or_insert(Standing {
            strikes: 0.0,
            updated: UnixMillis(0),
            bans: 1,
            banned_until: UnixMillis(0),
        });
        standing.banned_until = standing.banned_until.max(ban.until);
    }
    out.into_iter().collect()
}

/// When strikes become bans and how long bans last.
#[derive(Debug, Clone, PartialEq)]
pub struct OffencePolicy {
    /// Strikes that ban a peer; 0: never.
    pub peer_threshold: f64,
    /// Strikes that ban an address; 0: never.
    pub address_threshold: f64,
    /// Milliseconds for strikes to halve; 0: they never decay.
    pub half_life_ms: u64,
    /// A first ban, in milliseconds.
    pub ban_ms: u64,
    /// The longest ban, in milliseconds.
    pub max_ban_ms: u64,
    /// Addresses never struck nor banned.
    pub trusted: Vec<IpAddr>,
    /// Offenders kept at most.
    pub max_tracked: usize,
}

impl OffencePolicy {
    /// The policy the configuration describes.
    pub fn from_limits(limits: &NetworkLimits) -> Self {
        OffencePolicy {
            peer_threshold: f64::from(limits.ban_threshold),
            address_threshold: f64::from(limits.address_ban_threshold),
            half_life_ms: limits.strike_half_life_secs.saturating_mul(1000),
            ban_ms: limits.ban_secs.saturating_mul(1000),
            max_ban_ms: limits.max_ban_secs.saturating_mul(1000),
            trusted: limits.trusted_addresses.clone(),
            max_tracked: limits.max_tracked_offenders.max(1),
        }
    }

    fn threshold(&self, who: &Offender) -> f64 {
        match who {
            Offender::Peer(_) => self.peer_threshold,
            Offender::Address(_) => self.address_threshold,
        }
    }

    /// How long the ban after `earlier` bans lasts: doubling each time,
    /// never past the cap (nor under the first ban's length).
    pub fn ban_length(&self, earlier: u32) -> u64 {
        let factor = 1u64 << earlier.min(32);
        self.ban_ms
            .saturating_mul(factor)
            .min(self.max_ban_ms.max(self.ban_ms))
    }
}

/// `strikes` after `elapsed_ms` of decay with the given half-life.
pub fn decayed(strikes: f64, elapsed_ms: u64, half_life_ms: u64) -> f64 {
    if half_life_ms == 0 || elapsed_ms == 0 {
        return strikes;
    }
    let halvings = elapsed_ms as f64 / half_life_ms as f64;
    strikes * 0.5f64.powf(halvings)
}

/// True if `strikes` ban at `threshold` (0: never). Strikes are rounded to
/// whole ones first, so that a burst of `threshold` strikes bans although
/// the first have decayed a little by the last; one strike per half-life
/// tends to 2 from below and never reaches a threshold of 3.
pub fn reaches(strikes: f64, threshold: f64) -> bool {
    threshold > 0.0 && strikes.round() >= threshold
}

/// What is known of one offender.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// Strikes toward the next ban, as of `updated`.
    pub strikes: f64,
    /// When `strikes` was computed.
    pub updated: UnixMillis,
    /// Bans so far.
    pub bans: u32,
    /// When the latest ban ends (or ended); 0 if none is known.
    pub banned_until: UnixMillis,
}

impl Standing {
    fn strikes_at(&self, now: UnixMillis, half_life_ms: u64) -> f64 {
        decayed(
            self.strikes,
            now.0.saturating_sub(self.updated.0),
            half_life_ms,
        )
    }
}

/// A ban just decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBan {
    /// Who.
    pub offender: Offender,
    /// Until when.
    pub until: UnixMillis,
    /// Why.
    pub reason: String,
    /// Which ban of this offender it is (1 for the first).
    pub nth: u32,
}

/// A strike or a ban as it happens, for whoever watches the network's
/// offences (the review queue): see [`crate::network::NodeHandle::offences`].
#[derive(Debug, Clone, PartialEq)]
pub enum OffenceEvent {
    /// A strike against a peer.
    Strike {
        /// The peer.
        peer: PeerId,
        /// Its weight: 1 for an invalid, forged or malformed message or
        /// request; a fraction for a request past the peer's budget.
        weight: f64,
        /// Why.
        reason: String,
    },
    /// A ban just decided.
    Ban(NewBan),
}

/// Strikes and bans of every offender the node remembers.
#[derive(Debug)]
pub struct Offences {
    policy: OffencePolicy,
    records: HashMap<Offender, Standing>,
    dirty: HashSet<Offender>,
}

impl Offences {
    /// Nobody struck yet.
    pub fn new(policy: OffencePolicy) -> Self {
        Offences {
            policy,
            records: HashMap::new(),
            dirty: HashSet::new(),
        }
    }

    /// Takes back what was stored before a restart (but nothing against
    /// an address trusted since).
    pub fn restore(&mut self, stored: impl IntoIterator<Item = (Offender, Standing)>) {
        for (offender, standing) in stored {
            if !self.trusted(&offender) {
                self.records.insert(offender, standing);
            }
        }
    }

    /// True if `who` is banned at `now`.
    pub fn is_banned(&self, who: &Offender, now: UnixMillis) -> bool {
        self.records.get(who).is_some_and(|s| s.banned_until > now)
    }

    /// `who`'s strikes at `now`.
    pub fn strikes(&self, who: &Offender, now: UnixMillis) -> f64 {
        self.records
            .get(who)
            .map_or(0.0, |s| s.strikes_at(now, self.policy.half_life_ms))
    }

    /// What is known of `who`.
    pub fn standing(&self, who: &Offender) -> Option<&Standing> {
        self.records.get(who)
    }

    /// Bans in force at `now`, with their end.
    pub fn active_bans(&self, now: UnixMillis) -> Vec<(Offender, UnixMillis)> {
        self.records
            .iter()
            .filter(|(_, s)| s.banned_until > now)
            .map(|(o, s)| (*o, s.banned_until))
            .collect()
    }

    fn trusted(&self, who: &Offender) -> bool {
        matches!(who, Offender::Address(ip) if self.policy.trusted.contains(ip))
    }

    /// Adds a strike of `weight` against `who`; returns the ban if this
    /// strike crosses the threshold. Strikes against a banned or trusted
    /// offender are not counted.
    pub fn strike(
        &mut self,
        who: Offender,
        weight: f64,
        reason: &str,
        now: UnixMillis,
    ) -> Option<NewBan> {
        if self.trusted(&who) || self.is_banned(&who, now) || weight.is_nan() || weight <= 0.0 {
            return None;
        }
        self.make_room(&who, now);
        let half_life = self.policy.half_life_ms;
        let standing = self.records.entry(who).or_insert(Standing {
            strikes: 0.0,
            updated: now,
            bans: 0,
            banned_until: UnixMillis(0),
        });
        standing.strikes = standing.strikes_at(now, half_life) + weight;
        standing.updated = now;
        let strikes = standing.strikes;
        self.dirty.insert(who);
        if reaches(strikes, self.policy.threshold(&who)) {
            let why = format!("invalid messages or requests: {strikes:.1} strikes, last: {reason}");
            return self.ban(who, why, now);
        }
        None
    }

    /// Bans `who` now, whatever its strikes (`None` for a trusted
    /// address). A ban of an offender already banned extends it.
    pub fn ban(&mut self, who: Offender, reason: String, now: UnixMillis) -> Option<NewBan> {
        if self.trusted(&who) {
            return None;
        }
        self.make_room(&who, now);
        let length = {
            let earlier = self.records.get(&who).map_or(0, |s| s.bans);
            self.policy.ban_length(earlier)
        };
        let standing = self.records.entry(who).or_insert(Standing {
            strikes: 0.0,
            updated: now,
            bans: 0,
            banned_until: UnixMillis(0),
        });
        standing.bans = standing.bans.saturating_add(1);
        standing.strikes = 0.0;
        standing.updated = now;
        standing.banned_until = now.plus_ms(length).max(standing.banned_until);
        let ban = NewBan {
            offender: who,
            until: standing.banned_until,
            reason,
            nth: standing.bans,
        };
        self.dirty.insert(who);
        Some(ban)
    }

    /// Bans `who` until `until`, an operator's decision: whatever its
    /// strikes, and not shortening a longer ban already in force (lifting
    /// it is [`Offences::lift`]). `None` for a trusted address or an end
    /// not after `now`.
    pub fn ban_until(
        &mut self,
        who: Offender,
        until: UnixMillis,
        reason: String,
        now: UnixMillis,
    ) -> Option<NewBan> {
        if self.trusted(&who) || until <= now {
            return None;
        }
        self.make_room(&who, now);
        let standing = self.records.entry(who).or_insert(Standing {
            strikes: 0.0,
            updated: now,
            bans: 0,
            banned_until: UnixMillis(0),
        });
        standing.bans = standing.bans.saturating_add(1);
        standing.strikes = 0.0;
        standing.updated = now;
        standing.banned_until = until.max(standing.banned_until);
        let ban = NewBan {
            offender: who,
            until: standing.banned_until,
            reason,
            nth: standing.bans,
        };
        self.dirty.insert(who);
        Some(ban)
    }

    /// Lifts `who`'s ban now and clears its strikes (its ban count stays,
    /// so a later ban is still a repeat offender's); false if it was not
    /// banned.
    pub fn lift(&mut self, who: &Offender, now: UnixMillis) -> bool {
        let Some(standing) = self.records.get_mut(who) else {
            return false;
        };
        if standing.banned_until <= now {
            return false;
        }
        standing.banned_until = now;
        standing.strikes = 0.0;
        standing.updated = now;
        self.dirty.insert(*who);
        true
    }

    /// Forgets offenders whose strikes have decayed away and whose last
    /// ban ended more than the longest ban ago; they are handed to the
    /// store (as empty records) so it forgets them too.
    pub fn forget_stale(&mut self, now: UnixMillis) {
        let half_life = self.policy.half_life_ms;
        let memory = self.policy.max_ban_ms.max(self.policy.ban_ms);
        let stale: Vec<Offender> = self
            .records
            .iter()
            .filter(|(_, s)| {
                s.banned_until <= now
                    && s.strikes_at(now, half_life) < NEGLIGIBLE
                    && now.0.saturating_sub(s.banned_until.0.max(s.updated.0)) > memory
            })
            .map(|(o, _)| *o)
            .collect();
        for offender in stale {
            self.forget(offender);
        }
    }

    fn forget(&mut self, offender: Offender) {
        if let Some(standing) = self.records.get_mut(&offender) {
            standing.strikes = 0.0;
            standing.bans = 0;
        }
        // Kept zeroed until the store worker hears of it.
        self.dirty.insert(offender);
    }

    /// Before tracking a new offender at the cap, forgets the least
    /// suspect one: not banned, fewest strikes.
    fn make_room(&mut self, who: &Offender, now: UnixMillis) {
        if self.records.contains_key(who) || self.records.len() < self.policy.max_tracked {
            return;
        }
        let half_life = self.policy.half_life_ms;
        let victim = self
            .records
            .iter()
            .min_by(|(_, a), (_, b)| {
                let key = |s: &Standing| (s.banned_until > now, s.strikes_at(now, half_life));
                key(a)
                    .partial_cmp(&key(b))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .map(|(o, _)| *o);
        if let Some(victim) = victim {
            self.records.remove(&victim);
            self.dirty.insert(victim);
        }
    }

    /// Marks records as changed again (their write did not go through).
    pub fn mark_changed(&mut self, offenders: impl IntoIterator<Item = Offender>) {
        self.dirty.extend(offenders);
    }

    /// The records changed since the last call, for the store: an
    /// offender forgotten comes back with no strikes and no bans.
    pub fn take_changes(&mut self) -> Vec<(Offender, Standing)> {
        let mut out = Vec::with_capacity(self.dirty.len());
        for offender in self.dirty.drain() {
            match self.records.get(&offender) {
                Some(standing) => {
                    let forgotten = standing.bans == 0 && standing.strikes < NEGLIGIBLE;
                    out.push((offender, standing.clone()));
                    if forgotten && standing.banned_until.0 == 0 {
                        self.records.remove(&offender);
                    }
                }
                None => out.push((
                    offender,
                    Standing {
                        strikes: 0.0,
                        updated: UnixMillis(0),
                        bans: 0,
                        banned_until: UnixMillis(0),
                    },
                )),
            }
        }
        out
    }

    /// Offenders remembered.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True if none is remembered.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> OffencePolicy {
        OffencePolicy {
            peer_threshold: 3.0,
            address_threshold: 10.0,
            half_life_ms: 600_000,
            ban_ms: 3_600_000,
            max_ban_ms: 4 * 3_600_000,
            trusted: vec!["10.0.0.1".parse().unwrap()],
            max_tracked: 4,
        }
    }

    #[test]
    fn a_relayed_address_never_names_the_relay_as_the_offender() {
        let direct: Multiaddr = "/ip4/10.0.0.7/tcp/4600".parse().unwrap();
        assert_eq!(ip_of(&direct), Some("10.0.0.7".parse().unwrap()));
        let relay = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let relayed: Multiaddr = format!("/ip4/10.0.0.7/tcp/4600/p2p/{relay}/p2p-circuit")
            .parse()
            .unwrap();
        assert_eq!(ip_of(&relayed), None);
    }

    fn peer() -> Offender {
        Offender::Peer(PeerId::random())
    }

    #[test]
    fn offenders_round_trip_through_bytes() {
        for who in [
            peer(),
            Offender::Address("127.0.0.1".parse().unwrap()),
            Offender::Address("::1".parse().unwrap()),
        ] {
            assert_eq!(Offender::from_bytes(&who.to_bytes()), Some(who));
        }
        assert_eq!(Offender::from_bytes(&[]), None);
        assert_eq!(Offender::from_bytes(&[0xff, 1, 2]), None);
        let with_port: Multiaddr = "/ip4/1.2.3.4/tcp/80".parse().unwrap();
        assert_eq!(Offender::from_bytes(&with_port.to_vec()), None);
    }

    #[test]
    fn three_quick_strikes_ban_and_the_ban_escalates() {
        let mut o = Offences::new(policy());
        let who = peer();
        let now = UnixMillis(1_000_000);
        assert!(o.strike(who, 1.0, "bad_signature", now).is_none());
        assert!(o.strike(who, 1.0, "bad_signature", now).is_none());
        let ban = o.strike(who, 1.0, "bad_signature", now).unwrap();
        assert_eq!(ban.until, now.plus_ms(3_600_000));
        assert_eq!(ban.nth, 1);
        assert!(o.is_banned(&who, now));
        // Strikes while banned do not count.
        assert!(o.strike(who, 5.0, "x", now).is_none());
        let later = ban.until;
        assert!(!o.is_banned(&who, later));
        let second = o.ban(who, "again".into(), later).unwrap();
        assert_eq!(second.until, later.plus_ms(7_200_000));
        let third = o.ban(who, "again".into(), second.until).unwrap();
        assert_eq!(third.until, second.until.plus_ms(4 * 3_600_000));
        let fourth = o.ban(who, "again".into(), third.until).unwrap();
        assert_eq!(fourth.until, third.until.plus_ms(4 * 3_600_000), "capped");
    }

    #[test]
    fn strikes_decay_so_rare_errors_never_ban() {
        let mut o = Offences::new(policy());
        let who = peer();
        let mut now = UnixMillis(0);
        for _ in 0..1000 {
            assert!(o.strike(who, 1.0, "rare", now).is_none());
            now = now.plus_ms(600_000);
        }
        // One strike each half-life converges to 2 strikes, under 3.
        assert!(o.strikes(&who, now) < 2.0);
        // Three strikes a minute apart still ban (the decay between them
        // is rounded away).
        let burst = peer();
        assert!(o.strike(burst, 1.0, "x", now).is_none());
        assert!(o.strike(burst, 1.0, "x", now.plus_ms(60_000)).is_none());
        assert!(o.strike(burst, 1.0, "x", now.plus_ms(120_000)).is_some());
        let fresh = peer();
        o.strike(fresh, 2.0, "x", UnixMillis(0));
        assert!((o.strikes(&fresh, UnixMillis(600_000)) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn trusted_addresses_are_never_banned_and_thresholds_of_zero_never_ban() {
        let mut o = Offences::new(policy());
        let trusted = Offender::Address("10.0.0.1".parse().unwrap());
        for _ in 0..100 {
            assert!(o.strike(trusted, 1.0, "x", UnixMillis(5)).is_none());
        }
        assert!(o.ban(trusted, "x".into(), UnixMillis(5)).is_none());
        let mut never = Offences::new(OffencePolicy {
            peer_threshold: 0.0,
            ..policy()
        });
        let who = peer();
        for _ in 0..100 {
            assert!(never.strike(who, 1.0, "x", UnixMillis(5)).is_none());
        }
    }

    #[test]
    fn an_operator_ban_lasts_as_asked_never_shortens_and_lifts() {
        let mut o = Offences::new(policy());
        let who = peer();
        let now = UnixMillis(1_000);
        let ban = o
            .ban_until(who, now.plus_ms(500), "spam".into(), now)
            .unwrap();
        assert_eq!(ban.until, now.plus_ms(500));
        assert!(o.is_banned(&who, now));
        // A shorter one keeps the longer end.
        let again = o.ban_until(who, now.plus_ms(100), "x".into(), now).unwrap();
        assert_eq!(again.until, now.plus_ms(500));
        assert!(o.ban_until(who, now, "ends now".into(), now).is_none());
        let trusted = Offender::Address("10.0.0.1".parse().unwrap());
        assert!(o
            .ban_until(trusted, now.plus_ms(500), "x".into(), now)
            .is_none());
        assert!(o.lift(&who, now.plus_ms(10)));
        assert!(!o.is_banned(&who, now.plus_ms(10)));
        assert!(!o.lift(&who, now.plus_ms(10)), "nothing left to lift");
        assert!(!o.lift(&peer(), now), "never banned");
        assert_eq!(o.standing(&who).unwrap().bans, 2);
    }

    #[test]
    fn the_cap_forgets_the_least_suspect_first() {
        let mut o = Offences::new(policy());
        let now = UnixMillis(10);
        let banned = peer();
        o.ban(banned, "x".into(), now);
        let mild = peer();
        o.strike(mild, 0.1, "x", now);
        for _ in 0..5 {
            o.strike(peer(), 1.0, "x", now);
        }
        assert_eq!(o.len(), 4);
        assert!(o.is_banned(&banned, now));
        assert!(o.standing(&mild).is_none());
    }

    #[test]
    fn stale_offenders_are_forgotten_and_reported_empty() {
        let mut o = Offences::new(policy());
        let who = peer();
        o.strike(who, 1.0, "x", UnixMillis(0));
        assert_eq!(o.take_changes().len(), 1);
        let much_later = UnixMillis(365 * 24 * 3_600_000);
        o.forget_stale(much_later);
        let changes = o.take_changes();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].1.bans, 0);
        assert!(o.is_empty());
    }

    proptest! {
        #[test]
        fn decay_never_grows_never_goes_negative_and_halves(
            strikes in 0.0f64..1e6,
            elapsed in 0u64..10_000_000_000,
            half_life in 1u64..100_000_000,
        ) {
            let d = decayed(strikes, elapsed, half_life);
            prop_assert!(d >= 0.0);
            prop_assert!(d <= strikes);
            let twice = decayed(decayed(strikes, elapsed, half_life), elapsed, half_life);
            let once = decayed(strikes, elapsed.saturating_mul(2), half_life);
            prop_assert!((twice - once).abs() <= 1e-6 * strikes.max(1.0));
        }

        #[test]
        fn ban_length_doubles_within_its_bounds(earlier in 0u32..100, ban in 1u64..1_000_000, cap in 0u64..100_000_000) {
            let p = OffencePolicy { ban_ms: ban, max_ban_ms: cap, ..policy() };
            let len = p.ban_length(earlier);
            prop_assert!(len >= ban);
            prop_assert!(len <= cap.max(ban));
            prop_assert!(p.ban_length(earlier.saturating_add(1)) >= len);
        }

        #[test]
        fn a_peer_is_banned_exactly_when_its_decayed_strikes_reach_the_threshold(
            gaps in proptest::collection::vec(0u64..2_000_000, 1..40),
        ) {
            let mut o = Offences::new(policy());
            let who = peer();
            let mut now = UnixMillis(0);
            let mut expected = 0.0f64;
            let mut last = UnixMillis(0);
            for gap in gaps {
                now = now.plus_ms(gap);
                expected = decayed(expected, now.0 - last.0, 600_000) + 1.0;
                last = now;
                let ban = o.strike(who, 1.0, "x", now);
                prop_assert_eq!(ban.is_some(), expected.round() >= 3.0);
                if ban.is_some() {
                    break;
                }
            }
        }
    }
}
