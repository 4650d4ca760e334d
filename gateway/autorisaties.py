"""Reading and writing the Applicaties of an Autorisaties API with its admin client's token.

`AutorisatiesClient.applicaties()` follows the list's pagination; create, update and delete send what
provision.plan decided. Every URL the client sends the token to must lie under the API's configured URL.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from . import controlhttp
from .config import Config
from .provision import Applicatie, Change, ProvisionError, owned_client_ids, plan, render, summary, wanted
from .secrets import SecretStore
from .settings import AutorisatiesApi, TokenConfig
from .tokens import mint

MAX_PAGES = 1000


class AutorisatiesClient:
    def __init__(
        self,
        name: str,
        api: AutorisatiesApi,
        secret: str,
        token: TokenConfig,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        self.url = api.url
        jwt = mint(
            api.client_id,
            secret,
            user_id="",
            user_representation="zgw-gateway provision",
            now=time.time(),
            lifetime=token.lifetime,
            clock_skew=token.clock_skew,
            include_exp=token.include_exp,
        )
        self._http = controlhttp.client(api.tls, httpx.Timeout(api.timeout), transport)
        self._http.headers.update({"Authorization": f"Bearer {jwt}", "Accept": "application/json"})

    def __enter__(self) -> AutorisatiesClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def applicaties(self) -> list[Applicatie]:
        """Every Applicatie, all pages."""
        found: list[Applicatie] = []
        url: str | None = f"{self.url}/applicaties"
        for _ in range(MAX_PAGES):
            if url is None:
                return found
            body = self._send("GET", url, expect=200)
            found += [Applicatie.from_api(item) for item in body.get("results") or ()]
            url = body.get("next")
        raise ProvisionError(f"autorisaties_apis.{self.name}: more than {MAX_PAGES} pages of applicaties")

    def create(self, app: Applicatie) -> Applicatie:
        return Applicatie.from_api(self._send("POST", f"{self.url}/applicaties", expect=201, body=app.to_api()))

    def update(self, url: str, app: Applicatie) -> Applicatie:
        return Applicatie.from_api(self._send("PUT", url, expect=200, body=app.to_api()))

    def delete(self, url: str) -> None:
        self._send("DELETE", url, expect=204)

    def apply(self, changes: list[Change]) -> list[str]:
        """Carry out a plan in its order; one line per change made."""
        done = []
        for change in changes:
            if change.action == "delete" and change.have and change.have.url:
                self.delete(change.have.url)
                done.append(f"  deleted {change.have.label} ({change.have.url})")
            elif change.action == "update" and change.want and change.have and change.have.url:
                made = self.update(change.have.url, change.want)
                done.append(f"  updated {made.label} ({made.url})")
            elif change.action == "create" and change.want:
                made = self.create(change.want)
                done.append(f"  created {made.label} ({made.url})")
        return done

    def _send(self, method: str, url: str, *, expect: int, body: Any = None) -> Any:
        where = f"autorisaties_apis.{self.name}: {method} {urlsplit(url).path}"
        if not _under(url, self.url):
            raise ProvisionError(f"{where}: {url} is not under {self.url}; the admin token is not sent there")
        try:
            response = self._http.request(method, url, json=body)
        except httpx.HTTPError as exc:
            kind, description = controlhttp.transport_failure(exc)
            raise ProvisionError(f"{where}: {kind}: {description}") from None
        if response.status_code != expect:
            raise ProvisionError(f"{where}: {_refusal(response)}")
        return response.json() if response.content else None


def _under(url: str, base: str) -> bool:
    u, b = urlsplit(url), urlsplit(base)
    return (u.scheme, u.netloc) == (b.scheme, b.netloc) and (u.path + "/").startswith(b.path + "/")


def _refusal(response: httpx.Response) -> str:
    code = controlhttp.problem_code(response)
    text = f"answered {response.status_code}" + (f" {code}" if code else "")
    meaning = controlhttp.FORBIDDEN.get(code)
    if response.status_code == 403 and meaning:
        return f"{text} ({meaning} for the admin client: its secret and rights must be registered, see README)"
    try:
        data = response.json()
    except ValueError:
        return text
    params = data.get("invalidParams") if isinstance(data, dict) else None
    if isinstance(params, list):
        reasons = "; ".join(f"{p.get('name')}: {p.get('reason')}" for p in params[:5] if isinstance(p, dict))
        return f"{text}: {reasons[:400]}"
    return text


def api_names(config: Config, only: str | None) -> list[str]:
    if not config.autorisaties_apis:
        raise ProvisionError("the config has no autorisaties_apis: add the Autorisaties API and its admin client")
    if only is not None and only not in config.autorisaties_apis:
        raise ProvisionError(f"no autorisaties_apis.{only} in the config")
    return [only] if only is not None else list(config.autorisaties_apis)


def provision(
    config: Config,
    only: str | None,
    *,
    apply: bool,
    prune: bool,
    environ: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> list[str]:
    """The plan of each Autorisaties API as lines, carried out when `apply`; the last line sums it up."""
    owned = owned_client_ids(config)
    lines: list[str] = []
    changes: list[Change] = []
    for name in api_names(config, only):
        api = config.autorisaties_apis[name]
        secret = SecretStore([api.secret], environ).get(api.secret)
        if secret is None:
            raise ProvisionError(f"autorisaties_apis.{name}.secret: {api.secret.describe()} is not readable")
        want = wanted(config, name)
        with AutorisatiesClient(name, api, secret, config.token, transport) as client:
            todo = plan(want, client.applicaties(), owned=owned, protected=frozenset({api.client_id}), prune=prune)
            lines += render(name, api.url, todo)
            if apply:
                lines += client.apply(todo)
        changes += todo
    lines.append(summary(changes, applied=apply))
    return lines
