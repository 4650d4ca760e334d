"""How bytes reach an upstream: an HTTP/1.1 client with a keep-alive pool per component.

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

Never followed: redirects. Never added: any header. Never changed: the request target and the body bytes.
Why not a general client library: bench/micro.py measures this client against aiohttp and httpx per
exchange, and bench/transports.py inside a proxy; the reuse rules above are the part that must not be
traded for speed, and tests/test_hostile_upstream.py holds one test per rule.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import select
import socket
import ssl
import time
from collections.abc import AsyncGenerator

import httptools

from .config import Component

# Pause reading from the upstream while this much response body waits for the caller (back-pressure).
HIGH_WATER = 256 * 1024
# Idle connections older than this are not reused: servers close idle keep-alive connections after a few
# seconds (gunicorn 2 s, uvicorn 5 s), and a request sent into a closing connection fails.
IDLE_SECONDS = 1.5
# What one chunk's size line and CRLFs may take (RFC 9112 section 7.1; extensions included).
CHUNK_LINE = 256


def ssl_context(component: Component) -> ssl.SSLContext | None:
    """None for http://; for https:// verification is on unless switched off, with the component's CA
    bundle and client certificate when configured. SNI is the upstream's host name."""
    if not component.upstream.startswith("https://"):
        return None
    tls = component.tls
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None and tls.key_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx


class UpstreamError(Exception):
    """No usable answer. `reason`: connect, dns, tls, timeout, reset, pool or bad_response. `sent`: whether
    any byte of the request may have reached the upstream (False: the request provably never left)."""

    def __init__(self, reason: str, sent: bool, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent
        self.detail = detail


class _Stop(Exception):
    """Raised inside a parser callback to stop llhttp at the end of the message (or at a violation)."""


class _Connection(asyncio.Protocol):
    """One TCP or TLS connection, and the state of the exchange on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: Component) -> None:
        self.loop = loop
        self.settings = settings
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.writable = True
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

    def reusable(self) -> bool:
        return (
            self.request_sent
            and self.complete
            and self.keep_alive
            and not (self.early or self.extra or self.failure or self.closed or self.chunks)
        )

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete:
            # Rule 5 (idle) and rule 4 (bytes after the answer, in a later segment).
            self.extra = True
            self.close()
        else:
            self._parse(memoryview(data))
        self._wake()

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
        self.writable = True
        if self.active and self.headers_done and not self.complete and not self.failure and self._until_close():
            self.complete = True  # a body without length or chunks ends with the connection (RFC 9112 6.3)
        if self.active and not self.complete:
            self._fail("reset")
        self._wake()

    def _until_close(self) -> bool:
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"content-length":
                return False
            if lname == b"transfer-encoding" and value.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
                return False
        return True

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self._wake()

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

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until something happens (bytes, drained, closed); TimeoutError after `timeout` seconds of nothing."""
        waiter = self.waiter = self.loop.create_future()
        handle = self.loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self.waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Response:
    """An upstream answer whose body is read as it arrives. Call `release()` when done, always."""

    __slots__ = ("_conn", "_pool", "_released", "content_length", "headers", "status")

    def __init__(self, pool: Pool, conn: _Connection) -> None:
        self._pool = pool
        self._conn = conn
        self._released = False
        self.status = conn.status
        self.headers = conn.headers
        self.content_length: int | None = None
        for name, value in conn.headers:
            if len(name) == 14 and name.lower() == b"content-length":
                self.content_length = int(value)  # llhttp has checked it is one plain number

    def at_eof(self) -> bool:
        conn = self._conn
        return conn.complete and not conn.chunks

    async def read_chunk(self) -> bytes:
        """The next piece of the body; b"" at its end. UpstreamError when the upstream breaks off."""
        conn = self._conn
        while True:
            if conn.failure == "bad_response":
                raise UpstreamError("bad_response", sent=True, detail=conn.detail)  # nothing of it is trusted
            if conn.chunks:
                chunk = conn.chunks.popleft() if len(conn.chunks) == 1 else b"".join(conn.chunks)
                conn.chunks.clear()
                conn.buffered = 0
                if conn.paused and conn.transport is not None:
                    conn.paused = False
                    conn.transport.resume_reading()
                return chunk
            if conn.complete:
                return b""
            if conn.failure or conn.closed:
                raise UpstreamError(conn.failure or "reset", sent=True, detail=conn.detail)
            try:
                await conn.wait(self._pool.settings.timeouts.read)
            except TimeoutError:
                raise UpstreamError("timeout", sent=True) from None

    async def read(self, limit: int) -> bytes:
        """At most about `limit` bytes of the body; what is left stays unread (and the connection closes)."""
        parts: list[bytes] = []
        size = 0
        while size < limit:
            chunk = await self.read_chunk()
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._conn)


class Pool:
    """Keep-alive connections to one origin: at most `max_connections` at once, waiting for one bounded in time."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | None, settings: Component) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.settings = settings
        self.idle: list[_Connection] = []
        self.in_use = 0
        self.closed = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def request(
        self, method: str, head: bytes, body: bytes | AsyncGenerator[bytes, None] | None, chunked: bool, deadline: float
    ) -> Response:
        """Send one request and wait for the answer's head. `head` is the request line and header block
        (CRLF CRLF-terminated); the body streams from `body`, framed as chunks when `chunked`. Waiting for a
        connection, connecting and waiting for the answer end by `deadline` (time.monotonic()); sending the
        caller's body is bounded by the caller's own pace (the app's body timeout) and `timeouts.write`."""
        conn = await self._acquire(deadline)
        conn.begin(method)
        try:
            await self._send(conn, head, body, chunked)
            await self._await_head(conn, deadline)
        except BaseException:
            self.release(conn)
            raise
        return Response(self, conn)

    async def _send(
        self, conn: _Connection, head: bytes, body: bytes | AsyncGenerator[bytes, None] | None, chunked: bool
    ) -> None:
        transport = conn.transport
        if transport is None or conn.closed:
            raise UpstreamError("reset", sent=False)
        if body is None or isinstance(body, bytes):
            transport.write(head + body if body else head)
            conn.request_sent = True
            return
        transport.write(head)
        async with contextlib.aclosing(body):
            async for chunk in body:
                if conn.headers_done or conn.closed:
                    return  # an early answer, or the upstream left: stop sending (rule 1 closes it after)
                if chunk:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                if not conn.writable:
                    await self._drain(conn)
        if conn.closed:
            return
        if chunked:
            transport.write(b"0\r\n\r\n")
        conn.request_sent = True

    async def _drain(self, conn: _Connection) -> None:
        """Wait until the upstream takes more of the body, or answers, or leaves; at most `timeouts.write`."""
        deadline = time.monotonic() + self.settings.timeouts.write
        while not conn.writable and not conn.headers_done and not conn.closed:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                await conn.wait(left)
            except TimeoutError:
                raise UpstreamError("timeout", sent=True, detail="the upstream stopped reading the body") from None

    async def _await_head(self, conn: _Connection, deadline: float) -> None:
        read = self.settings.timeouts.read
        while not conn.headers_done:
            if conn.failure or conn.closed:
                raise UpstreamError(conn.failure or "reset", sent=True, detail=conn.detail)
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                await conn.wait(min(read, left))
            except TimeoutError:
                raise UpstreamError("timeout", sent=True) from None

    async def _acquire(self, deadline: float) -> _Connection:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS and conn.quiet():
                self.in_use += 1
                return conn
            conn.close()
        if self.in_use >= self.settings.max_connections:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(min(self.settings.timeouts.pool, deadline - now)):
                    await waiter
            except TimeoutError:
                raise UpstreamError("pool", sent=False) from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            return await self._acquire(deadline)
        self.in_use += 1
        try:
            conn = await self._connect(min(self.settings.timeouts.connect, deadline - now))
        except BaseException:
            self.in_use -= 1
            self._wake_one()
            raise
        return conn

    async def _connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, self.settings),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )
        except TimeoutError:
            raise UpstreamError("timeout", sent=False) from None
        except socket.gaierror:
            raise UpstreamError("dns", sent=False) from None
        except ssl.SSLError:
            raise UpstreamError("tls", sent=False) from None
        except OSError:
            raise UpstreamError("connect", sent=False) from None
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl is None:
                conn.fd = sock.fileno()
        return conn

    def release(self, conn: _Connection) -> None:
        """The exchange on `conn` is over: back to the pool if the reuse rules allow it, else closed."""
        self.in_use -= 1
        reusable = conn.reusable() and not self.closed
        conn.active = False
        if reusable:
            conn.idle_since = time.monotonic()
            self.idle.append(conn)
        else:
            conn.close()
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close idle connections now, and the others when their requests finish."""
        self.closed = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()
