//! What more than one bench needs.

/// The allocator the `rigmesh` binary runs with, so each bench measures
/// the path a node runs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// CPU time this process has used so far (user and system, every
/// thread), from `/proc/self/stat` in the kernel's fixed 100 Hz ticks.
#[allow(dead_code)] // not every bench reads it
pub(crate) fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which ends with the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line; the state,
    // field 3, is the first after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}
