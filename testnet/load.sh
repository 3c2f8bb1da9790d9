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
#                   [--sample-secs 10] [--samples-out FILE]
#
# It also reports, for a soak: every coordinator's books before and after
# (the totals of its operator API's GET /v1/books: no credit made or lost,
# all four alike to the unit), the suppliers' settlement latency over the
# run (p50 and p99 from their rigmesh_supplier_settlement_seconds
# histograms, first sending to certificate) and each node's resident
# memory, sampled every --sample-secs from /proc (early in the run against
# its end, per role, and each role's total over every sixth of the run, so
# that a soak shows whether memory levels off), with its live heap by
# sixth from the allocator's figures on /metrics and how fast that heap
# still grows (least-squares slopes, MB a minute); --samples-out keeps every
# sample ("seconds name role rss_kb heap_kb"; heap_kb is "-" where
# /metrics could not be read).
#
# Fund the customers first (testnet/fund.sh); every lease escrows its
# whole price for an hour until it settles. Needs python3 for the report.
# Exits 1 when a lease is left unsettled, the coordinators disagree, or
# their books do not hold what was deposited.
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
sample_secs=10
samples_out=""
while (($#)); do
    case $1 in
    --dir) dir=${2:?}; shift 2 ;;
    --duration) duration=${2:?}; shift 2 ;;
    --budget) budget=${2:?}; shift 2 ;;
    --window-secs) window_secs=${2:?}; shift 2 ;;
    --max-price) max_price=${2:?}; shift 2 ;;
    --pause) pause=${2:?}; shift 2 ;;
    --settle-secs) settle_secs=${2:?}; shift 2 ;;
    --sample-secs) sample_secs=${2:?}; shift 2 ;;
    --samples-out) samples_out=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $duration =~ ^[0-9]+$ && $settle_secs =~ ^[0-9]+$ && $sample_secs =~ ^[1-9][0-9]*$ ]] ||
    die "--duration, --settle-secs and --sample-secs are whole seconds"
open_testnet "$dir"
need_rigmesh
command -v python3 >/dev/null || die "the report needs python3"

mapfile -t customers < <(names customer)
mapfile -t suppliers < <(names supplier)
mapfile -t coordinators < <(names coordinator)
mapfile -t everyone < <(names)
((${#customers[@]} > 0 && ${#suppliers[@]} > 0)) || die "the testnet needs customers and suppliers"
mapfile -t models < <(nodes | awk -F '\t' '$2 == "supplier" { print $8 }' | sort -u)
for name in "${customers[@]}" "${suppliers[@]}"; do
    node_pid "$name" >/dev/null || die "$name does not run; start the testnet first"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/rigmesh-load.XXXXXX")
sampler=""
trap '[[ -n $sampler ]] && kill "$sampler" 2>/dev/null; rm -rf "$work"' EXIT

# Every coordinator's books (GET /v1/books on its operator API, which
# replays its journal) into $work/<name>.books.$1.
fetch_books() {
    local name api
    for name in "${coordinators[@]}"; do
        node_info "$name"
        api=$(sed -n 's/^operator_api = "\(.*\)"$/\1/p' "$NODE_DIR/node.toml")
        curl -fsS --max-time 60 -H "Authorization: Bearer $(<"$NODE_DIR/api/operator.token")" \
            "http://$api/v1/books" >"$work/$name.books.$1" 2>/dev/null || echo "null" >"$work/$name.books.$1"
    done
}
# Every supplier's /metrics into $work/<name>.metrics.$1.
fetch_metrics() {
    local name
    for name in "${suppliers[@]}"; do
        node_info "$name"
        curl -fsS --max-time 5 "http://$NODE_MONITORING/metrics" >"$work/$name.metrics.$1" 2>/dev/null ||
            : >"$work/$name.metrics.$1"
    done
}
# Appends "seconds name role rss_kb heap_kb" for every running node to
# $work/rss.tsv every $sample_secs seconds: the resident set from /proc,
# the live heap from the node's /metrics (rigmesh_allocator_allocated_bytes).
# The nodes' pids, roles and monitoring addresses are looked up once; one
# python process then reads every node per sweep (a fork per node and
# sample could not keep up with 74 nodes): the /proc reads take
# microseconds, each /metrics read what the node takes to answer, 2 s at
# most.
sample_memory() {
    local name pid
    for name in "${everyone[@]}"; do
        pid=$(node_pid "$name") || continue
        node_info "$name"
        printf '%s\t%s\t%s\t%s\n' "$name" "$NODE_ROLE" "$pid" "$NODE_MONITORING"
    done >"$work/pids.tsv"
    exec python3 - "$work/pids.tsv" "$work/rss.tsv" "$sample_secs" <<'PY'
import sys, time, urllib.request
pids_file, out_file, every = sys.argv[1], sys.argv[2], float(sys.argv[3])
nodes = [line.rstrip("\n").split("\t") for line in open(pids_file) if line.strip()]
def heap_kb(monitoring):
    try:
        with urllib.request.urlopen(f"http://{monitoring}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("rigmesh_allocator_allocated_bytes "):
                    return str(int(float(line.split()[1]) / 1024))
    except (OSError, ValueError):
        pass
    return "-"
start = time.monotonic()
with open(out_file, "a") as out:
    while True:
        now = int(time.monotonic() - start)
        for name, role, pid, monitoring in nodes:
            try:
                with open(f"/proc/{pid}/status") as status:
                    rss = next((l.split()[1] for l in status if l.startswith("VmRSS:")), None)
            except OSError:
                continue
            if rss:
                out.write(f"{now}\t{name}\t{role}\t{rss}\t{heap_kb(monitoring)}\n")
        out.flush()
        time.sleep(every)
PY
}
# The suppliers' view of their leases (the 10,000 that end last, more
# than a run makes) into $work/<name>.leases$1.
fetch_supplier_leases() {
    local name
    for name in "${suppliers[@]}"; do
        node_info "$name"
        curl -fsS --max-time 5 -H "Authorization: Bearer $(<"$NODE_DIR/api/supplier.token")" \
            "http://$NODE_SUPPLIER_API/v1/leases?limit=10000" >"$work/$name.leases${1:-}" 2>/dev/null || echo "[]" >"$work/$name.leases${1:-}"
    done
}
# Whether every coordinator answered $work/<name>.books.$1 with the same
# totals: 0 when they did, 1 when the totals differ, 2 when one did not
# answer.
books_alike() {
    python3 - "$work" "$1" "${coordinators[@]}" <<'PY'
import json, sys
work, phase, names = sys.argv[1], sys.argv[2], sys.argv[3:]
views = set()
for name in names:
    try:
        books = json.load(open(f"{work}/{name}.books.{phase}"))
    except (OSError, ValueError):
        sys.exit(2)
    if books is None:
        sys.exit(2)
    views.add(json.dumps(books["totals"], sort_keys=True))
sys.exit(0 if len(views) == 1 else 1)
PY
}
# A deposit is applied once a quorum has it: the last coordinator may
# apply a deposit just made a moment later. The books are compared from
# the moment they agree (30 s at most; the report says if they never do,
# or if a coordinator does not answer, which is not waited for).
for _ in $(seq 30); do
    fetch_books before
    alike=0
    books_alike before || alike=$?
    ((alike == 1)) || break
    sleep 1
done
fetch_metrics before
# Leases made during the run are those the suppliers did not hold before
# it, with or without an answer to the bid that made them (a bid that
# timed out at the command line may still have made its lease, which its
# customer's node then ends at once).
fetch_supplier_leases .before
: >"$work/rss.tsv"
if [[ -d /proc/self ]]; then
    sample_memory &
    sampler=$!
fi

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
loops=()
for name in "${customers[@]}"; do
    : >"$work/$name.outcomes"
    bid_loop "$name" "$k" &
    loops+=($!)
    k=$((k + 1))
done
wait "${loops[@]}"

cat "$work"/*.outcomes >"$work/all.outcomes"
leased=$(grep -c '^leased ' "$work/all.outcomes" || true)
echo "bids done: $(wc -l <"$work/all.outcomes") bids, $leased leases; waiting up to $settle_secs s for final settlements"

open_leases() {
    python3 - "$work" "${suppliers[@]}" <<'EOF'
import json, sys
work, suppliers = sys.argv[1], sys.argv[2:]
made = {l.split()[1] for l in open(f"{work}/all.outcomes") if l.startswith("leased ")}
for s in suppliers:
    before = {l["lease"] for l in json.load(open(f"{work}/{s}.leases.before"))}
    made |= {l["lease"] for l in json.load(open(f"{work}/{s}.leases")) if l["lease"] not in before}
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
if [[ -n $sampler ]]; then
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    sampler=""
fi
if [[ -n $samples_out ]]; then
    cp "$work/rss.tsv" "$samples_out" || note "cannot write the memory samples to $samples_out"
fi
fetch_books after
fetch_metrics after

accounts=()
for name in "${customers[@]}" "${suppliers[@]}"; do
    node_info "$name"
    accounts+=("$NODE_ACCOUNT")
done
"$RIGMESH" admin balances --config "$TESTNET_DIR/admin.toml" --admin-key "$TESTNET_DIR/admin.key" --json "${accounts[@]}" >"$work/balances.json"

python3 - "$work" "$TESTNET_DIR" "$duration" <<'EOF'
import collections, decimal, json, re, statistics, sys
work, testnet, duration = sys.argv[1], sys.argv[2], int(sys.argv[3])
D = decimal.Decimal
nodes = [l.rstrip("\n").split("\t") for l in open(f"{testnet}/nodes.tsv") if not l.startswith("#")]
name_of = {n[2]: n[0] for n in nodes}
suppliers = [n[0] for n in nodes if n[1] == "supplier"]
coordinators = [n for n in nodes if n[1] == "coordinator"]

outcomes = [l.rstrip("\n").split(" ", 1) for l in open(f"{work}/all.outcomes")]
kinds = collections.Counter(o[0] for o in outcomes)
made = {o[1] for o in outcomes if o[0] == "leased"}
answered = len(made)
for s in suppliers:
    before = {l["lease"] for l in json.load(open(f"{work}/{s}.leases.before"))}
    made |= {l["lease"] for l in json.load(open(f"{work}/{s}.leases")) if l["lease"] not in before}
print(f"bids: {len(outcomes)}  leased: {kinds['leased']}  no match: {kinds['no_match']}  failed: {kinds['failed']}")
if len(made) > answered:
    print(f"  leases made whose bid got no answer at the command line (timed out; each ended at once by its customer): {len(made) - answered}")
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

# The books: each coordinator's totals, replayed from its journal.
KINDS = ("users", "fees", "escrow", "payable", "disputed", "external")
def totals(name, phase):
    try:
        books = json.load(open(f"{work}/{name}.books.{phase}"))
    except (OSError, ValueError):
        return None
    return None if books is None else {k: D(books["totals"][k]) for k in KINDS}
books_ok = True
print("books (each coordinator's journal replayed: users / fees / escrow / deposits):")
for phase in ("before", "after"):
    views = {}
    for c in coordinators:
        t = totals(c[0], phase)
        if t is None:
            print(f"  {phase:<6} {c[0]:<14} no answer")
            books_ok = False
            continue
        held = sum((t[k] for k in KINDS if k != "external"), D(0))
        views[c[0]] = (t["users"], t["fees"], t["escrow"], t["payable"], t["disputed"], -t["external"])
        # Everything inside rigmesh is what came in from outside.
        books_ok &= held == -t["external"]
        print(f"  {phase:<6} {c[0]:<14} {t['users']} / {t['fees']} / {t['escrow']} / {-t['external']}"
              f"{'' if held == -t['external'] else '  HELD ' + str(held) + ' != DEPOSITS'}")
    if len(set(views.values())) > 1:
        books_ok = False
        print(f"  {phase}: the coordinators' books DIFFER")
before = {totals(c[0], "before") is not None and -totals(c[0], "before")["external"] for c in coordinators}
after = {totals(c[0], "after") is not None and -totals(c[0], "after")["external"] for c in coordinators}
print(f"books: {'balanced, alike at every coordinator' if books_ok else 'NOT balanced or NOT alike'};"
      f" deposits {'unchanged' if before == after else 'changed during the run'}")

# Settlement latency: the suppliers' histograms, after minus before.
def buckets(phase):
    out, count, total = collections.Counter(), 0, 0.0
    for s in suppliers:
        try:
            text = open(f"{work}/{s}.metrics.{phase}").read()
        except OSError:
            continue
        for m in re.finditer(r'^rigmesh_supplier_settlement_seconds_bucket\{le="([^"]+)"\} (\d+)', text, re.M):
            out[float(m.group(1))] += int(m.group(2))
        for m in re.finditer(r'^rigmesh_supplier_settlement_seconds_(count|sum) (\S+)', text, re.M):
            if m.group(1) == "count":
                count += int(float(m.group(2)))
            else:
                total += float(m.group(2))
    return out, count, total
b1, c1, s1 = buckets("after")
b0, c0, s0 = buckets("before")
n = c1 - c0
if n > 0:
    cum = sorted((le, b1[le] - b0[le]) for le in b1)
    top = max((le for le, _ in cum if le != float("inf")), default=0.0)
    def quantile(q):
        for le, c in cum:
            if c >= q * n:
                return f"<= {le:.3f} s" if le != float("inf") else f"> {top:.0f} s"
        return f"> {top:.0f} s"
    print(f"settlement latency (first sending to certificate, {n} settlements): mean {(s1 - s0) / n:.3f} s,"
          f" p50 {quantile(0.5)}, p99 {quantile(0.99)} (histogram bucket bounds)")
else:
    print("settlement latency: no settlements seen in the suppliers' metrics")

# Memory: each node's resident set early in the run against its end.
samples = collections.defaultdict(list)
heaps = collections.defaultdict(list)
for line in open(f"{work}/rss.tsv"):
    t, name, role, kb, *heap = line.rstrip("\n").split("\t")
    samples[(role, name)].append((int(t), int(kb)))
    if heap and heap[0].isdigit():
        heaps[(role, name)].append((int(t), int(heap[0])))
if samples:
    lo, hi = duration / 6, duration / 3
    print(f"resident memory (median MB over seconds {lo:.0f}-{hi:.0f} of the run, then over its last sixth; growth):")
    by_role = collections.defaultdict(list)
    for (role, name), rows in samples.items():
        early = [kb for t, kb in rows if lo <= t < hi]
        late = [kb for t, kb in rows if duration * 5 / 6 <= t <= duration]
        if early and late:
            by_role[role].append((name, statistics.median(early) / 1024, statistics.median(late) / 1024,
                                  max(kb for _, kb in rows) / 1024))
    for role, rows in sorted(by_role.items()):
        e = sum(r[1] for r in rows)
        l = sum(r[2] for r in rows)
        worst = max(rows, key=lambda r: r[2] / r[1])
        print(f"  {role:<12} {len(rows):>3} nodes: {e:8.1f} MB -> {l:8.1f} MB ({(l / e - 1) * 100:+.1f} %);"
              f" largest {max(r[3] for r in rows):.1f} MB; most growth {worst[0]} {worst[1]:.1f} -> {worst[2]:.1f} MB")
    # Each role's total, the median of each node over every sixth of the
    # run: growth that slows sixth by sixth is caches filling to their
    # caps; growth that does not is a leak or a store without bounds.
    sixth = duration / 6
    def by_sixth(what, series):
        print(f"{what} by sixth of the run (each role's total of its nodes' medians, MB):")
        for role in sorted(by_role):
            names = {name for name, *_ in by_role[role]}
            totals = []
            for i in range(6):
                medians = [statistics.median(kb for t, kb in rows if i * sixth <= t < (i + 1) * sixth)
                           for (r, name), rows in series.items()
                           if r == role and name in names and any(i * sixth <= t < (i + 1) * sixth for t, _ in rows)]
                totals.append(sum(medians) / 1024 if len(medians) == len(names) else None)
            print(f"  {role:<12} " + " -> ".join("-" if v is None else f"{v:.1f}" for v in totals))
    by_sixth("resident memory", samples)
    # The live heap, from each node's allocator: resident memory can
    # grow while it stands still (memory allocated at start, zeroed, is
    # resident only once written), and the reverse.
    if heaps:
        by_sixth("live heap (rigmesh_allocator_allocated_bytes)", heaps)
        # How fast each node's live heap still grows: the slope of a
        # least-squares line through its samples, from 30 % of the run
        # (past the start's climb) to its end, and over each third of
        # that span (a slope that falls third by third is levelling off).
        def slope(points):
            if len(points) < 3:
                return None
            try:
                fit = statistics.linear_regression([t for t, _ in points], [kb for _, kb in points])
            except statistics.StatisticsError:
                return None
            return fit.slope * 60 / 1024
        start = duration * 0.3
        spans = [(start, duration)] + [(start + i * (duration - start) / 3, start + (i + 1) * (duration - start) / 3)
                                       for i in range(3)]
        print(f"live heap growth (MB a minute, each role's mean of its nodes' least-squares slopes,"
              f" seconds {start:.0f}-{duration:.0f} of the run; then by third of that span):")
        for role in sorted(by_role):
            names = {name for name, *_ in by_role[role]}
            means = []
            for lo_s, hi_s in spans:
                slopes = [slope([(t, kb) for t, kb in rows if lo_s <= t <= hi_s])
                          for (r, name), rows in heaps.items() if r == role and name in names]
                slopes = [v for v in slopes if v is not None]
                means.append(statistics.fmean(slopes) if slopes else None)
            fmt = lambda v: "-" if v is None else f"{v:.2f}"
            print(f"  {role:<12} {fmt(means[0])}; by third {' / '.join(fmt(v) for v in means[1:])}")
else:
    print("resident memory: not sampled (no /proc)")
sys.exit(0 if agree and closed_all == len(made) and books_ok else 1)
EOF
