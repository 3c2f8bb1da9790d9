//! Checks what rigmesh sees of this machine's NVIDIA GPUs through NVML, with
//! no fallback to simulated GPUs: the inventory with every field, then a few
//! samples with every metric and per-process usage.
//!
//! Usage: `gpu_check [SAMPLES] [INTERVAL_MS]` (default 5 samples, 1000 ms).
//! Exit status: 0 when NVML works, 2 when NVML is unavailable (no driver,
//! NVML refuses to start, no GPU), 1 on any other failure or bad arguments.

use std::process::ExitCode;
use std::time::Duration;

use rigmesh_node::telemetry::{
    hardware_fingerprint, GpuDevice, GpuHealth, GpuSample, GpuSource, NvmlSource, TelemetryError,
};

/// Most samples the check takes, so a typo cannot run it for days.
const MAX_SAMPLES: u32 = 1000;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let samples = match parse_arg(args.next(), 5, "SAMPLES") {
        Ok(n) => n.min(u64::from(MAX_SAMPLES)),
        Err(message) => return usage(&message),
    };
    let interval_ms = match parse_arg(args.next(), 1000, "INTERVAL_MS") {
        Ok(n) => n,
        Err(message) => return usage(&message),
    };

    let mut source = match NvmlSource::open() {
        Ok(source) => source,
        Err(e) => {
            eprintln!("gpu_check: NVML is unavailable: {e}");
            return match e {
                TelemetryError::DriverLibraryMissing { .. }
                | TelemetryError::NvmlInit { .. }
                | TelemetryError::NoDevices { .. } => ExitCode::from(2),
                _ => ExitCode::from(1),
            };
        }
    };
    println!("source: {}", source.describe());

    let devices = match source.devices() {
        Ok(devices) => devices,
        Err(e) => {
            eprintln!("gpu_check: could not read the GPU inventory: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{} GPU(s)", devices.len());
    for device in &devices {
        print_device(device);
    }
    println!(
        "hardware fingerprint: {}",
        hex(&hardware_fingerprint(&devices))
    );

    for n in 0..samples {
        if n > 0 {
            std::thread::sleep(Duration::from_millis(interval_ms));
        }
        match source.sample() {
            Ok(batch) => {
                println!();
                println!("sample {}/{samples}", n + 1);
                for sample in &batch {
                    print_sample(sample, &devices);
                }
            }
            Err(e) => {
                eprintln!("gpu_check: sampling failed: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

fn parse_arg(arg: Option<String>, default: u64, name: &str) -> Result<u64, String> {
    match arg {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| format!("{name} must be a whole number, got {text:?}")),
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("gpu_check: {message}");
    eprintln!("usage: gpu_check [SAMPLES] [INTERVAL_MS]");
    ExitCode::from(1)
}

fn or_unsupported<T: std::fmt::Display>(value: Option<T>, unit: &str) -> String {
    match value {
        Some(v) if unit.is_empty() => v.to_string(),
        Some(v) => format!("{v} {unit}"),
        None => "unsupported".to_owned(),
    }
}

fn print_device(d: &GpuDevice) {
    println!("GPU {}", d.index);
    println!("  name:               {}", d.name);
    println!("  uuid:               {}", d.uuid);
    println!(
        "  serial:             {}",
        or_unsupported(d.serial.as_deref(), "")
    );
    println!("  memory total:       {} MiB", d.memory_total_mib);
    println!("  pci bus id:         {}", d.pci_bus_id);
    println!(
        "  compute capability: {}",
        or_unsupported(
            d.compute_capability
                .map(|(major, minor)| format!("{major}.{minor}")),
            ""
        )
    );
    println!(
        "  driver version:     {}",
        or_unsupported(d.driver_version.as_deref(), "")
    );
    println!(
        "  cuda version:       {}",
        or_unsupported(d.cuda_version.as_deref(), "")
    );
}

fn print_sample(s: &GpuSample, devices: &[GpuDevice]) {
    let total = devices
        .iter()
        .find(|d| d.uuid == s.uuid)
        .map(|d| d.memory_total_mib);
    let health = match &s.health {
        GpuHealth::Healthy => "healthy".to_owned(),
        GpuHealth::Degraded { reason } => format!("DEGRADED: {reason}"),
        GpuHealth::Lost => "LOST".to_owned(),
    };
    println!(
        "GPU {} ({}) at {} ms: {health}",
        s.index, s.uuid, s.timestamp.0
    );
    println!(
        "  utilisation:      {}",
        or_unsupported(s.util_bp.map(percent), "%")
    );
    println!(
        "  memory used:      {} of {}",
        or_unsupported(s.memory_used_mib, "MiB"),
        or_unsupported(total, "MiB")
    );
    println!(
        "  power:            {}",
        or_unsupported(s.power_mw.map(|mw| f64::from(mw) / 1000.0), "W")
    );
    println!("  energy counter:   {}", or_unsupported(s.energy_mj, "mJ"));
    println!(
        "  temperature:      {}",
        or_unsupported(s.temperature_c, "C")
    );
    println!(
        "  sm clock:         {}",
        or_unsupported(s.sm_clock_mhz, "MHz")
    );
    println!(
        "  memory clock:     {}",
        or_unsupported(s.mem_clock_mhz, "MHz")
    );
    println!(
        "  uncorrected ECC:  {}",
        or_unsupported(s.ecc_uncorrected, "")
    );
    if s.xid_errors.is_empty() {
        println!("  XID errors:       none");
    } else {
        let codes: Vec<String> = s.xid_errors.iter().map(u64::to_string).collect();
        println!("  XID errors:       {}", codes.join(", "));
    }
    if s.processes.is_empty() {
        println!("  processes:        none");
    }
    for p in &s.processes {
        println!(
            "  process {:>8}: memory {}, sm {}",
            p.pid,
            or_unsupported(p.used_memory_mib, "MiB"),
            or_unsupported(p.sm_util_bp.map(percent), "%"),
        );
    }
}

fn percent(bp: u16) -> String {
    format!("{:.2}", f64::from(bp) / 100.0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
