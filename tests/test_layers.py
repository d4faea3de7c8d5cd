"""The core stays at the bottom: importing it loads no backend, no operations module, no runner,
queue, aiohttp or boto3 (the composition root hands those in)."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = (
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


def test_the_core_imports_nothing_above_it() -> None:
    code = (
        "import json, sys\n"
        "import flamenco_deadline_worker.core.worker, flamenco_deadline_worker.core.model\n"
        "import flamenco_deadline_worker.core.clock, flamenco_deadline_worker.core.backoff\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True).stdout)
    assert [m for m in loaded if m.startswith(FORBIDDEN)] == []
