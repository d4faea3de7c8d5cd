"""Running adaptor actions: validation, failure reporting, cancellation.  Shared by ``run`` and the daemon."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
import traceback
from typing import Any

import attrs

from . import output
from .adaptor import Adaptor, AdaptorError
from .config import ConfigError, load_config
from .data import DataError, parse_text, read_arg
from .pathmapping import PathMappingError, parse_rules
from .protocol import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .schema import SchemaError, ValidationError, check_schema, validate

log = logging.getLogger(__name__)


class UsageError(Exception):
    """Bad input from the caller (data, rules, configuration): exit code 2, no traceback."""


@attrs.frozen
class Result:
    code: int
    message: str = ""
    canceled: bool = False

    @property
    def ok(self) -> bool:
        return self.code == EXIT_OK and not self.canceled


def adaptor_spec(cls: type[Adaptor]) -> str:
    """``module:Class`` (or ``/path/file.py:Class`` for an adaptor defined in a script) to import it again."""
    module = sys.modules.get(cls.__module__)
    if cls.__module__ == "__main__":
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.name and spec.name != "__main__":
            return f"{spec.name}:{cls.__qualname__}"
        path = getattr(module, "__file__", None)
        if not path:
            raise UsageError("an adaptor defined interactively cannot be started as a daemon")
        import os

        return f"{os.path.abspath(path)}:{cls.__qualname__}"
    return f"{cls.__module__}:{cls.__qualname__}"


def load_adaptor_class(spec: str) -> type[Adaptor]:
    module_name, _, qualname = spec.rpartition(":")
    if not module_name or not qualname:
        raise UsageError(f"adaptor {spec!r}: expected module:Class")
    if module_name.endswith(".py"):
        import_spec = importlib.util.spec_from_file_location("_fdw_adaptor_script", module_name)
        if import_spec is None or import_spec.loader is None:
            raise UsageError(f"adaptor {spec!r}: cannot load {module_name}")
        module = importlib.util.module_from_spec(import_spec)
        sys.modules[import_spec.name] = module
        import_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Adaptor)):
        raise UsageError(f"adaptor {spec!r} is not an Adaptor subclass")
    return obj


def _validated(what: str, data: object, schema: Any) -> dict[str, Any]:
    if data is None:
        data = {}
    if schema is not None:
        try:
            check_schema(schema, f"{what} schema")
            validate(data, schema)
        except ValidationError as exc:
            raise UsageError(f"{what}: {exc}") from None
        except SchemaError as exc:
            raise UsageError(f"the adaptor's {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what}: expected an object, got {type(data).__name__}")
    return data


def parse_data(what: str, text: str, source: str, schema: Any) -> dict[str, Any]:
    try:
        data = parse_text(what, text, source)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    return _validated(what, data, schema)


def build_adaptor(
    cls: type[Adaptor], init_text: str, init_source: str, rules_text: str | None, rules_source: str = "inline"
) -> Adaptor:
    """Validate everything the adaptor will need before any hook runs."""
    init_data = parse_data("init-data", init_text, init_source, cls.init_data_schema)
    rules = []
    if rules_text:
        try:
            rules = parse_rules(parse_text("path-mapping-rules", rules_text, rules_source))
        except (DataError, PathMappingError) as exc:
            raise UsageError(str(exc)) from None
    try:
        if cls.config_schema is not None:
            check_schema(cls.config_schema, "configuration schema")
        config, _ = load_config(cls.adaptor_name(), cls.default_config, cls.config_schema)
    except (ConfigError, SchemaError) as exc:
        raise UsageError(str(exc)) from None
    return cls(init_data, path_mapping_rules=rules, config=config)


def read_data_arg(what: str, arg: str | None) -> tuple[str, str]:
    if arg is None:
        return "{}", "default"
    try:
        return read_arg(what, arg)
    except DataError as exc:
        raise UsageError(str(exc)) from None


class Session:
    """Runs one action at a time on one adaptor; ``cancel()`` may come from any thread."""

    def __init__(self, adaptor: Adaptor) -> None:
        self.adaptor = adaptor
        self._lock = threading.Lock()
        self._active: str | None = None
        self.started = False

    @property
    def active(self) -> str | None:
        return self._active

    def perform(self, op: str, data_text: str | None = None, source: str = "inline") -> Result:
        with self._lock:
            self._active = op
            self.adaptor._reset_cancel()
        try:
            return self._perform(op, data_text, source)
        finally:
            with self._lock:
                self._active = None

    def _perform(self, op: str, data_text: str | None, source: str) -> Result:
        adaptor = self.adaptor
        try:
            if op == "start":
                adaptor.on_start()
                self.started = True
            elif op == "run":
                run_data = parse_data("run-data", data_text or "{}", source, adaptor.run_data_schema)
                adaptor.on_run(run_data)
            elif op == "stop":
                try:
                    if self.started:
                        adaptor.on_stop()
                finally:
                    self.started = False
                    adaptor.on_cleanup()
            elif op == "cleanup":
                adaptor.on_cleanup()
            else:
                raise UsageError(f"unknown action {op!r}")
        except UsageError as exc:
            output.emit(f"openjd_fail: {exc}")
            return Result(EXIT_USAGE, str(exc))
        except Exception as exc:  # noqa: BLE001 - every adaptor failure is reported, never raised
            if adaptor.is_canceled:
                output.emit(f"INFO: {op} canceled ({type(exc).__name__}: {exc})")
                return Result(EXIT_FAILED, f"{op} canceled", canceled=True)
            if not isinstance(exc, AdaptorError):
                for line in traceback.format_exc().rstrip().splitlines():
                    output.emit(f"ERROR: {line}")
            reason = str(exc) or type(exc).__name__
            output.emit(f"openjd_fail: {reason}")
            return Result(EXIT_FAILED, f"{op} failed: {reason}")
        if adaptor.is_canceled:
            output.emit(f"INFO: {op} canceled")
            return Result(EXIT_FAILED, f"{op} canceled", canceled=True)
        return Result(EXIT_OK)

    def cancel(self, reason: str = "cancel requested") -> bool:
        """Cancel the action in progress: ``on_cancel`` if the adaptor has one, else kill its processes."""
        with self._lock:
            if self._active is None or self.adaptor.is_canceled:
                return False
            op = self._active
            self.adaptor._set_canceled()
        output.emit(f"INFO: canceling {op}: {reason}")
        threading.Thread(target=self._cancel, name="cancel", daemon=True).start()
        return True

    def _cancel(self) -> None:
        adaptor = self.adaptor
        try:
            if adaptor.has_on_cancel():
                adaptor.on_cancel()
            else:
                adaptor.terminate_processes(adaptor.cancel_grace)
        except Exception:  # noqa: BLE001
            for line in traceback.format_exc().rstrip().splitlines():
                output.emit(f"ERROR: {line}")
