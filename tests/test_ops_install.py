"""`flamenco-worker install` / `uninstall` into a staging tree (--root), and the systemd unit."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import worker_executable

from flamenco_deadline_worker import config as cfg
from flamenco_deadline_worker.install import STOP_TIMEOUT_SECONDS, unit_text

REPO = Path(__file__).resolve().parents[1]
UID, GID, JOB_GID = 4242, 4242, 4243


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*worker_executable(), *args], capture_output=True, text=True, timeout=120)


def staged_users(root: Path) -> None:
    """An image whose passwd and group already hold the service user (as an image builder's would)."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "passwd").write_text(
        f"root:x:0:0:root:/root:/bin/sh\nflamenco-worker:x:{UID}:{GID}::/var/lib/flamenco-worker:/usr/sbin/nologin\n"
    )
    (root / "etc" / "group").write_text(
        f"root:x:0:\nflamenco-worker:x:{GID}:\nflamenco-jobs:x:{JOB_GID}:flamenco-worker\n"
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(root: Path) -> dict[str, tuple[int, int, int, int, bytes | str]]:
    out: dict[str, tuple[int, int, int, int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content: bytes | str = os.readlink(path) if path.is_symlink() else (
            path.read_bytes() if path.is_file() else b"")
        out[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, content)
    return out


INSTALL = ("install", "--manager", "http://manager.example:8080/", "--job-user", "render")


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "stage"
    result = run(*INSTALL, "--root", str(root), "--dry-run", "--start")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("groupadd --system flamenco-jobs", "useradd --system", "flamenco-worker",
                     "directory /etc/flamenco-worker mode 0750", "directory /var/lib/flamenco-worker mode 0700",
                     "directory /var/log/flamenco-worker mode 0750", "file /etc/flamenco-worker/flamenco-worker.cfg "
                     "mode 0640 owner root:flamenco-worker", "/etc/systemd/system/flamenco-worker.service",
                     "/etc/sudoers.d/flamenco-worker", "systemctl restart --no-block flamenco-worker.service"):
        assert expected in out, f"{expected!r} not in:\n{out}"
    assert not root.exists()
    # Without --root the plan runs the real tools: the dry run names them.
    real = run(*INSTALL, "--dry-run")
    assert real.returncode == 0, real.stderr
    assert "run systemctl daemon-reload" in real.stdout
    assert "run systemctl enable flamenco-worker.service" in real.stdout


def test_install_into_staging_tree(tmp_path: Path) -> None:
    root = tmp_path / "stage"
    staged_users(root)
    result = run(*INSTALL, "--root", str(root), "--set", "log_level=debug", "--worker-name", "node-7")
    assert result.returncode == 0, result.stderr
    assert "skipped with --root: would run useradd" in result.stdout

    etc, state, logs = root / "etc/flamenco-worker", root / "var/lib/flamenco-worker", root / "var/log/flamenco-worker"
    config = etc / "flamenco-worker.cfg"
    unit = root / "etc/systemd/system/flamenco-worker.service"
    sudoers = root / "etc/sudoers.d/flamenco-worker"
    assert (mode(etc), mode(state), mode(logs), mode(config), mode(unit), mode(sudoers)) == (
        0o750, 0o700, 0o750, 0o640, 0o644, 0o440)
    if os.geteuid() == 0:
        assert (etc.stat().st_uid, etc.stat().st_gid) == (0, GID)
        assert (config.stat().st_uid, config.stat().st_gid) == (0, GID)
        assert (state.stat().st_uid, state.stat().st_gid) == (UID, GID)
        assert (logs.stat().st_uid, logs.stat().st_gid) == (UID, GID)
        work = root / "var/lib/flamenco-worker-tasks"
        assert (work.stat().st_uid, work.stat().st_gid, mode(work)) == (UID, JOB_GID, 0o750)
        assert unit.stat().st_uid == 0 and sudoers.stat().st_uid == 0

    loaded = cfg.load(config_files=[config], home=tmp_path / "nohome", environ={})
    assert loaded.manager_url == "http://manager.example:8080/"
    assert (loaded.job_user, loaded.log_level, loaded.worker_name) == ("render", "debug", "node-7")
    assert loaded.logs_dir == Path("/var/log/flamenco-worker")
    assert sudoers.read_text().splitlines()[-1] == "flamenco-worker ALL=(render) NOPASSWD: ALL"

    link = root / "etc/systemd/system/multi-user.target.wants/flamenco-worker.service"
    assert link.is_symlink() and os.readlink(link) == "/etc/systemd/system/flamenco-worker.service"

    text = unit.read_text()
    script = Path(sys.executable).parent / "flamenco-worker"
    for line in ("Type=notify", "Restart=on-failure", "KillMode=mixed", "WatchdogSec=", "User=flamenco-worker",
                 "SupplementaryGroups=flamenco-jobs", "RestartPreventExitStatus=2 3 4",
                 "RestartForceExitStatus=47", f"ExecStart={script} --home /var/lib/flamenco-worker",
                 "ProtectSystem=full", "WantedBy=multi-user.target"):
        assert line in text, line
    assert "NoNewPrivileges" not in text, "the job user is reached through sudo"
    stop = int(text.split("TimeoutStopSec=")[1].split()[0])
    # Longer than the worker's own bound: flush + sign-off + task kill grace.
    assert stop == STOP_TIMEOUT_SECONDS and stop > cfg.KEYS_BY_NAME["shutdown_flush_seconds"].default + 10 + \
        cfg.KEYS_BY_NAME["kill_grace_seconds"].default


def test_install_is_idempotent_and_keeps_the_config(tmp_path: Path) -> None:
    root = tmp_path / "stage"
    staged_users(root)
    assert run(*INSTALL, "--root", str(root)).returncode == 0
    before = snapshot(root)
    again = run(*INSTALL, "--root", str(root))
    assert again.returncode == 0, again.stderr
    assert snapshot(root) == before, "a second run changes nothing"
    assert "kept existing" in again.stdout and "unchanged" in again.stdout

    config = root / "etc/flamenco-worker/flamenco-worker.cfg"
    config.write_text(config.read_text() + 'worker_name = "edited-by-admin"\n')
    other = run("install", "--manager", "http://other:8080/", "--root", str(root))
    assert other.returncode == 0, other.stderr
    assert "edited-by-admin" in config.read_text() and "other:8080" not in config.read_text()
    forced = run("install", "--manager", "http://other:8080/", "--root", str(root), "--overwrite-config")
    assert forced.returncode == 0, forced.stderr
    assert "other:8080" in config.read_text() and "edited-by-admin" not in config.read_text()
    assert mode(config) == 0o640


def test_install_without_known_users_still_stages(tmp_path: Path) -> None:
    root = tmp_path / "bare"
    result = run("install", "--manager", "http://m:8080/", "--root", str(root), "--user", "fdw-no-such-user-x")
    assert result.returncode == 0, result.stderr
    assert "not set" in result.stdout
    assert mode(root / "var/lib/flamenco-worker") == 0o700


def test_install_refuses_bad_settings(tmp_path: Path) -> None:
    root = tmp_path / "stage"
    bad = run("install", "--backend", "deadline", "--root", str(root))
    assert bad.returncode == 2 and "farm_id" in bad.stderr
    bad_url = run("install", "--manager", "ftp://x", "--root", str(root))
    assert bad_url.returncode == 2 and "manager_url" in bad_url.stderr
    secret = run("install", "--manager", "http://m/", "--set", "worker_secret=x", "--root", str(root))
    assert secret.returncode == 2 and "credentials" in secret.stderr
    assert not root.exists()


def test_uninstall_keeps_state_and_logs_unless_purged(tmp_path: Path) -> None:
    root = tmp_path / "stage"
    staged_users(root)
    assert run(*INSTALL, "--root", str(root)).returncode == 0
    (root / "var/lib/flamenco-worker/.flamenco-worker.cfg").write_text("[flamenco-worker]\n")
    (root / "var/log/flamenco-worker/worker-agent.log").write_text("a line\n")

    dry = run("uninstall", "--root", str(root), "--dry-run")
    assert dry.returncode == 0 and "remove /etc/systemd/system/flamenco-worker.service" in dry.stdout
    assert (root / "etc/systemd/system/flamenco-worker.service").exists()

    result = run("uninstall", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert not (root / "etc/systemd/system/flamenco-worker.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/flamenco-worker.service").is_symlink()
    assert not (root / "etc/sudoers.d/flamenco-worker").exists()
    assert not (root / "etc/flamenco-worker").exists()
    assert (root / "var/lib/flamenco-worker/.flamenco-worker.cfg").exists()
    assert (root / "var/log/flamenco-worker/worker-agent.log").exists()
    assert run("uninstall", "--root", str(root)).returncode == 0, "uninstalling twice is fine"

    purge = run("uninstall", "--root", str(root), "--purge")
    assert purge.returncode == 0, purge.stderr
    assert not (root / "var/lib/flamenco-worker").exists() and not (root / "var/log/flamenco-worker").exists()
    assert "would run userdel flamenco-worker" in purge.stdout


def test_repository_unit_is_the_installer_default() -> None:
    assert (REPO / "flamenco-worker.service").read_text() == unit_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / "flamenco-worker.service"
    unit.write_text(unit_text(exec_start=worker_executable()[0]))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "flamenco-worker.service" not in result.stderr, result.stderr


def test_a_deadline_install_lets_queue_job_users_in(tmp_path: Path) -> None:
    """Deadline sessions run as their queue's job user through sudo: no NoNewPrivileges, and a session
    root outside the 0700 home that job users may pass through; unless every job runs as the agent."""
    root = tmp_path / "stage"
    staged_users(root)
    farm, fleet = "farm-" + "1" * 32, "fleet-" + "2" * 32
    result = run("install", "--backend", "deadline", "--farm-id", farm, "--fleet-id", fleet, "--root", str(root))
    assert result.returncode == 0, result.stderr
    sessions = root / "var/lib/flamenco-worker-sessions"
    assert (mode(sessions), sessions.stat().st_uid) == (0o711, UID)
    loaded = cfg.load(config_files=[root / "etc/flamenco-worker/flamenco-worker.cfg"], home=tmp_path / "h", environ={})
    assert loaded.session_root_dir == Path("/var/lib/flamenco-worker-sessions")
    assert "NoNewPrivileges" not in (root / "etc/systemd/system/flamenco-worker.service").read_text()

    agent_only = tmp_path / "agent-only"
    staged_users(agent_only)
    result = run("install", "--backend", "deadline", "--farm-id", farm, "--fleet-id", fleet, "--root", str(agent_only),
                 "--set", "deadline_run_jobs_as_agent_user=true")
    assert result.returncode == 0, result.stderr
    assert "NoNewPrivileges=yes" in (agent_only / "etc/systemd/system/flamenco-worker.service").read_text()
