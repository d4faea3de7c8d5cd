"""Run the real ``deadline-cloud-worker-agent`` (from PyPI, in a venv of its own) against the emulator.

Used by the interop test and the benchmark.  The venv lives under
``~/.cache/flamenco-deadline-worker/aws-agent-venv`` and is reused when present.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flamenco_deadline_worker.testing.deadline_emulator.server import DeadlineEmulator

VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flamenco-deadline-worker" / "aws-agent-venv"
PACKAGE = "deadline-cloud-worker-agent"


def agent_executable(venv: Path = VENV) -> Path:
    """The agent's entry point, installing it into ``venv`` first if needed."""
    exe = venv / "bin" / "deadline-worker-agent"
    if exe.exists():
        return exe
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", PACKAGE], check=True, timeout=900)
    return exe


def agent_command(emu: DeadlineEmulator, workdir: Path, exe: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run the AWS agent offline against ``emu``."""
    dirs = {name: workdir / name for name in ("logs", "persistence", "sessions")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(emu.client_env())
    env["DEADLINE_CLOUD_TELEMETRY_OPT_OUT"] = "true"
    command = [
        str(exe),
        "--farm-id",
        emu.state.options.farm_id,
        "--fleet-id",
        emu.state.options.fleet_id,
        "--no-shutdown",
        "--run-jobs-as-agent-user",
        "--logs-dir",
        str(dirs["logs"]),
        "--persistence-dir",
        str(dirs["persistence"]),
        "--session-root-dir",
        str(dirs["sessions"]),
        "--session-runtime",
        "python",
        "--no-host-metrics-logging",
    ]
    return command, env
