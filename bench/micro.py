"""The smaller measurements behind docs/performance.md's "Choices, measured": server, client, the gateway's own work,
and the metric series and the token cache on its request path, against the libraries they replaced.

    uv run --group bench python bench/micro.py [--duration 5] [--rounds 3] [--only server|floor|client|app|ab] [--rps N]

- server: a hello-world ASGI app (1.1 KB JSON) under granian and under uvicorn + httptools, each on CPU 1,
  wrk -t1 -c50 on CPU 0;
- floor: what a server adds before the gateway does anything: p50/p99 at 500 req/s (bench/loadgen.py, as
  in bench/run's latency phase) of the upstream stub directly, then of a hello-world app and of a bare proxy
  (the gateway's own `gateway.http1.pool.Pool`, no checks, no token, no metrics, no log) and of the gateway
  itself (the bench's config, access log on), each under granian as the gateway embeds it (ASGI, HTTP/1,
  uvloop, SCHED_BATCH) and under uvicorn + httptools, on CPU 1; then each one's req/s under wrk -t1 -c50;
  in interleaved rounds (`--rounds`), medians reported;
- client: CPU microseconds per sequential 1 KB JSON exchange with bench/upstream.py, aiohttp's
  ClientSession versus the gateway's own `gateway.http1.pool.Pool` (time.process_time of this process);
- app: CPU microseconds per request of the gateway's own work - the whole ASGI application on the bench's
  config, access log and metrics on, with its pools answering from memory (no sockets, no server);
- ab: the per-request metric work (exactly the calls a proxied GET makes: gateway/app.py `token`,
  `forward`, runtime.flight, gateway/exchange.py `finish`) on the gateway's own series (metrics.py), on
  prometheus_client's cached children (what it used before issue 23) and on plain Python floats, the
  cheapest possible lower bound; and a token cache hit: the gateway's TokenCache, cachetools' TTLCache
  (used before issue 23), a plain dict. Each as microseconds per request and as a share of the gateway's CPU time per
  request on one core (1 / the gateway's req/s in bench/results/latest.json, or `--rps`).

app and ab run in a child process with the image's environment (bench/procs.py IMAGE_ENV), pinned to CPU 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from procs import IMAGE_ENV, Processes, free_port, gateway_conf, select_build, wait_port  # noqa: E402

from gateway.http1.pool import Pool, Response  # noqa: E402

BODY = b'{"count":0,"next":null,"previous":null,"results":[' + b" " * 1050 + b"]}"
EXCHANGES = 4000
CALLS = 200_000


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def wrk_rps(port: int, duration: int, path: str = "/", api_key: str = "") -> float:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            "wrk",
            "-t1",
            "-c50",
            f"-d{duration}s",
            "-H",
            f"X-API-Key: {api_key}",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))


def servers(procs: Processes, duration: int) -> dict[str, float]:
    py = sys.executable
    argv = {
        "granian": [py, "-m", "granian", "--interface", "asgi", "--workers", "1", "--loop", "uvloop", "--no-ws",
                    "--working-dir", str(BENCH)],
        "uvicorn": [py, "-m", "uvicorn", "--http", "httptools", "--loop", "uvloop", "--no-access-log",
                    "--app-dir", str(BENCH)],
    }  # fmt: skip
    out = {}
    for name, base in argv.items():
        port = free_port()
        proc = procs.start(name, [*base, "--port", str(port), "micro:hello"], 1)
        wait_port(port, proc)
        wrk_rps(port, 1)  # warm-up
        out[name] = wrk_rps(port, duration)
        procs.stop(proc)
    return out


def floor_app(kind: str, upstream_port: int) -> Any:
    """The ASGI app of one `floor` server: hello, a bare proxy of GET to the upstream stub, or the gateway
    itself on the bench's config (access log to stdout, metrics on)."""
    if kind == "hello":
        return hello
    if kind == "gateway":
        from gateway.config.loading import load
        from gateway.dataplane import logs
        from gateway.dataplane.app import create_app

        with tempfile.TemporaryDirectory() as tmp:
            config = load(gateway_conf(Path(tmp), 8000, 9100, upstream_port))  # ports unused: served below
        logs.setup(config.log.level, config.log.format)
        return create_app(config)
    from gateway.config.sections import Component
    from gateway.http1.pool import Pool

    pool = Pool("127.0.0.1", upstream_port, None, Component(prefix="/zaken", upstream="http://127.0.0.1/zaken"))
    auth = b"authorization: Bearer x\r\naccept-crs: EPSG:4326\r\n\r\n"

    async def proxy(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        head = b"GET " + scope["raw_path"] + b" HTTP/1.1\r\nhost: 127.0.0.1\r\n" + auth
        resp = await pool.request("GET", head, None, False, time.monotonic() + 10)
        try:
            body = await resp.read(1 << 20)
        finally:
            resp.release()
        headers = [(k.lower(), v) for k, v in resp.headers if k.lower() not in (b"connection", b"keep-alive")]
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return proxy


def floor_server(server: str, kind: str, port: int, upstream_port: int) -> None:
    """Runs one `floor` server until killed (a child process, pinned by the parent)."""
    import uvloop

    app = floor_app(kind, upstream_port)
    if server == "uvicorn":
        import uvicorn

        lifespan = "on" if kind == "gateway" else "off"
        config = uvicorn.Config(app, port=port, loop="none", http="httptools", lifespan=lifespan, access_log=False)
        uvloop.run(uvicorn.Server(config).serve())
        return
    from granian.constants import HTTPModes, Interfaces, TaskImpl
    from granian.http import HTTP1Settings
    from granian.server.embed import Server

    from gateway.dataplane.server import _READ_BUFFER, _batch_scheduling

    _batch_scheduling()
    interface = Interfaces.ASGI if kind == "gateway" else Interfaces.ASGINL  # the gateway has a lifespan
    embedded = Server(
        app, port=port, interface=interface, http=HTTPModes.http1, websockets=False,
        task_impl=TaskImpl.asyncio, http1_settings=HTTP1Settings(max_buffer_size=_READ_BUFFER), log_access=False,
    )  # fmt: skip
    uvloop.run(embedded.serve())


def floor(procs: Processes, rate: int, duration: int, rounds: int) -> dict[str, dict[str, float]]:
    """Medians over `rounds` interleaved rounds: per server and app the added p50 (its p50 minus the mean of
    direct's before and after it in that round: the machine drifts), its p99, and its req/s."""
    up = free_port()
    upstream = procs.start("upstream", [sys.executable, str(BENCH / "upstream.py"), "--port", str(up)], 0)
    wait_port(up, upstream)
    from load import PAGE, loadgen  # the latency phase's own load generator call

    def measure(port: int, headers: list[str]) -> dict[str, float]:
        extra = ["--rate", str(rate), "--duration", str(duration)]
        result = loadgen("rate", f"http://127.0.0.1:{port}{PAGE}", headers, extra, timeout=duration + 60)
        return {"p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"]}

    def direct() -> float:
        return measure(up, ["-H", "Authorization: Bearer x", "-H", "Accept-Crs: EPSG:4326"])["p50_ms"]

    key = {"BENCH_API_KEY": "floor-key-" + "k" * 16, "BENCH_SECRET": "floor-secret-" + "s" * 32}
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(rounds):
        before, found = direct(), {}
        for kind in ("hello", "proxy", "gateway"):
            for server in ("granian", "uvicorn"):
                port = free_port()
                argv = [sys.executable, str(Path(__file__)), "--child", f"floor:{server}:{kind}:{port}:{up}"]
                proc = procs.start(f"{server}-{kind}", argv, 1, {**IMAGE_ENV, **key})
                wait_port(port, proc)
                found[f"{server} {kind}"] = measure(port, ["-H", f"X-API-Key: {key['BENCH_API_KEY']}"])
                found[f"{server} {kind}"]["rps"] = wrk_rps(port, duration, PAGE, key["BENCH_API_KEY"])
                procs.stop(proc)
        base = (before + direct()) / 2
        for name, f in found.items():
            runs.setdefault(name, []).append({"added_ms": f["p50_ms"] - base, "p99_ms": f["p99_ms"], "rps": f["rps"]})
    return {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}


async def client_cpu(port: int) -> dict[str, float]:
    import aiohttp

    from gateway.config.loading import Component
    from gateway.http1.pool import Pool

    head = (
        b"GET /zaken/api/v1/zaken HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer x\r\nAccept-Crs: EPSG:4326\r\n\r\n"
    )
    pool = Pool("127.0.0.1", port, None, Component(prefix="/zaken", upstream=f"http://127.0.0.1:{port}/zaken"))

    async def own() -> None:
        resp = await pool.request("GET", head, None, False, time.monotonic() + 30)
        while await resp.read_chunk():
            pass
        resp.release()

    session = aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("Accept", "Accept-Encoding"))
    url = f"http://127.0.0.1:{port}/zaken/api/v1/zaken"
    auth = [("Authorization", "Bearer x"), ("Accept-Crs", "EPSG:4326")]

    async def aio() -> None:
        resp = await session.get(url, headers=auth, allow_redirects=False)
        await resp.read()
        resp.release()

    out = {}
    for name, one in (("aiohttp", aio), ("gateway.http1.pool", own)):
        for _ in range(300):
            await one()
        started = time.process_time()
        for _ in range(EXCHANGES):
            await one()
        out[name] = (time.process_time() - started) / EXCHANGES * 1e6
    await session.close()
    pool.close()
    return out


class _Answer(Response):
    """An upstream answer from memory: the bench upstream's page, whole in the first piece. A Response (the
    compiled build checks the type), its fields set here rather than read from a connection."""

    def __init__(self) -> None:  # no super().__init__: there is no connection
        self.status = 200
        self.headers = [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(BODY))]
        self.content_length = len(BODY)
        self.done = False

    def at_eof(self) -> bool:
        return self.done

    async def read_chunk(self) -> bytes:
        chunk, self.done = (b"" if self.done else BODY), True
        return chunk

    async def read(self, limit: int) -> bytes:
        return await self.read_chunk()

    def release(self) -> None:
        pass


class _MemoryPool(Pool):
    """A Pool (the compiled build checks the type) that never connects: every request gets the page. Its
    turns are the real pool's, on the component's settings."""

    async def request(self, method: str, head: bytes, body: object, chunked: bool, deadline: float) -> Response:
        return _Answer()

    def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def in_memory_gateway() -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """The gateway's whole ASGI application on the bench's config, started, its pools answering from memory
    (no sockets, no server), access lines written to /dev/null; yields one proxied GET (API key, token cache
    hit after the first, header hygiene, metrics, access line)."""
    from gateway.config.loading import load
    from gateway.dataplane import logs
    from gateway.dataplane.app import create_app

    os.environ.update(BENCH_API_KEY="micro-key", BENCH_SECRET="micro-secret-" + "x" * 32)
    with tempfile.TemporaryDirectory() as tmp:
        config = load(gateway_conf(Path(tmp), 8000, 9100, 8001))
    logs.setup("info", "json")
    logs._access.stream = open(os.devnull, "w")  # type: ignore[union-attr]  # noqa: SIM115
    app = create_app(config)
    await app.lifecycle.startup()
    for route in app.runtime.snapshot.routes.routes:
        route.pool = _MemoryPool("127.0.0.1", 1, None, route.component)
    scope = {
        "type": "http", "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/zaken/api/v1/zaken",
        "raw_path": b"/zaken/api/v1/zaken", "query_string": b"", "client": ("127.0.0.1", 40000),
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"x-api-key", b"micro-key")],
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    answered = [0]

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answered[0] = message["status"]

    async def get() -> None:
        answered[0] = 0
        await app(dict(scope), receive, send)
        if answered[0] != 200:  # a figure of an error path would pass for the gateway's
            raise RuntimeError(f"the in-memory gateway answered {answered[0]}, not 200")

    try:
        yield get
    finally:
        await app.lifecycle.shutdown()


async def app_cpu(requests: int) -> float:
    """CPU us per GET of the gateway's own work (best of 5 runs)."""
    runs = []
    async with in_memory_gateway() as get:
        for _ in range(6):
            started = time.process_time()
            for _ in range(requests):
                await get()
            runs.append((time.process_time() - started) / requests * 1e6)
    return min(runs[1:])  # the first run warms up


class _Float:
    """A counter, gauge or histogram child as bare floats: what the metric work costs at the very least."""

    __slots__ = ("bounds", "counts", "sum", "value")

    def __init__(self, bounds: tuple[float, ...] = ()) -> None:
        self.value = 0.0
        self.sum = 0.0
        self.bounds = bounds
        self.counts = [0.0] * (len(bounds) + 1)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def observe(self, amount: float) -> None:
        self.sum += amount
        self.counts[bisect_left(self.bounds, amount)] += 1.0


def _metric_work(m: Any) -> None:
    """The metric calls of one proxied GET, in the order the gateway makes them."""
    m.token_cache("hit").inc()
    m.overhead("zaken").observe(0.00004)
    gauge = m.in_flight("zaken")
    gauge.inc()
    m.upstream_duration("zaken").observe(0.0003)
    gauge.dec()
    m.requests("bench", "zaken", "GET", "200", "zaken", "upstream").inc()
    m.request_duration("bench", "zaken", "GET", "zaken").observe(0.0004)
    m.response_bytes("bench", "zaken").inc(1133)


class _FloatMetrics:
    """gateway.dataplane.metrics.Metrics' request-path collectors, each child a `_Float` cached per label values."""

    def __init__(self) -> None:
        from gateway.dataplane.metrics import LATENCY_BUCKETS, OVERHEAD_BUCKETS

        def family(bounds: tuple[float, ...] = ()) -> Any:
            children: dict[tuple[str, ...], _Float] = {}

            def child(*values: str) -> _Float:
                found = children.get(values)
                if found is None:
                    found = children[values] = _Float(bounds)
                return found

            return child

        self.token_cache, self.in_flight, self.requests, self.response_bytes = (family() for _ in range(4))
        self.overhead = family(OVERHEAD_BUCKETS)
        self.upstream_duration, self.request_duration = family(LATENCY_BUCKETS), family(LATENCY_BUCKETS)


class _PromMetrics:
    """The same families on prometheus_client's own children, each cached per label values: what the gateway
    used before issue 23."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from gateway.dataplane.metrics import LATENCY_BUCKETS, OVERHEAD_BUCKETS

        r = CollectorRegistry()

        def family(metric: Any) -> Any:
            children: dict[tuple[str, ...], Any] = {}

            def child(*values: str) -> Any:
                found = children.get(values)
                if found is None:
                    found = children[values] = metric.labels(*values)
                return found

            return child

        self.token_cache = family(Counter("t", "", ["result"], registry=r))
        self.in_flight = family(Gauge("f", "", ["component"], registry=r))
        self.requests = family(
            Counter("r", "", ["caller", "component", "method", "code", "resource", "source"], registry=r)
        )
        self.response_bytes = family(Counter("b", "", ["caller", "component"], registry=r))
        self.overhead = family(Histogram("o", "", ["component"], buckets=OVERHEAD_BUCKETS, registry=r))
        self.upstream_duration = family(Histogram("u", "", ["component"], buckets=LATENCY_BUCKETS, registry=r))
        labels = ["caller", "component", "method", "resource"]
        self.request_duration = family(Histogram("d", "", labels, buckets=LATENCY_BUCKETS, registry=r))


def library_ab() -> dict[str, float]:
    """us per request: the metric work on the gateway's series, on prometheus_client's children and on bare
    floats; a token cache hit in the gateway's TokenCache, in cachetools' TTLCache and in a dict."""
    from cachetools import TTLCache
    from prometheus_client import CollectorRegistry

    from gateway.config.loading import TokenConfig
    from gateway.dataplane.metrics import Metrics
    from gateway.dataplane.tokens import TokenCache

    own, prom, floats = Metrics(CollectorRegistry()), _PromMetrics(), _FloatMetrics()
    key, secret = ("bench-client", 1, "", ""), "secret-" + "x" * 32
    tokens = TokenCache(TokenConfig(), time.time)
    minted, _ = tokens.get(key, secret)
    ttl: TTLCache[Any, Any] = TTLCache(10000, 270, time.time)
    ttl[key] = minted
    plain = {key: minted}

    def per_call(fn: Any) -> float:
        return min(timeit.repeat(fn, number=CALLS, repeat=5)) / CALLS * 1e6

    return {
        "metrics: the gateway's (metrics.py)": per_call(lambda: _metric_work(own)),
        "metrics: prometheus_client children": per_call(lambda: _metric_work(prom)),
        "metrics: plain floats": per_call(lambda: _metric_work(floats)),
        "token hit: the gateway's (tokens.py)": per_call(lambda: tokens.get(key, secret)),
        "token hit: cachetools TTLCache": per_call(lambda: ttl.get(key)),
        "token hit: dict": per_call(lambda: plain.get(key)),
    }


def child(section: str) -> None:
    """Runs in the image's environment (see `in_image_env`): prints one JSON object."""
    if section == "app":
        import uvloop

        print(json.dumps({"gateway own work": uvloop.run(app_cpu(20_000))}))
    else:
        print(json.dumps(library_ab()))


def in_image_env(section: str) -> dict[str, float]:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", **IMAGE_ENV}
    argv = ["taskset", "-c", "1", sys.executable, str(Path(__file__)), "--child", section]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=True, cwd=BENCH.parent)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def gateway_rps(given: float | None) -> float | None:
    if given:
        return given
    try:
        latest = json.loads((BENCH / "results" / "latest.json").read_text())
        return float(latest["summary"]["rps"]["gateway"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def report_ab(figures: dict[str, float], rps: float | None) -> None:
    budget = 1e6 / rps if rps else None  # the gateway's CPU us per request on one core
    print("per request, us" + (f" (share of {budget:.0f} us = 1 / {rps:,.0f} req/s)" if budget else ""))
    for name, us in figures.items():
        print(f"  {name:38} {us:6.2f}" + (f"  {us / budget:6.1%}" if budget else ""))
    if budget:
        for what, a, b in (
            ("metrics", "metrics: the gateway's (metrics.py)", "metrics: plain floats"),
            ("token cache", "token hit: the gateway's (tokens.py)", "token hit: dict"),
        ):
            print(f"  {what}: above the floor, {(figures[a] - figures[b]) / budget:.1%} of the gateway's CPU time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of --only floor")
    parser.add_argument("--only", choices=["server", "floor", "client", "app", "ab"], action="append")
    parser.add_argument("--rps", type=float, help="the gateway's req/s on one core (default: bench/results)")
    parser.add_argument("--interpreted", action="store_true", help="the source tree, not the compiled build")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child and args.child.startswith("floor:"):
        _, server, kind, port, upstream_port = args.child.split(":")
        floor_server(server, kind, int(port), int(upstream_port))
        return 0
    if args.child:
        child(args.child)
        return 0
    sections = args.only or ["server", "floor", "client", "app", "ab"]
    print(f"build: {select_build(args.interpreted)} (the gateway's processes; hello and proxy are Python)")
    with tempfile.TemporaryDirectory(prefix="zgw-micro-") as tmp, Processes(Path(tmp)) as procs:
        if "server" in sections:
            print("server (hello-world ASGI, req/s):")
            for name, rps in servers(procs, args.duration).items():
                print(f"  {name:10} {rps:10.0f}")
        if "floor" in sections:
            print(
                f"floor (medians of {args.rounds} rounds; p50 at 500 req/s minus direct's, p99; req/s, wrk -t1 -c50):"
            )
            figures = floor(procs, 500, max(args.duration, 5), args.rounds)
            for name, f in figures.items():
                print(f"  {name:16} added {f['added_ms']:5.2f} ms  p99 {f['p99_ms']:5.2f} ms  {f['rps']:7.0f} req/s")
            share = figures["granian gateway"]["rps"] / figures["granian proxy"]["rps"]
            verdict = "PASS" if share >= 0.5 else "FAIL"
            print(f"  the gateway at {share:.2f} x its bare proxy's req/s (issue 23's target >= 0.5: {verdict})")
        if "client" in sections:
            port = free_port()
            upstream = procs.start("upstream", [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)], 0)
            wait_port(port, upstream)
            print(f"client (CPU us per sequential exchange, {EXCHANGES} exchanges):")
            for name, us in asyncio.run(client_cpu(port)).items():
                print(f"  {name:18} {us:7.1f}")
    if "app" in sections:
        print(f"app (CPU us per GET, no I/O): {in_image_env('app')['gateway own work']:.1f}")
    if "ab" in sections:
        report_ab(in_image_env("ab"), gateway_rps(args.rps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
