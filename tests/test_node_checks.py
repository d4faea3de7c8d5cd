"""Pre-task checks (node_checks.py) on real files and directories."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from flamenco_deadline_worker.node_checks import NodeChecks, check_free_space, check_readable, check_writable


def test_readable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert check_readable(tmp_path) is None
    assert check_readable(tmp_path / "file") is None
    problem = check_readable(tmp_path / "not-mounted")
    assert problem == f"pre_task_check_read: {tmp_path / 'not-mounted'}: cannot read: No such file or directory"


def test_writable(tmp_path: Path) -> None:
    assert check_writable(tmp_path) is None
    assert list(tmp_path.iterdir()) == [], "the probe file is removed again"
    # /proc takes no new files, not even from root (CI runs as root, which may write anywhere else).
    problem = check_writable(Path("/proc"))
    assert problem is not None and problem.startswith("pre_task_check_write: /proc: cannot write: ")


def test_free_space_of_a_work_dir_not_created_yet(tmp_path: Path) -> None:
    assert check_free_space(tmp_path / "a" / "b", 1) is None
    assert check_free_space(tmp_path, 0) is None
    problem = check_free_space(tmp_path / "tasks", 1 << 60)
    assert problem is not None
    assert problem.startswith(f"work_dir_min_free_mib: {tmp_path / 'tasks'} has ")
    assert problem.endswith("MiB free, less than the 1099511627776 MiB required")


async def test_outcome_changes_are_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    share = tmp_path / "share"
    checks = NodeChecks(readable=(share,))
    with caplog.at_level(logging.INFO, logger="flamenco_deadline_worker.node_checks"):
        assert len(await checks.problems()) == 1
        assert len(await checks.problems()) == 1
        share.mkdir()
        assert await checks.problems() == []
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith(f"not fetching tasks: pre_task_check_read: {share}: cannot read")
    assert messages[0].endswith("checking again every 30 s")
    assert messages[1] == "pre-task checks pass again; fetching tasks"


async def test_nothing_configured_means_nothing_checked() -> None:
    assert not NodeChecks().configured
    assert await NodeChecks().problems() == []
