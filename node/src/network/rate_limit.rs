//! Per-peer request budgets: one token bucket per peer and per
//! request-response protocol (governor's keyed GCRA limiter), checked by
//! the swarm task before a request reaches the application or the store.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use libp2p::PeerId;

use super::config::{RequestLimits, RequestRate};
use super::handle::Protocol;

type Bucket<C> =
    RateLimiter<PeerId, HashMapStateStore<PeerId>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The buckets of every peer, per protocol; a protocol whose rate is 0 is
/// not limited.
pub struct RequestLimiter<C: Clock = DefaultClock> {
    lease: Option<Bucket<C>>,
    coordinator: Option<Bucket<C>>,
    sync: Option<Bucket<C>>,
}

impl<C: Clock> std::fmt::Debug for RequestLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLimiter").finish_non_exhaustive()
    }
}

fn quota(rate: RequestRate) -> Option<Quota> {
    let per_second = NonZeroU32::new(rate.per_second)?;
    let burst = NonZeroU32::new(rate.burst.max(rate.per_second)).unwrap_or(per_second);
    Some(Quota::per_second(per_second).allow_burst(burst))
}

impl RequestLimiter<DefaultClock> {
    /// Buckets for `limits` on the system clock.
    pub fn new(limits: &RequestLimits) -> Self {
        Self::with_clock(limits, &DefaultClock::default())
    }
}

impl<C: Clock + Clone> RequestLimiter<C> {
    /// Buckets for `limits` on `clock` (tests use a fake one).
    pub fn with_clock(limits: &RequestLimits, clock: &C) -> Self {
        let bucket = |rate| quota(rate).map(|q| RateLimiter::hashmap_with_clock(q, clock.clone()));
        RequestLimiter {
            lease: bucket(limits.lease),
            coordinator: bucket(limits.coordinator),
            sync: bucket(limits.sync),
        }
    }
}

impl<C: Clock> RequestLimiter<C> {
    fn bucket(&self, protocol: Protocol) -> Option<&Bucket<C>> {
        match protocol {
            Protocol::Lease => self.lease.as_ref(),
            Protocol::Coordinator => self.coordinator.as_ref(),
            Protocol::Sync => self.sync.as_ref(),
        }
    }

    /// Takes one request from `peer`'s bucket for `protocol`; false if the
    /// bucket is empty (the request must be refused).
    pub fn allow(&self, peer: &PeerId, protocol: Protocol) -> bool {
        self.bucket(protocol)
            .is_none_or(|bucket| bucket.check_key(peer).is_ok())
    }

    /// Drops the buckets of peers that have refilled completely: they hold
    /// nothing a new bucket would not, so memory follows active peers only.
    pub fn forget_idle(&self) {
        for bucket in [&self.lease, &self.coordinator, &self.sync]
            .into_iter()
            .flatten()
        {
            bucket.retain_recent();
            bucket.shrink_to_fit();
        }
    }

    /// Peers with a bucket, over every protocol.
    pub fn tracked(&self) -> usize {
        [&self.lease, &self.coordinator, &self.sync]
            .into_iter()
            .flatten()
            .map(|b| b.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;
    use proptest::prelude::*;

    use super::*;

    fn limits(per_second: u32, burst: u32) -> RequestLimits {
        let rate = RequestRate { per_second, burst };
        RequestLimits {
            lease: rate,
            coordinator: rate,
            sync: RequestRate {
                per_second: 0,
                burst: 0,
            },
        }
    }

    #[test]
    fn a_peer_gets_its_burst_then_the_refill_and_others_are_untouched() {
        let clock = FakeRelativeClock::default();
        let limiter = RequestLimiter::with_clock(&limits(2, 5), &clock);
        let (flooder, honest) = (PeerId::random(), PeerId::random());
        for _ in 0..5 {
            assert!(limiter.allow(&flooder, Protocol::Lease));
        }
        assert!(!limiter.allow(&flooder, Protocol::Lease));
        // Another protocol and another peer have their own buckets.
        assert!(limiter.allow(&flooder, Protocol::Coordinator));
        assert!(limiter.allow(&honest, Protocol::Lease));
        // Sync is unlimited here.
        for _ in 0..1000 {
            assert!(limiter.allow(&flooder, Protocol::Sync));
        }
        clock.advance(Duration::from_millis(500));
        assert!(limiter.allow(&flooder, Protocol::Lease));
        assert!(!limiter.allow(&flooder, Protocol::Lease));
        clock.advance(Duration::from_secs(10));
        limiter.forget_idle();
        assert_eq!(limiter.tracked(), 0, "refilled buckets are dropped");
    }

    proptest! {
        #[test]
        fn over_any_window_a_peer_gets_at_most_burst_plus_refill(
            per_second in 1u32..50,
            burst in 1u32..100,
            steps in proptest::collection::vec(0u64..200, 1..300),
        ) {
            let clock = FakeRelativeClock::default();
            let limiter = RequestLimiter::with_clock(&limits(per_second, burst), &clock);
            let peer = PeerId::random();
            let mut allowed = 0u64;
            let mut elapsed_ms = 0u64;
            for step in steps {
                clock.advance(Duration::from_millis(step));
                elapsed_ms += step;
                if limiter.allow(&peer, Protocol::Coordinator) {
                    allowed += 1;
                }
            }
            let bucket = u64::from(burst.max(per_second));
            let refill = elapsed_ms * u64::from(per_second) / 1000 + 1;
            prop_assert!(allowed <= bucket + refill);
        }
    }
}
