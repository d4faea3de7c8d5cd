"""Reading ``--init-data``/``--run-data``/``--path-mapping-rules`` values: inline JSON or YAML, or ``file://path``."""

from __future__ import annotations

import json
import os


class DataError(ValueError):
    """A data argument could not be read or parsed; the message says which and why."""


def read_arg(what: str, arg: str) -> tuple[str, str]:
    """Return ``(text, source)``: the file's content for ``file://path``, else the argument itself."""
    if arg.startswith("file://"):
        path = os.path.abspath(arg[len("file://") :])
        try:
            with open(path, encoding="utf-8") as f:
                return f.read(), path
        except OSError as exc:
            raise DataError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    return arg, "inline"


def parse_text(what: str, text: str, source: str = "inline") -> object:
    """JSON first; YAML when PyYAML is installed and the text is not JSON."""
    try:
        return json.loads(text)
    except ValueError as json_exc:
        try:
            import yaml
        except ImportError:
            raise DataError(
                f"{what} ({source}) is not valid JSON: {json_exc}; YAML is accepted only when PyYAML is installed"
            ) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DataError(f"{what} ({source}) is neither valid JSON ({json_exc}) nor valid YAML ({exc})") from None


def load_arg(what: str, arg: str) -> object:
    text, source = read_arg(what, arg)
    return parse_text(what, text, source)
