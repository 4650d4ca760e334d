"""The reuse rules of one upstream connection (gateway.http1.connection), bytes fed in without sockets.

As h11's and uvicorn's protocol tests do: a fake transport records what is written and how much waits in
its buffer, the protocol gets bytes through `data_received` and the end through `connection_lost`. One test
per rule of connection.py's docstring, each showing the state the connection is in and why (or whether) it
may carry another request. The clock is the fake loop's, so the write deadline is tested without waiting.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from gateway.config.sections import Component
from gateway.http1.connection import Connection, State

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.buffered = 0  # bytes the "kernel" has not taken yet
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket: nothing for poll or SIOCOUTQ to ask

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class FakeLoop:
    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now


def connection() -> tuple[Connection, FakeTransport, list[str]]:
    strays: list[str] = []
    settings = Component(prefix="/z", upstream="http://127.0.0.1:1")
    conn = Connection(cast(asyncio.AbstractEventLoop, FakeLoop()), settings, lambda: strays.append("idle"))
    transport = FakeTransport()
    conn.connection_made(cast(asyncio.Transport, transport))
    return conn, transport, strays


def state(conn: Connection) -> State:
    return conn.state  # a call, so that mypy does not narrow the state across the transitions


def exchange(conn: Connection, answer: bytes = ANSWER, method: str = "GET") -> None:
    """A request sent whole, then `answer` fed in."""
    conn.begin(method)
    conn.write(b"%s / HTTP/1.1\r\nHost: up\r\n\r\n" % method.encode())
    conn.sent()
    conn.data_received(answer)


def test_the_states_of_a_clean_exchange_and_reuse() -> None:
    conn, _, _ = connection()
    assert state(conn) is State.IDLE
    conn.begin("POST")
    assert state(conn) is State.SENDING
    conn.write(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
    conn.sent()
    assert state(conn) is State.AWAITING
    conn.data_received(ANSWER[:-2])
    assert state(conn) is State.BODY
    conn.data_received(ANSWER[-2:])
    assert state(conn) is State.DONE and conn.take_body() == b"ok"
    assert conn.end(5.0) == "" and state(conn) is State.IDLE and conn.idle_since == 5.0
    exchange(conn)  # and it carries the next one
    assert conn.take_body() == b"ok" and conn.unusable() == ""


def test_rule_1_an_answer_before_the_whole_request_was_sent_closes_the_connection() -> None:
    conn, transport, _ = connection()
    conn.begin("POST")
    conn.write(b"POST / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n")
    conn.data_received(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
    assert state(conn) is State.DONE and conn.status == 401  # relayed
    conn.sent()  # the body went after all: the upstream may still read it as a request
    assert conn.unusable() == "early_answer"
    assert conn.end(0.0) == "early_answer" and transport.closed


def test_rule_1_an_answer_while_request_bytes_still_wait_in_the_buffer_is_early() -> None:
    conn, _, _ = connection()
    conn.begin("POST")
    conn.write(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
    conn.sent()
    cast(FakeTransport, conn.transport).buffered = 2  # the body has not left the gateway yet
    conn.data_received(ANSWER)
    assert conn.unusable() == "early_answer"


@pytest.mark.parametrize(
    "partial",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
    ],
    ids=["content-length", "chunked"],
)
def test_rule_2_an_answer_read_short_of_its_framing_closes_the_connection(partial: bytes) -> None:
    conn, transport, _ = connection()
    exchange(conn, partial)
    assert state(conn) is State.BODY
    assert conn.end(0.0) == "unfinished" and transport.closed


def test_rule_2_an_answer_delimited_by_the_connections_end_is_never_followed_by_another() -> None:
    conn, _, _ = connection()
    exchange(conn, b"HTTP/1.1 200 OK\r\n\r\nall of it")
    assert state(conn) is State.BODY
    conn.connection_lost(None)
    assert state(conn) is State.DONE and conn.take_body() == b"all of it" and not conn.failure
    assert conn.unusable() == "unfinished"  # the connection is gone with it


def test_rule_2_body_bytes_not_yet_taken_by_the_caller_keep_the_connection_from_reuse() -> None:
    conn, _, _ = connection()
    exchange(conn)
    assert conn.unusable() == "unfinished"  # "ok" still waits for the caller
    conn.take_body()
    assert conn.unusable() == ""


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_rule_3_an_answer_that_does_not_keep_alive_closes_the_connection(answer: bytes) -> None:
    conn, transport, _ = connection()
    exchange(conn, answer)
    assert state(conn) is State.DONE and conn.take_body() == b"ok"
    assert conn.end(0.0) == "not_keep_alive" and transport.closed


@pytest.mark.parametrize("beyond", [b"\r\n", b"H", ANSWER], ids=["crlf", "one-byte", "second-answer"])
@pytest.mark.parametrize("same_segment", [True, False], ids=["same-segment", "later-segment"])
def test_rule_4_a_byte_beyond_the_answer_closes_the_connection(beyond: bytes, same_segment: bool) -> None:
    conn, transport, strays = connection()
    if same_segment:
        exchange(conn, ANSWER + beyond)
    else:
        exchange(conn)
        conn.data_received(beyond)
    assert conn.take_body() == b"ok"  # the answer itself, and nothing of what followed
    assert conn.headers == [(b"Content-Length", b"2")]
    assert conn.end(0.0) == "stray_bytes" and transport.closed
    assert strays == []  # not idle yet: counted once, by the pool's release


def test_rule_5_a_byte_on_an_idle_connection_closes_it_and_is_reported_once() -> None:
    conn, transport, strays = connection()
    exchange(conn)
    conn.take_body()
    assert conn.end(0.0) == ""
    conn.data_received(b"H")
    conn.data_received(b"TTP/1.1 200 OK\r\n")
    assert transport.closed and conn.closed and conn.unusable() == "stray_bytes"
    assert strays == ["idle"]


def test_the_write_deadline_is_not_moved_by_a_trickle() -> None:
    """connection.py's write rule: the oldest byte not yet taken sets the deadline; a few bytes taken from
    it do not move it, the whole of it taken does (the fake transport stands for what the upstream took)."""
    conn, transport, _ = connection()
    loop = cast(FakeLoop, conn.loop)
    conn.begin("PUT")
    conn.write(b"PUT / HTTP/1.1\r\nContent-Length: 300000\r\n\r\n")
    assert conn.stalled_since() is None  # all taken
    first = loop.now
    conn.write(b"x" * 100_000)
    transport.buffered = 100_000
    assert conn.stalled_since() == first
    for _ in range(50):  # the upstream takes 100 bytes a second
        loop.now += 1
        transport.buffered -= 100
        conn.write(b"y" * 1000)
        transport.buffered += 1000
        assert conn.stalled_since() == first
    transport.buffered = 50 * 1000 - 10  # the first piece went whole; the second has not
    assert conn.stalled_since() == first + 1
    transport.buffered = 0
    assert conn.stalled_since() is None
