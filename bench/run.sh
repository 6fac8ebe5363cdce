#!/usr/bin/env bash
# The benchmark, in one command (see bench/README.md):
#
#   bench/run.sh            full run: 3 runs per scenario, 2,000 × 1 KiB, 4 × 256 MiB, 50,000 DB rows
#   bench/run.sh --quick    smoke test: 1 run, 200 × 1 KiB, 2 × 64 MiB, 5,000 DB rows
#   bench/run.sh --only small,large,db,proxy   a subset of the scenario groups
#   bench/run.sh --only reconcile --out bench/results/reconcile.md   100,000 keys reconciled (alone)
#   bench/run.sh --only latency   event → row latency at full, light and 80 % load (bench/results/latency.md)
#   bench/run.sh --only writers --out bench/results/db-writers.md   the write path at 1, 2 and 4
#       group-commit writers, interleaved (not part of the full run)
#   bench/run.sh --only db-before --db-before migrations/EARLIER.sql --out bench/results/X.md
#       the write path with the batch function as migrated against an earlier migration's body,
#       interleaved (not part of the full run)
#   bench/run.sh --only worker-before --worker-before OLD/datapack-worker --out bench/results/X.md
#       small objects through an earlier build of the worker and through this one, interleaved
#       (not part of the full run)
#   bench/run.sh --only soak [--soak-minutes 30]   50 % load held, drift of RSS, fds, connections,
#                           latency (bench/results/soak.md)
#   bench/run.sh --perf     also `perf record` each worker run (data kept in the state directory)
#
# Sets up PostgreSQL and moto (scripts/ensure-*.sh), builds the release binary and the
# benchmark examples, starts a private moto server with its bucket and queues (the
# emulated_stack example, the tests' own stack set-up) and a fresh database, runs every
# scenario in this one run, prints a markdown table and writes it to bench/results/latest.md
# (--quick: bench/results/quick.md), raw numbers next to it as .json.
# Run it on a quiet machine: everything shares the CPUs with moto, PostgreSQL and the client.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=bench/results/latest.md
keep_state=0
prev=
for arg in "$@"; do
    [[ "$arg" == --quick ]] && out=bench/results/quick.md
    [[ "$arg" == --perf ]] && keep_state=1
    # A group run alone writes its own result file (a later --out still wins).
    [[ "$prev" == --only && ( "$arg" == soak || "$arg" == latency ) ]] && out=bench/results/$arg.md
    prev=$arg
done

scripts/ensure-postgres.sh
scripts/ensure-moto.sh
export PATH="${DATAPACK_TOOLS_VENV:-$HOME/.cache/datapack-worker/venv}/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datapack-worker/target}"

# BENCH_BIN_DIR: measure binaries built before (datapack-worker, ceiling, db_write,
# emulated_stack in one directory) instead of building the working tree.
if [[ -z "${BENCH_BIN_DIR:-}" ]]; then
    echo "bench: building (release)" >&2
    cargo build --release --locked --bin datapack-worker --example ceiling --example db_write \
        --example emulated_stack
fi
STATE="$(mktemp -d -t datapack-bench.XXXXXX)"
STACK="$STATE/bin/emulated_stack"

cleanup() {
    local rc=$?
    "$STACK" down --state-dir "$STATE" >/dev/null 2>&1 || true
    if ((rc == 0 && keep_state == 0)); then rm -rf -- "$STATE"; else echo "bench: logs kept in $STATE" >&2; fi
}
trap cleanup EXIT INT TERM
# Copies, so a build started meanwhile (another checkout sharing the target directory) cannot
# swap the binary under the benchmark.
mkdir -p "$STATE/bin"
for bin in datapack-worker examples/ceiling examples/db_write examples/emulated_stack; do
    if [[ -n "${BENCH_BIN_DIR:-}" ]]; then
        # Only what the chosen groups need may be there.
        [[ -e "$BENCH_BIN_DIR/${bin#examples/}" ]] && cp "$BENCH_BIN_DIR/${bin#examples/}" "$STATE/bin/"
    else
        cp "$CARGO_TARGET_DIR/release/$bin" "$STATE/bin/"
    fi
done

"$STACK" up --state-dir "$STATE" --bucket datapack-bench --queue datapack-bench >&2
# shellcheck disable=SC1091
. "$STATE/env"

export BENCH_WORKER="$STATE/bin/datapack-worker"
export BENCH_CEILING="$STATE/bin/ceiling"
export BENCH_DB_WRITE="$STATE/bin/db_write"
export BENCH_PG_ADMIN="${BENCH_PG_ADMIN:-postgres://postgres@127.0.0.1:${POSTGRES_PORT:-5432}/postgres}"
export BENCH_STATE="$STATE"
mkdir -p bench/results
python3 bench/bench.py --out "$out" "$@"
