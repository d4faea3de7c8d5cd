"""systemd notifications: the protocol client, and a real worker talking to a socket the test owns."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import RecordingManager, WorkerStarter, python_script_task, until, wait_until

from flamenco_deadline_worker.sdnotify import Notifier


class Listener:
    """A datagram socket collecting every message sent to it."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.messages: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 65536)
            self.messages.append(data.decode())

    def assignments(self) -> list[str]:
        return [line for message in self.messages for line in message.split("\n")]

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self.sock.close()


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[Listener]:
    sock = Listener(str(tmp_path / "notify.sock"))
    sock.start()
    yield sock
    await sock.close()


async def test_notifier_sends_to_path_and_abstract_sockets(listener: Listener) -> None:
    path = listener.sock.getsockname()
    notifier = Notifier(path)
    assert notifier.ready("signed on")
    assert notifier.watchdog()
    await wait_until(lambda: len(listener.messages) == 2, 10)
    assert listener.messages == ["READY=1\nSTATUS=signed on", "WATCHDOG=1"]

    name = f"fdw-test-{os.getpid()}"
    abstract = Listener(b"\0" + name.encode())
    abstract.start()
    try:
        assert Notifier("@" + name).stopping("bye")
        await wait_until(lambda: abstract.messages == ["STOPPING=1\nSTATUS=bye"], 10)
    finally:
        await abstract.close()


def test_notifier_environment_handling() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_environ(env)
    assert notifier.enabled and notifier.watchdog_interval == 1.5
    assert env == {}, "the variables are taken out so task processes do not inherit them"
    other_pid = Notifier.from_environ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_interval is None, "a watchdog meant for another process is ignored"
    off = Notifier.from_environ({})
    assert not off.enabled and not off.ready() and off.watchdog_interval is None
    assert not Notifier("/nonexistent/dir/sock").notify("READY=1"), "a missing socket is not an error"


async def test_worker_notifies_ready_watchdog_status_stopping(
    manager: RecordingManager, workers: WorkerStarter, listener: Listener
) -> None:
    job = manager.submit_job("notify", [python_script_task("long", "import time\nprint('go', flush=True)\n"
                                                           "time.sleep(60)\n")])
    task_id = manager.job_tasks(job)[0].id
    env = {"NOTIFY_SOCKET": listener.sock.getsockname(), "WATCHDOG_USEC": "400000"}
    worker = await workers.start(manager.url, env=env)

    await wait_until(lambda: "READY=1" in listener.assignments(), 60, "READY=1")
    await wait_until(lambda: listener.assignments().count("WATCHDOG=1") >= 2, 60, "WATCHDOG=1 pings")
    await until(manager, lambda: manager.task(task_id).status == "active", worker=worker)
    await wait_until(lambda: any(a.startswith("STATUS=") and task_id in a for a in listener.assignments()), 60,
                     "STATUS= naming the running task")
    assert await worker.stop() == 0
    seen = listener.assignments()
    assert "STOPPING=1" in seen, seen
    ready, stopping = seen.index("READY=1"), seen.index("STOPPING=1")
    watchdogs = [i for i, a in enumerate(seen) if a == "WATCHDOG=1"]
    assert any(ready < i < stopping for i in watchdogs), seen
    assert ready < stopping
    assert seen.count("READY=1") == 1 and seen.count("STOPPING=1") == 1
