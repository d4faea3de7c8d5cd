"""The [capabilities] configuration tables: layered name by name, every bad name or value refused with a
message naming the file, the table and the name; the worker exits 2 on one before contacting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flamenco_deadline_worker import config as cfg


def load(tmp_path: Path, *bodies: str) -> cfg.WorkerConfig:
    files = []
    for n, body in enumerate(bodies):
        path = tmp_path / f"{n}.cfg"
        path.write_text(body)
        files.append(path)
    return cfg.load(config_files=files, home=tmp_path / "home", environ={})


def test_tables_layer_name_by_name(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        '[capabilities.amounts]\n"amount.worker.gpu" = 2\n"acme:amount.licenses" = 3\n'
        '[capabilities.attributes]\n"attr.site" = ["paris"]\n',
        '[flamenco-worker]\nbackend = "deadline"\n[capabilities.amounts]\n"amount.worker.gpu" = 0\n'
        '[capabilities.attributes]\n"attr.team" = "lighting"\n',
    )
    assert config.capability_amounts == {"amount.worker.gpu": 0.0, "acme:amount.licenses": 3.0}
    assert config.capability_attributes == {"attr.site": ("paris",), "attr.team": ("lighting",)}
    assert config.backend == "deadline"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[capabilities.amounts]\n"amount.worker.gpu" = "two"\n',
         "[capabilities.amounts]: 'amount.worker.gpu' must be a number, 0 or more, got 'two'"),
        ('[capabilities.amounts]\n"amount.worker.gpu" = -1\n', "must be a number, 0 or more, got -1"),
        ('[capabilities.amounts]\n"amount.worker.gpu" = true\n', "must be a number, 0 or more, got True"),
        ('[capabilities.amounts]\n"amount.worker.cores" = 1\n', "'amount.worker.cores' uses the amount.worker scope"),
        ('[capabilities.amounts]\n"attr.site" = 1\n', "'attr.site' is not a valid amount capability name"),
        ('[capabilities.amounts]\namount.worker.gpu = 2\n', "write a capability name in quotes"),
        ('[capabilities.attributes]\n"attr.site" = ["9th"]\n', "'attr.site': '9th' is not a valid value"),
        ('[capabilities.attributes]\n"attr.site" = []\n', "must be a list of 1 to 10 strings, got []"),
        ('[capabilities.attributes]\n"attr.worker.gpu.vendor" = ["nvidia"]\n', "uses the attr.worker scope"),
        ('[capabilities]\nlicenses = 3\n', "[capabilities]: unknown entry 'licenses'"),
        ('[capabilities.amounts]\n' + "".join(f'"amount.custom{n}" = 1\n' for n in range(13)),
         "18 amounts with the detected ones (13 configured); the service takes at most 17"),
    ],
)
def test_bad_capabilities_are_refused_naming_file_table_and_name(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(cfg.ConfigError) as caught:
        load(tmp_path, body)
    assert str(caught.value).startswith(str(tmp_path / "0.cfg") + ": [capabilities")
    assert message in str(caught.value)


def test_the_worker_exits_2_on_a_bad_capability(tmp_path: Path) -> None:
    config = tmp_path / "worker.cfg"
    config.write_text('[capabilities.amounts]\n"amount.worker.gpu" = "two"\n')
    done = subprocess.run(
        [sys.executable, "-m", "flamenco_deadline_worker", "--backend", "deadline", "--farm-id", "farm-x",
         "--fleet-id", "fleet-y", "--home", str(tmp_path / "home"), "--config", str(config)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert f"{config}: [capabilities.amounts]: 'amount.worker.gpu' must be a number, 0 or more, got 'two'" in (
        done.stderr + done.stdout)
