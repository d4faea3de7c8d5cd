"""The work of make-directory, move-directory and copy-file, with the path rules, in the standard library only.

The worker runs these in a thread, or (with ``job_user``) in a child process switched to the job
user: then this file's source is the child's whole program (``python -I -S -c``), so the job user
needs nothing but the interpreter, and every file operation has exactly the job user's rights.
The child takes one JSON argument and prints one JSON object per line: ``{"log": text}`` as it
goes, ``{"error": text}`` before it exits 1.

Path rules: every path is resolved (``..`` and symlinks, the link itself as well as what it points
to) and must lie inside one of the allowed roots, and never touch the worker's own files.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

COPY_CHUNK = 4 * 1024 * 1024
ROOTS_KEY = "file_command_roots"

Log = Callable[[str], None]


class FileCommandError(Exception):
    """Fails the task with a message for people."""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _resolved_forms(path: str) -> list[str]:
    """``path`` with symlinks and ``..`` resolved: the entry itself (its parent resolved) and, when it
    is a link, what it points to."""
    entry = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    forms = [entry]
    target = os.path.realpath(path)
    if target != entry:
        forms.append(target)
    return forms


def check_path(command: str, param: str, path: str, rules: dict[str, Any], *, moves: bool = False) -> None:
    """FileCommandError unless ``path`` is inside an allowed root and clear of the worker's own files.

    ``moves``: the path is moved away or replaced as a whole, so it may not hold a protected path either.
    """
    roots = [os.path.realpath(r) for r in rules["roots"]]
    protected = [os.path.realpath(p) for p in rules["protected"]]
    for form in _resolved_forms(path):
        shown = repr(path) if form == path else f"{path!r} (resolved: {form!r})"
        if not any(_inside(form, root) for root in roots):
            raise FileCommandError(
                f"{command}: parameter {param!r}: {shown} is outside the allowed directories "
                f"({ROOTS_KEY}, with the work directory: {', '.join(map(repr, roots))}); nothing done"
            )
        for own in protected:
            if _inside(form, own) or (moves and _inside(own, form)):
                raise FileCommandError(
                    f"{command}: parameter {param!r}: {shown} touches the worker's own files ({own!r}), "
                    "which file commands may never reach; nothing done"
                )


def _missing_parents(path: str) -> list[str]:
    """Directories above and including ``path`` that do not exist yet, outermost first."""
    missing = []
    current = path
    while not os.path.exists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return list(reversed(missing))


def make_directory(params: dict[str, Any], rules: dict[str, Any], log: Log) -> None:
    name, path = "make-directory", params["path"]
    check_path(name, "path", path, rules)
    log(f"{name}: creating directory {path!r}")
    try:
        os.makedirs(path, mode=0o775, exist_ok=True)
    except FileExistsError:
        raise FileCommandError(f"{name}: parameter 'path': {path!r} exists and is not a directory") from None
    except OSError as exc:
        raise FileCommandError(f"{name}: cannot create directory {path!r}: {exc.strerror or exc}") from None


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def timestamped_name(path: str) -> str:
    """``path`` with its modification time appended (``-YYYY-MM-DD_HHMMSS``), then ``-001``, ``-002``...
    until the name is free."""
    stamp = time.strftime("%Y-%m-%d_%H%M%S", time.localtime(os.lstat(path).st_mtime))
    candidate = f"{path}-{stamp}"
    if not os.path.lexists(candidate):
        return candidate
    base = os.path.basename(candidate)
    taken = [
        int(m.group(1))
        for other in os.listdir(os.path.dirname(candidate) or "/")
        if (m := re.fullmatch(re.escape(base) + r"-(\d+)", other))
    ]
    number = max(taken, default=0) + 1
    while os.path.lexists(f"{candidate}-{number:03d}"):
        number += 1
    return f"{candidate}-{number:03d}"


def _move(src: str, dest: str) -> None:
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.move(src, dest)  # another file system: copy, then remove


def move_directory(params: dict[str, Any], rules: dict[str, Any], log: Log) -> None:
    name, src, dest = "move-directory", params["src"], params["dest"]
    check_path(name, "src", src, rules, moves=True)
    check_path(name, "dest", dest, rules, moves=True)
    if not os.path.lexists(src):
        raise FileCommandError(f"{name}: parameter 'src': {src!r} does not exist, nothing moved")
    if not os.path.isdir(src):
        raise FileCommandError(f"{name}: parameter 'src': {src!r} is not a directory")
    real_src, real_dest = os.path.realpath(src), os.path.realpath(dest)
    if _inside(real_dest, real_src):
        raise FileCommandError(f"{name}: parameter 'dest': {dest!r} is {src!r} or inside it")
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise FileCommandError(f"{name}: parameter 'dest': parent directory {parent!r} does not exist")
    if os.path.lexists(dest):
        aside = timestamped_name(dest)
        log(f"{name}: {dest!r} exists, moving it to {aside!r}")
        try:
            _move(dest, aside)
        except OSError as exc:
            raise FileCommandError(f"{name}: cannot move {dest!r} aside: {exc.strerror or exc}") from None
    log(f"{name}: moving {src!r} to {dest!r}")
    try:
        _move(src, dest)
    except OSError as exc:
        raise FileCommandError(f"{name}: cannot move {src!r} to {dest!r}: {exc.strerror or exc}") from None


def _copy(src: str, dest: str) -> int:
    """Copies a regular file to a new file ``dest`` (never overwriting); returns the bytes copied."""
    copied = 0
    with open(src, "rb") as fin, open(dest, "xb") as fout:
        try:
            while chunk := fin.read(COPY_CHUNK):
                fout.write(chunk)
                copied += len(chunk)
        except BaseException:
            fout.close()
            os.unlink(dest)
            raise
    shutil.copymode(src, dest)
    return copied


def copy_file(params: dict[str, Any], rules: dict[str, Any], log: Log) -> None:
    name, src, dest = "copy-file", params["src"], params["dest"]
    check_path(name, "src", src, rules)
    check_path(name, "dest", dest, rules)
    if not os.path.exists(src):
        raise FileCommandError(f"{name}: parameter 'src': {src!r} does not exist, nothing copied")
    if not os.path.isfile(src):
        raise FileCommandError(f"{name}: parameter 'src': {src!r} is not a regular file")
    if os.path.lexists(dest):
        raise FileCommandError(f"{name}: parameter 'dest': {dest!r} already exists, nothing copied")
    parent = os.path.dirname(dest)
    log(f"{name}: copying {src!r} to {dest!r}")
    try:
        os.makedirs(parent, mode=0o775, exist_ok=True)
    except OSError as exc:
        why = "a file is in the way" if isinstance(exc, FileExistsError) else exc.strerror or exc
        raise FileCommandError(f"{name}: parameter 'dest': cannot create directory {parent!r}: {why}") from None
    try:
        size = _copy(src, dest)
    except FileExistsError:
        raise FileCommandError(f"{name}: parameter 'dest': {dest!r} already exists, nothing copied") from None
    except OSError as exc:
        raise FileCommandError(f"{name}: cannot copy {src!r} to {dest!r}: {exc.strerror or exc}") from None
    log(f"{name}: copied {size} bytes")


OPERATIONS: dict[str, Callable[[dict[str, Any], dict[str, Any], Log], None]] = {
    "make-directory": make_directory,
    "move-directory": move_directory,
    "copy-file": copy_file,
}


def run(command: str, params: dict[str, Any], rules: dict[str, Any], log: Log) -> None:
    OPERATIONS[command](params, rules, log)


def child_main(argv: Sequence[str]) -> int:
    """The job user's side: one operation from the JSON in argv[1], reported as JSON lines."""
    request = json.loads(argv[1])

    def say(**item: str) -> None:
        print(json.dumps(item), flush=True)

    try:
        run(request["command"], request["params"], request["rules"], lambda text: say(log=text))
    except FileCommandError as exc:
        say(error=str(exc))
        return 1
    except OSError as exc:
        say(error=f"{request['command']}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv))
