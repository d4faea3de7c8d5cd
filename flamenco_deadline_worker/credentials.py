"""Saving the worker's credentials into its own config file: atomic, mode 0600, other lines kept."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from flamenco_deadline_worker.atomicfile import write_atomic
from flamenco_deadline_worker.config import TABLE


def _toml_string(value: str) -> str:
    # A JSON string literal is a valid TOML basic string for the characters we write.
    return json.dumps(value)


def save_keys(path: Path, values: Mapping[str, str]) -> None:
    """Set ``values`` in the [flamenco-worker] table of ``path``, keeping its other keys and comments."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    remaining = dict(values)
    table_start = None
    table_end = len(lines)
    for i, line in enumerate(lines):
        header = re.match(r"^\s*\[([^\]]+)\]\s*(#.*)?$", line)
        if header:
            if table_start is not None:
                table_end = i
                break
            if header.group(1).strip().strip('"') == TABLE:
                table_start = i
    if table_start is None:
        if lines and lines[-1].strip():
            lines.append("")
        lines.append(f"[{TABLE}]")
        table_start, table_end = len(lines) - 1, len(lines)
    for i in range(table_start + 1, table_end):
        match = re.match(r"^\s*([A-Za-z0-9_-]+)\s*=", lines[i])
        if match and match.group(1) in remaining:
            key = match.group(1)
            lines[i] = f"{key} = {_toml_string(remaining.pop(key))}"
    insert_at = table_end
    while insert_at > table_start + 1 and not lines[insert_at - 1].strip():
        insert_at -= 1
    for key, value in remaining.items():
        lines.insert(insert_at, f"{key} = {_toml_string(value)}")
        insert_at += 1
    write_private(path, "\n".join(lines) + "\n")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (it may hold secrets)."""
    write_atomic(path, text, 0o600)
