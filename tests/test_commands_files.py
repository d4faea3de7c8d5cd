"""make-directory, move-directory and copy-file through the real TaskRunner, refusals included."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from helpers_commands import cmd, harness

from flamenco_deadline_worker.runner.commands import base as commands
from flamenco_deadline_worker.runner.runner import Outcome


async def test_make_directory_creates_parents_and_accepts_existing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    async with harness(tmp_path / "home") as h:
        run = await h.run(cmd("make-directory", path=str(target)), cmd("make-directory", path=str(target)))
    assert run.outcome is Outcome.COMPLETED, run.log
    assert target.is_dir()
    assert f"creating directory '{target}'" in run.log


async def test_make_directory_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    async with harness(tmp_path / "home") as h:
        run = await h.run(cmd("make-directory", path=str(tmp_path / "file")))
    assert run.outcome is Outcome.FAILED
    assert "parameter 'path'" in run.final_activity and "not a directory" in run.final_activity


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("make-directory", {"path": "relative/dir"}, "parameter 'path' must be an absolute path"),
        ("make-directory", {"path": ""}, "parameter 'path' must not be empty"),
        ("make-directory", {}, "missing required parameter 'path'"),
        ("make-directory", {"path": 3}, "parameter 'path' must be string"),
        ("move-directory", {"src": "rel", "dest": "/tmp/x"}, "parameter 'src' must be an absolute path"),
        ("move-directory", {"src": "/tmp/x", "dest": "rel"}, "parameter 'dest' must be an absolute path"),
        ("move-directory", {"src": "/tmp/x"}, "missing required parameter 'dest'"),
        ("copy-file", {"src": "", "dest": "/tmp/x"}, "parameter 'src' must not be empty"),
        ("copy-file", {"src": "/tmp/x", "dest": "out/x"}, "parameter 'dest' must be an absolute path"),
        ("copy-file", {"src": ["/tmp/x"], "dest": "/tmp/y"}, "parameter 'src' must be string"),
    ],
)
async def test_bad_parameters_fail_the_task_naming_the_parameter(
    tmp_path: Path, name: str, params: dict[str, object], expected: str
) -> None:
    with pytest.raises(commands.CommandError, match=re.escape(expected)):
        commands.find(name).validate(params)
    async with harness(tmp_path / "home") as h:
        run = await h.run(cmd(name, **params))
    assert run.outcome is Outcome.FAILED
    assert expected in run.final_activity
    assert run.statuses[-1] == "failed"


async def test_move_directory_moves(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("hello")
    async with harness(tmp_path / "home") as h:
        run = await h.run(cmd("move-directory", src=str(src), dest=str(dest)))
    assert run.outcome is Outcome.COMPLETED, run.log
    assert not src.exists()
    assert (dest / "sub" / "f.txt").read_text() == "hello"


async def test_move_directory_moves_an_existing_dest_aside_with_a_timestamp(tmp_path: Path) -> None:
    dest = tmp_path / "render"
    async with harness(tmp_path / "home") as h:
        for generation in ("first", "second", "third"):
            src = tmp_path / f"src-{generation}"
            src.mkdir()
            (src / "which").write_text(generation)
            if dest.exists():  # same mtime for all: the later names get -001, -002
                os.utime(dest, (1_700_000_000, 1_700_000_000))
            run = await h.run(cmd("move-directory", src=str(src), dest=str(dest)))
            assert run.outcome is Outcome.COMPLETED, run.log
    assert (dest / "which").read_text() == "third"
    aside = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("render-"))
    assert len(aside) == 2, aside
    assert re.fullmatch(r"render-\d{4}-\d\d-\d\d_\d{6}", aside[0]), aside
    assert aside[1] == aside[0] + "-001"
    contents = {(tmp_path / a / "which").read_text() for a in aside}
    assert contents == {"first", "second"}
    assert "exists, moving it to" in run.log


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "parameter 'src'"),
        ("file", "is not a directory"),
        ("no-parent", "parent directory"),
        ("into-itself", "parameter 'dest'"),
    ],
)
async def test_move_directory_refusals(tmp_path: Path, setup: str, expected: str) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    if setup == "file":
        src.write_text("not a dir")
    elif setup != "missing":
        src.mkdir()
    if setup == "no-parent":
        dest = tmp_path / "no" / "such" / "dest"
    if setup == "into-itself":
        dest = src / "inner"
    async with harness(tmp_path / "home") as h:
        run = await h.run(cmd("move-directory", src=str(src), dest=str(dest)))
    assert run.outcome is Outcome.FAILED
    assert expected in run.final_activity, run.final_activity
    assert src.exists() == (setup != "missing")


async def test_copy_file_copies_and_creates_parents(tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    data = os.urandom(5 * 1024 * 1024 + 7)  # more than one copy chunk
    src.write_bytes(data)
    src.chmod(0o640)
    dest = tmp_path / "x" / "y" / "out.bin"
    async with harness(tmp_path / "home") as h:
        run = await h.run(cmd("copy-file", src=str(src), dest=str(dest)))
    assert run.outcome is Outcome.COMPLETED, run.log
    assert dest.read_bytes() == data
    assert dest.stat().st_mode & 0o777 == 0o640
    assert f"copied {len(data)} bytes" in run.log


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("dest-exists", "already exists, nothing copied"),
        ("src-missing", "does not exist, nothing copied"),
        ("src-dir", "is not a regular file"),
        ("parent-is-file", "cannot create directory"),
    ],
)
async def test_copy_file_refusals(tmp_path: Path, setup: str, expected: str) -> None:
    src, dest = tmp_path / "in.txt", tmp_path / "out.txt"
    if setup == "src-dir":
        src.mkdir()
    elif setup != "src-missing":
        src.write_text("new")
    if setup == "dest-exists":
        dest.write_text("old")
    if setup == "parent-is-file":
        (tmp_path / "blocker").write_text("file")
        dest = tmp_path / "blocker" / "out.txt"
    async with harness(tmp_path / "home") as h:
        run = await h.run(cmd("copy-file", src=str(src), dest=str(dest)))
    assert run.outcome is Outcome.FAILED
    assert expected in run.final_activity, run.final_activity
    if setup == "dest-exists":
        assert dest.read_text() == "old"  # never overwritten


def test_file_commands_are_in_the_file_management_family() -> None:
    for name in ("make-directory", "move-directory", "copy-file"):
        assert commands.find(name).task_type == "file-management"
    assert commands.find("blender-render").task_type == "blender"
    assert commands.find("frames-to-video").task_type == "ffmpeg"
    assert commands.find("exec").task_type == "misc"
