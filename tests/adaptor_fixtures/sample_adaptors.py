"""Sample adaptors for the adaptor runtime tests and benchmark (loaded by file path)."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from flamenco_deadline_worker.adaptor import Adaptor, AdaptorError, CommandAdaptor, ManagedProcess


def _record(adaptor: Adaptor, event: str) -> None:
    path = adaptor.init_data.get("record")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, "pid": os.getpid()}) + "\n")


class NoopAdaptor(Adaptor):
    def on_run(self, run_data: dict[str, Any]) -> None:
        pass


class SleepAdaptor(Adaptor):
    def on_run(self, run_data: dict[str, Any]) -> None:
        time.sleep(float(run_data.get("seconds", 0.3)))


class EchoAdaptor(Adaptor):
    version = "1.2.3"
    init_data_schema = {
        "type": "object",
        "properties": {
            "greeting": {"type": "string", "minLength": 1},
            "record": {"type": "string"},
        },
        "required": ["greeting"],
        "additionalProperties": False,
    }
    run_data_schema = {
        "type": "object",
        "properties": {
            "frame": {"type": "integer", "minimum": 1},
            "path": {"type": "string"},
            "fail": {"type": "boolean"},
        },
        "required": ["frame"],
        "additionalProperties": False,
    }
    config_schema = {
        "type": "object",
        "properties": {"prefix": {"type": "string"}, "repeat": {"type": "integer", "minimum": 1}},
        "additionalProperties": False,
    }
    default_config = {"prefix": ">", "repeat": 1}

    def on_start(self) -> None:
        _record(self, "start")
        self.log.info("echo adaptor started")

    def on_run(self, run_data: dict[str, Any]) -> None:
        _record(self, f"run {run_data['frame']}")
        self.update_status(progress=0, status_message=f"frame {run_data['frame']}")
        for _ in range(self.config["repeat"]):
            print(f"{self.config['prefix']} {self.init_data['greeting']} frame {run_data['frame']}")
        if "path" in run_data:
            print(f"mapped: {self.map_path(run_data['path'])}")
        if run_data.get("fail"):
            raise AdaptorError(f"frame {run_data['frame']} asked to fail")
        self.update_status(progress=100)

    def on_stop(self) -> None:
        _record(self, "stop")

    def on_cleanup(self) -> None:
        _record(self, "cleanup")


# A child that starts a grandchild in its own process group, writes both pids, then waits forever.
CHILD = r"""
import os, subprocess, sys, time
grand = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {grand.pid}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
print("child ready", flush=True)
time.sleep(600)
"""


class ProcessAdaptor(CommandAdaptor):
    """No on_cancel: a cancel must terminate the managed process group."""

    cancel_grace = 2.0

    def get_managed_process(self, run_data: dict[str, Any]) -> ManagedProcess:
        return ManagedProcess(sys.executable, ["-c", CHILD, run_data["pids"]])


class CooperativeAdaptor(Adaptor):
    """Has on_cancel: the runtime calls it and leaves the processes to the adaptor."""

    def on_run(self, run_data: dict[str, Any]) -> None:
        self._running = self.start_process(ManagedProcess(sys.executable, ["-c", CHILD, run_data["pids"]]))
        self._marker = run_data["marker"]
        try:
            self._running.wait()
        finally:
            self.forget_process(self._running)

    def on_cancel(self) -> None:
        with open(self._marker, "w", encoding="utf-8") as f:
            f.write("on_cancel called\n")
        self._running.terminate_tree(2.0)
