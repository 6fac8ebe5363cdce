#!/usr/bin/env bash
# Ensure cargo can build this project: the Rust toolchain on PATH (rustup's ~/.cargo/bin is
# picked up if the shell did not add it), a C compiler and linker (rustc links with `cc`, and
# the build scripts of ring and aws-lc-sys compile C), the C library's headers, and the CA
# certificates cargo needs to fetch crates over HTTPS.
#
# Idempotent. On Debian/Ubuntu installs `gcc`, `libc6-dev` and `ca-certificates` as root or
# with password-less sudo (scripts/lib/apt.sh). `--fuzz` adds `g++` (libFuzzer is C++).
# Exits non-zero with a message naming what is missing when it cannot install it.
set -euo pipefail

log() { echo "ensure-build-tools: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# shellcheck source=SCRIPTDIR/lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

packages=(gcc libc6-dev ca-certificates)
compilers=(cc)
if [[ "${1:-}" == --fuzz ]]; then
    packages+=(g++)
    compilers+=(c++)
fi

if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 \
    || die "cargo not found: install the Rust toolchain with https://rustup.rs (then open a new shell)"

if [[ -r /etc/debian_version ]]; then
    apt_ensure "${packages[@]}" || die "cannot install ${packages[*]}, which the Rust build needs"
fi
for compiler in "${compilers[@]}"; do
    command -v "$compiler" >/dev/null 2>&1 \
        || die "no C/C++ compiler '$compiler' on PATH: install gcc (and g++ for fuzzing) and the C library headers"
done
log "ok: $(cargo --version), $(cc --version | head -n 1)"
