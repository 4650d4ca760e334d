"""State that outlives a config reload (gateway.dataplane.runtime), and the circuit's probe taken last
(gateway.dataplane.app).

A reload builds a new snapshot; tokens of unchanged credentials, breakers, rate limiters, in-flight counts
and pools of unchanged components carry over, and the gauges read right at once.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest
from hostile import HostileUpstream, Request, answer
from prometheus_client import CollectorRegistry
from servers import ManualClock

from gateway.config.loading import Config, ConfigError, parse
from gateway.dataplane.app import create_app
from gateway.dataplane.breaker import CLOSED, OPEN
from gateway.dataplane.metrics import Metrics
from gateway.dataplane.runtime import Runtime

ENV = {"KEY_A": "key-a-0123456789abcdef", "KEY_B": "key-b-0123456789abcdef", "S1": "secret-one-" + "x" * 32,
       "S2": "secret-two-" + "y" * 32}  # fmt: skip


def data(upstream: str = "http://127.0.0.1:9", **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "circuit_breaker": {"failure_threshold": 2, "open_seconds": 10},
        "components": {
            "zaken": {"prefix": "/zaken/api/v1", "upstream": f"{upstream}/zaken/api/v1"},
            "catalogi": {"prefix": "/catalogi/api/v1", "upstream": f"{upstream}/catalogi/api/v1"},
        },
        "callers": [
            {
                "name": "a",
                "api_keys": [{"env": "KEY_A"}],
                "client_id": "client-a",
                "secret": {"env": "S1"},
                "components": ["zaken", "catalogi"],
                "rate_limit": {"rate": 1, "burst": 2},
            },
            {
                "name": "b",
                "api_keys": [{"env": "KEY_B"}],
                "client_id": "client-b",
                "secret": {"env": "S2"},
                "components": ["zaken"],
            },
        ],
    }
    config.update(overrides)
    return config


def runtime(config: dict[str, Any]) -> tuple[Runtime, CollectorRegistry, ManualClock]:
    registry, clock = CollectorRegistry(), ManualClock(1_760_000_000.0)
    return Runtime(parse(config), Metrics(registry), clock, ENV), registry, clock


def changed(config: dict[str, Any], edit: Any) -> Config:
    new = copy.deepcopy(config)
    edit(new)
    return parse(new)


def token_of(rt: Runtime, client: str) -> tuple[bytes, bool]:
    caller = rt.snapshot.callers.callers[client]
    creds = caller.credentials["zaken"]
    secret = rt.secrets.get(creds.secret)
    assert secret is not None
    minted, cached = rt.tokens.get((creds.client_id, rt.secrets.current(creds.secret)[1], "", ""), secret)
    return minted.header_value, cached


def test_tokens_of_unchanged_credentials_survive_a_reload_and_others_go() -> None:
    config = data()
    rt, _, _ = runtime(config)
    a, _ = token_of(rt, "a")
    b, _ = token_of(rt, "b")
    rt.apply(changed(config, lambda c: c["callers"][1].update(secret={"env": "S1"})))
    assert token_of(rt, "a") == (a, True)
    fresh, cached = token_of(rt, "b")  # its secret reference changed: never the old token
    assert not cached and fresh != b
    rt.apply(changed(config, lambda c: c.update(token={"lifetime": 600})))
    assert token_of(rt, "a")[1] is False  # new token settings: a new cache


def test_breakers_limiters_and_pools_carry_over_and_the_gauges_read_right_away() -> None:
    config = data()
    rt, registry, _ = runtime(config)
    breaker = rt.breakers["zaken"]
    for _ in range(2):
        assert breaker.allow()
        breaker.record(False)
    assert breaker.state == OPEN
    limiter = rt.snapshot.callers.callers["a"].limiter
    assert limiter is not None and limiter.take() == 0 and limiter.take() == 0 and limiter.take() > 0
    pools = dict(rt.pools)

    rt.apply(changed(config, lambda c: c["components"]["catalogi"].update(max_connections=7)))
    assert rt.breakers["zaken"] is breaker and breaker.state == OPEN
    assert registry.get_sample_value("zgw_gateway_circuit_state", {"component": "zaken"}) == OPEN
    assert rt.snapshot.callers.callers["a"].limiter is limiter and limiter.take() > 0
    assert rt.pools["zaken"] is pools["zaken"] and not pools["zaken"].closed
    assert rt.pools["catalogi"] is not pools["catalogi"] and pools["catalogi"].closed

    rt.apply(changed(config, lambda c: c.update(circuit_breaker={"failure_threshold": 3})))
    assert rt.breakers["zaken"] is not breaker and rt.breakers["zaken"].state == CLOSED
    assert registry.get_sample_value("zgw_gateway_circuit_state", {"component": "zaken"}) == CLOSED

    rt.apply(
        changed(config, lambda c: c["components"].pop("catalogi") and c["callers"][0].update(components=["zaken"]))
    )
    assert registry.get_sample_value("zgw_gateway_circuit_state", {"component": "catalogi"}) is None
    assert registry.get_sample_value("zgw_gateway_in_flight_requests", {"component": "catalogi"}) is None


def test_in_flight_counts_span_a_reload() -> None:
    config = data(limits={"max_in_flight": 2})
    rt, registry, _ = runtime(config)
    route = rt.snapshot.routes.match(b"/zaken/api/v1/zaken")
    assert route is not None
    assert rt.take_off(route)
    assert rt.take_off(route)
    rt.apply(changed(config, lambda c: c["callers"][1].update(user={"representation": "B"})))
    new_route = rt.snapshot.routes.match(b"/zaken/api/v1/zaken")
    assert new_route is not None and not rt.take_off(new_route)  # the two old requests still count
    assert registry.get_sample_value("zgw_gateway_in_flight_requests", {"component": "zaken"}) == 2
    rt.land(route)
    rt.land(route)
    assert rt.take_off(new_route)
    assert registry.get_sample_value("zgw_gateway_in_flight_requests", {"component": "zaken"}) == 1


def test_a_request_that_lands_after_a_reload_removed_its_component_leaves_no_series_behind() -> None:
    config = data()
    rt, registry, _ = runtime(config)
    route = rt.snapshot.routes.match(b"/catalogi/api/v1/catalogussen")
    assert route is not None and rt.take_off(route)
    assert registry.get_sample_value("zgw_gateway_in_flight_requests", {"component": "catalogi"}) == 1

    def without_catalogi(c: dict[str, Any]) -> None:
        del c["components"]["catalogi"]
        c["callers"][0]["components"] = ["zaken"]

    rt.apply(changed(config, without_catalogi))
    assert registry.get_sample_value("zgw_gateway_in_flight_requests", {"component": "catalogi"}) is None
    rt.land(route)  # the request that was in flight when the component went
    assert registry.get_sample_value("zgw_gateway_in_flight_requests", {"component": "catalogi"}) is None
    assert rt.total_in_flight == 0
    rt.apply(parse(config))  # back again: its gauge reads the count, not what the old request left behind
    assert registry.get_sample_value("zgw_gateway_in_flight_requests", {"component": "catalogi"}) == 0


def test_a_config_whose_tls_files_do_not_load_is_refused_and_the_running_one_stays() -> None:
    config = data()
    rt, _, _ = runtime(config)
    before = rt.snapshot

    def broken(c: dict[str, Any]) -> None:
        c["components"]["zaken"].update(upstream="https://oz.example/zaken/api/v1", tls={"ca_file": "/nonexistent"})

    with pytest.raises(ConfigError) as err:
        rt.apply(changed(config, broken))
    assert err.value.errors[0].startswith("components.zaken.tls: cannot load")
    assert rt.snapshot is before


async def asgi(app: Any, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> tuple[int, bytes]:
    """One request through the ASGI app in this event loop."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST" if body else "GET", "path": path, "raw_path": path.encode(),
        "query_string": b"", "headers": headers, "client": ("127.0.0.1", 50000), "scheme": "http",
    }  # fmt: skip
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_the_half_open_probe_is_taken_only_by_a_request_that_goes_upstream() -> None:
    """Refusals after admission (a bad user header, a body over the limit) never take the probe."""

    async def script(request: Request) -> None:
        await request.body()
        request.write(answer(request))

    async def main() -> None:
        async with HostileUpstream(script) as up:
            config = data(up.url)
            config["components"]["zaken"]["max_body_bytes"] = 10
            config["callers"][0]["user"] = {"from_headers": True}
            config["callers"][0].pop("rate_limit")
            clock = ManualClock(1_760_000_000.0)
            app = create_app(parse(config), clock=clock, environ=ENV, registry=CollectorRegistry())
            await app.lifecycle.startup()
            breaker = app.runtime.breakers["zaken"]
            for _ in range(2):
                breaker.allow()
                breaker.record(False)
            clock.now += 10  # the circuit may probe now
            key = [(b"x-api-key", ENV["KEY_A"].encode())]
            bad_user = [*key, (b"x-zgw-user-id", b"x" * 300)]
            assert (await asgi(app, "/zaken/api/v1/zaken", bad_user))[0] == 400
            status, body = await asgi(app, "/zaken/api/v1/zaken", [*key, (b"content-length", b"11")], b"x" * 11)
            assert (status, json.loads(body)["code"]) == (413, "body-too-large")
            assert breaker.state == OPEN  # untouched: no probe was taken
            status, body = await asgi(app, "/zaken/api/v1/zaken", key)
            assert status == 200 and json.loads(body)["client_id"] == "client-a"
            assert breaker.state == CLOSED
            await app.lifecycle.shutdown()

    asyncio.run(main())
