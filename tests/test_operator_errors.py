"""An operator's mistakes end in `file: key: problem` and exit 2, never a traceback; the real command each time."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import RecordingManager, WorkerStarter, echo_task, until, worker_executable
from disks import tmpfs

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only file system needs root")


def run_worker(home: Path, config: Path, *, manager_flag: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAMENCO_WORKER_")}
    argv = [*worker_executable(), "--home", str(home), "--config", str(config)]
    if manager_flag:
        # A port nobody listens on: a worker that got past its checks would only retry, so a timeout shows it.
        argv += ["--manager", "http://127.0.0.1:9/"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


def setup_file(tmp_path: Path, text: bytes) -> Path:
    path = tmp_path / "worker.cfg"
    path.write_bytes(b"[flamenco-worker]\n" + text)
    return path


Case = tuple[bytes, Callable[[Path], None], tuple[str, ...]]


def _nothing(home: Path) -> None:
    pass


def _logs_dir_is_a_file(home: Path) -> None:
    (home / "logs").write_text("not a directory\n")


def _not_a_ca(home: Path) -> None:
    (home / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")


def _queue_is_a_directory(home: Path) -> None:
    (home / "queue.db").mkdir()


CASES: dict[str, Case] = {
    "url without a host": (b'manager_url = "http://"\n', _nothing, ("manager_url", "host")),
    "url with a bad port": (b'manager_url = "http://manager:99999/"\n', _nothing, ("manager_url",)),
    "missing CA file": (b'tls_ca_file = "/nonexistent/ca.pem"\n', _nothing,
                        ("tls_ca_file", "/nonexistent/ca.pem", "No such file")),
    "CA file that is not PEM": (b'tls_ca_file = "ca.pem"\n', _not_a_ca, ("tls_ca_file", "not a PEM")),
    "non-UTF-8 file": (b'worker_name = "caf\xe9"\n', _nothing, ("not UTF-8", "0xe9")),
    "logs_dir is a file": (b'logs_dir = "logs"\n', _logs_dir_is_a_file, ("logs_dir", "is a file")),
    "queue is a directory": (b'task_update_queue_db = "queue.db"\n', _queue_is_a_directory,
                             ("task_update_queue_db", "not a file")),
    "infinite poll interval": (b"task_poll_interval_seconds = inf\n", _nothing,
                               ("task_poll_interval_seconds", "finite")),
    "not-a-number interval": (b"may_i_run_interval_seconds = nan\n", _nothing, ("may_i_run_interval_seconds",)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_config_mistake_exits_2_naming_file_and_key(tmp_path: Path, name: str) -> None:
    text, prepare, expected = CASES[name]
    home = tmp_path / "home"
    home.mkdir()
    prepare(home)
    config = setup_file(tmp_path, text)
    # --manager on the command line would win over the file's manager_url.
    result = run_worker(home, config, manager_flag=b"manager_url" not in text)
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr, result.stderr
    for part in (str(config), *expected):
        assert part in result.stderr, f"{part!r} not in: {result.stderr}"


@pytest.fixture
def read_only_dir() -> Iterator[Path]:
    with tmpfs("1m", read_only=True, prefix="fdw-read-only-") as mount:
        yield mount


@needs_root
def test_queue_on_a_read_only_file_system_exits_2(tmp_path: Path, read_only_dir: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    queue = read_only_dir / "queue.db"
    config = setup_file(tmp_path, f'task_update_queue_db = "{queue}"\n'.encode())
    result = run_worker(home, config)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for part in (str(config), "task_update_queue_db", str(queue), "read-only file system"):
        assert part in result.stderr, f"{part!r} not in: {result.stderr}"


class ProxyLoginManager(RecordingManager):
    """A Manager behind a proxy that answers the first few task requests with its HTML login page."""

    def __init__(self, pages: int) -> None:
        super().__init__(seed=9)
        self.pages_left = pages

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "POST" and request.path == "/api/v3/worker/task" and self.pages_left > 0:
            self.pages_left -= 1
            self.changed()
            return web.Response(status=200, text="<html><body>Please log in</body></html>", content_type="text/html")
        return await super()._middleware(request, handler)


async def test_a_login_page_instead_of_a_task_is_retried_not_a_crash(workers: WorkerStarter) -> None:
    manager = ProxyLoginManager(pages=3)
    await manager.start()
    try:
        job = manager.submit_job("behind a proxy", [echo_task("after the login pages")])
        worker = await workers.start(manager.url)
        await until(manager, lambda: manager.job(job).status == "completed", worker=worker)
        assert manager.pages_left == 0
        await worker.wait_log("the task request answered 200 with a body that is not JSON (text/html)")
        assert "Please log in" in worker.agent_log_text()
        assert await worker.stop() == 0
    finally:
        await manager.stop()
