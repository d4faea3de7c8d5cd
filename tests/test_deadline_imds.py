"""The parts of the drain and IMDS work one at a time: where IMDS is, notices read from the local
IMDS stand-in, the instance profile guard's verdicts, the host shutdown command, the keys, and the
emulator's PutLogEvents limits."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("boto3")

from flamenco_deadline_worker.backends.deadline import drain, hostshutdown, imds, profile_guard  # noqa: E402
from flamenco_deadline_worker.backends.deadline.drain import (  # noqa: E402
    Drain,
    NoticeWatch,
    rebalance_notice,
    spot_notice,
)
from flamenco_deadline_worker.config import ConfigError, load  # noqa: E402
from flamenco_deadline_worker.testing.deadline_emulator import (  # noqa: E402
    ServiceError,
    ServiceState,
    make_job,
    simple_template,
)
from flamenco_deadline_worker.testing.imds_standin import ImdsStandIn  # noqa: E402


@pytest.fixture
def standin() -> Iterator[ImdsStandIn]:
    with ImdsStandIn() as s:
        yield s


def test_where_imds_is(tmp_path: Path) -> None:
    none = tmp_path / "none"
    assert imds.locate({"AWS_EC2_METADATA_DISABLED": "True"}, none, none).endpoint is None
    where = imds.locate({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9/"}, none, none)
    assert where.endpoint == "http://127.0.0.1:9"
    not_ec2 = imds.locate({}, none, none)
    assert not_ec2.endpoint is None and "not an EC2 instance" in not_ec2.why
    dmi = tmp_path / "dmi"
    dmi.mkdir()
    (dmi / "sys_vendor").write_text("Amazon EC2\n")
    assert imds.locate({}, dmi, none).endpoint == imds.DEFAULT_ENDPOINT  # decided from files; nothing is sent
    (tmp_path / "uuid").write_text("ec2e1916-9099-7caf-fd21-012345abcdef\n")
    assert imds.locate({}, none, tmp_path / "uuid").endpoint == imds.DEFAULT_ENDPOINT


def test_notices_are_read_as_imds_writes_them() -> None:
    spot = spot_notice('{"action": "terminate", "time": "2030-01-02T03:04:05Z"}')
    assert spot is not None and spot.kind == "spot" and spot.status()["deadline"] == "2030-01-02T03:04:05Z"
    assert spot_notice('{"action": "none"}') is None and spot_notice("<html>") is None
    rebalance = rebalance_notice('{"noticeTime": "2030-01-02T03:04:05Z"}')
    assert rebalance is not None and rebalance.deadline is None
    assert rebalance.urgent(None) and spot.urgent(rebalance) and not rebalance.urgent(spot)
    assert Drain("spot", deadline=time.time() + 5).urgent(spot)


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Until ``predicate`` holds (the watch polls IMDS on its own timer, so this looks every 20 ms)."""
    async def loop() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(loop(), timeout)


async def test_the_watch_hands_over_a_rebalance_then_a_spot_interruption(standin: ImdsStandIn) -> None:
    client = imds.ImdsClient(standin.url)
    seen: list[Drain] = []
    watch = asyncio.ensure_future(NoticeWatch(client, seen.append, interval=0.05).run())
    try:
        # Quiet IMDS: several rounds of polls (both notices asked), and nothing handed over.
        await until(lambda: standin.paths_asked().count(f"/latest/meta-data/{drain.SPOT_PATH}") >= 3)
        assert seen == []
        standin.rebalance_recommendation()
        await until(lambda: bool(seen))
        standin.spot_interruption(time.time() + 120)
        await asyncio.wait_for(watch, 30)  # it ends once the spot notice is handed over
    finally:
        watch.cancel()
        await client.close()
    assert [d.kind for d in seen] == ["rebalance", "spot"]
    tokens = standin.paths_asked().count("/latest/api/token")
    assert tokens == 1  # one token, reused
    assert all(status != 401 for _, _, status in standin.requests)


async def test_the_guard_verdicts(standin: ImdsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    env = standin.env()
    ok = await profile_guard.check(5, env)
    assert ok.ok and "no instance profile is attached" in ok.message
    standin.attach_profile()
    stays = await profile_guard.check(0.3, env, poll_seconds=0.1)
    assert (stays.ok, stays.exit_code) == (False, 2) and "is still attached after 0 s" in stays.message
    monkeypatch.setattr(imds, "ec2_vendor", lambda *a: "")
    off = await profile_guard.check(5, {"AWS_EC2_METADATA_DISABLED": "true"})
    assert off.ok and "it is not" in off.message
    monkeypatch.setattr(imds, "ec2_vendor", lambda *a: "sys_vendor: Amazon EC2")
    blind = await profile_guard.check(5, {"AWS_EC2_METADATA_DISABLED": "true"})
    assert (blind.ok, blind.exit_code) == (False, 2) and "cannot check" in blind.message


async def test_the_guard_when_imds_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:  # a port on 127.0.0.1 that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(profile_guard, "UNREACHABLE_BACKOFF_SECONDS", 0.01)
    silent = await profile_guard.check(5, {"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert (silent.ok, silent.exit_code) == (False, 1) and "did not answer 5 times" in silent.message


async def test_the_host_shutdown_command_outcomes(tmp_path: Path) -> None:
    assert await hostshutdown.shut_down_host([sys.executable, "-c", "print('bye')"])
    assert not await hostshutdown.shut_down_host([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert not await hostshutdown.shut_down_host([str(tmp_path / "no-such-program")])


def test_the_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "w.cfg"
    cfg.write_text("[flamenco-worker]\n")
    config = load(config_files=[cfg], home=tmp_path, environ={})
    assert config.deadline_shutdown_on_stop is False and config.deadline_disallow_instance_profile is False
    assert config.deadline_shutdown_command == ("sudo", "-n", "/usr/sbin/shutdown", "now")
    assert config.deadline_instance_profile_wait_seconds == 120.0
    cfg.write_text("[flamenco-worker]\ndeadline_shutdown_command = []\n")
    with pytest.raises(ConfigError, match="deadline_shutdown_command: must name a program"):
        load(config_files=[cfg], home=tmp_path, environ={})


def test_the_emulator_holds_put_log_events_to_its_limits() -> None:
    state = ServiceState(make_job(simple_template(1, ("echo", "x"))))
    group = f"/aws/deadline/{state.options.farm_id}/{state.options.fleet_id}"
    now = int(time.time() * 1000)
    big = {"timestamp": now, "message": "x" * (256 * 1024)}
    with pytest.raises(ServiceError, match="event of"):
        state.put_log_events({"logGroupName": group, "logStreamName": "", "logEvents": [big]}, "k", 0.0)
    many = [{"timestamp": now, "message": "x"}] * 10_001
    with pytest.raises(ServiceError, match="10,000"):
        state.put_log_events({"logGroupName": group, "logStreamName": "", "logEvents": many}, "k", 10.0)
    old = [{"timestamp": now - 15 * 24 * 3600 * 1000, "message": "x"}]
    with pytest.raises(ServiceError, match="14 days"):
        state.put_log_events({"logGroupName": group, "logStreamName": "", "logEvents": old}, "k", 20.0)
