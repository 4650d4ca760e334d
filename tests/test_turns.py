"""A request's turn at its component (app.py, step 6): at most `max_connections` requests of a component go
upstream at once; the others wait in line after their body was read, first come first served, until a turn
ends or `timeouts.pool` is up (that 503: test_faults.py). A reload that replaces the pool starts a new line.

A real gateway process and a recording upstream; the upstream holds answers until the test lets them go,
and the gateway's in-flight gauge tells when a request is in line: a request without a body goes from its
admission to its turn without a pause.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import API_KEY, base_config
from hostile import HostileUpstream
from prometheus_client import CollectorRegistry
from servers import GatewayProcess, ThreadServer, metric_value, wait_until
from test_runtime import ENV, asgi, data
from test_security import Recorder, head, parse_reply
from test_upstream import until, well_behaved

from gateway.config.loading import parse
from gateway.dataplane.app import create_app

CATALOGI = "/catalogi/api/v1"
KEY = {"X-API-Key": API_KEY}


def in_flight(gw: GatewayProcess) -> float:
    return metric_value(gw.metrics(), "zgw_gateway_in_flight_requests", component="catalogi")


def reloads(gw: GatewayProcess) -> float:
    return metric_value(gw.metrics(), "zgw_gateway_config_reloads_total", result="success")


def test_a_slow_body_holds_no_turn_and_waiting_requests_go_upstream_in_the_order_they_came(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    held = threading.Event()
    rec = Recorder(holds={"/held": held})
    with ThreadServer(rec) as up, ThreadPoolExecutor(2) as pool:
        config = base_config(up.url)
        config["components"]["catalogi"]["max_connections"] = 1
        config["components"]["catalogi"]["timeouts"] = {"pool": 60}
        gw = gateway_factory(config)
        slow = socket.create_connection(("127.0.0.1", gw.port))
        try:
            # Admitted, half its body sent: it holds no turn, so the one turn goes to the next request (had
            # it one, the next would wait for a body that never comes, and time out here).
            slow.sendall(head(CATALOGI + "/slow", "POST", "Content-Type: application/json\r\nContent-Length: 10\r\n"))
            slow.sendall(b'{"a": ')
            wait_until(lambda: in_flight(gw) == 1, 10)
            assert httpx.get(gw.url + CATALOGI + "/quick", headers=KEY, timeout=10).status_code == 200

            # The one turn held upstream; a request lines up behind it, then the slow body completes and
            # lines up behind that one.
            first = pool.submit(httpx.get, gw.url + CATALOGI + "/held", headers=KEY, timeout=30)
            wait_until(lambda: len(rec.arrived) == 2, 10)
            second = pool.submit(httpx.get, gw.url + CATALOGI + "/second", headers=KEY, timeout=30)
            wait_until(lambda: in_flight(gw) == 3, 10)
            slow.sendall(b'"x"}')
            held.set()
            slow.settimeout(10)
            assert parse_reply(slow.recv(65536), closed=False).status == 200
            assert [first.result(30).status_code, second.result(30).status_code] == [200, 200]
        finally:
            held.set()
            slow.close()
    assert [path.rsplit(b"/", 1)[1] for path in rec.arrived] == [b"quick", b"held", b"second", b"slow"]
    assert [r.body for r in rec.requests if r.raw_path.endswith(b"/slow")] == [b'{"a": "x"}']


def test_a_reload_that_replaces_the_pool_starts_a_new_line_and_the_old_line_is_still_served(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    held = threading.Event()
    rec = Recorder(holds={"/held": held})
    with ThreadServer(rec) as up, ThreadPoolExecutor(2) as pool:
        config = base_config(up.url, secrets={"poll_seconds": 3600})
        config["components"]["catalogi"]["max_connections"] = 1
        config["components"]["catalogi"]["timeouts"] = {"pool": 60}
        gw = gateway_factory(config)
        try:
            first = pool.submit(httpx.get, gw.url + CATALOGI + "/held", headers=KEY, timeout=30)
            wait_until(lambda: len(rec.arrived) == 1, 10)
            waiting = pool.submit(httpx.get, gw.url + CATALOGI + "/waiting", headers=KEY, timeout=30)
            wait_until(lambda: in_flight(gw) == 2, 10)

            # A new pool (two connections): its turns are free, the old pool's line waits for the old turn.
            gw.config["components"]["catalogi"]["max_connections"] = 2
            gw.write_config()
            gw.signal(signal.SIGHUP)
            wait_until(lambda: reloads(gw) == 1, 10)
            assert httpx.get(gw.url + CATALOGI + "/new", headers=KEY, timeout=10).status_code == 200
            assert not waiting.done()
            held.set()
            assert [first.result(30).status_code, waiting.result(30).status_code] == [200, 200]
        finally:
            held.set()
    assert [path.rsplit(b"/", 1)[1] for path in rec.arrived] == [b"held", b"new", b"waiting"]


def test_a_request_that_leaves_the_line_holds_nothing_and_every_turn_taken_is_ended() -> None:
    """In the app, in this event loop: a request cancelled while in line (its caller gone) leaves no place,
    no turn and no in-flight count behind; a turn taken is ended however the request ends - refused by an
    open circuit after its turn, or answered."""

    async def main() -> None:
        async with HostileUpstream(well_behaved) as up:
            config = data(up.url)
            config["components"]["zaken"]["max_connections"] = 1
            config["callers"][0].pop("rate_limit")
            app = create_app(parse(config), environ=ENV, registry=CollectorRegistry())
            await app.lifecycle.startup()
            route = app.runtime.snapshot.routes.match(b"/zaken/api/v1/zaken")
            assert route is not None
            pool, key = route.pool, [(b"x-api-key", ENV["KEY_A"].encode())]

            assert pool.take_turn()  # the one turn, held here
            leaves = asyncio.create_task(asgi(app, "/zaken/api/v1/zaken", key))
            await until(lambda: len(pool._waiters) == 1)
            leaves.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaves
            assert (len(pool._waiters), pool.turns, app.runtime.in_flight["zaken"]) == (0, 1, 0)
            pool.end_turn()

            breaker = app.runtime.breakers["zaken"]
            for _ in range(2):
                breaker.allow()
                breaker.record(False)
            status, _ = await asgi(app, "/zaken/api/v1/zaken", key)
            assert status == 503 and pool.turns == 0  # refused by the circuit after its turn: ended
            app.runtime.breakers.clear()
            status, _ = await asgi(app, "/zaken/api/v1/zaken", key)
            assert status == 200 and (pool.turns, pool.in_use, app.runtime.in_flight["zaken"]) == (0, 0, 0)
            await app.lifecycle.shutdown()

    asyncio.run(main())
