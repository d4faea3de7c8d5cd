"""The same Deadline job of N trivial tasks, run by this worker and by the AWS worker agent, against the emulator.

    .venv/bin/python benchmarks/bench_deadline.py [--tasks 200]

Prints, for each agent, tasks per second (from the first action started to the last task
SUCCEEDED) and the memory of the agent process: ``steady_rss_mib`` is the median of VmRSS sampled
every 50 ms while the tasks run (what an admin sees on the node during work), ``peak_rss_mib`` the
kernel's high-water mark (VmHWM, start-up included), then the ratios.  Target: >= 3x the AWS agent's
throughput, <= half its memory (steady RSS).  The AWS agent is installed from PyPI into its own venv on
first use.  ``--only ours|aws`` runs one of them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from flamenco_deadline_worker.testing.deadline_emulator import DeadlineEmulator, Options, make_job, simple_template
from flamenco_deadline_worker.testing.deadline_emulator.aws_agent import agent_command, agent_executable


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


def run_one(name: str, tasks: int, workdir: Path) -> dict[str, Any]:
    template = simple_template(tasks, ("echo", "task {{Task.Param.N}}"))
    # CloudWatch no longer enforces the old 5/s per-stream PutLogEvents quota; this worker promises to
    # keep to it (checked for ours), the AWS agent does not, so going faster is no violation for it.
    options = Options(update_interval_seconds=5, log_stream_rate_is_violation=name != "aws")
    emu = DeadlineEmulator(make_job(template), options).start()
    try:
        if name == "aws":
            command, env = agent_command(emu, workdir, agent_executable())
        else:
            home = workdir / "home"
            home.mkdir(parents=True)
            (home / "none.cfg").write_text("")
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env.update(emu.client_env())
            command = [
                sys.executable,
                "-m",
                "flamenco_deadline_worker",
                "--backend",
                "deadline",
                "--home",
                str(home),
                "--config",
                str(home / "none.cfg"),
                "--farm-id",
                emu.state.options.farm_id,
                "--fleet-id",
                emu.state.options.fleet_id,
            ]
        out = (workdir / "agent.out").open("wb")
        launched = time.monotonic()
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
        peak = 0
        steady: list[int] = []
        working = threading.Event()
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                rss, hwm = memory_kib(proc.pid)
                peak = max(peak, hwm)
                if working.is_set() and rss:
                    steady.append(rss)
                done.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            emu.wait_for(lambda s: any(a.status != "ASSIGNED" for a in s.actions.values()), 300, "a first action")
            first = time.monotonic()
            working.set()
            emu.wait_for(lambda s: all(v == "SUCCEEDED" for v in s.task_statuses().values()), 1800, "every task")
            last = time.monotonic()
        finally:
            done.set()
            sampler.join()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out.close()
        return {
            "agent": name,
            "tasks": tasks,
            "startup_seconds": round(first - launched, 2),
            "run_seconds": round(last - first, 2),
            "tasks_per_second": round(tasks / (last - first), 2),
            "steady_rss_mib": round(statistics.median(steady) / 1024, 1) if steady else 0.0,
            "peak_rss_mib": round(peak / 1024, 1),
            "violations": len(emu.state.violations),
            "violation_kinds": _kinds(emu.state.violations),
        }
    finally:
        emu.stop()


def _kinds(violations: list[str]) -> dict[str, int]:
    """Violations counted by kind: the message without the ids of actions and sessions."""
    kinds: dict[str, int] = {}
    for text in violations:
        kind = " ".join("<id>" if any(c.isdigit() for c in word) and "-" in word else word for word in text.split())
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--only", choices=("ours", "aws"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-deadline-") as tmp:
        if args.only != "aws":
            ours = run_one("flamenco-deadline-worker", args.tasks, Path(tmp) / "ours")
            print(json.dumps(ours), flush=True)
        if args.only != "ours":
            theirs = run_one("aws", args.tasks, Path(tmp) / "aws")
            print(json.dumps(theirs), flush=True)
    if args.only:
        return
    print(
        json.dumps(
            {
                "throughput_ratio": round(ours["tasks_per_second"] / theirs["tasks_per_second"], 2),
                "steady_memory_ratio": round(ours["steady_rss_mib"] / theirs["steady_rss_mib"], 3),
                "peak_memory_ratio": round(ours["peak_rss_mib"] / theirs["peak_rss_mib"], 3),
                "targets": "throughput_ratio >= 3, steady_memory_ratio <= 0.5",
            }
        )
    )


if __name__ == "__main__":
    main()
