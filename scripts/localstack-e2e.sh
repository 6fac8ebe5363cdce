#!/usr/bin/env bash
# Applies deploy/aws/stack.yaml on LocalStack (run on the host, no Docker) and runs the worker
# end to end against what it created, scenario by scenario (events, presigned, keys, envelopes,
# overwrite, delete, outage, dlq, shutdown: see scripts/localstack_e2e.py), printing every
# difference from moto it observes. CI runs it after the tests (.ci/run); docs/development.md (LocalStack).
#
# LocalStack runs from a Python 3.13 virtualenv under ~/.cache/datapack-worker/ (the interpreter
# from pyenv, installed with `pyenv install` when missing, or PYTHON313=path); the packages come
# from PyPI pinned by scripts/localstack-constraints.txt, so a new release upstream cannot change
# what CI runs. When LocalStack cannot be installed this exits non-zero with the reason: it never
# skips.
#   scripts/localstack-e2e.sh [--keep] [--outage-secs N]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datapack-worker/target}"
venv="${LOCALSTACK_VENV:-$HOME/.cache/datapack-worker/localstack-venv}"
constraints="scripts/localstack-constraints.txt"
requirements="localstack-core[runtime]==2026.3.0 service_identity"

log() { echo "localstack-e2e: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
started=$SECONDS

# A Python 3.13 interpreter: PYTHON313, else pyenv's newest 3.13, else `pyenv install 3.13`.
is313() { [ -n "$1" ] && "$1" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; }
find313() {
    local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
    if command -v pyenv >/dev/null 2>&1; then pyenv_root="$(pyenv root)"; fi
    find "$pyenv_root/versions" -maxdepth 3 -path '*/3.13*/bin/python3.13' 2>/dev/null | sort -V | tail -n1
}
python="${PYTHON313:-}"
if [ -n "$python" ]; then
    is313 "$python" || die "PYTHON313=$python is not a Python 3.13 interpreter"
else
    python="$(find313)"
    if ! is313 "$python"; then
        pyenv="$(command -v pyenv || echo "${PYENV_ROOT:-$HOME/.pyenv}/bin/pyenv")"
        [ -x "$pyenv" ] || die "LocalStack needs Python 3.13: none found, and no pyenv to install one (set PYTHON313=path)"
        log "no Python 3.13 found; $pyenv install 3.13"
        "$pyenv" install --skip-existing 3.13 >&2 \
            || die "LocalStack needs Python 3.13: \`pyenv install 3.13\` failed (above); set PYTHON313=path"
        python="$(find313)"
        is313 "$python" || die "LocalStack needs Python 3.13: \`pyenv install 3.13\` made none under $("$pyenv" root)/versions"
    fi
fi

# The virtualenv, made again whenever the interpreter, the requirements or the pins change.
stamp="$("$python" -VV | head -n1) | $requirements | $(sha256sum "$constraints" | cut -c1-16)"
if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$stamp" ]; then
    log "installing LocalStack into $venv ($("$python" -V))"
    "$python" -m venv --clear "$venv" || die "cannot create a virtualenv at $venv with $python"
    # shellcheck disable=SC2086 # a space-separated list on purpose
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$constraints" $requirements \
        || die "pip install of LocalStack ($requirements, pinned by $constraints) failed (above)"
    "$venv/bin/python" -c 'import localstack.runtime.main, boto3' \
        || die "LocalStack was installed but does not import (above)"
    printf '%s' "$stamp" >"$venv/.installed"
    log "installed in $((SECONDS - started)) s"
fi

scripts/ensure-postgres.sh >/dev/null
cargo build --release --locked --bin datapack-worker
log "ready to run after $((SECONDS - started)) s"
exec "$venv/bin/python" scripts/localstack_e2e.py --binary "$CARGO_TARGET_DIR/release/datapack-worker" "$@"
