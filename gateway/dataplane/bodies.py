"""What goes upstream as a request's body: read whole when small (so a retry can replay it), streamed
otherwise, bounded in size and in time between pieces, and URL-rewritten when it is plain JSON.

Limits are checked before any upstream I/O where the head tells (Content-Length over the component's
`max_body_bytes`: 413 at once) and while streaming otherwise (the upstream request is then cut).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.dataplane import problems
from gateway.dataplane.failures import Abort
from gateway.dataplane.headers import is_identity_encoded
from gateway.dataplane.problems import Refused
from gateway.dataplane.rewrite import REWRITE_BUFFER_LIMIT, UrlRewriter, is_json_content_type

Receive = Callable[[], Awaitable[dict[str, Any]]]

# Bodies up to this size are read before forwarding: replayable for a retry, and cheaper to send.
BUFFER_LIMIT = 64 * 1024
WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class BodyError(Exception):
    """The caller's body went wrong while it was read or streamed upstream."""


class BodyTooLarge(BodyError):
    """The caller's body grew past the component's limit while streaming."""


class BodyTimeout(BodyError):
    """The caller's body stalled longer than limits.body_read_timeout."""


class ClientGone(BodyError):
    """The caller disconnected before its body was complete."""


def refusal(exc: BodyError) -> tuple[Abort, Refused]:
    """The metric reason and the answer for a body that went wrong: too large, too slow, or cut off."""
    if isinstance(exc, BodyTooLarge):
        return Abort.BODY_TOO_LARGE, Refused(problems.BODY_TOO_LARGE, "The body exceeds the limit.", close=True)
    if isinstance(exc, BodyTimeout):
        return Abort.BODY_TIMEOUT, Refused(problems.BODY_TIMEOUT, "The body stalled.", close=True)
    # Granian reports a malformed chunked body as a disconnect, and would answer 500 for an app that then
    # sends nothing. The caller may still be there: it gets 400 (RFC 9112 section 7.1).
    return Abort.CLIENT_GONE, Refused(problems.BAD_REQUEST, "The body is malformed or ended early.", close=True)


@dataclass(slots=True)
class Body:
    """The body as it goes upstream: bytes held whole, a stream, or none."""

    data: bytes | AsyncGenerator[bytes, None] | None
    length: int | None  # the Content-Length sent upstream; None for a stream of unknown length

    def framing(self, method: str) -> list[tuple[bytes, bytes]]:
        """Content-Length or chunked Transfer-Encoding: the gateway frames what it sends itself."""
        data = self.data
        if data is None or isinstance(data, bytes):
            return [(b"content-length", b"%d" % len(data or b""))] if data or method in WITH_BODY else []
        if self.length is not None:
            return [(b"content-length", b"%d" % self.length)]
        return [(b"transfer-encoding", b"chunked")]

    @property
    def chunked(self) -> bool:
        return self.length is None and self.data is not None and not isinstance(self.data, bytes)


NONE = Body(None, None)


def present(headers: dict[bytes, bytes]) -> bool:
    """Does the request have a body? Only Content-Length or Transfer-Encoding says so (RFC 9112 section 6.3)."""
    return b"content-length" in headers or b"transfer-encoding" in headers


def unread(headers: dict[bytes, bytes], read: object) -> bool:
    """Does the request declare a body that was not read whole (`read`: the body as read, bytes when whole)?
    A refusal then closes the connection: the server could not tell where the next request starts, and the
    caller learns it from the answer rather than from a reused connection that closes under its next request."""
    if isinstance(read, bytes):
        return False
    return b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0"


async def prepare(
    method: str,
    headers: dict[bytes, bytes],
    raw_headers: list[tuple[bytes, bytes]],
    receive: Receive,
    max_bytes: int,
    timeout: float,
    rewriter: UrlRewriter | None,
    counted: Callable[[int], None],
) -> Body:
    """Read or wrap the caller's body. Raises Refused for a bad or oversized length, and the body errors
    above while reading a small body; `counted` is told how many bytes came in."""
    length_header = headers.get(b"content-length")
    length: int | None = None
    if length_header is not None:
        if not length_header.isdigit():
            raise Refused(problems.BAD_REQUEST, "Content-Length is not a number.")
        length = int(length_header)
        if length > max_bytes:
            raise Refused(problems.BODY_TOO_LARGE, f"At most {max_bytes} bytes.")
    elif b"transfer-encoding" not in headers:
        return NONE
    rewrite = rewriter is not None and method in WITH_BODY and _plain_json(headers, raw_headers)
    if length is not None and (length <= BUFFER_LIMIT or (rewrite and length <= REWRITE_BUFFER_LIMIT)):
        data = await read(receive, max_bytes, timeout) if length else b""
        counted(len(data))
        if rewrite and data:
            data = rewriter.to_upstream(data)  # type: ignore[union-attr]
        return Body(data, len(data))
    stream = _counting(pieces(receive, max_bytes, timeout), counted)
    if rewrite:
        return Body(_rewriting(stream, rewriter), None)  # type: ignore[arg-type]
    return Body(stream, length)


def _plain_json(headers: dict[bytes, bytes], raw_headers: list[tuple[bytes, bytes]]) -> bool:
    # A compressed body would be corrupted by rewriting; links in it stay as the caller wrote them.
    content_type = (headers.get(b"content-type") or b"").decode("latin-1")
    return is_json_content_type(content_type) and is_identity_encoded(raw_headers)


async def pieces(receive: Receive, limit: int, timeout: float) -> AsyncGenerator[bytes, None]:
    """The caller's body as it arrives, bounded in size and in time between pieces."""
    seen = 0
    while True:
        try:
            async with asyncio.timeout(timeout):  # not wait_for: that wraps every piece in a new task
                message = await receive()
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


async def read(receive: Receive, limit: int, timeout: float) -> bytes:
    parts = [chunk async for chunk in pieces(receive, limit, timeout)]
    return b"".join(parts)


async def _counting(source: AsyncGenerator[bytes, None], counted: Callable[[int], None]) -> AsyncGenerator[bytes, None]:
    async with contextlib.aclosing(source):
        async for chunk in source:
            counted(len(chunk))
            yield chunk


async def _rewriting(source: AsyncGenerator[bytes, None], rewriter: UrlRewriter) -> AsyncGenerator[bytes, None]:
    stream = rewriter.stream_to_upstream()
    async with contextlib.aclosing(source):
        async for chunk in source:
            out = stream.feed(chunk)
            if out:
                yield out
    tail = stream.flush()
    if tail:
        yield tail
