"""The README's two warm-adaptor patterns, run through the real `flamenco-worker`.

- Flamenco: a job whose tasks are `exec` commands running ``daemon run --init-data ...`` (the first task starts
  the daemon, later ones reuse it) and a last task running ``daemon stop``; built exactly like the README's
  ``compileJob``.
- Open Job Description: the README's job template itself (read from README.md), with a step environment whose
  onEnter runs ``daemon start`` and onExit ``daemon stop``, each taskRun ``daemon run``; served by the Deadline
  emulator to ``flamenco-worker --backend deadline``.

Both run against tests/adaptor_fixtures/pid_adaptor.py, which prints the daemon's pid in every hook, so the
tests can tell that one daemon served every task; the ``blender`` tests run the Blender adaptor itself.
``python3`` in the README's commands is the venv's (its bin directory is put first on the worker's PATH).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingManager, WorkerStarter, pid_alive, until, wait_awake, wait_until

from flamenco_deadline_worker.testing.blender_scene import make_scene

HERE = Path(__file__).resolve().parent
# The two patterns are documented on the adaptors page (they were in README.md before it moved to docs/).
README = HERE.parent / "docs" / "adaptors.md"
FIXTURES = HERE / "adaptor_fixtures"
VENV_BIN = Path(sys.executable).parent
BLENDER_MODULE = "flamenco_deadline_worker.adaptors.blender"
PID_MODULE = "pid_adaptor"  # tests/adaptor_fixtures/pid_adaptor.py

needs_blender = pytest.mark.skipif(
    shutil.which("blender") is None, reason="needs Debian's blender on PATH (apt-get install blender)"
)


def task_env() -> dict[str, str]:
    """What the README assumes of a worker host: `python3` has the package; the test adaptor is importable."""
    path = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])
    pythonpath = os.pathsep.join(p for p in (str(FIXTURES), os.environ.get("PYTHONPATH", "")) if p)
    return {"PATH": path, "PYTHONPATH": pythonpath}


def pids_in(text: str, hook: str) -> list[int]:
    return [int(m) for m in re.findall(rf"^pid-adaptor {hook} pid=(\d+)", text, re.MULTILINE)]


@pytest.fixture
def daemon_pids() -> Iterator[list[int]]:
    """Pids of adaptor daemons (and Blenders) a test saw; any still running at its end are killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def remember_daemon(connection_file: Path, pids: list[int]) -> None:
    """Note the pid in a connection file (if any) so that a failing test leaves no daemon behind."""
    try:
        pids.append(int(json.loads(connection_file.read_text())["pid"]))
    except (OSError, ValueError, KeyError):
        pass


# ---- Blender scene ---------------------------------------------------------------------------------

def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path} was not rendered"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- Flamenco ----------------------------------------------------------------------------------------


def readme_flamenco_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Flamenco: a job type whose tasks share a warm Blender", 1)[1]
    return section.split("```js\n", 1)[1].split("```", 1)[0]


def warm_job_tasks(module: str, conn: Path, init: dict[str, Any], frames: list[int]) -> list[dict[str, Any]]:
    """The README's compileJob in Python: one `exec` task per frame, then a task stopping the daemon.

    The README's script cannot run here (the local manager takes compiled tasks), so the pieces this
    mirrors are checked to be in it.
    """
    example = readme_flamenco_example()
    for piece in ('exe: "python3"', '"daemon", "run"', '"--connection-file", conn, "--init-data", init',
                  '"--idle-timeout", "300"', '"--run-data", JSON.stringify({ frame:', '"daemon", "stop"',
                  "stop.addDependency(task)"):
        assert piece in example, f"the README's Flamenco example no longer has {piece!r}"
    adaptor = ["-m", module, "daemon", "run",
               "--connection-file", str(conn), "--init-data", json.dumps(init), "--idle-timeout", "300"]
    tasks: list[dict[str, Any]] = []
    for frame in frames:
        args = [*adaptor, "--run-data", json.dumps({"frame": frame})]
        command = {"name": "exec", "parameters": {"exe": "python3", "args": args}, "total_step_count": 1}
        tasks.append({"name": f"render-{frame}", "task_type": "blender", "commands": [command]})
    stop_args = ["-m", module, "daemon", "stop", "--connection-file", str(conn)]
    stop = {"name": "exec", "parameters": {"exe": "python3", "args": stop_args}, "total_step_count": 1}
    tasks.append({"name": "stop-adaptor", "task_type": "blender", "commands": [stop],
                  "depends_on": [t["name"] for t in tasks]})
    return tasks


async def run_flamenco_job(
    manager: RecordingManager, workers: WorkerStarter, tasks: list[dict[str, Any]], conn: Path,
    daemon_pids: list[int], timeout: float,
) -> list[Any]:
    job_id = manager.submit_job("warm-adaptor", tasks, job_type="warm-blender-render")
    worker = await workers.start(manager.url, env=task_env())
    await wait_awake(manager, worker)

    def settled() -> bool:
        remember_daemon(conn, daemon_pids)
        return manager.job(job_id).status in ("completed", "failed")

    await until(manager, settled, timeout, worker)
    records = manager.job_tasks(job_id)
    report = "\n".join(f"--- {t.name}: {t.status}\n{t.log}" for t in records)
    assert manager.job(job_id).status == "completed", report
    assert [t.status for t in records] == ["completed"] * len(records), report
    assert await worker.stop() == 0, worker.describe()
    return records


async def test_flamenco_exec_tasks_share_one_daemon_and_the_last_task_stops_it(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path, daemon_pids: list[int]
) -> None:
    conn = tmp_path / "fdw-pid-job.json"
    init = {"scene_file": "/shots/a.blend", "output_path": "/renders/a/frame_####"}
    tasks = warm_job_tasks(PID_MODULE, conn, init, [1, 2, 3])
    *renders, stop = await run_flamenco_job(manager, workers, tasks, conn, daemon_pids, 120)

    # The first task started the daemon, with the init data; no later task started another.
    started = pids_in(renders[0].log, "start")
    assert len(started) == 1, renders[0].log
    assert f"init={json.dumps(init, sort_keys=True)}" in renders[0].log
    assert all(pids_in(t.log, "start") == [] for t in renders[1:]), [t.log for t in renders[1:]]
    # Each task's log holds the adaptor's output for its frame, from that one daemon.
    served = []
    for frame, task in enumerate(renders, start=1):
        assert f'run={{"frame": {frame}}}' in task.log, task.log
        assert "openjd_progress: 100" in task.log, task.log
        served += pids_in(task.log, "run")
    assert served == started * 3, "one daemon process served all three tasks"
    (pid,) = started
    daemon_pids.append(pid)
    # The stop task stopped that daemon: on_stop ran in it, the process is gone, the connection file too.
    assert pids_in(stop.log, "stop") == [pid], stop.log
    await wait_until(lambda: not pid_alive(pid), 60, f"the daemon (pid {pid}) to exit")
    assert not conn.exists()


@pytest.mark.blender
@needs_blender
async def test_flamenco_blender_renders_frames_in_one_warm_blender(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path, daemon_pids: list[int]
) -> None:
    frames = [1, 2]
    scene = tmp_path / "scene.blend"
    await asyncio.to_thread(make_scene, scene)
    conn = tmp_path / "fdw-blender-job.json"
    init = {"scene_file": str(scene), "output_path": str(tmp_path / "out" / "frame_####")}
    tasks = warm_job_tasks(BLENDER_MODULE, conn, init, frames)
    *renders, stop = await run_flamenco_job(manager, workers, tasks, conn, daemon_pids, 300)

    blenders: set[int] = set()
    for frame, task in zip(frames, renders, strict=True):
        assert f"Saved: '{tmp_path}/out/frame_{frame:04d}.png'" in task.log, task.log
        assert "openjd_progress: 100" in task.log, task.log
        blenders |= {int(p) for p in re.findall(rf"^INFO: rendering frame {frame} in Blender pid (\d+)$",
                                                 task.log, re.MULTILINE)}
    assert len(blenders) == 1, f"one warm Blender rendered every frame, saw pids {blenders}"
    (blender,) = blenders
    daemon_pids.append(blender)
    for frame in frames:
        assert_png(tmp_path / "out" / f"frame_{frame:04d}.png")
    assert "Blender exited with code 0" in stop.log, stop.log
    await wait_until(lambda: not pid_alive(blender), 60, f"Blender (pid {blender}) to exit")
    assert not conn.exists()


# ---- Open Job Description ----------------------------------------------------------------------------


def readme_job_template(module: str) -> dict[str, Any]:
    """The job template of the README's "Open Job Description: a step environment", adaptor module swapped."""
    yaml = pytest.importorskip("yaml")
    text = README.read_text(encoding="utf-8")
    section = text.split("## Open Job Description: a step environment", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    return yaml.safe_load(block.replace(BLENDER_MODULE, module))


@pytest.fixture
def deadline(tmp_path: Path) -> Iterator[Any]:
    pytest.importorskip("boto3")
    pytest.importorskip("openjd.sessions")
    from deadline_agent import agent_runner

    runner = agent_runner(tmp_path)
    start = next(runner)
    yield lambda template, parameters: start(template, env=task_env(), parameters=parameters)
    next(runner, None)  # stops the agents and emulators it started


def run_readme_template(deadline: Any, module: str, parameters: dict[str, Any], timeout: float) -> tuple[Any, str]:
    """Run the README's template to the end of its session; answers (the session, its log text)."""
    emu, agent = deadline(readme_job_template(module), parameters)
    agent.until(lambda s: any(ses.closed for ses in s.sessions.values()), timeout, "the session to end")
    session = emu.read(lambda s: next(iter(s.sessions.values())))
    group = emu.state.job.log_group
    order = [(a.kind, (a.env_id or "").rsplit(":", 1)[-1], a.status) for a in session.actions]
    local = agent.home / "flamenco-worker-logs" / emu.state.job.queue_id / f"{session.id}.log"
    local_text = local.read_text(errors="replace") if local.exists() else ""
    assert order == [
        ("envEnter", "WarmBlender", "SUCCEEDED"),
        *[("taskRun", "", "SUCCEEDED")] * (len(order) - 2),
        ("envExit", "WarmBlender", "SUCCEEDED"),
    ], f"{order}\n{local_text[-6000:]}"
    assert emu.read(lambda s: sorted(s.task_statuses().values())) == ["SUCCEEDED"] * (len(order) - 2)
    # The envExit output is the last thing the session logs; wait until CloudWatch has it.
    marker = "pid-adaptor stop" if module == PID_MODULE else "Blender exited with code"
    agent.until(lambda s: marker in s.log_text(group, session.id), 60, "the envExit output in CloudWatch")
    text = emu.read(lambda s: s.log_text(group, session.id))
    assert marker in local.read_text(errors="replace"), "the local session log has it too"
    assert emu.read(lambda s: list(s.violations)) == []
    assert agent.stop() == 0, agent.output()[-3000:]
    return session, text


def test_openjd_step_environment_one_daemon_serves_every_task(deadline: Any, daemon_pids: list[int]) -> None:
    params = {"SceneFile": "/shots/a.blend", "Frames": "1-3"}
    session, text = run_readme_template(deadline, PID_MODULE, params, 180)
    assert [a.kind for a in session.actions].count("taskRun") == 3

    started = pids_in(text, "start")
    assert len(started) == 1, text
    daemon_pids.extend(started)
    assert 'init={"output_path": "/renders/frame_####", "scene_file": "/shots/a.blend"}' in text, text
    assert pids_in(text, "run") == started * 3, "one daemon process served all three tasks"
    for frame in (1, 2, 3):
        assert f'run={{"frame": {frame}}}' in text
    # Output order: enter, the three tasks, exit.
    marks = [text.index(m) for m in ("pid-adaptor start", 'run={"frame": 1}', 'run={"frame": 3}', "pid-adaptor stop")]
    assert marks == sorted(marks)
    (pid,) = started
    assert pids_in(text, "stop") == [pid]
    wait_for_exit(pid, 60, "the daemon stopped by envExit")


@pytest.mark.blender
@needs_blender
def test_openjd_step_environment_blender_renders_in_one_warm_blender(
    deadline: Any, daemon_pids: list[int], tmp_path: Path
) -> None:
    scene = tmp_path / "scene.blend"
    make_scene(scene)
    params = {"SceneFile": str(scene), "OutputPattern": str(tmp_path / "out" / "frame_####"), "Frames": "1-2"}
    _, text = run_readme_template(deadline, BLENDER_MODULE, params, 300)
    blenders = {int(p) for p in re.findall(r"^INFO: rendering frame \d+ in Blender pid (\d+)$", text, re.MULTILINE)}
    assert len(blenders) == 1, f"one warm Blender rendered every frame, saw pids {blenders}\n{text}"
    daemon_pids.extend(blenders)
    for frame in (1, 2):
        assert f"Saved: '{tmp_path}/out/frame_{frame:04d}.png'" in text
        assert_png(tmp_path / "out" / f"frame_{frame:04d}.png")
    (blender,) = blenders
    wait_for_exit(blender, 60, "Blender closed by envExit")


def wait_for_exit(pid: int, timeout: float, what: str) -> None:
    """Block until ``pid`` is gone (sync tests; the async ones use conftest.wait_until)."""
    asyncio.run(wait_until(lambda: not pid_alive(pid), timeout, f"{what} (pid {pid})"))
