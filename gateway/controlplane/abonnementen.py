"""Which abonnementen Open Notificaties must hold for the callers' notifications, and making it so.

One abonnement per caller with `notifications.kanalen`: its `callbackUrl` is the caller's endpoint on the
gateway (`notifications.endpoint`), its `auth` the caller's `notifications.auth` value, its kanalen and
filters those of the config. The API never shows an abonnement's `auth` again, so the callback URL carries
`?auth=<fingerprint>`, an HMAC of the value that reveals nothing of it: a changed value changes the URL, the
plan shows an update, and `doctor` sees when Open Notificaties still holds an old value. The gateway ignores
the query. Abonnementen are found again by their callback URL's path; those under the gateway's endpoint
path that no caller wants any more are deleted only with `prune`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.config.loading import Config
from gateway.config.secrets import SecretStore
from gateway.config.sections import NotificatiesApi
from gateway.controlplane import client as controlhttp
from gateway.controlplane.provision import ABONNEMENTEN, Action, ProvisionError, no_changes, summary
from gateway.dataplane.notifications import PREFIX, endpoint
from gateway.zgw import FORBIDDEN

Kanalen = frozenset[tuple[str, frozenset[tuple[str, str]]]]


def fingerprint(auth: str) -> str:
    """A short HMAC of the auth value: equal values give equal fingerprints, and it reveals nothing of the value."""
    return hmac.new(auth.encode(), b"zgw-gateway abonnement auth", hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class Abonnement:
    callback_url: str
    kanalen: Kanalen
    url: str | None = None  # None until Open Notificaties made it

    @property
    def key(self) -> str:
        """The callback URL without its query: which caller's endpoint this is."""
        return self.callback_url.split("?", 1)[0]

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Abonnement:
        kanalen = frozenset(
            (str(k.get("naam", "")), frozenset((str(f), str(v)) for f, v in (k.get("filters") or {}).items()))
            for k in data.get("kanalen") or ()
        )
        return cls(str(data.get("callbackUrl", "")), kanalen, data.get("url"))

    def to_api(self, auth: str) -> dict[str, Any]:
        kanalen = [{"naam": naam, "filters": dict(sorted(filters))} for naam, filters in sorted(self.kanalen)]
        return {"callbackUrl": self.callback_url, "auth": auth, "kanalen": kanalen}


@dataclass(frozen=True)
class Change:
    action: Action
    want: Abonnement | None
    have: Abonnement | None
    caller: str = ""


def wanted(config: Config, secrets: SecretStore) -> dict[str, tuple[Abonnement, str]]:
    """caller -> (its abonnement, its auth value); ProvisionError when an auth value cannot be read."""
    base = config.callback_base()
    found: dict[str, tuple[Abonnement, str]] = {}
    for i, caller in enumerate(config.callers):
        n = caller.notifications
        if n is None or not n.kanalen:
            continue
        auth = secrets.get(n.auth)
        if auth is None:
            raise ProvisionError(f"callers[{i}].notifications.auth: {n.auth.describe()} is not readable")
        kanalen = frozenset((k.naam, frozenset(k.filters.items())) for k in n.kanalen)
        url = f"{endpoint(base, caller.name)}?auth={fingerprint(auth)}"
        found[caller.name] = (Abonnement(url, kanalen), auth)
    return found


def owned(abonnement: Abonnement, base: str) -> bool:
    """Is this a callback of the gateway's notification endpoints?"""
    return abonnement.key.startswith(base + PREFIX.decode())


def plan(want: dict[str, tuple[Abonnement, str]], have: list[Abonnement], base: str, prune: bool) -> list[Change]:
    """The changes that make `have` match `want`, in the order to apply them: deletes, updates, creates.
    A second abonnement for one caller would deliver everything twice: it counts as not in the config."""
    left = list(have)
    updates: list[Change] = []
    creates: list[Change] = []
    for caller, (w, _) in want.items():
        current = next((a for a in left if a.key == w.key), None)
        if current is None:
            creates.append(Change("create", w, None, caller))
            continue
        left.remove(current)
        if (current.callback_url, current.kanalen) != (w.callback_url, w.kanalen):
            updates.append(Change("update", w, current, caller))
    deletes = [Change("delete" if prune else "keep", None, a) for a in left if owned(a, base)]
    return deletes + updates + creates


def _kanalen_text(kanalen: Kanalen) -> list[str]:
    lines = []
    for naam, filters in sorted(kanalen):
        text = ", ".join(f"{k}={v}" for k, v in sorted(filters))
        lines.append(f"      kanaal {naam}" + (f" ({text})" if text else ""))
    return lines


def render(api: NotificatiesApi, changes: list[Change]) -> list[str]:
    lines = [f"Notificaties API ({api.url}):"]
    for c in changes:
        if c.action == "create" and c.want:
            lines += [f"  + create abonnement for {c.caller}", f"      callbackUrl: {c.want.callback_url}"]
            lines += _kanalen_text(c.want.kanalen)
        elif c.action == "update" and c.want and c.have:
            lines += [f"  ~ update abonnement for {c.caller} ({c.have.url})"]
            if c.want.callback_url != c.have.callback_url:
                lines.append(f"      callbackUrl: {c.have.callback_url} -> {c.want.callback_url}")
            lines += [f"    - {t.strip()}" for t in _kanalen_text(c.have.kanalen - c.want.kanalen)]
            lines += [f"    + {t.strip()}" for t in _kanalen_text(c.want.kanalen - c.have.kanalen)]
        elif c.have:
            verb = "- delete" if c.action == "delete" else "! not in the config:"
            lines.append(f"  {verb} abonnement {c.have.url} ({c.have.key})")
            if c.action == "keep":
                lines.append("      kept; `zgw-gateway provision --apply --prune` deletes it")
    return lines + no_changes(changes)


class NotificatiesClient(controlhttp.ApiClient):
    """The Notificaties API's abonnementen, with the `notificaties_api` client's token."""

    def __init__(self, api: NotificatiesApi, secret: str, config: Config, transport: httpx.BaseTransport | None = None):
        refusal = _refusal(config.callback_base() + PREFIX.decode())
        super().__init__(
            "notificaties_api", api.url, api.client_id, secret, config.token, api.tls, api.timeout, refusal, transport
        )

    def __enter__(self) -> NotificatiesClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def abonnementen(self) -> list[Abonnement]:
        body = self.send("GET", f"{self.url}/abonnement", expect=200)
        # 1.0 answers a plain list; a paginated answer has `results`
        items = body.get("results") or [] if isinstance(body, dict) else body
        return [Abonnement.from_api(item) for item in items]

    def apply(self, changes: list[Change], auths: dict[str, str]) -> list[str]:
        done = []
        for c in changes:
            if c.action == "delete" and c.have and c.have.url:
                self.send("DELETE", c.have.url, expect=204)
                done.append(f"  deleted abonnement {c.have.url}")
            elif c.action == "update" and c.want and c.have and c.have.url:
                auth = auths[c.caller]
                made = self.send("PUT", c.have.url, expect=200, body=c.want.to_api(auth), secret=auth)
                done.append(f"  updated abonnement for {c.caller} ({made.get('url')})")
            elif c.action == "create" and c.want:
                auth = auths[c.caller]
                made = self.send("POST", f"{self.url}/abonnement", expect=201, body=c.want.to_api(auth), secret=auth)
                done.append(f"  created abonnement for {c.caller} ({made.get('url')})")
        return done


def _refusal(callback: str) -> Callable[[httpx.Response], str]:
    def refusal(response: httpx.Response) -> str:
        code = controlhttp.problem_code(response)
        text = controlhttp.answered(response)
        if code == "no-auth-on-callback-url":
            return (
                f"{text} (the gateway's endpoint did not answer 401 without Authorization: is it serving this config?)"
            )
        if code == "invalid-callback-url":
            return f"{text} (the gateway's endpoint refused the auth value: reload the gateway with this config first)"
        if response.status_code == 403 and (meaning := FORBIDDEN.get(code)):
            return (
                f"{text} ({meaning} for notificaties_api.client_id: register it in Open Notificaties, "
                "with notificaties.consumeren)"
            )
        if response.status_code >= 500 and response.request.method in ("POST", "PUT"):
            # Open Notificaties probes the callback before it saves an abonnement; a probe that cannot connect
            # is its 500 (nrc/api/validators.py).
            return (
                f"{text} (Open Notificaties probes the callback URL {callback} before it saves an abonnement: "
                "the gateway must be serving this config and reachable from Open Notificaties there; "
                "notificaties_api.callback_url sets that URL)"
            )
        return text

    return refusal


def provision(
    config: Config,
    *,
    apply: bool,
    prune: bool,
    environ: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> list[str]:
    """The abonnementen plan as lines, carried out when `apply`; the last line sums it up."""
    api = config.notificaties_api
    if api is None:
        raise ProvisionError("the config has no notificaties_api: add the Notificaties API and its client")
    store = SecretStore([api.secret] + [c.notifications.auth for c in config.callers if c.notifications], environ)
    secret = store.get(api.secret)
    if secret is None:
        raise ProvisionError(f"notificaties_api.secret: {api.secret.describe()} is not readable")
    want = wanted(config, store)
    with NotificatiesClient(api, secret, config, transport) as client:
        changes = plan(want, client.abonnementen(), config.callback_base(), prune)
        lines = render(api, changes)
        if apply:
            lines += client.apply(changes, {caller: auth for caller, (_, auth) in want.items()})
    lines.append(summary(changes, apply, ABONNEMENTEN))
    return lines
