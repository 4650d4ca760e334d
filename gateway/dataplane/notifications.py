"""Where a notification for a legacy system goes: Open Notificaties calls the gateway, the gateway relays it.

`POST /-/notifications/<caller>` on the proxy port is the `callbackUrl` of the caller's abonnement. In order:

    caller (from the path) -> Authorization (the abonnement's `auth`, constant time) -> body (bounded)
    -> probe? answer it -> rewrite URLs to public ones -> POST to the caller's receiver -> answer the outcome

Without the exact `auth` value the answer is 401 and nothing is read or relayed: that also answers Open
Notificaties' first probe when an abonnement is created; its second probe (kanaal `test`, with the value) is
answered 204 here and never relayed. A notification is relayed synchronously and the receiver's result is
Open Notificaties' answer (204, or 502/504/503), so Open Notificaties' own retries cover a receiver that is
down: the gateway queues nothing. Every request writes one access line and counts in
`zgw_gateway_notifications_total` (docs/notifications.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from gateway.config.loading import Config, ConfigError
from gateway.config.secrets import SecretStore
from gateway.config.sections import CALLER_NAME, PROBE_KANAAL, RESERVED_SEGMENT, Notifications
from gateway.dataplane import bodies, problems
from gateway.dataplane.exchange import Exchange
from gateway.dataplane.failures import transport_failure
from gateway.dataplane.metrics import Metrics
from gateway.dataplane.problems import Refused
from gateway.dataplane.rewrite import UrlRewriter
from gateway.http1.pool import tls_context

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PREFIX = f"/{RESERVED_SEGMENT}/notifications/".encode()
_CALLER = re.compile(CALLER_NAME.encode())
_FAILURES = {
    "tls": problems.RECEIVER_UNREACHABLE,
    "timeout": problems.RECEIVER_TIMEOUT,
    "unreachable": problems.RECEIVER_UNREACHABLE,
}


def endpoint(base: str, caller: str) -> str:
    """The callback URL of a caller's abonnement, under `base` (Config.callback_base)."""
    return f"{base}{PREFIX.decode()}{caller}"


@dataclass(frozen=True, slots=True)
class Receiver:
    """One caller's notifications, prepared from its config."""

    caller: str
    settings: Notifications
    kanalen: frozenset[str]
    tls: ssl.SSLContext | None


def receivers(config: Config) -> dict[str, Receiver]:
    """The callers that receive notifications; ConfigError when a receiver's TLS files do not load."""
    found: dict[str, Receiver] = {}
    errors: list[str] = []
    for i, caller in enumerate(config.callers):
        n = caller.notifications
        if n is None:
            continue
        context = None
        if n.deliver_to.startswith("https://"):
            try:
                context = tls_context(n.tls)
            except (OSError, ssl.SSLError) as exc:
                errors.append(f"callers[{i}].notifications.tls: cannot load ({type(exc).__name__})")
                continue
        found[caller.name] = Receiver(caller.name, n, frozenset(k.naam for k in n.kanalen), context)
    if errors:
        raise ConfigError(errors)
    return found


@dataclass(slots=True)
class Delivery:
    """What the access line and the metrics say about one request on the endpoint."""

    caller: str = "unknown"
    kanaal: str = "-"
    kanaal_name: str | None = None
    resource: str | None = None
    outcome: str = "invalid"
    status: int = 0
    receiver_status: int | None = None
    relay_seconds: float = 0.0
    error: str | None = None


class Inbox:
    """The endpoint: authenticates, answers probes, relays, records."""

    def __init__(self, metrics: Metrics, secrets: SecretStore) -> None:
        self.metrics = metrics
        self.secrets = secrets

    async def handle(
        self,
        ex: Exchange,
        found: dict[str, Receiver],
        rewriter: UrlRewriter | None,
        body_timeout: float,
        receive: Receive,
        send: Send,
    ) -> None:
        d = Delivery()
        body: bytes | None = None
        try:
            receiver = self._receiver(ex, found, d)
            self._authenticate(ex, receiver, d)
            body = await self._body(receiver, receive, body_timeout)
            self._notification(body, receiver, d)
            if d.kanaal_name == PROBE_KANAAL:
                d.outcome = "probe"  # Open Notificaties checks that the callback accepts its auth value
            else:
                await self._relay(ex, receiver, rewriter.to_public(body) if rewriter else body, d)
        except Refused as refusal:
            if bodies.unread(ex.headers, body):
                refusal.close = True
            return await self._answer(ex, send, d, refusal)
        await self._answer(ex, send, d, None)

    @staticmethod
    def _receiver(ex: Exchange, found: dict[str, Receiver], d: Delivery) -> Receiver:
        name = ex.raw_path[len(PREFIX) :]
        receiver = found.get(name.decode()) if _CALLER.fullmatch(name) else None
        if receiver is None:
            raise Refused(problems.NO_NOTIFICATION_ENDPOINT, "No caller receives notifications at this path.")
        d.caller = receiver.caller
        if ex.method != "POST":
            raise Refused(problems.NOTIFICATION_METHOD, "Open Notificaties delivers with POST.")
        return receiver

    def _authenticate(self, ex: Exchange, receiver: Receiver, d: Delivery) -> None:
        given = ex.headers.get(b"authorization")
        if given is None:
            d.outcome = "unauthenticated"
            raise Refused(problems.NOTIFICATION_UNAUTHORIZED, "Send the abonnement's auth value in Authorization.")
        expected = self.secrets.get(receiver.settings.auth)
        if expected is None:
            d.outcome, d.error = "failed", "secret_unavailable"
            raise Refused(problems.CREDENTIALS_UNAVAILABLE, "Ask the operator to check the secret.", retry_after=30)
        # Digests of equal length, compared in constant time: neither the value nor its length shows in timing.
        if not hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected.encode()).digest()):
            d.outcome = "refused"
            raise Refused(problems.NOTIFICATION_UNAUTHORIZED, "Send the abonnement's auth value in Authorization.")

    @staticmethod
    async def _body(receiver: Receiver, receive: Receive, timeout: float) -> bytes:
        try:
            return await bodies.read(receive, receiver.settings.max_body_bytes, timeout)
        except bodies.BodyError as exc:
            raise bodies.refusal(exc)[1] from None

    @staticmethod
    def _notification(body: bytes, receiver: Receiver, d: Delivery) -> None:
        """The kanaal and resource a delivery names, for the record and the relay's label."""
        try:
            notification = orjson.loads(body)
        except orjson.JSONDecodeError:
            notification = None
        kanaal = notification.get("kanaal") if isinstance(notification, dict) else None
        if not isinstance(kanaal, str):
            raise Refused(problems.BAD_NOTIFICATION, "The body must be a JSON notification with a 'kanaal'.")
        d.kanaal_name = kanaal[:50]
        resource = notification.get("resource")
        d.resource = resource[:50] if isinstance(resource, str) else None
        if kanaal != PROBE_KANAAL:
            d.kanaal = kanaal if kanaal in receiver.kanalen else "other"

    async def _relay(self, ex: Exchange, receiver: Receiver, body: bytes, d: Delivery) -> None:
        n = receiver.settings
        headers = {"content-type": "application/json", "x-request-id": ex.request_id, "user-agent": "zgw-gateway"}
        credential = self._credential(n)
        if credential is None:
            d.outcome, d.error = "failed", "secret_unavailable"
            raise Refused(problems.CREDENTIALS_UNAVAILABLE, "Ask the operator to check the secret.", retry_after=30)
        headers.update(credential)
        d.outcome = "failed"
        start = time.perf_counter()
        try:
            # httpx, one client per delivery: a few ms more per relay than a pooled client (README, "Notifications
            # to legacy systems"), on deliveries that Open Notificaties' beat sends seconds apart; in exchange no
            # pool outlives a reload or a receiver's keep-alive quirks. The TLS context is made once per config
            # (for http:// none, so httpx builds no default one). No redirect followed, no proxy from the environment.
            async with (
                httpx.AsyncClient(
                    verify=receiver.tls or False, trust_env=False, follow_redirects=False, timeout=n.timeout
                ) as client,
                client.stream("POST", n.deliver_to, content=body, headers=headers) as response,
            ):
                d.receiver_status = response.status_code  # the receiver's body is never read
        except httpx.HTTPError as exc:
            kind, _ = transport_failure(exc)
            d.error = "receiver_" + kind
            raise Refused(_FAILURES[kind], "The receiver did not answer; Open Notificaties will retry.") from None
        finally:
            d.relay_seconds = time.perf_counter() - start
        if not 200 <= d.receiver_status < 300:
            d.error = "receiver_status"
            raise Refused(problems.RECEIVER_REFUSED, f"The receiver answered {d.receiver_status}.")
        d.outcome = "forwarded"

    def _credential(self, n: Notifications) -> dict[str, str] | None:
        """The receiver's own credential as a header ({} when it takes none); None when unreadable."""
        if n.api_key is not None:
            key = self.secrets.get(n.api_key.value)
            return None if key is None else {n.api_key.header: key}
        if n.basic is not None:
            password = self.secrets.get(n.basic.password)
            if password is None:
                return None
            pair = base64.b64encode(f"{n.basic.username}:{password}".encode()).decode()
            return {"authorization": f"Basic {pair}"}
        return {}

    async def _answer(self, ex: Exchange, send: Send, d: Delivery, refusal: Refused | None) -> None:
        headers = [(b"x-request-id", ex.request_id.encode())]
        body = b""
        if refusal is None:
            d.status = 204
        else:
            d.status = refusal.problem.status
            d.error = d.error or refusal.problem.code
            headers, body = ex.problem_answer(refusal)
            if refusal.problem is problems.NOTIFICATION_METHOD:
                headers.append((b"allow", b"POST"))
        self._record(ex, d, len(body))  # before answering: whoever saw the answer can see the record
        await ex.answer(send, d.status, headers, body)  # Open Notificaties gone: it retries on its own

    def _record(self, ex: Exchange, d: Delivery, bytes_out: int) -> None:
        self.metrics.notifications(d.caller, d.kanaal, d.outcome).inc()
        if d.relay_seconds:
            self.metrics.notification_relay_duration(d.caller, d.kanaal).observe(d.relay_seconds)
        ex.access(
            {
                "caller": d.caller,
                "component": "notifications",
                "kanaal": d.kanaal_name,
                "resource": d.resource,
                "method": ex.method,
                "path": PREFIX.decode() + d.caller if d.caller != "unknown" else PREFIX.decode() + "{unknown}",
                "status": d.status,
                "upstream_status": d.receiver_status,
                "source": "receiver" if d.receiver_status else "gateway",
                "outcome": d.outcome,
                "bytes_out": bytes_out,
                "duration": round(time.perf_counter() - ex.start, 6),
                "upstream_duration": round(d.relay_seconds, 6),
                "error": d.error,
            }
        )
