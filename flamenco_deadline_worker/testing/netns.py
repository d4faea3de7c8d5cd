"""Run a command in a network namespace that has nothing but loopback.

The real AWS worker agent probes EC2 instance metadata (169.254.169.254) by itself, at start and
every few seconds for spot notices, whatever its environment says.  Tests and benchmarks that run
it must not let a packet leave the machine, so they run it (and the emulator it talks to) inside a
fresh network namespace where the only interface is ``lo``:

    command = loopback_only_command([sys.executable, "-m", "some.driver", ...])
    subprocess.run(command, ...)

The command is util-linux ``unshare --net`` (with ``--map-root-user``, a user namespace of its
own, when plain ``--net`` is not allowed), then this module, which brings ``lo`` up, refuses to go on if any other
interface exists or any route leads elsewhere, and replaces itself with the given command.
``namespace_problem()`` says why such a namespace cannot be made here, or None.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import socket
import struct
import subprocess
import sys

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = "16sh22x"  # struct ifreq: the name, then ifr_flags in a 24-byte union


def _prefixes() -> list[list[str]]:
    """``unshare`` with a new network namespace: as is when root, then in a user namespace of its
    own (unprivileged, or root in a container without CAP_SYS_ADMIN)."""
    exe = shutil.which("unshare")
    if exe is None:
        raise FileNotFoundError("util-linux's 'unshare' is not on PATH")
    plain, user_ns = [exe, "--net", "--"], [exe, "--net", "--map-root-user", "--"]
    return [plain, user_ns] if os.geteuid() == 0 else [user_ns]


def _wrap(prefix: list[str], argv: list[str]) -> list[str]:
    return [*prefix, sys.executable, "-m", __name__, "--", *argv]


@functools.cache
def _probe() -> tuple[list[str] | None, str]:
    """The first ``unshare`` prefix that makes a loopback-only namespace here, or why none does."""
    try:
        prefixes = _prefixes()
    except FileNotFoundError as exc:
        return None, str(exc)
    problems = []
    for prefix in prefixes:
        command = _wrap(prefix, [sys.executable, "-c", "pass"])
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            problems.append(f"{' '.join(prefix[1:-1])}: {exc}")
            continue
        if done.returncode == 0:
            return prefix, ""
        why = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()[-1]
        problems.append(f"unshare {' '.join(prefix[1:-1])}: {why}")
    return None, "cannot make a loopback-only network namespace (" + "; ".join(problems) + ")"


def namespace_problem() -> str | None:
    """Why a loopback-only network namespace cannot be made here, or None when it can."""
    prefix, problem = _probe()
    return None if prefix is not None else problem


def loopback_only_command(argv: list[str]) -> list[str]:
    """``argv`` wrapped so that it runs in a new network namespace with only ``lo``, and ``lo`` up.
    Raises RuntimeError (with the reason) where no such namespace can be made."""
    prefix, problem = _probe()
    if prefix is None:
        raise RuntimeError(problem)
    return _wrap(prefix, argv)


def bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(_IFREQ, b"lo", 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def ipv4_routes() -> list[str]:
    """The interfaces of this namespace's IPv4 routing table (the main table: /proc/net/route)."""
    with open("/proc/net/route") as table:
        return [line.split()[0] for line in table.read().splitlines()[1:] if line.strip()]


def loopback_only_problem() -> str | None:
    """Why this process's network namespace is not loopback-only, or None when it is."""
    others = [name for name in interfaces() if name != "lo"]
    if others:
        return f"network interfaces other than lo: {', '.join(others)}"
    routes = [name for name in ipv4_routes() if name != "lo"]
    if routes:
        return f"IPv4 routes through {', '.join(routes)}"
    return None


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m flamenco_deadline_worker.testing.netns -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    problem = loopback_only_problem()
    if problem is not None:  # run outside a fresh namespace by mistake: refuse rather than leak
        print(f"refusing to run {argv[0]!r}: this is not a loopback-only namespace ({problem})", file=sys.stderr)
        return 3
    bring_loopback_up()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"cannot run {argv[0]!r}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
