//! Simulation profiles: which GPUs a simulated rig has, how busy they are
//! over time, and which faults strike when. Profiles are plain data read
//! from TOML (`deny_unknown_fields`, so a typo is an error rather than a
//! silently ignored line) and checked by [`SimProfile::validate`] before a
//! simulator uses them.

use serde::{Deserialize, Serialize};

use super::{Result, TelemetryError, FULL_UTIL_BP, MAX_DEVICES};

/// Longest replay list, in values.
const MAX_REPLAY_VALUES: usize = 4096;

/// Most faults in one profile.
const MAX_FAULTS: usize = 64;

/// Longest model name (the protocol's limit on an offer's model name is
/// checked again when an offer is made).
const MAX_MODEL_LEN: usize = 96;

/// Longest period, ramp or fault time: one year. Keeps every seconds value
/// far from overflowing when turned into milliseconds.
const MAX_SECONDS: u64 = 366 * 24 * 3600;

/// Names of the built-in profiles, for `sim:<name>` and error messages.
pub const BUILTIN_PROFILES: &[&str] = &["h100x8", "a100x4", "rtx4090x2", "h100x8-faulty"];

/// A simulated rig.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimProfile {
    /// Mixed into every UUID and serial, so two simulated rigs with the same
    /// GPUs still have different hardware fingerprints.
    #[serde(default)]
    pub seed: u64,
    /// Driver version the simulated GPUs report.
    #[serde(default = "default_driver_version")]
    pub driver_version: String,
    /// CUDA version the simulated GPUs report.
    #[serde(default = "default_cuda_version")]
    pub cuda_version: String,
    /// The GPUs, in index order: a spec with `count = 4` gives four
    /// consecutive indexes.
    pub gpus: Vec<SimGpuSpec>,
    /// How busy every GPU is, unless its spec says otherwise.
    #[serde(default)]
    pub utilisation: UtilPattern,
    /// Faults, each aimed at one GPU index.
    #[serde(default)]
    pub faults: Vec<SimFault>,
}

/// One kind of simulated GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimGpuSpec {
    /// Model name as NVML would report it.
    pub model: String,
    /// Installed memory, MiB.
    pub memory_mib: u64,
    /// How many of this model.
    #[serde(default = "one")]
    pub count: u32,
    /// CUDA compute capability (major, minor).
    #[serde(default)]
    pub compute_capability: Option<(u32, u32)>,
    /// Power draw at full utilisation, watts.
    #[serde(default = "default_max_power_w")]
    pub max_power_w: u32,
    /// Power draw when idle, watts.
    #[serde(default = "default_idle_power_w")]
    pub idle_power_w: u32,
    /// SM clock under load, MHz.
    #[serde(default = "default_sm_clock_mhz")]
    pub sm_clock_mhz: u32,
    /// Memory clock, MHz.
    #[serde(default = "default_mem_clock_mhz")]
    pub mem_clock_mhz: u32,
    /// Whether the board reports a serial number (consumer cards do not).
    #[serde(default = "yes")]
    pub has_serial: bool,
    /// This model's own utilisation pattern instead of the profile's.
    #[serde(default)]
    pub utilisation: Option<UtilPattern>,
}

/// Utilisation over time since the simulator started. Percent values are
/// whole percent, 0 to 100.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "pattern", rename_all = "snake_case", deny_unknown_fields)]
pub enum UtilPattern {
    /// Always the same.
    Constant {
        /// Utilisation, percent.
        pct: u8,
    },
    /// `high_pct` for the first `duty_pct` percent of every period, then
    /// `low_pct` for the rest.
    Square {
        /// Busy value, percent.
        high_pct: u8,
        /// Idle value, percent.
        low_pct: u8,
        /// Length of one period, seconds.
        period_s: u64,
        /// Share of the period at `high_pct`, percent.
        #[serde(default = "fifty")]
        duty_pct: u8,
    },
    /// A sine between `min_pct` and `max_pct`: at the midpoint at the start
    /// of each period, at `max_pct` a quarter in, at `min_pct` three
    /// quarters in. Rounded to whole basis points.
    Sine {
        /// Lowest value, percent.
        min_pct: u8,
        /// Highest value, percent.
        max_pct: u8,
        /// Length of one period, seconds.
        period_s: u64,
    },
    /// From `from_pct` to `to_pct` in a straight line over `over_s`
    /// seconds, then stays at `to_pct`.
    Ramp {
        /// Value at the start, percent.
        from_pct: u8,
        /// Value from `over_s` on, percent.
        to_pct: u8,
        /// Length of the ramp, seconds.
        over_s: u64,
    },
    /// Each value for `step_s` seconds in turn, starting again at the end.
    Replay {
        /// The values, percent.
        values_pct: Vec<u8>,
        /// How long each value lasts, seconds.
        step_s: u64,
    },
}

impl Default for UtilPattern {
    fn default() -> Self {
        UtilPattern::Constant { pct: 0 }
    }
}

/// A fault that strikes one GPU from a given time on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SimFault {
    /// The GPU falls off the bus: it leaves the inventory and its samples
    /// read [`GpuHealth::Lost`](super::GpuHealth::Lost).
    Dropout {
        /// GPU index.
        gpu: u32,
        /// Seconds after start.
        at_s: u64,
    },
    /// The utilisation reading stops changing while the GPU itself (power,
    /// temperature, memory) goes on following its pattern, as a hung
    /// sensor or exporter would look. Health stays healthy: spotting this is
    /// the consumer's job.
    StuckUtil {
        /// GPU index.
        gpu: u32,
        /// Seconds after start.
        at_s: u64,
        /// The stuck value, percent; the pattern's value at `at_s` if unset.
        #[serde(default)]
        value_pct: Option<u8>,
    },
    /// The GPU runs hot: the temperature reads `temperature_c`, clocks halve
    /// and health is degraded.
    Overheat {
        /// GPU index.
        gpu: u32,
        /// Seconds after start.
        at_s: u64,
        /// The temperature, Celsius.
        #[serde(default = "default_overheat_c")]
        temperature_c: u32,
    },
    /// Uncorrected ECC errors appear and health is degraded.
    Ecc {
        /// GPU index.
        gpu: u32,
        /// Seconds after start.
        at_s: u64,
        /// The uncorrected error count from then on.
        #[serde(default = "one_u64")]
        uncorrected: u64,
    },
}

impl SimFault {
    /// The GPU index the fault strikes.
    pub fn gpu(&self) -> u32 {
        match self {
            SimFault::Dropout { gpu, .. }
            | SimFault::StuckUtil { gpu, .. }
            | SimFault::Overheat { gpu, .. }
            | SimFault::Ecc { gpu, .. } => *gpu,
        }
    }

    /// When the fault strikes, milliseconds after start.
    pub fn at_ms(&self) -> u64 {
        let at_s = match self {
            SimFault::Dropout { at_s, .. }
            | SimFault::StuckUtil { at_s, .. }
            | SimFault::Overheat { at_s, .. }
            | SimFault::Ecc { at_s, .. } => *at_s,
        };
        at_s.saturating_mul(1000)
    }
}

fn one() -> u32 {
    1
}
fn one_u64() -> u64 {
    1
}
fn yes() -> bool {
    true
}
fn fifty() -> u8 {
    50
}
fn default_driver_version() -> String {
    "550.54.15-sim".to_owned()
}
fn default_cuda_version() -> String {
    "12.4".to_owned()
}
fn default_max_power_w() -> u32 {
    300
}
fn default_idle_power_w() -> u32 {
    30
}
fn default_sm_clock_mhz() -> u32 {
    1755
}
fn default_mem_clock_mhz() -> u32 {
    1593
}
fn default_overheat_c() -> u32 {
    95
}

impl UtilPattern {
    /// Utilisation in basis points `elapsed_ms` after start.
    pub fn value_bp(&self, elapsed_ms: u64) -> u16 {
        match self {
            UtilPattern::Constant { pct } => pct_bp(*pct),
            UtilPattern::Square {
                high_pct,
                low_pct,
                period_s,
                duty_pct,
            } => {
                let period_ms = seconds_ms(*period_s);
                let high_ms = period_ms.saturating_mul(u64::from(*duty_pct)) / 100;
                if elapsed_ms % period_ms < high_ms {
                    pct_bp(*high_pct)
                } else {
                    pct_bp(*low_pct)
                }
            }
            UtilPattern::Sine {
                min_pct,
                max_pct,
                period_s,
            } => {
                let period_ms = seconds_ms(*period_s);
                let phase = (elapsed_ms % period_ms) as f64 / period_ms as f64;
                let min = f64::from(pct_bp(*min_pct));
                let max = f64::from(pct_bp(*max_pct));
                let mid = (min + max) / 2.0;
                let amplitude = (max - min) / 2.0;
                let value = mid + amplitude * (std::f64::consts::TAU * phase).sin();
                // In range by construction; the clamp keeps float error from
                // ever reaching the cast's saturation.
                value.round().clamp(0.0, f64::from(FULL_UTIL_BP)) as u16
            }
            UtilPattern::Ramp {
                from_pct,
                to_pct,
                over_s,
            } => {
                let over_ms = seconds_ms(*over_s);
                let from = i64::from(pct_bp(*from_pct));
                let to = i64::from(pct_bp(*to_pct));
                let done = i64::try_from(elapsed_ms.min(over_ms)).unwrap_or(0);
                let over = i64::try_from(over_ms).unwrap_or(1).max(1);
                let value = from + (to - from) * done / over;
                u16::try_from(value).unwrap_or(0)
            }
            UtilPattern::Replay { values_pct, step_s } => {
                let step_ms = seconds_ms(*step_s);
                let len = u64::try_from(values_pct.len()).unwrap_or(1).max(1);
                let at = usize::try_from((elapsed_ms / step_ms) % len).unwrap_or(0);
                values_pct.get(at).map_or(0, |pct| pct_bp(*pct))
            }
        }
    }

    fn validate(&self, what: &str) -> Result<()> {
        let check_pct = |name: &str, pct: u8| {
            if pct > 100 {
                Err(invalid(format!("{what}: {name} is {pct}, over 100")))
            } else {
                Ok(())
            }
        };
        match self {
            UtilPattern::Constant { pct } => check_pct("pct", *pct),
            UtilPattern::Square {
                high_pct,
                low_pct,
                period_s,
                duty_pct,
            } => {
                check_pct("high_pct", *high_pct)?;
                check_pct("low_pct", *low_pct)?;
                check_pct("duty_pct", *duty_pct)?;
                check_seconds(what, "period_s", *period_s)
            }
            UtilPattern::Sine {
                min_pct,
                max_pct,
                period_s,
            } => {
                check_pct("min_pct", *min_pct)?;
                check_pct("max_pct", *max_pct)?;
                if min_pct > max_pct {
                    return Err(invalid(format!(
                        "{what}: min_pct {min_pct} is above max_pct {max_pct}"
                    )));
                }
                check_seconds(what, "period_s", *period_s)
            }
            UtilPattern::Ramp {
                from_pct,
                to_pct,
                over_s,
            } => {
                check_pct("from_pct", *from_pct)?;
                check_pct("to_pct", *to_pct)?;
                check_seconds(what, "over_s", *over_s)
            }
            UtilPattern::Replay { values_pct, step_s } => {
                if values_pct.is_empty() || values_pct.len() > MAX_REPLAY_VALUES {
                    return Err(invalid(format!(
                        "{what}: values_pct has {} values; 1 to {MAX_REPLAY_VALUES} allowed",
                        values_pct.len()
                    )));
                }
                for pct in values_pct {
                    check_pct("a value in values_pct", *pct)?;
                }
                check_seconds(what, "step_s", *step_s)
            }
        }
    }
}

impl SimProfile {
    /// A built-in profile by name (see [`BUILTIN_PROFILES`]).
    pub fn builtin(name: &str) -> Result<SimProfile> {
        let profile = match name {
            "h100x8" => SimProfile::of(
                vec![h100(8)],
                UtilPattern::Square {
                    high_pct: 95,
                    low_pct: 5,
                    period_s: 600,
                    duty_pct: 70,
                },
            ),
            "a100x4" => SimProfile::of(
                vec![SimGpuSpec {
                    model: "NVIDIA A100-SXM4-40GB".into(),
                    memory_mib: 40_960,
                    count: 4,
                    compute_capability: Some((8, 0)),
                    max_power_w: 400,
                    idle_power_w: 55,
                    sm_clock_mhz: 1410,
                    mem_clock_mhz: 1215,
                    has_serial: true,
                    utilisation: None,
                }],
                UtilPattern::Sine {
                    min_pct: 20,
                    max_pct: 90,
                    period_s: 900,
                },
            ),
            "rtx4090x2" => SimProfile::of(
                vec![SimGpuSpec {
                    model: "NVIDIA GeForce RTX 4090".into(),
                    memory_mib: 24_564,
                    count: 2,
                    compute_capability: Some((8, 9)),
                    max_power_w: 450,
                    idle_power_w: 20,
                    sm_clock_mhz: 2520,
                    mem_clock_mhz: 10_501,
                    has_serial: false,
                    utilisation: None,
                }],
                UtilPattern::Replay {
                    values_pct: vec![0, 35, 80, 100, 100, 60, 10],
                    step_s: 60,
                },
            ),
            // For the devnet's alerting paths: one GPU of each fault kind.
            "h100x8-faulty" => SimProfile {
                faults: vec![
                    SimFault::Dropout { gpu: 7, at_s: 120 },
                    SimFault::StuckUtil {
                        gpu: 6,
                        at_s: 60,
                        value_pct: None,
                    },
                    SimFault::Overheat {
                        gpu: 5,
                        at_s: 90,
                        temperature_c: default_overheat_c(),
                    },
                    SimFault::Ecc {
                        gpu: 4,
                        at_s: 150,
                        uncorrected: 2,
                    },
                ],
                ..SimProfile::of(
                    vec![h100(8)],
                    UtilPattern::Sine {
                        min_pct: 40,
                        max_pct: 100,
                        period_s: 300,
                    },
                )
            },
            other => {
                return Err(invalid(format!(
                    "no built-in profile named {other:?}; built-in profiles are {}",
                    BUILTIN_PROFILES.join(", ")
                )))
            }
        };
        Ok(profile)
    }

    fn of(gpus: Vec<SimGpuSpec>, utilisation: UtilPattern) -> SimProfile {
        SimProfile {
            seed: 0,
            driver_version: default_driver_version(),
            cuda_version: default_cuda_version(),
            gpus,
            utilisation,
            faults: Vec::new(),
        }
    }

    /// The same profile with another seed (distinct UUIDs per rig).
    pub fn with_seed(mut self, seed: u64) -> SimProfile {
        self.seed = seed;
        self
    }

    /// The same profile with one more fault.
    pub fn with_fault(mut self, fault: SimFault) -> SimProfile {
        self.faults.push(fault);
        self
    }

    /// Number of simulated GPUs.
    pub fn device_count(&self) -> u64 {
        self.gpus.iter().map(|g| u64::from(g.count)).sum()
    }

    /// Checks every limit a simulator relies on; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let total = self.device_count();
        if total == 0 {
            return Err(invalid("the profile has no GPUs".into()));
        }
        if total > MAX_DEVICES as u64 {
            return Err(invalid(format!(
                "the profile has {total} GPUs; at most {MAX_DEVICES} allowed"
            )));
        }
        for text in [&self.driver_version, &self.cuda_version] {
            if text.len() > MAX_MODEL_LEN {
                return Err(invalid(format!(
                    "version string of {} bytes; at most {MAX_MODEL_LEN}",
                    text.len()
                )));
            }
        }
        self.utilisation.validate("utilisation")?;
        for (i, gpu) in self.gpus.iter().enumerate() {
            let what = format!("gpus[{i}]");
            if gpu.model.trim().is_empty() || gpu.model.len() > MAX_MODEL_LEN {
                return Err(invalid(format!(
                    "{what}: model must be 1 to {MAX_MODEL_LEN} bytes"
                )));
            }
            if gpu.memory_mib == 0 || gpu.memory_mib > MAX_GPU_MEMORY_MIB {
                return Err(invalid(format!(
                    "{what}: memory_mib {} is outside 1 to {MAX_GPU_MEMORY_MIB}",
                    gpu.memory_mib
                )));
            }
            if gpu.count == 0 {
                return Err(invalid(format!("{what}: count must be at least 1")));
            }
            if gpu.idle_power_w > gpu.max_power_w {
                return Err(invalid(format!(
                    "{what}: idle_power_w {} is above max_power_w {}",
                    gpu.idle_power_w, gpu.max_power_w
                )));
            }
            if gpu.max_power_w > MAX_POWER_W {
                return Err(invalid(format!(
                    "{what}: max_power_w {} is above {MAX_POWER_W}",
                    gpu.max_power_w
                )));
            }
            if let Some(pattern) = &gpu.utilisation {
                pattern.validate(&format!("{what}.utilisation"))?;
            }
        }
        if self.faults.len() > MAX_FAULTS {
            return Err(invalid(format!(
                "{} faults; at most {MAX_FAULTS} allowed",
                self.faults.len()
            )));
        }
        for (i, fault) in self.faults.iter().enumerate() {
            let what = format!("faults[{i}]");
            if u64::from(fault.gpu()) >= total {
                return Err(invalid(format!(
                    "{what}: gpu {} does not exist; the profile has GPUs 0 to {}",
                    fault.gpu(),
                    total - 1
                )));
            }
            if fault.at_ms() > MAX_SECONDS * 1000 {
                return Err(invalid(format!(
                    "{what}: at_s is over {MAX_SECONDS} seconds"
                )));
            }
            if let SimFault::StuckUtil {
                value_pct: Some(pct),
                ..
            } = fault
            {
                if *pct > 100 {
                    return Err(invalid(format!("{what}: value_pct {pct} is over 100")));
                }
            }
        }
        Ok(())
    }
}

/// Largest memory a simulated GPU may claim; the protocol's offer limit.
const MAX_GPU_MEMORY_MIB: u64 = 16 * 1024 * 1024;

/// Largest power a simulated GPU may draw, watts; keeps milliwatts in `u32`.
const MAX_POWER_W: u32 = 100_000;

fn h100(count: u32) -> SimGpuSpec {
    SimGpuSpec {
        model: "NVIDIA H100 80GB HBM3".into(),
        memory_mib: 81_559,
        count,
        compute_capability: Some((9, 0)),
        max_power_w: 700,
        idle_power_w: 70,
        sm_clock_mhz: 1980,
        mem_clock_mhz: 2619,
        has_serial: true,
        utilisation: None,
    }
}

fn pct_bp(pct: u8) -> u16 {
    u16::from(pct.min(100)) * 100
}

/// Seconds to milliseconds for a validated period: at least one millisecond
/// so that `%` and `/` never divide by zero.
fn seconds_ms(seconds: u64) -> u64 {
    seconds.min(MAX_SECONDS).saturating_mul(1000).max(1)
}

fn check_seconds(what: &str, name: &str, seconds: u64) -> Result<()> {
    if seconds == 0 || seconds > MAX_SECONDS {
        return Err(invalid(format!(
            "{what}: {name} is {seconds}; 1 to {MAX_SECONDS} seconds allowed"
        )));
    }
    Ok(())
}

fn invalid(message: String) -> TelemetryError {
    TelemetryError::InvalidProfile(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_is_valid_and_listed() {
        for name in BUILTIN_PROFILES {
            let profile = SimProfile::builtin(name).unwrap();
            profile.validate().unwrap();
        }
        assert_eq!(SimProfile::builtin("h100x8").unwrap().device_count(), 8);
        assert_eq!(SimProfile::builtin("a100x4").unwrap().device_count(), 4);
        assert_eq!(SimProfile::builtin("rtx4090x2").unwrap().device_count(), 2);
    }

    #[test]
    fn an_unknown_builtin_names_the_known_ones() {
        let err = SimProfile::builtin("h200x16").unwrap_err().to_string();
        assert!(err.contains("\"h200x16\""), "{err}");
        assert!(err.contains("h100x8, a100x4, rtx4090x2"), "{err}");
    }

    #[test]
    fn square_wave_switches_at_the_duty_boundary() {
        let p = UtilPattern::Square {
            high_pct: 90,
            low_pct: 10,
            period_s: 10,
            duty_pct: 30,
        };
        assert_eq!(p.value_bp(0), 9000);
        assert_eq!(p.value_bp(2_999), 9000);
        assert_eq!(p.value_bp(3_000), 1000);
        assert_eq!(p.value_bp(9_999), 1000);
        assert_eq!(p.value_bp(10_000), 9000);
        assert_eq!(p.value_bp(23_000), 1000);
    }

    #[test]
    fn sine_hits_mid_max_mid_min_at_quarter_periods() {
        let p = UtilPattern::Sine {
            min_pct: 20,
            max_pct: 80,
            period_s: 100,
        };
        assert_eq!(p.value_bp(0), 5000);
        assert_eq!(p.value_bp(25_000), 8000);
        assert_eq!(p.value_bp(50_000), 5000);
        assert_eq!(p.value_bp(75_000), 2000);
        assert_eq!(p.value_bp(100_000), 5000);
        // sin(30 degrees) = 0.5: a twelfth of the period is three quarters up.
        assert_eq!(p.value_bp(100_000 / 12), 6500);
    }

    #[test]
    fn ramp_is_linear_then_holds() {
        let p = UtilPattern::Ramp {
            from_pct: 100,
            to_pct: 0,
            over_s: 100,
        };
        assert_eq!(p.value_bp(0), 10_000);
        assert_eq!(p.value_bp(25_000), 7_500);
        assert_eq!(p.value_bp(99_999), 1);
        assert_eq!(p.value_bp(100_000), 0);
        assert_eq!(p.value_bp(5_000_000), 0);
    }

    #[test]
    fn replay_steps_through_the_values_and_loops() {
        let p = UtilPattern::Replay {
            values_pct: vec![5, 50, 95],
            step_s: 2,
        };
        let at: Vec<u16> = [0, 1_999, 2_000, 4_000, 6_000, 8_500]
            .iter()
            .map(|ms| p.value_bp(*ms))
            .collect();
        assert_eq!(at, [500, 500, 5000, 9500, 500, 5000]);
    }

    #[test]
    fn profile_reads_from_toml() {
        let profile: SimProfile = toml::from_str(
            r#"
            seed = 7
            utilisation = { pattern = "square", high_pct = 90, low_pct = 10, period_s = 60 }

            [[gpus]]
            model = "NVIDIA L4"
            memory_mib = 23034
            count = 3
            compute_capability = [8, 9]

            [[faults]]
            kind = "dropout"
            gpu = 2
            at_s = 30

            [[faults]]
            kind = "stuck_util"
            gpu = 0
            at_s = 10
            "#,
        )
        .unwrap();
        profile.validate().unwrap();
        assert_eq!(profile.seed, 7);
        assert_eq!(profile.device_count(), 3);
        assert_eq!(profile.gpus[0].compute_capability, Some((8, 9)));
        assert_eq!(profile.gpus[0].max_power_w, default_max_power_w());
        assert_eq!(
            profile.utilisation,
            UtilPattern::Square {
                high_pct: 90,
                low_pct: 10,
                period_s: 60,
                duty_pct: 50
            }
        );
        assert_eq!(profile.faults[0], SimFault::Dropout { gpu: 2, at_s: 30 });
        assert_eq!(
            profile.faults[1],
            SimFault::StuckUtil {
                gpu: 0,
                at_s: 10,
                value_pct: None
            }
        );
    }

    #[test]
    fn a_misspelt_field_is_an_error() {
        let err = toml::from_str::<SimProfile>(
            r#"
            [[gpus]]
            model = "NVIDIA L4"
            memory_mb = 23034
            "#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("memory_mb"), "{err}");
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let base = SimProfile::builtin("rtx4090x2").unwrap();
        let cases: Vec<(SimProfile, &str)> = vec![
            (
                SimProfile {
                    gpus: vec![],
                    ..base.clone()
                },
                "no GPUs",
            ),
            (
                base.clone()
                    .with_fault(SimFault::Dropout { gpu: 2, at_s: 1 }),
                "faults[0]: gpu 2 does not exist",
            ),
            (
                SimProfile {
                    utilisation: UtilPattern::Constant { pct: 101 },
                    ..base.clone()
                },
                "pct is 101",
            ),
            (
                SimProfile {
                    utilisation: UtilPattern::Square {
                        high_pct: 90,
                        low_pct: 10,
                        period_s: 0,
                        duty_pct: 50,
                    },
                    ..base.clone()
                },
                "period_s is 0",
            ),
            (
                SimProfile {
                    utilisation: UtilPattern::Replay {
                        values_pct: vec![],
                        step_s: 1,
                    },
                    ..base.clone()
                },
                "values_pct has 0 values",
            ),
            (
                SimProfile {
                    gpus: vec![SimGpuSpec {
                        count: 65,
                        ..base.gpus[0].clone()
                    }],
                    ..base.clone()
                },
                "65 GPUs",
            ),
            (
                SimProfile {
                    gpus: vec![SimGpuSpec {
                        memory_mib: 0,
                        ..base.gpus[0].clone()
                    }],
                    ..base.clone()
                },
                "gpus[0]: memory_mib 0",
            ),
        ];
        for (profile, expected) in cases {
            let err = profile.validate().unwrap_err();
            assert!(matches!(err, TelemetryError::InvalidProfile(_)));
            let text = err.to_string();
            assert!(text.contains(expected), "{text:?} lacks {expected:?}");
        }
    }
}
