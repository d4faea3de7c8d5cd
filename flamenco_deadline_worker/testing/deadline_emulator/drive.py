"""One job run by one agent process against a fresh emulator, measured; for the interop test and the benchmark.

``run_job(spec)`` starts the emulator, starts the agent (this worker, or the real AWS agent), waits
until every task SUCCEEDED (and, if asked, the session closed and its log arrived), samples the
agent's memory meanwhile, stops it and returns what happened as a JSON-able dict.

The real AWS agent probes EC2 instance metadata by itself, so it runs only inside a loopback-only
network namespace, the emulator with it: ``run_isolated(spec)`` runs this module there
(``python -m flamenco_deadline_worker.testing.deadline_emulator.drive SPEC_FILE``, which prints the
result as one JSON line) and returns the result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs

from flamenco_deadline_worker.testing import netns
from flamenco_deadline_worker.testing.attachments_job import (
    BUCKET,
    SETTINGS,
    Submitted,
    expected_output,
    read_outputs,
    submit_inputs,
)
from flamenco_deadline_worker.testing.deadline_emulator.aws_agent import agent_command
from flamenco_deadline_worker.testing.deadline_emulator.job import make_job, new_id
from flamenco_deadline_worker.testing.deadline_emulator.server import DeadlineEmulator
from flamenco_deadline_worker.testing.deadline_emulator.state import Options, ServiceState
from flamenco_deadline_worker.testing.s3server import S3Server

OURS = "flamenco-deadline-worker"
AWS = "aws"


@attrs.define
class RunSpec:
    agent: str  # OURS or AWS
    template: dict[str, Any]
    workdir: str
    aws_executable: str = ""  # the AWS agent's entry point (installed beforehand: no network in the namespace)
    update_interval_seconds: int = 5
    log_stream_rate_is_violation: bool = True
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    tasks_ahead: int = 4  # taskRun actions the emulated service assigns beyond the running one
    timeout: float = 1800.0
    wait_for_closed_session: bool = False  # and for the last line of its log in CloudWatch
    last_log_line: str = ""
    # Job attachments: this many input files of this many bytes in all, submitted through a local S3
    # server (moto) that runs beside the emulator; the template must be attachments_template's.
    attachment_files: int = 0
    attachment_bytes: int = 0


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB, zeros once it is gone."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def tree_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants in KiB (the AWS agent syncs attachments in a child)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        one = todo.pop()
        total += memory_kib(one)[0]
        todo.extend(children.get(one, []))
    return total


def our_command(emu: DeadlineEmulator, workdir: Path) -> tuple[list[str], dict[str, str]]:
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "none.cfg").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(emu.client_env())
    options = emu.state.options
    command = [sys.executable, "-m", "flamenco_deadline_worker", "--backend", "deadline", "--home", str(home),
               "--config", str(home / "none.cfg"), "--farm-id", options.farm_id, "--fleet-id", options.fleet_id]
    return command, env


def run_job(spec: RunSpec) -> dict[str, Any]:
    workdir = Path(spec.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    options = Options(
        update_interval_seconds=spec.update_interval_seconds,
        log_stream_rate_is_violation=spec.log_stream_rate_is_violation,
        tasks_ahead=spec.tasks_ahead,
    )
    with contextlib.ExitStack() as stack:
        job: dict[str, Any] = {}
        s3: S3Server | None = None
        submitted: Submitted | None = None
        if spec.attachment_files:
            s3 = stack.enter_context(S3Server())
            s3.create_bucket(BUCKET)
            job["queue_id"] = new_id("queue")
            submitted = submit_inputs(s3, options.farm_id, job["queue_id"], workdir / "submitter" / "project",
                                      files=spec.attachment_files, total_bytes=spec.attachment_bytes)
            job.update(attachments=submitted.attachments, attachment_settings=SETTINGS)
        parameters = submitted.parameters if submitted else None
        emu = DeadlineEmulator(
            make_job(spec.template, parameters, **job), options, latency_ms=spec.latency_ms, jitter_ms=spec.jitter_ms
        ).start()
        stack.callback(emu.stop)
        if spec.agent == AWS:
            command, env = agent_command(emu, workdir, Path(spec.aws_executable))
        else:
            command, env = our_command(emu, workdir)
        if s3 is not None:
            env.update(s3.client_env())
        with (workdir / "agent.out").open("wb") as out:
            result = _measure(spec, emu, subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                          cwd=workdir))
        if s3 is not None and submitted is not None:
            result["attachments"] = _attachment_figures(spec, emu, s3, submitted)
        return result
    raise AssertionError("not reached")


def _attachment_figures(spec: RunSpec, emu: DeadlineEmulator, s3: S3Server, submitted: Submitted) -> dict[str, Any]:
    """The input sync's time as the service saw it, and whether every task's output reached S3 intact."""
    syncs = emu.read(lambda s: [a for a in s.actions.values() if a.kind == "syncInputJobAttachments"])
    seconds = [
        (_when(a.ended_at) - _when(a.started_at)).total_seconds() for a in syncs if a.started_at and a.ended_at
    ]
    tasks = len(emu.state.task_statuses())
    outputs = read_outputs(s3, emu.state.options.farm_id, emu.state.job.queue_id, emu.state.job.id)
    uploaded = {path: data.decode() for files in outputs.values() for path, data in files.items()}
    return {
        "sync_statuses": [a.status for a in syncs],
        "sync_seconds": [round(x, 3) for x in seconds],
        "output_manifests": len(outputs),
        "outputs_match": uploaded == expected_output(submitted, tasks, spec.attachment_files),
    }


def _when(value: Any) -> dt.datetime:
    from botocore.utils import parse_timestamp

    when: dt.datetime = value if isinstance(value, dt.datetime) else parse_timestamp(value)
    return when


def _measure(spec: RunSpec, emu: DeadlineEmulator, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    launched = time.monotonic()
    peak = 0
    tree_peak = 0
    steady: list[int] = []
    working = threading.Event()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, tree_peak
        while not done.is_set():
            rss, hwm = memory_kib(proc.pid)
            peak = max(peak, hwm)
            tree_peak = max(tree_peak, tree_rss_kib(proc.pid))
            if working.is_set() and rss:
                steady.append(rss)
            done.wait(0.05)

    def alive(predicate: Any) -> Any:
        def check(state: ServiceState) -> Any:
            if proc.poll() is not None:
                raise RuntimeError(f"the agent exited with {proc.returncode} before the job was done")
            return predicate(state)

        return check

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    session_id = ""
    try:
        emu.wait_for(alive(lambda s: any(a.status != "ASSIGNED" for a in s.actions.values())), 300, "a first action")
        first = time.monotonic()
        working.set()
        emu.wait_for(
            alive(lambda s: s.task_statuses() and all(v == "SUCCEEDED" for v in s.task_statuses().values())),
            spec.timeout,
            "every task SUCCEEDED",
        )
        last = time.monotonic()
        done.set()
        if spec.wait_for_closed_session:
            session_id = emu.wait_for(
                alive(lambda s: next((sid for sid, ses in s.sessions.items() if ses.closed), None)),
                120,
                "the session to close",
            )
            emu.wait_for(
                alive(lambda s: spec.last_log_line in s.log_text(s.job.log_group, session_id)),
                120,
                "the session log in CloudWatch",
            )
    finally:
        done.set()
        sampler.join()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    tasks = len(emu.state.task_statuses())

    def report(s: ServiceState) -> dict[str, Any]:
        return {
            "violations": list(s.violations),
            "concurrent_schedule_calls": s.concurrent_schedule_calls,
            "sessions": {
                sid: [[a.kind, a.status, a.process_exit_code] for a in ses.actions] for sid, ses in s.sessions.items()
            },
            "session_log": s.log_text(s.job.log_group, session_id) if session_id else "",
            "operations": sorted({op for op, _ in s.calls}),
            "worker_statuses": [w.statuses for w in s.workers.values()],
        }

    return {
        "agent": spec.agent,
        "tasks": tasks,
        "latency_ms": spec.latency_ms,
        "startup_seconds": round(first - launched, 2),
        "run_seconds": round(last - first, 2),
        "tasks_per_second": round(tasks / (last - first), 2),
        "steady_rss_mib": round(statistics.median(steady) / 1024, 1) if steady else 0.0,
        "peak_rss_mib": round(peak / 1024, 1),
        "peak_tree_rss_mib": round(tree_peak / 1024, 1),  # the agent and its children, sampled
        "invalid_requests": [[op, status] for _, op, status in emu.requests if status == 400],
        **emu.read(report),
    }


def run_isolated(spec: RunSpec, timeout: float | None = None) -> dict[str, Any]:
    """``run_job(spec)`` in a fresh loopback-only network namespace (see ``netns``)."""
    workdir = Path(spec.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec_file = workdir / "spec.json"
    spec_file.write_text(json.dumps(attrs.asdict(spec)))
    command = netns.loopback_only_command([sys.executable, "-m", __name__, str(spec_file)])
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout or spec.timeout + 600)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the run in the namespace failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python -m {__name__} SPEC_FILE", file=sys.stderr)
        return 2
    spec = RunSpec(**json.loads(Path(argv[0]).read_text()))
    print(json.dumps(run_job(spec)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
