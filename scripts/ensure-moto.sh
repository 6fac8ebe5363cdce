#!/usr/bin/env bash
# Ensure `moto_server` (moto[server], which brings boto3) is available.
#
# Idempotent. If moto_server is already on PATH and `python3` can import
# boto3, nothing is done. Otherwise moto[server]==$MOTO_VERSION is installed
# with `python3 -m pip`; if that Python refuses (PEP 668 "externally managed",
# or no pip), into a virtualenv at $DATAPACK_TOOLS_VENV instead, whose bin/
# directory the caller must put first on PATH (scripts/demo.sh does so):
#
#   export PATH="${DATAPACK_TOOLS_VENV:-$HOME/.cache/datapack-worker/venv}/bin:$PATH"
#
# Exits non-zero with a message if moto_server cannot be made available.
set -euo pipefail

MOTO_VERSION="${MOTO_VERSION:-5.2.1}"
VENV="${DATAPACK_TOOLS_VENV:-$HOME/.cache/datapack-worker/venv}"

log() { echo "ensure-moto: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Prefer the tools venv if an earlier run created it.
if [[ -x "$VENV/bin/moto_server" ]]; then
    PATH="$VENV/bin:$PATH"
fi

ready() {
    command -v moto_server >/dev/null 2>&1 \
        && python3 -c 'import boto3' >/dev/null 2>&1
}

report() {
    local version
    version="$(python3 -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || echo unknown)"
    log "ok: $(command -v moto_server) (moto $version)"
    if [[ "$version" != "$MOTO_VERSION" ]]; then
        log "note: moto $version found, the demo is tested with $MOTO_VERSION"
    fi
}

if ready; then
    report
    exit 0
fi

command -v python3 >/dev/null 2>&1 \
    || die "python3 is not installed (Python >= 3.11 is required), e.g. apt-get install -y python3 python3-venv"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "python3 is $(python3 -V 2>&1); Python >= 3.11 is required"

spec="moto[server]==$MOTO_VERSION"

log "moto_server not found; installing '$spec' with $(command -v python3)"
if python3 -m pip --version >/dev/null 2>&1 \
    && python3 -m pip install --disable-pip-version-check --quiet "$spec"; then
    hash -r
    if ready; then
        report
        exit 0
    fi
    log "installed, but moto_server is still not on PATH (pip's script directory is not on PATH?)"
fi

log "installing '$spec' into the virtualenv $VENV"
if [[ ! -x "$VENV/bin/python3" ]]; then
    python3 -m venv "$VENV" \
        || die "cannot create a virtualenv at $VENV (on Debian/Ubuntu: apt-get install -y python3-venv)"
fi
"$VENV/bin/python3" -m pip install --disable-pip-version-check --quiet "$spec" \
    || die "pip install '$spec' into $VENV failed"
PATH="$VENV/bin:$PATH"
hash -r
ready || die "moto_server is still not usable after installing into $VENV"
report
log "put $VENV/bin first on PATH to use it"
