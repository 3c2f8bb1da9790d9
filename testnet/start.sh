#!/usr/bin/env bash
# Starts a rigmesh testnet on loopback: coordinators, suppliers with
# simulated GPUs and customers, each a separate `rigmesh node run` process
# with its own configuration, data directory, ports and log.
#
#   testnet/start.sh [--dir DIR] [--coordinators 4] [--suppliers 3] [--customers 2]
#                    [--base-port 29100] [--fund CREDITS] [--wait-secs 90]
#                    [--unacked-timeout 3] [--settle-every 3] [--epoch 1]
#                    [--evidence-grace SECS]
#
# A new DIR (default: a fresh temporary directory) gets keys and configs,
# once every port it needs is free (a busy port leaves nothing written);
# a DIR that already holds a stopped testnet is started again as it is,
# on the ports it was made with (a different --base-port is refused).
# Node k (coordinators first, then suppliers, then customers) uses ports
# BASE+10k (libp2p, TCP), +1 (monitoring: /health, /metrics), +2 (customer
# API), +3 (supplier API), +4 (public API), +5 (analytics API) and +6
# (operator API); a node binds only those of its role. Ports below 32768 stay clear of the ports
# the kernel hands out for outgoing connections and port 0.
#
# --evidence-grace sets how long after a lease is finally settled every
# node keeps its usage evidence (default: the node's own, 7 days for its
# own leases and at a coordinator, 1 hour for other people's); a soak
# sets it to minutes to see a store that compacts as it grows.
#
# Returns once every node answers on /health and every customer sees an
# offer from every supplier; prints where everything is. Stop it with
# testnet/stop.sh --dir DIR. RIGMESH names the binary (default: rigmesh
# on PATH); RIGMESH_LOG sets the nodes' log filter (default info).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

dir=""
coordinators=4
suppliers=3
customers=2
base_port=29100
base_port_given=""
fund=""
wait_secs=90
unacked_timeout=3
settle_every=3
epoch=1
evidence_grace=""
while (($#)); do
    case $1 in
    --dir) dir=${2:?}; shift 2 ;;
    --coordinators) coordinators=${2:?}; shift 2 ;;
    --suppliers) suppliers=${2:?}; shift 2 ;;
    --customers) customers=${2:?}; shift 2 ;;
    --base-port) base_port=${2:?}; base_port_given=yes; shift 2 ;;
    --fund) fund=${2:?}; shift 2 ;;
    --wait-secs) wait_secs=${2:?}; shift 2 ;;
    --unacked-timeout) unacked_timeout=${2:?}; shift 2 ;;
    --settle-every) settle_every=${2:?}; shift 2 ;;
    --epoch) epoch=${2:?}; shift 2 ;;
    --evidence-grace) evidence_grace=${2:?}; shift 2 ;;
    -h | --help) usage 0 ;;
    *) note "unknown argument $1"; usage ;;
    esac
done
for n in coordinators suppliers customers base_port wait_secs unacked_timeout settle_every epoch; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "--${n//_/-} must be a whole number, not '${!n}'"
done
[[ -z $evidence_grace || $evidence_grace =~ ^[0-9]+$ ]] ||
    die "--evidence-grace must be a whole number of seconds, not '$evidence_grace'"
((coordinators >= 1)) || die "--coordinators must be at least 1 (3f+1 tolerates f faults)"
total=$((coordinators + suppliers + customers))
((base_port >= 1024 && base_port + 10 * total <= 65535)) ||
    die "--base-port $base_port leaves no room for $total nodes (10 ports each, below 65536)"
need_rigmesh

# The simulated rigs, round robin, each priced from a month of public H100
# market data (testnet/h100-prices.json): the H100s at the median, the
# A100s at the 10th percentile, the RTX 4090s at the lowest price seen.
profiles=(h100x8 a100x4 rtx4090x2)
models=("NVIDIA H100 80GB HBM3" "NVIDIA A100-SXM4-40GB" "NVIDIA GeForce RTX 4090")
price_field() {
    sed -n "s/.*\"$1\": *\"\([0-9.]*\)\".*/\1/p" "$here/h100-prices.json"
}
base_prices=("$(price_field median_of_snapshot_median)" "$(price_field median_of_snapshot_p10)"
    "$(price_field lowest_min)")
for p in "${base_prices[@]}"; do
    [[ -n $p ]] || die "cannot read the prices in $here/h100-prices.json"
done

toml_list() {
    local out="" item
    for item in "$@"; do
        out+="${out:+, }\"$item\""
    done
    echo "[$out]"
}

# Writes DIR/<name>/node.toml.
write_config() {
    local name=$1 role=$2 k=$3 profile=${4:-} model=${5:-} price=${6:-}
    local port=$((base_port + 10 * k))
    mkdir -p "$dir/$name"
    {
        echo "# rigmesh testnet node $name ($role), written by testnet/start.sh"
        echo "role = \"$role\""
        echo "data_dir = \"$dir/$name\""
        echo "monitoring = \"127.0.0.1:$((port + 1))\""
        echo "customer_api = \"127.0.0.1:$((port + 2))\""
        echo "supplier_api = \"127.0.0.1:$((port + 3))\""
        echo "public_api = \"127.0.0.1:$((port + 4))\""
        echo "analytics_api = \"127.0.0.1:$((port + 5))\""
        echo "operator_api = \"127.0.0.1:$((port + 6))\""
        echo
        echo "[network]"
        echo "listen = [\"/ip4/127.0.0.1/tcp/$port\"]"
        echo "bootstrap = $(toml_list "${bootstrap[@]}")"
        echo
        echo "$coordinators_table"
        if [[ $role == supplier ]]; then
            echo
            echo "[supplier]"
            echo "gpus = { sim = { builtin = \"$profile\" } }"
            echo "region = \"testnet\""
            echo "# re-published every 10 s: GPUs freed by an ended lease are offered again"
            echo "# only when the offers are re-published"
            echo "offer_ttl_secs = 20"
            echo
            echo "[supplier.prices]"
            echo "\"$model\" = \"$price\""
        fi
    } >"$dir/$name/node.toml"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$role" "$(account_of "$name")" \
        "/ip4/127.0.0.1/tcp/$port" "127.0.0.1:$((port + 1))" "127.0.0.1:$((port + 2))" \
        "127.0.0.1:$((port + 3))" "${model:--}" "${price:--}" >>"$dir/nodes.tsv"
}

account_of() {
    "$RIGMESH" keys show --key-file "$dir/$1/account.key"
}

create_testnet() {
    local i k name
    mkdir -p "$dir"
    "$RIGMESH" keys new --out "$dir/admin.key" >/dev/null 2>&1 ||
        die "cannot create $dir/admin.key"
    local admin
    admin=$("$RIGMESH" keys show --key-file "$dir/admin.key")
    local coordinator_names=() supplier_names=() customer_names=()
    for ((i = 0; i < coordinators; i++)); do coordinator_names+=("coordinator-$i"); done
    for ((i = 0; i < suppliers; i++)); do supplier_names+=("supplier-$i"); done
    for ((i = 0; i < customers; i++)); do customer_names+=("customer-$i"); done
    # Every account key is made here, so the coordinators' keys are the
    # members of the set and every account is known before any node runs.
    for name in "${coordinator_names[@]}" "${supplier_names[@]}" "${customer_names[@]}"; do
        mkdir -p "$dir/$name"
        "$RIGMESH" keys new --out "$dir/$name/account.key" >/dev/null 2>&1 ||
            die "cannot create $dir/$name/account.key"
    done
    local members=() addresses=()
    for ((i = 0; i < coordinators; i++)); do
        members+=("$(account_of "coordinator-$i")")
        addresses+=("/ip4/127.0.0.1/tcp/$((base_port + 10 * i))")
    done
    coordinators_table=$(
        echo "[coordinators]"
        echo "epoch = $epoch"
        echo "members = $(toml_list "${members[@]}")"
        echo "# dialled at start by every node (no /p2p/ suffix needed)"
        echo "addresses = $(toml_list "${addresses[@]}")"
        echo "admin = \"$admin\""
        echo "unacked_timeout_secs = $unacked_timeout"
        echo "settle_every_windows = $settle_every"
        if [[ -n $evidence_grace ]]; then
            echo "evidence_grace_secs = $evidence_grace"
        fi
    )
    {
        echo "# The coordinator set of this testnet, for rigmesh admin --config."
        echo "$coordinators_table"
    } >"$dir/admin.toml"
    echo "$TSV_HEADER" >"$dir/nodes.tsv"

    k=0
    bootstrap=()
    for name in "${coordinator_names[@]}"; do
        write_config "$name" coordinator "$k"
        k=$((k + 1))
    done
    # Suppliers and customers reach the coordinators through the set's
    # addresses; customers also dial every supplier, whom they must reach
    # directly to agree a lease.
    local supplier_addrs=()
    for ((i = 0; i < suppliers; i++)); do
        local p=$((i % ${#profiles[@]})) round=$((i / ${#profiles[@]}))
        local price
        price=$(awk -v b="${base_prices[$p]}" -v r="$round" 'BEGIN { printf "%.2f", b + r / 100 }')
        write_config "supplier-$i" supplier "$k" "${profiles[$p]}" "${models[$p]}" "$price"
        supplier_addrs+=("/ip4/127.0.0.1/tcp/$((base_port + 10 * k))")
        k=$((k + 1))
    done
    bootstrap=("${supplier_addrs[@]}")
    for name in "${customer_names[@]}"; do
        write_config "$name" customer "$k"
        k=$((k + 1))
    done

    {
        echo "# rigmesh testnet: source this file for the facts of nodes.tsv."
        echo "TESTNET_DIR='$dir'"
        echo "BASE_PORT=$base_port"
        echo "ADMIN_KEY='$dir/admin.key'"
        echo "ADMIN_CONFIG='$dir/admin.toml'"
        echo "COORDINATORS='${coordinator_names[*]}'"
        echo "SUPPLIERS='${supplier_names[*]}'"
        echo "CUSTOMERS='${customer_names[*]}'"
        local name role account p2p mon capi sapi model price
        while IFS=$'\t' read -r name role account p2p mon capi sapi model price; do
            local v=${name//-/_}
            echo "${v}_ROLE=$role ${v}_ACCOUNT=$account ${v}_P2P=$p2p ${v}_MONITORING=$mon" \
                "${v}_CUSTOMER_API=$capi ${v}_SUPPLIER_API=$sapi"
        done < <(grep -v '^#' "$dir/nodes.tsv")
    } >"$dir/nodes.env"
}

created_dir=""
if [[ -z $dir ]]; then
    dir=$(mktemp -d "${TMPDIR:-/tmp}/rigmesh-testnet.XXXXXX")
    created_dir=yes
fi
[[ -d $dir ]] || created_dir=yes
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
restarted=""
if [[ -f $dir/nodes.tsv ]]; then
    # A testnet keeps the ports it was made with: its keys, configs and
    # the coordinator table name them.
    recorded=$(sed -n 's/^BASE_PORT=//p' "$dir/nodes.env" 2>/dev/null)
    if [[ -z $recorded ]]; then
        first=$(awk -F '\t' '!/^#/ { print $4; exit }' "$dir/nodes.tsv")
        recorded=${first##*/}
    fi
    if [[ -n $base_port_given && $base_port != "$recorded" ]]; then
        die "$dir holds a testnet on base port $recorded; --base-port $base_port cannot" \
            "change it (its configs name the ports): use another --dir, or remove this one"
    fi
    note "$dir already holds a testnet; starting it again with its own keys and configs"
    restarted=yes
else
    [[ -z $(ls -A "$dir") ]] || die "$dir is neither empty nor a testnet directory"
    # Refuse ports that something else holds before anything is written,
    # so a failed start leaves no testnet behind that names them.
    for ((k = 0; k < total; k++)); do
        for offset in 0 1 2 3; do
            port=$((base_port + 10 * k + offset))
            if port_in_use "$port"; then
                [[ -z $created_dir ]] || rmdir "$dir" 2>/dev/null || true
                die "port $port (for node $k) is in use; pick another --base-port"
            fi
        done
    done
    create_testnet
fi
TESTNET_DIR=$dir

# Refuse ports that something else holds, before anything starts.
while IFS=$'\t' read -r name _ _ p2p mon capi sapi _; do
    node_pid "$name" >/dev/null && die "$name already runs; stop the testnet first (testnet/stop.sh --dir $dir)"
    for addr in "${p2p##*/}" "${mon##*:}" "${capi##*:}" "${sapi##*:}"; do
        if port_in_use "$addr"; then
            if [[ -n $restarted ]]; then
                die "port $addr (for $name) is in use; free it (this testnet keeps its ports)" \
                    "or make a new testnet in another --dir with another --base-port"
            fi
            # Taken between the check above and now: this new testnet
            # is removed again rather than left naming a busy port.
            rm -rf "${dir:?}"/*
            die "port $addr (for $name) is in use; pick another --base-port"
        fi
    done
done < <(nodes)

started=()
ready=""
cleanup_on_failure() {
    local name
    [[ -z $ready ]] || return 0
    note "start failed; stopping the nodes it started (logs stay in $dir)"
    for name in "${started[@]}"; do
        stop_node "$name" 5
    done
    if [[ -z $restarted ]]; then
        note "this testnet keeps its ports; to try other ones, remove $dir first"
    fi
}
trap cleanup_on_failure EXIT

# Coordinators one after another: each dials those already listening, so
# they form a full mesh without retries.
for name in $(names coordinator); do
    launch_node "$name"
    started+=("$name")
    wait_healthy "$name" 30
done
# Suppliers, then customers, each group at once.
for role in supplier customer; do
    group=$(names "$role")
    for name in $group; do
        launch_node "$name"
        started+=("$name")
    done
    for name in $group; do
        wait_healthy "$name" 30
    done
done

# Ready when every customer sees an offer from every supplier.
want=$(names supplier | wc -l)
deadline=$((SECONDS + wait_secs))
for name in $(names customer); do
    node_info "$name"
    while :; do
        seen=$("$RIGMESH" offers --data-dir "$NODE_DIR" --api "$NODE_CUSTOMER_API" 2>/dev/null |
            tail -n +2 | wc -l) || true
        ((seen >= want)) && break
        if ((SECONDS >= deadline)); then
            note "$name sees $seen of $want suppliers' offers after $wait_secs s"
            if [[ -n $restarted ]]; then
                # A restarted supplier numbers its offers from 1 again and
                # its peers ignore them as older than the ones they hold.
                note "a restarted supplier's offers are ignored as stale until their sequence" \
                    "passes the one from before the restart; a fresh testnet avoids this"
            fi
            false
        fi
        sleep 0.5
    done
done
ready=yes

if [[ -n $fund ]]; then
    "$here/fund.sh" --dir "$dir" --amount "$fund"
fi

echo "rigmesh testnet in $dir"
printf '%-15s %-11s %-7s %-26s %-16s %s\n' node role pid p2p monitoring "api (customer / supplier)"
while IFS=$'\t' read -r name role _ p2p mon capi sapi model price; do
    api=$capi
    [[ $role == supplier ]] && api="$sapi  $model at $price/GPU-h"
    printf '%-15s %-11s %-7s %-26s %-16s %s\n' "$name" "$role" "$(node_pid "$name")" "$p2p" "$mon" "$api"
done < <(nodes)
first_customer=$(awk -F '\t' '!/^#/ && $2 == "customer" { print $1; exit }' "$dir/nodes.tsv")
if [[ -n $first_customer ]]; then
    node_info "$first_customer"
    echo
    echo "try:  $RIGMESH offers --data-dir $NODE_DIR --api $NODE_CUSTOMER_API"
fi
echo "fund: $here/fund.sh --dir $dir --amount 100"
echo "load: $here/load.sh --dir $dir --duration 60"
echo "stop: $here/stop.sh --dir $dir"
