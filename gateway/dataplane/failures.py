"""Why a request the gateway sent got no answer: the kinds of transport failure, in the gateway's words.

Used by the notification relay (httpx to a legacy receiver) and by the control-plane client, so that both
name a failure the same way.
"""

from __future__ import annotations

import ssl

import httpx


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
