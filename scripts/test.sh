#!/usr/bin/env bash
# The test command: sets up what the tests need on a fresh machine (a C compiler, PostgreSQL,
# moto, Chromium, s3s-fs, promtool, the dashboard type-checker, cargo-fuzz), then runs every
# test against the real parts.
#
#   scripts/test.sh            all tests (unit, integration, observability checks, fuzz smoke)
#   scripts/test.sh -- NAME    only the cargo tests whose name contains NAME
#
# CHAOS_OBJECTS / CHAOS_KILLS size the crash test (defaults keep CI inside its time budget).
set -euo pipefail
cd "$(dirname "$0")/.."

# Set-up: installs what is missing on Debian/Ubuntu, as root or with password-less sudo.
scripts/ensure-build-tools.sh
# --server-tools: the tests that run a PostgreSQL of their own need initdb and pg_ctl, also
# where the server that answers on 5432 is not this machine's.
scripts/ensure-postgres.sh --server-tools
scripts/ensure-moto.sh
scripts/ensure-chromium.sh
# procps: `kill` (the tests stop real processes); prometheus (promtool), nodejs and npm: the
# observability checks below.
# shellcheck source=SCRIPTDIR/lib/apt.sh
. scripts/lib/apt.sh
# By command, not by package: a machine whose Node.js comes from elsewhere (NodeSource's nodejs
# carries npm, and conflicts with Debian's npm package) already has what the checks need.
if [[ -r /etc/debian_version ]]; then
    wanted=()
    [[ -x /bin/kill || -x /usr/bin/kill ]] && command -v ps >/dev/null 2>&1 || wanted+=(procps)
    command -v promtool >/dev/null 2>&1 || wanted+=(prometheus)
    command -v node >/dev/null 2>&1 || wanted+=(nodejs)
    command -v npm >/dev/null 2>&1 || wanted+=(npm)
    ((${#wanted[@]} == 0)) || apt_ensure "${wanted[@]}"
fi
# s3s-fs: a second S3 server, one that verifies SigV4, for the presigned-URL tests.
S3S_FS="$(scripts/ensure-s3s.sh)"
export S3S_FS
export PATH="${DATAPACK_TOOLS_VENV:-$HOME/.cache/datapack-worker/venv}/bin:$PATH"
# A target directory outside the clone: later runs (and CI on the same machine) reuse the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datapack-worker/target}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

filter=()
if [[ "${1:-}" == "--" ]]; then
    shift
    filter=("$@")
fi

# First, because it installs promtool and prometheus, which the metrics tests use too.
if [[ ${#filter[@]} -eq 0 ]]; then
    bash deploy/observability/check.sh
fi

# Release profile: the tests hash hundreds of MiB, and the demo and benchmark share this build.
# The exact-metrics test leaves its scrape here, for the checks below.
scrape="$(mktemp)"
trap 'rm -f "$scrape"' EXIT
DPW_SCRAPE_OUT="$scrape" cargo test --release --locked -- "${filter[@]}"

# Every metric the dashboard and alerts use must be in a real scrape, which promtool must accept.
if [[ ${#filter[@]} -eq 0 ]]; then
    METRICS_FILE="$scrape" STRICT_METRICS=1 bash deploy/observability/check.sh
fi

# A short run of every fuzz target (message bodies, keys, RFC 2047): any crash fails the tests.
if [[ ${#filter[@]} -eq 0 ]]; then
    scripts/fuzz.sh smoke
fi
