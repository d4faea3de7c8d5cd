"""The real `flamenco-worker --backend deadline` process against the local Deadline emulator, for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from flamenco_deadline_worker.testing.deadline_emulator import DeadlineEmulator, Faults, Options, make_job

# DEADLINE_EMULATOR_LATENCY_MS=50 runs the agent tests against a service that answers in 50 ms a call.
SERVICE_LATENCY_MS = float(os.environ.get("DEADLINE_EMULATOR_LATENCY_MS") or 0)

# Host variables a test must not pass on: the emulator hands out its own credentials and endpoints.
DROPPED_ENV_PREFIXES = ("AWS_", "NOTIFY_SOCKET", "WATCHDOG_")


class DeadlineAgentProcess:
    """One agent process with its own home; ``config`` is the body of its [flamenco-worker] table."""

    def __init__(
        self,
        emu: DeadlineEmulator,
        home: Path,
        config: str = "",
        env: Mapping[str, str] | None = None,
        *,
        python: str = sys.executable,
        popen: Mapping[str, Any] | None = None,
    ) -> None:
        """``python`` and ``popen`` (e.g. ``user=``, ``extra_groups=``) run the agent as another user."""
        self.emu = emu
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        (home / "worker.cfg").write_text("[flamenco-worker]\n" + config)
        environ = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV_PREFIXES)}
        environ.update(emu.client_env())
        environ.update(env or {})
        options = emu.state.options
        self.out = (home / "agent.out").open("wb")
        self.proc = subprocess.Popen(
            [python, "-m", "flamenco_deadline_worker", "--backend", "deadline", "--home", str(home),
             "--config", str(home / "worker.cfg"), "--farm-id", options.farm_id, "--fleet-id", options.fleet_id],
            env=environ, stdout=self.out, stderr=subprocess.STDOUT, cwd=home, **(popen or {}),
        )

    def until(self, predicate: Callable[[Any], Any], timeout: float, what: str) -> Any:
        """Wait for ``predicate`` on the emulator state; fail at once if the agent exits."""

        def check(state: Any) -> Any:
            if self.proc.poll() is not None:
                raise AssertionError(f"the agent exited ({self.proc.returncode}):\n{self.output()[-4000:]}")
            return predicate(state)

        return self.emu.wait_for(check, timeout, what)

    def output(self) -> str:
        return (self.home / "agent.out").read_text(errors="replace")

    def agent_log(self) -> str:
        return (self.home / "flamenco-worker-logs" / "worker-agent.log").read_text(errors="replace")

    def stop(self, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.out.close()


Start = Callable[..., "tuple[DeadlineEmulator, DeadlineAgentProcess]"]


def agent_runner(tmp_path: Path) -> Iterator[Start]:
    """Body of a fixture: ``start(template, options=, faults=, config=, env=, parameters=)`` serves the
    job and starts an agent; everything started is stopped afterwards."""
    started: list[tuple[DeadlineEmulator, DeadlineAgentProcess]] = []

    def start(
        template: dict[str, Any],
        options: Options | None = None,
        faults: Faults | None = None,
        config: str = "",
        env: Mapping[str, str] | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> tuple[DeadlineEmulator, DeadlineAgentProcess]:
        job = make_job(template, parameters)
        emu = DeadlineEmulator(
            job, options or Options(update_interval_seconds=2), faults, latency_ms=SERVICE_LATENCY_MS
        ).start()
        agent = DeadlineAgentProcess(emu, tmp_path / "home", config, env)
        started.append((emu, agent))
        return emu, agent

    yield start
    for emu, agent in started:
        agent.stop()
        emu.stop()
