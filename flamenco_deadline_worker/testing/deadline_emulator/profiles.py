"""Queue and storage-profile settings behind jobDetails' ``jobRunAsUser`` and ``pathMappingRules``.

The service answers ``jobRunAsUser`` from the queue's setting, and ``pathMappingRules`` from two
storage profiles: the one the job was submitted with and the one of the worker's fleet.  Each file
system location the two profiles both name gives one rule from the job profile's path (in its OS
family's format) to the fleet profile's path; a job without a storage profile, or submitted with the
fleet's own profile, has no rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from flamenco_deadline_worker.testing.deadline_emulator.job import new_id

OS_FAMILIES = ("WINDOWS", "LINUX", "MACOS")


@attrs.frozen
class StorageProfile:
    os_family: str  # WINDOWS, LINUX or MACOS
    locations: Mapping[str, str]  # file system location name -> path on hosts of this profile
    id: str = attrs.field(factory=lambda: new_id("sp"))

    def __attrs_post_init__(self) -> None:
        if self.os_family not in OS_FAMILIES:
            raise ValueError(f"os_family {self.os_family!r} is not one of {OS_FAMILIES}")


def queue_user(user: str, group: str) -> dict[str, Any]:
    """A queue's jobRunAsUser that names a POSIX user and group."""
    return {"runAs": "QUEUE_CONFIGURED_USER", "posix": {"user": user, "group": group}}


AGENT_USER: dict[str, Any] = {"runAs": "WORKER_AGENT_USER"}


def path_mapping_rules(job: StorageProfile | None, fleet: StorageProfile | None) -> list[dict[str, str]]:
    """The rules the service hands a worker of ``fleet`` for a job submitted with ``job``."""
    if job is None or fleet is None or job.id == fleet.id:
        return []
    source_format = "windows" if job.os_family == "WINDOWS" else "posix"
    return [
        {"sourcePathFormat": source_format, "sourcePath": path, "destinationPath": fleet.locations[name]}
        for name, path in job.locations.items()
        if name in fleet.locations
    ]
