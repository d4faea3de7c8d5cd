"""An aiohttp server on 127.0.0.1 with an event loop in a thread of its own: the base of the local
stand-ins for services (the Deadline emulator, the IMDS stand-in), so tests and benchmarks can drive
them from synchronous code."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, TypeVar

from aiohttp import web

Self = TypeVar("Self", bound="ThreadedServer")


class ThreadedServer:
    """Subclasses give ``_app()``; ``start()``/``stop()`` (or ``with``) run it.  ``port`` 0 takes a
    free one, known once started."""

    name = "server"  # the thread's name, and what a start-up error calls it

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _app(self) -> web.Application:
        raise NotImplementedError

    def start(self: Self) -> Self:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError(f"the {self.name} did not start within 30 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop = None

    def __enter__(self: Self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._up())
        ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._down())
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        """Run ``coro`` on the server's loop from another thread; its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _up(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            server: Any = site._server
            self.port = int(server.sockets[0].getsockname()[1])

    async def _down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
