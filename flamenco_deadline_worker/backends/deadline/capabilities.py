"""The worker's capabilities for Deadline Cloud: what this host has, as OpenJD names it.

Detected at start (the AWS agent's names and units): ``amount.worker.vcpu`` (logical CPUs),
``amount.worker.memory`` (MiB of RAM), ``amount.worker.disk.scratch`` (MiB free where sessions run),
``amount.worker.gpu`` and ``amount.worker.gpu.memory`` (GPU count and the smallest GPU's MiB, only
when ``nvidia-smi`` answers), ``attr.worker.os.family`` and ``attr.worker.cpu.arch``.  The
``[capabilities]`` configuration table (config.py) adds names and overrides detected values.

Detection never stops the worker: anything that cannot be read is left out with a warning.  The
service matches a job's host requirements against what UpdateWorker sent.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MIN_EACH = 2  # UpdateWorker takes 2 to 17 amounts and 2 to 17 attributes
NVIDIA_SMI_TIMEOUT = 10.0  # seconds; a hung driver must not hold the start-up for long
GPU_QUERY = ("--query-gpu=memory.total", "--format=csv,noheader,nounits")

OS_FAMILIES = {"linux": "linux", "darwin": "macos", "windows": "windows"}
CPU_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


@attrs.frozen
class Capabilities:
    amounts: Mapping[str, float]
    attributes: Mapping[str, tuple[str, ...]]

    def merged(self, amounts: Mapping[str, float], attributes: Mapping[str, Sequence[str]]) -> Capabilities:
        """These, with ``amounts`` and ``attributes`` (from the configuration) added or replacing."""
        return Capabilities(
            {**self.amounts, **amounts},
            {**self.attributes, **{name: tuple(values) for name, values in attributes.items()}},
        )

    def for_update_worker(self) -> dict[str, Any]:
        """The ``capabilities`` member of UpdateWorker (WorkerCapabilities in the service model)."""
        return {
            "amounts": [{"name": n, "value": float(v)} for n, v in sorted(self.amounts.items())],
            "attributes": [{"name": n, "values": list(v)} for n, v in sorted(self.attributes.items())],
        }

    def for_update_worker_if_complete(self) -> dict[str, Any] | None:
        """As ``for_update_worker``, or None (with a warning) when there are fewer than the service's
        minimum of two amounts and two attributes: UpdateWorker would be refused."""
        if len(self.amounts) >= MIN_EACH and len(self.attributes) >= MIN_EACH:
            return self.for_update_worker()
        log.warning("capabilities: only %d amount(s) and %d attribute(s) known, the service needs %d of each; "
                    "none are sent (add them in [capabilities.amounts] and [capabilities.attributes])",
                    len(self.amounts), len(self.attributes), MIN_EACH)
        return None

    def for_status(self) -> dict[str, Any]:
        """As `flamenco-worker status --json` shows them: name -> value (or values)."""
        return {"amounts": dict(sorted(self.amounts.items())),
                "attributes": {n: list(v) for n, v in sorted(self.attributes.items())}}


def detect(scratch_dir: Path, nvidia_smi_timeout: float = NVIDIA_SMI_TIMEOUT) -> Capabilities:
    """This host's capabilities; a part that cannot be read is left out, with a warning."""
    amounts: dict[str, float] = {}
    attributes: dict[str, tuple[str, ...]] = {}
    family = OS_FAMILIES.get(platform.system().lower())
    if family:
        attributes["attr.worker.os.family"] = (family,)
    else:
        log.warning("capabilities: unknown operating system %r; attr.worker.os.family not reported", platform.system())
    machine = platform.machine().lower()
    arch = CPU_ARCHES.get(machine, machine)
    if arch:
        attributes["attr.worker.cpu.arch"] = (arch,)
    cpus = os.cpu_count()
    if cpus:
        amounts["amount.worker.vcpu"] = float(cpus)
    memory = _memory_mib()
    if memory is not None:
        amounts["amount.worker.memory"] = memory
    scratch = _free_mib(scratch_dir)
    if scratch is not None:
        amounts["amount.worker.disk.scratch"] = scratch
    amounts.update(gpu_amounts(nvidia_smi_timeout))
    return Capabilities(amounts, attributes)


def _memory_mib() -> float | None:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB)
    except (ValueError, OSError, AttributeError) as exc:
        log.warning("capabilities: cannot read the memory size (%s); amount.worker.memory not reported", exc)
        return None


def _free_mib(directory: Path) -> float | None:
    """Free MiB on the file system of ``directory`` (or of its nearest existing parent)."""
    path = directory
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return float(shutil.disk_usage(path).free // MIB)
    except OSError as exc:
        log.warning("capabilities: cannot read the free space of %s (%s); amount.worker.disk.scratch not reported",
                    path, exc)
        return None


def gpu_amounts(timeout: float = NVIDIA_SMI_TIMEOUT) -> dict[str, float]:
    """``amount.worker.gpu`` and ``amount.worker.gpu.memory`` from one ``nvidia-smi`` call (one line
    of MiB per GPU); empty, with a warning, when it is missing, fails, hangs or prints nonsense."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        log.warning("capabilities: no nvidia-smi on PATH; amount.worker.gpu and amount.worker.gpu.memory "
                    "not reported (set them in [capabilities.amounts] if this host has GPUs)")
        return {}
    output = _run(executable, timeout)
    if output is None:
        return {}
    sizes: list[float] = []
    for line in output.splitlines():
        text = line.strip().removesuffix("MiB").strip()
        if not text:
            continue
        try:
            size = float(text)
        except ValueError:
            size = -1.0
        if not size >= 0:  # also NaN
            log.warning("capabilities: %s printed %r, not a GPU memory size in MiB; GPU amounts not reported",
                        executable, line[:200])
            return {}
        sizes.append(size)
    if not sizes:
        log.warning("capabilities: %s listed no GPU; GPU amounts not reported", executable)
        return {}
    log.info("capabilities: %d GPU(s), the smallest with %.0f MiB", len(sizes), min(sizes))
    return {"amount.worker.gpu": float(len(sizes)), "amount.worker.gpu.memory": min(sizes)}


def _run(executable: str, timeout: float) -> str | None:
    """``nvidia-smi``'s output, or None with a warning; a hung one is killed with its children."""
    command = [executable, *GPU_QUERY]
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        log.warning("capabilities: cannot run %s (%s); GPU amounts not reported", executable, exc)
        return None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        log.warning("capabilities: %s did not answer within %g s (a hung GPU driver?); GPU amounts not reported",
                    executable, timeout)
        return None
    if proc.returncode != 0:
        said = (err or out).decode(errors="replace").strip().splitlines()
        log.warning("capabilities: %s exited with %d (%s); GPU amounts not reported",
                    executable, proc.returncode, said[-1][:200] if said else "no message")
        return None
    return out.decode(errors="replace")


def describe(capabilities: Capabilities) -> str:
    """One line for the log: name=value, ..."""
    amounts = [f"{n}={v:g}" for n, v in sorted(capabilities.amounts.items())]
    attributes = [f"{n}={'|'.join(v)}" for n, v in sorted(capabilities.attributes.items())]
    return ", ".join(amounts + attributes)
