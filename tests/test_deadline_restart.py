"""A Deadline agent killed with SIGKILL in the middle of a job, then started again on the same home:
every status and log line it had queued reaches the service, and no session action runs twice.
Real CLI processes, real boto3, the emulator refusing UpdateWorkerSchedule and PutLogEvents while
the first agent runs, so its work piles up in the queue on disk."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")
pytest.importorskip("openjd.sessions")
from deadline_agent import DeadlineAgentProcess  # noqa: E402

from flamenco_deadline_worker.testing.deadline_emulator import Options, simple_template  # noqa: E402

pytestmark = pytest.mark.slow

TASKS = 12
LINES = 40


def runs_of(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def test_sigkill_mid_job_then_restart_delivers_everything_and_runs_nothing_twice(run: Any, tmp_path: Path) -> None:
    marks = tmp_path / "runs.txt"
    script = (
        "import time; n = {{Task.Param.N}}; "
        f"open({str(marks)!r}, 'a').write(f'{{n}}\\n'); "
        f"[print(f'task {{n}} line {{i}}', flush=True) for i in range({LINES})]; "
        "time.sleep(0.4)"
    )
    emu, first = run(
        simple_template(TASKS, ("python3", "-c", script)),
        Options(update_interval_seconds=2, tasks_ahead=TASKS),
    )
    wait_until(lambda: len(runs_of(marks)) >= 1, 120, "the first task to start")
    # From now on the service answers neither statuses nor logs: the agent keeps working from its queue.
    emu.faults.operations = frozenset({"UpdateWorkerSchedule", "PutLogEvents"})
    emu.faults.error_rate = 1.0
    wait_until(lambda: len(runs_of(marks)) >= 6, 120, "six tasks to start")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(30)
    first.out.close()
    before = runs_of(marks)
    session = emu.read(lambda s: next(iter(s.sessions.values())))
    group = emu.state.job.log_group
    unreported = emu.read(
        lambda s: [a for a in s.sessions[session.id].actions if a.kind == "taskRun" and not a.done]
    )
    # The test means something only if finished work was still waiting in the queue.
    assert len(unreported) >= len(before) - 1 >= 4

    emu.faults.error_rate = 0.0
    second = DeadlineAgentProcess(emu, first.home)
    try:
        second.until(
            lambda s: len(s.task_statuses()) == TASKS and all(v == "SUCCEEDED" for v in s.task_statuses().values()),
            240,
            "every task SUCCEEDED",
        )
        runs = runs_of(marks)
        # A task that completed before the kill is never run again; only the one the kill cut short
        # (the last to start) may run once more, in a new session.
        assert sorted(set(runs)) == list(range(1, TASKS + 1))
        twice = {n for n in runs if runs.count(n) > 1}
        assert twice <= {before[-1]}, (before, runs)
        assert all(runs.count(n) == 1 for n in before[:-1])
        # Each of those tasks' completed status and every log line it printed arrived.
        actions = emu.read(lambda s: list(s.sessions[session.id].actions))
        done_before = [a for a in actions if a.kind == "taskRun" and a.status == "SUCCEEDED"]
        assert len(done_before) >= len(before) - 1
        second.until(
            lambda s: all(f"task {n} line {LINES - 1}" in s.log_text(group, session.id) for n in before[:-1]),
            60,
            "the logs of the tasks finished before the kill",
        )
        text = emu.read(lambda s: s.log_text(group, session.id))
        for n in before[:-1]:
            lines = [line for line in text.splitlines() if line.startswith(f"task {n} line ")]
            assert lines == [f"task {n} line {i}" for i in range(LINES)], n
        # The cut-short action was reported INTERRUPTED, not left to run again.
        cut = [a for a in actions if a.status == "INTERRUPTED"]
        assert len(cut) <= 1
        assert emu.read(lambda s: list(s.violations)) == []
        assert second.stop() == 0
    finally:
        if second.proc.poll() is None:
            second.stop()
