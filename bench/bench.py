#!/usr/bin/env python3
"""The benchmark's orchestrator; run it through bench/run.sh, which prepares the machine.

Expects the environment written by `emulated_stack up` (AWS_ENDPOINT_URL, S3_BUCKET,
SQS_QUEUE_URL, ...) plus BENCH_WORKER, BENCH_CEILING, BENCH_DB_WRITE (binaries), BENCH_PG_ADMIN
(an admin PostgreSQL URL ending in /postgres) and BENCH_STATE (a scratch directory).

Objects are uploaded once, with the bucket's notification switched off. Each timed run then
feeds S3 event notifications for them (the same JSON S3 sends) into the queue, ten per
SendMessageBatch, keeping fewer than FEED_MAX_VISIBLE visible (moto's SQS slows down as its
queue grows), while the consumer under test drains it. A run's wall time is from the first
message fed to the last object done (row committed / webhook answered / message deleted).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import boto3
from botocore.config import Config

from common import (
    CLK_TCK,
    DATAPACK,
    SETTLE_WAIT_S,
    cell,
    cell_of,
    Feeder,
    fresh_database,
    git_meta,
    log,
    med,
    proc_cpu,
    proc_hwm_mib,
    Psql,
    settle,
    stop,
    stop_all,
)
import load as paced

HERE = Path(__file__).resolve().parent
MIB = 1 << 20
CONCURRENCY = 16
# The scale-out group: worker processes per run, and the database each run gets afresh.
SCALEOUT_WORKERS = (1, 2, 3)
SCALEOUT_DB = "datapack_bench_scaleout"
# Group-commit writers compared by `--only writers` (the worker's default, DB_WRITERS, is 2).
DB_WRITER_COUNTS = (1, 2, 4)
# The migration that gives the batch function its current body (`--db-before` re-applies it to
# the "after" side, so both sides are prepared alike).
LATEST_MIGRATION = sorted((HERE.parent / "migrations").glob("*.sql"))[-1]


# The measured binary's own build_info labels (version, git_commit), read from the first worker
# that became ready: with BENCH_BIN_DIR the binary need not be the checkout's commit.
WORKER_BUILD: dict[str, str] = {}


def read_build_info(addr: str) -> None:
    if WORKER_BUILD:
        return
    try:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return
    for line in text.splitlines():
        if line.startswith("datapack_worker_build_info{"):
            WORKER_BUILD.update(re.findall(r'([a-z_]+)="([^"]*)"', line))


def log_run(name: str, result: dict) -> None:
    """One run's figures, as a line of progress."""
    log(f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float)))


def result_meta() -> dict:
    """git_meta, plus the measured binary's build_info once a worker has been ready."""
    meta = git_meta()
    if WORKER_BUILD:
        meta["worker_build"] = dict(WORKER_BUILD)
    return meta


def write_json(path: Path, results: dict) -> None:
    """A result file: the runs by scenario, and `_meta` (result_meta) naming the code measured."""
    path.write_text(json.dumps({"_meta": result_meta(), **results}, indent=1))


# The worker's start-up line: with METRICS_ADDR port 0 it names the port the kernel picked.
LISTENING = re.compile(r"listening on http://([0-9.]+:[0-9]+)")


def listening_addr(log_path: Path, offset: int) -> str | None:
    """The endpoint address in what the worker logged after `offset`, once it has."""
    with open(log_path, "rb") as f:
        f.seek(offset)
        found = LISTENING.search(f.read().decode("utf-8", "replace"))
    return found.group(1) if found else None


def prometheus_sum(text: str):
    """A reader over a Prometheus text exposition: series(name, **labels) is the sum of the
    samples of `name` whose labels include `labels`."""
    samples = []
    for line in text.splitlines():
        found = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if found:
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', found.group(2) or ""))
            samples.append((found.group(1), labels, float(found.group(3))))

    def series(name: str, **want: str) -> float:
        return sum(v for n, labels, v in samples
                   if n == name and all(labels.get(k) == w for k, w in want.items()))

    return series


# --------------------------------------------------------------------------- process stats


# --------------------------------------------------------------------------- PostgreSQL


# --------------------------------------------------------------------------- S3 and SQS


def clients():
    cfg = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path"},
        max_pool_connections=32,
    )
    return boto3.client("s3", config=cfg), boto3.client("sqs", config=cfg)


class Objects:
    def __init__(self, s3, bucket: str):
        self.s3 = s3
        self.bucket = bucket
        self.records: dict[str, list[dict]] = {}

    def upload(self, name: str, count: int, size: int, checksum: str | None = None) -> None:
        """Uploads `count` objects of `size` bytes (random, distinct) with presigned metadata;
        with `checksum` (e.g. "SHA256") boto3 sends the checksum and the algorithm, which makes
        moto store it (HeadObject then returns it)."""
        records = []
        sequencer = 0x10000 * (len(self.records) + 1)
        block = os.urandom(min(size, 64 * MIB)) if size else b""
        for i in range(count):
            key = f"{DATAPACK}/{name}/object {i:05d}.bin"
            if size > len(block):
                body = (block * (size // len(block) + 1))[: size - 16] + os.urandom(16)
            else:
                body = block[: max(size - 16, 0)] + os.urandom(min(16, size))
            extra = {"ChecksumAlgorithm": checksum} if checksum else {}
            out = self.s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType="application/octet-stream",
                Metadata={
                    "uploaded-by": "presigned-url",
                    "uploader-name": "Bench Uploader",
                    "uploader-email": "bench@example.org",
                },
                **extra,
            )
            sequencer += 1
            records.append(
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "awsRegion": os.environ.get("AWS_REGION", "us-east-1"),
                    "eventTime": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "eventName": "ObjectCreated:Put",
                    "s3": {
                        "s3SchemaVersion": "1.0",
                        "configurationId": "datapack-worker",
                        "bucket": {"name": self.bucket, "arn": f"arn:aws:s3:::{self.bucket}"},
                        "object": {
                            "key": urllib.parse.quote_plus(key, safe="/"),
                            "size": size,
                            "eTag": out["ETag"].strip('"'),
                            "sequencer": f"{sequencer:016X}",
                        },
                    },
                }
            )
        self.records[name] = records


def purge(sqs, url: str) -> None:
    """Empties the queue (PurgeQueue is rate-limited on AWS; moto allows it)."""
    sqs.purge_queue(QueueUrl=url)
    time.sleep(0.1)


# --------------------------------------------------------------------------- consumers


def read_json_line(proc: subprocess.Popen, key: str, timeout: float) -> dict:
    """Reads the consumer's stdout until a JSON object with `key`."""
    deadline = time.monotonic() + timeout
    assert proc.stdout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"consumer exited (status {proc.wait()}) before reporting {key}")
        line = line.strip()
        if line.startswith("{"):
            value = json.loads(line)
            if key in value:
                return value
    raise TimeoutError(f"no {key} from the consumer within {timeout}s")


class Bench:
    def __init__(self, args):
        self.args = args
        self.env = dict(os.environ)
        self.queue_url = os.environ["SQS_QUEUE_URL"]
        self.bucket = os.environ["S3_BUCKET"]
        self.s3, self.sqs = clients()
        self.objects = Objects(self.s3, self.bucket)
        self.state = Path(os.environ["BENCH_STATE"])
        self.admin = os.environ["BENCH_PG_ADMIN"]
        self.results: dict[str, list[dict]] = {}
        self.notes: list[str] = []
        # Runs of `db_before` so far: which body goes first alternates with it.
        self.db_before_runs = 0

    # -- set-up

    def prepare(self, large: bool) -> None:
        """Uploads the small set, and the large one if a wanted group reads it (the emulator
        keeps every object in memory)."""
        # Uploads must not enqueue notifications: runs feed the events themselves.
        self.s3.put_bucket_notification_configuration(
            Bucket=self.bucket, NotificationConfiguration={}
        )
        purge(self.sqs, self.queue_url)
        a = self.args
        log(f"uploading {a.small_count} x {a.small_size} B")
        self.objects.upload("small", a.small_count, a.small_size)
        if large:
            log(f"uploading {a.large_count} x {a.large_size // MIB} MiB")
            self.objects.upload("large", a.large_count, a.large_size)
        self.db_url = fresh_database(self.admin, "datapack_bench")
        self.psql = Psql(self.db_url)

    # -- the worker

    def worker_env(self, extra_env: dict, endpoint=None, db_url=None) -> dict:
        """A benchmark worker's environment: concurrency 16, metrics on a port the kernel picks,
        the short long-poll wait (see SETTLE_WAIT_S), defaults otherwise."""
        env = dict(self.env)
        env.update(
            DATABASE_URL=db_url or self.db_url,
            WORKER_CONCURRENCY=str(CONCURRENCY),
            METRICS_ADDR="127.0.0.1:0",
            MIGRATE_ON_START="true",
            RUST_LOG="warn,datapack_worker::ops::http=info",
            REQUIRE_UPLOADED_BY="presigned-url",
            SQS_WAIT_TIME_SECS=str(SETTLE_WAIT_S),
        )
        if endpoint:
            env["AWS_ENDPOINT_URL"] = endpoint
        env.update(extra_env)
        return env

    def start_worker(self, log_name: str, env: dict, binary=None) -> tuple[subprocess.Popen, Path, int]:
        """Starts the release binary (or `binary`), logging to the state directory; returns the
        process, its log and where this start's lines begin in it."""
        log_path = self.state / f"worker-{log_name}.log"
        with open(log_path, "ab") as logf:
            offset = logf.tell()
            proc = subprocess.Popen([binary or os.environ["BENCH_WORKER"], "run"], env=env,
                                    stdout=logf, stderr=logf)
        return proc, log_path, offset

    def worker(self, scenario: str, records: list[dict], extra_env: dict, endpoint=None,
               probe=None, binary=None) -> dict:
        """One timed worker run; `probe(addr)`, if given, is called before the worker stops and
        what it returns is added to the result."""
        env = self.worker_env(extra_env, endpoint)
        self.psql.scalar(
            "TRUNCATE datapack_resource, datapack_object_removal"
            if self.tables_exist()
            else "SELECT 1"
        )
        proc, log_path, offset = self.start_worker(scenario, env, binary)
        try:
            addr = self.wait_ready(log_path, offset, proc, measured=binary is None)
            self.psql.scalar(
                f"INSERT INTO datapack (identifier) VALUES ('{DATAPACK}') ON CONFLICT DO NOTHING"
            )
            perf = None
            if self.args.perf:
                perf = subprocess.Popen(
                    ["perf", "record", "-F", "999", "-g", "-p", str(proc.pid),
                     "-o", str(self.state / f"perf-{scenario}.data")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
            cpu0 = proc_cpu(proc.pid)
            t0 = time.time()
            feeder = Feeder(self.sqs, self.queue_url, records)
            feeder.start()
            self.wait_rows(self.psql, len(records), [(proc, log_path)], feeder)
            t1 = time.time()
            cpu1 = proc_cpu(proc.pid)
            hwm = proc_hwm_mib(proc.pid)
            feeder.join()
            probed = probe(addr) if probe else {}
            if perf:
                perf.send_signal(signal.SIGINT)
                perf.wait(60)
        finally:
            stop(proc)
            settle()
        self.check_drained()
        return self.measure(records, t1 - t0, cpu1 - cpu0, hwm) | probed

    def wait_rows(self, psql: Psql, n: int, workers: list[tuple[subprocess.Popen, Path]],
                  feeder: Feeder) -> None:
        """Polls the row count until `n` rows are committed; fails fast if a worker or the
        feeder does."""
        deadline = time.monotonic() + self.args.timeout
        while True:
            done = int(psql.scalar("SELECT count(*) FROM datapack_resource") or 0)
            if done >= n:
                return
            for proc, log_path in workers:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {proc.returncode}; see {log_path}")
            if feeder.error:
                raise feeder.error
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done}/{n} rows after {self.args.timeout}s; see the worker logs in {self.state}")
            time.sleep(0.02)

    def tables_exist(self) -> bool:
        return self.psql.scalar("SELECT to_regclass('datapack_resource') IS NOT NULL") == "t"

    def wait_ready(self, log_path: Path, offset: int, proc: subprocess.Popen,
                   measured: bool = True) -> str:
        """Waits for /readyz; the result's build is read from the first measured worker (not
        from the earlier build of `--only worker-before`)."""
        deadline = time.monotonic() + 60
        addr = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode} during start-up")
            addr = addr or listening_addr(log_path, offset)
            try:
                if addr:
                    with urllib.request.urlopen(f"http://{addr}/readyz", timeout=1) as r:
                        if r.status == 200:
                            if measured:
                                read_build_info(addr)
                            return addr
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError("worker not ready within 60 s")

    def check_drained(self) -> None:
        # Every message must have been deleted; wait briefly for the last delete batch.
        for _ in range(100):
            attrs = self.sqs.get_queue_attributes(
                QueueUrl=self.queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            if attrs["ApproximateNumberOfMessages"] == "0" and attrs["ApproximateNumberOfMessagesNotVisible"] == "0":
                return
            time.sleep(0.05)
        log("warning: queue not empty after a run; purging")
        purge(self.sqs, self.queue_url)

    # -- the seed Lambda, in one warm process

    def baseline(self, records: list[dict]) -> dict:
        env = dict(self.env)
        webhook_port_file = self.state / "webhook.port"
        webhook_port_file.unlink(missing_ok=True)
        webhook = subprocess.Popen([sys.executable, str(HERE / "baseline" / "webhook.py"), str(webhook_port_file)])
        try:
            for _ in range(100):
                if webhook_port_file.exists() and webhook_port_file.read_text():
                    break
                time.sleep(0.05)
            aws_config = self.state / "aws-config"
            aws_config.write_text("[default]\ns3 =\n    addressing_style = path\n")
            env.update(
                WEBHOOK_URL=f"http://127.0.0.1:{webhook_port_file.read_text()}/hook/add-datapack-resource",
                WEBHOOK_SECRET_TOKEN="bench-secret",
                AWS_CONFIG_FILE=str(aws_config),
                PYTHONUNBUFFERED="1",
            )
            proc = subprocess.Popen(
                [sys.executable, str(HERE / "baseline" / "driver.py"), "--queue-url", self.queue_url, "--expect", str(len(records))],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                read_json_line(proc, "ready", 60)
                t0 = time.time()
                feeder = Feeder(self.sqs, self.queue_url, records)
                feeder.start()
                out = read_json_line(proc, "invocations", self.args.timeout)
                hwm = proc_hwm_mib(proc.pid)
                feeder.join()
            finally:
                stop(proc)
                settle()
            count = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{webhook_port_file.read_text()}/count").read())
            if count["count"] != len(records):
                raise RuntimeError(f"webhook got {count['count']} posts for {len(records)} objects")
        finally:
            stop(webhook)
        self.check_drained()
        result = self.measure(records, out["end_epoch"] - t0, out["handler_cpu_s"], hwm)
        result["process_cpu_s"] = out["process_cpu_s"]
        return result

    # -- the bare client

    def ceiling(self, records: list[dict], ranged: tuple[int, int] | None = None,
                hash: bool = False) -> dict:
        argv = [
            os.environ["BENCH_CEILING"],
            "--queue-url", self.queue_url,
            "--expect", str(len(records)),
            "--concurrency", str(CONCURRENCY),
        ]
        if ranged:
            argv += ["--ranged-part", str(ranged[0]), "--ranged-parallelism", str(ranged[1])]
        if hash:
            argv.append("--hash")
        proc = subprocess.Popen(argv, env=self.env, stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)  # let it connect and start polling
            cpu0 = proc_cpu(proc.pid)
            t0 = time.time()
            feeder = Feeder(self.sqs, self.queue_url, records)
            feeder.start()
            out = read_json_line(proc, "end_epoch", self.args.timeout)
            cpu1 = proc_cpu(proc.pid)
            hwm = proc_hwm_mib(proc.pid)
            feeder.join()
        finally:
            stop(proc)
            settle()
        self.check_drained()
        if out["messages"] < len(records):
            raise RuntimeError(f"ceiling deleted {out['messages']} of {len(records)}")
        return self.measure(records, out["end_epoch"] - t0, cpu1 - cpu0, hwm)

    # -- the database write path alone

    def db_write(self) -> dict:
        """The write path twice, each on a fresh database: with change notifications (the
        default) and without (`NOTIFY_CHANGES=false`, `--no-notify`)."""
        result = {}
        for suffix, extra in (("", []), ("_no_notify", ["--no-notify"])):
            first, second = self.run_db_write(*extra)
            result.update({
                "resources": first["resources"],
                f"per_s{suffix}": first["per_s"],
                f"duplicate_per_s{suffix}": second["per_s"],
                f"second_pass_duplicates{suffix}": second["duplicate"],
                # The second pass goes over the rows several times (the example's `--again`).
                f"second_pass_writes{suffix}": second["resources"],
            })
        return result

    def run_db_write(self, *extra: str, body: Path | None = None) -> tuple[dict, dict]:
        """examples/db_write.rs once on a fresh database: its first and second pass. With `body`
        (a migration file), the batch function is given that migration's body first: the example
        migrates a fresh database with one row, the tables are emptied, the body applied, and the
        example, finding nothing to migrate, runs on it."""
        url = fresh_database(self.admin, "datapack_bench_db_write")
        if body is not None:
            subprocess.run([os.environ["BENCH_DB_WRITE"], "--resources", "1", "--again", "1"],
                           env=dict(self.env, DATABASE_URL=url), stdout=subprocess.DEVNULL,
                           check=True)
            for script in ("-c", "TRUNCATE datapack_resource, datapack_object_removal, datapack "
                           "RESTART IDENTITY CASCADE"), ("-f", str(body)):
                # stderr: the migrations' SET LOCAL warns outside a transaction block.
                subprocess.run(["psql", "-Xq", "-v", "ON_ERROR_STOP=1", url, *script],
                               check=True, stderr=subprocess.DEVNULL)
        out = subprocess.run(
            [os.environ["BENCH_DB_WRITE"], "--resources", str(self.args.db_resources),
             "--tasks", str(self.args.db_tasks), *extra],
            env=dict(self.env, DATABASE_URL=url), stdout=subprocess.PIPE, text=True, check=True,
        ).stdout
        first, second = json.loads(out.strip().splitlines()[-1])["passes"]
        return first, second

    def db_writers(self) -> dict:
        """The write path at each of DB_WRITER_COUNTS writers (the pool one more, as the worker
        sizes it), each on a fresh database, one after another within a run, so a change in the
        machine's speed between runs falls on every count alike."""
        result = {}
        for n in DB_WRITER_COUNTS:
            first, second = self.run_db_write("--writers", str(n), "--connections", str(n + 1))
            if second["duplicate"] != second["resources"]:
                raise RuntimeError(f"{n} writers: the second pass was not all Duplicate")
            result[f"per_s_w{n}"] = first["per_s"]
            result[f"duplicate_per_s_w{n}"] = second["per_s"]
        return result

    def db_before(self) -> dict:
        """The write path with the batch function as migrated and with an earlier migration's
        body (`--db-before`), each on a fresh database prepared the same way, in alternating
        order run by run, so a change in the machine's speed falls on both alike."""
        variants = [("before", Path(self.args.db_before)), ("after", LATEST_MIGRATION)]
        self.db_before_runs += 1
        result = {}
        for name, body in variants if self.db_before_runs % 2 else variants[::-1]:
            first, second = self.run_db_write(body=body)
            result[f"per_s_{name}"] = first["per_s"]
            result[f"duplicate_per_s_{name}"] = second["per_s"]
        return result

    def worker_before(self, records: list[dict]) -> None:
        """The small objects through an earlier build of the worker (`--worker-before BINARY`)
        and through this one, in alternating order run by run, so a change in the machine's
        speed falls on both alike (a change of allocator or runtime shows here, not in a
        comparison of two full runs taken hours apart)."""
        lines = [("worker: small, earlier build", self.args.worker_before),
                 ("worker: small", None)]
        for i in range(self.args.runs):
            for name, binary in lines if i % 2 == 0 else lines[::-1]:
                log(f"{name}: run {i + 1}/{self.args.runs}")
                result = self.worker("small-before" if binary else "small", records, {},
                                     binary=binary)
                self.results.setdefault(name, []).append(result)
                log_run(name, result)

    # -- zero-read ingestion: S3's stored SHA-256 instead of a GET

    def check_stored_sha256(self, name: str) -> None:
        """The objects must carry a SHA-256 that HeadObject returns, or trust on measures a GET."""
        key = urllib.parse.unquote_plus(self.objects.records[name][0]["s3"]["object"]["key"])
        head = self.s3.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        if "ChecksumSHA256" not in head:
            raise RuntimeError(f"moto stored no SHA-256 for {key}: zero-read cannot be measured")

    def counted(self, prefix: str, run, *args) -> dict:
        """Runs `run(*args)` and adds the HEAD and GET requests per object that moto logged for
        keys under `prefix` meanwhile (its access log has one line per request; the S3 traffic of
        the run is exactly those keys). Without the log, no request counts."""
        log_path = Path(os.environ.get("BENCH_MOTO_LOG", self.state / "moto.log"))
        start = log_path.stat().st_size if log_path.exists() else None
        result = run(*args)
        if start is None:
            return result
        time.sleep(0.2)  # the last answer's log line
        with open(log_path, "rb") as f:
            f.seek(start)
            lines = f.read().decode("utf-8", "replace").splitlines()
        path = "/" + urllib.parse.quote(f"{self.bucket}/{DATAPACK}/{prefix}/")
        for method in ("HEAD", "GET"):
            hits = sum(1 for line in lines if f'"{method} {path}' in line)
            result[f"{method.lower()}_per_object"] = hits / result["objects"]
        return result

    @staticmethod
    def scrape(addr: str) -> dict:
        """The worker's own counts: bytes hashed and HeadObject calls."""
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
            text = r.read().decode()

        def value(series: str) -> float:
            for line in text.splitlines():
                if line.startswith(series + " "):
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        return {
            "hashed_bytes": value("datapack_worker_hashed_bytes_total"),
            "heads_counted": value('datapack_worker_phase_seconds_count{phase="s3_head"}'),
        }

    def zeroread(self, name: str, count: int, size: int) -> None:
        """Checksummed uploads: the seed Lambda, the worker as before (trust off: one GET and the
        hash), and the worker trusting S3's SHA-256 (one HEAD, nothing read; audit off so the
        line shows the path itself: an audit ratio r adds r × the GET path)."""
        self.objects.upload(name, count, size, checksum="SHA256")
        self.check_stored_sha256(name)
        records = self.objects.records[name]
        label = f"zero-read, {fmt_size(size)}"
        self.repeat(f"{label}: baseline Lambda", self.counted, name, self.baseline, records)
        self.repeat(f"{label}: worker, trust off (GET path)", self.counted, name, self.worker,
                    f"{name}-off", records, {"S3_CHECKSUMS_TRUSTED": "false"}, None, self.scrape)
        self.repeat(f"{label}: worker, trust on", self.counted, name, self.worker,
                    f"{name}-on", records,
                    {"S3_CHECKSUMS_TRUSTED": "true", "CHECKSUM_AUDIT_RATIO": "0"}, None, self.scrape)

    # -- scale-out: N worker processes on one queue, one database

    def scaleout_group(self, records: list[dict]) -> None:
        """N = SCALEOUT_WORKERS worker processes each, on the same fed set; the Ns interleave run
        by run (1, 2, 3, 1, 2, 3, ...) so a change in the machine's load falls on all of them."""
        for i in range(self.args.runs):
            for n in SCALEOUT_WORKERS:
                name = f"scale-out: {process_count(n)}, small"
                log(f"{name}: run {i + 1}/{self.args.runs}")
                result = self.counted("small", self.scaleout, records, n)
                log(f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float)))
                self.results.setdefault(name, []).append(result)

    def scaleout(self, records: list[dict], n_workers: int) -> dict:
        """One timed run of `n_workers` worker processes (defaults, each its own process) on the
        one queue and one fresh database. Measures every process's CPU over the timed window
        (workers, moto, the PostgreSQL backends serving the run's database, this harness) and
        the workers' own counts; fails unless each object has exactly one row and was recorded
        exactly once."""
        n = len(records)
        db_url = fresh_database(self.admin, SCALEOUT_DB)
        env = self.worker_env({}, db_url=db_url)
        procs: list[subprocess.Popen] = []
        workers: list[tuple[subprocess.Popen, Path, str]] = []  # with each one's metrics address
        psql = Psql(db_url)
        try:
            # One at a time: the first applies the migrations, the others find them applied.
            for i in range(n_workers):
                proc, log_path, offset = self.start_worker(f"scaleout-{n_workers}-{i + 1}", env)
                procs.append(proc)
                workers.append((proc, log_path, self.wait_ready(log_path, offset, proc)))
            psql.scalar(f"INSERT INTO datapack (identifier) VALUES ('{DATAPACK}')")
            before = [self.worker_counts(addr) for _, _, addr in workers]
            cpu0 = self.cpu_snapshot(workers, psql)
            t0 = time.time()
            feeder = Feeder(self.sqs, self.queue_url, records)
            feeder.start()
            self.wait_rows(psql, n, [(p, l) for p, l, _ in workers], feeder)
            t1 = time.time()
            cpu1 = self.cpu_snapshot(workers, psql)
            hwm = max(proc_hwm_mib(p.pid) for p, _, _ in workers)
            feeder.join()
            self.check_drained()  # the last delete batches, before the counts are read
            # A worker counts a message's outcome once its delete is confirmed, a moment after
            # SQS has dropped it: poll for the last counts instead of reading them once.
            deadline = time.time() + 15
            while True:
                after = [self.worker_counts(addr) for _, _, addr in workers]
                settled = sum(a["recorded"] - b["recorded"] for a, b in zip(after, before))
                if settled >= n or time.time() > deadline:
                    break
                time.sleep(0.2)
            stop_all(procs)
            settle()
            self.check_drained()
            rows, keys, repeated = (int(v) for v in psql.scalar(
                "SELECT count(*) || ',' || count(DISTINCT (bucket, object_key, etag)) || ',' || "
                "(SELECT count(*) FROM (SELECT 1 FROM datapack_resource "
                "GROUP BY bucket, object_key, etag HAVING count(*) > 1) d) FROM datapack_resource"
            ).split(","))
        finally:
            stop_all(procs)
            psql.close()
        counts = {k: sum(a[k] - b[k] for a, b in zip(after, before)) for k in after[0]}
        if rows != n or keys != n or repeated or counts["recorded"] != n:
            raise RuntimeError(
                f"{n_workers} workers: {rows} rows, {keys} distinct uploads, {repeated} uploads with "
                f"more than one row, {counts['recorded']:.0f} recorded, for {n} objects")
        wall = t1 - t0
        cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}  # a backend born mid-run counts whole
        result = self.measure(records, wall, sum(v for k, v in cpu.items() if k[0] == "worker"), hwm)
        per_worker = [cpu.get(("worker", p.pid), 0.0) for p, _, _ in workers]
        moto = cpu.get(("moto", 0))
        postgres = sum(v for k, v in cpu.items() if k[0] == "postgres")
        harness = sum(v for k, v in cpu.items() if k[0] == "harness")
        result.update(
            workers=n_workers,
            worker_cpu_share=[c / wall for c in per_worker],
            workers_cpu_share=sum(per_worker) / wall,
            postgres_cpu_s=postgres,
            postgres_cpu_share=postgres / wall,
            postgres_ms_per_object=postgres * 1000 / n,
            harness_cpu_s=harness,
            harness_cpu_share=harness / wall,
            rows=rows,
            rows_repeated=repeated,
            recorded=counts["recorded"],
            duplicate_outcomes=counts["duplicate"],
            receives_per_object=counts["receives"] / n,
            empty_receives_per_object=counts["empty_receives"] / n,
            messages_received_per_object=counts["messages_received"] / n,
            delete_batches_per_object=counts["delete_batches"] / n,
        )
        if moto is not None:
            result.update(moto_cpu_s=moto, moto_cpu_share=moto / wall,
                          moto_ms_per_object=moto * 1000 / n)
        result["all_cpu_share"] = sum(
            result.get(k, 0.0) for k in ("workers_cpu_share", "moto_cpu_share",
                                         "postgres_cpu_share", "harness_cpu_share"))
        return result

    def cpu_snapshot(self, workers, psql: Psql) -> dict[tuple[str, int], float]:
        """CPU seconds so far of every process in the run, keyed (role, pid): the workers, moto
        (its pid file; 0 stands for it), the PostgreSQL backends serving the run's database but
        the row poller's, and the harness (this process: the feeder; the poller's psql)."""
        out = {("worker", p.pid): proc_cpu(p.pid) for p, _, _ in workers}
        moto_pid = self.state / "moto.pid"
        if moto_pid.exists():
            out[("moto", 0)] = proc_cpu(int(moto_pid.read_text()))
        backends = psql.scalar(
            "SELECT string_agg(pid::text, ',') FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        for pid in filter(None, backends.split(",")):
            try:
                out[("postgres", int(pid))] = proc_cpu(int(pid))
            except OSError:  # ended meanwhile
                pass
        out[("harness", os.getpid())] = proc_cpu(os.getpid())
        out[("harness", psql.proc.pid)] = proc_cpu(psql.proc.pid)
        return out

    @staticmethod
    def worker_counts(addr: str) -> dict[str, float]:
        """A worker's own counts: records recorded and found duplicate, and its SQS calls."""
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
            text = r.read().decode()
        series = prometheus_sum(text)
        return {
            "recorded": series("datapack_worker_records_total", outcome="recorded"),
            "duplicate": series("datapack_worker_records_total", outcome="duplicate"),
            "receives": series("datapack_worker_receives_total"),
            "empty_receives": series("datapack_worker_empty_receives_total"),
            "messages_received": series("datapack_worker_messages_received_total"),
            "delete_batches": series("datapack_worker_phase_seconds_count", phase="sqs_delete"),
        }

    # -- helpers

    @staticmethod
    def measure(records: list[dict], wall: float, cpu: float, hwm: float) -> dict:
        n = len(records)
        nbytes = sum(r["s3"]["object"]["size"] for r in records)
        return {
            "objects": n,
            "bytes": nbytes,
            "wall_s": wall,
            "objects_per_s": n / wall,
            "mb_per_s": nbytes / 1e6 / wall,
            "cpu_s": cpu,
            "cpu_ms_per_object": cpu * 1000 / n,
            "cpu_s_per_gb": cpu / (nbytes / 1e9) if nbytes else float("nan"),
            "peak_rss_mib": hwm,
        }

    def repeat(self, name: str, fn, *args, **kwargs) -> None:
        runs = []
        for i in range(self.args.runs):
            log(f"{name}: run {i + 1}/{self.args.runs}")
            runs.append(fn(*args, **kwargs))
            log_run(name, runs[-1])
        self.results[name] = runs


# --------------------------------------------------------------------------- report


def report(bench: Bench, started: float) -> str:
    a, R = bench.args, bench.results
    meta = git_meta()
    out = []
    host = os.uname()
    load = os.getloadavg()
    out.append(f"# datapack-worker benchmark{' (--quick)' if a.quick else ''}")
    out.append("")
    out.append(
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs ({host.machine}), "
        f"git {meta['commit']}{' (dirty tree)' if meta['dirty'] else ''}, "
        f"{a.runs} run(s) per line: median (min–max). Load average at the end: "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; total {time.time() - started:.0f} s."
    )
    out.append("")
    out.append("| Scenario | Objects | Wall s | Objects/s | MB/s | CPU ms/object | CPU s/GB | Peak RSS MiB |")
    out.append("|---|---|---|---|---|---|---|---|")
    for name, runs in R.items():
        if name in ("db_write", "db_writers", "db_before"):
            continue
        out.append(
            f"| {name} | {runs[0]['objects']} × {fmt_size(runs[0]['bytes'] // runs[0]['objects'])} "
            f"| {cell(runs, 'wall_s', '.2f')} | {cell(runs, 'objects_per_s', '.1f')} "
            f"| {cell(runs, 'mb_per_s', '.1f')} | {cell(runs, 'cpu_ms_per_object', '.3g')} "
            f"| {cell(runs, 'cpu_s_per_gb', '.3g')} | {cell(runs, 'peak_rss_mib', '.0f')} |"
        )
    if "db_write" in R:
        runs = R["db_write"]
        out.append("")
        out.append(f"| Database write path (examples/db_write.rs, {bench.args.db_tasks} concurrent submitters) | Resources | Resources/s | Second pass (all Duplicate, {runs[0]['second_pass_writes'] // runs[0]['resources']} rounds) /s |")
        out.append("|---|---|---|---|")
        out.append(
            f"| Writer::write → store::apply, fresh database, changes announced (default) | {runs[0]['resources']} "
            f"| {cell(runs, 'per_s', '.0f')} | {cell(runs, 'duplicate_per_s', '.0f')} |"
        )
        if all("per_s_no_notify" in r for r in runs):
            out.append(
                f"| the same, `NOTIFY_CHANGES=false` | {runs[0]['resources']} "
                f"| {cell(runs, 'per_s_no_notify', '.0f')} | {cell(runs, 'duplicate_per_s_no_notify', '.0f')} |"
            )
    if "db_writers" in R:
        runs = R["db_writers"]
        default = med(runs, "per_s_w2")
        out.append("")
        out.append(f"| Group-commit writers (examples/db_write.rs, {bench.args.db_tasks} concurrent "
                   "submitters; each run measures every count in turn) | New rows/s "
                   "| Redeliveries/s | New rows vs 2 writers |")
        out.append("|---|---|---|---|")
        for n in DB_WRITER_COUNTS:
            out.append(
                f"| {n} writer{'s' if n > 1 else ''}, {n + 1} connections"
                f"{' (the default)' if n == 2 else ''} | {cell(runs, f'per_s_w{n}', '.0f')} "
                f"| {cell(runs, f'duplicate_per_s_w{n}', '.0f')} "
                f"| ×{med(runs, f'per_s_w{n}') / default:.2f} |")
    if "db_before" in R:
        runs = R["db_before"]
        before = med(runs, "per_s_before")
        out.append("")
        out.append(f"| The batch function against an earlier body (examples/db_write.rs, "
                   f"{bench.args.db_tasks} concurrent submitters; each run measures both, in "
                   "alternating order) | New rows/s | Redeliveries/s | New rows vs before |")
        out.append("|---|---|---|---|")
        for name, what in (("before", f"body of {Path(bench.args.db_before).name} (before)"),
                           ("after", "as migrated")):
            out.append(f"| {what} | {cell(runs, f'per_s_{name}', '.0f')} "
                       f"| {cell(runs, f'duplicate_per_s_{name}', '.0f')} "
                       f"| ×{med(runs, f'per_s_{name}') / before:.2f} |")
    latency = paced.latency_table(R)
    if latency:
        out.append("")
        out.extend(latency)
    zeroread = zeroread_table(R)
    if zeroread:
        out.append("")
        out.extend(zeroread)
    scaleout = scaleout_table(R)
    if scaleout:
        out.append("")
        out.extend(scaleout)
    out.append("")
    out.append("CPU: the worker's and the bare client's user+sys from /proc/PID/stat; the baseline's is the "
               "handler's own (getrusage around each invocation), without the webhook receiver or the SQS polling. "
               "Peak RSS: VmHWM of that process.")
    out.append("")
    out.append("## Targets")
    out.append("")
    out.append("| Target | Measured (medians) | Result |")
    out.append("|---|---|---|")
    for target, measured, ok in targets(R):
        out.append(f"| {target} | {measured} | {'met' if ok else '**missed**'} |")
    if bench.notes:
        out.append("")
        out.extend(f"- {n}" for n in bench.notes)
    return "\n".join(out) + "\n"


def zeroread_table(R: dict) -> list[str]:
    """The zero-read lines side by side, with ratios to the Lambda and to the GET path."""
    labels = list(dict.fromkeys(n.split(":")[0] for n in R if n.startswith("zero-read, ")))
    if not labels:
        return []
    out = [
        "| Zero-read (uploads with a SHA-256 checksum) | Objects/s | HEAD/object | GET/object "
        "| Bytes hashed/object | CPU ms/object | Objects/s vs Lambda | CPU vs Lambda "
        "| Objects/s vs GET path | CPU vs GET path |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cpu_ms(runs) -> tuple[float, str]:
        """CPU ms per object; a run that used less than one clock tick shows as below it."""
        if med(runs, "cpu_s") > 0:
            return med(runs, "cpu_ms_per_object"), ""
        return 1000 / CLK_TCK / runs[0]["objects"], "< "

    def ratio(runs, other, key):
        if not other:
            return "–"
        if key == "cpu_ms_per_object":
            (mine, bound), (theirs, _) = cpu_ms(runs), cpu_ms(other)
            return f"{bound}×{mine / theirs:.3g}"
        return f"×{med(runs, key) / med(other, key):.3g}"

    for label in labels:
        base = R.get(f"{label}: baseline Lambda")
        get_path = R.get(f"{label}: worker, trust off (GET path)")
        for name in (f"{label}: baseline Lambda", f"{label}: worker, trust off (GET path)",
                     f"{label}: worker, trust on"):
            runs = R.get(name)
            if not runs:
                continue
            if "hashed_bytes" not in runs[0]:  # the Lambda hashes every byte it reads
                runs = [r | {"hashed_bytes": r["bytes"]} for r in runs]
            hashed = statistics.median(r["hashed_bytes"] / r["objects"] for r in runs)
            out.append(
                f"| {name} ({runs[0]['objects']} objects) | {cell(runs, 'objects_per_s', '.1f')} "
                f"| {cell(runs, 'head_per_object', '.2f')} | {cell(runs, 'get_per_object', '.2f')} "
                f"| {fmt_size(int(hashed))} | {cpu_ms(runs)[1]}{cpu_ms(runs)[0]:.3g} "
                f"| {ratio(runs, base, 'objects_per_s')} | {ratio(runs, base, 'cpu_ms_per_object')} "
                f"| {ratio(runs, get_path, 'objects_per_s')} | {ratio(runs, get_path, 'cpu_ms_per_object')} |"
            )
    out.append("")
    out.append("Requests per object from moto's access log (HEAD/GET lines for the run's keys); bytes hashed "
               "from the worker's datapack_worker_hashed_bytes_total (the Lambda hashes every byte). "
               "Trust on runs with CHECKSUM_AUDIT_RATIO=0: an audit ratio r adds r × the GET path's cost. "
               "CPU \"< x\": the run used less than one clock tick in all.")
    return out


def scaleout_table(R: dict) -> list[str]:
    """The scale-out lines: throughput and CPU per object by number of worker processes, the
    duplicate checks and SQS calls, then where the CPU went."""
    names = [n for n in R if n.startswith("scale-out: ")]
    if not names:
        return []
    one = R[names[0]] if R[names[0]][0]["workers"] == 1 else None
    out = [
        f"| Scale-out: worker processes on one queue and one database ({R[names[0]][0]['objects']} × "
        f"{fmt_size(R[names[0]][0]['bytes'] // R[names[0]][0]['objects'])}) | Wall s | Objects/s "
        "| vs 1 process | Worker CPU ms/object (all processes) | moto CPU ms/object "
        "| PostgreSQL CPU ms/object | Rows / objects | Uploads with > 1 row | Recorded (metrics) "
        "| Duplicate outcomes | Receives/object | Empty receives/object | Delete batches/object "
        "| GET/object |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        runs = R[name]
        speedup = (cell_of([r["objects_per_s"] / med(one, "objects_per_s") for r in runs], ".2f")
                   if one else "–")
        out.append(
            f"| {process_count(runs[0]['workers'])} | {cell(runs, 'wall_s', '.2f')} | {cell(runs, 'objects_per_s', '.1f')} "
            f"| ×{speedup} | {cell(runs, 'cpu_ms_per_object', '.3g')} "
            f"| {cell(runs, 'moto_ms_per_object', '.3g')} | {cell(runs, 'postgres_ms_per_object', '.3g')} "
            f"| {max(r['rows'] for r in runs)} / {runs[0]['objects']} "
            f"| {max(r['rows_repeated'] for r in runs)} | {max(r['recorded'] for r in runs):.0f} "
            f"| {cell(runs, 'duplicate_outcomes', '.0f')} "
            f"| {cell(runs, 'receives_per_object', '.2f')} | {cell(runs, 'empty_receives_per_object', '.2f')} "
            f"| {cell(runs, 'delete_batches_per_object', '.2f')} | {cell(runs, 'get_per_object', '.2f')} |"
        )
    out.append("")
    out.append("| CPU in use over the timed window, % of one core (the machine has "
               f"{os.cpu_count()} cores: {100 * (os.cpu_count() or 1)} %) | Each worker (median run) "
               "| Workers | moto | PostgreSQL backends | Harness (feeder, row poller) | All |")
    out.append("|---|---|---|---|---|---|---|")
    for name in names:
        runs = R[name]
        mid = sorted(runs, key=lambda r: r["objects_per_s"])[len(runs) // 2]

        def pct(key):
            return cell_of([100 * r[key] for r in runs if key in r], ".0f")

        out.append(
            f"| {process_count(runs[0]['workers'])} "
            f"| {' + '.join(f'{100 * c:.0f}' for c in mid['worker_cpu_share'])} "
            f"| {pct('workers_cpu_share')} | {pct('moto_cpu_share')} | {pct('postgres_cpu_share')} "
            f"| {pct('harness_cpu_share')} | {pct('all_cpu_share')} |"
        )
    out.append("")
    out.append(
        "Each run starts N release binaries (defaults: concurrency 16; each its own process and metrics "
        "port) on the same queue and a fresh database, and feeds the same objects; the Ns take turns run "
        "by run. Wall time: first message fed to the last row committed. Worker CPU: the sum over the "
        "processes (/proc/PID/stat); moto: the emulator's process; PostgreSQL: the backends serving the "
        "run's database (the row poller's excluded; the server's shared WAL writer and checkpointer are "
        "not counted); harness: the feeder and the row poller. Every run is checked: one row per object, "
        "no upload with two rows, and the workers' recorded counts (datapack_worker_records_total"
        "{outcome=\"recorded\"}) summing to the object count; duplicate outcomes are messages a worker "
        "found already recorded. Receives, empty receives and delete batches from the workers' own "
        "counters (1 s long polls in the benchmark; 20 s by default); GET/object from moto's access log.")
    return out


def process_count(n: int) -> str:
    return f"{n} worker process{'es' if n > 1 else ''}"


def fmt_size(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n // 1024} KiB" if n >= 1024 else f"{n} B"


def targets(R: dict) -> list[tuple[str, str, bool]]:
    rows = []

    def have(*names):
        return all(n in R for n in names)

    if have("baseline: seed Lambda, small", "worker: small"):
        b, w = med(R["baseline: seed Lambda, small"], "cpu_ms_per_object"), med(R["worker: small"], "cpu_ms_per_object")
        rows.append(("Small objects: worker CPU/object ≤ 1/10 of the baseline's",
                     f"{w:.3g} vs {b:.3g} ms (1/{b / w:.0f})", w <= b / 10))
    if have("ceiling: bare S3/SQS client, small", "worker: small"):
        c, w = med(R["ceiling: bare S3/SQS client, small"], "objects_per_s"), med(R["worker: small"], "objects_per_s")
        rows.append(("Small objects: throughput ≥ 90% of the ceiling",
                     f"{w:.0f} vs {c:.0f} objects/s ({100 * w / c:.0f}%)", w >= 0.9 * c))
    for mode, ceiling in (("single GET", "ceiling: raw GET, large, single stream"),
                          ("ranged GETs", "ceiling: raw GET, large, ranged")):
        worker = f"worker: large, {mode}"
        if have(worker, ceiling):
            c, w = med(R[ceiling], "mb_per_s"), med(R[worker], "mb_per_s")
            rows.append((f"Large objects ({mode}): ≥ 90% of raw GET throughput ({mode})",
                         f"{w:.0f} vs {c:.0f} MB/s ({100 * w / c:.0f}%)", w >= 0.9 * c))
        if worker in R:
            g = med(R[worker], "cpu_s_per_gb")
            rows.append((f"Large objects ({mode}): ≤ 0.9 CPU-s/GB", f"{g:.3g} CPU-s/GB", g <= 0.9))
            rss = max(r["peak_rss_mib"] for r in R[worker])
            rows.append((f"Large objects ({mode}): peak RSS ≤ 64 MiB at concurrency 16",
                         f"{rss:.0f} MiB (max of runs)", rss <= 64))
    # The least CPU a worker that hashes what it stores can spend per GB: read the bytes, hash them.
    floor = "ceiling: raw GET + SHA-256, large, single stream"
    if have(floor, "worker: large, defaults (adaptive)"):
        f, w = med(R[floor], "cpu_s_per_gb"), med(R["worker: large, defaults (adaptive)"], "cpu_s_per_gb")
        rows.append(("Large objects (defaults): CPU-s/GB ≤ 1.2 × reading and hashing alone",
                     f"{w:.3g} vs {f:.3g} CPU-s/GB (×{w / f:.2f})", w <= 1.2 * f))
    if "db_write" in R:
        d = med(R["db_write"], "per_s")
        dup = min(r["second_pass_duplicates"] == r["second_pass_writes"] for r in R["db_write"])
        rows.append(("Database write path ≥ 20,000 resources/s, changes announced (second pass all Duplicate)",
                     f"{d:.0f} resources/s; idempotent: {'yes' if dup else 'NO'}", d >= 20_000 and dup))
        again = med(R["db_write"], "duplicate_per_s")
        rows.append(("Database write path, redelivery (all Duplicate) ≥ 40,000 resources/s and the cheapest case",
                     f"{again:.0f} vs {d:.0f} resources/s", again >= 40_000 and again > d))
    if have("throttled 50 MB/s per connection: worker, single GET", "throttled 50 MB/s per connection: worker, ranged GETs"):
        s = med(R["throttled 50 MB/s per connection: worker, single GET"], "mb_per_s")
        r = med(R["throttled 50 MB/s per connection: worker, ranged GETs"], "mb_per_s")
        rows.append(("Ranged GETs beat one stream behind a per-connection cap",
                     f"{r:.0f} vs {s:.0f} MB/s (×{r / s:.1f})", r > s))
    # The defaults are never slower than one GET, and keep the gain behind a per-connection cap.
    for where, single, default in (
        ("on the emulator", "worker: large, single GET", "worker: large, defaults (adaptive)"),
        ("behind a per-connection cap", "throttled 50 MB/s per connection: worker, single GET",
         "throttled 50 MB/s per connection: worker, defaults (adaptive)"),
    ):
        if have(single, default):
            s1, d = med(R[single], "mb_per_s"), med(R[default], "mb_per_s")
            rows.append((f"Defaults at least as fast as one GET {where} (within 10%)",
                         f"{d:.0f} vs {s1:.0f} MB/s (×{d / s1:.2f})", d >= 0.9 * s1))
    return rows


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", default="",
                        help="comma-separated scenario groups; `reconcile` runs alone")
    parser.add_argument("--db-tasks", type=int, default=256,
                        help="concurrent submitters for the database write path (offered load: replicas × concurrency)")
    parser.add_argument("--capacity", type=float, default=0,
                        help="latency and soak: the worker's objects/s at full load (default: measured first)")
    parser.add_argument("--latency-secs", type=float, default=0,
                        help="latency: seconds of paced load per line (default 60, --quick 15)")
    parser.add_argument("--soak-minutes", type=float, default=30,
                        help="soak: how long to hold 50 %% of capacity")
    parser.add_argument("--db-before", metavar="MIGRATION",
                        help="with --only db-before: the write path end to end with the batch "
                        "function as migrated against the body this earlier migration gave it")
    parser.add_argument("--worker-before", metavar="BINARY",
                        help="with --only worker-before: small objects through an earlier build "
                        "of datapack-worker and through this one, alternating")
    parser.add_argument("--runs", type=int, default=0,
                        help="runs per line (default 3, --quick 1)")
    parser.add_argument("--perf", action="store_true",
                        help="perf record each worker run (perf-SCENARIO.data in the state directory, kept)")
    args = parser.parse_args()
    runs = args.runs
    if args.quick:
        args.runs, args.small_count, args.large_count, args.large_size = 1, 200, 2, 64 * MIB
        args.db_resources, args.proxy_size = 5_000, 64 * MIB
    else:
        args.runs, args.small_count, args.large_count, args.large_size = 3, 2000, 4, 256 * MIB
        args.db_resources, args.proxy_size = 50_000, 256 * MIB
    args.runs = runs or args.runs
    args.small_size = 1024
    args.latency_secs = args.latency_secs or (15 if args.quick else 60)
    args.timeout = 900
    only = {g for g in args.only.split(",") if g}

    def wanted(group):
        return not only or group in only

    started = time.time()
    if only == {"reconcile"}:
        # Its own bucket and database: none of the shared objects are needed.
        from reconcile_bench import run as reconcile_run
        text, raw = reconcile_run(args, fresh_database)
        Path(args.out).write_text(text)
        write_json(Path(args.out).with_suffix(".json"), raw)
        print(text)
        return 0
    if only == {"soak"}:
        # One long run of its own: capacity (given, or measured at full load first), then 50 %.
        bench = Bench(args)
        bench.prepare(large=False)
        capacity = args.capacity or paced.paced_run(bench, bench.objects.records["small"], None)["objects_per_s"]
        result = paced.soak(bench, capacity, args.soak_minutes)
        write_json(Path(args.out).with_suffix(".json"), {"soak": [result]})
        text = paced.soak_report(result, result_meta())
        Path(args.out).write_text(text)
        print(text)
        return 0
    bench = Bench(args)
    bench.prepare(large=wanted("large"))
    small = bench.objects.records["small"]
    large = bench.objects.records.get("large", [])
    try:
        if wanted("small"):
            bench.repeat("baseline: seed Lambda, small", bench.baseline, small)
            bench.repeat("ceiling: bare S3/SQS client, small", bench.ceiling, small)
            bench.repeat("worker: small", bench.worker, "small", small, {})
            # What a pod limited to one CPU runs (the runtime sizes itself to the CPU limit).
            bench.repeat("worker: small, one runtime thread", bench.worker, "small-1thread", small,
                         {"RUNTIME_THREADS": "1"})
        if wanted("large"):
            bench.repeat("baseline: seed Lambda, large", bench.baseline, large)
            bench.repeat("ceiling: raw GET, large, single stream", bench.ceiling, large)
            bench.repeat("ceiling: raw GET + SHA-256, large, single stream", bench.ceiling, large,
                         None, True)
            bench.repeat("ceiling: raw GET, large, ranged", bench.ceiling, large, (8 * MIB, 4))
            bench.repeat("worker: large, single GET", bench.worker, "large-single", large,
                         {"RANGED_GET_THRESHOLD_BYTES": "0"})
            bench.repeat("worker: large, defaults (adaptive)", bench.worker, "large-default", large, {})
            bench.repeat("worker: large, ranged GETs", bench.worker, "large-ranged", large,
                         {"RANGED_GET_STREAM_FLOOR_MIBPS": "0"})
        if wanted("latency"):
            paced.latency_group(bench, small)
        if wanted("db"):
            bench.repeat("db_write", bench.db_write)
        if "writers" in only:  # on request only: it is the write path three more times
            bench.repeat("db_writers", bench.db_writers)
        if only and "db-before" in only:
            if not args.db_before:
                parser.error("--only db-before needs --db-before MIGRATION")
            bench.repeat("db_before", bench.db_before)
        if only and "worker-before" in only:
            if not args.worker_before:
                parser.error("--only worker-before needs --worker-before BINARY")
            bench.worker_before(small)
        if wanted("scaleout"):
            bench.scaleout_group(small)
        if wanted("zeroread"):
            bench.zeroread("zeroread-small", args.small_count, args.small_size)
            bench.zeroread("zeroread-large", args.large_count, args.large_size)
        if wanted("proxy"):
            bench.objects.upload("proxy", 1, args.proxy_size)
            proxied = bench.objects.records["proxy"]
            port_file = bench.state / "proxy.port"
            port_file.unlink(missing_ok=True)
            target = os.environ["AWS_ENDPOINT_URL"].split("://", 1)[1]
            proxy = subprocess.Popen([sys.executable, str(HERE / "proxy.py"), "--target", target,
                                      "--rate-mbps", "50", "--port-file", str(port_file)])
            try:
                for _ in range(100):
                    if port_file.exists() and port_file.read_text():
                        break
                    time.sleep(0.05)
                endpoint = f"http://127.0.0.1:{port_file.read_text()}"
                bench.repeat("throttled 50 MB/s per connection: worker, single GET", bench.worker,
                             "proxy-single", proxied, {"RANGED_GET_THRESHOLD_BYTES": "0"}, endpoint)
                bench.repeat("throttled 50 MB/s per connection: worker, ranged GETs", bench.worker,
                             "proxy-ranged", proxied, {"RANGED_GET_STREAM_FLOOR_MIBPS": "0"}, endpoint)
                bench.repeat("throttled 50 MB/s per connection: worker, defaults (adaptive)",
                             bench.worker, "proxy-default", proxied, {}, endpoint)
            finally:
                stop(proxy)
    finally:
        # The raw numbers first: a report that fails must not lose them.
        write_json(Path(args.out).with_suffix(".json"), bench.results)
        text = report(bench, started)
        Path(args.out).write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
