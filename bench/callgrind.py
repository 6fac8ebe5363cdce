#!/usr/bin/env python3
"""The worker's own CPU per small object, in instructions: run it through bench/callgrind.sh.

Instruction counts (valgrind's callgrind) are stable where timings on a shared machine are not.
For each of two sizes N1 < N2 (default 300 and 900 × 1 KiB): a fresh database, N events queued
before the worker starts, the worker run under callgrind until the N rows are committed, then
stopped (SIGTERM, its normal drain). Start-up and shutdown cost the same in both, so
(Ir(N2) - Ir(N1)) / (N2 - N1) is the cost of one object; the same difference per function
(inclusive) names where it goes. Idle work (probes, queue sampling, empty long polls) grows with
wall time and is not subtracted: under valgrind a run takes tens of seconds, and the figure
includes that share (the report says how long each run took).

Writes bench/results/callgrind.md and .json (the top functions per object) and keeps the
callgrind.out files in the state directory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402

TOP = 25


def queue_all(sqs, url: str, records: list[dict]) -> None:
    for start in range(0, len(records), 10):
        batch = records[start:start + 10]
        out = sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": json.dumps({"Records": [r]})} for i, r in enumerate(batch)])
        if out.get("Failed"):
            raise RuntimeError(f"SendMessageBatch failed: {out['Failed']}")


def run_one(bench: B.Bench, records: list[dict], out_file: Path) -> dict:
    db_url = B.fresh_database(bench.admin, "datapack_bench_callgrind")
    psql = B.Psql(db_url)
    # Under valgrind the first TLS connection to PostgreSQL can take longer than the default
    # 5 s acquire timeout on a busy machine, and the worker would exit before its first object.
    env = bench.worker_env({"DATABASE_ACQUIRE_TIMEOUT_SECS": "60"}, db_url=db_url)
    log_path = bench.state / f"worker-callgrind-{len(records)}.log"
    # The datapack row must exist before the first event is processed, and the tables before
    # that: a migration-only start creates them.
    subprocess.run([os.environ["BENCH_WORKER"], "migrate"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    psql.scalar(f"INSERT INTO datapack (identifier) VALUES ('{B.DATAPACK}')")
    B.purge(bench.sqs, bench.queue_url)
    queue_all(bench.sqs, bench.queue_url, records)
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
            os.environ["BENCH_WORKER"], "run"]
    t0 = time.time()
    with open(log_path, "ab") as logf:
        offset = logf.tell()
        proc = subprocess.Popen(argv, env=env, stdout=logf, stderr=logf)
    try:
        deadline = time.monotonic() + 1800
        while int(psql.scalar("SELECT count(*) FROM datapack_resource") or 0) < len(records):
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"rows not all committed; see {log_path}")
            time.sleep(0.2)
        wall = time.time() - t0
        addr = B.listening_addr(log_path, offset)
        if addr:
            B.read_build_info(addr)
        B.stop(proc, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        psql.close()
    B.settle()
    return {"objects": len(records), "wall_s": wall, "file": str(out_file)}


def total_ir(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


ANNOTATED = re.compile(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)$")
# Frames every task passes through (the runtime, thread start, tracing's wrapper): at the top of
# any inclusive list, and saying nothing about where the work is.
GENERIC = re.compile(r"^(tokio::runtime::|std::|core::ops::function::|start_thread|"
                     r"<std::|<tracing::instrument::|__rust_begin|clone3?$|\?\?\?$)")


def per_function(path: Path, inclusive: bool) -> dict[str, int]:
    """Ir per function (file:function [object]) from callgrind_annotate, inclusive or self."""
    argv = ["callgrind_annotate", "--threshold=100", str(path)]
    if inclusive:
        argv.insert(1, "--inclusive=yes")
    text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    out: dict[str, int] = {}
    started = False
    for line in text.splitlines():
        if not started:
            started = "file:function" in line
            continue
        found = ANNOTATED.match(line)
        if found:
            name = re.sub(r"\s*\[[^\]]*\]$", "", found.group(2))
            out[name] = out.get(name, 0) + int(found.group(1).replace(",", ""))
    return out


def short(name: str) -> str:
    name = name.split(":", 1)[1] if ":" in name and not name.startswith("<") else name
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    return name if len(name) <= 140 else name[:137] + "..."


def wall(run: dict) -> str:
    return f"{run['wall_s']:.0f} s" if run.get("wall_s") is not None else "? s"


def top_functions(runs: list[dict], objects: int, inclusive: bool) -> list[dict]:
    """The functions whose cost grows most per object (the two runs' difference), inclusive
    (without the generic frames) or self."""
    f1 = per_function(Path(runs[0]["file"]), inclusive)
    f2 = per_function(Path(runs[1]["file"]), inclusive)
    functions = sorted(((short(k), (f2[k] - f1.get(k, 0)) / objects) for k in f2),
                       key=lambda kv: -kv[1])
    seen, top = set(), []
    for name, ir in functions:
        if name in seen or ir <= 0 or (inclusive and GENERIC.match(name)):
            continue
        seen.add(name)
        top.append({"function": name, "ir_per_object": ir})
        if len(top) >= TOP:
            break
    return top


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="300,900")
    parser.add_argument("--out", default="bench/results/callgrind.md")
    parser.add_argument("--label", default="", help="what this binary is (before/after a change)")
    parser.add_argument("--reanalyse", metavar="STATE_DIR",
                        help="report on the callgrind.out files an earlier run kept, without running")
    args = parser.parse_args()
    n1, n2 = (int(x) for x in args.sizes.split(","))
    if args.reanalyse:
        return report(args, n1, n2, [{"objects": n, "wall_s": None,
                                      "file": str(Path(args.reanalyse) / f"callgrind.out.{n}")}
                                     for n in (n1, n2)])
    # Bench's own set-up: the small objects, uploaded once, notifications off.
    bargs = argparse.Namespace(small_count=n2, small_size=1024, large_count=0, large_size=0,
                               timeout=1800, perf=False, runs=1, quick=True)
    bench = B.Bench(bargs)
    bench.prepare(large=False)
    records = bench.objects.records["small"]
    runs = []
    for n in (n1, n2):
        B.log(f"callgrind: {n} objects")
        run = run_one(bench, records[:n], bench.state / f"callgrind.out.{n}")
        run["ir"] = total_ir(Path(run["file"]))
        runs.append(run)
        B.log(f"callgrind: {n} objects: {run['ir']:,} Ir, {run['wall_s']:.0f} s")
    return report(args, n1, n2, runs)


def report(args, n1: int, n2: int, runs: list[dict]) -> int:
    for run in runs:
        run["ir"] = total_ir(Path(run["file"]))
    per_object = (runs[1]["ir"] - runs[0]["ir"]) / (n2 - n1)
    top = top_functions(runs, n2 - n1, inclusive=True)
    top_self = top_functions(runs, n2 - n1, inclusive=False)
    meta = B.git_meta()
    result = {"label": args.label, "sizes": [n1, n2], "runs": runs, "ir_per_object": per_object,
              "top_inclusive_per_object": top, "top_self_per_object": top_self}
    kept = [dict(run, file=Path(run["file"]).name) for run in runs]  # no machine paths
    B.write_json(Path(args.out).with_suffix(".json"), {"callgrind": [dict(result, runs=kept)]})
    lines = [f"# Worker instructions per 1 KiB object (callgrind){': ' + args.label if args.label else ''}", "",
             f"{meta['utc']} UTC, checkout git {meta['commit']}{' (dirty tree)' if meta['dirty'] else ''}, "
             f"binary git {B.WORKER_BUILD.get('git_commit', 'unknown')}; "
             f"runs of {n1} and {n2} objects: {runs[0]['ir']:,} and {runs[1]['ir']:,} Ir "
             f"({wall(runs[0])} and {wall(runs[1])} under valgrind).", "",
             f"**{per_object:,.0f} instructions per object** = (Ir({n2}) − Ir({n1})) / {n2 - n1}.", "",
             "| Function (inclusive, per object) | Ir per object | Share |", "|---|---|---|"]
    for row in top:
        lines.append(f"| `{row['function']}` | {row['ir_per_object']:,.0f} | "
                     f"{100 * row['ir_per_object'] / per_object:.0f} % |")
    lines += ["", "| Function (self, per object) | Ir per object | Share |", "|---|---|---|"]
    for row in top_self:
        lines.append(f"| `{row['function']}` | {row['ir_per_object']:,.0f} | "
                     f"{100 * row['ir_per_object'] / per_object:.0f} % |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
