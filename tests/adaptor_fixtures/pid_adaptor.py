"""A tiny adaptor that says which process serves it: `python -m pid_adaptor` with this directory on PYTHONPATH.

It accepts any init data and run data (no schemas), so a README template written for the Blender adaptor runs
against it unchanged but for the module name.  Every hook prints the daemon's pid.
"""

from __future__ import annotations

import json
import os
from typing import Any

from flamenco_deadline_worker.adaptor import Adaptor, EntryPoint


class PidAdaptor(Adaptor):
    def on_start(self) -> None:
        print(f"pid-adaptor start pid={os.getpid()} init={json.dumps(self.init_data, sort_keys=True)}")

    def on_run(self, run_data: dict[str, Any]) -> None:
        print(f"pid-adaptor run pid={os.getpid()} run={json.dumps(run_data, sort_keys=True)}")
        self.update_status(progress=100)

    def on_stop(self) -> None:
        print(f"pid-adaptor stop pid={os.getpid()}")


if __name__ == "__main__":
    EntryPoint("pid_adaptor:PidAdaptor", prog="pid-adaptor").start()
