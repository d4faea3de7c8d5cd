"""Whether a worker's capabilities (as UpdateWorker sent them) meet a step's OpenJD host requirements.

The rules of the 2023-09 template schema, as the service schedules by them: every amount requirement
needs the worker's amount within ``min``..``max`` (an amount the worker did not report counts as 0);
every attribute requirement needs the attribute reported, with at least one of ``anyOf`` or every
one of ``allOf`` among its values.  Capability names and attribute values compare without regard
to case (OpenJD lower-cases names).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _amounts(capabilities: Mapping[str, Any] | None) -> dict[str, float]:
    return {str(a["name"]).lower(): float(a["value"]) for a in (capabilities or {}).get("amounts", [])}


def _attributes(capabilities: Mapping[str, Any] | None) -> dict[str, set[str]]:
    return {
        str(a["name"]).lower(): {str(v).lower() for v in a["values"]}
        for a in (capabilities or {}).get("attributes", [])
    }


def unmet(capabilities: Mapping[str, Any] | None, requirements: Mapping[str, Any] | None) -> list[str]:
    """The requirements a worker with ``capabilities`` does not meet (empty: it may run the step)."""
    if not requirements:
        return []
    amounts = _amounts(capabilities)
    attributes = _attributes(capabilities)
    missing: list[str] = []
    for need in requirements.get("amounts", []):
        name = str(need["name"]).lower()
        have = amounts.get(name, 0.0)
        low = float(need.get("min", 0))
        high = float(need["max"]) if need.get("max") is not None else None
        if have < low or (high is not None and have > high):
            missing.append(f"{name} = {have:g}, needs {low:g}..{'' if high is None else f'{high:g}'}")
    for need in requirements.get("attributes", []):
        name = str(need["name"]).lower()
        values = attributes.get(name)
        any_of = {str(v).lower() for v in need.get("anyOf", [])}
        all_of = {str(v).lower() for v in need.get("allOf", [])}
        if values is None:
            missing.append(f"{name} not reported")
        elif any_of and not any_of & values:
            missing.append(f"{name} = {sorted(values)}, needs any of {sorted(any_of)}")
        elif all_of and not all_of <= values:
            missing.append(f"{name} = {sorted(values)}, needs all of {sorted(all_of)}")
    return missing
