"""The EC2 instance metadata service (IMDSv2): whether to ask it at all, and a small client.

The agent asks IMDS only when it runs on EC2: ``AWS_EC2_METADATA_DISABLED=true`` turns it off;
``AWS_EC2_METADATA_SERVICE_ENDPOINT`` names the endpoint to use (and is the only way it is reached
in tests); otherwise the host's DMI data must name Amazon EC2 (``/sys/devices/virtual/dmi/id``,
or a Xen ``/sys/hypervisor/uuid`` starting with ``ec2``) before any packet goes to 169.254.169.254.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_SECONDS = 300
REQUEST_TIMEOUT_SECONDS = 2.0
DMI_DIR = Path("/sys/devices/virtual/dmi/id")
HYPERVISOR_UUID = Path("/sys/hypervisor/uuid")


@attrs.frozen
class Where:
    """Where IMDS is (``endpoint`` None: not asked at all) and why the agent decided so."""

    endpoint: str | None
    why: str


def locate(
    environ: Mapping[str, str] = os.environ, dmi_dir: Path = DMI_DIR, hypervisor_uuid: Path = HYPERVISOR_UUID
) -> Where:
    if environ.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() == "true":
        return Where(None, "AWS_EC2_METADATA_DISABLED=true")
    endpoint = environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "").strip()
    if endpoint:
        return Where(endpoint.rstrip("/"), f"AWS_EC2_METADATA_SERVICE_ENDPOINT={endpoint}")
    vendor = ec2_vendor(dmi_dir, hypervisor_uuid)
    if vendor:
        return Where(DEFAULT_ENDPOINT, f"this host is an EC2 instance ({vendor})")
    return Where(None, f"not an EC2 instance ({dmi_dir}/sys_vendor and board_vendor name no Amazon EC2)")


def ec2_vendor(dmi_dir: Path = DMI_DIR, hypervisor_uuid: Path = HYPERVISOR_UUID) -> str:
    """What says this host is an EC2 instance, or '' when nothing does."""
    for name in ("sys_vendor", "board_vendor"):
        try:
            text = (dmi_dir / name).read_text().strip()
        except OSError:
            continue
        if text == "Amazon EC2":
            return f"{dmi_dir / name}: {text}"
    try:
        if hypervisor_uuid.read_text().strip().lower().startswith("ec2"):
            return f"{hypervisor_uuid} starts with ec2"
    except OSError:
        pass
    return ""


@attrs.frozen
class Answer:
    status: int
    text: str


class ImdsClient:
    """IMDSv2 GETs under ``/latest/meta-data/`` with a session token asked for and renewed as needed.

    ``get`` returns None when IMDS cannot be reached (connection refused, timeout): the caller decides
    what that means.  Owns one aiohttp session; ``close`` it.
    """

    def __init__(self, endpoint: str, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        # aiohttp only where IMDS is used: it is several MiB the Deadline agent otherwise never loads.
        import aiohttp

        self._aiohttp = aiohttp
        self._errors = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
        self.endpoint = endpoint
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_until = 0.0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # trust_env off: an HTTP(S)_PROXY must never carry metadata requests off the host.
            self._session = self._aiohttp.ClientSession(timeout=self._timeout, trust_env=False)
        return self._session

    async def _fresh_token(self) -> str | None:
        if self._token is not None and time.monotonic() < self._token_until:
            return self._token
        headers = {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)}
        try:
            async with self._http().put(f"{self.endpoint}/latest/api/token", headers=headers) as resp:
                if resp.status != 200:
                    log.debug("IMDS token request answered %d", resp.status)
                    return None
                self._token = (await resp.text()).strip()
        except self._errors as exc:
            log.debug("IMDS token request failed: %s", exc)
            return None
        self._token_until = time.monotonic() + TOKEN_TTL_SECONDS * 0.8
        return self._token

    async def get(self, path: str) -> Answer | None:
        """GET ``/latest/meta-data/<path>``; None when IMDS does not answer (or gives no token)."""
        for _ in range(2):  # once more with a new token if the old one was refused
            token = await self._fresh_token()
            if token is None:
                return None
            url = f"{self.endpoint}/latest/meta-data/{path}"
            try:
                async with self._http().get(url, headers={"X-aws-ec2-metadata-token": token}) as resp:
                    answer = Answer(resp.status, await resp.text())
            except self._errors as exc:
                log.debug("IMDS GET %s failed: %s", path, exc)
                return None
            if answer.status != 401:
                return answer
            self._token = None
        return answer
