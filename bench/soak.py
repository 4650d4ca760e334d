"""Does the gateway stay flat under hours-like abuse? A bounded soak: mixed traffic with faults for a few
minutes against a real gateway process, sampling its memory, file descriptors and sockets over time.

    uv run python bench/soak.py --minutes 3 [--concurrency 20] [--json bench/results/soak.json]

Traffic: good reads and writes through the sandbox upstream, calls to an upstream that resets connections,
to one that answers too slowly (504), to a refused port (502 and the circuit breaker), unknown callers,
path tricks, oversized headers, and a rolling set of slowloris connections. Exit 1 when memory grows in the
second half by more than 10 % or descriptors are left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from yarl import URL

ROOT = Path(__file__).resolve().parent.parent
CLIENT_ID = "soak-client-Xy12AbCdEf"
SECRET = "soak-secret-for-the-sandbox-only-1b2c3d4e5f"
API_KEY = "soak-api-key-7f6e5d4c3b2a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def misbehaving_upstream(mode: str) -> tuple[asyncio.Server, int]:
    """'reset': RST after reading the head; 'slow': answers after 2 s (past the 0.5 s read timeout)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            if mode == "slow":
                await asyncio.sleep(2)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
            else:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def sample(pid: int) -> dict[str, float]:
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    fds = os.listdir(f"/proc/{pid}/fd")
    sockets = 0
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                sockets += 1
    return {"rss_mb": round(rss_kb / 1024, 1), "fds": len(fds), "sockets": sockets}


async def traffic(base: str, stop: float, concurrency: int, counts: dict[str, int]) -> None:
    key = {"X-API-Key": API_KEY}
    kinds = [
        ("read", 60, "GET", "/zaken/api/v1/zaken", key),
        ("catalogus", 10, "GET", "/catalogi/api/v1/catalogussen", key),
        ("write", 5, "POST", "/zaken/api/v1/zaken", key),  # an invalid zaak: the sandbox's 400
        ("reset", 5, "GET", "/reset/x", key),
        ("slow", 5, "GET", "/slow/x", key),
        ("refused", 5, "GET", "/refused/x", key),
        ("unknown_caller", 5, "GET", "/zaken/api/v1/zaken", {"X-API-Key": "nope"}),
        ("path_trick", 3, "GET", "/zaken/api/v1/%2e%2e/catalogi/api/v1/x", key),
        ("big_headers", 2, "GET", "/zaken/api/v1/zaken", {**key, "X-Pad": "a" * 20000}),
    ]
    weights = [k[1] for k in kinds]
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            while time.monotonic() < stop:
                name, _, method, path, headers = random.choices(kinds, weights)[0]
                body = b'{"zaaktype": "x"}' if method == "POST" else None
                try:
                    async with session.request(
                        method,
                        URL(base + path, encoded=True),  # as sent: no client-side normalisation of tricks
                        headers=headers,
                        data=body,
                        skip_auto_headers=["User-Agent"],
                    ) as r:
                        await r.read()
                        label = f"{name}:{r.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    label = f"{name}:{type(exc).__name__}"
                counts[label] = counts.get(label, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def slowloris(port: int, stop: float, counts: dict[str, int]) -> None:
    """Keep about 50 connections that never finish their headers; the gateway must keep cutting them."""
    while time.monotonic() < stop:
        writers = []
        for _ in range(50):
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(b"GET /zaken/api/v1/zaken HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                writers.append(w)
        counts["slowloris_opened"] = counts.get("slowloris_opened", 0) + len(writers)
        await asyncio.sleep(3)
        for w in writers:
            w.close()


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="zgw-soak-"))
    reset_srv, reset_port = await misbehaving_upstream("reset")
    slow_srv, slow_port = await misbehaving_upstream("slow")
    sandbox_port, port, admin_port = free_port(), free_port(), free_port()
    env = {**os.environ, "SANDBOX_CLIENTS": f"{CLIENT_ID}={SECRET}", "SOAK_KEY": API_KEY, "SOAK_SECRET": SECRET}
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "zgw_sandbox", "--host", "127.0.0.1", "--port", str(sandbox_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    up = f"http://127.0.0.1:{sandbox_port}"
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "public_url": f"http://127.0.0.1:{port}",
        "limits": {"header_read_timeout": 2, "body_read_timeout": 5},
        "circuit_breaker": {"failure_threshold": 5, "open_seconds": 2},
        "log": {"access": False},
        "components": {
            "zaken": {"prefix": "/zaken/api/v1", "upstream": f"{up}/zaken/api/v1", "crs": "EPSG:4326"},
            "catalogi": {"prefix": "/catalogi/api/v1", "upstream": f"{up}/catalogi/api/v1"},
            "reset": {"prefix": "/reset", "upstream": f"http://127.0.0.1:{reset_port}"},
            "slow": {"prefix": "/slow", "upstream": f"http://127.0.0.1:{slow_port}", "timeouts": {"read": 0.5}},
            "refused": {"prefix": "/refused", "upstream": f"http://127.0.0.1:{free_port()}"},
        },
        "callers": [
            {
                "name": "soak",
                "api_keys": [{"env": "SOAK_KEY"}],
                "client_id": CLIENT_ID,
                "secret": {"env": "SOAK_SECRET"},
                "components": ["zaken", "catalogi", "reset", "slow", "refused"],
            }
        ],
    }
    config_path = workdir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_file = open(workdir / "gateway.log", "wb")  # noqa: SIM115 - closed in finally
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_path)],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    samples: list[dict[str, float]] = []
    counts: dict[str, int] = {}
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(150):
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"http://127.0.0.1:{admin_port}/-/ready") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)
        started = time.monotonic()
        stop = started + args.minutes * 60
        samples.append({"t": 0.0, **sample(gateway.pid)})

        async def sampler() -> None:
            while time.monotonic() < stop:
                await asyncio.sleep(args.interval)
                samples.append({"t": round(time.monotonic() - started, 1), **sample(gateway.pid)})

        await asyncio.gather(
            traffic(f"http://127.0.0.1:{port}", stop, args.concurrency, counts),
            slowloris(port, stop, counts),
            sampler(),
        )
        await asyncio.sleep(args.settle)  # keep-alive and slowloris connections time out
        samples.append({"t": round(time.monotonic() - started, 1), "settled": 1, **sample(gateway.pid)})
    finally:
        gateway.send_signal(signal.SIGTERM)
        exit_code = gateway.wait(30)
        sandbox.terminate()
        sandbox.wait(10)
        log_file.close()
        reset_srv.close()
        slow_srv.close()
    loaded = [s for s in samples if not s.get("settled")]
    half = loaded[len(loaded) // 2]
    last = loaded[-1]
    settled = samples[-1]
    growth = (last["rss_mb"] - half["rss_mb"]) / half["rss_mb"]
    report = {
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "requests": sum(v for k, v in counts.items() if not k.startswith("slowloris")),
        "outcomes": dict(sorted(counts.items())),
        "rss_mb": {"start": samples[0]["rss_mb"], "half": half["rss_mb"], "end": last["rss_mb"]},
        "rss_growth_second_half": round(growth, 4),
        "fds": {"start": samples[0]["fds"], "max": max(s["fds"] for s in samples), "settled": settled["fds"]},
        "sockets": {"start": samples[0]["sockets"], "settled": settled["sockets"]},
        "exit_code": exit_code,
        "samples": samples,
    }
    # After --settle (longer than the upstream pools' 30 s keep-alive) only listeners and the like remain.
    report["ok"] = growth < 0.10 and settled["fds"] <= samples[0]["fds"] + 5 and exit_code == 0
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--settle", type=float, default=35.0, help="seconds of quiet before the last sample")
    p.add_argument("--json", type=Path, help="write the report here")
    args = p.parse_args()
    report = asyncio.run(soak(args))
    for s in report["samples"]:
        print(f"t={s['t']:>7}s  rss={s['rss_mb']:>7} MB  fds={s['fds']:>5}  sockets={s['sockets']:>5}")
    summary = {k: v for k, v in report.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
