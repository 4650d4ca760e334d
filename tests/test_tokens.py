"""Minting ZGW JWTs and caching them (gateway.dataplane.tokens)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import jwt
import pytest
from servers import ManualClock

from gateway.config.sections import TokenConfig
from gateway.dataplane.tokens import Key, Minted, TokenCache, mint
from gateway.zgw import EXPIRED_CODES, FORBIDDEN_CODES

SECRET = "zgw-token-test-secret-0c9e8d7f6a5b4c3d2e1f"
NOW = 1_760_000_000.75


def _segment(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def _mint(**overrides: Any) -> str:
    """A token with the defaults below; `overrides` may name a mint() argument or a TokenConfig field."""
    kwargs: dict[str, Any] = {"user_id": "u123", "user_representation": "Ambtenaar Een", "now": NOW}
    settings: dict[str, Any] = {"lifetime": 300, "clock_skew": 30, "include_exp": True}
    for name, value in overrides.items():
        (settings if name in settings else kwargs)[name] = value
    return mint("dms-Xy12", SECRET, TokenConfig(**settings), **kwargs)


def test_the_header_is_exactly_hs256_jwt() -> None:
    token = _mint()
    assert _segment(token, 0) == {"alg": "HS256", "typ": "JWT"}
    # Byte-level check too: no extra header fields such as kid or client_identifier.
    assert set(json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))) == {"alg", "typ"}


def test_the_claims_are_exactly_the_zgw_ones() -> None:
    claims = _segment(_mint(), 1)
    assert claims == {
        "iss": "dms-Xy12",
        "iat": int(NOW) - 30,
        "client_id": "dms-Xy12",
        "user_id": "u123",
        "user_representation": "Ambtenaar Een",
        "exp": int(NOW) + 300,
    }
    assert isinstance(claims["iat"], int)
    assert "aud" not in claims and "nbf" not in claims


def test_without_exp_there_is_no_exp_claim() -> None:
    claims = _segment(_mint(include_exp=False), 1)
    assert set(claims) == {"iss", "iat", "client_id", "user_id", "user_representation"}


def test_empty_user_fields_are_empty_strings_never_null() -> None:
    claims = _segment(_mint(user_id="", user_representation=""), 1)
    assert claims["user_id"] == "" and claims["user_representation"] == ""


def test_iat_is_back_dated_by_the_clock_skew() -> None:
    assert _segment(_mint(clock_skew=0), 1)["iat"] == int(NOW)
    assert _segment(_mint(clock_skew=45), 1)["iat"] == int(NOW) - 45


def test_the_token_verifies_with_pyjwt_and_the_secret_only() -> None:
    token = _mint(now=1_000_000.0)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims["client_id"] == "dms-Xy12"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, SECRET + "x", algorithms=["HS256"], options={"verify_exp": False})


def test_a_fresh_token_passes_pyjwt_time_checks() -> None:
    import time

    token = _mint(now=time.time())
    jwt.decode(token, SECRET, algorithms=["HS256"])


def test_minting_is_pure() -> None:
    assert _mint() == _mint()
    assert _mint() != _mint(now=NOW + 1)


def test_expired_codes_are_the_servers_expiry_codes() -> None:
    assert {"jwt-expired", "jwt-expiredsignatureerror", "jwt-immaturesignatureerror"} == EXPIRED_CODES
    assert EXPIRED_CODES < FORBIDDEN_CODES


SETTINGS = TokenConfig(lifetime=300, clock_skew=30, refresh_margin=30, include_exp=True)
KEY: Key = ("dms-Xy12", 1, "u1", "Een")


class Counting:
    """A cache that notes the client_id of every mint. It wraps rather than subclasses: the compiled build
    (scripts/compile) makes TokenCache a native class, which a Python class cannot subclass."""

    def __init__(self, clock: ManualClock, minted: list[str] | None, maxsize: int = 10000) -> None:
        self.cache = TokenCache(SETTINGS, clock, maxsize)
        self.minted = minted

    def get(self, key: Key, secret: str) -> tuple[Minted, bool]:
        found = self.cache.get(key, secret)
        if self.minted is not None and not found[1]:
            self.minted.append(key[0])
        return found

    def evict(self, key: Key) -> None:
        self.cache.evict(key)

    def evict_clients(self, client_ids: set[str]) -> int:
        return self.cache.evict_clients(client_ids)

    def __len__(self) -> int:
        return len(self.cache)


def _cache(clock: ManualClock, minted: list[str] | None = None) -> Counting:
    return Counting(clock, minted)


def test_a_cached_token_is_reused_until_the_refresh_margin() -> None:
    clock = ManualClock(NOW)
    cache = _cache(clock)
    first, cached = cache.get(KEY, SECRET)
    assert not cached
    assert first.header_value == b"Bearer " + first.token.encode()
    clock.now = NOW + 269.9
    again, cached = cache.get(KEY, SECRET)
    assert cached and again is first
    clock.now = NOW + 270
    renewed, cached = cache.get(KEY, SECRET)
    assert not cached
    assert renewed.token != first.token
    assert _segment(renewed.token, 1)["iat"] == int(NOW + 270) - 30


def test_distinct_users_and_secret_versions_get_distinct_tokens() -> None:
    clock = ManualClock(NOW)
    minted: list[str] = []
    cache = _cache(clock, minted)
    a, _ = cache.get(("dms", 1, "u1", "Een"), SECRET)
    b, _ = cache.get(("dms", 1, "u2", "Twee"), SECRET)
    c, _ = cache.get(("dms", 1, "u1", "Een (anders)"), SECRET)
    d, _ = cache.get(("dms", 2, "u1", "Een"), SECRET + "-rotated")
    assert len({a.token, b.token, c.token, d.token}) == 4
    assert minted == ["dms"] * 4
    assert _segment(b.token, 1)["user_id"] == "u2"
    jwt.decode(d.token, SECRET + "-rotated", algorithms=["HS256"], options={"verify_exp": False})
    assert len(cache) == 4


def test_evict_drops_one_key() -> None:
    clock = ManualClock(NOW)
    minted: list[str] = []
    cache = _cache(clock, minted)
    cache.get(KEY, SECRET)
    cache.get(("dms-Xy12", 1, "u2", ""), SECRET)
    cache.evict(KEY)
    cache.evict(("never", 0, "", ""))
    assert cache.get(KEY, SECRET)[1] is False
    assert cache.get(("dms-Xy12", 1, "u2", ""), SECRET)[1] is True
    assert len(minted) == 3


def test_evict_clients_drops_every_token_of_those_clients_only() -> None:
    clock = ManualClock(NOW)
    cache = _cache(clock)
    for user in ("a", "b", "c"):
        cache.get(("dms", 1, user, ""), SECRET)
    cache.get(("bi", 1, "a", ""), SECRET)
    assert cache.evict_clients({"dms", "never"}) == 3
    assert cache.evict_clients({"dms"}) == 0
    assert len(cache) == 1
    assert cache.get(("bi", 1, "a", ""), SECRET)[1] is True
    assert cache.get(("dms", 1, "a", ""), SECRET)[1] is False


def test_a_burst_of_cold_requests_mints_once() -> None:
    clock = ManualClock(NOW)
    minted: list[str] = []
    cache = _cache(clock, minted)

    async def one() -> str:
        await asyncio.sleep(0)
        return cache.get(KEY, SECRET)[0].token

    async def burst() -> list[str]:
        return await asyncio.gather(*(one() for _ in range(1000)))

    tokens = asyncio.run(burst())
    assert minted == ["dms-Xy12"]
    assert len(set(tokens)) == 1


def test_the_cache_is_bounded() -> None:
    cache = TokenCache(SETTINGS, ManualClock(NOW), maxsize=10)
    for i in range(50):
        cache.get(("dms", 1, str(i), ""), SECRET)
    assert len(cache) == 10


def test_a_full_cache_drops_the_expired_then_the_least_recently_used() -> None:
    clock = ManualClock(NOW)
    minted: list[str] = []
    cache = Counting(clock, minted, maxsize=3)
    cache.get(("old", 1, "", ""), SECRET)
    clock.now = NOW + 200
    for client in ("a", "b"):
        cache.get((client, 1, "", ""), SECRET)
    clock.now = NOW + 280  # "old" is due, "a" and "b" are not
    cache.get(("c", 1, "", ""), SECRET)  # room made by dropping "old" only
    assert [cache.get((client, 1, "", ""), SECRET)[1] for client in ("a", "b", "c")] == [True, True, True]
    cache.get(("a", 1, "", ""), SECRET)  # "b" is now the least recently used
    cache.get(("d", 1, "", ""), SECRET)
    assert cache.get(("a", 1, "", ""), SECRET)[1] is True
    assert cache.get(("b", 1, "", ""), SECRET)[1] is False
    assert minted == ["old", "a", "b", "c", "d", "b"]
