//! Simulated GPUs: a [`SimSource`] turns a [`SimProfile`] into inventory and
//! samples as a pure function of time since start (plus an energy counter
//! that accumulates between samples). Time comes from a [`SimClock`], so
//! tests drive it with a [`ManualClock`] or call [`SimSource::sample_at`]
//! directly and never sleep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rigmesh_protocol::UnixMillis;

use super::profile::{SimFault, SimGpuSpec, SimProfile, UtilPattern};
use super::{
    GpuDevice, GpuHealth, GpuSample, GpuSource, ProcessUsage, Result, SourceKind, FULL_UTIL_BP,
};

/// Temperature of an idle simulated GPU, Celsius.
const IDLE_TEMPERATURE_C: u32 = 30;
/// Temperature rise at full utilisation, Celsius.
const LOAD_TEMPERATURE_RISE_C: u32 = 45;
/// SM clock of an idle simulated GPU, MHz.
const IDLE_SM_CLOCK_MHZ: u32 = 210;
/// First simulated process id; GPU `i` runs process `SIM_PID_BASE + i`.
const SIM_PID_BASE: u32 = 100_000;

/// Where a simulator reads the time.
pub trait SimClock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> UnixMillis;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SimClock for SystemClock {
    fn now(&self) -> UnixMillis {
        UnixMillis::now()
    }
}

/// A clock that moves only when told; clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: UnixMillis) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start.0)))
    }

    /// Sets the time.
    pub fn set(&self, now: UnixMillis) {
        self.0.store(now.0, Ordering::SeqCst);
    }

    /// Moves the time forward by `ms` milliseconds.
    pub fn advance(&self, ms: u64) {
        // fetch_update never fails with a closure that always returns Some.
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(ms))
            });
    }
}

impl SimClock for ManualClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.0.load(Ordering::SeqCst))
    }
}

/// One simulated GPU: its fixed identity and its energy counter.
#[derive(Debug)]
struct SimGpu {
    device: GpuDevice,
    spec: SimGpuSpec,
    energy_mj: u64,
    energy_at: u64,
}

/// GPUs simulated from a profile.
#[derive(Debug)]
pub struct SimSource {
    profile: SimProfile,
    gpus: Vec<SimGpu>,
    clock: Arc<dyn SimClock>,
    start: UnixMillis,
    label: String,
}

impl SimSource {
    /// A simulator on the wall clock, starting now.
    pub fn new(profile: SimProfile) -> Result<Self> {
        SimSource::with_clock(profile, Arc::new(SystemClock))
    }

    /// A simulator on `clock`, starting at the clock's current time.
    pub fn with_clock(profile: SimProfile, clock: Arc<dyn SimClock>) -> Result<Self> {
        profile.validate()?;
        let start = clock.now();
        let mut gpus = Vec::new();
        let mut index: u32 = 0;
        for spec in &profile.gpus {
            for _ in 0..spec.count {
                gpus.push(SimGpu {
                    device: sim_device(&profile, spec, index),
                    spec: spec.clone(),
                    energy_mj: 0,
                    energy_at: 0,
                });
                index = index.saturating_add(1);
            }
        }
        let label = summarise(&profile);
        Ok(SimSource {
            profile,
            gpus,
            clock,
            start,
            label,
        })
    }

    /// A built-in profile (see [`super::BUILTIN_PROFILES`]) on the wall clock.
    pub fn builtin(name: &str) -> Result<Self> {
        SimSource::new(SimProfile::builtin(name)?)
    }

    /// When the simulation started; fault and pattern times count from here.
    pub fn start(&self) -> UnixMillis {
        self.start
    }

    /// The profile being simulated.
    pub fn profile(&self) -> &SimProfile {
        &self.profile
    }

    /// The GPUs present at `now`: every GPU of the profile that has not
    /// dropped out yet.
    pub fn devices_at(&self, now: UnixMillis) -> Vec<GpuDevice> {
        let elapsed = now.since(self.start);
        self.gpus
            .iter()
            .filter(|gpu| !self.dropped(gpu.device.index, elapsed))
            .map(|gpu| gpu.device.clone())
            .collect()
    }

    /// One sample per GPU of the profile at `now`. Samples taken in time
    /// order make the energy counter grow; one taken earlier than the
    /// previous leaves it as it was.
    pub fn sample_at(&mut self, now: UnixMillis) -> Vec<GpuSample> {
        let elapsed = now.since(self.start);
        let profile = &self.profile;
        let mut samples = Vec::with_capacity(self.gpus.len());
        for gpu in &mut self.gpus {
            let index = gpu.device.index;
            let faults = Faults::at(profile, index, elapsed);
            if faults.dropped {
                samples.push(GpuSample::lost(now, index, gpu.device.uuid.clone()));
                continue;
            }
            let pattern = gpu
                .spec
                .utilisation
                .as_ref()
                .unwrap_or(&profile.utilisation);
            let true_bp = pattern.value_bp(elapsed);
            let reported_bp = match faults.stuck {
                Some((_, Some(pct))) => u16::from(pct.min(100)) * 100,
                Some((since_ms, None)) => pattern.value_bp(since_ms),
                None => true_bp,
            };

            let power_mw = power_mw(&gpu.spec, true_bp);
            if elapsed > gpu.energy_at {
                let dt_ms = elapsed - gpu.energy_at;
                // mW * ms = microjoules.
                let added = u64::from(power_mw).saturating_mul(dt_ms) / 1000;
                gpu.energy_mj = gpu.energy_mj.saturating_add(added);
                gpu.energy_at = elapsed;
            }

            let memory_used_mib = share(gpu.spec.memory_mib, true_bp);
            let mut temperature_c =
                IDLE_TEMPERATURE_C + LOAD_TEMPERATURE_RISE_C * u32::from(true_bp) / 10_000;
            let mut sm_clock_mhz = if true_bp == 0 {
                IDLE_SM_CLOCK_MHZ
            } else {
                gpu.spec.sm_clock_mhz
            };
            let mut reasons = Vec::new();
            if let Some(hot_c) = faults.overheat_c {
                temperature_c = hot_c;
                sm_clock_mhz /= 2;
                reasons.push(format!(
                    "overheating at {hot_c} C: hardware thermal slowdown"
                ));
            }
            let ecc_uncorrected = faults.ecc.unwrap_or(0);
            if ecc_uncorrected > 0 {
                reasons.push(format!("{ecc_uncorrected} uncorrected ECC errors"));
            }
            let health = if reasons.is_empty() {
                GpuHealth::Healthy
            } else {
                GpuHealth::Degraded {
                    reason: reasons.join("; "),
                }
            };
            let processes = if true_bp > 0 {
                vec![ProcessUsage {
                    pid: SIM_PID_BASE.saturating_add(index),
                    used_memory_mib: Some(memory_used_mib),
                    sm_util_bp: Some(true_bp),
                }]
            } else {
                Vec::new()
            };
            samples.push(GpuSample {
                timestamp: now,
                index,
                uuid: gpu.device.uuid.clone(),
                util_bp: Some(reported_bp),
                memory_used_mib: Some(memory_used_mib),
                power_mw: Some(power_mw),
                energy_mj: Some(gpu.energy_mj),
                temperature_c: Some(temperature_c),
                sm_clock_mhz: Some(sm_clock_mhz),
                mem_clock_mhz: Some(gpu.spec.mem_clock_mhz),
                ecc_uncorrected: Some(ecc_uncorrected),
                xid_errors: Vec::new(),
                health,
                processes,
            });
        }
        samples
    }

    fn dropped(&self, index: u32, elapsed: u64) -> bool {
        Faults::at(&self.profile, index, elapsed).dropped
    }
}

impl GpuSource for SimSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Simulated
    }

    fn describe(&self) -> String {
        self.label.clone()
    }

    fn devices(&mut self) -> Result<Vec<GpuDevice>> {
        Ok(self.devices_at(self.clock.now()))
    }

    fn sample(&mut self) -> Result<Vec<GpuSample>> {
        let now = self.clock.now();
        Ok(self.sample_at(now))
    }
}

/// The faults in force on one GPU at one time.
#[derive(Debug, Default)]
struct Faults {
    dropped: bool,
    /// Since when (ms after start), and the forced value if one was given.
    stuck: Option<(u64, Option<u8>)>,
    overheat_c: Option<u32>,
    ecc: Option<u64>,
}

impl Faults {
    fn at(profile: &SimProfile, index: u32, elapsed: u64) -> Faults {
        let mut faults = Faults::default();
        for fault in &profile.faults {
            if fault.gpu() != index || fault.at_ms() > elapsed {
                continue;
            }
            match fault {
                SimFault::Dropout { .. } => faults.dropped = true,
                SimFault::StuckUtil { value_pct, .. } => {
                    // The earliest stuck fault wins: a stuck reading cannot
                    // get stuck again at another value.
                    let earlier = faults
                        .stuck
                        .is_some_and(|(since, _)| since <= fault.at_ms());
                    if !earlier {
                        faults.stuck = Some((fault.at_ms(), *value_pct));
                    }
                }
                SimFault::Overheat { temperature_c, .. } => {
                    faults.overheat_c = Some(faults.overheat_c.unwrap_or(0).max(*temperature_c));
                }
                SimFault::Ecc { uncorrected, .. } => {
                    faults.ecc = Some(faults.ecc.unwrap_or(0).max(*uncorrected));
                }
            }
        }
        faults
    }
}

fn power_mw(spec: &SimGpuSpec, util_bp: u16) -> u32 {
    let idle = u64::from(spec.idle_power_w) * 1000;
    let max = u64::from(spec.max_power_w) * 1000;
    let span = max.saturating_sub(idle);
    let mw = idle + span * u64::from(util_bp) / u64::from(FULL_UTIL_BP);
    u32::try_from(mw).unwrap_or(u32::MAX)
}

fn share(total: u64, util_bp: u16) -> u64 {
    let part = u128::from(total) * u128::from(util_bp) / u128::from(FULL_UTIL_BP);
    u64::try_from(part).unwrap_or(total)
}

fn sim_device(profile: &SimProfile, spec: &SimGpuSpec, index: u32) -> GpuDevice {
    let mut hasher = blake3::Hasher::new_derive_key("rigmesh sim gpu identity v1");
    hasher.update(&profile.seed.to_le_bytes());
    hasher.update(&index.to_le_bytes());
    hasher.update(spec.model.as_bytes());
    let id = hasher.finalize();
    let hex = id.to_hex();
    let h = hex.as_str();
    let uuid = format!(
        "GPU-{}-{}-{}-{}-{}",
        h.get(0..8).unwrap_or_default(),
        h.get(8..12).unwrap_or_default(),
        h.get(12..16).unwrap_or_default(),
        h.get(16..20).unwrap_or_default(),
        h.get(20..32).unwrap_or_default(),
    );
    let serial = spec.has_serial.then(|| {
        let mut digits = [0u8; 8];
        digits.copy_from_slice(id.as_bytes().get(0..8).unwrap_or(&[0; 8]));
        format!("SIM{:013}", u64::from_le_bytes(digits) % 10_000_000_000_000)
    });
    GpuDevice {
        index,
        name: spec.model.clone(),
        uuid,
        serial,
        memory_total_mib: spec.memory_mib,
        // Index is below MAX_DEVICES (64), so the bus number fits two hex digits.
        pci_bus_id: format!("00000000:{:02X}:00.0", 0x10 + index),
        compute_capability: spec.compute_capability,
        driver_version: Some(profile.driver_version.clone()),
        cuda_version: Some(profile.cuda_version.clone()),
    }
}

fn summarise(profile: &SimProfile) -> String {
    let gpus: Vec<String> = profile
        .gpus
        .iter()
        .map(|g| format!("{} x {}", g.count, g.model))
        .collect();
    let pattern = match &profile.utilisation {
        UtilPattern::Constant { .. } => "constant",
        UtilPattern::Square { .. } => "square",
        UtilPattern::Sine { .. } => "sine",
        UtilPattern::Ramp { .. } => "ramp",
        UtilPattern::Replay { .. } => "replay",
    };
    format!(
        "simulated GPUs (not real hardware): {}; {pattern} utilisation; {} faults; seed {}",
        gpus.join(", "),
        profile.faults.len(),
        profile.seed
    )
}

#[cfg(test)]
mod tests {
    use super::super::hardware_fingerprint;
    use super::*;

    const T0: UnixMillis = UnixMillis(1_700_000_000_000);

    fn at(seconds: u64) -> UnixMillis {
        T0.plus_ms(seconds * 1000)
    }

    fn source(profile: SimProfile) -> (SimSource, ManualClock) {
        let clock = ManualClock::new(T0);
        let source = SimSource::with_clock(profile, Arc::new(clock.clone())).unwrap();
        (source, clock)
    }

    fn constant(pct: u8) -> SimProfile {
        SimProfile {
            utilisation: UtilPattern::Constant { pct },
            ..SimProfile::builtin("a100x4").unwrap()
        }
    }

    #[test]
    fn inventory_matches_the_profile() {
        let mut profile = SimProfile::builtin("rtx4090x2").unwrap();
        profile.gpus.push(SimGpuSpec {
            model: "NVIDIA L4".into(),
            memory_mib: 23_034,
            count: 3,
            compute_capability: None,
            max_power_w: 72,
            idle_power_w: 16,
            sm_clock_mhz: 2040,
            mem_clock_mhz: 6251,
            has_serial: true,
            utilisation: None,
        });
        let (mut sim, _) = source(profile);
        let devices = sim.devices().unwrap();
        let names: Vec<(u32, &str, u64)> = devices
            .iter()
            .map(|d| (d.index, d.name.as_str(), d.memory_total_mib))
            .collect();
        assert_eq!(
            names,
            [
                (0, "NVIDIA GeForce RTX 4090", 24_564),
                (1, "NVIDIA GeForce RTX 4090", 24_564),
                (2, "NVIDIA L4", 23_034),
                (3, "NVIDIA L4", 23_034),
                (4, "NVIDIA L4", 23_034),
            ]
        );
        assert_eq!(devices[0].compute_capability, Some((8, 9)));
        assert_eq!(devices[2].compute_capability, None);
        assert_eq!(devices[0].serial, None, "consumer cards have no serial");
        assert!(devices[2].serial.as_deref().unwrap().starts_with("SIM"));
        assert_eq!(devices[4].pci_bus_id, "00000000:14:00.0");
        assert_eq!(devices[0].cuda_version.as_deref(), Some("12.4"));
        let mut uuids: Vec<&str> = devices.iter().map(|d| d.uuid.as_str()).collect();
        assert!(uuids.iter().all(|u| u.starts_with("GPU-") && u.len() == 40));
        uuids.dedup();
        assert_eq!(uuids.len(), 5, "UUIDs are distinct");
        assert_eq!(sim.kind(), SourceKind::Simulated);
        assert!(sim.describe().contains("not real hardware"));
    }

    #[test]
    fn identity_is_stable_per_seed_and_differs_between_seeds() {
        let (mut a, _) = source(SimProfile::builtin("h100x8").unwrap());
        let (mut b, _) = source(SimProfile::builtin("h100x8").unwrap());
        let (mut c, _) = source(SimProfile::builtin("h100x8").unwrap().with_seed(1));
        let (a, b, c) = (
            a.devices().unwrap(),
            b.devices().unwrap(),
            c.devices().unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(hardware_fingerprint(&a), hardware_fingerprint(&b));
        assert_ne!(hardware_fingerprint(&a), hardware_fingerprint(&c));
    }

    #[test]
    fn samples_follow_the_pattern_at_exact_times() {
        let profile = SimProfile {
            utilisation: UtilPattern::Square {
                high_pct: 90,
                low_pct: 10,
                period_s: 60,
                duty_pct: 50,
            },
            ..SimProfile::builtin("a100x4").unwrap()
        };
        let (mut sim, clock) = source(profile);
        let util = |s: &[GpuSample]| s.iter().map(|x| x.util_bp).collect::<Vec<_>>();
        assert_eq!(util(&sim.sample().unwrap()), [Some(9000); 4]);
        clock.set(at(29));
        assert_eq!(util(&sim.sample().unwrap()), [Some(9000); 4]);
        clock.set(at(30));
        let samples = sim.sample().unwrap();
        assert_eq!(util(&samples), [Some(1000); 4]);
        assert_eq!(samples[0].timestamp, at(30));
        clock.advance(30_000);
        assert_eq!(util(&sim.sample().unwrap()), [Some(9000); 4]);
    }

    #[test]
    fn a_gpu_can_have_its_own_pattern() {
        let mut profile = constant(50);
        profile.gpus[0].count = 1;
        profile.gpus.push(SimGpuSpec {
            count: 1,
            utilisation: Some(UtilPattern::Constant { pct: 20 }),
            ..profile.gpus[0].clone()
        });
        let (mut sim, _) = source(profile);
        let samples = sim.sample_at(at(5));
        assert_eq!(samples[0].util_bp, Some(5000));
        assert_eq!(samples[1].util_bp, Some(2000));
    }

    #[test]
    fn metrics_follow_utilisation() {
        let (mut idle, _) = source(constant(0));
        let (mut busy, _) = source(constant(100));
        let idle = idle.sample_at(at(1)).remove(0);
        let busy = busy.sample_at(at(1)).remove(0);
        // a100x4: 55 W idle, 400 W flat out, 40960 MiB.
        assert_eq!(idle.power_mw, Some(55_000));
        assert_eq!(busy.power_mw, Some(400_000));
        assert_eq!(idle.memory_used_mib, Some(0));
        assert_eq!(busy.memory_used_mib, Some(40_960));
        assert!(idle.temperature_c < busy.temperature_c);
        assert!(idle.processes.is_empty());
        assert_eq!(
            busy.processes,
            [ProcessUsage {
                pid: SIM_PID_BASE,
                used_memory_mib: Some(40_960),
                sm_util_bp: Some(10_000),
            }]
        );
        assert_eq!(busy.health, GpuHealth::Healthy);
        assert_eq!(busy.ecc_uncorrected, Some(0));
    }

    #[test]
    fn energy_accumulates_power_over_time_and_never_goes_back() {
        let (mut sim, _) = source(constant(100));
        assert_eq!(sim.sample_at(T0)[0].energy_mj, Some(0));
        // 400 W for 10 s = 4000 J.
        assert_eq!(sim.sample_at(at(10))[0].energy_mj, Some(4_000_000));
        assert_eq!(sim.sample_at(at(5))[0].energy_mj, Some(4_000_000));
        assert_eq!(sim.sample_at(at(20))[0].energy_mj, Some(8_000_000));
    }

    #[test]
    fn dropout_makes_the_gpu_lost_and_absent_from_that_time_on() {
        let profile = constant(80).with_fault(SimFault::Dropout { gpu: 2, at_s: 60 });
        let (mut sim, _) = source(profile);

        let before = sim.sample_at(at(59));
        assert_eq!(before[2].health, GpuHealth::Healthy);
        assert_eq!(before[2].util_bp, Some(8000));
        assert_eq!(sim.devices_at(at(59)).len(), 4);

        for t in [60, 61, 3600] {
            let samples = sim.sample_at(at(t));
            assert_eq!(samples.len(), 4, "a lost GPU is still reported");
            let lost = &samples[2];
            assert_eq!(lost.health, GpuHealth::Lost);
            assert_eq!(lost.uuid, before[2].uuid);
            assert_eq!(lost.util_bp, None);
            assert_eq!(lost.power_mw, None);
            assert!(lost.processes.is_empty());
            for other in [0, 1, 3] {
                assert_eq!(samples[other].health, GpuHealth::Healthy);
            }
            let present: Vec<u32> = sim.devices_at(at(t)).iter().map(|d| d.index).collect();
            assert_eq!(present, [0, 1, 3]);
        }
    }

    #[test]
    fn a_stuck_reading_keeps_the_value_it_had_when_it_stuck() {
        let profile = SimProfile {
            utilisation: UtilPattern::Ramp {
                from_pct: 0,
                to_pct: 100,
                over_s: 100,
            },
            ..SimProfile::builtin("a100x4").unwrap()
        }
        .with_fault(SimFault::StuckUtil {
            gpu: 1,
            at_s: 30,
            value_pct: None,
        });
        let (mut sim, _) = source(profile);
        assert_eq!(sim.sample_at(at(20))[1].util_bp, Some(2000));
        for t in [30, 50, 100, 1000] {
            let samples = sim.sample_at(at(t));
            assert_eq!(samples[1].util_bp, Some(3000), "at {t} s");
            assert_eq!(samples[1].health, GpuHealth::Healthy);
        }
        // The GPU itself keeps working: GPU 0 and GPU 1's power agree.
        let samples = sim.sample_at(at(100));
        assert_eq!(samples[0].util_bp, Some(10_000));
        assert_eq!(samples[1].power_mw, samples[0].power_mw);
    }

    #[test]
    fn a_stuck_reading_can_be_forced_to_a_value() {
        let profile = constant(70).with_fault(SimFault::StuckUtil {
            gpu: 0,
            at_s: 10,
            value_pct: Some(0),
        });
        let (mut sim, _) = source(profile);
        assert_eq!(sim.sample_at(at(9))[0].util_bp, Some(7000));
        assert_eq!(sim.sample_at(at(10))[0].util_bp, Some(0));
        assert_eq!(sim.sample_at(at(10))[0].processes.len(), 1);
    }

    #[test]
    fn overheating_and_ecc_degrade_health_from_their_time() {
        let profile = constant(100)
            .with_fault(SimFault::Overheat {
                gpu: 3,
                at_s: 10,
                temperature_c: 97,
            })
            .with_fault(SimFault::Ecc {
                gpu: 3,
                at_s: 20,
                uncorrected: 4,
            });
        let (mut sim, _) = source(profile);
        let before = sim.sample_at(at(9)).remove(3);
        assert_eq!(before.health, GpuHealth::Healthy);
        assert_eq!(before.temperature_c, Some(75));
        assert_eq!(before.sm_clock_mhz, Some(1410));

        let hot = sim.sample_at(at(10)).remove(3);
        assert_eq!(hot.temperature_c, Some(97));
        assert_eq!(hot.sm_clock_mhz, Some(705));
        assert_eq!(
            hot.health,
            GpuHealth::Degraded {
                reason: "overheating at 97 C: hardware thermal slowdown".into()
            }
        );

        let both = sim.sample_at(at(20)).remove(3);
        assert_eq!(both.ecc_uncorrected, Some(4));
        let GpuHealth::Degraded { reason } = both.health else {
            panic!("expected degraded, got {:?}", both.health);
        };
        assert!(reason.contains("overheating at 97 C"), "{reason}");
        assert!(reason.contains("4 uncorrected ECC errors"), "{reason}");
        // Other GPUs are untouched and an overheating GPU is still present.
        assert_eq!(sim.sample_at(at(20))[2].health, GpuHealth::Healthy);
        assert_eq!(sim.devices_at(at(20)).len(), 4);
    }

    #[test]
    fn the_faulty_builtin_shows_every_fault() {
        let (mut sim, _) = source(SimProfile::builtin("h100x8-faulty").unwrap());
        let early = sim.sample_at(at(1));
        assert!(early.iter().all(|s| s.health.is_healthy()));
        let late = sim.sample_at(at(200));
        let states: Vec<&str> = late
            .iter()
            .map(|s| match s.health {
                GpuHealth::Healthy => "healthy",
                GpuHealth::Degraded { .. } => "degraded",
                GpuHealth::Lost => "lost",
            })
            .collect();
        assert_eq!(
            states,
            [
                "healthy", "healthy", "healthy", "healthy", "degraded", "degraded", "healthy",
                "lost"
            ]
        );
        assert_eq!(sim.devices_at(at(200)).len(), 7);
    }

    #[test]
    fn a_bad_profile_is_refused_at_construction() {
        let profile = constant(10).with_fault(SimFault::Dropout { gpu: 9, at_s: 1 });
        let err = SimSource::new(profile).unwrap_err();
        assert!(err.to_string().contains("gpu 9 does not exist"), "{err}");
    }
}
