"""attachments.py on its own: the checks of the queue's settings and the job's manifests, where each root
goes, and the transfers against a real S3-compatible server (moto on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import datetime as dt
import grp
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("deadline.job_attachments")
pytest.importorskip("moto")
from flamenco_deadline_worker.backends.deadline.attachments import (  # noqa: E402
    AttachmentError,
    AttachmentsCancelled,
    S3Access,
    SessionAttachments,
    account_of,
    storage_profile_rules,
)
from flamenco_deadline_worker.testing.attachments_job import BUCKET, SETTINGS, submit_inputs  # noqa: E402
from flamenco_deadline_worker.testing.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server  # noqa: E402

ROLE = "arn:aws:iam::123456789012:role/QueueRole"


def credentials_file(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "credentials.json"
    expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    path.write_text(json.dumps({"Version": 1, "AccessKeyId": ACCESS_KEY, "SecretAccessKey": SECRET_KEY,
                                "SessionToken": "token", "Expiration": expiry.isoformat()}))
    return path


def attachments(tmp_path: Path, creds: Path | None = None) -> SessionAttachments:
    access = S3Access("farm-1", REGION, lambda queue_id: creds or credentials_file(tmp_path))
    return SessionAttachments("session-1", "queue-1", "job-1", tmp_path / "attachments" / "session-1", access)


def job(**extra: Any) -> dict[str, Any]:
    return {"jobAttachmentSettings": SETTINGS, "queueRoleArn": ROLE, **extra}


def details(*manifests: dict[str, Any], file_system: str = "COPIED") -> dict[str, Any]:
    return {"jobId": "job-1", "attachments": {"manifests": list(manifests), "fileSystem": file_system}}


def test_storage_profile_rules_map_source_to_destination_and_name_a_bad_rule() -> None:
    rules = [{"sourcePathFormat": "windows", "sourcePath": "P:\\projects", "destinationPath": "/mnt/projects"}]
    assert storage_profile_rules({"pathMappingRules": rules}) == {"P:\\projects": "/mnt/projects"}
    assert storage_profile_rules({}) == {}
    with pytest.raises(AttachmentError, match=r"pathMappingRules\[1\] lacks sourcePath or destinationPath"):
        storage_profile_rules({"pathMappingRules": [*rules, {"sourcePath": "/x"}]})


def test_the_account_comes_from_the_queue_role() -> None:
    assert account_of(ROLE) == "123456789012"
    assert account_of("") is None
    assert account_of("not an arn") is None


@pytest.mark.parametrize(
    ("job_details", "attachment_details", "message"),
    [
        (job(file_system="x"), details({"rootPath": "/p", "rootPathFormat": "posix"}, file_system="VIRTUAL"),
         "asks for the VIRTUAL job attachments file system; this worker supports only COPIED"),
        ({"queueRoleArn": ROLE}, details({"rootPath": "/p", "rootPathFormat": "posix"}),
         "its queue has no job attachment settings"),
        (job(), details({"rootPath": "/p"}), "jobAttachmentDetails.attachments.manifests is not usable"),
        (job(pathMappingRules=[{"sourcePathFormat": "posix", "sourcePath": "/other", "destinationPath": "/o"}]),
         details({"rootPath": "/p", "rootPathFormat": "posix", "fileSystemLocationName": "Projects"}),
         "the manifest root '/p' is in the storage-profile location 'Projects', which this fleet's storage "
         "profile does not map"),
    ],
    ids=["virtual", "no-queue-settings", "manifest-without-format", "unmapped-location"],
)
def test_unusable_attachments_are_refused_with_the_reason(
    tmp_path: Path, job_details: dict[str, Any], attachment_details: dict[str, Any], message: str
) -> None:
    with pytest.raises(AttachmentError) as caught:
        attachments(tmp_path).prepare(job_details, attachment_details)
    assert message in str(caught.value)


def test_without_the_queue_roles_credentials_the_sync_fails_saying_where_it_looked(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-queue" / "credentials.json"
    with pytest.raises(AttachmentError, match=f"the queue role's credentials \\({missing}\\) cannot be read"):
        attachments(tmp_path, missing).prepare(job(), details({"rootPath": "/p", "rootPathFormat": "posix"}))


def test_roots_are_mapped_into_the_session_unless_the_storage_profile_places_them(tmp_path: Path) -> None:
    plain = {"rootPath": "/home/artist/shot", "rootPathFormat": "posix"}
    located = {"rootPath": "/mnt/projects", "rootPathFormat": "posix", "fileSystemLocationName": "Projects"}
    windows = {"rootPath": "C:\\Users\\artist\\shot", "rootPathFormat": "windows"}
    one = attachments(tmp_path)
    one.prepare(job(), details(plain, located, windows))  # no profile rules: every root is copied
    mapped = {str(rule.source_path): Path(str(rule.destination_path)) for rule in one.rules}
    assert set(mapped) == {"/home/artist/shot", "/mnt/projects", "C:\\Users\\artist\\shot"}
    assert {path.parent for path in mapped.values()} == {one.directory}
    assert len(set(mapped.values())) == 3
    assert {rule.source_path_format.value for rule in one.rules} == {"POSIX", "WINDOWS"}

    rules = [{"sourcePathFormat": "posix", "sourcePath": "/mnt/projects", "destinationPath": "/shared/projects"}]
    two = attachments(tmp_path)
    two.prepare(job(pathMappingRules=rules), details(plain, located))  # the profile places the located root
    assert [str(rule.source_path) for rule in two.rules] == ["/home/artist/shot"]


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    with S3Server() as server:
        server.create_bucket(BUCKET)
        for name, value in server.client_env().items():
            monkeypatch.setenv(name, value)
        yield server


def test_inputs_arrive_with_a_summary_and_a_stop_cancels_the_transfer(s3: S3Server, tmp_path: Path) -> None:
    # More files than the library's download threads, so a stop lands before the last one.
    submitted = submit_inputs(s3, "farm-1", "queue-1", tmp_path / "submitter" / "shot", files=60, total_bytes=60_000)
    group = grp.getgrgid(os.getgid()).gr_name
    one = attachments(tmp_path)
    one.prepare(job(), {"jobId": "job-1", "attachments": submitted.attachments}, job_user=("nobody", group))
    reports: list[tuple[float, str]] = []
    summary = asyncio.run(one.sync_inputs(None, lambda p, m: reports.append((p, m)), lambda: False))
    assert summary.startswith("Job attachments: 60 input file(s), 60.0 KB, downloaded in ")
    (local,) = [Path(str(rule.destination_path)) for rule in one.rules]
    assert sorted(p.name for p in (local / "inputs").iterdir()) == sorted(submitted.expected)
    assert reports and reports[-1][0] == 100.0
    assert one.directory.stat().st_mode & 0o7777 == 0o2770 and one.directory.stat().st_gid == os.getgid()

    two = attachments(tmp_path / "second")
    two.prepare(job(), {"jobId": "job-1", "attachments": submitted.attachments})
    with pytest.raises(AttachmentsCancelled):
        asyncio.run(two.sync_inputs(None, lambda p, m: None, lambda: True))
    one.cleanup()
    assert not one.directory.exists()


def test_a_root_in_a_storage_profile_location_is_used_where_the_fleets_profile_maps_it(
    s3: S3Server, tmp_path: Path
) -> None:
    submitted = submit_inputs(s3, "farm-1", "queue-1", tmp_path / "submitter" / "shot", files=2, total_bytes=2_000)
    manifest = {**submitted.attachments["manifests"][0], "fileSystemLocationName": "Shared"}
    shared = tmp_path / "shared-storage" / "shot"
    rules = [{"sourcePathFormat": "posix", "sourcePath": submitted.root, "destinationPath": str(shared)}]
    one = attachments(tmp_path)
    one.prepare(job(pathMappingRules=rules), details(manifest))
    assert one.rules == []  # the job's own rules map it (openjd gets those from jobDetails)
    asyncio.run(one.sync_inputs(None, lambda p, m: None, lambda: False))
    assert sorted(p.name for p in (shared / "inputs").iterdir()) == sorted(submitted.expected)
    assert not one.directory.exists() or not any(one.directory.iterdir())  # nothing copied into the session

    (shared / "outputs").mkdir()
    (shared / "outputs" / "frame-1.exr").write_bytes(b"pixels")
    summary = asyncio.run(one.sync_outputs("step-1", "task-1", "sessionaction-1-0", 1.7e9, lambda p, m: None,
                                           lambda: False))
    assert summary.startswith("Job attachments: 1 output file(s), 6 B, uploaded")
