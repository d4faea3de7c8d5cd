"""End to end: a task's processes are one unit, whatever they do (setsid, double fork, closed output).

Real workers against the local Manager; each task process escapes its process group the way a
daemon does, and must still die at the task's end, on abort, on shutdown, and after the worker was
killed with SIGKILL (the next worker on the same home kills it before it runs a task).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    LONG_TIMEOUT,
    RecordingManager,
    WorkerProcess,
    WorkerStarter,
    pid_alive,
    until,
    wait_until,
)

from flamenco_deadline_worker.runner import containment

# argv: pid file, then "exit" (the child ends once the escapee runs), "stay" (it runs on) or "deaf"
# (runs on, SIGTERM ignored by both).
# The escapee calls setsid and forks twice, so it is in no process group or session of the task;
# it keeps the task's stdout open (a daemon that forgot to close it).
ESCAPING_CHILD = """\
import os, signal, sys, time
pid_file, then = sys.argv[1], sys.argv[2]
if then == 'deaf':
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(pid_file + '.tmp', 'w') as f:
            f.write(str(os.getpid()))
        os.rename(pid_file + '.tmp', pid_file)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(0.05)
        os._exit(0)
    os._exit(0)
os.wait()
while not os.path.exists(pid_file):
    time.sleep(0.02)
with open(pid_file + '.parent.tmp', 'w') as f:
    f.write(str(os.getpid()))
os.rename(pid_file + '.parent.tmp', pid_file + '.parent')
print('escapee running', flush=True)
if then in ('stay', 'deaf'):
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(0.05)
"""


def cgroup_usable() -> bool:
    mount, own = containment.cgroup2_mount(), containment.own_cgroup()
    return (
        os.geteuid() == 0 and mount is not None and own is not None
        and os.access(mount / own.lstrip("/"), os.W_OK)
    )


MODES = [
    pytest.param("cgroup", marks=pytest.mark.skipif(
        not cgroup_usable(), reason="needs root and a writable cgroup v2 tree (the cgroup containment)")),
    "subreaper",
    # The fallback: it finds processes by their FLAMENCO_TASK_UNIT variable, which these keep.
    "process-group",
]
MODE_LOG = {"cgroup": "contained in cgroup v2", "subreaper": "child subreaper (PR_SET_CHILD_SUBREAPER)",
            "process-group": "contained by process group only"}


def escaping_task(name: str, pid_file: Path, then: str) -> dict[str, Any]:
    command = {"name": "exec", "parameters": {"exe": sys.executable, "args": ["-c", ESCAPING_CHILD,
                                                                               str(pid_file), then]},
               "total_step_count": 1}
    return {"name": name, "task_type": "misc", "commands": [command]}


async def start_escaping_task(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path, mode: str, then: str,
    child_pids: list[int], **settings: str,
) -> tuple[WorkerProcess, str, int, int]:
    """A worker whose task has a running escapee; answers worker, job id, escapee pid, child pid."""
    pid_file = tmp_path / "escapee.pid"
    job_id = manager.submit_job("escape", [escaping_task("escape", pid_file, then)])
    env = {"FLAMENCO_WORKER_PROCESS_CONTAINMENT": mode}
    env.update({f"FLAMENCO_WORKER_{k.upper()}": v for k, v in settings.items()})
    worker = await workers.start(manager.url, env=env)
    await worker.wait_log(MODE_LOG[mode])
    await wait_until(lambda: Path(f"{pid_file}.parent").exists(), LONG_TIMEOUT, "the escapee is running")
    escapee, child = int(pid_file.read_text()), int(Path(f"{pid_file}.parent").read_text())
    child_pids.extend([escapee, child])
    if then == "exit":  # the command is over now: the worker may already have killed the escapee
        return worker, job_id, escapee, child
    assert pid_alive(escapee)
    if mode == "cgroup":
        assert "task-" in Path(f"/proc/{escapee}/cgroup").read_text(), "the escapee is in the task's cgroup"
    return worker, job_id, escapee, child


@pytest.mark.parametrize("mode", MODES)
async def test_a_setsid_double_fork_dies_with_its_command_and_the_held_pipe_does_not_hang_it(
    mode: str, manager: RecordingManager, workers: WorkerStarter, tmp_path: Path, child_pids: list[int]
) -> None:
    worker, job_id, escapee, _child = await start_escaping_task(
        manager, workers, tmp_path, mode, "exit", child_pids)
    # The child exited; the escapee still holds its stdout: the command ends anyway, and the escapee dies.
    await until(manager, lambda: manager.job(job_id).status == "completed", LONG_TIMEOUT, worker)
    await wait_until(lambda: not pid_alive(escapee), LONG_TIMEOUT, f"escapee {escapee} is gone")
    (task,) = manager.job_tasks(job_id)
    assert "escapee running" in task.log
    assert await worker.stop() == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["canceled", "sigterm", "second-signal"])
async def test_abort_and_shutdown_kill_every_descendant(
    how: str, mode: str, manager: RecordingManager, workers: WorkerStarter, tmp_path: Path,
    child_pids: list[int],
) -> None:
    then, grace = ("deaf", "600") if how == "second-signal" else ("stay", "2")
    worker, job_id, escapee, child = await start_escaping_task(
        manager, workers, tmp_path, mode, then, child_pids, kill_grace_seconds=grace)
    (task,) = manager.job_tasks(job_id)
    if how == "canceled":
        manager.cancel_task(task.id)
        await wait_until(lambda: not pid_alive(escapee), LONG_TIMEOUT, f"escapee {escapee} is gone")
        assert worker.returncode is None
        assert await worker.stop() == 0
    elif how == "sigterm":
        worker.send_signal(signal.SIGTERM)
        assert await worker.wait_exit() == 0, worker.describe()
    else:
        # A task that ignores SIGTERM holds the clean shutdown; the second signal kills it all at once.
        worker.send_signal(signal.SIGTERM)
        await worker.wait_output("shutting down cleanly")
        worker.send_signal(signal.SIGTERM)
        assert await worker.wait_exit() == 4, worker.describe()
    await wait_until(lambda: not pid_alive(escapee), LONG_TIMEOUT, f"escapee {escapee} is gone")
    assert not pid_alive(child)


@pytest.mark.parametrize("mode", MODES)
async def test_processes_of_a_killed_worker_are_killed_before_the_next_one_runs_a_task(
    mode: str, manager: RecordingManager, workers: WorkerStarter, tmp_path: Path, child_pids: list[int]
) -> None:
    worker, job_id, escapee, child = await start_escaping_task(
        manager, workers, tmp_path, mode, "stay", child_pids)
    await worker.kill()  # SIGKILL: no chance to clean up
    assert pid_alive(escapee) and pid_alive(child), "SIGKILL of the worker alone kills no task process"
    (tmp_path / "escapee.pid").unlink()
    (tmp_path / "escapee.pid.parent").unlink()

    again = await workers.start(manager.url, worker.home, env={"FLAMENCO_WORKER_PROCESS_CONTAINMENT": mode})
    await again.wait_log("left running by a worker that did not stop cleanly")
    assert not pid_alive(escapee) and not pid_alive(child)
    # The Manager gives the task back to the restarted worker, which runs it alone.
    await wait_until(lambda: Path(f"{tmp_path / 'escapee.pid'}.parent").exists(), LONG_TIMEOUT,
                     "the task runs again")
    child_pids.append(int((tmp_path / "escapee.pid").read_text()))
    assert await again.stop() == 0
    assert not pid_alive(int((tmp_path / "escapee.pid").read_text()))


# A job-scoped daemon, the way the adaptor runtime starts one: its own session, FLAMENCO_TASK_KEEP=1.
KEPT_DAEMON = """\
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(sys.argv[1] + '.tmp', 'w') as f:
            f.write(str(os.getpid()))
        os.rename(sys.argv[1] + '.tmp', sys.argv[1])
        env = dict(os.environ, FLAMENCO_TASK_KEEP='1')
        os.execve(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)'], env)
    os._exit(0)
os.wait()
print('daemon started', flush=True)
"""


def kept_daemon_task(name: str, pid_file: Path) -> dict[str, Any]:
    command = {"name": "exec", "parameters": {"exe": sys.executable, "args": ["-c", KEPT_DAEMON, str(pid_file)]},
               "total_step_count": 1}
    return {"name": name, "task_type": "misc", "commands": [command]}


@pytest.mark.parametrize("mode", MODES)
async def test_a_kept_daemon_serves_its_job_and_dies_when_another_job_starts_and_at_shutdown(
    mode: str, manager: RecordingManager, workers: WorkerStarter, tmp_path: Path, child_pids: list[int]
) -> None:
    first, second = tmp_path / "first.pid", tmp_path / "second.pid"
    job_a = manager.submit_job("a", [kept_daemon_task("a1", first)])
    worker = await workers.start(manager.url, env={"FLAMENCO_WORKER_PROCESS_CONTAINMENT": mode})
    await until(manager, lambda: manager.job(job_a).status == "completed", LONG_TIMEOUT, worker)
    daemon_a = int(first.read_text())
    child_pids.append(daemon_a)
    assert pid_alive(daemon_a), "a kept process outlives its command"

    job_b = manager.submit_job("b", [kept_daemon_task("b1", second)])
    await until(manager, lambda: manager.job(job_b).status == "completed", LONG_TIMEOUT, worker)
    daemon_b = int(second.read_text())
    child_pids.append(daemon_b)
    await wait_until(lambda: not pid_alive(daemon_a), LONG_TIMEOUT, "job a's daemon ends when job b starts")
    assert pid_alive(daemon_b)

    assert await worker.stop() == 0
    assert not pid_alive(daemon_b), "the worker's shutdown ends the kept daemon"
