"""`flamenco-worker demo`: the whole system on this machine.

Starts the local Manager on 127.0.0.1, submits a small job, runs a real `flamenco-worker` process
against it until the job is done, stops the worker with SIGTERM and prints a summary per task.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_DEMO_FAILED = 1


def demo_tasks() -> list[dict[str, Any]]:
    python = sys.executable
    count_script = "import sys\nfor i in range(1, 2001):\n    print(f'demo line {i}')\n"
    return [
        {
            "name": "hello",
            "task_type": "misc",
            "commands": [
                {"name": "echo", "parameters": {"message": "Hello from the flamenco-worker demo"},
                 "total_step_count": 1},
            ],
        },
        {
            "name": "print-2000-lines",
            "task_type": "misc",
            "commands": [
                {"name": "exec", "parameters": {"exe": python, "args": ["-c", count_script]},
                 "total_step_count": 1},
            ],
        },
        {
            "name": "nap",
            "task_type": "misc",
            "commands": [
                {"name": "sleep", "parameters": {"duration_in_seconds": 0.5}, "total_step_count": 1},
                {"name": "echo", "parameters": {"message": "rested"}, "total_step_count": 1},
            ],
        },
    ]


def worker_command(manager_url: str, home: Path) -> list[str]:
    return [sys.executable, "-m", "flamenco_deadline_worker", "--manager", manager_url, "--home", str(home)]


async def run_demo(home: Path, timeout: float) -> int:
    from flamenco_deadline_worker.testing.manager import LocalManager

    manager = LocalManager()
    url = await manager.start("127.0.0.1", 0)
    print(f"local Flamenco Manager listening on {url}")
    job_id = manager.submit_job("flamenco-worker demo", demo_tasks())
    print(f"submitted job {job_id} with {len(demo_tasks())} tasks")
    env = dict(os.environ, FLAMENCO_WORKER_TASK_POLL_INTERVAL_SECONDS="0.5")
    worker = await asyncio.create_subprocess_exec(
        *worker_command(url, home), env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    print(f"started worker (pid {worker.pid}) with home {home}")
    started = time.monotonic()
    try:
        await manager.wait_for(lambda: manager.job(job_id).status in ("completed", "failed"), timeout)
    except (TimeoutError, asyncio.TimeoutError):
        print(f"demo: the job did not finish within {timeout:g} s", file=sys.stderr)
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
        code = await worker.wait()
        await manager.stop()
    job = manager.job(job_id)
    print(f"\njob {job.name!r}: {job.status} in {time.monotonic() - started:.1f} s; worker exited with code {code}")
    print(f"{'task':<20} {'status':<10} {'seconds':>8} {'log lines':>10}")
    for task in manager.job_tasks(job_id):
        seconds = task.updates[-1].received_at - task.updates[0].received_at if task.updates else 0.0
        print(f"{task.name:<20} {task.status:<10} {seconds:>8.2f} {task.log_line_count:>10}")
    logs = home / "flamenco-worker-logs"
    print(f"\nagent log:  {logs / 'worker-agent.log'}")
    print(f"task logs:  {logs}/<job id>/<task id>.log")
    ok = job.status == "completed" and code == 0
    return EXIT_OK if ok else EXIT_DEMO_FAILED


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="flamenco-worker demo", description=__doc__)
    parser.add_argument("--home", type=Path, help="worker home for the demo (default: a new temporary directory)")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="flamenco-worker-demo-"))
    return asyncio.run(run_demo(home.absolute(), args.timeout))
