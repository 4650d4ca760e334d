"""How bytes reach an upstream: a keep-alive pool of HTTP/1.1 connections per component.

A `Pool` sends one request at a time per connection and hands back a `Response` whose body is read as it
arrives; `connection.Connection` parses the answer and decides, by the reuse rules written there, whether
the connection goes back to the pool. Waiting for a connection, connecting and waiting for the answer's
head are bounded by the request's deadline; sending the body by `timeouts.write`, reading it by
`timeouts.read` between pieces.

Never followed: redirects. Never added: any header. Never changed: the request target and the body bytes.
Why not a general client library: bench/micro.py measures this client against aiohttp and httpx per
exchange, and bench/transports.py inside a proxy; the reuse rules are the part that must not be traded
for speed, and tests/test_upstream.py, tests/test_hostile_upstream.py and tests/test_pool_property.py
hold them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncGenerator, Callable

from gateway.config.sections import Component, UpstreamTLS
from gateway.http1.connection import Connection

# Idle connections older than this are not reused: servers close idle keep-alive connections after a few
# seconds (gunicorn 2 s, uvicorn 5 s), and a request sent into a closing connection fails.
IDLE_SECONDS = 1.5


def ssl_context(component: Component) -> ssl.SSLContext | None:
    """None for http://; for https:// the component's TLS settings. SNI is the upstream's host name."""
    return tls_context(component.tls) if component.upstream.startswith("https://") else None


def tls_context(tls: UpstreamTLS) -> ssl.SSLContext:
    """Verification on unless switched off, with the CA bundle and client certificate when configured."""
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


class UpstreamError(Exception):
    """No usable answer. `reason`: connect, dns, tls, timeout, reset, pool or bad_response. `sent`: whether
    any byte of the request may have reached the upstream (False: the request provably never left)."""

    def __init__(self, reason: str, sent: bool, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent
        self.detail = detail


class Response:
    """An upstream answer whose body is read as it arrives. Call `release()` when done, always."""

    __slots__ = ("_conn", "_pool", "_released", "content_length", "headers", "status")

    def __init__(self, pool: Pool, conn: Connection) -> None:
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

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        settings: Component,
        on_close: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.on_close = on_close  # told why a connection was not kept (metrics.CLOSE_REASONS)
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.settings = settings
        self.idle: list[Connection] = []
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
            transport = conn.transport
            if transport is None or conn.closed:
                raise UpstreamError("reset", sent=False)
            if body is None or isinstance(body, bytes):
                transport.write(head + body if body else head)
                conn.request_sent = True
            else:
                transport.write(head)
                await self._stream(conn, body, chunked)
                # The body took as long as the caller took; the answer's head gets `read` from its end.
                deadline = time.monotonic() + self.settings.timeouts.read
            await self._await_head(conn, deadline)
        except BaseException:
            self.release(conn)
            raise
        return Response(self, conn)

    async def _stream(self, conn: Connection, body: AsyncGenerator[bytes, None], chunked: bool) -> None:
        """Send the body while watching the connection: an answer that arrives first (rule 1), or the upstream
        leaving, stops the sending even while the caller's next piece is still on its way."""
        pump = asyncio.ensure_future(self._pump(conn, body, chunked))
        pump.add_done_callback(lambda _: conn.wake())
        try:
            while not pump.done() and not conn.headers_done and not conn.closed:
                await conn.wait(None)
        finally:
            if not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
        if not pump.cancelled():
            pump.result()  # the caller's body errors and the write timeout surface here

    async def _pump(self, conn: Connection, body: AsyncGenerator[bytes, None], chunked: bool) -> None:
        transport = conn.transport
        assert transport is not None
        write_timeout = self.settings.timeouts.write
        async with contextlib.aclosing(body):
            async for chunk in body:
                if chunk:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                if not conn.drained.is_set():
                    try:
                        async with asyncio.timeout(write_timeout):
                            await conn.drained.wait()
                    except TimeoutError:
                        raise UpstreamError(
                            "timeout", sent=True, detail="the upstream stopped reading the body"
                        ) from None
                if conn.closed:
                    return
        if chunked:
            transport.write(b"0\r\n\r\n")
        conn.request_sent = True

    async def _await_head(self, conn: Connection, deadline: float) -> None:
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

    async def _acquire(self, deadline: float) -> Connection:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                if conn.quiet():
                    self.in_use += 1
                    return conn
                self.on_close("stray_bytes")
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

    async def _connect(self, timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, self.settings, lambda: self.on_close("stray_bytes")),
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

    def release(self, conn: Connection) -> None:
        """The exchange on `conn` is over: back to the pool if the reuse rules allow it, else closed."""
        self.in_use -= 1
        reason = conn.unusable()
        conn.active = False
        if not reason and not self.closed:
            conn.idle_since = time.monotonic()
            self.idle.append(conn)
        else:
            conn.close()
            if reason:
                self.on_close(reason)
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
