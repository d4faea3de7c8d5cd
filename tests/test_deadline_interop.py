"""Emulator fidelity: the real AWS deadline-cloud-worker-agent runs a small job through the emulator.

If the real agent and the emulator disagree, the emulator is wrong.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("boto3")
from flamenco_deadline_worker.testing.deadline_emulator import (  # noqa: E402
    DeadlineEmulator,
    Options,
    make_job,
    simple_template,
)
from flamenco_deadline_worker.testing.deadline_emulator.aws_agent import (  # noqa: E402
    agent_command,
    agent_executable,
)

pytestmark = pytest.mark.slow


def test_the_aws_agent_runs_a_job_through_the_emulator(tmp_path: Path) -> None:
    try:
        exe = agent_executable()
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"could not install the AWS worker agent: {exc}")
    template = simple_template(
        4,
        ("python3", "-c", "print('hello from task {{Task.Param.N}}')"),
        step_environment=True,
        job_environment=True,
    )
    # The real agent does not keep to the old 5/s per-stream quota, and CloudWatch no longer enforces it.
    options = Options(update_interval_seconds=1, log_stream_rate_is_violation=False)
    with DeadlineEmulator(make_job(template), options) as emu:
        command, env = agent_command(emu, tmp_path, exe)
        out = (tmp_path / "agent.out").open("wb")
        agent = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            emu.wait_for(
                lambda s: s.workers and all(v == "SUCCEEDED" for v in s.task_statuses().values()),
                240,
                "every task SUCCEEDED",
            )
            session_id = emu.wait_for(
                lambda s: next((sid for sid, ses in s.sessions.items() if ses.closed), None),
                120,
                "the session to close",
            )
            actions = emu.read(
                lambda s: [(a.kind, a.status, a.process_exit_code) for a in s.sessions[session_id].actions]
            )
            assert [k for k, _, _ in actions] == (["envEnter", "envEnter"] + ["taskRun"] * 4 + ["envExit", "envExit"])
            assert {st for _, st, _ in actions} == {"SUCCEEDED"}
            emu.wait_for(
                lambda s: "hello from task 4" in s.log_text(s.job.log_group, session_id),
                120,
                "the session log in CloudWatch",
            )
            assert emu.read(lambda s: list(s.violations)) == []
            calls = emu.read(lambda s: {op for op, _ in s.calls})
            assert {"AssumeQueueRoleForWorker", "BatchGetJobEntity", "PutLogEvents"} <= calls
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(60)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
            out.close()
        worker = emu.read(lambda s: next(iter(s.workers.values())))
        assert "STARTED" in worker.statuses
        invalid = [r for r in emu.requests if r[2] == 400]
        assert invalid == [], invalid
