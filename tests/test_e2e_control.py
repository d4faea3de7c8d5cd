"""End to end: the Manager and the operator control the worker (tasks taken away, SIGTERM, worker states)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    LONG_TIMEOUT,
    RecordingManager,
    WorkerProcess,
    WorkerStarter,
    echo_task,
    pid_alive,
    python_script_task,
    until,
    wait_awake,
    wait_until,
)

from flamenco_deadline_worker.testing.records import FAKE_OTHER_WORKER, TaskRecord

# Writes its pid to argv[1], says so, then runs until killed (at most ten minutes).
LONG_CHILD = """\
import os, sys, time
with open(sys.argv[1] + '.tmp', 'w') as f:
    f.write(str(os.getpid()))
os.rename(sys.argv[1] + '.tmp', sys.argv[1])
print('child running', flush=True)
deadline = time.monotonic() + 600
while time.monotonic() < deadline:
    time.sleep(0.05)
"""


def long_task(name: str, pid_file: Path) -> dict[str, Any]:
    task = python_script_task(name, LONG_CHILD)
    task["commands"][0]["parameters"]["args"].append(str(pid_file))
    return task


async def start_long_task(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path, child_pids: list[int]
) -> tuple[WorkerProcess, TaskRecord, int]:
    """A worker running a long task; answers the worker, the task and the child's pid."""
    pid_file = tmp_path / "child.pid"
    job_id = manager.submit_job("long", [long_task("long", pid_file)])
    worker = await workers.start(manager.url)
    (task,) = manager.job_tasks(job_id)
    await wait_until(pid_file.exists, LONG_TIMEOUT, "the task's child wrote its pid")
    pid = int(pid_file.read_text())
    child_pids.append(pid)
    await until(manager, lambda: "child running" in task.log, LONG_TIMEOUT, worker)
    assert pid_alive(pid)
    return worker, task, pid


@pytest.mark.parametrize("how", ["reassigned", "canceled"])
async def test_task_taken_away_kills_its_child_and_the_next_task_runs(
    how: str, manager: RecordingManager, workers: WorkerStarter, tmp_path: Path, child_pids: list[int]
) -> None:
    worker, task, pid = await start_long_task(manager, workers, tmp_path, child_pids)
    next_job = manager.submit_job("next", [echo_task("next")])

    taken = time.monotonic()
    if how == "reassigned":
        manager.reassign_task(task.id, to_other_worker=True)
    else:
        manager.cancel_task(task.id)
    await wait_until(lambda: not pid_alive(pid), LONG_TIMEOUT, f"child {pid} is gone")
    gone_after = time.monotonic() - taken
    assert gone_after < 3.0, f"the child lived {gone_after:.1f} s after the task was taken away"

    await until(manager, lambda: manager.job(next_job).status == "completed", LONG_TIMEOUT, worker)
    if how == "reassigned":
        assert (task.worker_id, task.status) == (FAKE_OTHER_WORKER, "active")
    else:
        assert task.status == "canceled"
    assert worker.returncode is None
    assert await worker.stop() == 0


async def test_sigterm_during_a_task_signs_off_and_kills_the_child(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path, child_pids: list[int]
) -> None:
    worker, task, pid = await start_long_task(manager, workers, tmp_path, child_pids)
    record = manager.the_worker()
    worker.send_signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0, worker.describe()
    assert not pid_alive(pid), f"child {pid} survived the worker's clean shutdown"
    assert record.status == "offline"
    assert manager.count("POST", "/sign-off") == 1
    # The abort reached the Manager before the sign-off, which put the task back in the queue.
    assert "task aborted" in task.log
    assert (task.status, task.worker_id) == ("queued", None)


async def test_asleep_awake_offline(manager: RecordingManager, workers: WorkerStarter) -> None:
    worker = await workers.start(manager.url)
    record = await wait_awake(manager, worker)

    manager.request_state(record.id, "asleep")
    await until(manager, lambda: record.status == "asleep" and record.status_requested is None, worker=worker)
    since = time.monotonic()
    job_id = manager.submit_job("while-asleep", [echo_task("later")])
    # Asleep, the worker keeps asking for its state, and asks for no task.
    await until(manager, lambda: manager.count("GET", "/state", since) >= 3, worker=worker)
    assert manager.count("POST", "/task", since) == 0
    assert manager.job_tasks(job_id)[0].status == "queued"

    manager.request_state(record.id, "awake")
    await until(manager, lambda: manager.job(job_id).status == "completed", worker=worker)
    assert record.status == "awake"

    manager.request_state(record.id, "offline")
    assert await worker.wait_exit() == 0, worker.describe()
    assert record.status == "offline"


async def test_restart_request_exits_with_restart_exit_code(
    manager: RecordingManager, workers: WorkerStarter
) -> None:
    worker = await workers.start(manager.url, env={"FLAMENCO_WORKER_RESTART_EXIT_CODE": "42"})
    record = await wait_awake(manager, worker)
    manager.request_state(record.id, "restart")
    assert await worker.wait_exit() == 42, worker.describe()
    assert record.status in ("restart", "offline")
    assert manager.count("POST", "/sign-off") == 1


async def test_asleep_requested_during_a_task_aborts_it(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path, child_pids: list[int]
) -> None:
    worker, task, pid = await start_long_task(manager, workers, tmp_path, child_pids)
    record = manager.the_worker()
    manager.request_state(record.id, "asleep")
    await until(manager, lambda: record.status == "asleep", LONG_TIMEOUT, worker)
    await wait_until(lambda: not pid_alive(pid), LONG_TIMEOUT, f"child {pid} is gone")
    assert worker.returncode is None
    assert await worker.stop() == 0
