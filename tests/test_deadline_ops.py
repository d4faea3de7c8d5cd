"""The Deadline backend as an admin and the service see it: systemd notifications, `status`, records,
no secrets in logs; and the protocol paths of start and stop (CreateWorker retries, a stop asked by
the service, DeleteWorker) and queue credentials reaching a task.  Real CLI, real boto3, the emulator."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")
pytest.importorskip("openjd.sessions")

from flamenco_deadline_worker.testing.deadline_emulator import (  # noqa: E402
    Faults,
    Options,
    ServiceError,
    ServiceState,
    simple_template,
)

pytestmark = pytest.mark.slow


class Notifications:
    """A datagram socket the test owns, standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.lines += data.decode().split("\n")

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sock.close()


def requests_of(emu: Any, operation: str) -> list[int]:
    """The HTTP statuses the emulator answered ``operation`` with, in order."""
    return [status for _, op, status in list(emu.requests) if op == operation]


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def all_tasks(status: str) -> Callable[[ServiceState], bool]:
    return lambda s: bool(s.task_statuses()) and all(v == status for v in s.task_statuses().values())


def status_json(home: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "flamenco_deadline_worker", "status", "--home", str(home), "--config",
         str(home / "worker.cfg"), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def log_files(home: Path) -> list[Path]:
    """Everything the agent logged: its stdout, agent and bootstrap logs, session logs."""
    return [home / "agent.out", *sorted(p for p in (home / "flamenco-worker-logs").rglob("*") if p.is_file())]


# A task that uses the credentials it is handed, the way a render's AWS SDK would, and prints
# only their access key id and where they came from, never the secret.
QUEUE_CREDS_TASK = (
    sys.executable,
    "-c",
    "import os, botocore.session; c = botocore.session.Session().get_credentials(); "
    "print('profile', os.environ.get('AWS_PROFILE')); print('key id', c.access_key if c else None); "
    "print('method', c.method if c else None); print('has secret', bool(c and c.secret_key))",
)


def test_notify_status_records_and_queue_credentials_without_secrets_in_logs(
    run: Any, tmp_path: Path
) -> None:
    notify = Notifications(tmp_path / "notify.sock")
    try:
        emu, agent = run(
            simple_template(3, QUEUE_CREDS_TASK),
            config='log_level = "debug"\n',
            env={"NOTIFY_SOCKET": str(notify.path)},
        )
        wait(lambda: "READY=1" in notify.seen(), 120, "READY=1")
        worker_id = emu.read(lambda s: next(iter(s.workers)))
        info = wait(
            lambda: (i := status_json(agent.home))["worker_id"] == worker_id and i["running"] and i, 120,
            "status --json naming the worker",
        )
        assert info["backend"] == "deadline"
        assert info["state"] in ("started", "idle", "working"), info
        agent.until(all_tasks("SUCCEEDED"), 180, "3 tasks SUCCEEDED")
        session = emu.read(lambda s: next(iter(s.sessions.values())))
        group = emu.state.job.log_group
        text = agent.until(lambda s: "has secret" in s.log_text(group, session.id) and s.log_text(group, session.id),
                           60, "the task's output in CloudWatch")
        queue_keys = emu.read(lambda s: set(s.queue_keys))
        profile = [line.split()[-1] for line in text.splitlines() if line.startswith("profile ")]
        key_ids = {line.split()[-1] for line in text.splitlines() if line.startswith("key id ")}
        assert profile and all(p == f"deadline-{emu.state.job.queue_id}" for p in profile), text
        assert key_ids and key_ids <= queue_keys, (key_ids, queue_keys, text)
        assert "method env" not in text, "the agent's own credentials must not reach a task"
        assert "has secret True" in text

        assert agent.stop() == 0, agent.output()[-3000:]
        seen = notify.seen()
        assert "STOPPING=1" in seen and seen.index("READY=1") < seen.index("STOPPING=1"), seen
        after = status_json(agent.home)
        assert after["worker_id"] == worker_id and not after["running"], after
        assert "stopped" in after["state"], after
        # Every taskRun counts as a task, like a Flamenco task does.
        assert after["tasks_run"] == 3 and after["last_task"]["outcome"].upper() == "SUCCEEDED", after
    finally:
        notify.close()

    log = agent.agent_log()
    action = emu.read(lambda s: next(a for a in s.actions.values() if a.kind == "taskRun"))
    for needle in (
        f"Worker Create: registered as worker {worker_id}",
        f"Worker ID: worker id is {worker_id}",
        f"Session Starting: session {session.id} of {emu.state.job.queue_id}",
        f"Session Logs: session {session.id} logs to",
        f"Session Add: session {session.id}: added action(s)",
        f"Action Start: session {session.id}: action {action.id} (taskRun) started",
        f"Action End: session {session.id}: action {action.id} SUCCEEDED in",
        "API Req: update_worker_schedule http://127.0.0.1",
        "API Resp: assume_fleet_role_for_worker answered 200",
        "API Resp: assume_queue_role_for_worker answered 200",
        "Worker Status: worker",
    ):
        assert needle in log, f"{needle!r} not in the agent log:\n{log[-3000:]}"

    secrets = emu.read(lambda s: list(s.issued_secrets)) + [emu.client_env()["AWS_SECRET_ACCESS_KEY"]]
    assert len(secrets) >= 5  # fleet and queue credentials were handed out, and the host's
    for path in log_files(agent.home):
        content = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in content, f"a secret is in {path}"
    assert emu.read(lambda s: list(s.violations)) == []


def test_queue_and_fleet_credentials_are_refreshed_before_they_expire_while_a_session_runs(run: Any) -> None:
    from flamenco_deadline_worker.backends.deadline.queue_creds import REFRESH_MARGIN

    # Credentials due for renewal (20 minutes before they expire) 4 s after they are handed out:
    # one session of tasks, each using the queue role's credentials as a render's SDK would, outlives
    # several of them.
    options = Options(update_interval_seconds=1, credential_lifetime_seconds=REFRESH_MARGIN + 4)
    task = (*QUEUE_CREDS_TASK[:2], QUEUE_CREDS_TASK[2] + "; import time; time.sleep(2)")
    emu, agent = run(simple_template(6, task), options=options)
    agent.until(all_tasks("SUCCEEDED"), 180, "6 tasks SUCCEEDED")
    session = emu.read(lambda s: next(iter(s.sessions.values())))
    group = emu.state.job.log_group
    text = agent.until(lambda s: s.log_text(group, session.id).count("key id ") == 6 and s.log_text(group, session.id),
                       60, "every task's output in CloudWatch")
    key_ids = [line.split()[-1] for line in text.splitlines() if line.startswith("key id ")]
    queue_keys = emu.read(lambda s: set(s.queue_keys))
    assert set(key_ids) <= queue_keys, (key_ids, queue_keys)
    # The session went on with renewed credentials: later tasks read newer keys from the same file.
    assert len(set(key_ids)) >= 2 and key_ids[0] != key_ids[-1], key_ids
    operations = emu.read(lambda s: [op for op, _ in s.calls])
    assert operations.count("AssumeQueueRoleForWorker") >= 2, operations.count("AssumeQueueRoleForWorker")
    assert operations.count("AssumeFleetRoleForWorker") >= 2, operations.count("AssumeFleetRoleForWorker")
    assert agent.stop() == 0, agent.output()[-3000:]
    assert "queue role credentials of" in agent.agent_log()
    secrets = emu.read(lambda s: list(s.issued_secrets))
    for path in log_files(agent.home):
        content = path.read_text(errors="replace")
        assert not [secret for secret in secrets if secret in content], f"a secret is in {path}"
    assert emu.read(lambda s: list(s.violations)) == []


def test_status_counts_finished_tasks_while_the_session_still_runs(run: Any, tmp_path: Path) -> None:
    """The state file is written a moment after each task (not per task, not only when the state
    changes): status shows 2 tasks run while the third, in the same session, still runs."""
    go = tmp_path / "go"
    script = (
        "import os, sys, time\n"
        f"while sys.argv[1] == '3' and not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.05)\n"
    )
    emu, agent = run(simple_template(3, (sys.executable, "-c", script, "{{Task.Param.N}}")))
    agent.until(
        lambda s: sorted(a.status for a in s.actions.values() if a.kind == "taskRun")
        == ["RUNNING", "SUCCEEDED", "SUCCEEDED"],
        120, "two tasks SUCCEEDED and the third RUNNING",
    )
    # Due within a second; 20 s is slack for a loaded machine, yet short of the 60 s metrics write.
    info = wait(lambda: (i := status_json(agent.home)).get("tasks_run") == 2 and i, 20,
                "status --json counting 2 tasks while the third runs")
    assert info["state"] == "working" and info["last_task"]["outcome"] == "succeeded", info
    go.touch()
    agent.until(all_tasks("SUCCEEDED"), 180, "3 tasks SUCCEEDED")
    assert agent.stop() == 0, agent.output()[-3000:]
    assert status_json(agent.home)["tasks_run"] == 3


def test_create_worker_retried_through_throttling_500_and_a_fleet_being_created(run: Any) -> None:
    faults = Faults(
        scripted=[
            ("CreateWorker", ServiceError("ThrottlingException", "Rate exceeded (injected)", retry_after=1)),
            ("CreateWorker", ServiceError("InternalServerException", "Internal failure (injected)")),
        ]
    )
    emu, agent = run(
        simple_template(2, ("echo", "task {{Task.Param.N}}")),
        Options(update_interval_seconds=2, fleet_create_in_progress_calls=2),
        faults,
    )
    agent.until(all_tasks("SUCCEEDED"), 180, "2 tasks SUCCEEDED after CreateWorker got through")
    answers = requests_of(emu, "CreateWorker")
    assert answers == [429, 500, 409, 409, 200], answers
    assert len(emu.read(lambda s: list(s.workers))) == 1
    assert "still being created" in agent.output()
    assert agent.stop() == 0
    assert emu.read(lambda s: list(s.violations)) == []


def test_the_service_asks_the_worker_to_stop(run: Any) -> None:
    emu, agent = run(
        simple_template(3, ("echo", "task {{Task.Param.N}}")),
        Options(update_interval_seconds=1, stop_when_done=True),
    )
    agent.until(all_tasks("SUCCEEDED"), 180, "3 tasks SUCCEEDED")
    assert agent.proc.wait(120) == 0, agent.output()[-3000:]
    worker = emu.read(lambda s: next(iter(s.workers.values())))
    assert worker.statuses[-1] == "STOPPED", worker.statuses
    assert "Worker Status: worker" in agent.agent_log()
    assert emu.read(lambda s: list(s.violations)) == []


def test_delete_worker_on_stop(run: Any) -> None:
    emu, agent = run(
        simple_template(2, ("echo", "task {{Task.Param.N}}")), config="deadline_delete_worker_on_stop = true\n"
    )
    agent.until(all_tasks("SUCCEEDED"), 180, "2 tasks SUCCEEDED")
    worker_id = emu.read(lambda s: next(iter(s.workers)))
    assert (agent.home / "deadline-worker.json").exists()
    assert agent.stop() == 0, agent.output()[-3000:]
    assert emu.read(lambda s: list(s.workers)) == [], "DeleteWorker removed the worker"
    assert requests_of(emu, "DeleteWorker").count(200) == 1
    assert not (agent.home / "deadline-worker.json").exists(), "a deleted worker's id is not kept for the next start"
    assert f"Worker Delete: worker {worker_id} deleted" in agent.agent_log()
    assert emu.read(lambda s: list(s.violations)) == []


@pytest.mark.parametrize("optimize", [True, False])
def test_the_agent_runs_under_python_oo_unless_configured_not_to(run: Any, optimize: bool) -> None:
    emu, agent = run(
        simple_template(2, ("echo", "task {{Task.Param.N}}")),
        config=f"deadline_python_optimize = {str(optimize).lower()}\n",
    )
    agent.until(all_tasks("SUCCEEDED"), 180, "2 tasks SUCCEEDED")
    # Same pid as launched (systemd's main pid stays right), its command line with or without -OO.
    command = Path(f"/proc/{agent.proc.pid}/cmdline").read_bytes().split(b"\0")
    assert (b"-OO" in command) is optimize, command
    assert command[command.index(b"-m") :][:2] == [b"-m", b"flamenco_deadline_worker"], command
    info = [line for line in agent.agent_log().splitlines() if "AgentInfo:" in line]
    assert len(info) == 1, info  # one start recorded, not one per interpreter
    assert ("(-OO)" in info[0]) is optimize, info[0]
    assert agent.stop() == 0, agent.output()[-3000:]


@pytest.mark.parametrize("outage", [False, True])
def test_sigterm_during_start_up_retries_stops_the_agent(run: Any, outage: bool) -> None:
    # The fleet stays "being created" (and, in the outage case, the service then goes away), so
    # CreateWorker is retried forever; a SIGTERM must still end the agent, cleanly and soon.
    emu, agent = run(
        simple_template(1, ("echo", "never run")),
        Options(update_interval_seconds=2, fleet_create_in_progress_calls=10**6),
    )
    wait(lambda: len(requests_of(emu, "CreateWorker")) >= 2, 120, "CreateWorker retried")
    if outage:
        emu.go_down()
        wait(lambda: "retrying in" in agent.output(), 120, "the agent retrying through the outage")
    assert agent.stop(timeout=60) == 0, agent.output()[-3000:]
    assert "stop asked during start-up (CreateWorker)" in agent.output(), agent.output()[-3000:]
    assert emu.read(lambda s: list(s.workers)) == []
