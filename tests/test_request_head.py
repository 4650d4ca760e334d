"""The request head at the edge: a 401 names the schemes that work, the head limit covers the request line,
and granian's own cap on the number of header fields (issue 20, point 6; docs/security.md)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import httpx
import pytest
from conftest import API_KEY, base_config
from servers import GatewayProcess, ThreadServer
from test_security import Recorder, raw_request

ZAKEN = "/zaken/api/v1/zaken"
# Granian (hyper) refuses a request with more header fields than this before the app sees it; it has no
# setting for it (measured below, documented in docs/security.md).
GRANIAN_MAX_HEADERS = 100


@pytest.fixture
def upstream() -> Iterator[tuple[Recorder, str]]:
    rec = Recorder()
    with ThreadServer(rec) as up:
        yield rec, up.url


@pytest.fixture
def gw(upstream: tuple[Recorder, str], gateway_factory: Callable[..., GatewayProcess]) -> GatewayProcess:
    config = base_config(upstream[1], identity={"api_key_header": "X-Gateway-Key"})
    return gateway_factory(config)


def test_a_401_challenges_with_basic_and_the_api_key_header_and_both_work(
    gw: GatewayProcess, upstream: tuple[Recorder, str]
) -> None:
    r = httpx.get(gw.url + ZAKEN)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers.get_list("www-authenticate") == [
        'Basic realm="zgw-gateway"',
        'ApiKey realm="zgw-gateway", header="X-Gateway-Key"',
    ]
    assert httpx.get(gw.url + ZAKEN, headers={"X-Gateway-Key": "wrong"}).headers.get_list("www-authenticate")
    # What the challenges say is accurate: each way in is accepted.
    assert httpx.get(gw.url + ZAKEN, headers={"X-Gateway-Key": API_KEY}).status_code == 200
    basic = base64.b64encode(f"anyone:{API_KEY}".encode()).decode()
    assert httpx.get(gw.url + ZAKEN, headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert "www-authenticate" not in httpx.get(gw.url + "/nowhere").headers  # 404: no challenge


def _get(gw: GatewayProcess, target: str, headers: list[str] = ()) -> tuple[int | None, dict[str, str]]:  # type: ignore[assignment]
    lines = [f"GET {target} HTTP/1.1", "Host: gw", f"X-Gateway-Key: {API_KEY}", "Connection: close", *headers]
    reply = raw_request(gw.port, ("\r\n".join(lines) + "\r\n\r\n").encode(), timeout=10)
    return reply.status, reply.headers


def test_the_head_limit_covers_the_request_line(gw: GatewayProcess, upstream: tuple[Recorder, str]) -> None:
    rec, _ = upstream
    limit = 16384  # limits.max_header_bytes, the default
    status, headers = _get(gw, ZAKEN + "?q=" + "a" * (17 * 1024))  # a 17 KB target, headers small
    assert (status, headers["content-type"]) == (414, "application/problem+json")
    # Target under the limit, but the request line and the header fields together over it.
    status, headers = _get(gw, ZAKEN + "?q=" + "a" * 10000, [f"X-Filler: {'b' * (limit - 10000)}"])
    assert (status, headers["content-type"]) == (431, "application/problem+json")
    assert rec.arrived == []
    status, _ = _get(gw, ZAKEN + "?q=" + "a" * 10000, [f"X-Filler: {'b' * (limit - 10200)}"])
    assert status == 200
    assert len(rec.arrived) == 1


@pytest.mark.parametrize("fields", [GRANIAN_MAX_HEADERS, GRANIAN_MAX_HEADERS + 1])
def test_granian_refuses_more_header_fields_than_its_cap_with_a_bare_431_and_no_access_line(
    gw: GatewayProcess, upstream: tuple[Recorder, str], fields: int
) -> None:
    rec, _ = upstream
    status, headers = _get(gw, ZAKEN, [f"X-F{i}: v" for i in range(fields - 3)])  # with Host, key, Connection
    gw.stop()  # flushes the access log
    access = [line for line in gw.log_lines() if '"request_id"' in line]
    if fields <= GRANIAN_MAX_HEADERS:
        assert (status, len(rec.arrived), len(access)) == (200, 1, 1)
        return
    assert status == 431
    assert "application/problem+json" not in headers.get("content-type", "")  # granian's, not the gateway's
    assert (len(rec.arrived), access) == (0, [])  # the gateway never saw it
