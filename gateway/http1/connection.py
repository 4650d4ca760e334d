"""One upstream connection: where an answer ends, and whether the connection may carry another request.

The upstream is not trusted to be well-behaved. Responses are parsed by llhttp (via httptools, Node.js's
parser, strict about framing: it refuses obs-fold, bare LF, duplicate or malformed Content-Length, CL with
TE, bad chunk sizes), and this module adds what llhttp leaves to its user: where a message ends, and
whether the connection it came on may carry another one.

Reuse rules (RFC 9112 section 9; at least as strict as nginx and httpcore/h11). A connection goes back to
the pool only when all of these hold, and is closed otherwise:

1. the whole request was sent: the head and every body byte (the final chunk too) were written, and the
   final answer's head arrived only after that - an early answer (a 401 or 413 while the body is still
   going up) is relayed, and the connection closed after it;
2. the whole answer was read by its framing: Content-Length, chunked, or no body (1xx, 204, 304, HEAD);
   an answer delimited by the connection's end is never followed by another;
3. both sides keep it alive: HTTP/1.1 without `Connection: close` in the answer;
4. not one byte arrived beyond the end of the answer: parsing stops there, and anything after it (a second
   response in the same segment, a body on a 204, even a stray CRLF) poisons the connection;
5. nothing arrived while it sat idle in the pool: any byte then closes it, and a plain TCP connection is
   checked for unread bytes once more when it is taken from the pool.

What no HTTP/1.1 client can tell (nginx and httpcore alike): an unasked answer that arrives after the next
request was sent on the connection looks like that request's answer, because HTTP/1.1 has no request
ids. The real answer then follows it as bytes beyond an answer (rule 4) or on an idle connection (rule 5),
and the connection is closed, unless it has carried yet another request by then. docs/security.md
("Hostile upstream") has the measurements.

Bounds: the answer's head (every 1xx head included) in bytes and in fields, and its trailers likewise
(`max_response_head_bytes`, `max_response_headers`); trailers are read, checked and dropped, never merged
into the headers; sending the body waits for the upstream at most `timeouts.write`, reading at most
`timeouts.read` between two pieces.
"""

from __future__ import annotations

import asyncio
import collections
import select
from collections.abc import Callable

import httptools

from gateway.config.sections import Component

# Pause reading from the upstream while this much response body waits for the caller (back-pressure).
HIGH_WATER = 256 * 1024
# What one chunk's size line and CRLFs may take (RFC 9112 section 7.1; extensions included).
CHUNK_LINE = 256


class _Stop(Exception):
    """Raised inside a parser callback to stop llhttp at the end of the message (or at a violation)."""


class Connection(asyncio.Protocol):
    """One TCP or TLS connection, and the state of the exchange on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: Component, on_idle_stray: Callable[[], None]) -> None:
        self.loop = loop
        self.settings = settings
        self.on_idle_stray = on_idle_stray
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.drained = asyncio.Event()  # set while the transport takes more (flow control), or once closed
        self.drained.set()
        self.idle_since = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.active = False  # an exchange is in progress: bytes from the upstream are expected
        self.fd = -1  # the plain TCP socket's descriptor, for `quiet`
        self._reset("GET")

    def _reset(self, method: str) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = method == "HEAD"
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.room = self.settings.max_response_head_bytes
        self.fields_left = self.settings.max_response_headers
        self.interim = False
        self.headers_done = False
        self.keep_alive = False
        self.complete = False
        self.request_sent = False
        self.early = False  # the final head arrived before the request was completely sent
        self.extra = False  # a byte arrived beyond the end of the answer
        self.failure = ""  # why the answer cannot be used: bad_response (with `detail`) or reset
        self.detail = ""
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False

    def begin(self, method: str) -> None:
        """A new exchange starts on this connection."""
        self._reset(method)
        self.active = True

    def quiet(self) -> bool:
        """Nothing waits to be read (rule 5, for bytes the event loop has not handed over yet). Plain TCP
        only: on TLS, records such as session tickets may arrive unasked and are not the upstream's words."""
        if self.fd < 0:
            return True
        try:
            readable, _, _ = select.select([self.fd], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def unusable(self) -> str:
        """Why the connection may not carry another request (a reason of metrics.CLOSE_REASONS), or ""."""
        if self.extra:
            return "stray_bytes"  # rules 4 and 5
        if self.early:
            return "early_answer"  # rule 1
        if self.failure:
            return "failed"
        if not (self.request_sent and self.complete) or self.chunks or self.closed:
            return "unfinished"  # rules 1 and 2: a side stopped before the end, or the upstream left
        if not self.keep_alive:
            return "not_keep_alive"  # rule 3
        return ""

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete:
            # Rule 5 (idle) and rule 4 (bytes after the answer, in a later segment).
            if not self.active and not self.extra:
                self.on_idle_stray()
            self.extra = True
            self.close()
        else:
            self._parse(memoryview(data))
        self.wake()

    def _parse(self, view: memoryview) -> None:
        while view:
            if self.headers_done:
                part, view = view, view[:0]
            elif self.room > 0:
                # The head must end within the room left; what follows it in this segment may be body.
                part, view = view[: self.room], view[self.room :]
            else:
                self._fail("bad_response", "the response head is larger than max_response_head_bytes")
                return
            self.room -= len(part)
            self._feed(part)
            if self.failure:
                return
            if self.room < 0:
                # Past the head, `room` is what chunk lines and trailers may take beyond the body itself.
                self._fail("bad_response", "the response trailers are larger than max_response_head_bytes")
                return
            if self.complete:
                self.extra = self.extra or bool(view)
                return

    def _feed(self, view: memoryview) -> None:
        # Rule 4: llhttp would go on to parse a second message after the first, and it skips CR/LF between
        # messages without a callback. Feeding all but the last byte first tells whether the answer ended
        # before that byte: then at least that byte lies beyond it.
        last = len(view) - 1
        if last > 0:
            self._execute(view[:last])
            if self.complete:
                self.extra = True
                return
            if self.failure:
                return
            view = view[last:]
        self._execute(view)

    def _execute(self, view: memoryview) -> None:
        try:
            self.parser.feed_data(view)
        except httptools.HttpParserError as exc:
            # Raised through the parser: a _Stop at the message's end or at a violation already recorded,
            # or llhttp's own verdict on the bytes.
            if not self.complete and not self.failure:
                self._fail("bad_response", str(exc))

    def _violation(self, detail: str) -> _Stop:
        self._fail("bad_response", detail)
        return _Stop(detail)

    def _fail(self, reason: str, detail: str = "") -> None:
        if not self.failure:
            self.failure, self.detail = reason, detail
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.drained.set()  # a writer waiting for room finds the connection gone
        if self.active and self.headers_done and not self.complete and not self.failure and self._until_close():
            self.complete = True  # a body without length or chunks ends with the connection (RFC 9112 6.3)
        if self.active and not self.complete:
            self._fail("reset")
        self.wake()

    def _until_close(self) -> bool:
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"content-length":
                return False
            if lname == b"transfer-encoding" and value.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
                return False
        return True

    def pause_writing(self) -> None:
        self.drained.clear()

    def resume_writing(self) -> None:
        self.drained.set()

    # llhttp callbacks (httptools)

    def on_message_begin(self) -> None:
        if self.complete:
            raise _Stop  # rule 4: a second message; the bytes are already counted as extra

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields_left -= 1
        if self.fields_left < 0:
            raise self._violation("the response has more fields than max_response_headers")
        if self.headers_done:
            return  # a trailer: counted like the head, then dropped - never merged into the headers relayed
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status == 101 or status < 100:
            raise self._violation(f"status {status} was not asked for")
        if status < 200:
            self.interim = True  # 1xx (e.g. 103 Early Hints): not the answer; the answer follows
            self.headers = []
            return
        self.status = status
        self.headers_done = True
        self.room = self.settings.max_response_head_bytes  # from here on: chunk lines' and trailers' budget
        self.fields_left = self.settings.max_response_headers
        # Asked here: once the message is complete, llhttp has already reset what this depends on.
        self.keep_alive = self.parser.should_keep_alive()
        transport = self.transport
        if not self.request_sent or (transport is not None and transport.get_write_buffer_size()):
            self.early = True  # rule 1
        if self.head_only:
            # llhttp cannot be told the request was HEAD; the answer ends with its head.
            self.complete = True
            raise _Stop

    def on_chunk_header(self) -> None:
        self.room += CHUNK_LINE

    def on_body(self, body: bytes) -> None:
        self.room += len(body)
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True

    # waiting

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until something happens (bytes, closed, `wake`); TimeoutError after `timeout` seconds of nothing."""
        waiter = self.waiter = self.loop.create_future()
        handle = self.loop.call_later(timeout, _expire, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            if handle is not None:
                handle.cancel()
            self.waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
