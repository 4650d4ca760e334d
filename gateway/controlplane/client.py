"""How the control-plane commands (provision, doctor) talk HTTP, and what a ZGW server's refusal means.

`ApiClient` is one ZGW API seen by one client of its own (the Autorisaties API's admin, the Notificaties
API's client): a token minted for it, and requests only to URLs under the API's own, so the token never
travels elsewhere.

httpx, with no proxy settings from the environment, explicit timeouts, never a redirect followed (the
token must not travel to another host), and the TLS settings of the config. Every failure becomes one
short message; a token or secret never appears in one. What a ZGW server's 403 codes mean: `zgw.FORBIDDEN`
(docs/zgw.md, "403 codes").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from gateway.config.sections import TokenConfig, UpstreamTLS
from gateway.controlplane.provision import ProvisionError
from gateway.dataplane.failures import transport_failure
from gateway.dataplane.tokens import mint
from gateway.http1.pool import tls_context
from gateway.zgw import problem_code as zgw_problem_code

MAX_PARAMS = 5
MAX_REASONS = 600


def client(
    tls: UpstreamTLS,
    timeout: httpx.Timeout,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    return httpx.Client(
        verify=tls_context(tls),
        timeout=timeout,
        trust_env=False,
        follow_redirects=False,
        transport=transport,
    )


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body: Any = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def problem_code(response: httpx.Response) -> str:
    """The ZGW problem `code` of an error answer, or '' when the body has none."""
    return zgw_problem_code(response.content)


def answered(response: httpx.Response) -> str:
    """A refusal in the server's own words: status, problem code and each of its `invalidParams` (name, code,
    reason), e.g. `answered 400 invalid: kanalen: Kanaal met deze naam bestaat niet. (code kanaal-naam)`."""
    code = problem_code(response)
    text = f"answered {response.status_code}" + (f" {code}" if code else "")
    params = _problem(response).get("invalidParams")
    if not isinstance(params, list):
        return text
    reasons = [
        f"{p.get('name') or '(the request)'}: {p.get('reason')}" + (f" (code {p['code']})" if p.get("code") else "")
        for p in params[:MAX_PARAMS]
        if isinstance(p, dict)
    ]
    return f"{text}: {'; '.join(reasons)[:MAX_REASONS]}" if reasons else text


class ApiClient:
    """Requests to one ZGW API under `url`, with a token minted for `client_id`; `where` names the config key
    in every error. `refusal` turns an unexpected answer into the words of the error."""

    token_name = "token"

    def __init__(
        self,
        where: str,
        url: str,
        client_id: str,
        secret: str,
        token: TokenConfig,
        tls: UpstreamTLS,
        timeout: float,
        refusal: Callable[[httpx.Response], str],
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.where = where
        self.url = url
        self._refusal = refusal
        self._jwt = jwt = mint(
            client_id, secret, token, user_id="", user_representation="zgw-gateway provision", now=time.time()
        )
        self._http = client(tls, httpx.Timeout(timeout), transport)
        self._http.headers.update({"Authorization": f"Bearer {jwt}", "Accept": "application/json"})

    def close(self) -> None:
        self._http.close()

    def send(self, method: str, url: str, *, expect: int, body: Any = None, secret: str = "") -> Any:
        """`secret`: a value in `body` that must not come back in an error, e.g. an abonnement's `auth`."""
        where = f"{self.where}: {method} {urlsplit(url).path}"
        if not _under(url, self.url):
            raise ProvisionError(f"{where}: {url} is not under {self.url}; the {self.token_name} is not sent there")
        try:
            response = self._http.request(method, url, json=body)
        except httpx.HTTPError as exc:
            kind, description = transport_failure(exc)
            raise ProvisionError(f"{where}: {kind}: {description}") from None
        if response.status_code != expect:
            refusal = self._refusal(response)
            for hidden in filter(None, (self._jwt, secret)):
                refusal = refusal.replace(hidden, "(hidden)")  # a server that echoes what it was sent
            raise ProvisionError(f"{where}: {refusal}")
        return response.json() if response.content else None


def _under(url: str, base: str) -> bool:
    u, b = urlsplit(url), urlsplit(base)
    return (u.scheme, u.netloc) == (b.scheme, b.netloc) and (u.path + "/").startswith(b.path + "/")
