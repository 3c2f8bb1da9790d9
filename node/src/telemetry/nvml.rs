//! Real NVIDIA GPUs through NVML (the `nvml-wrapper` crate, which loads
//! `libnvidia-ml.so.1` at run time, so this compiles and links on machines
//! without the driver).
//!
//! NVML is initialised once per process and kept for its lifetime: device
//! handles and XID event sets borrow it, and a sampler keeps them for as long
//! as it runs. A failed initialisation is not remembered, so a later open can
//! succeed once the driver is installed.

use std::collections::HashMap;
use std::sync::OnceLock;

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, Nvml};
use rigmesh_protocol::UnixMillis;

use super::{
    bytes_to_mib, pct_to_bp, GpuDevice, GpuHealth, GpuSample, GpuSource, ProcessUsage, Result,
    SourceKind, TelemetryError, MAX_DEVICES, MAX_PROCESSES_PER_DEVICE, MAX_XID_PER_SAMPLE,
};

/// XIDs caused by the program running on the GPU rather than by the GPU
/// (13 graphics engine exception, 31 MMU fault, 43 GPU stopped processing,
/// 45 preemptive cleanup). A customer's buggy kernel must not mark a
/// supplier's GPU degraded; they are still reported in `xid_errors`.
const APPLICATION_XIDS: &[u64] = &[13, 31, 43, 45];

static NVML: OnceLock<Nvml> = OnceLock::new();

fn shared_nvml() -> Result<&'static Nvml> {
    if let Some(nvml) = NVML.get() {
        return Ok(nvml);
    }
    let nvml = Nvml::init().map_err(init_error)?;
    // Two threads racing here both initialise; NVML counts references, and
    // the loser's handle is dropped (shut down) right away.
    Ok(NVML.get_or_init(|| nvml))
}

fn init_error(error: NvmlError) -> TelemetryError {
    match error {
        NvmlError::LibloadingError(e) => TelemetryError::DriverLibraryMissing {
            detail: e.to_string(),
        },
        NvmlError::LibraryNotFound => TelemetryError::DriverLibraryMissing {
            detail: "NVML reported the library as not found".into(),
        },
        source => TelemetryError::NvmlInit { source },
    }
}

/// A GPU found when the source was opened.
struct Tracked {
    index: u32,
    uuid: String,
    /// Critical XID events of this GPU; `None` where the GPU cannot report
    /// them. One set per GPU, because NVML frees a set when registering a GPU
    /// on it fails.
    xid_events: Option<EventSet<'static>>,
    /// NVML timestamp (microseconds) of the newest per-process utilisation
    /// sample seen, so each sample covers only the time since the previous.
    last_process_sample_us: u64,
}

/// Real GPUs read through NVML.
pub struct NvmlSource {
    nvml: &'static Nvml,
    tracked: Vec<Tracked>,
    driver_version: Option<String>,
    cuda_version: Option<String>,
}

impl std::fmt::Debug for NvmlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSource")
            .field("gpus", &self.tracked.len())
            .field("driver_version", &self.driver_version)
            .finish()
    }
}

impl NvmlSource {
    /// Loads NVML and finds the GPUs. Fails with
    /// [`TelemetryError::DriverLibraryMissing`] where there is no NVIDIA
    /// driver, [`TelemetryError::NvmlInit`] where NVML will not start, and
    /// [`TelemetryError::NoDevices`] where it sees no usable GPU.
    pub fn open() -> Result<Self> {
        let nvml = shared_nvml()?;
        let count = nvml
            .device_count()
            .map_err(|source| TelemetryError::NvmlInit { source })?;
        let driver_version = nvml.sys_driver_version().ok();
        let cuda_version = nvml.sys_cuda_driver_version().ok().map(|v| {
            format!(
                "{}.{}",
                nvml_wrapper::cuda_driver_version_major(v),
                nvml_wrapper::cuda_driver_version_minor(v)
            )
        });
        let mut tracked = Vec::new();
        for index in 0..count.min(MAX_DEVICES as u32) {
            let device = match nvml.device_by_index(index) {
                Ok(device) => device,
                Err(e) if unusable(&e) => {
                    tracing::warn!(index, error = %e, "GPU skipped: NVML cannot use it");
                    continue;
                }
                Err(source) => {
                    return Err(TelemetryError::DeviceQuery {
                        index,
                        what: "handle",
                        source,
                    })
                }
            };
            let uuid = match device.uuid() {
                Ok(uuid) => uuid,
                Err(e) if unusable(&e) => {
                    tracing::warn!(index, error = %e, "GPU skipped: NVML cannot read its UUID");
                    continue;
                }
                Err(source) => {
                    return Err(TelemetryError::DeviceQuery {
                        index,
                        what: "UUID",
                        source,
                    })
                }
            };
            let xid_events = xid_event_set(nvml, &device, index);
            tracked.push(Tracked {
                index,
                uuid,
                xid_events,
                last_process_sample_us: 0,
            });
        }
        if count > MAX_DEVICES as u32 {
            tracing::warn!(count, "only the first {MAX_DEVICES} GPUs are used");
        }
        if tracked.is_empty() {
            return Err(TelemetryError::NoDevices {
                source_kind: SourceKind::Nvml,
            });
        }
        Ok(NvmlSource {
            nvml,
            tracked,
            driver_version,
            cuda_version,
        })
    }

    fn device_info(&self, index: u32, device: &Device<'static>) -> Result<GpuDevice> {
        let query = |what: &'static str| {
            move |source| TelemetryError::DeviceQuery {
                index,
                what,
                source,
            }
        };
        let name = device.name().map_err(query("name"))?;
        let uuid = device.uuid().map_err(query("UUID"))?;
        let memory = device.memory_info().map_err(query("memory size"))?;
        let pci = device.pci_info().map_err(query("PCI bus id"))?;
        let compute_capability = device
            .cuda_compute_capability()
            .ok()
            .and_then(|cc| Some((u32::try_from(cc.major).ok()?, u32::try_from(cc.minor).ok()?)));
        Ok(GpuDevice {
            index,
            name,
            uuid,
            serial: device.serial().ok().filter(|s| !s.trim().is_empty()),
            memory_total_mib: bytes_to_mib(memory.total),
            pci_bus_id: pci.bus_id,
            compute_capability,
            driver_version: self.driver_version.clone(),
            cuda_version: self.cuda_version.clone(),
        })
    }
}

impl GpuSource for NvmlSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Nvml
    }

    fn describe(&self) -> String {
        format!(
            "NVML: {} GPU(s), driver {}, CUDA {}",
            self.tracked.len(),
            self.driver_version.as_deref().unwrap_or("unknown"),
            self.cuda_version.as_deref().unwrap_or("unknown"),
        )
    }

    fn devices(&mut self) -> Result<Vec<GpuDevice>> {
        let mut devices = Vec::with_capacity(self.tracked.len());
        for tracked in &self.tracked {
            let device = match self.nvml.device_by_index(tracked.index) {
                Ok(device) => device,
                Err(e) if unusable(&e) => continue,
                Err(source) => {
                    return Err(TelemetryError::DeviceQuery {
                        index: tracked.index,
                        what: "handle",
                        source,
                    })
                }
            };
            match self.device_info(tracked.index, &device) {
                Ok(info) if info.uuid == tracked.uuid => devices.push(info),
                // Another GPU now answers at this index: the one found at
                // open is gone.
                Ok(_) => continue,
                Err(TelemetryError::DeviceQuery { source, .. }) if unusable(&source) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(devices)
    }

    fn sample(&mut self) -> Result<Vec<GpuSample>> {
        let now = UnixMillis::now();
        let nvml = self.nvml;
        Ok(self
            .tracked
            .iter_mut()
            .map(|tracked| sample_one(nvml, tracked, now))
            .collect())
    }
}

/// Errors that mean the GPU cannot be used at all, as opposed to a query it
/// does not support.
fn unusable(error: &NvmlError) -> bool {
    matches!(
        error,
        NvmlError::GpuLost | NvmlError::NotFound | NvmlError::NoPermission
    )
}

/// Errors that mean "this metric does not exist here".
fn unsupported(error: &NvmlError) -> bool {
    matches!(
        error,
        NvmlError::NotSupported
            | NvmlError::FunctionNotFound
            | NvmlError::FailedToLoadSymbol(_)
            | NvmlError::NoData
            | NvmlError::NoPermission
    )
}

/// Collects one GPU's metrics, turning each failed query into `None` and
/// remembering the failures that say something about the GPU's health.
struct Probe {
    index: u32,
    lost: bool,
    reset_required: bool,
}

impl Probe {
    fn get<T>(
        &mut self,
        what: &'static str,
        result: std::result::Result<T, NvmlError>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(NvmlError::GpuLost) => {
                self.lost = true;
                None
            }
            Err(NvmlError::ResetRequired) => {
                self.reset_required = true;
                None
            }
            Err(e) if unsupported(&e) => None,
            Err(e) => {
                tracing::debug!(index = self.index, what, error = %e, "GPU metric unavailable");
                None
            }
        }
    }
}

fn sample_one(nvml: &'static Nvml, tracked: &mut Tracked, now: UnixMillis) -> GpuSample {
    let index = tracked.index;
    let device = match nvml.device_by_index(index) {
        Ok(device) => device,
        Err(e) => {
            tracing::debug!(index, error = %e, "GPU did not answer");
            return GpuSample::lost(now, index, tracked.uuid.clone());
        }
    };
    match device.uuid() {
        Ok(uuid) if uuid == tracked.uuid => {}
        _ => return GpuSample::lost(now, index, tracked.uuid.clone()),
    }

    let mut probe = Probe {
        index,
        lost: false,
        reset_required: false,
    };
    let util_bp = probe
        .get("utilisation", device.utilization_rates())
        .map(|u| pct_to_bp(u.gpu));
    let memory_used_mib = probe
        .get("memory", device.memory_info())
        .map(|m| bytes_to_mib(m.used));
    let power_mw = probe.get("power", device.power_usage());
    let energy_mj = probe.get("energy", device.total_energy_consumption());
    let temperature_c = probe.get("temperature", device.temperature(TemperatureSensor::Gpu));
    let sm_clock_mhz = probe.get("SM clock", device.clock_info(Clock::SM));
    let mem_clock_mhz = probe.get("memory clock", device.clock_info(Clock::Memory));
    let ecc_uncorrected = probe.get(
        "ECC errors",
        device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
    );
    let pages_pending = probe.get("page retirement", device.are_pages_pending_retired());
    let throttle = probe.get("throttle reasons", device.current_throttle_reasons());
    let processes = processes(&device, tracked, &mut probe);
    let xid_errors = drain_xids(tracked);

    if probe.lost {
        return GpuSample::lost(now, index, tracked.uuid.clone());
    }

    let mut reasons = Vec::new();
    if probe.reset_required {
        reasons.push("the GPU needs a reset".to_owned());
    }
    if let Some(count) = ecc_uncorrected.filter(|c| *c > 0) {
        reasons.push(format!(
            "{count} uncorrected ECC errors since the driver loaded"
        ));
    }
    if pages_pending == Some(true) {
        reasons.push("memory pages are waiting to be retired (reboot needed)".to_owned());
    }
    if let Some(throttle) = throttle {
        if throttle.contains(ThrottleReasons::HW_THERMAL_SLOWDOWN) {
            reasons.push("hardware thermal slowdown".to_owned());
        }
        if throttle.contains(ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN) {
            reasons.push("hardware power brake slowdown".to_owned());
        }
    }
    let hardware_xids: Vec<String> = xid_errors
        .iter()
        .filter(|x| !APPLICATION_XIDS.contains(x))
        .map(|x| x.to_string())
        .collect();
    if !hardware_xids.is_empty() {
        reasons.push(format!("XID error {}", hardware_xids.join(", ")));
    }
    let health = if reasons.is_empty() {
        GpuHealth::Healthy
    } else {
        GpuHealth::Degraded {
            reason: reasons.join("; "),
        }
    };

    GpuSample {
        timestamp: now,
        index,
        uuid: tracked.uuid.clone(),
        util_bp,
        memory_used_mib,
        power_mw,
        energy_mj,
        temperature_c,
        sm_clock_mhz,
        mem_clock_mhz,
        ecc_uncorrected,
        xid_errors,
        health,
        processes,
    }
}

/// Compute processes with their memory, and each one's SM share since the
/// previous sample where the GPU keeps per-process utilisation.
fn processes(
    device: &Device<'static>,
    tracked: &mut Tracked,
    probe: &mut Probe,
) -> Vec<ProcessUsage> {
    let running = probe
        .get("compute processes", device.running_compute_processes())
        .unwrap_or_default();

    // NVML lists only processes that used the SM since the timestamp given;
    // an empty period is reported as NotFound. So when the query works, a
    // process missing from it used none of the SM.
    let utilisation = match device.process_utilization_stats(tracked.last_process_sample_us) {
        Ok(samples) => Some(samples),
        Err(NvmlError::NotFound) => Some(Vec::new()),
        Err(e) => probe.get("process utilisation", Err(e)),
    };
    let sm_by_pid: Option<HashMap<u32, (u64, u32)>> = utilisation.map(|samples| {
        let mut newest: HashMap<u32, (u64, u32)> = HashMap::new();
        for s in samples {
            tracked.last_process_sample_us = tracked.last_process_sample_us.max(s.timestamp);
            let entry = newest.entry(s.pid).or_insert((s.timestamp, s.sm_util));
            if s.timestamp >= entry.0 {
                *entry = (s.timestamp, s.sm_util);
            }
        }
        newest
    });

    running
        .into_iter()
        .take(MAX_PROCESSES_PER_DEVICE)
        .map(|p| ProcessUsage {
            pid: p.pid,
            used_memory_mib: match p.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => Some(bytes_to_mib(bytes)),
                UsedGpuMemory::Unavailable => None,
            },
            sm_util_bp: sm_by_pid
                .as_ref()
                .map(|by_pid| by_pid.get(&p.pid).map_or(0, |(_, pct)| pct_to_bp(*pct))),
        })
        .collect()
}

fn xid_event_set(
    nvml: &'static Nvml,
    device: &Device<'static>,
    index: u32,
) -> Option<EventSet<'static>> {
    let supported = device.supported_event_types().ok()?;
    if !supported.contains(EventTypes::CRITICAL_XID_ERROR) {
        return None;
    }
    let set = nvml.create_event_set().ok()?;
    match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
        Ok(set) => Some(set),
        Err(e) => {
            tracing::debug!(index, error = %e, "XID events unavailable");
            None
        }
    }
}

/// XID codes that arrived since the previous sample, without waiting.
fn drain_xids(tracked: &Tracked) -> Vec<u64> {
    let Some(set) = &tracked.xid_events else {
        return Vec::new();
    };
    let mut xids = Vec::new();
    // Bounded: a GPU spewing XIDs cannot hold the sampler here; the rest
    // wait for the next sample.
    for _ in 0..MAX_XID_PER_SAMPLE {
        match set.wait(0) {
            Ok(event) => {
                if let Some(XidError::Value(code)) = event.event_data {
                    xids.push(code);
                }
            }
            // Timeout: nothing pending. Anything else: stop for this sample.
            Err(_) => break,
        }
    }
    xids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_failures_read_as_a_missing_driver() {
        let err = init_error(NvmlError::LibraryNotFound);
        assert!(matches!(err, TelemetryError::DriverLibraryMissing { .. }));
        assert!(err.to_string().contains("libnvidia-ml.so.1"), "{err}");
        let err = init_error(NvmlError::DriverNotLoaded);
        assert!(matches!(err, TelemetryError::NvmlInit { .. }));
        assert!(
            err.to_string().contains("NVIDIA driver is not loaded"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_metrics_become_none_and_lost_gpus_are_noticed() {
        let mut probe = Probe {
            index: 0,
            lost: false,
            reset_required: false,
        };
        assert_eq!(
            probe.get::<u32>("power", Err(NvmlError::NotSupported)),
            None
        );
        assert_eq!(probe.get::<u32>("power", Err(NvmlError::Unknown)), None);
        assert!(!probe.lost && !probe.reset_required);
        assert_eq!(probe.get("power", Ok(250_000u32)), Some(250_000));
        assert_eq!(
            probe.get::<u32>("power", Err(NvmlError::ResetRequired)),
            None
        );
        assert!(probe.reset_required && !probe.lost);
        assert_eq!(probe.get::<u32>("power", Err(NvmlError::GpuLost)), None);
        assert!(probe.lost);
    }
}
