#!/usr/bin/env bash
# Load generator for a running testnet: every customer bids again and again
# for DURATION seconds (`rigmesh bid` for 1 GPU, 1 hour, with a small
# budget, so each lease ends at its budget cap after a few metering windows
# and gets its final settlement), cycling through the GPU models the
# suppliers offer. Then it waits for the final settlements and reports
# leases made, bids refused, what the suppliers were paid and whether
# every coordinator holds the same books.
#
#   testnet/load.sh --dir DIR [--duration 60] [--budget 0.003] [--window-secs 2]
#                   [--max-price 3.29] [--pause 0.2] [--settle-secs 90]
#
# Fund the customers first (testnet/fund.sh); every lease escrows its
# whole price for an hour until it settles. Needs python3 for the report.
# Exits 1 when a lease is left unsettled or the coordinators disagree.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

dir=""
duration=60
budget=0.003
window_secs=2
max_price=3.29
pause=0.2
settle_secs=90
while (($#)); do
    case $1 in
    --dir) dir=${2:?}; shift 2 ;;
    --duration) duration=${2:?}; shift 2 ;;
    --budget) budget=${2:?}; shift 2 ;;
    --window-secs) window_secs=${2:?}; shift 2 ;;
    --max-price) max_price=${2:?}; shift 2 ;;
    --pause) pause=${2:?}; shift 2 ;;
    --settle-secs) settle_secs=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $duration =~ ^[0-9]+$ && $settle_secs =~ ^[0-9]+$ ]] || die "--duration and --settle-secs are whole seconds"
open_testnet "$dir"
need_rigmesh
command -v python3 >/dev/null || die "the report needs python3"

mapfile -t customers < <(names customer)
mapfile -t suppliers < <(names supplier)
((${#customers[@]} > 0 && ${#suppliers[@]} > 0)) || die "the testnet needs customers and suppliers"
mapfile -t models < <(nodes | awk -F '\t' '$2 == "supplier" { print $8 }' | sort -u)
for name in "${customers[@]}" "${suppliers[@]}"; do
    node_pid "$name" >/dev/null || die "$name does not run; start the testnet first"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/rigmesh-load.XXXXXX")
trap 'rm -rf "$work"' EXIT

# One bidding loop per customer. Each outcome is one line:
# "leased <lease id>", "no_match <reason>" or "failed <reason>".
bid_loop() {
    local name=$1 offset=$2 out=$work/$1.outcomes end=$((SECONDS + duration)) i=0 model rc
    node_info "$name"
    while ((SECONDS < end)); do
        model=${models[$(((i + offset) % ${#models[@]}))]}
        i=$((i + 1))
        rc=0
        "$RIGMESH" bid --data-dir "$NODE_DIR" --api "$NODE_CUSTOMER_API" --gpu "$model" --count 1 \
            --max-price "$max_price" --hours 1 --window-secs "$window_secs" --budget "$budget" --json \
            >"$work/$name.out" 2>"$work/$name.err" || rc=$?
        case $rc in
        0) echo "leased $(sed -n 's/^ *"lease": *"\([0-9a-f]*\)".*/\1/p' "$work/$name.out")" ;;
        4) echo "no_match $(awk 'sub(/^no match: /, "") { print; exit }' "$work/$name.err")" ;;
        *) echo "failed $(grep -v '^looking for' "$work/$name.err" | tr '\n' ' ' | cut -c1-300)" ;;
        esac >>"$out"
        sleep "$pause"
    done
}

echo "load: ${#customers[@]} customers bidding for $duration s on ${#models[@]} GPU models;" \
    "1 GPU, budget $budget, $window_secs s windows"
k=0
for name in "${customers[@]}"; do
    : >"$work/$name.outcomes"
    bid_loop "$name" "$k" &
    k=$((k + 1))
done
wait

cat "$work"/*.outcomes >"$work/all.outcomes"
leased=$(grep -c '^leased ' "$work/all.outcomes" || true)
echo "bids done: $(wc -l <"$work/all.outcomes") bids, $leased leases; waiting up to $settle_secs s for final settlements"

# The suppliers' view of every lease, until each lease made here is closed.
fetch_supplier_leases() {
    local name
    for name in "${suppliers[@]}"; do
        node_info "$name"
        curl -fsS --max-time 5 -H "Authorization: Bearer $(<"$NODE_DIR/api/supplier.token")" \
            "http://$NODE_SUPPLIER_API/v1/leases" >"$work/$name.leases" 2>/dev/null || echo "[]" >"$work/$name.leases"
    done
}
open_leases() {
    python3 - "$work" "${suppliers[@]}" <<'EOF'
import json, sys
work, suppliers = sys.argv[1], sys.argv[2:]
made = {l.split()[1] for l in open(f"{work}/all.outcomes") if l.startswith("leased ")}
closed = set()
for s in suppliers:
    for lease in json.load(open(f"{work}/{s}.leases")):
        if (lease.get("settled") or {}).get("closed"):
            closed.add(lease["lease"])
print(len(made - closed))
EOF
}
deadline=$((SECONDS + settle_secs))
while :; do
    fetch_supplier_leases
    left=$(open_leases)
    ((left == 0 || SECONDS >= deadline)) && break
    sleep 1
done

accounts=()
for name in "${customers[@]}" "${suppliers[@]}"; do
    node_info "$name"
    accounts+=("$NODE_ACCOUNT")
done
"$RIGMESH" admin balances --config "$TESTNET_DIR/admin.toml" --admin-key "$TESTNET_DIR/admin.key" --json "${accounts[@]}" >"$work/balances.json"

python3 - "$work" "$TESTNET_DIR" <<'EOF'
import collections, decimal, json, sys
work, testnet = sys.argv[1], sys.argv[2]
D = decimal.Decimal
nodes = [l.rstrip("\n").split("\t") for l in open(f"{testnet}/nodes.tsv") if not l.startswith("#")]
name_of = {n[2]: n[0] for n in nodes}
suppliers = [n[0] for n in nodes if n[1] == "supplier"]
coordinators = [n for n in nodes if n[1] == "coordinator"]

outcomes = [l.rstrip("\n").split(" ", 1) for l in open(f"{work}/all.outcomes")]
kinds = collections.Counter(o[0] for o in outcomes)
made = {o[1] for o in outcomes if o[0] == "leased"}
print(f"bids: {len(outcomes)}  leased: {kinds['leased']}  no match: {kinds['no_match']}  failed: {kinds['failed']}")
for kind in ("no_match", "failed"):
    reasons = collections.Counter(o[1] if len(o) > 1 else "" for o in outcomes if o[0] == kind)
    for reason, n in reasons.most_common(3):
        print(f"  {kind} x{n}: {reason[:200]}")

print("leases by supplier (made by this run):")
totals = collections.Counter()
closed_all = 0
for s in suppliers:
    mine = [l for l in json.load(open(f"{work}/{s}.leases")) if l["lease"] in made]
    settled = [l["settled"] for l in mine if l.get("settled")]
    closed = sum(1 for x in settled if x["closed"])
    closed_all += closed
    earned = sum((D(x["earned"]) for x in settled), D(0))
    fees = sum((D(x["fees"]) for x in settled), D(0))
    refunded = sum((D(x["refunded"]) for x in settled), D(0))
    windows = sum(x["windows"] for x in settled)
    totals.update({"windows": windows})
    print(f"  {s:<12} {len(mine):>4} leases, {closed:>4} closed, {windows:>5} windows settled,"
          f" earned {earned}, fees {fees}, refunded {refunded}")
print(f"final settlements: {closed_all} of {len(made)} leases closed")

balances = json.load(open(f"{work}/balances.json"))
agree, no_escrow, everyone = True, True, True
print("balances (balance / escrowed / next seq, as each coordinator holds them):")
for row in balances:
    views = {(c["balance"], c["escrowed"], c["next_seq"]) for c in row["coordinators"]}
    agree &= len(views) == 1
    no_escrow &= all(D(c["escrowed"]) == 0 for c in row["coordinators"])
    everyone &= len(row["coordinators"]) == len(coordinators)
    shown = "; ".join(sorted(f"{b} / {e} / {s}" for b, e, s in views))
    print(f"  {name_of.get(row['account'], row['account'][:16]):<12} {len(row['coordinators'])} coordinators: {shown}")
print(f"coordinators agree: {'yes' if agree else 'NO'}; answered: "
      f"{'all' if everyone else 'NOT all'}; escrow left: {'none' if no_escrow else 'SOME'}")
sys.exit(0 if agree and closed_all == len(made) else 1)
EOF
