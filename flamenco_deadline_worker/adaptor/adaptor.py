"""The classes adaptor authors build on: Adaptor, CommandAdaptor, ManagedProcess."""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from . import output
from ._process import RunningProcess
from .config import load_config
from .pathmapping import PathMappingRule, map_path


class AdaptorError(Exception):
    """An adaptor action failed; the message becomes the ``openjd_fail:`` reason."""


class RegexCallback:
    """Call ``callback(match)`` for each output line matching one of ``patterns`` (first match wins)."""

    def __init__(self, patterns: Sequence[str | re.Pattern[str]], callback: Callable[[re.Match[str]], None]):
        self.patterns = [re.compile(p) if isinstance(p, str) else p for p in patterns]
        self.callback = callback

    def handle(self, line: str) -> bool:
        for pattern in self.patterns:
            match = pattern.search(line)
            if match:
                self.callback(match)
                return True
        return False


class ManagedProcess:
    """A command an adaptor runs: executable, arguments, startup directory, environment.

    Use it as is (``ManagedProcess("ffmpeg", ["-i", src, dst])``) or subclass and override the
    ``get_*`` methods.  Each output line goes to ``on_output_line``: by default the line is passed on
    unchanged and handed to the regex callbacks.
    """

    def __init__(
        self,
        executable: str | None = None,
        arguments: Sequence[str] = (),
        startup_directory: str | None = None,
        environment: Mapping[str, str] | None = None,
        regex_callbacks: Sequence[RegexCallback] = (),
    ) -> None:
        self.executable = executable
        self.arguments = list(arguments)
        self.startup_directory = startup_directory
        self.environment = dict(environment) if environment is not None else None
        self.regex_callbacks = list(regex_callbacks)

    def get_executable(self) -> str:
        if not self.executable:
            raise AdaptorError(f"{type(self).__name__} has no executable")
        return self.executable

    def get_arguments(self) -> list[str]:
        return list(self.arguments)

    def get_startup_directory(self) -> str | None:
        return self.startup_directory

    def get_environment(self) -> dict[str, str] | None:
        """Variables added to (or, with a value, replacing) the adaptor's environment; None to inherit."""
        return self.environment

    def on_output_line(self, line: str) -> None:
        output.emit(line)
        for callback in self.regex_callbacks:
            if callback.handle(line):
                break

    def argv(self) -> list[str]:
        return [self.get_executable(), *self.get_arguments()]

    def start(self, pass_fds: Sequence[int] = ()) -> RunningProcess:
        extra = self.get_environment()
        env = {**os.environ, **extra} if extra is not None else None
        return RunningProcess(
            self.argv(), self.on_output_line, cwd=self.get_startup_directory(), env=env, pass_fds=pass_fds
        )


class Adaptor:
    """Base class: override the lifecycle hooks.

    ``on_start`` once per session (launch the application), ``on_run(run_data)`` per task,
    ``on_stop`` at the end (close the application), ``on_cleanup`` always last, even after a failure.
    ``on_cancel`` is optional: without it a cancel terminates the process groups of every managed
    process the adaptor started through ``start_process``/``run_process``.
    """

    #: Name used for configuration files and messages; defaults to the class name without "Adaptor".
    name: ClassVar[str] = ""
    version: ClassVar[str] = "0.0.0"
    #: JSON schemas (the subset in ``schema.py``); None accepts anything.
    init_data_schema: ClassVar[Mapping[str, Any] | None] = None
    run_data_schema: ClassVar[Mapping[str, Any] | None] = None
    config_schema: ClassVar[Mapping[str, Any] | None] = None
    #: The package default configuration layer.
    default_config: ClassVar[Mapping[str, Any] | None] = None
    #: Seconds between SIGTERM and SIGKILL when a cancel terminates managed processes.
    cancel_grace: ClassVar[float] = 5.0

    def __init__(
        self,
        init_data: Mapping[str, Any],
        *,
        path_mapping_rules: Sequence[PathMappingRule] = (),
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.init_data: dict[str, Any] = dict(init_data)
        self._path_mapping_rules = list(path_mapping_rules)
        self._config = dict(config) if config is not None else None
        self.log = logging.getLogger(f"adaptor.{self.adaptor_name()}")
        self._processes: set[RunningProcess] = set()
        self._lock = threading.Lock()
        self._canceled = threading.Event()

    @classmethod
    def adaptor_name(cls) -> str:
        if cls.name:
            return cls.name
        base = cls.__name__
        return base[: -len("Adaptor")] if base.endswith("Adaptor") and base != "Adaptor" else base

    # -- lifecycle hooks -------------------------------------------------------------------------
    def on_start(self) -> None:
        """Called once before the first run."""

    def on_run(self, run_data: dict[str, Any]) -> None:
        """Called per task with validated run data."""

    def on_stop(self) -> None:
        """Called once after the last run."""

    def on_cleanup(self) -> None:
        """Called last, always, even when an earlier hook failed."""

    def on_cancel(self) -> None:
        """Override to cancel cooperatively; the default runtime behaviour kills managed processes."""

    # -- helpers for adaptor code ----------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            self._config, _ = load_config(self.adaptor_name(), self.default_config, self.config_schema)
        return self._config

    @property
    def path_mapping_rules(self) -> list[PathMappingRule]:
        return list(self._path_mapping_rules)

    def map_path(self, path: str) -> str:
        return map_path(path, self._path_mapping_rules)

    @property
    def is_canceled(self) -> bool:
        return self._canceled.is_set()

    def wait_canceled(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking at once on cancel; True if canceled."""
        return self._canceled.wait(timeout)

    def update_status(self, *, progress: float | None = None, status_message: str | None = None) -> None:
        if progress is not None:
            output.emit(f"openjd_progress: {float(progress):g}")
        if status_message is not None:
            output.emit(f"openjd_status: {status_message}")

    def start_process(self, process: ManagedProcess, pass_fds: Sequence[int] = ()) -> RunningProcess:
        """Start ``process`` and track it, so that a cancel without ``on_cancel`` can kill its group."""
        running = process.start(pass_fds)
        with self._lock:
            self._processes.add(running)
        return running

    def forget_process(self, running: RunningProcess) -> None:
        with self._lock:
            self._processes.discard(running)

    def run_process(self, process: ManagedProcess) -> int:
        """Run ``process`` to its end, its output flowing through the adaptor; returns its exit code."""
        running = self.start_process(process)
        try:
            return running.wait()
        finally:
            self.forget_process(running)

    def terminate_processes(self, grace: float = 5.0) -> None:
        """Terminate the process group of every tracked managed process, in parallel."""
        with self._lock:
            targets = list(self._processes)
        threads = [threading.Thread(target=p.terminate_tree, args=(grace,), daemon=True) for p in targets]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # -- used by the runtime ---------------------------------------------------------------------
    @classmethod
    def has_on_cancel(cls) -> bool:
        return cls.on_cancel is not Adaptor.on_cancel

    def _reset_cancel(self) -> None:
        self._canceled.clear()

    def _set_canceled(self) -> None:
        self._canceled.set()


class CommandAdaptor(Adaptor):
    """An adaptor whose run is one command: ``get_managed_process(run_data)`` says which."""

    def get_managed_process(self, run_data: dict[str, Any]) -> ManagedProcess:
        raise NotImplementedError(f"{type(self).__name__} must implement get_managed_process(run_data)")

    def on_prerun(self) -> None:
        """Called just before the command starts."""

    def on_postrun(self) -> None:
        """Called after the command ended (whatever its exit code)."""

    def on_run(self, run_data: dict[str, Any]) -> None:
        process = self.get_managed_process(run_data)
        self.on_prerun()
        code = self.run_process(process)
        self.on_postrun()
        if code != 0 and not self.is_canceled:
            raise AdaptorError(f"{process.get_executable()} exited with code {code}")
