"""A hostile HTTP/1.1 upstream for the tests: raw sockets, scripted answers, every byte it receives recorded.

`HostileUpstream(script)` listens on 127.0.0.1. For each request on each connection it reads the head,
then calls `script(request)`, a coroutine that decides everything else: whether and how much of the body
to read (`await request.body()`), which bytes to write back (`request.write(...)`), whether to close.
It runs in the test's event loop (`async with`) or in a thread of its own (`with`), so a test can call a
gateway process synchronously while the upstream misbehaves. `connections` keeps, per connection, all
bytes received, in order: the ground truth of what reached the upstream.

Answers built by `answer()` name the caller's client_id (read from the token, never verified here) and
the request's marker, so a caller can tell its own answer from anybody else's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Script = Callable[["Request"], Awaitable[None]]


@dataclass
class Connection:
    number: int
    received: bytearray = field(default_factory=bytearray)
    requests: list[Request] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class Request:
    """One request as the upstream read it: the head parsed, the body left for the script to read."""

    def __init__(
        self, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.head = head
        lines = head.decode("latin-1").split("\r\n")
        self.method, self.target, _ = lines[0].split(" ", 2)
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                self.headers.append((name.strip().lower(), value.strip()))
        self.body_read = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def client_id(self) -> str:
        """The client_id claim of the Bearer token, unverified ("" without a token)."""
        auth = self.header("authorization") or ""
        if not auth.startswith("Bearer "):
            return ""
        payload = auth[7:].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims.get("client_id", ""))

    @property
    def marker(self) -> str:
        return self.header("x-marker") or ""

    async def body(self) -> bytes:
        """The whole body, by the request's own framing."""
        length = self.header("content-length")
        if length is not None:
            self.body_read = await self.reader.readexactly(int(length))
        elif (self.header("transfer-encoding") or "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            self.body_read = b"".join(parts)
        return self.body_read

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def stop_reading(self) -> None:
        """Read nothing more from this connection, not even into the stream's buffer: with a small `rcvbuf`
        the peer's bytes soon stop being acknowledged."""
        transport = self.writer.transport
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()

    async def drain(self) -> None:
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


def answer(request: Request, status: int = 200, extra: bytes = b"", body: bytes | None = None) -> bytes:
    """A well-formed answer naming the caller and the request's marker (or `body` as given)."""
    if body is None:
        body = json.dumps({"client_id": request.client_id, "marker": request.marker}).encode()
    reason = {200: b"OK", 201: b"Created", 204: b"No Content", 304: b"Not Modified", 401: b"Unauthorized"}
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        reason.get(status, b"X"),
        len(body),
        extra,
        body,
    )


class _Recording(asyncio.StreamReader):
    def __init__(self, conn: Connection) -> None:
        super().__init__(limit=1 << 20)
        self._conn = conn

    def feed_data(self, data: bytes) -> None:
        self._conn.received.extend(data)
        super().feed_data(data)


class HostileUpstream:
    """See the module docstring. `url` is its base; `connections` what it received."""

    def __init__(self, script: Script, rcvbuf: int = 0) -> None:
        self.script = script
        self.rcvbuf = rcvbuf  # SO_RCVBUF of its connections (0: the kernel's): small, the kernel buffers little
        self.connections: list[Connection] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self.errors: list[BaseException] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _accept(self, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request = Request(conn, reader, writer, head)
                conn.requests.append(request)
                await self.script(request)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except Exception as exc:  # a broken script must fail the test, not vanish
            self.errors.append(exc)
        finally:
            writer.close()
            conn.closed.set()

    def _protocol(self) -> asyncio.StreamReaderProtocol:
        conn = Connection(len(self.connections))
        self.connections.append(conn)
        reader = _Recording(conn)
        return asyncio.StreamReaderProtocol(reader, lambda r, w: self._accept(conn, r, w))

    async def __aenter__(self) -> HostileUpstream:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        if self.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)  # before listen: inherited
        sock.bind(("127.0.0.1", 0))
        self._server = await loop.create_server(self._protocol, sock=sock)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.connections:
            conn.closed.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        if self.errors:
            raise self.errors[0]

    # In a thread of its own, for tests that call a gateway process synchronously.

    def __enter__(self) -> HostileUpstream:
        started = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with self:
                started.set()
                await self._stop.wait()

        self._thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the hostile upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        if self.errors:
            raise self.errors[0]

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` in the upstream's loop (thread mode) and return its result."""
        assert self._loop is not None
        result: list[Any] = []
        done = threading.Event()

        def run() -> None:
            result.append(fn())
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)
        return result[0]
