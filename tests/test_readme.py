"""The README's commands run as written, and the documentation keeps to the rules a newcomer relies on.

Every shell block of README.md carries a mark on the line before its fence:

- ``<!-- runnable -->``: this test runs it with bash from the repository root, in a scratch $HOME, with the
  venv running the tests standing for ``.venv/bin/`` (the same venv when the tests run from `.ci/run`).
- ``<!-- not-run: reason -->``: it cannot run here (it installs Debian packages, needs the network or a
  service, or is the test run itself); it is checked for shell syntax only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flamenco_deadline_worker import config as cfg

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!-- (runnable|not-run: .+) -->$")
BARE_PYTHON = re.compile(r"(^|[\s;&|(`])python(\s|$)")


def blocks(path: Path) -> list[tuple[int, str, str, str]]:
    """(line number, language, the mark before it or "", text) of each fenced block of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    i = 0
    while i < len(lines):
        start = FENCE.match(lines[i])
        if start is None:
            i += 1
            continue
        before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        mark = MARK.match(before)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        found.append((i + 1, start[1], mark[1] if mark else "", "\n".join(lines[i + 1:end]) + "\n"))
        i = end + 1
    return found


SHELL = [(n, mark, text) for n, lang, mark, text in blocks(README) if lang == "sh"]
RUNNABLE = [(n, text) for n, mark, text in SHELL if mark == "runnable"]


def test_every_shell_block_of_the_readme_is_marked() -> None:
    unmarked = [n for n, mark, _ in SHELL if not mark]
    assert not unmarked, f"README.md: shell blocks at lines {unmarked} need <!-- runnable --> or <!-- not-run: why -->"
    assert RUNNABLE, "the README has no runnable block: the marks were lost"


@pytest.mark.parametrize(("line", "text"), RUNNABLE, ids=[f"README.md:{n}" for n, _ in RUNNABLE])
def test_runnable_readme_block(line: int, text: str, tmp_path: Path) -> None:
    venv_bin = f"{Path(sys.executable).parent}/"
    script = text.replace(".venv/bin/", venv_bin)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAMENCO_WORKER_")}
    env["HOME"] = str(tmp_path)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (
        f"README.md:{line} failed ({result.returncode}):\n{text}\n{result.stdout}\n{result.stderr}"
    )


@pytest.mark.parametrize(("line", "text"), [(n, t) for n, m, t in SHELL if m.startswith("not-run")])
def test_other_readme_blocks_are_valid_shell(line: int, text: str) -> None:
    result = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"README.md:{line}: {result.stderr}"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_commands_use_python3_or_the_venv_and_no_pypi_install(path: Path) -> None:
    """Debian has no `python` command, and the package is not on PyPI."""
    problems = []
    for line, lang, _, text in blocks(path):
        if lang not in ("sh", ""):
            continue
        for offset, command in enumerate(text.splitlines(), 1):
            if BARE_PYTHON.search(command):
                problems.append(f"{path.name}:{line + offset}: bare python: {command.strip()}")
            if re.search(r"pip install ['\"]?flamenco-deadline-worker", command):
                problems.append(f"{path.name}:{line + offset}: the package is not on PyPI: {command.strip()}")
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for span in re.findall(r"`([^`]+)`", text):
            if span.startswith("python "):
                problems.append(f"{path.name}:{number}: bare python: {span}")
    assert not problems, "\n".join(problems)


def test_readme_configuration_example_is_valid(tmp_path: Path) -> None:
    examples = [text for _, lang, _, text in blocks(README) if lang == "toml"]
    assert examples
    for number, text in enumerate(examples):
        path = tmp_path / f"example-{number}.cfg"
        path.write_text(text)
        unknown = set(cfg.read_toml(path)) - set(cfg.KEYS_BY_NAME)
        assert not unknown, f"README configuration example uses unknown keys {unknown}"
        cfg.load(config_files=[path], home=tmp_path / "home", environ={})


def test_every_configuration_key_is_documented() -> None:
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [key for key in cfg.KEYS if f"| `{key.name}` |" not in page]
    rows = "\n".join(f"| `{k.name}` | `{k.default!r}` | {k.doc} |" for k in missing)
    assert not missing, f"docs/configuration.md lacks these keys; add rows like:\n{rows}"
