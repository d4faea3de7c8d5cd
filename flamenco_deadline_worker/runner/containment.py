"""Task processes as one unit the worker can kill whole, whatever they do (``setsid``, double fork).

Three ways, best first; ``setup`` takes the best one this host allows and says which in the log:

- ``cgroup``: each command runs in its own cgroup v2 under ``<the worker's cgroup>/flamenco-worker-<tag>/``.
  The worker steps into the new cgroup for the instant of the fork, so the child is inside before it
  runs a single instruction; ``cgroup.kill`` ends every member at once and the cgroup outlives a
  killed worker, so the next start finds what it left.  Needs a writable cgroup v2 tree: root, or a
  systemd unit with ``Delegate=yes``.
- ``subreaper``: the worker is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so an orphaned task
  process is re-parented to the worker instead of init and stays in the worker's process tree; the
  unit is every descendant of the worker (in the worker process only task processes are its children).
- ``process-group``: the child's process group and descendants.  A process that calls ``setsid``
  and double-forks escapes it; the start-up log says so.

Every task process also carries ``FLAMENCO_TASK_UNIT=<tag>:...`` in its environment, and the worker
records itself in ``<home>/flamenco-worker.tasks.json``: a worker killed with SIGKILL leaves its task
processes running, and the next worker on that home kills them (by cgroup, else by that variable)
before it runs a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from flamenco_deadline_worker.atomicfile import write_atomic

log = logging.getLogger(__name__)

MODES = ("cgroup", "subreaper", "process-group")
UNIT_VARIABLE = "FLAMENCO_TASK_UNIT"
# Set (to 1) in the environment of a process meant to serve the later tasks of its job (the adaptor
# runtime's warm daemon): it outlives its command, and only that. It dies when a task of another job
# starts, on an abort, at shutdown, and with the worker (the next start kills it).
KEEP_VARIABLE = "FLAMENCO_TASK_KEEP"
RECORD_NAME = "flamenco-worker.tasks.json"
PR_SET_CHILD_SUBREAPER = 36
CGROUP_PREFIX = "flamenco-worker-"
# How long a kill waits for the unit to be empty (SIGKILL cannot be refused; this is for a loaded host).
KILL_WAIT_SECONDS = 10.0


# ---- /proc ------------------------------------------------------------------------------------------


@attrs.frozen
class ProcStat:
    pid: int
    state: str
    ppid: int
    pgid: int
    start: int  # clock ticks after boot: with the pid, names one process for good


def proc_stat(pid: int) -> ProcStat | None:
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        # The command name is in parentheses and may hold anything: split after its last ')'.
        fields = data.rsplit(b")", 1)[1].split()
        return ProcStat(pid, fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[19]))
    except (OSError, ValueError, IndexError):
        return None


def all_processes() -> list[ProcStat]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None:
                out.append(stat)
    return out


def live(stat: ProcStat) -> bool:
    return stat.state not in ("Z", "X")


def descendants(root: int, stats: list[ProcStat]) -> list[ProcStat]:
    children: dict[int, list[ProcStat]] = {}
    for s in stats:
        children.setdefault(s.ppid, []).append(s)
    out: list[ProcStat] = []
    todo = [root]
    while todo:
        for s in children.get(todo.pop(), []):
            if s.pid != root:
                out.append(s)
                todo.append(s.pid)
    return out


def variable_of(pid: int, name: str) -> str | None:
    """The value of ``name`` in ``pid``'s environment; None when absent or unreadable."""
    try:
        data = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    key = name.encode() + b"="
    for item in data.split(b"\0"):
        if item.startswith(key):
            return item[len(key):].decode("utf-8", "replace")
    return None


def unit_variable_of(pid: int) -> str | None:
    """The FLAMENCO_TASK_UNIT value in ``pid``'s environment; None when absent or unreadable."""
    return variable_of(pid, UNIT_VARIABLE)


def marked(prefix: str, stats: list[ProcStat] | None = None) -> list[int]:
    """Live processes whose FLAMENCO_TASK_UNIT starts with ``prefix`` (those we may read)."""
    me = os.getpid()
    return [
        s.pid for s in (stats if stats is not None else all_processes())
        if live(s) and s.pid != me and (unit_variable_of(s.pid) or "").startswith(prefix)
    ]


def _kill(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


# ---- cgroup v2 -------------------------------------------------------------------------------------


def cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup``, or ``.../unified`` on hybrid hosts)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def own_cgroup() -> str | None:
    """This process's cgroup v2 path ('0::/path' in /proc/self/cgroup)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return None


def cgroup_members(directory: Path) -> list[int]:
    pids: list[int] = []
    for current, _dirs, _files in os.walk(directory):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(p) for p in Path(current, "cgroup.procs").read_text().split()]
    return pids


def cgroup_populated(directory: Path) -> bool:
    try:
        return "populated 1" in (directory / "cgroup.events").read_text()
    except OSError:
        return False


def cgroup_kill_now(directory: Path) -> None:
    """Every process in ``directory`` and below gets SIGKILL (cgroup.kill, else one by one)."""
    try:
        (directory / "cgroup.kill").write_text("1")
        return
    except OSError:
        pass
    # Kernels before 5.14: freeze, so nothing forks while we go through the list, then kill.
    frozen = False
    with contextlib.suppress(OSError):
        (directory / "cgroup.freeze").write_text("1")
        frozen = True
    for pid in cgroup_members(directory):
        _kill(pid, signal.SIGKILL)
    if frozen:
        with contextlib.suppress(OSError):
            (directory / "cgroup.freeze").write_text("0")


def remove_cgroup_tree(directory: Path) -> bool:
    """rmdir ``directory`` and the cgroups below it, deepest first; False if one is still in use."""
    ok = True
    for current, _dirs, _files in sorted(os.walk(directory), key=lambda w: -len(w[0])):
        try:
            os.rmdir(current)
        except FileNotFoundError:
            pass
        except OSError:
            ok = False
    return ok


# ---- the unit of one command ------------------------------------------------------------------------


class Unit:
    """The processes of one command: its child (the leader) and everything that came from it."""

    def __init__(self, containment: Containment, index: int, cgroup: Path | None) -> None:
        self.containment = containment
        self.tag = f"{containment.tag}:{os.getpid()}:{index}"
        self.cgroup = cgroup
        self.leader: int | None = None
        self.job = containment.current_job
        self._emptied = False  # a kill found nothing left: close() need not look again
        self._kept_seen = False

    @contextlib.contextmanager
    def forking(self) -> Iterator[None]:
        """Around the fork of the leader: in cgroup mode the worker stands in the unit's cgroup, so the
        child is born inside it; it steps back out as soon as the event loop runs again."""
        if self.cgroup is None:
            yield
            return
        try:
            (self.cgroup / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as exc:
            log.warning("cannot enter cgroup %s (%s): this command is contained by its process tree only",
                        self.cgroup, exc)
            remove_cgroup_tree(self.cgroup)
            self.cgroup = None
            yield
            return
        self.containment.inside = self.cgroup
        asyncio.get_running_loop().call_soon(self.containment.step_out)
        try:
            yield
        finally:
            self.containment.step_out()

    def members(self, *, spare_kept: bool = False, stats: list[ProcStat] | None = None) -> list[int]:
        """Live processes of the unit, the leader included while it runs; without the job's kept
        processes (KEEP_VARIABLE, and what they started) when ``spare_kept``.  ``stats``: a /proc
        scan the caller already has."""
        if self.cgroup is not None:
            found = {pid for pid in cgroup_members(self.cgroup) if pid != os.getpid()}
        else:
            stats = stats if stats is not None else all_processes()
            found = self._tree_members(stats)
        if spare_kept and found:
            found -= self._kept(found, stats if stats is not None else all_processes())
        return sorted(found)

    def _kept(self, pids: set[int], stats: list[ProcStat]) -> set[int]:
        roots = {pid for pid in pids if variable_of(pid, KEEP_VARIABLE) == "1"}
        self._kept_seen = self._kept_seen or bool(roots)
        kept = set(roots)
        for root in roots:
            kept.update(s.pid for s in descendants(root, stats))
        return kept & pids

    def _tree_members(self, stats: list[ProcStat]) -> set[int]:
        found: set[int] = set()
        if self.containment.mode == "subreaper":
            # Every descendant of the worker, but those of another unit (a kept daemon of an earlier command).
            mine = f"{self.containment.tag}:"
            for s in descendants(os.getpid(), stats):
                tag = unit_variable_of(s.pid) if live(s) else None
                if live(s) and not (tag and tag.startswith(mine) and tag != self.tag):
                    found.add(s.pid)
        if self.leader is not None:
            found.update(s.pid for s in descendants(self.leader, stats) if live(s))
            found.update(s.pid for s in stats if s.pgid == self.leader and live(s))
            leader = proc_stat(self.leader)
            if leader is not None and live(leader):
                found.add(self.leader)
        if self.containment.mode != "subreaper":
            # Without the subreaper an escapee leaves the tree: find it by its variable (every
            # process's environment read: the costly part, so only here).
            found.update(marked(self.tag, stats))
        found.discard(os.getpid())
        return found

    def signal(self, sig: int) -> int:
        """Send ``sig`` to every member; how many got it."""
        return sum(_kill(pid, sig) for pid in self.members())

    def _cgroup_killable(self) -> bool:
        """cgroup.kill may be used: never while the worker itself stands in this cgroup."""
        if self.cgroup is None:
            return False
        self.containment.step_out()
        if self.containment.inside == self.cgroup:
            log.error("the worker is still in task cgroup %s: killing its members one by one", self.cgroup)
            return False
        return True

    def kill_now(self) -> None:
        """SIGKILL to every member, without waiting (the forced-exit path)."""
        if self._cgroup_killable():
            assert self.cgroup is not None
            cgroup_kill_now(self.cgroup)
        else:
            self.signal(signal.SIGKILL)

    async def kill(self, timeout: float = KILL_WAIT_SECONDS, *, spare_kept: bool = False) -> bool:
        """SIGKILL every member until none is left (one forking as we go is caught on the next
        round); True when the unit is empty.  ``spare_kept``: the end of a command, where the job's
        kept processes stay (see KEEP_VARIABLE)."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            if self.cgroup is not None and not spare_kept and self._cgroup_killable():
                if not cgroup_populated(self.cgroup):
                    return True
                cgroup_kill_now(self.cgroup)
            else:
                # One /proc scan a round: the adopted dead are reaped, the living killed.
                stats = all_processes()
                self.containment.reap_adopted(stats)
                members = self.members(spare_kept=spare_kept, stats=stats)
                if not members:
                    self._emptied = not spare_kept or not self._kept_seen
                    return True
                for pid in members:
                    _kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                log.warning("task processes still running %.0f s after SIGKILL: %s", timeout, self.members())
                return False
            await asyncio.sleep(delay)
            delay = min(0.1, delay * 2)

    def close(self) -> None:
        """The command is over: remove its cgroup and reap what the worker adopted.  A unit whose
        kept processes still run stays known (and its cgroup in place) until they are killed."""
        if self._emptied:
            left: list[int] = []
        elif self.cgroup is not None:
            left = self.members() if cgroup_populated(self.cgroup) else []
        else:
            stats = all_processes()
            self.containment.reap_adopted(stats)
            left = self.members(stats=stats)
        if left:
            if self in self.containment.units:
                log.info("processes of job %s kept for its next tasks (%s): %s", self.job, KEEP_VARIABLE,
                         ", ".join(map(str, left)))
            return
        if self.cgroup is not None:
            remove_cgroup_tree(self.cgroup)
        self.containment.units.discard(self)


# ---- the worker's containment ------------------------------------------------------------------------


@attrs.define(eq=False)
class Containment:
    """How this worker holds its task processes; one per worker process (see ``setup``)."""

    mode: str = "process-group"
    tag: str = "unset"
    cgroup_parent: Path | None = None  # cgroup mode: where the units' cgroups go
    home_cgroup: Path | None = None  # cgroup mode: the worker's own cgroup, to step back into
    inside: Path | None = None  # the unit cgroup the worker stands in during a fork
    units: set[Unit] = attrs.field(factory=set)
    spawned: set[int] = attrs.field(factory=set)  # leaders, reaped by asyncio: never by reap_adopted
    current_job: str | None = None
    _count: int = 0

    def new_unit(self) -> Unit:
        self._count += 1
        cgroup = None
        if self.cgroup_parent is not None:
            cgroup = self.cgroup_parent / f"task-{os.getpid()}-{self._count}"
            try:
                cgroup.mkdir()
            except OSError as exc:
                log.warning("cannot create cgroup %s (%s): this command is contained by its process tree only",
                            cgroup, exc)
                cgroup = None
        unit = Unit(self, self._count, cgroup)
        self.units.add(unit)
        return unit

    def step_out(self) -> None:
        """Back into the worker's own cgroup after a fork (idempotent)."""
        if self.inside is None or self.home_cgroup is None:
            return
        try:
            (self.home_cgroup / "cgroup.procs").write_text(str(os.getpid()))
            self.inside = None
        except OSError as exc:  # pragma: no cover - the probe in setup made the same move
            log.error("cannot leave task cgroup %s for %s: %s", self.inside, self.home_cgroup, exc)

    def job_starting(self, job: str) -> None:
        """A task of ``job`` starts: processes kept for another job's next tasks are killed."""
        self.current_job = job
        self.kill_kept_now(lambda unit: unit.job != job)

    def kill_kept_now(self, which: Callable[[Unit], bool] = lambda unit: True) -> None:
        """SIGKILL to the processes kept by ended commands (all, or those ``which`` picks)."""
        for unit in [u for u in self.units if u.leader is not None and which(u)]:
            if unit.cgroup is None or unit.containment.inside == unit.cgroup:
                unit.signal(signal.SIGKILL)
            else:
                cgroup_kill_now(unit.cgroup)
        self._settle()

    def _settle(self) -> None:
        """Wait (briefly: SIGKILL takes effect at once) for killed units to empty, then drop them."""
        deadline = time.monotonic() + 2.0
        for unit in list(self.units):
            while unit.cgroup is not None and cgroup_populated(unit.cgroup) and time.monotonic() < deadline:
                time.sleep(0.01)
            unit.close()

    def kill_all_now(self) -> None:
        """Forced exit: SIGKILL to every task process of every unit, at once."""
        self.step_out()
        for unit in list(self.units):
            unit.kill_now()
        self._settle()
        self.close()

    def close(self) -> None:
        """Clean exit: kept processes are killed; remove the worker's (empty) cgroup.  The record
        stays: its worker is no longer running, which is all the next start needs to know."""
        if self.units:
            self.kill_kept_now()
        if self.cgroup_parent is not None:
            remove_cgroup_tree(self.cgroup_parent)

    def reap_adopted(self, stats: list[ProcStat] | None = None) -> None:
        """Subreaper mode: collect orphans that were re-parented to the worker and have exited.

        Only pids the worker did not spawn itself: those asyncio waits for."""
        if self.mode != "subreaper":
            return
        me = os.getpid()
        for stat in stats if stats is not None else all_processes():
            if stat.ppid == me and not live(stat) and stat.pid not in self.spawned:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(stat.pid, os.WNOHANG)


_active = Containment()


def active() -> Containment:
    """The containment ``setup`` installed; the process-group kind until then (library use, tests)."""
    return _active


def home_tag(home: Path) -> str:
    return hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]


def setup(home: Path, wanted: str = "auto") -> Containment:
    """Choose how task processes are held (``wanted``: 'auto' or one of MODES, the best one tried
    first), kill what a previous worker on ``home`` left running, and record this worker."""
    global _active
    tag = home_tag(home)
    order = list(MODES) if wanted == "auto" else list(MODES[MODES.index(wanted):])
    containment = Containment(tag=tag)
    reasons: list[str] = []
    for mode in order:
        problem = _try_mode(containment, mode)
        if problem is None:
            containment.mode = mode
            break
        reasons.append(f"{mode}: {problem}")
    sweep_leftovers(home, containment)
    write_record(home, containment)
    _active = containment
    if containment.mode == "cgroup":
        log.info("task processes are contained in cgroup v2 %s (one cgroup per command, cgroup.kill)",
                 containment.cgroup_parent)
    elif containment.mode == "subreaper":
        log.info("task processes are contained by the worker as child subreaper (PR_SET_CHILD_SUBREAPER) "
                 "and its process tree (%s)", "; ".join(reasons))
    else:
        log.warning("task processes are contained by process group only: a process that calls setsid and "
                    "forks twice can outlive its task (%s)", "; ".join(reasons))
    return containment


def _try_mode(containment: Containment, mode: str) -> str | None:
    """Set ``containment`` up for ``mode``; None when it works, else why not."""
    if mode == "process-group":
        return None
    if mode == "subreaper":
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                return f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}"
        except (OSError, AttributeError) as exc:
            return f"prctl not available: {exc}"
        return None
    mount, own = cgroup2_mount(), own_cgroup()
    if mount is None or own is None:
        return "no cgroup v2 hierarchy"
    home_cgroup = mount / own.lstrip("/")
    parent = home_cgroup / f"{CGROUP_PREFIX}{containment.tag}"
    try:
        parent.mkdir(exist_ok=True)
        probe = parent / f"probe-{os.getpid()}"
        probe.mkdir(exist_ok=True)
        try:
            # The one move the worker makes for every command, tried once here.
            (probe / "cgroup.procs").write_text(str(os.getpid()))
            (home_cgroup / "cgroup.procs").write_text(str(os.getpid()))
        finally:
            remove_cgroup_tree(probe)
    except OSError as exc:
        return f"cannot use {home_cgroup}: {exc.strerror or exc}"
    containment.cgroup_parent = parent
    containment.home_cgroup = home_cgroup
    return None


# ---- what a killed worker left behind -----------------------------------------------------------------


def write_record(home: Path, containment: Containment) -> None:
    me = proc_stat(os.getpid())
    record = {
        "pid": os.getpid(),
        "start": me.start if me else 0,
        "tag": containment.tag,
        "mode": containment.mode,
        "cgroup": str(containment.cgroup_parent) if containment.cgroup_parent else None,
    }
    try:
        write_atomic(home / RECORD_NAME, json.dumps(record) + "\n", 0o600)
    except OSError as exc:
        log.warning("cannot write %s: %s (task processes left by a crash will not be found)",
                    home / RECORD_NAME, exc)


def sweep_leftovers(home: Path, containment: Containment) -> list[int]:
    """Kill the task processes a previous worker on ``home`` left running; the pids killed."""
    record: dict[str, object] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads((home / RECORD_NAME).read_text())
        if isinstance(loaded, dict):
            record = loaded
    pid = record.get("pid")
    if isinstance(pid, int) and pid != os.getpid():
        previous = proc_stat(pid)
        if previous is not None and live(previous) and previous.start == record.get("start"):
            log.warning("worker pid %d still runs with home %s: its task processes are left alone", pid, home)
            return []
    killed: list[int] = []
    cgroups = {containment.cgroup_parent}
    if isinstance(record.get("cgroup"), str):
        cgroups.add(Path(str(record["cgroup"])))
    mount, own = cgroup2_mount(), own_cgroup()
    if mount is not None and own is not None:
        cgroups.add(mount / own.lstrip("/") / f"{CGROUP_PREFIX}{containment.tag}")
    for directory in cgroups:
        if directory is None or not directory.is_dir():
            continue
        killed += cgroup_members(directory)
        cgroup_kill_now(directory)
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        while cgroup_populated(directory) and time.monotonic() < deadline:
            time.sleep(0.01)
        for child in directory.iterdir():
            if child.is_dir():
                remove_cgroup_tree(child)
    for _ in range(100):  # processes carrying this home's unit variable (any mode); until none is left
        found = marked(f"{containment.tag}:")
        if not found:
            break
        for leftover in found:
            if _kill(leftover, signal.SIGKILL):
                killed.append(leftover)
        time.sleep(0.01)
    killed = sorted(set(killed))
    if killed:
        log.warning("killed %d task process(es) left running by a worker that did not stop cleanly "
                    "(pid %s): %s", len(killed), pid, ", ".join(map(str, killed)))
    return killed
