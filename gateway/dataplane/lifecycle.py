"""How the gateway lives: start, secret and config reloads, readiness, draining, and the admin port.

The admin endpoints (/metrics, /-/healthy, /-/ready) are a Starlette app on their own port, never on the
proxy port. Readiness makes no upstream call: it is the secrets being readable and not draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route as HttpRoute

from gateway.config import loading as config_mod
from gateway.config.loading import Config, ConfigError
from gateway.dataplane.runtime import Runtime

log = logging.getLogger("zgw_gateway")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Lifecycle:
    """Start, reload, readiness and shutdown of one gateway process, around its `Runtime`."""

    def __init__(self, runtime: Runtime, config_path: Path | None, clock: Callable[[], float]) -> None:
        self.runtime = runtime
        self.config_path = config_path
        self.clock = clock
        self.draining = False
        self.started = False
        self.active = 0  # requests being handled (refused ones too), for a shutdown that lets them finish
        self._idle: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._config_stamp = self._stamp()
        runtime.metrics.last_reload.set(clock())
        self.admin = self._admin_app()

    def request_done(self) -> None:
        self.active -= 1
        if not self.active and self._idle is not None:
            self._idle.set()

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # The server stops waiting for requests when told to stop; the pools must outlive them.
                await self.wait_idle(self.runtime.snapshot.config.shutdown.timeout_seconds)
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        if self.started:
            return
        self.started = True
        for problem in self.runtime.problems():
            log.error("not ready: %s", problem, extra={"event": "secret_unavailable"})
        # What exists now (config, routes, libraries) lives as long as the process: the collector need not
        # walk it again on every generation-2 pass, which took a measurable share of the hot path (bench/README.md).
        gc.collect()
        gc.freeze()
        self._tasks.append(asyncio.create_task(self._watch()))
        self._set_ready()
        snapshot = self.runtime.snapshot
        log.info(
            "started",
            extra={
                "event": "startup",
                "components": sorted(snapshot.config.components),
                "callers": sorted(snapshot.callers.callers),
            },
        )

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self.runtime.close()

    async def wait_idle(self, timeout: float) -> None:
        """Until no request is in flight, at most `timeout` seconds."""
        if self.active:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout or None)
        if self.active:
            log.warning("shutdown timeout reached, requests cut", extra={"event": "shutdown", "in_flight": self.active})

    def ready(self) -> bool:
        return not self.draining and self.runtime.secrets.ready()

    def _set_ready(self) -> None:
        self.runtime.metrics.ready.set(1 if self.ready() else 0)

    def start_draining(self) -> None:
        """Readiness turns 503 at once; requests are still served until the server stops."""
        self.draining = True
        self._set_ready()

    async def _watch(self) -> None:
        """Re-read changed secret files and a changed config file, every `secrets.poll_seconds`."""
        while True:
            await asyncio.sleep(self.runtime.snapshot.config.secrets.poll_seconds)
            try:
                self.poll_secrets()
                stamp = self._stamp()
                if stamp != self._config_stamp:
                    self._config_stamp = stamp
                    self.reload("file changed")
            except Exception:
                log.exception("watch failed", extra={"event": "watch_error"})

    def poll_secrets(self) -> None:
        rt = self.runtime
        result = rt.secrets.poll()
        snapshot = rt.snapshot
        for ref in result.changed:
            clients = {
                c.client_id for caller in snapshot.callers.callers.values() for c in caller.credentials.values()
                if c.secret == ref
            }  # fmt: skip
            evicted = rt.tokens.evict_clients(clients)
            rt.metrics.secret_reloads("success").inc()
            log.info(
                "secret changed",
                extra={"event": "secret_reload", "secret": ref.describe(), "tokens_evicted": evicted},
            )
        if result.changed:
            snapshot.key_problems = snapshot.callers.reload_keys()
        for ref in result.failed:
            rt.metrics.secret_reloads("failure").inc()
            log.error(
                "secret unreadable, last good value kept",
                extra={"event": "secret_reload_failed", "secret": ref.describe()},
            )
        self._set_ready()

    def reload(self, reason: str) -> bool:
        """Load the config file again; on any error keep the running config and count the failure."""
        if self.config_path is None:
            return False
        rt = self.runtime
        old = rt.snapshot.config
        try:
            config = rt.apply(config_mod.load(self.config_path)).config
        except ConfigError as exc:
            rt.metrics.config_reloads("failure").inc()
            log.error(
                "config reload failed, keeping the running config",
                extra={"event": "config_reload_failed", "reason": reason, "errors": exc.errors},
            )
            return False
        changed = sorted(k for k in Config.model_fields if getattr(old, k) != getattr(config, k))
        if old.listen != config.listen or old.admin != config.admin:
            log.warning("listen and admin addresses change only on restart", extra={"event": "config_reload"})
        rt.metrics.config_reloads("success").inc()
        rt.metrics.last_reload.set(self.clock())
        self._set_ready()
        log.info("config reloaded", extra={"event": "config_reload", "reason": reason, "changed": changed})
        return True

    def _stamp(self) -> tuple[int, int] | None:
        if self.config_path is None:
            return None
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def _admin_app(self) -> Starlette:
        async def metrics(_: Request) -> Response:
            return Response(generate_latest(self.runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

        async def healthy(_: Request) -> Response:
            return PlainTextResponse("ok\n")

        async def ready(_: Request) -> Response:
            if self.ready():
                return PlainTextResponse("ready\n")
            reasons = ["draining"] if self.draining else self.runtime.problems()
            return JSONResponse({"ready": False, "reasons": reasons}, status_code=503)

        return Starlette(
            routes=[
                HttpRoute("/metrics", metrics),
                HttpRoute("/-/healthy", healthy),
                HttpRoute("/-/ready", ready),
            ]
        )
