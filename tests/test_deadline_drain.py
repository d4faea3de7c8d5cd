"""End to end: regular drains (service stop, EC2 spot interruption, rebalance), the host shutdown on
a service stop, the IMDS instance profile guard, and `status --json` showing the drain; the real
`flamenco-worker --backend deadline` against the emulator and the local IMDS stand-in."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")
pytest.importorskip("openjd.sessions")
from deadline_agent import DeadlineAgentProcess, Start  # noqa: E402

from flamenco_deadline_worker.testing.deadline_emulator import Options, ServiceState, simple_template  # noqa: E402
from flamenco_deadline_worker.testing.imds_standin import ImdsStandIn  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def imds() -> Iterator[ImdsStandIn]:
    with ImdsStandIn() as standin:
        yield standin


def gated_template(go: Path, tasks: int = 6) -> dict[str, Any]:
    """Task 1 runs until ``go`` exists; the others end at once.  A step environment to exit."""
    script = (
        "import os, time\n"
        "n = {{Task.Param.N}}\n"
        "print('task', n, 'running', flush=True)\n"
        f"while n == 1 and not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.05)\n"
        "print('task', n, 'done', flush=True)\n"
    )
    return simple_template(tasks, ("python3", "-c", script), step_environment=True)


def running_task(state: ServiceState) -> Any:
    return next((a for a in state.actions.values() if a.kind == "taskRun" and a.status == "RUNNING"), None)


def the_worker(state: ServiceState) -> Any:
    return next(iter(state.workers.values()), None)


def status_json(agent: DeadlineAgentProcess) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "flamenco_deadline_worker", "status", "--json", "--home", str(agent.home),
         "--config", str(agent.home / "worker.cfg")],
        capture_output=True, text=True, timeout=120, check=True,
    )
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def recorder(tmp_path: Path) -> tuple[Path, str]:
    """A stand-in for the shutdown command: records its arguments and when it ran."""
    record = tmp_path / "shutdown-called.json"
    script = tmp_path / "record_shutdown.py"
    script.write_text(
        "import json, sys, time\n"
        f"open({str(record)!r}, 'w').write(json.dumps({{'argv': sys.argv[1:], 'at': time.time()}}))\n"
    )
    command = json.dumps([sys.executable, str(script), "now", "--really"])
    return record, f"deadline_shutdown_on_stop = true\ndeadline_shutdown_command = {command}\n"


def check_regular_drain(emu: Any, running: Any) -> None:
    """The running task SUCCEEDED, later taskRuns NEVER_ATTEMPTED, the step environment exited;
    STOPPING then STOPPED; no protocol breach."""
    actions = emu.read(lambda s: list(s.sessions[running.session_id].actions))
    assert emu.read(lambda s: s.actions[running.id].status) == "SUCCEEDED"
    later = actions[actions.index(running) + 1 :]
    tasks = [a.status for a in later if a.kind == "taskRun"]
    assert tasks and set(tasks) == {"NEVER_ATTEMPTED"}, [(a.kind, a.status) for a in later]
    assert [(a.kind, a.status) for a in later if a.kind == "envExit"] == [("envExit", "SUCCEEDED")]
    worker = emu.read(the_worker)
    assert worker.statuses[-2:] == ["STOPPING", "STOPPED"], worker.statuses
    assert emu.read(lambda s: list(s.violations)) == []


def test_a_service_stop_with_sessions_drains_then_shuts_the_host_down(run: Start, tmp_path: Path) -> None:
    go = tmp_path / "go"
    record, config = recorder(tmp_path)
    emu, agent = run(
        gated_template(go), Options(update_interval_seconds=1, tasks_ahead=3, stop_with_sessions=True), config=config
    )
    running = agent.until(running_task, 120, "task 1 running")
    assert status_json(agent)["drain"] == {"kind": "none"}
    emu.state.request_stop(emu.read(the_worker).id)
    agent.until(lambda s: the_worker(s).status == "STOPPING", 60, "the worker STOPPING")
    drain = status_json(agent)["drain"]
    assert (drain["kind"], drain["mode"], drain["deadline"]) == ("service", "regular", None)
    assert "desiredWorkerStatus=STOPPED" in drain["message"]
    plain = subprocess.run(
        [sys.executable, "-m", "flamenco_deadline_worker", "status", "--home", str(agent.home),
         "--config", str(agent.home / "worker.cfg")], capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert "drain:        regular: the service asked the worker to stop" in plain
    assert emu.read(lambda s: s.actions[running.id].status) == "RUNNING"  # the drain lets it run
    assert not record.exists()
    go.touch()
    assert agent.proc.wait(120) == 0, agent.output()[-3000:]
    check_regular_drain(emu, running)
    # The host shutdown ran once, after UpdateWorker STOPPED, with the configured command.
    called = json.loads(record.read_text())
    assert called["argv"] == ["now", "--really"]
    last_update_worker = max(t for t, op, status in emu.requests if op == "UpdateWorker" and status == 200)
    assert called["at"] > last_update_worker
    assert "shutting the host down with:" in agent.agent_log()
    final = status_json(agent)
    assert final["drain"]["kind"] == "service" and final["running"] is False


def test_a_spot_interruption_drains_and_interrupts_what_cannot_finish(
    run: Start, imds: ImdsStandIn, tmp_path: Path
) -> None:
    record, config = recorder(tmp_path)  # a spot interruption is no service stop: no host shutdown
    emu, agent = run(
        gated_template(tmp_path / "never"), Options(update_interval_seconds=1, tasks_ahead=3),
        config=config, env=imds.env(),
    )
    running = agent.until(running_task, 120, "task 1 running")
    deadline = time.time() + 18
    imds.spot_interruption(deadline)
    agent.until(lambda s: the_worker(s).status == "STOPPING", 30, "the worker STOPPING after the notice")
    drain = status_json(agent)["drain"]
    assert (drain["kind"], drain["mode"]) == ("spot", "regular")
    assert drain["deadline"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deadline))
    assert agent.proc.wait(60) == 0, agent.output()[-3000:]
    ended = time.time()
    # Turned expedited about 10 s before the host goes, not at once, and done before it goes.
    assert deadline - 14 < ended < deadline + 3, (ended, deadline)
    actions = emu.read(lambda s: list(s.sessions[running.session_id].actions))
    assert emu.read(lambda s: s.actions[running.id].status) == "INTERRUPTED"
    later = actions[actions.index(running) + 1 :]
    assert {a.status for a in later if a.kind == "taskRun"} == {"NEVER_ATTEMPTED"}, [
        (a.id, a.kind, a.status, a.updates) for a in actions] + [r for r in emu.requests if r[1] != "PutLogEvents"]
    assert emu.read(the_worker).statuses[-2:] == ["STOPPING", "STOPPED"]
    assert emu.read(lambda s: list(s.violations)) == []
    final = status_json(agent)["drain"]
    assert (final["kind"], final["mode"]) == ("spot", "expedited")
    assert not record.exists()
    # IMDSv2: every metadata read carried a token asked for first.
    paths = imds.paths_asked()
    assert paths[0] == "/latest/api/token" and "/latest/meta-data/spot/instance-action" in paths
    assert all(status != 401 for _, _, status in imds.requests)


def test_a_rebalance_recommendation_lets_the_running_task_finish(
    run: Start, imds: ImdsStandIn, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    emu, agent = run(gated_template(go), Options(update_interval_seconds=1, tasks_ahead=3), env=imds.env())
    running = agent.until(running_task, 120, "task 1 running")
    imds.rebalance_recommendation()
    agent.until(lambda s: the_worker(s).status == "STOPPING", 30, "the worker STOPPING after the notice")
    status = status_json(agent)
    drain = status["drain"]
    assert (drain["kind"], drain["mode"], drain["deadline"]) == ("rebalance", "regular", None)
    assert status["state"] == "stopping"
    go.touch()
    assert agent.proc.wait(120) == 0, agent.output()[-3000:]
    check_regular_drain(emu, running)


def test_imds_is_never_asked_when_disabled(run: Start, imds: ImdsStandIn) -> None:
    env = {**imds.env(), "AWS_EC2_METADATA_DISABLED": "true"}
    emu, agent = run(simple_template(2, ("echo", "task {{Task.Param.N}}")), env=env,
                     config="deadline_disallow_instance_profile = true\n")
    agent.until(lambda s: s.task_statuses() and all(v == "SUCCEEDED" for v in s.task_statuses().values()),
                120, "2 tasks SUCCEEDED")
    assert agent.stop() == 0
    assert imds.requests == []
    drain = status_json(agent)["drain"]  # stopped by SIGTERM: the expedited drain
    assert (drain["kind"], drain["mode"]) == ("expedited", "expedited") and "SIGTERM" in drain["message"]
    text = agent.agent_log()
    assert "not watching for EC2 spot interruption or rebalance notices: AWS_EC2_METADATA_DISABLED=true" in text
    assert "checked whether this host is an EC2 instance: it is not" in text


def credential_probe(imds: ImdsStandIn) -> dict[str, Any]:
    """A task that tries to read the instance profile's credentials from IMDS and prints the answer."""
    script = (
        "import urllib.request, urllib.error\n"
        f"base = {imds.url!r}\n"
        "req = urllib.request.Request(base + '/latest/api/token', method='PUT',"
        " headers={'X-aws-ec2-metadata-token-ttl-seconds': '60'})\n"
        "token = urllib.request.urlopen(req).read().decode()\n"
        "req = urllib.request.Request(base + '/latest/meta-data/iam/security-credentials/EmulatorInstanceRole',"
        " headers={'X-aws-ec2-metadata-token': token})\n"
        "try:\n"
        "    print('PROBE', urllib.request.urlopen(req).status)\n"
        "except urllib.error.HTTPError as exc:\n"
        "    print('PROBE', exc.code)\n"
    )
    return simple_template(1, ("python3", "-c", script))


def test_the_instance_profile_guard_waits_for_the_profile_to_go(run: Start, imds: ImdsStandIn) -> None:
    imds.attach_profile()
    emu, agent = run(credential_probe(imds), env=imds.env(), config="deadline_disallow_instance_profile = true\n")
    agent.until(lambda s: imds.paths_asked().count("/latest/meta-data/iam/info") >= 2, 60, "the guard asking")
    assert emu.read(lambda s: list(s.sessions)) == []  # no work while the profile is attached
    imds.detach_profile()
    agent.until(lambda s: s.task_statuses() and all(v == "SUCCEEDED" for v in s.task_statuses().values()),
                120, "the probe task SUCCEEDED")
    session = emu.read(lambda s: next(iter(s.sessions.values())))
    agent.until(lambda s: "PROBE" in s.log_text(s.job.log_group, session.id), 60, "the probe's output")
    assert "PROBE 404" in emu.read(lambda s: s.log_text(s.job.log_group, session.id))
    assert agent.stop() == 0
    text = agent.agent_log()
    assert "instance profile arn:aws:iam::123456789012:instance-profile/EmulatorProfile is attached" in text
    assert "no instance profile is attached" in text and "disassociated while the agent waited" in text


def test_the_instance_profile_guard_stops_the_worker_when_the_profile_stays(run: Start, imds: ImdsStandIn) -> None:
    imds.attach_profile()
    emu, agent = run(
        credential_probe(imds), env=imds.env(),
        config="deadline_disallow_instance_profile = true\ndeadline_instance_profile_wait_seconds = 3\n",
    )
    assert agent.proc.wait(120) == 2, agent.output()[-3000:]
    assert emu.read(the_worker).statuses[-1] == "STOPPED"
    assert emu.read(lambda s: list(s.sessions)) == []
    text = agent.output()
    assert "is still attached after 3 s" in text and "set the worker STOPPED" in text
    assert "Disassociate the instance profile" in text
