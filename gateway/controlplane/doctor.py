"""Do the config's credentials work? One cheap read per caller x component against the live upstream.

For every caller and component it may use - current and next credentials both - `run` mints the token
the gateway would send and reads one page of the component's main resource, with the CRS headers the
gateway would add. The Autorisaties APIs' admin clients get the same check. Each result names the fault
(secret mismatch, unknown client, no rights, clock, not reachable, TLS, CRS, ...) and its fix.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import httpx

from gateway.config.loading import Config
from gateway.config.secrets import SecretStore
from gateway.config.sections import AutorisatiesApi, NotificatiesApi, SecretRef, UpstreamTLS
from gateway.controlplane import abonnementen
from gateway.controlplane import client as controlhttp
from gateway.controlplane.provision import ProvisionError
from gateway.dataplane.failures import transport_failure
from gateway.dataplane.tokens import mint
from gateway.zgw import CRS, FORBIDDEN

# The resource each ZGW API lists cheaply, by the API's name in the upstream path or the component name.
PROBES = {
    "zaken": "zaken",
    "catalogi": "catalogussen",
    "documenten": "enkelvoudiginformatieobjecten",
    "besluiten": "besluiten",
    "autorisaties": "applicaties",
    "notificaties": "kanaal",
}
REGISTER = "register it: zgw-gateway provision --emit open-zaak, then manage.py setup_configuration"
NRC_REGISTER = "register its JWT secret in Open Notificaties (its admin, or setup_configuration)"
RESYNC = "zgw-gateway provision --apply (with the gateway serving this config: Open Notificaties probes it)"


@dataclass(frozen=True)
class Probe:
    """One read to make: whose token, where, and the config keys a fix would name."""

    caller: str
    component: str
    client_id: str
    which: str  # current, next or admin
    secret: SecretRef
    url: str | None  # None: no known cheap read for this component
    crs: bool
    tls: UpstreamTLS
    timeout: httpx.Timeout
    rights_fix: str


@dataclass(frozen=True)
class Check:
    caller: str
    component: str
    client_id: str
    credentials: str
    result: str
    detail: str
    fix: str

    @property
    def ok(self) -> bool:
        return self.result in ("ok", "unchecked")


def resource_url(name: str, upstream: str) -> str | None:
    segments = [s for s in urlsplit(upstream).path.split("/") if s]
    for candidate in [*reversed(segments), name]:
        if candidate in PROBES:
            return f"{upstream}/{PROBES[candidate]}"
    return None


def probes(config: Config) -> list[Probe]:
    found: list[Probe] = []
    for i, caller in enumerate(config.callers):
        for name in caller.components:
            comp = config.components[name]
            creds = caller.credentials.get(name) or caller
            key = f"callers[{i}]" + (f".credentials.{name}" if name in caller.credentials else "")
            pairs = [("current", creds.client_id, creds.secret)]
            if creds.next is not None:
                pairs.append(("next", creds.next.client_id, creds.next.secret))
            found += [
                Probe(
                    caller=caller.name,
                    component=name,
                    client_id=client_id,
                    which=which,
                    secret=secret,
                    url=resource_url(name, comp.upstream),
                    crs=comp.crs == CRS,
                    tls=comp.tls,
                    timeout=httpx.Timeout(comp.timeouts.connect, read=min(comp.timeouts.read, 30.0), pool=5.0),
                    rights_fix=f"grant {client_id} rights on {name}: {key}.autorisaties, "
                    "then zgw-gateway provision --apply",
                )
                for which, client_id, secret in pairs
            ]
    # The admin clients: the gateway's own Applicaties on the Autorisaties APIs and on Open Notificaties.
    admins: list[tuple[str, AutorisatiesApi | NotificatiesApi, str, str]] = [
        (f"autorisaties_apis.{name}", api, "/applicaties",
         "give the admin client all rights: its Applicatie is in provision --emit open-zaak")
        for name, api in config.autorisaties_apis.items()
    ]  # fmt: skip
    if (nrc := config.notificaties_api) is not None:
        admins.append(("notificaties_api", nrc, "/kanaal",
                       "grant notificaties_api.client_id notificaties.consumeren (component nrc)"))  # fmt: skip
    found.extend(
        Probe(
            caller="-",
            component=component,
            client_id=api.client_id,
            which="admin",
            secret=api.secret,
            url=api.url + path,
            crs=False,
            tls=api.tls,
            timeout=httpx.Timeout(api.timeout),
            rights_fix=fix,
        )
        for component, api, path, fix in admins
    )
    return found


def _fix(result: str, probe: Probe) -> str:
    where = probe.component if probe.which == "admin" else f"components.{probe.component}"
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(probe.url)) if probe.url else ""
    fixes = {
        "ok": "",
        "secret mismatch": f"{probe.secret.describe()} is not the secret registered for {probe.client_id}: "
        f"correct it, or {REGISTER}",
        "unknown client": f"the upstream knows no secret for {probe.client_id}; "
        + (NRC_REGISTER if probe.component == "notificaties_api" else REGISTER),
        "no rights": probe.rights_fix,
        "clock": "the upstream finds the token expired: sync this host's clock (NTP) or lower token.clock_skew",
        "not reachable": f"check {where} ({origin}) and the network path from here to it",
        "TLS": f"trust the upstream's certificate authority with {where}.tls.ca_file, or fix its certificate",
        "CRS": f"set components.{probe.component}.crs: EPSG:4326 (the upstream demands CRS headers)",
        "timeout": f"the upstream did not answer in time; check its health and {where}.timeouts",
        "secret unreadable": f"make {probe.secret.describe()} readable where the gateway and this command run",
        "unchecked": f"no known cheap read for {where}: name it or its upstream path after its API "
        f"({', '.join(PROBES)})",
    }
    return fixes.get(result, f"check that {where} points at the API root (e.g. .../zaken/api/v1)")


def _classify(response: httpx.Response) -> tuple[str, str]:
    code = controlhttp.problem_code(response)
    detail = f"{response.status_code}" + (f" {code}" if code else "")
    if response.is_success:
        return "ok", detail
    if response.status_code == 403 and (meaning := FORBIDDEN.get(code)):
        return meaning, detail
    if response.status_code in (406, 412):
        return "CRS", detail
    return "unexpected answer", detail


def check(probe: Probe, secret: str | None, client: httpx.Client, clock: float, config: Config) -> Check:
    def result(outcome: str, detail: str) -> Check:
        fix = _fix(outcome, probe)
        return Check(probe.caller, probe.component, probe.client_id, probe.which, outcome, detail, fix)

    if secret is None:
        return result("secret unreadable", probe.secret.describe())
    if probe.url is None:
        return result("unchecked", "")
    token = mint(probe.client_id, secret, config.token, user_id="", user_representation="zgw-gateway doctor", now=clock)
    headers = {"Authorization": f"Bearer {token}"}
    if probe.crs:
        headers.update({"Accept-Crs": CRS, "Content-Crs": CRS})
    try:
        response = client.get(probe.url, headers=headers, timeout=probe.timeout)
    except httpx.HTTPError as exc:
        kind, detail = transport_failure(exc)
        return result({"tls": "TLS", "timeout": "timeout"}.get(kind, "not reachable"), detail)
    return result(*_classify(response))


def run(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> list[Check]:
    """Every check, in the config's order."""
    todo = probes(config)
    store = SecretStore([p.secret for p in todo], environ)
    clients: dict[UpstreamTLS, httpx.Client] = {}
    for p in todo:
        if p.tls not in clients:
            clients[p.tls] = controlhttp.client(p.tls, httpx.Timeout(10.0), transport)
    now = time.time()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            checks = list(pool.map(lambda p: check(p, store.get(p.secret), clients[p.tls], now, config), todo))
    finally:
        for c in clients.values():
            c.close()
    return checks + abonnement_checks(config, environ, transport)


def abonnement_checks(
    config: Config, environ: Mapping[str, str] | None, transport: httpx.BaseTransport | None
) -> list[Check]:
    """Does Open Notificaties hold each caller's abonnement as the config has it, with the current auth value?"""
    api = config.notificaties_api
    callers = [c for c in config.callers if c.notifications is not None and c.notifications.kanalen]
    if api is None or not callers:
        return []

    def result(caller: str, outcome: str, detail: str, fix: str = RESYNC) -> Check:
        return Check(caller, "notificaties_api", api.client_id, "abonnement", outcome, detail, fix)

    store = SecretStore([api.secret] + [c.notifications.auth for c in callers if c.notifications], environ)
    secret = store.get(api.secret)
    try:
        if secret is None:
            raise ProvisionError(f"notificaties_api.secret: {api.secret.describe()} is not readable")
        want = abonnementen.wanted(config, store)
        with abonnementen.NotificatiesClient(api, secret, config, transport) as client:
            have = client.abonnementen()
    except ProvisionError as exc:
        return [result(c.name, "not checked", str(exc), "see the admin check of notificaties_api") for c in callers]
    checks = []
    for caller, (w, _) in want.items():
        found = [a for a in have if a.key == w.key]
        if not found:
            checks.append(result(caller, "no abonnement", w.key))
        elif len(found) > 1:
            checks.append(result(caller, "duplicate", f"{len(found)} abonnementen deliver to {w.key}"))
        elif found[0].callback_url != w.callback_url:
            checks.append(result(caller, "stale auth", "Open Notificaties holds another auth value"))
        elif found[0].kanalen != w.kanalen:
            checks.append(result(caller, "kanalen differ", str(found[0].url)))
        else:
            checks.append(result(caller, "ok", str(found[0].url), ""))
    return checks


def table(checks: list[Check]) -> str:
    rows = [("caller", "component", "client_id", "result", "detail")]
    for c in checks:
        client = c.client_id + ("" if c.credentials == "current" else f" ({c.credentials})")
        rows.append((c.caller, c.component, client, c.result, c.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n and checks[n - 1].result != "ok":
            lines.append(f"    fix: {checks[n - 1].fix}")
    failed = sum(not c.ok for c in checks)
    lines.append(f"\n{len(checks) - failed} ok, {failed} failed")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> list[dict[str, object]]:
    return [{**asdict(c), "ok": c.ok} for c in checks]
