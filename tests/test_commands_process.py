"""Process control of task commands: hang guards, abort of a whole process tree, oom_score_adj, job_user."""

from __future__ import annotations

import asyncio
import pwd
from pathlib import Path

from helpers_commands import (
    cmd,
    command_json,
    group_members,
    harness,
    process_alive,
    task_json,
    wait_until,
    worker_output,
    worker_process,
)

from flamenco_deadline_worker.runner.commands.blender import BlenderRender
from flamenco_deadline_worker.runner.process import ProcessLimits
from flamenco_deadline_worker.runner.runner import Outcome
from flamenco_deadline_worker.testing.manager import LocalManager

# A child that starts a grandchild which ignores SIGTERM, writes both pids, prints, then goes silent.
TREE_SCRIPT = """
sh -c 'trap "" TERM; exec sleep 300' &
echo "$$ $!" > "$1.tmp" && mv "$1.tmp" "$1"
echo "child and grandchild started"
while :; do sleep 1; done
"""


def read_pids(path: Path) -> tuple[int, int]:
    child, grandchild = path.read_text().split()
    return int(child), int(grandchild)


async def test_no_output_guard_fails_the_task_and_kills_the_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    limits = ProcessLimits(no_output_timeout=4.0, kill_grace=1.0)
    async with harness(tmp_path / "home", limits=limits) as h:
        run = await h.run(cmd("exec", exe="sh", args=["-c", TREE_SCRIPT, "tree", str(pids)]))
    assert run.outcome is Outcome.FAILED
    assert "no_output_timeout_seconds=4 reached" in run.final_activity, run.final_activity
    assert "child and grandchild started" in run.log
    child, grandchild = read_pids(pids)
    # The group was SIGTERMed, then SIGKILLed after the grace: the TERM-ignoring grandchild is gone too.
    await wait_until(lambda: not process_alive(grandchild), 10, f"grandchild {grandchild} to go")
    assert not process_alive(child)
    assert group_members(child) == []


async def test_command_timeout_fails_the_task_naming_the_limit(tmp_path: Path) -> None:
    limits = ProcessLimits(command_timeout=3.0, no_output_timeout=60.0, kill_grace=1.0)
    script = "while :; do echo tick; sleep 0.2; done"  # keeps printing: only the total limit can fire
    async with harness(tmp_path / "home", limits=limits) as h:
        run = await h.run(cmd("exec", exe="sh", args=["-c", script]))
    assert run.outcome is Outcome.FAILED
    assert "command_timeout_seconds=3 reached" in run.final_activity, run.final_activity
    assert "tick" in run.log


async def test_abort_kills_the_grandchild(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    async with harness(tmp_path / "home", limits=ProcessLimits(kill_grace=1.0)) as h:
        task = h.task(cmd("exec", exe="sh", args=["-c", TREE_SCRIPT, "tree", str(pids)]))
        running = asyncio.ensure_future(h.runner.run(task))
        await wait_until(pids.exists, 30, "the child to write its pids")
        child, grandchild = read_pids(pids)
        assert process_alive(grandchild)
        assert h.runner.abort("test says stop")
        outcome = await asyncio.wait_for(running, 30)
        run = await h.finish(outcome)
    assert run.outcome is Outcome.ABORTED
    assert "task aborted: test says stop" in run.log
    await wait_until(lambda: not process_alive(grandchild), 10, f"grandchild {grandchild} to go")
    assert group_members(child) == []
    assert not (tmp_path / "home" / "work" / task.id).exists(), "the task's working directory is removed"


async def test_children_get_oom_score_adj_and_a_private_work_dir(tmp_path: Path) -> None:
    script = 'cat /proc/self/oom_score_adj; pwd; echo "worker oom $0"'
    own = Path("/proc/self/oom_score_adj").read_text().strip()
    async with harness(tmp_path / "home", limits=ProcessLimits(oom_score_adj=777)) as h:
        run = await h.run(cmd("exec", exe="sh", args=["-c", script, own]))
    assert run.outcome is Outcome.COMPLETED, run.log
    lines = run.log.splitlines()
    assert "777" in lines
    assert str(tmp_path / "home" / "work" / "task-1") in lines
    assert Path("/proc/self/oom_score_adj").read_text().strip() == own, "the worker's own score is untouched"
    assert not (tmp_path / "home" / "work" / "task-1").exists()


async def test_no_shell_anywhere(tmp_path: Path) -> None:
    """Shell syntax in exeArgs and args reaches the child as plain text."""
    marker = tmp_path / "pwned"
    params = BlenderRender.validate({
        "exe": "echo",
        "exeArgs": f"-n 'two words' ; touch {marker}",
        "argsBefore": ["$(touch " + str(marker) + ")"],
        "blendfile": "",
        "args": ["|", "`id`", "&&", "x"],
    })
    argv = BlenderRender.command_line(params)
    assert argv[1:] == ["-n", "two words", ";", "touch", str(marker), f"$(touch {marker})", "|", "`id`", "&&", "x"]
    async with harness(tmp_path / "home") as h:
        run = await h.run(cmd("blender-render", **params))
    assert run.outcome is Outcome.COMPLETED, run.log
    assert not marker.exists()
    assert f"two words ; touch {marker} $(touch {marker}) | `id` && x" in run.log


# ---- job_user, through the real worker process ----------------------------------------------------


async def test_job_user_runs_task_processes_as_that_user(job_user: str, open_home: Path) -> None:
    uid = pwd.getpwnam(job_user).pw_uid
    script = 'echo "uid=$(id -u) user=$USER"; echo "oom=$(cat /proc/self/oom_score_adj)"; touch probe && echo wrote'
    manager = LocalManager(seed=3)
    await manager.start()
    try:
        job = manager.submit_job("as job user", [task_json("t", "misc", command_json("exec", exe="sh",
                                                                                      args=["-c", script]))])
        task_id = manager.job(job).task_ids[0]
        # The no-output guard turns a child stuck before exec into a failed task with a reason, not a hang.
        async with worker_process(manager.url, open_home, job_user=job_user, oom_score_adj="612",
                                  no_output_timeout_seconds="60"):
            try:
                await manager.wait_for(lambda: manager.task(task_id).status in ("completed", "failed"), 120)
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\nworker output:\n{worker_output(open_home)}") from None
        task = manager.task(task_id)
        assert task.status == "completed", f"{task.log}\nworker output:\n{worker_output(open_home)}"
        assert f"uid={uid} user={job_user}" in task.log
        assert "oom=612" in task.log
        assert "wrote" in task.log  # the per-task working directory is the job user's
        assert list((open_home / "flamenco-worker-tasks").iterdir()) == [], "working directories removed"
    finally:
        await manager.stop()
