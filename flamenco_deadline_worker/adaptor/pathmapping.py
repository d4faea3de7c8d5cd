"""Path-mapping rules in the Open Job Description shape, applied by ``Adaptor.map_path()``."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

import attrs


class PathMappingError(ValueError):
    """The rules are malformed; the message names the rule and the key."""


@attrs.frozen
class PathMappingRule:
    """Map paths under ``source_path`` (written in ``source_path_format``) to ``destination_path``."""

    source_path_format: str
    source_path: str
    destination_path: str

    @property
    def _windows(self) -> bool:
        return self.source_path_format.upper() == "WINDOWS"

    def _parts(self, path: str) -> list[str]:
        if self._windows:
            path = path.replace("\\", "/")
        return [p for p in path.split("/") if p]

    def apply(self, path: str) -> str | None:
        """The mapped path, or None when ``path`` is not under this rule's source."""
        src, parts = self._parts(self.source_path), self._parts(path)
        if len(parts) < len(src):
            return None
        head = parts[: len(src)]
        same = [a.lower() for a in head] == [b.lower() for b in src] if self._windows else head == src
        if not same:
            return None
        if not self._windows and not path.startswith("/") and self.source_path.startswith("/"):
            return None
        rest = parts[len(src) :]
        return posixpath.join(self.destination_path, *rest) if rest else self.destination_path


def parse_rules(data: object) -> list[PathMappingRule]:
    """Accept ``{"version": "pathmapping-1.0", "path_mapping_rules": [...]}`` or the bare list."""
    rules: object = data
    if isinstance(data, Mapping):
        version = data.get("version", "pathmapping-1.0")
        if version != "pathmapping-1.0":
            raise PathMappingError(f"path mapping rules: version {version!r} is not supported (pathmapping-1.0)")
        rules = data.get("path_mapping_rules")
    if not isinstance(rules, list):
        raise PathMappingError("path mapping rules: expected a list of rules or {'path_mapping_rules': [...]}")
    out = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, Mapping):
            raise PathMappingError(f"path_mapping_rules[{i}]: expected an object, got {rule!r}")
        values: dict[str, str] = {}
        for key in ("source_path_format", "source_path", "destination_path"):
            value: Any = rule.get(key)
            if not isinstance(value, str) or not value:
                raise PathMappingError(f"path_mapping_rules[{i}].{key}: required non-empty string, got {value!r}")
            values[key] = value
        if values["source_path_format"].upper() not in ("POSIX", "WINDOWS"):
            raise PathMappingError(
                f"path_mapping_rules[{i}].source_path_format: must be POSIX or WINDOWS, "
                f"got {values['source_path_format']!r}"
            )
        out.append(PathMappingRule(**values))
    # The most specific source wins, whatever order the rules came in.
    out.sort(key=lambda r: len(r._parts(r.source_path)), reverse=True)
    return out


def map_path(path: str, rules: Iterable[PathMappingRule]) -> str:
    for rule in rules:
        mapped = rule.apply(path)
        if mapped is not None:
            return mapped
    return path


__all__ = ["PathMappingError", "PathMappingRule", "map_path", "parse_rules"]
