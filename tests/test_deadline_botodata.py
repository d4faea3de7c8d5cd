"""Trimmed botocore data through botocore's documented data path: same endpoints, only our operations."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

botocore_session = pytest.importorskip("botocore.session")
from botocore.config import Config  # noqa: E402

from flamenco_deadline_worker.backends.deadline import botodata  # noqa: E402


@pytest.fixture(scope="module")
def trimmed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    found = botodata.ensure_trimmed(tmp_path_factory.mktemp("home"))
    assert found is not None
    return found


def client(service: str, region: str, fips: bool, data_path: Path | None, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    session = botocore_session.Session()
    if data_path is not None:
        session.set_config_variable("data_path", str(data_path))
    return session.create_client(
        service,
        region_name=region,
        config=Config(use_fips_endpoint=fips),
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key="example",
    )


@pytest.mark.parametrize("region", ["us-west-2", "eu-central-1", "us-gov-west-1", "cn-north-1"])
@pytest.mark.parametrize("fips", [False, True])
@pytest.mark.parametrize("service", ["deadline", "logs"])
def test_clients_resolve_the_same_endpoints(
    trimmed: Path, service: str, region: str, fips: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    stock = client(service, region, fips, None, monkeypatch)
    lean = client(service, region, fips, trimmed, monkeypatch)
    assert lean.meta.endpoint_url == stock.meta.endpoint_url
    assert set(lean.meta.service_model.operation_names) == botodata.OPERATIONS[service]
    for name in botodata.OPERATIONS[service]:
        ours, theirs = lean.meta.service_model.operation_model(name), stock.meta.service_model.operation_model(name)
        assert ours.input_shape.members.keys() == theirs.input_shape.members.keys()
        assert ours.http == theirs.http


def test_the_directory_is_written_once_per_botocore_version(trimmed: Path) -> None:
    assert trimmed.name.startswith(f"botocore-{botocore_session.botocore.__version__}-")
    assert (trimmed / "complete").is_file()
    assert {p.name for p in trimmed.iterdir()} == {"complete", "deadline", "logs", "endpoints.json"}
    before = (trimmed / "endpoints.json").stat().st_mtime_ns
    assert botodata.ensure_trimmed(trimmed.parent) == trimmed
    assert (trimmed / "endpoints.json").stat().st_mtime_ns == before
    assert not [p for p in trimmed.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_an_unwritable_home_falls_back_to_botocore_data(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("")  # root writes anywhere: a file in the way stands in for a read-only home
        parent = blocker / "sub"
    else:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    assert botodata.ensure_trimmed(parent) is None
    assert "cannot write trimmed botocore models" in caplog.text and str(parent) in caplog.text


def test_a_missing_operation_is_named() -> None:
    model = {"metadata": {"serviceId": "deadline"}, "operations": {"CreateWorker": {}}, "shapes": {}}
    with pytest.raises(ValueError, match="lacks \\['UpdateWorker'\\]"):
        botodata.trim_service_model(model, frozenset({"CreateWorker", "UpdateWorker"}))


def test_the_worker_clients_use_the_trimmed_models_without_touching_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flamenco_deadline_worker import records
    from flamenco_deadline_worker.backends.deadline.api import DeadlineApi

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example")
    api = DeadlineApi("us-west-2", records, tmp_path)
    try:
        assert set(api.deadline.meta.service_model.operation_names) == botodata.OPERATIONS["deadline"]
        assert api.deadline.meta.endpoint_url == "https://deadline.us-west-2.amazonaws.com"
        assert "AWS_DATA_PATH" not in os.environ  # task processes must see botocore's own models
    finally:
        api.close()
