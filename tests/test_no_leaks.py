"""End to end: after a burst of mixed traffic, no secret, API key or token shows up where an operator looks.

Searched: every line the gateway process wrote, the whole metrics exposition, and every response the
callers got (headers and bodies). Looked for: the configured API keys and ZGW secrets (also the ones a
file rotation replaced), each token the gateway minted (captured raw by a recording upstream), the caller's
own bearer token, the Basic credentials that carried an API key, a query string value and an end-user id.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from conftest import ALL_SECRETS, API_KEY, CLIENT_ID, OTHER_CLIENT_ID, READONLY_KEY, base_config
from servers import GatewayProcess, ThreadServer, metric_value, wait_until
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

FILE_KEY = "gw-test-file-key-0b8d6f4a2c9e7b5d3f1a8c6e4b2d0f9a"
ROTATED_KEY = "gw-test-rotated-key-5e3c1a9f7d5b3e1c9a7f5d3b1e9c7a5f"
FILE_SECRET = "zgw-test-file-secret-7c5a3e1f9d7b5c3a1e9f7d5b3c1a9e7d"
ROTATED_SECRET = "zgw-test-rotated-secret-1f3d5b7a9c1e3f5d7b9a1c3e5f7d9b1a"
FILER_CLIENT_ID = "gw-tests-filer-T5vR8nLm2QaX"
CALLER_BEARER = "eyJhbGciOiJIUzI1NiJ9.callers-own-token-4c2a9e7d.c2lnbmF0dXJlLW9mLXRoZS1jYWxsZXI"
QUERY_MARKER = "query-value-9d7f5b3a1c"
USER_MARKER = "user-4711-e8c6a4f2"


def _recording_upstream(seen: list[str]) -> Starlette:
    """Answers 200 to anything and keeps the raw Authorization header it received."""

    async def any_path(request: Request) -> Response:
        await request.body()
        seen.append(request.headers.get("authorization", ""))
        return JSONResponse({"count": 0, "results": []})

    return Starlette(routes=[Route("/{path:path}", any_path, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    with ThreadServer(_recording_upstream(seen)) as server:
        yield server.url, seen


def _config(sandbox: str, echo: str, key_file: Path, secret_file: Path) -> dict[str, Any]:
    config = base_config(sandbox)
    config["components"]["echo"] = {"prefix": "/echo/api/v1", "upstream": f"{echo}/echo/api/v1"}
    config["callers"][0]["components"].append("echo")
    config["callers"][1]["components"].append("echo")
    config["callers"].append(
        {
            "name": "filer",
            "api_keys": [{"file": str(key_file)}],
            "client_id": FILER_CLIENT_ID,
            "secret": {"file": str(secret_file)},
            "components": ["echo"],
        }
    )
    return config


def _basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"legacy:{password}".encode()).decode()


# (headers, method, path, expected status)
Call = tuple[dict[str, str], str, str, int]
LEGACY = {"X-API-Key": API_KEY}
USER = {"X-API-Key": API_KEY, "X-ZGW-User-Id": USER_MARKER, "X-ZGW-User-Representation": "Marker User"}
BURST: list[Call] = [
    *[(LEGACY, "GET", "/zaken/api/v1/zaken", 200)] * 10,
    *[(LEGACY, "GET", "/catalogi/api/v1/catalogussen", 200)] * 5,
    *[(LEGACY, "GET", f"/echo/api/v1/zaken?token={QUERY_MARKER}", 200)] * 10,
    *[(USER, "GET", "/zaken/api/v1/zaken", 200)] * 5,
    *[(USER, "GET", "/echo/api/v1/zaken", 200)] * 5,
    *[({"X-API-Key": READONLY_KEY}, "GET", "/zaken/api/v1/zaken", 200)] * 5,
    *[({"X-API-Key": READONLY_KEY}, "GET", "/echo/api/v1/zaken", 200)] * 5,
    *[({"X-API-Key": READONLY_KEY}, "POST", "/zaken/api/v1/zaken", 403)] * 5,
    *[({"X-API-Key": API_KEY + "x"}, "GET", "/zaken/api/v1/zaken", 401)] * 5,
    *[({"X-API-Key": READONLY_KEY[::-1]}, "GET", "/echo/api/v1/zaken", 401)] * 5,
    *[({"Authorization": _basic(API_KEY)}, "GET", "/echo/api/v1/zaken", 200)] * 5,
    *[({"Authorization": _basic(API_KEY + "x")}, "GET", "/echo/api/v1/zaken", 401)] * 5,
    *[({**LEGACY, "Authorization": f"Bearer {CALLER_BEARER}"}, "GET", "/echo/api/v1/zaken", 200)] * 5,
    *[({**LEGACY, "Authorization": f"Bearer {CALLER_BEARER}"}, "GET", "/zaken/api/v1/zaken", 200)] * 5,
    *[(LEGACY, "GET", "/no/such/api", 404)] * 5,
    *[({"X-API-Key": FILE_KEY}, "GET", "/echo/api/v1/zaken", 200)] * 10,
]
AFTER_ROTATION: list[Call] = [
    *[({"X-API-Key": ROTATED_KEY}, "GET", "/echo/api/v1/zaken", 200)] * 10,
    *[({"X-API-Key": FILE_KEY}, "GET", "/echo/api/v1/zaken", 401)] * 3,
]


def _burst(gw: GatewayProcess, calls: list[Call]) -> list[str]:
    """Send the calls from 8 threads; check each status; return every response as text (headers + body)."""

    def one(client: httpx.Client, call: Call) -> str:
        headers, method, path, expected = call
        r = client.request(method, path, headers=headers, content=b"{}" if method == "POST" else None)
        assert r.status_code == expected, (method, path, r.status_code, r.text[:300])
        return "\n".join(f"{k}: {v}" for k, v in r.headers.items()) + "\n" + r.text

    with httpx.Client(base_url=gw.url, timeout=20) as client, ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda call: one(client, call), calls))


def test_no_secret_or_token_in_logs_metrics_or_responses(
    sandbox: str,
    recorder: tuple[str, list[str]],
    gateway_factory: Callable[..., GatewayProcess],
    tmp_path: Path,
) -> None:
    echo_url, seen = recorder
    key_file, secret_file = tmp_path / "filer-key", tmp_path / "filer-secret"
    key_file.write_text(FILE_KEY + "\n")
    secret_file.write_text(FILE_SECRET + "\n")
    httpx.delete(sandbox + "/_sandbox/requests", timeout=5)
    gw = gateway_factory(_config(sandbox, echo_url, key_file, secret_file))

    responses = _burst(gw, BURST)
    key_file.write_text(ROTATED_KEY + "\n")
    secret_file.write_text(ROTATED_SECRET + "\n")
    wait_until(lambda: sum(_event(line) == "secret_reload" for line in gw.log_lines()) >= 2, 10)
    responses += _burst(gw, AFTER_ROTATION)
    exposition = gw.metrics()
    gw.stop()  # every line written, including shutdown
    logs = gw.logs()

    # The tokens that went upstream: every one the gateway minted, as the recorder shows the raw header.
    tokens = {value.removeprefix("Bearer ") for value in seen if value.startswith("Bearer ")}
    assert len(seen) == 10 + 5 + 5 + 5 + 5 + 10 + 10  # every 200 on echo, so nothing slipped past unseen
    claims = {(c["client_id"], c.get("user_id", ""), c["iat"]) for c in map(_claims, tokens)}
    assert {c[0] for c in claims} == {CLIENT_ID, OTHER_CLIENT_ID, FILER_CLIENT_ID}
    # One token per (client, secret version, user): the plain caller, its end user, reporting, filer twice.
    assert len(tokens) == 5
    minted = metric_value(exposition, "zgw_gateway_tokens_minted_total")
    assert minted == 5
    # What the sandbox received carries the same tokens (it shows claims only): nothing minted went unseen.
    journal = httpx.get(sandbox + "/_sandbox/requests", timeout=5).json()
    sandbox_claims = {
        (a["claims"]["client_id"], a["claims"].get("user_id", ""), a["claims"]["iat"])
        for entry in journal
        if isinstance(a := entry["headers"].get("authorization"), dict) and "claims" in a
    }
    assert sandbox_claims and sandbox_claims <= claims
    assert CALLER_BEARER not in "".join(seen)

    never_anywhere = [
        *ALL_SECRETS,
        FILE_KEY,
        ROTATED_KEY,
        FILE_SECRET,
        ROTATED_SECRET,
        API_KEY + "x",
        READONLY_KEY[::-1],
        CALLER_BEARER,
        _basic(API_KEY).removeprefix("Basic "),
        *tokens,
        *(token.rsplit(".", 1)[1] for token in tokens),  # the signature alone is enough to be a leak
    ]
    places = {"log": logs, "exposition": exposition, "responses": "\n".join(responses)}
    for where, text in places.items():
        leaked = [s[:12] + "..." for s in never_anywhere if s in text]
        assert not leaked, f"{where} shows {leaked}"
    for where in ("log", "exposition"):
        assert QUERY_MARKER not in places[where], where
    assert USER_MARKER not in exposition

    # The search is over real content: the burst is in the log and the exposition.
    access = [json.loads(line) for line in logs.splitlines() if '"zgw_gateway.access"' in line]
    assert len(access) == len(BURST) + len(AFTER_ROTATION)
    assert 'caller="filer"' in exposition and 'code="401"' in exposition


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def _event(line: str) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("event") if isinstance(record, dict) else None
