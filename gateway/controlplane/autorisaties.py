"""Reading and writing the Applicaties of an Autorisaties API with its admin client's token.

`AutorisatiesClient.applicaties()` follows the list's pagination; create, update and delete send what
provision.plan decided. Every URL the client sends the token to must lie under the API's configured URL.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from gateway.config.loading import Config
from gateway.config.secrets import SecretStore
from gateway.config.sections import AutorisatiesApi, TokenConfig
from gateway.controlplane import client as controlhttp
from gateway.controlplane.provision import (
    Applicatie,
    Change,
    ProvisionError,
    owned_client_ids,
    plan,
    render,
    summary,
    wanted,
)
from gateway.zgw import FORBIDDEN

MAX_PAGES = 1000


class AutorisatiesClient(controlhttp.ApiClient):
    """One Autorisaties API's Applicaties, with its admin client's token."""

    token_name = "admin token"

    def __init__(
        self,
        name: str,
        api: AutorisatiesApi,
        secret: str,
        token: TokenConfig,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        super().__init__(
            f"autorisaties_apis.{name}",
            api.url,
            api.client_id,
            secret,
            token,
            api.tls,
            api.timeout,
            _refusal,
            transport,
        )

    def __enter__(self) -> AutorisatiesClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def applicaties(self) -> list[Applicatie]:
        """Every Applicatie, all pages."""
        found: list[Applicatie] = []
        url: str | None = f"{self.url}/applicaties"
        for _ in range(MAX_PAGES):
            if url is None:
                return found
            body = self.send("GET", url, expect=200)
            found += [Applicatie.from_api(item) for item in body.get("results") or ()]
            url = body.get("next")
        raise ProvisionError(f"autorisaties_apis.{self.name}: more than {MAX_PAGES} pages of applicaties")

    def create(self, app: Applicatie) -> Applicatie:
        return Applicatie.from_api(self.send("POST", f"{self.url}/applicaties", expect=201, body=app.to_api()))

    def update(self, url: str, app: Applicatie) -> Applicatie:
        return Applicatie.from_api(self.send("PUT", url, expect=200, body=app.to_api()))

    def delete(self, url: str) -> None:
        self.send("DELETE", url, expect=204)

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


def _refusal(response: httpx.Response) -> str:
    text = controlhttp.answered(response)
    meaning = FORBIDDEN.get(controlhttp.problem_code(response))
    if response.status_code == 403 and meaning:
        return f"{text} ({meaning} for the admin client: its secret and rights must be registered, see README)"
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
