"""How the gateway runs as a process: the proxy and admin listeners in one event loop, and its signals.

Both listeners are granian servers embedded in the gateway's own asyncio loop. Granian (hyper) rather than
uvicorn because it bounds what a slow or hostile client can hold: a header-read timeout cuts slowloris
connections (uvicorn has none, encode/uvicorn#157), oversized headers get 431 before the app runs, and
its HTTP/1 parser refuses obs-fold, bare LF, whitespace before the colon and CR in values. See
docs/security.md for the measurements. The gateway under granian also serves more requests per second
than under uvicorn, for slightly more latency at p50 (bench/README.md, "Where the added latency goes").
ASGI rather than granian's own RSGI, though a bare proxy serves faster on RSGI (bench/README.md, "Figures
the code's comments refer to"): RSGI hands the app a percent-decoded path (`/a%2Fb` arrives as
`/a/b`), silently drops request header values that are not ASCII, and ends a response stream the app
abandoned with a clean last chunk - the cut body would look complete.

SIGTERM: readiness turns 503 at once, requests keep being served for `shutdown.drain_seconds` (so load
balancers notice before the listener closes), then the listener closes, in-flight requests finish (at most
`shutdown.timeout_seconds`), and the process exits 0. SIGHUP reloads the config file. SIGINT stops at once
(after in-flight requests).

One process, one event loop, one worker: scale with replicas (docs/performance.md, "Scaling").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from granian.constants import HTTPModes, Interfaces, SSLProtocols, TaskImpl
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server.embed import Server

from gateway.config.loading import Config
from gateway.dataplane import logs
from gateway.dataplane.app import GatewayApp

log = logging.getLogger("zgw_gateway")

# Room for the request line on top of limits.max_header_bytes in hyper's read buffer; hyper answers 431
# when a head does not fit. Hyper refuses a buffer below 8 KiB.
_REQUEST_LINE_ALLOWANCE = 8192
# Hyper's read buffer is also the largest piece of a request body it hands over, and every piece crosses
# from granian's Rust thread to the event loop (a GIL handoff and several context switches on one core):
# a buffer of max_header_bytes + 8 KiB made uploads several times slower than nginx, hyper's own default
# (8 KiB + 400 KiB) does not (bench/README.md, "Uploads: where the time went"). Heads between
# max_header_bytes and this size still get 431: the app checks limits.max_header_bytes itself before routing.
_READ_BUFFER = 8192 + 4096 * 100
# The cyclic collector runs on a clock, not on allocation counts (with_timed_collector). Counted by allocations
# (CPython's default: a pass of the youngest generation every 700 net container allocations), it walked the
# live objects of every request in flight: a request holds some 45 (its coroutines, futures, dicts), none in
# a cycle, and with 1,000 callers the passes took 10-15 us of each request (100-150 ms of every second of
# CPU), still 4 us at a threshold of 50,000. On a clock it costs a walk of what survived the last second,
# whatever the load. Answered and failed requests leave no cyclic garbage (tests/test_collector.py), so all
# that waits for a pass is a rare cycle: at most _COLLECT_SECONDS in the youngest generation, a minute in the
# older ones (bench/README.md, "Many callers").
_COLLECT_SECONDS = 1.0
_FULL_PASS_EVERY = 60
# Granian's own loggers go to the root logger (logs.setup formats them); its banner and per-worker
# chatter stay below the gateway's level.
_GRANIAN_LOGGING: dict[str, Any] = {
    "loggers": {
        "_granian": {"handlers": [], "level": "WARNING", "propagate": True},
        "granian.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
    }
}


class _NoBanner(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # Granian marks its embedded server experimental; the choice is documented (docs/performance.md, "Server").
        return not record.getMessage().startswith("Embedded server is experimental")


def _granian(app: Any, host: str, port: int, config: Config, *, admin: bool) -> Any:  # granian.stop() is untyped
    limits = config.limits
    tls = None if admin else config.listen.tls
    return Server(
        app,
        address=host,
        port=port,
        # ASGINL: the admin app has no lifespan; the proxy's lifespan opens and closes the upstream pools.
        interface=Interfaces.ASGINL if admin else Interfaces.ASGI,
        # HTTP/1.1 only: no h2c upgrade or prior-knowledge HTTP/2 on the cleartext port, one set of limits.
        http=HTTPModes.http1,
        websockets=False,
        backlog=2048,
        # asyncio's tasks: granian's Rust tasks serve more requests/s (bench/README.md, "Figures the code's
        # comments refer to"), but broke a retried request (GeneratorExit) and the shutdown
        # (asyncio.all_tasks fails on them), so they are not used.
        task_impl=TaskImpl.asyncio,
        # Requests granian hands to the app at once; beyond limits.max_in_flight the app answers a fast 503,
        # so granian must let that many (and some) through rather than queue them silently.
        backpressure=limits.max_in_flight + 256,
        http1_settings=HTTP1Settings(
            header_read_timeout=int(limits.header_read_timeout * 1000),
            keep_alive=True,
            max_buffer_size=max(limits.max_header_bytes + _REQUEST_LINE_ALLOWANCE, _READ_BUFFER),
        ),
        log_enabled=True,
        log_level=LogLevels.warning,
        log_dictconfig=_GRANIAN_LOGGING,
        log_access=False,
        ssl_cert=tls.cert_file if tls else None,
        ssl_key=tls.key_file if tls else None,
        # Legacy callers: TLS 1.2 is still common in the estates this gateway serves.
        ssl_protocol_min=SSLProtocols.tls12,
    )


Extra = list[tuple[str, object, str, int]]  # (name, app, host, port)
Sleep = Callable[[float], Awaitable[object]]


def taken(listeners: list[tuple[str, str, int]]) -> list[str]:
    """Why each of the (name, host, port) listeners cannot start here: the address is in use, or cannot be
    bound. Empty when all can.

    Granian binds with SO_REUSEPORT, so a second gateway on the same port would start and take half the
    connections - a stale replica with an old config among them (issue 20). Kong, Traefik and Envoy refuse
    a taken port; so does the gateway: a probe socket without SO_REUSEPORT cannot bind an address any other
    socket listens on, SO_REUSEPORT or not. SO_REUSEADDR lets it past the TIME_WAIT connections of a
    process that just stopped. Two gateways started within the same instant can both pass the probe before
    either binds; the probe guards against the replica left running, not against that race.
    """
    problems = []
    for name, host, port in listeners:
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        except OSError as exc:
            why = "another process listens on it" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            problems.append(f"{name} {_address(host, port)}: cannot listen: {why}")
    return problems


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(app: GatewayApp, extra: Extra | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code. `extra` apps (the demo's sandbox) run alongside."""
    config = app.runtime.snapshot.config
    listeners = [("listen", config.listen.host, config.listen.port), ("admin", config.admin.host, config.admin.port)]
    problems = taken(listeners + [(name, h, p) for name, _, h, p in extra or []])
    for problem in problems:
        log.error(problem, extra={"event": "startup_failed"})
    if problems:
        return 1
    proxy = _granian(app, config.listen.host, config.listen.port, config, admin=False)
    admin = _granian(app.admin, config.admin.host, config.admin.port, config, admin=True)
    logging.getLogger("_granian").addFilter(_NoBanner())  # after granian's dictConfig, which resets filters
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    background: set[asyncio.Task[None]] = set()

    async def drain_then_stop() -> None:
        app.lifecycle.start_draining()
        log.info("draining", extra={"event": "shutdown", "drain_seconds": config.shutdown.drain_seconds})
        await asyncio.sleep(config.shutdown.drain_seconds)
        proxy.stop()

    def on_term() -> None:
        if not stopping.is_set():
            stopping.set()
            task = loop.create_task(drain_then_stop())
            background.add(task)
            task.add_done_callback(background.discard)

    def on_int() -> None:
        stopping.set()
        app.lifecycle.start_draining()
        proxy.stop()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, on_int)
    loop.add_signal_handler(signal.SIGHUP, lambda: app.lifecycle.reload("SIGHUP"))

    extras = [_granian(a, h, p, config, admin=True) for _, a, h, p in extra or []]
    admin_task = asyncio.create_task(admin.serve())
    extra_tasks = [asyncio.create_task(s.serve()) for s in extras]
    failed = False
    try:
        await proxy.serve()
    except Exception as exc:
        failed = True
        log.error("the proxy listener failed", extra={"event": "startup_failed", "error": type(exc).__name__})
    finally:
        admin.stop()
        for s in extras:
            s.stop()
        results = await asyncio.gather(admin_task, *extra_tasks, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    if failed or not app.lifecycle.started or any(isinstance(r, BaseException) for r in results):
        log.error("the gateway did not start or stop cleanly", extra={"event": "startup_failed"})
        return 1
    log.info("stopped", extra={"event": "shutdown"})
    logs.flush()
    return 0


def _batch_scheduling() -> None:
    """SCHED_BATCH for this thread and every thread it starts (granian's I/O threads among them).

    Granian reads and writes on its own threads and hands each request to the event loop and each answer
    back. On one core, every such wake-up preempted the other thread mid-request. As batch threads they do
    not preempt each other on wake-up but run when the other waits, which takes CPU time off every request
    (bench/README.md, "Small requests: one core, three threads"). Fairness is unchanged; only wake-up
    preemption goes (sched(7)). Where the system refuses, the default policy stays.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


async def collect_on_a_timer(sleep: Sleep = asyncio.sleep) -> None:
    """The cyclic collector's passes: the youngest generation every _COLLECT_SECONDS, all of them on every
    _FULL_PASS_EVERY-th."""
    passes = 0
    while True:
        await sleep(_COLLECT_SECONDS)
        passes += 1
        gc.collect(2 if passes % _FULL_PASS_EVERY == 0 else 0)


async def with_timed_collector(main: Awaitable[int], sleep: Sleep = asyncio.sleep) -> int:
    """`main`, with the collector's automatic passes off and collect_on_a_timer running beside it; both undone
    when `main` ends."""
    gc.disable()
    passes = asyncio.create_task(collect_on_a_timer(sleep))
    try:
        return await main
    finally:
        passes.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await passes
        gc.enable()


def run(app: GatewayApp, extra: Extra | None = None) -> int:
    _batch_scheduling()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(with_timed_collector(serve(app, extra)))
    return int(uvloop.run(with_timed_collector(serve(app, extra))))
