#!/usr/bin/env python3
"""Local S3 + SQS stack for datapack-worker, emulated by moto server.

    localstack.py up   --state-dir DIR [--bucket NAME] [--queue NAME]
    localstack.py down --state-dir DIR

`up` starts `moto_server` on a free loopback port (own process group, log in
DIR/moto.log, pid in DIR/moto.pid), then creates:

  * the upload bucket (CORS for browser uploads, public access block),
  * the dead-letter queue NAME-dlq and the main queue NAME
    (RedrivePolicy maxReceiveCount=5, VisibilityTimeout=60,
    ReceiveMessageWaitTimeSeconds=20, policy allowing S3 to SendMessage),
  * the bucket notification (s3:ObjectCreated:*, s3:ObjectRemoved:*) to NAME.

Configuring the notification makes S3 (and moto) send one `s3:TestEvent`
message to the queue; it is left there on purpose: the worker acknowledges it.

Finally it writes DIR/env, `export` lines to source from a shell:
AWS_ENDPOINT_URL, AWS_REGION, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, S3_BUCKET, SQS_QUEUE_URL, SQS_DEAD_LETTER_QUEUE_URL.

`down` terminates the moto process group. Both commands are safe to repeat.

Requires Python 3.11+ and boto3 (installed together with moto[server]).
Environment: CORS_ALLOWED_ORIGINS (comma-separated, default
http://localhost:3000), MOTO_SERVER (path of the moto_server executable,
default: looked up on PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REGION = "us-east-1"
# moto accepts any credentials; these are the conventional dummy ones.
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"

DEFAULT_BUCKET = "datapack-uploads"
DEFAULT_QUEUE = "datapack-uploads"
DEFAULT_CORS_ORIGINS = "http://localhost:3000"

MAX_RECEIVE_COUNT = 5
VISIBILITY_TIMEOUT_S = 60
RECEIVE_WAIT_TIME_S = 20
DLQ_RETENTION_S = 14 * 24 * 3600  # the SQS maximum: keep failures for inspection

STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0

PID_FILE = "moto.pid"
LOG_FILE = "moto.log"
ENV_FILE = "env"

BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
QUEUE_RE = re.compile(r"^[A-Za-z0-9_-]{1,76}$")  # 80 minus the "-dlq" suffix


class StackError(Exception):
    pass


def log(msg: str) -> None:
    print(f"localstack: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# process management


def read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / PID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_our_moto(pid: int) -> bool:
    """True if `pid` is alive and looks like a moto server (guards against pid reuse)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        # No procfs (e.g. macOS): trust the pid file.
        return True
    return b"moto" in cmdline


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(state_dir: Path) -> tuple[int, int]:
    moto = os.environ.get("MOTO_SERVER") or shutil.which("moto_server")
    if not moto:
        raise StackError(
            "moto_server not found on PATH; run scripts/ensure-moto.sh "
            "(or: pip install 'moto[server]==5.2.1')"
        )
    port = free_loopback_port()
    log_path = state_dir / LOG_FILE
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [moto, "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session => own process group (pgid == pid)
            close_fds=True,
        )
    (state_dir / PID_FILE).write_text(f"{proc.pid}\n")

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    url = f"http://127.0.0.1:{port}/moto-api/"
    while True:
        if proc.poll() is not None:
            raise StackError(
                f"moto_server exited with status {proc.returncode} during startup; "
                f"see {log_path}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2):
                break
        except urllib.error.HTTPError:
            break  # it answered, even if with an error status
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise StackError(
                f"moto_server did not answer on 127.0.0.1:{port} within "
                f"{STARTUP_TIMEOUT_S:.0f}s; see {log_path}"
            )
        time.sleep(0.2)
    return proc.pid, port


def stop_moto(state_dir: Path) -> bool:
    """Terminate the moto process group. Returns True if something was stopped."""
    pid = read_pid(state_dir)
    if pid is None:
        return False
    stopped = False
    if is_our_moto(pid):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.1)
        if _group_alive(pid):
            log(f"moto (pgid {pid}) ignored SIGTERM; sending SIGKILL")
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stopped = True
    (state_dir / PID_FILE).unlink(missing_ok=True)
    return stopped


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader still counts as "alive" for killpg; it is not ours to reap
    # (we are not its parent after `up` returned), so look at its state.
    try:
        stat = Path(f"/proc/{pgid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    return True


# --------------------------------------------------------------------------
# AWS resources


def clients(endpoint: str):
    import boto3  # imported lazily so `down` works without boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name=REGION,
    )
    cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": "path"})
    return (
        session.client("s3", endpoint_url=endpoint, config=cfg),
        session.client("sqs", endpoint_url=endpoint, config=cfg),
    )


def cors_origins() -> list[str]:
    raw = os.environ.get("CORS_ALLOWED_ORIGINS", DEFAULT_CORS_ORIGINS)
    origins = [o.strip() for o in raw.split(",") if o.strip()]
    if not origins:
        raise StackError("CORS_ALLOWED_ORIGINS is set but contains no origin")
    return origins


def create_resources(endpoint: str, bucket: str, queue: str) -> dict[str, str]:
    s3, sqs = clients(endpoint)

    # --- bucket ---------------------------------------------------------
    s3.create_bucket(Bucket=bucket)  # us-east-1: no LocationConstraint
    s3.put_bucket_cors(
        Bucket=bucket,
        CORSConfiguration={
            "CORSRules": [
                {
                    "AllowedMethods": ["PUT", "POST", "GET", "HEAD"],
                    "AllowedHeaders": ["*"],
                    "ExposeHeaders": ["ETag"],
                    "AllowedOrigins": cors_origins(),
                    "MaxAgeSeconds": 3000,
                }
            ]
        },
    )
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )

    # --- queues ---------------------------------------------------------
    dlq_url = sqs.create_queue(
        QueueName=f"{queue}-dlq",
        Attributes={"MessageRetentionPeriod": str(DLQ_RETENTION_S)},
    )["QueueUrl"]
    dlq_arn = queue_arn(sqs, dlq_url)

    queue_url = sqs.create_queue(
        QueueName=queue,
        Attributes={
            "VisibilityTimeout": str(VISIBILITY_TIMEOUT_S),
            "ReceiveMessageWaitTimeSeconds": str(RECEIVE_WAIT_TIME_S),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)}
            ),
        },
    )["QueueUrl"]
    main_arn = queue_arn(sqs, queue_url)

    # Real AWS refuses to configure the notification unless S3 may send to
    # the queue; moto ignores queue policies.
    account = main_arn.split(":")[4]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AllowS3BucketNotifications",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": main_arn,
                "Condition": {
                    "ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"},
                    "StringEquals": {"aws:SourceAccount": account},
                },
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})

    # --- notification (sends one s3:TestEvent to the queue; left there) --
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "datapack-worker",
                    "QueueArn": main_arn,
                    "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                }
            ]
        },
    )

    return {
        "S3_BUCKET": bucket,
        "SQS_QUEUE_URL": queue_url,
        "SQS_DEAD_LETTER_QUEUE_URL": dlq_url,
        "_queue_arn": main_arn,
        "_dlq_arn": dlq_arn,
    }


def queue_arn(sqs, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]


def write_env(state_dir: Path, values: dict[str, str]) -> Path:
    path = state_dir / ENV_FILE
    lines = [
        "# Generated by scripts/localstack.py; source it: . ./env",
        *(f"export {k}={shlex.quote(v)}" for k, v in values.items()),
    ]
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------
# commands


def cmd_up(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    if not BUCKET_RE.fullmatch(args.bucket) or ".." in args.bucket:
        raise StackError(
            f"invalid bucket name {args.bucket!r}: 3-63 chars, lowercase letters, "
            "digits, '.' and '-', starting and ending with a letter or digit"
        )
    if not QUEUE_RE.fullmatch(args.queue):
        raise StackError(
            f"invalid queue name {args.queue!r}: 1-76 chars of letters, digits, '-' and '_'"
        )
    state_dir.mkdir(parents=True, exist_ok=True)

    old = read_pid(state_dir)
    if old is not None and is_our_moto(old):
        raise StackError(
            f"moto is already running for {state_dir} (pid {old}); "
            f"run `localstack.py down --state-dir {state_dir}` first"
        )
    (state_dir / PID_FILE).unlink(missing_ok=True)

    pid, port = start_moto(state_dir)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        res = create_resources(endpoint, args.bucket, args.queue)
        env_path = write_env(
            state_dir,
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
                "S3_BUCKET": res["S3_BUCKET"],
                "SQS_QUEUE_URL": res["SQS_QUEUE_URL"],
                "SQS_DEAD_LETTER_QUEUE_URL": res["SQS_DEAD_LETTER_QUEUE_URL"],
            },
        )
    except BaseException:
        log("setup failed; stopping moto")
        stop_moto(state_dir)
        raise

    print(
        "\n".join(
            [
                f"moto server    {endpoint}  (pid {pid}, log {state_dir / LOG_FILE})",
                f"bucket         {res['S3_BUCKET']}  (CORS origins: {', '.join(cors_origins())})",
                f"queue          {res['SQS_QUEUE_URL']}",
                f"dead letters   {res['SQS_DEAD_LETTER_QUEUE_URL']}  (after {MAX_RECEIVE_COUNT} receives)",
                f"notifications  s3:ObjectCreated:*, s3:ObjectRemoved:* -> {res['_queue_arn']}",
                f"env file       {env_path}  (region {REGION}, access key id {ACCESS_KEY_ID})",
            ]
        ),
        flush=True,
    )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    pid = read_pid(state_dir)
    if stop_moto(state_dir):
        print(f"moto server (pid {pid}) stopped", flush=True)
    else:
        print(f"moto server not running for {state_dir}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start moto and create the bucket, queues and notification")
    up.add_argument("--state-dir", required=True, help="directory for moto.pid, moto.log and env")
    up.add_argument("--bucket", default=DEFAULT_BUCKET, help=f"default {DEFAULT_BUCKET}")
    up.add_argument("--queue", default=DEFAULT_QUEUE, help=f"default {DEFAULT_QUEUE}")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop the moto server started by `up`")
    down.add_argument("--state-dir", required=True)
    down.set_defaults(func=cmd_down)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except StackError as e:
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
