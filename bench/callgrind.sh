#!/usr/bin/env bash
# The worker's instructions per small object, under valgrind's callgrind (see bench/README.md):
#
#   bench/callgrind.sh                         300 and 900 × 1 KiB; bench/results/callgrind.md
#   bench/callgrind.sh --sizes 100,200 --out bench/results/callgrind-quick.md --label "..."
#   CALLGRIND_PROFILE=release-debug bench/callgrind.sh   with line tables, for callgrind_annotate
#                                                        --auto=yes on the kept output files
#   BENCH_BIN_DIR=dir bench/callgrind.sh       measure a binary built before (dir/datapack-worker,
#                                              dir/emulated_stack) instead of building
#
# Same stack as bench/run.sh (a private moto, a fresh database per run); the callgrind.out files
# are kept in the state directory it prints. Instruction counts do not depend on the machine's
# load, so this can run while other work shares the CPUs (it takes a few minutes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile="${CALLGRIND_PROFILE:-release}"
scripts/ensure-postgres.sh
scripts/ensure-moto.sh
command -v valgrind >/dev/null || { echo "callgrind: valgrind is not installed" >&2; exit 1; }
export PATH="${DATAPACK_TOOLS_VENV:-$HOME/.cache/datapack-worker/venv}/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datapack-worker/target}"

if [[ -z "${BENCH_BIN_DIR:-}" ]]; then
    echo "callgrind: building ($profile)" >&2
    cargo build --profile "$profile" --locked --bin datapack-worker --example emulated_stack
fi
src="${BENCH_BIN_DIR:-$CARGO_TARGET_DIR/$profile}"

STATE="$(mktemp -d -t datapack-callgrind.XXXXXX)"
STACK="$STATE/bin/emulated_stack"
cleanup() {
    "$STACK" down --state-dir "$STATE" >/dev/null 2>&1 || true
    echo "callgrind: outputs and logs kept in $STATE" >&2
}
trap cleanup EXIT INT TERM
mkdir -p "$STATE/bin"
cp "$src/datapack-worker" "$STATE/bin/"
if [[ -n "${BENCH_BIN_DIR:-}" ]]; then
    cp "$src/emulated_stack" "$STATE/bin/"
else
    cp "$src/examples/emulated_stack" "$STATE/bin/"
fi

"$STACK" up --state-dir "$STATE" --bucket datapack-callgrind --queue datapack-callgrind >&2
# shellcheck disable=SC1091
. "$STATE/env"
export BENCH_WORKER="$STATE/bin/datapack-worker"
export BENCH_PG_ADMIN="${BENCH_PG_ADMIN:-postgres://postgres@127.0.0.1:${POSTGRES_PORT:-5432}/postgres}"
export BENCH_STATE="$STATE"
mkdir -p bench/results
python3 bench/callgrind.py "$@"
