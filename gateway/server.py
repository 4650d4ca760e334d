"""How the gateway runs as a process: the proxy and admin listeners in one event loop, and its signals.

Both listeners are granian servers embedded in the gateway's own asyncio loop. Granian (hyper) rather than
uvicorn because it bounds what a slow or hostile client can hold: a header-read timeout cuts slowloris
connections (uvicorn has none, encode/uvicorn#157), oversized headers get 431 before the app runs, and
its HTTP/1 parser refuses obs-fold, bare LF, whitespace before the colon and CR in values. See
docs/security.md for the measurements.

SIGTERM: readiness turns 503 at once, requests keep being served for `shutdown.drain_seconds` (so load
balancers notice before the listener closes), then the listener closes, in-flight requests finish (at most
`shutdown.timeout_seconds`), and the process exits 0. SIGHUP reloads the config file. SIGINT stops at once
(after in-flight requests).

One process, one event loop, one worker: scale with replicas (README "Scaling").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

import uvicorn
from granian.constants import HTTPModes, Interfaces, SSLProtocols
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server.embed import Server

from . import problems
from .app import GatewayApp
from .config import Config
from .proxy import Receive, Send

log = logging.getLogger("zgw_gateway")

# Room for the request line on top of limits.max_header_bytes in hyper's read buffer; hyper answers 431
# when a head does not fit. Hyper refuses a buffer below 8 KiB.
_REQUEST_LINE_ALLOWANCE = 8192
# Granian's own loggers go to the root logger (logs.setup formats them); its banner and per-worker
# chatter stay below the gateway's level.
_GRANIAN_LOGGING: dict[str, Any] = {
    "loggers": {
        "_granian": {"handlers": [], "level": "WARNING", "propagate": True},
        "granian.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
    }
}


class _Tracked:
    """The proxy app, counting requests in flight so that shutdown waits for them before closing pools.

    Granian resolves its worker as soon as it is told to stop; the lifespan shutdown (which closes the
    upstream connection pools) is held back here until the last request has finished or the shutdown
    timeout has passed.
    """

    def __init__(self, app: GatewayApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout
        self.active = 0
        self.started = False
        self._idle = asyncio.Event()
        self._idle.set()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        self.active += 1
        self._idle.clear()
        seen = _Seen()

        async def receive_noting() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.disconnect":
                seen.disconnect = True
            return message

        async def send_noting(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen.started = True
            await send(message)

        try:
            await self.app(scope, receive_noting, send_noting)
            if seen.disconnect and not seen.started:
                await _malformed_body(send)
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.app.startup()
                self.started = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.wait_idle()
                await self.app.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def wait_idle(self) -> None:
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.timeout or None)
        if self.active:
            log.warning(
                "shutdown timeout reached, requests cut",
                extra={"event": "shutdown", "in_flight": self.active, "waited": round(time.monotonic() - started, 3)},
            )


class _Seen:
    __slots__ = ("disconnect", "started")

    def __init__(self) -> None:
        self.disconnect = False
        self.started = False


async def _malformed_body(send: Send) -> None:
    """Granian reports a malformed chunked body to the app as a disconnect, and would answer 500 for an app
    that then sends nothing. The caller may still be there: tell it 400, as RFC 9112 section 7.1 asks."""
    body = problems.BAD_REQUEST.body("The request body is malformed or ended early.", "")
    headers = [
        (b"content-type", problems.CONTENT_TYPE),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    with contextlib.suppress(Exception):  # a caller that really left cannot be told anything
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _NoBanner(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Embedded server is experimental")


def _granian(app: Any, host: str, port: int, config: Config, *, admin: bool) -> Any:  # granian.stop() is untyped
    limits = config.limits
    tls = None if admin else config.listen.tls
    return Server(
        app,
        address=host,
        port=port,
        # ASGINL: the admin app has no lifespan; the proxy's lifespan opens and closes the upstream pools.
        interface=Interfaces.ASGINL if admin else Interfaces.ASGI,
        # HTTP/1.1 only: no h2c upgrade or prior-knowledge HTTP/2 on the cleartext port, one set of limits.
        http=HTTPModes.http1,
        websockets=False,
        backlog=2048,
        # Requests granian hands to the app at once; beyond limits.max_in_flight the app answers a fast 503,
        # so granian must let that many (and some) through rather than queue them silently.
        backpressure=limits.max_in_flight + 256,
        http1_settings=HTTP1Settings(
            header_read_timeout=int(limits.header_read_timeout * 1000),
            keep_alive=True,
            max_buffer_size=max(limits.max_header_bytes + _REQUEST_LINE_ALLOWANCE, 8192),
        ),
        log_enabled=True,
        log_level=LogLevels.warning,
        log_dictconfig=_GRANIAN_LOGGING,
        log_access=False,
        ssl_cert=tls.cert_file if tls else None,
        ssl_key=tls.key_file if tls else None,
        # Legacy callers: TLS 1.2 is still common in the estates this gateway serves.
        ssl_protocol_min=SSLProtocols.tls12,
    )


Extra = list[tuple[object, str, int]]


class _ExtraServer(uvicorn.Server):
    """A uvicorn server for the demo's sandbox upstream, whose signals the gateway handles."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


async def serve(app: GatewayApp, extra: Extra | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code. `extra` apps (the demo's sandbox) run alongside."""
    config = app.gateway.config
    tracked = _Tracked(app, config.shutdown.timeout_seconds)
    proxy = _granian(tracked, config.listen.host, config.listen.port, config, admin=False)
    admin = _granian(app.admin, config.admin.host, config.admin.port, config, admin=True)
    logging.getLogger("_granian").addFilter(_NoBanner())  # after granian's dictConfig, which resets filters
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    background: set[asyncio.Task[None]] = set()

    async def drain_then_stop() -> None:
        app.start_draining()
        log.info("draining", extra={"event": "shutdown", "drain_seconds": config.shutdown.drain_seconds})
        await asyncio.sleep(config.shutdown.drain_seconds)
        proxy.stop()

    def on_term() -> None:
        if not stopping.is_set():
            stopping.set()
            task = loop.create_task(drain_then_stop())
            background.add(task)
            task.add_done_callback(background.discard)

    def on_int() -> None:
        stopping.set()
        app.start_draining()
        proxy.stop()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, on_int)
    loop.add_signal_handler(signal.SIGHUP, lambda: app.reload("SIGHUP"))

    extras = [
        _ExtraServer(
            uvicorn.Config(a, host=h, port=p, loop="none", log_config=None, access_log=False, proxy_headers=False)  # type: ignore[arg-type]
        )
        for a, h, p in extra or []
    ]
    admin_task = asyncio.create_task(admin.serve())
    extra_tasks = [asyncio.create_task(s.serve()) for s in extras]
    failed = False
    try:
        await proxy.serve()
    except Exception as exc:
        failed = True
        log.error("the proxy listener failed", extra={"event": "startup_failed", "error": type(exc).__name__})
    finally:
        admin.stop()
        for s in extras:
            s.should_exit = True
        results = await asyncio.gather(admin_task, *extra_tasks, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    if failed or not tracked.started or any(isinstance(r, BaseException) for r in results):
        log.error("the gateway did not start or stop cleanly", extra={"event": "startup_failed"})
        return 1
    log.info("stopped", extra={"event": "shutdown"})
    return 0


def run(app: GatewayApp, extra: Extra | None = None) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(app, extra))
    return int(uvloop.run(serve(app, extra)))
