#!/usr/bin/env bash
# Ensure Debian's headless-capable `chromium` and its WebDriver `chromedriver` are installed, for
# the browser upload test. Idempotent: does nothing when both answer `--version`.
#
# Installs the packages `chromium` and `chromium-driver` with apt-get (root, or password-less
# sudo: scripts/lib/apt.sh). Exits
# non-zero with a message if they cannot be installed: the browser test must then fail, not skip.
set -euo pipefail

log() { echo "ensure-chromium: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

ready() {
    command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
        && chromium --version >/dev/null 2>&1 && chromedriver --version >/dev/null 2>&1
}

if ready; then
    log "ok: $(chromium --version 2>/dev/null); $(chromedriver --version 2>/dev/null | head -n1)"
    exit 0
fi

# shellcheck source=SCRIPTDIR/lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"
log "installing chromium and chromium-driver from Debian's packages"
apt_ensure chromium chromium-driver || die "cannot install chromium and chromium-driver"
hash -r
ready || die "chromium or chromedriver still does not start after installing"
log "ok: $(chromium --version 2>/dev/null); $(chromedriver --version 2>/dev/null | head -n1)"
