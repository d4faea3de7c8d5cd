"""Helpers for the command tests: run tasks through the real TaskRunner and queue, or the real worker process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from flamenco_deadline_worker import records
from flamenco_deadline_worker.core.model import CommandSpec, DeliveryResult, Head, Task, Update
from flamenco_deadline_worker.runner.commands.base import FileRules
from flamenco_deadline_worker.runner.process import ProcessLimits, RunAs
from flamenco_deadline_worker.runner.runner import Outcome, TaskRunner
from flamenco_deadline_worker.upstream.queue import TaskUpdateQueue

BLENDER = shutil.which("blender")
FFMPEG = shutil.which("ffmpeg")
FFPROBE = shutil.which("ffprobe")

needs_blender = pytest.mark.skipif(
    BLENDER is None, reason="blender is not installed (Debian: apt-get install -y blender)"
)
needs_ffmpeg = pytest.mark.skipif(
    FFMPEG is None or FFPROBE is None, reason="ffmpeg/ffprobe are not installed (Debian: apt-get install -y ffmpeg)"
)


class RecordingSink:
    """An UpdateSink that accepts everything and keeps it."""

    max_log_lines: int | None = None

    def __init__(self) -> None:
        self.updates: list[Update] = []

    def batch_key(self, task_id: str) -> str:
        return task_id

    async def deliver(self, heads: Sequence[Head]) -> list[DeliveryResult]:
        for head in heads:
            self.updates.extend(head.updates)
        return [DeliveryResult.ok(len(head.updates)) for head in heads]


@attrs.define
class TaskRun:
    outcome: Outcome
    updates: list[Update]
    outputs: list[str]

    @property
    def log(self) -> str:
        return "".join(u.log for u in self.updates)

    @property
    def activities(self) -> list[str]:
        return [u.activity for u in self.updates if u.activity]

    @property
    def final_activity(self) -> str:
        return self.activities[-1] if self.activities else ""

    @property
    def statuses(self) -> list[str]:
        return [u.status for u in self.updates if u.status]


def cmd(name: str, steps: int = 1, **parameters: Any) -> CommandSpec:
    return CommandSpec(name=name, parameters=parameters, total_step_count=steps)


class Harness:
    """A TaskRunner with a real SQLite update queue whose drain delivers to a RecordingSink."""

    def __init__(
        self,
        home: Path,
        *,
        limits: ProcessLimits | None = None,
        run_as: RunAs | None = None,
        file_rules: FileRules | None = None,
    ) -> None:
        self.home = home
        self.sink = RecordingSink()
        self.queue = TaskUpdateQueue(home / "queue.db", self.sink, push_log_max_interval=0.0)
        self.outputs: list[str] = []
        self.runner = TaskRunner(
            self.queue,
            agent_log=records,
            work_root=home / "work",
            logs_dir=home / "logs",
            limits=limits or ProcessLimits(kill_grace=2.0),
            run_as=run_as,
            activity_interval=0.0,
            on_output=lambda _task, path: self.outputs.append(path),
            # File commands in these tests act beside the home, in the test's own tmp_path.
            file_rules=file_rules or FileRules(roots=(str(home.parent),)),
        )
        self._drain: asyncio.Task[None] | None = None
        self._count = 0

    async def __aenter__(self) -> Harness:
        await self.queue.open()
        self._drain = asyncio.ensure_future(self.queue.run_drain())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
        await self.queue.close()

    def task(self, *commands: CommandSpec, steps_total: int | None = None) -> Task:
        self._count += 1
        return Task(
            id=f"task-{self._count}",
            job_id="job-1",
            name=f"task {self._count}",
            job_type="test",
            task_type="misc",
            commands=list(commands),
            steps_total=steps_total if steps_total is not None else sum(c.total_step_count for c in commands),
        )

    async def run(self, *commands: CommandSpec, steps_total: int | None = None) -> TaskRun:
        return await self.finish(await self.runner.run(self.task(*commands, steps_total=steps_total)))

    async def finish(self, outcome: Outcome) -> TaskRun:
        assert await self.queue.flush(30), "the update queue did not drain within 30 s"
        return TaskRun(outcome, list(self.sink.updates), list(self.outputs))


@contextlib.asynccontextmanager
async def harness(home: Path, **kwargs: Any) -> AsyncIterator[Harness]:
    async with Harness(home, **kwargs) as h:
        yield h


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition the test cannot be notified about (a file appearing, a process leaving)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout} s for: {what}")
        await asyncio.sleep(0.05)


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by a container's init) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


# ---- the real worker process against the local manager ------------------------------------------


def worker_env(home: Path, **settings: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLAMENCO_WORKER_TASK_POLL_INTERVAL_SECONDS="0.2",
        FLAMENCO_WORKER_TASK_POLL_MAX_INTERVAL_SECONDS="0.5",
        FLAMENCO_WORKER_PUSH_ACT_MAX_INTERVAL_SECONDS="0.2",
        FLAMENCO_WORKER_PUSH_LOG_MAX_INTERVAL_SECONDS="0.2",
        FLAMENCO_WORKER_KILL_GRACE_SECONDS="2",
    )
    env.update({f"FLAMENCO_WORKER_{k.upper()}": v for k, v in settings.items()})
    env.pop("FLAMENCO_WORKER_HOME", None)
    return env


@contextlib.asynccontextmanager
async def worker_process(
    manager_url: str, home: Path, extra_args: Sequence[str] = (), **settings: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`flamenco-worker --manager URL --home DIR` as a real process; stopped with SIGTERM afterwards."""
    exe = shutil.which("flamenco-worker", path=str(Path(sys.executable).parent)) or "flamenco-worker"
    home.mkdir(parents=True, exist_ok=True)
    out = (home / "worker-stdout.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        exe, "--manager", manager_url, "--home", str(home), *extra_args,
        stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
        env=worker_env(home, **settings),
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        out.close()


def worker_output(home: Path) -> str:
    path = home / "worker-stdout.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def command_json(name: str, steps: int = 1, **parameters: Any) -> dict[str, Any]:
    return {"name": name, "parameters": parameters, "total_step_count": steps}


def task_json(name: str, task_type: str, *commands: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "task_type": task_type, "commands": list(commands), **extra}
