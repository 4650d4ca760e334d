"""What latency, burst behaviour and streaming throughput does one HTTP endpoint show?

Each subcommand prints one JSON line and is started by the harness as its own pinned process:

- ``rate``: open-loop fixed-rate GETs (aiohttp). Request *i* is due at ``start + i / rate`` whatever
  happened to earlier requests; latency counts from the due time (or the actual send, if the
  dispatcher sent up to 1 ms early), so a stalled server cannot hide its stall by slowing the
  sender down (coordinated omission). A warm-up second is sent but not counted.
- ``burst``: N concurrent first requests, each on its own new connection.
- ``upload`` / ``download``: one body of N bytes streamed with http.client from a reused 1 MiB
  buffer, never held whole. ``--start-at T`` waits until ``time.monotonic()`` reaches T (the clock is the
  machine's, so concurrent transfers in separate processes start together), and the result carries the
  monotonic ``started`` and ``ended`` times.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import aiohttp

LOOKAHEAD = 0.001  # timers fire with ~1 ms granularity: send what is due within it rather than late


def headers_of(pairs: list[str]) -> dict[str, str]:
    return dict((name.strip(), value.strip()) for name, _, value in (p.partition(":") for p in pairs))


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q / 100 * len(sorted_values)))]


async def fixed_rate(url: str, headers: dict[str, str], rate: float, duration: float, warmup: float) -> dict[str, Any]:
    latencies: list[float] = []
    lags: list[float] = []
    statuses: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=1000)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:

        async def one(due: float, counted: bool) -> None:
            sent = time.perf_counter()
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    status = str(resp.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            end = time.perf_counter()
            if counted:
                statuses[status] += 1
                latencies.append(end - min(due, sent))
                lags.append(max(0.0, sent - due))

        warm_n = int(rate * warmup)
        total = warm_n + int(rate * duration)
        start = time.perf_counter() + 0.01
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while i < total:
            now = time.perf_counter()
            while i < total and start + i / rate <= now + LOOKAHEAD:
                task = asyncio.create_task(one(start + i / rate, i >= warm_n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if i < total:
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter() - LOOKAHEAD))
        if tasks:
            await asyncio.wait(tasks, timeout=15)
    latencies.sort()
    lags.sort()
    return {
        "rate": rate,
        "requests": len(latencies),
        "statuses": dict(statuses),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p90_ms": percentile(latencies, 90) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": (latencies[-1] if latencies else float("nan")) * 1000,
        "mean_ms": (statistics.fmean(latencies) if latencies else float("nan")) * 1000,
        "send_lag_p99_ms": percentile(lags, 99) * 1000,
    }


async def burst(url: str, headers: dict[str, str], n: int) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
        gate = asyncio.Event()

        async def one() -> str:
            await gate.wait()
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    return str(resp.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                return type(exc).__name__

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.sleep(0)
        started = time.perf_counter()
        gate.set()
        results = await asyncio.gather(*tasks)
        seconds = time.perf_counter() - started
    return {"requests": n, "statuses": dict(Counter(results)), "seconds": seconds}


def connect(url: str) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=60), target


def wait_until(start_at: float) -> None:
    while (left := start_at - time.monotonic()) > 0:
        time.sleep(left)


def upload(url: str, headers: dict[str, str], size: int, start_at: float = 0) -> dict[str, Any]:
    chunk = memoryview(bytes(1 << 20))

    def body() -> Any:
        left = size
        while left > 0:
            n = min(left, len(chunk))
            yield chunk[:n]
            left -= n

    conn, target = connect(url)
    wait_until(start_at)
    started = time.monotonic()
    sent_headers = {**headers, "Content-Type": "application/octet-stream", "Content-Length": str(size)}
    conn.request("PUT", target, body=body(), headers=sent_headers)
    resp = conn.getresponse()
    answer = resp.read(65536)
    ended = time.monotonic()
    conn.close()
    try:
        received = json.loads(answer).get("received")
    except ValueError:
        received = None
    return {"status": resp.status, "bytes": size, "received": received, "started": started, "ended": ended,
            "seconds": ended - started}  # fmt: skip


def download(url: str, headers: dict[str, str], size: int, start_at: float = 0) -> dict[str, Any]:
    sep = "&" if "?" in url else "?"
    conn, target = connect(f"{url}{sep}size={size}")
    buf = bytearray(1 << 20)
    wait_until(start_at)
    started = time.monotonic()
    conn.request("GET", target, headers=headers)
    resp = conn.getresponse()
    got = 0
    while n := resp.readinto(buf):
        got += n
    ended = time.monotonic()
    conn.close()
    return {"status": resp.status, "bytes": got, "started": started, "ended": ended, "seconds": ended - started}


def run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["rate", "burst", "upload", "download"])
    parser.add_argument("url")
    parser.add_argument("-H", "--header", action="append", default=[])
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1 << 30)
    parser.add_argument("--start-at", type=float, default=0, help="time.monotonic() to start the transfer at")
    args = parser.parse_args()
    headers = headers_of(args.header)
    result: dict[str, Any]
    if args.mode == "rate":
        result = run(fixed_rate(args.url, headers, args.rate, args.duration, args.warmup))
    elif args.mode == "burst":
        result = run(burst(args.url, headers, args.n))
    elif args.mode == "upload":
        result = upload(args.url, headers, args.size, args.start_at)
    else:
        result = download(args.url, headers, args.size, args.start_at)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
