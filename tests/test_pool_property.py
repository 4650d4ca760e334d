"""A stateful property test of the upstream pool, with httpx (httpcore/h11) as the reference.

Hypothesis drives bursts of concurrent requests from three callers, each with its own credentials, against
a scripted upstream that picks per request among well-formed answers, delays, resets, early answers, stray
bytes, oversized heads and broken bodies; between bursts it may push stray bytes into an idle pooled
connection. After every step:

- every answer a request got is the upstream's answer to that very request (its status and body, which
  name the caller's client_id and the request's marker), or an error;
- not one byte of one request lies inside another: each upstream connection, read back by h11 as a server,
  holds exactly the requests the upstream saw on it, each with its own body;
- no connection slot is left in use;
- where httpx, given the same request against the same script, refuses or fails the answer, the pool does
  not deliver it either.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncGenerator, Coroutine
from typing import Any

import h11
import httpx
import jwt
from hostile import HostileUpstream, Request
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gateway.config.sections import Component, TimeoutsConfig
from gateway.http1.pool import Pool, UpstreamError

CALLERS = ("caller-a", "caller-b", "caller-c")
BEHAVIOURS = (
    "ok", "delay", "reset_before", "reset_mid_body", "stray_same_segment", "body_on_204", "head_too_big",
    "bad_chunk", "early_401", "trickle", "chunked_ok", "close_delimited",
)  # fmt: skip
KINDS = ("get", "post_bytes", "post_stream", "post_chunked")
HEAD_LIMIT = 16384  # h11's own default, so both clients are held to the same bound
Outcome = tuple[str, int, bytes]  # ("answer", status, body) or ("error", 0, b"")


def expected_body(request: Request) -> bytes:
    return b'{"client_id":"%s","marker":"%s","got":%d}' % (
        request.client_id.encode(),
        request.marker.encode(),
        len(request.body_read),
    )


async def script(request: Request) -> None:
    """Do to this request what its marker asks for; note what was answered in `request.answered`."""
    behaviour = request.marker.split(":")[1]
    if behaviour == "early_401":
        body = b'{"early":"%s"}' % request.marker.encode()
        request.answered = (401, body)  # type: ignore[attr-defined]
        request.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await request.body()  # then it reads the declared body, as Go and Node servers do, and goes on
        return
    await request.body()
    body = expected_body(request)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    request.answered = (200, body)  # type: ignore[attr-defined]
    if behaviour == "delay":
        await asyncio.sleep(0.002)
        request.write(head + body)
    elif behaviour == "reset_before":
        request.answered = None  # type: ignore[attr-defined]
        request.close()
    elif behaviour == "reset_mid_body":
        request.write(head + body[:5])
        await request.drain()
        request.close()
    elif behaviour == "stray_same_segment":
        request.write(head + body + b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{stray}")
    elif behaviour == "body_on_204":
        request.answered = (204, b"")  # type: ignore[attr-defined]
        request.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n{stray}")
    elif behaviour == "head_too_big":
        request.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (HEAD_LIMIT + 100) + b"\r\n" + head[17:] + body)
    elif behaviour == "bad_chunk":
        request.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + body + b"\r\n0\r\n\r\n")
    elif behaviour == "trickle":
        for i in range(0, len(head + body), 7):
            request.write((head + body)[i : i + 7])
            await request.drain()
            await asyncio.sleep(0)
    elif behaviour == "chunked_ok":
        request.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\nX-T: 1\r\n\r\n" % (len(body), body)
        )
    elif behaviour == "close_delimited":
        request.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
        await request.drain()
        request.close()
    else:
        request.write(head + body)


def token(client_id: str) -> str:
    return jwt.encode({"client_id": client_id}, "k" * 32, algorithm="HS256")


async def upload(size: int) -> AsyncGenerator[bytes, None]:
    sent = 0
    while sent < size:
        piece = min(4096, size - sent)
        yield b"u" * piece
        sent += piece
        await asyncio.sleep(0)


async def ours(pool: Pool, caller: str, marker: str, kind: str) -> Outcome:
    size = 20000
    extra = b""
    body: bytes | AsyncGenerator[bytes, None] | None = None
    chunked = False
    method = "GET" if kind == "get" else "POST"
    if kind == "post_bytes":
        body, extra = b"p" * 300, b"Content-Length: 300\r\n"
    elif kind == "post_stream":
        body, extra = upload(size), b"Content-Length: %d\r\n" % size
    elif kind == "post_chunked":
        body, extra, chunked = upload(size), b"Transfer-Encoding: chunked\r\n", True
    head = b"%s /p HTTP/1.1\r\nHost: up\r\nAuthorization: Bearer %s\r\nX-Marker: %s\r\n%s\r\n" % (
        method.encode(),
        token(caller).encode(),
        marker.encode(),
        extra,
    )
    try:
        resp = await pool.request(method, head, body, chunked, time.monotonic() + 5)
    except UpstreamError:
        return ("error", 0, b"")
    try:
        parts = []
        while chunk := await resp.read_chunk():
            parts.append(chunk)
        return ("answer", resp.status, b"".join(parts))
    except UpstreamError:
        return ("error", 0, b"")
    finally:
        resp.release()


async def reference(url: str, caller: str, marker: str, kind: str) -> Outcome:
    """The same request through httpx, on a client of its own: httpx judges each answer by itself (what a
    pooled connection did before is the pool's business, and checked above)."""
    headers = {"Authorization": f"Bearer {token(caller)}", "X-Marker": marker}
    content: Any = None
    if kind == "post_bytes":
        content = b"p" * 300
    elif kind in ("post_stream", "post_chunked"):
        content = upload(20000)
        if kind == "post_stream":
            headers["Content-Length"] = "20000"
    try:
        async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
            r = await client.request("GET" if kind == "get" else "POST", url + "/p", headers=headers, content=content)
    except httpx.HTTPError:
        return ("error", 0, b"")
    return ("answer", r.status_code, r.content)


class Loop:
    """An event loop in a thread of its own, where the upstreams, the pool and httpx live."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def replayed(received: bytes) -> list[tuple[str, bytes]]:
    """The requests in one connection's bytes, read by h11 as a server: (marker, body) each."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(received)
    out: list[tuple[str, bytes]] = []
    marker, body = "", b""
    while True:
        try:
            event = server.next_event()
        except h11.RemoteProtocolError:
            break  # a request cut off where the client stopped sending (an early answer)
        if event is h11.NEED_DATA or event is h11.PAUSED:
            if event is h11.PAUSED and server.their_state is h11.DONE:
                server.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                server.send(h11.EndOfMessage())
                server.start_next_cycle()
                continue
            if marker:
                out.append((marker, body))  # an unfinished request
            break
        if isinstance(event, h11.Request):
            marker = dict(event.headers).get(b"x-marker", b"").decode()
            body = b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            out.append((marker, body))
            marker = ""
    return out


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.env = Loop()
        self.burst_no = 0

    @initialize()
    def start(self) -> None:
        async def setup() -> None:
            self.up = await HostileUpstream(script).__aenter__()
            self.ref_up = await HostileUpstream(script).__aenter__()
            timeouts = TimeoutsConfig(connect=2, read=2, pool=2, write=2)
            component = Component(
                prefix="/p", upstream=self.up.url, timeouts=timeouts, max_response_head_bytes=HEAD_LIMIT
            )
            self.pool = Pool("127.0.0.1", self.up.port, None, component)

        self.env.run(setup())

    def teardown(self) -> None:
        async def down() -> None:
            self.pool.close()
            await self.up.__aexit__(None, None, None)
            await self.ref_up.__aexit__(None, None, None)

        if hasattr(self, "pool"):
            self.env.run(down())
        self.env.stop()

    @rule(
        burst=st.lists(
            st.tuples(st.sampled_from(CALLERS), st.sampled_from(BEHAVIOURS), st.sampled_from(KINDS)),
            min_size=1,
            max_size=6,
        )
    )
    def send_burst(self, burst: list[tuple[str, str, str]]) -> None:
        self.burst_no += 1
        markers = [f"{self.burst_no}.{i}:{behaviour}" for i, (_, behaviour, _) in enumerate(burst)]

        async def both() -> tuple[list[Outcome], list[Outcome]]:
            mine = asyncio.gather(*(ours(self.pool, c, m, k) for (c, _, k), m in zip(burst, markers, strict=True)))
            theirs = asyncio.gather(
                *(reference(self.ref_up.url, c, m, k) for (c, _, k), m in zip(burst, markers, strict=True))
            )
            return list(await mine), list(await theirs)

        got, ref = self.env.run(both())
        seen = {r.marker: r for conn in self.up.connections for r in conn.requests}
        for (caller, behaviour, kind), marker, outcome, httpx_outcome in zip(burst, markers, got, ref, strict=True):
            if outcome[0] == "error":
                continue
            request = seen[marker]
            assert request.client_id == caller
            assert (outcome[1], outcome[2]) == request.answered, (marker, kind, outcome)  # type: ignore[attr-defined]
            assert httpx_outcome[0] == "answer", f"httpx refused {marker} ({kind}), the pool delivered it"

    @rule()
    def stray_bytes_into_an_idle_connection(self) -> None:
        async def poke() -> None:
            idle = [c for c in self.pool.idle if not c.closed]
            if not idle:
                return
            sock = idle[0].transport.get_extra_info("sockname") if idle[0].transport else None
            target = next(
                (r for conn in self.up.connections for r in conn.requests[-1:]
                 if r.writer.get_extra_info("peername") == sock and not r.writer.is_closing()),
                None,
            )  # fmt: skip
            if target is None:
                return
            target.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{stray}")
            await target.drain()
            for _ in range(1000):  # the pool notices and closes it: the upstream sees the end
                if idle[0].closed:
                    return
                await asyncio.sleep(0.002)
            raise AssertionError("stray bytes on an idle connection did not close it")

        self.env.run(poke())

    @invariant()
    def nothing_left_in_use(self) -> None:
        if hasattr(self, "pool"):
            assert self.pool.in_use == 0

    @invariant()
    def no_request_lies_inside_another(self) -> None:
        if not hasattr(self, "up"):
            return
        for conn in self.up.connections:
            replay = replayed(bytes(conn.received))
            assert [m for m, _ in replay] == [r.marker for r in conn.requests]
            for (marker, body), request in zip(replay, conn.requests, strict=True):
                assert set(body) <= {ord("p"), ord("u")}, marker  # only this request's own body bytes
                if request.body_read:
                    assert body[: len(request.body_read)] == request.body_read


PoolMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("POOL_PROPERTY_EXAMPLES", "25")),
    stateful_step_count=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPoolProperty = PoolMachine.TestCase
