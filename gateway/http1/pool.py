"""How bytes reach an upstream: a keep-alive pool of HTTP/1.1 connections per component.

A `Pool` sends one request at a time per connection and hands back a `Response` whose body is read as it
arrives; `connection.Connection` parses the answer and decides, by the reuse rules written there, whether
the connection goes back to the pool. A request goes upstream within a turn: at most `max_connections`
requests hold one, the others wait in line for one (first come, first served, bounded by `timeouts.pool`),
so the connections in use and idle never outnumber `max_connections`. Connecting and waiting for the
answer's head are bounded by the request's deadline; sending the body by `timeouts.write` (a deadline per
byte, connection.py), reading it by `timeouts.read` between pieces. An upstream caught sending bytes
nobody asked for gets no connection reused for DISTRUST_SECONDS (`_distrust`).

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
import logging
import socket
import ssl
import time
from collections.abc import AsyncGenerator, Callable

from gateway.config.sections import Component, UpstreamTLS
from gateway.http1.connection import VERDICTS, Connection

# Idle connections older than this are not reused: servers close idle keep-alive connections after a few
# seconds (gunicorn 2 s, uvicorn 5 s), and a request sent into a closing connection fails.
IDLE_SECONDS = 1.5
# After an upstream sent bytes nobody asked for, its connections are not reused for this long (`_distrust`).
DISTRUST_SECONDS = 60.0
# Why a connection was not kept, as `on_close` is told: a verdict of the reuse rules, an exchange that did not
# finish, or an upstream under distrust. The metrics' `reason` label values.
CLOSE_REASONS = (*VERDICTS, "unfinished", "distrusted")

log = logging.getLogger("zgw_gateway")


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
                return conn.take_body()
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
    """Keep-alive connections to one origin, and the turns of the requests that use them: at most
    `max_connections` turns, a request takes one before it is sent and ends it when its answer is relayed."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        settings: Component,
        on_close: Callable[[str], None] = lambda reason: None,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_close = on_close  # told why a connection was not kept (CLOSE_REASONS)
        self.name = name  # the component, for the log
        self.clock = clock
        self.distrusted_until = 0.0  # until then no connection is reused (`_distrust`)
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.settings = settings
        self.idle: list[Connection] = []
        self.in_use = 0  # connections lent to requests
        self.turns = 0  # turns held
        self.closed = False
        self._waiters: collections.deque[tuple[float, asyncio.Future[bool]]] = collections.deque()  # (time up, waiter)
        self._timer: asyncio.TimerHandle | None = None  # the line's one timer, for its oldest waiter
        self._patience = min(settings.timeouts.pool, settings.timeouts.total)

    # A pair of calls rather than a context manager, like the app's admission: this runs on every request.
    def take_turn(self) -> bool:
        """A turn now, if one is free. None is free while anyone waits: a turn that ends goes to the line."""
        if self.turns < self.settings.max_connections:
            self.turns += 1
            return True
        return False

    async def wait_turn(self) -> None:
        """In line (first come, first served) until a turn is handed over; UpstreamError `pool` when the
        wait's bound is up first (`timeouts.pool`, or `timeouts.total` when shorter). `end_turn` when the
        request is over, always.

        Every waiter of this pool waits as long, so their times are up in the order they came: one timer for
        the whole line (`_on_timer`), set for its oldest waiter, bounds them all. A timer per waiter, started
        and stopped for each of hundreds of waiting requests, cost the ratio at 1,000 callers 0.03-0.05
        (bench/README.md, "The turn, built")."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        entry = (loop.time() + self._patience, waiter)
        self._waiters.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(entry[0], self._on_timer, loop)
        try:
            handed = await waiter
        except BaseException:
            if not waiter.done() or waiter.cancelled():
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            elif waiter.result():
                self.end_turn()  # its turn came, then it gave up: the turn goes to the next in line
            raise
        if not handed:
            raise UpstreamError("pool", sent=False)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._expire(loop.time())
        self._timer = loop.call_at(self._waiters[0][0], self._on_timer, loop) if self._waiters else None

    def _expire(self, now: float) -> None:
        """Waiters whose time is up at `now` leave the line at once (a long stall piles up none), told False."""
        while self._waiters and self._waiters[0][0] <= now:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(False)

    def end_turn(self) -> None:
        """A turn goes to the oldest waiter, still counted, so no request that arrives later can take it first;
        with nobody waiting it is free again."""
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self.turns -= 1

    async def request(
        self, method: str, head: bytes, body: bytes | AsyncGenerator[bytes, None] | None, chunked: bool, deadline: float
    ) -> Response:
        """Send one request and wait for the answer's head. `head` is the request line and header block
        (CRLF CRLF-terminated); the body streams from `body`, framed as chunks when `chunked`. Connecting and
        waiting for the answer end by `deadline` (time.monotonic()); sending the
        caller's body is bounded by the caller's own pace (the app's body timeout) and `timeouts.write`.
        Made within a turn: the connection is an idle one or a new one, never one more than the turns."""
        conn = await self._acquire(deadline)
        conn.begin(method)
        try:
            if conn.transport is None or conn.closed:
                raise UpstreamError("reset", sent=False)
            if body is None or isinstance(body, bytes):
                conn.write(head + body if body else head)
                conn.sent()
            else:
                conn.write(head)
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
        leaving, stops the sending even while the caller's next piece is still on its way; a piece the
        upstream has not taken `timeouts.write` after it was written is a timeout (connection.py's docstring)."""
        pump = asyncio.ensure_future(self._pump(conn, body, chunked))
        pump.add_done_callback(lambda _: conn.wake())
        write = self.settings.timeouts.write
        try:
            while not pump.done() and not conn.headers_done and not conn.closed:
                since = conn.stalled_since()
                left = None if since is None else since + write - conn.loop.time()
                if left is not None and left <= 0:
                    raise UpstreamError("timeout", sent=True, detail="the upstream stopped reading the body")
                with contextlib.suppress(TimeoutError):
                    await conn.wait(left)
        finally:
            if not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
        if not pump.cancelled():
            pump.result()  # the caller's body errors and the write timeout surface here

    async def _pump(self, conn: Connection, body: AsyncGenerator[bytes, None], chunked: bool) -> None:
        async with contextlib.aclosing(body):
            async for chunk in body:
                if chunk:
                    conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await conn.drained.wait()  # bounded by `_stream`'s write deadline
                if conn.closed:
                    return
        if chunked:
            conn.write(b"0\r\n\r\n")
        conn.sent()

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
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS and self._usable(conn):
                self.in_use += 1
                return conn
            conn.close()
        conn = await self._connect(min(self.settings.timeouts.connect, deadline - now))
        self.in_use += 1
        return conn

    def _usable(self, conn: Connection) -> bool:
        if conn.quiet():
            return True
        if not conn.closed:
            self._stray()
        return False

    async def _connect(self, timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, self.settings, self._stray),
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

    def release(self, conn: Connection) -> None:
        """The exchange on `conn` is over: back to the idle ones if the reuse rules allow it."""
        now = time.monotonic()
        reason = conn.end(now)
        if reason == "stray_bytes":
            self._distrust()
        elif not reason and (self.closed or self.clock() < self.distrusted_until):
            conn.close()
            reason = "" if self.closed else "distrusted"
        if reason:
            self.on_close(reason)
        self.in_use -= 1
        if not conn.closed:
            self.idle.append(conn)

    def _stray(self) -> None:
        self.on_close("stray_bytes")
        self._distrust()

    def _distrust(self) -> None:
        """The upstream sent bytes nobody asked for: it is not trusted with reuse for DISTRUST_SECONDS (issue
        20: an unasked answer that arrives after the next request went out cannot be told from its answer,
        so the only defence is not to send the next request on that upstream's used connections)."""
        now = self.clock()
        if now >= self.distrusted_until:
            log.warning(
                "upstream sent bytes nobody asked for: its connections are not reused for a while",
                extra={"component": self.name, "seconds": DISTRUST_SECONDS},
            )
        self.distrusted_until = now + DISTRUST_SECONDS
        for conn in self.idle:
            if not conn.closed:
                conn.close()
                self.on_close("distrusted")
        self.idle.clear()

    def close(self) -> None:
        """Close idle connections now, and the others when their requests finish."""
        self.closed = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()
