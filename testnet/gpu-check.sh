#!/usr/bin/env bash
# Shows what a rigmesh supplier would see of this machine's NVIDIA GPUs:
# inventory, then samples of every metric, read through NVML with no
# fallback to simulated GPUs. Exits 2 when NVML is unavailable.
#
#   testnet/gpu-check.sh                      build and run the example
#   testnet/gpu-check.sh path/to/gpu_check    run a prebuilt binary
#   testnet/gpu-check.sh BIN SAMPLES INTERVAL_MS
set -euo pipefail

if [[ $# -ge 1 ]]; then
    binary=$1
    shift
    if [[ ! -x $binary ]]; then
        echo "gpu-check: $binary is not an executable file" >&2
        exit 1
    fi
    exec "$binary" "$@"
fi

cd "$(dirname "$0")/.."
exec cargo run -p rigmesh-node --example gpu_check --release
