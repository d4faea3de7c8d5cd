"""End to end, with the worker's DEFAULT intervals: abort latency, idle load and pickup after a task;
then autodiscovery, pre-task checks, the name variable and per-worker adaptor connection files.

Real `flamenco-worker` processes against the local Manager on 127.0.0.1; SSDP goes to a responder on
127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    LONG_TIMEOUT,
    RecordingManager,
    WorkerStarter,
    echo_task,
    pid_alive,
    python_script_task,
    until,
    wait_awake,
    wait_until,
    worker_executable,
)

from flamenco_deadline_worker.testing.records import FAKE_OTHER_WORKER

FIXTURES = Path(__file__).resolve().parent / "adaptor_fixtures"

# Writes its pid to argv[1]; then prints a line every 50 ms (argv[2] == "chatty") or nothing at all.
CHILD = """\
import os, sys, time
with open(sys.argv[1] + '.tmp', 'w') as f:
    f.write(str(os.getpid()))
os.rename(sys.argv[1] + '.tmp', sys.argv[1])
print('child running', flush=True)
deadline = time.monotonic() + 600
n = 0
while time.monotonic() < deadline:
    time.sleep(0.05)
    if sys.argv[2] == 'chatty':
        n += 1
        print(f'tick {n}', flush=True)
"""


async def start_child_task(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path, child_pids: list[int], kind: str
) -> tuple[Any, Any, int]:
    pid_file = tmp_path / f"{kind}.pid"
    task_spec = python_script_task(kind, CHILD)
    task_spec["commands"][0]["parameters"]["args"] += [str(pid_file), kind]
    job_id = manager.submit_job(kind, [task_spec])
    worker = await workers.start(manager.url, default_timing=True)
    (task,) = manager.job_tasks(job_id)
    await wait_until(pid_file.exists, LONG_TIMEOUT, "the task's child wrote its pid")
    pid = int(pid_file.read_text())
    child_pids.append(pid)
    await until(manager, lambda: "child running" in task.log, LONG_TIMEOUT, worker)
    return worker, task, pid


async def until_quiet(task: Any, quiet_for: float = 2.0) -> None:
    """Wait until no update of ``task`` has arrived for ``quiet_for`` seconds: its start-up lines are in."""
    seen, since = -1, time.monotonic()

    def quiet() -> bool:
        nonlocal seen, since
        if len(task.updates) != seen:
            seen, since = len(task.updates), time.monotonic()
        return time.monotonic() - since >= quiet_for

    await wait_until(quiet, LONG_TIMEOUT, "no task update for a while")


async def seconds_until_gone(pid: int) -> float:
    started = time.monotonic()
    await wait_until(lambda: not pid_alive(pid), LONG_TIMEOUT, f"child {pid} is gone")
    return time.monotonic() - started


async def test_reassigned_task_printing_output_is_gone_within_2_s(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path, child_pids: list[int]
) -> None:
    worker, task, pid = await start_child_task(manager, workers, tmp_path, child_pids, "chatty")
    manager.reassign_task(task.id, to_other_worker=True)
    gone_after = await seconds_until_gone(pid)
    print(f"chatty child gone {gone_after:.2f} s after its task was reassigned")
    assert gone_after < 2.0, f"the child lived {gone_after:.2f} s after its task was reassigned"
    assert any(u.answer == 409 for u in task.rejected_updates), "its next update was answered 409"
    assert task.worker_id == FAKE_OTHER_WORKER
    assert await worker.stop() == 0


async def test_reassigned_silent_task_is_gone_within_8_s(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path, child_pids: list[int]
) -> None:
    worker, task, pid = await start_child_task(manager, workers, tmp_path, child_pids, "silent")
    await until_quiet(task)  # no update left to be answered 409: only may-i-run can tell
    manager.reassign_task(task.id, to_other_worker=True)
    gone_after = await seconds_until_gone(pid)
    print(f"silent child gone {gone_after:.2f} s after its task was reassigned")
    assert gone_after < 8.0, f"the child lived {gone_after:.2f} s after its task was reassigned"
    assert await worker.stop() == 0


async def test_canceled_task_printing_output_is_still_stopped_by_may_i_run(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path, child_pids: list[int]
) -> None:
    """The Manager accepts updates of a canceled task, so they cannot replace may-i-run altogether."""
    worker, task, pid = await start_child_task(manager, workers, tmp_path, child_pids, "chatty")
    since = time.monotonic()
    manager.cancel_task(task.id)
    gone_after = await seconds_until_gone(pid)
    # may-i-run goes out at least every 2 x may_i_run_interval_seconds (10 s), whatever the updates.
    print(f"chatty child gone {gone_after:.2f} s after its task was canceled")
    assert gone_after < 13.0, f"the child lived {gone_after:.2f} s after its task was canceled"
    assert manager.count("GET", "/may-i-run", since) >= 1
    assert await worker.stop() == 0


async def test_picks_up_new_work_within_2_s_of_finishing_a_task(
    manager: RecordingManager, workers: WorkerStarter
) -> None:
    first = manager.submit_job("first", [echo_task("first")])
    worker = await workers.start(manager.url, default_timing=True)
    await until(manager, lambda: manager.job(first).status == "completed", LONG_TIMEOUT, worker)
    submitted = time.monotonic()
    second = manager.submit_job("second", [echo_task("second")])
    (task,) = manager.job_tasks(second)
    await until(manager, lambda: task.worker_id is not None, LONG_TIMEOUT, worker)
    picked_after = time.monotonic() - submitted
    print(f"new work picked up {picked_after:.2f} s after it was queued")
    # At most the first 2 s wait after the empty answer, plus one request.
    assert picked_after < 2.3, f"new work was picked up {picked_after:.2f} s after it was queued"
    await until(manager, lambda: manager.job(second).status == "completed", LONG_TIMEOUT, worker)
    assert await worker.stop() == 0


@pytest.mark.slow
async def test_idle_worker_sends_at_most_3_requests_a_minute(
    manager: RecordingManager, workers: WorkerStarter
) -> None:
    worker = await workers.start(manager.url, default_timing=True)
    record = await wait_awake(manager, worker)
    # Time is what is measured here: the first idle minute backs off, the second is counted.
    await asyncio.sleep(60)
    since = time.monotonic()
    await asyncio.sleep(60)
    sent = manager.count_requests(since=since, worker_id=record.id)
    print(f"an idle worker sent {sent} request(s) in its second idle minute")
    assert 1 <= sent <= 3, f"an idle worker sent {sent} requests in a minute"
    assert worker.returncode is None
    assert await worker.stop() == 0


# ---- finding the Manager -----------------------------------------------------------------------------


async def test_worker_without_manager_url_finds_it_by_ssdp(
    manager: RecordingManager, workers: WorkerStarter
) -> None:
    address = await manager.start_ssdp("127.0.0.1", 0)
    job_id = manager.submit_job("found", [echo_task("found")])
    worker = await workers.start(None, env={"FLAMENCO_WORKER_MANAGER_DISCOVERY_ADDRESS": address})
    await until(manager, lambda: manager.job(job_id).status == "completed", LONG_TIMEOUT, worker)
    assert manager.ssdp_responder is not None and manager.ssdp_responder.searches >= 1
    assert f"found Flamenco Manager Local test Manager 3.5-local at {manager.url}/" in worker.agent_log_text()
    assert await worker.stop() == 0


async def test_sigterm_while_searching_exits_cleanly(workers: WorkerStarter) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        worker = await workers.start(None, env={
            "FLAMENCO_WORKER_MANAGER_DISCOVERY_ADDRESS": f"127.0.0.1:{silent.getsockname()[1]}",
            "FLAMENCO_WORKER_MANAGER_DISCOVERY_TIMEOUT_SECONDS": "300",
        })
        await worker.wait_log("searching for a Flamenco Manager by UPnP/SSDP at 127.0.0.1:")
        assert await worker.stop() == 0


# ---- pre-task checks -----------------------------------------------------------------------------------


def status_json(home: Path, config: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [*worker_executable(), "status", "--json", "--home", str(home), "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


async def test_failing_pre_task_check_holds_tasks_back_until_it_passes(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path
) -> None:
    share = tmp_path / "share"  # "not mounted" yet
    worker = await workers.start(manager.url, env={"FLAMENCO_WORKER_PRE_TASK_CHECK_READ": str(share)})
    record = await wait_awake(manager, worker)
    job_id = manager.submit_job("needs-share", [echo_task("needs-share")])
    problem = f"pre_task_check_read: {share}: cannot read: No such file or directory"
    await worker.wait_log(f"not fetching tasks: {problem}; checking again every 30 s")

    info = await asyncio.to_thread(status_json, worker.home, workers.empty_config)
    assert info["running"] and info["failed_checks"] == [problem]
    assert manager.count("POST", "/task") == 0, "no task is fetched while a check fails"
    assert manager.job(job_id).status == "queued"
    assert record.status == "awake"

    share.mkdir()
    await until(manager, lambda: manager.job(job_id).status == "completed", LONG_TIMEOUT, worker)
    await worker.wait_log("pre-task checks pass again; fetching tasks")
    info = await asyncio.to_thread(status_json, worker.home, workers.empty_config)
    assert info["failed_checks"] == []
    assert await worker.stop() == 0


# ---- names ------------------------------------------------------------------------------------------


async def test_flamenco_3_name_variable_names_the_worker(
    manager: RecordingManager, workers: WorkerStarter
) -> None:
    worker = await workers.start(manager.url, name=None, env={"FLAMENCO_WORKER_NAME": "render-node-07"})
    record = await wait_awake(manager, worker)
    assert record.name == "render-node-07"
    assert await worker.stop() == 0


# ---- adaptor connection files ---------------------------------------------------------------------------


async def test_two_workers_on_one_host_each_have_their_own_adaptor_daemon(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path
) -> None:
    """Every task names the same relative connection file: each worker's tasks find theirs in its home."""
    venv_bin = str(Path(sys.executable).parent)
    env = {"PATH": f"{venv_bin}:/usr/bin:/bin", "PYTHONPATH": str(FIXTURES)}
    adaptor = ["-m", "pid_adaptor", "daemon", "run", "--connection-file", "fdw-pid-job.json",
               "--init-data", "{}", "--idle-timeout", "60"]
    tasks = []
    for frame in range(1, 5):
        render = {"name": "exec", "parameters": {"exe": "python3",
                                                 "args": [*adaptor, "--run-data", json.dumps({"frame": frame})]},
                  "total_step_count": 1}
        # Long enough that both workers take tasks of this job at the same time.
        hold = {"name": "sleep", "parameters": {"duration_in_seconds": 1.5}, "total_step_count": 1}
        tasks.append({"name": f"render-{frame}", "task_type": "misc", "commands": [render, hold]})
    homes = [tmp_path / "worker-a", tmp_path / "worker-b"]
    started = [await workers.start(manager.url, home, env=env, name=home.name) for home in homes]
    await until(manager, lambda: sum(w.status == "awake" for w in manager.workers.values()) == 2, LONG_TIMEOUT)
    job_id = manager.submit_job("warm", tasks)
    try:
        await until(manager, lambda: manager.job(job_id).status in ("completed", "failed"), LONG_TIMEOUT)
        records = manager.job_tasks(job_id)
        report = "\n".join(f"--- {t.name} on {t.worker_id}: {t.status}\n{t.log}" for t in records)
        assert [t.status for t in records] == ["completed"] * 4, report
        served: dict[str, set[str]] = {}
        for task in records:
            assert task.worker_id is not None
            pids = {line.split("pid=")[1].split()[0] for line in task.log.splitlines()
                    if line.startswith("pid-adaptor run pid=")}
            served.setdefault(task.worker_id, set()).update(pids)
        assert len(served) == 2, f"both workers ran tasks: {report}"
        a, b = served.values()
        assert len(a) == len(b) == 1 and a != b, f"one daemon per worker: {served}"
        for home in homes:
            assert (home / "adaptor-connections" / "fdw-pid-job.json").is_file()
    finally:
        for home in homes:
            subprocess.run([sys.executable, "-m", "pid_adaptor", "daemon", "stop", "--connection-file",
                            str(home / "adaptor-connections" / "fdw-pid-job.json")],
                           env={**env, "PATH": f"{venv_bin}:/usr/bin:/bin"}, capture_output=True, timeout=60)
    for worker in started:
        assert await worker.stop() == 0
