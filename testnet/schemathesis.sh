#!/usr/bin/env bash
# Fuzzes every HTTP listener of a running devnet against the OpenAPI
# document the listener itself serves at /openapi.json, with schemathesis:
# no answer may be a server error (5xx), and every answer must have a
# documented status, content type and body schema.
#
#   testnet/schemathesis.sh [--max-examples 8]
#
# Installs schemathesis (the version pinned below) from PyPI into a
# virtual environment under target/ when it is not there yet (python3 with
# venv and pip needed), starts `rigmesh devnet --serve --no-scenario` (the
# built binary: RIGMESH, default target/debug/rigmesh) in a temporary
# directory on free ports, waits until it has written listeners.json (the
# market is up and funded), runs schemathesis against each listener with
# the bootstrap token of the node serving it, then stops the devnet.
# Bounded to a few minutes on 2 cores: few examples per operation, a
# request timeout, one worker.
#
# Not fuzzed: POST /v1/bid. A matching bid escrows the customer's credits
# through the coordinators and starts a lease that meters and settles for
# as long as the devnet runs; random bids would drain the customer's
# deposit within the first examples and then only test "insufficient
# funds". The route's answers are checked against its document by
# node/tests/openapi.rs and the devnet scenario (cli/tests/devnet.rs).
#
# Not fuzzed either: POST /v1/bans on the operator listener. A random ban
# of an address such as 127.0.0.1 would shut this run (and every later
# request of the devnet's own nodes) out for up to a year; the route's
# refusals and answers are checked by the operator writes tests.
set -euo pipefail

# schemathesis's CLI changed in 4.0 (flags, phases, check names): pinned.
SCHEMATHESIS_VERSION=4.32.5
HYPOTHESIS_VERSION=6.170.17

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
RIGMESH=${RIGMESH:-$target/debug/rigmesh}
venv=${SCHEMATHESIS_VENV:-$target/schemathesis-$SCHEMATHESIS_VERSION}
max_examples=8

die() {
    echo "${0##*/}: $*" >&2
    exit 1
}

note() {
    echo "${0##*/}: $*" >&2
}

while [[ $# -gt 0 ]]; do
    case $1 in
    --max-examples)
        [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--max-examples takes a positive number"
        max_examples=$2
        shift 2
        ;;
    -h | --help)
        sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done

[[ -x $RIGMESH ]] || die "no rigmesh binary at $RIGMESH; build it (cargo build -p rigmesh) or set RIGMESH"

# The pinned schemathesis, installed once.
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
    note "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (is python3-venv installed?)"
    # hypothesis pinned too: a newer one has broken an older schemathesis.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION" "hypothesis==$HYPOTHESIS_VERSION" ||
        die "pip could not install schemathesis $SCHEMATHESIS_VERSION"
fi
schemathesis=$venv/bin/schemathesis

work=$(mktemp -d "${TMPDIR:-/tmp}/rigmesh-schemathesis.XXXXXX")
devnet_pid=
stop_devnet() {
    if [[ -n $devnet_pid ]] && kill -0 "$devnet_pid" 2>/dev/null; then
        # SIGINT: the devnet stops its nodes cleanly, as on Ctrl-C.
        kill -INT "$devnet_pid" 2>/dev/null || true
        for _ in $(seq 1 300); do
            kill -0 "$devnet_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$devnet_pid" 2>/dev/null || true
        wait "$devnet_pid" 2>/dev/null || true
    fi
    devnet_pid=
}
cleanup() {
    stop_devnet
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

note "starting the devnet in $work"
"$RIGMESH" devnet --serve --no-scenario --dir "$work/devnet" >"$work/devnet.log" 2>&1 &
devnet_pid=$!

# Ready once the devnet has written where its listeners are.
listeners=$work/devnet/listeners.json
deadline=$((SECONDS + 120))
until [[ -s $listeners ]]; do
    if ! kill -0 "$devnet_pid" 2>/dev/null; then
        cat "$work/devnet.log" >&2
        die "the devnet exited before it was up"
    fi
    if ((SECONDS > deadline)); then
        cat "$work/devnet.log" >&2
        die "the devnet was not up within 120 s"
    fi
    sleep 0.2
done

# Prints "<address> <token file>" of listener $1 on node $2; the token
# file is "-" for listeners without tokens.
where() {
    python3 - "$listeners" "$1" "$2" "${3:--}" <<'EOF'
import json, os, sys
path, listener, node, audience = sys.argv[1:]
nodes = {n["name"]: n for n in json.load(open(path))["nodes"]}
n = nodes[node]
address = n["listeners"][listener]
if address is None:
    sys.exit(f"{node} serves no {listener} listener")
token = "-" if audience == "-" else os.path.join(n["data_dir"], "api", f"{audience}.token")
print(address, token)
EOF
}

# schemathesis writes nothing into the checkout.
cd "$work"
failed=()
# Runs schemathesis against listener $1 of node $2 with the bootstrap
# token of audience $3 ("-" for none); further arguments go to
# schemathesis.
fuzz() {
    local listener=$1 node=$2 audience=$3
    shift 3
    local address token_file
    read -r address token_file < <(where "$listener" "$node" "$audience")
    local auth=()
    if [[ $token_file != - ]]; then
        auth=(--header "Authorization: Bearer $(tr -d '[:space:]' <"$token_file")")
    fi
    echo "== $listener listener of $node at http://$address"
    if ! "$schemathesis" run "http://$address/openapi.json" \
        --url "http://$address" \
        "${auth[@]}" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --phases examples,coverage,fuzzing \
        --max-examples "$max_examples" \
        --request-timeout 10 \
        --workers 1 \
        --seed 15 \
        --suppress-health-check all \
        --generation-database none \
        --no-color \
        "$@"; then
        failed+=("$listener")
    fi
}

# The public listener allows 120 requests a minute from one address, so
# part of its run is answered 429 (documented, so conformant); pacing the
# run to its limit would take minutes.
fuzz public customer -
fuzz monitoring customer -
fuzz customer customer customer --exclude-path /v1/bid
fuzz analytics customer customer
fuzz supplier supplier-0 supplier
fuzz operator coordinator-0 operator --exclude-operation-id post_v1_bans

stop_devnet
if ((${#failed[@]} > 0)); then
    die "schemathesis found problems on: ${failed[*]}"
fi
echo "schemathesis: every listener answers as its OpenAPI document says"
