"""Every CLI path of the adaptor runtime, through real subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SAMPLE = Path(__file__).parent / "adaptor_fixtures" / "sample.py"
TIMEOUT = 60.0


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a container's PID 1 may never reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


class Cli:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(tmp / "config"),
            "FDW_ADAPTOR_SYSTEM_CONFIG_DIR": str(tmp / "system"),
            "PYTHONUNBUFFERED": "1",
        }
        self.daemons: list[Path] = []

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, str(SAMPLE), *args]

    def env_for(self, adaptor: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**self.env, "SAMPLE_ADAPTOR": adaptor, **(extra or {})}

    def __call__(self, adaptor: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        if "--connection-file" in args:
            self.daemons.append(Path(args[args.index("--connection-file") + 1]))
        return subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=self.env_for(adaptor, env),
        )

    def popen(self, adaptor: str, *args: str) -> subprocess.Popen[str]:
        if "--connection-file" in args:
            self.daemons.append(Path(args[args.index("--connection-file") + 1]))
        return subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env_for(adaptor),
        )

    def kill_daemons(self) -> None:
        for cf in self.daemons:
            with contextlib.suppress(OSError, ValueError, KeyError):
                os.kill(json.loads(cf.read_text())["pid"], signal.SIGKILL)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    c = Cli(tmp_path)
    yield c
    c.kill_daemons()


def daemon_pid(cf: Path) -> int:
    return int(json.loads(cf.read_text())["pid"])


# -- run ------------------------------------------------------------------------------------------
def test_run_whole_lifecycle(cli: Cli, tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    rules = json.dumps(
        {
            "version": "pathmapping-1.0",
            "path_mapping_rules": [
                {"source_path_format": "WINDOWS", "source_path": "Z:\\Projects", "destination_path": "/mnt/p"}
            ],
        }
    )
    run_data = tmp_path / "run.yaml"
    run_data.write_text("frame: 7\npath: 'z:\\projects\\shot\\a.blend'\n")
    r = cli(
        "Echo",
        "run",
        "--init-data",
        json.dumps({"greeting": "hello", "record": str(record)}),
        "--run-data",
        f"file://{run_data}",
        "--path-mapping-rules",
        rules,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "INFO: echo adaptor started" in lines
    assert "openjd_status: frame 7" in lines
    assert "> hello frame 7" in lines
    assert "mapped: /mnt/p/shot/a.blend" in lines
    assert lines.index("openjd_progress: 0") < lines.index("openjd_progress: 100")
    events = [json.loads(x)["event"] for x in record.read_text().splitlines()]
    assert events == ["start", "run 7", "stop", "cleanup"]


def test_run_failure_reports_openjd_fail(cli: Cli, tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    r = cli(
        "Echo",
        "run",
        "--init-data",
        json.dumps({"greeting": "x", "record": str(record)}),
        "--run-data",
        '{"frame": 3, "fail": true}',
    )
    assert r.returncode == 1
    assert "openjd_fail: frame 3 asked to fail" in r.stdout.splitlines()
    assert [json.loads(x)["event"] for x in record.read_text().splitlines()][-1] == "cleanup"


@pytest.mark.parametrize(
    ("init", "run", "message"),
    [
        ('{"greeting": 5}', '{"frame": 1}', "init-data: greeting: expected string, got integer 5"),
        ('{"greting": "hi"}', '{"frame": 1}', "init-data: greeting: is required but missing"),
        ('{"greeting": "hi", "colour": 1}', '{"frame": 1}', "init-data: colour: is not an allowed key"),
        ('{"greeting": "hi"}', '{"frame": "one"}', "run-data: frame: expected integer, got string 'one'"),
        ('{"greeting": "hi"}', "{}", "run-data: frame: is required but missing"),
        ('{"greeting": "hi"}', "frame: [1", "run-data (inline) is neither valid JSON"),
        ('{"greeting": "hi"}', "file:///nonexistent/run.json", "run-data: cannot read /nonexistent/run.json"),
    ],
)
def test_run_bad_data_names_the_key(cli: Cli, init: str, run: str, message: str) -> None:
    r = cli("Echo", "run", "--init-data", init, "--run-data", run)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert any(line.startswith("openjd_fail: ") and message in line for line in r.stdout.splitlines())


# -- daemon ---------------------------------------------------------------------------------------
def test_daemon_start_run_three_times_stop(cli: Cli, tmp_path: Path) -> None:
    cf = tmp_path / "conn.json"
    record = tmp_path / "record.jsonl"
    r = cli(
        "Echo",
        "daemon",
        "start",
        "--connection-file",
        str(cf),
        "--init-data",
        json.dumps({"greeting": "warm", "record": str(record)}),
    )
    assert r.returncode == 0, r.stderr
    assert "INFO: echo adaptor started" in r.stdout
    assert stat.S_IMODE(cf.stat().st_mode) == 0o600
    info = json.loads(cf.read_text())
    sock = Path(info["socket"])
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    pid = info["pid"]
    for frame in (1, 2, 3):
        r = cli("Echo", "daemon", "run", "--connection-file", str(cf), "--run-data", json.dumps({"frame": frame}))
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [
            "openjd_progress: 0",
            f"openjd_status: frame {frame}",
            f"> warm frame {frame}",
            "openjd_progress: 100",
        ]
    events = [json.loads(x) for x in record.read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "run 1", "run 2", "run 3"]
    assert {e["pid"] for e in events} == {pid}, "every run happens in the one daemon"
    r = cli("Echo", "daemon", "stop", "--connection-file", str(cf))
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["event"] for x in record.read_text().splitlines()][-2:] == ["stop", "cleanup"]
    wait_for(lambda: not pid_alive(pid), what="daemon exit")
    assert not cf.exists()
    assert not sock.parent.exists()


def test_daemon_bad_init_data_and_run_data(cli: Cli, tmp_path: Path) -> None:
    cf = tmp_path / "conn.json"
    r = cli("Echo", "daemon", "start", "--connection-file", str(cf), "--init-data", '{"greeting": ""}')
    assert r.returncode == 2
    assert "init-data: greeting: must be at least 1 characters long" in r.stderr
    assert not cf.exists()
    r = cli("Echo", "daemon", "start", "--connection-file", str(cf), "--init-data", '{"greeting": "hi"}')
    assert r.returncode == 0, r.stderr
    r = cli("Echo", "daemon", "run", "--connection-file", str(cf), "--run-data", '{"frame": 0}')
    assert r.returncode == 2
    assert "run-data: frame: must be >= 1, got 0" in r.stderr
    assert "openjd_fail: run-data: frame: must be >= 1, got 0" in r.stdout
    r = cli("Echo", "daemon", "run", "--connection-file", str(cf), "--run-data", '{"frame": 2, "fail": true}')
    assert r.returncode == 1
    assert "openjd_fail: frame 2 asked to fail" in r.stdout
    # The daemon survives bad input and failures.
    r = cli("Echo", "daemon", "run", "--connection-file", str(cf), "--run-data", '{"frame": 4}')
    assert r.returncode == 0, r.stderr
    assert cli("Echo", "daemon", "stop", "--connection-file", str(cf)).returncode == 0


def test_stale_connection_file(cli: Cli, tmp_path: Path) -> None:
    cf = tmp_path / "conn.json"
    r = cli("Noop", "daemon", "run", "--connection-file", str(cf), "--run-data", "{}")
    assert r.returncode == 3
    assert "does not exist" in r.stderr
    assert cli("Noop", "daemon", "start", "--connection-file", str(cf)).returncode == 0
    pid = daemon_pid(cf)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), what="daemon death")
    r = cli("Noop", "daemon", "run", "--connection-file", str(cf), "--run-data", "{}")
    assert r.returncode == 3
    assert "stale connection file" in r.stderr and "daemon start" in r.stderr
    stale_dir = Path(json.loads(cf.read_text())["socket"]).parent
    assert stale_dir.exists()
    # start replaces a stale file; stop removes one and says so.
    r = cli("Noop", "daemon", "start", "--connection-file", str(cf))
    assert r.returncode == 0, r.stderr
    assert "replacing the stale connection file" in r.stderr
    assert daemon_pid(cf) != pid
    assert not stale_dir.exists(), "the dead daemon's socket directory is cleaned up"
    r = cli("Noop", "daemon", "start", "--connection-file", str(cf))
    assert r.returncode == 3 and "already serves" in r.stderr
    new_pid = daemon_pid(cf)
    stale_dir = Path(json.loads(cf.read_text())["socket"]).parent
    os.kill(new_pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(new_pid), what="daemon death")
    r = cli("Noop", "daemon", "stop", "--connection-file", str(cf))
    assert r.returncode == 0
    assert "removed the connection file" in r.stderr
    assert not cf.exists()
    assert not stale_dir.exists()


def test_daemon_run_with_init_data_starts_a_daemon_once(cli: Cli, tmp_path: Path) -> None:
    cf = tmp_path / "conn.json"
    record = tmp_path / "record.jsonl"
    init = json.dumps({"greeting": "auto", "record": str(record)})
    for frame in (1, 2):
        r = cli(
            "Echo",
            "daemon",
            "run",
            "--connection-file",
            str(cf),
            "--init-data",
            init,
            "--run-data",
            json.dumps({"frame": frame}),
        )
        assert r.returncode == 0, r.stderr
        assert f"> auto frame {frame}" in r.stdout
    assert [json.loads(x)["event"] for x in record.read_text().splitlines()] == ["start", "run 1", "run 2"]
    assert cli("Echo", "daemon", "stop", "--connection-file", str(cf)).returncode == 0


def test_idle_daemon_stops_on_its_own(cli: Cli, tmp_path: Path) -> None:
    cf = tmp_path / "conn.json"
    record = tmp_path / "record.jsonl"
    r = cli(
        "Echo",
        "daemon",
        "start",
        "--connection-file",
        str(cf),
        "--idle-timeout",
        "1",
        "--init-data",
        json.dumps({"greeting": "idle", "record": str(record)}),
    )
    assert r.returncode == 0, r.stderr
    pid = daemon_pid(cf)
    wait_for(lambda: not pid_alive(pid), what="idle daemon exit")
    assert not cf.exists()
    assert [json.loads(x)["event"] for x in record.read_text().splitlines()] == ["start", "stop", "cleanup"]


# -- cancel ---------------------------------------------------------------------------------------
def _wait_pids(path: Path) -> tuple[int, int]:
    wait_for(path.exists, what=f"{path}")
    child, grandchild = (int(x) for x in path.read_text().split())
    return child, grandchild


@pytest.mark.parametrize("mode", ["run", "daemon run"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cancel_without_on_cancel_kills_the_group(cli: Cli, tmp_path: Path, mode: str, sig: int) -> None:
    pids = tmp_path / "pids"
    run_data = json.dumps({"pids": str(pids)})
    cf = tmp_path / "conn.json"
    if mode == "run":
        proc = cli.popen("Process", "run", "--run-data", run_data)
    else:
        assert cli("Process", "daemon", "start", "--connection-file", str(cf)).returncode == 0
        proc = cli.popen("Process", "daemon", "run", "--connection-file", str(cf), "--run-data", run_data)
    child, grandchild = _wait_pids(pids)
    assert os.getpgid(grandchild) == child, "the managed process leads its own group"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + sig, (out, err)
    assert "child ready" in out
    wait_for(lambda: not group_members(child), what="process group gone")
    assert not pid_alive(child) and not pid_alive(grandchild)
    if mode == "daemon run":
        # The daemon outlives the canceled run and serves the next one.
        r = cli("Process", "daemon", "stop", "--connection-file", str(cf))
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("mode", ["run", "daemon run"])
def test_cancel_with_on_cancel(cli: Cli, tmp_path: Path, mode: str) -> None:
    pids, marker = tmp_path / "pids", tmp_path / "marker"
    run_data = json.dumps({"pids": str(pids), "marker": str(marker)})
    cf = tmp_path / "conn.json"
    if mode == "run":
        proc = cli.popen("Cooperative", "run", "--run-data", run_data)
    else:
        assert cli("Cooperative", "daemon", "start", "--connection-file", str(cf)).returncode == 0
        proc = cli.popen("Cooperative", "daemon", "run", "--connection-file", str(cf), "--run-data", run_data)
    child, _ = _wait_pids(pids)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert marker.read_text() == "on_cancel called\n"
    wait_for(lambda: not group_members(child), what="process group gone")
    if mode == "daemon run":
        assert cli("Cooperative", "daemon", "stop", "--connection-file", str(cf)).returncode == 0


def test_client_that_vanishes_cancels_its_run(cli: Cli, tmp_path: Path) -> None:
    pids, cf = tmp_path / "pids", tmp_path / "conn.json"
    assert cli("Process", "daemon", "start", "--connection-file", str(cf)).returncode == 0
    proc = cli.popen(
        "Process", "daemon", "run", "--connection-file", str(cf), "--run-data", json.dumps({"pids": str(pids)})
    )
    child, _ = _wait_pids(pids)
    proc.kill()
    proc.communicate(timeout=TIMEOUT)
    wait_for(lambda: not group_members(child), what="process group gone")
    assert cli("Process", "daemon", "stop", "--connection-file", str(cf)).returncode == 0


# -- config, show-config, version-info ----------------------------------------------------------------
def test_show_config_layers_and_errors(cli: Cli, tmp_path: Path) -> None:
    r = cli("Echo", "show-config")
    assert r.returncode == 0
    assert json.loads(r.stdout) == {"prefix": ">", "repeat": 1}
    (tmp_path / "system").mkdir()
    (tmp_path / "system" / "Echo.json").write_text('{"prefix": "sys", "repeat": 2}')
    user = tmp_path / "config" / "flamenco-deadline-worker" / "adaptors"
    user.mkdir(parents=True)
    (user / "Echo.json").write_text('{"prefix": "user"}')
    r = cli("Echo", "show-config")
    assert json.loads(r.stdout) == {"prefix": "user", "repeat": 2}
    r = cli("Echo", "show-config", env={"FDW_ADAPTOR_ECHO_CONFIG": '{"repeat": 3}'})
    assert json.loads(r.stdout) == {"prefix": "user", "repeat": 3}
    r = cli(
        "Echo",
        "run",
        "--init-data",
        '{"greeting": "g"}',
        "--run-data",
        '{"frame": 1}',
        env={"FDW_ADAPTOR_ECHO_CONFIG": '{"repeat": 3}'},
    )
    assert r.stdout.count("user g frame 1") == 3
    (user / "Echo.json").write_text('{"repeat": "many"}')
    r = cli("Echo", "show-config")
    assert r.returncode == 2
    assert "adaptor configuration key repeat" in r.stderr
    assert str(user / "Echo.json") in r.stderr and "expected integer" in r.stderr
    r = cli("Echo", "run", "--init-data", '{"greeting": "g"}', "--run-data", '{"frame": 1}')
    assert r.returncode == 2 and "adaptor configuration key repeat" in r.stderr


def test_version_info(cli: Cli) -> None:
    r = cli("Echo", "version-info")
    assert r.returncode == 0
    info = json.loads(r.stdout)
    assert info["adaptor"] == "Echo" and info["adaptor_version"] == "1.2.3"
    assert info["runtime"] == "flamenco_deadline_worker.adaptor"


def test_daemon_run_imports_only_what_it_needs(cli: Cli, tmp_path: Path) -> None:
    cf = tmp_path / "conn.json"
    assert cli("Noop", "daemon", "start", "--connection-file", str(cf)).returncode == 0
    r = subprocess.run(
        [sys.executable, "-X", "importtime", str(SAMPLE), "daemon", "run", "--connection-file", str(cf)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=cli.env_for("Noop"),
    )
    assert r.returncode == 0, r.stderr
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    ours = {m for m in imported if m.startswith("flamenco_deadline_worker")}
    assert ours == {
        "flamenco_deadline_worker",
        "flamenco_deadline_worker.adaptor",
        "flamenco_deadline_worker.adaptor.entrypoint",
        "flamenco_deadline_worker.adaptor.client",
        "flamenco_deadline_worker.adaptor.protocol",
    }
    for heavy in ("asyncio", "threading", "subprocess", "logging", "argparse", "attrs", "typing", "yaml"):
        assert heavy not in imported, f"daemon run imported {heavy}"
    assert cli("Noop", "daemon", "stop", "--connection-file", str(cf)).returncode == 0


# -- peer uid -------------------------------------------------------------------------------------
PEER = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b'{"op": "run", "data": "{}"}\n')
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.decode())
"""


def test_daemon_refuses_a_peer_of_another_uid(cli: Cli, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second user and connect as that user")
    user = "fdwadaptorpeer"
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True)
        entry = pwd.getpwnam(user)
    cf = tmp_path / "conn.json"
    record = tmp_path / "record.jsonl"
    r = cli(
        "Echo",
        "daemon",
        "start",
        "--connection-file",
        str(cf),
        "--init-data",
        json.dumps({"greeting": "hi", "record": str(record)}),
    )
    assert r.returncode == 0, r.stderr
    sock = Path(json.loads(cf.read_text())["socket"])
    # Loosen the file modes on purpose so that the uid check is what stands in the way.
    os.chmod(sock.parent, 0o711)
    os.chmod(sock, 0o666)
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    peer = subprocess.run(
        [python, "-c", PEER, str(sock)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        user=entry.pw_uid,
        group=entry.pw_gid,
        cwd="/",
    )
    assert peer.returncode == 0, peer.stderr
    answer = json.loads(peer.stdout.strip().splitlines()[-1])
    assert answer["ev"] == "end" and answer["code"] == 3
    assert f"refused: uid {entry.pw_uid}" in answer["message"]
    assert [json.loads(x)["event"] for x in record.read_text().splitlines()] == ["start"], "no run happened"
    r = cli("Echo", "daemon", "run", "--connection-file", str(cf), "--run-data", '{"frame": 1}')
    assert r.returncode == 0, r.stderr
    assert cli("Echo", "daemon", "stop", "--connection-file", str(cf)).returncode == 0
