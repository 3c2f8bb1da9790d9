#!/usr/bin/env bash
# Deposits credits to testnet accounts with the coordinator set's admin
# key (`rigmesh admin deposit`), then shows every coordinator's view of
# them (`rigmesh admin balances`).
#
#   testnet/fund.sh --dir DIR [--amount 100] [ACCOUNT ...]
#
# ACCOUNT is a node name from DIR/nodes.tsv (customer-0) or a hex public
# key; without one, every customer is funded. Each deposit gets a unique
# reference, so running it twice deposits twice.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

dir=""
amount=100
targets=()
while (($#)); do
    case $1 in
    --dir) dir=${2:?}; shift 2 ;;
    --amount) amount=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown argument $1 (usage: fund.sh --dir DIR [--amount N] [ACCOUNT ...])" ;;
    *) targets+=("$1"); shift ;;
    esac
done
open_testnet "$dir"
need_rigmesh
if ((${#targets[@]} == 0)); then
    read -r -a targets <<<"$(names customer | tr '\n' ' ')"
    ((${#targets[@]} > 0)) || die "the testnet has no customers; name the accounts to fund"
fi

accounts=()
for target in "${targets[@]}"; do
    if [[ $target =~ ^[0-9a-fA-F]{64}$ ]]; then
        account=$target
    else
        node_info "$target"
        account=$NODE_ACCOUNT
    fi
    accounts+=("$account")
    "$RIGMESH" admin deposit --config "$TESTNET_DIR/admin.toml" --admin-key "$TESTNET_DIR/admin.key" \
        --account "$account" --amount "$amount" \
        --reference "testnet $target $(date -u +%Y%m%dT%H%M%S.%N) $RANDOM"
done
"$RIGMESH" admin balances --config "$TESTNET_DIR/admin.toml" --admin-key "$TESTNET_DIR/admin.key" "${accounts[@]}"
