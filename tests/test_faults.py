"""Upstream faults, clock skew, secret trouble and bursts: each answered the documented way, none costs a
request that could have succeeded (docs/security.md, Faults)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jwt
import pytest
from conftest import API_KEY, CLIENT_ID, GATEWAY_ENV, SECRET, base_config
from servers import (
    GatewayProcess,
    ManualClock,
    ThreadServer,
    free_port,
    gateway_in_thread,
    metric_absent,
    metric_value,
    wait_until,
)
from test_security import Recorder, parse_reply
from zgw_sandbox import create_sandbox_app

ZAKEN = "/zaken/api/v1"
KEY = {"X-API-Key": API_KEY}
ABORTED = "zgw_gateway_aborted_requests_total"  # counted by reason from the first abort on


class RawUpstream:
    """A TCP upstream in a thread that reads a request head and then misbehaves on purpose."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.reset_now = threading.Event()  # reset_mid_body: set by the test once the caller has bytes
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
                self.reset_now.wait(10)
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
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
            s.sendall(f"GET {ZAKEN}/zaken HTTP/1.1\r\nHost: gw\r\nX-API-Key: {API_KEY}\r\n\r\n".encode())
            data = b""
            while not data.partition(b"\r\n\r\n")[2]:  # until the caller holds part of the body
                chunk = s.recv(65536)
                assert chunk, data
                data += chunk
            up.reset_now.set()
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(65536):
                    data += chunk
        reply = parse_reply(data, True)
        assert reply.status == 200
        assert reply.headers["content-length"] == "100000"
        assert 0 < len(reply.body) < 100000
        assert reply.body == b"x" * len(reply.body)  # cut, with nothing appended
        wait_until(lambda: metric_value(gw.metrics(), ABORTED, default=0.0, reason="upstream_reset") == 1, 5)


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
    # Once the first filler is connected, the accept queue (one place) is full and later SYNs are dropped.
    _, connected, _ = select.select([], fillers[:1], [], 10)
    assert connected and fillers[0].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for f in fillers:
            f.close()
        sock.close()


def test_slow_connect_and_slow_answer_are_504_within_the_timeouts(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    # The upstream never answers while the test runs, and every timeout but the one under test is far beyond
    # the client's 30 s: a 504 in time can only come from that one timeout.
    never = threading.Event()
    slow = Recorder(holds={"/zaken": never, "/enkelvoudiginformatieobjecten": never})
    with unanswered_listener() as hanging, ThreadServer(slow) as up:
        config = base_config(up.url)
        config["components"]["zaken"]["timeouts"] = {"read": 0.5, "total": 3600}
        config["components"]["catalogi"]["upstream"] = hanging + "/catalogi/api/v1"
        config["components"]["catalogi"]["timeouts"] = {"connect": 0.5, "read": 3600, "total": 3600}
        config["components"]["documenten"]["timeouts"] = {"read": 3600, "total": 0.8}
        gw = gateway_factory(config)
        try:
            for component, path in [
                ("zaken", ZAKEN + "/zaken"),  # read timeout
                ("catalogi", "/catalogi/api/v1/catalogussen"),  # connect timeout
                ("documenten", "/documenten/api/v1/enkelvoudiginformatieobjecten"),  # total deadline
            ]:
                r = httpx.get(gw.url + path, headers=KEY, timeout=30)
                assert r.status_code == 504, path
                assert problem(r) == "upstream-timeout"
                failures = metric_value(gw.metrics(), "zgw_gateway_upstream_failures_total", component=component)
                timeouts = metric_value(
                    gw.metrics(), "zgw_gateway_upstream_failures_total", component=component, reason="timeout"
                )
                assert failures == timeouts == 1, path
            assert [path.rsplit(b"/", 1)[1] for path in slow.arrived] == [b"zaken", b"enkelvoudiginformatieobjecten"]
        finally:
            never.set()


def test_unresolvable_upstream_is_502_and_readiness_stays(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gw = gateway_factory(base_config("http://zgw-upstream.invalid"))
    r = httpx.get(gw.url + ZAKEN + "/zaken", headers=KEY, timeout=15)
    assert r.status_code == 502
    assert problem(r) == "upstream-dns"
    assert httpx.get(gw.admin_url + "/-/ready").status_code == 200
    assert metric_value(gw.metrics(), "zgw_gateway_upstream_failures_total", reason="dns") == 1


def test_too_many_in_flight_and_an_exhausted_pool_get_a_fast_503_with_retry_after(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    held = threading.Event()
    rec = Recorder(holds={"/zaken": held, "/x": held})
    with ThreadServer(rec) as up, ThreadPoolExecutor(3) as pool:
        config = base_config(up.url)
        config["components"]["zaken"]["max_in_flight"] = 2
        config["components"]["catalogi"]["max_connections"] = 1
        config["components"]["catalogi"]["timeouts"] = {"pool": 0.3}
        gw = gateway_factory(config)
        zaken, catalogi = gw.url + ZAKEN + "/zaken", gw.url + "/catalogi/api/v1/x"
        try:
            admitted = [pool.submit(httpx.get, zaken, headers=KEY, timeout=30) for _ in range(2)]
            wait_until(lambda: len(rec.arrived) == 2, 10)
            # Both admitted requests are held upstream until `held` is set: an answer now was not queued.
            for _ in range(4):
                r = httpx.get(zaken, headers=KEY, timeout=30)
                assert r.status_code == 503
                assert problem(r) == "overloaded"
                assert int(r.headers["retry-after"]) >= 1
            assert len(rec.arrived) == 2
            overloaded = metric_value(gw.metrics(), "zgw_gateway_upstream_failures_total", reason="overloaded")
            assert overloaded == 4

            # The one catalogi connection is busy upstream: the next request waits timeouts.pool, not for it.
            first = pool.submit(httpx.get, catalogi, headers=KEY, timeout=30)
            wait_until(lambda: len(rec.arrived) == 3, 10)
            r = httpx.get(catalogi, headers=KEY, timeout=30)
            assert r.status_code == 503
            assert problem(r) == "upstream-pool-exhausted"
            assert int(r.headers["retry-after"]) >= 1
            assert len(rec.arrived) == 3
            exposition = gw.metrics()
            assert metric_value(exposition, "zgw_gateway_upstream_failures_total", component="catalogi") == 1
            assert metric_value(exposition, "zgw_gateway_upstream_failures_total", reason="pool") == 1

            def refused() -> list[dict[str, Any]]:
                lines = [json.loads(line) for line in gw.log_lines() if line.startswith("{")]
                return [a for a in lines if a.get("component") == "catalogi" and a.get("status") == 503]

            wait_until(lambda: len(refused()) == 1, 10)
            assert (refused()[0]["error"], refused()[0]["upstream_status"]) == ("pool", None)
        finally:
            held.set()
        assert [f.result(30).status_code for f in [*admitted, first]] == [200, 200, 200]


def test_circuit_breaker_opens_fails_fast_and_closes_after_a_good_probe() -> None:
    port = free_port()
    config = base_config(f"http://127.0.0.1:{port}", circuit_breaker={"failure_threshold": 2, "open_seconds": 10})
    clock = ManualClock()
    with gateway_in_thread(config, clock, GATEWAY_ENV) as (gw_url, metrics):
        url = gw_url + ZAKEN + "/zaken"
        assert [httpx.get(url, headers=KEY).status_code for _ in range(2)] == [502, 502]
        r = httpx.get(url, headers=KEY)
        assert r.status_code == 503
        assert problem(r) == "circuit-open"
        assert r.headers["retry-after"] == "10"  # the clock stands still: the whole open period is left
        exposition = metrics()
        # Refused without a try: the failed connects are still the first two requests' only.
        assert metric_value(exposition, "zgw_gateway_upstream_failures_total", component="zaken", reason="connect") == 2
        assert metric_value(exposition, "zgw_gateway_upstream_failures_total", reason="circuit_open") == 1
        assert metric_value(exposition, "zgw_gateway_circuit_state", component="zaken") == 1
        assert metric_value(exposition, "zgw_gateway_circuit_state", component="catalogi") == 0
        rec = Recorder()
        with ThreadServer(rec, port=port):
            clock.advance(9.5)
            r = httpx.get(url, headers=KEY)
            assert (r.status_code, r.headers["retry-after"]) == (503, "1")
            assert rec.arrived == []  # up again, but not tried before open_seconds
            clock.advance(0.5)
            assert httpx.get(url, headers=KEY).status_code == 200  # the half-open probe
            assert metric_value(metrics(), "zgw_gateway_circuit_state", component="zaken") == 0
            assert httpx.get(url, headers=KEY).status_code == 200
            assert len(rec.arrived) == 2


@contextlib.contextmanager
def in_process(
    gateway_clock: ManualClock, sandbox_clock: ManualClock, jwt_expiry: int = 3600
) -> Iterator[tuple[str, Callable[[], str]]]:
    """The gateway app and the sandbox in threads, each on its own clock; yields the gateway URL."""
    sandbox = create_sandbox_app({CLIENT_ID: SECRET}, jwt_expiry=jwt_expiry, clock=sandbox_clock)
    with ThreadServer(sandbox) as up, gateway_in_thread(base_config(up.url), gateway_clock, GATEWAY_ENV) as gw:
        yield gw


def test_upstream_jwt_expired_evicts_remints_and_retries_once() -> None:
    gclock = ManualClock()
    sclock = ManualClock(gclock.now)
    with in_process(gclock, sclock, jwt_expiry=60) as (url, metrics):
        assert httpx.get(url + ZAKEN + "/zaken", headers=KEY).status_code == 200
        # Both clocks move on 100 s: the cached token (refresh due after 270 s) is now too old for an
        # upstream whose JWT_EXPIRY is 60 s.
        gclock.advance(100)
        sclock.advance(100)
        r = httpx.get(url + ZAKEN + "/zaken", headers=KEY)
        assert r.status_code == 200
        assert metric_value(metrics(), "zgw_gateway_upstream_retries_total", reason="token_expired") == 1
        assert metric_value(metrics(), "zgw_gateway_tokens_minted_total") == 2
        # A POST is replayable too when its body was read whole.
        gclock.advance(100)
        sclock.advance(100)
        r = httpx.post(url + ZAKEN + "/zaken", headers=KEY, json={})
        assert r.status_code != 403
        assert metric_value(metrics(), "zgw_gateway_upstream_retries_total", reason="token_expired") == 2


@pytest.mark.parametrize("skew", [60, -60], ids=["gateway-ahead", "gateway-behind"])
def test_clock_skew_of_a_minute_keeps_requests_succeeding(skew: int) -> None:
    sandbox_clock = ManualClock()
    with in_process(ManualClock(sandbox_clock.now + skew), sandbox_clock) as (url, metrics):
        for _ in range(3):
            assert httpx.get(url + ZAKEN + "/zaken", headers=KEY).status_code == 200
        assert metric_absent(metrics(), "zgw_gateway_upstream_forbidden_total")  # no 403 at all


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
        codes: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(headers=KEY, timeout=30) as client:
                while not stop.is_set():
                    codes.append(client.get(gw.url + ZAKEN + "/zaken").status_code)

        worker = threading.Thread(target=load)
        worker.start()
        try:
            wait_until(lambda: len(codes) >= 10, 10)  # the load runs on the old secret
            checker.accepted = [old, new]  # the upstream learns the new secret first
            _k8s_secret(secret_dir, "legacy-dms", new, "2024_02_01")
            wait_until(lambda: checker.verified[-1:] == [new], 10)  # the next poll picked it up
            checker.accepted = [new]  # then forgets the old one
            answered = len(codes)
            wait_until(lambda: len(codes) >= answered + 20, 10)  # and the load goes on
        finally:
            stop.set()
            worker.join(10)
        assert [code for code in codes if code != 200] == []
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
