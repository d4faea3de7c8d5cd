"""`flamenco-worker flush` for the Deadline backend: a stopped worker's queued action statuses and
session logs delivered (or dropped, saying why) with the same exit codes as for Flamenco.  Real CLI,
real boto3, the emulator."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("boto3")
pytest.importorskip("openjd.sessions")
from deadline_agent import DeadlineAgentProcess, Start  # noqa: E402

from flamenco_deadline_worker.testing.deadline_emulator import DeadlineEmulator, simple_template  # noqa: E402

pytestmark = pytest.mark.slow


def flush(emu: DeadlineEmulator, home: Path, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(emu.client_env())
    done = subprocess.run(
        [sys.executable, "-m", "flamenco_deadline_worker", "flush", "--home", str(home),
         "--config", str(home / "worker.cfg"), *args],
        capture_output=True, text=True, timeout=180, env=env,
    )
    return done.returncode, done.stdout + done.stderr


def stopped_with_a_backlog(run: Start, tmp_path: Path) -> tuple[DeadlineEmulator, DeadlineAgentProcess, str]:
    """A one-task job whose task ends while the service is down; the worker stops before it is back:
    the action's status and its log stay queued.  The id of that action."""
    go = tmp_path / "go"
    script = (f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.05)\n"
              "print('the work is done', flush=True)\n")
    emu, agent = run(simple_template(1, ("python3", "-c", script)), config="shutdown_flush_seconds = 1\n")
    action = agent.until(lambda s: next((a for a in s.actions.values() if a.status == "RUNNING"), None),
                         120, "the task running")
    emu.go_down()
    go.touch()
    local_log = agent.home / "flamenco-worker-logs"
    deadline = time.monotonic() + 60
    while "the work is done" not in "".join(p.read_text() for p in local_log.glob("*/*.log") if p.is_file()):
        # The local session log is written when a piece is first tried: the task has ended.
        assert time.monotonic() < deadline, agent.output()[-3000:]
        time.sleep(0.1)
    assert agent.stop(120) == 0, agent.output()[-3000:]
    return emu, agent, action.id


def test_flush_delivers_what_a_stopped_worker_left_queued(run: Start, tmp_path: Path) -> None:
    emu, agent, action_id = stopped_with_a_backlog(run, tmp_path)
    assert emu.read(lambda s: s.actions[action_id].status) == "RUNNING"

    code, out = flush(emu, agent.home, "--timeout", "2")  # still down
    assert code == 1 and "still queued" in out, out

    emu.come_back()
    code, out = flush(emu, agent.home)
    assert code == 0, out
    assert "delivered" in out
    assert emu.read(lambda s: (s.actions[action_id].status, s.actions[action_id].process_exit_code)) == (
        "SUCCEEDED", 0)
    assert set(emu.state.task_statuses().values()) == {"SUCCEEDED"}
    session_id = emu.read(lambda s: s.actions[action_id].session_id)
    assert "the work is done" in emu.state.log_text(emu.state.job.log_group, session_id)
    worker = emu.read(lambda s: next(iter(s.workers.values())))
    assert worker.statuses[-2:] == ["STOPPING", "STOPPED"], worker.statuses
    assert emu.read(lambda s: list(s.violations)) == []

    code, out = flush(emu, agent.home)
    assert code == 0 and "nothing to deliver" in out, out


def test_flush_drops_statuses_the_service_no_longer_takes(run: Start, tmp_path: Path) -> None:
    emu, agent, action_id = stopped_with_a_backlog(run, tmp_path)
    emu.come_back()
    worker_id = emu.read(lambda s: next(iter(s.workers)))
    emu.state.stop_responding(worker_id)  # the service gave the task out again meanwhile
    code, out = flush(emu, agent.home)
    assert code == 0, out
    assert "dropped" in out and "no longer has this worker online" in out, out
    session_id = emu.read(lambda s: s.actions[action_id].session_id)
    # The log still reaches CloudWatch; nothing is sent for the ended session's actions.
    assert "the work is done" in emu.state.log_text(emu.state.job.log_group, session_id)
    assert emu.read(lambda s: (s.actions[action_id].status, s.workers[worker_id].status)) == (
        "RUNNING", "NOT_RESPONDING")
    assert emu.read(lambda s: list(s.violations)) == []
    status = subprocess.run(
        [sys.executable, "-m", "flamenco_deadline_worker", "status", "--json", "--home", str(agent.home),
         "--config", str(agent.home / "worker.cfg")], capture_output=True, text=True, timeout=60)
    assert '"count": 0' in status.stdout


def test_flush_without_a_worker_id_says_so(run: Start, tmp_path: Path) -> None:
    emu, agent, _ = stopped_with_a_backlog(run, tmp_path)
    (agent.home / "deadline-worker.json").unlink()
    code, out = flush(emu, agent.home)
    assert code == 1 and "names no Deadline Cloud worker" in out, out
