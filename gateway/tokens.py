"""The ZGW JWT a request carries upstream: minted exactly as ZGW servers expect, and cached.

Format (../shared/ZGW.md section 2): header {"alg": "HS256", "typ": "JWT"}; claims iss = client_id, iat,
client_id, user_id, user_representation (strings, never null), exp when configured; no aud, no nbf.
`iat` is back-dated by `clock_skew` so a server whose clock runs behind ours still sees a past iat.

One mint per key even under a burst of concurrent cold requests: `get` is synchronous and nothing in it
awaits, so on the event loop the first request mints and stores before any other request can look.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from .config import TokenConfig

# Cache key: (client_id, secret version, user_id, user_representation). The secret itself is never a key.
Key = tuple[str, int, str, str]

# Problem codes with which a ZGW server says "this token has expired" (ZGW.md section 3).
EXPIRED_CODES = frozenset({"jwt-expired", "jwt-expiredsignatureerror", "jwt-immaturesignatureerror"})


@dataclass(frozen=True, slots=True)
class Minted:
    token: str
    header_value: bytes  # b"Bearer <jwt>", ready for the upstream request
    refresh_at: float


def mint(
    client_id: str,
    secret: str,
    *,
    user_id: str,
    user_representation: str,
    now: float,
    lifetime: int,
    clock_skew: int,
    include_exp: bool,
) -> str:
    """A ZGW JWT. Pure: the same inputs give the same token."""
    iat = int(now) - clock_skew
    claims: dict[str, Any] = {
        "iss": client_id,
        "iat": iat,
        "client_id": client_id,
        "user_id": user_id,
        "user_representation": user_representation,
    }
    if include_exp:
        claims["exp"] = int(now) + lifetime
    return jwt.encode(claims, secret, algorithm="HS256", headers={"typ": "JWT"})


class TokenCache:
    """Cached tokens per (credentials, user); refreshed `refresh_margin` seconds before they expire."""

    def __init__(
        self,
        settings: TokenConfig,
        clock: Callable[[], float],
        on_mint: Callable[[str], None] | None = None,
        maxsize: int = 10000,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._on_mint = on_mint
        self._ttl = settings.lifetime - settings.refresh_margin
        self._maxsize = maxsize
        # A plain dict: every proxied request pays for this lookup, so it is one dict access and one
        # comparison (a TTL cache's bookkeeping cost more, bench/README.md). Size is bounded in _store.
        self._cache: dict[Key, Minted] = {}

    def get(self, key: Key, secret: str) -> tuple[Minted, bool]:
        """The cached token for key, minting one when missing or due; returns (token, was_cached)."""
        found = self._cache.get(key)
        now = self._clock()
        if found is not None and found.refresh_at > now:
            return found, True
        s = self._settings
        token = mint(
            key[0],
            secret,
            user_id=key[2],
            user_representation=key[3],
            now=now,
            lifetime=s.lifetime,
            clock_skew=s.clock_skew,
            include_exp=s.include_exp,
        )
        minted = Minted(token, b"Bearer " + token.encode(), now + self._ttl)
        self._store(key, minted, now)
        if self._on_mint is not None:
            self._on_mint(key[0])
        return minted, False

    def _store(self, key: Key, minted: Minted, now: float) -> None:
        cache = self._cache
        cache.pop(key, None)
        if len(cache) >= self._maxsize:
            for stale in [k for k, v in cache.items() if v.refresh_at <= now]:
                del cache[stale]
            while len(cache) >= self._maxsize:
                del cache[next(iter(cache))]  # the oldest mint: dicts keep insertion order
        cache[key] = minted

    def evict(self, key: Key) -> None:
        self._cache.pop(key, None)

    def evict_client(self, client_id: str) -> int:
        """Drop every token of a client_id (its secret changed); returns how many."""
        stale = [k for k in list(self._cache.keys()) if k[0] == client_id]
        for k in stale:
            self._cache.pop(k, None)
        return len(stale)

    def __len__(self) -> int:
        return len(self._cache)
