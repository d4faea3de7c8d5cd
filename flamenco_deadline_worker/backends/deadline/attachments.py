"""Job attachments of one Deadline session, through the ``deadline`` library's job_attachments API.

``syncInputJobAttachments`` downloads the job's input manifests' files (or, in its step form, the
outputs of the steps the step depends on) into a directory of the session, and gives openjd the
path-mapping rules from each manifest's root to its local copy; after every successful taskRun, the
files the task created or changed under the manifests' output directories go up to S3 with an output
manifest, where the library puts them (``<rootPrefix>/Manifests/<farm>/<queue>/<job>/<step>/<task>/``),
so a submitter's ``deadline job download-output`` finds them.

The library's ``AssetSync`` does the work (in a thread: it blocks), one per session, so each upload
holds only what changed since the last sync.  It reaches S3 with the queue role's credentials (the
file queue_creds.py writes), never the fleet's.  Only the COPIED file system is supported: VIRTUAL
needs Deadline's FUSE-based ``deadline_vfs`` and fails the action with a message saying so.
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import attrs
import botocore.credentials
import botocore.session
from openjd.sessions import LOG as OJD_LOG
from openjd.sessions import PathFormat, PathMappingRule

from flamenco_deadline_worker.backends.deadline.timestamps import parse_iso

log = logging.getLogger(__name__)

LIBRARY_LOGGER = "deadline.job_attachments"
# AssetSync.attachment_sync_inputs/sync_outputs are the library's worker-side calls (the AWS agent made
# them in process until it moved them into subprocess scripts); 0.1.x marks them deprecated, and the
# version is pinned in setup.cfg.
for _name in ("attachment_sync_inputs", "sync_outputs"):
    warnings.filterwarnings("ignore", message=f"{_name} is deprecated", category=DeprecationWarning)

Progress = Callable[[float, str], None]  # (percent, message), from the library's threads
Stop = Callable[[], bool]  # True once the action is canceled


class AttachmentError(Exception):
    """The job's attachments cannot be synchronised; the message says why (the action FAILS with it)."""


class AttachmentsCancelled(Exception):
    """The service (or a drain) canceled the action while files were moving."""


def storage_profile_rules(job: Mapping[str, Any]) -> dict[str, str]:
    """The job's storage-profile path mapping (jobDetails ``pathMappingRules``) as the library takes
    it: submitter's path -> this host's path."""
    rules: dict[str, str] = {}
    for i, rule in enumerate(job.get("pathMappingRules") or []):
        try:
            rules[str(rule["sourcePath"])] = str(rule["destinationPath"])
        except (KeyError, TypeError):
            raise AttachmentError(f"jobDetails.pathMappingRules[{i}] lacks sourcePath or destinationPath: {rule!r}")
    return rules


def account_of(role_arn: str) -> str | None:
    """The account id in an IAM role ARN (``arn:aws:iam::<account>:role/...``), for S3's bucket-owner
    check: with it the library needs no sts:GetCallerIdentity call."""
    parts = role_arn.split(":")
    return parts[4] if len(parts) > 5 and parts[4].isdigit() else None


def _install_log_route() -> None:
    """The library's own lines (files found, uploads) go to the session log, not the agent's."""
    library = logging.getLogger(LIBRARY_LOGGER)
    if any(isinstance(h, _ToSessionLog) for h in library.handlers):
        return
    library.addHandler(_ToSessionLog())
    library.setLevel(logging.INFO)
    library.propagate = False


class _ToSessionLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "session_id", None):
            OJD_LOG.handle(record)  # the log router reads openjd's logger, by session id
        else:
            log.handle(record)  # not a session's: the agent's own log


@attrs.define
class S3Access:
    """What every session's attachments need to reach S3: the farm, the region, and the queue role's
    credentials (a JSON document queue_creds.py keeps fresh)."""

    farm_id: str
    region: str | None
    credentials_file: Callable[[str], Path]  # queue id -> its credentials.json

    def boto3_session(self, queue_id: str, account_id: str | None) -> Any:
        import boto3

        path = self.credentials_file(queue_id)

        def load() -> dict[str, Any]:
            try:
                document = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise AttachmentError(
                    f"the queue role's credentials ({path}) cannot be read: {exc}; job attachments reach S3 "
                    "with the queue's IAM role (AssumeQueueRoleForWorker)"
                ) from None
            return {
                "access_key": document["AccessKeyId"],
                "secret_key": document["SecretAccessKey"],
                "token": document["SessionToken"],
                "expiry_time": document["Expiration"],
                "account_id": account_id,
            }

        credentials = botocore.credentials.RefreshableCredentials.create_from_metadata(
            metadata=load(), refresh_using=load, method="flamenco-queue-role"
        )
        core = botocore.session.Session()
        core.get_component("credential_provider").insert_before("env", _QueueRole(credentials))
        return boto3.session.Session(botocore_session=core, region_name=self.region)


class _QueueRole(botocore.credentials.CredentialProvider):
    """Ahead of botocore's chain: the queue role's credentials, whatever the host has."""

    METHOD = "flamenco-queue-role"
    CANONICAL_NAME = "FlamencoQueueRole"

    def __init__(self, credentials: botocore.credentials.Credentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> botocore.credentials.Credentials:
        return self._credentials


class SessionAttachments:
    """The attachments of one session: set up by its first syncInputJobAttachments."""

    def __init__(self, session_id: str, queue_id: str, job_id: str, directory: Path, access: S3Access) -> None:
        self.session_id = session_id
        self.queue_id = queue_id
        self.job_id = job_id
        self.directory = directory  # the local roots live here (as the library's "session dir")
        self.access = access
        self.rules: list[PathMappingRule] = []  # manifest root -> its local copy, for openjd
        self._settings: Any = None  # JobAttachmentS3Settings
        self._attachments: Any = None  # Attachments
        self._storage_rules: dict[str, str] = {}
        self._sync: Any = None  # AssetSync
        self._permissions: Any = None  # PosixFileSystemPermissionSettings when a job user runs the tasks
        self._group: str | None = None

    # ---- set-up --------------------------------------------------------------------------

    def prepare(
        self, job: Mapping[str, Any], details: Mapping[str, Any], job_user: tuple[str, str] | None = None
    ) -> None:
        """Check the queue's settings and the job's manifests; work out where each root goes.
        ``job_user`` (user, group): the tasks run as that user, so the copies belong to its group and
        their directories are group-writable (for outputs).  AttachmentError when they cannot be used."""
        from deadline.job_attachments.asset_sync import AssetSync
        from deadline.job_attachments.models import (
            Attachments,
            JobAttachmentS3Settings,
            JobAttachmentsFileSystem,
            ManifestProperties,
        )
        from deadline.job_attachments.models import PathFormat as JaPathFormat

        settings = job.get("jobAttachmentSettings") or {}
        if not settings.get("s3BucketName") or not settings.get("rootPrefix"):
            raise AttachmentError(
                "the job has job attachments but its queue has no job attachment settings "
                f"(jobDetails.jobAttachmentSettings = {settings!r}); set the queue's S3 bucket and root prefix"
            )
        attachments = details.get("attachments") or {}
        system = attachments.get("fileSystem") or "COPIED"
        if system != JobAttachmentsFileSystem.COPIED.value:
            raise AttachmentError(
                f"the job asks for the {system} job attachments file system; this worker supports only COPIED "
                "(VIRTUAL needs Deadline's FUSE-based deadline_vfs). Submit the job with the COPIED file system."
            )
        try:
            manifests = [
                ManifestProperties(
                    rootPath=m["rootPath"],
                    rootPathFormat=JaPathFormat(m["rootPathFormat"]),
                    fileSystemLocationName=m.get("fileSystemLocationName"),
                    inputManifestPath=m.get("inputManifestPath"),
                    inputManifestHash=m.get("inputManifestHash"),
                    outputRelativeDirectories=m.get("outputRelativeDirectories") or [],
                )
                for m in attachments.get("manifests") or []
            ]
        except (KeyError, ValueError, TypeError) as exc:
            raise AttachmentError(f"jobAttachmentDetails.attachments.manifests is not usable: {exc!r}") from None
        self._settings = JobAttachmentS3Settings(
            s3BucketName=settings["s3BucketName"], rootPrefix=settings["rootPrefix"]
        )
        self._attachments = Attachments(manifests=manifests, fileSystem=system)
        # Roots in a storage-profile location go where the job's path-mapping rules (the fleet's profile)
        # put them; the other roots are copied into the session's directory.
        self._storage_rules = storage_profile_rules(job)
        located = [m for m in manifests if m.fileSystemLocationName]
        copied = [m for m in manifests if not m.fileSystemLocationName]
        if self._storage_rules:
            for manifest in located:
                if manifest.rootPath not in self._storage_rules:
                    raise AttachmentError(
                        f"the manifest root {manifest.rootPath!r} is in the storage-profile location "
                        f"{manifest.fileSystemLocationName!r}, which this fleet's storage profile does not map "
                        "(jobDetails.pathMappingRules has no rule for it)"
                    )
            located = []
        # No profile rules at all (the fleet has no storage profile): located roots are copied too.
        dynamic = AssetSync.generate_dynamic_path_mapping(
            session_dir=self.directory,
            attachments=Attachments(manifests=copied + [_without_location(m) for m in located], fileSystem=system),
        )
        for manifest in located:
            self._storage_rules[manifest.rootPath] = dynamic[manifest.rootPath].destination_path
        self.rules = [_openjd_rule(r.source_path_format, r.source_path, r.destination_path) for r in dynamic.values()]
        if job_user is not None:
            from deadline.job_attachments.os_file_permission import PosixFileSystemPermissionSettings

            self._permissions = PosixFileSystemPermissionSettings(
                os_user=job_user[0], os_group=job_user[1], dir_mode=0o020, file_mode=0o020
            )
            self._group = job_user[1]
        _install_log_route()
        account = account_of(str(job.get("queueRoleArn") or ""))
        boto3_session = self.access.boto3_session(self.queue_id, account)
        self._sync = AssetSync(self.access.farm_id, boto3_session=boto3_session, session_id=self.session_id)

    # ---- the two transfers ---------------------------------------------------------------

    async def sync_inputs(self, step_dependencies: list[str] | None, progress: Progress, stop: Stop) -> str:
        """Download the inputs (the job's, or the outputs of ``step_dependencies``); a summary line.
        AttachmentError, or AttachmentsCancelled once ``stop()`` says so."""
        self._make_directory()
        attachments = self._attachments
        if step_dependencies:
            from deadline.job_attachments.models import Attachments

            attachments = Attachments(manifests=[], fileSystem=attachments.fileSystem)

        def run() -> Any:
            # attachment_sync_inputs, not sync_inputs: it overwrites files that are there already (a
            # step's dependency outputs written by this session's own tasks) instead of adding copies.
            stats, _ = self._sync.attachment_sync_inputs(
                s3_settings=self._settings,
                attachments=attachments,
                queue_id=self.queue_id,
                job_id=self.job_id,
                session_dir=self.directory,
                storage_profiles_path_mapping_rules=self._storage_rules,
                fs_permission_settings=self._permissions,
                step_dependencies=step_dependencies or None,
                on_downloading_files=_on_progress(progress, stop),
            )
            return stats

        stats = await self._in_thread(run)
        return (
            f"Job attachments: {stats.processed_files} input file(s), {_size(stats.processed_bytes)}, downloaded in "
            f"{stats.total_time:.2f} s ({_size(stats.transfer_rate)}/s); {stats.skipped_files} already present"
        )

    async def sync_outputs(
        self, step_id: str, task_id: str, action_id: str, started: float, progress: Progress, stop: Stop
    ) -> str:
        """Upload what the task wrote under the output directories, with its output manifest; a summary line."""

        def run() -> Any:
            return self._sync.sync_outputs(
                s3_settings=self._settings,
                attachments=self._attachments,
                queue_id=self.queue_id,
                job_id=self.job_id,
                step_id=step_id,
                task_id=task_id,
                session_action_id=action_id,
                start_time=started,
                session_dir=self.directory,
                storage_profiles_path_mapping_rules=self._storage_rules,
                on_uploading_files=_on_progress(progress, stop),
            )

        stats = await self._in_thread(run)
        return (
            f"Job attachments: {stats.processed_files} output file(s), {_size(stats.processed_bytes)}, uploaded in "
            f"{stats.total_time:.2f} s; {stats.skipped_files} were in S3 already"
        )

    def _make_directory(self) -> None:
        """The session's copies: the agent's alone, or shared with the job user's group (setgid, so
        what the tasks write there stays in that group and the agent can upload it)."""
        self.directory.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.directory.mkdir(exist_ok=True, mode=0o700)
        if self._group is not None:
            try:
                os.chown(self.directory, -1, grp.getgrnam(self._group).gr_gid)
                os.chmod(self.directory, 0o2770)
            except (OSError, KeyError) as exc:
                raise AttachmentError(
                    f"the session's attachments directory {self.directory} cannot be given to the group "
                    f"{self._group!r}: {exc}"
                ) from None

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    # ---- helpers -------------------------------------------------------------------------

    async def _in_thread(self, run: Callable[[], Any]) -> Any:
        from deadline.job_attachments.exceptions import AssetSyncCancelledError

        try:
            return await asyncio.to_thread(run)
        except AssetSyncCancelledError:
            raise AttachmentsCancelled() from None
        except AttachmentError:
            raise
        except Exception as exc:  # the library's errors carry the bucket, key and reason
            raise AttachmentError(f"job attachments: {type(exc).__name__}: {exc}") from None


def _on_progress(progress: Progress, stop: Stop) -> Callable[[Any], bool]:
    def report(metadata: Any) -> bool:
        progress(float(metadata.progress), str(metadata.progressMessage))
        return not stop()  # False: the library stops and raises AssetSyncCancelledError

    return report


def _without_location(manifest: Any) -> Any:
    """``manifest`` (a ManifestProperties dataclass) without its storage-profile location name."""
    import dataclasses

    return dataclasses.replace(manifest, fileSystemLocationName=None)


def _openjd_rule(source_format: str, source: str, destination: str) -> PathMappingRule:
    windows = source_format.lower() == "windows"
    return PathMappingRule(
        source_path_format=PathFormat.WINDOWS if windows else PathFormat.POSIX,
        source_path=PureWindowsPath(source) if windows else PurePosixPath(source),
        destination_path=PurePosixPath(destination),
    )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


def epoch(iso: str) -> float:
    """An action's ISO-8601 startedAt as seconds since the epoch (the library names outputs by it)."""
    return parse_iso(iso).timestamp()
