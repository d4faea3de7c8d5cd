"""Shared fixtures for the end-to-end tests: the OpenAPI spec, local managers, and real worker processes.

The end-to-end tests run the real `flamenco-worker` command as a subprocess against the local Manager
(`flamenco_deadline_worker.testing.manager`) on 127.0.0.1.  Every wait is on a condition with a generous
timeout, so the tests hold on a loaded machine.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from flamenco_deadline_worker.demo import first_arrivals, numbered_lines
from flamenco_deadline_worker.testing.manager import LocalManager
from flamenco_deadline_worker.testing.records import WorkerRecord

# Waits are on conditions; these only bound how long a broken run takes to fail.
TIMEOUT = 60.0
LONG_TIMEOUT = 120.0

SPEC_ENV = "FLAMENCO_OPENAPI_SPEC"
# The spec is never copied into the repository: it is read from shared/reference/ beside the checkout.
DEFAULT_SPEC = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "flamenco-openapi.yaml"
HOW_TO_ENABLE_SPEC = (
    f"set {SPEC_ENV}=/path/to/flamenco-openapi.yaml (or put shared/reference/ beside the repository) "
    "to check them"
)

# Fast polling so the tests do not wait on the worker's production intervals.
WORKER_ENV: dict[str, str] = {
    "FLAMENCO_WORKER_TASK_POLL_INTERVAL_SECONDS": "0.2",
    "FLAMENCO_WORKER_TASK_POLL_MAX_INTERVAL_SECONDS": "0.5",
    "FLAMENCO_WORKER_MAY_I_RUN_INTERVAL_SECONDS": "0.5",
    "FLAMENCO_WORKER_ASLEEP_POLL_INTERVAL_SECONDS": "0.3",
    "FLAMENCO_WORKER_PUSH_LOG_MAX_INTERVAL_SECONDS": "0.2",
    "FLAMENCO_WORKER_KILL_GRACE_SECONDS": "2",
    "FLAMENCO_WORKER_SHUTDOWN_FLUSH_SECONDS": "10",
}


# ---- the spec ------------------------------------------------------------------------------------


def find_spec() -> Path | None:
    """The Flamenco OpenAPI spec: $FLAMENCO_OPENAPI_SPEC, else shared/reference beside the repository, else None.

    A path given in the variable must exist: a typo there should not quietly turn the checks off.
    """
    override = os.environ.get(SPEC_ENV)
    if override:
        if not Path(override).is_file():
            pytest.exit(f"${SPEC_ENV}={override}: no such file (unset it to run without the spec checks)", 2)
        return Path(override)
    return DEFAULT_SPEC if DEFAULT_SPEC.is_file() else None


def pytest_report_header() -> str:
    spec = find_spec()
    if spec is None:
        return f"Flamenco OpenAPI spec: not found, requests are not checked against it; {HOW_TO_ENABLE_SPEC}"
    return f"Flamenco OpenAPI spec: {spec} (every request and answer of the end-to-end tests is checked)"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if find_spec() is None:
        terminalreporter.write_line(
            f"note: the checks against the Flamenco OpenAPI spec were skipped; {HOW_TO_ENABLE_SPEC}"
        )


@pytest.fixture(scope="session")
def openapi_spec() -> Path | None:
    return find_spec()


# ---- managers ------------------------------------------------------------------------------------


class RecordingManager(LocalManager):
    """The local Manager (which logs every request it receives), waking wait_for() on every request."""

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.changed()  # so that wait_for() can wait on request counts
        return await super()._middleware(request, handler)

    def count(self, method: str, path_suffix: str, since: float = 0.0) -> int:
        return self.count_requests(method, path_suffix, since)

    def the_worker(self) -> WorkerRecord:
        """The one registered worker (the latest, when it registered again)."""
        assert self.workers, f"no worker registered; {self.describe()}"
        return list(self.workers.values())[-1]


@pytest.fixture
async def manager(openapi_spec: Path | None) -> AsyncIterator[RecordingManager]:
    """A manager that checks every worker request and its own answers against the OpenAPI spec (when found)."""
    mgr = RecordingManager(validate_against=openapi_spec, seed=7)
    await mgr.start()
    yield mgr
    await mgr.stop()
    assert mgr.spec_violations == []


@pytest.fixture
async def plain_manager() -> AsyncIterator[RecordingManager]:
    """A manager without spec checks, for deliberately malformed tasks (it would record its own violations)."""
    mgr = RecordingManager(seed=8)
    await mgr.start()
    yield mgr
    await mgr.stop()


# ---- waiting -------------------------------------------------------------------------------------


async def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT, what: str = "") -> None:
    """Poll ``predicate`` (for conditions outside the manager: files, processes) until true or fail."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            name = what or getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(f"still not true after {timeout:g} s: {name}")
        await asyncio.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the command name in parentheses, which may itself hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def python_script_task(
    name: str, script: str, *, task_type: str = "misc", steps: int = 1
) -> dict[str, Any]:
    """A task running ``python -c script`` through the `exec` command."""
    command = {"name": "exec", "parameters": {"exe": sys.executable, "args": ["-c", script]},
               "total_step_count": steps}
    return {"name": name, "task_type": task_type, "commands": [command]}


def echo_task(name: str, message: str | None = None) -> dict[str, Any]:
    command = {"name": "echo", "parameters": {"message": message or f"hello from {name}"}, "total_step_count": 1}
    return {"name": name, "task_type": "misc", "commands": [command]}


def assert_all_lines_in_order(log: str, count: int, prefix: str = "line ") -> None:
    """Every line 1..count arrived, first arrivals in order (a repeat is allowed: see first_arrivals)."""
    firsts = first_arrivals(numbered_lines(log, prefix))
    missing = sorted(set(range(1, count + 1)) - set(firsts))
    assert not missing, f"{len(missing)} line(s) never arrived, the first ones: {missing[:10]}"
    assert firsts == list(range(1, count + 1)), "lines arrived out of order"


@pytest.fixture
def job_user() -> Iterator[str]:
    """A system user made for the test (the worker switches to it), removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root: it creates a user (useradd) and the worker switches to it")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("needs useradd/userdel (Debian package passwd)")
    name = f"fdwtest{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def open_home() -> Iterator[Path]:
    """A directory the job user can traverse (pytest's tmp_path lives under a 0700 directory)."""
    root = Path(tempfile.mkdtemp(prefix="fdw-jobuser-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Any]:
    """The Deadline agent starter of tests/deadline_agent.py (``run(template, ...)``: the emulator
    serves the job, an agent runs it); everything started is stopped afterwards.  Imported here only
    when asked for: it needs the ``deadline`` extra."""
    pytest.importorskip("boto3")
    pytest.importorskip("openjd.sessions")
    from deadline_agent import agent_runner

    yield from agent_runner(tmp_path)


# ---- worker processes ----------------------------------------------------------------------------


def worker_executable() -> list[str]:
    """The installed `flamenco-worker` command of this venv, else `python -m flamenco_deadline_worker`."""
    beside = Path(sys.executable).parent / "flamenco-worker"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("flamenco-worker")
    return [found] if found else [sys.executable, "-m", "flamenco_deadline_worker"]


class WorkerProcess:
    """One real `flamenco-worker` process, its output going to a file in its home."""

    def __init__(self, proc: asyncio.subprocess.Process, home: Path, output: Path) -> None:
        self.proc = proc
        self.home = home
        self.output = output

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def agent_log(self) -> Path:
        return self.home / "flamenco-worker-logs" / "worker-agent.log"

    @property
    def credentials_file(self) -> Path:
        return self.home / ".flamenco-worker.cfg"

    def agent_log_text(self) -> str:
        try:
            return self.agent_log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def output_text(self) -> str:
        try:
            return self.output.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self, lines: int = 40) -> str:
        tail = "\n".join(self.output_text().splitlines()[-lines:])
        return f"worker pid {self.pid} (exit code {self.returncode}); last output:\n{tail}"

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = TIMEOUT) -> int:
        """The exit code, waiting at most ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"the worker did not exit within {timeout:g} s; {self.describe()}") from None

    async def wait_log(self, text: str, timeout: float = TIMEOUT) -> None:
        """Wait until the agent log (all runs with this home) holds ``text``."""
        try:
            await wait_until(lambda: text in self.agent_log_text(), timeout, f"{text!r} in the agent log")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {self.describe()}") from None

    async def wait_output(self, text: str, timeout: float = TIMEOUT) -> None:
        """Wait until this process's own output (its log records on stderr) holds ``text``."""
        try:
            await wait_until(lambda: text in self.output_text(), timeout, f"{text!r} in the worker's output")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {self.describe()}") from None

    async def stop(self, timeout: float = TIMEOUT) -> int:
        """SIGTERM and wait for a clean exit."""
        if self.returncode is None:
            self.send_signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    async def kill(self) -> None:
        if self.returncode is None:
            self.proc.kill()
            await self.proc.wait()


class WorkerStarter:
    """Starts worker processes for one test and kills whatever is left at its end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[WorkerProcess] = []
        # An empty --config keeps /etc/flamenco-worker/flamenco-worker.cfg and ./flamenco-worker.cfg out.
        self.empty_config = root / "empty-worker.cfg"
        self.empty_config.write_text("")

    async def start(
        self,
        manager_url: str | None,
        home: Path | None = None,
        *args: str,
        env: Mapping[str, str] | None = None,
        name: str | None = "e2e-worker",
        default_timing: bool = False,
    ) -> WorkerProcess:
        """``manager_url`` None: no --manager (the worker searches); ``name`` None: no name variable set;
        ``default_timing``: the worker's own intervals instead of the fast WORKER_ENV ones."""
        home = home or self.root / "home"
        home.mkdir(parents=True, exist_ok=True)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLAMENCO_WORKER_")}
        if not default_timing:
            full_env.update(WORKER_ENV)
        if name is not None:
            full_env["FLAMENCO_WORKER_WORKER_NAME"] = name
        full_env.update(env or {})
        output = home / f"worker-output-{len(self.started) + 1}.txt"
        manager_args = ["--manager", manager_url] if manager_url is not None else []
        argv: Sequence[str] = [
            *worker_executable(), *manager_args, "--home", str(home),
            "--config", str(self.empty_config), *args,
        ]
        with output.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=full_env, cwd=home, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
            )
        worker = WorkerProcess(proc, home, output)
        self.started.append(worker)
        return worker

    async def cleanup(self) -> None:
        for worker in self.started:
            await worker.kill()


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[WorkerStarter]:
    starter = WorkerStarter(tmp_path)
    yield starter
    await starter.cleanup()


async def until(
    manager: LocalManager,
    predicate: Callable[[], bool],
    timeout: float = TIMEOUT,
    worker: WorkerProcess | None = None,
) -> None:
    """manager.wait_for(predicate), failing early (with the worker's output) if ``worker`` exits first."""
    name = getattr(predicate, "__qualname__", repr(predicate))
    waiter = asyncio.ensure_future(manager.wait_for(predicate, timeout))
    if worker is None:
        await waiter
        return
    exited = asyncio.ensure_future(worker.proc.wait())
    try:
        await asyncio.wait({waiter, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
    if waiter.done():
        try:
            waiter.result()
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{worker.describe()}") from None
        return
    waiter.cancel()
    if not predicate():
        raise AssertionError(
            f"the worker exited before {name} held; manager: {manager.describe()}\n{worker.describe()}"
        )


async def wait_awake(manager: RecordingManager, worker: WorkerProcess, timeout: float = TIMEOUT) -> WorkerRecord:
    """Wait until a worker is registered and awake at the manager; answers its record."""

    def awake() -> bool:
        return any(w.status == "awake" for w in manager.workers.values())

    await until(manager, awake, timeout, worker)
    return next(w for w in manager.workers.values() if w.status == "awake")


@pytest.fixture
def child_pids() -> Iterator[list[int]]:
    """Pids of task children a test started; any still running at the end are killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
