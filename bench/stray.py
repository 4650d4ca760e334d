"""Stray answers (issue 20): how many callers get an answer that is not theirs, via nginx and via the gateway.

An upstream stub follows 2 % of its answers, 20 ms later, with an extra answer nobody asked for. HTTP/1.1
has no request ids: a proxy that has sent the next request on that connection by then takes the stray
for that request's answer, and the real answer after it for the next one. No HTTP/1.1 client can tell;
the gateway stops reusing the connections of an upstream it has caught sending stray bytes
(gateway/http1/pool.py, `_distrust`), nginx keeps reusing them.

    uv run python bench/stray.py                 # 20 callers, 20 s per proxy, nginx then the gateway
    uv run python bench/stray.py --fresh         # each request on a fresh caller connection
    uv run python bench/stray.py --seconds 5 --callers 10

Each caller keeps one keep-alive connection to the proxy (a new one when the proxy closes it), or with
`--fresh` opens one per request (`Connection: close`), and asks for a unique marker; the stub answers
with the marker it read, so a caller knows a wrong answer. One stub
process listens on two ports, one per proxy, and counts the connections each proxy opened. Loopback only;
every process is stopped by its process group when the run ends (bench/procs.py). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

import httptools

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import (
    GATEWAY_ENTRY,
    Processes,
    free_port,
    gateway_conf,
    http_get,
    image_env,
    nginx_conf,
    select_build,
    stop_on_signals,
    wait_http,
    wait_port,
)

PATH = b"/zaken/api/v1/zaken?m="
MARKER = re.compile(rb'"marker": "([^"]*)"')
LOAD_CPU, PROXY_CPU = 0, 1


# The stub upstream (`stray.py stub`): its own process, so it does not share the load's event loop.


class Stub(asyncio.Protocol):
    def __init__(self, counts: dict[str, int], name: str, rng: random.Random, rate: float, delay: float) -> None:
        self.counts, self.name, self.rng, self.rate, self.delay = counts, name, rng, rate, delay
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.counts[self.name] += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            target = head.split(b" ", 2)[1]
            marker = target.partition(b"?m=")[2]
            assert self.transport is not None
            self.transport.write(answer(marker))
            if self.rng.random() < self.rate:
                asyncio.get_running_loop().call_later(self.delay, self._stray)

    def _stray(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer(b"stray"))


def answer(marker: bytes) -> bytes:
    body = b'{"marker": "%s"}' % marker
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def stub(ports: dict[str, int], rate: float, delay: float, seed: int) -> None:
    counts = dict.fromkeys(ports, 0)
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    for name, port in ports.items():
        await loop.create_server(lambda n=name: Stub(counts, n, rng, rate, delay), "127.0.0.1", port)  # type: ignore[misc]
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    await stopped.wait()
    print(json.dumps(counts), flush=True)  # the connections each proxy opened, for the harness


# The callers.


class Answer:
    def __init__(self) -> None:
        self.status = 0
        self.body = b""
        self.done = False
        self.parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.done = True


async def caller(port: int, headers: bytes, name: str, until: float, tally: dict[str, int], fresh: bool) -> None:
    n = 0
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while time.monotonic() < until:
        if writer is None or reader is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n += 1
        marker = f"{name}-{n}".encode()
        writer.write(b"GET %s%s HTTP/1.1\r\nHost: bench\r\n%s\r\n" % (PATH, marker, headers))
        got = Answer()
        try:
            while not got.done:
                data = await asyncio.wait_for(reader.read(65536), 10)
                if not data:
                    raise ConnectionError
                got.parser.feed_data(data)
        except (OSError, TimeoutError, httptools.HttpParserError):
            tally["errors"] += 1
            writer.close()
            reader = writer = None
            continue
        found = MARKER.search(got.body)
        if got.status != 200 or found is None:
            tally["errors"] += 1
        elif found.group(1) == marker:
            tally["right"] += 1
        else:
            tally["wrong"] += 1
        if fresh or not got.parser.should_keep_alive():
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def load(port: int, headers: bytes, callers: int, seconds: float, fresh: bool) -> dict[str, float]:
    tally = {"right": 0, "wrong": 0, "errors": 0}
    started = time.monotonic()
    until = started + seconds
    await asyncio.gather(*(caller(port, headers, f"c{i}", until, tally, fresh) for i in range(callers)))
    elapsed = time.monotonic() - started
    return {**tally, "req_per_s": round((tally["right"] + tally["wrong"]) / elapsed)}


def connections(log: Path) -> dict[str, int]:
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def closed_by_reason(metrics: bytes) -> dict[str, float]:
    found = re.findall(
        rb'zgw_gateway_upstream_connections_closed_total\{component="zaken",reason="(\w+)"\} (\S+)', metrics
    )
    return {reason.decode(): float(value) for reason, value in found if float(value)}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    ports = {"nginx": free_port(), "gateway": free_port()}
    result: dict[str, object] = {
        "callers": args.callers, "fresh": args.fresh, "seconds": args.seconds, "stray_rate": args.rate,
    }  # fmt: skip
    with Processes(workdir) as procs:
        argv = [sys.executable, __file__, "stub", "--ports", f"{ports['nginx']},{ports['gateway']}"]
        up = procs.start("stub", [*argv, "--rate", str(args.rate), "--delay", str(args.delay)], LOAD_CPU)
        wait_port(ports["nginx"], up)
        nginx_port = free_port()
        conf = nginx_conf(workdir, nginx_port, ports["nginx"])
        # Both proxies on the same core, each measured alone (issue 23: equal placement).
        nginx = procs.start("nginx", ["nginx", "-p", str(workdir / "nginx"), "-c", str(conf)], PROXY_CPU)
        wait_port(nginx_port, nginx)
        gw_port, admin = free_port(), free_port()
        key = secrets.token_urlsafe(24)
        env = image_env(
            gateway_conf(workdir, gw_port, admin, ports["gateway"]),
            admin,
            {"BENCH_API_KEY": key, "BENCH_SECRET": secrets.token_urlsafe(32)},
        )
        gateway = procs.start("gateway", [str(GATEWAY_ENTRY), "serve"], PROXY_CPU, env, inherit_env=False)
        wait_http(admin, "/-/ready", gateway, timeout=60)
        for name, port, headers in (
            ("nginx", nginx_port, b""),
            ("gateway", gw_port, b"X-API-Key: %s\r\n" % key.encode()),
        ):
            headers += b"Connection: close\r\n" if args.fresh else b""
            result[name] = asyncio.run(load(port, headers, args.callers, args.seconds, args.fresh))
        procs.stop(up)  # it prints what it counted as it stops
        opened = connections(workdir / "stub.log")
        for name in ports:
            result[name]["upstream_connections"] = opened.get(name, 0)  # type: ignore[index]
        result["gateway_closed"] = closed_by_reason(http_get(admin, "/metrics")[1])
        log = (workdir / "gateway.log").read_text()
        result["gateway_distrust_log_lines"] = log.count("upstream sent bytes nobody asked for")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "stub"])
    parser.add_argument("--callers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--fresh", action="store_true", help="each request on a fresh caller connection")
    parser.add_argument("--rate", type=float, default=0.02, help="share of answers followed by a stray")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds from an answer to its stray")
    parser.add_argument("--ports", default="", help="(stub) the two ports to listen on")
    parser.add_argument("--interpreted", action="store_true", help="the gateway from source, not compiled")
    args = parser.parse_args()
    if args.mode == "stub":
        nginx, gateway = (int(p) for p in args.ports.split(","))
        asyncio.run(stub({"nginx": nginx, "gateway": gateway}, args.rate, args.delay, seed=20))
        return
    stop_on_signals()
    build = select_build(args.interpreted)  # the image's build unless --interpreted, as bench/run
    with tempfile.TemporaryDirectory(prefix="zgw-stray-") as tmp:
        print(json.dumps({"build": build, **run(args, Path(tmp))}))


if __name__ == "__main__":
    main()
