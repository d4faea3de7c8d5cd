"""Child processes for tasks: no shell, no secrets, output streamed line by line, the whole unit killed.

How a command's processes are held together (cgroup, subreaper, process group) is ``containment``'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import attrs

from flamenco_deadline_worker import taskenv
from flamenco_deadline_worker.runner import containment

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
# A line longer than this is passed on in pieces rather than held in memory.
MAX_LINE_BYTES = 64 * 1024

LineHandler = Callable[[str], None]

# After its child exits, how long a command's output is still read (what was left in the pipe).
PIPE_DRAIN_SECONDS = 5.0
KILL_WAIT_SECONDS = 10.0


def kill_all_now() -> None:
    """The forced exit (second SIGTERM): SIGKILL to every task process, without waiting."""
    containment.active().kill_all_now()


class ProcessTimeout(Exception):
    """A hang guard fired; the message says which one."""


@attrs.frozen
class RunAs:
    """Run the child as another user: setuid when we are root, otherwise through ``sudo -n``."""

    user: str

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The command line to start: ``argv`` itself as root, else behind ``sudo -n -u user``."""
        if os.geteuid() == 0:
            return list(argv)
        return ["sudo", "-n", "-u", self.user, "--", *argv]

    def credentials(self) -> _Credentials | None:
        """uid, gid and groups to switch to in the child; None when sudo does the switch."""
        if os.geteuid() != 0:
            return None
        import grp
        import pwd

        entry = pwd.getpwnam(self.user)
        groups = sorted({entry.pw_gid, *(g.gr_gid for g in grp.getgrall() if self.user in g.gr_mem)})
        return _Credentials(entry.pw_uid, entry.pw_gid, tuple(groups), entry.pw_name, entry.pw_dir)

    def child_env(self, env: Mapping[str, str] | None) -> dict[str, str] | None:
        """The child's environment with HOME, USER and LOGNAME of the job user (setuid case only;
        sudo sets them itself)."""
        creds = self.credentials()
        if creds is None:
            return dict(env) if env is not None else None
        out = dict(env if env is not None else os.environ)
        out.update(HOME=creds.home, USER=creds.name, LOGNAME=creds.name)
        return out


@attrs.frozen
class _Credentials:
    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str


@attrs.define
class ProcessLimits:
    """Guards for one child: all optional, in seconds."""

    command_timeout: float | None = None
    no_output_timeout: float | None = None
    kill_grace: float = 10.0
    oom_score_adj: int | None = None


def with_oom_score(argv: Sequence[str], oom_score_adj: int | None) -> list[str]:
    """``argv`` behind util-linux's ``choom``, which raises its own score and then execs ``argv``.

    No Python runs between fork and exec (a pre-exec hook can deadlock in a threaded worker), and
    choom runs as the job user, who may always raise a score: the kernel then picks Blender, not us.
    """
    if oom_score_adj is None:
        return list(argv)
    choom = _choom()
    if choom is None:
        return list(argv)
    return [choom, "-n", str(oom_score_adj), "--", *argv]


@functools.cache
def _choom() -> str | None:
    found = shutil.which("choom")
    if found is None:
        log.warning("choom (util-linux) not found: oom_score_adj is not applied to task processes")
    return found


class LineSplitter:
    """Turns a byte stream into text lines; never fails on bad UTF-8, never drops a long line."""

    def __init__(self, on_line: LineHandler, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._on_line = on_line
        self._max = max_line_bytes
        self._partial = bytearray()

    def feed(self, data: bytes) -> None:
        buf = self._partial
        buf += data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            self._emit(bytes(buf[start:nl]))
            start = nl + 1
        del buf[:start]
        while len(buf) >= self._max:
            self._emit(bytes(buf[: self._max]))
            del buf[: self._max]

    def close(self) -> None:
        if self._partial:
            self._emit(bytes(self._partial))
            self._partial.clear()

    def _emit(self, raw: bytes) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        self._on_line(raw.decode("utf-8", errors="backslashreplace"))


class _ExitAwareProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's own protocol, plus a future set when the child itself exits.

    ``Process.wait()`` also waits for the pipes to close, which a detached grandchild holding the
    output may never do; the command's end is its child's exit."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


class ChildProcess:
    """One running child and its unit: the child and every process that came from it."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        argv: Sequence[str],
        unit: containment.Unit,
        exited: asyncio.Future[None],
        transport: asyncio.SubprocessTransport | None = None,
    ) -> None:
        self.proc = proc
        self._transport = transport
        self.argv = list(argv)
        self.pid = proc.pid
        self.unit = unit
        self.exited = exited
        self.last_output = time.monotonic()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to every process of the unit (the name is kept from the process-group days)."""
        return self.unit.signal(sig) > 0

    async def terminate_tree(self, grace: float) -> None:
        """SIGTERM to every process of the unit, SIGKILL to all of them once the child is gone or
        after ``grace`` seconds."""
        if not self.exited.done() and self.unit.signal(signal.SIGTERM):
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), grace)
            except asyncio.TimeoutError:
                log.warning("pid %d did not stop within %.1f s of SIGTERM, sending SIGKILL", self.pid, grace)
        await self.unit.kill()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.exited), KILL_WAIT_SECONDS)

    def close(self) -> None:
        """The child and its unit are done with: pipes closed, cgroup removed, orphans reaped."""
        if self._transport is not None:
            self._transport.close()
        self.unit.containment.spawned.discard(self.pid)
        self.unit.close()


_withheld_logged = False


def _task_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The child's environment: ``env`` (else ours) without secrets."""
    global _withheld_logged
    kept, dropped = taskenv.task_environment(os.environ if env is None else env)
    if dropped and not _withheld_logged:
        _withheld_logged = True
        log.info("environment variables withheld from task processes: %s", ", ".join(dropped))
    return kept


async def spawn(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    run_as: RunAs | None = None,
    oom_score_adj: int | None = None,
) -> ChildProcess:
    """Start ``argv`` without a shell, in a new session and its own unit, stdout and stderr merged."""
    if not argv:
        raise ValueError("empty command line")
    inner = with_oom_score(argv, oom_score_adj)
    full_argv = run_as.wrap(inner) if run_as else inner
    creds = run_as.credentials() if run_as else None
    child_env = _task_env(run_as.child_env(env) if run_as else env)
    # The user switch is done by subprocess itself, in C, between fork and exec.
    switch: dict[str, object] = (
        {"user": creds.uid, "group": creds.gid, "extra_groups": list(creds.groups)} if creds else {}
    )
    holder = containment.active()
    unit = holder.new_unit()
    child_env[containment.UNIT_VARIABLE] = unit.tag
    loop = asyncio.get_running_loop()
    try:
        with unit.forking():
            transport, protocol = await loop.subprocess_exec(
                lambda: _ExitAwareProtocol(READ_CHUNK, loop),
                *full_argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=cwd,
                env=child_env,
                start_new_session=True,
                **switch,  # type: ignore[arg-type]
            )
    except BaseException:
        unit.close()
        raise
    proc = asyncio.subprocess.Process(transport, protocol, loop)
    unit.leader = proc.pid
    holder.spawned.add(proc.pid)
    child = ChildProcess(proc, full_argv, unit, protocol.exited, transport)
    return child


async def run_process(
    argv: Sequence[str],
    on_line: LineHandler,
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    limits: ProcessLimits | None = None,
    run_as: RunAs | None = None,
    on_spawn: Callable[[ChildProcess], Awaitable[None] | None] | None = None,
    pace: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Run a child to its end, handing each output line to ``on_line``; returns its exit code.

    ``pace`` is awaited after each read (e.g. the update queue's ``room``): while it waits, the
    child's output stays in its pipe and the child blocks on a full pipe, instead of the worker
    buffering without bound.  A paused read does not count as the child being silent.

    The command ends when its child exits, whether or not it closed its output earlier (the hang
    guards keep counting) or left a process holding it open: what the child left behind is killed
    then, and the rest of its output read.  Cancelling this coroutine kills the child's whole unit
    (SIGTERM, grace, SIGKILL) before the cancellation propagates.  A hang guard raises
    ProcessTimeout after the same kill.
    """
    limits = limits or ProcessLimits()
    child = await spawn(argv, cwd=cwd, env=env, run_as=run_as, oom_score_adj=limits.oom_score_adj)
    try:
        return await _follow(child, on_line, limits, on_spawn, pace)
    finally:
        child.close()


async def _follow(
    child: ChildProcess,
    on_line: LineHandler,
    limits: ProcessLimits,
    on_spawn: Callable[[ChildProcess], Awaitable[None] | None] | None,
    pace: Callable[[], Awaitable[None]] | None = None,
) -> int:
    splitter = LineSplitter(on_line)
    paused = [False]  # the reader waits for pace(): our own backpressure, not a silent child
    assert child.proc.stdout is not None
    stdout = child.proc.stdout
    started = time.monotonic()

    async def pump() -> None:
        while True:
            data = await stdout.read(READ_CHUNK)
            if not data:
                break
            child.last_output = time.monotonic()
            splitter.feed(data)
            if pace is not None:
                paused[0] = True
                await _paced(pace, child)
                paused[0] = False
        splitter.close()

    pump_task = asyncio.ensure_future(pump())
    try:
        if on_spawn is not None:
            maybe = on_spawn(child)
            if maybe is not None:
                await maybe
        while not child.exited.done():
            timeout = _next_guard_timeout(limits, started, child.last_output)
            await asyncio.wait({child.exited}, timeout=timeout)
            if not child.exited.done():
                _check_guards(limits, started, child.last_output)
        returncode = child.proc.returncode
        assert returncode is not None
        # The child is gone; kill whatever it left behind (daemonised helpers, setsid grandchildren),
        # after which nothing holds its output open and the rest of it can be read.
        await child.unit.kill(spare_kept=True)
        done, _ = await asyncio.wait({pump_task}, timeout=PIPE_DRAIN_SECONDS)
        while not done and paused[0]:  # the rest waits for room in the queue: read it all, late
            done, _ = await asyncio.wait({pump_task}, timeout=PIPE_DRAIN_SECONDS)
        if not done:
            log.warning("pid %d exited but a process out of reach still holds its output open; "
                        "stopped reading after %.0f s", child.pid, PIPE_DRAIN_SECONDS)
            pump_task.cancel()
            splitter.close()
        else:
            pump_task.result()
        return returncode
    except BaseException:
        pump_task.cancel()
        await asyncio.shield(child.terminate_tree(limits.kill_grace))
        raise


async def _paced(pace: Callable[[], Awaitable[None]], child: ChildProcess) -> None:
    waiting = asyncio.ensure_future(pace())
    try:
        while not waiting.done():
            # Paused by us, not silent: keep the no-output guard from firing meanwhile.
            child.last_output = time.monotonic()
            await asyncio.wait({waiting}, timeout=0.25)
    finally:
        waiting.cancel()
    child.last_output = time.monotonic()


def _next_guard_timeout(limits: ProcessLimits, started: float, last_output: float) -> float | None:
    now = time.monotonic()
    waits = []
    if limits.command_timeout:
        waits.append(started + limits.command_timeout - now)
    if limits.no_output_timeout:
        waits.append(last_output + limits.no_output_timeout - now)
    return max(0.0, min(waits)) + 0.01 if waits else None


def _check_guards(limits: ProcessLimits, started: float, last_output: float) -> None:
    now = time.monotonic()
    if limits.command_timeout and now - started >= limits.command_timeout:
        raise ProcessTimeout(
            f"command_timeout_seconds={limits.command_timeout:g} reached: the command ran too long"
        )
    if limits.no_output_timeout and now - last_output >= limits.no_output_timeout:
        raise ProcessTimeout(
            f"no_output_timeout_seconds={limits.no_output_timeout:g} reached: "
            f"no output for {now - last_output:.0f} s, the process looks hung"
        )
