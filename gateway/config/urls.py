"""Which URL bases can be rewritten: the form servers emit them in, and whether a set of pairs is unambiguous.

The config's cross-check and the data plane's `UrlRewriter` both ask this module, so a config that loads is
one the rewriter accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_base(base: str) -> str:
    """The form in which servers emit ``base``; ValueError when it cannot serve as a rewrite base."""
    if not base.isascii() or any(c in base for c in '"\\?# \t\r\n'):
        raise ValueError(f"URL base {base!r} must be ASCII without quotes, backslashes, '?', '#' or spaces")
    parts = urlsplit(base)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        raise ValueError(f"URL base {base!r} must be an http(s) URL with a host and no user info")
    netloc = parts.netloc.lower()
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"URL base {base!r} has an invalid port") from exc
    if port == _DEFAULT_PORTS[scheme]:
        netloc = netloc.rsplit(":", 1)[0]
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def _mapping(pairs: Sequence[tuple[str, str]], *, reverse: bool) -> dict[str, str]:
    """Source base -> target base for one direction; ValueError when a source has two targets."""
    mapping: dict[str, str] = {}
    for upstream, public in pairs:
        source, target = (public, upstream) if reverse else (upstream, public)
        if mapping.setdefault(source, target) != target:
            side = "public" if reverse else "upstream"
            raise ValueError(f"{side} base {source} maps to both {mapping[source]} and {target}")
    return mapping


def base_mappings(pairs: Sequence[tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """(upstream -> public, public -> upstream) for the (upstream, public) pairs, normalised; ValueError when a
    base is not usable or maps to two others."""
    normalised = [(normalise_base(upstream), normalise_base(public)) for upstream, public in pairs]
    return _mapping(normalised, reverse=False), _mapping(normalised, reverse=True)
