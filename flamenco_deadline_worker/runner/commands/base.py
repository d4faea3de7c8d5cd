"""Command registry: each command declares its parameters and is registered by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import attrs

if TYPE_CHECKING:
    from flamenco_deadline_worker.runner.process import ProcessLimits, RunAs


class CommandError(Exception):
    """Fails the task (never the worker) with a message for people."""


_NOT_GIVEN: Any = object()


@attrs.frozen
class Param:
    """One declared parameter: its name, accepted JSON types and an optional extra check."""

    name: str
    types: tuple[type, ...]
    required: bool = True
    default: Any = _NOT_GIVEN
    # Returns a problem description, or None when the value is fine.
    check: Callable[[Any], str | None] | None = None

    def type_names(self) -> str:
        names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}
        return " or ".join(names.get(t, t.__name__) for t in self.types)


def non_empty(value: Any) -> str | None:
    return "must not be empty" if value in ("", [], None) else None


def absolute_path(value: Any) -> str | None:
    if not value:
        return "must not be empty"
    if not Path(value).is_absolute():
        return f"must be an absolute path, got relative path {value!r}"
    return None


def list_of_strings(value: Any) -> str | None:
    if not all(isinstance(v, str) for v in value):
        return "must be a list of strings"
    return None


@attrs.frozen
class FileRules:
    """Where file commands may act: inside one of ``roots`` (the work directory and
    ``file_command_roots``), never on one of ``protected`` (the worker's own files)."""

    roots: tuple[str, ...]
    protected: tuple[str, ...] = ()


class Reporter(Protocol):
    """What a command can tell about its progress.  Everything goes through the update queue."""

    def log(self, line: str) -> None: ...

    def activity(self, text: str) -> None: ...

    def step_done(self, count: int = 1) -> None: ...

    def output_produced(self, path: str) -> None: ...


class Context(Protocol):
    """What a running command gets from the runner."""

    task_id: str
    job_id: str
    workdir: Path
    reporter: Reporter
    limits: ProcessLimits
    run_as: RunAs | None
    file_rules: FileRules

    async def run_process(
        self,
        argv: Sequence[str],
        *,
        on_line: Callable[[str], None] | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """Run a child with the task's limits, job user and abort handling; log its output.

        ``on_line`` sees each line too (after it is logged), for progress parsing.
        """
        ...


class Command:
    """Base class; subclasses set ``name``, ``parameters`` and implement ``run``."""

    name: ClassVar[str]
    task_type: ClassVar[str] = "misc"
    parameters: ClassVar[Sequence[Param]] = ()

    async def run(self, ctx: Context, params: Mapping[str, Any]) -> None:
        raise NotImplementedError

    @classmethod
    def validate(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Checked parameters with defaults filled in; CommandError names the bad parameter and value."""
        if not isinstance(raw, Mapping):
            raise CommandError(f"{cls.name}: parameters must be an object, got {type(raw).__name__}")
        out: dict[str, Any] = {}
        for p in cls.parameters:
            if p.name not in raw or raw[p.name] is None:
                if p.required:
                    raise CommandError(f"{cls.name}: missing required parameter {p.name!r}")
                if p.default is not _NOT_GIVEN:
                    out[p.name] = p.default() if callable(p.default) else p.default
                continue
            value = raw[p.name]
            # bool is an int in Python; a JSON true is not a number of seconds.
            if isinstance(value, bool) and bool not in p.types:
                ok = False
            else:
                ok = isinstance(value, p.types)
            if not ok:
                raise CommandError(
                    f"{cls.name}: parameter {p.name!r} must be {p.type_names()}, "
                    f"got {type(value).__name__} {value!r}"
                )
            if p.check is not None:
                problem = p.check(value)
                if problem:
                    raise CommandError(f"{cls.name}: parameter {p.name!r} {problem} (value {value!r})")
            out[p.name] = value
        return out


REGISTRY: dict[str, type[Command]] = {}


def register(cls: type[Command]) -> type[Command]:
    if cls.name in REGISTRY:
        raise RuntimeError(f"command {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def find(name: str) -> type[Command]:
    load_builtin_commands()
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise CommandError(f"unknown command {name!r}; this worker knows: {known}") from None


def load_builtin_commands() -> None:
    """Import the command modules so their @register decorators run."""
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(f"flamenco_deadline_worker.runner.commands.{module}")


# One module per command family.
BUILTIN_MODULES: list[str] = ["misc", "blender", "ffmpeg", "files"]
