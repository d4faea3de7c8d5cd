"""A farm on one host: many `flamenco-worker` processes (separate homes, DEFAULT settings) against one
local Manager.  What the Manager feels, and how quickly work moves.

Phases:
  1. throughput  one job of --tasks tasks (each: echo a numbered line, then sleep --task-seconds) queued
                 at once; tasks/s, Manager requests per task, pickup latency (queued -> handed out)
  2. idle        the farm idles for --settle seconds (the backoff climbs), then --idle seconds are
                 counted: Manager requests per idle worker-minute
  3. pickup      --probes single tasks, one every --probe-gap seconds, into the idle farm: pickup latency
Finally every task must be completed with its own line in its log, and every worker's update queue
empty after a clean stop (no update lost).

Flamenco 3.9's figures come from its constants (internal/worker/state_awake.go): 20 s between task
requests while none is available, 2 s pause after a task plus a first 3 s wait before asking again.

    .venv/bin/python benchmarks/bench_farm.py                       # 50 workers, 2,000 tasks of 0.1 s
    .venv/bin/python benchmarks/bench_farm.py --workers 5 --tasks 100 --settle 30 --idle 30 --probes 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from flamenco_deadline_worker.status import read_backlog
from flamenco_deadline_worker.testing.manager import LocalManager
from flamenco_deadline_worker.testing.records import TaskRecord, WorkerRecord

# Flamenco 3.9 (internal/worker/state_awake.go)
F3_NO_TASK_WAIT = 20.0
F3_AFTER_TASK = 2.0 + 3.0  # durationTaskComplete, then fetchTask's first wait


class TimedManager(LocalManager):
    """The local Manager, noting when each task was first handed out."""

    def __init__(self) -> None:
        super().__init__()
        self.queued_at: dict[str, float] = {}
        self.handed_out_at: dict[str, float] = {}

    def submit_timed(self, name: str, tasks: list[dict[str, object]]) -> str:
        job_id = self.submit_job(name, tasks)  # type: ignore[arg-type]
        now = time.monotonic()
        for task in self.job_tasks(job_id):
            self.queued_at[task.id] = now
        return job_id

    def task_for(self, worker: WorkerRecord) -> TaskRecord | None:
        task = super().task_for(worker)
        if task is not None and task.id not in self.handed_out_at:
            self.handed_out_at[task.id] = time.monotonic()
        return task


def bench_task(i: int, seconds: float) -> dict[str, object]:
    return {"name": f"t{i:05d}", "task_type": "misc", "commands": [
        {"name": "echo", "parameters": {"message": f"bench task {i}"}, "total_step_count": 1},
        {"name": "sleep", "parameters": {"duration_in_seconds": seconds}, "total_step_count": 1},
    ]}


def worker_argv(url: str, home: Path, config: Path) -> list[str]:
    exe = Path(sys.executable).parent / "flamenco-worker"
    base = [str(exe)] if exe.is_file() else [sys.executable, "-m", "flamenco_deadline_worker"]
    return [*base, "--manager", url, "--home", str(home), "--config", str(config)]


def pickups(manager: TimedManager, tasks: list[TaskRecord]) -> list[float]:
    return sorted(manager.handed_out_at[t.id] - manager.queued_at[t.id] for t in tasks)


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


async def run(args: argparse.Namespace) -> int:
    manager = TimedManager()
    url = await manager.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAMENCO_WORKER_")}
    root = Path(tempfile.mkdtemp(prefix="bench-farm-"))
    config = root / "empty.cfg"
    config.write_text("")
    procs: list[asyncio.subprocess.Process] = []
    homes = [root / f"w{i:03d}" for i in range(args.workers)]
    print(f"bench_farm: {args.workers} workers (homes under {root}), manager {url}", flush=True)
    try:
        started = time.monotonic()
        for i, home in enumerate(homes):
            home.mkdir()
            with (home / "output.txt").open("wb") as out:
                procs.append(await asyncio.create_subprocess_exec(
                    *worker_argv(url, home, config), env={**env, "FLAMENCO_WORKER_WORKER_NAME": f"farm-{i:03d}"},
                    stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out))
        await manager.wait_for(
            lambda: sum(w.status == "awake" for w in manager.workers.values()) == args.workers, 600)
        print(f"all awake after {time.monotonic() - started:.1f} s", flush=True)

        # 1. throughput
        since = time.monotonic()
        job_id = manager.submit_timed("throughput", [bench_task(i, args.task_seconds) for i in range(args.tasks)])
        await manager.wait_for(lambda: manager.job(job_id).status in ("completed", "failed"), 3600)
        elapsed = time.monotonic() - since
        requests = manager.count_requests(since=since)
        kinds = {
            "task requests": manager.count_requests("POST", "/worker/task", since),
            "task updates": sum(manager.count_requests("POST", f"/task/{t.id}", since)
                                for t in manager.job_tasks(job_id)),
            "may-i-run": manager.count_requests("GET", "/may-i-run", since),
        }
        kinds["other"] = requests - sum(kinds.values())
        tasks = manager.job_tasks(job_id)
        thr_pickup = pickups(manager, tasks)
        lost = [t.name for t in tasks if t.status != "completed" or f"bench task {int(t.name[1:])}\n" not in t.log]

        # 2. idle
        await asyncio.sleep(args.settle)  # the measured quantity is time: let the backoff climb
        idle_since = time.monotonic()
        await asyncio.sleep(args.idle)
        idle_requests = manager.count_requests(since=idle_since)
        per_worker_minute = idle_requests / args.workers / (args.idle / 60)

        # 3. pickup into an idle farm
        probe_tasks: list[TaskRecord] = []
        for p in range(args.probes):
            probe = manager.submit_timed(f"probe-{p}", [bench_task(args.tasks + p, args.task_seconds)])
            await manager.wait_for(lambda probe=probe: manager.job(probe).status == "completed", 600)
            probe_tasks += manager.job_tasks(probe)
            await asyncio.sleep(args.probe_gap)
        idle_pickup = pickups(manager, probe_tasks)
        lost += [t.name for t in probe_tasks if t.status != "completed"]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        codes = [await proc.wait() for proc in procs]
        await manager.stop()
    left = sum(int(read_backlog(home / "flamenco-worker.db")["count"] or 0) for home in homes)

    f3_throughput = args.workers / (args.task_seconds + F3_AFTER_TASK)
    print()
    print(f"{'':44}{'this worker':>14}{'Flamenco 3.9':>16}")
    print(f"{'tasks/s (' + str(args.tasks) + ' tasks of ' + f'{args.task_seconds:g} s)':44}"
          f"{args.tasks / elapsed:>14.1f}{f3_throughput:>13.1f} (*)")
    print(f"{'Manager requests per task':44}{requests / args.tasks:>14.2f}{'':>16}")
    print(f"{'Manager requests per idle worker-minute':44}{per_worker_minute:>14.2f}{60 / F3_NO_TASK_WAIT:>16.2f}")
    print(f"{'pickup, queue of ' + str(args.tasks) + ': median / p95 s':44}"
          f"{statistics.median(thr_pickup):>7.2f} /{pct(thr_pickup, 0.95):>5.1f}")
    if idle_pickup:
        print(f"{'pickup, idle farm: median / max s':44}"
              f"{statistics.median(idle_pickup):>7.2f} /{max(idle_pickup):>5.1f}"
              f"{F3_NO_TASK_WAIT / (args.workers + 1):>9.2f} / {F3_NO_TASK_WAIT * 1.1:.0f} (**)")
    print(f"{'after a task, next request':44}{'at once':>14}{F3_AFTER_TASK:>14.0f} s")
    print("(*) upper bound from its constants: workers / (task + 5 s); (**) expected median and worst case")
    print(f"\nthroughput phase: {elapsed:.1f} s, {requests} requests "
          f"({', '.join(f'{n} {kind}' for kind, n in kinds.items())}); "
          f"idle phase: {idle_requests} requests from {args.workers} workers in {args.idle:g} s")
    print(f"worker exit codes: {sorted(set(codes))}; undelivered updates left in queues: {left}; "
          f"tasks incomplete or missing their line: {len(lost)}")
    ok = not lost and left == 0 and set(codes) == {0}
    print("no update lost" if ok else f"PROBLEM: {lost[:10]}")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=50)
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--task-seconds", type=float, default=0.1)
    p.add_argument("--settle", type=float, default=60.0, help="idle seconds before counting (backoff climbs)")
    p.add_argument("--idle", type=float, default=120.0, help="idle seconds counted")
    p.add_argument("--probes", type=int, default=10, help="single tasks queued into the idle farm")
    p.add_argument("--probe-gap", type=float, default=25.0, help="seconds between probes (back to idle)")
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
