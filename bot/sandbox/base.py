"""What every stand-in server shares: a real aiohttp server on 127.0.0.1, a call log, bearer-token
checks and fault injection (latency, a rate limit that answers 429 with Retry-After, scripted
failures).

A stand-in runs either inside the caller's event loop (`await s.start()`, for async tests and the
in-process sandbox) or on a thread of its own (`s.start_in_thread()`, for sync callers and the
benchmark). Either way it is reached over HTTP, so the real client libraries talk to it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ScriptedFailure:
    status: int
    body: object
    headers: dict[str, str] = field(default_factory=dict)
    path_prefix: str = ""  # only requests whose path starts with this fail


@dataclass
class Faults:
    """Knobs a test or the benchmark turns. All are safe to change while the server runs."""

    latency: float = 0.0  # seconds added to every request
    rate_limit: int | None = None  # requests allowed per `rate_window` seconds, then 429
    rate_window: float = 10.0
    failures: deque[ScriptedFailure] = field(default_factory=deque)

    def fail_next(
        self,
        count: int,
        status: int,
        body: object,
        *,
        headers: dict[str, str] | None = None,
        path_prefix: str = "",
    ) -> None:
        for _ in range(count):
            self.failures.append(ScriptedFailure(status, body, dict(headers or {}), path_prefix))


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    status: int
    at: float


class StandIn:
    """Base class: subclasses add routes in `routes()` and describe their error shapes."""

    name = "stand-in"

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token
        self.faults = Faults()
        self.calls: list[Call] = []
        self.rate_limited = 0  # how many 429s the rate limit gave
        self._window: deque[float] = deque()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self.port: int | None = None
        self.app = web.Application(middlewares=[self._middleware], client_max_size=8 * 1024**2)
        self.routes(self.app)

    # --- to override -------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def error_response(self, status: int, message: str, code: str) -> web.Response:
        """The vendor's error shape for a generic failure (auth, rate limit)."""
        return web.json_response({"error": code, "message": message}, status=status)

    def authorized(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        return request.headers.get("Authorization", "") == f"Bearer {self.token}"

    def unauthorized(self, request: web.Request) -> web.Response:
        return self.error_response(401, "Authentication credentials not found.", "UNAUTHORIZED")

    def rate_limited_response(self, retry_after: float) -> web.Response:
        resp = self.error_response(429, "Rate limit exceeded.", "RATE_LIMIT")
        resp.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
        return resp

    def exempt(self, request: web.Request) -> bool:
        """Paths that are never counted, delayed or failed (test helpers, the sandbox page)."""
        return request.path.startswith("/_sandbox")

    # --- machinery ---------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.exempt(request):
            return await handler(request)
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        response = await self._guarded(request, handler)
        self.calls.append(Call(request.method, request.path, response.status, time.monotonic()))
        return response

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.faults.rate_limit is not None:
            now = time.monotonic()
            while self._window and self._window[0] <= now - self.faults.rate_window:
                self._window.popleft()
            if len(self._window) >= self.faults.rate_limit:
                self.rate_limited += 1
                oldest = self._window[0] if self._window else now
                return self.rate_limited_response(oldest + self.faults.rate_window - now)
            self._window.append(now)
        for failure in list(self.faults.failures):
            if request.path.startswith(failure.path_prefix):
                self.faults.failures.remove(failure)
                if isinstance(failure.body, str):
                    resp = web.Response(status=failure.status, text=failure.body)
                else:
                    resp = web.json_response(failure.body, status=failure.status)
                resp.headers.update(failure.headers)
                return resp
        if not self.authorized(request):
            return self.unauthorized(request)
        return await handler(request)

    def count(self, path_prefix: str = "", method: str | None = None) -> int:
        """Requests received whose path starts with `path_prefix` (and of `method`, if given)."""
        return sum(
            1
            for c in self.calls
            if c.path.startswith(path_prefix) and (method is None or c.method == method)
        )

    def counts(self) -> Counter[str]:
        return Counter(f"{c.method} {c.path}" for c in self.calls)

    @property
    def url(self) -> str:
        assert self.port is not None, "stand-in not started"
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> StandIn:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_in_thread(self, port: int = 0) -> StandIn:
        """Serve from a private event loop on a daemon thread (for sync callers)."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._thread_loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start(port))
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"{self.name}-stand-in", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.name} stand-in did not start")
        return self

    def stop_thread(self) -> None:
        if self._thread_loop is not None and self._thread is not None:
            self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
            self._thread.join(10)
            self._thread = None
            self._thread_loop = None
