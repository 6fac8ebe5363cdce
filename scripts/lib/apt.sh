# shellcheck shell=bash
# Installing Debian packages from the set-up scripts (sourced, not run): as root, or through
# password-less sudo (`sudo -n`, which never waits for a password nobody will type).
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"
#   apt_ensure curl ca-certificates      # installs those not installed yet; fails naming them
#   apt_missing gcc libc6-dev            # prints the ones not installed (nothing when all are)
#   as_root CMD...                       # runs CMD as root, or fails saying why it cannot
#
# `apt-get update` runs once per run of the set-up, not once per script: a successful update
# touches a stamp (~/.cache/datapack-worker/apt-updated), and an install within the hour after
# it goes without one (and updates and retries should it fail). Installs are non-interactive,
# without recommended packages, and wait for another apt run's lock instead of failing on it.
# Messages go to stderr, prefixed with APT_LOG_PREFIX (default: the calling script's name).

APT_LOG_PREFIX="${APT_LOG_PREFIX:-$(basename "${0:-setup}" .sh)}"

apt_log() { echo "$APT_LOG_PREFIX: $*" >&2; }

# How to become root here: prints nothing (already root) or `sudo -n`; fails when neither works.
root_prefix() {
    if [[ "$(id -u)" -eq 0 ]]; then
        return 0
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        echo "sudo -n"
    else
        return 1
    fi
}

# as_root CMD...: CMD as root; fails (status 1, with a message) when this user cannot be root.
as_root() {
    local prefix
    if ! prefix="$(root_prefix)"; then
        apt_log "ERROR: '$*' needs root: run as root or configure password-less sudo"
        return 1
    fi
    # shellcheck disable=SC2086 # the prefix is empty or two words
    $prefix "$@"
}

# apt_missing PKG...: the packages among PKG that are not installed, one a line.
apt_missing() {
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${db:Status-Status}\n' "$pkg" 2>/dev/null | grep -qx installed \
            || echo "$pkg"
    done
}

# For apt_ensure (bash's dynamic scope: they see its locals apt, missing, log and stamp).
_apt_update() {
    apt_log "apt-get update"
    "${apt[@]}" update >"$log" 2>&1 || return 1
    mkdir -p "$(dirname "$stamp")" && touch "$stamp"
}
_apt_install() {
    apt_log "installing ${missing[*]} (apt-get)"
    "${apt[@]}" install --no-install-recommends "${missing[@]}" >"$log" 2>&1
}

# apt_ensure PKG...: installs those of PKG not installed yet; fails with a message naming them.
apt_ensure() {
    local missing
    mapfile -t missing < <(apt_missing "$@")
    ((${#missing[@]} == 0)) && return 0
    if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
        apt_log "ERROR: not a Debian/Ubuntu system (no apt-get): install the equivalent of: ${missing[*]}"
        return 1
    fi
    local prefix
    if ! prefix="$(root_prefix)"; then
        apt_log "ERROR: these Debian packages are needed: ${missing[*]}"
        apt_log "ERROR: installing them needs root: run as root, configure password-less sudo, or run: sudo apt-get install ${missing[*]}"
        return 1
    fi
    # shellcheck disable=SC2206 # the prefix is empty or two words
    local apt=($prefix env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q)
    # apt's chatter goes to a log, shown only when it fails.
    local log stamp="${DATAPACK_APT_STAMP:-$HOME/.cache/datapack-worker/apt-updated}"
    log="$(mktemp "${TMPDIR:-/tmp}/apt.XXXXXX")"
    local rc=0
    if [[ -n "$(find "$stamp" -mmin -60 2>/dev/null)" ]]; then
        _apt_install || { _apt_update && _apt_install; } || rc=1
    else
        { _apt_update && _apt_install; } || rc=1
    fi
    if ((rc)); then
        tail -n 30 "$log" >&2
        apt_log "ERROR: apt-get update/install ${missing[*]} failed (network access to the Debian mirror?)"
    fi
    rm -f "$log"
    hash -r
    return "$rc"
}
