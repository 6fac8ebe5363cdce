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
# On Debian/Ubuntu it installs what the virtualenv needs (python3, python3-venv for
# ensurepip, ca-certificates for PyPI) as root or with password-less sudo. A virtualenv
# left half-made by an earlier run (no python, no pip, or a moto that does not import) is
# removed and made again.
#
# Exits non-zero with a message if moto_server cannot be made available.
set -euo pipefail

MOTO_VERSION="${MOTO_VERSION:-5.2.1}"
VENV="${DATAPACK_TOOLS_VENV:-$HOME/.cache/datapack-worker/venv}"

log() { echo "ensure-moto: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# shellcheck source=SCRIPTDIR/lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

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

# The Python to install with: the system's, never the virtualenv's own (callers put the
# virtualenv first on PATH, and it may be the broken thing to replace).
base_python() {
    local dir
    local IFS=:
    for dir in $PATH; do
        [[ "$dir" == "$VENV/bin" ]] && continue
        if [[ -x "$dir/python3" ]]; then
            echo "$dir/python3"
            return 0
        fi
    done
    return 1
}
python="$(base_python)" || { apt_ensure python3 && python="$(base_python)"; } \
    || die "python3 is not installed (Python >= 3.11 is required)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$python is $("$python" -V 2>&1); Python >= 3.11 is required"

spec="moto[server]==$MOTO_VERSION"

log "moto_server not found; installing '$spec' with $python"
if "$python" -m pip --version >/dev/null 2>&1 \
    && "$python" -m pip install --disable-pip-version-check --quiet "$spec"; then
    hash -r
    if ready; then
        report
        exit 0
    fi
    log "installed, but moto_server is still not on PATH (pip's script directory is not on PATH?)"
fi

# A usable virtualenv: its python runs and has pip, and a moto installed there imports (an
# interrupted pip can leave moto_server behind without boto3, which pip then calls satisfied).
venv_usable() {
    "$VENV/bin/python3" -c 'import sys' >/dev/null 2>&1 \
        && "$VENV/bin/python3" -m pip --version >/dev/null 2>&1 \
        && { [[ ! -e "$VENV/bin/moto_server" ]] \
            || "$VENV/bin/python3" -c 'import boto3, moto' >/dev/null 2>&1; }
}

# What Debian splits out of python3: ensurepip (python3-venv; without it `python3 -m venv`
# fails half-way, leaving a virtualenv without pip) and the CA certificates pip needs for PyPI.
if [[ -r /etc/debian_version ]]; then
    apt_ensure python3-venv ca-certificates \
        || die "cannot install python3-venv and ca-certificates, which the virtualenv at $VENV needs"
fi

if [[ -e "$VENV" ]] && ! venv_usable; then
    # Remove only what is recognisably a virtualenv (or nothing at all): the path comes from
    # the environment, and must never cost anyone a directory.
    if [[ -f "$VENV/pyvenv.cfg" ]] || [[ -d "$VENV" && -z "$(ls -A "$VENV")" ]]; then
        log "the virtualenv $VENV is broken (no python, no pip, or moto does not import: an interrupted earlier run?); making it again"
        rm -rf -- "$VENV"
    else
        die "$VENV exists but is not a virtualenv; move it away or set DATAPACK_TOOLS_VENV"
    fi
fi

if [[ ! -e "$VENV" ]]; then
    log "creating the virtualenv $VENV"
    if ! "$python" -m venv "$VENV"; then
        # Never leave a virtualenv without pip behind for the next run to trip over.
        rm -rf -- "$VENV"
        die "cannot create a virtualenv at $VENV (on Debian/Ubuntu it needs the package python3-venv)"
    fi
    venv_usable || die "the new virtualenv at $VENV has no working pip"
fi

log "installing '$spec' into the virtualenv $VENV"
"$VENV/bin/python3" -m pip install --disable-pip-version-check --quiet "$spec" \
    || die "pip install '$spec' into $VENV failed (network access to PyPI?)"
PATH="$VENV/bin:$PATH"
hash -r
ready || die "moto_server is still not usable after installing into $VENV"
report
log "put $VENV/bin first on PATH to use it"
