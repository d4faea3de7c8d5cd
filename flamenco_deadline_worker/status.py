"""The `status` and `flush` commands.

``flamenco-worker status`` reads the state file a worker keeps (presence.py) and the update queue
(read-only), so it works with or without a running worker.  ``flamenco-worker flush`` delivers the
queued updates of a stopped worker and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flamenco_deadline_worker.presence import pid_alive, state_file
from flamenco_deadline_worker.upstream import homelock

if TYPE_CHECKING:
    from flamenco_deadline_worker.config import WorkerConfig

log = logging.getLogger(__name__)
EXIT_OK = 0
EXIT_NOT_ALL_DELIVERED = 1
EXIT_USAGE = 2
EXIT_WORKER_RUNNING = 5


def read_backlog(db: Path) -> dict[str, Any]:
    """Count, bytes and oldest age of undelivered updates, reading the queue file without changing it."""
    if not db.exists():
        return {"count": 0, "bytes": 0, "oldest_age_seconds": None, "note": "no queue file yet"}
    sql = "SELECT COUNT(*), COALESCE(SUM(nbytes), 0), MIN(created) FROM updates"
    note = ""
    try:
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        return {"count": None, "bytes": None, "oldest_age_seconds": None, "note": f"cannot open: {exc}"}
    try:
        try:
            row = conn.execute(sql).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return {"count": 0, "bytes": 0, "oldest_age_seconds": None, "note": "empty queue file"}
            # Read-only access to a WAL file we may not write its -shm of: read the main file as is.
            conn.close()
            conn = sqlite3.connect(f"{db.as_uri()}?immutable=1", uri=True)
            row = conn.execute(sql).fetchone()
            note = f"read without the write-ahead log ({exc}); the numbers may be a little old"
    except sqlite3.Error as exc:
        return {"count": None, "bytes": None, "oldest_age_seconds": None, "note": f"cannot read: {exc}"}
    finally:
        conn.close()
    oldest = row[2]
    return {
        "count": int(row[0]),
        "bytes": int(row[1]),
        "oldest_age_seconds": round(max(0.0, time.time() - oldest), 1) if oldest is not None else None,
        "note": note,
    }


def collect(config: WorkerConfig) -> dict[str, Any]:
    from flamenco_deadline_worker.logs import AGENT_LOG_NAME, BOOTSTRAP_LOG_NAME

    path = state_file(config)
    saved: dict[str, Any] = {}
    if path.exists():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            saved = {"error": f"cannot read {path}: {exc}"}
    pid = int(saved.get("pid") or 0)
    held_by = homelock.holder(config.home)
    if held_by is not None and held_by != os.getpid():  # (flush holds it itself while it works)
        running, pid = True, held_by or pid  # the home lock is the authority while it is held
    elif homelock.lock_path(config.home).exists():
        running = False  # a worker that takes the lock has stopped; the pid may be someone else's now
    else:
        running = saved.get("state") != "stopped" and pid_alive(pid)
    state = saved.get("state", "never started") if running else "not running"
    if saved and not running:
        state = f"not running (last state: {saved.get('state', 'unknown')})"
    return {
        "worker_id": saved.get("worker_id") or config.worker_id or None,
        "worker_name": saved.get("worker_name") or config.worker_name,
        "backend": saved.get("backend") or config.backend,  # the running worker's, e.g. --backend deadline
        "service": saved.get("service") or (config.manager_url if config.backend == "flamenco" else config.farm_id),
        "running": running,
        "pid": pid if running else None,
        "state": state,
        "current_task": saved.get("current_task") if running else None,
        "queue_problem": saved.get("queue_problem") if running else None,
        # Pre-task checks failing right now (the worker fetches no task until they pass), else [].
        "failed_checks": saved.get("failed_checks", []) if running else [],
        "last_task": saved.get("last_task"),
        # Deadline: why the worker drains (kind none, service, spot, rebalance or expedited), or None.
        "drain": saved.get("drain"),
        # Deadline Cloud: the capabilities the worker sent in UpdateWorker (detected and configured).
        "capabilities": saved.get("capabilities"),
        "tasks_run": saved.get("tasks_run"),
        "state_updated_at": saved.get("updated_at"),
        "backlog": read_backlog(config.task_update_queue_db),
        "home": str(config.home),
        "state_file": str(path),
        "queue_db": str(config.task_update_queue_db),
        "logs": {
            "dir": str(config.logs_dir),
            "agent": str(config.logs_dir / AGENT_LOG_NAME),
            "bootstrap": str(config.logs_dir / BOOTSTRAP_LOG_NAME),
            "tasks": str(config.logs_dir / "<job id>" / "<task id>.log"),
        },
    }


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def render(info: dict[str, Any]) -> str:
    backlog = info["backlog"]
    age = backlog["oldest_age_seconds"]
    lines = [
        f"worker id:    {info['worker_id'] or '(not registered yet)'}",
        f"worker name:  {info['worker_name']}",
        f"backend:      {info['backend']} ({info['service'] or 'not configured'})",
        f"state:        {info['state']}" + (f" (pid {info['pid']})" if info["pid"] else ""),
    ]
    task = info["current_task"]
    if task:
        lines.append(f"current task: {task['id']} ({task['name']}) of job {task['job_id']}")
        lines.append(f"task log:     {task['log_file']}")
    else:
        lines.append("current task: none")
    drain = info.get("drain")
    if drain and drain.get("kind") != "none":
        lines.append(f"drain:        {drain.get('mode', 'regular')}: {drain.get('message', drain['kind'])}")
    for problem in info.get("failed_checks") or []:
        lines.append(f"NOT FETCHING: {problem}")
    if backlog["count"] is None:
        lines.append(f"queue:        unknown ({backlog['note']})")
    else:
        lines.append(
            f"queue:        {backlog['count']} undelivered update(s), {human_size(backlog['bytes'])}"
            + (f", oldest {age:.0f} s old" if age is not None else "")
        )
        if backlog["note"]:
            lines.append(f"              ({backlog['note']})")
    if info.get("queue_problem"):
        lines.append(f"QUEUE PROBLEM: {info['queue_problem']}")
    capabilities = info.get("capabilities")
    if capabilities:
        shown = [f"{n}={v:g}" for n, v in capabilities.get("amounts", {}).items()]
        shown += [f"{n}={'|'.join(v)}" for n, v in capabilities.get("attributes", {}).items()]
        lines.append(f"capabilities: {', '.join(shown)}")
    lines += [
        f"queue file:   {info['queue_db']}",
        f"agent log:    {info['logs']['agent']}",
        f"bootstrap:    {info['logs']['bootstrap']}",
        f"task logs:    {info['logs']['tasks']}",
        f"state file:   {info['state_file']}",
    ]
    return "\n".join(lines)


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"flamenco-worker {prog}", description=description)
    p.add_argument("--config", type=Path, action="append", metavar="PATH",
                   help="configuration file to read instead of /etc/flamenco-worker/flamenco-worker.cfg "
                   "and ./flamenco-worker.cfg (repeatable)")
    p.add_argument("--home", type=Path, metavar="DIR", help="the worker's home (also $FLAMENCO_WORKER_HOME)")
    return p


def _load(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> WorkerConfig:
    from flamenco_deadline_worker import config as cfg

    return cfg.load(config_files=args.config, home=args.home, overrides=overrides)


def status_main(argv: Sequence[str]) -> int:
    p = _parser("status", "Show the worker's id, state, current task, update backlog and log locations.")
    p.add_argument("--json", action="store_true", help="print one JSON object, for scripts")
    args = p.parse_args(argv)
    from flamenco_deadline_worker import config as cfg

    try:
        config = _load(args)
    except cfg.ConfigError as exc:
        print(f"flamenco-worker status: configuration error: {exc}", file=sys.stderr)
        return cfg.EXIT_CONFIG_ERROR
    info = collect(config)
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else render(info))
    return EXIT_OK


# ---- flush -----------------------------------------------------------------------------------


def flush_main(argv: Sequence[str]) -> int:
    p = _parser("flush", "Deliver the queued updates of a stopped worker, then exit "
                "(0 when everything went or nothing was queued, 1 when some stay queued, 2 configuration, "
                "5 the worker is running).")
    p.add_argument("--manager", metavar="URL", help="Flamenco Manager URL (manager_url)")
    p.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds (default 300)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    from flamenco_deadline_worker import config as cfg
    from flamenco_deadline_worker import logs

    logs.setup(level="debug" if args.verbose else "info")
    try:
        config = _load(args, {"manager_url": args.manager})
    except cfg.ConfigError as exc:
        print(f"flamenco-worker flush: configuration error: {exc}", file=sys.stderr)
        return cfg.EXIT_CONFIG_ERROR
    logs.setup(level=config.log_level if not args.verbose else "debug", secrets=[config.worker_secret])
    try:
        # Held while flushing: a worker started meanwhile exits 2 instead of draining the same queue.
        home_lock = homelock.HomeLock.acquire(config.home)
    except homelock.HomeLocked as exc:
        print(f"flamenco-worker flush: the worker is running (pid {exc.pid or 'unknown'}, home {config.home}) and "
              "delivers its own updates; stop it first (e.g. systemctl stop flamenco-worker) to flush by hand.",
              file=sys.stderr)
        return EXIT_WORKER_RUNNING
    except homelock.HomeError as exc:
        print(f"flamenco-worker flush: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _flush_locked(args, config)
    finally:
        home_lock.release()


def _flush_locked(args: argparse.Namespace, config: WorkerConfig) -> int:
    from flamenco_deadline_worker import config as cfg

    info = collect(config)
    if info["running"]:
        print(f"flamenco-worker flush: the worker is running (pid {info['pid']}) and delivers its own updates; "
              "stop it first (e.g. systemctl stop flamenco-worker) to flush by hand.", file=sys.stderr)
        return EXIT_WORKER_RUNNING
    if info["backlog"]["count"] == 0:
        print(f"nothing to deliver: no update is queued in {config.task_update_queue_db}")
        return EXIT_OK
    if info["backend"] == "deadline":  # the backend the worker last ran with (--backend deadline)
        return _flush_deadline(config, args.timeout)
    if info["backend"] != "flamenco":
        print(f"flamenco-worker flush: backend {info['backend']!r} is not supported; start the worker "
              "instead, it delivers its backlog first.", file=sys.stderr)
        return EXIT_USAGE
    if not config.manager_url and info["service"]:
        # The worker was started with --manager: its state file remembers the URL.
        config = _load(args, {"manager_url": info["service"]})
        print(f"using the Manager the worker last ran against: {config.manager_url} "
              f"(from {state_file(config)}; --manager URL to choose another)")
    try:
        cfg.require_manager(config)
    except cfg.ConfigError as exc:
        print(f"flamenco-worker flush: configuration error: {exc}", file=sys.stderr)
        return cfg.EXIT_CONFIG_ERROR
    if not (config.worker_id and config.worker_secret):
        print(f"flamenco-worker flush: {info['backlog']['count']} update(s) are queued but there are no worker "
              f"credentials in {config.home_config}; nothing can be delivered without them.", file=sys.stderr)
        return EXIT_NOT_ALL_DELIVERED
    try:
        return asyncio.run(_flush(config, args.timeout))
    except cfg.ConfigError as exc:  # e.g. a queue file that cannot be opened where it is
        print(f"flamenco-worker flush: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _flush_deadline(config: WorkerConfig, timeout: float) -> int:
    """A Deadline worker's queue: statuses through UpdateWorkerSchedule, logs to CloudWatch."""
    try:
        from flamenco_deadline_worker.backends.deadline.flush import flush_deadline
        from flamenco_deadline_worker.compose import deadline_api
    except ImportError as exc:
        print(f"flamenco-worker flush: the Deadline backend needs the 'deadline' extra (boto3): {exc}",
              file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(flush_deadline(config, timeout, lambda: deadline_api(config)))


async def _flush(config: WorkerConfig, timeout: float) -> int:
    from flamenco_deadline_worker.compose import flamenco_backend
    from flamenco_deadline_worker.upstream.queue import TaskUpdateQueue

    backend = flamenco_backend(config)
    queue = TaskUpdateQueue(
        config.task_update_queue_db, backend,
        push_log_max_bytes=config.push_log_max_bytes, push_log_max_interval=0.0,
    )
    await queue.open()
    before = await queue.backlog()
    print(f"delivering {before.count} queued update(s) ({human_size(before.nbytes)}) to {config.manager_url}",
          flush=True)
    drain = asyncio.ensure_future(queue.run_drain())
    try:
        done = await queue.flush(timeout)
        after = await queue.backlog()
    finally:
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
        await queue.close()
        await backend.close()
    if done:
        print(f"all {before.count} update(s) delivered ({queue.delivered_updates} request(s))")
        return EXIT_OK
    print(f"flamenco-worker flush: {after.count} update(s) ({human_size(after.nbytes)}) still queued after "
          f"{timeout:g} s; the Manager may be unreachable (see the lines above). They stay in "
          f"{config.task_update_queue_db} for the next start or flush.", file=sys.stderr)
    return EXIT_NOT_ALL_DELIVERED
