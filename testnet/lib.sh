# Shared by the testnet scripts (sourced, not run): the node table, starting
# and stopping one node by its pid file, and waiting for its monitoring
# listener. Only bash, coreutils and curl.
#
# A testnet directory holds:
#   nodes.tsv            one line per node (see TSV_HEADER)
#   nodes.env            the same facts as shell variables, for `source`
#   admin.key            the coordinator set's admin key (deposits)
#   admin.toml           a config holding only [coordinators], for `rigmesh admin`
#   <name>/node.toml     the node's configuration
#   <name>/node.log      its stdout and stderr
#   <name>/pid           its process id while it runs
#   <name>/account.key   its account key (the member key on a coordinator)

RIGMESH=${RIGMESH:-rigmesh}

TSV_HEADER=$'#name\trole\taccount\tp2p\tmonitoring\tcustomer_api\tsupplier_api\tgpu_model\tprice'

die() {
    echo "${0##*/}: $*" >&2
    exit 1
}

note() {
    echo "${0##*/}: $*" >&2
}

# Checks that the rigmesh binary can be run.
need_rigmesh() {
    if ! command -v "$RIGMESH" >/dev/null 2>&1; then
        die "cannot run '$RIGMESH'; build it (cargo build -p rigmesh) and set RIGMESH=path/to/rigmesh"
    fi
}

# Checks that $1 holds a testnet and sets TESTNET_DIR to its absolute path.
open_testnet() {
    [[ -n ${1:-} ]] || die "--dir is required"
    [[ -f $1/nodes.tsv ]] || die "$1 holds no testnet (no nodes.tsv); create one with testnet/start.sh"
    TESTNET_DIR=$(cd "$1" && pwd)
}

# Prints the node table without its header: name role account p2p
# monitoring customer_api supplier_api gpu_model price, tab-separated.
nodes() {
    grep -v '^#' "$TESTNET_DIR/nodes.tsv"
}

# Prints the names of the nodes with role $1 (all nodes without $1).
names() {
    local role=${1:-}
    nodes | while IFS=$'\t' read -r name r _; do
        if [[ -z $role || $r == "$role" ]]; then
            echo "$name"
        fi
    done
}

# Sets NODE_ROLE, NODE_ACCOUNT, NODE_P2P, NODE_MONITORING, NODE_CUSTOMER_API,
# NODE_SUPPLIER_API, NODE_GPU_MODEL, NODE_PRICE and NODE_DIR for node $1.
node_info() {
    local line
    # One process reading the file: a pipe into `head` could end its writer
    # with SIGPIPE, which pipefail turns into a failure.
    line=$(awk -F '\t' -v n="$1" '!/^#/ && $1 == n { print; exit }' "$TESTNET_DIR/nodes.tsv")
    [[ -n $line ]] || die "no node named $1 in $TESTNET_DIR/nodes.tsv"
    IFS=$'\t' read -r _ NODE_ROLE NODE_ACCOUNT NODE_P2P NODE_MONITORING NODE_CUSTOMER_API \
        NODE_SUPPLIER_API NODE_GPU_MODEL NODE_PRICE <<<"$line"
    NODE_DIR=$TESTNET_DIR/$1
}

# True when $1 is the pid of the node whose config is $2 (guards against a
# recycled pid after the node died).
is_node_process() {
    local pid=$1 config=$2 args
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r /proc/$pid/cmdline ]]; then
        args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    else
        args=$(ps -p "$pid" -o args= 2>/dev/null) || return 1
    fi
    [[ $args == *"node run --config $config"* ]]
}

# Prints the pid of running node $1; fails when it does not run.
node_pid() {
    local dir=$TESTNET_DIR/$1 pid
    [[ -f $dir/pid ]] || return 1
    pid=$(<"$dir/pid")
    is_node_process "$pid" "$dir/node.toml" || return 1
    echo "$pid"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Starts node $1 in the background; does not wait for it.
launch_node() {
    local name=$1 dir=$TESTNET_DIR/$1
    if node_pid "$name" >/dev/null; then
        die "$name already runs (pid $(node_pid "$name")); stop it first"
    fi
    {
        echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) starting $name"
    } >>"$dir/node.log"
    # stdin from /dev/null and output to the log, so that the caller's pipes
    # close when the script ends even though the node lives on.
    RIGMESH_LOG=${RIGMESH_LOG:-info} "$RIGMESH" node run --config "$dir/node.toml" \
        </dev/null >>"$dir/node.log" 2>&1 &
    local pid=$! tries=0
    echo "$pid" >"$dir/pid"
    # Until the child has exec'd the binary its command line is this
    # script's, and node_pid would take the node for gone: wait for the
    # exec (or the end of the child), up to 5 s on a loaded machine.
    while ((tries < 100)) && kill -0 "$pid" 2>/dev/null && ! is_node_process "$pid" "$dir/node.toml"; do
        sleep 0.05
        tries=$((tries + 1))
    done
}

# True when http://$1/health answers 200. curl when there is one, else
# bash's /dev/tcp, so a machine with only bash and coreutils can run a
# testnet.
health_ok() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --max-time 2 "http://$1/health" >/dev/null 2>&1
    else
        timeout 2 bash -c '
            exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || exit 1
            printf "GET /health HTTP/1.0\r\nHost: %s\r\n\r\n" "$1" >&3
            read -r _ status _ <&3
            [[ $status == 200 ]]' _ "$1" 2>/dev/null
    fi
}

# Waits until node $1 answers on /health, for at most $2 seconds. Fails,
# with the end of its log, when it exits or does not answer in time.
wait_healthy() {
    local name=$1 secs=${2:-30} deadline
    node_info "$name"
    deadline=$((SECONDS + secs))
    while :; do
        if ! node_pid "$name" >/dev/null; then
            note "$name exited; the end of $NODE_DIR/node.log:"
            tail -n 20 "$NODE_DIR/node.log" >&2
            return 1
        fi
        if health_ok "$NODE_MONITORING"; then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            note "$name did not answer on http://$NODE_MONITORING/health within $secs s"
            tail -n 20 "$NODE_DIR/node.log" >&2
            return 1
        fi
        sleep 0.2
    done
}

# Sends signal $2 to node $1 if it runs; prints its pid when it did.
signal_node() {
    local pid
    pid=$(node_pid "$1") || return 0
    kill "-$2" "$pid" 2>/dev/null || true
    echo "$pid"
}

# Stops node $1: SIGTERM, then SIGKILL after $2 seconds.
stop_node() {
    local name=$1 grace=${2:-10} pid deadline config=$TESTNET_DIR/$1/node.toml
    pid=$(signal_node "$name" TERM)
    if [[ -n $pid ]]; then
        deadline=$((SECONDS + grace))
        # A zombie has no command line, so it counts as stopped.
        while is_node_process "$pid" "$config" && ((SECONDS < deadline)); do
            sleep 0.1
        done
        if is_node_process "$pid" "$config"; then
            note "$name (pid $pid) ignored SIGTERM for $grace s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$TESTNET_DIR/$name/pid"
}
