#!/usr/bin/env bash
# Ensure Debian's headless-capable `chromium` and its WebDriver `chromedriver` are installed, for
# the browser upload test. Idempotent: does nothing when both answer `--version`.
#
# Installs the packages `chromium` and `chromium-driver` with apt-get (root, or sudo). Exits
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

command -v apt-get >/dev/null 2>&1 || die "no apt-get: install chromium and chromedriver by hand"
sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo: cannot install chromium"
    sudo=(sudo)
fi

log "installing chromium and chromium-driver from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt run instead of failing on its lock.
apt=("${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 -y -q)
"${apt[@]}" update >/dev/null || die "apt-get update failed"
"${apt[@]}" install --no-install-recommends chromium chromium-driver >/dev/null \
    || die "apt-get install chromium chromium-driver failed"
hash -r
ready || die "chromium or chromedriver still does not start after installing"
log "ok: $(chromium --version 2>/dev/null); $(chromedriver --version 2>/dev/null | head -n1)"
