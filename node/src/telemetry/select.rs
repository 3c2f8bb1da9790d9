//! Choosing a GPU source from configuration: `nvml` for real GPUs only,
//! `sim` for a simulated rig, and `auto`, which uses NVML where it works and
//! otherwise falls back to a simulated rig, saying so loudly.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{GpuSource, NvmlSource, Result, SimProfile, SimSource, TelemetryError};

/// The built-in profile `auto` simulates when NVML is not usable.
pub const FALLBACK_PROFILE: &str = "rtx4090x2";

/// Which GPU source a node uses. In TOML: `"auto"`, `"nvml"`,
/// `{ sim = { builtin = "h100x8" } }`, or a full profile under
/// `[<key>.sim.profile]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuSourceConfig {
    /// NVML if it loads and sees a GPU, else the [`FALLBACK_PROFILE`]
    /// simulation with a warning.
    #[default]
    Auto,
    /// NVML or an error; for rigs that must never report simulated GPUs.
    Nvml,
    /// A simulated rig.
    Sim(SimSpec),
}

/// Which simulated rig.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimSpec {
    /// A built-in profile by name (see [`super::BUILTIN_PROFILES`]).
    Builtin(String),
    /// A profile given in full.
    Profile(SimProfile),
}

impl SimSpec {
    /// The profile this names.
    pub fn resolve(&self) -> Result<SimProfile> {
        match self {
            SimSpec::Builtin(name) => SimProfile::builtin(name),
            SimSpec::Profile(profile) => Ok(profile.clone()),
        }
    }
}

/// Parses the command-line form: `auto`, `nvml`, `sim` (the
/// [`FALLBACK_PROFILE`]) or `sim:<built-in profile>`.
impl FromStr for GpuSourceConfig {
    type Err = TelemetryError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(GpuSourceConfig::Auto),
            "nvml" => Ok(GpuSourceConfig::Nvml),
            "sim" => Ok(GpuSourceConfig::Sim(SimSpec::Builtin(
                FALLBACK_PROFILE.to_owned(),
            ))),
            other => match other.strip_prefix("sim:") {
                Some(name) => {
                    // Check the name now so a typo fails at parse time.
                    SimProfile::builtin(name)?;
                    Ok(GpuSourceConfig::Sim(SimSpec::Builtin(name.to_owned())))
                }
                None => Err(TelemetryError::InvalidProfile(format!(
                    "unknown GPU source {other:?}; use auto, nvml, sim or sim:<profile>"
                ))),
            },
        }
    }
}

/// Opens the configured source. The second value is set when `auto` fell
/// back to simulated GPUs, and says why; it is also logged as a warning.
pub fn open_source(config: &GpuSourceConfig) -> Result<(Box<dyn GpuSource>, Option<String>)> {
    match config {
        GpuSourceConfig::Nvml => Ok((Box::new(NvmlSource::open()?), None)),
        GpuSourceConfig::Sim(spec) => Ok((Box::new(SimSource::new(spec.resolve()?)?), None)),
        GpuSourceConfig::Auto => auto_from(NvmlSource::open()),
    }
}

/// The `auto` decision, given the outcome of opening NVML.
///
/// Only "no NVIDIA driver" and "no GPU" fall back. A driver that is present
/// but broken (not loaded, version mismatch, no permission) is an error even
/// under `auto`: a rig that has GPUs should be fixed, not quietly replaced by
/// a simulation.
fn auto_from<S: GpuSource + 'static>(
    nvml: Result<S>,
) -> Result<(Box<dyn GpuSource>, Option<String>)> {
    let why = match nvml {
        Ok(source) => return Ok((Box::new(source), None)),
        Err(
            e @ (TelemetryError::DriverLibraryMissing { .. } | TelemetryError::NoDevices { .. }),
        ) => e,
        Err(e) => return Err(e),
    };
    let sim = SimSource::builtin(FALLBACK_PROFILE)?;
    let notice = format!(
        "no real GPU available ({why}); using SIMULATED GPUs from the built-in profile \
         {FALLBACK_PROFILE:?}, which are not real hardware. Set the GPU source to \"nvml\" \
         to make this an error."
    );
    tracing::warn!("{notice}");
    Ok((Box::new(sim), Some(notice)))
}

#[cfg(test)]
mod tests {
    use super::super::{SimFault, SourceKind};
    use super::*;

    #[test]
    fn auto_falls_back_when_the_driver_is_missing_and_says_why() {
        let missing = Err::<SimSource, _>(TelemetryError::DriverLibraryMissing {
            detail: "libnvidia-ml.so.1: cannot open shared object file".into(),
        });
        let (mut source, notice) = auto_from(missing).unwrap();
        assert_eq!(source.kind(), SourceKind::Simulated);
        let notice = notice.unwrap();
        assert!(notice.contains("libnvidia-ml.so.1"), "{notice}");
        assert!(notice.contains("SIMULATED"), "{notice}");
        assert!(notice.contains(FALLBACK_PROFILE), "{notice}");
        assert_eq!(source.devices().unwrap().len(), 2);
    }

    #[test]
    fn auto_falls_back_when_nvml_sees_no_gpu() {
        let none = Err::<SimSource, _>(TelemetryError::NoDevices {
            source_kind: SourceKind::Nvml,
        });
        let (source, notice) = auto_from(none).unwrap();
        assert_eq!(source.kind(), SourceKind::Simulated);
        assert!(notice.unwrap().contains("NVML found no GPUs"));
    }

    #[test]
    fn auto_does_not_hide_a_broken_driver() {
        let broken = Err::<SimSource, _>(TelemetryError::NvmlInit {
            source: nvml_wrapper::error::NvmlError::LibRmVersionMismatch,
        });
        let err = auto_from(broken).err().unwrap();
        assert!(matches!(err, TelemetryError::NvmlInit { .. }));
    }

    #[test]
    fn auto_uses_a_working_source_without_a_notice() {
        let working = SimSource::builtin("a100x4").unwrap();
        let (mut source, notice) = auto_from(Ok(working)).unwrap();
        assert_eq!(notice, None);
        assert_eq!(source.devices().unwrap().len(), 4);
    }

    /// What this machine has decides the branch; both branches check what a
    /// user would see. Without a GPU (the usual build machine) `nvml` fails
    /// naming the missing library and `auto` falls back; with one, both open
    /// NVML.
    #[test]
    fn nvml_and_auto_agree_about_this_machine() {
        let nvml = open_source(&GpuSourceConfig::Nvml);
        let (auto, notice) = open_source(&GpuSourceConfig::Auto).unwrap();
        match nvml {
            Ok((source, None)) => {
                assert_eq!(source.kind(), SourceKind::Nvml);
                assert_eq!(auto.kind(), SourceKind::Nvml);
                assert_eq!(notice, None);
            }
            Ok((_, Some(n))) => panic!("nvml must never fall back, but said {n}"),
            Err(e @ TelemetryError::DriverLibraryMissing { .. }) => {
                let text = e.to_string();
                assert!(text.contains("libnvidia-ml.so.1"), "{text}");
                assert!(text.contains("NVIDIA driver installed"), "{text}");
                assert_eq!(auto.kind(), SourceKind::Simulated);
                assert!(notice.unwrap().contains("libnvidia-ml.so.1"));
            }
            Err(e @ TelemetryError::NoDevices { .. }) => {
                assert_eq!(auto.kind(), SourceKind::Simulated);
                assert!(notice.unwrap().contains(&e.to_string()));
            }
            Err(e) => panic!("unexpected NVML failure on this machine: {e}"),
        }
    }

    #[test]
    fn sim_opens_the_named_or_given_profile() {
        let (mut source, notice) =
            open_source(&GpuSourceConfig::Sim(SimSpec::Builtin("h100x8".into()))).unwrap();
        assert_eq!(notice, None);
        assert_eq!(source.kind(), SourceKind::Simulated);
        let devices = source.devices().unwrap();
        assert_eq!(devices.len(), 8);
        assert_eq!(devices[0].name, "NVIDIA H100 80GB HBM3");

        let bad = SimProfile::builtin("a100x4")
            .unwrap()
            .with_fault(SimFault::Dropout { gpu: 4, at_s: 0 });
        let err = open_source(&GpuSourceConfig::Sim(SimSpec::Profile(bad)))
            .err()
            .unwrap();
        assert!(matches!(err, TelemetryError::InvalidProfile(_)));
    }

    #[test]
    fn config_reads_from_toml() {
        #[derive(Deserialize)]
        struct Wrapper {
            gpu_source: GpuSourceConfig,
        }
        let read = |text: &str| toml::from_str::<Wrapper>(text).map(|w| w.gpu_source);
        assert_eq!(
            read(r#"gpu_source = "auto""#).unwrap(),
            GpuSourceConfig::Auto
        );
        assert_eq!(
            read(r#"gpu_source = "nvml""#).unwrap(),
            GpuSourceConfig::Nvml
        );
        assert_eq!(
            read(r#"gpu_source = { sim = { builtin = "a100x4" } }"#).unwrap(),
            GpuSourceConfig::Sim(SimSpec::Builtin("a100x4".into()))
        );
        let inline = read(
            r#"
            [gpu_source.sim.profile]
            seed = 3
            utilisation = { pattern = "constant", pct = 40 }
            gpus = [{ model = "NVIDIA L4", memory_mib = 23034, count = 2 }]
            faults = [{ kind = "overheat", gpu = 1, at_s = 5 }]
            "#,
        )
        .unwrap();
        let GpuSourceConfig::Sim(SimSpec::Profile(profile)) = inline else {
            panic!("expected an inline profile, got {inline:?}");
        };
        assert_eq!(profile.device_count(), 2);
        assert_eq!(
            profile.faults,
            [SimFault::Overheat {
                gpu: 1,
                at_s: 5,
                temperature_c: 95
            }]
        );
        assert!(read(r#"gpu_source = "cuda""#).is_err());
    }

    #[test]
    fn config_parses_from_the_command_line() {
        assert_eq!(
            "auto".parse::<GpuSourceConfig>().unwrap(),
            GpuSourceConfig::Auto
        );
        assert_eq!(
            "nvml".parse::<GpuSourceConfig>().unwrap(),
            GpuSourceConfig::Nvml
        );
        assert_eq!(
            "sim:h100x8".parse::<GpuSourceConfig>().unwrap(),
            GpuSourceConfig::Sim(SimSpec::Builtin("h100x8".into()))
        );
        assert_eq!(
            "sim".parse::<GpuSourceConfig>().unwrap(),
            GpuSourceConfig::Sim(SimSpec::Builtin(FALLBACK_PROFILE.into()))
        );
        let err = "sim:h100x9".parse::<GpuSourceConfig>().unwrap_err();
        assert!(err.to_string().contains("h100x9"), "{err}");
        let err = "gpu".parse::<GpuSourceConfig>().unwrap_err();
        assert!(err.to_string().contains("auto, nvml, sim"), "{err}");
    }
}
