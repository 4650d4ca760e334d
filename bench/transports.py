"""Which upstream HTTP client, on which ASGI server, lets a Python streaming proxy go fastest?

Three minimal Starlette streaming proxies, identical but for the client that talks upstream:

- ``httpx``: httpx.AsyncClient on its default transport (httpcore);
- ``httpx-aiohttp``: the same httpx API on the ``httpx_aiohttp.AiohttpTransport``;
- ``aiohttp``: aiohttp.ClientSession used directly;
- ``gateway``: the gateway's own client, ``gateway.http1.pool.Pool`` (keep-alive pool, llhttp parser).

Each is served by granian (asgi, 1 worker) and by uvicorn (uvloop + httptools), pinned to CPU 1, in
front of bench/upstream.py on CPU 0, and measured with ``wrk -t1 -c50`` (also on CPU 0):

    uv run --group bench python bench/transports.py [--duration 10] [--rounds 1]

``serve`` is the entry point of one proxy process, started by the experiment itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

CLIENTS = ("httpx", "httpx-aiohttp", "aiohttp", "gateway")
SERVERS = ("granian", "uvicorn")
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"}
)
POOL = 100


def forwardable(headers: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]


def body_of(request: Request) -> AsyncIterator[bytes] | None:
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    return request.stream() if has_body else None


def httpx_proxy(upstream: str, transport: httpx.AsyncBaseTransport | None) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
        async with httpx.AsyncClient(transport=transport, trust_env=False, limits=limits, timeout=30) as client:
            app.state.client = client
            yield

    async def proxy(request: Request) -> StreamingResponse:
        client: httpx.AsyncClient = request.app.state.client
        url = upstream + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        req = client.build_request(request.method, url, headers=forwardable(request.headers), content=body_of(request))
        resp = await client.send(req, stream=True)
        return StreamingResponse(
            resp.aiter_raw(),
            resp.status_code,
            dict(forwardable(resp.headers)),
            background=BackgroundTask(resp.aclose),
        )

    return Starlette(routes=[Route("/{path:path}", proxy, methods=["GET", "POST", "PUT"])], lifespan=lifespan)


def aiohttp_proxy(upstream: str) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=POOL)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False) as session:
            app.state.session = session
            yield

    async def proxy(request: Request) -> StreamingResponse:
        session: aiohttp.ClientSession = request.app.state.session
        url = upstream + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        resp = await session.request(
            request.method,
            url,
            headers=forwardable(request.headers),
            data=body_of(request),
            allow_redirects=False,
        )
        return StreamingResponse(
            resp.content.iter_any(),
            resp.status,
            dict(forwardable(resp.headers)),
            background=BackgroundTask(resp.release),
        )

    return Starlette(routes=[Route("/{path:path}", proxy, methods=["GET", "POST", "PUT"])], lifespan=lifespan)


def pool_proxy(upstream: str) -> Starlette:
    import time
    from urllib.parse import urlsplit

    from gateway.config.sections import Component, TimeoutsConfig
    from gateway.http1.pool import Pool, Response

    parts = urlsplit(upstream)
    settings = Component(
        prefix="/zaken", upstream=upstream, max_connections=POOL, timeouts=TimeoutsConfig(connect=5, read=30, pool=5)
    )
    pool = Pool(parts.hostname or "", parts.port or 80, None, settings)

    async def relay(resp: Response) -> AsyncIterator[bytes]:
        while chunk := await resp.read_chunk():
            yield chunk

    async def proxy(request: Request) -> StreamingResponse:
        target = parts.path + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        lines = [f"{request.method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{k}: {v}" for k, v in forwardable(request.headers)]
        body = body_of(request)
        if body is not None:
            lines.append("Transfer-Encoding: chunked")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        resp = await pool.request(request.method, head, body, body is not None, time.monotonic() + 30)
        headers = {k.decode(): v.decode() for k, v in resp.headers if k.decode().lower() not in HOP_BY_HOP}
        return StreamingResponse(relay(resp), resp.status, headers, background=BackgroundTask(resp.release))

    return Starlette(routes=[Route("/{path:path}", proxy, methods=["GET", "POST", "PUT"])])


def create_app() -> Starlette:
    upstream, client = os.environ["BENCH_UPSTREAM"], os.environ["BENCH_CLIENT"]
    if client == "httpx":
        return httpx_proxy(upstream, None)
    if client == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
        return httpx_proxy(upstream, AiohttpTransport(trust_env=False, limits=limits))
    if client == "gateway":
        return pool_proxy(upstream)
    return aiohttp_proxy(upstream)


def serve(server: str, port: int) -> None:
    if server == "granian":
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces, Loops

        Granian(
            "transports:create_app",
            factory=True,
            address="127.0.0.1",
            port=port,
            interface=Interfaces.ASGI,
            workers=1,
            loop=Loops.uvloop,
            http=HTTPModes.http1,
            log_access=False,
            working_dir=Path(__file__).parent,
        ).serve()
    else:
        import uvicorn

        uvicorn.run(create_app(), host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning")


def experiment(duration: int, rounds: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from harness import PAGE, Target, wrk
    from procs import BENCH, STATIC_TOKEN, Processes, background_cpu, free_port, stop_on_signals, wait_http, wait_port

    headers = {"Authorization": f"Bearer {STATIC_TOKEN}", "Accept-Crs": "EPSG:4326"}
    stop_on_signals()
    rps: dict[tuple[str, str], list[float]] = {}
    busy_before = background_cpu()
    with tempfile.TemporaryDirectory(prefix="zgw-transports-") as tmp, Processes(Path(tmp)) as procs:
        up_port = free_port()
        up = procs.start("upstream", [sys.executable, str(BENCH / "upstream.py"), "--port", str(up_port)], 0)
        wait_port(up_port, up)
        direct = wrk(Target("direct", up_port, headers), PAGE, duration)["rps"]
        for _ in range(rounds):
            for server in SERVERS:
                for client in CLIENTS:
                    port = free_port()
                    argv = [sys.executable, __file__, "serve", "--server", server, "--port", str(port)]
                    env = {"BENCH_CLIENT": client, "BENCH_UPSTREAM": f"http://127.0.0.1:{up_port}"}
                    proc = procs.start(f"{server}-{client}", argv, 1, env)
                    wait_http(port, PAGE, proc, headers=headers)
                    target = Target(f"{server}/{client}", port, headers)
                    wrk(target, PAGE, 2)
                    run = wrk(target, PAGE, duration)
                    rps.setdefault((server, client), []).append(run["rps"])
                    print(
                        f"  {server:8} {client:14} {run['rps']:8.0f} req/s  errors {run['errors']}",
                        flush=True,
                    )
                    procs.stop(proc)
    print(f"\nCPUs busy before/after: {busy_before:.0f}% / {background_cpu():.0f}% (should be ~0)")
    print(f"upstream stub alone: {direct:.0f} req/s\n")
    print("| client        | " + " | ".join(f"{s:>8}" for s in SERVERS) + " |")
    print("|---------------|" + "|".join("---------:" for _ in SERVERS) + "|")
    for client in CLIENTS:
        cells = " | ".join(f"{statistics.median(rps[(s, client)]):8.0f}" for s in SERVERS)
        print(f"| {client:13} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("serve")
    one.add_argument("--server", choices=SERVERS, required=True)
    one.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.server, args.port)
    else:
        experiment(args.duration, args.rounds)


if __name__ == "__main__":
    main()
