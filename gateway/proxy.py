"""How one request travels upstream and its answer comes back: headers, streaming, retries, errors.

The upstream client is aiohttp (see README "Choices"): on this workload it serves several times more
requests per second than httpx's transports. One `aiohttp.ClientSession` per component, so each has its
own connection pool, TLS settings and limits. Redirects are never followed (a token must never reach a
redirect target), bodies are never decompressed or re-encoded, and no header is added that the caller did
not send except the ones the gateway owns (Authorization, CRS, X-Forwarded-*, X-Request-ID, traceparent).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from . import problems
from .breaker import CircuitBreaker
from .config import Component
from .rewrite import UrlRewriter, is_json_content_type
from .routing import Route
from .tokens import EXPIRED_CODES

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# RFC 9110 section 7.6.1 hop-by-hop fields, plus h2c upgrade fields that must never reach an upstream.
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
        b"upgrade", b"proxy-authorization", b"proxy-authenticate", b"http2-settings",
    }
)  # fmt: skip
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Bodies up to this size are read before forwarding: replayable for a retry, and cheaper to send.
BUFFER_LIMIT = 64 * 1024
# JSON bodies up to this size are rewritten whole, keeping an exact Content-Length; larger ones stream.
REWRITE_BUFFER_LIMIT = 1024 * 1024
FORBIDDEN_PEEK_LIMIT = 64 * 1024
CHUNK = 64 * 1024


class BodyTooLarge(Exception):
    """The caller's body grew past the component's limit while streaming."""


class BodyTimeout(Exception):
    """The caller's body stalled longer than limits.body_read_timeout."""


class ClientGone(Exception):
    """The caller disconnected before its body was complete."""


class UpstreamAborted(Exception):
    """The upstream broke off mid-response; the caller's connection must be aborted, not completed."""


@dataclass(slots=True)
class Outcome:
    """What happened upstream, for the metrics and the access log."""

    status: int = 0
    upstream_status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    upstream_seconds: float = 0.0
    error: str = ""  # a reason from metrics.FAILURE_REASONS, or an abort reason
    problem: problems.Problem | None = None
    forbidden_code: str = ""
    retried: str = ""


def client_session(component: Component, ssl_ctx: ssl.SSLContext | bool) -> aiohttp.ClientSession:
    """The connection pool of one component."""
    connector = aiohttp.TCPConnector(
        limit=component.max_connections,
        ssl=ssl_ctx,
        ttl_dns_cache=10,
        keepalive_timeout=30,
        enable_cleanup_closed=False,
    )
    session = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        # aiohttp would add Accept, Accept-Encoding, User-Agent and Content-Type on its own; Open Zaak
        # answers 406 to some Accept values, so the caller's headers go through as they are.
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        requote_redirect_url=False,
    )
    # aiohttp silently resends an idempotent request once when the connection breaks; forward() makes
    # that decision itself (once, counted), so aiohttp's own retry would make it twice and invisible.
    # No public switch exists; aiohttp's own test client sets the same attribute.
    session._retry_connection = False
    return session


def ssl_context(component: Component) -> ssl.SSLContext | bool:
    """Verification on unless switched off; a CA bundle and a client certificate when configured."""
    tls = component.tls
    if not tls.verify:
        return False
    if tls.ca_file is None and tls.cert_file is None:
        return True
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None and tls.key_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx


async def request_body(
    receive: Receive, limit: int, timeout: float, first: dict[str, Any] | None = None
) -> AsyncIterator[bytes]:
    """The caller's body as it arrives, bounded in size and in time between chunks."""
    seen = 0
    message = first
    while True:
        if message is None:
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                raise BodyTimeout from None
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
        message = None


async def read_body(receive: Receive, limit: int, timeout: float) -> bytes:
    parts = [chunk async for chunk in request_body(receive, limit, timeout)]
    return b"".join(parts)


async def rewrite_stream(source: AsyncIterator[bytes], rewriter: UrlRewriter) -> AsyncIterator[bytes]:
    stream = rewriter.stream_to_upstream()
    async for chunk in source:
        out = stream.feed(chunk)
        if out:
            yield out
    tail = stream.flush()
    if tail:
        yield tail


def response_headers(
    raw: tuple[tuple[bytes, bytes], ...], extra: list[tuple[bytes, bytes]], rewriter: UrlRewriter | None
) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop ones, plus the gateway's own."""
    connection_named: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            connection_named.update(v.strip().lower() for v in value.split(b","))
    out = []
    for name, value in raw:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in connection_named:
            continue
        if rewriter is not None and lname in (b"location", b"content-location"):
            value = rewriter.header_to_public(value.decode("latin-1")).encode("latin-1")
        out.append((lname, value))
    out.extend(extra)
    return out


def _failure(exc: BaseException) -> tuple[problems.Problem, str]:
    """Map a client exception to the caller's problem and the metric reason."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return problems.UPSTREAM_DNS, "dns"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return problems.UPSTREAM_TLS, "tls"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return problems.UPSTREAM_TIMEOUT, "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return problems.UPSTREAM_UNREACHABLE, "connect"
    return problems.UPSTREAM_RESET, "reset"


def _never_left(exc: BaseException) -> bool:
    """True when the request provably did not reach the upstream (the connection was never made)."""
    return isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(
        exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError
    )


@dataclass(slots=True)
class Forward:
    """One request on its way upstream: everything `forward` needs, prepared by the app."""

    route: Route
    session: aiohttp.ClientSession
    breaker: CircuitBreaker | None
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes | AsyncIterator[bytes] | None
    extra_response_headers: list[tuple[bytes, bytes]]
    rewriter: UrlRewriter | None
    refresh_token: Callable[[], str] | None  # evicts the cached token, returns a fresh Authorization value
    retry_enabled: bool
    on_retry: Callable[[str], None]
    active: list[int]  # [requests currently upstream on this route], shared per route


async def forward(fw: Forward, send: Send, outcome: Outcome) -> None:
    """Send the request upstream and stream the answer to the caller; fills `outcome`."""
    route = fw.route
    comp = route.component
    timeouts = comp.timeouts
    deadline = time.monotonic() + timeouts.total
    replayable = fw.body is None or isinstance(fw.body, bytes)
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            outcome.problem, outcome.error = problems.UPSTREAM_TIMEOUT, "timeout"
            return
        timeout = aiohttp.ClientTimeout(
            total=remaining,
            connect=timeouts.pool + timeouts.connect,
            sock_connect=timeouts.connect,
            sock_read=timeouts.read,
        )
        pool_full = fw.active[0] >= comp.max_connections
        started = time.perf_counter()
        fw.active[0] += 1
        try:
            resp = await fw.session.request(
                fw.method,
                URL(fw.url, encoded=True),  # as the caller sent it: no re-quoting of path or query
                headers=fw.headers,
                data=fw.body,
                allow_redirects=False,
                timeout=timeout,
                ssl=route.ssl,
            )
        except (BodyTooLarge, BodyTimeout, ClientGone):
            fw.active[0] -= 1
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            fw.active[0] -= 1
            if isinstance(exc.__cause__, BodyTooLarge | BodyTimeout | ClientGone):
                raise exc.__cause__ from None  # aiohttp wraps what the body stream raised; it is the caller's fault
            outcome.upstream_seconds += time.perf_counter() - started
            problem, reason = _failure(exc)
            if pool_full and reason == "timeout" and isinstance(exc, aiohttp.ConnectionTimeoutError):
                problem, reason = problems.POOL_EXHAUSTED, "pool"
            if (
                attempt == 1
                and fw.retry_enabled
                and replayable
                and (_never_left(exc) or (reason == "reset" and fw.method in IDEMPOTENT))
            ):
                fw.on_retry(reason)
                outcome.retried = reason
                continue
            if fw.breaker is not None:
                fw.breaker.record(False)
            outcome.problem, outcome.error = problem, reason
            return
        outcome.upstream_seconds += time.perf_counter() - started
        try:
            outcome.upstream_status = resp.status
            if resp.status == 403:
                body = await resp.content.read(FORBIDDEN_PEEK_LIMIT + 1)
                code = _problem_code(resp.headers.get("Content-Type"), body)
                outcome.forbidden_code = code
                if (
                    code in EXPIRED_CODES
                    and attempt == 1
                    and replayable
                    and fw.refresh_token is not None
                    and len(body) <= FORBIDDEN_PEEK_LIMIT
                ):
                    new_auth = fw.refresh_token()
                    fw.headers = [(k, new_auth if k == "Authorization" else v) for k, v in fw.headers]
                    fw.on_retry("token_expired")
                    outcome.retried = "token_expired"
                    continue
                await _relay(fw, resp, send, outcome, prefix=body)
            else:
                await _relay(fw, resp, send, outcome)
        finally:
            fw.active[0] -= 1
            resp.release()
        if fw.breaker is not None:
            fw.breaker.record(resp.status not in (502, 503, 504))
        return


def _problem_code(content_type: str | None, body: bytes) -> str:
    if not content_type or "json" not in content_type:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    code = data.get("code") if isinstance(data, dict) else None
    return code if isinstance(code, str) else ""


async def _relay(fw: Forward, resp: aiohttp.ClientResponse, send: Send, outcome: Outcome, prefix: bytes = b"") -> None:
    """Stream the upstream response to the caller; abort the caller's connection if upstream breaks."""
    outcome.status = resp.status
    rewriter = fw.rewriter
    rewrite_body = rewriter is not None and is_json_content_type(resp.headers.get("Content-Type"))
    headers = response_headers(resp.raw_headers, fw.extra_response_headers, rewriter)
    content = resp.content
    if fw.method == "HEAD":
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return

    if rewrite_body:
        assert rewriter is not None
        length = resp.content_length
        if length is not None and length <= REWRITE_BUFFER_LIMIT:
            try:
                body = prefix + await content.read()
            except aiohttp.ClientError as exc:
                raise UpstreamAborted from exc
            body = rewriter.to_public(body)
            headers = [(k, v) for k, v in headers if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            outcome.bytes_out += len(body)
            return
        headers = [(k, v) for k, v in headers if k != b"content-length"]
        stream = rewriter.stream_to_public()
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        if prefix:
            out = stream.feed(prefix)
            await send({"type": "http.response.body", "body": out, "more_body": True})
            outcome.bytes_out += len(out)
        try:
            async for chunk in content.iter_chunked(CHUNK):
                out = stream.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                    outcome.bytes_out += len(out)
        except aiohttp.ClientError as exc:
            outcome.error = "upstream_reset"
            raise UpstreamAborted from exc
        out = stream.flush()
        await send({"type": "http.response.body", "body": out})
        outcome.bytes_out += len(out)
        return

    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    try:
        chunk = prefix or await content.readany()
        # A body that arrived whole (most ZGW JSON answers) goes out in one message.
        while not content.at_eof():
            outcome.bytes_out += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            chunk = await content.readany()
    except aiohttp.ClientError as exc:
        outcome.error = "upstream_reset"
        raise UpstreamAborted from exc
    outcome.bytes_out += len(chunk)
    await send({"type": "http.response.body", "body": chunk})
