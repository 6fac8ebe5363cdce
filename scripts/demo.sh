#!/usr/bin/env bash
# End-to-end demo of datapack-worker on a fresh machine, in one command:
#
#   scripts/demo.sh
#   scripts/demo.sh --setup-only    only install what is missing (the steps before the build)
#
# PostgreSQL (127.0.0.1:5432) + a local emulated S3 and SQS (moto, through
# examples/emulated_stack.rs) -> build the worker -> fresh database `datapack_demo` -> upload
# sample files through presigned PUT URLs exactly as a browser would -> wait until the worker has
# recorded them -> show the rows, the local checksums, the metrics and the dead-letter queue.
#
# On Debian/Ubuntu it first installs what is missing (PostgreSQL or only its client, moto in a
# virtualenv, a C compiler for the Rust build, curl, procps), as root or with password-less sudo.
# Everything it starts (the worker, moto) is stopped when it exits, whether it succeeded or not.
#
# Environment (all optional):
#   CARGO_TARGET_DIR      default $HOME/.cache/datapack-worker/target
#   DEMO_DEADLINE_S       seconds to wait for the rows, default 60
#   DEMO_KEEP_STATE=1     keep the temporary state directory (logs) on success;
#                         it is always kept on failure
#   CORS_ALLOWED_ORIGINS  the bucket's CORS origins (see examples/emulated_stack.rs)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=SCRIPTDIR/lib/apt.sh
. scripts/lib/apt.sh

DEADLINE_S="${DEMO_DEADLINE_S:-60}"
DB_NAME=datapack_demo
DATAPACK=dp-1
UNKNOWN_DATAPACK=dp-unknown

STATE_DIR=""
STACK=""
WORKER_PID=""

step() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { echo "demo: ERROR: $*" >&2; exit 1; }

# Polls `$2...` (a command) every half second until it succeeds; fails after $1 seconds.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}
gone() { ! kill -0 "$1" 2>/dev/null; }

# SIGTERM (SIGKILL if the worker is still there 30 s later); returns the worker's exit status.
stop_worker() {
    local pid=$WORKER_PID
    WORKER_PID=""
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_for 30 gone "$pid"; then
        echo "demo: worker (pid $pid) still running 30s after SIGTERM; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid"
}

# Whether process group $1 still has a moto_server in it (its leader's command line names moto).
moto_group_alive() {
    kill -0 -- "-$1" 2>/dev/null && grep -qa moto "/proc/$1/cmdline" 2>/dev/null
}
moto_group_gone() { ! moto_group_alive "$1"; }

# Stops the moto server `emulated_stack up` started. `down` does it; should `down` fail to (it
# signals through the `kill` program), the process group named in the pid file it read is ended
# here with the shell's own kill, so no moto_server outlives the demo.
stop_stack() {
    [[ -n "$STATE_DIR" && -n "$STACK" ]] || return 0
    local pid
    pid="$(cat "$STATE_DIR/moto.pid" 2>/dev/null || true)"
    "$STACK" down --state-dir "$STATE_DIR" || true
    [[ "$pid" =~ ^[0-9]+$ ]] && moto_group_alive "$pid" || return 0
    echo "demo: moto (process group $pid) still running after 'down'; stopping it" >&2
    kill -TERM -- "-$pid" 2>/dev/null || true
    wait_for 10 moto_group_gone "$pid" || kill -KILL -- "-$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -n "$WORKER_PID" ]] && stop_worker
    if [[ -n "$STATE_DIR" ]]; then
        if ((rc != 0)) && [[ -s "$STATE_DIR/worker.log" ]]; then
            echo "---- last 50 lines of $STATE_DIR/worker.log ----" >&2
            tail -n 50 "$STATE_DIR/worker.log" >&2
        fi
        stop_stack >/dev/null
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

step "tools: C compiler for the Rust build, curl, procps"
scripts/ensure-build-tools.sh
# curl reads the metrics; procps brings `kill`, with which emulated_stack stops moto.
if [[ -r /etc/debian_version ]]; then
    apt_ensure curl procps || die "cannot install curl and procps"
fi
hash -r
for tool in curl kill psql; do
    # type -P: the program, not bash's builtin kill.
    type -P "$tool" >/dev/null 2>&1 || die "$tool is required but not installed"
done

if [[ "${1:-}" == --setup-only ]]; then
    step "set-up done (--setup-only)"
    exit 0
fi

step "build datapack-worker"
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust with https://rustup.rs"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datapack-worker/target}"
cargo build --release --locked --bin datapack-worker --example emulated_stack
WORKER="$CARGO_TARGET_DIR/release/datapack-worker"
STACK="$CARGO_TARGET_DIR/release/examples/emulated_stack"

# --------------------------------------------------------------------------
step "local S3 + SQS"
STATE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/datapack-demo.XXXXXX")"
# Do not let the caller's AWS profile or session leak into the demo.
unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN
"$STACK" up --state-dir "$STATE_DIR"
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
# Port 0: the kernel picks a free port, and the worker's start-up line says which.
export METRICS_ADDR=127.0.0.1:0
export WORKER_CONCURRENCY=4
export RUST_LOG="${RUST_LOG:-info},datapack_worker::ops::http=info"
"$WORKER" run >"$STATE_DIR/worker.log" 2>&1 &
WORKER_PID=$!
listening() {
    kill -0 "$WORKER_PID" 2>/dev/null || die "the worker exited unexpectedly"
    grep -o -m1 'listening on http://[0-9.:]*' "$STATE_DIR/worker.log"
}
wait_for 30 listening >/dev/null || die "the worker did not start listening"
METRICS="$(listening)"
METRICS="${METRICS#listening on }/metrics"
note "pid $WORKER_PID, metrics on $METRICS, log $STATE_DIR/worker.log"

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

# What the app and the browser do: the app presigns (`presign --json`: URL and headers), the
# browser PUTs the file to that URL with exactly those headers.
# upload_presigned DATAPACK PATH FILE_NAME UPLOADER_NAME UPLOADER_EMAIL LOCAL_FILE
upload_presigned() {
    local datapack=$1 path=$2 name=$3 uploader=$4 email=$5 file=$6 code
    code="$("$WORKER" presign --datapack "$datapack" --path "$path" --file "$name" \
        --uploader-name "$uploader" --uploader-email "$email" --json \
        | "$STACK" put-presigned --file "$file")" || return 1
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
DIRECT_KEY="$DATAPACK/direct upload without metadata.txt"
echo "uploaded with put_object, without the presigned-url metadata" >"$SAMPLES/direct.txt"
"$STACK" put --key "$DIRECT_KEY" --file "$SAMPLES/direct.txt"
note "put_object '$DIRECT_KEY' without x-amz-meta-uploaded-by -> expected: skipped"
if upload_presigned "$UNKNOWN_DATAPACK" "/" "orphan.txt" \
    "Mallory Example" "mallory@example.org" "$SAMPLES/readme.txt"; then
    note "-> expected: dead-lettered (datapack $UNKNOWN_DATAPACK does not exist)"
else
    note "(presign/upload for $UNKNOWN_DATAPACK failed; continuing without the dead-letter example)"
fi

# --------------------------------------------------------------------------
step "waiting for the worker (deadline ${DEADLINE_S}s)"
started=$SECONDS
rows_recorded() {
    kill -0 "$WORKER_PID" 2>/dev/null || die "the worker exited unexpectedly"
    rows="$("${PSQL[@]}" -tA -c "SELECT count(*) FROM datapack_resource r
        JOIN datapack d ON d.id = r.datapack_id WHERE d.identifier = '$DATAPACK'" 2>/dev/null || echo 0)"
    ((rows >= 3))
}
rows=0
wait_for "$DEADLINE_S" rows_recorded \
    || die "deadline passed: $rows of 3 rows for $DATAPACK in datapack_resource after ${DEADLINE_S}s"
note "$rows rows after $((SECONDS - started))s"

# The rows are what the demo waits for; give the dead-letter example a little longer (at most
# 15 s) to show up in the metrics.
metrics() { curl -sS -f --max-time 5 "$METRICS"; }
dead_lettered() {
    metrics 2>/dev/null | awk '/^datapack_worker_dead_letters_total/ && $NF + 0 > 0 { found = 1 } END { exit !found }'
}
wait_for 15 dead_lettered || true

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

step "metrics ($METRICS)"
if metrics >"$STATE_DIR/metrics.txt"; then
    # Every known series exists from start-up at 0: show the ones that moved.
    grep -E '^datapack_worker_(records_total|dead_letters_total)' "$STATE_DIR/metrics.txt" | awk '$NF + 0 != 0' | grep . \
        || note "(no datapack_worker_records_total / datapack_worker_dead_letters_total samples)"
else
    note "(could not fetch the metrics)"
fi

step "datapack-worker dlq list"
"$WORKER" dlq list || note "(datapack-worker dlq list failed with status $?)"

step "datapack-worker reconcile (the bucket against the rows: nothing lost)"
# Every object was announced, so nothing is repaired: the two objects without a row are the
# upload without the presigned metadata (skipped) and the one into an unknown datapack (refused).
RUST_LOG=warn "$WORKER" reconcile --progress log \
    || note "(datapack-worker reconcile failed with status $?)"

# --------------------------------------------------------------------------
step "stop the worker (SIGTERM)"
status=0
stop_worker || status=$?
((status == 0)) || die "the worker exited with status $status after SIGTERM"
note "worker stopped cleanly"

step "stop moto"
stop_stack

step "done"
