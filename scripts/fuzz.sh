#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of the code that reads untrusted input:
# queue message bodies, object keys, RFC 2047 metadata. Targets and seeds live in fuzz/.
#
#   scripts/fuzz.sh smoke            each target FUZZ_SMOKE_SECS (25) s; fails on any crash
#   scripts/fuzz.sh long [SECONDS]   each target SECONDS (600); after a crash it records it and
#                                    goes on fuzzing, then prints executions, exec/s and crashes
#   scripts/fuzz.sh build            builds the targets only
#
# Runs on the stable toolchain: `--sanitizer none` needs no unstable flag (the coverage
# instrumentation is made of stable -C options), and a panic aborts the process, which libFuzzer
# reports as a crash. Safe Rust has no memory errors for AddressSanitizer to find, so none is
# used. Installs cargo-fuzz and builds outside the clone ($HOME/.cache/datapack-worker), so later
# runs reuse both. The working corpus grows there too; fuzz/seeds/ holds the committed seeds.
# Crash inputs are written to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-smoke}"
cache="$HOME/.cache/datapack-worker"
tools="$cache/tools"
cargo_fuzz_version=0.13.2
targets=(parse_message decode_key rfc2047)
# Bodies up to the parser's limit, 1 MiB (SQS's own maximum message size; src/process/event.rs);
# keys and header values are far shorter in practice.
declare -A max_len=([parse_message]=1048576 [decode_key]=4096 [rfc2047]=4096)

# Its own target directory: instrumented builds use other flags and would evict the test build.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$cache/fuzz-target}"
corpora="${FUZZ_CORPUS_DIR:-$cache/fuzz-corpus}"
export CARGO_TERM_COLOR=never

install_tools() {
    # libFuzzer itself is C++, compiled by libfuzzer-sys's build script: g++ (as root or with
    # password-less sudo), besides the C toolchain every build needs.
    scripts/ensure-build-tools.sh --fuzz
    if ! "$tools/bin/cargo-fuzz" --version 2>/dev/null | grep -qF "$cargo_fuzz_version"; then
        env -u CARGO_TARGET_DIR cargo install --locked --quiet --root "$tools" \
            --version "$cargo_fuzz_version" cargo-fuzz
    fi
    export PATH="$tools/bin:$PATH"
}

build() {
    echo "== cargo fuzz build (target dir $CARGO_TARGET_DIR)"
    cargo fuzz build --sanitizer none
}

# run_once TARGET SECONDS LOG: one libFuzzer run; its exit status says whether it crashed.
run_once() {
    local target=$1 secs=$2 log=$3
    local args=(
        -max_total_time="$secs" -print_final_stats=1 -max_len="${max_len[$target]}"
        -timeout=10 -rss_limit_mb=2048
    )
    if [[ -f fuzz/dict/$target.dict ]]; then
        args+=(-dict="fuzz/dict/$target.dict")
    fi
    mkdir -p "$corpora/$target"
    # New inputs go to the first corpus directory (outside the clone); the seeds are read only.
    cargo fuzz run --sanitizer none "$target" "$corpora/$target" "fuzz/seeds/$target" \
        -- "${args[@]}" >"$log" 2>&1
}

# stat NAME LOG: a figure from libFuzzer's final statistics (0 when absent).
stat() {
    local value
    value="$(sed -n "s/^stat::$1: *\([0-9]*\).*/\1/p" "$2" | tail -n 1)"
    echo "${value:-0}"
}

# Where a crash panicked and why, in one line.
crash_summary() {
    local where why
    where="$(grep -m1 -o "panicked at [^ ]*" "$1" | sed 's/^panicked at //; s/:$//')"
    why="$(grep -m1 -A1 "panicked at" "$1" | tail -n 1)"
    local unit
    unit="$(grep -m1 -o "Test unit written to [^ ]*" "$1" | sed 's/^Test unit written to //')"
    if [[ -z $where ]]; then
        where="$(grep -m1 "ERROR: libFuzzer" "$1" || echo "unknown")"
    fi
    echo "${where} | ${why} | ${unit}"
}

smoke() {
    local secs="${FUZZ_SMOKE_SECS:-25}" failed=0 log
    log="$(mktemp)"
    for target in "${targets[@]}"; do
        if run_once "$target" "$secs" "$log"; then
            printf '%-14s ok: %s executions in %s s\n' "$target" \
                "$(stat number_of_executed_units "$log")" "$secs"
        else
            failed=1
            printf '%-14s CRASH: %s\n' "$target" "$(crash_summary "$log")"
            tail -n 40 "$log" >&2
        fi
    done
    rm -f "$log"
    return "$failed"
}

# long: runs each target for its whole budget; a crash is recorded and fuzzing resumes with the
# time left (the crash input never enters the corpus, so the same bug is found again quickly:
# crashes are counted, and told apart by where they panicked).
long() {
    local secs="${1:-600}" total_crashes=0
    local logs="${FUZZ_LOG_DIR:-$cache/fuzz-logs}"
    mkdir -p "$logs"
    printf '%-14s %12s %8s %10s %8s %8s  %s\n' target executions seconds exec/s crashes distinct \
        "new corpus units"
    local report=()
    for target in "${targets[@]}"; do
        local start now left execs=0 crashes=0 new=0 runs=0 log
        declare -A seen=()
        start=$(date +%s)
        left=$secs
        while ((left > 0 && runs < 100)); do
            runs=$((runs + 1))
            log="$logs/$target-$runs.log"
            if run_once "$target" "$left" "$log"; then
                :
            else
                crashes=$((crashes + 1))
                local summary
                summary="$(crash_summary "$log")"
                seen["${summary%% |*}"]="$summary"
            fi
            execs=$((execs + $(stat number_of_executed_units "$log")))
            new=$((new + $(stat new_units_added "$log")))
            now=$(date +%s)
            left=$((secs - (now - start)))
        done
        local elapsed=$(($(date +%s) - start))
        printf '%-14s %12s %8s %10s %8s %8s  %s\n' "$target" "$execs" "$elapsed" \
            "$((execs / (elapsed > 0 ? elapsed : 1)))" "$crashes" "${#seen[@]}" "$new"
        for where in "${!seen[@]}"; do
            report+=("$target: ${seen[$where]}")
        done
        total_crashes=$((total_crashes + crashes))
        unset seen
    done
    for line in "${report[@]}"; do
        echo "crash $line"
    done
    echo "logs: $logs"
    ((total_crashes == 0))
}

install_tools
build
case "$mode" in
    smoke) smoke ;;
    long) long "${2:-600}" ;;
    build) ;;
    *)
        echo "usage: $0 smoke | long [SECONDS] | build" >&2
        exit 2
        ;;
esac
