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
        for (name, help, bytes) in sizes {
            let value = gauge(bytes);
            value.encode(encoder.encode_descriptor(
                name,
                help,
                Some(&Unit::Bytes),
                value.metric_type(),
            )?)?;
        }
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
        // /proc counts in 10 ms ticks: one tick of slack.
        assert!(
            after - before <= cores * wall + 0.011,
            "{before} -> {after} in {wall} s on {cores} cores"
        );
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
