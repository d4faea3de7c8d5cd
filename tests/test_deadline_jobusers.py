"""Job users: a Deadline session's actions run as the queue's jobRunAsUser, through sudo.

The real agent against the emulator.  Tests that need real users create them (useradd, as root) and
skip with the reason otherwise; the failure messages for a host that is not set up need no root.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")
pytest.importorskip("openjd.sessions")
from deadline_agent import Start  # noqa: E402

from flamenco_deadline_worker import cli  # noqa: E402
from flamenco_deadline_worker.backends.deadline import jobuser  # noqa: E402
from flamenco_deadline_worker.testing.deadline_emulator import Options, simple_template  # noqa: E402
from flamenco_deadline_worker.testing.deadline_emulator.profiles import AGENT_USER, queue_user  # noqa: E402

pytestmark = pytest.mark.slow


def _needs_root_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: it creates the queue's job user and group (useradd, groupadd)")
    for tool in ("useradd", "userdel", "groupadd", "groupdel", "sudo", "setsid"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (Debian packages passwd, sudo, util-linux)")


@pytest.fixture
def job_user() -> Iterator[jobuser.JobUser]:
    """A queue user with its own group and a login shell, as an admin would make it."""
    _needs_root_tools()
    name = f"fdwq{secrets.token_hex(3)}"
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    subprocess.run(["useradd", "--create-home", "--gid", name, "--shell", "/bin/bash", name],
                   check=True, capture_output=True)
    try:
        yield jobuser.JobUser(name, name)
    finally:
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can pass through (pytest's tmp_path is under a 0700 directory)."""
    root = Path(tempfile.mkdtemp(prefix="fdw-jobusers-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def all_tasks(status: str) -> Any:
    return lambda s: s.task_statuses() and all(v == status for v in s.task_statuses().values())


def session_log(emu: Any) -> str:
    session = emu.read(lambda s: next(iter(s.sessions.values())))
    return str(emu.read(lambda s: s.log_text(emu.state.job.log_group, session.id)))


def task_actions(emu: Any) -> list[Any]:
    return list(emu.read(lambda s: [a for ses in s.sessions.values() for a in ses.actions]))


# What each task tells about itself: who runs it, what of AWS it sees, what it can reach.
PROBE = r"""
import configparser, json, os, pwd, subprocess, sys
out, n, workdir = sys.argv[1], sys.argv[2], sys.argv[3]
with open(os.path.join(out, f"frame-{n}.txt"), "w") as f:
    f.write(f"frame {n}\n")
cfg = configparser.ConfigParser(); cfg.read(os.environ["AWS_CONFIG_FILE"])
process = cfg[f"profile {os.environ['AWS_PROFILE']}"]["credential_process"]
creds = json.loads(subprocess.run(process, shell=True, capture_output=True, text=True, check=True).stdout)
agents = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():
        continue  # this probe's own command line holds those words
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        continue
    if b"flamenco_deadline_worker" in cmd and b"--backend" in cmd:
        try:
            open(f"/proc/{pid}/environ", "rb").read()
            agents.append("readable")
        except PermissionError:
            agents.append("denied")
cred_dir = os.path.dirname(os.environ["AWS_CONFIG_FILE"])
print("PROBE " + json.dumps({
    "user": pwd.getpwuid(os.getuid()).pw_name,
    "aws_names": sorted(k for k in os.environ if k.startswith("AWS_")),
    "queue_key": creds["AccessKeyId"],
    "agent_environ": agents,
    "workdir": [os.stat(workdir).st_gid, oct(os.stat(workdir).st_mode & 0o777)],
    "cred_dir": [os.stat(cred_dir).st_gid, oct(os.stat(cred_dir).st_mode & 0o777)],
}))
"""


def probes(log: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("PROBE "):]) for line in log.splitlines() if line.startswith("PROBE ")]


def test_a_job_runs_as_the_queues_user_and_leaves_its_files_to_that_user(
    run: Start, job_user: jobuser.JobUser, open_dir: Path
) -> None:
    entry = pwd.getpwnam(job_user.user)
    gid = grp.getgrnam(job_user.group).gr_gid
    out = open_dir / "renders"
    out.mkdir()
    os.chown(out, entry.pw_uid, gid)
    template = simple_template(
        3, ("python3", "-c", PROBE, str(out), "{{Task.Param.N}}", "{{Session.WorkingDirectory}}")
    )
    options = Options(update_interval_seconds=2, job_run_as_user=queue_user(job_user.user, job_user.group))
    emu, agent = run(template, options=options, config=f'session_root_dir = "{open_dir / "sessions"}"\n')
    agent.until(all_tasks("SUCCEEDED"), 180, "3 tasks SUCCEEDED as the job user")
    agent.until(lambda s: len(probes(session_log(emu))) == 3, 60, "the three probes in the session log")
    log = session_log(emu)
    assert f"Running the session's actions as the queue's job user '{job_user.user}'" in log
    for probe in probes(log):
        assert probe["user"] == job_user.user
        assert probe["aws_names"] == ["AWS_CONFIG_FILE", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"], (
            "the host's keys never reach a job; only the queue's profile does")
        assert probe["queue_key"] in emu.state.queue_keys, "the job user can read the queue's credentials"
        assert probe["agent_environ"] and set(probe["agent_environ"]) == {"denied"}
        assert probe["workdir"] == [gid, "0o770"], "the session directory is the job group's"
        assert probe["cred_dir"] == [gid, "0o750"]
    assert "bootstrap-secret" not in log
    for n in (1, 2, 3):
        made = (out / f"frame-{n}.txt").stat()
        assert (made.st_uid, made.st_gid) == (entry.pw_uid, gid), "outputs belong to the job user"
    # The queue credentials on disk: the agent and the job group read them, no one else.
    creds = open_dir / "sessions" / "credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o711
    queue_dir = creds / emu.state.job.queue_id
    assert (stat.S_IMODE(queue_dir.stat().st_mode), queue_dir.stat().st_gid) == (0o750, gid)
    for name in ("credentials.json", "config", "credentials"):
        st = (queue_dir / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, os.geteuid(), gid), name
    assert emu.read(lambda s: list(s.violations)) == []
    assert agent.stop() == 0


def test_a_session_root_the_job_user_cannot_reach_fails_the_first_action_with_the_fix(
    run: Start, job_user: jobuser.JobUser
) -> None:
    # The default session root is in the agent's home, here under pytest's 0700 directory.
    options = Options(update_interval_seconds=2, job_run_as_user=queue_user(job_user.user, job_user.group))
    emu, agent = run(simple_template(2), options=options)
    agent.until(lambda s: all(a.done for a in task_actions(emu)) and task_actions(emu), 120, "the actions to end")
    first, second = task_actions(emu)[:2]
    assert first.status == "FAILED"
    assert f"the job user '{job_user.user}' cannot reach the session directories" in first.progress_message
    assert "chmod o+x" in first.progress_message and "session_root_dir" in first.progress_message
    assert second.status == "NEVER_ATTEMPTED"


def test_a_job_user_that_does_not_exist_fails_the_first_action_naming_it(run: Start) -> None:
    options = Options(update_interval_seconds=2, job_run_as_user=queue_user("fdwnosuchuser", "fdwnosuchgroup"))
    emu, agent = run(simple_template(3), options=options)
    agent.until(lambda s: all(a.done for a in task_actions(emu)) and task_actions(emu), 120, "the actions to end")
    statuses = [a.status for a in task_actions(emu)]
    assert statuses == ["FAILED", "NEVER_ATTEMPTED", "NEVER_ATTEMPTED"][: len(statuses)], statuses
    message = task_actions(emu)[0].progress_message
    assert "the queue's job user 'fdwnosuchuser' does not exist on this host" in message
    assert "useradd --create-home --gid fdwnosuchgroup --shell /bin/bash fdwnosuchuser" in message
    assert emu.read(lambda s: list(s.violations)) == []


def test_run_jobs_as_agent_user_ignores_the_queues_user(run: Start) -> None:
    options = Options(update_interval_seconds=2, job_run_as_user=queue_user("fdwnosuchuser", "fdwnosuchgroup"))
    command = ("python3", "-c", "import os, pwd; print('RUNS AS', pwd.getpwuid(os.getuid()).pw_name)")
    emu, agent = run(simple_template(2, command), options=options,
                     config="deadline_run_jobs_as_agent_user = true\n")
    agent.until(all_tasks("SUCCEEDED"), 120, "2 tasks SUCCEEDED as the agent's user")
    me = pwd.getpwuid(os.geteuid()).pw_name
    agent.until(lambda s: f"RUNS AS {me}" in session_log(emu), 60, "the task output")
    assert "deadline_run_jobs_as_agent_user is set, so the queue's jobRunAsUser is not used" in session_log(emu)


def test_a_queue_that_says_worker_agent_user_runs_as_the_agent_with_a_warning(run: Start) -> None:
    options = Options(update_interval_seconds=2, job_run_as_user=dict(AGENT_USER))
    emu, agent = run(simple_template(1), options=options)
    agent.until(all_tasks("SUCCEEDED"), 120, "the task SUCCEEDED")
    agent.until(lambda s: "WORKER_AGENT_USER" in session_log(emu), 60, "the session log")
    assert "Jobs can then read and change everything the agent can" in session_log(emu)


def test_the_command_line_flag_sets_the_key() -> None:
    args = cli.worker_parser().parse_args(["--run-jobs-as-agent-user", "--home", "/nonexistent-fdw-home"])
    config = cli.load_config(args)
    assert config.deadline_run_jobs_as_agent_user is True
    assert config.source_of("deadline_run_jobs_as_agent_user") == "command line"
    plain = cli.load_config(cli.worker_parser().parse_args(["--home", "/nonexistent-fdw-home"]))
    assert plain.deadline_run_jobs_as_agent_user is False


def test_choose_follows_the_service_and_the_override() -> None:
    posix = queue_user("render", "renderers")
    assert jobuser.choose({"jobRunAsUser": posix}, run_as_agent=False)[0] == jobuser.JobUser("render", "renderers")
    assert jobuser.choose({"jobRunAsUser": posix}, run_as_agent=True)[0] is None
    assert jobuser.choose({"jobRunAsUser": AGENT_USER}, run_as_agent=False)[0] is None
    with pytest.raises(jobuser.JobUserError, match="names no POSIX user and group"):
        jobuser.choose({"jobRunAsUser": {"runAs": "QUEUE_CONFIGURED_USER",
                                         "windows": {"user": "r", "passwordArn": "arn:x"}}}, run_as_agent=False)
    with pytest.raises(jobuser.JobUserError, match="carry no jobRunAsUser"):
        jobuser.choose({}, run_as_agent=False)
    assert jobuser.choose({}, run_as_agent=True)[0] is None


# ---- an agent that is not root: sudo must be allowed -----------------------------------------------


@pytest.fixture
def agent_user(job_user: jobuser.JobUser) -> Iterator[str]:
    """A service user for the agent, in the job group (as the admin guide has it), without a sudo rule."""
    name = f"fdwa{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "--groups", job_user.group, name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def python_for(user: str) -> tuple[str, dict[str, str]]:
    """An interpreter ``user`` can run with this checkout and its packages (a venv under /root is out of
    reach: then the system's python3 of the same version, with the packages on PYTHONPATH)."""
    import sysconfig

    import flamenco_deadline_worker

    paths = os.pathsep.join([sysconfig.get_paths()["purelib"], str(Path(flamenco_deadline_worker.__file__).parents[1])])
    version = f"python3.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        probe = subprocess.run(
            ["sudo", "-u", user, "env", f"PYTHONPATH={paths}", python, "-c", "import flamenco_deadline_worker, boto3"],
            capture_output=True, cwd="/",
        )
        if probe.returncode == 0:
            return python, {"PYTHONPATH": paths}
    pytest.skip(f"no Python interpreter with this checkout's packages is reachable by the user {user}")


def start_as(emu: Any, home: Path, user: str, config: str) -> Any:
    from deadline_agent import DeadlineAgentProcess

    python, env = python_for(user)
    home.mkdir(mode=0o700)
    entry = pwd.getpwnam(user)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    return DeadlineAgentProcess(emu, home, config, env, python=python,
                                popen={"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": groups})


def test_an_agent_without_a_sudo_rule_fails_the_action_with_the_sudoers_line_and_runs_once_allowed(
    job_user: jobuser.JobUser, agent_user: str, open_dir: Path
) -> None:
    from flamenco_deadline_worker.testing.deadline_emulator import DeadlineEmulator, make_job

    sessions = open_dir / "sessions"  # made by the admin for the agent's user, as docs/deadline.md says
    sessions.mkdir(mode=0o711)
    os.chown(sessions, pwd.getpwnam(agent_user).pw_uid, -1)
    config = f'session_root_dir = "{sessions}"\n'
    out = open_dir / "renders"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    command = ("python3", "-c", "import sys; open(sys.argv[1], 'w').write('x')", f"{out}/f{{{{Task.Param.N}}}}.txt")
    options = Options(update_interval_seconds=2, job_run_as_user=queue_user(job_user.user, job_user.group))
    rule_file = Path(f"/etc/sudoers.d/fdw-test-{agent_user}")
    emu = DeadlineEmulator(make_job(simple_template(2, command)), options).start()
    agent = start_as(emu, open_dir / "home1", agent_user, config)
    try:
        agent.until(lambda s: task_actions(emu) and all(a.done for a in task_actions(emu)), 120, "the actions to end")
        first = task_actions(emu)[0]
        assert first.status == "FAILED", agent.output()[-3000:]
        assert f"sudo does not let the agent run actions as the job user '{job_user.user}'" in first.progress_message
        assert f"`{agent_user} ALL=({job_user.user}) NOPASSWD: ALL`" in first.progress_message
        assert agent.stop() == 0
    finally:
        agent.stop()
        emu.stop()
    rule_file.write_text(f"{agent_user} ALL=({job_user.user}) NOPASSWD: ALL\n")
    rule_file.chmod(0o440)
    emu = DeadlineEmulator(make_job(simple_template(2, command)), options).start()
    try:
        agent = start_as(emu, open_dir / "home2", agent_user, config)
        try:
            agent.until(all_tasks("SUCCEEDED"), 180, "2 tasks SUCCEEDED once sudo allows it")
            entry = pwd.getpwnam(job_user.user)
            for n in (1, 2):
                assert (out / f"f{n}.txt").stat().st_uid == entry.pw_uid
            assert agent.stop() == 0
        finally:
            agent.stop()
    finally:
        emu.stop()
        rule_file.unlink(missing_ok=True)


def test_a_job_user_without_a_login_shell_is_refused_with_the_fix(tmp_path: Path) -> None:
    try:
        pwd.getpwnam("nobody")
        grp.getgrnam("nogroup")
    except KeyError:
        pytest.skip("needs the user nobody and the group nogroup (Debian's base-passwd)")
    with pytest.raises(jobuser.JobUserError) as caught:
        jobuser.check(jobuser.JobUser("nobody", "nogroup"), tmp_path / "sessions")
    if os.geteuid() == 0:
        assert "the job user 'nobody' has the login shell '/usr/sbin/nologin'" in str(caught.value)
        assert "usermod --shell /bin/bash nobody" in str(caught.value)
    else:  # an agent outside the job group is told first
        assert "is not a member of the job group 'nogroup'" in str(caught.value)
