"""Who is calling: a configured caller found by API key, certificate subject or client network.

Forwarded information (X-Forwarded-For, the certificate subject header) counts only when the direct peer
is one of `trusted_proxies`; from anyone else it is ignored, so it cannot change who the caller is.
API keys are looked up by their SHA-256 digest, never by the key itself: what the lookup's timing could tell
is about digests, which say nothing about any key (preimage resistance). The config may hold the digest
instead of the key. A key that matched is remembered as presented, so its next request skips the digest
(issue 23); only matched keys, so at most one entry per configured key whatever callers send.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cachetools import LRUCache

from gateway.config.loading import Config
from gateway.config.secrets import SecretStore
from gateway.config.sections import CallerConfig, Credentials

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(slots=True)
class RateLimiter:
    """A token bucket: `rate` requests per second on average, bursts of up to `burst`."""

    rate: float
    burst: int
    clock: Callable[[], float]
    tokens: float = 0.0
    updated: float = 0.0

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)
        self.updated = self.clock()

    def take(self) -> float:
        """0 when the request may pass, else the seconds until one may."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass(slots=True)
class Caller:
    """A configured caller, prepared for the hot path."""

    name: str
    components: frozenset[str]
    methods: frozenset[str] | None
    credentials: dict[str, Credentials]
    user_id: str
    user_representation: str
    user_from_headers: bool
    limiter: RateLimiter | None = None
    config: CallerConfig | None = field(default=None, repr=False)


class Peer(NamedTuple):
    """The client as the gateway sees it: the address it acts for and whether the socket peer is trusted. A
    tuple: made per request, and a frozen dataclass's __init__ costs several times as much (issue 23)."""

    ip: str
    trusted: bool


class CallerDirectory:
    """Finds the caller of a request."""

    def __init__(
        self, config: Config, secrets: SecretStore, limiter_for: Callable[[CallerConfig], RateLimiter | None]
    ) -> None:
        self._secrets = secrets
        self._trusted = list(config.trusted_proxies)
        self._api_key_header = config.identity.api_key_header.lower().encode()
        self._cert_header = config.identity.cert_subject_header.lower().encode()
        self.callers: dict[str, Caller] = {}
        self._by_subject: dict[str, Caller] = {}
        self._networks: list[tuple[IPNetwork, Caller]] = []
        self._by_ip: LRUCache[str, Caller | None] = LRUCache(maxsize=4096)
        self._trusted_ip: LRUCache[str, bool] = LRUCache(maxsize=4096)
        self._keys: dict[bytes, Caller] = {}
        self._matched: dict[bytes, Caller] = {}
        for c in config.callers:
            default = Credentials(client_id=c.client_id, secret=c.secret)
            creds = {name: c.credentials.get(name, default) for name in c.components}
            caller = Caller(
                name=c.name,
                components=frozenset(c.components),
                methods=frozenset(c.methods) if c.methods is not None else None,
                credentials=creds,
                user_id=c.user.id,
                user_representation=c.user.representation,
                user_from_headers=c.user.from_headers,
                limiter=limiter_for(c),
                config=c,
            )
            self.callers[c.name] = caller
            for subject in c.cert_subjects:
                self._by_subject[subject] = caller
            for net in c.networks:
                self._networks.append((net, caller))
        self._networks.sort(key=lambda item: item[0].prefixlen, reverse=True)
        self.reload_keys()

    def reload_keys(self) -> list[str]:
        """(Re)build the API key table from the secret store; returns problems, naming no key."""
        keys: dict[bytes, Caller] = {}
        problems = []
        for caller in self.callers.values():
            assert caller.config is not None
            for i, ref in enumerate(caller.config.api_keys):
                if ref.sha256 is not None:
                    digest = bytes.fromhex(ref.sha256)
                else:
                    secret_ref = ref.secret_ref()
                    value = self._secrets.get(secret_ref) if secret_ref else None
                    if value is None:
                        continue  # reported by the secret store
                    digest = hashlib.sha256(value.encode()).digest()
                if digest in keys and keys[digest] is not caller:
                    problems.append(
                        f"callers.{caller.name}.api_keys[{i}]: the same key as caller '{keys[digest].name}'"
                    )
                    continue
                keys[digest] = caller
        self._keys = keys
        self._matched = {}  # a rotated or removed key must stop working at once
        return problems

    def peer(self, client: Sequence[Any] | None, forwarded_for: bytes | None) -> Peer:
        """The client address, taking X-Forwarded-For into account only from trusted proxies.

        `client` is the ASGI scope's [host, port]: the spec's port is an int (uvicorn's), granian passes a
        str, and the spec allows any iterable; only the host is read, and the compiled build checks what is
        declared (issue 23)."""
        ip = client[0] if client else ""
        trusted = self._is_trusted(ip)
        if not trusted or not forwarded_for:
            return Peer(ip, trusted)
        # Walk from the right: the last address that is not a trusted proxy is the client (RFC 7239 s.5.2).
        hops = [h.strip() for h in forwarded_for.decode("latin-1").split(",")]
        for hop in reversed(hops):
            if not hop:
                continue
            if not self._is_trusted(hop):
                return Peer(hop, True)
        return Peer(hops[0] or ip, True)

    def identify(self, headers: dict[bytes, bytes], peer: Peer) -> Caller | None:
        """The caller of a request, or None. A presented but unknown credential never falls through."""
        key = headers.get(self._api_key_header)
        if key is None:
            auth = headers.get(b"authorization")
            if auth is not None and auth[:6].lower() == b"basic ":
                key = _basic_password(auth[6:])
                if key is None:
                    return None
        if key is not None:
            return self._by_key(key)
        if peer.trusted:
            subject = headers.get(self._cert_header)
            if subject is not None:
                return self._by_subject.get(subject.decode("latin-1"))
        return self._by_network(peer.ip)

    def _by_key(self, key: bytes) -> Caller | None:
        # A dict compares a presented key with a stored one only when their 64-bit hashes, keyed per process
        # (PEP 456), are equal: the lookup's timing tells nothing about a stored key's bytes.
        caller = self._matched.get(key)
        if caller is None:
            caller = self._keys.get(hashlib.sha256(key).digest())
            if caller is not None and len(self._matched) < len(self._keys):
                self._matched[key] = caller
        return caller

    def _by_network(self, ip: str) -> Caller | None:
        try:
            return self._by_ip[ip]
        except KeyError:
            pass
        found = None
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            addr = None
        if addr is not None:
            for net, caller in self._networks:
                if addr in net:
                    found = caller
                    break
        self._by_ip[ip] = found
        return found

    def _is_trusted(self, ip: str) -> bool:
        if not self._trusted:
            return False
        try:
            return self._trusted_ip[ip]
        except KeyError:
            pass
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            result = False
        else:
            result = any(addr in net for net in self._trusted)
        self._trusted_ip[ip] = result
        return result


def _basic_password(encoded: bytes) -> bytes | None:
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    _, sep, password = decoded.partition(b":")
    return password if sep and password else None
