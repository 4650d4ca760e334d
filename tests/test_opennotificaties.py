"""Notifications to a legacy system against the real Open Notificaties 1.16.1 and Open Zaak 1.30.0.

`scripts/opennotificaties` stands both up (a publishing Open Zaak beside the suite's own); the gateway runs
as a process in front of that Open Zaak and is the callback of the legacy caller's abonnement, which
`zgw-gateway provision --apply` creates through Open Notificaties' two probes. A plain receiver
(tests/receiver.py) gets what Open Notificaties delivers through the gateway and follows `resourceUrl`
with nothing but its API key. Where the servers are not installed the tests skip with the reason; under
CI=true they fail.
"""

from __future__ import annotations

import copy
import json
import os
import random
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import base_config
from real_openzaak import SCRIPT as OPENZAAK_SCRIPT
from real_openzaak import STATE as OPENZAAK_STATE
from real_openzaak import OpenZaak, unavailable
from receiver import LegacyReceiver
from servers import ROOT, GatewayProcess, ThreadServer, metric_value, wait_until

pytestmark = pytest.mark.opennotificaties

SCRIPT = ROOT / "scripts" / "opennotificaties"
STATE = Path(os.environ.get("OPENNOTIFICATIES_HOME") or ROOT / ".cache" / "opennotificaties") / "state.json"
RSIN = "517439943"
AUTH = "Token zgw-gateway-" + "".join(random.choices(string.ascii_letters + string.digits, k=32))
GATEWAY_KEY = "on-legacy-dms-gateway-key-" + "".join(random.choices(string.hexdigits, k=24))
RECEIVER_KEY = "on-legacy-dms-receiver-key-" + "".join(random.choices(string.hexdigits, k=24))
M = "zgw_gateway_notifications_total"
COMPONENTS = {"zaken": "/zaken/api/v1", "catalogi": "/catalogi/api/v1"}


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.request.url}: {response.status_code} {response.text[:2000]}"
    return response.json() if response.content else None


class Servers:
    """Open Notificaties and the publishing Open Zaak, as scripts/opennotificaties recorded them."""

    def __init__(self, state: dict[str, Any], openzaak: OpenZaak, started: list[str]) -> None:
        self.state = state
        self.openzaak = openzaak
        self.started = started

    @property
    def nrc(self) -> str:
        return str(self.state["api"]["url"])

    @property
    def publisher(self) -> str:
        return str(self.state["publisher"]["url"])

    @property
    def subscriber(self) -> dict[str, str]:
        return dict(self.state["clients"]["subscriber"])


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    if not STATE.exists() or not json.loads(STATE.read_text()).get("installed"):
        unavailable(
            "Open Notificaties is not installed: run `scripts/openzaak install` (once), then "
            "`scripts/opennotificaties install` (about a minute)"
        )
    result = subprocess.run([SCRIPT, "start"], capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        unavailable(f"`scripts/opennotificaties start` failed: {result.stderr.strip()[-2000:]}")
    started = json.loads(result.stdout)
    openzaak = OpenZaak(json.loads(OPENZAAK_STATE.read_text()))
    yield Servers(json.loads(STATE.read_text()), openzaak, started["started"])
    subprocess.run([SCRIPT, "stop", *started["started"]], capture_output=True, timeout=120, check=False)
    if started["openzaak_started"]:
        subprocess.run([OPENZAAK_SCRIPT, "stop", *started["openzaak_started"]], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[LegacyReceiver, ThreadServer]]:
    legacy = LegacyReceiver(api_key=RECEIVER_KEY)
    with ThreadServer(legacy) as server:
        yield legacy, server


@pytest.fixture(scope="module")
def gateway(
    servers: Servers, receiver: tuple[LegacyReceiver, ThreadServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    publisher = servers.publisher
    config = base_config(publisher)
    config["components"] = {
        name: {"prefix": prefix, "upstream": publisher + prefix, "rewrite_urls": True}
        for name, prefix in COMPONENTS.items()
    }
    config["components"]["zaken"]["crs"] = "EPSG:4326"
    client = servers.openzaak.client("gateway")
    config["callers"] = [
        {
            "name": "legacy-dms",
            "api_keys": [{"env": "ON_GATEWAY_KEY"}],
            "client_id": client["client_id"],
            "secret": {"env": "ON_ZGW_SECRET"},
            "components": list(COMPONENTS),
            "notifications": {
                "auth": {"env": "ON_AUTH"},
                "deliver_to": receiver[1].url + "/zgw/notificaties",
                "api_key": {"header": "X-API-Key", "value": {"env": "ON_RECEIVER_KEY"}},
                "kanalen": [{"naam": "zaken", "filters": {"bronorganisatie": RSIN}}],
            },
        }
    ]
    config["notificaties_api"] = {
        "url": servers.nrc + "/api/v1",
        "client_id": servers.subscriber["client_id"],
        "secret": {"env": "ON_SUBSCRIBER_SECRET"},
    }
    env = {
        "ON_GATEWAY_KEY": GATEWAY_KEY,
        "ON_ZGW_SECRET": client["secret"],
        "ON_AUTH": AUTH,
        "ON_RECEIVER_KEY": RECEIVER_KEY,
        "ON_SUBSCRIBER_SECRET": servers.subscriber["secret"],
    }
    gw = GatewayProcess(config, tmp_path_factory.mktemp("gw-nrc"), env=env).start()
    yield gw
    gw.stop()


def cli(gw: GatewayProcess, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config or gw.config_path)],
        env={**os.environ, **gw.env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def abonnement(gateway: GatewayProcess) -> Iterator[str]:
    """`provision --apply`: Open Notificaties probes the gateway twice and keeps the abonnement; afterwards
    `provision --apply --prune` with the caller's notifications gone deletes it again."""
    made = cli(gateway, "provision", "--apply")
    assert made.returncode == 0, made.stdout + made.stderr
    assert "created abonnement for legacy-dms" in made.stdout
    yield made.stdout
    without = copy.deepcopy(gateway.config)
    del without["callers"][0]["notifications"]
    path = gateway.workdir / "without-notifications.yaml"
    path.write_text(yaml.safe_dump(without))
    pruned = cli(gateway, "provision", "--apply", "--prune", config=path)
    assert pruned.returncode == 0 and "deleted abonnement" in pruned.stdout, pruned.stdout + pruned.stderr


@pytest.fixture(scope="module")
def zaaktype(servers: Servers) -> str:
    """A published zaaktype on the publishing Open Zaak (its own URL), made directly."""
    sl = servers.openzaak.selectielijst
    procestype = httpx.get(sl + "procestypen").json()[0]["url"]
    resultaten = httpx.get(sl + "resultaten", params={"procesType": procestype}).json()["results"]
    resultaat = next(r for r in resultaten if r["procestermijn"] == "nihil")
    omschrijving = httpx.get(sl + "resultaattypeomschrijvingen").json()[0]["url"]
    with servers.openzaak.direct(servers.publisher) as oz:

        def create(resource: str, **body: Any) -> str:
            return str(ok(oz.post(f"/catalogi/api/v1/{resource}", json=body), 201)["url"])

        domein = "".join(random.choices(string.ascii_uppercase, k=5))
        catalogus = create("catalogussen", domein=domein, rsin=RSIN, contactpersoonBeheerNaam="Beheer")
        zaaktype = create(
            "zaaktypen", identificatie=f"MELDING-{domein}", omschrijving="Melding",
            vertrouwelijkheidaanduiding="openbaar",
            doel="Een melding", aanleiding="Een melding", indicatieInternOfExtern="extern",
            handelingInitiator="melden", onderwerp="Melding", handelingBehandelaar="behandelen", doorlooptijd="P30D",
            opschortingEnAanhoudingMogelijk=False, verlengingMogelijk=False, publicatieIndicatie=False,
            productenOfDiensten=[], referentieproces={"naam": "Melding"}, catalogus=catalogus, besluittypen=[],
            gerelateerdeZaaktypen=[], versiedatum="2024-01-01", verantwoordelijke=RSIN,
            selectielijstProcestype=procestype, beginGeldigheid="2024-01-01",
        )  # fmt: skip
        for number, name in enumerate(["Ontvangen", "Afgehandeld"], start=1):
            create("statustypen", zaaktype=zaaktype, omschrijving=name, volgnummer=number)
        create("roltypen", zaaktype=zaaktype, omschrijving="Melder", omschrijvingGeneriek="initiator")
        create(
            "resultaattypen", zaaktype=zaaktype, omschrijving="Afgehandeld", resultaattypeomschrijving=omschrijving,
            selectielijstklasse=resultaat["url"], archiefnominatie="vernietigen", archiefactietermijn="P10Y",
            brondatumArchiefprocedure={"afleidingswijze": "afgehandeld"},
        )  # fmt: skip
        ok(oz.post(zaaktype + "/publish"))
    return zaaktype


def create_zaak(servers: Servers, zaaktype: str, omschrijving: str) -> tuple[dict[str, Any], float]:
    """A zaak created straight in Open Zaak, and the time its 201 arrived."""
    body = {"bronorganisatie": RSIN, "verantwoordelijkeOrganisatie": RSIN, "startdatum": "2026-11-29",
            "zaaktype": zaaktype, "omschrijving": omschrijving}  # fmt: skip
    with servers.openzaak.direct(servers.publisher) as oz:
        zaak = ok(oz.post("/zaken/api/v1/zaken", json=body, headers={"Content-Crs": "EPSG:4326"}), 201)
    return dict(zaak), time.time()


def public(gw: GatewayProcess, servers: Servers, url: str) -> str:
    return url.replace(servers.publisher, gw.url)


def arrived(legacy: LegacyReceiver, resource_url: str) -> list[Any]:
    return [r for r in legacy.received if r.body.get("resourceUrl") == resource_url and r.body["actie"] == "create"]


def test_provision_creates_the_abonnement_through_both_probes_then_has_nothing_to_do(
    gateway: GatewayProcess, abonnement: str, servers: Servers
) -> None:
    exposition = gateway.metrics()
    assert metric_value(exposition, M, caller="legacy-dms", outcome="unauthenticated") >= 1  # probe 1: 401
    assert metric_value(exposition, M, caller="legacy-dms", outcome="probe") >= 1  # probe 2: 204
    again = cli(gateway, "provision")
    assert again.returncode == 0, again.stderr
    assert "No changes: the abonnementen match the config." in again.stdout
    doctor = cli(gateway, "doctor", "--json")
    rows = {(r["caller"], r["component"], r["credentials"]): r for r in json.loads(doctor.stdout)}
    assert rows[("legacy-dms", "notificaties_api", "abonnement")]["result"] == "ok"
    assert rows[("-", "notificaties_api", "admin")]["result"] == "ok"
    assert doctor.returncode == 0, doctor.stdout
    assert AUTH not in abonnement + again.stdout + doctor.stdout + gateway.logs()


def test_a_new_zaak_reaches_the_legacy_receiver_with_links_it_can_follow(
    gateway: GatewayProcess,
    abonnement: str,
    servers: Servers,
    zaaktype: str,
    receiver: tuple[LegacyReceiver, ThreadServer],
) -> None:
    legacy, _ = receiver
    delays = []
    for _ in range(3):  # one after another: each its own beat tick, so the delays spread over the interval
        zaak, created = create_zaak(servers, zaaktype, "Melding openbare ruimte")
        expected = public(gateway, servers, zaak["url"])
        wait_until(lambda: arrived(legacy, expected), timeout=90, interval=0.05)
        [got] = arrived(legacy, expected)
        delays.append(got.at - created)
    print("\ndelivery, zaak created -> legacy receiver got it: " + ", ".join(f"{d:.2f} s" for d in delays))
    assert got.body["kanaal"] == "zaken" and got.body["hoofdObject"] == expected
    assert got.body["kenmerken"]["bronorganisatie"] == RSIN
    assert got.body["kenmerken"]["zaaktype"] == public(gateway, servers, zaaktype)
    assert got.headers["x-api-key"] == RECEIVER_KEY and "authorization" not in got.headers
    # The receiver follows the link with nothing but its gateway API key.
    followed = ok(httpx.get(got.body["resourceUrl"], headers={"X-API-Key": GATEWAY_KEY}, timeout=30))
    assert followed["url"] == expected and followed["omschrijving"] == "Melding openbare ruimte"
    assert metric_value(gateway.metrics(), M, caller="legacy-dms", kanaal="zaken", outcome="forwarded") >= 1


def test_a_forged_delivery_is_refused_and_never_reaches_the_receiver(
    gateway: GatewayProcess, abonnement: str, receiver: tuple[LegacyReceiver, ThreadServer]
) -> None:
    legacy, _ = receiver
    before = len(legacy.received)
    forged = {"kanaal": "zaken", "hoofdObject": gateway.url + "/zaken/api/v1/zaken/x", "resource": "zaak",
              "resourceUrl": gateway.url + "/zaken/api/v1/zaken/x", "actie": "destroy",
              "aanmaakdatum": "2026-11-29T12:00:00Z", "kenmerken": {"bronorganisatie": RSIN}}  # fmt: skip
    endpoint = gateway.url + "/-/notifications/legacy-dms"
    refused_before = metric_value(gateway.metrics(), M, caller="legacy-dms", outcome="refused")
    for headers in ({}, {"Authorization": "Token guessed"}, {"Authorization": AUTH[:-1]}):
        assert httpx.post(endpoint, json=forged, headers=headers, timeout=10).status_code == 401
    assert len(legacy.received) == before and legacy.refused == 0
    assert metric_value(gateway.metrics(), M, caller="legacy-dms", outcome="refused") == refused_before + 2


def test_a_receiver_that_is_down_gets_the_notification_when_it_is_back(
    gateway: GatewayProcess,
    abonnement: str,
    servers: Servers,
    zaaktype: str,
    receiver: tuple[LegacyReceiver, ThreadServer],
) -> None:
    legacy, server = receiver
    failed_before = metric_value(gateway.metrics(), M, caller="legacy-dms", kanaal="zaken", outcome="failed")
    server.__exit__(None, None, None)  # the legacy receiver goes down
    try:
        zaak, _ = create_zaak(servers, zaaktype, "Melding tijdens onderhoud")
        expected = public(gateway, servers, zaak["url"])
        # Open Notificaties delivered, the gateway could not relay and answered it with a failure.
        wait_until(
            lambda: (
                metric_value(gateway.metrics(), M, caller="legacy-dms", kanaal="zaken", outcome="failed")
                > failed_before
            ),
            timeout=90,
            interval=0.2,
        )
        assert not arrived(legacy, expected)
    finally:
        server.__enter__()  # back, on the same port
    wait_until(lambda: arrived(legacy, expected), timeout=120, interval=0.2)  # Open Notificaties' retry
    assert len(arrived(legacy, expected)) == 1
