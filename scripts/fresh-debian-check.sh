#!/usr/bin/env bash
# Runs the two commands the way a new user would: in a minimal Debian 12 root with nothing but
# what the README names (the Rust toolchain, Python 3, root), so any package the set-up forgets
# to install shows up here and not on a newcomer's machine.
#
#   scripts/fresh-debian-check.sh                 demo.sh cold, warm, then over a broken venv
#   scripts/fresh-debian-check.sh --tests         the same, then scripts/test.sh
#   scripts/fresh-debian-check.sh --tests-only    only scripts/test.sh, cold (it builds everything
#                                                 itself: the demo runs are not needed first)
#   scripts/fresh-debian-check.sh --setup-only    only the set-up steps (demo.sh --setup-only:
#                                                 PostgreSQL, moto, C compiler, curl, procps),
#                                                 cold, warm, then over a broken venv
# Options: --keep (keep the root afterwards), --root DIR (build it there; must not exist),
#          --mirror URL (default http://deb.debian.org/debian).
#
# What it does (as root: debootstrap, chroot and mount need it):
#   1. `debootstrap --variant=minbase bookworm` into a new directory (downloads cached in
#      ~/.cache/datapack-worker/debootstrap-cache), with bookworm-updates and -security sources;
#   2. copies this machine's extra CA certificates (/usr/local/share/ca-certificates, and the
#      files the certificate environment variables name) into it, so a TLS-inspecting egress
#      works inside as outside: the set-up's `ca-certificates` install picks them up;
#   3. mounts /proc, /sys and /dev, and the rustup toolchain read-only (RUSTUP_HOME and
#      CARGO_HOME/bin; cargo's registry and the build land inside the root);
#   4. installs python3 and nothing else, clones the committed HEAD of this checkout into it;
#   5. runs the command three times: cold, warm (nothing to do), and after replacing the tools
#      virtualenv with one without pip (what an interrupted first run leaves), which must be
#      repaired; each run is timed, and must leave no process behind;
#   6. checks that a PostgreSQL server answering on 127.0.0.1:5432 outside (the root shares the
#      network) got only the client installed inside, not a second server;
#   7. prints the timings and the root's size, unmounts everything and removes the root, also
#      on failure or Ctrl-C (the root is kept if anything under it is still mounted).
# Uncommitted changes are not part of the check: commit first.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

log() { echo "fresh-debian-check: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

mode=demo
keep=0
root_parent=""
mirror="http://deb.debian.org/debian"
while (($#)); do
    case "$1" in
        --setup-only) mode=setup ;;
        --tests) mode=tests ;;
        --tests-only) mode=tests-only ;;
        --keep) keep=1 ;;
        --root) root_parent="${2:?--root needs a directory}"; shift ;;
        --mirror) mirror="${2:?--mirror needs a URL}"; shift ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

[[ "$(id -u)" -eq 0 ]] || die "run as root (debootstrap, chroot and mount need it)"

# shellcheck source=SCRIPTDIR/lib/apt.sh
. "$here/lib/apt.sh"
command -v debootstrap >/dev/null 2>&1 || apt_ensure debootstrap || die "cannot install debootstrap"

cache="${HOME}/.cache/datapack-worker/debootstrap-cache"
mkdir -p "$cache"
if [[ -n "$root_parent" ]]; then
    [[ -e "$root_parent" ]] && die "$root_parent exists; give a new directory"
    mkdir -p "$root_parent"
else
    root_parent="$(mktemp -d /var/tmp/datapack-fresh-debian.XXXXXX)"
fi
ROOT="$(realpath "$root_parent")/root"
mkdir -p "$ROOT"

rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
[[ -x "$cargo_bin/cargo" && -d "$rustup_home/toolchains" ]] \
    || die "no rustup toolchain at $rustup_home with cargo in $cargo_bin"

# ---------------------------------------------------------------------------- teardown
mounts=()
timings=()

# The pids of the processes whose root directory is the check's root.
processes_inside() {
    local p
    for p in /proc/[0-9]*; do
        [[ "$(readlink "$p/root" 2>/dev/null)" == "$ROOT" ]] && echo "${p#/proc/}"
    done
    return 0
}

still_mounted() { findmnt -rn -o TARGET | grep -F "$ROOT/" || true; }

teardown() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local pids
    pids="$(processes_inside)"
    if [[ -n "$pids" ]]; then
        log "stopping processes left inside the root: $(echo "$pids" | tr '\n' ' ')"
        # shellcheck disable=SC2086 # one pid a word
        kill -TERM $pids 2>/dev/null
        sleep 2
        pids="$(processes_inside)"
        # shellcheck disable=SC2086
        [[ -n "$pids" ]] && kill -KILL $pids 2>/dev/null
    fi
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount -R "${mounts[i]}" 2>/dev/null || umount -R -l "${mounts[i]}"
    done
    if [[ -n "$(still_mounted)" ]]; then
        log "still mounted under $ROOT (root kept, remove it by hand after unmounting):"
        still_mounted >&2
        exit "$((rc == 0 ? 1 : rc))"
    fi
    if [[ -d "$ROOT" ]]; then
        log "size of the root: $(du -sh --one-file-system "$ROOT" | cut -f1) ($ROOT)"
    fi
    if ((${#timings[@]})); then
        log "timings:"
        printf '  %s\n' "${timings[@]}" >&2
    fi
    if ((keep)); then
        log "root kept: $ROOT"
    else
        rm -rf -- "$root_parent"
    fi
    if ((rc == 0)); then log "PASSED ($mode)"; else log "FAILED ($mode), status $rc"; fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# timed LABEL CMD...: runs CMD, records how long it took.
timed() {
    local label=$1 start=$SECONDS rc=0
    shift
    log "== $label"
    "$@" || rc=$?
    timings+=("$(printf '%-48s %5ss%s' "$label" "$((SECONDS - start))" "$( ((rc)) && echo "  FAILED ($rc)")")")
    return "$rc"
}

# ---------------------------------------------------------------------------- 1. the root
timed "debootstrap --variant=minbase bookworm" \
    debootstrap --variant=minbase --cache-dir="$cache" bookworm "$ROOT" "$mirror" >/dev/null \
    || die "debootstrap failed (see $ROOT/debootstrap/debootstrap.log)"
# What a Debian 12 install has: the updates and security suites besides the release.
cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# An apt here told not to trust the Release files' dates (a machine whose clock is off) must be
# told so inside too.
for setting in Acquire::Check-Valid-Until Acquire::Check-Date; do
    if [[ "$(apt-config dump "$setting" 2>/dev/null | sed -n "s/^$setting \"\(.*\)\";/\1/p")" == false ]]; then
        echo "$setting \"false\";" >>"$ROOT/etc/apt/apt.conf.d/90-like-the-host"
    fi
done

# ---------------------------------------------------------------------------- 2. CA certificates
mkdir -p "$ROOT/usr/local/share/ca-certificates"
if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
    cp -a /usr/local/share/ca-certificates/. "$ROOT/usr/local/share/ca-certificates/"
fi
chroot_env=(
    HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TERM="${TERM:-dumb}"
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    RUSTUP_HOME=/root/.rustup
)
for var in SSL_CERT_FILE SSL_CERT_DIR REQUESTS_CA_BUNDLE PIP_CERT CURL_CA_BUNDLE \
    CARGO_HTTP_CAINFO GIT_SSL_CAINFO NODE_EXTRA_CA_CERTS AWS_CA_BUNDLE \
    http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    value="${!var:-}"
    [[ -n "$value" ]] || continue
    chroot_env+=("$var=$value")
    # A bundle outside the system's store comes along; the system's store is made inside by
    # update-ca-certificates when the set-up installs ca-certificates.
    if [[ "$var" != *_proxy && "$var" != *_PROXY && -f "$value" && "$value" != /etc/ssl/certs/* ]]; then
        mkdir -p "$ROOT$(dirname "$value")"
        cp "$value" "$ROOT$value"
    fi
done

# ---------------------------------------------------------------------------- 3. mounts
bind() { # bind SRC DST [ro]
    mkdir -p "$2"
    mount --rbind "$1" "$2"
    mounts+=("$2")
    mount --make-rslave "$2"
    [[ "${3:-}" == ro ]] && mount -o remount,bind,ro "$2"
    return 0
}
mount -t proc proc "$ROOT/proc" && mounts+=("$ROOT/proc")
mount -t sysfs sys "$ROOT/sys" && mounts+=("$ROOT/sys")
bind /dev "$ROOT/dev"
bind "$rustup_home" "$ROOT/root/.rustup" ro
bind "$cargo_bin" "$ROOT/root/.cargo/bin" ro

inside() { chroot "$ROOT" /usr/bin/env -i "${chroot_env[@]}" bash -c "$1"; }

# ---------------------------------------------------------------------------- 4. python3, the clone
timed "apt-get install python3 (the README's prerequisite)" \
    inside 'export DEBIAN_FRONTEND=noninteractive; apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends python3 >/dev/null' \
    || die "cannot install python3 inside"
git -C "$repo" diff --quiet HEAD 2>/dev/null || log "note: uncommitted changes are not part of the check"
commit="$(git -C "$repo" rev-parse HEAD)"
git clone -q --no-hardlinks --no-checkout "$repo" "$ROOT/root/datapack-worker"
git -C "$ROOT/root/datapack-worker" checkout -q "$commit"
log "checked out $commit into /root/datapack-worker"
# du stays off proc, sys and dev (other file systems), not off the toolchain's bind mounts.
root_size() {
    du -sh --one-file-system --exclude="$ROOT/root/.rustup" --exclude="$ROOT/root/.cargo/bin" \
        "$ROOT" 2>/dev/null | cut -f1
}
log "size of the root before the set-up: $(root_size) (with python3 and the clone)"
packages_before="$(inside "dpkg-query -W -f='\${Package}\n' | sort")"

# ---------------------------------------------------------------------------- 5. the runs
case "$mode" in
    setup) command='scripts/demo.sh --setup-only' ;;
    *) command='scripts/demo.sh' ;;
esac
venv=/root/.cache/datapack-worker/venv

run() { # run LABEL COMMAND
    timed "$1" inside "cd /root/datapack-worker && $2" || die "'$2' failed ($1)"
    local left
    left="$(processes_inside)"
    [[ -z "$left" ]] || die "'$2' left processes running: $(ps -o pid=,args= -p "$(echo "$left" | paste -sd,)")"
}

if [[ "$mode" != tests-only ]]; then
    run "$command (cold)" "$command"
    run "$command (warm)" "$command"
    # What an interrupted first run left behind before ensure-moto repaired venvs: one without pip.
    inside "rm -rf $venv && python3 -m venv --without-pip $venv" || die "cannot break the venv"
    log "replaced $venv by a virtualenv without pip"
    run "$command (venv without pip)" "$command"
    inside "$venv/bin/python3 -c 'import boto3, moto' && $venv/bin/python3 -m pip --version >/dev/null" \
        || die "the virtualenv was not repaired"
fi

if [[ "$mode" == setup ]]; then
    inside 'cargo --version && cc --version | head -n 1 && curl --version | head -n 1 && psql --version' \
        || die "the build tools are not usable inside"
fi
if [[ "$mode" == tests || "$mode" == tests-only ]]; then
    run "scripts/test.sh (cold)" scripts/test.sh
fi

# ---------------------------------------------------------------------------- 6. PostgreSQL
if timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5432' 2>/dev/null; then
    if [[ "$mode" == tests* ]]; then
        # The tests' own servers need initdb and pg_ctl: the server package, but no cluster of it.
        clusters="$(inside 'pg_lsclusters -h 2>/dev/null' || true)"
        [[ -z "$clusters" ]] \
            || die "a server answered on 127.0.0.1:5432, yet the set-up created a cluster: $clusters"
        log "a server answered on 127.0.0.1:5432: the client and the server's tools were installed, no cluster ($(inside 'psql --version'))"
    else
        if inside "dpkg-query -W -f='\${db:Status-Status}' postgresql 2>/dev/null | grep -qx installed"; then
            die "a server answered on 127.0.0.1:5432, yet the set-up installed the postgresql server package"
        fi
        log "a server answered on 127.0.0.1:5432: only the client was installed ($(inside 'psql --version'))"
    fi
fi
added="$(comm -13 <(echo "$packages_before") <(inside "dpkg-query -W -f='\${Package}\n' | sort") | paste -sd' ')"
log "packages the set-up installed ($(wc -w <<<"$added")): $added"
log "size of the root after the set-up: $(root_size)"
