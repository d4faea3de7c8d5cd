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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tasks", type=int, default=10, help="tasks of the default one-step job")
    parser.add_argument("--template", type=Path, help="an OpenJD job template (JSON) instead")
    parser.add_argument("--throttle-rate", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    args = parser.parse_args()
    template = json.loads(args.template.read_text()) if args.template else simple_template(args.tasks)
    emu = DeadlineEmulator(
        make_job(template), Options(), Faults(throttle_rate=args.throttle_rate, error_rate=args.error_rate), args.port
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
