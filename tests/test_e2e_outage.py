"""End to end: nothing is lost through Manager outages, failing update answers and a killed worker."""

from __future__ import annotations

import collections
import signal
from pathlib import Path
from typing import Any

from conftest import (
    LONG_TIMEOUT,
    RecordingManager,
    WorkerStarter,
    assert_all_lines_in_order,
    echo_task,
    numbered_lines,
    python_script_task,
    until,
    wait_until,
)

# Prints lines 1..first, waits for the gate file, prints the rest up to total, then writes the done file.
GATED_SCRIPT = """\
import os, sys, time
first, total, gate, done = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
for i in range(1, first + 1):
    print(f'line {i}')
sys.stdout.flush()
while not os.path.exists(gate):
    time.sleep(0.02)
for i in range(first + 1, total + 1):
    print(f'line {i}')
sys.stdout.flush()
open(done, 'w').close()
"""


def gated_task(name: str, first: int, total: int, gate: Path, done: Path) -> dict[str, Any]:
    task = python_script_task(name, GATED_SCRIPT)
    task["commands"][0]["parameters"]["args"] += [str(first), str(total), str(gate), str(done)]
    return task


async def test_manager_outage_in_the_middle_of_a_chatty_task(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path
) -> None:
    gate, done = tmp_path / "gate", tmp_path / "done"
    job_id = manager.submit_job("chatty", [gated_task("50k-lines", 25_000, 50_000, gate, done)])
    worker = await workers.start(manager.url)
    (task,) = manager.job_tasks(job_id)
    # The first half arrives while the Manager is up.
    await until(manager, lambda: task.log_line_count >= 25_000, LONG_TIMEOUT, worker)

    await manager.go_down()
    gate.touch()
    await wait_until(done.exists, LONG_TIMEOUT, "the child printed its second half")
    # The worker finished the task and failed to deliver, with the Manager still down.
    await worker.wait_output(f"task {task.id} completed in", LONG_TIMEOUT)
    await worker.wait_output("could not deliver updates", LONG_TIMEOUT)
    assert task.status == "active"

    await manager.come_back()
    await until(manager, lambda: task.status == "completed", LONG_TIMEOUT, worker)
    assert_all_lines_in_order(task.log, 50_000)
    assert task.steps_completed == task.steps_total
    assert worker.returncode is None
    assert await worker.stop() == 0


async def test_failing_update_answers_lose_nothing(manager: RecordingManager, workers: WorkerStarter) -> None:
    manager.faults.update_failure_ratio = 0.3
    script = "for i in range(1, 3001):\n    print(f'line {i}')\n"
    tasks = [python_script_task(f"count-{n}", script) for n in range(4)] + [echo_task("last")]
    job_id = manager.submit_job("flaky-manager", tasks)
    # Small batches make many task updates, so many of them meet an injected failure.
    worker = await workers.start(manager.url, env={"FLAMENCO_WORKER_PUSH_LOG_MAX_BYTES": "8192"})
    await until(manager, lambda: manager.job(job_id).status == "completed", LONG_TIMEOUT, worker)

    answers = collections.Counter(f.status for f in manager.faults.injected)
    assert answers[503] > 0 and answers[500] > 0, answers
    for task in manager.job_tasks(job_id)[:4]:
        # Refused updates were not applied, so nothing may be missing or repeated.
        assert numbered_lines(task.log, "line ") == list(range(1, 3001)), task.name
        assert task.status == "completed"
        assert task.steps_completed == task.steps_total
        assert {u.answer for u in task.rejected_updates} <= {500, 503}
    assert sum(len(t.rejected_updates) for t in manager.job_tasks(job_id)) == sum(answers.values())
    assert await worker.stop() == 0


async def test_sigkill_while_the_manager_is_down_then_restart(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path
) -> None:
    gate, done = tmp_path / "gate", tmp_path / "done"
    job_id = manager.submit_job("killed", [gated_task("5k-lines", 2_000, 5_000, gate, done)])
    after_job = manager.submit_job("after-restart", [echo_task("after")])
    worker = await workers.start(manager.url)
    (task,) = manager.job_tasks(job_id)
    await until(manager, lambda: task.log_line_count >= 2_000, LONG_TIMEOUT, worker)

    await manager.go_down()
    gate.touch()
    await wait_until(done.exists, LONG_TIMEOUT, "the child printed its second half")
    # The final status is committed to the queue on disk (it is logged after that); then the worker dies.
    await worker.wait_output(f"task {task.id} completed in", LONG_TIMEOUT)
    worker.send_signal(signal.SIGKILL)
    assert await worker.wait_exit() == -signal.SIGKILL

    # Restarted with the same home while the Manager is still down: it keeps trying to sign on.
    again = await workers.start(manager.url, worker.home)
    await again.wait_output("signing on to the Manager failed", LONG_TIMEOUT)
    await manager.come_back()
    await until(manager, lambda: manager.job(after_job).status == "completed", LONG_TIMEOUT, again)

    assert task.status == "completed"
    assert_all_lines_in_order(task.log, 5_000)
    # The task ran once: the restarted worker delivered the old run's updates instead of running it again.
    assert task.log.count("$ ") == 1, task.log[:500]
    assert [u.task_status for u in task.updates if u.task_status] == ["active", "completed"]
    assert task.steps_completed == task.steps_total
    assert await again.stop() == 0
