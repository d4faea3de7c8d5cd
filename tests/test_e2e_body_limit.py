"""End to end: a Manager behind a proxy that refuses bodies over 1 MiB (413), and a worker set to send
updates of 4 MiB.  The 413s make the worker send smaller updates; every line arrives, in order."""

from __future__ import annotations

from conftest import LONG_TIMEOUT, RecordingManager, WorkerStarter, assert_all_lines_in_order, python_script_task, until

LINES = 600_000  # about 7.5 MB of output, printed as fast as Python can


async def test_a_1_mib_body_limit_loses_nothing(manager: RecordingManager, workers: WorkerStarter) -> None:
    manager.max_body_bytes = 1024 * 1024
    script = f"import sys\nw = sys.stdout.write\nfor i in range(1, {LINES + 1}):\n    w(f'line {{i}}\\n')\n"
    job_id = manager.submit_job("flood", [python_script_task("flood", script)])
    worker = await workers.start(
        manager.url, env={"FLAMENCO_WORKER_PUSH_LOG_MAX_BYTES": str(4 * 1024 * 1024)}
    )
    await until(manager, lambda: manager.job(job_id).status == "completed", LONG_TIMEOUT, worker)
    (task,) = manager.job_tasks(job_id)
    assert manager.too_large_answers > 0  # the limit was met, and answered 413
    assert_all_lines_in_order(task.log, LINES)
    assert "sending at most" in worker.agent_log_text()
    assert await worker.stop() == 0


async def test_a_manager_slower_than_the_update_timeout_still_gets_every_update(
    manager: RecordingManager, workers: WorkerStarter
) -> None:
    manager.update_delay = 3.0  # each task update takes 3 s to be accepted; the worker waits 1 s at first
    script = "for i in range(1, 2001):\n    print(f'line {i}')\n"
    job_id = manager.submit_job("slow", [python_script_task("first", script), python_script_task("second", script)])
    worker = await workers.start(manager.url, env={"FLAMENCO_WORKER_UPDATE_TIMEOUT_SECONDS": "1"})
    await until(manager, lambda: manager.job(job_id).status == "completed", LONG_TIMEOUT, worker)
    for task in manager.job_tasks(job_id):  # the worker took the next task once the first was delivered
        assert_all_lines_in_order(task.log, 2000)
        assert task.status == "completed"
    assert await worker.stop() == 0
