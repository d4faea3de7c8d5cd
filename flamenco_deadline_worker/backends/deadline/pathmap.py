"""A job's path-mapping rules (jobDetails ``pathMappingRules``) in openjd-sessions' own form.

The service derives the rules from the job's storage profile and the worker's fleet storage
profile: one rule per file-system location both name, mapping the submitter's path (in the
submitter's format, ``windows`` or ``posix``) to this host's.  openjd-sessions applies them to
PATH parameters and publishes them to actions (``{{Session.PathMappingRulesFile}}``); job
attachments map their manifests' roots with the same rules through ``map_path``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePath, PurePosixPath, PureWindowsPath
from typing import Any

from openjd.sessions import PathFormat, PathMappingRule

_FORMATS = {"windows": PathFormat.WINDOWS, "posix": PathFormat.POSIX}


class PathMappingError(Exception):
    """A rule the service sent cannot be used (the session's first action fails with this)."""


def rules_of(details: Mapping[str, Any]) -> list[PathMappingRule]:
    """The rules of a jobDetails entity, in the service's order; [] when it has none."""
    raw = details.get("pathMappingRules") or []
    if not isinstance(raw, list):
        raise PathMappingError(f"jobDetails.pathMappingRules is not a list: {raw!r}")
    return [_rule(i, item) for i, item in enumerate(raw)]


def _rule(index: int, item: Any) -> PathMappingRule:
    where = f"jobDetails.pathMappingRules[{index}]"
    if not isinstance(item, Mapping):
        raise PathMappingError(f"{where} is not an object: {item!r}")
    missing = [k for k in ("sourcePathFormat", "sourcePath", "destinationPath") if not isinstance(item.get(k), str)]
    if missing:
        raise PathMappingError(f"{where} lacks {', '.join(missing)}: {dict(item)!r}")
    fmt = _FORMATS.get(item["sourcePathFormat"].lower())
    if fmt is None:
        raise PathMappingError(
            f"{where}.sourcePathFormat is {item['sourcePathFormat']!r}; expected 'windows' or 'posix'"
        )
    source: PurePath = PureWindowsPath(item["sourcePath"]) if fmt is PathFormat.WINDOWS else PurePosixPath(
        item["sourcePath"]
    )
    # Destinations are paths of this host (a POSIX one: this agent runs on Linux).
    return PathMappingRule(
        source_path_format=fmt, source_path=source, destination_path=PurePath(item["destinationPath"])
    )


def map_path(rules: Sequence[PathMappingRule], path: str) -> str:
    """``path`` through the first rule that matches it, the most specific source first (the order
    openjd-sessions uses for PATH parameters); unchanged when none does."""
    for rule in sorted(rules, key=_specificity, reverse=True):
        matched, mapped = rule.apply(path=path)
        if matched:
            return mapped
    return path


def as_dicts(rules: Sequence[PathMappingRule]) -> list[dict[str, str]]:
    """The rules as ``{source_path_format, source_path, destination_path}`` strings: the form of
    openjd's rules file and of the ``deadline`` library's job-attachments path mapping."""
    return [rule.to_dict() for rule in rules]


def source_to_destination(rules: Sequence[PathMappingRule]) -> dict[str, str]:
    """``{source path: destination path}``: the form the ``deadline`` library's job attachments take
    as ``storage_profiles_path_mapping_rules`` (manifest roots from the submitter's profile)."""
    return {str(rule.source_path): str(rule.destination_path) for rule in rules}


def _specificity(rule: PathMappingRule) -> int:
    source = rule.source_path
    return len(source.parts) if isinstance(source, PurePath) else len(str(source))
