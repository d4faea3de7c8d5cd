"""Trimmed botocore data for the worker's two clients, written once per botocore version.

botocore parses a service's whole model (and the endpoint table of every service) into memory for
each client and keeps it: ~12 MiB for the deadline and logs models and endpoints.json, of which
this worker uses 8 operations and 2 services.  This module writes cut-down copies, generated from
the installed botocore so the versions always match:

    <dir>/deadline/<api version>/service-2.json   only the operations in OPERATIONS, the shapes they
    <dir>/logs/<api version>/service-2.json       reach, no documentation
    <dir>/endpoints.json                          only the deadline and logs services

and the worker points its botocore session at ``<dir>`` through botocore's documented data path
(the session's ``data_path`` variable, the one ``AWS_DATA_PATH`` sets), ahead of botocore's own
data; everything else (endpoint rule sets, partitions, retry rules) still comes from botocore.
The files are written by a child process (``python -m`` this module), so the worker itself never
holds the full documents, and atomically (a directory renamed into place).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The operations this worker calls, by botocore service name.
OPERATIONS: dict[str, frozenset[str]] = {
    "deadline": frozenset(
        {
            "CreateWorker",
            "AssumeFleetRoleForWorker",
            "UpdateWorker",
            "UpdateWorkerSchedule",
            "BatchGetJobEntity",
            "AssumeQueueRoleForWorker",
            "DeleteWorker",
        }
    ),
    "logs": frozenset({"PutLogEvents"}),
}
_COMPLETE = "complete"  # written last: a directory without it is not used


def _strip_documentation(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_documentation(v) for k, v in value.items() if k != "documentation"}
    if isinstance(value, list):
        return [_strip_documentation(v) for v in value]
    return value


def _refs(node: Mapping[str, Any]) -> list[str]:
    """The shapes an operation or a shape refers to."""
    refs = [node.get("input"), node.get("output"), *node.get("errors", [])]
    refs += [node.get("member"), node.get("key"), node.get("value"), *node.get("members", {}).values()]
    return [ref["shape"] for ref in refs if isinstance(ref, dict) and "shape" in ref]


def trim_service_model(model: Mapping[str, Any], keep: frozenset[str]) -> dict[str, Any]:
    """``model`` with only the operations ``keep`` and the shapes they reach, without documentation."""
    missing = keep - set(model["operations"])
    if missing:
        raise ValueError(f"botocore's {model['metadata'].get('serviceId')} model lacks {sorted(missing)}")
    operations = {name: op for name, op in model["operations"].items() if name in keep}
    shapes = model["shapes"]
    wanted: set[str] = set()
    todo = [name for op in operations.values() for name in _refs(op)]
    while todo:
        name = todo.pop()
        if name not in wanted and name in shapes:
            wanted.add(name)
            todo += _refs(shapes[name])
    trimmed = {key: value for key, value in model.items() if key not in ("operations", "shapes", "documentation")}
    trimmed["operations"] = operations
    trimmed["shapes"] = {name: shapes[name] for name in sorted(wanted)}
    return dict(_strip_documentation(trimmed))


def trim_endpoints(endpoints: Mapping[str, Any], services: frozenset[str]) -> dict[str, Any]:
    """endpoints.json with each partition's services cut down to ``services``."""
    out = dict(endpoints)
    out["partitions"] = [
        {**p, "services": {k: v for k, v in p.get("services", {}).items() if k in services}}
        for p in endpoints["partitions"]
    ]
    return out


def _read_json(path: Path) -> Any:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fp:
        return json.loads(fp.read().decode("utf-8"))


def _builtin_file(data: Path, relative: str) -> Path:
    for candidate in (data / f"{relative}.json", data / f"{relative}.json.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"botocore has no {relative}.json[.gz] under {data}")


def write_trimmed(target: Path) -> None:
    """Write the trimmed data of the installed botocore into ``target`` (which must not exist)."""
    import botocore

    data = Path(botocore.__file__).parent / "data"
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for service, keep in OPERATIONS.items():
            versions = sorted(p.name for p in (data / service).iterdir() if p.is_dir())
            if not versions:
                raise FileNotFoundError(f"botocore has no {service} model under {data}")
            version = versions[-1]  # the one botocore picks when no api_version is given
            model = _read_json(_builtin_file(data, f"{service}/{version}/service-2"))
            out = staging / service / version
            out.mkdir(parents=True)
            (out / "service-2.json").write_text(json.dumps(trim_service_model(model, keep)))
        endpoints = _read_json(_builtin_file(data, "endpoints"))
        (staging / "endpoints.json").write_text(json.dumps(trim_endpoints(endpoints, frozenset(OPERATIONS))))
        (staging / _COMPLETE).write_text("")
        os.chmod(staging, 0o755)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def data_dir(parent: Path) -> Path:
    """Where the data for the installed botocore and this worker's operation list lives under ``parent``."""
    import botocore

    listed = json.dumps({k: sorted(v) for k, v in sorted(OPERATIONS.items())}).encode()
    return parent / f"botocore-{botocore.__version__}-{hashlib.sha256(listed).hexdigest()[:8]}"


def ensure_trimmed(parent: Path) -> Path | None:
    """The trimmed data directory under ``parent``, written by a child process if missing; None
    (botocore's own data is used, at ~12 MiB more memory) if it cannot be written."""
    target = data_dir(parent)
    if (target / _COMPLETE).is_file():
        return target
    try:
        parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", __name__, str(target)], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot write trimmed botocore models into %s (%s); using botocore's own", parent, exc)
        return None
    if (target / _COMPLETE).is_file():  # written now, or by another worker meanwhile
        return target
    why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    log.warning("cannot write trimmed botocore models into %s (%s); using botocore's own", parent, why)
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python -m {__name__} TARGET_DIR", file=sys.stderr)
        return 2
    target = Path(argv[0])
    try:
        write_trimmed(target)
    except FileExistsError:
        pass  # another worker wrote it first
    except OSError as exc:
        if not (target / _COMPLETE).is_file():
            print(f"cannot write {target}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
