"""Messages and exit codes a newcomer meets first: install, configuration, flush, daemon stop, an early stop.

Each runs the real command as a subprocess, the way an admin types it.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import worker_executable

from flamenco_deadline_worker import config as cfg

ADAPTOR = Path(sys.executable).parent / "flamenco-blender-adaptor"


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*worker_executable(), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# ---- install ---------------------------------------------------------------------------------


def test_install_without_manager_leaves_it_to_discovery_and_deadline_names_its_flags(tmp_path: Path) -> None:
    # Without --manager the worker finds its Manager by UPnP/SSDP: a dry run plans the install.
    result = run("install", "--dry-run", "--root", str(tmp_path / "plan"))
    assert result.returncode == 0, result.stderr
    assert "nonexistent" not in result.stdout + result.stderr
    deadline = run("install", "--backend", "deadline", "--farm-id", "farm-1", "--root", str(tmp_path / "stage"))
    assert deadline.returncode == 2 and "--farm-id and --fleet-id are required" in deadline.stderr
    assert not (tmp_path / "stage").exists()


def test_install_set_bad_value_names_the_set_flag(tmp_path: Path) -> None:
    result = run("install", "--manager", "http://m:8080/", "--set", "kill_grace_seconds=abc",
                 "--root", str(tmp_path / "stage"))
    assert result.returncode == 2
    assert "--set kill_grace_seconds: kill_grace_seconds: cannot read 'abc' as float" in result.stderr, result.stderr
    assert "FLAMENCO_WORKER_" not in result.stderr, "names an environment variable the user never set"


def test_install_set_values_are_written_so_the_worker_reads_them(tmp_path: Path) -> None:
    root = tmp_path / "stage"
    result = run("install", "--manager", "http://m:8080/", "--root", str(root), "--set", "kill_grace_seconds=5",
                 "--set", "task_types=misc, ffmpeg", "--set", "structured_logs=yes")
    assert result.returncode == 0, result.stderr
    written = root / "etc" / "flamenco-worker" / "flamenco-worker.cfg"
    config = cfg.load(config_files=[written], home=tmp_path / "home", environ={})
    assert config.kill_grace_seconds == 5.0
    assert config.task_types == ("misc", "ffmpeg")
    assert config.structured_logs is True


def test_dry_run_with_root_says_what_root_skips(tmp_path: Path) -> None:
    root = tmp_path / "stage"
    staged = run("install", "--manager", "http://m:8080/", "--root", str(root), "--dry-run")
    assert staged.returncode == 0, staged.stderr
    lines = staged.stdout.splitlines()
    groupadd = next(line for line in lines if "groupadd" in line)
    assert "skipped with --root" in groupadd, staged.stdout
    directory = next(line for line in lines if "directory /etc/flamenco-worker" in line)
    assert "skipped" not in directory
    # The real run says the same about the same step.
    real = run("install", "--manager", "http://m:8080/", "--root", str(root))
    assert real.returncode == 0, real.stderr
    assert "skipped with --root: would run groupadd --system flamenco-jobs" in real.stdout
    host = run("install", "--manager", "http://m:8080/", "--dry-run")
    assert host.returncode == 0 and "skipped" not in host.stdout, host.stdout


# ---- configuration ---------------------------------------------------------------------------


def test_bad_manager_url_names_the_manager_flag(tmp_path: Path) -> None:
    result = run("--manager", "ftp://m", "--home", str(tmp_path), "--config", "/dev/null")
    assert result.returncode == 2
    assert "--manager: manager_url: must start with http:// or https://, got 'ftp://m'" in result.stderr
    assert "--manager-url" not in result.stderr


# ---- flush -----------------------------------------------------------------------------------


def test_flush_with_nothing_queued_exits_0(tmp_path: Path) -> None:
    result = run("flush", "--home", str(tmp_path), "--config", "/dev/null")
    assert result.returncode == 0, result.stderr
    assert "nothing to deliver" in result.stdout


# ---- adaptor daemon stop ---------------------------------------------------------------------


def test_daemon_stop_without_a_daemon_exits_0_saying_so(tmp_path: Path) -> None:
    command = [str(ADAPTOR)] if ADAPTOR.is_file() else [sys.executable, "-m",
                                                         "flamenco_deadline_worker.adaptors.blender"]
    connection = tmp_path / "never-started.json"
    result = subprocess.run([*command, "daemon", "stop", "--connection-file", str(connection)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "nothing to stop" in result.stderr and str(connection) in result.stderr
    # Running a task still needs a daemon: that stays exit code 3.
    run_task = subprocess.run([*command, "daemon", "run", "--connection-file", str(connection),
                               "--run-data", '{"frame": 1}'], capture_output=True, text=True, timeout=60)
    assert run_task.returncode == 3, run_task.stderr


# ---- a worker stopped before it reached its Manager ------------------------------------------


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound but not listening: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_worker_stopped_before_reaching_the_manager_reports_no_state(tmp_path: Path, refusing_port: int) -> None:
    home = tmp_path / "home"
    proc = subprocess.Popen(
        [*worker_executable(), "--manager", f"http://127.0.0.1:{refusing_port}/", "--home", str(home),
         "--config", "/dev/null"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    agent_log = home / "flamenco-worker-logs" / "worker-agent.log"
    try:
        deadline = time.monotonic() + 60
        while "signing on to the Manager failed" not in (agent_log.read_text() if agent_log.exists() else ""):
            assert time.monotonic() < deadline, "the worker never tried to sign on"
            assert proc.poll() is None, f"the worker exited early with code {proc.returncode}"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = agent_log.read_text()
    assert "Worker Status" not in text and "-> awake" not in text, text
    state = json.loads((home / "flamenco-worker.state.json").read_text())
    assert state["state"] == "stopped" and state["worker_id"] == ""
