#!/usr/bin/env bash
# A multi-host rigmesh testnet in Linux network namespaces: each node is a
# host of its own, suppliers sit behind NAT routers, and faults are made
# on the links between them. Needs root, iproute2 (`ip`, `tc`) and
# nftables or iptables (the NAT routers' masquerade). Traffic never leaves
# the namespaces: the segments are private ranges joined by a core router
# namespace with no route anywhere else.
#
#   testnet/netns.sh up --dir DIR [--settle-every 3] [--unacked-timeout 3]
#   testnet/netns.sh down --dir DIR            stop the nodes, remove the namespaces
#   testnet/netns.sh exec --dir DIR NODE CMD   run CMD in NODE's namespace
#   testnet/netns.sh cut --dir DIR NODE        partition NODE (its link goes down)
#   testnet/netns.sh heal --dir DIR NODE       bring NODE's link back
#   testnet/netns.sh netem --dir DIR 'delay 40ms 10ms loss 2%'   on every link
#   testnet/netns.sh netem --dir DIR off
#   testnet/netns.sh loss --dir DIR 2          drop 2 % of packets (nftables; no netem needed)
#   testnet/netns.sh loss --dir DIR off
#   testnet/netns.sh delay --dir DIR 40 10     every packet a node sends waits 40 ms
#                                              (+ up to 10 ms); no netem needed (python3)
#   testnet/netns.sh delay --dir DIR off
#   testnet/netns.sh cleanup                   remove namespaces left by any run
#
# Topology (namespace: address):
#   core                  router of the public segment 10.77.0.0/24 (10.77.0.1)
#   coordinator-0..3      10.77.0.10-13, public, each a relay for peers behind NAT
#   nat-1, nat-2, nat-3   NAT routers: 10.77.0.21-23 outside, 10.78.N.1 inside
#   supplier-1, -2        10.78.1.2, 10.78.2.2: private, behind nat-1 and nat-2
#   customer-0            10.78.3.2: private too, on its own segment behind nat-3
# The core router has no route into 10.78.0.0/16, so a host behind NAT is
# reached only through the connections it opens (and the relays it
# reserves on): a customer and a supplier meet through a relay, and DCUtR
# may punch a hole between them.
#
# Every node listens on TCP and QUIC port 4600 at its address; its HTTP
# listeners are on 127.0.0.1:4601-4606 inside its namespace (reach them
# with `exec`). DIR holds the same files as a testnet/start.sh testnet, so
# testnet/node.sh status and the admin commands (run through `exec` in
# customer-0) work on it. RIGMESH names the binary (default: rigmesh on
# PATH).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

# Namespaces of every run carry this prefix, so `cleanup` finds leftovers.
PREFIX=rmnet
PORT=4600
COORDINATORS=(coordinator-0 coordinator-1 coordinator-2 coordinator-3)
SUPPLIERS=(supplier-1 supplier-2)
CUSTOMERS=(customer-0)
MODELS=("NVIDIA H100 80GB HBM3" "NVIDIA A100-SXM4-40GB")
PROFILES=(h100x8 a100x4)
PRICES=(2.49 1.29)

ns_of() { echo "$PREFIX-$1"; }

# The address node $1 listens at.
addr_of() {
    case $1 in
    coordinator-*) echo "10.77.0.$((10 + ${1#coordinator-}))" ;;
    supplier-*) echo "10.78.${1#supplier-}.2" ;;
    customer-0) echo "10.78.3.2" ;;
    *) die "no address for $1" ;;
    esac
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "network namespaces need root"
    command -v ip >/dev/null 2>&1 || die "needs iproute2 (ip)"
}

# Masquerade on a NAT router's outside link, with nftables or iptables.
# Like a home router, it drops what arrives from outside unasked: without
# that, the router's own stack answers a peer's hole-punching packet, sent
# before this side's own went out, with a TCP reset or an ICMP "port
# unreachable" that kills the attempt.
masquerade() {
    local ns=$1 dev=$2
    if command -v nft >/dev/null 2>&1; then
        ip netns exec "$ns" nft -f - <<EOF
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "$dev" masquerade
    }
}
table ip filter {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "$dev" ct state established,related accept
        iifname "$dev" ip protocol icmp accept
        iifname "$dev" drop
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "$dev" accept
    }
}
EOF
    elif command -v iptables >/dev/null 2>&1; then
        ip netns exec "$ns" iptables -t nat -A POSTROUTING -o "$dev" -j MASQUERADE
        ip netns exec "$ns" iptables -P FORWARD DROP
        ip netns exec "$ns" iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
        ip netns exec "$ns" iptables -A FORWARD -i lan -o "$dev" -j ACCEPT
        ip netns exec "$ns" iptables -A INPUT -i "$dev" -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
        ip netns exec "$ns" iptables -A INPUT -i "$dev" -p icmp -j ACCEPT
        ip netns exec "$ns" iptables -A INPUT -i "$dev" -j DROP
    else
        die "needs nftables (nft) or iptables for the NAT routers"
    fi
}

new_ns() {
    local ns=$1
    if ip netns list | awk '{ print $1 }' | grep -qx "$ns"; then
        die "namespace $ns exists already: another netns testnet runs (or one was left" \
            "behind: testnet/netns.sh cleanup removes it)"
    fi
    ip netns add "$ns"
    echo "$ns" >>"$dir/netns.list"
    ip -n "$ns" link set lo up
}

# A veth pair: $2 in namespace $1, $4 in namespace $3.
veth() {
    ip link add "$2" netns "$1" type veth peer name "$4" netns "$3"
    ip -n "$1" link set "$2" up
    ip -n "$3" link set "$4" up
}

# Routes what host $1 sends through a delay line of $2 ms (+ up to $3 ms):
# a TUN device whose packets testnet/delayline.py writes back late. Table
# 201 sends what the host itself sends (iif lo) into the device; table 200
# sends what comes back out of it onward, the way the host's own routes
# did. Everything else the host does is unchanged.
delay_host() {
    local name=$1 ms=$2 jitter=$3 ns addr gateway subnet tries=0
    ns=$(ns_of "$name")
    addr=$(addr_of "$name")
    gateway=$(ip -n "$ns" route show default | awk '{ print $3; exit }')
    subnet=$(ip -n "$ns" route show dev eth0 proto kernel | awk '{ print $1; exit }')
    [[ -n $gateway && -n $subnet ]] || die "$name: no default route or subnet on eth0"
    rm -f "$dir/$name/delay.log"
    ip netns exec "$ns" python3 "$here/delayline.py" dly0 "$ms" "$jitter" \
        </dev/null >"$dir/$name/delay.log" 2>&1 &
    echo $! >"$dir/$name/delay.pid"
    until grep -q '^ready' "$dir/$name/delay.log" 2>/dev/null; do
        ((tries++ < 50)) || die "$name: the delay line did not start: $(cat "$dir/$name/delay.log")"
        sleep 0.1
    done
    ip -n "$ns" link set dly0 up
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
        net.ipv4.conf.dly0.rp_filter=0 net.ipv4.conf.dly0.accept_local=1
    ip -n "$ns" route add "$subnet" dev eth0 table 200
    ip -n "$ns" route add default via "$gateway" dev eth0 table 200
    ip -n "$ns" route add default dev dly0 src "$addr" table 201
    ip -n "$ns" rule add iif dly0 lookup 200 pref 100
    ip -n "$ns" rule add iif lo lookup 201 pref 110
}

# Takes host $1's delay line away (its routes go with its device).
undelay_host() {
    local name=$1 ns pid
    ns=$(ns_of "$name")
    ip -n "$ns" rule del pref 110 2>/dev/null || true
    ip -n "$ns" rule del pref 100 2>/dev/null || true
    ip -n "$ns" route flush table 200 2>/dev/null || true
    ip -n "$ns" route flush table 201 2>/dev/null || true
    if [[ -f $dir/$name/delay.pid ]]; then
        pid=$(cat "$dir/$name/delay.pid")
        kill "$pid" 2>/dev/null || true
        # Its device goes once it has exited; a new one may then take the name.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || ip -n "$ns" link show dly0 >/dev/null 2>&1 || break
            sleep 0.1
        done
        rm -f "$dir/$name/delay.pid"
    fi
}

# Removes every namespace named in DIR/netns.list (and the list).
remove_namespaces() {
    local ns name
    for name in "${COORDINATORS[@]}" "${SUPPLIERS[@]}" "${CUSTOMERS[@]}"; do
        [[ -f $dir/$name/delay.pid ]] && undelay_host "$name"
    done
    [[ -f $dir/netns.list ]] || return 0
    while read -r ns; do
        ip netns del "$ns" 2>/dev/null || true
    done <"$dir/netns.list"
    rm -f "$dir/netns.list"
}

make_network() {
    local core i ns n name
    core=$(ns_of core)
    new_ns "$core"
    ip netns exec "$core" sysctl -qw net.ipv4.ip_forward=1
    ip -n "$core" link add br0 type bridge
    ip -n "$core" addr add 10.77.0.1/24 dev br0
    ip -n "$core" link set br0 up
    # Coordinators and NAT routers on the public segment.
    for name in "${COORDINATORS[@]}" nat-1 nat-2 nat-3; do
        ns=$(ns_of "$name")
        new_ns "$ns"
        # The core's end of each link is named after its host (cut/heal).
        veth "$ns" eth0 "$core" "p-${name//[^0-9]/}${name:0:1}"
        ip -n "$core" link set "p-${name//[^0-9]/}${name:0:1}" master br0
        case $name in
        coordinator-*) ip -n "$ns" addr add "$(addr_of "$name")/24" dev eth0 ;;
        nat-*) ip -n "$ns" addr add "10.77.0.$((20 + ${name#nat-}))/24" dev eth0 ;;
        esac
        ip -n "$ns" route add default via 10.77.0.1
    done
    # Behind each NAT router, one host on a private segment: the
    # suppliers behind nat-1 and nat-2, the customer behind nat-3.
    local hosts=("" supplier-1 supplier-2 customer-0)
    for n in 1 2 3; do
        local nat sup
        nat=$(ns_of "nat-$n")
        sup=$(ns_of "${hosts[$n]}")
        new_ns "$sup"
        veth "$sup" eth0 "$nat" lan
        ip -n "$nat" addr add "10.78.$n.1/24" dev lan
        ip -n "$sup" addr add "10.78.$n.2/24" dev eth0
        ip -n "$sup" route add default via "10.78.$n.1"
        ip netns exec "$nat" sysctl -qw net.ipv4.ip_forward=1
        masquerade "$nat" eth0
    done
}

# The core's end of node $1's link.
core_link() {
    case $1 in
    coordinator-* | nat-*) echo "p-${1//[^0-9]/}${1:0:1}" ;;
    customer-0) core_link nat-3 ;;
    supplier-*) core_link "nat-${1#supplier-}" ;;
    *) die "no link for $1" ;;
    esac
}

toml_list() {
    local out="" item
    for item in "$@"; do
        out+="${out:+, }\"$item\""
    done
    echo "[$out]"
}

account_of() {
    "$RIGMESH" keys show --key-file "$dir/$1/account.key"
}

write_configs() {
    local name members=() addresses=() admin i
    "$RIGMESH" keys new --out "$dir/admin.key" >/dev/null 2>&1 || die "cannot create admin.key"
    admin=$("$RIGMESH" keys show --key-file "$dir/admin.key")
    for name in "${COORDINATORS[@]}" "${SUPPLIERS[@]}" "${CUSTOMERS[@]}"; do
        mkdir -p "$dir/$name"
        "$RIGMESH" keys new --out "$dir/$name/account.key" >/dev/null 2>&1 ||
            die "cannot create $dir/$name/account.key"
    done
    for name in "${COORDINATORS[@]}"; do
        members+=("$(account_of "$name")")
        addresses+=("/ip4/$(addr_of "$name")/tcp/$PORT")
    done
    local table
    table=$(
        echo "[coordinators]"
        echo "epoch = 1"
        echo "members = $(toml_list "${members[@]}")"
        echo "addresses = $(toml_list "${addresses[@]}")"
        echo "admin = \"$admin\""
        echo "unacked_timeout_secs = $unacked_timeout"
        echo "settle_every_windows = $settle_every"
        echo "# a member cut off for this long raises coordinator.unreachable"
        echo "member_unreachable_secs = 10"
    )
    {
        echo "# The coordinator set of this testnet, for rigmesh admin --config."
        echo "$table"
    } >"$dir/admin.toml"
    echo "$TSV_HEADER" >"$dir/nodes.tsv"
    for name in "${COORDINATORS[@]}" "${SUPPLIERS[@]}" "${CUSTOMERS[@]}"; do
        local role=${name%-*} ip model="-" price="-"
        ip=$(addr_of "$name")
        {
            echo "# rigmesh netns testnet node $name ($role), written by testnet/netns.sh"
            echo "role = \"$role\""
            echo "data_dir = \"$dir/$name\""
            echo "monitoring = \"127.0.0.1:$((PORT + 1))\""
            echo "customer_api = \"127.0.0.1:$((PORT + 2))\""
            echo "supplier_api = \"127.0.0.1:$((PORT + 3))\""
            echo "public_api = \"127.0.0.1:$((PORT + 4))\""
            echo "analytics_api = \"127.0.0.1:$((PORT + 5))\""
            echo "operator_api = \"127.0.0.1:$((PORT + 6))\""
            echo
            echo "[network]"
            echo "listen = [\"/ip4/$ip/tcp/$PORT\", \"/ip4/$ip/udp/$PORT/quic-v1\"]"
            echo
            echo "[network.nat]"
            echo "# every address here is private: probe through and answer any peer"
            echo "only_global_ips = false"
            echo "probe_delay_secs = 2"
            echo "probe_interval_secs = 5"
            echo
            echo "[network.limits]"
            echo "# the NAT routers' addresses are shared by whoever sits behind them"
            echo "trusted_addresses = [\"127.0.0.1\", \"10.77.0.21\", \"10.77.0.22\", \"10.77.0.23\"]"
            echo
            echo "$table"
            if [[ $role == supplier ]]; then
                i=$((${name#supplier-} - 1))
                model=${MODELS[$i]}
                price=${PRICES[$i]}
                echo
                echo "[supplier]"
                echo "gpus = { sim = { builtin = \"${PROFILES[$i]}\" } }"
                echo "region = \"netns\""
                echo "offer_ttl_secs = 20"
                echo
                echo "[supplier.prices]"
                echo "\"$model\" = \"$price\""
            fi
        } >"$dir/$name/node.toml"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$role" "$(account_of "$name")" \
            "/ip4/$ip/tcp/$PORT" "127.0.0.1:$((PORT + 1))" "127.0.0.1:$((PORT + 2))" \
            "127.0.0.1:$((PORT + 3))" "$model" "$price" >>"$dir/nodes.tsv"
    done
}

# Starts node $1 in its namespace; does not wait.
launch_in_ns() {
    local name=$1 node_dir=$dir/$1
    echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) starting $name in $(ns_of "$name")" >>"$node_dir/node.log"
    # `ip netns exec` execs the binary, so the pid is the node's.
    RIGMESH_LOG=${RIGMESH_LOG:-info} ip netns exec "$(ns_of "$name")" "$RIGMESH" node run \
        --config "$node_dir/node.toml" </dev/null >>"$node_dir/node.log" 2>&1 &
    echo $! >"$node_dir/pid"
}

# Waits until node $1 answers on /health in its namespace.
wait_healthy_ns() {
    local name=$1 deadline=$((SECONDS + ${2:-30}))
    while :; do
        if ! node_pid "$name" >/dev/null; then
            note "$name exited; the end of $dir/$name/node.log:"
            tail -n 20 "$dir/$name/node.log" >&2
            return 1
        fi
        if ip netns exec "$(ns_of "$name")" timeout 2 bash -c '
            exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
            printf "GET /health HTTP/1.0\r\nHost: x\r\n\r\n" >&3
            read -r _ status _ <&3
            [[ $status == 200 ]]' _ "$((PORT + 1))" 2>/dev/null; then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            note "$name did not answer on /health; the end of its log:"
            tail -n 20 "$dir/$name/node.log" >&2
            return 1
        fi
        sleep 0.2
    done
}

up() {
    need_root
    need_rigmesh
    RIGMESH=$(command -v "$RIGMESH")
    [[ -n $dir ]] || die "--dir is required"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [[ -z $(ls -A "$dir") ]] || die "$dir is not empty; use a fresh directory"
    TESTNET_DIR=$dir
    ready=""
    # Whatever fails from here, nothing is left behind.
    trap '[[ -n $ready ]] || { note "up failed; tearing down (logs stay in $dir)"; down_all; }' EXIT
    make_network
    write_configs
    local name
    for name in "${COORDINATORS[@]}"; do
        launch_in_ns "$name"
    done
    for name in "${COORDINATORS[@]}"; do
        wait_healthy_ns "$name" 30
    done
    for name in "${SUPPLIERS[@]}" "${CUSTOMERS[@]}"; do
        launch_in_ns "$name"
    done
    for name in "${SUPPLIERS[@]}" "${CUSTOMERS[@]}"; do
        wait_healthy_ns "$name" 30
    done
    # Ready when the customer sees every supplier's offer.
    local deadline=$((SECONDS + wait_secs)) seen customer=${CUSTOMERS[0]}
    while :; do
        seen=$(ip netns exec "$(ns_of "$customer")" "$RIGMESH" offers --data-dir "$dir/$customer" \
            --api "127.0.0.1:$((PORT + 2))" 2>/dev/null | tail -n +2 | wc -l) || true
        ((seen >= ${#SUPPLIERS[@]})) && break
        if ((SECONDS >= deadline)); then
            die "$customer sees $seen of ${#SUPPLIERS[@]} suppliers' offers after $wait_secs s"
        fi
        sleep 0.5
    done
    ready=yes
    trap - EXIT
    echo "rigmesh netns testnet in $dir"
    printf '%-15s %-12s %-17s %s\n' node role namespace address
    for name in "${COORDINATORS[@]}" "${SUPPLIERS[@]}" "${CUSTOMERS[@]}"; do
        printf '%-15s %-12s %-17s %s\n' "$name" "${name%-*}" "$(ns_of "$name")" "$(addr_of "$name")"
    done
}

# Stops every node and removes the namespaces of DIR.
down_all() {
    local name
    if [[ -f $dir/nodes.tsv ]]; then
        TESTNET_DIR=$dir
        for name in $(names); do
            stop_node "$name" 10
        done
    fi
    remove_namespaces
}

dir=""
ready=""
settle_every=3
unacked_timeout=3
wait_secs=90
args=()
while (($#)); do
    case $1 in
    --dir) dir=${2:?}; shift 2 ;;
    --settle-every) settle_every=${2:?}; shift 2 ;;
    --unacked-timeout) unacked_timeout=${2:?}; shift 2 ;;
    --wait-secs) wait_secs=${2:?}; shift 2 ;;
    -h | --help) usage 0 ;;
    *) args+=("$1"); shift ;;
    esac
done
((${#args[@]} >= 1)) || usage
for n in settle_every unacked_timeout wait_secs; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "--${n//_/-} must be a whole number, not '${!n}'"
done

case ${args[0]} in
up) up ;;
down)
    need_root
    [[ -n $dir && -d $dir ]] || die "--dir DIR (a netns testnet) is required"
    dir=$(cd "$dir" && pwd)
    down_all
    echo "stopped; namespaces removed"
    ;;
exec)
    ((${#args[@]} >= 3)) || usage
    [[ -n $dir ]] || die "--dir is required"
    exec ip netns exec "$(ns_of "${args[1]}")" "${args[@]:2}"
    ;;
cut | heal)
    ((${#args[@]} == 2)) || usage
    state=down
    [[ ${args[0]} == heal ]] && state=up
    ip -n "$(ns_of core)" link set "$(core_link "${args[1]}")" "$state"
    echo "${args[1]}: link $state"
    ;;
netem)
    ((${#args[@]} >= 2)) || usage
    [[ -n $dir && -f $dir/netns.list ]] || die "--dir DIR (a running netns testnet) is required"
    # Both ends of every link: the core's side and the host's.
    while read -r ns; do
        if [[ $ns == "$(ns_of core)" ]]; then
            links=$(ip -n "$ns" -o link show | awk -F': ' '{ print $2 }' | sed 's/@.*//' |
                grep -E '^(p|u)-' || true)
        else
            links=eth0
        fi
        for link in $links; do
            if [[ ${args[1]} == off ]]; then
                tc -n "$ns" qdisc del dev "$link" root 2>/dev/null || true
            else
                # shellcheck disable=SC2086 # the netem parameters are words
                if ! tc -n "$ns" qdisc replace dev "$link" root netem ${args[*]:1} 2>"$dir/tc.err"; then
                    if grep -q "qdisc kind is unknown" "$dir/tc.err"; then
                        echo "netns.sh: this kernel has no netem (sch_netem); use 'delay' (a delay line) and 'loss' (nftables) instead" >&2
                        exit 3
                    fi
                    cat "$dir/tc.err" >&2
                    exit 1
                fi
            fi
        done
    done <"$dir/netns.list"
    echo "netem ${args[*]:1} on both ends of every link"
    ;;
loss)
    # Drops PERCENT % of the packets leaving every host on its links, with
    # nftables: loss without netem (some kernels lack it).
    ((${#args[@]} == 2)) || usage
    [[ -n $dir && -f $dir/netns.list ]] || die "--dir DIR (a running netns testnet) is required"
    command -v nft >/dev/null 2>&1 || die "loss needs nftables (nft)"
    percent=${args[1]}
    [[ $percent == off || ($percent =~ ^[0-9]+$ && $percent -le 100) ]] ||
        die "loss takes a whole percentage (0-100) or off, not '$percent'"
    while read -r ns; do
        [[ $ns == "$(ns_of core)" ]] && continue
        ip netns exec "$ns" nft delete table inet rigmesh_loss 2>/dev/null || true
        [[ $percent == off ]] && continue
        ip netns exec "$ns" nft -f - <<EOF
table inet rigmesh_loss {
    chain postrouting {
        type filter hook postrouting priority 0; policy accept;
        oifname { "eth0", "lan" } numgen random mod 100 < $percent counter drop
    }
}
EOF
    done <"$dir/netns.list"
    echo "loss $percent% on every host's links"
    ;;
delay)
    # Every packet a node sends waits MS (+ up to JITTER) ms in a delay line:
    # latency without netem (some kernels lack it).
    ((${#args[@]} == 2 || ${#args[@]} == 3)) || usage
    [[ -n $dir && -f $dir/netns.list ]] || die "--dir DIR (a running netns testnet) is required"
    ms=${args[1]}
    jitter=${args[2]:-0}
    [[ $ms == off || ($ms =~ ^[0-9]+$ && $jitter =~ ^[0-9]+$) ]] ||
        die "delay takes whole milliseconds (and a jitter) or off, not '${args[*]:1}'"
    command -v python3 >/dev/null 2>&1 || die "delay needs python3 (testnet/delayline.py)"
    for name in "${COORDINATORS[@]}" "${SUPPLIERS[@]}" "${CUSTOMERS[@]}"; do
        undelay_host "$name"
        [[ $ms == off ]] || delay_host "$name" "$ms" "$jitter"
    done
    if [[ $ms == off ]]; then
        echo "no delay"
    else
        echo "every node's packets wait $ms ms (+ up to $jitter ms)"
    fi
    ;;
cleanup)
    need_root
    pkill -f "delayline.py dly0" 2>/dev/null || true
    for ns in $(ip netns list | awk '{ print $1 }' | grep "^$PREFIX-" || true); do
        ip netns del "$ns" || true
    done
    echo "no $PREFIX-* namespaces left"
    ;;
*) usage ;;
esac
