#!/usr/bin/env bash
# Validates the observability assets in this directory:
#   alerts.yml            promtool check rules
#   alerts_test.yml       promtool test rules (unit tests for every alert)
#   grafana-dashboard.json  TypeScript check against @grafana/schema (dashboard-check/)
#                           + semantic lint (dashboard-check/lint.mjs)
#   $METRICS_FILE         optional: promtool check metrics < FILE, and every metric
#                         name used by the dashboard/alerts must be in that scrape
#                         (warning only unless STRICT_METRICS=1)
#
# Runs from any working directory. Installs what is missing with apt-get
# (promtool from Debian's "prometheus" package; nodejs/npm) and npm ci.
# Environment:
#   METRICS_FILE=path   text exposition scrape of the worker to lint
#   STRICT_METRICS=1    fail (not warn) when a used metric is absent from METRICS_FILE
#   PROMTOOL=path       use this promtool instead of the one on PATH
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

passed=0
failed=0
failures=()

say() { printf '%s\n' "$*"; }

# run_check "description" cmd args...   (never aborts the script; counts the result)
run_check() {
  local desc="$1"
  shift
  say "==> ${desc}"
  if "$@"; then
    say "    PASS: ${desc}"
    passed=$((passed + 1))
  else
    say "    FAIL: ${desc}"
    failed=$((failed + 1))
    failures+=("${desc}")
  fi
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    say "need root to run: $*" >&2
    return 1
  fi
}

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y --no-install-recommends "$@"; then
    say "    apt-get install failed; running apt-get update and retrying"
    as_root apt-get update
    as_root apt-get install -y --no-install-recommends "$@"
  fi
}

# ---------------------------------------------------------------- tools
PROMTOOL="${PROMTOOL:-}"
if [ -z "$PROMTOOL" ]; then
  if ! command -v promtool >/dev/null 2>&1; then
    say "==> promtool not found; installing Debian package 'prometheus' (provides promtool)"
    apt_install prometheus
  fi
  PROMTOOL="$(command -v promtool)"
fi
say "    using $("$PROMTOOL" --version 2>&1 | head -n1)"

if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  say "==> node/npm not found; installing Debian packages nodejs npm"
  apt_install nodejs npm
fi
say "    using node $(node --version), npm $(npm --version 2>/dev/null)"

# ---------------------------------------------------------------- alert rules
run_check "promtool check rules alerts.yml" "$PROMTOOL" check rules alerts.yml
run_check "promtool test rules alerts_test.yml" "$PROMTOOL" test rules alerts_test.yml

# ---------------------------------------------------------------- dashboard
# npm ci only when node_modules is missing or was installed from another lockfile.
lock_stamp="$(cat dashboard-check/package.json dashboard-check/package-lock.json | sha256sum | cut -d' ' -f1)"
stamp_file="dashboard-check/node_modules/.check-sh-stamp"
npm_ci() {
  if [ -x dashboard-check/node_modules/.bin/tsc ] && [ -f "$stamp_file" ] &&
    [ "$(cat "$stamp_file")" = "$lock_stamp" ]; then
    say "    node_modules up to date with package-lock.json; skipping npm ci"
    return 0
  fi
  (cd dashboard-check && npm ci --no-audit --no-fund) &&
    printf '%s\n' "$lock_stamp" >"$stamp_file"
}
run_check "npm ci in dashboard-check (when node_modules is missing or stale)" npm_ci

tsc_bin="$here/dashboard-check/node_modules/.bin/tsc"
# Equivalent of `npx tsc --noEmit -p dashboard-check`, but never lets npx fetch
# an unrelated package called "tsc" when the local install is missing.
run_check "tsc --noEmit -p dashboard-check (grafana-dashboard.json satisfies @grafana/schema Dashboard)" \
  "$tsc_bin" --noEmit -p dashboard-check

# The type check must not be vacuous: a copy of the dashboard with panels: "x"
# has to be rejected by the very same check.ts/tsconfig.json.
negative_check() {
  local tmp rc
  tmp="$(mktemp -d)"
  mkdir -p "$tmp/dashboard-check"
  cp dashboard-check/check.ts dashboard-check/tsconfig.json "$tmp/dashboard-check/"
  ln -s "$here/dashboard-check/node_modules" "$tmp/dashboard-check/node_modules"
  node -e '
    const fs = require("fs");
    const d = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
    d.panels = "x";
    fs.writeFileSync(process.argv[2], JSON.stringify(d));
  ' grafana-dashboard.json "$tmp/grafana-dashboard.json"
  rc=0
  "$tsc_bin" --noEmit -p "$tmp/dashboard-check" >"$tmp/out.txt" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ] && grep -q "error TS" "$tmp/out.txt"; then
    say "    broken dashboard rejected: $(grep -m1 -o 'error TS[0-9]*' "$tmp/out.txt")"
    rm -rf "$tmp"
    return 0
  fi
  say "    a dashboard with panels: \"x\" was NOT rejected by tsc (rc=$rc)"
  cat "$tmp/out.txt"
  rm -rf "$tmp"
  return 1
}
run_check "tsc rejects a deliberately broken dashboard (panels: \"x\")" negative_check

run_check "lint dashboard + alerts (ids, layout, datasource, PromQL, metric names)" \
  node dashboard-check/lint.mjs

# ---------------------------------------------------------------- optional scrape
if [ -n "${METRICS_FILE:-}" ]; then
  if [ -f "$METRICS_FILE" ]; then
    metrics_path="$(cd "$(dirname "$METRICS_FILE")" && pwd)/$(basename "$METRICS_FILE")"
    run_check "promtool check metrics < $METRICS_FILE" \
      bash -c '"$1" check metrics <"$2"' _ "$PROMTOOL" "$metrics_path"
    run_check "dashboard/alert metric names present in $METRICS_FILE" \
      node dashboard-check/lint.mjs --metrics "$metrics_path"
  else
    run_check "METRICS_FILE=$METRICS_FILE exists" false
  fi
else
  say "==> METRICS_FILE not set; skipping promtool check metrics"
fi

# ---------------------------------------------------------------- summary
say ""
if [ "$failed" -ne 0 ]; then
  for f in "${failures[@]}"; do say "FAILED: $f"; done
fi
say "observability: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
