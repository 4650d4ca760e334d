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
from cachetools import TTLCache

from gateway.config.sections import TokenConfig

# Cache key: (client_id, secret version, user_id, user_representation). The secret itself is never a key;
# its version (secrets.SecretStore.version) changes whenever its value does.
Key = tuple[str, int, str, str]


@dataclass(frozen=True, slots=True)
class Minted:
    token: str
    header_value: bytes  # b"Bearer <jwt>", ready for the upstream request


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
    `maxsize` (the least recently used go first; cachetools' TTLCache, on the injected clock)."""

    def __init__(self, settings: TokenConfig, clock: Callable[[], float], maxsize: int = 10000) -> None:
        self.settings = settings
        self._clock = clock
        self._cache: TTLCache[Key, Minted] = TTLCache(maxsize, settings.lifetime - settings.refresh_margin, clock)

    def get(self, key: Key, secret: str) -> tuple[Minted, bool]:
        """The cached token for key, minting one when missing or due; returns (token, was_cached)."""
        found = self._cache.get(key)
        if found is not None:
            return found, True
        token = mint(key[0], secret, self.settings, user_id=key[2], user_representation=key[3], now=self._clock())
        minted = self._cache[key] = Minted(token, b"Bearer " + token.encode())
        return minted, False

    def evict(self, key: Key) -> None:
        self._cache.pop(key, None)

    def evict_clients(self, client_ids: set[str]) -> int:
        """Drop every token of these client_ids (a secret changed, or the caller is gone); returns how many."""
        stale = [k for k in list(self._cache.keys()) if k[0] in client_ids]
        for k in stale:
            self._cache.pop(k, None)
        return len(stale)

    def __len__(self) -> int:
        return len(self._cache)
