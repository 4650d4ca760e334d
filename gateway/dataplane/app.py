"""Where a request goes: the gateway's ASGI application, one request read top to bottom in `handle`.

    route -> caller -> admission -> token -> body -> turn -> headers -> circuit -> forward -> record

Each step is one method below `handle`, in that order. A step that refuses raises `problems.Refused`, which
`handle` answers with problem+json (no upstream call); the exchange is recorded either way (`exchange.py`).
`create_app(config)` builds the application; `runtime.py` holds what it knows (the current config's
snapshot, and the state that outlives a reload), `lifecycle.py` how it starts, reloads and stops.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.config.loading import Config
from gateway.dataplane import bodies, notifications, problems, proxy
from gateway.dataplane import headers as fields
from gateway.dataplane.bodies import Body
from gateway.dataplane.callers import Caller
from gateway.dataplane.exchange import Exchange
from gateway.dataplane.failures import Abort, Failure
from gateway.dataplane.lifecycle import Lifecycle
from gateway.dataplane.metrics import Metrics, forbidden_code
from gateway.dataplane.problems import Refused
from gateway.dataplane.routing import Route, is_safe_path
from gateway.dataplane.runtime import Runtime, Snapshot
from gateway.http1.pool import UpstreamError

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class GatewayApp:
    """The ASGI application on the proxy port; `admin` is the one on the admin port."""

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
        self.runtime = Runtime(config, self.metrics, clock, environ)
        self.lifecycle = Lifecycle(self.runtime, Path(config_path) if config_path is not None else None, clock)
        self.admin = self.lifecycle.admin
        self.tracer = self.runtime.tracer
        self.inbox = notifications.Inbox(self.metrics, self.runtime.secrets)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.lifecycle.active += 1
            try:
                await self.handle(scope, receive, send)
            finally:
                self.lifecycle.request_done()
        elif scope["type"] == "lifespan":
            await self.lifecycle.lifespan(receive, send)
        # websocket: ZGW has none; the server answers 403/close when the app does nothing.

    async def handle(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        snap = self.runtime.snapshot  # one config from start to end, whatever a reload does meanwhile
        ex = Exchange(scope, snap.callers, self.metrics, self.tracer, snap.access_log, snap.log_headers)
        if ex.raw_path.startswith(notifications.PREFIX):  # Open Notificaties delivering to a legacy caller
            return await self.inbox.handle(ex, snap.receivers, snap.rewriter, snap.body_read_timeout, receive, send)
        admitted = False  # counted in flight from admission, body included; landed once, however it ends
        turn = False  # a turn at the component's pool from step 6 to the end; ended once, however it ends
        body = bodies.NONE
        try:
            try:
                route = ex.route = self.route(ex, snap)
                caller = self.caller(ex, snap, route)
                self.admit(route)
                admitted = True
                token = self.token(ex, snap, caller, route)
                body = await self.body(ex, snap, route, receive)
                deadline = await self.turn(ex, route)
                turn = True
                fw = self.plan(ex, snap, route, token, body, deadline)
                self.allow(route, fw)
            except Refused as refusal:
                if bodies.unread(ex.headers, body.data):
                    refusal.close = True
                return await ex.refuse(send, refusal)
            await self.forward(ex, route, fw, send)
        finally:
            if turn:
                route.pool.end_turn()
            if admitted:
                self.runtime.land(route)

    # 1. Limits and path hygiene, then the longest configured prefix picks the component.
    def route(self, ex: Exchange, snap: Snapshot) -> Route:
        limit = snap.max_header_bytes
        # The head is the request line and the header fields (issue 20): a target alone over the limit is
        # 414 (RFC 9110 15.5.15, the caller must shorten the URI); a head over it is 431 (RFC 6585 5).
        target = len(ex.raw_path) + (len(ex.query) + 1 if ex.query else 0)
        if target > limit:
            raise Refused(problems.URI_TOO_LONG, "The request target exceeds the limit.")
        line = len(ex.method) + target + len(" HTTP/1.1\r\n") + 1
        if line + sum(len(k) + len(v) + 4 for k, v in ex.raw_headers) > limit:
            raise Refused(problems.HEADERS_TOO_LARGE, "The request line and headers exceed the limit.")
        if not is_safe_path(ex.raw_path):
            raise Refused(problems.BAD_PATH, "The path holds a segment the gateway refuses.")
        route = snap.routes.match(ex.raw_path)
        if route is None:
            raise Refused(problems.NO_ROUTE, "No component serves this path.")
        return route

    # 2. The caller: API key, certificate subject (via a trusted proxy) or client network; its permissions.
    def caller(self, ex: Exchange, snap: Snapshot, route: Route) -> Caller:
        caller = ex.caller = snap.callers.identify(ex.headers, ex.peer)
        if caller is None:
            raise Refused(
                problems.UNKNOWN_CALLER, "Send a valid API key, or call from a known network.", headers=snap.challenges
            )
        if route.name not in caller.components:
            raise Refused(problems.FORBIDDEN_COMPONENT, f"Not allowed on '{route.name}'.")
        if caller.methods is not None and ex.method not in caller.methods:
            raise Refused(problems.FORBIDDEN_METHOD, f"Method {ex.method} is not allowed.")
        if caller.limiter is not None and (wait := caller.limiter.take()):
            raise Refused(problems.RATE_LIMITED, "Slow down.", retry_after=wait)
        return caller

    # 3. Admission: a fast 503 instead of a queue when too much is in flight. An admitted request counts
    # from here, while its body is read too (issue 20): `handle` lands it exactly once.
    def admit(self, route: Route) -> None:
        if not self.runtime.take_off(route):
            self.metrics.upstream_failures(route.name, Failure.OVERLOADED).inc()
            raise Refused(problems.OVERLOADED, "Too many requests in flight.", retry_after=1)

    # 4. The token: the end user (fixed, or from headers when allowed), the credentials, the cached JWT.
    def token(
        self, ex: Exchange, snap: Snapshot, caller: Caller, route: Route
    ) -> tuple[bytes, bool, Callable[[], bytes]]:
        user_id, user_rep = caller.user_id, caller.user_representation
        if caller.user_from_headers:
            try:
                user_id = _user_value(ex.headers.get(snap.user_id_header), user_id)
                user_rep = _user_value(ex.headers.get(snap.user_rep_header), user_rep)
            except ValueError:
                raise Refused(problems.BAD_USER, "User headers must be UTF-8, at most 255 chars.") from None
        rt = self.runtime
        creds = caller.credentials[route.name]
        secret, version = rt.secrets.current(creds.secret)
        if secret is None:
            self.metrics.mint_failures("secret_unavailable").inc()
            raise Refused(problems.CREDENTIALS_UNAVAILABLE, "Ask the operator to check the secret.")
        key = (creds.client_id, version, user_id, user_rep)
        minted, cached = rt.tokens.get(key, secret)
        self.metrics.token_cache("hit" if cached else "miss").inc()
        if not cached:
            self.metrics.tokens_minted(caller.name, route.name).inc()

        def refresh() -> bytes:
            rt.tokens.evict(key)
            fresh, _ = rt.tokens.get(key, secret)
            self.metrics.tokens_minted(caller.name, route.name).inc()
            return fresh.header_value

        return minted.header_value, cached, refresh

    # 5. The body: refused when too large before any upstream I/O; small bodies are read (replayable).
    async def body(self, ex: Exchange, snap: Snapshot, route: Route, receive: Receive) -> Body:
        if not bodies.present(ex.headers):  # most ZGW requests are GETs: nothing to read or count
            return bodies.NONE
        comp = route.component

        def counted(n: int) -> None:
            ex.bytes_in += n

        try:
            return await bodies.prepare(
                ex.method,
                ex.headers,
                ex.raw_headers,
                receive,
                comp.max_body_bytes,
                snap.body_read_timeout,
                snap.rewriter if route.rewrite_urls else None,
                counted,
            )
        except Refused as refusal:
            if refusal.problem is problems.BODY_TOO_LARGE:
                self.metrics.aborted(route.name, Abort.BODY_TOO_LARGE).inc()
            raise
        except bodies.BodyError as exc:
            raise self._body_failed(route, exc) from None

    def _body_failed(self, route: Route, exc: bodies.BodyError) -> Refused:
        reason, refusal = bodies.refusal(exc)
        self.metrics.aborted(route.name, reason).inc()
        return refusal

    # 6. The turn: at most `max_connections` requests of a component go upstream at once (http1/pool.py);
    # the others wait in line here, after a body read whole has arrived (a slow one holds no turn; a streamed
    # upload streams within its turn) and before the gateway builds what it sends: a waiting request holds
    # few objects (bench/README.md, "Many callers"). The turn is held until the answer is relayed.
    # Returns the deadline of `timeouts.total`, which counts the wait.
    async def turn(self, ex: Exchange, route: Route) -> float:
        pool = route.pool
        deadline = time.monotonic() + route.total_timeout
        if pool.take_turn():
            return deadline
        started = time.perf_counter()
        try:
            await pool.wait_turn()
        except UpstreamError:
            ex.outcome.error = Failure.POOL
            self.metrics.upstream_failures(route.name, Failure.POOL).inc()
            raise Refused(problems.POOL_EXHAUSTED, _failure_detail(Failure.POOL), retry_after=1) from None
        finally:
            ex.outcome.upstream_seconds = time.perf_counter() - started  # the upstream's time, not the gateway's
        return deadline

    # 7. The headers upstream: the token first, the caller's (cleaned), then the ones the gateway owns.
    def plan(
        self,
        ex: Exchange,
        snap: Snapshot,
        route: Route,
        token: tuple[bytes, bool, Callable[[], bytes]],
        body: Body,
        deadline: float,
    ) -> proxy.Forward:
        passed = fields.to_upstream(ex.raw_headers, snap.dropped_headers)
        if passed is None:
            raise Refused(problems.BAD_REQUEST, "A header name or value is malformed.")
        if ex.trace_started and b"tracestate" in ex.headers:
            # W3C Trace Context 3.3: a tracestate without a valid traceparent belongs to no trace.
            passed = [(k, v) for k, v in passed if k != b"tracestate"]
        authorization, cached, refresh = token
        up = [(b"authorization", authorization), *passed, *self._owned(ex, route), *body.framing(ex.method)]
        rewriter = snap.rewriter if route.rewrite_urls else None
        query = ex.query
        if rewriter is not None:
            # Links in compressed bodies cannot be rewritten: ask the upstream for plain bytes.
            up = [(k, v) for k, v in up if k != b"accept-encoding"]
            up.append((b"accept-encoding", b"identity"))
            if query:
                query = rewriter.query_to_upstream(query)
        route_name = route.name
        return proxy.Forward(
            pool=route.pool,
            breaker=self.runtime.breakers.get(route_name),
            method=ex.method,
            target=route.upstream_target(ex.raw_path, query),
            headers=up,
            body=body.data,
            chunked=body.chunked,
            deadline=deadline,
            extra_response_headers=[(b"x-request-id", ex.request_id.encode())],
            rewriter=rewriter,
            refresh_token=refresh,
            token_cached=cached,
            retry_enabled=snap.retry_enabled,
            on_retry=lambda reason: self.metrics.retries(route_name, reason).inc(),
        )

    @staticmethod
    def _owned(ex: Exchange, route: Route) -> list[tuple[bytes, bytes]]:
        """X-Forwarded-*, X-Request-ID, traceparent, Host, and the CRS headers when the caller sent none."""
        headers, peer = ex.headers, ex.peer
        client = (ex.scope.get("client") or ("",))[0]
        forwarded_for = peer.ip.encode()
        if peer.trusted and (xff := headers.get(b"x-forwarded-for")):
            forwarded_for = xff + b", " + client.encode()
        scheme = b"https" if ex.scope.get("scheme") == "https" else b"http"
        xfp = headers.get(b"x-forwarded-proto")
        if peer.trusted and xfp in (b"http", b"https"):
            scheme = xfp
        owned = [
            (b"host", route.host_header),
            (b"x-forwarded-for", forwarded_for),
            (b"x-forwarded-proto", scheme),
            (b"x-forwarded-host", route.public_host_header),
            (b"x-request-id", ex.request_id.encode()),
            (b"traceparent", ex.traceparent.encode()),
        ]
        if route.crs is not None:
            # docs/zgw.md, "CRS headers": add when absent, never overwrite - a wrong value must still get its 406.
            if b"accept-crs" not in headers:
                owned.append((b"accept-crs", route.crs))
            if b"content-crs" not in headers:
                owned.append((b"content-crs", route.crs))
        return owned

    # 8. The circuit, last before forwarding: a half-open breaker's one probe is taken only by a request
    # that will go upstream.
    def allow(self, route: Route, fw: proxy.Forward) -> None:
        breaker = fw.breaker
        if breaker is not None and not breaker.allow():
            self.metrics.upstream_failures(route.name, Failure.CIRCUIT_OPEN).inc()
            raise Refused(problems.CIRCUIT_OPEN, "The upstream failed repeatedly.", retry_after=breaker.retry_after())

    # 9. Forward and relay, then 10. record.
    async def forward(self, ex: Exchange, route: Route, fw: proxy.Forward, send: Send) -> None:
        outcome = ex.outcome
        # The gateway's own work: the time so far, less the wait for a turn (step 6).
        self.metrics.overhead(route.name).observe(time.perf_counter() - ex.start - outcome.upstream_seconds)
        try:
            await proxy.forward(fw, send, outcome)
        except bodies.BodyError as exc:
            return await ex.refuse(send, self._body_failed(route, exc))
        except proxy.UpstreamAborted:
            self.metrics.aborted(route.name, Abort.UPSTREAM_RESET).inc()
            ex.finish(outcome.status, error=Abort.UPSTREAM_RESET)
            raise  # the server aborts the caller's connection: a cut body must not look complete
        if outcome.problem is not None:
            self.metrics.upstream_failures(route.name, outcome.error).inc()
            return await ex.refuse(send, Refused(outcome.problem, _failure_detail(outcome.error)))
        status = outcome.upstream_status
        if status == 403:
            self.metrics.upstream_forbidden(route.name, forbidden_code(outcome.forbidden_code)).inc()
        elif status in (406, 412) and route.crs is not None:
            self.metrics.crs_rejections(route.name, str(status)).inc()
        self.metrics.upstream_duration(route.name).observe(outcome.upstream_seconds)
        ex.finish(status, source="upstream")


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


def _failure_detail(reason: str) -> str:
    if reason == Failure.BAD_RESPONSE:
        return "The upstream's answer broke the HTTP/1.1 framing rules; see the gateway's log for this request id."
    return "See the gateway's log for this request id."


def _user_value(raw: bytes | None, default: str) -> str:
    if raw is None:
        return default
    value = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if len(value) > 255:
        raise ValueError("too long")
    return value
