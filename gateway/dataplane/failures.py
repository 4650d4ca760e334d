"""Why a request got no usable answer or was cut short, in the gateway's words: one vocabulary for the
metrics' `reason` labels, the access line's `error` and the tracing span's `error.type`.

The enum values are the label values dashboards and alerts match on (helm/): a value is never renamed.
`transport_failure` names an httpx failure (the notification relay, the control-plane client) the same way
for both.
"""

from __future__ import annotations

import ssl
from enum import StrEnum

import httpx


class Failure(StrEnum):
    """Why a request got no usable upstream answer (`zgw_gateway_upstream_failures_total{reason}`).

    All but `circuit_open` and `overloaded` (the gateway's own refusals) are `http1.pool.UpstreamError.reason`."""

    CONNECT = "connect"
    TIMEOUT = "timeout"
    RESET = "reset"
    DNS = "dns"
    POOL = "pool"
    CIRCUIT_OPEN = "circuit_open"
    TLS = "tls"
    OVERLOADED = "overloaded"
    BAD_RESPONSE = "bad_response"


class Abort(StrEnum):
    """Why a transfer was cut mid-body (`zgw_gateway_aborted_requests_total{reason}`)."""

    BODY_TOO_LARGE = "body_too_large"
    BODY_TIMEOUT = "body_timeout"
    UPSTREAM_RESET = "upstream_reset"
    CLIENT_GONE = "client_gone"


def transport_failure(exc: httpx.HTTPError) -> tuple[str, str]:
    """(kind, description) of a request that got no answer: tls, timeout or unreachable."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return "tls", f"certificate not trusted ({cause.verify_message})"
        if isinstance(cause, ssl.SSLError):
            return "tls", f"TLS handshake failed ({cause.reason or type(cause).__name__})"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TimeoutException):
        return "timeout", f"no answer in time ({type(exc).__name__})"
    return "unreachable", f"cannot connect ({type(exc).__name__}: {_reason(exc)})"


def _reason(exc: httpx.HTTPError) -> str:
    # httpx puts the OS error text in the message (e.g. "[Errno 111] Connection refused"); no URL, no header.
    return str(exc).splitlines()[0][:120] if str(exc) else "no detail"
