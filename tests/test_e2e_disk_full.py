"""The disk holding the update queue fills up under a chatty task (a real, small tmpfs mount): no line is
lost, the child is paused on its pipe instead of the worker buffering, the log and `status` say so, and
everything flows again once space is freed."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    LONG_TIMEOUT,
    RecordingManager,
    WorkerStarter,
    assert_all_lines_in_order,
    python_script_task,
    until,
    wait_until,
    worker_executable,
)
from disks import fill, tmpfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")

DISK_BYTES = 32 * 2**20
ROOM_LEFT = 1536 * 1024  # what the ballast leaves free for the queue
LINES = 150_000  # about 9 MiB of output: far more than the room left
PAD = "x" * 50 + " line "


@pytest.fixture
def small_disk() -> Iterator[Path]:
    with tmpfs(f"{DISK_BYTES}", prefix="fdw-queue-disk-") as mount:
        yield mount


def blocked_on_its_pipe(pid: int) -> bool:
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False
    return "pipe_write" in wchan  # pipe_write, anon_pipe_write: asleep writing into a full pipe


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def status_of(home: Path, config: Path) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        *worker_executable(), "status", "--json", "--home", str(home), "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    data: dict[str, Any] = json.loads(out)
    return data


async def wait_for_status(home: Path, config: Path, problem: bool) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + LONG_TIMEOUT
    while True:
        info = await status_of(home, config)
        if bool(info.get("queue_problem")) is problem and info["running"]:
            return info
        assert asyncio.get_running_loop().time() < deadline, f"status never showed queue_problem={problem}: {info}"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("whole_home", [False, True], ids=["queue-on-a-full-disk", "whole-home-on-a-full-disk"])
async def test_full_disk_pauses_the_task_and_loses_nothing(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path, small_disk: Path, child_pids: list[int],
    whole_home: bool,
) -> None:
    home = small_disk / "home" if whole_home else tmp_path / "home"
    # The whole-home case: the pre-task free-space check of work_dir would (rightly) refuse this small disk.
    env = ({"FLAMENCO_WORKER_WORK_DIR_MIN_FREE_MIB": "0"} if whole_home
           else {"FLAMENCO_WORKER_TASK_UPDATE_QUEUE_DB": str(small_disk / "queue.db")})
    pid_file = tmp_path / "child.pid"
    script = (
        f"import os, sys\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        f"for i in range(1, {LINES + 1}):\n    sys.stdout.write({PAD!r} + str(i) + '\\n')\n"
    )
    job = manager.submit_job("chatty", [python_script_task("chatty", script)])
    task_id = manager.job_tasks(job)[0].id
    # The Manager takes no update for now, so the backlog stays on the small disk.
    manager.faults.fail_next("/api/v3/worker/task/*", 503, times=10**9, method="POST")
    ballast = fill(small_disk, ROOM_LEFT)
    worker = await workers.start(manager.url, home, env=env)

    await wait_until(pid_file.exists, LONG_TIMEOUT, "the child to start")
    child = int(pid_file.read_text())
    child_pids.append(child)
    await wait_until(lambda: blocked_on_its_pipe(child), LONG_TIMEOUT, "the child to wait on its full pipe")
    info = await wait_for_status(home, workers.empty_config, problem=True)
    assert "is full" in info["queue_problem"], info
    if not whole_home:  # with the whole home full, the agent log cannot take the line (the journal can)
        assert "cannot write the update queue" in worker.agent_log_text()
    # Still paused, not failed.  A full disk now and then takes one more small commit, which lets the
    # child write a little before it blocks again: wait for it to be blocked, not for one instant.
    assert Path(f"/proc/{child}").exists(), "the child is still there"
    await wait_until(lambda: blocked_on_its_pipe(child), LONG_TIMEOUT, "the child to be paused on its pipe again")
    assert rss_bytes(worker.pid) < 150 * 2**20, "the worker does not buffer what the disk cannot take"
    assert manager.task(task_id).status == "active"

    # Space comes back and the Manager takes updates again: every line arrives, in order.
    ballast.unlink()
    manager.faults.clear()
    await until(manager, lambda: manager.task(task_id).status == "completed", LONG_TIMEOUT, worker)
    assert_all_lines_in_order(manager.task(task_id).log, LINES, prefix=PAD)
    await wait_for_status(home, workers.empty_config, problem=False)
    assert await worker.stop() == 0
