"""The Deadline worker fitting its host as the AWS agent does: capabilities detected, configured, sent
in UpdateWorker and matched against host requirements by the emulator; the DEADLINE_* variables of
every action; session directories kept on request.  Real CLI, real boto3, the emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")
pytest.importorskip("openjd.sessions")
from deadline_agent import Start  # noqa: E402

from flamenco_deadline_worker.backends.deadline import capabilities  # noqa: E402
from flamenco_deadline_worker.testing.deadline_emulator import Options, simple_template  # noqa: E402

pytestmark = pytest.mark.slow


def fake_nvidia_smi(directory: Path, body: str) -> dict[str, str]:
    """An `nvidia-smi` shell script in ``directory``; the PATH that finds it first."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return {"PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}


def status_json(home: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "flamenco_deadline_worker", "status", "--json", "--home", str(home),
         "--config", str(home / "worker.cfg")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def sent(capabilities_sent: dict[str, Any]) -> tuple[dict[str, float], dict[str, list[str]]]:
    amounts = {a["name"]: a["value"] for a in capabilities_sent["amounts"]}
    attributes = {a["name"]: a["values"] for a in capabilities_sent["attributes"]}
    return amounts, attributes


# ---- capabilities ------------------------------------------------------------------------------

CONFIGURED = """
[capabilities.amounts]
"amount.worker.vcpu" = 64
"acme:amount.licenses" = 3

[capabilities.attributes]
"attr.site" = ["paris", "night_shift"]
"""


def demanding_template(**requirements: Any) -> dict[str, Any]:
    template = simple_template(2, ("python3", "-c", "print('ran {{Task.Param.N}}')"))
    template["steps"][0]["hostRequirements"] = requirements
    return template


def test_capabilities_detected_configured_sent_shown_and_matched(run: Start, tmp_path: Path) -> None:
    env = fake_nvidia_smi(tmp_path / "bin", "printf '24576 MiB\\n16384 MiB\\n'")
    template = demanding_template(
        amounts=[
            {"name": "amount.worker.gpu", "min": 2},
            {"name": "amount.worker.gpu.memory", "min": 16000},
            {"name": "amount.worker.vcpu", "min": 32, "max": 64},
            {"name": "acme:amount.licenses", "min": 1},
        ],
        attributes=[
            {"name": "attr.worker.os.family", "anyOf": ["linux"]},
            {"name": "attr.site", "allOf": ["paris", "night_shift"]},
        ],
    )
    emu, agent = run(template, config=CONFIGURED, env=env)
    agent.until(lambda s: s.task_statuses() and all(v == "SUCCEEDED" for v in s.task_statuses().values()),
                180, "the demanding job to run")
    worker = emu.read(lambda s: next(iter(s.workers.values())))
    amounts, attributes = sent(worker.capabilities)
    # Detected, in the AWS agent's names and units; the GPU memory is the smallest GPU's.
    assert amounts["amount.worker.gpu"] == 2 and amounts["amount.worker.gpu.memory"] == 16384
    assert amounts["amount.worker.memory"] == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    assert amounts["amount.worker.disk.scratch"] > 0
    assert attributes["attr.worker.os.family"] == ["linux"]
    assert attributes["attr.worker.cpu.arch"] == [capabilities.CPU_ARCHES.get(os.uname().machine, os.uname().machine)]
    # Configured: one detected value replaced, names added.
    assert amounts["amount.worker.vcpu"] == 64 and amounts["acme:amount.licenses"] == 3
    assert attributes["attr.site"] == ["paris", "night_shift"]
    assert emu.read(lambda s: list(s.violations)) == []

    shown = status_json(agent.home)["capabilities"]
    assert shown["amounts"] == amounts
    assert shown["attributes"] == attributes
    assert "capabilities for the service: " in agent.agent_log()
    text = subprocess.run(
        [sys.executable, "-m", "flamenco_deadline_worker", "status", "--home", str(agent.home),
         "--config", str(agent.home / "worker.cfg")], capture_output=True, text=True, timeout=120).stdout
    assert "acme:amount.licenses=3" in text and "attr.site=paris|night_shift" in text, text


BROKEN_NVIDIA_SMI = {
    "fails": ("echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver' >&2; exit 9",
              ["exited with 9", "could not communicate with the NVIDIA driver"]),
    "hangs": ("exec sleep 600", ["did not answer within 10 s"]),
    "prints garbage": ("echo 'No devices were found here'", ["printed 'No devices were found here'"]),
}


@pytest.mark.parametrize("broken", list(BROKEN_NVIDIA_SMI))
def test_a_job_the_host_does_not_meet_stays_unassigned(run: Start, tmp_path: Path, broken: str) -> None:
    # A broken GPU driver: start-up goes on, with a warning and no GPU amounts.
    body, warnings = BROKEN_NVIDIA_SMI[broken]
    env = fake_nvidia_smi(tmp_path / "bin", body)
    template = demanding_template(amounts=[{"name": "amount.worker.gpu", "min": 1}])
    emu, agent = run(template, Options(update_interval_seconds=1), config=CONFIGURED, env=env)
    agent.until(lambda s: sum(op == "UpdateWorkerSchedule" for op, _ in s.calls) >= 4, 120, "four schedule calls")
    assert emu.read(lambda s: (list(s.sessions), set(s.task_statuses().values()))) == ([], {"READY"})
    worker = emu.read(lambda s: next(iter(s.workers.values())))
    assert worker.status == "STARTED"
    amounts, _ = sent(worker.capabilities)
    assert "amount.worker.gpu" not in amounts and "amount.worker.vcpu" in amounts
    assert emu.state.unmet_requirements(worker.id) == {"Work": ["amount.worker.gpu = 0, needs 1.."]}
    log_text = agent.agent_log()
    assert all(w in log_text for w in warnings), log_text[-3000:]
    assert agent.stop() == 0


def test_nvidia_smi_that_hangs_or_prints_garbage_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    pid_file = tmp_path / "child.pid"
    env = fake_nvidia_smi(tmp_path / "hang", f"sleep 600 & echo $! > {pid_file}; wait")
    monkeypatch.setenv("PATH", env["PATH"])
    started = time.monotonic()
    assert capabilities.gpu_amounts(timeout=1.0) == {}
    assert time.monotonic() - started < 15
    assert "did not answer within 1 s" in caplog.text
    child = int(pid_file.read_text())
    for _ in range(100):  # its own children die with it (killed as a process group)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"nvidia-smi's child {child} still runs")

    caplog.clear()
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "garbage", "echo 'N/A'; echo '1024'")["PATH"])
    assert capabilities.gpu_amounts(timeout=5.0) == {}
    assert "printed 'N/A', not a GPU memory size" in caplog.text

    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert capabilities.gpu_amounts() == {}
    assert "no nvidia-smi on PATH" in caplog.text
    # Detection without nvidia-smi still gives the rest.
    found = capabilities.detect(tmp_path)
    assert found.amounts["amount.worker.vcpu"] == os.cpu_count()
    assert set(found.attributes) == {"attr.worker.os.family", "attr.worker.cpu.arch"}
    # Too few to send (the service takes 2 to 17 of each): nothing is sent rather than a refused UpdateWorker.
    assert found.for_update_worker_if_complete() == found.for_update_worker()
    assert capabilities.Capabilities({"amount.worker.vcpu": 2.0}, {}).for_update_worker_if_complete() is None
    assert "none are sent" in caplog.text


# ---- DEADLINE_* ----------------------------------------------------------------------------------

PRINT_ENV = ("import json, os; "
             "print('{tag}', json.dumps({{k: v for k, v in os.environ.items() if k.startswith('DEADLINE_')}}))")


def test_every_action_sees_the_deadline_variables(run: Start) -> None:
    template = simple_template(2, ("python3", "-c", PRINT_ENV.format(tag="TASK{{Task.Param.N}}")))
    template["steps"][0]["stepEnvironments"] = [{
        "name": "StepEnv",
        "script": {"actions": {
            "onEnter": {"command": "python3", "args": ["-c", PRINT_ENV.format(tag="ENTER")]},
            "onExit": {"command": "python3", "args": ["-c", PRINT_ENV.format(tag="EXIT")]},
        }},
    }]
    emu, agent = run(template)
    session = agent.until(lambda s: next((x for x in s.sessions.values() if x.closed), None), 180, "the session")
    group = emu.state.job.log_group
    text = agent.until(lambda s: "EXIT {" in s.log_text(group, session.id) and s.log_text(group, session.id),
                       60, "the envExit's line")
    seen = {}
    for line in text.splitlines():
        tag, _, rest = line.partition(" ")
        if tag in ("ENTER", "EXIT", "TASK1", "TASK2"):
            seen[tag] = json.loads(rest)
    job, options = emu.state.job, emu.state.options
    worker_id = emu.read(lambda s: next(iter(s.workers)))
    common = {
        "DEADLINE_FARM_ID": options.farm_id,
        "DEADLINE_FLEET_ID": options.fleet_id,
        "DEADLINE_WORKER_ID": worker_id,
        "DEADLINE_QUEUE_ID": job.queue_id,
        "DEADLINE_JOB_ID": job.id,
        "DEADLINE_SESSION_ID": session.id,
    }
    actions = {a.kind + (str(a.task.parameters["N"]["int"]) if a.task else ""): a for a in session.actions}
    assert seen["ENTER"] == {**common, "DEADLINE_SESSIONACTION_ID": actions["envEnter"].id}
    assert seen["EXIT"] == {**common, "DEADLINE_SESSIONACTION_ID": actions["envExit"].id}
    for n in ("1", "2"):
        task = actions["taskRun" + n]
        assert task.task is not None
        assert seen["TASK" + n] == {
            **common,
            "DEADLINE_SESSIONACTION_ID": task.id,
            "DEADLINE_STEP_ID": task.task.step_id,
            "DEADLINE_TASK_ID": task.task.id,
        }
    assert emu.read(lambda s: list(s.violations)) == []


# ---- deadline_retain_session_dir -----------------------------------------------------------------

@pytest.mark.parametrize("retain", [True, False])
def test_the_session_directory_is_kept_only_when_asked(run: Start, retain: bool) -> None:
    script = ("import os, pathlib; d = os.environ['OPENJD_SESSION_WORKING_DIR']; "
              "(pathlib.Path(d) / 'result.txt').write_text('kept'); print('WORKDIR', d)")
    config = f"deadline_retain_session_dir = {'true' if retain else 'false'}\n"
    emu, agent = run(simple_template(1, ("python3", "-c", script)), config=config)
    session = agent.until(lambda s: next((x for x in s.sessions.values() if x.closed), None), 180, "the session")
    group = emu.state.job.log_group
    text = agent.until(lambda s: "WORKDIR " in s.log_text(group, session.id) and s.log_text(group, session.id),
                       60, "the task's line")
    workdir = Path(text.split("WORKDIR ", 1)[1].splitlines()[0])
    assert workdir.is_relative_to(agent.home / "deadline-sessions")
    if retain:
        agent.until(lambda s: "is kept (deadline_retain_session_dir)" in agent.agent_log(), 60, "the session's end")
        assert agent.stop() == 0
        assert (workdir / "result.txt").read_text() == "kept"
        assert f"session {session.id}: its working directory {workdir} is kept" in agent.agent_log()
    else:
        agent.until(lambda s: not workdir.exists(), 60, "the working directory to be removed")
        assert agent.stop() == 0
        assert not workdir.exists()
