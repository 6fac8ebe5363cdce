#!/usr/bin/env python3
"""The AWS stack applied for real, end to end, on LocalStack (a second S3 + SQS implementation).

    localstack_e2e.py --binary PATH [--keep] [--outage-secs N]

Starts LocalStack on a free loopback port (S3, SQS, SNS, EventBridge, CloudFormation, IAM; own
process group, state in a temporary directory), deploys deploy/aws/stack.yaml with
CloudFormation, checks what it created (SSE and redrive on the queues, versioning, the
notification, the TLS-only policies), then runs the real worker against those resources and a
fresh PostgreSQL database (reached through a TCP proxy this script can cut) and checks the
ingestion cases the moto integration tests check, each in its own scenario:

  events      what LocalStack puts on the queue (test events, key encoding, version ids,
              sequencers, times, envelopes), read before the worker starts
  presigned   a presigned upload -> row with the right SHA-256, ETag, length and uploader
  keys        awkward keys (spaces, `+`, `%`, unicode, nested folders, the datapack root)
  envelopes   s3:TestEvent skipped; SNS-wrapped (LocalStack's SNS) and EventBridge (LocalStack's
              EventBridge) bodies recorded; hand-made SNS and EventBridge bodies sent with
              SendMessage
  overwrite   a key uploaded twice with different bytes: the newer row live, the older deleted
  delete      delete markers hide a key, their removal brings the newest version back, deleting
              an old version leaves the current row live, an upload after a marker is live
  outage      PostgreSQL cut: /readyz 503, the upload's message waits (not dead-lettered), the
              row arrives once PostgreSQL is back
  dlq         unknown datapack, malformed body, rootless key: dead-lettered with their reasons,
              `dlq list` shows them, `dlq redrive --reason` after the fix records the upload
  shutdown    SIGTERM ends the worker with status 0

Conditions are polled with deadlines (the database, the queues, the worker's /metrics and
/readyz). Prints one summary line per scenario and every difference from moto it observed; exits
1 if any check failed.

Needs the LocalStack virtualenv (scripts/localstack-e2e.sh makes it), PostgreSQL on
127.0.0.1:5432 (trust, user postgres) and psql.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
PG = "postgres://postgres@127.0.0.1:5432"
DEADLINE = 60
# LocalStack is healthy in about 2 s once installed; the first start after an install compiles
# its modules and loads its plugins.
STARTUP_DEADLINE = 120
# Receiving resumes after an outage once a probe passes; probes back off up to 30 s.
SETTLE = 90
PRESIGNED_META = {"uploaded-by": "presigned-url", "uploader-name": "Test Uploader",
                  "uploader-email": "uploader@example.com"}


def log(message: str) -> None:
    print(f"localstack-e2e: {message}", flush=True)


def die_with_parent() -> None:
    """Runs in a child before exec: the kernel sends it SIGTERM when this script dies, however it
    dies (SIGKILL included), so neither LocalStack nor the worker outlives a run."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP (a CI runner giving up, a closed terminal) end the run like Ctrl-C:
    through `finally`, which stops LocalStack and the worker and drops the database."""
    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def tail(path: Path | None, lines: int = 60) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


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
            raise Failed(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(0.2)


class Failed(Exception):
    """A check that failed; the scenario stops, the run goes on and exits 1. `value` is what the
    scenario made for later ones, if anything."""

    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


def psql(db: str, sql: str) -> str:
    return subprocess.run(
        ["psql", f"{PG}/{db}", "-v", "ON_ERROR_STOP=1", "-Atqc", sql],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TcpProxy:
    """A loopback TCP proxy: `cut()` resets every connection, and every new one until `restore()`."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = threading.Event()
        self.lock = threading.Lock()
        self.live: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set():
                self._reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                self._reset(client)
                continue
            with self.lock:
                self.live.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with self.lock:
                self.live.discard(sock)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.down.set()
        with self.lock:
            live, self.live = list(self.live), set()
        for sock in live:
            self._reset(sock)

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.listener.close()
        self.cut()


LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    series = []
    for line in text.splitlines():
        if line.startswith("#") or not (m := LINE.match(line)):
            continue
        series.append((m[1], dict(LABEL.findall(m[2] or "")), float(m[3])))
    return series
class LocalStack:
    def __init__(self, state: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = dict(
            os.environ,
            GATEWAY_LISTEN=f"127.0.0.1:{self.port}",
            SERVICES="s3,sqs,sns,events,cloudformation,iam,cloudwatch,ec2",
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
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localstack.runtime.main"],
            # cwd matters for `-m`, which puts it first on sys.path: the state directory holds
            # nothing that could shadow the package.
            cwd=state, env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent,
        )

    def wait_healthy(self) -> None:
        def healthy():
            if self.process.poll() is not None:
                raise Failed(f"LocalStack exited with status {self.process.returncode} before it was healthy")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/_localstack/health", timeout=2) as r:
                    services = json.load(r)["services"]
                return all(services.get(s) in ("available", "running") for s in ("s3", "sqs", "cloudformation"))
            except OSError:
                return False

        wait("LocalStack to be healthy", STARTUP_DEADLINE, healthy)
        self.startup_s = time.monotonic() - self.started

    def client(self, service: str):
        return boto3.client(
            service, endpoint_url=self.endpoint, region_name=REGION,
            config=Config(s3={"addressing_style": "path"}), **CREDENTIALS,
        )

    def stop(self) -> None:
        """Stops LocalStack and whatever it started (its own process group), SIGKILL after 20 s."""
        for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, None)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                continue


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
            raise Failed(f"stack {status}: {reasons}")
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




def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


ROW_COLUMNS = """d.identifier AS datapack, r.bucket, r.object_key, r.path, r.display, r.sha256,
    r.length, r.etag, r.submitter_name, r.submitter_email, r.version_id, r.sequencer,
    r.event_time, r.deleted_at IS NULL AS live"""


@dataclass
class Run:
    """Everything the scenarios share: LocalStack, the stack, the database, the one worker."""

    ls: LocalStack
    binary: str
    state: Path
    bucket: str
    env_bucket: str
    db: str
    outputs: dict[str, str]
    proxy: TcpProxy
    env: dict[str, str]
    findings: list[str] = field(default_factory=list)
    worker: subprocess.Popen | None = None
    worker_log: Path | None = None

    def __post_init__(self):
        self.s3, self.sqs = self.ls.client("s3"), self.ls.client("sqs")
        self.queue = self.outputs["QueueUrl"]
        self.dlq = self.outputs["DeadLetterQueueUrl"]
        self.metrics = f"http://{self.env['METRICS_ADDR']}"

    def finding(self, text: str) -> None:
        if text not in self.findings:
            self.findings.append(text)
            log(f"  observed: {text}")

    # -- the worker
    def start_worker(self) -> None:
        self.worker_log = self.state / "worker.log"
        self.worker = subprocess.Popen([self.binary, "run"], env=self.env, stdout=subprocess.DEVNULL,
                                       stderr=open(self.worker_log, "a"), preexec_fn=die_with_parent)
        wait("the worker to be ready", DEADLINE, lambda: self.readyz() == 200)

    def stop_worker(self) -> int:
        self.worker.send_signal(signal.SIGTERM)
        status = self.worker.wait(30)
        self.worker = None
        return status

    def readyz(self) -> int | None:
        try:
            with urllib.request.urlopen(f"{self.metrics}/readyz", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def metric(self, name: str, **labels: str) -> float:
        """The sum of every series of `datapack_worker_<name>` whose labels include `labels`."""
        with urllib.request.urlopen(f"{self.metrics}/metrics", timeout=5) as r:
            series = parse_metrics(r.read().decode())
        return sum(v for n, l, v in series if n == f"datapack_worker_{name}"
                   and all(l.get(k) == want for k, want in labels.items()))

    def handled(self) -> float:
        """Messages settled for good: acknowledged or dead-lettered."""
        return self.metric("messages_total", disposition="ack") + \
            self.metric("messages_total", disposition="dead_letter")

    def wait_handled(self, base: float, n: int, what: str, deadline: float = DEADLINE) -> None:
        wait(what, deadline, lambda: self.handled() >= base + n and self.depth(self.queue) == (0, 0))

    def cli(self, *args: str) -> str:
        return subprocess.run([self.binary, *args], env=self.env, check=True, capture_output=True,
                              text=True).stdout

    # -- S3 and SQS
    def depth(self, url: str) -> tuple[int, int]:
        a = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])

    def put(self, key: str, body: bytes, bucket: str | None = None) -> dict[str, str]:
        """Uploads with the presigned metadata, as the browser's PUT carries it."""
        out = self.s3.put_object(Bucket=bucket or self.bucket, Key=key, Body=body,
                                 ContentType="text/plain", Metadata=PRESIGNED_META)
        return {"etag": out["ETag"].strip('"'), "version": out.get("VersionId"), "sha256": sha256(body)}

    def presign_put(self, datapack: str, path: str, file: str, body: bytes,
                    name: str = "Nguyễn Văn A", email: str = "a@example.com") -> str:
        """Uploads through a URL from `datapack-worker presign`; returns the ETag."""
        signed = json.loads(self.cli("presign", "--bucket", self.bucket, "--datapack", datapack,
                                     "--path", path, "--file", file, "--uploader-name", name,
                                     "--uploader-email", email, "--json"))
        request = urllib.request.Request(signed["url"], data=body, method=signed["method"],
                                         headers=signed["headers"])
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.headers["ETag"].strip('"')

    def peek(self, url: str, at_least: int, what: str) -> list[dict]:
        """Every message on `url` (at least `at_least`, then until three empty receives in a
        row), held invisible while reading and handed back (visibility 0) at the end."""
        seen: dict[str, dict] = {}
        quiet = 0
        end = time.monotonic() + DEADLINE
        while len(seen) < at_least or quiet < 3:
            if time.monotonic() > end:
                raise Failed(f"timed out reading {what}: {len(seen)} of at least {at_least}")
            got = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                           VisibilityTimeout=120, AttributeNames=["All"],
                                           MessageAttributeNames=["All"]).get("Messages", [])
            fresh = [m for m in got if m["MessageId"] not in seen]
            quiet = 0 if fresh else quiet + 1
            seen.update((m["MessageId"], m) for m in fresh)
        for m in seen.values():
            self.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"],
                                               VisibilityTimeout=0)
        return list(seen.values())

    # -- the database
    def query(self, sql: str) -> list[dict]:
        return json.loads(psql(self.db, f"SELECT coalesce(json_agg(q), '[]') FROM ({sql}) q"))

    def rows(self, key: str, bucket: str | None = None) -> list[dict]:
        """Every row of a key, oldest first."""
        return self.query(f"SELECT {ROW_COLUMNS} FROM datapack_resource r JOIN datapack d "
                          f"ON d.id = r.datapack_id WHERE r.object_key = {sql_text(key)} "
                          f"AND r.bucket = {sql_text(bucket or self.bucket)} ORDER BY r.id")

    def live(self, key: str, bucket: str | None = None) -> list[str]:
        """The ETags of a key's live rows."""
        return [r["etag"] for r in self.rows(key, bucket) if r["live"]]


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise Failed(what)


def describe(body: str) -> dict:
    """What one queue message says, whatever its envelope."""
    value = json.loads(body)
    envelope = "s3"
    if value.get("Type") == "Notification":
        envelope, value = "sns", json.loads(value["Message"])
    if value.get("Event") == "s3:TestEvent":
        return {"envelope": envelope, "kind": "s3:TestEvent", "bucket": value.get("Bucket"), "time": value.get("Time")}
    if "Records" in value:
        record = value["Records"][0]
        obj = record["s3"]["object"]
        return {"envelope": envelope, "kind": record["eventName"], "bucket": record["s3"]["bucket"]["name"],
                "key": obj.get("key"), "version": obj.get("versionId"), "sequencer": obj.get("sequencer"),
                "etag": obj.get("eTag"), "size": obj.get("size"), "time": record.get("eventTime"),
                "records": len(value["Records"])}
    detail = value["detail"]
    obj = detail["object"]
    kind = value["detail-type"] + (f" ({detail['deletion-type']})" if "deletion-type" in detail else "")
    return {"envelope": "eventbridge" if envelope == "s3" else "sns+eventbridge", "kind": kind,
            "bucket": detail["bucket"]["name"], "key": obj.get("key"), "version": obj.get("version-id"),
            "sequencer": obj.get("sequencer"), "etag": obj.get("etag"), "size": obj.get("size"),
            "time": value.get("time")}


def decoded(raw: str) -> str:
    """The worker's rule: `+` is a space, then percent-decoding, then UTF-8."""
    return urllib.parse.unquote(raw.replace("+", " "), errors="strict")


# ---------------------------------------------------------------------------------------------
# Before the worker starts


def prepare_envelopes(run: Run) -> dict[str, str]:
    """A second bucket whose events reach the stack's queue only through LocalStack's SNS
    (keys under dp-e2e/sns/) and LocalStack's EventBridge (keys under dp-e2e/eventbridge/): the
    envelopes S3 uses when the queue is not its direct destination. The stack itself is left as
    CloudFormation made it."""
    sns, events = run.ls.client("sns"), run.ls.client("events")
    queue_arn = run.sqs.get_queue_attributes(QueueUrl=run.queue, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    run.s3.create_bucket(Bucket=run.env_bucket)
    run.s3.put_bucket_versioning(Bucket=run.env_bucket, VersioningConfiguration={"Status": "Enabled"})
    topic = sns.create_topic(Name=f"{run.env_bucket}-events")["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    events.put_rule(Name=f"{run.env_bucket}-events", State="ENABLED", EventPattern=json.dumps({
        "source": ["aws.s3"],
        "detail": {"bucket": {"name": [run.env_bucket]},
                   "object": {"key": [{"prefix": "dp-e2e/eventbridge/"}]}}}))
    events.put_targets(Rule=f"{run.env_bucket}-events", Targets=[{"Id": "queue", "Arn": queue_arn}])
    run.s3.put_bucket_notification_configuration(Bucket=run.env_bucket, NotificationConfiguration={
        "TopicConfigurations": [{
            "Id": "sns", "TopicArn": topic, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "dp-e2e/sns/"}]}}}],
        "EventBridgeConfiguration": {},
    })
    return {"topic": topic, "queue_arn": queue_arn}


@dataclass
class Backlog:
    """What was done before the worker started, and what LocalStack queued for it."""

    keys: dict[str, str]
    uploads: dict[str, list[dict]]
    messages: list[dict]
    test_events: int


def scenario_events(run: Run) -> tuple[str, Backlog]:
    """Makes a little of everything before the worker runs and reads what LocalStack queued."""
    k = {
        "over": "dp-e2e/before start/over write.txt",
        "version": "dp-e2e/before start/old+version.txt",
        "marker": "dp-e2e/before start/marked 100%.txt",
        "multi": "dp-e2e/before start/multi part.bin",
        "sns": "dp-e2e/sns/via sns+1.txt",
        "eb": "dp-e2e/eventbridge/via eventbridge+1.txt",
        "eb_hidden": "dp-e2e/eventbridge/hidden.txt",
    }
    up: dict[str, list[dict]] = {}
    up["over"] = [run.put(k["over"], b"first bytes"), run.put(k["over"], b"second bytes, longer")]
    up["version"] = [run.put(k["version"], b"version one"), run.put(k["version"], b"version two")]
    run.s3.delete_object(Bucket=run.bucket, Key=k["version"], VersionId=up["version"][0]["version"])
    up["marker"] = [run.put(k["marker"], b"soon hidden")]
    marker = run.s3.delete_object(Bucket=run.bucket, Key=k["marker"])
    expect(marker.get("DeleteMarker") is True, f"a plain delete made a delete marker: {marker}")
    parts = [b"\x07" * (5 << 20), b"the end"]
    upload = run.s3.create_multipart_upload(Bucket=run.bucket, Key=k["multi"], Metadata=PRESIGNED_META)
    done = [{"PartNumber": n, "ETag": run.s3.upload_part(
        Bucket=run.bucket, Key=k["multi"], UploadId=upload["UploadId"], PartNumber=n, Body=p)["ETag"]}
        for n, p in enumerate(parts, 1)]
    out = run.s3.complete_multipart_upload(Bucket=run.bucket, Key=k["multi"], UploadId=upload["UploadId"],
                                           MultipartUpload={"Parts": done})
    up["multi"] = [{"etag": out["ETag"].strip('"'), "version": out.get("VersionId"),
                    "sha256": sha256(b"".join(parts))}]
    up["sns"] = [run.put(k["sns"], b"through SNS", bucket=run.env_bucket)]
    up["eb"] = [run.put(k["eb"], b"through EventBridge", bucket=run.env_bucket)]
    up["eb_hidden"] = [run.put(k["eb_hidden"], b"hidden through EventBridge", bucket=run.env_bucket)]
    run.s3.delete_object(Bucket=run.env_bucket, Key=k["eb_hidden"])

    # 2 + 3 + 2 + 1 object events on the stack's bucket, 1 + 3 on the other; test events besides.
    messages = run.peek(run.queue, 8, "the queued events")
    described = [describe(m["Body"]) for m in messages]
    for d in sorted(described, key=lambda d: (d["envelope"], d.get("key") or "", d.get("time") or "")):
        log("  " + " ".join(f"{f}={d[f]}" for f in ("envelope", "kind", "bucket", "key", "version",
                                                       "sequencer", "etag", "size", "time") if f in d))
    tests = [d for d in described if d["kind"] == "s3:TestEvent"]
    stack_tests = [d for d in tests if d["bucket"] == run.bucket and d["envelope"] == "s3"]
    run.finding(f"{len(stack_tests)} s3:TestEvent messages on the queue after CloudFormation set the "
                f"stack's notification ({len(tests)} in all, "
                f"{len([d for d in tests if d['envelope'] == 'sns'])} SNS-wrapped)")
    native = [d for d in described if d["envelope"] == "s3" and d["kind"] != "s3:TestEvent"]
    by_key: dict[str, list[dict]] = {}
    for d in native:
        by_key.setdefault(decoded(d["key"]), []).append(d)
    for name in ("over", "version", "marker", "multi"):
        expect(k[name] in by_key, f"no event for {k[name]!r}; events for {sorted(by_key)}")
    raw = by_key[k["over"]][0]["key"]
    run.finding(f"keys are percent-encoded with %20 for a space ({raw!r}); `+` is %2B")
    kinds = sorted(d["kind"] for d in by_key[k["version"]] + by_key[k["marker"]])
    run.finding(f"a version's deletion and a delete marker are notified: {kinds}")
    with_version = [d for d in native if d.get("version")]
    run.finding(f"{len(with_version)} of {len(native)} S3 records carry a versionId")
    sequencers = {d.get("sequencer") for d in native}
    if len(sequencers) == 1:
        run.finding(f"every S3 record carries the same sequencer {sequencers.pop()} "
                    f"({len(native)} records, 4 keys)")
    else:
        run.finding(f"{len(sequencers)} distinct sequencers over {len(native)} records")
    multi = by_key[k["multi"]]
    run.finding(f"a multipart upload is {len(multi)} event(s): {[d['kind'] for d in multi]}")
    marker_event = next(d for d in by_key[k["marker"]] if "DeleteMarker" in d["kind"])
    run.finding(f"ObjectRemoved:DeleteMarkerCreated carries eTag={marker_event.get('etag')} "
                f"size={marker_event.get('size')}")
    run.finding(f"eventTime looks like {native[0]['time']!r}")
    bridged = [d for d in described if d["envelope"] == "eventbridge"]
    wrapped = [d for d in described if d["envelope"] == "sns" and d["kind"] != "s3:TestEvent"]
    run.finding("EventBridge events: " + "; ".join(
        f"{d['kind']} key={d['key']!r} sequencer={d['sequencer']} etag={d['etag']} time={d['time']!r}"
        for d in bridged))
    backlog = Backlog(keys=k, uploads=up, messages=described, test_events=len(tests))
    if len(wrapped) != 1 or len(bridged) != 3:
        raise Failed(f"want 1 SNS-wrapped S3 event and 3 EventBridge events (create, create, delete "
                     f"marker), got {wrapped} and {bridged}", backlog)
    summary = (f"{len(messages)} messages queued before the worker started: {len(tests)} test events, "
               f"{len(native)} S3 records, {len(wrapped)} SNS-wrapped, {len(bridged)} EventBridge")
    return summary, backlog


# ---------------------------------------------------------------------------------------------
# With the worker running


def scenario_presigned(run: Run) -> str:
    """The upload path as the web app uses it: a URL from `presign`, a plain HTTP PUT."""
    body = "Xin chào from LocalStack\n".encode() * 1000
    key = "dp-e2e/raw data/2026/ghi chú.txt"
    uploaded = time.monotonic()
    etag = run.presign_put("dp-e2e", "raw data/2026", "ghi chú.txt", body)
    row = wait("the upload's row", DEADLINE, lambda: [r for r in run.rows(key) if r["live"]])[0]
    latency = time.monotonic() - uploaded
    expect(row["sha256"] == sha256(body), f"sha256 {row['sha256']}")
    expect(row["etag"] == etag and row["length"] == len(body), f"row {row}")
    expect(row["submitter_name"] == "Nguyễn Văn A" and row["path"] == "/raw data/2026", f"row {row}")
    observe_signatures(run)
    return f"presigned PUT -> row in {latency:.2f} s (sha256, ETag, length, uploader, path match)"


def observe_signatures(run: Run) -> None:
    """Whether LocalStack checks a presigned URL's signature (S3 answers 403
    SignatureDoesNotMatch): a URL whose signature is changed by one digit. An accepted upload
    becomes a row under a folder no other scenario reads; it is waited for, so its message is out
    of the next scenarios' counts."""
    signed = json.loads(run.cli("presign", "--bucket", run.bucket, "--datapack", "dp-e2e",
                                "--path", "signature", "--file", "forged.txt", "--uploader-name", "M",
                                "--uploader-email", "m@example.com", "--json"))
    url = re.sub(r"(X-Amz-Signature=)([0-9a-f])", lambda m: m[1] + ("0" if m[2] != "0" else "1"),
                 signed["url"])
    request = urllib.request.Request(url, data=b"forged", method="PUT", headers=signed["headers"])
    base = run.handled()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    if status == 200:
        run.finding("a presigned PUT with a wrong signature is accepted (200); S3 answers 403 "
                    "SignatureDoesNotMatch")
        run.wait_handled(base, 1, "the forged upload")
    else:
        run.finding(f"a presigned PUT with a wrong signature is refused ({status})")


def scenario_keys(run: Run) -> str:
    """tests/it/ingest.rs records_presigned_uploads_with_awkward_keys, and a little more."""
    psql(run.db, "INSERT INTO datapack (identifier) VALUES ('dự án') ON CONFLICT DO NOTHING")
    files = [
        ("dp-e2e", "raw data/2024", "file.csv", b"a,b\n1,2\n"),
        ("dp-e2e", "/", "a+b=c.txt", b"plus"),
        ("dp-e2e", "100%", "50% off.txt", b"percent"),
        ("dp-e2e", "ảnh/tài liệu", "ghi chú.txt", "Xin chào".encode()),
        ("dp-e2e", "数据", "文件 一.txt", "你好".encode()),
        ("dp-e2e", "deep/a/b/c", "x~y (1).bin", bytes([0, 1, 2, 255])),
        ("dp-e2e", "already%20encoded", "a%2Bb.txt", b"escapes stay literal"),
        ("dp-e2e", "sym bols", "q?x#y&z=1;'!.txt", b"reserved characters"),
        ("dự án", "/", "tệp gốc.txt", b"a unicode datapack, a file at its root"),
    ]
    started = time.monotonic()
    etags = {}
    for datapack, path, file, body in files:
        folder = path.strip("/")
        key = f"{datapack}/{folder}/{file}" if folder else f"{datapack}/{file}"
        etags[key] = run.presign_put(datapack, path, file, body)

    def all_rows():
        rows = {key: run.rows(key) for key in etags}
        return rows if all(rows.values()) else None

    rows = wait(f"{len(files)} rows", DEADLINE, all_rows)
    elapsed = time.monotonic() - started
    for datapack, path, file, body in files:
        folder = path.strip("/")
        key = f"{datapack}/{folder}/{file}" if folder else f"{datapack}/{file}"
        expect(len(rows[key]) == 1, f"{key!r}: {rows[key]}")
        row = rows[key][0]
        want = {"datapack": datapack, "object_key": key, "path": f"/{folder}", "display": file,
                "sha256": sha256(body), "length": len(body), "etag": etags[key], "live": True,
                "submitter_name": "Nguyễn Văn A", "submitter_email": "a@example.com"}
        got = {f: row[f] for f in want}
        expect(got == want, f"{key!r}: got {got}, want {want}")
    return f"{len(files)} awkward keys -> rows with the exact key, path, display in {elapsed:.1f} s"


def scenario_envelopes(run: Run, backlog: Backlog) -> str:
    """tests/it/ingest.rs sns_and_eventbridge_envelopes, with LocalStack's own envelopes too."""
    k, up = backlog.keys, backlog.uploads
    wait("the queued test events skipped", DEADLINE,
         lambda: run.metric("records_total", outcome="skipped", reason="test_event") >= backlog.test_events)
    for name in ("sns", "eb"):
        rows = wait(f"the {name} row", DEADLINE, lambda: run.rows(k[name], run.env_bucket))
        expect([(r["sha256"], r["live"]) for r in rows] == [(up[name][0]["sha256"], True)],
               f"{k[name]!r}: {rows}")
    wait("the EventBridge delete marker", DEADLINE,
         lambda: run.rows(k["eb_hidden"], run.env_bucket) and not run.live(k["eb_hidden"], run.env_bucket))

    # The moto test's bodies, sent as they are: objects under a prefix nothing notifies.
    a = run.put("dp-e2e/handmade/via sns.txt", b"sns", bucket=run.env_bucket)
    b = run.put("dp-e2e/handmade/via eventbridge.txt", b"eventbridge", bucket=run.env_bucket)
    base, tests = run.handled(), run.metric("records_total", outcome="skipped", reason="test_event")
    inner = json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION,
        "eventTime": "2024-05-01T10:00:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": run.env_bucket},
               "object": {"key": "dp-e2e/handmade/via+sns.txt", "size": 3, "eTag": a["etag"]}}}]})
    bodies = [
        json.dumps({"Type": "Notification", "MessageId": "1", "TopicArn": "arn:aws:sns:us-east-1:1:t",
                    "Message": inner}),
        json.dumps({"version": "0", "id": "e", "detail-type": "Object Created", "source": "aws.s3",
                    "account": "1", "time": "2024-05-01T10:00:00Z", "region": REGION, "resources": [],
                    "detail": {"version": "0", "bucket": {"name": run.env_bucket},
                               "object": {"key": "dp-e2e/handmade/via+eventbridge.txt", "size": 11,
                                          "etag": b["etag"]}, "reason": "PutObject"}}),
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2024-05-01T10:00:00.000Z",
                    "Bucket": run.env_bucket}),
    ]
    for body in bodies:
        run.sqs.send_message(QueueUrl=run.queue, MessageBody=body)
    run.wait_handled(base, 3, "the hand-made envelopes")
    for key, upload in (("dp-e2e/handmade/via sns.txt", a), ("dp-e2e/handmade/via eventbridge.txt", b)):
        rows = run.rows(key, run.env_bucket)
        expect([(r["sha256"], r["live"]) for r in rows] == [(upload["sha256"], True)], f"{key!r}: {rows}")
    expect(run.metric("records_total", outcome="skipped", reason="test_event") == tests + 1,
           "the hand-made test event skipped")
    expect(run.depth(run.dlq) == (0, 0), f"dead letters: {run.depth(run.dlq)}")
    return (f"{backlog.test_events} LocalStack test events skipped; LocalStack SNS and EventBridge "
            f"envelopes -> rows (EventBridge delete marker hides); hand-made SNS, EventBridge and "
            f"test-event bodies -> 2 rows + 1 skip; nothing dead-lettered")


def describe_rows(rows: list[dict]) -> str:
    return "; ".join(f"{r['etag'][:8]} v={str(r['version_id'])[:8]} seq={r['sequencer']} "
                     f"{'live' if r['live'] else 'deleted'}" for r in rows)


def one_sequencer(rows: list[dict]) -> bool:
    """Whether every row of a key came from an event with the same sequencer (LocalStack's)."""
    sequencers = {r["sequencer"] for r in rows}
    return len(rows) > 1 and len(sequencers) == 1 and None not in sequencers


def judge(run: Run, what: str, key: str, aws: list[str]) -> str | None:
    """Checks a key's live rows against what S3 then shows (`aws`: at most one ETag, the key's
    current version, or none once it is hidden), exactly as the moto tests do. Returns None when
    they agree, else what differs."""
    rows = run.rows(key)
    live = sorted(run.live(key))
    if live == sorted(aws):
        return None
    tie = " (every event of the key carried the same sequencer)" if one_sequencer(rows) else ""
    return (f"{what}: live {[e[:8] for e in live]}, S3 shows {[e[:8] for e in sorted(aws)]}{tie}: "
            f"{describe_rows(rows)}")


def scenario_overwrite(run: Run, backlog: Backlog) -> str:
    """ingest.rs overwritten_before_processing_records_only_the_newest, and the same key
    overwritten while the worker runs (each upload handled before the next): one live row, the
    newer upload's, whatever the sequencers say."""
    key = backlog.keys["over"]
    v1, v2 = backlog.uploads["over"]
    run.wait_handled(0, 0, "the backlog handled")
    before = run.rows(key)
    log(f"  both uploads before the worker: {describe_rows(before)}")
    wrong = [judge(run, "overwrite before the worker ran", key, [v2["etag"]])]
    if len(before) == 2:
        run.finding("an overwrite made before the worker read the first upload leaves 2 rows (1 "
                    "live): the event names its version, so the GET is pinned to it and succeeds "
                    "where moto's event has no version and If-Match answers 412 (`superseded`, 1 row)")

    key = "dp-e2e/overwrite/doc.txt"
    first, second = b"first version", b"second version, longer"
    base = run.handled()
    e1 = run.presign_put("dp-e2e", "overwrite", "doc.txt", first)
    run.wait_handled(base, 1, "the first upload")
    e2 = run.presign_put("dp-e2e", "overwrite", "doc.txt", second)
    run.wait_handled(base, 2, "the second upload")
    rows = run.rows(key)
    log(f"  one after the other: {describe_rows(rows)}")
    expect([r["etag"] for r in rows] == [e1, e2], f"one row per upload: {describe_rows(rows)}")
    wrong.append(judge(run, "overwrite while the worker runs", key, [e2]))
    wrong = [w for w in wrong if w]
    expect(not wrong, "; ".join(wrong))
    return (f"2 of 2 cases one live row, the newer upload's, as S3 shows them; "
            f"sequencers seen: {sorted({r['sequencer'] for r in rows})}")


def scenario_delete(run: Run, backlog: Backlog) -> str:
    """tests/it/ingest.rs removal_marks_rows_deleted and the versioned.rs cases, with the events
    LocalStack sends for real (moto sends none for versions and markers): after every step the
    key's live rows are exactly what S3 then shows (one, or none while hidden)."""
    k, up = backlog.keys, backlog.uploads
    expect(run.live(k["version"]) == [up["version"][1]["etag"]],
           f"before start, an old version deleted: {describe_rows(run.rows(k['version']))}")
    expect(run.rows(k["marker"]) and run.live(k["marker"]) == [],
           f"before start, a delete marker: {describe_rows(run.rows(k['marker']))}")
    multi = run.rows(k["multi"])
    expect([(r["sha256"], r["live"]) for r in multi] == [(up["multi"][0]["sha256"], True)]
           and multi[0]["etag"].endswith("-2"), f"multipart: {multi}")

    key = "dp-e2e/delete/report 1.csv"
    one, two, three = b"first draft", b"second draft", b"after the marker"
    e1, e2, e3 = (hashlib.md5(b).hexdigest() for b in (one, two, three))  # a plain PUT's ETag
    wrong: list[str] = []

    def step(what: str, action, aws: list[str]) -> dict:
        base = run.handled()
        result = action()
        run.wait_handled(base, 1, what)
        log(f"  {what}: {describe_rows(run.rows(key))}")
        if problem := judge(run, what, key, aws):
            wrong.append(problem)
            log(f"    differs from S3: {problem}")
        return result

    def delete(version: str | None = None) -> dict:
        args = {"VersionId": version} if version else {}
        return run.s3.delete_object(Bucket=run.bucket, Key=key, **args)

    # Each step, and what S3 then shows. Every step is checked, so a failure names all of them.
    v1 = step("upload v1", lambda: run.put(key, one), [e1])
    step("upload v2", lambda: run.put(key, two), [e2])
    step("delete old version v1", lambda: delete(v1["version"]), [e2])
    m1 = step("plain delete (marker m1)", delete, [])
    step("delete marker m1 (v2 current again)", lambda: delete(m1["VersionId"]), [e2])
    m2 = step("plain delete (marker m2)", delete, [])
    v3 = step("upload v3 after the marker", lambda: run.put(key, three), [e3])
    step("delete current version v3 (marker m2 current)", lambda: delete(v3["version"]), [])
    step("delete marker m2 (v2 current)", lambda: delete(m2["VersionId"]), [e2])
    expect(not wrong, f"{len(wrong)} of 9 steps differ from S3: " + "; ".join(wrong))
    return ("before start: old version deleted -> current live, marker -> hidden, multipart 1 row; "
            "while running: 9 of 9 steps on one key as S3 shows them")


def scenario_outage(run: Run, outage_s: float) -> str:
    """tests/it/faults.rs database_outage_loses_nothing_and_flips_readiness, with LocalStack's
    SQS holding the message: PostgreSQL cut behind the proxy, an upload meanwhile."""
    key = "dp-e2e/outage/during.txt"
    body = b"uploaded while PostgreSQL was unreachable"
    dead, releases = run.metric("dead_letters_total"), run.metric("messages_total", disposition="release")
    receives = run.metric("messages_received_total")
    expect(run.readyz() == 200, "ready before the outage")
    run.proxy.cut()
    cut_at = time.monotonic()
    run.put(key, body)
    wait("/readyz 503 during the outage", DEADLINE, lambda: run.readyz() == 503)
    not_ready_after = time.monotonic() - cut_at
    # The outage lasts `outage_s`; all along the message must wait, never be dead-lettered.
    while time.monotonic() - cut_at < outage_s:
        expect(run.depth(run.dlq) == (0, 0), f"dead-lettered during the outage: {run.depth(run.dlq)}")
        expect(run.readyz() == 503, "still not ready during the outage")
        expect(not run.rows(key), "no row while PostgreSQL is unreachable")
        time.sleep(0.5)
    waiting = run.depth(run.queue)
    released = run.metric("messages_total", disposition="release") - releases
    paused = run.metric("paused")
    run.proxy.restore()
    restored = time.monotonic()
    wait("/readyz 200 after the outage", SETTLE, lambda: run.readyz() == 200)
    ready_after = time.monotonic() - restored
    rows = wait("the row after the outage", SETTLE, lambda: [r for r in run.rows(key) if r["live"]])
    row_after = time.monotonic() - restored
    expect(rows[0]["sha256"] == sha256(body), f"row {rows[0]}")
    received = run.metric("messages_received_total") - receives
    run.wait_handled(0, 0, "the queue drained")
    expect(run.depth(run.dlq) == (0, 0) and run.metric("dead_letters_total") == dead,
           f"nothing dead-lettered: {run.depth(run.dlq)}")
    return (f"cut {outage_s:.0f} s: /readyz 503 after {not_ready_after:.1f} s, paused={paused:.0f}, "
            f"message waiting (visible, in flight) {waiting}, released {released:.0f} time(s); "
            f"restored: /readyz 200 after {ready_after:.1f} s, row after {row_after:.1f} s; "
            f"received {received:.0f} time(s) in all; 0 dead letters")


def scenario_dlq(run: Run) -> str:
    """tests/it/dlq.rs list_then_redrive_after_the_cause_is_fixed and ingest.rs's dead-letter
    cases: unknown datapack (CREATE_MISSING_DATAPACKS off), a body that is not JSON, a key with no
    datapack segment."""
    dead = run.metric("dead_letters_total")
    run.presign_put("dp-late", "/", "orphan.txt", b"an upload for a datapack made later")
    run.sqs.send_message(QueueUrl=run.queue, MessageBody="this is not json")
    run.put("rootless.txt", b"no datapack segment")
    wait("3 dead letters", DEADLINE, lambda: run.metric("dead_letters_total") >= dead + 3
         and run.depth(run.dlq)[0] == 3)
    letters = run.peek(run.dlq, 3, "the dead letters")
    expect(len(letters) == 3, f"{len(letters)} dead letters")
    by_reason = {m["MessageAttributes"]["error_reason"]["StringValue"]: m for m in letters}
    expect(sorted(by_reason) == ["invalid_key", "malformed_message", "unknown_datapack"], f"{sorted(by_reason)}")
    for reason, m in by_reason.items():
        attributes = {n: a.get("StringValue") for n, a in m["MessageAttributes"].items()}
        expect(attributes.get("error_detail") and attributes.get("source_message_id")
               and attributes.get("receive_count"), f"{reason}: attributes {attributes}")
    expect(by_reason["malformed_message"]["Body"] == "this is not json", "the body is unchanged")
    orphan = describe(by_reason["unknown_datapack"]["Body"])
    expect(decoded(orphan["key"]) == "dp-late/orphan.txt", f"the original S3 event: {orphan}")
    for _ in range(2):  # listing consumes nothing
        listed = json.loads(run.cli("dlq", "list", "--json"))
        expect(len(listed) == 3, f"dlq list: {listed}")
        expect(sorted(e["reason"] for e in listed) == sorted(by_reason), f"dlq list: {listed}")
        expect(sorted(e["key"] for e in listed if e.get("key")) == ["dp-late/orphan.txt", "rootless.txt"],
               f"dlq list keys: {listed}")
    text = run.cli("dlq", "list")
    expect("unknown_datapack" in text and "3 message(s)" in text, text)
    expect(run.depth(run.dlq) == (3, 0), f"dlq list left {run.depth(run.dlq)}")

    psql(run.db, "INSERT INTO datapack (identifier) VALUES ('dp-late')")
    out = run.cli("dlq", "redrive", "--reason", "unknown_datapack")
    expect("redrove 1" in out, out)
    wait("the redriven upload's row", DEADLINE, lambda: run.live("dp-late/orphan.txt"))
    wait("2 dead letters left", DEADLINE, lambda: run.depth(run.dlq) == (2, 0))
    return ("unknown_datapack, malformed_message, invalid_key dead-lettered with error_reason, "
            "error_detail, source_message_id, receive_count; `dlq list` shows 3 twice (consumes "
            "none); redrive after the fix -> row, 2 left")


def scenario_shutdown(run: Run) -> str:
    started = time.monotonic()
    status = run.stop_worker()
    expect(status == 0, f"worker exited {status}")
    return f"SIGTERM -> exit 0 in {time.monotonic() - started:.1f} s"


def sweep_stale() -> None:
    """Removes what a run killed with SIGKILL could not (its database and state directory, both
    named after its pid), once that pid is gone, so a build machine does not fill up."""
    def gone(pid: str) -> bool:
        return pid.isdigit() and not Path(f"/proc/{pid}").exists()

    for db in psql("postgres", "SELECT datname FROM pg_database WHERE datname LIKE 'dpw\\_localstack\\_%'").split():
        if gone(db.rsplit("_", 1)[-1]):
            log(f"dropping {db}, left by a run that was killed")
            psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    for state in Path(tempfile.gettempdir()).glob("dpw-localstack-*-*"):
        if gone(state.name.split("-")[2]):
            log(f"removing {state}, left by a run that was killed")
            subprocess.run(["rm", "-rf", str(state)], check=False)


def print_logs(ls: LocalStack | None, run: Run | None) -> None:
    log(f"LocalStack log (tail):\n{tail(ls.log if ls else None)}")
    log(f"worker log (tail):\n{tail(run.worker_log if run else None, 40)}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--keep", action="store_true", help="leave the state directory")
    parser.add_argument("--outage-secs", type=float, default=15, help="how long PostgreSQL is cut")
    args = parser.parse_args()
    stop_on_signals()
    began = time.monotonic()
    sweep_stale()
    state = Path(tempfile.mkdtemp(prefix=f"dpw-localstack-{os.getpid()}-"))
    bucket = f"datapack-e2e-{os.getpid()}"
    db = f"dpw_localstack_{os.getpid()}"
    ls = run = proxy = None
    results: list[tuple[str, str, float]] = []
    try:
        ls = LocalStack(state)
        ls.wait_healthy()
        log(f"LocalStack on {ls.endpoint}, healthy after {ls.startup_s:.1f} s")
        outputs = deploy(ls, bucket)
        differences = inspect(ls, bucket, outputs)

        subprocess.run(["psql", f"{PG}/postgres", "-Atqc", f"CREATE DATABASE {db}"], check=True)
        proxy = TcpProxy(5432)
        env = dict(
            os.environ, AWS_ENDPOINT_URL=ls.endpoint, AWS_REGION=REGION,
            AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
            DATABASE_URL=f"postgres://postgres@127.0.0.1:{proxy.port}/{db}",
            S3_BUCKET=f"{bucket},{bucket}-env",
            SQS_QUEUE_URL=outputs["QueueUrl"], SQS_DEAD_LETTER_QUEUE_URL=outputs["DeadLetterQueueUrl"],
            METRICS_ADDR=f"127.0.0.1:{free_port()}", SQS_WAIT_TIME_SECS="2",
            SHUTDOWN_GRACE_SECS="10", RUST_LOG="warn",
        )
        subprocess.run([args.binary, "migrate"], env=dict(env, DATABASE_URL=f"{PG}/{db}"), check=True)
        psql(db, "INSERT INTO datapack (identifier) VALUES ('dp-e2e')")
        run = Run(ls=ls, binary=args.binary, state=state, bucket=bucket, env_bucket=f"{bucket}-env",
                  db=db, outputs=outputs, proxy=proxy, env=env)
        prepare_envelopes(run)

        def scenario(name: str, function, *arguments):
            log(f"scenario {name}")
            started = time.monotonic()
            try:
                summary = function(run, *arguments)
                if isinstance(summary, tuple):
                    summary, value = summary
                else:
                    value = None
                results.append((name, f"ok: {summary}", time.monotonic() - started))
                return value
            except Failed as failure:
                results.append((name, f"FAILED: {failure}", time.monotonic() - started))
                log(f"  FAILED: {failure}")
                return failure.value

        backlog = scenario("events", scenario_events)
        run.start_worker()
        scenario("presigned", scenario_presigned)
        scenario("keys", scenario_keys)
        if backlog:
            scenario("envelopes", scenario_envelopes, backlog)
            scenario("overwrite", scenario_overwrite, backlog)
            scenario("delete", scenario_delete, backlog)
        scenario("outage", scenario_outage, args.outage_secs)
        scenario("dlq", scenario_dlq)
        if run.worker is not None and run.worker.poll() is None:
            counters = [f"{n}{{{','.join(f'{k}={v}' for k, v in sorted(l.items()))}}} {v:.0f}"
                        for n, l, v in parse_metrics(urllib.request.urlopen(
                            f"{run.metrics}/metrics", timeout=5).read().decode())
                        if n in ("datapack_worker_records_total", "datapack_worker_messages_total") and v]
            log("worker counters: " + "; ".join(counters))
        scenario("shutdown", scenario_shutdown)

        print()
        log("summary")
        for name, outcome, seconds in results:
            log(f"  {name:<10} {seconds:5.1f} s  {outcome}")
        for difference in differences + run.findings:
            log(f"  difference: {difference}")
        failed = [name for name, outcome, _ in results if outcome.startswith("FAILED")]
        log(f"{'FAIL: ' + ', '.join(failed) if failed else 'PASS'} in {time.monotonic() - began:.0f} s")
        if failed:
            print_logs(ls, run)
        return 1 if failed else 0
    except (Exception, KeyboardInterrupt) as error:
        # Before or between the scenarios (LocalStack, CloudFormation, the database, a signal):
        # the run cannot go on. Say why, with the logs, and fail; never a skip.
        for name, outcome, seconds in results:
            log(f"  {name:<10} {seconds:5.1f} s  {outcome}")
        log(f"FAIL after {time.monotonic() - began:.0f} s: {type(error).__name__}: {error}")
        print_logs(ls, run)
        return 130 if isinstance(error, KeyboardInterrupt) else 1
    finally:
        if run is not None and run.worker is not None and run.worker.poll() is None:
            run.worker.kill()
        if proxy is not None:
            proxy.close()
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
