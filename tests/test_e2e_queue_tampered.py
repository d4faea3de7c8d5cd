"""End to end: queued updates deleted behind the worker's back (an admin with sqlite3) while the Manager
is down.  The worker notices they are gone instead of waiting for their delivery for ever: it runs
the task the Manager sends again and goes on to the next one."""

from __future__ import annotations

import sqlite3

from conftest import LONG_TIMEOUT, RecordingManager, WorkerStarter, echo_task, python_script_task, until


async def test_updates_deleted_by_another_process_do_not_stall_the_worker(
    manager: RecordingManager, workers: WorkerStarter
) -> None:
    script = "for i in range(1, 501):\n    print(f'line {i}')\n"
    job_id = manager.submit_job("tampered", [python_script_task("first", script)])
    worker = await workers.start(manager.url)
    (task,) = manager.job_tasks(job_id)
    await until(manager, lambda: task.status == "active", LONG_TIMEOUT, worker)
    await manager.go_down()
    await worker.wait_output(f"task {task.id} completed in", LONG_TIMEOUT)
    with sqlite3.connect(worker.home / "flamenco-worker.db", timeout=30) as db:
        deleted = db.execute("DELETE FROM updates").rowcount
    assert deleted > 0
    next_job = manager.submit_job("next", [echo_task("next")])
    await manager.come_back()
    await until(manager, lambda: manager.job(next_job).status == "completed", LONG_TIMEOUT, worker)
    assert "are no longer in" in worker.agent_log_text()
    assert task.status == "completed"  # sent again by the Manager, and run again: its updates were destroyed
    assert await worker.stop() == 0
