"""SIGTERM under load: readiness 503 at once, requests served through the drain, in-flight ones finished,
exit 0, and not one failed request (README "Security and failure behaviour", Faults)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import httpx
from conftest import API_KEY, base_config
from servers import GatewayProcess, ThreadServer
from test_security import Recorder

ZAKEN = "/zaken/api/v1"


def test_sigterm_under_load_drains_without_a_failed_request(gateway_factory: Callable[..., GatewayProcess]) -> None:
    rec = Recorder(delay=0.2, answers={"/long": (200, [(b"content-length", b"4")], b"done")})
    with ThreadServer(rec) as up:
        config = base_config(up.url, shutdown={"drain_seconds": 1.5, "timeout_seconds": 10})
        gw = gateway_factory(config)
        stop_sending = threading.Event()
        results: list[int | str] = []
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(base_url=gw.url, headers={"X-API-Key": API_KEY}, timeout=10) as c:
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
        time.sleep(1.0)
        before = len(results)
        gw.signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert httpx.get(gw.admin_url + "/-/ready", timeout=2).status_code == 503
        assert time.monotonic() - signalled < 0.5

        # A request that is still upstream when the listener closes must complete.
        long_result: list[int | str] = []

        def long_request() -> None:
            rec.delay = 0.2
            try:
                r = httpx.get(gw.url + ZAKEN + "/long", headers={"X-API-Key": API_KEY}, timeout=15)
                long_result.append(r.status_code)
            except httpx.HTTPError as exc:
                long_result.append(type(exc).__name__)

        # The load balancer stops sending once it has seen the 503 (well within drain_seconds).
        time.sleep(0.8)
        rec.delay = 2.0
        longer = threading.Thread(target=long_request)
        longer.start()
        time.sleep(0.1)
        stop_sending.set()
        for w in workers:
            w.join(15)
        longer.join(15)
        assert gw.proc is not None
        assert gw.proc.wait(15) == 0
        failed = [r for r in results if r != 200]
        assert failed == []
        assert len(results) > before  # requests kept being served during the drain
        assert long_result == [200]
        assert time.monotonic() - signalled >= 1.5  # the listener stayed open for drain_seconds
