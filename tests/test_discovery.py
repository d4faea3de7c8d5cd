"""UPnP/SSDP discovery against the local manager's responder on 127.0.0.1 (never the LAN)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from flamenco_deadline_worker.backends.flamenco_discovery import (
    SERVICE_TYPE,
    DiscoveryFailed,
    discover_manager,
    manager_location,
    search_request,
    service_url,
)
from flamenco_deadline_worker.testing.manager import LocalManager


def test_search_request_and_answers_parse() -> None:
    request = search_request("239.255.255.250", 1900)
    assert request.startswith(b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n")
    assert b'MAN: "ssdp:discover"' in request and b"ST: urn:flamenco:manager:0\r\n\r\n" in request
    answer = (
        b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nEXT:\r\n"
        b"LOCATION: http://10.0.0.5:8080/upnp/description.xml\r\nST: urn:flamenco:manager:0\r\n"
        b"USN: uuid:aa80bc5f-d0af-46b8-8630-23bd7e80ec4d::urn:flamenco:manager:0\r\n\r\n"
    )
    location = manager_location(answer)
    assert location == "http://10.0.0.5:8080/upnp/description.xml"
    assert service_url(location) == "http://10.0.0.5:8080/"
    assert manager_location(answer.replace(b"urn:flamenco:manager:0", b"urn:other:device:1")) is None
    notify = b"NOTIFY * HTTP/1.1\r\nNT: urn:flamenco:manager:0\r\nLOCATION: http://h:1/upnp/description.xml\r\n\r\n"
    assert manager_location(notify) == "http://h:1/upnp/description.xml"
    assert manager_location(b"garbage") is None


async def test_finds_the_local_manager_through_its_responder() -> None:
    manager = LocalManager()
    await manager.start()
    try:
        address = await manager.start_ssdp("127.0.0.1", 0)
        url = await discover_manager(address, timeout=10)
        assert url == manager.url + "/"
        assert manager.ssdp_responder is not None and manager.ssdp_responder.searches >= 1
        assert manager.count_requests("GET", "/api/v3/version") == 1
    finally:
        await manager.stop()


async def test_nothing_answers_fails_with_a_clear_message_after_the_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(DiscoveryFailed) as failed:
            await discover_manager(address, timeout=1.5)
        assert 1.4 < time.monotonic() - started < 10
        # Sent at once and again after 1 s: UDP may be lost.
        assert silent.recv(4096).startswith(b"M-SEARCH")
        assert silent.recv(4096).startswith(b"M-SEARCH")
    message = str(failed.value)
    assert f"no Flamenco Manager answered the UPnP/SSDP search ({SERVICE_TYPE}) sent to {address}" in message
    assert "within 1.5 s (manager_discovery_timeout_seconds)" in message
    assert "set manager_url" in message


async def test_an_answer_whose_url_does_not_work_is_reported() -> None:
    """A responder announcing a dead URL: the search names the URL it found and why it was not usable."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]  # bound, never listening: connection refused

        class DeadResponder(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                answer = (f"HTTP/1.1 200 OK\r\nST: {SERVICE_TYPE}\r\n"
                          f"LOCATION: http://127.0.0.1:{dead_port}/upnp/description.xml\r\n\r\n")
                self.transport.sendto(answer.encode(), addr)  # type: ignore[attr-defined]

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(DeadResponder, local_addr=("127.0.0.1", 0))
        try:
            host, port = transport.get_extra_info("sockname")[:2]
            with pytest.raises(DiscoveryFailed) as failed:
                await discover_manager(f"{host}:{port}", timeout=2)
        finally:
            transport.close()
    assert f"found http://127.0.0.1:{dead_port}/ but none answered GET /api/v3/version" in str(failed.value)
