"""One upstream connection: where an answer ends, and whether the connection may carry another request.

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
request went out looks like that request's answer (no request ids); the real answer behind it is then
caught by rule 4 or 5, and the pool stops reusing that upstream's connections for a while (pool.py,
`_distrust`). docs/security.md ("Hostile upstream") has the measurements.

The rules are a state machine (`State`, as in h11 and httpcore), moved only by this class: IDLE (any byte
is a stray, rule 5) -> SENDING (`begin`; a final head now is early, rule 1) -> AWAITING (`sent`) -> BODY
-> DONE (ended by its framing, rule 2; any byte now lies beyond it, rule 4) -> IDLE (`end`) or closed.
The strongest reason against reuse seen so far is the `verdict`; `unusable()` derives from both.

Bounds: the answer's head (every 1xx head included) in bytes and in fields, and its trailers likewise
(`max_response_head_bytes`, `max_response_headers`); trailers are read, checked and dropped, never merged
into the headers; reading the answer waits at most `timeouts.read` between two pieces. Writing the body is
bounded by `timeouts.write` as a deadline per byte, not an inactivity timer: each
request byte must be acknowledged by the upstream's TCP within `timeouts.write` of being written
(`stalled_since`), i.e. have left both the transport's buffer and the kernel's send queue (SIOCOUTQ; on
loopback the kernel's send buffer grows to megabytes, which say nothing of the upstream). So an upstream
that stopped reading is caught within `timeouts.write` of its window closing, whatever the kernels buffer
or trickle (issue 20: the old timer restarted whenever the transport drained a little: a 504 after 16 s
with `write: 4`); a slow reader passes while each byte gets through in time. On TLS only the transport's
buffer counts (the kernel holds ciphertext).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import fcntl
import select
import sys
import termios
from collections.abc import Callable

import httptools

from gateway.config.sections import Component

# Pause reading from the upstream while this much response body waits for the caller (back-pressure).
HIGH_WATER = 256 * 1024
# What one chunk's size line and CRLFs may take (RFC 9112 section 7.1; extensions included).
CHUNK_LINE = 256
# Writes within this many seconds share one time stamp (the first's): the stamps stay few on a fast upload.
STAMP_GRAIN = 0.01
_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None)  # = SIOCOUTQ for a TCP socket on Linux
_RDHUP: int = getattr(select, "POLLRDHUP", 0)  # the peer closed its side (Linux only)
# The reasons a connection is not reused, strongest first: the one reported is the strongest that holds.
VERDICTS = ("stray_bytes", "early_answer", "failed", "not_keep_alive")


class State(enum.Enum):
    IDLE = "idle"  # no exchange: nothing may arrive (rule 5)
    SENDING = "sending"  # the request is going up; a final head now is early (rule 1)
    AWAITING = "awaiting"  # the whole request went; the answer's head is awaited
    BODY = "body"  # the answer's head arrived; its body is being read
    DONE = "done"  # the answer ended by its framing (rule 2); any byte now lies beyond it (rule 4)


class _Stop(Exception):
    """Raised inside a parser callback to stop llhttp at the end of the message (or at a violation)."""


class Connection(asyncio.Protocol):
    """One TCP or TLS connection, and the state of the exchange on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: Component, on_idle_stray: Callable[[], None]) -> None:
        self.loop = loop
        self.settings = settings
        self.on_idle_stray = on_idle_stray
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.drained = asyncio.Event()  # set while the transport takes more (flow control), or once closed
        self.drained.set()
        self.idle_since = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.fd = -1  # the plain TCP socket's descriptor, for `quiet`
        self.state = State.IDLE
        self.verdict = ""  # the strongest reason of VERDICTS found so far, kept until the connection closes
        self._reset("GET")

    def _reset(self, method: str) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = method == "HEAD"
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.room = self.settings.max_response_head_bytes
        self.fields_left = self.settings.max_response_headers
        self.interim = False
        self.failure = self.detail = ""  # why the answer cannot be used: bad_response (with `detail`) or reset
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.written = 0  # request bytes handed to the transport
        self.waiting: collections.deque[tuple[int, float]] = collections.deque()  # (end offset, time written)

    # transitions

    def begin(self, method: str) -> None:
        """A new exchange starts on this (idle) connection: IDLE -> SENDING."""
        assert self.state is State.IDLE, self.state
        self._reset(method)
        self.state = State.SENDING

    def sent(self) -> None:
        """The whole request went: SENDING -> AWAITING (an early answer has already moved on)."""
        if self.state is State.SENDING:
            self.state = State.AWAITING

    def end(self, now: float) -> str:
        """The exchange is over: back to IDLE from `now` if reusable (returns ""), else closed (returns why)."""
        reason = self.unusable()
        if reason:
            self.close()
        else:
            self.idle_since = now
        self.state = State.IDLE
        return reason

    def _mark(self, reason: str) -> None:
        if not self.verdict or VERDICTS.index(reason) < VERDICTS.index(self.verdict):
            self.verdict = reason

    @property
    def headers_done(self) -> bool:
        return self.state is State.BODY or self.state is State.DONE

    @property
    def complete(self) -> bool:
        return self.state is State.DONE

    def unusable(self) -> str:
        """Why the connection may not carry another request (a reason of pool.CLOSE_REASONS), or ""."""
        if self.verdict and self.verdict != "not_keep_alive":
            return self.verdict  # rules 4 and 5 (stray_bytes), rule 1 (early_answer), or a failure
        if self.state is not State.DONE or self.chunks or self.closed:
            return "unfinished"  # rules 1 and 2: a side stopped before the end, or the upstream left
        return self.verdict  # rule 3: not_keep_alive, or ""

    def quiet(self) -> bool:
        """Nothing waits to be read (rule 5, for bytes the event loop has not handed over yet). Plain TCP only:
        on TLS, records such as session tickets arrive unasked. poll: select refuses descriptors >= 1024."""
        if self.fd < 0:
            return True
        poller = select.poll()
        poller.register(self.fd, select.POLLIN | select.POLLPRI | _RDHUP)
        events = poller.poll(0)
        if events and events[0][1] & (_RDHUP | select.POLLHUP | select.POLLERR):
            self.close()  # the upstream closed it (keep-alive timeout): not stray bytes
        return not events

    # writing the request

    def write(self, data: bytes) -> None:
        """Hand request bytes to the transport, stamped with the time they were written (`stalled_since`)."""
        transport = self.transport
        assert transport is not None
        transport.write(data)
        self.written += len(data)
        now = self.loop.time()
        waiting = self.waiting
        if waiting and now - waiting[-1][1] < STAMP_GRAIN:
            waiting[-1] = (self.written, waiting[-1][1])  # one stamp per grain: the older time, the stricter
        else:
            waiting.append((self.written, now))
            if len(waiting) == 1:
                self.wake()  # a deadline starts: whoever watches the upload learns it

    def stalled_since(self) -> float | None:
        """When the oldest request byte the upstream has not acknowledged yet was written; None if none waits."""
        transport = self.transport
        if transport is None or not self.waiting:
            return None
        taken = self.written - transport.get_write_buffer_size() - self._unacknowledged()
        while self.waiting and self.waiting[0][0] <= taken:
            self.waiting.popleft()
        return self.waiting[0][1] if self.waiting else None

    def _unacknowledged(self) -> int:
        """Bytes in the kernel's send queue not yet acknowledged by the upstream (SIOCOUTQ; plain TCP only)."""
        if self.fd < 0 or _OUTQ is None:
            return 0
        try:
            return int.from_bytes(fcntl.ioctl(self.fd, _OUTQ, bytes(4)), sys.byteorder, signed=True)
        except OSError:
            return 0

    def take_body(self) -> bytes:
        """The body bytes read so far (b"" if none); reading resumes if it was paused for back-pressure."""
        chunks = self.chunks
        chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_extra_info("sslcontext") is None:
            self.fd = sock.fileno()

    def data_received(self, data: bytes) -> None:
        if self.state is State.IDLE or self.state is State.DONE:
            # Rule 5 (idle) and rule 4 (bytes after the answer, in a later segment).
            first = self.state is State.IDLE and self.verdict != "stray_bytes"
            self._mark("stray_bytes")
            self.close()
            if first:
                self.on_idle_stray()
        else:
            self._parse(memoryview(data))
        self.wake()

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
            if self.state is State.DONE:
                if view:
                    self._mark("stray_bytes")
                return

    def _feed(self, view: memoryview) -> None:
        # Rule 4: llhttp would go on to parse a second message after the first, and it skips CR/LF between
        # messages without a callback. Feeding all but the last byte first tells whether the answer ended
        # before that byte: then at least that byte lies beyond it.
        last = len(view) - 1
        if last > 0:
            self._execute(view[:last])
            if self.state is State.DONE:
                self._mark("stray_bytes")
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
            if self.state is not State.DONE and not self.failure:
                self._fail("bad_response", str(exc))

    def _violation(self, detail: str) -> _Stop:
        self._fail("bad_response", detail)
        return _Stop(detail)

    def _fail(self, reason: str, detail: str = "") -> None:
        if not self.failure:
            self.failure, self.detail = reason, detail
        self._mark("failed")
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.drained.set()  # a writer waiting for room finds the connection gone
        if self.state is State.BODY and not self.failure and self._until_close():
            self.state = State.DONE  # a body without length or chunks ends with the connection (RFC 9112 6.3)
        if self.state is not State.IDLE and self.state is not State.DONE:
            self._fail("reset")
        self.wake()

    def _until_close(self) -> bool:
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"content-length":
                return False
            if lname == b"transfer-encoding" and value.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
                return False
        return True

    def pause_writing(self) -> None:
        self.drained.clear()

    def resume_writing(self) -> None:
        self.drained.set()

    # llhttp callbacks (httptools)

    def on_message_begin(self) -> None:
        if self.state is State.DONE:
            raise _Stop  # rule 4: a second message; the bytes are already marked as stray

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
        transport = self.transport
        if self.state is State.SENDING or (transport is not None and transport.get_write_buffer_size()):
            self._mark("early_answer")  # rule 1
        self.state = State.BODY
        self.status = status
        self.room = self.settings.max_response_head_bytes  # from here on: chunk lines' and trailers' budget
        self.fields_left = self.settings.max_response_headers
        # Asked here: once the message is complete, llhttp has already reset what this depends on.
        if not self.parser.should_keep_alive():
            self._mark("not_keep_alive")  # rule 3
        if self.head_only:
            # llhttp cannot be told the request was HEAD; the answer ends with its head.
            self.state = State.DONE
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
        self.state = State.DONE

    # waiting

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until something happens (bytes, closed, `wake`); TimeoutError after `timeout` seconds of nothing."""
        waiter = self.waiter = self.loop.create_future()
        handle = self.loop.call_later(timeout, _expire, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            if handle is not None:
                handle.cancel()
            self.waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
