"""An output flood: a child printing as fast as it can for --seconds, through a real `flamenco-worker` to a
local Manager behind a 1 MiB request body limit (nginx's default), as a chatty render would.

Prints lines produced and delivered (they must be equal, and in order), the child's rate with the
worker reading its output and alone (into `cat`), the worker's peak RSS (VmHWM) and the update
queue's file size once everything is delivered.  Exits 1 when a line is missing or out of order.

    .venv/bin/python benchmarks/bench_flood.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flamenco_run import TimedManager, worker_argv, worker_env

CHILD = """\
import sys, time
w = sys.stdout.write
end = time.monotonic() + float(sys.argv[1])
i = 0
while time.monotonic() < end:
    for _ in range(1000):
        i += 1
        w(f'line {i} of the flood, as a renderer would print it\\n')
sys.stdout.flush()
open(sys.argv[2], 'w').write(str(i))
"""


def child_alone(seconds: float, count_file: Path) -> float:
    """Lines per second of the same child writing into a pipe that `cat` drains."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(seconds), str(count_file)], stdout=subprocess.PIPE)
    subprocess.run(["cat"], stdin=child.stdout, stdout=subprocess.DEVNULL, check=True)
    child.wait()
    return int(count_file.read_text()) / seconds


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def settled_queue_size(home: Path, patience: float = 30.0, small: int = 2 << 20) -> int:
    """The queue files' size once under ``small`` bytes, or after ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while True:
        size = sum(p.stat().st_size for p in home.glob("flamenco-worker.db*"))
        if size <= small or time.monotonic() > deadline:
            return size
        await asyncio.sleep(0.5)


async def run(seconds: float, timeout: float) -> dict[str, Any]:
    manager = TimedManager()
    manager.max_body_bytes = 1024 * 1024
    url = await manager.start()
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        home, count_file = Path(tmp) / "home", Path(tmp) / "count"
        home.mkdir()
        command = {"name": "exec", "parameters": {"exe": sys.executable,
                   "args": ["-c", CHILD, str(seconds), str(count_file)]}, "total_step_count": 1}
        job_id = manager.submit_job("flood", [{"name": "flood", "task_type": "misc", "commands": [command]}])
        (task,) = manager.job_tasks(job_id)
        out = home / "worker-output.txt"
        with out.open("wb") as f:
            proc = await asyncio.create_subprocess_exec(*worker_argv(url, home), env=worker_env(), stdout=f, stderr=f)
        try:
            await manager.wait_for(lambda: task.status in ("completed", "failed"), timeout)
            delivered_at = time.time()
            rss = peak_rss_mib(proc.pid)
            # The worker gives the file's space back once the queue is empty, in the background.
            queue_files = await settled_queue_size(home)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)
            await manager.stop()
        produced = int(count_file.read_text())
    numbers = [int(line.split()[1]) for line in task.log.splitlines() if line.startswith("line ")]
    return {
        "status": task.status,
        "produced": produced,
        "delivered": len(numbers),
        "in_order": numbers == list(range(1, produced + 1)),
        "rate": produced / seconds,
        "rss": rss,
        "queue_bytes": queue_files,
        "too_large": manager.too_large_answers,
        "updates": len(task.updates),
        "log_bytes": len(task.log),
        "drained_after": delivered_at - manager.assigned_at[task.id] - seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    r = asyncio.run(run(args.seconds, args.timeout))
    with tempfile.TemporaryDirectory() as tmp:
        alone = child_alone(args.seconds, Path(tmp) / "count")
    print(f"task {r['status']}: {r['produced']:,} lines produced, {r['delivered']:,} delivered, "
          f"in order: {r['in_order']}")
    print(f"child's rate   {r['rate']:12,.0f} lines/s through the worker, {alone:12,.0f} lines/s into cat")
    print(f"worker         peak RSS {r['rss']:.1f} MiB; {r['updates']} task updates, "
          f"{r['log_bytes'] / 1e6:.1f} MB of log, {r['too_large']} answered 413; "
          f"last line delivered {r['drained_after']:.1f} s after the child stopped")
    print(f"queue file     {r['queue_bytes'] / 1024:.0f} KiB after the drain")
    if r["status"] != "completed" or not r["in_order"] or r["delivered"] != r["produced"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
