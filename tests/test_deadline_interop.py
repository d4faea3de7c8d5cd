"""Emulator fidelity: the real AWS deadline-cloud-worker-agent runs a small job with job attachments
through the emulator and a local S3 server.

If the real agent and the emulator disagree, the emulator is wrong.  The AWS agent probes EC2
instance metadata (169.254.169.254) by itself, so it runs, with the emulator, only inside a network
namespace that has nothing but loopback; where none can be made, the test skips and says why.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("boto3")
pytest.importorskip("deadline.job_attachments")
pytest.importorskip("moto")
from flamenco_deadline_worker.testing import netns  # noqa: E402
from flamenco_deadline_worker.testing.attachments_job import attachments_template  # noqa: E402
from flamenco_deadline_worker.testing.deadline_emulator.aws_agent import agent_executable  # noqa: E402
from flamenco_deadline_worker.testing.deadline_emulator.drive import AWS, RunSpec, run_isolated  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def namespace() -> None:
    problem = netns.namespace_problem()
    if problem is not None:
        pytest.skip(f"the AWS agent runs only in a loopback-only network namespace: {problem}")


PROBE = """
import socket
from flamenco_deadline_worker.testing import netns
print(netns.interfaces(), netns.ipv4_routes())
try:
    socket.create_connection(("169.254.169.254", 80), timeout=5)
except OSError as exc:
    print(exc.errno)
"""


def test_the_namespace_has_only_loopback(namespace: None) -> None:
    done = subprocess.run(
        netns.loopback_only_command([sys.executable, "-c", PROBE]), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # Only lo, no route anywhere: the metadata address is unreachable at once (ENETUNREACH), no packet sent.
    assert done.stdout.split("\n")[:2] == ["['lo'] []", "101"]


def test_the_helper_refuses_to_run_outside_a_fresh_namespace() -> None:
    if netns.loopback_only_problem() is None:
        pytest.skip("this test process itself has only loopback")
    done = subprocess.run(
        [sys.executable, "-m", "flamenco_deadline_worker.testing.netns", "--", "true"], capture_output=True, text=True
    )
    assert done.returncode == 3
    assert "not a loopback-only namespace" in done.stderr


def test_the_aws_agent_runs_a_job_through_the_emulator(namespace: None, tmp_path: Path) -> None:
    try:
        exe = agent_executable()  # from PyPI, before entering the namespace: nothing gets out of it
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"could not install the AWS worker agent: {exc}")
    # The job carries input attachments (made and uploaded by the deadline library as a submitter does)
    # through an S3 server (moto) that runs with the emulator inside the namespace.
    template = attachments_template(4, 20, environments=True)
    spec = RunSpec(
        AWS,
        template,
        str(tmp_path),
        aws_executable=str(exe),
        update_interval_seconds=1,
        # The real agent does not keep to the old 5/s per-stream quota, and CloudWatch no longer enforces it.
        log_stream_rate_is_violation=False,
        timeout=240,
        wait_for_closed_session=True,
        last_log_line="task 4 hashed 5 inputs",
        attachment_files=20,
        attachment_bytes=2_000_000,
    )
    result = run_isolated(spec)
    (session,) = [s for s in result["sessions"].values() if s[-1][0] == "envExit"]
    assert [kind for kind, _, _ in session] == (
        ["syncInputJobAttachments", "envEnter", "envEnter"] + ["taskRun"] * 4 + ["envExit", "envExit"]
    )
    assert {status for _, status, _ in session} == {"SUCCEEDED"}
    assert "task 4 hashed 5 inputs" in result["session_log"]
    # Its inputs came from S3 and every task's output went back with its output manifest.
    assert result["attachments"]["output_manifests"] == 4
    assert result["attachments"]["outputs_match"] is True
    assert result["violations"] == []
    assert {"AssumeQueueRoleForWorker", "BatchGetJobEntity", "PutLogEvents"} <= set(result["operations"])
    assert "STARTED" in result["worker_statuses"][0]
    assert result["invalid_requests"] == []
