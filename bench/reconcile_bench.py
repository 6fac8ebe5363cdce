"""The reconcile benchmark (`bench/run.sh --only reconcile`): a bucket of 100,000 keys
(10,000 with --quick) whose notifications were never delivered, reconciled into an empty
database, then compared again once in sync, whole and for a tenth of it (a prefix), to show that
memory stays flat as the scope grows: peak RSS and wall time of each run, from GNU time.

The keys are seeded through moto's API by a pool of threads into a bucket with no notification.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from botocore.config import Config

BUCKET = "datapack-reconcile"
DATAPACK = "dp"


def log(msg: str) -> None:
    print(f"bench: {msg}", flush=True, file=__import__("sys").stderr)


def seed(count: int) -> float:
    cfg = Config(s3={"addressing_style": "path"}, max_pool_connections=32,
                 retries={"max_attempts": 5, "mode": "standard"})
    s3 = boto3.client("s3", config=cfg)
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass

    def put(i: int) -> None:
        s3.put_object(Bucket=BUCKET, Key=f"{DATAPACK}/k{i:06d}.txt", Body=f"object {i}".encode(),
                      ContentType="text/plain", Metadata={"uploaded-by": "presigned-url"})

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        for n, _ in enumerate(pool.map(put, range(count)), 1):
            if n % 10_000 == 0:
                log(f"seeded {n} keys")
    return time.monotonic() - started


def run_reconcile(worker: str, db_url: str, state: Path, name: str, extra: list[str]) -> dict:
    timing = state / f"reconcile-{name}.time"
    env = dict(os.environ, DATABASE_URL=db_url, S3_BUCKET=BUCKET, RUST_LOG="warn")
    out = subprocess.run(
        ["/usr/bin/time", "-f", "%M %e %U %S", "-o", str(timing), worker, "reconcile", "--json",
         "--progress", "log", *extra],
        env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"reconcile {name} failed ({out.returncode}): {out.stderr[-2000:]}")
    rss_kib, elapsed, user, system = timing.read_text().split()[-4:]
    report = json.loads(out.stdout)
    keys = report["keys_listed"]
    result = {
        "name": name,
        "keys": keys,
        "differences": sum(report["differences"].values()),
        "outcomes": report["outcomes"],
        "wall_s": float(elapsed),
        "keys_per_s": keys / float(elapsed) if float(elapsed) else 0.0,
        "cpu_s": float(user) + float(system),
        "peak_rss_mib": int(rss_kib) / 1024,
    }
    log(f"{name}: {result}")
    return result


def run(args, fresh_database) -> tuple[str, dict]:
    count = 10_000 if args.quick else 100_000
    worker = os.environ["BENCH_WORKER"]
    state = Path(os.environ["BENCH_STATE"])
    log(f"seeding {count} keys")
    seeded_s = seed(count)
    db_url = fresh_database(os.environ["BENCH_PG_ADMIN"], "dpw_bench_reconcile")
    subprocess.run([worker, "migrate"], env=dict(os.environ, DATABASE_URL=db_url), check=True,
                   capture_output=True)
    subprocess.run(["psql", "-Xq", db_url, "-c",
                    f"INSERT INTO datapack (identifier) VALUES ('{DATAPACK}')"], check=True)
    runs = [
        run_reconcile(worker, db_url, state, "repair", []),
        run_reconcile(worker, db_url, state, "in-sync", []),
        # k000000-k009999 of 100,000 (k000000-k000999 of 10,000): a tenth.
        run_reconcile(worker, db_url, state, "in-sync-tenth",
                      ["--prefix", f"{DATAPACK}/k000" if args.quick else f"{DATAPACK}/k00"]),
        run_reconcile(worker, db_url, state, "dry-run", ["--dry-run"]),
    ]
    lines = [
        f"## Reconcile: {count:,} keys (seeded in {seeded_s:.0f} s through moto's API)",
        "",
        "Default settings (`--concurrency 16`, pages of 1,000 keys). `repair`: every key missing",
        "from an empty database, ingested (GET + SHA-256 + write each); `in-sync`: the same bucket",
        "compared again, nothing to do; `in-sync-tenth`: a prefix holding a tenth of the keys;",
        "`dry-run`: compared, nothing written. Peak RSS and times from GNU time.",
        "",
        "| run | keys | differences | wall s | keys/s | CPU s | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(f"| {r['name']} | {r['keys']:,} | {r['differences']:,} | {r['wall_s']:.1f} | "
                     f"{r['keys_per_s']:,.0f} | {r['cpu_s']:.1f} | {r['peak_rss_mib']:.1f} |")
    lines.append("")
    return "\n".join(lines), {"count": count, "seeded_s": seeded_s, "runs": runs}
