"""How one request travels upstream and its answer comes back: retries, relaying, errors.

The bytes travel through the component's `upstream.Pool`, which decides what a connection may carry
(its reuse rules). Here: at most one retry, and only when it is safe; the answer relayed to the caller as
it arrives, rewritten where configured; an upstream that breaks off mid-answer cuts the caller's
connection, so a cut body never looks complete. Redirects are never followed (a token must never reach a
redirect target), bodies are never decompressed or re-encoded.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.dataplane import problems
from gateway.dataplane.breaker import CircuitBreaker
from gateway.dataplane.exchange import Outcome
from gateway.dataplane.failures import Abort, Failure
from gateway.dataplane.headers import first, is_identity_encoded, to_caller
from gateway.dataplane.rewrite import REWRITE_BUFFER_LIMIT, UrlRewriter, is_json_content_type
from gateway.http1.pool import Pool, Response, UpstreamError
from gateway.zgw import EXPIRED_CODES, problem_code

Send = Callable[[dict[str, Any]], Awaitable[None]]

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
FORBIDDEN_PEEK_LIMIT = 64 * 1024

_PROBLEMS = {
    Failure.DNS: problems.UPSTREAM_DNS,
    Failure.TLS: problems.UPSTREAM_TLS,
    Failure.TIMEOUT: problems.UPSTREAM_TIMEOUT,
    Failure.CONNECT: problems.UPSTREAM_UNREACHABLE,
    Failure.RESET: problems.UPSTREAM_RESET,
    Failure.BAD_RESPONSE: problems.UPSTREAM_BAD_RESPONSE,
}


class UpstreamAborted(Exception):
    """The upstream broke off mid-answer; the caller's connection must be aborted, not completed."""


@dataclass(slots=True)
class Forward:
    """One request on its way upstream: everything `forward` needs, prepared by the app."""

    pool: Pool
    breaker: CircuitBreaker | None
    method: str
    target: bytes  # path and query as they go upstream
    headers: list[tuple[bytes, bytes]]  # Authorization first, so a retry can swap it
    body: bytes | AsyncGenerator[bytes, None] | None
    chunked: bool
    deadline: float  # time.monotonic() at which `timeouts.total` is up, counted from before the turn
    extra_response_headers: list[tuple[bytes, bytes]]
    rewriter: UrlRewriter | None
    refresh_token: Callable[[], bytes]  # evicts the cached token, returns a fresh Authorization value
    token_cached: bool  # the token came from the cache (it may have expired upstream)
    retry_enabled: bool
    on_retry: Callable[[str], None]

    def head(self) -> bytes:
        fields = b"\r\n".join([b": ".join(field) for field in self.headers])  # never empty: Authorization
        return b"%s %s HTTP/1.1\r\n%s\r\n\r\n" % (self.method.encode(), self.target, fields)


async def forward(fw: Forward, send: Send, outcome: Outcome) -> None:
    """Send the request upstream and relay the answer to the caller; fills `outcome`.

    `timeouts.total` bounds the waiting for the upstream (a turn, connect, the answer's head), a retry
    included; bodies stream for as long as they keep moving (`timeouts.read` / `timeouts.write` between
    pieces upstream, `limits.body_read_timeout` from the caller), so large documents pass. Whatever
    happens, the circuit breaker learns what it says about the upstream.
    """
    try:
        await _forward(fw, send, outcome, fw.deadline)
    finally:
        if fw.breaker is not None:
            healthy = _healthy(outcome)
            if healthy is None:
                fw.breaker.abandon()
            else:
                fw.breaker.record(healthy)


def _healthy(outcome: Outcome) -> bool | None:
    """What the exchange says about the upstream: None when nothing (it never got to answer)."""
    if not outcome.error:
        return None if not outcome.upstream_status else outcome.upstream_status not in (502, 503, 504)
    return False


async def _forward(fw: Forward, send: Send, outcome: Outcome, deadline: float) -> None:
    replayable = fw.body is None or isinstance(fw.body, bytes)
    for attempt in (1, 2):
        started = time.perf_counter()
        try:
            resp = await fw.pool.request(fw.method, fw.head(), fw.body, fw.chunked, deadline)
        except UpstreamError as exc:
            outcome.upstream_seconds += time.perf_counter() - started
            if attempt == 1 and _may_retry(fw, exc, replayable, deadline):
                fw.on_retry(exc.reason)
                outcome.retried = exc.reason
                continue
            _failed(outcome, exc)
            return
        outcome.upstream_seconds += time.perf_counter() - started
        outcome.upstream_status = resp.status
        # A flag, not `continue`: mypyc compiles no `continue` inside try/finally (issue 23).
        again = False
        try:
            prefix = b""
            if resp.status == 403:
                prefix = await resp.read(FORBIDDEN_PEEK_LIMIT + 1)
                outcome.forbidden_code = _problem_code(first(resp.headers, b"content-type"), prefix)
                again = attempt == 1 and replayable and resp.at_eof() and _expired(fw, outcome.forbidden_code)
            if again:
                fw.headers[0] = (b"authorization", fw.refresh_token())
                fw.on_retry("token_expired")
                outcome.retried = "token_expired"
            else:
                await _relay(fw, resp, send, outcome, prefix)
        except UpstreamError as exc:  # before the answer started: the caller gets the gateway's 502/504
            _failed(outcome, exc)
        finally:
            resp.release()
        if not again:
            return


def _expired(fw: Forward, code: str) -> bool:
    """Did the upstream say the token expired? A 403 without a readable code counts too when the token came
    from the cache: Open Zaak renders every error of a download with its binary renderer, so its jwt-expired
    there reads `application/octet-stream` and nothing more. At worst a forbidden download costs a mint."""
    return code in EXPIRED_CODES or (code == "" and fw.token_cached)


def _failed(outcome: Outcome, exc: UpstreamError) -> None:
    reason = Failure(exc.reason)
    outcome.problem, outcome.error, outcome.detail = _PROBLEMS[reason], reason, exc.detail


def _may_retry(fw: Forward, exc: UpstreamError, replayable: bool, deadline: float) -> bool:
    """Once, when the request provably never left, or an idempotent one met a reset; never a streamed body."""
    return (
        fw.retry_enabled
        and replayable
        and (not exc.sent or (exc.reason == Failure.RESET and fw.method in IDEMPOTENT))
        and time.monotonic() < deadline
    )


def _problem_code(content_type: bytes | None, body: bytes) -> str:
    return problem_code(body) if content_type and b"json" in content_type else ""


async def _relay(fw: Forward, resp: Response, send: Send, outcome: Outcome, prefix: bytes) -> None:
    """Stream the upstream answer to the caller; abort the caller's connection if the upstream breaks off."""
    rewriter = fw.rewriter
    headers = to_caller(resp.headers, rewriter.header_to_public if rewriter is not None else None)
    headers.extend(fw.extra_response_headers)
    if fw.method == "HEAD":
        outcome.status = resp.status
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    # The first piece is read before the answer starts: an answer whose body is broken from its first
    # byte (a bad chunk size, a reset) becomes the gateway's 502 instead of a cut connection.
    opening = prefix or await resp.read_chunk()
    if rewriter is not None and _rewritable(resp.headers):
        await _relay_rewritten(resp, send, outcome, headers, opening, rewriter)
        return
    outcome.status = resp.status
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    chunk = opening
    try:
        # A body that arrived whole (most ZGW JSON answers) goes out in one message.
        while not resp.at_eof():
            outcome.bytes_out += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            chunk = await resp.read_chunk()
    except UpstreamError as exc:
        outcome.error = Abort.UPSTREAM_RESET
        raise UpstreamAborted from exc
    outcome.bytes_out += len(chunk)
    await send({"type": "http.response.body", "body": chunk})


def _rewritable(headers: list[tuple[bytes, bytes]]) -> bool:
    """JSON, not compressed (a compressed body is left as it is)."""
    content_type = first(headers, b"content-type")
    is_json = is_json_content_type(content_type.decode("latin-1") if content_type else None)
    return is_json and is_identity_encoded(headers)


async def _relay_rewritten(
    resp: Response,
    send: Send,
    outcome: Outcome,
    headers: list[tuple[bytes, bytes]],
    opening: bytes,
    rewriter: UrlRewriter,
) -> None:
    headers = [(k, v) for k, v in headers if k != b"content-length"]
    length = resp.content_length
    if length is not None and length <= REWRITE_BUFFER_LIMIT:
        body = rewriter.to_public(opening + await resp.read(length + 1))
        headers.append((b"content-length", b"%d" % len(body)))
        outcome.status = resp.status
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        outcome.bytes_out += len(body)
        return
    stream = rewriter.stream_to_public()
    outcome.status = resp.status
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    chunk = opening
    try:
        while chunk:
            out = stream.feed(chunk)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
                outcome.bytes_out += len(out)
            chunk = await resp.read_chunk()
    except UpstreamError as exc:
        outcome.error = Abort.UPSTREAM_RESET
        raise UpstreamAborted from exc
    out = stream.flush()
    await send({"type": "http.response.body", "body": out})
    outcome.bytes_out += len(out)
