"""`flamenco-worker status` and `flamenco-worker flush` against a real worker and the local Manager."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from conftest import RecordingManager, WorkerStarter, python_script_task, until, wait_until, worker_executable


async def cli(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *worker_executable(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def status_json(home: Path, config: Path) -> dict[str, Any]:
    code, out, err = await cli("status", "--json", "--home", str(home), "--config", str(config))
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


async def test_status_of_a_running_then_stopped_worker_and_flush(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    empty = workers.empty_config
    before = await status_json(home, empty)
    assert before["running"] is False and before["worker_id"] is None and before["backlog"]["count"] == 0

    go = tmp_path / "go"
    script = (f"import os, time\nprint('started', flush=True)\nwhile not os.path.exists({str(go)!r}):\n"
              "    time.sleep(0.05)\nprint('done', flush=True)\n")
    job = manager.submit_job("status", [python_script_task("long", script)])
    task_id = manager.job_tasks(job)[0].id
    worker = await workers.start(manager.url, home, env={"FLAMENCO_WORKER_SHUTDOWN_FLUSH_SECONDS": "1"})
    await until(manager, lambda: manager.task(task_id).status == "active", worker=worker)

    running = await status_json(home, empty)
    assert running["running"] is True and running["pid"] == worker.pid
    assert running["state"] == "awake"
    assert running["worker_id"] in manager.workers
    assert running["current_task"]["id"] == task_id and running["current_task"]["job_id"] == job
    assert running["current_task"]["log_file"] == str(home / "flamenco-worker-logs" / job / f"{task_id}.log")
    assert running["logs"]["agent"] == str(home / "flamenco-worker-logs" / "worker-agent.log")
    code, text, _ = await cli("status", "--home", str(home), "--config", str(empty))
    assert code == 0
    assert f"current task: {task_id} (long) of job {job}" in text and "worker-agent.log" in text

    # The worker got its URL on the command line: flush needs none to see that it runs.
    code, _, err = await cli("flush", "--home", str(home), "--config", str(empty))
    assert code == 5 and "running" in err, "flush leaves a running worker's queue alone"

    # The Manager goes away while the task runs: its updates queue up and stay queued at shutdown.
    await manager.go_down()
    go.touch()
    await wait_until(lambda: "done" in _task_log(home, job, task_id), 60, "the task to finish")
    assert await worker.stop() == 0
    stopped = await status_json(home, empty)
    assert stopped["running"] is False and "not running" in stopped["state"]
    backlog = stopped["backlog"]
    assert backlog["count"] > 0 and backlog["bytes"] > 0 and backlog["oldest_age_seconds"] >= 0

    code, _, err = await cli("flush", "--home", str(home), "--config", str(empty), "--manager", manager.url,
                             "--timeout", "1")
    assert code == 1 and "still queued" in err, err

    await manager.come_back()
    # Without --manager, flush uses the URL the worker last ran against (its state file).
    code, out, err = await cli("flush", "--home", str(home), "--config", str(empty))
    assert code == 0, err
    assert f"using the Manager the worker last ran against: {manager.url}" in out
    assert "delivered" in out
    assert manager.task(task_id).status == "completed"
    assert "done" in manager.task(task_id).log
    assert (await status_json(home, empty))["backlog"]["count"] == 0


def _task_log(home: Path, job: str, task: str) -> str:
    try:
        return (home / "flamenco-worker-logs" / job / f"{task}.log").read_text()
    except FileNotFoundError:
        return ""
