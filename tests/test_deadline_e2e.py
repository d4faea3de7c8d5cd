"""End to end: the real CLI (`flamenco-worker --backend deadline`) and real boto3 against the emulator."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")
pytest.importorskip("openjd.sessions")

from flamenco_deadline_worker.testing.deadline_emulator import (  # noqa: E402
    Faults,
    Options,
    ServiceState,
    simple_template,
)

pytestmark = pytest.mark.slow


def all_tasks(status: str) -> Any:
    return lambda s: s.task_statuses() and all(v == status for v in s.task_statuses().values())


def sessions_of(s: ServiceState) -> list[Any]:
    return list(s.sessions.values())


def test_twenty_tasks_succeed_with_their_output_in_the_log(run: Any) -> None:
    emu, agent = run(simple_template(20, ("python3", "-c", "print('output of task {{Task.Param.N}}')")))
    agent.until(all_tasks("SUCCEEDED"), 180, "20 tasks SUCCEEDED")
    actions = emu.read(lambda s: [a for ses in s.sessions.values() for a in ses.actions if a.kind == "taskRun"])
    assert len(actions) == 20
    assert {(a.status, a.process_exit_code) for a in actions} == {("SUCCEEDED", 0)}
    session = emu.read(lambda s: next(iter(s.sessions.values())))
    group = emu.state.job.log_group
    agent.until(lambda s: "output of task 20" in s.log_text(group, session.id), 60, "the log in CloudWatch")
    text = emu.read(lambda s: s.log_text(group, session.id))
    for n in range(1, 21):
        assert f"output of task {n}" in text
    local = agent.home / "flamenco-worker-logs" / emu.state.job.queue_id / f"{session.id}.log"
    assert "output of task 20" in local.read_text()
    assert emu.read(lambda s: list(s.violations)) == []
    assert agent.stop() == 0
    worker = emu.read(lambda s: next(iter(s.workers.values())))
    assert worker.statuses[-1] == "STOPPED", agent.output()[-3000:]


def env_template() -> dict[str, Any]:
    return simple_template(
        3, ("python3", "-c", "print('task {{Task.Param.N}}')"), step_environment=True, job_environment=True
    )


def test_environments_enter_and_exit_in_order(run: Any) -> None:
    emu, agent = run(env_template())
    agent.until(lambda s: any(ses.closed for ses in s.sessions.values()), 120, "the session to end")
    session = emu.read(lambda s: next(iter(s.sessions.values())))
    order = [(a.kind, (a.env_id or "").rsplit(":", 1)[-1], a.status) for a in session.actions]
    assert order == [
        ("envEnter", "JobEnv", "SUCCEEDED"),
        ("envEnter", "StepEnv", "SUCCEEDED"),
        ("taskRun", "", "SUCCEEDED"),
        ("taskRun", "", "SUCCEEDED"),
        ("taskRun", "", "SUCCEEDED"),
        ("envExit", "StepEnv", "SUCCEEDED"),
        ("envExit", "JobEnv", "SUCCEEDED"),
    ]
    group = emu.state.job.log_group
    agent.until(lambda s: "exit JobEnv" in s.log_text(group, session.id), 60, "the envExit output")
    text = emu.read(lambda s: s.log_text(group, session.id))
    marks = [
        text.index(m) for m in ("enter JobEnv", "enter StepEnv", "task 1", "task 3", "exit StepEnv", "exit JobEnv")
    ]
    assert marks == sorted(marks)
    assert emu.read(lambda s: list(s.violations)) == []


def test_a_task_exiting_3_fails_and_later_actions_are_never_attempted(run: Any) -> None:
    script = "import sys; n = {{Task.Param.N}}; print('task', n); sys.exit(3 if n == 2 else 0)"
    emu, agent = run(
        simple_template(6, ("python3", "-c", script), step_environment=True),
        Options(update_interval_seconds=2, tasks_ahead=4),
    )
    failed = agent.until(
        lambda s: next((a for a in s.actions.values() if a.status == "FAILED"), None), 120, "a FAILED action"
    )
    assert failed.process_exit_code == 3 and failed.kind == "taskRun"
    agent.until(lambda s: s.sessions[failed.session_id].closed, 120, "the failed session to end")
    actions = emu.read(lambda s: list(s.sessions[failed.session_id].actions))
    later = actions[actions.index(failed) + 1 :]
    assert [a.status for a in later if a.kind == "taskRun"] and all(
        a.status == "NEVER_ATTEMPTED" for a in later if a.kind == "taskRun"
    )
    assert [(a.kind, a.status) for a in later if a.kind == "envExit"] == [("envExit", "SUCCEEDED")]
    assert all(a.started_at is None and a.ended_at is None for a in later if a.status == "NEVER_ATTEMPTED")
    # The tasks never attempted go to another session and succeed there.
    agent.until(lambda s: sum(v == "SUCCEEDED" for v in s.task_statuses().values()) == 5, 120, "5 tasks done")
    assert emu.read(lambda s: list(s.violations)) == []


def test_a_canceled_running_task(run: Any, tmp_path: Path) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    script = (
        "import os, time; n = {{Task.Param.N}}; "
        f"open(os.path.join({str(pid_dir)!r}, str(n)), 'w').write(str(os.getpid())); "
        "time.sleep(600 if n == 2 else 0)"
    )
    emu, agent = run(simple_template(4, ("python3", "-c", script)))
    agent.until(
        lambda s: (
            (pid_dir / "2").exists()
            and any(
                a.task is not None and a.task.parameters == {"N": {"int": "2"}} and a.status == "RUNNING"
                for a in s.actions.values()
            )
        ),
        120,
        "task 2 running",
    )
    action = emu.read(lambda s: next(a for a in s.actions.values() if a.status == "RUNNING"))
    pid = int((pid_dir / "2").read_text())
    emu.state.cancel(action.id)
    agent.until(lambda s: s.actions[action.id].status == "CANCELED", 60, "the action CANCELED")
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
    agent.until(lambda s: s.sessions[action.session_id].closed, 60, "the session to end")
    actions = emu.read(lambda s: list(s.sessions[action.session_id].actions))
    later = actions[actions.index(action) + 1 :]
    assert later and all(a.status == "NEVER_ATTEMPTED" for a in later)
    assert emu.read(lambda s: list(s.violations)) == []


def test_throttling_and_500s_on_30_percent_of_requests(run: Any) -> None:
    faults = Faults(throttle_rate=0.15, error_rate=0.15, seed=3)
    emu, agent = run(simple_template(10, ("echo", "task {{Task.Param.N}}")), Options(update_interval_seconds=1), faults)
    agent.until(all_tasks("SUCCEEDED"), 240, "10 tasks SUCCEEDED through the faults")
    faulted = [r for r in emu.requests if r[2] in (429, 500)]
    assert len(faulted) >= 5
    session = emu.read(lambda s: next(iter(s.sessions.values())))
    agent.until(lambda s: "task 10" in s.log_text(s.job.log_group, session.id), 120, "the log through faults")
    assert emu.read(lambda s: list(s.violations)) == []


def test_the_service_down_for_20_seconds_mid_job(run: Any) -> None:
    emu, agent = run(
        simple_template(12, ("python3", "-c", "import time; time.sleep(0.5); print('task {{Task.Param.N}}')")),
        Options(update_interval_seconds=1),
    )
    agent.until(lambda s: sum(v == "SUCCEEDED" for v in s.task_statuses().values()) >= 2, 120, "2 tasks done")
    emu.go_down()
    time.sleep(20)  # the outage itself: the agent must ride it out
    assert agent.proc.poll() is None, agent.output()[-3000:]
    emu.come_back()
    agent.until(all_tasks("SUCCEEDED"), 180, "every task SUCCEEDED after the outage")
    sessions = emu.read(sessions_of)
    agent.until(
        lambda s: all(
            f"task {n}" in "".join(s.log_text(s.job.log_group, x.id) for x in sessions) for n in range(1, 13)
        ),
        120,
        "every task's log line",
    )
    assert emu.read(lambda s: list(s.violations)) == []


def test_sigterm_drains(run: Any) -> None:
    emu, agent = run(simple_template(3, ("sleep", "597"), step_environment=True))
    running = agent.until(
        lambda s: next((a for a in s.actions.values() if a.kind == "taskRun" and a.status == "RUNNING"), None),
        120,
        "a running task",
    )
    started = time.monotonic()
    assert agent.stop(60) == 0, agent.output()[-3000:]
    assert time.monotonic() - started < 20
    worker = emu.read(lambda s: next(iter(s.workers.values())))
    assert worker.statuses[-2:] == ["STOPPING", "STOPPED"]
    actions = emu.read(lambda s: list(s.sessions[running.session_id].actions))
    assert emu.read(lambda s: s.actions[running.id].status) == "INTERRUPTED"
    later = actions[actions.index(running) + 1 :]
    assert later and all(a.status in ("NEVER_ATTEMPTED", "ASSIGNED") for a in later)
    assert any(a.status == "NEVER_ATTEMPTED" for a in later)
    assert subprocess.run(["pgrep", "-f", "sleep 597"], capture_output=True).returncode == 1
