"""Where an adaptor's connection file lives (adaptor/protocol.py: connection_file_path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flamenco_deadline_worker.adaptor.protocol import CONNECTION_DIR_ENV, connection_file_path


def test_relative_names_go_to_the_workers_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CONNECTION_DIR_ENV, str(tmp_path / "home" / "adaptor-connections"))
    monkeypatch.chdir(tmp_path)
    assert connection_file_path("fdw-job.json") == str(tmp_path / "home" / "adaptor-connections" / "fdw-job.json")
    assert connection_file_path("/tmp/x/../fdw.json") == "/tmp/fdw.json"  # an absolute path is used as given


def test_without_the_variable_relative_means_the_current_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(CONNECTION_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert connection_file_path("fdw-job.json") == str(tmp_path / "fdw-job.json")
