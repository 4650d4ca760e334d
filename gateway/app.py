"""Where a request goes: the gateway's ASGI application, one request read top to bottom in `handle`.

    route -> caller -> allowed? -> credentials -> token -> headers -> forward -> record

`create_app(config)` builds it. Everything derived from the config lives in a `Gateway` object that a
reload replaces whole, so a request sees one consistent config from start to end. The admin endpoints
(/metrics, /-/healthy, /-/ready) are a separate Starlette app on the admin port (`app.admin`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route as HttpRoute

from . import config as config_mod
from . import logs, problems, proxy, tracing
from .breaker import CircuitBreaker
from .callers import Caller, CallerDirectory
from .config import Config, ConfigError
from .metrics import Metrics, forbidden_code, method_label
from .proxy import Receive, Send
from .rewrite import UrlRewriter, is_json_content_type
from .routing import Route, RouteTable, is_safe_path
from .secrets import SecretStore
from .tokens import TokenCache
from .upstream import Pool

log = logging.getLogger("zgw_gateway")

# Headers the gateway never forwards as the caller sent them: credentials meant for the gateway,
# identity the gateway decides itself, and hop-by-hop fields (proxy.HOP_BY_HOP).
_ALWAYS_DROPPED = frozenset(
    {
        b"authorization", b"cookie", b"host", b"content-length", b"forwarded", b"x-real-ip",
        b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
        b"x-forwarded-prefix", b"x-request-id", b"traceparent", b"expect",
    }
) | proxy.HOP_BY_HOP  # fmt: skip
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# W3C Trace Context 3.2: version ff and all-zero ids are invalid.
_TRACEPARENT = re.compile(rb"^(?!ff)[0-9a-f]{2}-(?!0{32})([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
_ID_SEGMENT = re.compile(r"/(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|\d+)(?=/|$)")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Gateway:
    """Everything derived from one config: routes, callers, secrets, tokens, breakers, rewriter."""

    def __init__(
        self, config: Config, metrics: Metrics, clock: Callable[[], float], environ: dict[str, str] | None
    ) -> None:
        self.config = config
        self.clock = clock
        ssl_contexts = {name: proxy.ssl_context(comp) for name, comp in config.components.items()}
        self.routes = RouteTable(config, ssl_contexts)
        self.secrets = SecretStore(config.secret_refs(), environ)
        self.callers = CallerDirectory(config, self.secrets, clock)
        self.key_problems = self.callers.reload_keys()
        self.tokens = TokenCache(config.token, clock)
        cb = config.circuit_breaker
        self.breakers: dict[str, CircuitBreaker] = {}
        if cb.enabled:
            for name in config.components:
                gauge = metrics.circuit_state.labels(name)
                self.breakers[name] = CircuitBreaker(cb.failure_threshold, cb.open_seconds, clock, gauge.set)
        pairs = [
            (comp.upstream, config.public_url + comp.prefix) for comp in config.components.values() if comp.rewrite_urls
        ]
        self.rewriter = UrlRewriter(pairs) if pairs else None
        self.pools: dict[str, Pool] = {}
        self.in_flight: dict[str, int] = dict.fromkeys(config.components, 0)
        self.total_in_flight = 0
        ident = config.identity
        self.dropped_headers = _ALWAYS_DROPPED | {
            ident.api_key_header.lower().encode(),
            ident.cert_subject_header.lower().encode(),
            ident.user_id_header.lower().encode(),
            ident.user_representation_header.lower().encode(),
        }
        self.user_id_header = ident.user_id_header.lower().encode()
        self.user_rep_header = ident.user_representation_header.lower().encode()
        self.log_headers = [h.encode() for h in config.log.headers]

    def problems(self) -> list[str]:
        return self.secrets.problems() + self.key_problems

    def pool(self, route: Route) -> Pool:
        found = self.pools.get(route.name)
        if found is None:
            found = self.pools[route.name] = proxy.client_pool(route, route.ssl)
        return found

    def adopt_pools(self, old: Gateway) -> None:
        """Keep the connections of components whose config did not change; close the others' pools."""
        for name, pool in old.pools.items():
            if self.config.components.get(name) == old.config.components[name]:
                self.pools[name] = pool
            else:
                pool.close()

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


class GatewayApp:
    """The ASGI application on the proxy port."""

    def __init__(
        self,
        config: Config,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        environ: dict[str, str] | None = None,
        config_path: str | Path | None = None,
    ) -> None:
        self.metrics = Metrics(registry if registry is not None else CollectorRegistry())
        self.clock = clock
        self.environ = environ
        self.config_path = Path(config_path) if config_path is not None else None
        self.gateway = Gateway(config, self.metrics, clock, environ)
        self.metrics.prepare(list(self.gateway.callers.callers), list(config.components))
        self.metrics.last_reload.set(clock())
        self.draining = False
        self.started = False
        self.active = 0  # requests being handled, for a shutdown that lets them finish
        self._idle: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._config_stamp = self._stamp()
        self.admin = self._admin_app()
        self.tracer = tracing.Tracer(config.tracing)

    # -- the request path ---------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.active += 1
            try:
                await self.handle(scope, receive, send)
            finally:
                self.active -= 1
                if not self.active and self._idle is not None:
                    self._idle.set()
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        # websocket: ZGW has none; the server answers 403/close when the app does nothing.

    async def handle(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        gw = self.gateway
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        headers = dict(raw_headers)
        peer = gw.callers.peer(scope.get("client"), headers.get(b"x-forwarded-for"))
        incoming_id = headers.get(b"x-request-id") if peer.trusted else None
        random = os.urandom(40).hex()  # one syscall for the request id, a trace id and a span id
        request_id = incoming_id.decode() if incoming_id and _REQUEST_ID.match(incoming_id) else random[:32]
        ctx = _Context(self, gw, method, raw_path, request_id, peer.ip, start)
        incoming_trace = headers.get(b"traceparent")
        trace = _TRACEPARENT.match(incoming_trace) if incoming_trace else None
        if trace is None:  # W3C Trace Context: start a trace when the caller sent none (or a malformed one)
            ctx.trace_id = random[32:64]
            traceparent = f"00-{ctx.trace_id}-{random[64:]}-01"
        else:
            ctx.trace_id = trace.group(1).decode()
            traceparent = trace.group(0).decode()
        ctx.traceparent = traceparent
        if gw.log_headers:
            ctx.log_headers = logs.allowed_headers(raw_headers, gw.log_headers)

        # 1. Limits and path hygiene, before anything else looks at the request.
        if sum(len(k) + len(v) + 4 for k, v in raw_headers) > gw.config.limits.max_header_bytes:
            return await ctx.reject(send, problems.HEADERS_TOO_LARGE, "The request headers exceed the limit.")
        if not is_safe_path(raw_path):
            return await ctx.reject(send, problems.BAD_PATH, "The path holds a segment the gateway refuses.")

        # 2. Route: the longest configured prefix picks the component.
        route = gw.routes.match(raw_path)
        if route is None:
            return await ctx.reject(send, problems.NO_ROUTE, "No component serves this path.")
        ctx.route = route

        # 3. Caller: API key, certificate subject (via a trusted proxy) or client network.
        caller = gw.callers.identify(headers, peer)
        if caller is None:
            return await ctx.reject(
                send, problems.UNKNOWN_CALLER, "Send a valid API key, or call from a known network."
            )
        ctx.caller = caller
        if route.name not in caller.components:
            return await ctx.reject(send, problems.FORBIDDEN_COMPONENT, f"Not allowed on '{route.name}'.")
        if caller.methods is not None and method not in caller.methods:
            return await ctx.reject(send, problems.FORBIDDEN_METHOD, f"Method {method} is not allowed.")
        if caller.limiter is not None and (wait := caller.limiter.take()):
            return await ctx.reject(send, problems.RATE_LIMITED, "Slow down.", retry_after=wait)
        if gw.total_in_flight >= gw.config.limits.max_in_flight or (
            gw.in_flight[route.name] >= route.component.max_in_flight
        ):
            self.metrics.child(self.metrics.upstream_failures, route.name, "overloaded").inc()
            return await ctx.reject(send, problems.OVERLOADED, "Too many requests in flight.", retry_after=1)
        breaker = gw.breakers.get(route.name)
        if breaker is not None and not breaker.allow():
            self.metrics.child(self.metrics.upstream_failures, route.name, "circuit_open").inc()
            return await ctx.reject(
                send,
                problems.CIRCUIT_OPEN,
                "The upstream failed repeatedly.",
                retry_after=breaker.retry_after(),
            )

        # 4. End user, for the audit trail upstream: fixed per caller, or from headers when allowed.
        user_id, user_rep = caller.user_id, caller.user_representation
        if caller.user_from_headers:
            try:
                user_id = _user_value(headers.get(gw.user_id_header), user_id)
                user_rep = _user_value(headers.get(gw.user_rep_header), user_rep)
            except ValueError:
                return await ctx.reject(send, problems.BAD_USER, "User headers must be UTF-8, at most 255 chars.")

        # 5. Credentials and token: cached per (client_id, secret version, user).
        creds = caller.credentials[route.name]
        secret = gw.secrets.get(creds.secret)
        if secret is None:
            self.metrics.child(self.metrics.mint_failures, "secret_unavailable").inc()
            return await ctx.reject(send, problems.CREDENTIALS_UNAVAILABLE, "Ask the operator to check the secret.")
        key = (creds.client_id, gw.secrets.version(creds.secret), user_id, user_rep)
        minted, cached = gw.tokens.get(key, secret)
        self.metrics.child(self.metrics.token_cache, "hit" if cached else "miss").inc()
        if not cached:
            self.metrics.child(self.metrics.tokens_minted, caller.name, route.name).inc()

        def refresh_token() -> bytes:
            gw.tokens.evict(key)
            fresh, _ = gw.tokens.get(key, secret)
            self.metrics.child(self.metrics.tokens_minted, caller.name, route.name).inc()
            return fresh.header_value

        # 6. Body: refuse what is too large before any upstream I/O; small bodies are read (replayable).
        comp = route.component
        length_header = headers.get(b"content-length")
        length: int | None = None
        if length_header is not None:
            if not length_header.isdigit():
                return await ctx.reject(send, problems.BAD_REQUEST, "Content-Length is not a number.")
            length = int(length_header)
            if length > comp.max_body_bytes:
                self.metrics.child(self.metrics.aborted, route.name, "body_too_large").inc()
                return await ctx.reject(send, problems.BODY_TOO_LARGE, f"At most {comp.max_body_bytes} bytes.")
        rewrite = gw.rewriter if comp.rewrite_urls else None
        rewrite_body = (
            rewrite is not None
            and method in _BODY_METHODS
            and is_json_content_type((headers.get(b"content-type") or b"").decode("latin-1"))
        )
        body: bytes | AsyncIterator[bytes] | None = None
        limits = gw.config.limits
        try:
            if length is not None and (
                length <= proxy.BUFFER_LIMIT or (rewrite_body and length <= proxy.REWRITE_BUFFER_LIMIT)
            ):
                body = await proxy.read_body(receive, comp.max_body_bytes, limits.body_read_timeout) if length else b""
                if rewrite_body and body:
                    body = rewrite.to_upstream(body)  # type: ignore[union-attr]
                length = len(body)
                ctx.bytes_in = len(body)
            elif length is not None or b"transfer-encoding" in headers:
                body = ctx.count_in(proxy.request_body(receive, comp.max_body_bytes, limits.body_read_timeout))
                if rewrite_body:
                    body, length = proxy.rewrite_stream(body, rewrite), None  # type: ignore[arg-type]
        except (proxy.BodyTooLarge, proxy.BodyTimeout, proxy.ClientGone) as exc:
            return await self._body_failed(ctx, send, route, exc)

        # 7. Headers upstream: the token first, the caller's (cleaned), then the ones the gateway owns.
        up_headers = self._upstream_headers(gw, raw_headers, headers, minted.header_value)
        if up_headers is None:
            return await ctx.reject(send, problems.BAD_REQUEST, "A header name or value is malformed.")
        if trace is None and b"tracestate" in headers:
            # W3C Trace Context 3.3: a tracestate without a valid traceparent belongs to no trace.
            up_headers = [(k, v) for k, v in up_headers if k != b"tracestate"]
        forwarded_for = peer.ip.encode()
        if peer.trusted and (xff := headers.get(b"x-forwarded-for")):
            forwarded_for = xff + b", " + (scope.get("client") or ("",))[0].encode()
        scheme = b"https" if scope.get("scheme") == "https" else b"http"
        xfp = headers.get(b"x-forwarded-proto")
        if peer.trusted and xfp in (b"http", b"https"):
            scheme = xfp
        up_headers += [
            (b"host", route.host_header),
            (b"x-forwarded-for", forwarded_for),
            (b"x-forwarded-proto", scheme),
            (b"x-forwarded-host", route.public_host_header),
            (b"x-request-id", request_id.encode()),
            (b"traceparent", traceparent.encode()),
        ]
        if route.crs is not None:
            # ZGW.md section 4: add when absent, never overwrite - a wrong value must still get its 406.
            if b"accept-crs" not in headers:
                up_headers.append((b"accept-crs", route.crs))
            if b"content-crs" not in headers:
                up_headers.append((b"content-crs", route.crs))
        chunked = False
        if isinstance(body, bytes):
            if body or method in _BODY_METHODS:
                up_headers.append((b"content-length", b"%d" % len(body)))
        elif body is not None:
            if length is not None:
                up_headers.append((b"content-length", b"%d" % length))
            else:
                chunked = True
                up_headers.append((b"transfer-encoding", b"chunked"))
        elif method in _BODY_METHODS:
            up_headers.append((b"content-length", b"0"))
        if rewrite is not None:
            # Links in compressed bodies cannot be rewritten: ask the upstream for plain bytes.
            up_headers = [(k, v) for k, v in up_headers if k != b"accept-encoding"]
            up_headers.append((b"accept-encoding", b"identity"))
            if query:
                query = rewrite.query_to_upstream(query)

        # 8. Forward and stream back.
        fw = proxy.Forward(
            route=route,
            pool=gw.pool(route),
            breaker=breaker,
            method=method,
            target=route.upstream_target(raw_path, query),
            headers=up_headers,
            body=body,
            chunked=chunked,
            extra_response_headers=[(b"x-request-id", request_id.encode())],
            rewriter=rewrite,
            refresh_token=refresh_token,
            retry_enabled=gw.config.retry.enabled,
            on_retry=lambda reason: self.metrics.child(self.metrics.retries, route.name, reason).inc(),
        )
        self.metrics.child(self.metrics.overhead, route.name).observe(time.perf_counter() - start)
        outcome = ctx.outcome
        gw.in_flight[route.name] += 1
        gw.total_in_flight += 1
        in_flight = self.metrics.child(self.metrics.in_flight, route.name)
        in_flight.inc()
        try:
            await proxy.forward(fw, send, outcome)
        except (proxy.BodyTooLarge, proxy.BodyTimeout, proxy.ClientGone) as exc:
            return await self._body_failed(ctx, send, route, exc)
        except proxy.UpstreamAborted:
            self.metrics.child(self.metrics.aborted, route.name, "upstream_reset").inc()
            ctx.finish(outcome.status, error="upstream_reset")
            raise  # the server aborts the caller's connection: a cut body must not look complete
        finally:
            gw.in_flight[route.name] -= 1
            gw.total_in_flight -= 1
            in_flight.dec()
        if outcome.problem is not None:
            self.metrics.child(self.metrics.upstream_failures, route.name, outcome.error).inc()
            retry_after = 1 if outcome.problem.status == 503 else None  # pool exhausted: come back soon
            return await ctx.reject(
                send, outcome.problem, "See the gateway's log for this request id.", retry_after=retry_after
            )

        # 9. Record.
        status = outcome.upstream_status
        if status == 403:
            code = outcome.forbidden_code if outcome.forbidden_code else "other"
            self.metrics.child(self.metrics.upstream_forbidden, route.name, forbidden_code(code)).inc()
        elif status in (406, 412) and comp.crs is not None:
            self.metrics.child(self.metrics.crs_rejections, route.name, str(status)).inc()
        self.metrics.child(self.metrics.upstream_duration, route.name).observe(outcome.upstream_seconds)
        ctx.finish(status, source="upstream")

    async def _body_failed(self, ctx: _Context, send: Send, route: Route, exc: Exception) -> None:
        """The caller's body went wrong: too large, too slow, or cut off."""
        if isinstance(exc, proxy.BodyTooLarge):
            reason, problem, detail = "body_too_large", problems.BODY_TOO_LARGE, "The body exceeds the limit."
        elif isinstance(exc, proxy.BodyTimeout):
            reason, problem, detail = "body_timeout", problems.BODY_TIMEOUT, "The body stalled."
        else:
            # Granian reports a malformed chunked body as a disconnect, and would answer 500 for an app that
            # then sends nothing. The caller may still be there: it gets 400 (RFC 9112 section 7.1).
            reason, problem, detail = "client_gone", problems.BAD_REQUEST, "The body is malformed or ended early."
        self.metrics.child(self.metrics.aborted, route.name, reason).inc()
        await ctx.reject(send, problem, detail, close=True)

    def _upstream_headers(
        self, gw: Gateway, raw_headers: list[tuple[bytes, bytes]], headers: dict[bytes, bytes], authorization: bytes
    ) -> list[tuple[bytes, bytes]] | None:
        """The token, then the caller's headers that may go upstream; None when one is malformed."""
        dropped = gw.dropped_headers
        connection = headers.get(b"connection")
        if connection is not None:
            dropped = dropped | {v.strip().lower() for v in connection.split(b",")}
        out = [(b"authorization", authorization)]
        for name, value in raw_headers:
            if name in dropped:
                continue
            if b"_" in name:
                continue  # nginx's default: underscores can collide with '-' in CGI-style header maps
            if not value.isascii() or b"\r" in value or b"\n" in value or b"\x00" in value:
                return None
            out.append((name, value))
        return out

    # -- lifecycle: startup, secret and config reloads, readiness, shutdown -------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # The server stops waiting for requests when told to stop; the pools must outlive them.
                await self.wait_idle(self.gateway.config.shutdown.timeout_seconds)
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        if self.started:
            return
        self.started = True
        for problem in self.gateway.problems():
            log.error("not ready: %s", problem, extra={"event": "secret_unavailable"})
        # What exists now (config, routes, libraries) lives as long as the process: the collector need not
        # walk it again on every generation-2 pass (measured: ~3% of the hot path's time).
        gc.collect()
        gc.freeze()
        self._tasks.append(asyncio.create_task(self._watch()))
        self.metrics.ready.set(1 if self.ready() else 0)
        log.info(
            "started",
            extra={
                "event": "startup",
                "components": sorted(self.gateway.config.components),
                "callers": sorted(self.gateway.callers.callers),
            },
        )

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self.gateway.close()
        self.tracer.shutdown()

    async def wait_idle(self, timeout: float) -> None:
        """Until no request is in flight, at most `timeout` seconds."""
        if self.active:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout or None)
        if self.active:
            log.warning("shutdown timeout reached, requests cut", extra={"event": "shutdown", "in_flight": self.active})

    def ready(self) -> bool:
        return not self.draining and self.gateway.secrets.ready()

    def start_draining(self) -> None:
        """Readiness turns 503 at once; requests are still served until the server stops."""
        self.draining = True
        self.metrics.ready.set(0)

    async def _watch(self) -> None:
        """Re-read changed secret files and a changed config file, every `secrets.poll_seconds`."""
        while True:
            await asyncio.sleep(self.gateway.config.secrets.poll_seconds)
            try:
                self.poll_secrets()
                stamp = self._stamp()
                if stamp != self._config_stamp:
                    self._config_stamp = stamp
                    self.reload("file changed")
            except Exception:
                log.exception("watch failed", extra={"event": "watch_error"})

    def poll_secrets(self) -> None:
        gw = self.gateway
        result = gw.secrets.poll()
        for ref in result.changed:
            clients = {
                c.client_id
                for caller in gw.callers.callers.values()
                for c in caller.credentials.values()
                if c.secret == ref
            }
            evicted = sum(gw.tokens.evict_client(client_id) for client_id in clients)
            self.metrics.secret_reloads.labels("success").inc()
            log.info(
                "secret changed",
                extra={"event": "secret_reload", "secret": ref.describe(), "tokens_evicted": evicted},
            )
        if result.changed:
            gw.key_problems = gw.callers.reload_keys()
        for ref in result.failed:
            self.metrics.secret_reloads.labels("failure").inc()
            log.error(
                "secret unreadable, last good value kept",
                extra={"event": "secret_reload_failed", "secret": ref.describe()},
            )
        self.metrics.ready.set(1 if self.ready() else 0)

    def reload(self, reason: str) -> bool:
        """Load the config file again; on any error keep the running config and count the failure."""
        if self.config_path is None:
            return False
        try:
            config = config_mod.load(self.config_path)
            new = Gateway(config, self.metrics, self.clock, self.environ)
        except ConfigError as exc:
            self.metrics.config_reloads.labels("failure").inc()
            log.error(
                "config reload failed, keeping the running config",
                extra={"event": "config_reload_failed", "reason": reason, "errors": exc.errors},
            )
            return False
        old = self.gateway
        changed = sorted(k for k in Config.model_fields if getattr(old.config, k) != getattr(config, k))
        if old.config.listen != config.listen or old.config.admin != config.admin:
            log.warning("listen and admin addresses change only on restart", extra={"event": "config_reload"})
        new.adopt_pools(old)
        self.gateway = new
        self.metrics.prepare(list(new.callers.callers), list(config.components))
        self.metrics.config_reloads.labels("success").inc()
        self.metrics.last_reload.set(self.clock())
        self.metrics.ready.set(1 if self.ready() else 0)
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

    # -- the admin port ------------------------------------------------------------------------------

    def _admin_app(self) -> Starlette:
        async def metrics(_: Request) -> Response:
            return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

        async def healthy(_: Request) -> Response:
            return PlainTextResponse("ok\n")

        async def ready(_: Request) -> Response:
            if self.ready():
                return PlainTextResponse("ready\n")
            reasons = ["draining"] if self.draining else self.gateway.problems()
            return JSONResponse({"ready": False, "reasons": reasons}, status_code=503)

        return Starlette(
            routes=[
                HttpRoute("/metrics", metrics),
                HttpRoute("/-/healthy", healthy),
                HttpRoute("/-/ready", ready),
            ]
        )


def create_app(
    config: Config,
    *,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
    environ: dict[str, str] | None = None,
    config_path: str | Path | None = None,
) -> GatewayApp:
    """The gateway for `config`. Tests pass a fresh registry, a fake clock or their own environment."""
    return GatewayApp(config, registry=registry, clock=clock, environ=environ, config_path=config_path)


class _Context:
    """Per-request bookkeeping for the metrics and the access log."""

    __slots__ = (
        "app",
        "bytes_in",
        "caller",
        "client",
        "gw",
        "log_headers",
        "method",
        "outcome",
        "raw_path",
        "request_id",
        "route",
        "start",
        "trace_id",
        "traceparent",
    )  # fmt: skip

    def __init__(
        self,
        app: GatewayApp,
        gw: Gateway,
        method: str,
        raw_path: bytes,
        request_id: str,
        client: str,
        start: float,
    ) -> None:
        self.app = app
        self.gw = gw
        self.method = method
        self.raw_path = raw_path
        self.request_id = request_id
        self.client = client
        self.start = start
        self.route: Route | None = None
        self.caller: Caller | None = None
        self.trace_id = ""
        self.traceparent = ""
        self.log_headers: dict[str, str] | None = None
        self.bytes_in = 0
        self.outcome = proxy.Outcome()

    async def count_in(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in source:
            self.bytes_in += len(chunk)
            yield chunk

    async def reject(
        self, send: Send, problem: problems.Problem, detail: str, retry_after: float | None = None, close: bool = False
    ) -> None:
        body = problem.body(detail, "urn:uuid:" + _uuid_form(self.request_id))
        headers = [
            (b"content-type", problems.CONTENT_TYPE),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", self.request_id.encode()),
        ]
        if retry_after is not None:
            headers.append((b"retry-after", str(max(1, int(retry_after + 0.999))).encode()))
        if close:
            headers.append((b"connection", b"close"))
        with contextlib.suppress(Exception):  # a caller that is gone cannot be told anything
            await send({"type": "http.response.start", "status": problem.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        self.outcome.bytes_out = len(body)
        self.finish(problem.status, error=self.outcome.error or problem.code)

    def finish(self, status: int, source: str = "gateway", error: str = "") -> None:
        metrics = self.app.metrics
        caller = self.caller.name if self.caller else "unknown"
        component = self.route.name if self.route else "none"
        resource = self.route.resource(self.raw_path) if self.route else "none"
        method = method_label(self.method)
        duration = time.perf_counter() - self.start
        outcome = self.outcome
        metrics.child(metrics.requests, caller, component, method, str(status), resource, source).inc()
        metrics.child(metrics.request_duration, caller, component, method, resource).observe(duration)
        if self.bytes_in:
            metrics.child(metrics.request_bytes, caller, component).inc(self.bytes_in)
        if outcome.bytes_out:
            metrics.child(metrics.response_bytes, caller, component).inc(outcome.bytes_out)
        if self.app.tracer.enabled:
            self.app.tracer.record(
                self.traceparent,
                duration,
                status,
                {"http.request.method": method, "zgw.component": component, "zgw.resource": resource,
                 "zgw.caller": caller, "zgw.request_id": self.request_id, "error.type": error or outcome.error or None},
            )  # fmt: skip
        if not self.gw.config.log.access:
            return
        path = self.raw_path.decode("ascii", "replace")
        logs.access(
            {
                "request_id": self.request_id,
                "trace_id": self.trace_id,
                "client": self.client,
                "caller": caller,
                "component": component,
                "resource": resource,
                "method": self.method,
                "path": _ID_SEGMENT.sub("/{id}", path),
                "status": status,
                "upstream_status": outcome.upstream_status or None,
                "source": source,
                "bytes_in": self.bytes_in,
                "bytes_out": outcome.bytes_out,
                "duration": round(duration, 6),
                "upstream_duration": round(outcome.upstream_seconds, 6),
                "error": error or outcome.error or None,
                "retried": outcome.retried or None,
                **({"headers": self.log_headers} if self.log_headers is not None else {}),
            }
        )


def _uuid_form(request_id: str) -> str:
    if len(request_id) == 32:
        return f"{request_id[:8]}-{request_id[8:12]}-{request_id[12:16]}-{request_id[16:20]}-{request_id[20:]}"
    return request_id


def _user_value(raw: bytes | None, default: str) -> str:
    if raw is None:
        return default
    value = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if len(value) > 255:
        raise ValueError("too long")
    return value
