#!/usr/bin/env bash
# End-to-end demo of datapack-worker on a fresh machine, in one command:
#
#   scripts/demo.sh
#
# PostgreSQL (127.0.0.1:5432) + moto server (S3 and SQS) -> build the worker ->
# fresh database `datapack_demo` -> upload sample files through presigned PUT
# URLs exactly as a browser would -> wait until the worker has recorded them ->
# show the rows, the local checksums, the metrics and the dead-letter queue.
#
# Environment (all optional):
#   CARGO_TARGET_DIR      default $HOME/.cache/datapack-worker/target
#   DEMO_DEADLINE_S       seconds to wait for the rows, default 60
#   DEMO_KEEP_STATE=1     keep the temporary state directory (logs) on success;
#                         it is always kept on failure
#   CORS_ALLOWED_ORIGINS  see scripts/localstack.py
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEADLINE_S="${DEMO_DEADLINE_S:-60}"
DB_NAME=datapack_demo
DATAPACK=dp-1
UNKNOWN_DATAPACK=dp-unknown
POLL_INTERVAL_S=0.5

STATE_DIR=""
WORKER_PID=""

step() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { echo "demo: ERROR: $*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

worker_log_tail() {
    if [[ -n "$STATE_DIR" && -s "$STATE_DIR/worker.log" ]]; then
        echo "---- last 50 lines of $STATE_DIR/worker.log ----" >&2
        tail -n 50 "$STATE_DIR/worker.log" >&2
        echo "----" >&2
    fi
}

# Sends SIGTERM to the worker and waits up to $1 seconds; SIGKILL after that.
# Returns the worker's exit status.
stop_worker() {
    local timeout_s=$1 pid=$WORKER_PID status=0 i
    [[ -n "$pid" ]] || return 0
    WORKER_PID=""
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout_s * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "demo: worker (pid $pid) still running ${timeout_s}s after SIGTERM; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" || status=$?
    return "$status"
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n "$WORKER_PID" ]]; then
        stop_worker 30
    fi
    if ((rc != 0)); then
        worker_log_tail
    fi
    if [[ -n "$STATE_DIR" ]]; then
        python3 scripts/localstack.py down --state-dir "$STATE_DIR" >/dev/null
        if ((rc == 0)) && [[ "${DEMO_KEEP_STATE:-0}" != 1 ]]; then
            rm -rf -- "$STATE_DIR"
        else
            echo "demo: logs and state kept in $STATE_DIR" >&2
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --------------------------------------------------------------------------
step "PostgreSQL"
scripts/ensure-postgres.sh

step "moto server (S3 + SQS emulator)"
# ensure-moto.sh may fall back to installing into this virtualenv.
export PATH="${DATAPACK_TOOLS_VENV:-$HOME/.cache/datapack-worker/venv}/bin:$PATH"
scripts/ensure-moto.sh
hash -r

for tool in curl psql python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required but not installed"
done

step "build datapack-worker"
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust with https://rustup.rs"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datapack-worker/target}"
cargo build --release --locked
WORKER="$CARGO_TARGET_DIR/release/datapack-worker"
[[ -x "$WORKER" ]] || die "build succeeded but $WORKER does not exist"

# --------------------------------------------------------------------------
step "local S3 + SQS"
STATE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/datapack-demo.XXXXXX")"
# Do not let the caller's AWS profile or session leak into the demo.
unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN
python3 scripts/localstack.py up --state-dir "$STATE_DIR"
# shellcheck source=/dev/null
. "$STATE_DIR/env"

step "database $DB_NAME"
PGOPTIONS='-c client_min_messages=warning' psql -X -q -h 127.0.0.1 -p 5432 -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" \
    -c "CREATE DATABASE $DB_NAME"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB_NAME"
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -P pager=off "$DATABASE_URL")

"$WORKER" migrate
"${PSQL[@]}" -c "INSERT INTO datapack(identifier) VALUES ('$DATAPACK')"
note "datapack $DATAPACK created"

step "start the worker"
METRICS_ADDR="127.0.0.1:$(free_port)"
export METRICS_ADDR
export WORKER_CONCURRENCY=4
export RUST_LOG="${RUST_LOG:-info}"
"$WORKER" run >"$STATE_DIR/worker.log" 2>&1 &
WORKER_PID=$!
note "pid $WORKER_PID, metrics on http://$METRICS_ADDR/metrics, log $STATE_DIR/worker.log"

# --------------------------------------------------------------------------
step "upload sample files through presigned URLs"
SAMPLES="$STATE_DIR/samples"
mkdir -p "$SAMPLES"
cat >"$SAMPLES/report.csv" <<'CSV'
date,station,temperature_c,humidity_pct
2024-01-01,HN-01,17.2,81
2024-01-02,HN-01,16.8,84
2024-01-03,SG-02,27.9,76
CSV
cat >"$SAMPLES/readme.txt" <<'TXT'
Datapack dp-1: sample files uploaded by scripts/demo.sh.
TXT
cat >"$SAMPLES/ghi chú 2024.txt" <<'TXT'
Ghi chú: dữ liệu năm 2024 đã được kiểm tra.
TXT

# Turns the JSON printed by `presign --json` into curl arguments, NUL-separated:
# -H "Name: value" for every header (-H "Name;" sends an empty value), --url URL.
CURL_ARGS_PY='
import json, sys
spec = json.load(sys.stdin)
method = str(spec.get("method", "PUT")).upper()
if method != "PUT":
    sys.exit(f"presign returned method {method!r}, expected PUT")
headers = spec.get("headers") or {}
if not any(k.lower() == "content-type" for k in headers):
    sys.exit("presign returned no Content-Type header")
args = []
for name, value in headers.items():
    value = str(value)
    if any(c in name + value for c in "\r\n\0"):
        sys.exit(f"invalid header {name!r}")
    args += ["-H", f"{name}: {value}" if value else f"{name};"]
args += ["--url", spec["url"]]
sys.stdout.write("".join(a + "\0" for a in args))
'

# upload_presigned DATAPACK PATH FILE_NAME UPLOADER_NAME UPLOADER_EMAIL LOCAL_FILE
upload_presigned() {
    local datapack=$1 path=$2 name=$3 uploader=$4 email=$5 file=$6 json code
    local -a curl_args
    json="$("$WORKER" presign --datapack "$datapack" --path "$path" --file "$name" \
        --uploader-name "$uploader" --uploader-email "$email" --json)" || return 1
    python3 -c "$CURL_ARGS_PY" >"$STATE_DIR/curl-args" <<<"$json" || return 1
    mapfile -d '' -t curl_args <"$STATE_DIR/curl-args"
    code="$(curl -sS -f -X PUT --data-binary "@$file" -o /dev/null -w '%{http_code}' "${curl_args[@]}")" \
        || return 1
    note "PUT $datapack:${path%/}/$name by $uploader -> HTTP $code"
}

upload_presigned "$DATAPACK" "raw data/2024" "report.csv" \
    "Alice Example" "alice@example.org" "$SAMPLES/report.csv" \
    || die "presigned upload of report.csv failed"
upload_presigned "$DATAPACK" "/" "readme.txt" \
    "Bob Example" "bob@example.org" "$SAMPLES/readme.txt" \
    || die "presigned upload of readme.txt failed"
upload_presigned "$DATAPACK" "ảnh/tài liệu" "ghi chú 2024.txt" \
    "Nguyễn Văn A" "nguyen.van.a@example.org" "$SAMPLES/ghi chú 2024.txt" \
    || die "presigned upload of 'ghi chú 2024.txt' failed"

step "uploads the worker must not record"
python3 - <<'PY'
import os
import boto3

s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["AWS_ENDPOINT_URL"],
    region_name=os.environ["AWS_REGION"],
)
key = "dp-1/direct upload without metadata.txt"
s3.put_object(
    Bucket=os.environ["S3_BUCKET"],
    Key=key,
    Body=b"uploaded with put_object, without the presigned-url metadata\n",
    ContentType="text/plain",
)
print(f"    put_object {key!r} without x-amz-meta-uploaded-by -> expected: skipped")
PY
if upload_presigned "$UNKNOWN_DATAPACK" "/" "orphan.txt" \
    "Mallory Example" "mallory@example.org" "$SAMPLES/readme.txt"; then
    note "-> expected: dead-lettered (datapack $UNKNOWN_DATAPACK does not exist)"
else
    note "(presign/upload for $UNKNOWN_DATAPACK failed; continuing without the dead-letter example)"
fi

# --------------------------------------------------------------------------
step "waiting for the worker (deadline ${DEADLINE_S}s)"
started=$SECONDS
deadline=$((started + DEADLINE_S))
rows=0
while :; do
    if ! kill -0 "$WORKER_PID" 2>/dev/null; then
        status=0
        wait "$WORKER_PID" || status=$?
        WORKER_PID=""
        die "the worker exited unexpectedly (status $status)"
    fi
    rows="$("${PSQL[@]}" -tA -c "SELECT count(*) FROM datapack_resource r
        JOIN datapack d ON d.id = r.datapack_id WHERE d.identifier = '$DATAPACK'" 2>/dev/null || echo 0)"
    ((rows >= 3)) && break
    if ((SECONDS >= deadline)); then
        die "deadline passed: $rows of 3 rows for $DATAPACK in datapack_resource after ${DEADLINE_S}s"
    fi
    sleep "$POLL_INTERVAL_S"
done
note "$rows rows after $((SECONDS - started))s"

# The rows are what the demo waits for; give the dead-letter example a little
# longer (at most 15 s, within the deadline) to show up in the metrics.
metrics() { curl -sS -f --max-time 5 "http://$METRICS_ADDR/metrics"; }
soft_deadline=$((SECONDS + 15 < deadline ? SECONDS + 15 : deadline))
while ((SECONDS < soft_deadline)); do
    if metrics 2>/dev/null | awk '/^datapack_worker_dead_letters_total/ && $NF + 0 > 0 { found = 1 } END { exit !found }'; then
        break
    fi
    sleep "$POLL_INTERVAL_S"
done

# --------------------------------------------------------------------------
step "datapack_resource"
"${PSQL[@]}" -P expanded=auto -c "
    SELECT d.identifier AS datapack,
           r.path,
           r.display,
           r.length,
           r.sha256,
           r.submitter_name,
           r.submitter_email,
           r.etag
    FROM datapack_resource r
    JOIN datapack d ON d.id = r.datapack_id
    ORDER BY d.identifier, r.path, r.display"

step "sha256sum of the local files"
(cd "$SAMPLES" && sha256sum -- report.csv readme.txt "ghi chú 2024.txt")

step "metrics (http://$METRICS_ADDR/metrics)"
if metrics >"$STATE_DIR/metrics.txt"; then
    # Every known series exists from start-up at 0: show the ones that moved.
    grep -E '^datapack_worker_(records_total|dead_letters_total)' "$STATE_DIR/metrics.txt" | awk '$NF + 0 != 0' | grep . \
        || note "(no datapack_worker_records_total / datapack_worker_dead_letters_total samples)"
else
    note "(could not fetch the metrics)"
fi

step "datapack-worker dlq list"
"$WORKER" dlq list || note "(datapack-worker dlq list failed with status $?)"

# --------------------------------------------------------------------------
step "stop the worker (SIGTERM)"
status=0
stop_worker 30 || status=$?
((status == 0)) || die "the worker exited with status $status after SIGTERM"
note "worker stopped cleanly"

step "stop moto"
python3 scripts/localstack.py down --state-dir "$STATE_DIR"

step "done"
