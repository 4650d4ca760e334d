"""How the gateway runs as a process: the proxy and admin listeners in one event loop, and its signals.

SIGTERM: readiness turns 503 at once, requests keep being served for `shutdown.drain_seconds` (so load
balancers notice before the listener closes), then the listeners close, in-flight requests finish (at most
`shutdown.timeout_seconds`), and the process exits 0. SIGHUP reloads the config file. SIGINT stops at once
(after in-flight requests).

One process, one event loop, one worker: scale with replicas (README "Scaling").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Generator

import uvicorn

from .app import GatewayApp
from .config import Config

log = logging.getLogger("zgw_gateway")


class _Server(uvicorn.Server):
    """A uvicorn server whose signals the gateway handles itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _uvicorn_config(app: object, host: str, port: int, config: Config, *, admin: bool) -> uvicorn.Config:
    tls = None if admin else config.listen.tls
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        lifespan="off" if admin else "on",
        loop="none",
        http="httptools",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,  # the upstream's Date passes through; two would confuse caches
        proxy_headers=False,  # the gateway decides what forwarded headers count (trusted_proxies)
        timeout_keep_alive=5,
        timeout_graceful_shutdown=int(config.shutdown.timeout_seconds) or None,
        ssl_certfile=str(tls.cert_file) if tls else None,
        ssl_keyfile=str(tls.key_file) if tls else None,
        h11_max_incomplete_event_size=config.limits.max_header_bytes,
    )


Extra = list[tuple[object, str, int]]


async def serve(app: GatewayApp, extra: Extra | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code. `extra` apps (the demo's sandbox) run alongside."""
    config = app.gateway.config
    proxy = _Server(_uvicorn_config(app, config.listen.host, config.listen.port, config, admin=False))
    admin = _Server(_uvicorn_config(app.admin, config.admin.host, config.admin.port, config, admin=True))
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    background: set[asyncio.Task[None]] = set()

    async def drain_then_stop() -> None:
        app.start_draining()
        log.info("draining", extra={"event": "shutdown", "drain_seconds": config.shutdown.drain_seconds})
        await asyncio.sleep(config.shutdown.drain_seconds)
        proxy.should_exit = True

    def on_term() -> None:
        if not stopping.is_set():
            stopping.set()
            background.add(loop.create_task(drain_then_stop()))

    def on_int() -> None:
        stopping.set()
        app.start_draining()
        proxy.should_exit = True

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, on_int)
    loop.add_signal_handler(signal.SIGHUP, lambda: app.reload("SIGHUP"))

    others = [admin] + [
        _Server(uvicorn.Config(a, host=h, port=p, loop="none", log_config=None, access_log=False))  # type: ignore[arg-type]
        for a, h, p in extra or []
    ]
    tasks = [asyncio.create_task(s.serve()) for s in others]
    try:
        await proxy.serve()
    finally:
        for s in others:
            s.should_exit = True
        await asyncio.gather(*tasks)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    if not proxy.started:
        log.error("the proxy listener did not start", extra={"event": "startup_failed"})
        return 1
    log.info("stopped", extra={"event": "shutdown"})
    return 0


def run(app: GatewayApp, extra: Extra | None = None) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(app, extra))
    return int(uvloop.run(serve(app, extra)))
