#!/usr/bin/env bash
# Applies deploy/aws/stack.yaml on LocalStack (run on the host, no Docker) and runs the worker
# end to end against what it created, scenario by scenario (events, presigned, keys, envelopes,
# overwrite, delete, outage, dlq, shutdown: see scripts/localstack_e2e.py), printing every
# difference from moto it observes. LocalStack runs from a Python 3.13 virtualenv under
# ~/.cache/datapack-worker/ (the interpreter from pyenv, or PYTHON313=path); the pins keep its
# runtime extras importable.
#   scripts/localstack-e2e.sh [--keep] [--outage-secs N]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datapack-worker/target}"
venv="$HOME/.cache/datapack-worker/localstack-venv"
requirements="localstack-core[runtime]==2026.3.0 cbor2<6 pyopenssl<24.3 cryptography<44 service_identity"

python="${PYTHON313:-$(ls -d "$HOME"/.pyenv/versions/3.13*/bin/python 2>/dev/null | tail -n1)}"
if [ -z "$python" ] || ! "$python" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
  echo "localstack-e2e: needs a Python 3.13 interpreter (pyenv install 3.13, or PYTHON313=path)" >&2
  exit 1
fi
if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$requirements" ]; then
  echo "==> installing LocalStack into $venv"
  "$python" -m venv --clear "$venv"
  # shellcheck disable=SC2086 # a space-separated list on purpose
  "$venv/bin/pip" install --quiet --disable-pip-version-check $requirements
  printf '%s' "$requirements" >"$venv/.requirements"
fi

scripts/ensure-postgres.sh >/dev/null
cargo build --release --locked --bin datapack-worker
exec "$venv/bin/python" scripts/localstack_e2e.py --binary "$CARGO_TARGET_DIR/release/datapack-worker" "$@"
