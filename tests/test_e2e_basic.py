"""End to end through the real `flamenco-worker` process: happy path, --single, bad tasks, credentials, SIGUSR1."""

from __future__ import annotations

import signal
import stat
import sys
from typing import Any

from conftest import (
    RecordingManager,
    WorkerStarter,
    echo_task,
    numbered_lines,
    python_script_task,
    until,
    wait_awake,
)

from flamenco_deadline_worker.config import read_toml


async def test_happy_path(manager: RecordingManager, workers: WorkerStarter) -> None:
    script = "for i in range(1, 1001):\n    print(f'line {i}')\n"
    job_id = manager.submit_job(
        "happy",
        [
            echo_task("hello", "Hello, farm"),
            python_script_task("count", script),
            {
                "name": "nap",
                "task_type": "misc",
                "commands": [
                    {"name": "sleep", "parameters": {"duration_in_seconds": 0.2}, "total_step_count": 1},
                    {"name": "echo", "parameters": {"message": "rested"}, "total_step_count": 2},
                ],
            },
        ],
    )
    worker = await workers.start(manager.url)
    record = await wait_awake(manager, worker)
    await until(manager, lambda: manager.job(job_id).status == "completed", worker=worker)

    hello, count, nap = manager.job_tasks(job_id)
    assert "Hello, farm\n" in hello.log
    assert numbered_lines(count.log, "line ") == list(range(1, 1001))
    assert "sleeping 0.2 s" in nap.log and "rested" in nap.log
    for task in (hello, count, nap):
        assert task.status == "completed"
        assert task.worker_id == record.id
        assert task.steps_completed == task.steps_total
        assert task.rejected_updates == []
        # The first update says active, the last says completed.
        statuses = [u.task_status for u in task.updates if u.task_status]
        assert statuses == ["active", "completed"]
    assert nap.steps_total == 3

    # The task log file on the worker holds the same lines.
    task_log = worker.home / "flamenco-worker-logs" / job_id / f"{count.id}.log"
    assert numbered_lines(task_log.read_text(), "line ") == list(range(1, 1001))

    assert await worker.stop() == 0
    assert manager.workers[record.id].status == "offline", worker.describe()
    assert manager.count("POST", "/sign-off") == 1


async def test_single_runs_one_task_and_exits(manager: RecordingManager, workers: WorkerStarter) -> None:
    job_id = manager.submit_job("single", [echo_task("first"), echo_task("second")])
    worker = await workers.start(manager.url, None, "--single")
    assert await worker.wait_exit() == 0, worker.describe()
    first, second = manager.job_tasks(job_id)
    assert first.status == "completed"
    assert second.status == "queued" and second.worker_id is None
    assert manager.the_worker().status == "offline"


async def test_bad_task_payloads_fail_the_task_not_the_worker(
    manager: RecordingManager, workers: WorkerStarter
) -> None:
    """Spec-valid tasks with wrong commands: each fails with a message naming the problem."""
    bad: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
        "unknown-command": (
            {"name": "frobnicate", "parameters": {"x": 1}, "total_step_count": 1},
            ("unknown command", "frobnicate"),
        ),
        "missing-parameter": (
            {"name": "echo", "parameters": {}, "total_step_count": 1},
            ("missing required parameter", "message"),
        ),
        "mistyped-parameter": (
            {"name": "sleep", "parameters": {"duration_in_seconds": "ten"}, "total_step_count": 1},
            ("duration_in_seconds", "'ten'", "number"),
        ),
        "mistyped-list": (
            {"name": "exec", "parameters": {"exe": sys.executable, "args": "-c pass"}, "total_step_count": 1},
            ("args", "list"),
        ),
        "negative-sleep": (
            {"name": "sleep", "parameters": {"duration_in_seconds": -3}, "total_step_count": 1},
            ("duration_in_seconds", "negative", "-3"),
        ),
        "missing-executable": (
            {"name": "exec", "parameters": {"exe": "/nonexistent/bin/render-tool", "args": []},
             "total_step_count": 1},
            ("/nonexistent/bin/render-tool", "not found"),
        ),
        "failing-executable": (
            {"name": "exec", "parameters": {"exe": sys.executable, "args": ["-c", "raise SystemExit(3)"]},
             "total_step_count": 1},
            ("exited with code 3",),
        ),
    }
    # A job fails as a whole with its first failed task, so each bad task is a job of its own.
    jobs = {
        name: manager.submit_job(name, [{"name": name, "task_type": "misc", "commands": [command]}])
        for name, (command, _) in bad.items()
    }
    good_job = manager.submit_job("good", [echo_task("good-after-bad")])
    worker = await workers.start(manager.url)
    await until(manager, lambda: manager.job(good_job).status == "completed", worker=worker)

    for name, (_, words) in bad.items():
        (task,) = manager.job_tasks(jobs[name])
        assert task.status == "failed", f"{name}: {task.status}"
        for word in words:
            assert word in task.activity, f"{name}: {word!r} not in the failure message {task.activity!r}"
            assert word in task.log, f"{name}: {word!r} not in the task log {task.log!r}"
    assert worker.returncode is None
    assert await worker.stop() == 0


async def test_malformed_commands_fail_the_task_not_the_worker(
    plain_manager: RecordingManager, workers: WorkerStarter
) -> None:
    """Commands the spec forbids (not objects, parameters not an object, no name): a non-validating manager."""
    manager = plain_manager
    bad: dict[str, tuple[Any, tuple[str, ...]]] = {
        "command-not-object": ("echo hello", ("is not an object",)),
        "parameters-not-object": (
            {"name": "echo", "parameters": ["hello"], "total_step_count": 1},
            ("parameters must be an object", "list"),
        ),
        "no-name": ({"parameters": {"message": "x"}, "total_step_count": 1}, ("unknown command", "''")),
        "no-step-count": ({"name": "echo", "parameters": {"message": "fine without steps"}}, ()),
    }
    jobs = {
        name: manager.submit_job(name, [{"name": name, "task_type": "misc", "commands": [command]}])
        for name, (command, _) in bad.items()
    }
    good_job = manager.submit_job("good", [echo_task("good-after-bad")])
    worker = await workers.start(manager.url)
    await until(manager, lambda: manager.job(good_job).status == "completed", worker=worker)

    for name, (_, words) in bad.items():
        (task,) = manager.job_tasks(jobs[name])
        if not words:
            assert task.status == "completed", f"{name}: {task.status} {task.activity!r}"
            continue
        assert task.status == "failed", f"{name}: {task.status}"
        for word in words:
            assert word in task.activity, f"{name}: {word!r} not in the failure message {task.activity!r}"
    assert await worker.stop() == 0


async def test_credentials_saved_private_and_reregistration_after_restart(
    manager: RecordingManager, workers: WorkerStarter
) -> None:
    worker = await workers.start(manager.url)
    record = await wait_awake(manager, worker)
    creds = worker.credentials_file
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    saved = read_toml(creds)
    assert saved["worker_id"] == record.id
    assert saved["worker_secret"] == record.secret
    assert record.secret not in worker.agent_log_text()
    assert await worker.stop() == 0

    # The Manager forgets the worker (as after a database reset): the next start gets 401 and registers again.
    del manager.workers[record.id]
    job_id = manager.submit_job("after-reregistration", [echo_task("after")])
    again = await workers.start(manager.url, worker.home)
    await until(manager, lambda: manager.job(job_id).status == "completed", worker=again)
    new_record = manager.the_worker()
    assert new_record.id != record.id
    assert manager.job_tasks(job_id)[0].worker_id == new_record.id
    saved = read_toml(creds)
    assert (saved["worker_id"], saved["worker_secret"]) == (new_record.id, new_record.secret)
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert await again.stop() == 0


async def test_reregistration_when_the_secret_changes_while_running(
    manager: RecordingManager, workers: WorkerStarter
) -> None:
    worker = await workers.start(manager.url)
    record = await wait_awake(manager, worker)
    record.secret = "changed-by-the-manager-admin"
    # The next task fetch gets 401; the worker signs on again, gets 401 again, and registers anew.
    await until(manager, lambda: len(manager.workers) == 2 and manager.the_worker().status == "awake",
                worker=worker)
    job_id = manager.submit_job("after-secret-change", [echo_task("after")])
    await until(manager, lambda: manager.job(job_id).status == "completed", worker=worker)
    new_record = manager.the_worker()
    assert new_record.id != record.id
    assert read_toml(worker.credentials_file)["worker_id"] == new_record.id
    assert stat.S_IMODE(worker.credentials_file.stat().st_mode) == 0o600
    assert await worker.stop() == 0


async def test_sigusr1_dumps_asyncio_tasks_to_the_agent_log(
    manager: RecordingManager, workers: WorkerStarter
) -> None:
    worker = await workers.start(manager.url)
    await wait_awake(manager, worker)
    worker.send_signal(signal.SIGUSR1)
    await worker.wait_log("asyncio task(s)")
    dump = worker.agent_log_text()
    assert "SIGUSR1:" in dump
    # The dump names the worker's coroutines with their stacks.
    assert "run_drain" in dump
    assert "Stack for" in dump or "File " in dump
    assert worker.returncode is None
    assert await worker.stop() == 0
