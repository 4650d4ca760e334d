"""The smaller measurements behind the README's "Choices, measured": server, client, metrics.

    uv run --group bench python bench/micro.py [--duration 5]

- server: a hello-world ASGI app (1.1 KB JSON) under granian and under uvicorn + httptools, each on CPU 1,
  wrk -t1 -c50 on CPU 0;
- client: CPU microseconds per sequential 1 KB JSON exchange with bench/upstream.py, aiohttp's
  ClientSession versus the gateway's own `gateway.upstream.Pool` (time.process_time of this process);
- metrics: microseconds per `inc` / `observe` on a cached child, prometheus_client versus `gateway.metrics`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from procs import Processes, free_port, wait_port  # noqa: E402

BODY = b'{"count":0,"next":null,"previous":null,"results":[' + b" " * 1050 + b"]}"
EXCHANGES = 4000


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def wrk_rps(port: int, duration: int) -> float:
    import subprocess

    out = subprocess.run(
        ["taskset", "-c", "0", "wrk", "-t1", "-c50", f"-d{duration}s", f"http://127.0.0.1:{port}/"],
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
        port_args = ["--port", str(port)]
        proc = procs.start(name, [*base, *port_args, "micro:hello"], 1)
        wait_port(port, proc)
        wrk_rps(port, 1)  # warm-up
        out[name] = wrk_rps(port, duration)
        procs.stop(proc)
    return out


async def client_cpu(port: int) -> dict[str, float]:
    import aiohttp

    from gateway.upstream import Pool, Timeouts

    head = (
        b"GET /zaken/api/v1/zaken HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer x\r\nAccept-Crs: EPSG:4326\r\n\r\n"
    )
    pool = Pool("127.0.0.1", port, None, 10, Timeouts(5, 30, 5))

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
    for name, one in (("aiohttp", aio), ("gateway.upstream", own)):
        for _ in range(300):
            await one()
        started = time.process_time()
        for _ in range(EXCHANGES):
            await one()
        out[name] = (time.process_time() - started) / EXCHANGES * 1e6
    await session.close()
    pool.close()
    return out


def metric_calls() -> dict[str, float]:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from gateway.metrics import Metrics

    reference = CollectorRegistry()
    counter = Counter("ref_requests", "x", ["a"], registry=reference).labels("a")
    histogram = Histogram("ref_seconds", "x", ["a"], registry=reference).labels("a")
    metrics = Metrics(CollectorRegistry())
    fast_counter = metrics.requests.labels("c", "zaken", "GET", "200", "zaken", "upstream")
    fast_histogram = metrics.overhead.labels("zaken")
    n = 200_000
    return {
        "prometheus_client inc": timeit.timeit(counter.inc, number=n) / n * 1e6,
        "prometheus_client observe": timeit.timeit(lambda: histogram.observe(0.004), number=n) / n * 1e6,
        "gateway.metrics inc": timeit.timeit(fast_counter.inc, number=n) / n * 1e6,
        "gateway.metrics observe": timeit.timeit(lambda: fast_histogram.observe(0.004), number=n) / n * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zgw-micro-") as tmp, Processes(Path(tmp)) as procs:
        print("server (hello-world ASGI, req/s):")
        for name, rps in servers(procs, args.duration).items():
            print(f"  {name:10} {rps:10.0f}")
        port = free_port()
        upstream = procs.start("upstream", [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)], 0)
        wait_port(port, upstream)
        print(f"client (CPU us per sequential exchange, {EXCHANGES} exchanges):")
        for name, us in asyncio.run(client_cpu(port)).items():
            print(f"  {name:18} {us:7.1f}")
    print("metrics (us per call on a cached child):")
    for name, us in metric_calls().items():
        print(f"  {name:28} {us:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
