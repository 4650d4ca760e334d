"""The notification endpoint (gateway.dataplane.notifications): probes, the auth check, relaying, failures, records.

A fake Open Notificaties (httpx here) posts to the gateway; a plain legacy receiver (tests/receiver.py)
records what arrives. tests/test_opennotificaties.py runs the same against the real Open Notificaties.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import API_KEY, GATEWAY_ENV, base_config
from receiver import LegacyReceiver
from servers import GatewayProcess, ManualClock, ThreadServer, free_port, gateway_in_thread, metric_value, wait_until

from gateway.config.loading import ConfigError, parse

AUTH = "Token on-to-gateway-7f3a9c1e5b2d4f6a8c0e"
RECEIVER_KEY = "receiver-own-key-2b4d6f8a0c1e3a5c"
UPSTREAM = "http://openzaak.test:8000"
ENV = {**GATEWAY_ENV, "NOTIFY_AUTH": AUTH, "RECEIVER_KEY": RECEIVER_KEY, "RECEIVER_PASSWORD": "receiver-pw-9e8d7c"}
ZAAK = f"{UPSTREAM}/zaken/api/v1/zaken/5e7c2b9d-3f1a-4c8e-8d2b-7a6f4e1c9b02"
PROBE = {
    "kanaal": "test",
    "hoofdObject": "http://some.hoofdobject.nl/",
    "resource": "some_resource",
    "resourceUrl": "http://some.resource.nl/",
    "actie": "create",
    "aanmaakdatum": "2019-01-01T12:00:00Z",
    "kenmerken": {},
}
NOTIFICATION = {
    "kanaal": "zaken",
    "hoofdObject": ZAAK,
    "resource": "zaak",
    "resourceUrl": ZAAK,
    "actie": "create",
    "aanmaakdatum": "2026-11-29T12:00:00Z",
    "kenmerken": {"bronorganisatie": "517439943", "zaaktype": f"{UPSTREAM}/catalogi/api/v1/zaaktypen/1"},
}
M = "zgw_gateway_notifications_total"


def config(deliver_to: str, **notifications: Any) -> dict[str, Any]:
    cfg = base_config(UPSTREAM)
    for component in cfg["components"].values():
        component["rewrite_urls"] = True
    cfg["callers"][0]["notifications"] = {
        "auth": {"env": "NOTIFY_AUTH"},
        "deliver_to": deliver_to,
        "api_key": {"header": "X-API-Key", "value": {"env": "RECEIVER_KEY"}},
        "kanalen": [{"naam": "zaken", "filters": {"bronorganisatie": "517439943"}}],
        **notifications,
    }
    return cfg


@pytest.fixture
def receiver() -> Iterator[tuple[LegacyReceiver, str]]:
    legacy = LegacyReceiver(api_key=RECEIVER_KEY)
    with ThreadServer(legacy) as server:
        yield legacy, server.url + "/zgw/notify"


def deliver(url: str, body: dict[str, Any], auth: str | None = AUTH, path: str = "legacy-dms") -> httpx.Response:
    headers = {"Authorization": auth} if auth is not None else {}
    return httpx.post(f"{url}/-/notifications/{path}", json=body, headers=headers, timeout=10)


def test_the_probes_of_a_new_abonnement_pass_and_reach_no_receiver(receiver: tuple[LegacyReceiver, str]) -> None:
    legacy, target = receiver
    with gateway_in_thread(config(target), ManualClock(), ENV) as (url, metrics):
        first = deliver(url, PROBE, auth=None)  # Open Notificaties: must be 401 or 403
        second = deliver(url, PROBE)  # then with the abonnement's auth: must be 200-209
        exposition = metrics()
    assert first.status_code == 401
    assert first.json()["code"] == "notification-unauthorized"
    assert second.status_code == 204
    assert legacy.received == [] and legacy.refused == 0
    assert metric_value(exposition, M, caller="legacy-dms", outcome="unauthenticated") == 1
    assert metric_value(exposition, M, caller="legacy-dms", outcome="probe") == 1


def test_a_delivery_reaches_the_receiver_with_public_urls_and_its_own_key(
    receiver: tuple[LegacyReceiver, str], caplog: pytest.LogCaptureFixture
) -> None:
    legacy, target = receiver
    cfg = config(target)
    public = cfg["public_url"]
    with caplog.at_level(logging.INFO), gateway_in_thread(cfg, ManualClock(), ENV) as (url, metrics):
        answer = deliver(url, NOTIFICATION)
        exposition = metrics()
    assert answer.status_code == 204, answer.text
    [got] = legacy.received
    assert got.body["resourceUrl"] == f"{public}/zaken/api/v1/zaken/5e7c2b9d-3f1a-4c8e-8d2b-7a6f4e1c9b02"
    assert got.body["hoofdObject"] == got.body["resourceUrl"]
    assert got.body["kenmerken"]["zaaktype"] == f"{public}/catalogi/api/v1/zaaktypen/1"
    assert got.body["kanaal"] == "zaken" and got.body["kenmerken"]["bronorganisatie"] == "517439943"
    assert got.headers["x-api-key"] == RECEIVER_KEY
    assert "authorization" not in got.headers  # Open Notificaties' auth value stays at the gateway
    assert got.headers["x-request-id"] == answer.headers["x-request-id"]
    assert metric_value(exposition, M, caller="legacy-dms", kanaal="zaken", outcome="forwarded") == 1
    assert (
        metric_value(
            exposition, "zgw_gateway_notification_relay_duration_seconds_count", caller="legacy-dms", kanaal="zaken"
        )
        == 1
    )
    [line] = [r for r in caplog.records if getattr(r, "component", None) == "notifications"]
    assert (line.caller, line.kanaal, line.outcome, line.status, line.upstream_status) == (  # type: ignore[attr-defined]
        "legacy-dms", "zaken", "forwarded", 204, 204
    )  # fmt: skip
    assert AUTH not in caplog.text and RECEIVER_KEY not in caplog.text


@pytest.mark.parametrize(
    "auth",
    [
        "Token on-to-gateway-7f3a9c1e5b2d4f6a8c0f",  # same length, last character differs
        "Token on-to-gateway",
        AUTH + "x",
        "Bearer " + AUTH,
        "",
    ],
)
def test_a_forged_delivery_is_refused_and_never_relayed(receiver: tuple[LegacyReceiver, str], auth: str) -> None:
    legacy, target = receiver
    with gateway_in_thread(config(target), ManualClock(), ENV) as (url, metrics):
        answer = deliver(url, NOTIFICATION, auth=auth)
        exposition = metrics()
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
    assert AUTH not in answer.text
    assert legacy.received == [] and legacy.refused == 0
    assert metric_value(exposition, M, caller="legacy-dms", kanaal="-", outcome="refused") == 1
    assert metric_value(exposition, M, outcome="forwarded") == 0


def test_basic_credentials_of_the_receiver_are_sent() -> None:
    legacy = LegacyReceiver(basic=("zgw", ENV["RECEIVER_PASSWORD"]))
    with ThreadServer(legacy) as server:
        cfg = config(server.url, api_key=None, basic={"username": "zgw", "password": {"env": "RECEIVER_PASSWORD"}})
        with gateway_in_thread(cfg, ManualClock(), ENV) as (url, _):
            assert deliver(url, NOTIFICATION).status_code == 204
    assert len(legacy.received) == 1 and legacy.refused == 0


def test_a_receiver_that_is_down_makes_the_answer_a_failure() -> None:
    with gateway_in_thread(config(f"http://127.0.0.1:{free_port()}/notify"), ManualClock(), ENV) as (url, metrics):
        answer = deliver(url, NOTIFICATION)
        exposition = metrics()
    assert answer.status_code == 502
    assert answer.json()["code"] == "receiver-unreachable"
    assert metric_value(exposition, M, caller="legacy-dms", kanaal="zaken", outcome="failed") == 1


@pytest.mark.parametrize(("status", "expected"), [(500, 502), (401, 502), (302, 502), (404, 502)])
def test_a_receiver_that_does_not_accept_makes_the_answer_a_failure(status: int, expected: int) -> None:
    legacy = LegacyReceiver(api_key=RECEIVER_KEY, status=status)
    with ThreadServer(legacy) as server, gateway_in_thread(config(server.url), ManualClock(), ENV) as (url, _):
        answer = deliver(url, NOTIFICATION)
    assert answer.status_code == expected
    assert answer.json()["code"] == "receiver-refused"
    assert answer.json()["detail"] == f"The receiver answered {status}."


def test_a_receiver_that_hangs_makes_the_answer_a_timeout() -> None:
    release = threading.Event()
    legacy = LegacyReceiver(api_key=RECEIVER_KEY, hold=release)
    try:
        with ThreadServer(legacy) as server:
            cfg = config(server.url, timeout=0.5)
            with gateway_in_thread(cfg, ManualClock(), ENV) as (url, _):
                answer = deliver(url, NOTIFICATION)
            assert legacy.arrived.is_set()
    finally:
        release.set()
    assert answer.status_code == 504
    assert answer.json()["code"] == "receiver-timeout"


def test_what_is_not_a_delivery_gets_a_clear_answer(receiver: tuple[LegacyReceiver, str]) -> None:
    legacy, target = receiver
    with gateway_in_thread(config(target, max_body_bytes=2048), ManualClock(), ENV) as (url, metrics):
        endpoint = f"{url}/-/notifications/legacy-dms"
        unknown = deliver(url, NOTIFICATION, path="reporting")  # a caller without notifications
        nobody = deliver(url, NOTIFICATION, path="nobody")
        get = httpx.get(endpoint, headers={"Authorization": AUTH})
        not_json = httpx.post(endpoint, content=b"kanaal=zaken", headers={"Authorization": AUTH})
        no_kanaal = deliver(url, {"resource": "zaak"})
        too_large = deliver(url, {**NOTIFICATION, "kenmerken": {"x": "y" * 4096}})
        via_proxy = httpx.get(f"{url}/-/notifications", headers={"X-API-Key": API_KEY})
        exposition = metrics()
    assert [r.status_code for r in (unknown, nobody, get, not_json, no_kanaal, too_large)] == [
        404, 404, 405, 400, 400, 413
    ]  # fmt: skip
    assert get.headers["allow"] == "POST"
    assert not_json.json()["code"] == "bad-notification"
    assert via_proxy.status_code == 404  # no component behind /-/, ever
    assert legacy.received == []
    assert metric_value(exposition, M, caller="unknown", outcome="invalid") == 2
    assert metric_value(exposition, M, caller="legacy-dms", outcome="invalid") == 4


def test_a_kanaal_outside_the_config_is_relayed_under_other(receiver: tuple[LegacyReceiver, str]) -> None:
    legacy, target = receiver
    with gateway_in_thread(config(target), ManualClock(), ENV) as (url, metrics):
        assert deliver(url, {**NOTIFICATION, "kanaal": "documenten-" + "x" * 80}).status_code == 204
        exposition = metrics()
    assert metric_value(exposition, M, caller="legacy-dms", kanaal="other", outcome="forwarded") == 1
    assert len(legacy.received) == 1


def test_log_access_false_silences_the_notification_endpoint_too(
    receiver: tuple[LegacyReceiver, str], gateway_factory: Any
) -> None:
    legacy, target = receiver
    cfg = config(target)
    cfg["log"] = {"access": False}
    gw: GatewayProcess = gateway_factory(cfg, env=ENV)
    assert deliver(gw.url, NOTIFICATION).status_code == 204
    assert deliver(gw.url, PROBE, auth=None).status_code == 401
    assert len(legacy.received) == 1
    assert gw.stop() == 0  # the access writer flushes at exit: every line written is in the log now
    lines = [json.loads(line) for line in gw.log_lines() if line.startswith("{")]
    assert [line for line in lines if line.get("event") == "shutdown"]  # the log was read to its end
    assert [line for line in lines if line["logger"] == "zgw_gateway.access"] == []


def test_the_endpoint_under_the_real_server(receiver: tuple[LegacyReceiver, str], gateway_factory: Any) -> None:
    legacy, target = receiver
    gw: GatewayProcess = gateway_factory(config(target), env=ENV)
    assert deliver(gw.url, PROBE, auth=None).status_code == 401
    assert deliver(gw.url, PROBE).status_code == 204
    assert deliver(gw.url, NOTIFICATION, auth="Token forged").status_code == 401
    assert legacy.received == []
    assert deliver(gw.url, NOTIFICATION).status_code == 204
    assert [r.body["resourceUrl"].startswith(gw.url) for r in legacy.received] == [True]
    assert AUTH not in gw.logs() and RECEIVER_KEY not in gw.logs() and AUTH not in gw.metrics()
    assert metric_value(gw.metrics(), M, caller="legacy-dms", kanaal="zaken", outcome="forwarded") == 1
    wait_until(lambda: '"component":"notifications"' in gw.logs(), 5)  # log.access is on by default


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            lambda c: c["components"]["zaken"].update(prefix="/-/zaken"),
            "components.zaken.prefix: '/-/' is the gateway's own",
        ),
        (lambda c: c["components"]["zaken"].update(prefix="/-"), "components.zaken.prefix: '/-/' is the gateway's own"),
        (
            lambda c: c["callers"][0]["notifications"].update(basic={"username": "u", "password": {"env": "X"}}),
            "callers[0].notifications: give at most one of 'api_key' or 'basic'",
        ),
        (
            lambda c: c["callers"][0]["notifications"].update(kanalen=[{"naam": "test"}]),
            "callers[0].notifications.kanalen[0].naam: 'test' is the kanaal of Open Notificaties' callback probe",
        ),
        (
            lambda c: c["callers"][0]["notifications"].update(deliver_to="http://user:pw@dms.intern/notify"),
            "callers[0].notifications.deliver_to: must not hold user info",
        ),
        (
            lambda c: c["callers"][0]["notifications"].update(kanalen=[{"naam": "zaken"}, {"naam": "zaken"}]),
            "callers[0].notifications: each kanaal may appear once",
        ),
    ],
)
def test_config_mistakes_name_the_key(change: Any, error: str) -> None:
    cfg = config("http://dms.intern/notify")
    change(cfg)
    with pytest.raises(ConfigError) as exc:
        parse(cfg)
    assert any(e.startswith(error) for e in exc.value.errors), exc.value.errors


def test_a_delivery_refused_before_its_body_was_read_closes_the_connection_and_says_so(
    receiver: tuple[LegacyReceiver, str],
) -> None:
    """As on the proxy path (test_request_head.py): refused before the body is read (an unknown receiver, a
    forged auth value), the answer says `Connection: close`; refused after reading it, it keeps the connection."""
    legacy, target = receiver
    with gateway_in_thread(config(target), ManualClock(), ENV) as (url, _):
        nobody = deliver(url, NOTIFICATION, path="nobody")
        forged = deliver(url, NOTIFICATION, auth="Token forged")
        no_kanaal = deliver(url, {"resource": "zaak"})  # refused after its body was read
        get = httpx.get(f"{url}/-/notifications/legacy-dms", headers={"Authorization": AUTH})  # no body
    assert [(r.status_code, r.headers.get("connection")) for r in (nobody, forged, no_kanaal, get)] == [
        (404, "close"), (401, "close"), (400, None), (405, None)
    ]  # fmt: skip
    assert legacy.received == []
