"""SIGTERM under load: readiness 503 at once, requests served through the drain, in-flight ones finished,
exit 0, and not one failed request (docs/security.md, Faults)."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from conftest import API_KEY, base_config
from servers import GatewayProcess, ThreadServer, port_open, wait_until
from test_security import Recorder

ZAKEN = "/zaken/api/v1"
KEY = {"X-API-Key": API_KEY}


def _log(gw: GatewayProcess) -> list[dict[str, Any]]:
    """The gateway's JSON log records, in the order written."""
    records = []
    for line in gw.log_lines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def test_sigterm_under_load_drains_without_a_failed_request(gateway_factory: Callable[..., GatewayProcess]) -> None:
    long_held = threading.Event()
    long_answer = (200, [(b"content-length", b"4")], b"done")
    rec = Recorder(delay=0.05, answers={"/long": long_answer}, holds={"/long": long_held})
    with ThreadServer(rec) as up, ThreadPoolExecutor(1) as pool:
        # drain_seconds is what a load balancer gets to notice the 503: generous, so the test's own steps
        # (see the 503, watch requests still being served, stop sending) fit in it on a busy machine.
        config = base_config(up.url, shutdown={"drain_seconds": 5, "timeout_seconds": 30})
        gw = gateway_factory(config)
        assert gw.proc is not None
        stop_sending = threading.Event()
        results: list[int | str] = []
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(base_url=gw.url, headers=KEY, timeout=30) as c:
                while not stop_sending.is_set():
                    try:
                        code: int | str = c.get(ZAKEN + "/zaken").status_code
                    except httpx.HTTPError as exc:
                        code = type(exc).__name__
                    with lock:
                        results.append(code)

        workers = [threading.Thread(target=client) for _ in range(20)]
        for w in workers:
            w.start()
        try:
            wait_until(lambda: len(results) >= 40, 10)
            gw.signal(signal.SIGTERM)
            wait_until(lambda: httpx.get(gw.admin_url + "/-/ready", timeout=5).status_code == 503, 10)
            at_503 = len(results)
            # A request that is still upstream when the listener closes must complete.
            long_request = pool.submit(httpx.get, gw.url + ZAKEN + "/long", headers=KEY, timeout=60)
            wait_until(lambda: any(path.endswith(b"/long") for path in rec.arrived), 10)
            # Readiness turned while the listener still served: at the start of the drain, not at its end.
            wait_until(lambda: len(results) >= at_503 + 40, 10)
        finally:
            stop_sending.set()  # the load balancer has seen the 503
            for w in workers:
                w.join(30)
        try:
            wait_until(lambda: not port_open(gw.port), 30)  # the drain is over: the listener is closed
            assert gw.proc.poll() is None  # and the process waits for the request still upstream
            assert not long_request.done()
        finally:
            long_held.set()
        long = long_request.result(30)
        assert (long.status_code, long.content) == (200, b"done")
        assert gw.proc.wait(30) == 0
        assert [r for r in results if r != 200] == []
        # The log agrees on the order: draining, requests still served, the long one last, stopped.
        log = _log(gw)
        draining = next(i for i, r in enumerate(log) if r.get("msg") == "draining")
        served = [r["path"] for r in log[draining:] if r["logger"] == "zgw_gateway.access"]
        assert len(served) >= 40 and served[-1] == ZAKEN + "/long"
        assert log[-1]["msg"] == "stopped"
