"""`flamenco-worker install` / `uninstall`: set up this Linux host to run the worker as a systemd service.

The work is a list of steps (data), so ``--dry-run`` prints exactly what would be done.  With
``--root DIR`` every file goes under DIR (a staging tree for tests and image builders): users and
groups are not created and systemctl is not run (both are printed), the unit is enabled by its
symlink, and ownership is set only for users and groups that already exist.  Every step checks the
current state first, so running the installer again changes nothing that is already right.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs

from flamenco_deadline_worker import config as cfg
from flamenco_deadline_worker.atomicfile import write_atomic

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

UNIT_NAME = "flamenco-worker.service"
DEFAULT_USER = "flamenco-worker"
DEFAULT_JOB_GROUP = "flamenco-jobs"
CONFIG_DIR = Path("/etc/flamenco-worker")
STATE_DIR = Path("/var/lib/flamenco-worker")
LOGS_DIR = Path("/var/log/flamenco-worker")
# Task working directories: outside the 0700 state directory, so a job user can reach its own.
WORK_DIR = Path("/var/lib/flamenco-worker-tasks")
# Deadline session directories, for the same reason: the queues' job users pass through (0711).
SESSIONS_DIR = Path("/var/lib/flamenco-worker-sessions")
UNIT_DIR = Path("/etc/systemd/system")
SUDOERS_FILE = Path("/etc/sudoers.d/flamenco-worker")
CONFIG_NAME = "flamenco-worker.cfg"
DEFAULT_EXEC = "/usr/local/bin/flamenco-worker"
# The worker's own shutdown bound: shutdown_flush_seconds (10) + sign-off (10) + kill grace (10).
STOP_TIMEOUT_SECONDS = 90
WATCHDOG_SECONDS = 120
# Exit codes meaning "stopped on purpose": bad configuration, credentials refused, forced stop.
NO_RESTART_CODES = (2, 3, 4)


def unit_text(
    *,
    exec_start: str = DEFAULT_EXEC,
    user: str = DEFAULT_USER,
    group: str = DEFAULT_USER,
    job_group: str = DEFAULT_JOB_GROUP,
    home: Path = STATE_DIR,
    logs_dir: Path = LOGS_DIR,
    restart_exit_code: int = 47,
    allow_sudo: bool = True,
) -> str:
    """The systemd unit.  ``allow_sudo=False`` adds NoNewPrivileges (only right without job_user)."""
    no_new_privs = "" if allow_sudo else "NoNewPrivileges=yes\n"
    return f"""\
# flamenco-worker: render-farm worker agent for Flamenco 3 Managers and AWS Deadline Cloud.
# Written by `flamenco-worker install`; configuration lives in /etc/flamenco-worker/flamenco-worker.cfg.
[Unit]
Description=Flamenco / Deadline Cloud render worker (flamenco-deadline-worker)
Wants=network-online.target
After=network-online.target remote-fs.target nss-user-lookup.target

[Service]
# The worker sends READY=1 once signed on, STATUS= with its current task, WATCHDOG=1 from its
# event loop and STOPPING=1 when it shuts down.
Type=notify
NotifyAccess=main
ExecStart={exec_start} --home {home}
User={user}
Group={group}
SupplementaryGroups={job_group}
Environment=FLAMENCO_WORKER_HOME={home}
Environment=FLAMENCO_WORKER_LOGS_DIR={logs_dir}
Environment=PYTHONUNBUFFERED=1
WorkingDirectory={home}
UMask=0027
# Sign-on waits for the Manager as long as it takes; the watchdog guards the running worker.
TimeoutStartSec=infinity
WatchdogSec={WATCHDOG_SECONDS}
Restart=on-failure
RestartSec=10
# The Manager asked for a restart:
RestartForceExitStatus={restart_exit_code}
# Stopped on purpose (2 bad configuration, 3 credentials refused, 4 forced by a second signal):
RestartPreventExitStatus={" ".join(str(c) for c in NO_RESTART_CODES)}
# SIGTERM to the worker only; it stops its tasks' processes, flushes updates and signs off.
# Whatever is left when TimeoutStopSec runs out gets SIGKILL.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec={STOP_TIMEOUT_SECONDS}
LimitNOFILE=65536
# Hardening that leaves rendering alone: renders read and write shared storage, /tmp and /var/tmp,
# may use every CPU, GPU and all memory; task processes may run as the job user through sudo.
{no_new_privs}ProtectSystem=full
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictRealtime=yes
LockPersonality=yes

[Install]
WantedBy=multi-user.target
"""


def config_text(values: dict[str, Any]) -> str:
    import json

    lines = [
        "# flamenco-worker configuration, written by `flamenco-worker install`.",
        "# Every key, with its default and meaning: see worker.cfg.example.",
        "# Credentials are saved by the worker in its home (/var/lib/flamenco-worker/.flamenco-worker.cfg, 0600).",
        "",
        "[flamenco-worker]",
    ]
    for key, value in values.items():
        # JSON's strings, numbers, true/false and lists of strings are also TOML.
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


# ---- steps ------------------------------------------------------------------------------------


class Context:
    def __init__(self, root: Path | None, dry_run: bool, out: list[str]) -> None:
        self.root = root
        self.dry_run = dry_run
        self.out = out

    def path(self, p: Path) -> Path:
        return self.root / p.relative_to("/") if self.root is not None else p

    def say(self, line: str) -> None:
        self.out.append(line)
        print(line, flush=True)

    def ids(self, user: str | None, group: str | None) -> tuple[int, int] | None:
        """Numeric ids for chown: from the staging tree's passwd/group, else this host's; None if unknown."""
        uid = gid = -1
        if user:
            found = self._lookup("passwd", user)
            if found is None:
                try:
                    found = pwd.getpwnam(user).pw_uid
                except KeyError:
                    return None
            uid = found
        if group:
            found = self._lookup("group", group)
            if found is None:
                try:
                    found = grp.getgrnam(group).gr_gid
                except KeyError:
                    return None
            gid = found
        return uid, gid

    def _lookup(self, db: str, name: str) -> int | None:
        if self.root is None:
            return None
        table = self.root / "etc" / db
        if not table.exists():
            return None
        for line in table.read_text().splitlines():
            parts = line.split(":")
            if len(parts) > 2 and parts[0] == name and parts[2].isdigit():
                return int(parts[2])
        return None


class Step(Protocol):
    def describe(self) -> str: ...

    def skipped_with_root(self) -> bool:
        """True for steps that touch the host itself (users, groups, systemctl): --root only prints them."""
        ...

    def apply(self, ctx: Context) -> str:
        """Do it (unless already done); returns what happened, for the log."""
        ...


def _chown(ctx: Context, target: Path, owner: str | None, group: str | None) -> str:
    if owner is None and group is None:
        return ""
    ids = ctx.ids(owner, group)
    if ids is None:
        if ctx.root is None:
            raise InstallError(f"cannot set owner of {target}: user {owner!r} or group {group!r} does not exist")
        return f" (owner {owner}:{group} not set: unknown in the staging tree and on this host)"
    if os.geteuid() != 0:
        st = target.lstat()
        if (ids[0] in (-1, st.st_uid)) and (ids[1] in (-1, st.st_gid)):
            return ""
        return f" (owner {owner}:{group} not set: not running as root)"
    os.chown(target, ids[0], ids[1], follow_symlinks=False)
    return ""


class InstallError(Exception):
    pass


class _HostStep:
    """A step that changes this host itself (users, groups, services), never a staging tree."""

    def skipped_with_root(self) -> bool:
        return True


class _TreeStep:
    """A step that writes files, under --root when given."""

    def skipped_with_root(self) -> bool:
        return False


@attrs.frozen
class Group(_HostStep):
    name: str

    def describe(self) -> str:
        return f"create group {self.name} (groupadd --system {self.name})"

    def apply(self, ctx: Context) -> str:
        if ctx.ids(None, self.name) is not None and ctx.root is None:
            return f"group {self.name} exists"
        if ctx.root is not None:
            return f"skipped with --root: would run groupadd --system {self.name}"
        _run(["groupadd", "--system", self.name])
        return f"created group {self.name}"


@attrs.frozen
class User(_HostStep):
    name: str
    home: Path
    groups: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        argv = ["useradd", "--system", "--home-dir", str(self.home), "--no-create-home",
                "--shell", "/usr/sbin/nologin", "--user-group"]
        if self.groups:
            argv += ["--groups", ",".join(self.groups)]
        return [*argv, self.name]

    def describe(self) -> str:
        return f"create user {self.name} ({shlex.join(self.argv())})"

    def apply(self, ctx: Context) -> str:
        if ctx.root is not None:
            return f"skipped with --root: would run {shlex.join(self.argv())}"
        if ctx.ids(self.name, None) is not None:
            for group in self.groups:
                if self.name not in grp.getgrnam(group).gr_mem:
                    _run(["usermod", "--append", "--groups", group, self.name])
            return f"user {self.name} exists"
        _run(self.argv())
        return f"created user {self.name}"


@attrs.frozen
class Directory(_TreeStep):
    path: Path
    mode: int
    owner: str | None = None
    group: str | None = None

    def describe(self) -> str:
        return f"directory {self.path} mode {self.mode:04o} owner {self.owner or '-'}:{self.group or '-'}"

    def apply(self, ctx: Context) -> str:
        target = ctx.path(self.path)
        existed = target.is_dir()
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target, self.mode)
        note = _chown(ctx, target, self.owner, self.group)
        return f"{'kept' if existed else 'created'} {target} ({self.mode:04o}){note}"


@attrs.frozen
class File(_TreeStep):
    path: Path
    content: str = attrs.field(repr=False)
    mode: int
    owner: str | None = None
    group: str | None = None
    keep_existing: bool = False

    def describe(self) -> str:
        keep = ", kept if it exists" if self.keep_existing else ""
        return f"file {self.path} mode {self.mode:04o} owner {self.owner or '-'}:{self.group or '-'}{keep}"

    def apply(self, ctx: Context) -> str:
        target = ctx.path(self.path)
        if target.exists() and self.keep_existing:
            return f"kept existing {target} (use --overwrite-config to replace it)"
        unchanged = target.exists() and target.read_text(encoding="utf-8") == self.content
        if not unchanged:
            write_atomic(target, self.content, self.mode, prepare=lambda tmp: _chown(ctx, tmp, self.owner, self.group))
        os.chmod(target, self.mode)
        note = _chown(ctx, target, self.owner, self.group)
        return f"{'unchanged' if unchanged else 'wrote'} {target} ({self.mode:04o}){note}"


@attrs.frozen
class Symlink(_TreeStep):
    path: Path
    target: Path

    def describe(self) -> str:
        return f"symlink {self.path} -> {self.target}"

    def apply(self, ctx: Context) -> str:
        link = ctx.path(self.path)
        if link.is_symlink() and Path(os.readlink(link)) == self.target:
            return f"kept {link}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(self.target)
        return f"linked {link} -> {self.target}"


@attrs.frozen
class Remove(_TreeStep):
    path: Path
    tree: bool = False

    def describe(self) -> str:
        return f"remove {self.path}" + (" and everything in it" if self.tree else "")

    def apply(self, ctx: Context) -> str:
        target = ctx.path(self.path)
        if not (target.exists() or target.is_symlink()):
            return f"{target} is already gone"
        if self.tree and target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
        return f"removed {target}"


@attrs.frozen
class Command(_HostStep):
    argv: tuple[str, ...]
    check: bool = True

    def describe(self) -> str:
        return f"run {shlex.join(self.argv)}"

    def apply(self, ctx: Context) -> str:
        if ctx.root is not None:
            return f"skipped with --root: would run {shlex.join(self.argv)}"
        if shutil.which(self.argv[0]) is None:
            if self.check:
                raise InstallError(f"{self.argv[0]} not found: is this a systemd host?")
            return f"skipped: {self.argv[0]} not found"
        _run(list(self.argv), check=self.check)
        return f"ran {shlex.join(self.argv)}"


def _run(argv: list[str], check: bool = True) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0 and check:
        raise InstallError(f"{shlex.join(argv)} failed with code {result.returncode}: "
                           f"{(result.stderr or result.stdout).strip()}")


# ---- plans ------------------------------------------------------------------------------------


def default_exec() -> str:
    """The flamenco-worker of this installation (the venv the installer runs from)."""
    script = Path(sys.executable).parent / "flamenco-worker"
    if script.exists():
        return str(script)
    return f"{sys.executable} -m flamenco_deadline_worker"


def install_plan(args: argparse.Namespace, settings: dict[str, Any] | None = None) -> list[Step]:
    """The steps; ``settings`` are the --set values, already parsed (see ``parse_settings``)."""
    user, job_group = args.user, args.job_group
    config: dict[str, Any] = {"backend": args.backend}
    if args.manager:
        config["manager_url"] = args.manager
    if args.farm_id:
        config["farm_id"] = args.farm_id
    if args.fleet_id:
        config["fleet_id"] = args.fleet_id
    if args.job_user:
        config["job_user"] = args.job_user
    if args.worker_name:
        config["worker_name"] = args.worker_name
    config["logs_dir"] = str(LOGS_DIR)
    config["work_dir"] = str(WORK_DIR)
    deadline = args.backend == "deadline"
    if deadline:
        config["session_root_dir"] = str(SESSIONS_DIR)
    config.update(settings or {})
    # Deadline sessions run as their queue's job user through sudo, unless every job runs as the agent.
    queue_users = deadline and not config.get("deadline_run_jobs_as_agent_user", False)

    unit = unit_text(
        exec_start=args.exec or default_exec(), user=user, group=user, job_group=job_group,
        allow_sudo=bool(args.job_user) or queue_users,
    )
    unit_path = UNIT_DIR / UNIT_NAME
    steps: list[Step] = [
        Group(job_group),
        User(user, STATE_DIR, groups=(job_group,)),
    ]
    if args.job_user:
        steps.append(User(args.job_user, Path("/home") / args.job_user, groups=(job_group,)))
    steps += [
        Directory(CONFIG_DIR, 0o750, "root", user),
        File(CONFIG_DIR / CONFIG_NAME, config_text(config), 0o640, "root", user,
             keep_existing=not args.overwrite_config),
        Directory(STATE_DIR, 0o700, user, user),
        Directory(LOGS_DIR, 0o750, user, user),
        Directory(WORK_DIR, 0o750, user, job_group),
    ]
    if deadline and Path(config["session_root_dir"]).is_absolute():
        steps.append(Directory(Path(config["session_root_dir"]), 0o711, user, user))
    if args.job_user:
        rule = f"{user} ALL=({args.job_user}) NOPASSWD: ALL\n"
        steps.append(File(SUDOERS_FILE, f"# flamenco-worker runs task processes as {args.job_user}\n{rule}",
                          0o440, "root", "root"))
    steps.append(File(unit_path, unit, 0o644, "root", "root"))
    if args.root is not None:
        steps.append(Symlink(UNIT_DIR / "multi-user.target.wants" / UNIT_NAME, unit_path))
    else:
        steps += [Command(("systemctl", "daemon-reload")), Command(("systemctl", "enable", UNIT_NAME))]
    if args.start:
        # --no-block: the unit is "activating" until the worker has signed on to its Manager.
        steps.append(Command(("systemctl", "restart", "--no-block", UNIT_NAME)))
    return steps


def uninstall_plan(args: argparse.Namespace) -> list[Step]:
    steps: list[Step] = []
    if args.root is None:
        steps.append(Command(("systemctl", "disable", "--now", UNIT_NAME), check=False))
    steps += [
        Remove(UNIT_DIR / "multi-user.target.wants" / UNIT_NAME),
        Remove(UNIT_DIR / UNIT_NAME),
        Remove(SUDOERS_FILE),
    ]
    if args.root is None:
        steps.append(Command(("systemctl", "daemon-reload"), check=False))
    if not args.keep_config:
        steps.append(Remove(CONFIG_DIR, tree=True))
    if args.purge:
        steps += [Remove(STATE_DIR, tree=True), Remove(LOGS_DIR, tree=True), Remove(WORK_DIR, tree=True),
                  Command(("userdel", args.user), check=False), Command(("groupdel", args.job_group), check=False)]
    return steps


def run_plan(steps: Sequence[Step], *, root: Path | None, dry_run: bool) -> int:
    out: list[str] = []
    ctx = Context(root, dry_run, out)
    where = f" under {root}" if root is not None else ""
    if dry_run:
        ctx.say(f"dry run: these {len(steps)} steps would run{where}:")
        for i, step in enumerate(steps, 1):
            skipped = root is not None and step.skipped_with_root()
            ctx.say(f"  {i}. " + (f"skipped with --root, only printed: {step.describe()}" if skipped
                                  else step.describe()))
        return EXIT_OK
    for i, step in enumerate(steps, 1):
        try:
            result = step.apply(ctx)
        except (InstallError, OSError) as exc:
            print(f"flamenco-worker: step {i} ({step.describe()}) failed: {exc}", file=sys.stderr)
            return EXIT_FAILED
        ctx.say(f"{i}. {result}")
    return EXIT_OK


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", default=DEFAULT_USER, help=f"service user (default {DEFAULT_USER})")
    p.add_argument("--job-group", default=DEFAULT_JOB_GROUP,
                   help=f"group shared by the service user and the job user (default {DEFAULT_JOB_GROUP})")
    p.add_argument("--root", type=Path, metavar="DIR",
                   help="install into this staging tree; create no users, run no systemctl")
    p.add_argument("--dry-run", action="store_true", help="print every step without doing anything")


def _check_host(args: argparse.Namespace, what: str) -> int | None:
    if not sys.platform.startswith("linux"):
        print(f"flamenco-worker {what}: only Linux hosts are supported", file=sys.stderr)
        return EXIT_USAGE
    if args.root is None and not args.dry_run and os.geteuid() != 0:
        print(f"flamenco-worker {what}: run as root (or use --root DIR / --dry-run)", file=sys.stderr)
        return EXIT_USAGE
    return None


def install_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="flamenco-worker install",
        description="Set this Linux host up to run the worker as a systemd service: service user and job group, "
        f"{CONFIG_DIR} (0750), {STATE_DIR} (0700), {LOGS_DIR} (0750), the configuration and the unit.")
    p.add_argument("--manager", metavar="URL", help="Flamenco Manager URL")
    p.add_argument("--backend", choices=("flamenco", "deadline"), default="flamenco")
    p.add_argument("--farm-id", help="Deadline Cloud farm id")
    p.add_argument("--fleet-id", help="Deadline Cloud fleet id")
    p.add_argument("--job-user", help="run task processes as this user (created if missing; sudo rule written)")
    p.add_argument("--worker-name", help="name shown in the Manager (default: host name)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other configuration key (repeatable)")
    p.add_argument("--exec", metavar="PATH", help="flamenco-worker command for ExecStart (default: this one)")
    p.add_argument("--overwrite-config", action="store_true", help="replace an existing configuration file")
    p.add_argument("--start", action="store_true", help="start (or restart) the service at the end")
    _common(p)
    args = p.parse_args(argv)
    problem = _check_host(args, "install")
    if problem is not None:
        return problem
    try:
        settings = parse_settings(args.set or ())
        _validate(args, settings)
    except cfg.ConfigError as exc:
        print(f"flamenco-worker install: {exc}", file=sys.stderr)
        return EXIT_USAGE
    busy = _home_in_use(args, "install")
    if busy is not None:
        return busy
    return run_plan(install_plan(args, settings), root=args.root, dry_run=args.dry_run)


def _in_service(pid: int) -> bool:
    try:
        return UNIT_NAME in Path(f"/proc/{pid}/cgroup").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _home_in_use(args: argparse.Namespace, what: str) -> int | None:
    """One worker per home: a worker started by hand on the service's home would make the service
    exit 2 (install --start), or lose its files under it (uninstall --purge): refuse those, warn otherwise."""
    from flamenco_deadline_worker.upstream.homelock import holder

    home = args.root / STATE_DIR.relative_to("/") if args.root is not None else STATE_DIR
    pid = holder(home)
    if pid is None or (what == "uninstall" and not args.purge):
        return None
    if pid and _in_service(pid):
        if not getattr(args, "start", False) and what == "install":
            print(f"flamenco-worker {what}: note: the service's worker (pid {pid}) is running; it keeps its "
                  f"old settings until 'systemctl restart {UNIT_NAME}' (or install --start).", file=sys.stderr)
        return None
    holder_text = f"pid {pid}" if pid else "a process"
    refuse = getattr(args, "start", False) or getattr(args, "purge", False)
    consequence = ("the service would exit 2 beside it" if what == "install"
                   else "--purge would remove its files under it")
    print(f"flamenco-worker {what}: {'error' if refuse else 'warning'}: a worker not run by {UNIT_NAME} "
          f"({holder_text}) is running with home {home}; one worker per home, so {consequence}. "
          "Stop it first.", file=sys.stderr)
    return EXIT_USAGE if refuse and not args.dry_run else None


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """The --set KEY=VALUE items, each parsed and checked like the worker checks its configuration."""
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in cfg.KEYS_BY_NAME:
            raise cfg.ConfigError(f"--set {item!r}: expected KEY=VALUE with a key from worker.cfg.example")
        if cfg.KEYS_BY_NAME[key].secret:
            raise cfg.ConfigError(f"--set {key}: credentials are written by the worker itself, not by the installer")
        settings[key] = cfg.parse_text(key, value.strip(), f"--set {key}")
    return settings


def _validate(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    """Check the configuration the flags make with the worker's own rules; ConfigError names the flag."""
    overrides: dict[str, Any] = {**settings, "backend": args.backend}
    for key, flag_value in (("manager_url", args.manager), ("farm_id", args.farm_id),
                            ("fleet_id", args.fleet_id), ("job_user", args.job_user)):
        if flag_value is not None:
            overrides[key] = flag_value
    # Flamenco without --manager is allowed: the worker finds its Manager by UPnP/SSDP, as Flamenco 3 does.
    if args.backend == "deadline" and not (overrides.get("farm_id") and overrides.get("fleet_id")):
        raise cfg.ConfigError("--farm-id and --fleet-id are required with --backend deadline "
                              "(the farm_id and fleet_id of the customer-managed fleet)")
    # Only the flags are checked: a home without files keeps this host's configuration out of it.
    cfg.load(config_files=[], home=Path("/nonexistent-flamenco-worker-home"), overrides=overrides, environ={})


def uninstall_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="flamenco-worker uninstall",
        description=f"Stop and remove the service and {CONFIG_DIR}; keeps {STATE_DIR} (credentials, queue) and "
        f"{LOGS_DIR} unless --purge.")
    p.add_argument("--keep-config", action="store_true", help=f"keep {CONFIG_DIR}")
    p.add_argument("--purge", action="store_true",
                   help="also remove state (credentials, undelivered updates), logs, the user and the job group")
    _common(p)
    args = p.parse_args(argv)
    problem = _check_host(args, "uninstall")
    if problem is not None:
        return problem
    busy = _home_in_use(args, "uninstall")
    if busy is not None:
        return busy
    return run_plan(uninstall_plan(args), root=args.root, dry_run=args.dry_run)
