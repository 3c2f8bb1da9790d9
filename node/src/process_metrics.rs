//! What a node reports of its own process on `/metrics`, under the names
//! Prometheus client libraries give them (`process_*`), so dashboards and
//! alert rules written for those work unchanged: resident and virtual
//! memory, CPU time, threads, open files and their limit, and the start
//! time. An operator watches a node's resources here rather than from
//! outside the process.
//!
//! Read from `/proc` at each scrape: three small files and the listing of
//! the open descriptors, all served by the kernel from memory, no disk.
//! Where there is no `/proc` (not Linux), or it cannot be read, the
//! metrics are left out: a scrape never fails for them.
//!
//! Where the binary tells how to read its allocator ([`read_allocator_with`]),
//! the `rigmesh_allocator_*` metrics add what resident memory alone cannot
//! tell: the bytes the process's live allocations hold, apart from the
//! pages the allocator keeps mapped for reuse or has not yet handed back.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

/// One reading of this process's resources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessReading {
    /// CPU time used so far, user and system, every thread.
    pub cpu_seconds: f64,
    /// Resident memory.
    pub resident_bytes: u64,
    /// Virtual memory.
    pub virtual_bytes: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors (sockets and the stores' files among them).
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors, unless unlimited.
    pub max_fds: Option<u64>,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

/// Reads this process's resources now; `None` where `/proc` cannot tell.
#[cfg(target_os = "linux")]
pub fn read() -> Option<ProcessReading> {
    use procfs::process::{LimitValue, Process};
    use procfs::WithCurrentSystemInfo;

    let me = Process::myself().ok()?;
    let stat = me.stat().ok()?;
    // /proc counts CPU time and the start in clock ticks.
    let ticks = procfs::ticks_per_second().max(1) as f64;
    let max_fds = me
        .limits()
        .ok()
        .and_then(|limits| match limits.max_open_files.soft_limit {
            LimitValue::Value(n) => Some(n),
            LimitValue::Unlimited => None,
        });
    Some(ProcessReading {
        cpu_seconds: stat.utime.saturating_add(stat.stime) as f64 / ticks,
        resident_bytes: stat.rss_bytes().get(),
        virtual_bytes: stat.vsize,
        threads: u64::try_from(stat.num_threads).unwrap_or(0),
        open_fds: me.fd_count().ok().and_then(|n| u64::try_from(n).ok()),
        max_fds,
        start_time_seconds: procfs::boot_time_secs()
            .ok()
            .map(|boot| boot as f64 + stat.starttime as f64 / ticks),
    })
}

/// Reads this process's resources now; `None` where `/proc` cannot tell.
#[cfg(not(target_os = "linux"))]
pub fn read() -> Option<ProcessReading> {
    None
}

/// One reading of the process's allocator, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocatorReading {
    /// Held by live allocations.
    pub allocated: u64,
    /// In the pages those allocations lie on (`allocated` and the
    /// free space between them).
    pub active: u64,
    /// The allocator's own bookkeeping.
    pub metadata: u64,
    /// Physically resident in the allocator's pages, freed pages it has
    /// not yet handed back included.
    pub resident: u64,
}

/// How the binary reads its allocator, if it told.
static ALLOCATOR: std::sync::OnceLock<fn() -> Option<AllocatorReading>> =
    std::sync::OnceLock::new();

/// Tells the collector how to read the process's allocator (the binary
/// knows which one it declared; a library does not). The first call wins.
pub fn read_allocator_with(reader: fn() -> Option<AllocatorReading>) {
    let _ = ALLOCATOR.set(reader);
}

/// The allocator's reading now, if the binary told how to take it.
fn read_allocator() -> Option<AllocatorReading> {
    ALLOCATOR.get().and_then(|reader| reader())
}

/// The collector behind the `process_*` metrics: reads the process at
/// each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl ProcessCollector {
    /// Adds the `process_*` metrics to `registry` (at its top level: the
    /// names are the conventional ones, without rigmesh's prefix).
    pub fn register(registry: &mut Registry) {
        registry.register_collector(Box::new(ProcessCollector));
    }
}

/// A gauge's value from a count or size (saturating at `i64::MAX`).
fn gauge(n: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // The allocator's figures do not need /proc.
        encode_allocator(&mut encoder)?;
        let Some(reading) = read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(reading.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "CPU time the process has used, user and system",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let sizes = [
            (
                "process_resident_memory",
                "Resident memory of the process",
                reading.resident_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory of the process",
                reading.virtual_bytes,
            ),
        ];
        encode_bytes(&mut encoder, &sizes)?;
        let counts = [
            (
                "process_threads",
                "Threads of the process",
                Some(reading.threads),
            ),
            (
                "process_open_fds",
                "Open file descriptors of the process",
                reading.open_fds,
            ),
            (
                "process_max_fds",
                "The soft limit on the process's open file descriptors",
                reading.max_fds,
            ),
        ];
        for (name, help, count) in counts {
            if let Some(count) = count {
                let value = gauge(count);
                value.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    value.metric_type(),
                )?)?;
            }
        }
        if let Some(start) = reading.start_time_seconds {
            let value = ConstGauge::new(start);
            value.encode(encoder.encode_descriptor(
                "process_start_time",
                "When the process started, since the Unix epoch",
                Some(&Unit::Seconds),
                value.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// The `rigmesh_allocator_*` gauges, where the binary told how to read
/// its allocator.
fn encode_allocator(encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let Some(allocator) = read_allocator() else {
        return Ok(());
    };
    let sizes = [
        (
            "rigmesh_allocator_allocated",
            "Memory held by the process's live allocations",
            allocator.allocated,
        ),
        (
            "rigmesh_allocator_active",
            "Memory in the allocator's pages that hold live allocations",
            allocator.active,
        ),
        (
            "rigmesh_allocator_metadata",
            "The allocator's own bookkeeping",
            allocator.metadata,
        ),
        (
            "rigmesh_allocator_resident",
            "Resident memory in the allocator's pages, freed pages not yet handed back included",
            allocator.resident,
        ),
    ];
    encode_bytes(encoder, &sizes)
}

/// Gauges in bytes, each `(name, help, bytes)`.
fn encode_bytes(
    encoder: &mut DescriptorEncoder,
    sizes: &[(&str, &str, u64)],
) -> Result<(), std::fmt::Error> {
    for &(name, help, bytes) in sizes {
        let value = gauge(bytes);
        value.encode(encoder.encode_descriptor(
            name,
            help,
            Some(&Unit::Bytes),
            value.metric_type(),
        )?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reading agrees with what the kernel reports in
    /// `/proc/self/status`, in the units the metric names promise.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_reading_is_this_process_in_bytes_seconds_and_counts() {
        // Memory the reading must see: 64 MiB touched.
        let touched = vec![1u8; 64 << 20];
        let reading = read().unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib = |field: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap()
        };
        let resident = kib("VmRSS:") * 1024;
        assert!(reading.resident_bytes >= 64 << 20, "{reading:?}");
        // Read a moment apart while other tests run: close, and nowhere
        // near a factor of 1,024 (KiB) or 4,096 (pages) off.
        assert!(
            reading.resident_bytes.abs_diff(resident) < resident / 4,
            "{reading:?} against VmRSS {resident}"
        );
        assert!(reading.virtual_bytes >= reading.resident_bytes);
        assert!(
            reading.threads >= 1 && reading.threads.abs_diff(kib("Threads:")) <= 16,
            "{reading:?}"
        );
        assert!(reading.open_fds.unwrap() >= 3, "{reading:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = reading.start_time_seconds.unwrap();
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started}"
        );
        assert!(touched.iter().all(|b| *b == 1));
    }

    /// CPU time grows with work done, in seconds: never faster than
    /// every core busy for the time it took.
    #[cfg(target_os = "linux")]
    #[test]
    fn cpu_seconds_grow_with_work_in_seconds() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let started = std::time::Instant::now();
        let before = read().unwrap().cpu_seconds;
        let mut x = 0u64;
        let mut after = before;
        while after - before < 0.2 && started.elapsed() < std::time::Duration::from_secs(60) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
            after = read().unwrap().cpu_seconds;
        }
        let wall = started.elapsed().as_secs_f64();
        assert!(after - before >= 0.2, "{before} -> {after} in {wall} s");
        // /proc counts in 10 ms ticks, and the time of a thread running
        // on another core (another test's) is brought up to date only at
        // that core's next scheduler tick (10 ms at most): one tick of
        // slack for the count, one for each core.
        assert!(
            after - before <= cores * wall + 0.011 * (cores + 1.0),
            "{before} -> {after} in {wall} s on {cores} cores"
        );
    }

    /// Once the binary tells how to read its allocator, its figures come
    /// out as `rigmesh_allocator_*` gauges in bytes, each as read.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_allocator_is_reported_once_the_binary_tells_how_to_read_it() {
        read_allocator_with(|| {
            Some(AllocatorReading {
                allocated: 1_000,
                active: 4_096,
                metadata: 300,
                resident: 8_192,
            })
        });
        let mut registry = Registry::default();
        ProcessCollector::register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "rigmesh_allocator_allocated_bytes 1000\n",
            "rigmesh_allocator_active_bytes 4096\n",
            "rigmesh_allocator_metadata_bytes 300\n",
            "rigmesh_allocator_resident_bytes 8192\n",
            "# UNIT rigmesh_allocator_resident_bytes bytes",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    /// The metrics come out under the conventional names and units.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_metrics_have_the_conventional_names() {
        let mut registry = Registry::default();
        ProcessCollector::register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_threads ",
            "process_open_fds ",
            "process_start_time_seconds ",
            "# UNIT process_resident_memory_bytes bytes",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
