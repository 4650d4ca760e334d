"""How the control-plane commands (provision, doctor) talk HTTP, and what a ZGW server's refusal means.

httpx, with no proxy settings from the environment, explicit timeouts, never a redirect followed (the
token must not travel to another host), and the TLS settings of the config. Every failure becomes one
short message; a token or secret never appears in one.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from .settings import UpstreamTLS

# What an upstream's 403 code means for a caller's credentials (../shared/ZGW.md section 3).
FORBIDDEN = {
    "invalid-jwt-signature": "secret mismatch",
    "invalid-client-identifier": "unknown client",
    "missing-client-identifier": "unknown client",
    "permission_denied": "no rights",
    "jwt-expired": "clock",
    "jwt-expiredsignatureerror": "clock",
    "jwt-immaturesignatureerror": "clock",
}


def ssl_context(tls: UpstreamTLS) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


def client(
    tls: UpstreamTLS,
    timeout: httpx.Timeout,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    return httpx.Client(
        verify=ssl_context(tls),
        timeout=timeout,
        trust_env=False,
        follow_redirects=False,
        transport=transport,
    )


def problem_code(response: httpx.Response) -> str:
    """The ZGW problem `code` of an error answer, or '' when the body has none."""
    try:
        body: Any = response.json()
    except ValueError:
        return ""
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else ""


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
