"""make-directory, move-directory and copy-file through the real TaskRunner, refusals included."""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path

import pytest
from helpers_commands import Harness, cmd, command_json, harness, task_json, worker_output, worker_process

from flamenco_deadline_worker.runner.commands import base as commands
from flamenco_deadline_worker.runner.commands.base import FileRules
from flamenco_deadline_worker.runner.runner import Outcome
from flamenco_deadline_worker.testing.manager import LocalManager


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


# ---- where file commands may act ----------------------------------------------------------------


def rules_for(allowed: Path, *protected: Path) -> FileRules:
    return FileRules(roots=(str(allowed),), protected=tuple(str(p) for p in protected))


@pytest.mark.parametrize(
    ("case", "param"),
    [
        ("outside", "src"),
        ("dot-dot", "src"),
        ("symlink-to-outside", "src"),
        ("dest-through-symlinked-dir", "dest"),
        ("worker-file", "src"),
    ],
)
async def test_copy_file_refuses_paths_outside_the_roots_after_resolving(
    tmp_path: Path, case: str, param: str
) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("not for jobs")
    own_file = allowed / "worker-credentials.cfg"
    own_file.write_text("worker_secret = 'x'")
    (allowed / "link").symlink_to(secret)
    (allowed / "linkdir").symlink_to(outside, target_is_directory=True)
    src, dest = str(secret), str(allowed / "copy.txt")
    if case == "dot-dot":
        src = f"{allowed}/../outside/secret.txt"
    elif case == "symlink-to-outside":
        src = str(allowed / "link")
    elif case == "dest-through-symlinked-dir":
        src, dest = str(own_file.with_name("ok.txt")), str(allowed / "linkdir" / "planted.txt")
        Path(src).write_text("fine")
    elif case == "worker-file":
        src = str(own_file)
    async with harness(tmp_path / "home", file_rules=rules_for(allowed, own_file)) as h:
        run = await h.run(cmd("copy-file", src=src, dest=dest))
    assert run.outcome is Outcome.FAILED, run.log
    message = run.final_activity
    assert f"parameter '{param}'" in message and "nothing done" in message, message
    if case == "worker-file":
        assert "the worker's own files" in message, message
    else:
        assert "outside the allowed directories (file_command_roots" in message, message
        assert repr(str(allowed)) in message, message
    if case in ("dot-dot", "symlink-to-outside"):
        assert f"(resolved: {str(secret)!r})" in message, message
    assert not (allowed / "copy.txt").exists() and not (outside / "planted.txt").exists()


async def test_move_directory_may_not_carry_away_the_worker_files(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "home" / "logs").mkdir(parents=True)
    async with harness(tmp_path / "home", file_rules=rules_for(allowed, allowed / "home" / "logs")) as h:
        run = await h.run(cmd("move-directory", src=str(allowed / "home"), dest=str(allowed / "elsewhere")))
    assert run.outcome is Outcome.FAILED
    assert "the worker's own files" in run.final_activity
    assert (allowed / "home" / "logs").is_dir()


async def test_by_default_only_the_work_directory_is_allowed(tmp_path: Path) -> None:
    async with Harness(tmp_path / "home") as h:
        h.runner.file_rules = FileRules(roots=(str(h.runner.work_root),))
        run = await h.run(cmd("make-directory", path=str(tmp_path / "anywhere")))
    assert run.outcome is Outcome.FAILED
    assert "outside the allowed directories" in run.final_activity
    assert not (tmp_path / "anywhere").exists()


# ---- with job_user, as root: the job user's rights ----------------------------------------------


async def test_file_commands_run_with_the_job_users_rights_inside_the_roots(job_user: str, open_home: Path) -> None:
    entry = pwd.getpwnam(job_user)
    shared = open_home / "shared"
    (shared / "theirs").mkdir(parents=True)
    os.chown(shared / "theirs", entry.pw_uid, entry.pw_gid)
    (shared / "root-only").mkdir(mode=0o755)
    root_file = shared / "root-secret.txt"
    root_file.write_text("root's")
    root_file.chmod(0o600)
    (shared / "theirs" / "in.txt").write_text("frame")
    (shared / "theirs" / "in.txt").chmod(0o644)
    cases = {
        "mkdir-ok": command_json("make-directory", path=str(shared / "theirs" / "a" / "b")),
        "copy-ok": command_json("copy-file", src=str(shared / "theirs" / "in.txt"),
                                dest=str(shared / "theirs" / "a" / "out.txt")),
        "move-ok": command_json("move-directory", src=str(shared / "theirs" / "a"),
                                dest=str(shared / "theirs" / "moved")),
        "read-root-file": command_json("copy-file", src=str(root_file), dest=str(shared / "theirs" / "stolen")),
        "write-root-dir": command_json("make-directory", path=str(shared / "root-only" / "x")),
        "shadow": command_json("copy-file", src="/etc/shadow", dest=str(shared / "theirs" / "shadow")),
        "into-etc": command_json("make-directory", path=f"{shared}/../../../etc/fdw-planted"),
    }
    manager = LocalManager(seed=5)
    await manager.start()
    try:
        jobs = {name: manager.submit_job(name, [task_json(name, "file-management", command)])
                for name, command in cases.items()}
        task_ids = {name: manager.job(job).task_ids[0] for name, job in jobs.items()}

        def all_done() -> bool:
            return all(manager.task(t).status in ("completed", "failed") for t in task_ids.values())

        async with worker_process(manager.url, open_home / "home", job_user=job_user,
                                  file_command_roots=str(shared), no_output_timeout_seconds="60"):
            try:
                await manager.wait_for(all_done, 120)
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\nworker output:\n{worker_output(open_home / 'home')}") from None
        tasks = {name: manager.task(t) for name, t in task_ids.items()}
    finally:
        await manager.stop()
    for name in ("mkdir-ok", "copy-ok", "move-ok"):
        assert tasks[name].status == "completed", (name, tasks[name].log)
    made = shared / "theirs" / "moved"
    assert (made / "out.txt").read_text() == "frame"
    assert {(p.stat().st_uid, p.stat().st_gid) for p in (made, made / "b", made / "out.txt")} == {
        (entry.pw_uid, entry.pw_gid)}, "what a job makes is the job user's"
    # The job user's rights: root could do these, the job user may not.
    assert tasks["read-root-file"].status == "failed"
    assert "Permission denied" in tasks["read-root-file"].log
    assert not (shared / "theirs" / "stolen").exists()
    assert tasks["write-root-dir"].status == "failed" and "Permission denied" in tasks["write-root-dir"].log
    # The roots: outside them nothing is even tried.
    assert tasks["shadow"].status == "failed"
    assert "'/etc/shadow' is outside the allowed directories (file_command_roots" in tasks["shadow"].log
    assert not (shared / "theirs" / "shadow").exists()
    assert tasks["into-etc"].status == "failed"
    assert "(resolved: '/etc/fdw-planted')" in tasks["into-etc"].log
    assert not Path("/etc/fdw-planted").exists()
