#!/usr/bin/env bash
# Ensure `s3s-fs` (an S3 server on a local directory that verifies SigV4) is available for the
# signature tests: `cargo install`ed once into a cache outside the clone, reused afterwards.
#
# Idempotent. Prints the path of the executable on stdout; the test command exports it as
# S3S_FS. Building takes ~6 minutes on 2 cores the first time.
#
# Environment: S3S_FS_VERSION (default 0.14.1), DATAPACK_TOOLS_ROOT (default
# ~/.cache/datapack-worker/tools; the binary lands in its bin/).
set -euo pipefail

VERSION="${S3S_FS_VERSION:-0.14.1}"
ROOT="${DATAPACK_TOOLS_ROOT:-$HOME/.cache/datapack-worker/tools}"
BIN="$ROOT/bin/s3s-fs"

log() { echo "ensure-s3s: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

installed_version() {
    # `cargo install --list --root` names every crate installed there with its version.
    cargo install --list --root "$ROOT" 2>/dev/null | sed -n 's/^s3s-fs v\([^:]*\):$/\1/p'
}

if [[ -x "$BIN" && "$(installed_version)" == "$VERSION" ]]; then
    log "ok: $BIN (s3s-fs $VERSION)"
    echo "$BIN"
    exit 0
fi

command -v cargo >/dev/null 2>&1 || die "cargo is not installed"
log "building s3s-fs $VERSION into $ROOT (first time only, ~6 min)"
# A build directory of its own, so it never disturbs the project's target directory; nice'd so
# a concurrent build or test keeps the CPU it needs.
CARGO_TARGET_DIR="$ROOT/build" nice -n 10 cargo install s3s-fs --version "$VERSION" \
    --features binary --locked --root "$ROOT" --quiet \
    || die "cargo install s3s-fs $VERSION failed"
rm -rf "$ROOT/build"
[[ -x "$BIN" ]] || die "s3s-fs is still missing at $BIN"
log "ok: $BIN (s3s-fs $VERSION)"
echo "$BIN"
