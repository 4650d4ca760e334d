"""The upstream client (gateway.http1.pool) against a hostile upstream: one test per reuse rule and bound.

Each test checks what the client delivered and, byte for byte, what the upstream received on which
connection. The upstream (tests/hostile.py) runs in the test's event loop; no test waits on a timer:
where the order of events matters, the script and the test hand each other asyncio events.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import jwt
import pytest
from hostile import HostileUpstream, Request, answer

from gateway.config.sections import Component, TimeoutsConfig
from gateway.http1.pool import Pool, UpstreamError

Test = Callable[[Pool, HostileUpstream], Awaitable[None]]


def settings(port: int, **overrides: Any) -> Component:
    timeouts = overrides.pop("timeouts", TimeoutsConfig(connect=2, read=5, pool=0.5, write=5))
    return Component(prefix="/z", upstream=f"http://127.0.0.1:{port}", timeouts=timeouts, **overrides)


def run(script: Callable[[Request], Awaitable[None]], test: Test, rcvbuf: int = 0, **overrides: Any) -> HostileUpstream:
    """Serve `script`, run `test` with a pool to it; returns the upstream with what it received."""

    async def main() -> HostileUpstream:
        async with HostileUpstream(script, rcvbuf) as up:
            pool = Pool("127.0.0.1", up.port, None, settings(up.port, **overrides))
            try:
                await asyncio.wait_for(test(pool, up), 30)
            finally:
                pool.close()
        return up

    return asyncio.run(main())


def head(marker: str, method: str = "GET", client_id: str = "caller-a", extra: bytes = b"") -> bytes:
    token = jwt.encode({"client_id": client_id}, "k" * 32, algorithm="HS256")
    return b"%s /z/zaken HTTP/1.1\r\nHost: up\r\nAuthorization: Bearer %s\r\nX-Marker: %s\r\n%s\r\n" % (
        method.encode(),
        token.encode(),
        marker.encode(),
        extra,
    )


async def exchange(
    pool: Pool,
    marker: str,
    method: str = "GET",
    body: bytes | AsyncGenerator[bytes, None] | None = None,
    extra: bytes = b"",
    chunked: bool = False,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    resp = await pool.request(method, head(marker, method, extra=extra), body, chunked, time.monotonic() + 10)
    try:
        parts = []
        while chunk := await resp.read_chunk():
            parts.append(chunk)
        return resp.status, resp.headers, b"".join(parts)
    finally:
        resp.release()


async def until(condition: Callable[[], bool]) -> None:
    """Until `condition` holds: it is about bytes in flight on loopback, so it soon does (bounded)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met")


def markers(up: HostileUpstream) -> list[list[str]]:
    """Per connection, the markers of the requests the upstream read there."""
    return [[r.marker for r in conn.requests] for conn in up.connections]


async def well_behaved(request: Request) -> None:
    await request.body()
    request.write(answer(request))


def ours(marker: str) -> bytes:
    return b'{"client_id": "caller-a", "marker": "%s"}' % marker.encode()


# Rule 3 and the happy path: keep-alive connections are reused.


def test_a_well_behaved_upstream_gets_one_connection_for_many_requests() -> None:
    async def test(pool: Pool, up: HostileUpstream) -> None:
        for i in range(20):
            assert await exchange(pool, f"m{i}") == (200, pool_headers(ours(f"m{i}")), ours(f"m{i}"))

    up = run(well_behaved, test)
    assert markers(up) == [[f"m{i}" for i in range(20)]]


def test_connections_are_reused_past_descriptor_1024() -> None:
    """Issue 20: select() refuses descriptors from 1024 on; with more than 1,024 open (idle callers do
    that), every take from the pool counted as stray bytes and opened a new connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard limit on descriptors ({hard}) is below 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [fd for _ in range(550) for fd in os.pipe()]

    async def test(pool: Pool, up: HostileUpstream) -> None:
        for i in range(20):
            assert (await exchange(pool, f"m{i}"))[2] == ours(f"m{i}")
        assert pool.idle[0].fd >= 1024

    try:
        up = run(well_behaved, test)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert markers(up) == [[f"m{i}" for i in range(20)]]


def pool_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body))]


# Rule 5: anything that arrives on an idle connection closes it.


def test_a_stray_answer_on_an_idle_connection_closes_it() -> None:
    released = asyncio.Event()

    async def script(request: Request) -> None:
        request.write(answer(request))
        if request.marker == "first":
            await released.wait()
            request.write(answer(request, body=b'{"stray": true}'))

    async def test(pool: Pool, up: HostileUpstream) -> None:
        assert (await exchange(pool, "first"))[2] == ours("first")
        assert len(pool.idle) == 1  # it was reusable when it came back
        released.set()
        await until(lambda: all(conn.closed for conn in pool.idle))  # the stray bytes arrived: closed
        assert (await exchange(pool, "second"))[2] == ours("second")

    up = run(script, test)
    assert markers(up) == [["first"], ["second"]]


def test_stray_bytes_the_event_loop_has_not_handed_over_yet_are_caught_when_the_connection_is_taken() -> None:
    """Rule 5 at the last moment: bytes already in the socket, not yet read by the event loop."""
    closed: list[str] = []

    async def test(pool: Pool, up: HostileUpstream) -> None:
        pool.on_close = closed.append
        assert (await exchange(pool, "first"))[2] == ours("first")
        assert len(pool.idle) == 1
        request = up.connections[0].requests[0]
        fd = request.writer.get_extra_info("socket").fileno()
        os.write(fd, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")  # no await: the loop has not run since
        assert not pool.idle[0].closed  # the client's protocol has not seen them
        assert (await exchange(pool, "second"))[2] == ours("second")
        assert closed == ["stray_bytes", "distrusted"]  # and that upstream is not trusted with reuse for now

    up = run(well_behaved, test)
    assert markers(up) == [["first"], ["second"]]


def test_an_idle_connection_the_upstream_closed_is_not_taken_for_stray_bytes() -> None:
    """Its end, not yet handed over by the event loop, is seen when the connection is taken: a new connection,
    nothing counted as stray, and the upstream still trusted with reuse."""
    closed: list[str] = []

    async def test(pool: Pool, up: HostileUpstream) -> None:
        pool.on_close = closed.append
        assert (await exchange(pool, "first"))[2] == ours("first")
        sock = up.connections[0].requests[0].writer.get_extra_info("socket")
        with socket.socket(fileno=os.dup(sock.fileno())) as end:
            end.shutdown(socket.SHUT_WR)  # no await since: as a keep-alive timeout would, unseen by the client
        assert not pool.idle[0].closed
        for marker in ("second", "third"):
            assert (await exchange(pool, marker))[2] == ours(marker)
        assert closed == []

    assert markers(run(well_behaved, test)) == [["first"], ["second", "third"]]


# Rule 4: not one byte beyond the end of the answer.


@pytest.mark.parametrize(
    "beyond",
    [b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"stray": true}', b"\r\n", b"\n", b"X", b"HTTP/1.1 2"],
    ids=["second-answer", "crlf", "lf", "one-byte", "partial-head"],
)
def test_bytes_beyond_the_answer_in_the_same_segment_poison_the_connection(beyond: bytes) -> None:
    async def script(request: Request) -> None:
        request.write(answer(request) + (beyond if request.marker == "first" else b""))

    async def test(pool: Pool, up: HostileUpstream) -> None:
        status, headers, body = await exchange(pool, "first")
        assert (status, body) == (200, ours("first"))
        assert headers == pool_headers(ours("first"))  # nothing of the stray head merged in
        assert not pool.idle
        assert (await exchange(pool, "second"))[2] == ours("second")

    assert markers(run(script, test)) == [["first"], ["second"]]


@pytest.mark.parametrize("status", [204, 304])
def test_a_body_on_an_answer_that_has_none_poisons_the_connection(status: int) -> None:
    async def script(request: Request) -> None:
        if request.marker == "first":
            request.write(b'HTTP/1.1 %d X\r\nContent-Length: 15\r\n\r\n{"stray": true}' % status)
        else:
            request.write(answer(request))

    async def test(pool: Pool, up: HostileUpstream) -> None:
        assert await exchange(pool, "first") == (status, [(b"Content-Length", b"15")], b"")
        assert not pool.idle
        assert (await exchange(pool, "second"))[2] == ours("second")

    assert markers(run(script, test)) == [["first"], ["second"]]


def test_an_answer_to_head_ends_with_its_head() -> None:
    async def script(request: Request) -> None:
        extra = b"" if request.marker == "clean" else b"body"
        request.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n" + extra)

    async def test(pool: Pool, up: HostileUpstream) -> None:
        assert await exchange(pool, "clean", method="HEAD") == (200, [(b"Content-Length", b"4")], b"")
        assert len(pool.idle) == 1
        assert await exchange(pool, "dirty", method="HEAD") == (200, [(b"Content-Length", b"4")], b"")
        assert not pool.idle
        assert await exchange(pool, "after", method="HEAD") == (200, [(b"Content-Length", b"4")], b"")

    assert markers(run(script, test)) == [["clean", "dirty"], ["after"]]


# Rule 1: an early answer while the body is still going up is relayed; the connection is closed after.


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_early_answer_during_an_upload_is_relayed_and_the_connection_closed(chunked: bool) -> None:
    answered = asyncio.Event()

    async def script(request: Request) -> None:
        if request.marker != "upload":
            await well_behaved(request)
            return
        request.write(answer(request, 401))  # right after the head, as Go and Node servers do
        answered.set()
        while await request.reader.read(65536):  # and it keeps reading the declared body
            pass

    async def upload() -> AsyncGenerator[bytes, None]:
        yield b"a" * 1000
        await answered.wait()
        for _ in range(100_000):  # far more than the answer takes to arrive
            yield b"b" * 1000
            await asyncio.sleep(0)

    async def test(pool: Pool, up: HostileUpstream) -> None:
        extra = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: 1000000000\r\n"
        status, _, body = await exchange(pool, "upload", "POST", upload(), extra, chunked)
        assert (status, body) == (401, ours("upload"))
        assert not pool.idle and pool.in_use == 0
        assert (await exchange(pool, "next"))[2] == ours("next")

    up = run(script, test)
    assert markers(up) == [["upload"], ["next"]]
    first = bytes(up.connections[0].received)
    assert first.count(b"HTTP/1.1") == 1 and b"next" not in first  # nothing of the next request in it
    assert len(first) < 1_000_000_000


@pytest.mark.parametrize("pause", [0, 0.05], ids=["fast-writer", "slow-pieces"])
def test_an_upstream_that_stops_reading_the_upload_times_out_within_the_write_timeout(pause: float) -> None:
    """Issue 20: `timeouts.write` is a deadline for every byte to be acknowledged by the upstream, not a timer
    the kernel's buffers restart: the megabytes they take after the upstream stopped reading do not count.
    The bound from the request's start (`write` + 1 s) is the issue's acceptance criterion."""
    write = 1.0

    async def script(request: Request) -> None:
        request.stop_reading()  # after the head: not one byte more, not even into its stream buffer
        await asyncio.Event().wait()

    async def upload() -> AsyncGenerator[bytes, None]:
        while True:
            yield b"x" * 65536
            await asyncio.sleep(pause)

    async def test(pool: Pool, up: HostileUpstream) -> None:
        started = time.monotonic()
        with pytest.raises(UpstreamError) as err:
            await exchange(pool, "stuck", "POST", upload(), b"Content-Length: 100000000000\r\n")
        assert time.monotonic() - started < write + 1
        assert (err.value.reason, err.value.sent) == ("timeout", True)
        assert pool.in_use == 0 and not pool.idle

    run(script, test, rcvbuf=4096, timeouts=TimeoutsConfig(connect=2, read=60, pool=1, write=write))


# Bounds on the answer's head and trailers.


@pytest.mark.parametrize(
    ("answer_bytes", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 4000 + b"\r\nContent-Length: 0\r\n\r\n", ""),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 5000 + b"\r\nContent-Length: 0\r\n\r\n", "bad_response"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20 + b"Content-Length: 0\r\n\r\n", ""),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 21 + b"Content-Length: 0\r\n\r\n", "bad_response"),
        (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 200 + b"HTTP/1.1 200 OK\r\n\r\n", "bad_response"),
        (b"HTTP/1.1 200 OK\r\nX-Endless: " + b"a" * 10_000_000, "bad_response"),
        (b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n", "bad_response"),
        (b"HTTP/1.1 200 OK\r\nFolded: a\r\n b\r\nContent-Length: 0\r\n\r\n", "bad_response"),
        (b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", "bad_response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab", "bad_response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nab", "bad_response"),
        (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", "bad_response"),
    ],
    ids=[
        "head-within-limit", "head-over-limit", "fields-at-limit", "fields-over-limit", "endless-1xx",
        "10-MB-header", "101", "obs-fold", "bare-lf", "two-lengths", "length-and-chunked", "bad-status",
    ],
)  # fmt: skip
def test_the_answers_head_is_bounded_and_strictly_framed(answer_bytes: bytes, reason: str) -> None:
    async def script(request: Request) -> None:
        request.write(answer_bytes)
        await request.drain()

    async def test(pool: Pool, up: HostileUpstream) -> None:
        if not reason:
            assert (await exchange(pool, "m"))[0] == 200
            return
        with pytest.raises(UpstreamError) as err:
            await exchange(pool, "m")
        assert (err.value.reason, err.value.sent) == (reason, True)
        assert not pool.idle and pool.in_use == 0

    run(script, test, max_response_head_bytes=4096, max_response_headers=21)


def test_trailers_are_read_and_dropped_never_merged_into_the_headers() -> None:
    async def script(request: Request) -> None:
        request.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nSet-Cookie: session=evil\r\n"
            b"X-Trailer: 1\r\n\r\n"
        )

    async def test(pool: Pool, up: HostileUpstream) -> None:
        for marker in ("first", "second"):
            assert await exchange(pool, marker) == (200, [(b"Transfer-Encoding", b"chunked")], b"hello")
        assert len(pool.idle) == 1  # trailers are legal: the connection stays usable

    assert markers(run(script, test)) == [["first", "second"]]


@pytest.mark.parametrize(
    "body",
    [
        b"5;" + b"e" * 20_000 + b"\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nX-Trailer: " + b"a" * 20_000 + b"\r\n\r\n",
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"ffffffffffffffffffff\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
    ],
    ids=["chunk-extension-flood", "trailer-flood", "bad-chunk-size", "chunk-size-overflow", "no-crlf-after-data"],
)
def test_a_malformed_chunked_body_is_an_error_never_a_body(body: bytes) -> None:
    async def script(request: Request) -> None:
        request.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)

    async def test(pool: Pool, up: HostileUpstream) -> None:
        resp = await pool.request("GET", head("m"), None, False, time.monotonic() + 10)
        with pytest.raises(UpstreamError) as err:
            while await resp.read_chunk():
                pass
        resp.release()
        assert err.value.reason == "bad_response"
        assert not pool.idle

    run(script, test, max_response_head_bytes=4096)


# Rule 3: both sides keep it alive.


@pytest.mark.parametrize(
    "first",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n\r\nok",
    ],
    ids=["close", "close-in-a-list", "http-1.0", "until-close"],
)
def test_an_answer_that_ends_the_connection_is_never_followed_by_another(first: bytes) -> None:
    async def script(request: Request) -> None:
        if request.marker == "first":
            request.write(first)
            request.close()
        else:
            request.write(answer(request))

    async def test(pool: Pool, up: HostileUpstream) -> None:
        assert (await exchange(pool, "first"))[2] == b"ok"
        assert not pool.idle
        assert (await exchange(pool, "second"))[2] == ours("second")

    assert markers(run(script, test)) == [["first"], ["second"]]


# Resets and trickles at each phase.


@pytest.mark.parametrize(
    ("written", "error_at"),
    [
        (b"", "head"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "head"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part", "body"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "body"),
    ],
    ids=["before-the-head", "mid-head", "mid-body", "mid-chunks"],
)
def test_a_reset_at_any_phase_is_an_error_and_the_connection_is_dropped(written: bytes, error_at: str) -> None:
    async def script(request: Request) -> None:
        request.write(written)
        await request.drain()
        request.close()

    async def test(pool: Pool, up: HostileUpstream) -> None:
        if error_at == "head":
            with pytest.raises(UpstreamError) as err:
                await pool.request("GET", head("m"), None, False, time.monotonic() + 10)
            assert (err.value.reason, err.value.sent) == ("reset", True)
        else:
            resp = await pool.request("GET", head("m"), None, False, time.monotonic() + 10)
            with pytest.raises(UpstreamError) as err:
                while await resp.read_chunk():
                    pass
            resp.release()
            assert err.value.reason == "reset"
        assert not pool.idle and pool.in_use == 0

    run(script, test)


def test_an_answer_trickled_byte_by_byte_arrives_whole() -> None:
    async def script(request: Request) -> None:
        for byte in answer(request, extra=b"X-Slow: yes\r\n"):
            request.write(bytes([byte]))
            await request.drain()
            await asyncio.sleep(0)

    async def test(pool: Pool, up: HostileUpstream) -> None:
        for marker in ("a", "b"):
            status, headers, body = await exchange(pool, marker)
            assert (status, body) == (200, ours(marker))
            assert (b"X-Slow", b"yes") in headers
        assert len(pool.idle) == 1

    assert markers(run(script, test)) == [["a", "b"]]


def test_silence_is_a_timeout_and_a_refused_port_never_sent_anything() -> None:
    async def silent(request: Request) -> None:
        await asyncio.Event().wait()

    async def test(pool: Pool, up: HostileUpstream) -> None:
        with pytest.raises(UpstreamError) as err:
            await pool.request("GET", head("m"), None, False, time.monotonic() + 0.2)
        assert (err.value.reason, err.value.sent) == ("timeout", True)
        refused = Pool("127.0.0.1", 1, None, settings(1))
        with pytest.raises(UpstreamError) as err:
            await refused.request("GET", head("m"), None, False, time.monotonic() + 5)
        assert (err.value.reason, err.value.sent) == ("connect", False)
        unknown = Pool("upstream.invalid", 80, None, settings(80))
        with pytest.raises(UpstreamError) as err:
            await unknown.request("GET", head("m"), None, False, time.monotonic() + 5)
        assert (err.value.reason, err.value.sent) == ("dns", False)

    run(silent, test)


def test_a_full_pool_waits_then_answers_pool() -> None:
    """Every turn held: the next request waits in line until its timer fires (for real), then gets `pool` and
    leaves the line; the holder's turn is untouched, and once it ends the turn is free."""

    async def test(pool: Pool, up: HostileUpstream) -> None:
        assert pool.take_turn()
        assert not pool.take_turn()
        with pytest.raises(UpstreamError) as err:
            await pool.wait_turn()
        assert (err.value.reason, err.value.sent) == ("pool", False)
        assert pool.turns == 1 and not pool._waiters
        pool.end_turn()
        assert pool.turns == 0 and pool.take_turn()
        pool.end_turn()

    run(well_behaved, test, max_connections=1)


def test_streamed_bodies_are_sent_as_chunks_when_the_length_is_unknown() -> None:
    async def parts() -> AsyncGenerator[bytes, None]:
        for piece in (b"abc", b"", b"defgh"):
            yield piece

    async def test(pool: Pool, up: HostileUpstream) -> None:
        status, _, _ = await exchange(pool, "m", "POST", parts(), b"Transfer-Encoding: chunked\r\n", chunked=True)
        assert status == 200
        assert len(pool.idle) == 1

    up = run(well_behaved, test)
    received = bytes(up.connections[0].received)
    assert received.endswith(b"\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n")
    assert up.connections[0].requests[0].body_read == b"abcdefgh"
