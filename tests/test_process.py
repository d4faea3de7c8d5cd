"""Child processes: output handling and process-group kill, with real subprocesses."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from flamenco_deadline_worker.runner.process import (
    ChildProcess,
    LineSplitter,
    ProcessLimits,
    ProcessTimeout,
    run_process,
)
from flamenco_deadline_worker.taskenv import task_environment


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_line_splitter_keeps_bad_bytes_visible_and_splits_long_lines() -> None:
    lines: list[str] = []
    splitter = LineSplitter(lines.append, max_line_bytes=10)
    splitter.feed(b"caf\xc3")
    splitter.feed(b"\xa9 ok\r\nbad \xff byte\n")
    splitter.feed(b"x" * 25)
    splitter.feed(b"\nno newline at end")  # 17 bytes: split at 10 too
    splitter.close()
    assert lines == [
        "café ok",
        "bad \\xff byte",
        "x" * 10,
        "x" * 10,
        "x" * 5,
        "no newline",
        " at end",
    ]


async def test_output_is_streamed_and_exit_code_returned() -> None:
    lines: list[str] = []
    script = "import sys\nfor i in range(3): print(i, flush=True)\nprint('err', file=sys.stderr)\nsys.exit(7)"
    code = await run_process([sys.executable, "-c", script], lines.append)
    assert code == 7
    assert lines[:3] == ["0", "1", "2"] and "err" in lines


async def test_cancel_kills_the_whole_group_including_grandchildren(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    ready = asyncio.Event()

    def on_line(line: str) -> None:
        if line == "ready":
            ready.set()

    running = asyncio.ensure_future(
        run_process([sys.executable, "-c", script], on_line, limits=ProcessLimits(kill_grace=5))
    )
    await asyncio.wait_for(ready.wait(), 60)
    parent, grandchild = (int(p) for p in pids.read_text().split())
    running.cancel()
    try:
        await asyncio.wait_for(running, 60)
    except asyncio.CancelledError:
        pass
    assert not pid_alive(parent)
    for _ in range(600):  # the grandchild is reaped by init; give it up to 60 s under load
        if not pid_alive(grandchild):
            break
        await asyncio.sleep(0.1)
    assert not pid_alive(grandchild)


async def test_sigterm_ignoring_child_is_killed_after_grace() -> None:
    script = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(600)"
    )
    ready = asyncio.Event()
    pid_holder: list[int] = []

    async def remember(child: ChildProcess) -> None:
        pid_holder.append(child.pid)

    running = asyncio.ensure_future(
        run_process(
            [sys.executable, "-c", script],
            lambda line: ready.set() if line == "ready" else None,
            limits=ProcessLimits(kill_grace=0.5),
            on_spawn=remember,
        )
    )
    await asyncio.wait_for(ready.wait(), 60)
    running.cancel()
    try:
        await asyncio.wait_for(running, 60)
    except asyncio.CancelledError:
        pass
    assert not pid_alive(pid_holder[0])


# Closes its stdout and stderr, says so through a file, then runs on without a word.
SILENT_AFTER_CLOSE = """\
import os, sys, time
os.close(1)
os.close(2)
open(sys.argv[1], 'w').write(str(os.getpid()))
time.sleep(600)
"""


@pytest.mark.parametrize(
    ("limits", "guard"),
    [
        (ProcessLimits(no_output_timeout=1.0, kill_grace=1.0), "no_output_timeout_seconds=1 reached"),
        (ProcessLimits(command_timeout=2.0, kill_grace=1.0), "command_timeout_seconds=2 reached"),
    ],
)
async def test_hang_guards_see_a_process_that_closed_its_output(
    tmp_path: Path, limits: ProcessLimits, guard: str
) -> None:
    pid_file = tmp_path / "pid"
    running = asyncio.ensure_future(
        run_process([sys.executable, "-c", SILENT_AFTER_CLOSE, str(pid_file)], lambda _line: None, limits=limits)
    )
    with pytest.raises(ProcessTimeout, match=re.escape(guard)):
        await asyncio.wait_for(running, 60)
    assert not pid_alive(int(pid_file.read_text()))


# Starts a detached grandchild (setsid, double fork) that keeps stdout open, then exits 3.
EXITS_LEAVING_A_PIPE_HOLDER = """\
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))
        os.rename(sys.argv[1] + '.tmp', sys.argv[1])
        os.write(1, b'holder running\\n')  # one write: the child's line cannot land in the middle
        time.sleep(600)
    os._exit(0)
os.wait()
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
os.write(1, b'child done\\n')
sys.exit(3)
"""


async def test_command_ends_when_its_child_exits_and_the_pipe_holder_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "holder.pid"
    lines: list[str] = []
    code = await asyncio.wait_for(
        run_process([sys.executable, "-c", EXITS_LEAVING_A_PIPE_HOLDER, str(pid_file)], lines.append), 60
    )
    assert code == 3
    assert "child done" in lines and "holder running" in lines
    assert not pid_alive(int(pid_file.read_text()))


def test_task_processes_never_see_secret_variables() -> None:
    env = {
        "PATH": "/usr/bin",
        "FLAMENCO_WORKER_WORKER_SECRET": "s3cret",
        "FLAMENCO_WORKER_MANAGER_URL": "http://m/",
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_REGION": "us-west-2",
        "github_token": "t",
        "DB_PASSWORD": "p",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "BLENDER_USER_SCRIPTS": "/s",
    }
    kept, dropped = task_environment(env)
    assert kept == {"PATH": "/usr/bin", "AWS_REGION": "us-west-2", "BLENDER_USER_SCRIPTS": "/s"}
    assert dropped == sorted(set(env) - set(kept))


async def test_the_worker_secret_in_the_environment_does_not_reach_the_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLAMENCO_WORKER_WORKER_SECRET", "the-worker-secret")
    monkeypatch.setenv("SOME_API_TOKEN", "the-token")
    lines: list[str] = []
    script = "import os\nfor k, v in sorted(os.environ.items()): print(f'{k}={v}')"
    assert await run_process([sys.executable, "-c", script], lines.append) == 0
    text = "\n".join(lines)
    assert "the-worker-secret" not in text and "the-token" not in text
    assert "FLAMENCO_TASK_UNIT=" in text
