"""Which POSIX user a Deadline session's actions run as, and whether this host lets the agent do it.

The queue says it in jobDetails ``jobRunAsUser``: ``QUEUE_CONFIGURED_USER`` with a ``posix``
``{user, group}``, or ``WORKER_AGENT_USER``.  openjd-sessions runs the actions of a session made
with ``user=PosixSessionUser(...)`` through ``sudo -u USER -i setsid -w ...`` and gives the session
directory to the group.  ``deadline_run_jobs_as_agent_user`` (``--run-jobs-as-agent-user``) makes
every session run as the agent's own user, whatever the queue says.

Before the first action of a session run as another user, ``JobUsers.ready`` checks what would
otherwise fail deep inside openjd-sessions, or hang on a sudo password prompt: the user and group
exist, the agent may give files to the group, the user has a login shell, ``sudo -n`` lets the agent
switch to the user, and the user can reach the session directory.  Each failure is one message
naming the user and what to change on the host.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from openjd.sessions import PosixSessionUser

SUDO_TIMEOUT_SECONDS = 60.0
NO_LOGIN_SHELLS = ("nologin", "false")


class JobUserError(Exception):
    """The session cannot run as its job user (the session's first action fails with this)."""


@attrs.frozen
class JobUser:
    user: str
    group: str

    def session_user(self) -> PosixSessionUser:
        return PosixSessionUser(user=self.user, group=self.group)


def agent_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def choose(details: Mapping[str, Any], *, run_as_agent: bool) -> tuple[JobUser | None, str]:
    """The job user of a jobDetails entity (None: the agent's own user) and a line for the session
    log that says why.  JobUserError when the details name no user this host can run as."""
    me = agent_user()
    if run_as_agent:
        return None, (
            f"Running the session's actions as the agent's user '{me}': deadline_run_jobs_as_agent_user "
            "is set, so the queue's jobRunAsUser is not used."
        )
    run_as = details.get("jobRunAsUser")
    if not isinstance(run_as, Mapping) or "runAs" not in run_as:
        raise JobUserError(
            "the job's details carry no jobRunAsUser, so this worker does not know which user to run it "
            "as; set the queue's job user, or start the agent with --run-jobs-as-agent-user "
            "(deadline_run_jobs_as_agent_user = true) to run every job as the agent's user"
        )
    kind = run_as["runAs"]
    if kind == "WORKER_AGENT_USER":
        return None, (
            f"Running the session's actions as the agent's user '{me}': the queue's jobRunAsUser is "
            "WORKER_AGENT_USER. Jobs can then read and change everything the agent can; a queue user "
            "(QUEUE_CONFIGURED_USER) keeps them apart."
        )
    if kind != "QUEUE_CONFIGURED_USER":
        raise JobUserError(
            f"jobRunAsUser.runAs is {kind!r}; this worker knows QUEUE_CONFIGURED_USER and WORKER_AGENT_USER"
        )
    posix = run_as.get("posix")
    if not isinstance(posix, Mapping) or not posix.get("user") or not posix.get("group"):
        raise JobUserError(
            "the queue's jobRunAsUser is QUEUE_CONFIGURED_USER but names no POSIX user and group "
            f"(it has {sorted(k for k in run_as if k != 'runAs') or 'none'}); give the queue a POSIX job "
            "user, or run jobs as the agent's user (deadline_run_jobs_as_agent_user = true)"
        )
    user = JobUser(str(posix["user"]), str(posix["group"]))
    return user, f"Running the session's actions as the queue's job user '{user.user}' (group '{user.group}')."


def sudoers_line(user: str) -> str:
    return f"{agent_user()} ALL=({user}) NOPASSWD: ALL"


class JobUsers:
    """The agent's job-user policy and the checks of the users it has run as (successes are kept)."""

    def __init__(self, *, run_as_agent: bool, session_root: Path) -> None:
        self.run_as_agent = run_as_agent
        self.session_root = session_root
        self._ready: set[JobUser] = set()

    def choose(self, details: Mapping[str, Any]) -> tuple[JobUser | None, str]:
        return choose(details, run_as_agent=self.run_as_agent)

    async def ready(self, user: JobUser) -> None:
        """JobUserError with what to change when ``user`` cannot run this session's actions."""
        if user in self._ready:
            return
        await asyncio.to_thread(check, user, self.session_root)
        self._ready.add(user)


def check(user: JobUser, session_root: Path) -> None:
    """Blocking: the checks of ``JobUsers.ready``."""
    me = agent_user()
    try:
        entry = pwd.getpwnam(user.user)
    except KeyError:
        raise JobUserError(
            f"the queue's job user '{user.user}' does not exist on this host. Create it, as root: "
            f"groupadd {user.group}; useradd --create-home --gid {user.group} --shell /bin/bash {user.user}; "
            f"usermod --append --groups {user.group} {me}"
        ) from None
    try:
        group = grp.getgrnam(user.group)
    except KeyError:
        raise JobUserError(
            f"the queue's job group '{user.group}' (of job user '{user.user}') does not exist on this host. "
            f"Create it, as root: groupadd {user.group}; usermod --append --groups {user.group} {user.user}; "
            f"usermod --append --groups {user.group} {me}"
        ) from None
    if os.geteuid() != 0 and group.gr_gid not in (os.getegid(), *os.getgroups()):
        raise JobUserError(
            f"the agent's user '{me}' is not a member of the job group '{user.group}', so it cannot share the "
            f"session directory with job user '{user.user}'. As root: usermod --append --groups {user.group} "
            f"{me}, then restart the agent"
        )
    if entry.pw_uid != os.geteuid():
        _check_shell(user, entry.pw_shell)
        _check_sudo(user, me)
    _open_root(session_root)
    _check_reach(user, entry, session_root)


def _open_root(session_root: Path) -> None:
    """The agent's session root lets others pass (never list): each session directory in it is the
    job group's (0770, openjd-sessions), so passing through is all a job user needs."""
    session_root.mkdir(parents=True, exist_ok=True, mode=0o711)
    st = session_root.stat()
    if st.st_uid == os.geteuid() and not st.st_mode & stat.S_IXOTH:
        os.chmod(session_root, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _check_shell(user: JobUser, shell: str) -> None:
    if not shell or Path(shell).name in NO_LOGIN_SHELLS:
        raise JobUserError(
            f"the job user '{user.user}' has the login shell {shell or '(none)'!r}; actions run through "
            f"`sudo -i`, which needs a real shell. As root: usermod --shell /bin/bash {user.user}"
        )


def _check_sudo(user: JobUser, me: str) -> None:
    sudo = shutil.which("sudo")
    if sudo is None:
        raise JobUserError(
            f"sudo is not installed, and the agent runs actions as the job user '{user.user}' through it. "
            "As root: apt-get install sudo, and allow the agent in /etc/sudoers.d/: "
            f"{sudoers_line(user.user)}"
        )
    argv = [sudo, "-n", "-u", user.user, "-i", "true"]
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=SUDO_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JobUserError(f"`{' '.join(argv)}` failed: {exc}") from None
    if done.returncode == 0:
        return
    said = done.stderr.decode(errors="replace").strip() or done.stdout.decode(errors="replace").strip()
    hint = (
        f"allow the agent's user '{me}' to run commands as '{user.user}' without a password: as root, put the "
        f"line `{sudoers_line(user.user)}` into /etc/sudoers.d/flamenco-worker-jobs (mode 0440; check it with "
        "visudo -cf /etc/sudoers.d/flamenco-worker-jobs)"
    )
    if "no new privileges" in said.lower():
        hint = "the agent runs with NoNewPrivileges=yes (systemd), which stops sudo: remove it from the unit"
    raise JobUserError(f"sudo does not let the agent run actions as the job user '{user.user}' ({said}): {hint}")


def _check_reach(user: JobUser, entry: pwd.struct_passwd, session_root: Path) -> None:
    """Every directory down to the session root must let the job user pass (search permission)."""
    gids = set(os.getgrouplist(user.user, entry.pw_gid))
    root = session_root.resolve()
    for directory in [*reversed(root.parents), root]:
        try:
            st = directory.stat()
        except OSError:
            return  # made later by the agent; its parents were checked
        if entry.pw_uid == 0 or _may_search(st, entry.pw_uid, gids):
            continue
        raise JobUserError(
            f"the job user '{user.user}' cannot reach the session directories under {root}: {directory} has mode "
            f"{stat.S_IMODE(st.st_mode):04o} (owner {_name(st.st_uid, user=True)}, group {_name(st.st_gid)}). "
            f"Give others search permission (chmod o+x {directory}) or set session_root_dir to a directory the "
            "job user can reach (outside the worker's 0700 home)"
        )


def _may_search(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _name(ident: int, *, user: bool = False) -> str:
    try:
        return pwd.getpwuid(ident).pw_name if user else grp.getgrgid(ident).gr_name
    except KeyError:
        return str(ident)
