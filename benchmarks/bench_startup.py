"""Start-up cost of the worker: `flamenco-worker --version` wall time, and idle memory once signed on.

Prints:
  --version    median (and min, max) wall time of --runs runs of `flamenco-worker --version`
  idle RSS     VmRSS from /proc/<pid>/status of a worker signed on to a local Manager with no tasks, read
               once it has settled (--settle seconds awake, then until two readings 1 s apart agree within
               64 kB); VmHWM (peak) too
Targets: <= 150 ms to print the version, <= 40 MB idle RSS.

    .venv/bin/python benchmarks/bench_startup.py [--runs 10] [--settle 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flamenco_deadline_worker.testing.manager import LocalManager

TARGET_VERSION_MS = 150.0
TARGET_RSS_MB = 40.0


def worker_base() -> list[str]:
    exe = Path(sys.executable).parent / "flamenco-worker"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "flamenco_deadline_worker"]


def version_times(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([*worker_base(), "--version"], check=True, stdout=subprocess.DEVNULL)
        times.append((time.perf_counter() - started) * 1000)
    return times


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


async def idle_rss(settle: float, timeout: float) -> tuple[int, int]:
    manager = LocalManager()
    url = await manager.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAMENCO_WORKER_")}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as home:
        out = Path(home) / "worker-output.txt"
        with out.open("wb") as f:
            proc = await asyncio.create_subprocess_exec(
                *worker_base(), "--manager", url, "--home", home, "--config", os.devnull,
                env=env, stdout=f, stderr=f,
            )
        try:
            await manager.wait_for(lambda: any(w.status == "awake" for w in manager.workers.values()), timeout)
            await asyncio.sleep(settle)  # a few idle polls of the Manager
            rss = status_kb(proc.pid, "VmRSS")
            while True:
                await asyncio.sleep(1.0)
                now = status_kb(proc.pid, "VmRSS")
                if abs(now - rss) <= 64:
                    break
                rss = now
            return now, status_kb(proc.pid, "VmHWM")
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)
            await manager.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--settle", type=float, default=3.0)
    args = parser.parse_args()
    times = version_times(args.runs)
    median = statistics.median(times)
    rss, hwm = asyncio.run(idle_rss(args.settle, 60.0))
    v1 = "meets" if median <= TARGET_VERSION_MS else "MISSES"
    v2 = "meets" if rss / 1024 <= TARGET_RSS_MB else "MISSES"
    print(f"--version    median {median:.0f} ms of {args.runs} runs (min {min(times):.0f}, max {max(times):.0f}); "
          f"{v1} the {TARGET_VERSION_MS:g} ms target")
    print(f"idle RSS     {rss / 1024:.1f} MB VmRSS (peak VmHWM {hwm / 1024:.1f} MB), signed on with no tasks; "
          f"{v2} the {TARGET_RSS_MB:g} MB target")


if __name__ == "__main__":
    main()
