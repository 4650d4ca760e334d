"""The ZGW JWT a request carries upstream: minted exactly as ZGW servers expect, and cached.

Format (docs/zgw.md, "Token"): header {"alg": "HS256", "typ": "JWT"}; claims iss = client_id, iat,
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

from gateway.config.sections import TokenConfig

# Cache key: (client_id, secret version, user_id, user_representation). The secret itself is never a key;
# its version (secrets.SecretStore.version) changes whenever its value does.
Key = tuple[str, int, str, str]


@dataclass(frozen=True, slots=True)
class Minted:
    token: str
    header_value: bytes  # b"Bearer <jwt>", ready for the upstream request
    due: float  # when the cache stops serving it: `refresh_margin` before it expires


def mint(
    client_id: str, secret: str, settings: TokenConfig, *, user_id: str, user_representation: str, now: float
) -> str:
    """A ZGW JWT, with `token:`'s lifetime, clock skew and exp setting. Pure: the same inputs give the same token."""
    iat = int(now) - settings.clock_skew
    claims: dict[str, Any] = {
        "iss": client_id,
        "iat": iat,
        "client_id": client_id,
        "user_id": user_id,
        "user_representation": user_representation,
    }
    if settings.include_exp:
        claims["exp"] = int(now) + settings.lifetime
    return jwt.encode(claims, secret, algorithm="HS256", headers={"typ": "JWT"})


class TokenCache:
    """Tokens per (credentials, user), kept until `refresh_margin` seconds before they expire; at most
    `maxsize` (past it the expired go first, then the least recently used), on the injected clock.

    A dict whose order is the recency order: a hit moves its key to the end. cachetools' TTLCache did the
    same at about 15 times the cost of a hit, on every request (bench/README.md, "Instructions per proxied GET").
    """

    def __init__(self, settings: TokenConfig, clock: Callable[[], float], maxsize: int = 10000) -> None:
        self.settings = settings
        self._clock = clock
        self._maxsize = maxsize
        self._ttl = settings.lifetime - settings.refresh_margin
        self._cache: dict[Key, Minted] = {}

    def get(self, key: Key, secret: str) -> tuple[Minted, bool]:
        """The cached token for key, minting one when missing or due; returns (token, was_cached)."""
        cache = self._cache
        found = cache.pop(key, None)
        now = self._clock()
        if found is not None and now < found.due:
            cache[key] = found
            return found, True
        if len(cache) >= self._maxsize:
            self._make_room(now)
        token = mint(key[0], secret, self.settings, user_id=key[2], user_representation=key[3], now=now)
        minted = cache[key] = Minted(token, b"Bearer " + token.encode(), now + self._ttl)
        return minted, False

    def _make_room(self, now: float) -> None:
        cache = self._cache
        for key in [key for key, minted in cache.items() if now >= minted.due]:
            del cache[key]
        while len(cache) >= self._maxsize:
            del cache[next(iter(cache))]

    def evict(self, key: Key) -> None:
        self._cache.pop(key, None)

    def evict_clients(self, client_ids: set[str]) -> int:
        """Drop every token of these client_ids (a secret changed, or the caller is gone); returns how many
        were still served."""
        now = self._clock()
        stale = [key for key in self._cache if key[0] in client_ids]
        return sum(now < self._cache.pop(key).due for key in stale)

    def __len__(self) -> int:
        """The tokens still served."""
        now = self._clock()
        return sum(now < minted.due for minted in self._cache.values())
