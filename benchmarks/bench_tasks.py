"""Trivial tasks through a real `flamenco-worker` process: tasks per second and agent overhead per task.

A local Manager (in this process, no spec validation) holds one job of --tasks `echo` tasks.  All times
are taken on the Manager's side:
  hand-out     when the Manager hands the task to the worker (its answer to POST /worker/task)
  completed    when the Manager receives the task's `completed` status
  overhead     completed - hand-out - the command's own run time.  An `echo` command only writes one
               log line (microseconds), so its run time counts as 0 and the overhead is the whole
               hand-out-to-completed time: parsing the task, committing its updates to SQLite, delivering
               them over HTTP.  (Each figure also includes the Manager's own handling, in this process.)
  gap          hand-out of task n+1 - completed of task n: the worker's turn-around before it asks again
  tasks/s      tasks / (completed of the last task - hand-out of the first)
Target: <= 20 ms median overhead per task.

    .venv/bin/python benchmarks/bench_tasks.py [--tasks 200]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import tempfile
from pathlib import Path

from flamenco_run import TimedManager, worker_argv, worker_env

from flamenco_deadline_worker.testing.records import TaskRecord

TARGET_OVERHEAD_MS = 20.0


def completed_at(task: TaskRecord) -> float:
    return next(u.received_at for u in task.updates if u.task_status == "completed")


async def run(count: int, timeout: float) -> list[tuple[float, float]]:
    manager = TimedManager()
    url = await manager.start()
    specs = [
        {"name": f"echo-{i}", "task_type": "misc",
         "commands": [{"name": "echo", "parameters": {"message": f"task {i}"}, "total_step_count": 1}]}
        for i in range(count)
    ]
    job_id = manager.submit_job("many-small-tasks", specs)
    env = worker_env()
    with tempfile.TemporaryDirectory(prefix="bench-tasks-") as home:
        out = Path(home) / "worker-output.txt"
        with out.open("wb") as f:
            proc = await asyncio.create_subprocess_exec(*worker_argv(url, Path(home)), env=env, stdout=f, stderr=f)
        try:
            await manager.wait_for(lambda: manager.job(job_id).status in ("completed", "failed"), timeout)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)
            await manager.stop()
    tasks = manager.job_tasks(job_id)
    assert all(t.status == "completed" for t in tasks), manager.describe()
    return [(manager.assigned_at[t.id], completed_at(t)) for t in tasks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    times = asyncio.run(run(args.tasks, args.timeout))
    overheads = sorted((done - handed) * 1000 for handed, done in times)
    gaps = [(times[i + 1][0] - times[i][1]) * 1000 for i in range(len(times) - 1)]
    total = times[-1][1] - times[0][0]
    median = statistics.median(overheads)
    p90 = overheads[int(len(overheads) * 0.9)]
    verdict = "meets" if median <= TARGET_OVERHEAD_MS else "MISSES"
    print(f"{args.tasks} echo tasks in {total:.2f} s: {args.tasks / total:.1f} tasks/s")
    print(f"overhead per task (hand-out -> completed received, echo run time ~0): median {median:.1f} ms, "
          f"p90 {p90:.1f} ms, max {overheads[-1]:.1f} ms ({verdict} the {TARGET_OVERHEAD_MS:g} ms target)")
    print(f"gap between tasks (completed received -> next hand-out): median {statistics.median(gaps):.1f} ms")


if __name__ == "__main__":
    main()
