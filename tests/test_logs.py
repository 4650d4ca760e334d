"""End to end: the gateway's log lines - one JSON access line per request, lifecycle events, level and format."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from conftest import ALL_SECRETS, API_KEY, base_config
from servers import GatewayProcess, metric_value, wait_until

from gateway.dataplane.exchange import instance

ACCESS_FIELDS = {
    "time",
    "level",
    "msg",
    "request_id",
    "trace_id",
    "client",
    "caller",
    "component",
    "resource",
    "method",
    "path",
    "status",
    "upstream_status",
    "source",
    "bytes_in",
    "bytes_out",
    "duration",
    "upstream_duration",
    "error",
}
ZAAK_ID = "0f5b7d9a-1c3e-4a5b-8c7d-9e0f1a2b3c4d"


def _json_lines(gw: GatewayProcess) -> list[dict[str, Any]]:
    """Every line the process wrote, each parsed (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in gw.log_lines() if line.strip()]


def _access(gw: GatewayProcess, request_id: str) -> dict[str, Any]:
    def found() -> bool:
        return any(line.get("request_id") == request_id for line in _json_lines(gw))

    wait_until(found, 5)
    [line] = [line for line in _json_lines(gw) if line.get("request_id") == request_id]
    return line


def _events(gw: GatewayProcess, event: str) -> list[dict[str, Any]]:
    return [line for line in _json_lines(gw) if line.get("event") == event]


def test_one_json_access_line_per_request_with_its_fields(gateway: GatewayProcess) -> None:
    started = time.perf_counter()
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        ok = client.get("/zaken/api/v1/zaken", headers={"X-API-Key": API_KEY, "User-Agent": "legacy/1.0"})
        missing = client.get(f"/zaken/api/v1/zaken/{ZAAK_ID}?expand=x", headers={"X-API-Key": API_KEY})
        body = b'{"bronorganisatie": "123456782"}'
        post = client.post(
            "/zaken/api/v1/zaken",
            headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
            content=body,
        )
        unknown = client.get("/zaken/api/v1/zaken", headers={"X-API-Key": "wrong"})
        no_route = client.get("/elsewhere")

    line = _access(gateway, ok.headers["x-request-id"])
    observed = time.perf_counter() - started  # from before the request was sent until its line was read
    assert set(line) >= ACCESS_FIELDS, ACCESS_FIELDS - set(line)
    assert line["logger"] == "zgw_gateway.access"
    assert line["caller"] == "legacy-dms" and line["component"] == "zaken" and line["resource"] == "zaken"
    assert (line["method"], line["path"], line["status"], line["upstream_status"]) == (
        "GET",
        "/zaken/api/v1/zaken",
        200,
        200,
    )
    assert line["source"] == "upstream" and line["error"] is None
    assert line["bytes_in"] == 0 and line["bytes_out"] == len(ok.content)
    assert 0 < line["upstream_duration"] <= line["duration"] <= observed  # seconds, measured inside that span
    assert len(line["trace_id"]) == 32
    assert "headers" not in line  # no headers unless allow-listed
    assert "legacy/1.0" not in gateway.logs()

    # The path is a template (ids folded) and the query string is never logged.
    line = _access(gateway, missing.headers["x-request-id"])
    assert line["path"] == "/zaken/api/v1/zaken/{id}"
    assert ZAAK_ID not in gateway.logs() and "expand" not in gateway.logs()
    assert (line["status"], line["upstream_status"]) == (404, 404)

    line = _access(gateway, post.headers["x-request-id"])
    assert line["method"] == "POST" and line["bytes_in"] == len(body)
    assert line["status"] == post.status_code

    line = _access(gateway, unknown.headers["x-request-id"])
    assert (line["caller"], line["status"], line["source"], line["upstream_status"]) == (
        "unknown",
        401,
        "gateway",
        None,
    )
    assert line["error"] == "unknown-caller"
    line = _access(gateway, no_route.headers["x-request-id"])
    assert (line["component"], line["status"], line["error"]) == ("none", 404, "no-route")

    access = [line for line in _json_lines(gateway) if line.get("logger") == "zgw_gateway.access"]
    assert len(access) == 5


def test_allow_listed_headers_and_only_those(sandbox: str, gateway_factory: Callable[..., GatewayProcess]) -> None:
    config = base_config(sandbox, log={"headers": ["User-Agent", "X-Correlation-ID"]})
    gw = gateway_factory(config)
    r = httpx.get(
        gw.url + "/zaken/api/v1/zaken",
        headers={
            "X-API-Key": API_KEY,
            "User-Agent": "legacy-dms/2.3",
            "X-Correlation-ID": "corr-42",
            "X-Not-Listed": "not-for-the-log",
        },
        timeout=10,
    )
    assert r.status_code == 200
    line = _access(gw, r.headers["x-request-id"])
    assert line["headers"] == {"user-agent": "legacy-dms/2.3", "x-correlation-id": "corr-42"}
    assert "not-for-the-log" not in gw.logs()
    assert API_KEY not in gw.logs()


def test_startup_reload_and_shutdown_are_logged(sandbox: str, gateway_factory: Callable[..., GatewayProcess]) -> None:
    # Polling effectively off: only SIGHUP reloads here, so every count below is exact.
    gw = gateway_factory(base_config(sandbox, secrets={"poll_seconds": 3600}))
    [startup] = _events(gw, "startup")
    assert startup["components"] == ["catalogi", "documenten", "zaken"]
    assert startup["callers"] == ["legacy-dms", "reporting"]

    gw.config["token"] = {"lifetime": 200, "clock_skew": 30}
    gw.config["components"]["zaken2"] = {
        "prefix": "/v2/zaken/api/v1",
        "upstream": f"{sandbox}/zaken/api/v1",
        "crs": "EPSG:4326",
    }
    gw.config["callers"][0]["components"].append("zaken2")
    gw.write_config()
    gw.signal(signal.SIGHUP)
    wait_until(lambda: _events(gw, "config_reload"), 10)
    [reload] = _events(gw, "config_reload")
    assert reload["reason"] == "SIGHUP"
    assert reload["changed"] == ["callers", "components", "token"]
    r = httpx.get(gw.url + "/v2/zaken/api/v1/zaken", headers={"X-API-Key": API_KEY}, timeout=10)
    assert r.status_code == 200  # the new component serves

    gw.config["callers"][0]["bogus"] = True
    gw.write_config()
    gw.signal(signal.SIGHUP)
    wait_until(lambda: _events(gw, "config_reload_failed"), 10)
    [failed] = _events(gw, "config_reload_failed")
    assert failed["level"] == "error"
    assert failed["errors"] == ["callers[0].bogus: unknown key"]
    r = httpx.get(gw.url + "/v2/zaken/api/v1/zaken", headers={"X-API-Key": API_KEY}, timeout=10)
    assert r.status_code == 200  # still serving the last good config
    exposition = gw.metrics()
    assert metric_value(exposition, "zgw_gateway_config_reloads_total", result="failure") == 1
    assert metric_value(exposition, "zgw_gateway_config_reloads_total", result="success") == 1
    assert httpx.get(gw.admin_url + "/-/ready", timeout=5).status_code == 200

    gw.signal(signal.SIGTERM)
    assert gw.proc is not None and gw.proc.wait(15) == 0
    shutdown = _events(gw, "shutdown")
    assert [line["msg"] for line in shutdown] == ["draining", "stopped"]
    logs = gw.logs()
    assert not [s for s in ALL_SECRETS if s in logs]


def test_a_changed_config_file_reloads_without_a_signal(
    sandbox: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    gw = gateway_factory(base_config(sandbox))
    gw.config["callers"][1]["methods"] = ["GET", "HEAD", "OPTIONS"]
    gw.write_config()
    wait_until(lambda: _events(gw, "config_reload"), 10)
    [reload] = _events(gw, "config_reload")
    assert (reload["reason"], reload["changed"]) == ("file changed", ["callers"])


def test_console_format(sandbox: str, gateway_factory: Callable[..., GatewayProcess]) -> None:
    gw = gateway_factory(base_config(sandbox, log={"format": "console"}))
    r = httpx.get(gw.url + "/zaken/api/v1/zaken", headers={"X-API-Key": API_KEY}, timeout=10)
    assert r.status_code == 200
    request_id = r.headers["x-request-id"]
    wait_until(lambda: request_id in gw.logs(), 5)
    [line] = [line for line in gw.log_lines() if request_id in line]
    assert not line.startswith("{")
    assert "INFO" in line and "zgw_gateway.access: request" in line
    assert "caller=legacy-dms" in line and "status=200" in line


def test_level_warning_drops_info_lines(sandbox: str, gateway_factory: Callable[..., GatewayProcess]) -> None:
    gw = gateway_factory(base_config(sandbox, log={"level": "warning"}))
    assert httpx.get(gw.url + "/zaken/api/v1/zaken", headers={"X-API-Key": API_KEY}, timeout=10).status_code == 200
    gw.config["callers"][0]["bogus"] = True
    gw.write_config()
    wait_until(lambda: _events(gw, "config_reload_failed"), 10)
    lines = _json_lines(gw)
    # the failed reload and the start's warning that this level drops the access lines; nothing at info
    assert {line["level"] for line in lines} == {"error", "warning"}
    assert [line.get("event") for line in lines if line["level"] == "warning"] == ["config_warning"]


class CountingStream:
    """An unbuffered stdout, as in the image (PYTHONUNBUFFERED=1): every write is a write(2)."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_the_access_writer_batches_lines_whatever_the_stream_buffers() -> None:
    import asyncio

    from gateway.dataplane import logs

    stream = CountingStream()
    writer = logs._AccessWriter(stream, "json")

    async def burst() -> None:
        flushed = asyncio.Event()
        for i in range(200):
            writer.write({"request_id": str(i)})
        assert stream.writes == []  # nothing yet: the lines wait in the writer's own buffer
        asyncio.get_running_loop().call_later(logs.FLUSH_SECONDS, flushed.set)  # scheduled after the writer's
        await flushed.wait()

    asyncio.run(burst())
    assert len(stream.writes) == 1
    lines = stream.writes[0].splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [str(i) for i in range(200)]
    big = {"request_id": "x" * 1000}
    for _ in range(logs.FLUSH_BYTES // 1000 + 1):
        writer.write(big)  # outside a loop each line is flushed at once; past FLUSH_BYTES in any case
    assert len(stream.writes) > 1


def test_a_refusal_names_its_access_line_with_a_valid_uuid(gateway: GatewayProcess) -> None:
    """The problem's instance is an RFC 9562 UUID (version 4, variant 10) whose digits are the request id."""
    refused = httpx.get(gateway.url + "/zaken/api/v1/zaken", headers={"X-API-Key": "not-a-key"}, timeout=10)
    urn = refused.json()["instance"]
    assert urn.startswith("urn:uuid:")
    found = uuid.UUID(urn)
    assert (found.version, found.variant) == (4, uuid.RFC_4122)
    assert _access(gateway, found.hex)["status"] == 401
    assert refused.headers["x-request-id"] == found.hex


@pytest.mark.parametrize(
    "request_id",
    ["nginx-req-17", "0" * 32, "5f2cd0a1b2c3d4e5f60718293a4b5c6d", "E3B0C442-98FC-0C14-7AFB-F4C8996FB924"],
)
def test_a_request_id_from_a_trusted_proxy_gives_a_valid_uuid_too(request_id: str) -> None:
    """Ids that are no RFC 9562 UUID become a UUIDv8: of their own hex digits when they have 32 (the first
    twelve stay, so the id can be found), else of their hash; a proxy's valid UUID is kept as it is."""
    found = uuid.UUID(instance(request_id))
    assert found.variant == uuid.RFC_4122
    assert found.version == 8
    if len(request_id) == 32:
        assert found.hex[:12] == request_id[:12]


def test_a_valid_uuid_from_a_trusted_proxy_is_the_instance() -> None:
    given = uuid.uuid4()
    assert instance(str(given)) == instance(given.hex) == given.urn
