"""Checks of single values that the sections of config.yaml share: networks, URLs, secret references, and
the body limits by kind of API."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any
from urllib.parse import SplitResult, urlsplit

from pydantic import BaseModel, BeforeValidator


def _network(value: Any) -> Any:
    # One plain message instead of pydantic's two (one per union member, with internal names in the path).
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a network in CIDR notation, e.g. 10.0.0.0/8")
    try:
        return ipaddress.ip_network(value)
    except ValueError as exc:
        raise ValueError(f"must be a network in CIDR notation, e.g. 10.0.0.0/8 ({exc})") from None


Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)]


SECRET_HINT = "{env: NAME} (an environment variable) or {file: PATH} (a file, e.g. a mounted Kubernetes Secret)"
API_KEY_HINT = "{env: NAME}, {file: PATH} or {sha256: HEX} (the hex SHA-256 of the key)"


def a_reference(data: Any, hint: str) -> Any:
    # pydantic's own words ("Input should be a valid dictionary or instance of SecretRef") do not say what to
    # write; the value itself never goes into the message (parse() drops inputs too).
    if not isinstance(data, dict | BaseModel):
        raise ValueError(f"write where the secret lives, not the secret itself: {hint}")
    return data


def _absolute(v: str) -> SplitResult:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    return parts


def plain_url(v: str) -> str:
    parts = _absolute(v)
    if parts.username or parts.password or parts.fragment:
        raise ValueError("must not hold user info or a fragment (credentials go in api_key or basic)")
    return v


def base_url(v: str) -> str:
    parts = _absolute(v)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must not hold a query, fragment or user info")
    return v.rstrip("/")


# Issue 22: the JSON-only APIs (Zaken, Catalogi, Besluiten, Autorisaties) take bodies of a few KiB, a zaak
# with a large geometry a few MiB; only the Documenten API takes files (base64 `inhoud` in JSON, or
# bestandsdelen), up to Open Zaak's 4 GiB plus multipart overhead.
JSON_BODY_BYTES = 16 * 1024**2
DOCUMENT_BODY_BYTES = 4 * 1024**3 + 64 * 1024**2


def is_documenten(upstream: Any) -> bool:
    """Is this a Documenten API by its standard path (`.../documenten/api/v1`)?"""
    return isinstance(upstream, str) and "/documenten/api/" in urlsplit(upstream).path + "/"
