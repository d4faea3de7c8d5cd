"""One worker per home: real worker processes, `status`, `flush` and the installer against a held home."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from conftest import RecordingManager, WorkerStarter, echo_task, until, wait_awake, worker_executable

from flamenco_deadline_worker.upstream import homelock


async def cli(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *worker_executable(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_second_worker_on_the_same_home_exits_2_naming_home_and_pid(
    manager: RecordingManager, workers: WorkerStarter, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    first = await workers.start(manager.url, home, name="first")
    await wait_awake(manager, first)

    second = await workers.start(manager.url, home, name="second")
    assert await second.wait_exit() == 2, second.describe()
    out = second.output_text()
    assert str(home) in out and f"process {first.pid}" in out, out
    assert len(manager.workers) == 1, "the second worker never signed on"
    assert manager.count("POST", "/sign-on") == 1

    # status reads a held home fine and names the holder; flush refuses with 5.
    empty = str(workers.empty_config)
    code, out, err = await cli("status", "--json", "--home", str(home), "--config", empty)
    assert code == 0, err
    info = json.loads(out)
    assert info["running"] is True and info["pid"] == first.pid
    code, _, err = await cli("flush", "--home", str(home), "--config", empty, "--manager", manager.url)
    assert code == 5 and f"pid {first.pid}" in err and str(home) in err, err

    # The lock goes with the process, however it ends: after SIGKILL a new worker takes the home.
    first.send_signal(signal.SIGKILL)
    await first.wait_exit()
    code, out, _ = await cli("status", "--json", "--home", str(home), "--config", empty)
    assert json.loads(out)["running"] is False
    third = await workers.start(manager.url, home, name="third")
    job = manager.submit_job("after", [echo_task("after")])
    await until(manager, lambda: manager.job(job).status == "completed", worker=third)
    assert await third.stop() == 0
    assert homelock.holder(home) is None


HOLD = """
import sys, time
from pathlib import Path
from flamenco_deadline_worker.upstream.homelock import HomeLock
lock = HomeLock.acquire(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def test_installer_refuses_to_start_a_service_beside_a_hand_started_worker(tmp_path: Path) -> None:
    root = tmp_path / "stage"
    home = root / "var/lib/flamenco-worker"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(home)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        install = [*worker_executable(), "install", "--manager", "http://manager.example:8080/", "--root", str(root)]
        refused = subprocess.run([*install, "--start"], capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2, refused.stderr
        assert f"pid {holder.pid}" in refused.stderr and str(home) in refused.stderr
        assert not (root / "etc").exists(), "nothing installed"
        warned = subprocess.run(install, capture_output=True, text=True, timeout=120)
        assert warned.returncode == 0, warned.stderr
        assert "warning" in warned.stderr and f"pid {holder.pid}" in warned.stderr
        purge = subprocess.run([*worker_executable(), "uninstall", "--purge", "--root", str(root)],
                               capture_output=True, text=True, timeout=120)
        assert purge.returncode == 2 and home.is_dir(), purge.stderr
    finally:
        holder.kill()
        holder.wait()
    assert homelock.holder(home) is None
