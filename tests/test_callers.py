"""Identifying the caller of a request (gateway.dataplane.callers)."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from servers import ManualClock

from gateway.config.loading import parse
from gateway.config.secrets import SecretStore
from gateway.config.sections import CallerConfig
from gateway.dataplane.callers import CallerDirectory, Peer, RateLimiter

DMS_KEY = "dms-api-key-5f1e9c3a7b2d4e6f8a0c"
BI_KEY = "bi-api-key-2b4d6f8a0c1e3a5c7e9b"
HASHED_KEY = "hashed-api-key-9e8d7c6b5a4f3e2d1c0b"
ENV = {"DMS_KEY": DMS_KEY, "BI_KEY": BI_KEY, "S": "zgw-secret", "DUP": DMS_KEY}
TRUSTED_PEER = ("10.0.0.5", 40000)
OUTSIDE_PEER = ("192.0.2.10", 40000)


def config_data(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "trusted_proxies": ["10.0.0.0/24", "fd00::/64"],
        "components": {
            "zaken": {"prefix": "/zaken/api/v1", "upstream": "http://oz/zaken/api/v1"},
            "catalogi": {"prefix": "/catalogi/api/v1", "upstream": "http://oz/catalogi/api/v1"},
        },
        "callers": [
            {
                "name": "dms",
                "api_keys": [{"env": "DMS_KEY"}, {"sha256": hashlib.sha256(HASHED_KEY.encode()).hexdigest()}],
                "networks": ["172.16.0.0/12"],
                "client_id": "dms-x",
                "secret": {"env": "S"},
                "credentials": {"catalogi": {"client_id": "dms-ztc", "secret": {"env": "S"}}},
                "components": ["zaken", "catalogi"],
            },
            {
                "name": "bi",
                "api_keys": [{"env": "BI_KEY"}],
                "networks": ["172.16.5.0/24"],
                "client_id": "bi-x",
                "secret": {"env": "S"},
                "components": ["zaken"],
                "methods": ["GET"],
                "rate_limit": {"rate": 2, "burst": 3},
            },
            {
                "name": "scanner",
                "networks": ["172.16.5.7/32", "2001:db8::/32"],
                "cert_subjects": ["CN=scanner,O=Gemeente Voorbeeld"],
                "client_id": "scanner-x",
                "secret": {"env": "S"},
                "components": ["catalogi"],
            },
        ],
    }
    data.update(extra)
    return data


def limiter_for(caller: CallerConfig) -> RateLimiter | None:
    rate = caller.rate_limit
    return RateLimiter(rate.rate, rate.burst, clock=lambda: 0.0) if rate else None


def directory(data: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> CallerDirectory:
    config = parse(data or config_data())
    return CallerDirectory(config, SecretStore(config.secret_refs(), environ=env or ENV), limiter_for)


DIR = directory()


def who(headers: dict[bytes, bytes], client: tuple[str, int] = OUTSIDE_PEER, xff: bytes | None = None) -> str | None:
    caller = DIR.identify(headers, DIR.peer(client, xff))
    return caller.name if caller else None


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def test_callers_are_prepared_from_the_config() -> None:
    dms = DIR.callers["dms"]
    assert dms.components == frozenset({"zaken", "catalogi"})
    assert dms.methods is None
    assert dms.credentials["zaken"].client_id == "dms-x"
    assert dms.credentials["catalogi"].client_id == "dms-ztc"
    assert DIR.callers["bi"].methods == frozenset({"GET"})
    assert DIR.callers["bi"].limiter is not None
    assert DIR.callers["dms"].limiter is None


def test_an_api_key_in_the_header_identifies_the_caller() -> None:
    assert who({b"x-api-key": DMS_KEY.encode()}) == "dms"
    assert who({b"x-api-key": BI_KEY.encode()}) == "bi"


def test_a_configured_sha256_identifies_the_caller() -> None:
    assert who({b"x-api-key": HASHED_KEY.encode()}) == "dms"


def test_the_basic_password_is_an_api_key_whatever_the_username() -> None:
    assert who({b"authorization": basic("anything", DMS_KEY)}) == "dms"
    assert who({b"authorization": basic("", BI_KEY)}) == "bi"
    assert who({b"authorization": basic("bi", DMS_KEY)}) == "dms"
    assert who({b"authorization": b"basic " + base64.b64encode(b"u:" + BI_KEY.encode())}) == "bi"


@pytest.mark.parametrize(
    "headers",
    [
        {b"x-api-key": b"wrong-key"},
        {b"x-api-key": b""},
        {b"x-api-key": DMS_KEY.encode() + b" "},
        {b"authorization": basic("dms", "wrong")},
        {b"authorization": basic("dms", "")},
        {b"authorization": b"Basic !!!not-base64"},
        {b"authorization": b"Basic " + base64.b64encode(DMS_KEY.encode())},
    ],
)
def test_an_unknown_key_is_nobody_even_from_a_known_network(headers: dict[bytes, bytes]) -> None:
    assert who({}, ("172.16.1.1", 1)) == "dms"  # the network alone would identify dms
    assert who(headers, ("172.16.1.1", 1)) is None


def test_a_bearer_token_is_not_an_api_key_and_the_network_decides() -> None:
    assert who({b"authorization": b"Bearer abc"}, ("172.16.1.1", 1)) == "dms"


def test_networks_match_longest_prefix_first() -> None:
    assert who({}, ("172.16.1.1", 1)) == "dms"
    assert who({}, ("172.16.5.1", 1)) == "bi"
    assert who({}, ("172.16.5.7", 1)) == "scanner"
    assert who({}, ("2001:db8::1", 1)) == "scanner"
    assert who({}, ("192.0.2.1", 1)) is None
    assert who({}, ("not-an-ip", 1)) is None
    assert DIR.identify({}, DIR.peer(None, None)) is None


def test_the_cert_subject_counts_only_from_a_trusted_peer() -> None:
    subject = {b"x-ssl-client-s-dn": b"CN=scanner,O=Gemeente Voorbeeld"}
    assert who(subject, TRUSTED_PEER) == "scanner"
    assert who(subject, OUTSIDE_PEER) is None
    assert who({b"x-ssl-client-s-dn": b"CN=someone-else"}, TRUSTED_PEER) is None


def test_x_forwarded_for_counts_only_from_a_trusted_peer() -> None:
    assert DIR.peer(OUTSIDE_PEER, b"172.16.1.1") == Peer("192.0.2.10", False)
    assert who({}, OUTSIDE_PEER, b"172.16.1.1") is None
    assert DIR.peer(TRUSTED_PEER, b"172.16.1.1") == Peer("172.16.1.1", True)
    assert who({}, TRUSTED_PEER, b"172.16.1.1") == "dms"


def test_x_forwarded_for_takes_the_rightmost_untrusted_hop() -> None:
    # The client may put anything on the left; only what trusted proxies appended counts.
    assert DIR.peer(TRUSTED_PEER, b"172.16.5.1, 172.16.1.1, 10.0.0.7").ip == "172.16.1.1"
    assert DIR.peer(TRUSTED_PEER, b"172.16.1.1,10.0.0.7 ,10.0.0.8").ip == "172.16.1.1"
    assert DIR.peer(TRUSTED_PEER, b"172.16.5.1, 192.0.2.99").ip == "192.0.2.99"
    assert DIR.peer(TRUSTED_PEER, b"10.0.0.9, 10.0.0.7").ip == "10.0.0.9"
    assert DIR.peer(TRUSTED_PEER, b"").ip == "10.0.0.5"
    assert DIR.peer(("fd00::1", 1), b"2001:db8::5").ip == "2001:db8::5"


def test_the_peer_is_read_from_every_shape_of_asgi_client() -> None:
    # ASGI's [host, port] (uvicorn: a tuple with an int port), granian's str port, a list: the host counts.
    for client in (("10.0.0.5", 51234), ("10.0.0.5", "51234"), ["10.0.0.5", 51234]):
        assert DIR.peer(client, b"172.16.1.1") == Peer("172.16.1.1", True)
        assert DIR.peer(client, None) == Peer("10.0.0.5", True)


def test_no_trusted_proxies_means_no_forwarded_information() -> None:
    d = directory(config_data(trusted_proxies=[]))
    peer = d.peer(TRUSTED_PEER, b"172.16.1.1")
    assert peer == Peer("10.0.0.5", False)
    assert d.identify({b"x-ssl-client-s-dn": b"CN=scanner,O=Gemeente Voorbeeld"}, peer) is None


def test_a_custom_api_key_header() -> None:
    d = directory(config_data(identity={"api_key_header": "X-Gateway-Key"}))
    found = d.identify({b"x-gateway-key": DMS_KEY.encode()}, d.peer(OUTSIDE_PEER, None))
    assert found is not None and found.name == "dms"


def test_duplicate_keys_across_callers_are_reported_without_the_key() -> None:
    data = config_data()
    data["callers"][1]["api_keys"].append({"env": "DUP"})
    config = parse(data)
    d = CallerDirectory(config, SecretStore(config.secret_refs(), environ=ENV), limiter_for)
    problems = d.reload_keys()
    assert problems == ["callers.bi.api_keys[1]: the same key as caller 'dms'"]
    assert DMS_KEY not in "".join(problems)
    # The key stays with the caller that had it first, never with the duplicate.
    found = d.identify({b"x-api-key": DMS_KEY.encode()}, Peer("192.0.2.1", False))
    assert found is not None and found.name == "dms"


def test_a_missing_key_secret_leaves_the_other_keys_working() -> None:
    d = directory(env={"DMS_KEY": DMS_KEY, "S": "s"})
    assert d.identify({b"x-api-key": DMS_KEY.encode()}, Peer("192.0.2.1", False)) is not None
    assert d.identify({b"x-api-key": BI_KEY.encode()}, Peer("192.0.2.1", False)) is None


def test_reload_keys_picks_up_a_rotated_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "dms-key"
    key_file.write_text(DMS_KEY + "\n", encoding="utf-8")
    data = config_data()
    data["callers"][0]["api_keys"] = [{"file": str(key_file)}]
    config = parse(data)
    store = SecretStore(config.secret_refs(), environ=ENV)
    d = CallerDirectory(config, store, limiter_for)
    assert d.identify({b"x-api-key": DMS_KEY.encode()}, Peer("192.0.2.1", False)) is not None
    replacement = tmp_path / "dms-key.new"
    replacement.write_text("rotated-key-0123456789", encoding="utf-8")
    os.replace(replacement, key_file)
    assert store.poll().changed
    assert d.reload_keys() == []
    assert d.identify({b"x-api-key": b"rotated-key-0123456789"}, Peer("192.0.2.1", False)) is not None
    assert d.identify({b"x-api-key": DMS_KEY.encode()}, Peer("192.0.2.1", False)) is None


def test_the_rate_limiter_allows_a_burst_then_the_rate() -> None:
    clock = ManualClock(1000.0)
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take()
    assert wait == pytest.approx(0.5)
    clock.now += 0.25
    assert limiter.take() == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.take() == 0.0
    assert limiter.take() > 0
    clock.now += 100
    assert [limiter.take() for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # refills up to burst, not beyond
    assert limiter.take() > 0


def test_only_keys_that_matched_are_remembered_one_entry_each() -> None:
    d = directory()
    for i in range(100):
        assert d.identify({b"x-api-key": b"guess-%d" % i}, Peer("192.0.2.1", False)) is None
    for _ in range(3):
        found = d.identify({b"x-api-key": DMS_KEY.encode()}, Peer("192.0.2.1", False))
        assert found is not None and found.name == "dms"
    assert list(d._matched) == [DMS_KEY.encode()]
