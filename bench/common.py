"""What the benchmark's orchestrator (bench.py) and its paced load (load.py) share: process
accounting and stopping, a long-lived psql session, fresh databases, the queue feeder, the
median (min–max) cells of the report, and what a result file records about the code measured.
Imports neither of them.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
FEED_MAX_VISIBLE = 200
# Long-poll wait of every consumer. A consumer stopped mid-poll leaves that poll open in moto,
# which may take a message of the next run and hide it for the visibility timeout (60 s); so
# consumers poll with this short wait and each run starts only after it has passed.
SETTLE_WAIT_S = 1
DATAPACK = "dp-bench"


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def proc_cpu(pid: int) -> float:
    """user+sys CPU seconds of a process (utime+stime from /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def settle() -> None:
    """Waits out the long poll a just-stopped consumer may have left open in moto."""
    time.sleep(SETTLE_WAIT_S + 0.5)


def stop_all(procs: list[subprocess.Popen], timeout: float = 30) -> None:
    """Asks every process to stop at once (they drain side by side), then waits for each."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Psql:
    """One long-lived psql session, so polling the row count costs no process start-ups."""

    def __init__(self, url: str):
        self.proc = subprocess.Popen(
            ["psql", "-XqtA", "-v", "ON_ERROR_STOP=0", url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def scalar(self, sql: str) -> str:
        marker = f"--end-{time.monotonic_ns()}"
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{sql};\n\\echo {marker}\n")
        self.proc.stdin.flush()
        lines = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"psql ended while running {sql!r}")
            line = line.rstrip("\n")
            if line == marker:
                break
            if line:
                lines.append(line)
        return lines[-1] if lines else ""

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()


def admin_sql(admin_url: str, sql: str) -> None:
    subprocess.run(["psql", "-Xq", "-v", "ON_ERROR_STOP=1", admin_url, "-c", sql], check=True)


def fresh_database(admin_url: str, name: str) -> str:
    admin_sql(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin_sql(admin_url, f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + "/" + name


def queue_visible(sqs, url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"])


class Feeder(threading.Thread):
    """Sends one message per record, ten per batch, keeping the visible backlog short; with
    `stamp`, each record's eventTime is the time its batch is sent (for event → row latency)."""

    def __init__(self, sqs, url: str, records: list[dict], stamp: bool = False):
        super().__init__(daemon=True)
        self.sqs, self.url, self.records, self.stamp = sqs, url, records, stamp
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            sent = 0
            for start in range(0, len(self.records), 10):
                if sent and sent % 50 == 0:
                    while queue_visible(self.sqs, self.url) >= FEED_MAX_VISIBLE - 50:
                        time.sleep(0.02)
                batch = self.records[start : start + 10]
                if self.stamp:
                    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
                    batch = [dict(r, eventTime=now.replace("+00:00", "Z")) for r in batch]
                out = self.sqs.send_message_batch(
                    QueueUrl=self.url,
                    Entries=[
                        {"Id": str(i), "MessageBody": json.dumps({"Records": [r]})}
                        for i, r in enumerate(batch)
                    ],
                )
                if out.get("Failed"):
                    raise RuntimeError(f"SendMessageBatch failed: {out['Failed']}")
                sent += len(batch)
        except BaseException as e:  # reported by the run
            self.error = e


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def cell(runs: list[dict], key: str, fmt: str) -> str:
    return cell_of([r[key] for r in runs if key in r], fmt)


def cell_of(values: list[float], fmt: str) -> str:
    """Median (min–max) of the values; the value alone for one run, – for none."""
    if not values:
        return "–"
    m = statistics.median(values)
    if len(values) == 1:
        return format(m, fmt)
    return f"{format(m, fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def git_meta() -> dict:
    """What every result file records about the code that produced it: the commit, and whether
    the working tree had uncommitted changes (a figure from a dirty tree names no commit)."""
    def git(*argv):
        out = subprocess.run(["git", *argv], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else None
    commit = git("rev-parse", "--short", "HEAD")
    # The result files are written during the run; they are not the code measured.
    status = git("status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                 ":(top,exclude)bench/results")
    return {
        "commit": commit or "unknown",
        "dirty": bool(status) if status is not None else None,
        "utc": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}",
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        # Absolute paths (an --out outside the checkout) by their name only: no machine's layout.
        "argv": [Path(a).name if a.startswith("/") else a for a in sys.argv[1:]],
    }
