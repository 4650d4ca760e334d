"""End to end against a real Open Zaak 1.30.0: the VNG walkthrough through the gateway, callers with an API key only.

Every test runs in both URL modes: `rewrite` (the gateway rewrites Open Zaak's URLs to its own) and `public`
(Open Zaak sees the gateway's host and builds public URLs itself). The catalogue and the zaak are made once per
mode; each test checks one step. `scripts/openzaak` stands Open Zaak up (tests/real_openzaak.py).
"""

from __future__ import annotations

import base64
import hashlib
import random
import string
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from real_openzaak import API_KEYS, OpenZaak, gateway_config, second_instance, stand_up, tear_down
from servers import GatewayProcess, metric_value, wait_until

pytestmark = pytest.mark.openzaak

RSIN = "517439943"
USER = {"X-ZGW-User-Id": "alice", "X-ZGW-User-Representation": "Alice de Vries"}
MiB = 2**20


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: {response.status_code} {response.text[:2000]}"
    )
    return response.json() if response.content else None


def key(caller: str) -> dict[str, str]:
    return {"X-API-Key": API_KEYS[caller]}


@pytest.fixture(scope="session")
def openzaak() -> Iterator[OpenZaak]:
    oz = stand_up()
    yield oz
    tear_down(oz)


@pytest.fixture(scope="module", params=["rewrite", "public"])
def gw(
    request: pytest.FixtureRequest, openzaak: OpenZaak, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config, env = gateway_config(openzaak, openzaak.url, request.param)
    gateway = GatewayProcess(config, tmp_path_factory.mktemp(f"gw-{request.param}"), env=env).start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def api(gw: GatewayProcess) -> Iterator[httpx.Client]:
    """The legacy caller: an API key and nothing else."""
    with httpx.Client(base_url=gw.url, headers=key("legacy-dms"), timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def catalogue(api: httpx.Client, openzaak: OpenZaak) -> dict[str, Any]:
    """A catalogus with an informatieobjecttype, a besluittype and a published zaaktype, made through the gateway."""
    # The Selectielijst is Open Zaak's reference service, not behind the gateway.
    procestype = httpx.get(openzaak.selectielijst + "procestypen").json()[0]["url"]
    resultaten = httpx.get(openzaak.selectielijst + "resultaten", params={"procesType": procestype}).json()
    resultaat = next(r for r in resultaten["results"] if r["procestermijn"] == "nihil")
    omschrijving = httpx.get(openzaak.selectielijst + "resultaattypeomschrijvingen").json()[0]["url"]

    def create(resource: str, **body: Any) -> dict[str, Any]:
        return dict(ok(api.post(f"/catalogi/api/v1/{resource}", json=body), 201))

    c: dict[str, Any] = {}
    domein = "".join(random.choices(string.ascii_uppercase, k=5))  # unique per catalogus and rsin
    c["catalogus"] = create("catalogussen", domein=domein, rsin=RSIN, contactpersoonBeheerNaam="Beheer")
    catalogus, start = c["catalogus"]["url"], "2024-01-01"
    c["informatieobjecttype"] = create(
        "informatieobjecttypen",
        catalogus=catalogus,
        omschrijving="Aanvraag",
        vertrouwelijkheidaanduiding="openbaar",
        informatieobjectcategorie="Aanvraag",
        beginGeldigheid=start,
    )
    iot = c["informatieobjecttype"]["url"]
    ok(api.post(iot + "/publish"))
    c["besluittype"] = create(
        "besluittypen",
        catalogus=catalogus,
        omschrijving="Toekenning",
        publicatieIndicatie=False,
        informatieobjecttypen=[iot],
        beginGeldigheid=start,
    )
    c["zaaktype"] = create(
        "zaaktypen",
        identificatie="AANVRAAG",
        omschrijving="Aanvraag",
        vertrouwelijkheidaanduiding="openbaar",
        doel="Een aanvraag behandelen",
        aanleiding="Een aanvraag",
        indicatieInternOfExtern="extern",
        handelingInitiator="aanvragen",
        onderwerp="Aanvraag",
        handelingBehandelaar="behandelen",
        doorlooptijd="P30D",
        opschortingEnAanhoudingMogelijk=False,
        verlengingMogelijk=False,
        publicatieIndicatie=False,
        productenOfDiensten=[],
        referentieproces={"naam": "Aanvraag"},
        catalogus=catalogus,
        besluittypen=[c["besluittype"]["url"]],
        gerelateerdeZaaktypen=[],
        versiedatum=start,
        verantwoordelijke=RSIN,
        selectielijstProcestype=procestype,
        beginGeldigheid=start,
    )
    zaaktype = c["zaaktype"]["url"]
    create(
        "zaaktype-informatieobjecttypen", zaaktype=zaaktype, informatieobjecttype=iot, volgnummer=1, richting="inkomend"
    )
    c["statustypen"] = [
        create("statustypen", zaaktype=zaaktype, omschrijving=name, volgnummer=number)
        for number, name in enumerate(["Ontvangen", "Afgehandeld"], start=1)
    ]
    c["roltype"] = create("roltypen", zaaktype=zaaktype, omschrijving="Aanvrager", omschrijvingGeneriek="initiator")
    c["resultaattype"] = create(
        "resultaattypen",
        zaaktype=zaaktype,
        omschrijving="Toegekend",
        resultaattypeomschrijving=omschrijving,
        selectielijstklasse=resultaat["url"],
        archiefnominatie="vernietigen",
        archiefactietermijn="P10Y",
        brondatumArchiefprocedure={"afleidingswijze": "afgehandeld"},
    )
    ok(api.post(c["besluittype"]["url"] + "/publish"))
    c["published"] = ok(api.post(zaaktype + "/publish"))
    return c


@pytest.fixture(scope="module")
def zaak(api: httpx.Client, catalogue: dict[str, Any]) -> dict[str, Any]:
    """A zaak created with no CRS headers from the caller, on behalf of an end user named in headers."""
    body = {
        "bronorganisatie": RSIN,
        "verantwoordelijkeOrganisatie": RSIN,
        "startdatum": "2026-11-28",
        "zaaktype": catalogue["zaaktype"]["url"],
        "omschrijving": "Aanvraag via de gateway",
    }
    return dict(ok(api.post("/zaken/api/v1/zaken", json=body, headers=USER), 201))


@pytest.fixture(scope="module")
def document(api: httpx.Client, catalogue: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    def create(**fields: Any) -> dict[str, Any]:
        body = {
            "bronorganisatie": RSIN,
            "creatiedatum": "2026-11-28",
            "titel": "Aanvraag",
            "auteur": "Legacy DMS",
            "taal": "nld",
            "informatieobjecttype": catalogue["informatieobjecttype"]["url"],
            **fields,
        }
        return dict(ok(api.post("/documenten/api/v1/enkelvoudiginformatieobjecten", json=body), 201))

    return create


def test_the_catalogue_is_built_and_published_with_public_urls(gw: GatewayProcess, catalogue: dict[str, Any]) -> None:
    zaaktype = catalogue["published"]
    assert zaaktype["concept"] is False
    assert zaaktype["url"].startswith(gw.url + "/catalogi/api/v1/zaaktypen/")
    assert zaaktype["catalogus"] == catalogue["catalogus"]["url"]
    assert set(zaaktype["statustypen"]) == {s["url"] for s in catalogue["statustypen"]}
    assert zaaktype["roltypen"] == [catalogue["roltype"]["url"]]
    assert zaaktype["resultaattypen"] == [catalogue["resultaattype"]["url"]]
    assert zaaktype["informatieobjecttypen"] == [catalogue["informatieobjecttype"]["url"]]
    assert zaaktype["besluittypen"] == [catalogue["besluittype"]["url"]]
    # Validated against the local Selectielijst: its URL is not the gateway's and stays as Open Zaak sent it.
    assert "/api/v1/resultaten/" in catalogue["resultaattype"]["selectielijstklasse"]
    assert not catalogue["resultaattype"]["selectielijstklasse"].startswith(gw.url)


def test_a_zaak_is_listed_by_zaaktype_read_by_its_url_patched_and_given_a_status(
    api: httpx.Client, gw: GatewayProcess, catalogue: dict[str, Any], zaak: dict[str, Any]
) -> None:
    assert zaak["url"] == f"{gw.url}/zaken/api/v1/zaken/{zaak['uuid']}"
    listed = ok(api.get("/zaken/api/v1/zaken", params={"zaaktype": catalogue["zaaktype"]["url"]}))
    assert [z["url"] for z in listed["results"]] == [zaak["url"]]

    read = api.get(zaak["url"])
    assert ok(read)["omschrijving"] == "Aanvraag via de gateway"
    assert read.headers["content-crs"] == "EPSG:4326"

    patched = ok(api.patch(zaak["url"], json={"toelichting": "Aangevuld"}, headers=USER))
    assert patched["toelichting"] == "Aangevuld"

    statustype = catalogue["statustypen"][0]["url"]
    status = ok(
        api.post(
            "/zaken/api/v1/statussen",
            json={"zaak": zaak["url"], "statustype": statustype, "datumStatusGezet": "2026-11-28T10:00:00Z"},
        ),
        201,
    )
    assert status["url"].startswith(gw.url + "/zaken/api/v1/statussen/")
    assert ok(api.get(zaak["url"]))["status"] == status["url"]


def test_a_document_with_base64_inhoud_downloads_through_the_returned_link(
    api: httpx.Client, gw: GatewayProcess, document: Callable[..., dict[str, Any]]
) -> None:
    content = b"%PDF-1.4 aanvraag\n" * 1000
    created = document(
        bestandsnaam="aanvraag.pdf", formaat="application/pdf", inhoud=base64.b64encode(content).decode()
    )
    assert created["inhoud"].startswith(gw.url + "/documenten/api/v1/enkelvoudiginformatieobjecten/")
    download = api.get(created["inhoud"])
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["content-type"] == "application/octet-stream"
    # Open Zaak names the attachment after its stored file (`<uuid>.bin`), not after `bestandsnaam`.
    assert download.headers["content-disposition"].startswith('attachment; filename="')
    assert int(download.headers["content-length"]) == len(content)


def test_a_40_mib_document_travels_in_bestandsdelen_and_joins_the_zaak(
    api: httpx.Client,
    gw: GatewayProcess,
    openzaak: OpenZaak,
    zaak: dict[str, Any],
    document: Callable[..., dict[str, Any]],
) -> None:
    content = random.Random(40).randbytes(40 * MiB)
    created = document(
        bestandsnaam="bouwtekening.bin", formaat="application/octet-stream", inhoud=None, bestandsomvang=len(content)
    )
    parts = sorted(created["bestandsdelen"], key=lambda part: part["volgnummer"])
    assert [p["omvang"] for p in parts] == [10 * MiB] * 4  # DOCUMENTEN_UPLOAD_CHUNK_SIZE of the stand-up
    offset = 0
    for part in parts:
        assert part["url"].startswith(gw.url + "/documenten/api/v1/bestandsdelen/")
        chunk = content[offset : offset + part["omvang"]]
        offset += part["omvang"]
        uploaded = ok(
            api.put(
                part["url"],
                data={"lock": created["lock"]},
                files={"inhoud": ("bouwtekening.bin", chunk, "application/octet-stream")},
            )
        )
        assert uploaded["voltooid"] is True
    ok(api.post(created["url"] + "/unlock", json={"lock": created["lock"]}), 204)

    document_ = ok(api.get(created["url"]))
    assert document_["locked"] is False and document_["bestandsomvang"] == len(content)
    expected = hashlib.sha256(content).hexdigest()
    through_gateway = api.get(document_["inhoud"])
    assert through_gateway.status_code == 200
    assert hashlib.sha256(through_gateway.content).hexdigest() == expected
    path = document_["inhoud"].removeprefix(gw.url)
    with openzaak.direct() as direct:  # what Open Zaak stored, read without the gateway
        assert hashlib.sha256(direct.get(path).content).hexdigest() == expected

    relation = ok(
        api.post(
            "/zaken/api/v1/zaakinformatieobjecten", json={"zaak": zaak["url"], "informatieobject": created["url"]}
        ),
        201,
    )
    assert relation["informatieobject"] == created["url"]
    listed = ok(api.get("/zaken/api/v1/zaakinformatieobjecten", params={"zaak": zaak["url"]}))
    assert created["url"] in [r["informatieobject"] for r in listed]


def test_a_besluit_with_its_besluitinformatieobject(
    api: httpx.Client,
    gw: GatewayProcess,
    catalogue: dict[str, Any],
    zaak: dict[str, Any],
    document: Callable[..., dict[str, Any]],
) -> None:
    besluit = ok(
        api.post(
            "/besluiten/api/v1/besluiten",
            json={
                "verantwoordelijkeOrganisatie": RSIN,
                "besluittype": catalogue["besluittype"]["url"],
                "zaak": zaak["url"],
                "datum": "2026-11-28",
                "ingangsdatum": "2026-11-29",
            },
        ),
        201,
    )
    assert besluit["url"].startswith(gw.url + "/besluiten/api/v1/besluiten/")
    besluitbrief = document(bestandsnaam="besluit.txt", formaat="text/plain", inhoud=base64.b64encode(b"ja").decode())
    relation = ok(
        api.post(
            "/besluiten/api/v1/besluitinformatieobjecten",
            json={"besluit": besluit["url"], "informatieobject": besluitbrief["url"]},
        ),
        201,
    )
    assert relation["besluit"] == besluit["url"]
    listed = ok(api.get("/besluiten/api/v1/besluitinformatieobjecten", params={"besluit": besluit["url"]}))
    assert [r["informatieobject"] for r in listed] == [besluitbrief["url"]]


def test_the_audit_trail_names_the_end_user_from_the_callers_headers(api: httpx.Client, zaak: dict[str, Any]) -> None:
    trail = ok(api.get(zaak["url"] + "/audittrail"))
    created = next(entry for entry in trail if entry["actie"] == "create")
    assert created["gebruikersId"] == "alice"
    assert created["gebruikersWeergave"] == "Alice de Vries"
    assert created["resourceUrl"] == zaak["url"]


def test_a_client_without_autorisaties_gets_open_zaaks_403_unchanged(gw: GatewayProcess, openzaak: OpenZaak) -> None:
    through = httpx.get(gw.url + "/zaken/api/v1/zaken", headers=key("no-rights"), timeout=30)
    with openzaak.direct(name="no_rights") as direct:
        straight = direct.get("/zaken/api/v1/zaken")
    assert through.status_code == straight.status_code == 403
    assert through.headers["content-type"] == straight.headers["content-type"] == "application/json"
    unchanged = ("code", "title", "status", "detail")
    assert {k: through.json()[k] for k in unchanged} == {k: straight.json()[k] for k in unchanged}
    assert through.json()["code"] == "permission_denied"
    assert metric_value(gw.metrics(), "zgw_gateway_upstream_forbidden_total", code="permission_denied") >= 1


def test_problem_type_urls_point_at_the_gateway_and_open_there(gw: GatewayProcess) -> None:
    """Open Zaak's `type` is a page on its own host: the gateway routes /ref, so the link is the gateway's."""
    problem = httpx.get(gw.url + "/zaken/api/v1/zaken", headers=key("no-rights"), timeout=30).json()
    assert problem["type"] == gw.url + "/ref/fouten/PermissionDenied/"
    page = httpx.get(problem["type"], headers=key("legacy-dms"), timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")


def test_a_wrong_secret_shows_as_invalid_jwt_signature_in_the_metrics(gw: GatewayProcess) -> None:
    def counted() -> float:
        # Counted only from the first such 403 on: none before is 0.
        return metric_value(
            gw.metrics(),
            "zgw_gateway_upstream_forbidden_total",
            default=0.0,
            component="zaken",
            code="invalid-jwt-signature",
        )

    before = counted()
    answer = httpx.get(gw.url + "/zaken/api/v1/zaken", headers=key("wrong-secret"), timeout=30)
    assert answer.status_code == 403
    assert answer.json()["code"] == "invalid-jwt-signature"
    assert counted() == before + 1


def test_a_wrong_accept_crs_from_the_caller_gets_406(api: httpx.Client, gw: GatewayProcess) -> None:
    crs = "zgw_gateway_crs_rejections_total"
    before = metric_value(gw.metrics(), crs, default=0.0, component="zaken", code="406")  # none yet is 0
    answer = api.get("/zaken/api/v1/zaken", headers={"Accept-Crs": "EPSG:28992"})
    assert answer.status_code == 406
    assert answer.json()["code"] == "not_acceptable"
    assert metric_value(gw.metrics(), "zgw_gateway_crs_rejections_total", component="zaken", code="406") == before + 1


@pytest.fixture(scope="session")
def short_lived(openzaak: OpenZaak) -> Iterator[str]:
    """A second Open Zaak on the same database whose tokens expire 5 s after their iat."""
    with second_instance(JWT_EXPIRY="5") as url:
        yield url


def expiring_gateway(
    gw: GatewayProcess, openzaak: OpenZaak, short_lived: str, gateway_factory: Callable[..., GatewayProcess]
) -> GatewayProcess:
    """A gateway like `gw` in front of the short-lived Open Zaak, caching tokens far longer than it accepts them."""
    mode = "rewrite" if gw.config["components"]["zaken"].get("rewrite_urls") else "public"
    config, env = gateway_config(openzaak, short_lived, mode)
    config["token"] = {"lifetime": 300, "clock_skew": 0}
    return gateway_factory(config, env=env)


def wait_for_expiry(openzaak: OpenZaak, short_lived: str) -> None:
    """Until the gateway's cached token is expired: a token minted now has an iat no older than the cached one,
    so once Open Zaak calls it expired, the cached one is expired too."""
    probe = {"Authorization": f"Bearer {openzaak.token()}"}
    path = "/catalogi/api/v1/catalogussen"
    wait_until(lambda: httpx.get(short_lived + path, headers=probe).json().get("code") == "jwt-expired", 60, 0.25)


def test_a_real_jwt_expired_is_reminted_and_retried_once(
    gw: GatewayProcess,
    openzaak: OpenZaak,
    short_lived: str,
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = expiring_gateway(gw, openzaak, short_lived, gateway_factory)
    path = "/catalogi/api/v1/catalogussen"
    assert httpx.get(gateway.url + path, headers=key("legacy-dms"), timeout=30).status_code == 200
    wait_for_expiry(openzaak, short_lived)

    answer = httpx.get(gateway.url + path, headers=key("legacy-dms"), timeout=30)
    assert answer.status_code == 200
    metrics = gateway.metrics()
    assert metric_value(metrics, "zgw_gateway_upstream_retries_total", reason="token_expired") == 1
    assert metric_value(metrics, "zgw_gateway_tokens_minted_total", caller="legacy-dms") == 2


def test_a_jwt_expired_on_a_download_is_reminted_too(
    gw: GatewayProcess,
    openzaak: OpenZaak,
    short_lived: str,
    gateway_factory: Callable[..., GatewayProcess],
    document: Callable[..., dict[str, Any]],
) -> None:
    created = document(bestandsnaam="a.txt", formaat="text/plain", inhoud=base64.b64encode(b"inhoud").decode())
    download = created["inhoud"].removeprefix(gw.url)  # the same path behind every gateway
    gateway = expiring_gateway(gw, openzaak, short_lived, gateway_factory)
    assert httpx.get(gateway.url + download, headers=key("legacy-dms"), timeout=30).status_code == 200
    wait_for_expiry(openzaak, short_lived)

    answer = httpx.get(gateway.url + download, headers=key("legacy-dms"), timeout=30)
    assert (answer.status_code, answer.content) == (200, b"inhoud")


def test_conditional_reads_pass_through_with_open_zaaks_etags(api: httpx.Client, zaak: dict[str, Any]) -> None:
    first = api.get(zaak["url"])
    etag = first.headers["etag"]
    again = api.get(zaak["url"], headers={"If-None-Match": etag})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)


def test_no_secret_reaches_the_gateways_logs_or_metrics(gw: GatewayProcess, openzaak: OpenZaak) -> None:
    exposed = gw.logs() + gw.metrics()
    for secret in [*openzaak.secrets(), *API_KEYS.values()]:
        assert secret not in exposed
