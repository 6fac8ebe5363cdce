#!/usr/bin/env python3
"""PostgreSQL's own share of the write path, with no worker in the way.

`examples/db_write.rs` measures the worker's writer end to end (client, driver, database on the
same CPUs). This measures the database alone, with pgbench at 4 connections and 64 rows a batch
(what 256 submitters gave the worker's 4 writers before `DB_WRITERS` became 2; kept so that runs
stay comparable), each batch its own transaction as the worker's are:

- the **floor**: a bare multi-row `INSERT … SELECT` of the same rows into the same table (its
  indexes, foreign key and checks), with none of the write path's rules. No write path on this
  schema can beat it on this machine;
- `datapack_write_batch` (the worker's one statement) for new rows, announcements on (the
  default) and off, and for redeliveries (every row already there);
- both again with `synchronous_commit = off`, to show what waiting for the WAL flush costs.

    python3 bench/db_floor.py [--seconds 20] [--runs 3] [--out bench/results/db-floor.md]

With `--batches 1,4,16,64` it measures instead how the function's cost per call depends on the
batch size, new rows only, each line on a fresh database: with the function as migrated (one
generic plan per statement and connection) and with `plan_cache_mode` reset to PostgreSQL's
default (a custom plan compared, and chosen, on every call). A replica at its default
concurrency commits a handful of rows a batch, so the small sizes are the fleet's case
(`bench/results/db-floor-batch.md`). With `--before MIGRATION` as well, each size is measured
with the function as migrated and with the body an earlier migration gave it put back
(`CREATE OR REPLACE` from that file), which is how a change to the function is weighed:

    python3 bench/db_floor.py --batches 1,4,16,64 \
        --before migrations/20261207000004_write_batch_fresh_keys.sql \
        --out bench/results/db-floor-settle.md

Each run gets a fresh database (the migrations applied with psql, 50 datapacks made first), and
runs the scenarios in the order of the table, so the later ones write into a larger table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common as C  # noqa: E402

ROOT = HERE.parent
DATAPACKS = 50

# The rows of one batch: `:lo` is the batch's first row number, taken from a sequence so every
# client writes rows no other client writes. Same shapes as examples/db_write.rs.
ROWS = """
FROM (SELECT i, 'dp-bench-' || (i % 50) AS dp,
             'dp-bench-' || (i % 50) || '/db/file-' || i || '.bin' AS k
      FROM generate_series((:lo)::bigint, (:lo)::bigint + (:batch)::int - 1) AS i) AS w"""

FLOOR = """SELECT nextval('bench_floor') * (:batch)::int AS lo \\gset
INSERT INTO datapack_resource (datapack_id, bucket, object_key, path, display, content_type,
    length, etag, sha256, submitter_name, submitter_email, object_last_modified, version_id,
    sequencer, event_time, sha256_source, tie_rank)
SELECT d.id, 'bench-bucket', w.k, '/db', 'file-' || w.i || '.bin', 'application/octet-stream',
    1024, lpad(to_hex(w.i), 32, '0'), lpad(to_hex(w.i), 64, '0'), 'Bench Uploader',
    'bench@example.org', now(), NULL, lpad(upper(to_hex(w.i + 1)), 16, '0'), now(), 'computed', 0
""" + ROWS + """ JOIN datapack d ON d.identifier = w.dp;
"""

# The batch function with the arguments store::write::apply_on binds (the lock id here is any
# stable 64-bit hash of the key: only its order matters).
CALL = """SELECT array_length(datapack_write_batch(
    array_agg(('x' || substr(md5('bench-bucket' || k), 1, 16))::bit(64)::bigint ORDER BY i),
    array_agg(false ORDER BY i), array_agg('bench-bucket'::text ORDER BY i), array_agg(k ORDER BY i),
    array_agg(lpad(upper(to_hex(i + 1)), 16, '0') ORDER BY i),
    array_agg('2026-12-07 06:00:00+00'::timestamptz ORDER BY i),
    array_agg(lpad(to_hex(i), 32, '0') ORDER BY i), array_agg(0::smallint ORDER BY i),
    array_agg(dp ORDER BY i), array_agg('/db'::text ORDER BY i),
    array_agg('file-' || i || '.bin' ORDER BY i), array_agg('application/octet-stream'::text ORDER BY i),
    array_agg(1024::bigint ORDER BY i), array_agg(lpad(to_hex(i), 64, '0') ORDER BY i),
    array_agg('computed'::text ORDER BY i), array_agg('Bench Uploader'::text ORDER BY i),
    array_agg('bench@example.org'::text ORDER BY i),
    array_agg('2026-12-07 06:00:00+00'::timestamptz ORDER BY i),
    array_agg(NULL::text ORDER BY i), array_agg(NULL::text ORDER BY i),
    true, {notify}), 1)""" + ROWS + ";\n"

NEW = "SELECT nextval('bench_batch') * (:batch)::int + 100000000 AS lo \\gset\n"
# Redeliveries: the batches the new-row scenario wrote (1 to the sequence's last value when it
# ended), again, round and round.
AGAIN = ("SELECT (nextval('bench_again') % (SELECT max(batch) FROM bench_written) + 1)"
         " * (:batch)::int + 100000000 AS lo \\gset\n")

# name, script, synchronous_commit, what it is
SCENARIOS = [
    ("floor", FLOOR, "on", "floor: bare INSERT of the same rows, no rules"),
    ("new", NEW + CALL.format(notify="true"), "on",
     "datapack_write_batch, new rows, changes announced (default)"),
    ("duplicate", AGAIN + CALL.format(notify="true"), "on",
     "datapack_write_batch, redeliveries (all Duplicate)"),
    ("new_quiet", NEW + CALL.format(notify="false"), "on",
     "datapack_write_batch, new rows, NOTIFY_CHANGES=false"),
    ("floor_async", FLOOR, "off", "floor, synchronous_commit=off"),
    ("new_async", NEW + CALL.format(notify="true"), "off",
     "datapack_write_batch, new rows, synchronous_commit=off"),
]


def psql(url: str, *args: str) -> str:
    out = subprocess.run(["psql", "-XqAt", "-v", "ON_ERROR_STOP=1", url, *args],
                         check=True, capture_output=True, text=True)
    return out.stdout


def prepare(url: str) -> None:
    for migration in sorted((ROOT / "migrations").glob("*.sql")):
        psql(url, "-f", str(migration))
    psql(url, "-c", f"""
        INSERT INTO datapack (identifier) SELECT 'dp-bench-' || n FROM generate_series(0, {DATAPACKS - 1}) n;
        CREATE SEQUENCE bench_floor; CREATE SEQUENCE bench_batch; CREATE SEQUENCE bench_again;
        CREATE TABLE bench_written (batch bigint);""")


def pgbench(url: str, script: str, sync: str, args) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as f:
        f.write(script)
        f.flush()
        out = subprocess.run(
            ["pgbench", "-n", "-M", "prepared", "-c", str(args.clients), "-j", str(args.clients),
             "-T", str(args.seconds), "-D", f"batch={args.batch}", "-f", f.name, url],
            check=True, capture_output=True, text=True,
            env={**os.environ, "PGOPTIONS": f"-c synchronous_commit={sync}"})
    tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)[1])
    latency = float(re.search(r"latency average = ([\d.]+) ms", out.stdout)[1])
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    if failed and int(failed[1]):
        raise RuntimeError(f"pgbench: {failed[1]} failed transactions\n{out.stdout}")
    return {"rows_per_s": tps * args.batch, "calls_per_s": tps, "batch_ms": latency}


def provenance(meta: dict, args, shape: str) -> str:
    """A report's second line: when, which commit, the machine, the database and the load."""
    version = psql(args.admin_url, "-c", "SHOW server_version").strip()
    return (f"{meta['utc']} UTC, git {meta['commit']}{' (dirty)' if meta['dirty'] else ''}, "
            f"{meta['cpus']} CPUs, PostgreSQL {version}; pgbench, {args.clients} connections, "
            f"{shape}, {args.seconds} s per line, {args.runs} run(s): median (min–max).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4, help="connections (writers)")
    parser.add_argument("--batch", type=int, default=64, help="rows a batch")
    parser.add_argument("--batches", help="sweep these batch sizes (e.g. 1,4,16,64) instead")
    parser.add_argument("--before", help="with --batches: against the function body of this "
                        "earlier migration instead of against plan_cache_mode=auto")
    parser.add_argument("--admin-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out")
    args = parser.parse_args()
    subprocess.run([str(ROOT / "scripts" / "ensure-postgres.sh")], check=True)
    if args.batches:
        return sweep(args)
    args.out = args.out or str(HERE / "results" / "db-floor.md")

    # Keyed by what each scenario is: the result file's names are the report's rows.
    results: dict[str, list[dict]] = {what: [] for *_, what in SCENARIOS}
    for run in range(args.runs):
        url = C.fresh_database(args.admin_url, "datapack_bench_floor")
        prepare(url)
        for name, script, sync, what in SCENARIOS:
            if name == "duplicate":
                psql(url, "-c", "INSERT INTO bench_written SELECT last_value FROM bench_batch")
            before = int(psql(url, "-c", "SELECT count(*) FROM datapack_resource"))
            measured = pgbench(url, script, sync, args)
            after = int(psql(url, "-c", "SELECT count(*) FROM datapack_resource"))
            measured["rows_added"] = after - before
            # Redeliveries write nothing; every other scenario writes a row per row sent.
            if (name == "duplicate") != (after == before):
                raise RuntimeError(f"{name}: {after - before} rows added")
            results[what].append(measured)
            C.log(f"run {run + 1}: {name}: {measured['rows_per_s']:.0f} rows/s")
        rows = int(psql(url, "-c", "SELECT count(*) FROM datapack_resource"))
        C.log(f"run {run + 1}: {rows} rows in the table at the end")
        C.admin_sql(args.admin_url, "DROP DATABASE datapack_bench_floor WITH (FORCE)")

    meta = C.git_meta()
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"_meta": meta, **results}, indent=1))
    floor = C.med(results[SCENARIOS[0][3]], "rows_per_s")
    lines = [
        "# PostgreSQL's share of the write path (bench/db_floor.py)", "",
        provenance(meta, args, f"{args.batch} rows a batch (one transaction each)"), "",
        "| Scenario | Rows/s | Batch ms (mean) | vs floor |", "|---|---|---|---|"]
    for *_, what in SCENARIOS:
        ratio = C.med(results[what], "rows_per_s") / floor
        lines.append(f"| {what} | {C.cell(results[what], 'rows_per_s', '.0f')} | "
                     f"{C.cell(results[what], 'batch_ms', '.2f')} | {ratio:.2f} |")
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    print(text)
    return 0


# The two ways the batch function's statements can be planned (see the migration
# write_batch_generic_plans): as migrated, and with PostgreSQL's default put back.
PLANS = [("plans chosen per call (plan_cache_mode=auto, before)",
          "ALTER FUNCTION datapack_write_batch RESET plan_cache_mode"),
         ("one generic plan per connection (as migrated)", None)]


def calls_of(batch: int) -> str:
    """The start of a sweep line's name: its batch size."""
    return f"{batch} row{'s' if batch > 1 else ''} a call: "


def sweep(args) -> int:
    sizes = [int(b) for b in args.batches.split(",")]
    variants: list[tuple[str, str | Path | None]] = list(PLANS)
    if args.before:
        before = Path(args.before)
        variants = [(f"function body of {before.name} (before)", before),
                    ("function as migrated", None)]
    results: dict[str, list[dict]] = {}
    for run in range(args.runs):
        for batch in sizes:
            args.batch = batch
            for plans, alter in variants:
                url = C.fresh_database(args.admin_url, "datapack_bench_floor")
                prepare(url)
                if isinstance(alter, Path):
                    psql(url, "-f", str(alter))
                elif alter:
                    psql(url, "-c", alter)
                measured = pgbench(url, NEW + CALL.format(notify="true"), "on", args)
                what = calls_of(batch) + plans
                results.setdefault(what, []).append(measured)
                C.log(f"run {run + 1}: {what}: {measured['calls_per_s']:.0f} calls/s")
                C.admin_sql(args.admin_url, "DROP DATABASE datapack_bench_floor WITH (FORCE)")
    meta = C.git_meta()
    out = Path(args.out or HERE / "results" / "db-floor-batch.md")
    title = ("The batch function against its previous body, by batch size" if args.before
             else "The batch function's cost per call by batch size")
    out.with_suffix(".json").write_text(json.dumps({"_meta": meta, **results}, indent=1))
    lines = [
        f"# {title} (bench/db_floor.py --batches)", "",
        provenance(meta, args, "new rows, changes announced, each line on a fresh database"), "",
        f"| Batch | {'Function' if args.before else 'Planning'} | Calls/s | Rows/s | Call ms (mean) "
        f"| {'vs before' if args.before else 'Generic vs per call'} |",
        "|---|---|---|---|---|---|"]
    for batch in sizes:
        before = C.med(results[calls_of(batch) + variants[0][0]], "calls_per_s")
        for plans, _ in variants:
            runs = results[calls_of(batch) + plans]
            ratio = C.med(runs, "calls_per_s") / before
            lines.append(f"| {batch} | {plans} | {C.cell(runs, 'calls_per_s', '.0f')} | "
                         f"{C.cell(runs, 'rows_per_s', '.0f')} | {C.cell(runs, 'batch_ms', '.2f')} | "
                         f"×{ratio:.2f} |")
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
