"""A broken or hostile upstream, through the whole gateway: no caller ever gets another caller's answer.

The gateway runs as a process; the upstream is tests/hostile.py in a thread. Two callers with their own API
keys and ZGW credentials talk to the gateway over raw keep-alive connections, read by h11 so every byte
they receive is accounted for. Each answer names the client_id of the token the upstream saw and the
request's marker, so a caller knows its own answer; each test also checks what reached the upstream, per
connection. docs/security.md ("Hostile upstream") lists the cases with these tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h11
import pytest
from hostile import HostileUpstream, Request, answer
from servers import GatewayProcess, free_port, metric_value, rss, wait_until

ALPHA = {"name": "alpha", "key": "alpha-api-key-5d1c3b7a9e2f4d6b8a0c", "client_id": "alpha-Q7pLx2Vb9TrE"}
BETA = {"name": "beta", "key": "beta-api-key-8e2b4d6f0a1c3e5b7d9f", "client_id": "beta-K3mN8sPq4WzY"}
ENV = {
    "ALPHA_KEY": ALPHA["key"],
    "ALPHA_SECRET": "alpha-secret-3f9c1a7e5b2d4c6e8a0f1b3d5e7a9c1e",
    "BETA_KEY": BETA["key"],
    "BETA_SECRET": "beta-secret-8e2b4d6f0a1c3e5b7d9f2a4c6e8b0d1f",
}
DOCS = "/documenten/api/v1"
JSON = "/zaken/api/v1"

Script = Callable[[Request], Awaitable[None]]


def config(upstream: str, **docs: Any) -> dict[str, Any]:
    port = free_port()
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "public_url": f"http://127.0.0.1:{port}",
        "shutdown": {"drain_seconds": 0, "timeout_seconds": 5},
        "circuit_breaker": {"enabled": False},
        "retry": {"enabled": False},
        "components": {
            "documenten": {"prefix": DOCS, "upstream": upstream + DOCS, **docs},
            "zaken": {"prefix": JSON, "upstream": upstream + JSON, "rewrite_urls": True},
        },
        "callers": [
            {
                "name": c["name"],
                "api_keys": [{"env": f"{c['name'].upper()}_KEY"}],
                "client_id": c["client_id"],
                "secret": {"env": f"{c['name'].upper()}_SECRET"},
                "components": ["documenten", "zaken"],
            }
            for c in (ALPHA, BETA)
        ],
    }


@contextlib.contextmanager
def hostile(script: Script, tmp_path: Path, **docs: Any) -> Iterator[tuple[GatewayProcess, HostileUpstream]]:
    with HostileUpstream(script) as up:
        workdir = tmp_path / "gw"
        workdir.mkdir(exist_ok=True)
        gw = GatewayProcess(config(up.url, **docs), workdir, env=ENV)
        try:
            yield gw.start(), up
        finally:
            gw.stop()


class Caller:
    """One caller's keep-alive connection to the gateway, every byte read by h11's framing."""

    def __init__(self, gw: GatewayProcess, who: dict[str, str]) -> None:
        self.who = who
        self.sock = socket.create_connection(("127.0.0.1", gw.port), timeout=20)
        self.h11 = h11.Connection(h11.CLIENT)

    def request(
        self, method: str, path: str, marker: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        fields = [("Host", "gw"), ("X-API-Key", self.who["key"]), ("X-Marker", marker), *(headers or [])]
        if body or method in ("POST", "PUT", "PATCH"):
            fields.append(("Content-Length", str(len(body))))
        self.sock.sendall(self.h11.send(h11.Request(method=method, target=path, headers=fields)))
        self.sock.sendall(self.h11.send(h11.Data(data=body)) + self.h11.send(h11.EndOfMessage()))
        status, got, parts = 0, [], []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                status, got = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()  # h11 refuses when bytes beyond the answer are waiting
        return status, got, b"".join(parts)

    def extra_bytes(self) -> bytes:
        """Bytes the gateway sent beyond the last answer (none, ever)."""
        self.sock.settimeout(0.05)
        with contextlib.suppress(TimeoutError, BlockingIOError):
            return self.h11.trailing_data[0] + self.sock.recv(65536)
        return self.h11.trailing_data[0]

    def close(self) -> None:
        self.sock.close()


def theirs(who: dict[str, str], marker: str) -> bytes:
    return json.dumps({"client_id": who["client_id"], "marker": marker}).encode()


def seen_markers(up: HostileUpstream) -> list[list[tuple[str, str]]]:
    """Per upstream connection: (client_id, marker) of each request read there."""
    return [[(r.client_id, r.marker) for r in conn.requests] for conn in up.connections]


def no_foreign_bytes(up: HostileUpstream) -> None:
    """Each connection's bytes hold only the requests the upstream read on it, nothing of anybody else's."""
    for conn in up.connections:
        received = bytes(conn.received)
        expected = {r.marker for r in conn.requests}
        for r in (r for c in up.connections for r in c.requests):
            if r.marker not in expected:
                assert b"X-Marker: " + r.marker.encode() + b"\r\n" not in received, "a request smuggled into another"


async def well_behaved(request: Request) -> None:
    await request.body()
    request.write(answer(request))


def test_a_stray_answer_on_an_idle_pooled_connection_is_never_delivered(tmp_path: Path) -> None:
    """Case 1: a second full answer arrives while the connection sits idle in the gateway's pool."""
    send_stray = threading.Event()

    async def script(request: Request) -> None:
        await well_behaved(request)
        if request.marker == "alpha-1":
            await asyncio.get_running_loop().run_in_executor(None, send_stray.wait, 20)
            request.write(answer(request))  # alpha's answer again, unasked

    with hostile(script, tmp_path) as (gw, up):
        alpha, beta = Caller(gw, ALPHA), Caller(gw, BETA)
        assert alpha.request("GET", DOCS + "/x", "alpha-1")[2] == theirs(ALPHA, "alpha-1")
        send_stray.set()
        wait_until(lambda: up.connections[0].closed.is_set(), 10)  # the gateway dropped that connection
        assert beta.request("GET", DOCS + "/x", "beta-1")[2] == theirs(BETA, "beta-1")
        assert alpha.request("GET", DOCS + "/x", "alpha-2")[2] == theirs(ALPHA, "alpha-2")
        assert alpha.extra_bytes() == b"" and beta.extra_bytes() == b""
        alpha.close()
        beta.close()
        closed = metric_value(gw.metrics(), "zgw_gateway_upstream_connections_closed_total", reason="stray_bytes")
        assert closed == 1
    assert seen_markers(up)[0] == [(ALPHA["client_id"], "alpha-1")]
    no_foreign_bytes(up)


def test_stray_answers_in_the_same_segment_never_reach_anybody_under_load(tmp_path: Path) -> None:
    """Case 1 and 3 under load: one answer in five comes with a copy of the previous answer (often another
    caller's) behind it in the same write. Before, one such stray put a connection one answer behind for
    good (27,676 wrong answers of 39,398 in 20 s); now not one is delivered."""
    state: dict[str, Any] = {"count": 0, "last": b"", "strays": 0}

    async def script(request: Request) -> None:
        await request.body()
        state["count"] += 1
        reply, previous = answer(request), state["last"]
        state["last"] = reply
        if state["count"] % 5 or not previous:
            request.write(reply)
        else:
            state["strays"] += 1
            request.stray = True  # type: ignore[attr-defined]
            request.write(reply + previous)

    with hostile(script, tmp_path) as (gw, up):

        def worker(who: dict[str, str], n: int) -> list[tuple[bytes, bytes]]:
            caller = Caller(gw, who)
            out = []
            for i in range(40):
                marker = f"{who['name']}-{n}-{i}"
                status, _, body = caller.request("GET", DOCS + "/x", marker)
                assert status == 200
                out.append((body, theirs(who, marker)))
            assert caller.extra_bytes() == b""
            caller.close()
            return out

        with ThreadPoolExecutor(8) as pool:
            results = [pool.submit(worker, who, n) for who in (ALPHA, BETA) for n in range(4)]
            pairs = [pair for f in results for pair in f.result()]
        closed = metric_value(gw.metrics(), "zgw_gateway_upstream_connections_closed_total", reason="stray_bytes")
    assert closed == state["strays"]  # each one seen, each one counted
    assert len(pairs) == 320 and state["strays"] >= 60
    assert [got for got, want in pairs if got != want] == []
    for conn in up.connections:  # a connection that carried a stray carried nothing after it
        assert not any(getattr(r, "stray", False) for r in conn.requests[:-1])
    no_foreign_bytes(up)


def test_an_early_answer_during_an_upload_never_carries_the_next_request(tmp_path: Path) -> None:
    """Case 2: 401 right after the head while the upload goes on; the upstream keeps reading, as Go does."""
    answered = threading.Event()

    async def script(request: Request) -> None:
        if request.marker != "upload":
            await well_behaved(request)
            return
        request.write(answer(request, 401))
        await request.drain()
        answered.set()
        while await request.reader.read(65536):
            pass

    with hostile(script, tmp_path) as (gw, up):
        uploader = socket.create_connection(("127.0.0.1", gw.port), timeout=20)
        uploader.sendall(
            f"POST {DOCS}/upload HTTP/1.1\r\nHost: gw\r\nX-API-Key: {ALPHA['key']}\r\nX-Marker: upload\r\n"
            "Content-Length: 100000000\r\n\r\n".encode()
            + b"a" * 65536
        )
        assert answered.wait(20)
        reply = b""
        while not reply.endswith(theirs(ALPHA, "upload")):  # relayed while the caller still owes its body
            reply += uploader.recv(65536)
        assert reply.startswith(b"HTTP/1.1 401 ")
        beta = Caller(gw, BETA)
        assert beta.request("GET", DOCS + "/x", "beta-next")[2] == theirs(BETA, "beta-next")
        uploader.close()
        beta.close()
        exposition = gw.metrics()
        assert metric_value(exposition, "zgw_gateway_upstream_connections_closed_total", reason="early_answer") == 1
    markers = seen_markers(up)
    assert [(ALPHA["client_id"], "upload")] in markers
    assert [(BETA["client_id"], "beta-next")] in markers
    no_foreign_bytes(up)
    upload_conn = next(c for c in up.connections if c.requests[0].marker == "upload")
    assert BETA["client_id"].encode() not in bytes(upload_conn.received)


def test_an_upstream_that_stops_reading_the_upload_gets_a_504_and_frees_the_slot(tmp_path: Path) -> None:
    """Case 4: no answer and no reading: the write timeout ends it; in-flight returns to 0."""

    async def script(request: Request) -> None:
        await asyncio.Event().wait()

    with hostile(script, tmp_path, timeouts={"write": 0.5, "read": 60}) as (gw, _up):
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=20)
        s.sendall(
            f"PUT {DOCS}/stuck HTTP/1.1\r\nHost: gw\r\nX-API-Key: {ALPHA['key']}\r\nX-Marker: stuck\r\n"
            "Content-Length: 4000000000\r\n\r\n".encode()
        )
        s.setblocking(False)
        reply = b""
        chunk = b"x" * 65536
        sending = True
        while b"\r\n\r\n" not in reply:  # keep uploading until the gateway answers
            try:
                if sending:
                    s.send(chunk)
            except BlockingIOError:
                pass
            except OSError:
                # The gateway answered and closed with the upload unread: the peer resets, and the answer
                # that arrived before the reset is still there to read.
                sending = False
                s.settimeout(20)
            with contextlib.suppress(BlockingIOError):
                got = s.recv(65536)
                reply += got
                if not got and not sending:
                    break
        s.close()
        assert reply.startswith(b"HTTP/1.1 504 ")
        assert b'"upstream-timeout"' in reply or b"upstream-timeout" in reply
        exposition = gw.metrics()
        assert metric_value(exposition, "zgw_gateway_in_flight_requests", component="documenten") == 0
        assert metric_value(exposition, "zgw_gateway_upstream_failures_total", reason="timeout") == 1


def test_an_endless_response_head_is_a_502_in_bounded_memory(tmp_path: Path) -> None:
    """Case 5: 64 MB of headers."""

    async def script(request: Request) -> None:
        request.write(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Flood: " + b"a" * 1000 + b"\r\n"
        with contextlib.suppress(ConnectionError):
            for _ in range(64_000):
                request.write(line)
                await request.drain()

    with hostile(script, tmp_path) as (gw, _up):
        assert gw.proc is not None
        before = rss(gw.proc.pid)
        caller = Caller(gw, ALPHA)
        status, _, body = caller.request("GET", DOCS + "/flood", "flood")
        assert status == 502
        assert json.loads(body)["code"] == "upstream-bad-response"
        assert rss(gw.proc.pid) - before < 32 * 1024 * 1024
        assert caller.request("GET", DOCS + "/flood", "again")[0] == 502  # and the gateway goes on
        caller.close()
        assert metric_value(gw.metrics(), "zgw_gateway_upstream_failures_total", reason="bad_response") == 2


def test_trailers_never_become_headers(tmp_path: Path) -> None:
    """Case 6: a Set-Cookie trailer in an answer that arrives whole in one segment."""

    async def script(request: Request) -> None:
        request.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nSet-Cookie: session=evil\r\nX-Injected: yes\r\n\r\n"
        )

    with hostile(script, tmp_path) as (gw, _up):
        caller = Caller(gw, ALPHA)
        for marker in ("one", "two"):
            status, headers, body = caller.request("GET", DOCS + "/t", marker)
            assert (status, body) == (200, b"hello")
            names = {name.lower() for name, _ in headers}
            assert b"set-cookie" not in names and b"x-injected" not in names
        caller.close()


def test_every_connection_header_is_honoured_both_ways(tmp_path: Path) -> None:
    """Case 7: two Connection headers from the caller and two from the upstream."""

    async def script(request: Request) -> None:
        await request.body()
        request.write(
            answer(
                request,
                extra=b"Connection: x-one\r\nConnection: x-two\r\nX-One: 1\r\nX-Two: 2\r\nX-Three: 3\r\n",
            )
        )

    with hostile(script, tmp_path) as (gw, up):
        caller = Caller(gw, ALPHA)
        status, headers, _ = caller.request(
            "GET",
            DOCS + "/c",
            "conn",
            headers=[("Connection", "x-a"), ("Connection", "x-b"), ("X-A", "1"), ("X-B", "2"), ("X-C", "3")],
        )
        caller.close()
    assert status == 200
    names = {name.lower() for name, _ in headers}
    assert b"x-three" in names and not {b"x-one", b"x-two"} & names
    seen = {name for name, _ in up.connections[0].requests[0].headers}
    assert "x-c" in seen and not {"x-a", "x-b", "connection"} & seen


@pytest.mark.parametrize("encoding", ["gzip", "identity, gzip", "br"])
def test_a_compressed_json_request_body_is_never_rewritten(tmp_path: Path, encoding: str) -> None:
    """Case 8: a rewriting component passes a compressed body byte for byte."""

    async def script(request: Request) -> None:
        await well_behaved(request)

    with hostile(script, tmp_path) as (gw, up):
        public = f"{gw.url}{JSON}/zaken/1"
        # Stored blocks (level 0): the URL stands in the compressed bytes as it is, so a rewrite would hit it.
        body = gzip.compress(json.dumps({"zaak": public}).encode(), compresslevel=0)
        assert public.encode() in body
        caller = Caller(gw, ALPHA)
        status, _, _ = caller.request(
            "POST",
            JSON + "/zaken",
            "gz",
            body,
            headers=[("Content-Type", "application/json"), ("Content-Encoding", encoding)],
        )
        plain = json.dumps({"zaak": public}).encode()
        assert caller.request("POST", JSON + "/zaken", "plain", plain, [("Content-Type", "application/json")])[0] == 200
        caller.close()
    assert status == 200
    requests = {r.marker: r for conn in up.connections for r in conn.requests}
    assert requests["gz"].body_read == body
    assert requests["plain"].body_read == json.dumps({"zaak": f"{up.url}{JSON}/zaken/1"}).encode()


@pytest.mark.parametrize(
    "body",
    [b"zz\r\nhello\r\n0\r\n\r\n", b"\r\n", b"5\r\nhelloXX"],
    ids=["bad-chunk-size", "empty-size-line", "no-crlf-after-data"],
)
def test_a_body_broken_from_its_start_is_a_502_never_a_500(tmp_path: Path, body: bytes) -> None:
    """Case 9."""

    async def script(request: Request) -> None:
        request.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        await request.drain()
        request.close()

    with hostile(script, tmp_path) as (gw, _up):
        caller = Caller(gw, ALPHA)
        status, headers, reply = caller.request("GET", DOCS + "/broken", "broken")
        caller.close()
    assert status == 502
    assert (b"content-type", b"application/problem+json") in [(k.lower(), v) for k, v in headers]
    assert json.loads(reply)["code"] in ("upstream-bad-response", "upstream-reset")


@pytest.mark.parametrize("status", [204, 304])
def test_a_body_on_a_204_or_304_is_never_relayed_and_never_read_as_the_next_answer(tmp_path: Path, status: int) -> None:
    async def script(request: Request) -> None:
        await request.body()
        if request.marker.startswith("empty"):
            stray = answer(request, body=b'{"stray": true}')
            request.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(stray), stray))
        else:
            request.write(answer(request))

    with hostile(script, tmp_path) as (gw, up):
        alpha, beta = Caller(gw, ALPHA), Caller(gw, BETA)
        assert alpha.request("GET", DOCS + "/e", "empty")[::2] == (status, b"")
        assert beta.request("GET", DOCS + "/e", "beta")[2] == theirs(BETA, "beta")
        assert alpha.request("GET", DOCS + "/e", "alpha")[2] == theirs(ALPHA, "alpha")
        assert alpha.extra_bytes() == b"" and beta.extra_bytes() == b""
        alpha.close()
        beta.close()
    no_foreign_bytes(up)


def test_a_head_answer_with_body_bytes_is_cut_at_its_head(tmp_path: Path) -> None:
    async def script(request: Request) -> None:
        if request.method == "HEAD":
            request.write(answer(request) + answer(request, body=b'{"stray": true}'))
        else:
            await well_behaved(request)

    with hostile(script, tmp_path) as (gw, up):
        alpha, beta = Caller(gw, ALPHA), Caller(gw, BETA)
        status, _headers, body = alpha.request("HEAD", DOCS + "/h", "head")
        assert (status, body) == (200, b"")
        assert beta.request("GET", DOCS + "/h", "beta")[2] == theirs(BETA, "beta")
        alpha.close()
        beta.close()
    no_foreign_bytes(up)


def test_the_caller_gets_exactly_the_declared_length_and_nothing_after_it(tmp_path: Path) -> None:
    """Case 3 seen from the caller's side: its next request on the same connection gets its own answer."""

    async def script(request: Request) -> None:
        await request.body()
        extra = b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"stray": true}' if request.marker == "one" else b""
        request.write(answer(request) + extra)

    with hostile(script, tmp_path) as (gw, up):
        caller = Caller(gw, ALPHA)
        assert caller.request("GET", DOCS + "/s", "one")[2] == theirs(ALPHA, "one")
        assert caller.extra_bytes() == b""
        assert caller.request("GET", DOCS + "/s", "two")[2] == theirs(ALPHA, "two")
        caller.close()
    assert seen_markers(up) == [[(ALPHA["client_id"], "one")], [(ALPHA["client_id"], "two")]]


def test_too_many_response_fields_are_a_502(tmp_path: Path) -> None:
    async def script(request: Request) -> None:
        request.write(b"HTTP/1.1 200 OK\r\n" + b"X-Many: y\r\n" * 30 + b"Content-Length: 2\r\n\r\nok")

    with hostile(script, tmp_path, max_response_headers=20) as (gw, _up):
        caller = Caller(gw, ALPHA)
        status, _, body = caller.request("GET", DOCS + "/m", "many")
        caller.close()
    assert status == 502 and json.loads(body)["code"] == "upstream-bad-response"


def test_in_flight_and_the_pool_settle_after_every_case(tmp_path: Path) -> None:
    """Whatever the upstream did, nothing stays counted in flight and no pool slot stays taken: with one
    connection allowed, every case after a broken one still gets through, each broken connection is
    closed and counted, and the well-behaved answers share one connection."""
    count = [0]

    async def script(request: Request) -> None:
        count[0] += 1
        kind = count[0] % 4
        if kind == 0:
            request.close()
        elif kind == 1:
            request.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
            await request.drain()
            request.close()
        elif kind == 2:
            request.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        else:
            await well_behaved(request)

    statuses = []
    with hostile(script, tmp_path, max_connections=1, timeouts={"pool": 2}) as (gw, up):
        for i in range(12):
            caller = Caller(gw, ALPHA)
            try:
                statuses.append(caller.request("GET", DOCS + "/mixed", f"m{i}")[0])
            except (h11.RemoteProtocolError, ConnectionError, OSError):
                statuses.append(0)  # the answer was cut mid-body: the caller's connection aborted
            caller.close()
        exposition = gw.metrics()
    # kinds 1, 2, 3, 0 in turn: a cut body, a bad chunk size (502), a good answer, a reset (502)
    assert statuses == [0, 502, 200, 502] * 3
    assert metric_value(exposition, "zgw_gateway_in_flight_requests", component="documenten") == 0
    closed = "zgw_gateway_upstream_connections_closed_total"
    assert metric_value(exposition, closed, component="documenten", reason="failed") == 9
    assert metric_value(exposition, closed, component="documenten") == 9
    # Each good answer's connection went back to the pool and carried the next (reset) request.
    assert [len(conn.requests) for conn in up.connections] == [1, 1, 2] * 3
