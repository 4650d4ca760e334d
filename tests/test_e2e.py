"""End to end: a legacy caller with no token reaches the sandbox (strict like Open Zaak) through the gateway."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from conftest import API_KEY, CLIENT_ID, OTHER_CLIENT_ID, READONLY_KEY, SECRET, base_config
from servers import GatewayProcess, ThreadServer, metric_value, rss
from zgw_sandbox import ZAAKTYPE_UUID

KEY = {"X-API-Key": API_KEY}


def sandbox_requests(sandbox: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{sandbox}/_sandbox/requests").json())


def clear_sandbox(sandbox: str) -> None:
    httpx.delete(f"{sandbox}/_sandbox/requests")


def zaak_body(zaaktype: str) -> dict[str, Any]:
    return {
        "bronorganisatie": "517439943",
        "verantwoordelijkeOrganisatie": "517439943",
        "startdatum": "2026-11-28",
        "zaaktype": zaaktype,
        "omschrijving": "Aanvraag via de gateway",
    }


def test_the_api_guide_steps_work_without_a_token(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.url, headers=KEY, timeout=10) as client:
        catalogussen = client.get("/catalogi/api/v1/catalogussen")
        assert catalogussen.status_code == 200, catalogussen.text
        zaaktype_url = catalogussen.json()["results"][0]["zaaktypen"][0]
        zaaktype = client.get("/catalogi/api/v1/zaaktypen/" + zaaktype_url.rsplit("/", 1)[1])
        assert zaaktype.status_code == 200
        assert zaaktype.json()["url"] == zaaktype_url

        listed = client.get("/zaken/api/v1/zaken")  # no Accept-Crs from the caller: the gateway adds it
        assert listed.status_code == 200, listed.text
        assert listed.headers["content-crs"] == "EPSG:4326"

        created = client.post("/zaken/api/v1/zaken", json=zaak_body(zaaktype_url))
        assert created.status_code == 201, created.text
        zaak = created.json()
        read = client.get("/zaken/api/v1/zaken/" + zaak["uuid"])
        assert read.status_code == 200
        assert read.json()["omschrijving"] == "Aanvraag via de gateway"

        iot = client.get("/catalogi/api/v1/informatieobjecttypen").json()["results"][0]["url"]
        content = b"%PDF-1.4 zaakdocument\n" * 100
        document = client.post(
            "/documenten/api/v1/enkelvoudiginformatieobjecten",
            json={
                "bronorganisatie": "517439943",
                "creatiedatum": "2026-11-28",
                "titel": "Aanvraag",
                "auteur": "Legacy DMS",
                "taal": "nld",
                "informatieobjecttype": iot,
                "bestandsnaam": "aanvraag.pdf",
                "formaat": "application/pdf",
                "inhoud": base64.b64encode(content).decode(),
            },
        )
        assert document.status_code == 201, document.text
        uuid = document.json()["url"].rsplit("/", 1)[1]
        download = client.get(f"/documenten/api/v1/enkelvoudiginformatieobjecten/{uuid}/download")
        assert download.status_code == 200
        assert download.content == content
        assert download.headers["content-type"] == "application/octet-stream"
        assert download.headers["content-disposition"].startswith('attachment; filename="')
        assert int(download.headers["content-length"]) == len(content)
        etag = download.headers["etag"]
        again = client.get(
            f"/documenten/api/v1/enkelvoudiginformatieobjecten/{uuid}/download", headers={"If-None-Match": etag}
        )
        assert again.status_code == 304


def test_the_token_has_exactly_the_zgw_format(gateway: GatewayProcess, sandbox: str) -> None:
    clear_sandbox(sandbox)
    before = time.time()
    assert httpx.get(gateway.url + "/catalogi/api/v1/catalogussen", headers=KEY).status_code == 200
    after = time.time()
    seen = [r for r in sandbox_requests(sandbox) if r["path"].endswith("/catalogussen")][-1]
    auth = seen["headers"]["authorization"]
    assert auth["header"] == {"alg": "HS256", "typ": "JWT"}
    claims = auth["claims"]
    assert set(claims) == {"iss", "iat", "client_id", "user_id", "user_representation", "exp"}
    assert claims["iss"] == claims["client_id"] == CLIENT_ID
    assert claims["user_id"] == ""
    assert claims["user_representation"] == "Legacy DMS"
    assert int(before) - 30 <= claims["iat"] <= after - 30  # minted in between, back-dated by token.clock_skew
    assert claims["exp"] - (claims["iat"] + 30) == 300


def test_upstream_authentication_failures_pass_through_unchanged(
    sandbox: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    """docs/zgw.md, "403 codes", from the gateway's side: the upstream's 403 and its code reach the caller as sent."""
    config = base_config(sandbox)
    config["callers"][0]["client_id"] = "not-known-upstream"
    config["callers"][1]["secret"] = {"env": "WRONG_SECRET"}
    gw = gateway_factory(config, env={"WRONG_SECRET": "a-secret-the-upstream-does-not-have-0123456789"})
    unknown = httpx.get(gw.url + "/zaken/api/v1/zaken", headers=KEY)
    assert unknown.status_code == 403
    assert unknown.json()["code"] == "invalid-client-identifier"
    wrong = httpx.get(gw.url + "/zaken/api/v1/zaken", headers={"X-API-Key": READONLY_KEY})
    assert wrong.status_code == 403
    assert wrong.json()["code"] == "invalid-jwt-signature"
    assert "www-authenticate" not in wrong.headers
    exposition = gw.metrics()
    assert metric_value(exposition, "zgw_gateway_upstream_forbidden_total", code="invalid-jwt-signature") == 1
    assert metric_value(exposition, "zgw_gateway_upstream_forbidden_total", code="invalid-client-identifier") == 1


def test_gateway_refusals(gateway: GatewayProcess, sandbox: str) -> None:
    clear_sandbox(sandbox)
    no_route = httpx.get(gateway.url + "/besluiten/api/v1/besluiten", headers=KEY)
    assert no_route.status_code == 404
    assert no_route.headers["content-type"] == "application/problem+json"
    assert no_route.json()["code"] == "no-route"
    unknown = httpx.get(gateway.url + "/zaken/api/v1/zaken", headers={"X-API-Key": "not-a-key"})
    assert unknown.status_code == 401
    assert set(unknown.json()) == {"type", "code", "title", "status", "detail", "instance"}
    forbidden = httpx.get(gateway.url + "/catalogi/api/v1/catalogussen", headers={"X-API-Key": READONLY_KEY})
    assert forbidden.status_code == 403
    assert forbidden.json()["code"] == "forbidden-component"
    read_only = httpx.post(gateway.url + "/zaken/api/v1/zaken", headers={"X-API-Key": READONLY_KEY}, json={})
    assert read_only.status_code == 403
    assert read_only.json()["code"] == "forbidden-method"
    assert httpx.get(gateway.url + "/zaken/api/v1/zaken", headers={"X-API-Key": READONLY_KEY}).status_code == 200
    basic = httpx.get(gateway.url + "/zaken/api/v1/zaken", auth=("legacy", API_KEY))
    assert basic.status_code == 200
    assert [r["path"] for r in sandbox_requests(sandbox)] == ["/zaken/api/v1/zaken", "/zaken/api/v1/zaken"]


def test_crs_headers_added_when_absent_and_never_overwritten(gateway: GatewayProcess, sandbox: str) -> None:
    clear_sandbox(sandbox)
    assert httpx.get(gateway.url + "/zaken/api/v1/zaken", headers=KEY).status_code == 200
    wrong = httpx.get(gateway.url + "/zaken/api/v1/zaken", headers={**KEY, "Accept-Crs": "EPSG:28992"})
    assert wrong.status_code == 406  # the caller's value reached the server, which refused it
    assert httpx.get(gateway.url + "/catalogi/api/v1/catalogussen", headers=KEY).status_code == 200
    seen = sandbox_requests(sandbox)
    assert seen[0]["headers"]["accept-crs"] == "EPSG:4326"
    assert seen[0]["headers"]["content-crs"] == "EPSG:4326"
    assert seen[1]["headers"]["accept-crs"] == "EPSG:28992"
    assert "accept-crs" not in seen[2]["headers"] and "content-crs" not in seen[2]["headers"]
    assert metric_value(gateway.metrics(), "zgw_gateway_crs_rejections_total", code="406") == 1


def test_end_users_from_headers_reach_the_audit_trail(gateway: GatewayProcess, sandbox: str) -> None:
    zaaktype = f"{sandbox}/catalogi/api/v1/zaaktypen/{ZAAKTYPE_UUID}"
    with httpx.Client(base_url=gateway.url, headers=KEY, timeout=10) as client:
        created = client.post(
            "/zaken/api/v1/zaken",
            json=zaak_body(zaaktype),
            headers={"X-ZGW-User-Id": "alice", "X-ZGW-User-Representation": "Alice de Vries"},
        )
        assert created.status_code == 201, created.text
        uuid = created.json()["uuid"]
        patched = client.patch(
            f"/zaken/api/v1/zaken/{uuid}", json={"omschrijving": "bijgewerkt"}, headers={"X-ZGW-User-Id": "bob"}
        )
        assert patched.status_code == 200, patched.text
        trail = client.get(f"/zaken/api/v1/zaken/{uuid}/audittrail").json()
    users = [(entry["gebruikersId"], entry["gebruikersWeergave"]) for entry in trail]
    assert ("alice", "Alice de Vries") in users
    assert ("bob", "Legacy DMS") in users
    too_long = httpx.get(gateway.url + "/zaken/api/v1/zaken", headers={**KEY, "X-ZGW-User-Id": "x" * 256})
    assert too_long.status_code == 400
    # One token per end user: three distinct (user_id, user_representation) pairs were used on zaken.
    assert metric_value(gateway.metrics(), "zgw_gateway_tokens_minted_total", component="zaken") == 3


def test_pagination_query_strings_pass_byte_for_byte(gateway: GatewayProcess, sandbox: str) -> None:
    clear_sandbox(sandbox)
    query = "zaaktype=a&zaaktype=b&expand=zaaktype.catalogus&page=1&x=%20y%2Bz"
    httpx.get(f"{gateway.url}/zaken/api/v1/zaken?{query}", headers=KEY)
    httpx.get(f"{gateway.url}/zaken/api/v1/", headers=KEY)
    seen = sandbox_requests(sandbox)
    assert seen[0]["query"] == query
    assert seen[1]["path"] == "/zaken/api/v1/"


def test_single_flight_one_mint_for_a_cold_burst(gateway: GatewayProcess) -> None:
    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=gateway.url, headers=KEY, limits=limits, timeout=30) as client:
            responses = await asyncio.gather(*(client.get("/catalogi/api/v1/catalogussen") for _ in range(200)))
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 200
    exposition = gateway.metrics()
    assert metric_value(exposition, "zgw_gateway_tokens_minted_total", component="catalogi") == 1
    assert metric_value(exposition, "zgw_gateway_token_cache_lookups_total", result="hit") == 199


def test_expired_token_is_evicted_reminted_and_retried_once() -> None:
    """An upstream that says jwt-expired gets one retry with a fresh token (gateway clock moved on)."""
    from prometheus_client import CollectorRegistry
    from zgw_sandbox import create_sandbox_app

    from gateway.config.loading import parse
    from gateway.dataplane.app import create_app

    now = time.time()
    gateway_clock = [now]
    sandbox_clock = [now]
    # A vendor whose JWT_EXPIRY (100 s) is shorter than the gateway's token lifetime (300 s).
    sandbox_app = create_sandbox_app({CLIENT_ID: SECRET}, jwt_expiry=100, clock=lambda: sandbox_clock[0])
    with ThreadServer(sandbox_app) as upstream:
        config = parse(base_config(upstream.url))
        registry = CollectorRegistry()
        app = create_app(
            config,
            registry=registry,
            clock=lambda: gateway_clock[0],
            environ={
                "TEST_API_KEY": API_KEY,
                "TEST_ZGW_SECRET": SECRET,
                "TEST_READONLY_KEY": READONLY_KEY,
                "TEST_OTHER_SECRET": "x" * 32,
            },
        )
        with ThreadServer(app) as gw:
            url = gw.url + "/catalogi/api/v1/catalogussen"
            assert httpx.get(url, headers=KEY).status_code == 200
            gateway_clock[0] = sandbox_clock[0] = now + 80  # cached token (iat now-30): 110 s old upstream
            second = httpx.get(url, headers=KEY)
            assert second.status_code == 200, second.text
            minted = registry.get_sample_value(
                "zgw_gateway_tokens_minted_total", {"caller": "legacy-dms", "component": "catalogi"}
            )
            retries = registry.get_sample_value(
                "zgw_gateway_upstream_retries_total", {"component": "catalogi", "reason": "token_expired"}
            )
            assert (minted, retries) == (2, 1)
            sandbox_clock[0] = now + 10_000  # every token the gateway can mint now is too old: one retry only
            third = httpx.get(url, headers=KEY)
            assert third.status_code == 403
            assert third.json()["code"] == "jwt-expiredsignatureerror"
            retries = registry.get_sample_value(
                "zgw_gateway_upstream_retries_total", {"component": "catalogi", "reason": "token_expired"}
            )
            assert retries == 2


def test_other_client_credentials_per_component(sandbox: str, gateway_factory: Callable[..., GatewayProcess]) -> None:
    config = base_config(sandbox)
    config["callers"][0]["credentials"] = {
        "documenten": {"client_id": OTHER_CLIENT_ID, "secret": {"env": "TEST_OTHER_SECRET"}}
    }
    gw = gateway_factory(config)
    clear_sandbox(sandbox)
    assert httpx.get(gw.url + "/documenten/api/v1/enkelvoudiginformatieobjecten", headers=KEY).status_code == 200
    assert httpx.get(gw.url + "/zaken/api/v1/zaken", headers=KEY).status_code == 200
    seen = sandbox_requests(sandbox)
    assert seen[0]["headers"]["authorization"]["claims"]["client_id"] == OTHER_CLIENT_ID
    assert seen[1]["headers"]["authorization"]["claims"]["client_id"] == CLIENT_ID


def test_cli_token_matches_what_the_gateway_sends(gateway: GatewayProcess) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "token",
            "--config",
            str(gateway.config_path),
            "--caller",
            "legacy-dms",
            "--component",
            "zaken",
        ],
        capture_output=True,
        text=True,
        env={**gateway.env, "PATH": "/usr/bin:/bin"},
        timeout=30,
        check=True,
    )
    token = out.stdout.splitlines()[0]
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["client_id"] == CLIENT_ID
    assert SECRET not in out.stdout and SECRET not in out.stderr


@pytest.mark.parametrize("size_mib", [256])
def test_large_bodies_stream_both_ways_without_memory_growth(
    size_mib: int, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    """Upload and download of a large body through the gateway; its RSS barely moves."""
    chunk = b"\x00" * (1024 * 1024)
    received = [0]

    async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "PUT":
            while True:
                message = await receive()
                received[0] += len(message.get("body", b""))
                if not message.get("more_body"):
                    break
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": str(received[0]).encode()})
            return
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(size_mib * len(chunk)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(size_mib):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    with ThreadServer(upstream) as up:
        gw = gateway_factory(base_config(up.url))
        assert gw.proc is not None
        rss_before = rss(gw.proc.pid)
        peak = [rss_before]

        def body() -> Any:
            for _ in range(size_mib):
                peak[0] = max(peak[0], rss(gw.proc.pid))  # type: ignore[union-attr]
                yield chunk

        url = gw.url + "/documenten/api/v1/bestandsdelen/7c3f0e4a-1b2c-4d5e-8f90-123456789abc"
        headers = {**KEY, "Content-Type": "application/octet-stream", "Content-Length": str(size_mib * len(chunk))}
        up_resp = httpx.put(url, content=body(), headers=headers, timeout=120)
        assert up_resp.status_code == 200
        assert int(up_resp.text) == size_mib * len(chunk)
        total = 0
        with httpx.stream("GET", url + "/download", headers=KEY, timeout=120) as down:
            assert down.status_code == 200
            for part in down.iter_bytes(1024 * 1024):
                total += len(part)
                peak[0] = max(peak[0], rss(gw.proc.pid))
        assert total == size_mib * len(chunk)
        growth_mb = (peak[0] - rss_before) / 1e6
        assert growth_mb < 50, f"gateway RSS grew {growth_mb:.1f} MB while streaming {size_mib} MiB"


def test_metrics_carry_no_created_series(gateway: GatewayProcess, sandbox: str) -> None:
    """Issue 22: a `_created` sample per counter and histogram child doubled /metrics."""
    assert httpx.get(gateway.url + "/zaken/api/v1/zaken", headers=KEY).status_code == 200
    exposition = gateway.metrics()
    assert metric_value(exposition, "zgw_gateway_requests_total", component="zaken", code="200") >= 1
    assert [line for line in exposition.splitlines() if "_created" in line] == []
