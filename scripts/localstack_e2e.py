#!/usr/bin/env python3
"""The AWS stack applied for real, end to end, on LocalStack (a second S3 + SQS implementation).

    localstack_e2e.py --binary PATH [--keep]

Starts LocalStack on a free loopback port (S3, SQS, CloudFormation, IAM; own process group,
state in a temporary directory), deploys deploy/aws/stack.yaml with CloudFormation, checks what
it created (SSE and redrive on the queues, versioning, the notification, the TLS-only policies),
then runs the real worker against those resources and a fresh PostgreSQL database: a presigned
upload becomes a row with the right SHA-256, its removal marks the row deleted, nothing is
dead-lettered, and SIGTERM ends the worker with status 0. Prints what it measured.

Needs the LocalStack virtualenv (scripts/localstack-e2e.sh makes it), PostgreSQL on
127.0.0.1:5432 (trust, user postgres) and psql.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
PG = "postgres://postgres@127.0.0.1:5432"


def log(message: str) -> None:
    print(f"localstack-e2e: {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what: str, deadline_s: float, check):
    """Polls `check` until it returns something truthy, or fails after the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise SystemExit(f"localstack-e2e: timed out waiting for {what}")
        time.sleep(0.2)


def psql(db: str, sql: str) -> str:
    return subprocess.run(
        ["psql", f"{PG}/{db}", "-v", "ON_ERROR_STOP=1", "-Atqc", sql],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


class LocalStack:
    def __init__(self, state: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = dict(
            os.environ,
            GATEWAY_LISTEN=f"127.0.0.1:{self.port}",
            SERVICES="s3,sqs,cloudformation,iam",
            LOCALSTACK_HOST=f"127.0.0.1:{self.port}",
            PERSISTENCE="0",
            FILESYSTEM_ROOT=str(state / "fs"),
            LOCALSTACK_VOLUME_DIR=str(state / "volume"),
            TMPDIR=str(state / "tmp"),
            SKIP_INFRA_DOWNLOADS="1",
            DISABLE_EVENTS="1",
        )
        (state / "tmp").mkdir(parents=True)
        self.log = state / "localstack.log"
        started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localstack.runtime.main"],
            # cwd matters for `-m`, which puts it first on sys.path: the state directory holds
            # nothing that could shadow the package.
            cwd=state, env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def healthy():
            if self.process.poll() is not None:
                raise SystemExit(f"LocalStack exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/_localstack/health", timeout=2) as r:
                    services = json.load(r)["services"]
                return all(services.get(s) in ("available", "running") for s in ("s3", "sqs", "cloudformation"))
            except OSError:
                return False

        wait("LocalStack to be healthy", 120, healthy)
        self.startup_s = time.monotonic() - started

    def client(self, service: str):
        return boto3.client(
            service, endpoint_url=self.endpoint, region_name=REGION,
            config=Config(s3={"addressing_style": "path"}), **CREDENTIALS,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def deploy(ls: LocalStack, bucket: str) -> dict[str, str]:
    cfn = ls.client("cloudformation")
    started = time.monotonic()
    cfn.create_stack(
        StackName="datapack-uploads",
        TemplateBody=(ROOT / "deploy/aws/stack.yaml").read_text(),
        Parameters=[
            {"ParameterKey": "BucketName", "ParameterValue": bucket},
            {"ParameterKey": "AllowedOrigin", "ParameterValue": "http://localhost:3000"},
        ],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )

    def done():
        stack = cfn.describe_stacks(StackName="datapack-uploads")["Stacks"][0]
        status = stack["StackStatus"]
        if status.endswith("_FAILED") or status.startswith("ROLLBACK"):
            events = cfn.describe_stack_events(StackName="datapack-uploads")["StackEvents"]
            reasons = [f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}" for e in events
                       if "FAILED" in e["ResourceStatus"]]
            raise SystemExit(f"stack {status}: {reasons}")
        return stack if status == "CREATE_COMPLETE" else None

    stack = wait("CREATE_COMPLETE", 180, done)
    log(f"stack CREATE_COMPLETE in {time.monotonic() - started:.1f} s")
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def inspect(ls: LocalStack, bucket: str, outputs: dict[str, str]) -> list[str]:
    """What the stack made, as LocalStack reports it; returns the differences from the template."""
    sqs, s3 = ls.client("sqs"), ls.client("s3")
    differences = []
    for name in ("QueueUrl", "DeadLetterQueueUrl"):
        attrs = sqs.get_queue_attributes(QueueUrl=outputs[name], AttributeNames=["All"])["Attributes"]
        log(f"{name}: SqsManagedSseEnabled={attrs.get('SqsManagedSseEnabled')} "
            f"Policy={'yes' if attrs.get('Policy') else 'no'} RedrivePolicy={attrs.get('RedrivePolicy', '-')}")
        if attrs.get("SqsManagedSseEnabled") != "true":
            differences.append(f"{name}: SqsManagedSseEnabled is {attrs.get('SqsManagedSseEnabled')!r}")
        if not attrs.get("Policy"):
            differences.append(f"{name}: no queue policy attached")
    versioning = s3.get_bucket_versioning(Bucket=bucket).get("Status")
    notification = s3.get_bucket_notification_configuration(Bucket=bucket).get("QueueConfigurations", [])
    encryption = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    try:
        policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
        sids = [st.get("Sid") for st in policy["Statement"]]
    except s3.exceptions.ClientError as error:
        sids = [f"none ({error.response['Error']['Code']})"]
    log(f"bucket: versioning={versioning} notifications={len(notification)} "
        f"encryption={encryption[0]['ApplyServerSideEncryptionByDefault']['SSEAlgorithm']} policy={sids}")
    if versioning != "Enabled":
        differences.append(f"bucket versioning is {versioning!r}")
    if len(notification) != 2:
        differences.append(f"{len(notification)} queue notifications instead of 2")
    return differences


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--keep", action="store_true", help="leave the state directory")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="dpw-localstack-"))
    bucket = f"datapack-e2e-{os.getpid()}"
    db = f"dpw_localstack_{os.getpid()}"
    ls = worker = None
    try:
        ls = LocalStack(state)
        log(f"LocalStack on {ls.endpoint}, healthy after {ls.startup_s:.1f} s")
        outputs = deploy(ls, bucket)
        differences = inspect(ls, bucket, outputs)

        subprocess.run(["psql", f"{PG}/postgres", "-Atqc", f"CREATE DATABASE {db}"], check=True)
        env = dict(
            os.environ, AWS_ENDPOINT_URL=ls.endpoint, AWS_REGION=REGION,
            AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
            DATABASE_URL=f"{PG}/{db}", S3_BUCKET=bucket,
            SQS_QUEUE_URL=outputs["QueueUrl"], SQS_DEAD_LETTER_QUEUE_URL=outputs["DeadLetterQueueUrl"],
            METRICS_ADDR=f"127.0.0.1:{free_port()}", SQS_WAIT_TIME_SECS="2",
            SHUTDOWN_GRACE_SECS="10", RUST_LOG="warn",
        )
        subprocess.run([args.binary, "migrate"], env=env, check=True)
        psql(db, "INSERT INTO datapack (identifier) VALUES ('dp-e2e')")
        worker = subprocess.Popen([args.binary, "run"], env=env, stdout=subprocess.DEVNULL)
        metrics = f"http://{env['METRICS_ADDR']}"

        def ready():
            try:
                with urllib.request.urlopen(f"{metrics}/readyz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait("the worker to be ready", 60, ready)

        body = "Xin chào from LocalStack\n".encode() * 1000
        signed = json.loads(subprocess.run(
            [args.binary, "presign", "--datapack", "dp-e2e", "--path", "raw data/2026",
             "--file", "ghi chú.txt", "--uploader-name", "Nguyễn Văn A",
             "--uploader-email", "a@example.com", "--json"],
            env=env, check=True, capture_output=True, text=True).stdout)
        request = urllib.request.Request(signed["url"], data=body, method=signed["method"],
                                         headers=signed["headers"])
        uploaded = time.monotonic()
        with urllib.request.urlopen(request, timeout=30) as response:
            etag = response.headers["ETag"].strip('"')
        row = wait("the upload's row", 60, lambda: psql(
            db, "SELECT sha256 || ' ' || etag || ' ' || length || ' ' || coalesce(submitter_name, '')"
                " || ' ' || path FROM datapack_resource WHERE deleted_at IS NULL"))
        latency = time.monotonic() - uploaded
        sha256, row_etag, length = row.split(" ")[:3]
        assert sha256 == hashlib.sha256(body).hexdigest(), f"sha256 {sha256}"
        assert row_etag == etag and int(length) == len(body), row
        assert "Nguyễn Văn A" in row and "/raw data/2026" in row, row
        log(f"presigned upload -> row in {latency:.2f} s: {row}")

        ls.client("s3").delete_object(Bucket=bucket, Key="dp-e2e/raw data/2026/ghi chú.txt")
        wait("the removal", 60, lambda: psql(
            db, "SELECT 1 FROM datapack_resource WHERE deleted_at IS NOT NULL"))
        log("removal -> row marked deleted")
        dlq = ls.client("sqs").get_queue_attributes(
            QueueUrl=outputs["DeadLetterQueueUrl"], AttributeNames=["ApproximateNumberOfMessages"])
        dead = int(dlq["Attributes"]["ApproximateNumberOfMessages"])
        assert dead == 0, f"{dead} dead letters"
        with urllib.request.urlopen(f"{metrics}/metrics", timeout=5) as r:
            scrape = r.read().decode()
        outcomes = [line for line in scrape.splitlines()
                    if line.startswith(("datapack_worker_records_total", "datapack_worker_messages_total"))
                    and not line.endswith(" 0")]
        log("worker counters: " + "; ".join(outcomes))
        worker.send_signal(signal.SIGTERM)
        status = worker.wait(30)
        assert status == 0, f"worker exited {status}"
        worker = None
        log("SIGTERM -> exit 0; dead-letter queue empty")
        for difference in differences:
            log(f"difference: {difference}")
        log("PASS")
        return 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        if ls is not None:
            ls.stop()
        subprocess.run(["psql", f"{PG}/postgres", "-Atqc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"],
                       check=False, capture_output=True)
        if args.keep:
            log(f"state kept in {state}")
        else:
            subprocess.run(["rm", "-rf", str(state)], check=False)


if __name__ == "__main__":
    sys.exit(main())
