"""Shared by the Flamenco benchmarks: a local manager that times hand-outs, and the worker's command line."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from flamenco_deadline_worker.testing.manager import LocalManager
from flamenco_deadline_worker.testing.records import TaskRecord, WorkerRecord


class TimedManager(LocalManager):
    """Records when each task is first handed out."""

    def __init__(self) -> None:
        super().__init__()
        self.assigned_at: dict[str, float] = {}

    def task_for(self, worker: WorkerRecord) -> TaskRecord | None:
        task = super().task_for(worker)
        if task is not None:
            self.assigned_at.setdefault(task.id, time.time())
        return task


def worker_argv(url: str, home: Path) -> list[str]:
    exe = Path(sys.executable).parent / "flamenco-worker"
    base = [str(exe)] if exe.is_file() else [sys.executable, "-m", "flamenco_deadline_worker"]
    return [*base, "--manager", url, "--home", str(home), "--config", os.devnull]


def worker_env(**settings: str) -> dict[str, str]:
    """This environment without FLAMENCO_WORKER_* settings, plus ``settings`` (key=value, upper-cased)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAMENCO_WORKER_")}
    env.update({f"FLAMENCO_WORKER_{key.upper()}": value for key, value in settings.items()})
    return env
