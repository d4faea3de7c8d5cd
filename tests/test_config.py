"""Configuration layering and validation, the example file, and the credentials file."""

from __future__ import annotations

import logging
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from flamenco_deadline_worker import config as cfg
from flamenco_deadline_worker.credentials import save_keys

REPO = Path(__file__).resolve().parents[1]


def test_example_parses_and_documents_every_key_with_its_default() -> None:
    example = REPO / "worker.cfg.example"
    table = cfg.read_toml(example)
    assert set(table) == {k.name for k in cfg.KEYS}
    for key in cfg.KEYS:
        assert table[key.name] == key.default, key.name
    text = example.read_text()
    for key in cfg.KEYS:
        assert f"# {key.doc}\n{key.name} =" in text


def test_layers_later_wins(tmp_path: Path) -> None:
    system = tmp_path / "system.cfg"
    system.write_text('[flamenco-worker]\nmanager_url = "http://system:8080/"\nworker_name = "from-system"\n')
    home = tmp_path / "home"
    home.mkdir()
    (home / ".flamenco-worker.cfg").write_text('[flamenco-worker]\nworker_name = "from-home"\n')
    env = {"FLAMENCO_WORKER_MAY_I_RUN_INTERVAL_SECONDS": "2.5", "FLAMENCO_WORKER_TASK_TYPES": "misc, blender"}
    config = cfg.load(config_files=[system], home=home, environ=env, overrides={"manager_url": "http://flag:1/"})
    assert config.manager_url == "http://flag:1/"
    assert config.worker_name == "from-home"
    assert config.may_i_run_interval_seconds == 2.5
    assert config.task_types == ("misc", "blender")
    assert config.task_update_queue_db == home / "flamenco-worker.db"
    assert config.source_of("worker_name") == str(home / ".flamenco-worker.cfg")
    assert config.source_of("may_i_run_interval_seconds") == "$FLAMENCO_WORKER_MAY_I_RUN_INTERVAL_SECONDS"


def test_unknown_key_is_a_warning_naming_file_and_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "w.cfg"
    f.write_text('[flamenco-worker]\nmanger_url = "http://typo/"\n')
    with caplog.at_level(logging.WARNING):
        cfg.load(config_files=[f], home=tmp_path, environ={})
    assert f"{f}: unknown key 'manger_url'" in caplog.text


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('may_i_run_interval_seconds = "soon"', "may_i_run_interval_seconds: must be a number, got 'soon'"),
        ("may_i_run_interval_seconds = -1", "may_i_run_interval_seconds: must be greater than 0, got -1.0"),
        ("structured_logs = 1", "structured_logs: must be true or false, got 1"),
        ('backend = "maya"', "backend: must be 'flamenco' or 'deadline', got 'maya'"),
        ("restart_exit_code = 2", "restart_exit_code: must be an exit code from 1 to 255, not 2"),
        ('manager_url = "manager:8080"', "manager_url: must start with http:// or https://"),
        ('task_types = "blender"', "task_types: must be a list, got 'blender'"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, line: str, expected: str) -> None:
    f = tmp_path / "w.cfg"
    f.write_text(f"[flamenco-worker]\n{line}\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(config_files=[f], home=tmp_path, environ={})
    assert str(err.value).startswith(f"{f}: {expected}")


def test_bad_env_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match=r"\$FLAMENCO_WORKER_PUSH_LOG_MAX_BYTES: push_log_max_bytes: cannot read"):
        cfg.load(config_files=[], home=tmp_path, environ={"FLAMENCO_WORKER_PUSH_LOG_MAX_BYTES": "lots"})


def test_secret_is_not_echoed_in_errors(tmp_path: Path) -> None:
    f = tmp_path / "w.cfg"
    f.write_text("[flamenco-worker]\nworker_secret = 12345\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(config_files=[f], home=tmp_path, environ={})
    assert "worker_secret: must be a string" in str(err.value)
    assert "12345" not in str(err.value)


def test_cli_exits_2_with_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "w.cfg"
    f.write_text('[flamenco-worker]\nmanager_url = "http://127.0.0.1:9/"\npush_log_max_bytes = "big"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAMENCO_WORKER_")}
    proc = subprocess.run(
        [sys.executable, "-m", "flamenco_deadline_worker", "--config", str(f), "--home", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert proc.returncode == 2
    assert f"{f}: push_log_max_bytes: must be an integer, got 'big'" in proc.stderr


def test_cli_without_manager_url_searches_and_says_how_to_set_it(tmp_path: Path) -> None:
    # The search goes to a UDP port on 127.0.0.1 that nobody answers: never to the LAN's multicast group.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLAMENCO_WORKER_")}
        env["FLAMENCO_WORKER_MANAGER_DISCOVERY_ADDRESS"] = f"127.0.0.1:{silent.getsockname()[1]}"
        env["FLAMENCO_WORKER_MANAGER_DISCOVERY_TIMEOUT_SECONDS"] = "1.5"
        proc = subprocess.run(
            [sys.executable, "-m", "flamenco_deadline_worker", "--config", str(REPO / "worker.cfg.example"),
             "--home", str(tmp_path)],
            capture_output=True, text=True, timeout=60, env=env,
        )
        searches = silent.recv(4096)
    assert proc.returncode == 6, proc.stderr
    assert searches.startswith(b"M-SEARCH * HTTP/1.1") and b"ST: urn:flamenco:manager:0" in searches
    assert "no Flamenco Manager answered the UPnP/SSDP search" in proc.stderr
    assert "set manager_url (--manager URL" in proc.stderr


def test_save_keys_keeps_other_lines_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / ".flamenco-worker.cfg"
    path.write_text(
        "# my worker\n[flamenco-worker]\nworker_name = \"node-7\"  # keep me\nworker_id = \"old\"\n\n[other]\nx = 1\n"
    )
    path.chmod(0o644)
    save_keys(path, {"worker_id": "new-id", "worker_secret": 's3cr"et'})
    text = path.read_text()
    assert text.startswith("# my worker\n[flamenco-worker]\nworker_name = \"node-7\"  # keep me\n")
    assert 'worker_id = "new-id"' in text and "old" not in text
    assert "[other]\nx = 1" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = cfg.load(config_files=[], home=tmp_path, environ={})
    assert (loaded.worker_id, loaded.worker_secret) == ("new-id", 's3cr"et')


def test_save_keys_creates_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / ".flamenco-worker.cfg"
    save_keys(path, {"worker_id": "a", "worker_secret": "b"})
    assert cfg.read_toml(path) == {"worker_id": "a", "worker_secret": "b"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_flamenco_3_name_variable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    short = cfg.load(config_files=[], home=tmp_path, environ={"FLAMENCO_WORKER_NAME": "node-7"})
    assert (short.worker_name, short.source_of("worker_name")) == ("node-7", "$FLAMENCO_WORKER_NAME")
    both = {"FLAMENCO_WORKER_NAME": "node-7", "FLAMENCO_WORKER_WORKER_NAME": "node-8"}
    with caplog.at_level(logging.WARNING):
        long = cfg.load(config_files=[], home=tmp_path, environ=both)
    assert long.worker_name == "node-8"
    assert "$FLAMENCO_WORKER_WORKER_NAME and $FLAMENCO_WORKER_NAME differ; using" in caplog.text


def test_discovery_address_is_checked(tmp_path: Path) -> None:
    env = {"FLAMENCO_WORKER_MANAGER_DISCOVERY_ADDRESS": "239.255.255.250"}
    with pytest.raises(cfg.ConfigError) as bad:
        cfg.load(config_files=[], home=tmp_path, environ=env)
    assert str(bad.value) == (
        "$FLAMENCO_WORKER_MANAGER_DISCOVERY_ADDRESS: manager_discovery_address: must be HOST:PORT, "
        "e.g. 239.255.255.250:1900, got '239.255.255.250'"
    )
