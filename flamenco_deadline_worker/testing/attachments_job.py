"""A job with input attachments, submitted the way Deadline Cloud's submitters do it, and its outputs read back.

``submit_inputs`` makes the input files, then lets the ``deadline`` library hash them, write the
input manifest and upload files and manifest to S3 (S3AssetManager: what ``deadline bundle submit``
runs), and deletes the local inputs, so a task can only read the copies its worker downloaded.
``attachments_template`` is a job whose task N hashes its share of the inputs (through the PATH
parameter ``InDir``, which path mapping points at the worker's copy) and writes ``task-N.txt`` into
``OutDir``.  ``read_outputs`` reads the output manifests the workers uploaded and the files they list.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import attrs

from flamenco_deadline_worker.testing.s3server import S3Server

BUCKET = "job-attachments-bucket"
ROOT_PREFIX = "DeadlineCloud"
SETTINGS = {"s3BucketName": BUCKET, "rootPrefix": ROOT_PREFIX}

# Task N: hash inputs [(N-1)*share, N*share) of InDir, write their names and hashes to OutDir/task-N.txt.
TASK_SCRIPT = """
import hashlib, os, sys
src, dst, n, share = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
names = sorted(os.listdir(src))[(n - 1) * share : n * share]
lines = []
for name in names:
    with open(os.path.join(src, name), "rb") as f:
        lines.append(f"{name} {hashlib.sha256(f.read()).hexdigest()}")
os.makedirs(dst, exist_ok=True)
with open(os.path.join(dst, f"task-{n}.txt"), "w") as out:
    out.write("\\n".join(lines) + "\\n")
print(f"task {n} hashed {len(names)} inputs from {src}")
"""


@attrs.frozen
class Submitted:
    root: str  # the submitter's asset root (its inputs are gone once submitted)
    attachments: dict[str, Any]  # as CreateJob takes them
    parameters: dict[str, str]  # the job parameter values (paths on the submitter's host)
    expected: dict[str, str]  # input file name -> sha256, for checking the tasks' outputs


def make_inputs(directory: Path, files: int, total_bytes: int) -> dict[str, str]:
    """``files`` files of pseudo-random bytes, ``total_bytes`` in all; name -> sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    size = total_bytes // files
    digests = {}
    for i in range(files):
        data = hashlib.shake_256(f"input {i}".encode()).digest(size)
        name = f"input-{i:03d}.bin"
        (directory / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def submit_inputs(
    s3: S3Server, farm_id: str, queue_id: str, root: Path, *, files: int = 100, total_bytes: int = 50_000_000
) -> Submitted:
    """Make the inputs under ``root``/inputs and upload them as a submitter would; the job's attachments."""
    from deadline.job_attachments.models import JobAttachmentS3Settings
    from deadline.job_attachments.upload import S3AssetManager

    inputs, outputs, caches = root / "inputs", root / "outputs", root.parent / f"{root.name}-submitter-cache"
    expected = make_inputs(inputs, files, total_bytes)
    caches.mkdir(parents=True, exist_ok=True)
    session = _boto3_session(s3)
    manager = S3AssetManager(
        farm_id=farm_id,
        queue_id=queue_id,
        job_attachment_settings=JobAttachmentS3Settings(s3BucketName=BUCKET, rootPrefix=ROOT_PREFIX),
        session=session,
    )
    group = manager.prepare_paths_for_upload(
        input_paths=[str(p) for p in sorted(inputs.iterdir())], output_paths=[str(outputs)], referenced_paths=[]
    )
    _, manifests = manager.hash_assets_and_create_manifest(
        group.asset_groups, group.total_input_files, group.total_input_bytes, hash_cache_dir=str(caches)
    )
    _, attachments = manager.upload_assets(manifests, s3_check_cache_dir=str(caches))
    shutil.rmtree(inputs)  # a task that reads these paths unmapped finds nothing
    return Submitted(
        root=str(root),
        attachments=attachments.to_dict(),
        parameters={"InDir": str(inputs), "OutDir": str(outputs)},
        expected=expected,
    )


def attachments_template(tasks: int = 20, files: int = 100, *, environments: bool = False) -> dict[str, Any]:
    """The job: ``tasks`` tasks sharing ``files`` inputs; with ``environments``, a job and a step
    environment around them (each echoes on enter and exit)."""
    share = files // tasks
    template: dict[str, Any] = {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "AttachmentsJob",
        "parameterDefinitions": [
            {"name": "InDir", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "IN"},
            {"name": "OutDir", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT"},
        ],
        "steps": [
            {
                "name": "Hash",
                "parameterSpace": {"taskParameterDefinitions": [{"name": "N", "type": "INT", "range": f"1-{tasks}"}]},
                "script": {
                    "actions": {
                        "onRun": {
                            "command": "python3",
                            "args": ["-c", TASK_SCRIPT, "{{Param.InDir}}", "{{Param.OutDir}}", "{{Task.Param.N}}",
                                     str(share)],
                        }
                    }
                },
            }
        ],
    }
    if environments:
        template["jobEnvironments"] = [_echo_environment("JobEnv")]
        template["steps"][0]["stepEnvironments"] = [_echo_environment("StepEnv")]
    return template


def _echo_environment(name: str) -> dict[str, Any]:
    actions = {when: {"command": "echo", "args": [f"{when} {name}"]} for when in ("onEnter", "onExit")}
    return {"name": name, "script": {"actions": actions}}


def read_outputs(s3: S3Server, farm_id: str, queue_id: str, job_id: str) -> dict[str, dict[str, bytes]]:
    """Every output manifest of the job in S3 (its key -> {relative path: the file's bytes from S3})."""
    from deadline.job_attachments.asset_manifests.decode import decode_manifest

    client = s3.client()
    prefix = f"{ROOT_PREFIX}/Manifests/{farm_id}/{queue_id}/{job_id}/"
    keys = [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        for item in page.get("Contents", [])
        if item["Key"].endswith("_output")
    ]
    found: dict[str, dict[str, bytes]] = {}
    for key in keys:
        manifest = decode_manifest(client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode())
        files = {}
        for path in manifest.paths:
            data_key = f"{ROOT_PREFIX}/Data/{path.hash}.{manifest.hashAlg.value}"
            files[path.path] = client.get_object(Bucket=BUCKET, Key=data_key)["Body"].read()
        found[key] = files
    return found


def expected_output(submitted: Submitted, tasks: int, files: int) -> dict[str, str]:
    """What each task should have written: outputs/task-N.txt -> its text."""
    names = sorted(submitted.expected)
    share = files // tasks
    return {
        f"outputs/task-{n}.txt": "".join(
            f"{name} {submitted.expected[name]}\n" for name in names[(n - 1) * share : n * share]
        )
        for n in range(1, tasks + 1)
    }


def _boto3_session(s3: S3Server) -> Any:
    import boto3

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    os.environ["AWS_ENDPOINT_URL_S3"] = s3.url  # the library makes its S3 clients from the session
    os.environ["AWS_ENDPOINT_URL_STS"] = s3.url
    from flamenco_deadline_worker.testing.s3server import ACCESS_KEY, REGION, SECRET_KEY

    return boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION)
