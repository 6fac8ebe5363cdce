#!/usr/bin/env bash
# Dependency advisories: audits Cargo.lock (and the fuzz crate's fuzz/Cargo.lock) with cargo-audit
# against an advisory-db snapshot, offline. Fails on any vulnerability; unmaintained, unsound and
# yanked crates are printed as warnings (docs/development.md, "Dependency advisories", says why each stays).
#
#   ADVISORY_DB   the advisory database (default: shared/advisory-db beside the repository,
#                 i.e. ../shared/advisory-db from its root)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_audit_version=0.22.2
tools="$HOME/.cache/datapack-worker/tools"
db="${ADVISORY_DB:-../shared/advisory-db}"

if [[ ! -d $db/crates ]]; then
    echo "error: no advisory database at $db (expected its crates/ folder)." >&2
    echo "       Put the advisory-db snapshot at ../shared/advisory-db or set ADVISORY_DB." >&2
    exit 1
fi

if ! "$tools/bin/cargo-audit" --version 2>/dev/null | grep -qF "$cargo_audit_version"; then
    env -u CARGO_TARGET_DIR cargo install --locked --quiet --root "$tools" \
        --version "$cargo_audit_version" cargo-audit
fi
export PATH="$tools/bin:$PATH"

status=0
for lock in Cargo.lock fuzz/Cargo.lock; do
    [[ -f $lock ]] || continue
    echo "== cargo audit $lock"
    cargo audit --db "$db" --no-fetch --file "$lock" || status=1
done
exit "$status"
