"""Adaptor configuration: JSON layered from the package default, a system file, a user file and an
environment variable, each later layer overriding the earlier ones key by key, then validated against the
adaptor's configuration schema.  Errors name the key and the layer that set it."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import attrs

from .schema import ValidationError, format_path, validate

SYSTEM_DIR_ENV = "FDW_ADAPTOR_SYSTEM_CONFIG_DIR"
DEFAULT_SYSTEM_DIR = "/etc/flamenco-deadline-worker/adaptors"


class ConfigError(ValueError):
    """A configuration layer is unreadable or the merged configuration breaks the schema."""


@attrs.frozen
class ConfigLayer:
    source: str
    values: dict[str, Any]


def env_var_name(adaptor_name: str) -> str:
    """``Blender`` -> ``FDW_ADAPTOR_BLENDER_CONFIG``."""
    clean = "".join(c if c.isalnum() else "_" for c in adaptor_name).upper()
    return f"FDW_ADAPTOR_{clean}_CONFIG"


def system_config_path(adaptor_name: str) -> str:
    base = os.environ.get(SYSTEM_DIR_ENV) or DEFAULT_SYSTEM_DIR
    return os.path.join(base, f"{adaptor_name}.json")


def user_config_path(adaptor_name: str) -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "flamenco-deadline-worker", "adaptors", f"{adaptor_name}.json")


def _read_json_file(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"adaptor configuration {path}: cannot read: {exc.strerror or exc}") from None
    return _as_object(text, path)


def _as_object(text: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"adaptor configuration {source}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"adaptor configuration {source}: expected a JSON object, got {type(data).__name__}")
    return data


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of objects; anything else in ``over`` replaces what ``base`` had."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def collect_layers(adaptor_name: str, package_default: Mapping[str, Any] | None) -> list[ConfigLayer]:
    layers = [ConfigLayer("package default", dict(package_default or {}))]
    for path in (system_config_path(adaptor_name), user_config_path(adaptor_name)):
        values = _read_json_file(path)
        if values is not None:
            layers.append(ConfigLayer(path, values))
    var = env_var_name(adaptor_name)
    raw = os.environ.get(var)
    if raw:
        if raw.startswith("file://"):
            path = raw[len("file://") :]
            values = _read_json_file(path)
            if values is None:
                raise ConfigError(f"${var} names {path}, which does not exist")
            layers.append(ConfigLayer(f"${var} ({path})", values))
        else:
            layers.append(ConfigLayer(f"${var}", _as_object(raw, f"${var}")))
    return layers


def _source_of(path: list[str | int], layers: list[ConfigLayer]) -> str:
    for layer in reversed(layers):
        node: Any = layer.values
        found = True
        for part in path:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                found = False
                break
        if found:
            return layer.source
    return layers[-1].source if layers else "configuration"


def load_config(
    adaptor_name: str,
    package_default: Mapping[str, Any] | None,
    schema: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], list[ConfigLayer]]:
    layers = collect_layers(adaptor_name, package_default)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge(merged, layer.values)
    if schema is not None:
        try:
            validate(merged, schema)
        except ValidationError as exc:
            # A missing key was set by nobody: point at the key, not a file.
            where = "" if exc.reason.endswith("missing") else f" (set in {_source_of(exc.path, layers)})"
            raise ConfigError(f"adaptor configuration key {format_path(exc.path)}{where}: {exc.reason}") from None
    return merged, layers
