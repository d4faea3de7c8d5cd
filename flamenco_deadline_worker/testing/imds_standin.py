"""A local stand-in for the EC2 instance metadata service (IMDSv2) on 127.0.0.1, for tests.

Point the agent at it with ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (``env()``).  It hands out
session tokens (``PUT /latest/api/token``, TTL header required) and answers, with a valid token
only (else 401), what the test has set: a spot interruption notice, a rebalance recommendation,
an instance profile (``iam/info``, ``iam/security-credentials/<role>``).  Unset: 404, as on EC2.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import threading
import time
from typing import Any

from aiohttp import web


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ImdsStandIn:
    def __init__(self) -> None:
        self.port = 0
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._spot: dict[str, str] | None = None
        self._rebalance: dict[str, str] | None = None
        self._profile: str | None = None  # instance profile ARN
        self._role = "EmulatorInstanceRole"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ---- what the test sets ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"AWS_EC2_METADATA_SERVICE_ENDPOINT": self.url, "AWS_EC2_METADATA_DISABLED": "false"}

    def spot_interruption(self, at: float, action: str = "terminate") -> None:
        """From now on, a spot ``action`` notice for the epoch time ``at``."""
        with self.lock:
            self._spot = {"action": action, "time": _iso(at)}

    def rebalance_recommendation(self) -> None:
        with self.lock:
            self._rebalance = {"noticeTime": _iso(time.time())}

    def attach_profile(self, arn: str = "arn:aws:iam::123456789012:instance-profile/EmulatorProfile") -> None:
        with self.lock:
            self._profile = arn

    def detach_profile(self) -> None:
        with self.lock:
            self._profile = None

    def paths_asked(self) -> list[str]:
        with self.lock:
            return [path for _, path, _ in self.requests]

    # ---- server ----------------------------------------------------------------------------

    def start(self) -> ImdsStandIn:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="imds-standin", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the IMDS stand-in did not start within 30 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop = None

    def __enter__(self) -> ImdsStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._up())
        ready.set()
        self._loop.run_forever()
        if self._runner is not None:
            self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _up(self) -> None:
        app = web.Application()
        app.router.add_put("/latest/api/token", self._token)
        app.router.add_get("/latest/meta-data/{path:.*}", self._meta)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server
        self.port = int(server.sockets[0].getsockname()[1])

    def _answer(self, request: web.Request, status: int, text: str = "") -> web.Response:
        with self.lock:
            self.requests.append((request.method, request.path, status))
        return web.Response(status=status, text=text)

    async def _token(self, request: web.Request) -> web.Response:
        try:
            ttl = int(request.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
        except ValueError:
            return self._answer(request, 400, "X-aws-ec2-metadata-token-ttl-seconds is required")
        if not 1 <= ttl <= 21600:
            return self._answer(request, 400, "the token TTL must be 1..21600 seconds")
        token = secrets.token_urlsafe(32)
        with self.lock:
            self._tokens[token] = time.monotonic() + ttl
        return self._answer(request, 200, token)

    async def _meta(self, request: web.Request) -> web.Response:
        token = request.headers.get("X-aws-ec2-metadata-token", "")
        with self.lock:
            valid = self._tokens.get(token, 0.0) > time.monotonic()
            spot, rebalance, profile = self._spot, self._rebalance, self._profile
        if not valid:
            return self._answer(request, 401)
        path = request.match_info["path"]
        if path == "spot/instance-action" and spot is not None:
            return self._answer(request, 200, json.dumps(spot))
        if path == "events/recommendations/rebalance" and rebalance is not None:
            return self._answer(request, 200, json.dumps(rebalance))
        if path == "iam/info" and profile is not None:
            info = {"Code": "Success", "InstanceProfileArn": profile, "InstanceProfileId": "AIPAEMULATOR"}
            return self._answer(request, 200, json.dumps(info))
        if path in ("iam/security-credentials", "iam/security-credentials/") and profile is not None:
            return self._answer(request, 200, self._role)
        if path == f"iam/security-credentials/{self._role}" and profile is not None:
            creds = {"Code": "Success", "AccessKeyId": "ASIAINSTANCEPROFILE", "SecretAccessKey": "profile-secret",
                     "Token": "profile-token", "Expiration": _iso(time.time() + 3600)}
            return self._answer(request, 200, json.dumps(creds))
        if path == "instance-id":
            return self._answer(request, 200, "i-0123456789abcdef0")
        return self._answer(request, 404)
