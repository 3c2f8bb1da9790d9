//! GPU telemetry for the supplier: what GPUs a rig has ([`GpuDevice`]) and
//! what they are doing now ([`GpuSample`]), read through one [`GpuSource`]
//! trait. [`NvmlSource`] reads real NVIDIA hardware through NVML;
//! [`SimSource`] simulates GPUs from a [`SimProfile`] so tests and the local
//! devnet run without a GPU. [`open_source`] picks one from configuration.
//!
//! A metric the hardware or driver does not support is `None`, never an
//! error: consumer cards have no ECC counters, older ones no energy counter.
//! Errors are kept for a source that cannot be opened at all or a device that
//! cannot be identified.

mod nvml;
mod profile;
mod select;
mod sim;

use serde::{Deserialize, Serialize};

use rigmesh_protocol::UnixMillis;

pub use nvml::NvmlSource;
pub use profile::{SimFault, SimGpuSpec, SimProfile, UtilPattern, BUILTIN_PROFILES};
pub use select::{open_source, GpuSourceConfig, SimSpec, FALLBACK_PROFILE};
pub use sim::{ManualClock, SimClock, SimSource, SystemClock};

/// Most GPUs one source reports; matches the protocol's limit on GPUs in an
/// offer, and bounds every per-device vector.
pub const MAX_DEVICES: usize = 64;

/// Most processes reported per GPU in one sample.
pub const MAX_PROCESSES_PER_DEVICE: usize = 256;

/// Most XID error codes reported per GPU in one sample.
pub const MAX_XID_PER_SAMPLE: usize = 32;

/// Utilisation of a whole GPU, in basis points (the protocol's unit).
pub const FULL_UTIL_BP: u16 = 10_000;

/// Result with the telemetry [`TelemetryError`].
pub type Result<T> = std::result::Result<T, TelemetryError>;

/// Why a GPU source could not be opened or queried.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The NVIDIA driver's NVML library could not be loaded: no NVIDIA
    /// driver is installed, or the library is not on the loader's path.
    #[error("NVIDIA driver library libnvidia-ml.so.1 could not be loaded ({detail}); is the NVIDIA driver installed?")]
    DriverLibraryMissing {
        /// What the loader said.
        detail: String,
    },
    /// The library loaded but NVML refused to start (driver not running,
    /// no permission, library and kernel module of different versions).
    #[error("NVML failed to initialise: {source}")]
    NvmlInit {
        /// NVML's error.
        #[source]
        source: ::nvml_wrapper::error::NvmlError,
    },
    /// The source works but sees no GPU.
    #[error("{source_kind} found no GPUs")]
    NoDevices {
        /// Which source looked.
        source_kind: SourceKind,
    },
    /// A device could not be identified: a field every device must have
    /// (name, UUID, memory, PCI bus id) could not be read.
    #[error("GPU {index}: could not read its {what}: {source}")]
    DeviceQuery {
        /// NVML index of the device.
        index: u32,
        /// The field that failed.
        what: &'static str,
        /// NVML's error.
        #[source]
        source: ::nvml_wrapper::error::NvmlError,
    },
    /// A simulation profile that cannot work, or an unknown built-in name.
    #[error("invalid GPU simulation profile: {0}")]
    InvalidProfile(String),
}

/// Which kind of source produced the data. Consumers use it to keep
/// simulated hardware out of a real market.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Real NVIDIA GPUs read through NVML.
    Nvml,
    /// GPUs simulated from a profile.
    Simulated,
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SourceKind::Nvml => "NVML",
            SourceKind::Simulated => "the GPU simulator",
        })
    }
}

/// One GPU as the rig's inventory lists it; what offers are built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    /// NVML index (stable while the driver stays loaded, not across reboots).
    pub index: u32,
    /// Model as NVML names it, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Globally unique id, e.g. `GPU-5a6c...`; what fingerprints are made of.
    pub uuid: String,
    /// Board serial number; consumer cards have none.
    pub serial: Option<String>,
    /// Installed memory, MiB.
    pub memory_total_mib: u64,
    /// PCI address, e.g. `00000000:17:00.0`.
    pub pci_bus_id: String,
    /// CUDA compute capability (major, minor).
    pub compute_capability: Option<(u32, u32)>,
    /// Driver version, e.g. `550.54.15`.
    pub driver_version: Option<String>,
    /// Highest CUDA version the driver supports, e.g. `12.4`.
    pub cuda_version: Option<String>,
}

/// Whether a GPU can do work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum GpuHealth {
    /// Nothing wrong was seen.
    Healthy,
    /// The GPU answers but something is wrong with it (uncorrected memory
    /// errors, a hardware XID error, hardware slowdown, needs a reset).
    Degraded {
        /// What was seen, for people.
        reason: String,
    },
    /// The GPU is gone: fell off the bus or no longer answers.
    Lost,
}

impl GpuHealth {
    /// Whether the GPU should be offered and billed.
    pub fn is_healthy(&self) -> bool {
        matches!(self, GpuHealth::Healthy)
    }
}

/// One process's use of one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// Process id on the rig.
    pub pid: u32,
    /// GPU memory the process holds, MiB.
    pub used_memory_mib: Option<u64>,
    /// The process's share of the SM, basis points.
    pub sm_util_bp: Option<u16>,
}

/// One reading of one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuSample {
    /// When it was read.
    pub timestamp: UnixMillis,
    /// NVML index of the device.
    pub index: u32,
    /// UUID of the device, so a sample cannot be credited to another GPU.
    pub uuid: String,
    /// Share of the last sampling period in which a kernel ran on the GPU,
    /// basis points (NVML's "GPU utilisation").
    pub util_bp: Option<u16>,
    /// Memory in use, MiB.
    pub memory_used_mib: Option<u64>,
    /// Power draw, milliwatts.
    pub power_mw: Option<u32>,
    /// Energy used since the driver was loaded, millijoules (a counter).
    pub energy_mj: Option<u64>,
    /// Die temperature, degrees Celsius.
    pub temperature_c: Option<u32>,
    /// SM clock, MHz.
    pub sm_clock_mhz: Option<u32>,
    /// Memory clock, MHz.
    pub mem_clock_mhz: Option<u32>,
    /// Uncorrected ECC errors since the driver was loaded; `None` where ECC
    /// is off or unsupported.
    pub ecc_uncorrected: Option<u64>,
    /// XID error codes reported since the previous sample.
    pub xid_errors: Vec<u64>,
    /// Whether the GPU can do work.
    pub health: GpuHealth,
    /// Processes using the GPU.
    pub processes: Vec<ProcessUsage>,
}

impl GpuSample {
    /// A sample of a GPU that is gone: no metrics, health [`GpuHealth::Lost`].
    pub fn lost(timestamp: UnixMillis, index: u32, uuid: String) -> Self {
        GpuSample {
            timestamp,
            index,
            uuid,
            util_bp: None,
            memory_used_mib: None,
            power_mw: None,
            energy_mj: None,
            temperature_c: None,
            sm_clock_mhz: None,
            mem_clock_mhz: None,
            ecc_uncorrected: None,
            xid_errors: Vec::new(),
            health: GpuHealth::Lost,
            processes: Vec::new(),
        }
    }
}

/// Where GPU inventory and samples come from. `Send` so a sampler task can
/// own it; not `Sync`, because NVML event sets may not be shared.
pub trait GpuSource: Send {
    /// Which kind of source this is.
    fn kind(&self) -> SourceKind;

    /// One line for people: the source and what it reads, e.g. the driver
    /// version or the simulation profile.
    fn describe(&self) -> String;

    /// The GPUs present now, by index. A GPU that was lost is not listed.
    fn devices(&mut self) -> Result<Vec<GpuDevice>>;

    /// One sample per GPU found when the source was opened, by index. A GPU
    /// that has since gone is reported as [`GpuHealth::Lost`] rather than
    /// left out, so a consumer sees the moment it went.
    fn sample(&mut self) -> Result<Vec<GpuSample>>;
}

/// The hardware fingerprint of a set of GPUs (specs/protocol.md 4.6): blake3
/// of their UUIDs, each trimmed, sorted bytewise and joined by `\n`. The same
/// GPUs give the same fingerprint whatever order they are listed in.
pub fn hardware_fingerprint(devices: &[GpuDevice]) -> [u8; 32] {
    let uuids: Vec<&str> = devices.iter().map(|d| d.uuid.as_str()).collect();
    rigmesh_protocol::Id::hardware_fingerprint(&uuids).0
}

/// Percent (as NVML reports it) to basis points, capped at 100 %.
fn pct_to_bp(pct: u32) -> u16 {
    u16::try_from(pct.min(100) * 100).unwrap_or(FULL_UTIL_BP)
}

/// Bytes to MiB, rounding down.
fn bytes_to_mib(bytes: u64) -> u64 {
    bytes / (1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(index: u32, uuid: &str) -> GpuDevice {
        GpuDevice {
            index,
            name: "NVIDIA H100 80GB HBM3".into(),
            uuid: uuid.into(),
            serial: None,
            memory_total_mib: 81559,
            pci_bus_id: format!("00000000:{:02X}:00.0", index + 0x10),
            compute_capability: Some((9, 0)),
            driver_version: None,
            cuda_version: None,
        }
    }

    #[test]
    fn fingerprint_follows_the_spec_and_ignores_order() {
        let a = [
            device(0, "GPU-bbb"),
            device(1, "GPU-aaa"),
            device(2, "GPU-ccc"),
        ];
        let b = [
            device(0, "GPU-ccc"),
            device(1, " GPU-aaa "),
            device(2, "GPU-bbb"),
        ];
        let expected = *blake3::hash(b"GPU-aaa\nGPU-bbb\nGPU-ccc").as_bytes();
        assert_eq!(hardware_fingerprint(&a), expected);
        assert_eq!(hardware_fingerprint(&b), expected);
    }

    #[test]
    fn fingerprint_changes_when_a_gpu_is_swapped_or_removed() {
        let a = [device(0, "GPU-aaa"), device(1, "GPU-bbb")];
        let swapped = [device(0, "GPU-aaa"), device(1, "GPU-bbc")];
        let fewer = [device(0, "GPU-aaa")];
        assert_ne!(hardware_fingerprint(&a), hardware_fingerprint(&swapped));
        assert_ne!(hardware_fingerprint(&a), hardware_fingerprint(&fewer));
    }

    #[test]
    fn percent_and_bytes_convert_with_caps() {
        assert_eq!(pct_to_bp(0), 0);
        assert_eq!(pct_to_bp(37), 3700);
        assert_eq!(pct_to_bp(250), FULL_UTIL_BP);
        assert_eq!(bytes_to_mib(81_559 * 1024 * 1024 + 1023), 81_559);
    }

    #[test]
    fn health_serialises_with_a_state_tag() {
        let degraded = GpuHealth::Degraded {
            reason: "XID 79".into(),
        };
        let json = serde_json::to_string(&degraded).unwrap();
        assert_eq!(json, r#"{"state":"degraded","reason":"XID 79"}"#);
        assert_eq!(
            serde_json::to_string(&GpuHealth::Lost).unwrap(),
            r#"{"state":"lost"}"#
        );
    }
}
