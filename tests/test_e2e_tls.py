"""An https Manager (the usual setup behind a reverse proxy), with a CA made by the test: the right CA
works through tls_ca_file or the system store; a wrong CA or host name is refused and no task is taken."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from conftest import RecordingManager, WorkerStarter, echo_task, until

SERVER_HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def https_manager(cert: trustme.LeafCert) -> RecordingManager:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    mgr = RecordingManager(seed=11)
    await mgr.start(SERVER_HOST, ssl_context=context)
    assert mgr.url.startswith("https://")
    return mgr


@pytest.fixture
async def manager(ca: trustme.CA) -> AsyncIterator[RecordingManager]:
    mgr = await https_manager(ca.issue_cert(SERVER_HOST))
    yield mgr
    await mgr.stop()


def write_ca(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path


async def run_one_task(manager: RecordingManager, workers: WorkerStarter, env: dict[str, str]) -> None:
    job = manager.submit_job("over tls", [echo_task("over tls", "hello through https")])
    worker = await workers.start(manager.url, env=env)
    await until(manager, lambda: manager.job(job).status == "completed", worker=worker)
    assert "hello through https" in manager.job_tasks(job)[0].log
    assert await worker.stop() == 0


async def test_right_ca_in_tls_ca_file(
    manager: RecordingManager, workers: WorkerStarter, ca: trustme.CA, tmp_path: Path
) -> None:
    bundle = write_ca(ca, tmp_path / "farm-ca.pem")
    await run_one_task(manager, workers, {"FLAMENCO_WORKER_TLS_CA_FILE": str(bundle)})


async def test_right_ca_in_the_system_store(
    manager: RecordingManager, workers: WorkerStarter, ca: trustme.CA, tmp_path: Path
) -> None:
    # OpenSSL's default store is read from SSL_CERT_FILE when it is set: the worker's "system store".
    bundle = write_ca(ca, tmp_path / "system-store.pem")
    await run_one_task(manager, workers, {"SSL_CERT_FILE": str(bundle)})


async def refused(manager: RecordingManager, workers: WorkerStarter, env: dict[str, str], reason: str) -> None:
    job = manager.submit_job("must not run", [echo_task("never")])
    worker = await workers.start(manager.url, env=env)
    await worker.wait_log("TLS certificate refused")
    text = worker.agent_log_text()
    assert reason in text, text[-3000:]
    assert "Traceback" not in text
    assert manager.request_log == [], "no request got through the refused handshake"
    assert manager.workers == {} and manager.job_tasks(job)[0].status == "queued"
    assert await worker.stop() == 0


async def test_wrong_ca_is_refused(manager: RecordingManager, workers: WorkerStarter, tmp_path: Path) -> None:
    other = write_ca(trustme.CA(), tmp_path / "other-ca.pem")
    await refused(manager, workers, {"FLAMENCO_WORKER_TLS_CA_FILE": str(other)},
                  "set tls_ca_file to the CA that signed it")


async def test_wrong_host_name_is_refused(workers: WorkerStarter, ca: trustme.CA, tmp_path: Path) -> None:
    manager = await https_manager(ca.issue_cert("manager.example"))
    try:
        bundle = write_ca(ca, tmp_path / "farm-ca.pem")
        await refused(manager, workers, {"FLAMENCO_WORKER_TLS_CA_FILE": str(bundle)},
                      "use the host name the certificate was issued for")
    finally:
        await manager.stop()
