"""Finding a Flamenco Manager on the LAN by UPnP/SSDP, as Flamenco 3 workers do.

A Flamenco 3 Manager answers an SSDP ``M-SEARCH`` for ``urn:flamenco:manager:0`` with one answer per
address it listens on, each ``LOCATION: http://ADDRESS:PORT/upnp/description.xml``.  The worker sends
the search (again after 1 s and 3 s: UDP may be lost), asks ``GET /api/v3/version`` at the root of
every URL found, and takes the first that answers.  Plain asyncio UDP: no dependency, nothing heavy
on the Flamenco path.

Production searches the multicast group 239.255.255.250:1900; tests point the search at a responder
on 127.0.0.1 (``manager_discovery_address``) so no packet leaves the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from urllib.parse import urlsplit

import aiohttp

log = logging.getLogger(__name__)

SERVICE_TYPE = "urn:flamenco:manager:0"
MULTICAST_ADDRESS = "239.255.255.250:1900"
# Seconds after the start at which the search is sent again.
RESEND_AT = (1.0, 3.0)
# Responders wait up to MX seconds (at random) before they answer, to spread the answers out.
MX_SECONDS = 1
PING_TIMEOUT = aiohttp.ClientTimeout(total=5, connect=3)
MAX_DATAGRAM = 8192


class DiscoveryFailed(Exception):
    """No usable Manager found; the message says what was tried and what to do."""


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets or not) as (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def search_request(host: str, port: int, service_type: str = SERVICE_TYPE) -> bytes:
    shown_host = f"[{host}]" if ":" in host else host
    return (
        "M-SEARCH * HTTP/1.1\r\n"
        f"HOST: {shown_host}:{port}\r\n"
        'MAN: "ssdp:discover"\r\n'
        f"MX: {MX_SECONDS}\r\n"
        f"ST: {service_type}\r\n"
        "\r\n"
    ).encode("ascii")


def parse_headers(datagram: bytes) -> tuple[str, dict[str, str]]:
    """The start line and the headers (names in upper case) of an SSDP message."""
    text = datagram.decode("utf-8", errors="replace")
    lines = text.split("\r\n") if "\r\n" in text else text.split("\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().upper()] = value.strip()
    return lines[0].strip(), headers


def manager_location(datagram: bytes, service_type: str = SERVICE_TYPE) -> str | None:
    """The LOCATION of an answer to our search (or of a Manager's NOTIFY), else None."""
    start, headers = parse_headers(datagram)
    if start.upper().startswith("HTTP/1.1 200"):
        kind = headers.get("ST", "")
    elif start.upper().startswith("NOTIFY"):
        kind = headers.get("NT", "")
    else:
        return None
    location = headers.get("LOCATION", "")
    if kind != service_type or not location.lower().startswith(("http://", "https://")):
        return None
    return location


def service_url(location: str) -> str:
    """The Manager's base URL: the description URL's scheme, host and port (Flamenco 3 does the same)."""
    parts = urlsplit(location)
    return f"{parts.scheme}://{parts.netloc}/"


class _Answers(asyncio.DatagramProtocol):
    def __init__(self, service_type: str) -> None:
        self.service_type = service_type
        self.found: asyncio.Queue[str] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        location = manager_location(data[:MAX_DATAGRAM], self.service_type)
        if location is not None:
            self.found.put_nowait(location)

    def error_received(self, exc: Exception) -> None:
        log.debug("SSDP search: %s", exc)


async def _ping(session: aiohttp.ClientSession, url: str) -> str:
    """``url`` when GET /api/v3/version answers like a Flamenco Manager; raises otherwise."""
    async with session.get(url.rstrip("/") + "/api/v3/version") as resp:
        if resp.status != 200:
            raise DiscoveryFailed(f"{url}: GET /api/v3/version answered HTTP {resp.status}")
        data = await resp.json(content_type=None)
    if not isinstance(data, dict) or "version" not in data:
        raise DiscoveryFailed(f"{url}: GET /api/v3/version did not answer with a Flamenco version")
    log.info("found Flamenco Manager %s %s at %s", data.get("name", ""), data.get("version"), url)
    return url


def _open_socket(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        multicast = ipaddress.ip_address(host).is_multicast
    except ValueError:  # a host name
        multicast = False
    if multicast:
        # Two hops, as UPnP asks: the LAN, not the internet.
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 2)
    return sock


async def discover_manager(address: str = MULTICAST_ADDRESS, timeout: float = 10.0) -> str:
    """The base URL of the first Manager found by an SSDP search sent to ``address`` that answers
    GET /api/v3/version; DiscoveryFailed after ``timeout`` seconds."""
    host, port = split_address(address)
    log.info("manager_url is empty: searching for a Flamenco Manager by UPnP/SSDP at %s (up to %g s)",
             address, timeout)
    loop = asyncio.get_running_loop()
    transport, answers = await loop.create_datagram_endpoint(
        lambda: _Answers(SERVICE_TYPE), sock=_open_socket(host)
    )
    request = search_request(host, port)
    started = time.monotonic()
    deadline = started + timeout
    resend = list(RESEND_AT)
    seen: list[str] = []
    failures: list[str] = []
    pings: set[asyncio.Task[str]] = set()
    transport.sendto(request, (host, port))
    try:
        async with aiohttp.ClientSession(timeout=PING_TIMEOUT) as session:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    break
                while resend and now - started >= resend[0]:
                    resend.pop(0)
                    transport.sendto(request, (host, port))
                next_event = min([deadline, *(started + t for t in resend[:1])])
                getter = asyncio.ensure_future(answers.found.get())
                done, _ = await asyncio.wait({getter, *pings}, timeout=max(0.0, next_event - now),
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    url = service_url(getter.result())
                    if url not in seen:
                        seen.append(url)
                        log.info("SSDP: a Manager answered with %s; checking it", url)
                        pings.add(asyncio.ensure_future(_ping(session, url)))
                else:
                    getter.cancel()
                for ping in done - {getter}:
                    pings.discard(ping)
                    try:
                        return ping.result()
                    except (DiscoveryFailed, aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                        failures.append(str(exc) or type(exc).__name__)
                        log.info("SSDP: %s", failures[-1])
    finally:
        transport.close()
        for ping in pings:
            ping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pings, return_exceptions=True)
    hint = ("set manager_url (--manager URL, $FLAMENCO_WORKER_MANAGER_URL or the configuration file), "
            "or check that the Manager runs on this network and that multicast reaches it")
    if not seen:
        raise DiscoveryFailed(
            f"no Flamenco Manager answered the UPnP/SSDP search ({SERVICE_TYPE}) sent to {address} "
            f"within {timeout:g} s (manager_discovery_timeout_seconds); {hint}"
        )
    raise DiscoveryFailed(
        f"UPnP/SSDP found {', '.join(seen)} but none answered GET /api/v3/version within {timeout:g} s "
        f"({'; '.join(failures) or 'no answer'}); {hint}"
    )
