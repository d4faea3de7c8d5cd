"""Child processes: output handling and process-group kill, with real subprocesses."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from flamenco_deadline_worker.runner.process import ChildProcess, LineSplitter, ProcessLimits, run_process


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
