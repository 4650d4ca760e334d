"""Upstream faults, clock skew, secret trouble and bursts: each answered the documented way, none costs a
request that could have succeeded (README "Security and failure behaviour", Faults)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jwt
import pytest
from conftest import API_KEY, CLIENT_ID, GATEWAY_ENV, SECRET, base_config
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from servers import GatewayProcess, ThreadServer, free_port, metric_value, wait_until
from test_security import Recorder, parse_reply

from gateway.app import create_app
from gateway.config import parse
from gateway.sandbox import create_sandbox_app

ZAKEN = "/zaken/api/v1"
KEY = {"X-API-Key": API_KEY}


class RawUpstream:
    """A TCP upstream in a thread that reads a request head and then misbehaves on purpose."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self._thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            if self.mode == "reset_mid_body":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
                    + b"x" * 1000
                )
                time.sleep(0.2)
        # SO_LINGER 0: close with RST, the way a crashing upstream looks
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


def problem(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json"
    return str(response.json()["code"])


def test_refused_connection_is_502_and_retried_once_because_it_never_left(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(base_config(f"http://127.0.0.1:{free_port()}"))
    r = httpx.post(gw.url + ZAKEN + "/zaken", headers=KEY, json={"a": 1})
    assert r.status_code == 502
    assert problem(r) == "upstream-unreachable"
    metrics = gw.metrics()
    assert metric_value(metrics, "zgw_gateway_upstream_retries_total", reason="connect") == 1
    assert metric_value(metrics, "zgw_gateway_upstream_failures_total", reason="connect") == 1


def test_reset_before_answering_is_502_retried_only_when_idempotent(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    with RawUpstream("reset_before") as up:
        gw = gateway_factory(base_config(up.url))
        r = httpx.get(gw.url + ZAKEN + "/zaken", headers=KEY)
        assert r.status_code == 502
        assert problem(r) == "upstream-reset"
        assert up.connections == 2  # GET: tried, then retried once
        assert metric_value(gw.metrics(), "zgw_gateway_upstream_retries_total", reason="reset") == 1
        r = httpx.post(gw.url + ZAKEN + "/zaken", headers=KEY, json={"a": 1})
        assert r.status_code == 502
        assert up.connections == 3  # POST may have been processed: never sent twice
        assert metric_value(gw.metrics(), "zgw_gateway_upstream_retries_total", reason="reset") == 1


def test_reset_mid_body_aborts_the_callers_connection(gateway_factory: Callable[..., GatewayProcess]) -> None:
    with RawUpstream("reset_mid_body") as up:
        gw = gateway_factory(base_config(up.url))
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(f"GET {ZAKEN}/zaken HTTP/1.1\r\nHost: gw\r\nX-API-Key: {API_KEY}\r\n\r\n".encode())
            data = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(65536):
                    data += chunk
        reply = parse_reply(data, True)
        assert reply.status == 200
        assert reply.headers["content-length"] == "100000"
        assert 0 < len(reply.body) < 100000
        assert reply.body == b"x" * len(reply.body)  # cut, with nothing appended
        wait_until(
            lambda: metric_value(gw.metrics(), "zgw_gateway_aborted_requests_total", reason="upstream_reset") == 1, 5
        )


@contextlib.contextmanager
def unanswered_listener() -> Iterator[str]:
    """A port whose accept queue is full: the kernel drops new SYNs, so connecting hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    fillers = []
    for _ in range(4):
        f = socket.socket()
        f.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            f.connect(("127.0.0.1", port))
        fillers.append(f)
    time.sleep(0.2)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for f in fillers:
            f.close()
        sock.close()


def test_slow_connect_and_slow_answer_are_504_within_the_timeouts(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    slow = Recorder(delay=3)
    with unanswered_listener() as hanging, ThreadServer(slow) as up:
        config = base_config(up.url)
        config["components"]["zaken"]["timeouts"] = {"connect": 0.5, "read": 0.5, "total": 5}
        config["components"]["catalogi"]["upstream"] = hanging + "/catalogi/api/v1"
        config["components"]["catalogi"]["timeouts"] = {"connect": 0.5, "read": 5, "total": 5}
        config["components"]["documenten"]["timeouts"] = {"connect": 1, "read": 5, "total": 0.8}
        gw = gateway_factory(config)
        for path, bound in [
            (ZAKEN + "/zaken", 1.5),  # read timeout
            ("/catalogi/api/v1/catalogussen", 1.5),  # connect timeout
            ("/documenten/api/v1/enkelvoudiginformatieobjecten", 1.5),  # total deadline
        ]:
            started = time.monotonic()
            r = httpx.get(gw.url + path, headers=KEY, timeout=10)
            elapsed = time.monotonic() - started
            assert r.status_code == 504, path
            assert problem(r) == "upstream-timeout"
            assert elapsed < bound, (path, elapsed)


def test_unresolvable_upstream_is_502_and_readiness_stays(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gw = gateway_factory(base_config("http://zgw-upstream.invalid"))
    r = httpx.get(gw.url + ZAKEN + "/zaken", headers=KEY, timeout=15)
    assert r.status_code == 502
    assert problem(r) == "upstream-dns"
    assert httpx.get(gw.admin_url + "/-/ready").status_code == 200
    assert metric_value(gw.metrics(), "zgw_gateway_upstream_failures_total", reason="dns") == 1


def _concurrently(n: int, call: Callable[[], httpx.Response]) -> list[tuple[httpx.Response, float]]:
    results: list[tuple[httpx.Response, float]] = []
    lock = threading.Lock()

    def one() -> None:
        started = time.monotonic()
        r = call()
        with lock:
            results.append((r, time.monotonic() - started))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_too_many_in_flight_and_an_exhausted_pool_get_a_fast_503_with_retry_after(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    slow = Recorder(delay=1.5)
    with ThreadServer(slow) as up:
        config = base_config(up.url)
        config["components"]["zaken"]["max_in_flight"] = 2
        config["components"]["catalogi"]["max_connections"] = 1
        config["components"]["catalogi"]["timeouts"] = {"pool": 0.3, "connect": 0.3}
        gw = gateway_factory(config)
        results = _concurrently(6, lambda: httpx.get(gw.url + ZAKEN + "/zaken", headers=KEY, timeout=10))
        refused = [(r, t) for r, t in results if r.status_code == 503]
        assert len([r for r, _ in results if r.status_code == 200]) == 2
        assert len(refused) == 4
        for r, elapsed in refused:
            assert problem(r) == "overloaded"
            assert int(r.headers["retry-after"]) >= 1
            assert elapsed < 0.5

        results = _concurrently(2, lambda: httpx.get(gw.url + "/catalogi/api/v1/x", headers=KEY, timeout=10))
        codes = sorted(r.status_code for r, _ in results)
        assert codes == [200, 503]
        (r, elapsed) = next((r, t) for r, t in results if r.status_code == 503)
        assert problem(r) == "upstream-pool-exhausted"
        assert int(r.headers["retry-after"]) >= 1
        assert elapsed < 1.0


def test_circuit_breaker_opens_fails_fast_and_closes_after_a_good_probe(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    port = free_port()
    config = base_config(f"http://127.0.0.1:{port}", circuit_breaker={"failure_threshold": 2, "open_seconds": 1})
    gw = gateway_factory(config)
    url = gw.url + ZAKEN + "/zaken"
    assert [httpx.get(url, headers=KEY).status_code for _ in range(2)] == [502, 502]
    started = time.monotonic()
    r = httpx.get(url, headers=KEY)
    assert r.status_code == 503
    assert problem(r) == "circuit-open"
    assert int(r.headers["retry-after"]) >= 1
    assert time.monotonic() - started < 0.3
    assert metric_value(gw.metrics(), "zgw_gateway_circuit_state", component="zaken") == 1
    assert metric_value(gw.metrics(), "zgw_gateway_circuit_state", component="catalogi") == 0
    rec = Recorder()
    with ThreadServer(rec, port=port):
        time.sleep(1.1)
        assert httpx.get(url, headers=KEY).status_code == 200  # the half-open probe
        assert metric_value(gw.metrics(), "zgw_gateway_circuit_state", component="zaken") == 0
        assert httpx.get(url, headers=KEY).status_code == 200


class FakeClock:
    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


@contextlib.contextmanager
def in_process(
    gateway_clock: FakeClock, sandbox_clock: FakeClock, jwt_expiry: int = 3600
) -> Iterator[tuple[str, CollectorRegistry]]:
    """The gateway app and the sandbox in threads, each on its own clock; yields the gateway URL."""
    sandbox = create_sandbox_app({CLIENT_ID: SECRET}, jwt_expiry=jwt_expiry, clock=sandbox_clock)
    with ThreadServer(sandbox) as up:
        config = parse(base_config(up.url))
        registry = CollectorRegistry()
        app = create_app(config, clock=gateway_clock, environ=GATEWAY_ENV, registry=registry)
        with ThreadServer(app) as gw:
            yield gw.url, registry


def _metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return metric_value(generate_latest(registry).decode(), name, **labels)


def test_upstream_jwt_expired_evicts_remints_and_retries_once() -> None:
    gclock, sclock = FakeClock(), FakeClock()
    with in_process(gclock, sclock, jwt_expiry=60) as (url, registry):
        assert httpx.get(url + ZAKEN + "/zaken", headers=KEY).status_code == 200
        # Both clocks move on 100 s: the cached token (refresh due after 270 s) is now too old for an
        # upstream whose JWT_EXPIRY is 60 s.
        gclock.offset = sclock.offset = 100
        r = httpx.get(url + ZAKEN + "/zaken", headers=KEY)
        assert r.status_code == 200
        assert _metric(registry, "zgw_gateway_upstream_retries_total", reason="token_expired") == 1
        assert _metric(registry, "zgw_gateway_tokens_minted_total") == 2
        # A POST is replayable too when its body was read whole.
        sclock.offset = gclock.offset = 200
        r = httpx.post(url + ZAKEN + "/zaken", headers=KEY, json={})
        assert r.status_code != 403
        assert _metric(registry, "zgw_gateway_upstream_retries_total", reason="token_expired") == 2


@pytest.mark.parametrize("skew", [60, -60], ids=["gateway-ahead", "gateway-behind"])
def test_clock_skew_of_a_minute_keeps_requests_succeeding(skew: int) -> None:
    with in_process(FakeClock(skew), FakeClock()) as (url, registry):
        for _ in range(3):
            assert httpx.get(url + ZAKEN + "/zaken", headers=KEY).status_code == 200
        assert _metric(registry, "zgw_gateway_upstream_forbidden_total") == 0


def test_missing_secret_file_at_start_means_not_ready_naming_the_reference(
    sandbox: str, gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    config = base_config(sandbox)
    missing = tmp_path / "zgw" / "legacy-dms"
    config["callers"][0]["secret"] = {"file": str(missing)}
    gw = gateway_factory(config, wait_ready=False)
    r = httpx.get(gw.admin_url + "/-/ready")
    assert r.status_code == 503
    reasons = r.json()["reasons"]
    assert any(f"file:{missing}" in reason for reason in reasons)
    refused = httpx.get(gw.url + ZAKEN + "/zaken", headers=KEY)
    assert refused.status_code == 503
    assert problem(refused) == "credentials-unavailable"
    missing.parent.mkdir()
    missing.write_text(SECRET + "\n")
    gw.wait_ready(5)
    assert httpx.get(gw.url + ZAKEN + "/zaken", headers=KEY).status_code == 200


class JwtChecker:
    """An upstream that accepts HS256 tokens signed with any of `accepted`, like an upstream mid-rotation."""

    def __init__(self, accepted: list[str]) -> None:
        self.accepted = accepted
        self.verified: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        which = None
        for secret in list(self.accepted):
            with contextlib.suppress(jwt.PyJWTError):
                jwt.decode(auth.removeprefix("Bearer "), secret, algorithms=["HS256"])
                which = secret
                break
        status = 200 if which else 403
        if which:
            self.verified.append(which)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})


def _k8s_secret(directory: Path, name: str, value: str, version: str) -> None:
    """Write a Secret volume the way the kubelet does: a timestamped dir, `..data` swapped atomically."""
    target = directory / f"..{version}"
    target.mkdir()
    (target / name).write_text(value)
    tmp_link = directory / "..data_tmp"
    tmp_link.symlink_to(target.name)
    os.replace(tmp_link, directory / "..data")
    link = directory / name
    if not link.is_symlink():
        link.symlink_to(f"..data/{name}")


def test_kubernetes_secret_rotation_uses_the_new_secret_without_a_failed_request(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    old, new = SECRET, "rotated-zgw-secret-9b8c7d6e5f4a3b2c1d0e"
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    _k8s_secret(secret_dir, "legacy-dms", old, "2024_01_01")
    checker = JwtChecker([old])
    with ThreadServer(checker) as up:
        config = base_config(up.url)
        config["callers"][0]["secret"] = {"file": str(secret_dir / "legacy-dms")}
        gw = gateway_factory(config)
        failures: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(headers=KEY) as client:
                while not stop.is_set():
                    r = client.get(gw.url + ZAKEN + "/zaken")
                    if r.status_code != 200:
                        failures.append(r.status_code)
                    time.sleep(0.01)

        worker = threading.Thread(target=load)
        worker.start()
        try:
            time.sleep(0.3)
            checker.accepted = [old, new]  # the upstream learns the new secret first
            swapped = time.monotonic()
            _k8s_secret(secret_dir, "legacy-dms", new, "2024_02_01")
            wait_until(lambda: checker.verified[-1:] == [new], 5)
            picked_up = time.monotonic() - swapped
            checker.accepted = [new]  # then forgets the old one
            time.sleep(0.5)
        finally:
            stop.set()
            worker.join(10)
        assert failures == []
        assert picked_up < 3
        first_new = checker.verified.index(new)
        assert old not in checker.verified[first_new:]  # old tokens were evicted, never used again
        metrics = gw.metrics()
        assert metric_value(metrics, "zgw_gateway_secret_reloads_total", result="success") == 1
        assert metric_value(metrics, "zgw_gateway_tokens_minted_total", caller="legacy-dms") == 2
        assert new not in gw.logs() and old not in gw.logs()


def test_secret_file_deleted_at_runtime_keeps_the_last_good_value(
    sandbox: str, gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    secret_file = tmp_path / "legacy-dms"
    secret_file.write_text(SECRET)
    config = base_config(sandbox)
    config["callers"][0]["secret"] = {"file": str(secret_file)}
    gw = gateway_factory(config)
    assert httpx.get(gw.url + ZAKEN + "/zaken", headers=KEY).status_code == 200
    secret_file.unlink()
    wait_until(lambda: metric_value(gw.metrics(), "zgw_gateway_secret_reloads_total", result="failure") >= 1, 5)
    assert httpx.get(gw.url + ZAKEN + "/zaken", headers=KEY).status_code == 200
    assert httpx.get(gw.admin_url + "/-/ready").status_code == 200
    logged = [json.loads(line) for line in gw.log_lines() if "secret_reload_failed" in line]
    assert logged and logged[0]["secret"] == f"file:{secret_file}"
    assert SECRET not in gw.logs()


def test_a_thousand_concurrent_first_requests_mint_exactly_one_token(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    rec = Recorder(delay=0.2)
    with ThreadServer(rec) as up:
        gw = gateway_factory(base_config(up.url))

        async def burst() -> list[int]:
            connector = aiohttp.TCPConnector(limit=1000)
            async with aiohttp.ClientSession(connector=connector) as session:

                async def one() -> int:
                    async with session.get(gw.url + ZAKEN + "/zaken", headers=KEY) as r:
                        await r.read()
                        return r.status

                return await asyncio.gather(*(one() for _ in range(1000)))

        codes = asyncio.run(burst())
        assert codes.count(200) == 1000
        metrics = gw.metrics()
        assert metric_value(metrics, "zgw_gateway_tokens_minted_total") == 1
        assert len(set(rec.tokens())) == 1
