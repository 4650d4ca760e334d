"""How fast can a ZGW-like upstream answer, so that the proxy in front of it is what gets measured?

A raw asyncio + httptools HTTP/1.1 server (uvloop when available), faster than any ASGI server:

- ``GET /zaken/api/v1/...`` answers a ~1 KB ZGW page of zaken with absolute URLs of this host;
- ``POST /zaken/api/v1/...`` answers 201 with a small JSON body and ``Location``;
- ``GET /documenten/api/v1/enkelvoudiginformatieobjecten/<uuid>/download?size=N`` streams N bytes
  of octet-stream in 64 KiB chunks, honouring transport flow control instead of buffering;
- ``PUT``/``POST /documenten/api/v1/...`` consumes a request body of any size, counting it, and
  answers ``{"received": <bytes>}``;
- ``GET /-/stats`` answers ``{"opened": <n>}``: the connections accepted since start, leaving out those that
  asked for the stats. The bench reads it before and after a run: the connections a proxy opened to its
  upstream per request it served (issue 23: a proxy should reuse them).

The token is not verified: only the presence of ``Authorization: Bearer `` (401 without), and on the
Zaken API the presence of ``Accept-Crs`` (412 without, as Open Zaak does), which proves that a proxy
injected both.

    python bench/upstream.py --port 0    # prints "listening <port>" once bound
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections import deque
from typing import NamedTuple
from urllib.parse import parse_qs

import httptools

CHUNK = b"\0" * 65536
ZAAK_UUIDS = ("4f6a1b43-6d63-4c7e-a1a3-3c5e7e6b1a01", "a2a9bd5e-2f53-4c76-9b7d-0f1f6a0d3c02")


class Request(NamedTuple):
    method: bytes
    url: bytes
    bearer: bool
    accept_crs: bool
    received: int
    keep_alive: bool


def response(status: bytes, body: bytes = b"", headers: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n" + headers + b"\r\n" + body
    )


def zaken_page(base: str) -> bytes:
    """A ZGW paginated list of two zaken, ~1 KB, every reference an absolute URL of this host."""
    zaken = [
        {
            "url": f"{base}/zaken/api/v1/zaken/{uuid}",
            "uuid": uuid,
            "identificatie": f"ZAAK-2024-000000{i}",
            "bronorganisatie": "002220647",
            "omschrijving": "Aanvraag omgevingsvergunning",
            "zaaktype": f"{base}/catalogi/api/v1/zaaktypen/0119dd4e-7be9-477e-bccf-75023b1453c1",
            "registratiedatum": "2024-03-01",
            "verantwoordelijkeOrganisatie": "002220647",
            "startdatum": "2024-03-01",
            "status": f"{base}/zaken/api/v1/statussen/{uuid}",
        }
        for i, uuid in enumerate(ZAAK_UUIDS, 1)
    ]
    page = {"count": 2, "next": None, "previous": None, "results": zaken}
    return json.dumps(page, separators=(",", ":")).encode()


class Responses:
    """The canned answers, built once after the port is known."""

    def __init__(self, base: str) -> None:
        zaak = f"{base}/zaken/api/v1/zaken/{ZAAK_UUIDS[0]}".encode()
        self.page = response(b"200 OK", zaken_page(base), b"Content-Crs: EPSG:4326\r\n")
        self.created = response(
            b"201 Created",
            b'{"url":"' + zaak + b'"}',
            b"Location: " + zaak + b"\r\nContent-Crs: EPSG:4326\r\n",
        )
        self.unauthorized = response(b"401 Unauthorized", b'{"code":"not_authenticated"}')
        self.no_crs = response(b"412 Precondition Failed", b'{"code":"missing-accept-crs-header"}')
        self.not_found = response(b"404 Not Found", b'{"code":"not_found"}')
        self.empty = response(b"200 OK", b'{"count":0,"next":null,"previous":null,"results":[]}')


class Connection(asyncio.Protocol):
    """One client connection: parses requests with httptools, answers them in order."""

    accepted = 0  # connections since start
    stats_readers = 0  # of which asked for /-/stats

    def __init__(self, answers: Responses) -> None:
        self.answers = answers
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.pending: deque[Request] = deque()
        self.streaming = False
        self.stats_reader = False
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.bearer = False
        self.accept_crs = False
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        Connection.accepted += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(response(b"400 Bad Request"))
                self.transport.close()

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"authorization":
            self.bearer = value.startswith(b"Bearer ")
        elif name == b"accept-crs":
            self.accept_crs = True
        elif name == b"expect" and value.lower() == b"100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.received += len(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        request = Request(
            method, self.url, self.bearer, self.accept_crs, self.received, self.parser.should_keep_alive()
        )
        if self.streaming:
            self.pending.append(request)
        else:
            self.answer(request)

    def answer(self, request: Request) -> None:
        transport = self.transport
        if transport is None:
            return
        path, _, query = request.url.partition(b"?")
        download = None
        if path == b"/-/stats":
            if not self.stats_reader:
                self.stats_reader = True
                Connection.stats_readers += 1
            data = response(b"200 OK", b'{"opened":%d}' % (Connection.accepted - Connection.stats_readers))
        elif not request.bearer:
            data = self.answers.unauthorized
        elif path.startswith(b"/zaken/api/v1/"):
            if request.method == b"GET":
                data = self.answers.page if request.accept_crs else self.answers.no_crs
            else:
                data = self.answers.created
        elif path.startswith(b"/documenten/api/v1/"):
            if request.method in (b"PUT", b"POST"):
                data = response(b"200 OK", b'{"received":%d}' % request.received)
            elif request.method == b"GET" and path.endswith(b"/download"):
                download = int(parse_qs(query.decode()).get("size", ["1048576"])[0])
                data = None
            else:
                data = self.answers.empty
        else:
            data = self.answers.not_found
        if download is not None:
            self.streaming = True
            asyncio.get_running_loop().create_task(self.stream(download, request.keep_alive))
            return
        transport.write(data or b"")
        if not request.keep_alive:
            transport.close()

    async def stream(self, size: int, keep_alive: bool) -> None:
        """Write ``size`` bytes in 64 KiB chunks, waiting whenever the transport's buffer is full."""
        transport = self.transport
        if transport is None:
            return
        transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: " + str(size).encode() + b"\r\n\r\n"
        )
        view = memoryview(CHUNK)
        left = size
        while left > 0 and self.transport is not None:
            n = min(left, len(CHUNK))
            transport.write(view[:n])
            left -= n
            if not self.writable.is_set():
                await self.writable.wait()
        self.streaming = False
        if not keep_alive and self.transport is not None:
            transport.close()
            return
        while self.pending and not self.streaming:
            self.answer(self.pending.popleft())


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    holder: list[Responses] = []
    server = await loop.create_server(lambda: Connection(holder[0]), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    holder.append(Responses(f"http://{host}:{bound}"))
    print(f"listening {bound}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port))


if __name__ == "__main__":
    main()
