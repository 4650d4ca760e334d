"""What the gateway answers when it answers itself: problem+json bodies with stable codes.

The shape follows the ZGW servers (`type, code, title, status, detail, instance`, RFC 9457), so a caller
handles gateway errors and upstream errors with the same code. Details are fixed strings chosen here:
never exception text, never a header value, never a secret.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

CONTENT_TYPE = b"application/problem+json"
# A URN rather than a web address: RFC 9457 section 3.1.1 lets `type` be any URI, and the codes are listed
# in docs/requests.md ("Errors"), not on a page a caller could be sent to.
TYPE_BASE = "urn:zgw-gateway:problem:"


@dataclass(frozen=True, slots=True)
class Problem:
    status: int
    code: str
    title: str

    def body(self, detail: str, instance: str) -> bytes:
        return json.dumps(
            {
                "type": TYPE_BASE + self.code,
                "code": self.code,
                "title": self.title,
                "status": self.status,
                "detail": detail,
                "instance": instance,
            },
            ensure_ascii=False,
        ).encode()


class Refused(Exception):
    """The gateway answers the request itself with `problem`; raised by a step of the request path and
    answered by app.handle. `retry_after` (seconds) becomes a Retry-After of whole seconds, at least 1;
    `close` asks the server to close the caller's connection after the answer; `headers` go with the answer
    (a 401's WWW-Authenticate)."""

    def __init__(
        self,
        problem: Problem,
        detail: str,
        retry_after: float | None = None,
        close: bool = False,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(problem.code)
        self.problem = problem
        self.detail = detail
        self.retry_after = None if retry_after is None else max(1, math.ceil(retry_after))
        self.close = close
        self.headers = headers


BAD_REQUEST = Problem(400, "bad-request", "The request is malformed.")
BAD_PATH = Problem(400, "bad-path", "The request path is not allowed.")
UNKNOWN_CALLER = Problem(401, "unknown-caller", "The gateway does not know this caller.")
FORBIDDEN_COMPONENT = Problem(403, "forbidden-component", "This caller may not use this component.")
FORBIDDEN_METHOD = Problem(403, "forbidden-method", "This caller may not use this method.")
NO_ROUTE = Problem(404, "no-route", "No component is configured for this path.")
BODY_TIMEOUT = Problem(408, "body-timeout", "The request body arrived too slowly.")
BODY_TOO_LARGE = Problem(413, "body-too-large", "The request body is larger than allowed.")
BAD_USER = Problem(400, "bad-user", "The end-user headers are not valid.")
RATE_LIMITED = Problem(429, "rate-limited", "This caller sent too many requests.")
URI_TOO_LONG = Problem(414, "uri-too-long", "The request target is longer than allowed.")
HEADERS_TOO_LARGE = Problem(431, "headers-too-large", "The request headers are larger than allowed.")
UPSTREAM_UNREACHABLE = Problem(502, "upstream-unreachable", "The upstream could not be reached.")
UPSTREAM_DNS = Problem(502, "upstream-dns", "The upstream host name does not resolve.")
UPSTREAM_TLS = Problem(502, "upstream-tls", "The upstream's TLS certificate was not accepted.")
UPSTREAM_RESET = Problem(502, "upstream-reset", "The upstream closed the connection.")
UPSTREAM_BAD_RESPONSE = Problem(502, "upstream-bad-response", "The upstream's answer broke the HTTP/1.1 rules.")
CREDENTIALS_UNAVAILABLE = Problem(503, "credentials-unavailable", "The caller's ZGW secret is not available.")
OVERLOADED = Problem(503, "overloaded", "The gateway is at its concurrency limit.")
CIRCUIT_OPEN = Problem(503, "circuit-open", "The upstream is failing; the gateway is holding requests back.")
POOL_EXHAUSTED = Problem(503, "upstream-pool-exhausted", "No connection to the upstream became free in time.")
UPSTREAM_TIMEOUT = Problem(504, "upstream-timeout", "The upstream did not answer in time.")

# The notification endpoint (notifications.py); Open Notificaties retries what is not a 2xx.
BAD_NOTIFICATION = Problem(400, "bad-notification", "The body is not a notification.")
NOTIFICATION_UNAUTHORIZED = Problem(401, "notification-unauthorized", "The Authorization is not the abonnement's.")
NO_NOTIFICATION_ENDPOINT = Problem(404, "no-notification-endpoint", "No caller receives notifications here.")
NOTIFICATION_METHOD = Problem(405, "method-not-allowed", "Notifications are delivered with POST.")
RECEIVER_REFUSED = Problem(502, "receiver-refused", "The legacy receiver did not accept the notification.")
RECEIVER_UNREACHABLE = Problem(502, "receiver-unreachable", "The legacy receiver could not be reached.")
RECEIVER_TIMEOUT = Problem(504, "receiver-timeout", "The legacy receiver did not answer in time.")
