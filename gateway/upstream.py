"""How bytes reach an upstream: a small HTTP/1.1 client with a keep-alive pool per component.

Why not a general client library: on one core the time per request is the budget, and aiohttp's client
cost 165 us of CPU per sequential 1 KB JSON exchange on loopback against 60 us for this one
(bench/micro.py; bench/transports.py compares them inside a proxy).
A proxy needs a narrow slice of HTTP: send the caller's request as it is, stream the answer back, reuse
connections. Responses are parsed by llhttp (via httptools, the parser uvicorn uses); this module moves
bytes, keeps connections, and bounds time and buffering both ways.

Never followed: redirects. Never added: any header. Never changed: the request target and the body bytes.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httptools

# Pause reading from the upstream while this much response body waits for the caller (back-pressure).
HIGH_WATER = 256 * 1024
# Idle connections older than this are not reused: servers close idle keep-alive connections after a few
# seconds (gunicorn 2 s, uvicorn 5 s), and a request sent into a closing connection fails.
IDLE_SECONDS = 1.5


class UpstreamError(Exception):
    """No usable answer. `reason`: connect, dns, tls, timeout, reset or pool. `sent`: whether any byte of
    the request may have reached the upstream (False: the request provably never left)."""

    def __init__(self, reason: str, sent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    read: float
    pool: float


class _Connection(asyncio.Protocol):
    """One TCP or TLS connection, and the llhttp parser reading the responses on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.idle_since = 0.0
        self.next_message()

    def next_message(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.keep_alive = False
        self.informational = False
        self.complete = False
        self.error = False
        self.received_any = False
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.error = True
            self.close()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and not self.error and self._close_delimited():
            self.complete = True  # a body without length or chunks ends with the connection (RFC 9112 6.3)
        if not self.complete:
            self.error = True
        self.can_write.set()
        self._wake()

    def _close_delimited(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.informational = True  # 1xx (e.g. 103 Early Hints): not the answer; the answer follows
            self.headers = []
            return
        self.status = status
        self.headers_done = True
        # Asked here: once the message is complete, llhttp has already reset what this depends on.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self.complete = True

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until bytes arrive or the connection ends; TimeoutError after `timeout` seconds of silence."""
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

    __slots__ = ("_conn", "_pool", "_read_timeout", "_released", "_reusable", "content_length", "headers", "status")

    def __init__(self, pool: Pool, conn: _Connection, read_timeout: float, head_only: bool) -> None:
        self._pool = pool
        self._conn = conn
        self._read_timeout = read_timeout
        self._reusable = not head_only
        self._released = False
        self.status = conn.status
        self.headers = conn.headers
        self.content_length: int | None = None
        for name, value in conn.headers:
            if len(name) == 14 and name.lower() == b"content-length" and value.isdigit():
                self.content_length = int(value)
        if head_only:
            conn.complete = True  # llhttp cannot be told the request was HEAD, so the body is never read

    def at_eof(self) -> bool:
        conn = self._conn
        return conn.complete and not conn.chunks

    async def read_chunk(self) -> bytes:
        """The next piece of the body; b"" at its end. UpstreamError when the upstream breaks off."""
        conn = self._conn
        while True:
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
            if conn.error or conn.closed:
                self._reusable = False
                raise UpstreamError("reset", sent=True)
            try:
                await conn.wait(self._read_timeout)
            except TimeoutError:
                self._reusable = False
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
        if self._released:
            return
        self._released = True
        conn = self._conn
        reusable = self._reusable and conn.complete and not conn.chunks and conn.keep_alive
        self._pool.release(conn, reusable)


class Pool:
    """Keep-alive connections to one origin: at most `limit` at once, waiting for one bounded in time."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | None, limit: int, timeouts: Timeouts):
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.limit = limit
        self.timeouts = timeouts
        self.idle: list[_Connection] = []
        self.in_use = 0
        self.closed = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def request(
        self, method: str, head: bytes, body: bytes | AsyncIterator[bytes] | None, chunked: bool, deadline: float
    ) -> Response:
        """Send one request and wait for the answer's headers. `head` is the request line and header block
        (CRLF CRLF-terminated); the body streams from `body`, framed as chunks when `chunked`. Waiting for a
        connection, connecting and waiting for the answer end by `deadline` (time.monotonic()); sending the
        caller's body is bounded by the caller's own pace (the app's body timeout), not by the deadline."""
        conn = await self._acquire(deadline)
        try:
            return await self._exchange(conn, method, head, body, chunked, deadline)
        except BaseException:
            self.release(conn, False)
            raise

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        chunked: bool,
        deadline: float,
    ) -> Response:
        transport = conn.transport
        if transport is None or conn.closed:
            raise UpstreamError("reset", sent=False)
        if body is None or isinstance(body, bytes):
            transport.write(head + body if body else head)
        else:
            transport.write(head)
            async for chunk in body:
                if conn.closed or conn.complete:
                    break  # the upstream answered (e.g. 413) or left before the body was complete
                if chunk:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                if not conn.can_write.is_set():
                    await conn.can_write.wait()
            else:
                if chunked and not conn.closed:
                    transport.write(b"0\r\n\r\n")
        while not conn.headers_done:
            if conn.error or conn.closed:
                raise UpstreamError("reset", sent=True)
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                await conn.wait(min(self.timeouts.read, left))
            except TimeoutError:
                raise UpstreamError("timeout", sent=True) from None
        return Response(self, conn, self.timeouts.read, head_only=method == "HEAD")

    async def _acquire(self, deadline: float) -> _Connection:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                self.in_use += 1
                return conn
            conn.close()
        if self.in_use >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(min(self.timeouts.pool, deadline - now)):
                    await waiter
            except TimeoutError:
                raise UpstreamError("pool", sent=False) from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            return await self._acquire(deadline)
        self.in_use += 1
        try:
            conn = await self._connect(min(self.timeouts.connect, deadline - now))
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
                    lambda: _Connection(loop),
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
        return conn

    def release(self, conn: _Connection, reusable: bool) -> None:
        self.in_use -= 1
        if reusable and not conn.closed and not self.closed:
            conn.next_message()
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
