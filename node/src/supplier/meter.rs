//! Metering a lease: GPU samples in, one signed `UsageAttestation` per
//! window out, each chained to the previous by id.
//!
//! The billing rule: a leased GPU is billable for the time between two
//! consecutive samples when neither says the GPU was lost, and only inside
//! the lease (`starts_at..ends_at`). So a GPU that drops out stops billing
//! at its last healthy sample, and billing resumes only from the first
//! healthy sample after it returns. An interval that crosses a window's end
//! is split there: the part after it is carried into the next window, so
//! every millisecond is billed in exactly one window.

use std::collections::BTreeMap;

use rigmesh_protocol::{
    GpuUsage, Id, Keypair, LeaseAgreement, PublicKey, Signed, UnixMillis, UsageAttestation,
    PROTOCOL_VERSION,
};

use crate::error::{Error, Result};
use crate::telemetry::{GpuHealth, GpuSample};

/// Something the meter noticed that the owner should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeterEvent {
    /// A leased GPU stopped answering; billing stopped at `last_healthy`.
    GpuLost {
        /// Device index.
        gpu: u32,
        /// Its last healthy sample.
        last_healthy: UnixMillis,
    },
    /// A leased GPU came back.
    GpuBack {
        /// Device index.
        gpu: u32,
        /// When it answered again.
        at: UnixMillis,
    },
}

#[derive(Debug, Clone, Default)]
struct GpuWindow {
    billable_ms: u64,
    /// Sum of utilisation (bp) x interval (ms), for a time-weighted mean.
    util_weighted: u128,
    peak_util_bp: u16,
    peak_memory_mib: u64,
    energy_mj: u64,
    /// Billable time after the window's end, carried into the next one.
    carry_ms: u64,
    /// Utilisation x time of the carried part.
    carry_util: u128,
    /// The previous sample: time, alive, energy counter.
    last: Option<(UnixMillis, bool, Option<u64>)>,
}

/// The meter of one lease.
#[derive(Debug)]
pub struct Meter {
    key: Keypair,
    lease: Id,
    customer: PublicKey,
    starts_at: UnixMillis,
    ends_at: UnixMillis,
    window_ms: u64,
    window_start: UnixMillis,
    seq: u64,
    prev: Id,
    gpus: BTreeMap<u32, GpuWindow>,
    price: rigmesh_protocol::Credits,
    /// The escrow that pays the lease, when it is less than the whole
    /// lease: metering stops once the attested windows cost it.
    escrow: Option<rigmesh_protocol::Credits>,
    attested_gpu_ms: u64,
    /// Windows `0..answered` have an answer (ack or dispute) heard here.
    answered: u64,
    /// Since when an attested window has waited for its answer.
    silent_since: Option<UnixMillis>,
}

impl Meter {
    /// A meter for `agreement`, signing with the supplier's `key`.
    pub fn new(agreement: &Signed<LeaseAgreement>, key: Keypair) -> Result<Self> {
        if agreement.body.supplier != key.public() {
            return Err(Error::Config("the agreement names another supplier".into()));
        }
        Ok(Meter {
            lease: agreement.id()?,
            customer: agreement.body.proposal.body.customer,
            starts_at: agreement.body.starts_at,
            ends_at: agreement.body.ends_at,
            window_ms: agreement.body.window_ms(),
            window_start: agreement.body.starts_at,
            seq: 0,
            prev: Id::ZERO,
            gpus: agreement
                .body
                .gpu_indices
                .iter()
                .map(|i| (u32::from(*i), GpuWindow::default()))
                .collect(),
            price: agreement.body.proposal.body.price_per_gpu_hour,
            escrow: None,
            attested_gpu_ms: 0,
            answered: 0,
            silent_since: None,
            key,
        })
    }

    /// Meters no further than `escrow` pays: once the attested windows
    /// cost that much, the lease is over (no coordinator pays past it).
    pub fn with_escrow(mut self, escrow: rigmesh_protocol::Credits) -> Self {
        self.escrow = Some(escrow);
        self
    }

    /// Adds a top-up to the escrow (the customer raised its cap); false
    /// when metering is already over, since nothing more is attested then.
    pub fn top_up(&mut self, amount: rigmesh_protocol::Credits) -> bool {
        if self.finished() {
            return false;
        }
        if let Some(escrow) = self.escrow {
            match escrow.checked_add(amount) {
                Some(total) => self.escrow = Some(total),
                None => return false,
            }
        }
        true
    }

    /// The customer answered window `seq` (acked or disputed it).
    pub fn answered(&mut self, seq: u64, now: UnixMillis) {
        if seq < self.seq && seq >= self.answered {
            self.answered = seq + 1;
            // Progress: the wait starts again for what is still open.
            self.silent_since = (self.answered < self.seq).then_some(now);
        }
    }

    /// How long attested windows have gone without any answer, ms.
    pub fn silent_ms(&self, now: UnixMillis) -> u64 {
        self.silent_since.map_or(0, |since| now.since(since))
    }

    /// True once the attested windows cost all the escrow.
    fn escrow_spent(&self) -> bool {
        self.escrow.is_some_and(|escrow| {
            rigmesh_ledger::billing::charge(self.price, self.attested_gpu_ms)
                .map_or(true, |cost| cost >= escrow)
        })
    }

    /// The lease id.
    pub fn lease(&self) -> Id {
        self.lease
    }

    /// When the current window ends (the sampler samples then).
    pub fn window_end(&self) -> UnixMillis {
        self.window_start.plus_ms(self.window_ms).min(self.ends_at)
    }

    /// The lease's customer.
    pub fn customer(&self) -> PublicKey {
        self.customer
    }

    /// Ends the lease at the end of the window in progress (a signed
    /// termination): that window is attested as the last one.
    pub fn end_after_current_window(&mut self) {
        self.ends_at = self.window_end();
    }

    /// True when the lease ends with the window in progress.
    pub fn ending(&self) -> bool {
        self.ends_at <= self.window_end()
    }

    /// The length of a metering window, ms.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// True once every window of the lease has been attested, or the
    /// escrow is spent.
    pub fn finished(&self) -> bool {
        self.window_start >= self.ends_at || self.escrow_spent()
    }

    /// Whether any of the lease's GPUs was lost at its last sample.
    pub fn any_gpu_lost(&self) -> bool {
        self.gpus
            .values()
            .any(|g| g.last.is_some_and(|(_, alive, _)| !alive))
    }

    /// Takes one round of samples (samples of unleased GPUs are ignored).
    pub fn record(&mut self, samples: &[GpuSample]) -> Vec<MeterEvent> {
        let mut events = Vec::new();
        let cut = self.window_end();
        for sample in samples {
            let Some(gpu) = self.gpus.get_mut(&sample.index) else {
                continue;
            };
            let t = sample.timestamp.max(self.starts_at).min(self.ends_at);
            let alive = sample.health != GpuHealth::Lost;
            if let Some((prev_t, prev_alive, prev_energy)) = gpu.last {
                if t < prev_t {
                    continue; // out of order: ignore rather than bill backwards
                }
                if prev_alive && alive {
                    let util = u128::from(sample.util_bp.unwrap_or(0));
                    let inside = t.min(cut).since(prev_t.min(cut));
                    let after = t.since(prev_t).saturating_sub(inside);
                    gpu.billable_ms += inside;
                    gpu.util_weighted += util * u128::from(inside);
                    gpu.carry_ms += after;
                    gpu.carry_util += util * u128::from(after);
                    if let (Some(a), Some(b)) = (prev_energy, sample.energy_mj) {
                        gpu.energy_mj += b.saturating_sub(a);
                    }
                }
                if prev_alive && !alive {
                    events.push(MeterEvent::GpuLost {
                        gpu: sample.index,
                        last_healthy: prev_t,
                    });
                }
                if !prev_alive && alive {
                    events.push(MeterEvent::GpuBack {
                        gpu: sample.index,
                        at: t,
                    });
                }
            }
            if alive {
                gpu.peak_util_bp = gpu.peak_util_bp.max(sample.util_bp.unwrap_or(0));
                gpu.peak_memory_mib = gpu.peak_memory_mib.max(sample.memory_used_mib.unwrap_or(0));
            }
            gpu.last = Some((t, alive, sample.energy_mj));
        }
        events
    }

    /// Closes the current window (its end must have been sampled) and signs
    /// its attestation, chained to the previous one.
    pub fn close_window(&mut self, created_at: UnixMillis) -> Result<Signed<UsageAttestation>> {
        let end = self.window_end();
        let window_ms = end.since(self.window_start);
        let mut usage = Vec::with_capacity(self.gpus.len());
        for (index, gpu) in &mut self.gpus {
            let mean = if gpu.billable_ms == 0 {
                0
            } else {
                u16::try_from(gpu.util_weighted / u128::from(gpu.billable_ms)).unwrap_or(10_000)
            };
            usage.push(GpuUsage {
                gpu_index: u16::try_from(*index).unwrap_or(u16::MAX),
                billable_ms: gpu.billable_ms.min(window_ms),
                mean_util_bp: mean.min(gpu.peak_util_bp),
                peak_util_bp: gpu.peak_util_bp,
                peak_memory_mib: gpu.peak_memory_mib,
                energy_mj: gpu.energy_mj,
            });
            // The last sample starts the next window, with what was carried.
            *gpu = GpuWindow {
                last: gpu.last,
                billable_ms: gpu.carry_ms,
                util_weighted: gpu.carry_util,
                ..GpuWindow::default()
            };
        }
        let body = UsageAttestation {
            version: PROTOCOL_VERSION,
            lease: self.lease,
            supplier: self.key.public(),
            customer: self.customer,
            seq: self.seq,
            prev: self.prev,
            window_start: self.window_start,
            window_end: end,
            billable_gpu_ms: usage.iter().map(|g| g.billable_ms).sum(),
            gpus: usage,
            created_at: created_at.max(end),
        };
        let attestation = Signed::sign(body, &self.key)?;
        self.attested_gpu_ms = self
            .attested_gpu_ms
            .saturating_add(attestation.body.billable_gpu_ms);
        self.prev = attestation.id()?;
        self.seq += 1;
        self.window_start = end;
        if self.silent_since.is_none() {
            self.silent_since = Some(created_at);
        }
        Ok(attestation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supplier::desk::LeaseDesk;
    use crate::supplier::{build_offers, tests::priced};
    use crate::telemetry::{GpuSource, ManualClock, SimClock, SimFault, SimProfile, SimSource};
    use rigmesh_protocol::{Clock, Credits, LeaseProposal};
    use std::collections::BTreeSet;
    use std::sync::Arc;

    const T0: UnixMillis = UnixMillis(1_800_000_000_000);

    /// A lease of 2 GPUs for 1 hour with 60 s windows on `profile`, then
    /// `windows` windows metered with a sample every second.
    fn run_lease(
        profile: SimProfile,
        windows: u64,
    ) -> (
        Vec<Signed<UsageAttestation>>,
        Vec<MeterEvent>,
        Signed<LeaseAgreement>,
    ) {
        run_escrowed_lease(profile, windows, None)
    }

    /// As `run_lease`, metering no further than `escrow` pays.
    fn run_escrowed_lease(
        profile: SimProfile,
        windows: u64,
        escrow: Option<Credits>,
    ) -> (
        Vec<Signed<UsageAttestation>>,
        Vec<MeterEvent>,
        Signed<LeaseAgreement>,
    ) {
        let clock = Arc::new(ManualClock::new(T0));
        let mut sim = SimSource::with_clock(profile, clock.clone()).unwrap();
        let devices = sim.devices().unwrap();
        let key = Keypair::from_seed([5; 32]);
        let offers = build_offers(
            &devices,
            &BTreeSet::new(),
            &priced(&devices[0].name, "2.40"),
            &key,
            1,
            T0,
        )
        .unwrap();
        let offer = offers[0].offer.clone();
        let mut desk = LeaseDesk::new(key.clone());
        desk.set_offers(offers).unwrap();
        let customer = Keypair::from_seed([9; 32]);
        let proposal = Signed::sign(
            LeaseProposal {
                version: PROTOCOL_VERSION,
                customer: customer.public(),
                supplier: key.public(),
                offer: offer.id().unwrap(),
                gpu_count: 2,
                price_per_gpu_hour: Credits::from_units(2_400_000),
                hours: 1,
                window_secs: 60,
                nonce: 7,
                created_at: T0,
                expires_at: T0.plus_ms(60_000),
            },
            &customer,
        )
        .unwrap();
        let agreement = desk.answer(&proposal, T0).unwrap();
        let mut meter = Meter::new(&agreement, key).unwrap();
        if let Some(escrow) = escrow {
            meter = meter.with_escrow(escrow);
        }
        let mut attestations = Vec::new();
        let mut events = Vec::new();
        events.extend(meter.record(&sim.sample().unwrap()));
        for _ in 0..windows {
            if meter.finished() {
                break;
            }
            while clock.now() < meter.window_end() {
                clock.advance(1000);
                events.extend(meter.record(&sim.sample().unwrap()));
            }
            attestations.push(meter.close_window(clock.now()).unwrap());
        }
        (attestations, events, agreement)
    }

    #[test]
    fn silence_is_timed_from_the_oldest_unanswered_window() {
        let (chain, _, agreement) =
            run_escrowed_lease(SimProfile::builtin("h100x8").unwrap(), 0, None);
        assert!(chain.is_empty());
        let mut meter = Meter::new(&agreement, Keypair::from_seed([5; 32])).unwrap();
        assert_eq!(meter.silent_ms(T0.plus_ms(600_000)), 0, "nothing attested");
        let at = |s: u64| T0.plus_ms(s * 1000);
        meter.close_window(at(60)).unwrap();
        meter.close_window(at(120)).unwrap();
        assert_eq!(
            meter.silent_ms(at(150)),
            90_000,
            "since window 0 was attested"
        );
        // An answer to window 0 restarts the wait for window 1 ...
        meter.answered(0, at(130));
        assert_eq!(meter.silent_ms(at(150)), 20_000);
        // ... an old or repeated answer changes nothing, and once every
        // attested window is answered, nothing waits.
        meter.answered(0, at(140));
        assert_eq!(meter.silent_ms(at(150)), 20_000);
        meter.answered(1, at(145));
        assert_eq!(meter.silent_ms(at(600)), 0);
        // An answer to a window not attested yet counts for nothing.
        meter.answered(7, at(146));
        meter.close_window(at(180)).unwrap();
        assert_eq!(meter.silent_ms(at(200)), 20_000);
        assert!(!meter.ending());
        meter.end_after_current_window();
        assert!(meter.ending());
    }

    #[test]
    fn an_escrow_below_the_lease_cost_ends_metering_once_it_is_spent() {
        // 2 GPUs x 60 s x 2.40 per GPU-hour = 0.08 a window: 0.20 is spent
        // within the third window, so the lease ends there.
        let escrow: Credits = "0.20".parse().unwrap();
        let (chain, _, _) =
            run_escrowed_lease(SimProfile::builtin("h100x8").unwrap(), 10, Some(escrow));
        assert_eq!(chain.len(), 3);
        let billed: u64 = chain.iter().map(|a| a.body.billable_gpu_ms).sum();
        assert!(
            rigmesh_ledger::billing::charge(Credits::from_units(2_400_000), billed).unwrap()
                >= escrow
        );
        let (full, _, _) = run_escrowed_lease(SimProfile::builtin("h100x8").unwrap(), 10, None);
        assert_eq!(full.len(), 10, "without an escrow cap the lease runs on");
    }

    #[test]
    fn healthy_gpus_bill_every_millisecond_in_a_valid_chain() {
        let (chain, events, agreement) = run_lease(SimProfile::builtin("h100x8").unwrap(), 3);
        assert!(events.is_empty());
        let lease = agreement.id().unwrap();
        let mut prev = Id::ZERO;
        for (seq, a) in chain.iter().enumerate() {
            a.verify(&Clock::at(a.body.created_at)).unwrap();
            assert_eq!(a.body.lease, lease);
            assert_eq!(a.body.seq, seq as u64);
            assert_eq!(a.body.prev, prev);
            assert_eq!(a.body.window_start, T0.plus_ms(seq as u64 * 60_000));
            assert_eq!(a.body.window_end, T0.plus_ms((seq as u64 + 1) * 60_000));
            assert_eq!(a.body.gpus.len(), 2);
            for gpu in &a.body.gpus {
                assert_eq!(
                    gpu.billable_ms, 60_000,
                    "a healthy GPU bills the whole window"
                );
                assert!(gpu.peak_util_bp >= gpu.mean_util_bp);
                assert!(gpu.energy_mj > 0);
            }
            assert_eq!(a.body.billable_gpu_ms, 120_000);
            prev = a.id().unwrap();
        }
    }

    #[test]
    fn samples_off_the_window_boundary_are_split_at_it() {
        let clock = Arc::new(ManualClock::new(T0));
        let (_, _, agreement) = run_lease(SimProfile::builtin("h100x8").unwrap(), 0);
        let mut sim =
            SimSource::with_clock(SimProfile::builtin("h100x8").unwrap(), clock.clone()).unwrap();
        let mut meter = Meter::new(&agreement, Keypair::from_seed([5; 32])).unwrap();
        meter.record(&sim.sample().unwrap());
        // Samples every 7 s: none lands on the 60 s boundary.
        let mut windows = Vec::new();
        while windows.len() < 2 {
            clock.advance(7_000);
            meter.record(&sim.sample().unwrap());
            if clock.now() >= meter.window_end() {
                windows.push(meter.close_window(clock.now()).unwrap());
            }
        }
        for w in &windows {
            assert_eq!(w.body.gpus[0].billable_ms, 60_000, "window {}", w.body.seq);
        }
    }

    #[test]
    fn a_gpu_that_drops_out_stops_billing_at_its_last_healthy_sample() {
        // GPU 1 (leased) falls off the bus 90 s into the lease.
        let profile = SimProfile::builtin("h100x8")
            .unwrap()
            .with_fault(SimFault::Dropout { gpu: 1, at_s: 90 });
        let (chain, events, _) = run_lease(profile, 3);
        let billed = |w: usize, gpu: u16| {
            chain[w]
                .body
                .gpus
                .iter()
                .find(|g| g.gpu_index == gpu)
                .unwrap()
                .billable_ms
        };
        assert_eq!((billed(0, 0), billed(0, 1)), (60_000, 60_000));
        // The sample at 90 s reads lost, so billing stopped at 89 s.
        assert_eq!((billed(1, 0), billed(1, 1)), (60_000, 29_000));
        assert_eq!((billed(2, 0), billed(2, 1)), (60_000, 0));
        assert_eq!(
            events,
            vec![MeterEvent::GpuLost {
                gpu: 1,
                last_healthy: T0.plus_ms(89_000)
            }]
        );
    }
}
