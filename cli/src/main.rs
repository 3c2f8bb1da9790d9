//! `rigmesh`: the one binary of the GPU marketplace. It parses arguments,
//! sets up logging and hands each command to the code that does the work.

mod commands;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// jemalloc rather than the C library's allocator: sled allocates and
/// frees on every read and write, and the ingest's commit step, which
/// bounds a node's intake, runs faster with it while a node holding
/// 100,000 offers stays under its memory target (BENCHMARKS.md). The
/// benches declare the same.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The allocator's statistics, for the node's `rigmesh_allocator_*`
/// metrics. Each read first advances jemalloc's epoch, which refreshes
/// the figures it caches.
fn read_jemalloc() -> Option<rigmesh_node::process_metrics::AllocatorReading> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let bytes = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    Some(rigmesh_node::process_metrics::AllocatorReading {
        allocated: bytes(stats::allocated::read().ok()?),
        active: bytes(stats::active::read().ok()?),
        metadata: bytes(stats::metadata::read().ok()?),
        resident: bytes(stats::resident::read().ok()?),
    })
}

fn main() -> ExitCode {
    rigmesh_node::process_metrics::read_allocator_with(read_jemalloc);
    let cli = commands::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("RIGMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.default_log()));
    // Logs go to stderr so stdout stays clean for pipes and --json.
    let _ = match cli.log_format {
        commands::LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
        commands::LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) if commands::reader_gone(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // Dropped when stderr is closed: nobody is left to tell.
            let _ = writeln!(std::io::stderr(), "error: {}", commands::error_text(&err));
            ExitCode::from(commands::EXIT_ERROR)
        }
    }
}
