"""Structured log records: one small function per event type, shared by both backends.

Each call emits one logging record.  Its message is a readable line, ``"<Type> <Subtype>: <text>"``,
which the text log shows as is; its ``fields`` (``extra={"fields": {...}}``) hold ``type``,
``subtype`` and the event's own values, which ``logs.JsonFormatter`` writes as one JSON object.
Both forms are the same event.  Values under keys that look like secrets are replaced, and the
logging set-up redacts configured secrets from both forms as well.

Types and subtypes:
  Action Start/Cancel/End, AgentInfo, API Req/Resp, FileSystem Create/Read/Write/Delete,
  Session Starting/Failed/Complete/Add/Remove/Logs/User, Worker Create/Load/ID/Status/Delete,
  Metrics System.
"""

from __future__ import annotations

import functools
import getpass
import logging
import os
import platform
import shutil
import socket
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flamenco_deadline_worker import __version__, logs

log = logging.getLogger("flamenco_deadline_worker.records")

# With the functions below, this module is the agent log that compose.py hands to the core and the
# backends (core.hooks.AgentLog).
hide = logs.add_secret
dress = logs.dress_like_agent_log


def api_records_on() -> bool:
    return log.isEnabledFor(logging.DEBUG)

RECORD_TYPES: dict[str, tuple[str, ...]] = {
    "Action": ("Start", "Cancel", "End"),
    "AgentInfo": ("",),
    "API": ("Req", "Resp"),
    "FileSystem": ("Create", "Read", "Write", "Delete"),
    "Session": ("Starting", "Failed", "Complete", "Add", "Remove", "Logs", "User"),
    "Worker": ("Create", "Load", "ID", "Status", "Delete"),
    "Metrics": ("System",),
}
# Fields every record of a type carries (besides level, type, subtype and message).
REQUIRED_FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("Action", "Start"): ("session_id", "action_id", "kind"),
    ("Action", "Cancel"): ("session_id", "action_id", "reason"),
    ("Action", "End"): ("session_id", "action_id", "status", "seconds"),
    ("AgentInfo", ""): ("agent_version", "python_version", "platform", "hostname", "pid", "user", "backend"),
    ("API", "Req"): ("operation", "url", "params"),
    ("API", "Resp"): ("operation", "status_code", "seconds"),
    ("FileSystem", "Create"): ("path",),
    ("FileSystem", "Read"): ("path",),
    ("FileSystem", "Write"): ("path",),
    ("FileSystem", "Delete"): ("path",),
    ("Session", "Starting"): ("session_id", "queue_id"),
    ("Session", "Failed"): ("session_id", "queue_id", "reason"),
    ("Session", "Complete"): ("session_id", "queue_id", "status", "seconds"),
    ("Session", "Add"): ("session_id", "queue_id", "action_ids"),
    ("Session", "Remove"): ("session_id", "queue_id"),
    ("Session", "Logs"): ("session_id", "queue_id", "log_file"),
    ("Session", "User"): ("session_id", "queue_id", "user"),
    ("Worker", "Create"): ("worker_id", "service"),
    ("Worker", "Load"): ("worker_id", "source"),
    ("Worker", "ID"): ("worker_id",),
    ("Worker", "Status"): ("worker_id", "status"),
    ("Worker", "Delete"): ("worker_id", "reason"),
    ("Metrics", "System"): ("cpu_count", "load_1m", "memory_total_bytes", "memory_available_bytes",
                            "disk_free_bytes", "rss_bytes"),
}
SECRET_MARKERS = ("secret", "password", "token", "authorization", "credential", "accesskey", "sessiontoken")
HIDDEN = "********"


@functools.lru_cache(maxsize=1024)  # records use a few dozen keys, again and again
def is_secret_key(key: str) -> bool:
    folded = key.lower().replace("_", "").replace("-", "")
    return any(marker in folded for marker in SECRET_MARKERS)


def scrub(value: Any) -> Any:
    """A copy of ``value`` with the values of secret-looking keys hidden, at any depth."""
    if isinstance(value, Mapping):
        return {str(k): HIDDEN if is_secret_key(str(k)) else scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def emit(kind: str, subtype: str, text: str, level: int = logging.INFO, /, **fields: Any) -> None:
    """Emit one record of ``kind``/``subtype``; the text form reads "<kind> <subtype>: <text>"."""
    if not log.isEnabledFor(level):
        return
    head = f"{kind} {subtype}" if subtype else kind
    data = {"type": kind, "subtype": subtype, **scrub(fields)}
    # Made and handled directly: logging would otherwise walk the stack for the caller's file and
    # line on every record (no format shows them, and for a record they would name this function).
    record = log.makeRecord(log.name, level, "(records)", 0, "%s: %s", (head, text), None, extra={"fields": data})
    log.handle(record)


# ---- Worker ------------------------------------------------------------------------------------


def worker_create(worker_id: str, service: str, **fields: Any) -> None:
    emit("Worker", "Create", f"registered as worker {worker_id} with {service}",
         worker_id=worker_id, service=service, **fields)


def worker_load(worker_id: str, source: str | Path, **fields: Any) -> None:
    emit("Worker", "Load", f"loaded worker {worker_id} from {source}",
         worker_id=worker_id, source=str(source), **fields)


def worker_id(worker_id: str, **fields: Any) -> None:
    emit("Worker", "ID", f"worker id is {worker_id}", worker_id=worker_id, **fields)


def worker_status(worker_id: str, status: str, previous: str | None = None, **fields: Any) -> None:
    change = f"{previous} -> {status}" if previous and previous != status else status
    emit("Worker", "Status", f"worker {worker_id} status {change}",
         worker_id=worker_id, status=status, previous=previous, **fields)


def worker_delete(worker_id: str, reason: str, **fields: Any) -> None:
    emit("Worker", "Delete", f"worker {worker_id} deleted: {reason}", worker_id=worker_id, reason=reason, **fields)


# ---- Sessions (a Flamenco task is one session of one queue, its job) ------------------------------


def session_starting(session_id: str, queue_id: str, **fields: Any) -> None:
    emit("Session", "Starting", f"session {session_id} of {queue_id} starting",
         session_id=session_id, queue_id=queue_id, **fields)


def session_failed(session_id: str, queue_id: str, reason: str, **fields: Any) -> None:
    emit("Session", "Failed", f"session {session_id} of {queue_id} failed: {reason}", logging.WARNING,
         session_id=session_id, queue_id=queue_id, reason=reason, **fields)


def session_complete(session_id: str, queue_id: str, status: str, seconds: float, **fields: Any) -> None:
    emit("Session", "Complete", f"session {session_id} of {queue_id} {status} in {seconds:.2f} s",
         session_id=session_id, queue_id=queue_id, status=status, seconds=round(seconds, 3), **fields)


def session_add(session_id: str, queue_id: str, action_ids: Iterable[str], **fields: Any) -> None:
    ids = list(action_ids)
    emit("Session", "Add", f"session {session_id}: added action(s) {', '.join(ids)}",
         session_id=session_id, queue_id=queue_id, action_ids=ids, **fields)


def session_remove(session_id: str, queue_id: str, reason: str = "", **fields: Any) -> None:
    emit("Session", "Remove", f"session {session_id} of {queue_id} removed" + (f": {reason}" if reason else ""),
         session_id=session_id, queue_id=queue_id, reason=reason, **fields)


def session_logs(session_id: str, queue_id: str, log_file: str | Path, **fields: Any) -> None:
    emit("Session", "Logs", f"session {session_id} logs to {log_file}",
         session_id=session_id, queue_id=queue_id, log_file=str(log_file), **fields)


def session_user(session_id: str, queue_id: str, user: str | None = None, **fields: Any) -> None:
    """``user`` None: the agent's own."""
    user = user or current_user()
    emit("Session", "User", f"session {session_id} runs as user {user}",
         session_id=session_id, queue_id=queue_id, user=user, **fields)


# ---- Actions ------------------------------------------------------------------------------------


def action_start(session_id: str, action_id: str, kind: str, **fields: Any) -> None:
    emit("Action", "Start", f"session {session_id}: action {action_id} ({kind}) started",
         session_id=session_id, action_id=action_id, kind=kind, **fields)


def action_cancel(session_id: str, action_id: str, reason: str, **fields: Any) -> None:
    emit("Action", "Cancel", f"session {session_id}: action {action_id} canceled: {reason}",
         session_id=session_id, action_id=action_id, reason=reason, **fields)


def action_end(session_id: str, action_id: str, status: str, seconds: float, **fields: Any) -> None:
    emit("Action", "End", f"session {session_id}: action {action_id} {status} in {seconds:.2f} s",
         session_id=session_id, action_id=action_id, status=status, seconds=round(seconds, 3), **fields)


# ---- API calls (debug level: there are many) -----------------------------------------------------


def api_request(operation: str, url: str, params: Any = None, **fields: Any) -> None:
    emit("API", "Req", f"{operation} {url}", logging.DEBUG,
         operation=operation, url=url, params=params if params is not None else {}, **fields)


def api_response(operation: str, status_code: int | str, seconds: float, error: str = "", **fields: Any) -> None:
    text = f"{operation} answered {status_code} in {seconds * 1000:.0f} ms" + (f": {error}" if error else "")
    emit("API", "Resp", text, logging.DEBUG,
         operation=operation, status_code=status_code, seconds=round(seconds, 4), error=error, **fields)


# ---- File system --------------------------------------------------------------------------------


def filesystem(op: str, path: str | Path, text: str = "", level: int = logging.INFO, **fields: Any) -> None:
    """``op`` is Create, Read, Write or Delete."""
    emit("FileSystem", op, f"{op.lower()} {path}" + (f": {text}" if text else ""), level, path=str(path), **fields)


# ---- Agent and metrics ----------------------------------------------------------------------------


def agent_info(backend: str, **fields: Any) -> None:
    info = {
        "agent_version": __version__,
        "python_version": platform.python_version(),
        "python": sys.executable,
        "python_optimize": sys.flags.optimize,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "user": current_user(),
        "backend": backend,
        "argv": sys.argv[1:],
    }
    info.update(fields)
    emit("AgentInfo", "", f"flamenco-deadline-worker {__version__} (pid {info['pid']}) on {info['hostname']} "
         f"as {info['user']}, Python {info['python_version']}{_optimize_flag()}, backend {backend}", **info)


def _optimize_flag() -> str:
    return f" (-{'O' * sys.flags.optimize})" if sys.flags.optimize else ""


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def system_metrics(disk_path: Path | None = None) -> dict[str, Any]:
    """CPU, memory and disk figures of this host, and the worker's own memory; cheap to read."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    meminfo: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            meminfo[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    rss = 0
    try:
        rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    disk_free = 0
    if disk_path is not None:
        try:
            disk_free = shutil.disk_usage(disk_path).free
        except OSError:
            pass
    return {
        "cpu_count": os.cpu_count() or 0,
        "load_1m": round(load[0], 2),
        "load_5m": round(load[1], 2),
        "memory_total_bytes": meminfo.get("MemTotal", 0),
        "memory_available_bytes": meminfo.get("MemAvailable", 0),
        "disk_free_bytes": disk_free,
        "rss_bytes": rss,
    }


def metrics(values: Mapping[str, Any]) -> None:
    shown = ", ".join(f"{k}={v}" for k, v in values.items())
    emit("Metrics", "System", shown, logging.INFO, **dict(values))
