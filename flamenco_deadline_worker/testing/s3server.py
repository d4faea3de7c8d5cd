"""A real S3-compatible endpoint on 127.0.0.1 (moto in server mode) for job attachment tests and benchmarks.

    with S3Server() as s3:
        s3.create_bucket("bucket")
        env = s3.client_env()          # AWS_ENDPOINT_URL_S3 (and _STS) for a worker agent or boto3

The server is a child process (``python -m flamenco_deadline_worker.testing.s3server``), so it uses
its own interpreter, not the caller's: it binds 127.0.0.1 on a free port, prints ``{"port": N}``
and serves until its standard input closes.  Needs the test extra's ``moto[server]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

ACCESS_KEY = "AKIAS3EMULATOREXAMPLE"  # moto accepts any keys; these sign the tests' own requests
SECRET_KEY = "s3-emulator-secret"
REGION = "us-west-2"


class S3Server:
    def __init__(self) -> None:
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> S3Server:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait(timeout)
            raise RuntimeError(f"the S3 server (moto) did not start (exit code {self._proc.returncode})")
        self.port = int(json.loads(line)["port"])
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()  # the server's signal to go
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client_env(self) -> dict[str, str]:
        """Endpoint variables for a process that reaches S3 here.  STS too: the deadline library asks
        sts:GetCallerIdentity for the bucket owner when credentials do not name their account."""
        return {"AWS_ENDPOINT_URL_S3": self.url, "AWS_ENDPOINT_URL_STS": self.url}

    def client(self, service: str = "s3") -> Any:
        """A boto3 client of this server with the test keys (for the test's own setup and checks)."""
        import boto3

        session: Any = boto3.session.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
        )
        return session.client(service, endpoint_url=self.url)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})


def main() -> int:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(json.dumps({"port": server.get_host_and_port()[1]}), flush=True)
    sys.stdin.read()  # until the parent closes it (or dies)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
