"""A local stand-in for the EC2 instance metadata service (IMDSv2) on 127.0.0.1, for tests.

Point the agent at it with ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (``env()``).  It hands out
session tokens (``PUT /latest/api/token``, TTL header required) and answers, with a valid token
only (else 401), what the test has set: a spot interruption notice, a rebalance recommendation,
an instance profile (``iam/info``, ``iam/security-credentials/<role>``).  Unset: 404, as on EC2.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
import time

from aiohttp import web

from flamenco_deadline_worker.testing.threaded_server import ThreadedServer


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ImdsStandIn(ThreadedServer):
    name = "IMDS stand-in"

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._spot: dict[str, str] | None = None
        self._rebalance: dict[str, str] | None = None
        self._profile: str | None = None  # instance profile ARN
        self._role = "EmulatorInstanceRole"

    # ---- what the test sets ----------------------------------------------------------------

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

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/latest/api/token", self._token)
        app.router.add_get("/latest/meta-data/{path:.*}", self._meta)
        return app

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
