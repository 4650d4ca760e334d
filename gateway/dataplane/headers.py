"""Which header fields cross the gateway, in each direction: pure functions over raw (name, value) lists.

Names arrive lower-cased from the server (ASGI) and as sent from the upstream; both directions compare
lower-cased names. Hop-by-hop fields (RFC 9110 section 7.6.1) never cross, nor any field a `Connection`
header names - every `Connection` header counts, not only the last.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

# RFC 9110 section 7.6.1 hop-by-hop fields, plus h2c upgrade fields that must never reach an upstream.
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
        b"upgrade", b"proxy-authorization", b"proxy-authenticate", b"http2-settings",
    }
)  # fmt: skip

# What a caller sends that never goes upstream as sent: credentials meant for the gateway, identity and
# framing the gateway decides itself, and the hop-by-hop fields. The identity headers of the config
# (API key, certificate subject, end user) are added per config (runtime.Snapshot).
ALWAYS_DROPPED = (
    frozenset(
        {
            b"authorization", b"cookie", b"host", b"content-length", b"forwarded", b"x-real-ip",
            b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
            b"x-forwarded-prefix", b"x-request-id", b"traceparent", b"expect",
        }
    )
    | HOP_BY_HOP
)  # fmt: skip


# What no field value may carry upstream: NUL, CR and LF (RFC 9110 section 5.5), and any byte that is not ASCII.
_BAD_VALUE = re.compile(rb"[\x00\n\r\x80-\xff]")


def values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """Every comma-separated element of every field called `name` (lower-cased), stripped and lower-cased."""
    out: list[bytes] = []
    for key, value in headers:
        if len(key) == len(name) and key.lower() == name:
            out.extend(v.strip().lower() for v in value.split(b","))
    return [v for v in out if v]


def first(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the first field called `name` (lower-cased), as sent."""
    for key, value in headers:
        if len(key) == len(name) and key.lower() == name:
            return value
    return None


def is_identity_encoded(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """True when no Content-Encoding other than `identity` applies: only then may a body be rewritten."""
    return all(v == b"identity" for v in values(headers, b"content-encoding"))


def to_upstream(raw: list[tuple[bytes, bytes]], dropped: frozenset[bytes]) -> list[tuple[bytes, bytes]] | None:
    """The caller's fields that may go upstream as they are; None when one is malformed (a 400)."""
    named = values(raw, b"connection")
    if named:
        dropped = dropped | set(named)
    out = []
    for name, value in raw:
        if name in dropped:
            continue
        # find, not `in`: `b"_" in name` first tries b"_" as an integer and formats a TypeError (issue 23).
        if name.find(b"_") >= 0:
            continue  # nginx's default: underscores can collide with '-' in CGI-style header maps
        if _BAD_VALUE.search(value):
            return None
        out.append((name, value))
    return out


def to_caller(
    raw: list[tuple[bytes, bytes]], rewrite_location: Callable[[str], str] | None = None
) -> list[tuple[bytes, bytes]]:
    """The upstream's fields that go back to the caller: lower-cased names, without hop-by-hop fields and
    without those any `Connection` field names. Location and Content-Location pass through
    `rewrite_location` (a `str -> str` callable) when given."""
    named = set(values(raw, b"connection"))
    out = []
    for name, value in raw:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in named:
            continue
        if rewrite_location is not None and lname in (b"location", b"content-location"):
            value = rewrite_location(value.decode("latin-1")).encode("latin-1")
        out.append((lname, value))
    return out
