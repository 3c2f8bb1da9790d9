//! What more than one bench needs.

/// The allocator the `rigmesh` binary runs with, so each bench measures
/// the path a node runs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// CPU time this process has used so far (user and system, every
/// thread), as the node's `process_cpu_seconds_total` reads it.
#[allow(dead_code)] // not every bench reads it
pub(crate) fn cpu_seconds() -> f64 {
    rigmesh_node::process_metrics::read().map_or(0.0, |r| r.cpu_seconds)
}

/// Resident memory of this process (VmRSS), MB.
#[allow(dead_code)] // not every bench reads it
pub(crate) fn resident_mb() -> f64 {
    rigmesh_node::process_metrics::read().map_or(0.0, |r| r.resident_bytes as f64 / 1e6)
}
