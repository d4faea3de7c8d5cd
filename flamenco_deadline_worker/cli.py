"""The `flamenco-worker` command: argument parsing, signal wiring and exit codes.

Exit codes: 0 done (stopped, or sent offline); 1 unexpected error; 2 bad configuration or usage;
3 the Manager refused this worker's credentials even after registering again; 4 stopped at once by a
second SIGINT/SIGTERM; 6 manager_url is empty and no Manager answered the UPnP/SSDP search;
restart_exit_code (47 by default) when the Manager asks for a restart.
`flamenco-worker flush`: 0 all delivered (or nothing queued), 1 some updates still queued, 2 configuration,
5 the worker is running (it delivers its own backlog).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from flamenco_deadline_worker import __version__

if TYPE_CHECKING:
    import asyncio

    from flamenco_deadline_worker.config import WorkerConfig

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_FORCED = 4

log = logging.getLogger("flamenco_deadline_worker")


def worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flamenco-worker",
        description="Render-farm worker for Flamenco 3 Managers and AWS Deadline Cloud. "
        "Other commands: " + ", ".join(f"'flamenco-worker {name}'" for name in SUBCOMMANDS) + ".",
    )
    p.add_argument("--config", type=Path, action="append", metavar="PATH",
                   help="configuration file to read instead of /etc/flamenco-worker/flamenco-worker.cfg "
                   "and ./flamenco-worker.cfg (repeatable)")
    p.add_argument("--manager", metavar="URL", help="Flamenco Manager URL (manager_url)")
    p.add_argument("--home", type=Path, metavar="DIR",
                   help="directory for every file the worker writes (also $FLAMENCO_WORKER_HOME)")
    p.add_argument("--backend", choices=("flamenco", "deadline"), help="service to work for")
    p.add_argument("--farm-id", help="Deadline Cloud farm id")
    p.add_argument("--fleet-id", help="Deadline Cloud fleet id")
    p.add_argument("--run-jobs-as-agent-user", action="store_true", default=None,
                   help="Deadline Cloud: run every session as this agent's user, whatever the queue's "
                   "jobRunAsUser says (deadline_run_jobs_as_agent_user)")
    p.add_argument("--single", action="store_true", help="run one task, then exit")
    p.add_argument("--reregister", action="store_true", help="register again, replacing saved credentials")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"flamenco-worker {__version__}")
    return p


def load_config(args: argparse.Namespace) -> WorkerConfig:
    from flamenco_deadline_worker import config as cfg

    overrides = {
        "manager_url": args.manager,
        "backend": args.backend,
        "farm_id": args.farm_id,
        "fleet_id": args.fleet_id,
        "deadline_run_jobs_as_agent_user": args.run_jobs_as_agent_user,
        "log_level": "debug" if args.verbose else None,
    }
    return cfg.load(config_files=args.config, home=args.home, overrides=overrides)


def install_signal_handlers(loop: asyncio.AbstractEventLoop, stop_event: asyncio.Event) -> None:
    """First SIGINT/SIGTERM: clean shutdown.  Second: kill task processes and exit at once.  SIGUSR1: dump."""

    def on_stop(signame: str) -> None:
        if stop_event.is_set():
            from flamenco_deadline_worker.runner.process import kill_all_now

            log.warning("second %s: killing task processes and exiting now (code %d)", signame, EXIT_FORCED)
            kill_all_now()
            logging.shutdown()
            os._exit(EXIT_FORCED)
        log.info("%s received: shutting down cleanly (send it again to exit at once)", signame)
        stop_event.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop, sig.name)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)


def dump_tasks() -> None:
    """Write every asyncio task with its stack to the log (SIGUSR1), for debugging a stuck worker."""
    import asyncio
    import io

    buf = io.StringIO()
    tasks = asyncio.all_tasks()
    buf.write(f"SIGUSR1: {len(tasks)} asyncio task(s)\n")
    for task in tasks:
        buf.write(f"--- {task.get_name()}: {task!r}\n")
        task.print_stack(file=buf)
    log.warning("%s", buf.getvalue())


async def _run_worker(args: argparse.Namespace, config: WorkerConfig) -> int:
    import asyncio

    stop_event = asyncio.Event()
    install_signal_handlers(asyncio.get_running_loop(), stop_event)
    if config.backend == "deadline":
        from flamenco_deadline_worker.compose import run_deadline

        return await run_deadline(config, stop_event)
    from flamenco_deadline_worker.compose import run_flamenco

    return await run_flamenco(config, stop_event, single=args.single, reregister=args.reregister)


def run_worker(argv: Sequence[str], *, may_reexec: bool = False) -> int:
    """Run the worker; ``may_reexec``: this call is the whole process (the command line), so it may
    replace itself with an optimized interpreter first (see ``optimized``)."""
    args = worker_parser().parse_args(argv)
    # The event loop hands work to threads (SQLite, boto3, openjd-sessions) many times a task; with
    # the default 5 ms switch interval each hand-back can wait that long for the interpreter lock.
    sys.setswitchinterval(0.0005)
    from flamenco_deadline_worker.optimized import take_handover

    take_handover()
    from flamenco_deadline_worker import config as cfg
    from flamenco_deadline_worker import logs

    logs.setup(level="debug" if args.verbose else "info", bootstrap=True)
    try:
        config = load_config(args)
        cfg.require_manager(config, discovery=True)
        cfg.check_paths(config)
    except cfg.ConfigError as exc:
        print(f"flamenco-worker: configuration error: {exc}", file=sys.stderr)
        return cfg.EXIT_CONFIG_ERROR
    if may_reexec and config.backend == "deadline":
        # Under -OO, and without the host's AWS keys in the environment /proc shows (see optimized).
        from flamenco_deadline_worker import optimized, taskenv

        optimized.reexec(optimize=config.deadline_python_optimize, withhold=taskenv.HOST_CREDENTIAL_VARIABLES)
    logs.setup(
        level=config.log_level,
        logs_dir=config.logs_dir,
        structured=config.structured_logs,
        secrets=[config.worker_secret],
        bootstrap=True,
    )
    from flamenco_deadline_worker import records

    records.agent_info(config.backend, home=str(config.home), logs_dir=str(config.logs_dir),
                       config_sources=dict(config.sources))
    import asyncio

    try:
        return asyncio.run(_run_worker(args, config))
    except KeyboardInterrupt:
        return EXIT_FORCED
    except cfg.ConfigError as exc:  # found only once running, e.g. a queue file that cannot be opened
        log.error("configuration error: %s", exc)
        return cfg.EXIT_CONFIG_ERROR
    except Exception:
        log.exception("the worker stopped on an unexpected error")
        return EXIT_ERROR


def run_demo(argv: Sequence[str]) -> int:
    from flamenco_deadline_worker.demo import main as demo_main

    return demo_main(argv)


def run_install(argv: Sequence[str]) -> int:
    from flamenco_deadline_worker.install import install_main

    return install_main(argv)


def run_uninstall(argv: Sequence[str]) -> int:
    from flamenco_deadline_worker.install import uninstall_main

    return uninstall_main(argv)


def run_status(argv: Sequence[str]) -> int:
    from flamenco_deadline_worker.status import status_main

    return status_main(argv)


def run_flush(argv: Sequence[str]) -> int:
    from flamenco_deadline_worker.status import flush_main

    return flush_main(argv)


SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "demo": run_demo,
    "install": run_install,
    "uninstall": run_uninstall,
    "status": run_status,
    "flush": run_flush,
}


def main(argv: Sequence[str] | None = None) -> int:
    whole_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    return run_worker(argv, may_reexec=whole_process)
