"""The upstream client against raw servers on 127.0.0.1 that answer exactly the bytes each test needs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from gateway.upstream import Pool, Timeouts, UpstreamError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEAD = b"GET /zaken/api/v1/zaken HTTP/1.1\r\nHost: test\r\n\r\n"
TIMEOUTS = Timeouts(connect=2, read=2, pool=0.5)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def run(handler: Handler, test: Callable[[Pool, list[int]], Awaitable[None]], limit: int = 10) -> list[int]:
    """Serve `handler` on a free port, run `test` with a pool to it; returns the client ports seen."""
    ports: list[int] = []

    async def main() -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ports.append(writer.get_extra_info("peername")[1])
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = Pool("127.0.0.1", port, None, limit, TIMEOUTS)
        try:
            await asyncio.wait_for(test(pool, ports), 20)
        finally:
            pool.close()
            server.close()

    asyncio.run(main())
    return ports


async def body_of(pool: Pool, head: bytes = HEAD, method: str = "GET") -> tuple[int, bytes]:
    resp = await pool.request(method, head, None, False, time.monotonic() + 5)
    parts = []
    while chunk := await resp.read_chunk():
        parts.append(chunk)
    resp.release()
    return resp.status, b"".join(parts)


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nhello")
        await writer.drain()


def test_connections_are_kept_alive_and_reused() -> None:
    async def test(pool: Pool, ports: list[int]) -> None:
        for _ in range(20):
            assert await body_of(pool) == (200, b"hello")

    assert len(run(keep_alive, test)) == 1


def test_chunked_and_close_delimited_bodies() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        await writer.drain()
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    async def test(pool: Pool, ports: list[int]) -> None:
        assert await body_of(pool) == (200, b"hello world")
        assert await body_of(pool) == (200, b"until the end")

    assert len(run(chunked, test)) == 1


def test_informational_answers_are_skipped_and_head_has_no_body() -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
        )
        await writer.drain()
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")  # HEAD: the length of a body not sent
        await writer.drain()
        await asyncio.sleep(1)

    async def test(pool: Pool, ports: list[int]) -> None:
        assert await body_of(pool) == (201, b"ok")
        resp = await pool.request("HEAD", HEAD.replace(b"GET", b"HEAD"), None, False, time.monotonic() + 5)
        assert (resp.status, resp.content_length, resp.at_eof()) == (200, 1000, True)
        resp.release()

    run(server, test)


def test_a_body_cut_short_is_an_error_and_the_connection_is_not_reused() -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()

    async def test(pool: Pool, ports: list[int]) -> None:
        resp = await pool.request("GET", HEAD, None, False, time.monotonic() + 5)
        assert await resp.read_chunk() == b"only part"
        with pytest.raises(UpstreamError) as err:
            await resp.read_chunk()
        assert err.value.reason == "reset"
        resp.release()
        assert pool.idle == []

    run(server, test)


def test_silence_is_a_timeout_and_a_refused_port_never_sent_anything() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def test(pool: Pool, ports: list[int]) -> None:
        started = time.monotonic()
        with pytest.raises(UpstreamError) as err:
            await pool.request("GET", HEAD, None, False, time.monotonic() + 0.3)
        assert (err.value.reason, err.value.sent) == ("timeout", True)
        assert time.monotonic() - started < 1.5
        refused = Pool("127.0.0.1", 1, None, 1, TIMEOUTS)
        with pytest.raises(UpstreamError) as err:
            await refused.request("GET", HEAD, None, False, time.monotonic() + 5)
        assert (err.value.reason, err.value.sent) == ("connect", False)
        unknown = Pool("upstream.invalid", 80, None, 1, TIMEOUTS)
        with pytest.raises(UpstreamError) as err:
            await unknown.request("GET", HEAD, None, False, time.monotonic() + 5)
        assert (err.value.reason, err.value.sent) == ("dns", False)

    run(silent, test)


def test_a_full_pool_waits_then_answers_pool() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(1.5)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    async def test(pool: Pool, ports: list[int]) -> None:
        first = asyncio.create_task(pool.request("GET", HEAD, None, False, time.monotonic() + 5))
        await asyncio.sleep(0.1)
        with pytest.raises(UpstreamError) as err:
            await pool.request("GET", HEAD, None, False, time.monotonic() + 5)
        assert (err.value.reason, err.value.sent) == ("pool", False)
        resp = await first
        assert resp.status == 204
        resp.release()

    run(slow, test, limit=1)


def test_streamed_bodies_are_sent_as_chunks_when_the_length_is_unknown() -> None:
    received: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await read_request(reader))
        received.append(await reader.readuntil(b"0\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async def parts():  # type: ignore[no-untyped-def]
        for piece in (b"abc", b"", b"defgh"):
            yield piece

    async def test(pool: Pool, ports: list[int]) -> None:
        head = b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        resp = await pool.request("POST", head, parts(), True, time.monotonic() + 5)
        assert resp.status == 200
        resp.release()

    run(echo, test)
    assert received[1] == b"3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n"
