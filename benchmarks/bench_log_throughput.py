"""Log lines per second from a chatty child to the Manager, end to end.

A local Manager (in this process, no spec validation) hands one `exec` task to a real `flamenco-worker`
process; the task's child prints --lines numbered lines as fast as Python can.  Prints:
  end to end   lines/s from the Manager handing out the task to the Manager holding every line and the
               completed status (Manager-side times)
  child alone  the same child's own time printing to /dev/null, for comparison
and checks that every line arrived, in order.

    .venv/bin/python benchmarks/bench_log_throughput.py [--lines 500000]
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

CHILD = "import sys\nw = sys.stdout.write\nfor i in range(1, int(sys.argv[1]) + 1):\n    w(f'line {i}\\n')\n"


def child_alone(lines: int) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD, str(lines)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


async def run(lines: int, timeout: float) -> dict[str, Any]:
    manager = TimedManager()
    url = await manager.start()
    command = {"name": "exec", "parameters": {"exe": sys.executable, "args": ["-c", CHILD, str(lines)]},
               "total_step_count": 1}
    job_id = manager.submit_job("chatty", [{"name": "chatty", "task_type": "misc", "commands": [command]}])
    (task,) = manager.job_tasks(job_id)
    with tempfile.TemporaryDirectory(prefix="bench-log-") as home:
        out = Path(home) / "worker-output.txt"
        with out.open("wb") as f:
            proc = await asyncio.create_subprocess_exec(
                *worker_argv(url, Path(home)), env=worker_env(task_poll_interval_seconds="0.2"), stdout=f, stderr=f
            )
        try:
            await manager.wait_for(lambda: task.status in ("completed", "failed"), timeout)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)
            await manager.stop()
    numbers = [int(line[5:]) for line in task.log.splitlines() if line.startswith("line ")]
    done = task.updates[-1].received_at
    return {
        "status": task.status,
        "complete": numbers == list(range(1, lines + 1)),
        "seconds": done - manager.assigned_at[task.id],
        "updates": len(task.updates),
        "bytes": len(task.log),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.lines, args.timeout))
    alone = child_alone(args.lines)
    print(f"task {result['status']}; all {args.lines:,} lines arrived in order: {result['complete']}")
    print(f"end to end   {args.lines / result['seconds']:12,.0f} lines/s  ({result['seconds']:.2f} s from hand-out "
          f"to the last line and the completed status at the Manager; {result['updates']} task updates, "
          f"{result['bytes'] / 1e6:.1f} MB)")
    print(f"child alone  {args.lines / alone:12,.0f} lines/s  ({alone:.2f} s printing to /dev/null)")
    if not result["complete"] or result["status"] != "completed":
        sys.exit(1)


if __name__ == "__main__":
    main()
