"""The layers stay in order: the core at the bottom imports nothing above it, and no layer below the
composition root (compose.py) imports the operations side; compose.py hands those parts in."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "flamenco_deadline_worker"

FORBIDDEN = (
    "flamenco_deadline_worker.compose",
    "flamenco_deadline_worker.backends",
    "flamenco_deadline_worker.upstream",
    "flamenco_deadline_worker.runner",
    "flamenco_deadline_worker.presence",
    "flamenco_deadline_worker.records",
    "flamenco_deadline_worker.credentials",
    "flamenco_deadline_worker.sdnotify",
    "aiohttp",
    "boto3",
    "botocore",
)


def _loaded_by(*modules: str) -> list[str]:
    code = f"import json, sys\nimport {', '.join(modules)}\nprint(json.dumps(sorted(sys.modules)))\n"
    return list(json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True).stdout))


def test_the_core_imports_nothing_above_it() -> None:
    loaded = _loaded_by(
        "flamenco_deadline_worker.core.worker", "flamenco_deadline_worker.core.model",
        "flamenco_deadline_worker.core.clock", "flamenco_deadline_worker.core.backoff",
    )
    assert [m for m in loaded if m.startswith(FORBIDDEN)] == []


def test_each_service_loads_only_its_own_parts() -> None:
    """The composition root imports a service's parts where it puts that service together: a Deadline
    worker carries no Flamenco runner or aiohttp client in memory, a Flamenco worker no boto3."""
    pytest.importorskip("boto3")
    deadline = _loaded_by(
        "flamenco_deadline_worker.cli", "flamenco_deadline_worker.compose",
        "flamenco_deadline_worker.backends.deadline.service",
    )
    flamenco_parts = ("flamenco_deadline_worker.runner", "flamenco_deadline_worker.backends.flamenco", "aiohttp")
    assert [m for m in deadline if m.startswith(flamenco_parts)] == []
    flamenco = _loaded_by(
        "flamenco_deadline_worker.cli", "flamenco_deadline_worker.compose", "flamenco_deadline_worker.core.worker",
        "flamenco_deadline_worker.runner.runner", "flamenco_deadline_worker.backends.flamenco",
    )
    assert [m for m in flamenco if m.startswith(("boto3", "botocore", "openjd"))] == []


# What each layer may import from this package (first name after ``flamenco_deadline_worker.``).
# Shared below every layer: the config's data, the version, file helpers and the task environment's
# rules.  Everything else (the agent log's records, logs, presence and systemd, the credentials file,
# status, install, cli, compose) is the operations side: the composition root hands it in.
SHARED = {"config", "__version__", "atomicfile", "private", "taskenv"}
MAY_IMPORT = {
    "core": {"core"},
    "upstream": {"core", "upstream"},
    "runner": {"core", "upstream", "runner"},
    "backends": {"core", "upstream", "runner", "backends"},
}


def _runtime_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, first package name) of every import of this package, at any depth, except those under
    ``if TYPE_CHECKING:`` (types only)."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PACKAGE:
                found.extend((node.lineno, alias.name) for alias in node.names)
            elif node.module.startswith(PACKAGE + "."):
                found.append((node.lineno, node.module.split(".")[1]))
        elif isinstance(node, ast.Import):
            found.extend(
                (node.lineno, alias.name.split(".")[1]) for alias in node.names if alias.name.startswith(PACKAGE + ".")
            )
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_no_layer_below_the_composition_root_imports_the_operations_side() -> None:
    root = Path(__file__).resolve().parents[1] / PACKAGE
    wrong = []
    checked = 0
    for layer, allowed in MAY_IMPORT.items():
        for path in sorted((root / layer).rglob("*.py")):
            checked += 1
            for line, name in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
                if name not in allowed | SHARED:
                    wrong.append(f"{path.relative_to(root)}:{line} imports {name}")
    assert checked > 40  # every module of the four layers was read
    assert wrong == []


def test_the_layer_check_sees_lazy_imports_and_passes_over_type_only_ones() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from flamenco_deadline_worker.presence import StatusPublisher\n"
        "def later():\n"
        "    from flamenco_deadline_worker import records, private\n"
        "    import flamenco_deadline_worker.logs\n"
    )
    assert _runtime_imports(tree) == [(5, "records"), (5, "private"), (6, "logs")]
