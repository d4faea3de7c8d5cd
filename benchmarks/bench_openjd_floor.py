"""What openjd-sessions alone costs per trivial task on this machine: the floor under any worker
agent that runs OpenJD through it (this one and the AWS agent alike).

    .venv/bin/python benchmarks/bench_openjd_floor.py [--tasks 200]

Runs the same step as bench_deadline.py (``echo task N``) through one openjd-sessions ``Session``,
one task after the other, with nothing else in the process: no service, no queue, no logging
handlers.  Prints one JSON line: the median and mean milliseconds per task (from ``run_task`` to
its final callback), and the tasks per second that leaves as a ceiling.  A worker that must reach
R tasks/s has 1000/R ms per task for everything, this floor included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from openjd.model import ParameterValue, ParameterValueType, parse_model
from openjd.model.v2023_09 import StepTemplate
from openjd.sessions import ActionState, ActionStatus, Session


def step(tasks: int) -> StepTemplate:
    return parse_model(
        model=StepTemplate,
        obj={
            "name": "Floor",
            "script": {"actions": {"onRun": {"command": "echo", "args": ["task {{Task.Param.N}}"]}}},
            "parameterSpace": {"taskParameterDefinitions": [{"name": "N", "type": "INT", "range": f"1-{tasks}"}]},
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    if args.tasks < 1:
        parser.error(f"--tasks must be at least 1 (got {args.tasks})")
    template = step(args.tasks)
    ended = threading.Event()

    def callback(session_id: str, status: ActionStatus) -> None:
        if status.state != ActionState.RUNNING:
            ended.set()

    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-openjd-") as root:
        session = Session(session_id="floor", job_parameter_values={}, callback=callback,
                          session_root_directory=Path(root))
        try:
            for n in range(1, args.tasks + 1):
                ended.clear()
                began = time.perf_counter()
                session.run_task(
                    step_script=template.script,
                    task_parameter_values={"N": ParameterValue(type=ParameterValueType.INT, value=str(n))},
                    os_env_vars={},
                )
                if not ended.wait(60):
                    raise SystemExit(f"task {n} did not end within 60 s")
                times.append((time.perf_counter() - began) * 1000)
        finally:
            session.cleanup()
    median = statistics.median(times)
    print(json.dumps({
        "tasks": args.tasks,
        "median_ms_per_task": round(median, 2),
        "mean_ms_per_task": round(statistics.mean(times), 2),
        "ceiling_tasks_per_second": round(1000 / statistics.mean(times), 1),
    }))


if __name__ == "__main__":
    main()
