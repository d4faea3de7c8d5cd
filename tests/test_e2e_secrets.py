"""End to end: no secret reaches a task, the worker's home files are its own, -v prints no payloads."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from conftest import LONG_TIMEOUT, RecordingManager, WorkerStarter, until

PRINT_ENV = "import os\nfor k, v in sorted(os.environ.items()): print(f'{k}={v}')\nprint('payload-7f3a in the log')"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_secrets_stay_out_of_tasks_home_files_are_private_and_debug_prints_no_payloads(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path
) -> None:
    task = {"name": "env", "task_type": "misc", "commands": [
        {"name": "exec", "parameters": {"exe": sys.executable, "args": ["-c", PRINT_ENV]}, "total_step_count": 1}]}
    job_id = manager.submit_job("env", [task])
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    old_umask = os.umask(0o022)  # the usual umask: what the worker creates must be private anyway
    try:
        worker = await workers.start(manager.url, home, "-v", env={
            "FLAMENCO_WORKER_WORKER_SECRET": "worker-secret-value-1b2c",
            "AWS_SECRET_ACCESS_KEY": "aws-secret-value-9d8e",
            "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID0000",
            "RENDER_LICENSE_SERVER": "lic.example:5053",
        })
    finally:
        os.umask(old_umask)
    await until(manager, lambda: manager.job(job_id).status == "completed", LONG_TIMEOUT, worker)
    assert await worker.stop() == 0
    (record,) = manager.job_tasks(job_id)

    # Secret-bearing variables are withheld, the rest of the environment is the task's.
    for secret in ("worker-secret-value-1b2c", "aws-secret-value-9d8e", "AKIAEXAMPLEKEYID0000"):
        assert secret not in record.log
    assert "RENDER_LICENSE_SERVER=lic.example:5053" in record.log
    assert "environment variables withheld from task processes: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" \
        in worker.agent_log_text()

    # Everything the worker made in its home is private; the home itself was made by someone else.
    logs = home / "flamenco-worker-logs"
    task_logs = list(logs.glob("*/*.log"))
    assert task_logs, sorted(p.name for p in logs.iterdir())
    files = [logs / "worker-agent.log", logs / "worker-agent-bootstrap.log", *task_logs,
             home / "flamenco-worker.db", home / "flamenco-worker.state.json", home / ".flamenco-worker.cfg",
             home / "flamenco-worker.tasks.json"]
    files += [p for p in home.glob("flamenco-worker.db-*")]
    assert {str(p): oct(mode(p)) for p in files} == {str(p): oct(0o600) for p in files}
    folders = [logs, *(p.parent for p in task_logs)]
    assert {str(p): oct(mode(p)) for p in folders} == {str(p): oct(0o700) for p in folders}
    assert mode(home) == 0o755

    # -v: the worker's own DEBUG lines are there; the SQL parameters aiosqlite prints at DEBUG are not.
    agent_log = worker.agent_log_text()
    assert " DEBUG " in agent_log
    assert "aiosqlite" not in agent_log
    assert "payload-7f3a" not in agent_log
