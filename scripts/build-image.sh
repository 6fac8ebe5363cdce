#!/usr/bin/env bash
# Builds the datapack-worker container image without a Docker engine or a base image: buildah
# assembles it from scratch out of the release binary (a stripped copy), the shared libraries it
# links (ldd), the dynamic loader and the CA certificates; user 65532, no shell. Then it runs the
# image (`--version`, `--help`) as a smoke test, exports it as an OCI archive and prints its size.
#
#   scripts/build-image.sh            # builds the binary if needed, then the image
# Environment:
#   IMAGE_NAME      image name (default datapack-worker), tagged with the crate version
#   IMAGE_OUT       directory of the OCI archive (default $CARGO_TARGET_DIR/image)
#   SKIP_CARGO=1    use the existing release binary as it is
# buildah keeps its storage under ~/.cache/datapack-worker/containers (vfs driver, chroot
# isolation: no daemon, no overlay mounts, no user namespaces needed).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datapack-worker/target}"
cache="$HOME/.cache/datapack-worker/containers"
name="${IMAGE_NAME:-datapack-worker}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
image="localhost/$name:$version"
out="${IMAGE_OUT:-$CARGO_TARGET_DIR/image}"
archive="$out/$name-$version.oci.tar"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need buildah || ! need objcopy; then
  echo "==> installing buildah and binutils (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends buildah binutils >/dev/null ||
    { apt-get update >/dev/null && apt-get install -y --no-install-recommends buildah binutils >/dev/null; }
fi
bh() { buildah --root "$cache/storage" --runroot "$cache/run" --storage-driver vfs "$@"; }

if [ "${SKIP_CARGO:-0}" != 1 ]; then
  echo "==> cargo build --release --bin datapack-worker"
  cargo build --release --locked --bin datapack-worker
fi
binary="$CARGO_TARGET_DIR/release/datapack-worker"
[ -x "$binary" ] || { echo "no release binary at $binary" >&2; exit 1; }

rootfs="$(mktemp -d)"
container=""
cleanup() {
  [ -z "$container" ] || bh rm "$container" >/dev/null 2>&1 || true
  rm -rf "$rootfs"
}
trap cleanup EXIT

# ---------------------------------------------------------------- root file system
echo "==> root file system"
install -d -m 0755 "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp"
# Strip a copy: the release profile keeps the symbol table (function names in a backtrace); the
# image goes without, as the Dockerfile's build does.
objcopy --strip-all "$binary" "$rootfs/usr/local/bin/datapack-worker"
chmod 0755 "$rootfs/usr/local/bin/datapack-worker"
# Every shared library the binary links, and the loader, at the paths the binary looks for
# them (the loader's path is baked into the ELF; libraries resolve through the default dirs).
ldd "$binary" | awk '/=> \//{print $3} /^\s*\//{print $1}' | while read -r lib; do
  install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  echo "    $lib"
done
# rustls reads the system's CA bundle (rustls-native-certs); the OpenSSL-style path is the one
# it probes first.
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
# A name for the numeric user, for tools that look it up; no login shell exists.
printf 'root:x:0:0:root:/nonexistent:/nonexistent\nnonroot:x:65532:65532:nonroot:/nonexistent:/nonexistent\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"
content_bytes="$(du -sb "$rootfs" | cut -f1)"

# ---------------------------------------------------------------- image
echo "==> buildah: $image from scratch"
container="$(bh from --name "$name-build-$$" scratch)"
bh copy "$container" "$rootfs" / >/dev/null
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
bh config \
  --user 65532:65532 \
  --workingdir / \
  --port 9898 \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --entrypoint '["/usr/local/bin/datapack-worker"]' \
  --cmd run \
  --label org.opencontainers.image.title=datapack-worker \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.revision="$commit" \
  "$container"
bh commit --quiet --rm "$container" "$image" >/dev/null
container=""
bh rmi --prune >/dev/null 2>&1 || true # the previous build's image, now untagged

# ---------------------------------------------------------------- smoke test
echo "==> smoke test: run the image as its own user"
container="$(bh from --name "$name-smoke-$$" "$image")"
run() { bh run --isolation chroot "$container" -- /usr/local/bin/datapack-worker "$@"; }
run --version
run --help >"$rootfs/help.txt"
grep -q 'migrate' "$rootfs/help.txt" || { echo "--help does not list the commands" >&2; exit 1; }
echo "    --help lists: $(grep -o -E '^\s+(run|migrate|presign|dlq|reconcile)\b' "$rootfs/help.txt" | xargs)"
user="$(bh inspect --format '{{.OCIv1.Config.User}}' "$image")"
[ "$user" = "65532:65532" ] || { echo "image user is '$user', not 65532:65532" >&2; exit 1; }
if bh run --isolation chroot "$container" -- /bin/sh -c true >/dev/null 2>&1; then
  echo "the image has a shell" >&2
  exit 1
fi
echo "    user $user, no /bin/sh"
bh rm "$container" >/dev/null
container=""

# ---------------------------------------------------------------- export
mkdir -p "$out"
rm -f "$archive"
bh push --quiet "$image" "oci-archive:$archive:$name:$version"
bytes="$(stat -c %s "$archive")"
echo "==> $archive"
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "    image $image: $(mib "$content_bytes") unpacked (binary $(mib "$(stat -c %s "$rootfs/usr/local/bin/datapack-worker")") stripped, from $(mib "$(stat -c %s "$binary")")), $(mib "$bytes") as an OCI archive (gzip layer)"
