"""Run the emulator on its own: ``python -m flamenco_deadline_worker.testing.deadline_emulator``."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path

from flamenco_deadline_worker.testing.deadline_emulator import (
    DeadlineEmulator,
    Faults,
    Options,
    make_job,
    simple_template,
)
from flamenco_deadline_worker.testing.deadline_emulator.profiles import queue_user


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tasks", type=int, default=10, help="tasks of the default one-step job")
    parser.add_argument("--template", type=Path, help="an OpenJD job template (JSON) instead")
    parser.add_argument("--throttle-rate", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument(
        "--lost-answer-rate",
        type=float,
        default=0.0,
        help="share of UpdateWorkerSchedule calls applied, then answered 500",
    )
    parser.add_argument(
        "--job-user",
        metavar="USER:GROUP",
        help="the queue's jobRunAsUser (QUEUE_CONFIGURED_USER); default WORKER_AGENT_USER",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay of every answer, in ms")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="plus a uniform random 0..this, in ms")
    args = parser.parse_args()
    for name in ("latency_ms", "jitter_ms", "throttle_rate", "error_rate", "lost_answer_rate"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative (got {getattr(args, name)})")
    options = Options()
    if args.job_user:
        user, sep, group = args.job_user.partition(":")
        if not (user and sep and group):
            parser.error(f"--job-user must be USER:GROUP (got {args.job_user!r})")
        options = Options(job_run_as_user=queue_user(user, group))
    template = json.loads(args.template.read_text()) if args.template else simple_template(args.tasks)
    faults = Faults(
        throttle_rate=args.throttle_rate, error_rate=args.error_rate, lost_answer_rate=args.lost_answer_rate
    )
    emu = DeadlineEmulator(
        make_job(template), options, faults, args.port, latency_ms=args.latency_ms, jitter_ms=args.jitter_ms
    )
    emu.start()
    print(
        json.dumps(
            {
                "url": emu.url,
                "farm_id": emu.state.options.farm_id,
                "fleet_id": emu.state.options.fleet_id,
                "env": emu.client_env(),
            }
        ),
        flush=True,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    emu.stop()


if __name__ == "__main__":
    main()
