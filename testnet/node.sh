#!/usr/bin/env bash
# One node of a testnet: start it again, stop it, crash it, or show it.
#
#   testnet/node.sh --dir DIR start NAME    start with its config and data dir; wait for /health
#   testnet/node.sh --dir DIR stop NAME     SIGTERM (SIGKILL after 10 s)
#   testnet/node.sh --dir DIR kill NAME     SIGKILL at once, as a crash would
#   testnet/node.sh --dir DIR status [NAME] running or not, and /health
#
# NAME is as in DIR/nodes.tsv, e.g. coordinator-3 or supplier-0.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

dir=""
args=()
while (($#)); do
    case $1 in
    --dir) dir=${2:?}; shift 2 ;;
    -h | --help) usage ;;
    *) args+=("$1"); shift ;;
    esac
done
((${#args[@]} >= 1)) || usage
open_testnet "$dir"
action=${args[0]}
name=${args[1]:-}

case $action in
start)
    [[ -n $name ]] || usage
    need_rigmesh
    node_info "$name"
    launch_node "$name"
    wait_healthy "$name" 30
    echo "$name runs (pid $(node_pid "$name")), monitoring on http://$NODE_MONITORING"
    ;;
stop)
    [[ -n $name ]] || usage
    node_info "$name"
    stop_node "$name" 10
    echo "$name stopped"
    ;;
kill)
    [[ -n $name ]] || usage
    node_info "$name"
    pid=$(signal_node "$name" KILL)
    [[ -n $pid ]] || die "$name does not run"
    # Wait until it is gone, so a restart can bind its ports again.
    while is_node_process "$pid" "$NODE_DIR/node.toml"; do
        sleep 0.05
    done
    rm -f "$NODE_DIR/pid"
    echo "$name killed (pid $pid)"
    ;;
status)
    for n in ${name:-$(names)}; do
        node_info "$n"
        if pid=$(node_pid "$n"); then
            health=$(curl -fsS --max-time 2 "http://$NODE_MONITORING/health" 2>/dev/null || echo "no answer")
            printf '%-15s %-11s running (pid %s) %s\n' "$n" "$NODE_ROLE" "$pid" "$health"
        else
            printf '%-15s %-11s stopped\n' "$n" "$NODE_ROLE"
        fi
    done
    ;;
*) usage ;;
esac
