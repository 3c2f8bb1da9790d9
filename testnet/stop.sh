#!/usr/bin/env bash
# Stops every node of a testnet: SIGTERM to all of them at once (a node
# stops cleanly and flushes its ledger), then SIGKILL to any still running
# after the grace period. Keys, ledgers and logs stay in DIR, so
# testnet/start.sh --dir DIR starts the same testnet again.
#
#   testnet/stop.sh --dir DIR [--grace-secs 10] [--remove]
#
# --remove deletes DIR afterwards. Exits 0 when nothing is left running.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

dir=""
grace=10
remove=""
while (($#)); do
    case $1 in
    --dir) dir=${2:?}; shift 2 ;;
    --grace-secs) grace=${2:?}; shift 2 ;;
    --remove) remove=yes; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (usage: stop.sh --dir DIR [--grace-secs N] [--remove])" ;;
    esac
done
[[ $grace =~ ^[0-9]+$ ]] || die "--grace-secs must be a whole number"
open_testnet "$dir"

declare -A pids=()
for name in $(names); do
    if pid=$(signal_node "$name" TERM) && [[ -n $pid ]]; then
        pids[$name]=$pid
    fi
done
deadline=$((SECONDS + grace))
while ((SECONDS < deadline)); do
    running=0
    for name in "${!pids[@]}"; do
        is_node_process "${pids[$name]}" "$TESTNET_DIR/$name/node.toml" && running=$((running + 1))
    done
    ((running == 0)) && break
    sleep 0.1
done
killed=0
for name in "${!pids[@]}"; do
    if is_node_process "${pids[$name]}" "$TESTNET_DIR/$name/node.toml"; then
        note "$name (pid ${pids[$name]}) still runs after $grace s; SIGKILL"
        kill -KILL "${pids[$name]}" 2>/dev/null || true
        killed=$((killed + 1))
    fi
done
for name in $(names); do
    rm -f "$TESTNET_DIR/$name/pid"
done
if ((killed > 0)); then
    echo "stopped ${#pids[@]} nodes in $TESTNET_DIR ($killed of them with SIGKILL)"
else
    echo "stopped ${#pids[@]} nodes in $TESTNET_DIR"
fi
if [[ -n $remove ]]; then
    rm -rf "$TESTNET_DIR"
fi
