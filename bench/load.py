"""Paced load for the benchmark: the latency scenario (`--only latency`) and the soak
(`--only soak`). Imported by bench.py, which owns the stack, the worker and the report.

Both feed events at a fixed rate, a share of the worker's capacity (measured in the same run
at full load, or `--capacity`), stamping each event's `eventTime` when it is sent, so a row's
`ingested_at - event_time` is the event → row latency (to the start of the transaction that
wrote the row, as PostgreSQL's `now()` is; the commit adds that transaction's few ms).

- latency: full load (the capacity), light load (10 events/s) and 80 % of capacity, each a
  fresh worker on the uploaded small set: p50/p99/max event → row, and the AWS requests per
  object by service and operation from the worker's own `datapack_worker_aws_requests_total`.
- soak: one worker held at 50 % of capacity for `--soak-minutes`; the feeder uploads each
  object right before its event (as S3 would), overwriting a bounded set of keys, so every event
  is a new row. Every 10 s: RSS, open file descriptors, threads, the worker's database
  connections, and the window's latency; the least-squares slope of each over the second half.
  /metrics is not scraped during the soak (a scrape folds the histograms' samples; a worker
  nobody scrapes must stay flat too); it is read once at the end.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from common import (
    DATAPACK,
    Feeder,
    Psql,
    cell,
    fresh_database,
    log,
    proc_cpu,
    proc_hwm_mib,
    settle,
    stop,
)

LIGHT_RATE = 10.0
HIGH_SHARE = 0.8
SOAK_SHARE = 0.5
SAMPLE_EVERY_S = 10.0
AWS_REQUESTS = "datapack_worker_aws_requests_total"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def aws_requests(addr: str) -> dict[str, float]:
    """The worker's AWS requests so far, keyed "service operation" (all outcomes summed)."""
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(AWS_REQUESTS + "{"):
            continue
        labels = dict(re.findall(r'([a-z_]+)="([^"]*)"', line))
        key = f"{labels.get('service')} {labels.get('operation')}"
        out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def requests_per_object(before: dict, after: dict, objects: int) -> dict[str, float]:
    """Requests per object by "service operation", only those that moved, and the SQS total."""
    out = {k: (after[k] - before.get(k, 0.0)) / objects for k in after
           if after[k] - before.get(k, 0.0) > 0}
    out["sqs total"] = sum(v for k, v in out.items() if k.startswith("sqs "))
    return out


class PacedFeeder(threading.Thread):
    """Sends one event per record at `rate` events/s; each is stamped when sent. Whatever is
    due is sent together (at most ten per SendMessageBatch), so a slow send does not shift the
    schedule."""

    def __init__(self, sqs, url: str, records: list[dict], rate: float):
        super().__init__(daemon=True)
        self.sqs, self.url, self.records, self.rate = sqs, url, records, rate
        self.error: BaseException | None = None
        self.sent_s = 0.0

    def run(self) -> None:
        try:
            t0 = time.monotonic()
            i = 0
            while i < len(self.records):
                due = min(int((time.monotonic() - t0) * self.rate) + 1, len(self.records))
                if due <= i:
                    time.sleep(max(t0 + i / self.rate - time.monotonic(), 0.001))
                    continue
                batch = self.records[i:min(due, i + 10)]
                stamp = now_iso()
                entries = []
                for j, r in enumerate(batch):
                    r = dict(r, eventTime=stamp)
                    entries.append({"Id": str(j), "MessageBody": json.dumps({"Records": [r]})})
                out = self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
                if out.get("Failed"):
                    raise RuntimeError(f"SendMessageBatch failed: {out['Failed']}")
                i += len(batch)
            self.sent_s = time.monotonic() - t0
        except BaseException as e:  # reported by the run
            self.error = e


LATENCY_SQL = (
    "SELECT count(*) || ',' || "
    "coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY l), 0) || ',' || "
    "coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY l), 0) || ',' || coalesce(max(l), 0) "
    "FROM (SELECT extract(epoch FROM ingested_at - event_time) * 1000 AS l "
    "FROM datapack_resource WHERE {where}) s"
)


def latency_ms(psql, where: str = "true") -> tuple[int, float, float, float]:
    n, p50, p99, mx = psql.scalar(LATENCY_SQL.format(where=where)).split(",")
    return int(n), float(p50), float(p99), float(mx)


# --------------------------------------------------------------------------- latency


def latency_group(bench, records: list[dict]) -> None:
    """Full load (which is the capacity), then light load and 80 % of it, a fresh worker each."""
    a = bench.args
    capacity = a.capacity
    if not capacity:
        bench.repeat("latency: full load", paced_run, bench, records, None)
        capacity = statistics.median(r["objects_per_s"] for r in bench.results["latency: full load"])
    bench.notes.append(f"Latency: capacity {capacity:.1f} objects/s "
                       f"({'given' if a.capacity else 'the full-load line, median'}).")
    for label, rate in ((f"light load ({LIGHT_RATE:.0f}/s)", LIGHT_RATE),
                        ("80 % of capacity", HIGH_SHARE * capacity)):
        count = min(len(records), max(int(rate * a.latency_secs), 50))
        bench.repeat(f"latency: {label}", paced_run, bench, records[:count], rate)


def paced_run(bench, records: list[dict], rate: float | None) -> dict:
    """One fresh worker fed `records` at `rate` events/s (None: as fast as it drains, the
    benchmark's usual feeder); event → row latency from the rows and the worker's AWS requests
    per object."""
    env = bench.worker_env({})
    if bench.tables_exist():
        bench.psql.scalar("TRUNCATE datapack_resource, datapack_object_removal")
    proc, log_path, offset = bench.start_worker(f"paced-{rate or 0:.0f}", env)
    try:
        addr = bench.wait_ready(log_path, offset, proc)
        bench.psql.scalar(f"INSERT INTO datapack (identifier) VALUES ('{bench_datapack()}') "
                          "ON CONFLICT DO NOTHING")
        before = aws_requests(addr)
        cpu0 = proc_cpu(proc.pid)
        t0 = time.time()
        if rate:
            feeder = PacedFeeder(bench.sqs, bench.queue_url, records, rate)
        else:
            feeder = Feeder(bench.sqs, bench.queue_url, records, stamp=True)
        feeder.start()
        bench.wait_rows(bench.psql, len(records), [(proc, log_path)], feeder)
        t1 = time.time()
        cpu1 = proc_cpu(proc.pid)
        hwm = proc_hwm_mib(proc.pid)
        feeder.join()
        bench.check_drained()  # the last delete batch, before the counts are read
        after = aws_requests(addr)
    finally:
        stop(proc)
        settle()
    n, p50, p99, mx = latency_ms(bench.psql)
    result = bench.measure(records, t1 - t0, cpu1 - cpu0, hwm)
    result.update(latency_p50_ms=p50, latency_p99_ms=p99, latency_max_ms=mx,
                  requests_per_object=requests_per_object(before, after, len(records)))
    if rate:  # full load offers what the worker drains: no rate of its own
        result["offered_per_s"] = rate
    return result


def bench_datapack() -> str:
    return DATAPACK


# --------------------------------------------------------------------------- soak


class LiveUploader(threading.Thread):
    """Uploads an object and then sends its event, `rate` times a second, overwriting keys
    `soak/object 0..keys-1` in turn (a new ETag each time, so each event is a new row)."""

    def __init__(self, bench, rate: float, keys: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.bench, self.rate, self.keys, self.stop = bench, rate, keys, stop
        self.error: BaseException | None = None
        self.sent = 0
        self.lock = threading.Lock()

    def one(self, i: int) -> None:
        b = self.bench
        key = f"{DATAPACK}/soak/object {i % self.keys:05d}.bin"
        out = b.s3.put_object(
            Bucket=b.bucket, Key=key, Body=os.urandom(1024),
            ContentType="application/octet-stream",
            Metadata={"uploaded-by": "presigned-url", "uploader-name": "Soak",
                      "uploader-email": "soak@example.org"})
        record = {
            "eventVersion": "2.1", "eventSource": "aws:s3",
            "awsRegion": os.environ.get("AWS_REGION", "us-east-1"),
            "eventTime": now_iso(), "eventName": "ObjectCreated:Put",
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "datapack-worker",
                   "bucket": {"name": b.bucket, "arn": f"arn:aws:s3:::{b.bucket}"},
                   "object": {"key": urllib.parse.quote_plus(key, safe="/"), "size": 1024,
                              "eTag": out["ETag"].strip('"'),
                              "sequencer": f"{0x7000000000 + i:016X}"}}}
        b.sqs.send_message(QueueUrl=b.queue_url, MessageBody=json.dumps({"Records": [record]}))
        with self.lock:
            self.sent += 1

    def run(self) -> None:
        try:
            with ThreadPoolExecutor(8) as pool:
                t0 = time.monotonic()
                i = 0
                pending = []
                while not self.stop.is_set():
                    wait = t0 + i / self.rate - time.monotonic()
                    if wait > 0:
                        self.stop.wait(wait)
                        continue
                    pending.append(pool.submit(self.one, i))
                    i += 1
                    done = [f for f in pending if f.done()]
                    for f in done:
                        f.result()
                    pending = [f for f in pending if not f.done()]
                for f in pending:
                    f.result()
        except BaseException as e:  # reported by the soak
            self.error = e


def proc_sample(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour; 0 for fewer than two."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 3600 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


SOAK_SERIES = (("rss_mib", "RSS MiB"), ("fds", "open file descriptors"), ("threads", "threads"),
               ("db_connections", "database connections"), ("latency_p50_ms", "latency p50 ms"),
               ("latency_p99_ms", "latency p99 ms"))


def soak(bench, capacity: float, minutes: float) -> dict:
    """One worker at SOAK_SHARE of capacity for `minutes`, sampled every SAMPLE_EVERY_S."""
    rate = SOAK_SHARE * capacity
    db_url = fresh_database(bench.admin, "datapack_bench_soak")
    psql = Psql(db_url)
    proc, log_path, offset = bench.start_worker("soak", bench.worker_env({}, db_url=db_url))
    stop_feed = threading.Event()
    samples: list[dict] = []
    try:
        addr = bench.wait_ready(log_path, offset, proc)
        psql.scalar(f"INSERT INTO datapack (identifier) VALUES ('{bench_datapack()}')")
        before = aws_requests(addr)
        feeder = LiveUploader(bench, rate, keys=2000, stop=stop_feed)
        t0 = time.monotonic()
        feeder.start()
        last = "-infinity"
        end = t0 + minutes * 60
        while time.monotonic() < end:
            time.sleep(max(min(SAMPLE_EVERY_S, end - time.monotonic()), 0))
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}; see {log_path}")
            if feeder.error:
                raise feeder.error
            stamp = psql.scalar("SELECT now()")
            n, p50, p99, mx = latency_ms(psql, f"ingested_at > '{last}' AND ingested_at <= '{stamp}'")
            last = stamp
            conns = int(psql.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()") or 0)
            sample = {"t_s": time.monotonic() - t0, **proc_sample(proc.pid), "db_connections": conns,
                      "rows": n, "latency_p50_ms": p50, "latency_p99_ms": p99, "latency_max_ms": mx}
            samples.append(sample)
            log("soak: " + ", ".join(f"{k}={v:.4g}" for k, v in sample.items()))
        stop_feed.set()
        feeder.join()
        time.sleep(2)
        objects = feeder.sent
        after = aws_requests(addr)
    finally:
        stop_feed.set()
        stop(proc)
        settle()
        psql.close()
    second_half = [s for s in samples if s["t_s"] >= minutes * 30]
    slopes = {k: slope_per_hour([(s["t_s"], s[k]) for s in second_half if s["rows"] or k in
                                 ("rss_mib", "fds", "threads", "db_connections")])
              for k, _ in SOAK_SERIES}
    return {
        "minutes": minutes, "capacity_per_s": capacity, "offered_per_s": rate, "objects": objects,
        "samples": samples, "slopes_per_hour_second_half": slopes,
        "requests_per_object": requests_per_object(before, after, max(objects, 1)),
    }


# --------------------------------------------------------------------------- report


def latency_table(R: dict) -> list[str]:
    names = [n for n in R if n.startswith("latency: ")]
    if not names:
        return []
    out = ["| Latency: event → row (ms), one worker, 1 KiB objects | Objects | Offered /s "
           "| Achieved objects/s | p50 | p99 | max | CPU ms/object | SQS requests/object "
           "| of which ReceiveMessage / DeleteMessageBatch / ChangeMessageVisibility(Batch) "
           "| S3 requests/object |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        runs = R[name]

        def rq(*keys):
            return cell([{"v": sum(r.get("requests_per_object", {}).get(k, 0.0) for k in keys)}
                         for r in runs], "v", ".3f")

        out.append(
            f"| {name.removeprefix('latency: ')} | {runs[0]['objects']} "
            f"| {cell(runs, 'offered_per_s', '.1f')} | {cell(runs, 'objects_per_s', '.1f')} "
            f"| {cell(runs, 'latency_p50_ms', '.1f')} | {cell(runs, 'latency_p99_ms', '.1f')} "
            f"| {cell(runs, 'latency_max_ms', '.1f')} | {cell(runs, 'cpu_ms_per_object', '.3g')} "
            f"| {rq('sqs total')} | {rq('sqs ReceiveMessage')} / {rq('sqs DeleteMessageBatch', 'sqs DeleteMessage')} "
            f"/ {rq('sqs ChangeMessageVisibility', 'sqs ChangeMessageVisibilityBatch')} "
            f"| {rq('s3 GetObject', 's3 HeadObject')} |")
    out.append("")
    out.append("Latency: each row's `ingested_at - event_time` (the event stamped when sent; "
               "`ingested_at` is the writing transaction's start). Requests per object: the worker's "
               "`datapack_worker_aws_requests_total` over the run, every attempt counted (the harness's "
               "own sends are not the worker's). Full load: the feeder keeps ~200 messages visible; "
               "paced lines send each event at its scheduled time.")
    return out


def soak_report(result: dict, meta: dict) -> str:
    out = [f"# Soak: 50 % of capacity for {result['minutes']:g} minutes", ""]
    binary = (meta.get("worker_build") or {}).get("git_commit", "unknown")
    out.append(f"{meta.get('utc', '')} UTC, git {meta.get('commit', '?')}"
               f"{' (dirty)' if meta.get('dirty') else ''}, binary built from {binary}, "
               f"{os.cpu_count()} CPUs; capacity "
               f"{result['capacity_per_s']:.1f} objects/s, offered {result['offered_per_s']:.1f}/s, "
               f"{result['objects']} uploads (PUT then event), sampled every {SAMPLE_EVERY_S:g} s.")
    out.append("")
    s = result["samples"]
    out.append("| Series | First sample | Last sample | Min | Max | Slope over the second half (per hour) |")
    out.append("|---|---|---|---|---|---|")
    for key, label in SOAK_SERIES:
        values = [x[key] for x in s if x["rows"] or not key.startswith("latency")]
        if not values:
            continue
        out.append(f"| {label} | {values[0]:.4g} | {values[-1]:.4g} | {min(values):.4g} "
                   f"| {max(values):.4g} | {result['slopes_per_hour_second_half'][key]:+.3g} |")
    out.append("")
    rq = result["requests_per_object"]
    out.append("AWS requests per object over the soak: " + ", ".join(
        f"{k} {v:.3f}" for k, v in sorted(rq.items())) + ".")
    out.append("")
    out.append("RSS, threads: /proc/PID/status; descriptors: /proc/PID/fd; database connections: "
               "pg_stat_activity for the run's database (the sampler's own excluded); latency per "
               "window from the rows ingested in it. /metrics is not scraped until the end.")
    return "\n".join(out) + "\n"
