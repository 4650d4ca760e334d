"""The sandbox upstream behaves like Open Zaak 1.30: auth codes, CRS rules, absolute URLs, shapes per spec."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
import yaml
from jsonschema import Draft7Validator
from referencing import Registry
from referencing.jsonschema import DRAFT7
from servers import SPECS, ManualClock, wait_until
from zgw_sandbox import (
    CATALOGUS_UUID,
    INFORMATIEOBJECTTYPE_UUID,
    ZAAKTYPE_UUID,
    create_sandbox_app,
)

NOW = 1_700_000_000
CLIENT, SECRET = "test-client", "sandbox-test-secret-0123456789abcdef"
OTHER, OTHER_SECRET = "other-client", "other-test-secret-abcdef0123456789"
CRS = {"Accept-Crs": "EPSG:4326", "Content-Crs": "EPSG:4326"}
RSIN = "517439943"
HOST = "zgw.example.nl"


def token(secret: str = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    payload = {"iss": CLIENT, "iat": NOW, "client_id": CLIENT, "user_id": "", "user_representation": ""}
    payload.update(claims)
    with warnings.catch_warnings():
        # HS512 wants a 64-byte key; the test only needs the server to refuse the algorithm.
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode({k: v for k, v in payload.items() if v is not ...}, secret, algorithm=algorithm)


def bearer(**claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(**claims)}"}


@pytest.fixture
def serve() -> Iterator[Callable[..., httpx.Client]]:
    """Start create_sandbox_app(**options) under uvicorn on a free loopback port; return a client."""
    started: list[tuple[uvicorn.Server, threading.Thread, httpx.Client]] = []

    def start(**options: Any) -> httpx.Client:
        options.setdefault("clients", {CLIENT: SECRET, OTHER: OTHER_SECRET})
        options.setdefault("clock", ManualClock(NOW))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(create_sandbox_app(**options), log_level="warning", proxy_headers=False, lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        wait_until(lambda: server.started, 10)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5, trust_env=False)
        started.append((server, thread, client))
        return client

    yield start
    for server, thread, client in started:
        client.close()
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive()


def oas_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 `nullable: true` means "or null"; JSON Schema spells that with anyOf."""
    if isinstance(node, list):
        return [oas_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: oas_to_jsonschema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


_registries: dict[str, Registry] = {}


def validate(spec: str, schema: str, instance: Any) -> None:
    if spec not in _registries:
        document = oas_to_jsonschema(yaml.safe_load((SPECS / f"{spec}.yaml").read_text()))
        if spec == "catalogi-1.3.1":
            # This document types two reference lists as `string`; Open Zaak's own 1.3.1 document and
            # Catalogi 1.3.3 type them as arrays of URLs, which is what servers return.
            schemas = document["components"]["schemas"]
            urls = {"type": "array", "items": {"type": "string", "format": "uri"}}
            schemas["ZaakType"]["properties"]["informatieobjecttypen"] = urls
            schemas["InformatieObjectType"]["properties"]["zaaktypen"] = urls
        _registries[spec] = Registry().with_resource(f"urn:{spec}", DRAFT7.create_resource(document))
    validator = Draft7Validator(
        {"$ref": f"urn:{spec}#/components/schemas/{schema}"},
        registry=_registries[spec],
        format_checker=Draft7Validator.FORMAT_CHECKER,
    )
    validator.validate(instance)


def zaaktype_url(base: str = f"http://{HOST}") -> str:
    return f"{base}/catalogi/api/v1/zaaktypen/{ZAAKTYPE_UUID}"


def iotype_url(base: str = f"http://{HOST}") -> str:
    return f"{base}/catalogi/api/v1/informatieobjecttypen/{INFORMATIEOBJECTTYPE_UUID}"


def local(url: str) -> str:
    """The path of a URL the sandbox rendered for HOST, to request it again over loopback."""
    assert url.startswith(f"http://{HOST}/"), url
    return url[len(f"http://{HOST}") :]


def new_zaak(**fields: Any) -> dict[str, Any]:
    zaak = {
        "bronorganisatie": RSIN,
        "verantwoordelijkeOrganisatie": RSIN,
        "startdatum": "2024-05-01",
        "zaaktype": zaaktype_url(),
    }
    return zaak | fields


def create_zaak(client: httpx.Client, headers: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
    response = client.post(
        "/zaken/api/v1/zaken", json=new_zaak(**fields), headers={"Host": HOST, **CRS, **(headers or bearer())}
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def assert_auth_problem(response: httpx.Response, code: str) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/json"
    assert "www-authenticate" not in response.headers
    body = response.json()
    assert set(body) == {"type", "code", "title", "status", "detail", "instance"}
    assert (body["code"], body["status"]) == (code, 403)
    validate("zaken-1.5.1", "Fout", body)


AUTH_TABLE = [
    ("no Authorization header", {}, "permission_denied"),
    ("lower-case bearer", {"Authorization": f"bearer {token()}"}, "permission_denied"),
    ("Basic credentials", {"Authorization": "Basic dGVzdDp0ZXN0"}, "permission_denied"),
    ("garbage token", {"Authorization": "Bearer not.a-jwt"}, "jwt-decode-error"),
    ("HS512", {"Authorization": f"Bearer {token(algorithm='HS512')}"}, "jwt-invalidalgorithmerror"),
    ("no client_id claim", bearer(client_id=...), "missing-client-identifier"),
    ("unknown client_id", bearer(client_id="nobody"), "invalid-client-identifier"),
    ("wrong secret", {"Authorization": f"Bearer {token(secret='x' * 40)}"}, "invalid-jwt-signature"),
    ("secret of another client", {"Authorization": f"Bearer {token(secret=OTHER_SECRET)}"}, "invalid-jwt-signature"),
    ("no iat", bearer(iat=...), "jwt-missing-iat-claim"),
    ("iat 3600 s old", bearer(iat=NOW - 3600), "jwt-expired"),
    ("exp in the past", bearer(exp=NOW - 1), "jwt-expiredsignatureerror"),
    ("nbf in the future", bearer(nbf=NOW + 60), "jwt-immaturesignatureerror"),
    ("aud claim", bearer(aud="openzaak"), "jwt-invalidaudienceerror"),
    ("user_representation null", bearer(user_representation=None), "jwt-invalid-user-claim"),
    ("user_id not a string", bearer(user_id=42), "jwt-invalid-user-claim"),
]


@pytest.mark.parametrize(("case", "headers", "code"), AUTH_TABLE, ids=[row[0] for row in AUTH_TABLE])
def test_authentication_failures_answer_403_with_open_zaaks_code(
    serve: Callable[..., httpx.Client], case: str, headers: dict[str, str], code: str
) -> None:
    client = serve()
    assert_auth_problem(client.get("/catalogi/api/v1/zaaktypen", headers=headers), code)


@pytest.mark.parametrize(
    "claims",
    [{}, {"iat": NOW - 3599}, {"iat": NOW + 600}, {"exp": NOW + 1}, {"nbf": NOW}, {"user_id": "u" * 255}],
    ids=["fresh", "iat-3599s-old", "iat-in-future", "exp-ahead", "nbf-now", "long-user-id"],
)
def test_valid_tokens_are_accepted(serve: Callable[..., httpx.Client], claims: dict[str, Any]) -> None:
    client = serve()
    assert client.get("/catalogi/api/v1/zaaktypen", headers=bearer(**claims)).status_code == 200


def test_expiry_follows_the_injected_clock_and_leeway(serve: Callable[..., httpx.Client]) -> None:
    clock = ManualClock(NOW)
    client = serve(clock=clock, jwt_expiry=300, time_leeway=10)
    headers = bearer()
    clock.now = NOW + 309
    assert client.get("/catalogi/api/v1/catalogussen", headers=headers).status_code == 200
    clock.now = NOW + 310
    assert_auth_problem(client.get("/catalogi/api/v1/catalogussen", headers=headers), "jwt-expired")


def test_authentication_is_checked_before_crs(serve: Callable[..., httpx.Client]) -> None:
    client = serve()
    assert_auth_problem(client.get("/zaken/api/v1/zaken"), "permission_denied")
    assert_auth_problem(client.post("/zaken/api/v1/zaken", json={}, headers=bearer(iat=...)), "jwt-missing-iat-claim")


def test_crs_headers_are_enforced_on_zaken(serve: Callable[..., httpx.Client]) -> None:
    client = serve()
    zaak = create_zaak(client)
    path = "/zaken/api/v1/zaken/" + zaak["uuid"]
    cases = [
        ("GET", "/zaken/api/v1/zaken", {}, 412, "precondition_failed", "'Accept-Crs' header ontbreekt"),
        ("GET", path, {"Accept-Crs": "EPSG:28992"}, 406, "not_acceptable", None),
        ("GET", path, {"Accept-Crs": "epsg:4326"}, 406, "not_acceptable", None),
        (
            "POST",
            "/zaken/api/v1/zaken",
            {"Accept-Crs": "EPSG:4326"},
            412,
            "precondition_failed",
            "'Content-Crs' header ontbreekt",
        ),
        ("PATCH", path, {"Accept-Crs": "EPSG:4326", "Content-Crs": "EPSG:28992"}, 406, "not_acceptable", None),
        ("POST", "/zaken/api/v1/zaken/_zoek", {}, 412, "precondition_failed", "'Accept-Crs' header ontbreekt"),
    ]
    for method, url, crs, status, code, detail in cases:
        response = client.request(method, url, json={}, headers={**bearer(), **crs})
        assert (response.status_code, response.json()["code"]) == (status, code), (method, url, crs)
        if detail is not None:
            assert response.json()["detail"] == detail
        assert response.headers["content-crs"] == "EPSG:4326"  # Open Zaak sends it on errors too

    # Open Zaak does not demand Content-Crs on reads, whatever the specs say.
    read = client.get(path, headers={**bearer(), "Accept-Crs": "EPSG:4326", "Host": HOST})
    assert read.status_code == 200
    assert read.headers["content-crs"] == "EPSG:4326"
    assert read.headers["api-version"] == "1.5.1"
    # Not CRS paths: the audit trail and the other components.
    assert client.get(path + "/audittrail", headers=bearer()).status_code == 200
    assert client.get("/catalogi/api/v1/zaaktypen", headers=bearer()).status_code == 200
    assert client.delete(path, headers=bearer()).status_code == 204
    assert client.get(path, headers={**bearer(), **CRS}).status_code == 404


def test_urls_are_built_from_the_host_header(serve: Callable[..., httpx.Client]) -> None:
    client = serve()
    response = client.post("/zaken/api/v1/zaken", json=new_zaak(), headers={**bearer(), **CRS, "Host": HOST})
    zaak = response.json()
    assert zaak["url"] == f"http://{HOST}/zaken/api/v1/zaken/{zaak['uuid']}"
    assert response.headers["location"] == zaak["url"]
    assert zaak["zaaktype"] == zaaktype_url()

    # Read through another name: every URL follows the host of that request, as Open Zaak renders them.
    other = client.get(f"/zaken/api/v1/zaken/{zaak['uuid']}", headers={**bearer(), **CRS, "Host": "intern:8001"}).json()
    assert other["url"] == f"http://intern:8001/zaken/api/v1/zaken/{zaak['uuid']}"
    assert other["zaaktype"] == zaaktype_url("http://intern:8001")
    # X-Forwarded-Host and -Proto are ignored unless enabled.
    spoofed = client.get(
        "/catalogi/api/v1/catalogussen",
        headers={**bearer(), "Host": HOST, "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"},
    ).json()
    assert spoofed["results"][0]["url"] == f"http://{HOST}/catalogi/api/v1/catalogussen/{CATALOGUS_UUID}"


def test_forwarded_host_and_proto_count_when_enabled(serve: Callable[..., httpx.Client]) -> None:
    client = serve(use_x_forwarded_host=True)
    headers = {**bearer(), "Host": "10.0.0.5:8000", "X-Forwarded-Host": HOST, "X-Forwarded-Proto": "https"}
    catalogus = client.get(f"/catalogi/api/v1/catalogussen/{CATALOGUS_UUID}", headers=headers).json()
    assert catalogus["url"] == f"https://{HOST}/catalogi/api/v1/catalogussen/{CATALOGUS_UUID}"
    assert catalogus["zaaktypen"] == [zaaktype_url(f"https://{HOST}")]


def test_hosts_outside_allowed_hosts_get_400(serve: Callable[..., httpx.Client]) -> None:
    client = serve(allowed_hosts=[HOST, ".intern.nl"])
    path = "/catalogi/api/v1/catalogussen"
    assert client.get(path, headers={**bearer(), "Host": HOST}).status_code == 200
    assert client.get(path, headers={**bearer(), "Host": "zaken.intern.nl:8443"}).status_code == 200
    refused = client.get(path, headers={**bearer(), "Host": "127.0.0.1"})
    assert refused.status_code == 400
    assert refused.headers["content-type"].startswith("text/html")
    # The host syntax is checked even when any host is allowed.
    assert serve().get(path, headers={**bearer(), "Host": "bad host"}).status_code == 400


def test_zaaktype_must_be_a_local_url(serve: Callable[..., httpx.Client]) -> None:
    client = serve()
    headers = {**bearer(), **CRS, "Host": HOST}
    cases = [
        (zaaktype_url("http://openzaak.elders.nl"), "unknown-service"),
        (zaaktype_url(f"https://{HOST}"), "unknown-service"),
        (f"http://{HOST}/catalogi/api/v1/zaaktypen/{CATALOGUS_UUID}", "does_not_exist"),
        (f"http://{HOST}/catalogi/api/v1/catalogussen/{CATALOGUS_UUID}", "bad-url"),
        ("zaaktype", "bad-url"),
    ]
    for zaaktype, code in cases:
        response = client.post("/zaken/api/v1/zaken", json=new_zaak(zaaktype=zaaktype), headers=headers)
        assert response.status_code == 400, zaaktype
        body = response.json()
        validate("zaken-1.5.1", "ValidatieFout", body)
        assert body["invalidParams"] == [
            {"name": "zaaktype", "code": code, "reason": body["invalidParams"][0]["reason"]}
        ]

    missing = client.post("/zaken/api/v1/zaken", json={"zaaktype": zaaktype_url()}, headers=headers).json()
    assert {(p["name"], p["code"]) for p in missing["invalidParams"]} == {
        ("bronorganisatie", "required"),
        ("verantwoordelijkeOrganisatie", "required"),
        ("startdatum", "required"),
    }
    bad_rsin = client.post("/zaken/api/v1/zaken", json=new_zaak(bronorganisatie="123456789"), headers=headers)
    assert bad_rsin.json()["invalidParams"][0]["name"] == "bronorganisatie"


def test_zaak_responses_match_the_spec(serve: Callable[..., httpx.Client]) -> None:
    client = serve()
    zaak = create_zaak(client, omschrijving="Melding", vertrouwelijkheidaanduiding="intern")
    validate("zaken-1.5.1", "Zaak", zaak)
    assert zaak["vertrouwelijkheidaanduiding"] == "intern"
    assert re.fullmatch(r"ZAAK-\d{4}-\d{10}", zaak["identificatie"])
    headers = {**bearer(), **CRS, "Host": HOST}
    patched = client.patch(f"/zaken/api/v1/zaken/{zaak['uuid']}", json={"omschrijving": "Anders"}, headers=headers)
    validate("zaken-1.5.1", "Zaak", patched.json())
    assert patched.json()["omschrijving"] == "Anders"
    put = client.put(f"/zaken/api/v1/zaken/{zaak['uuid']}", json=new_zaak(toelichting="Alles"), headers=headers)
    assert (put.status_code, put.json()["toelichting"], put.json()["omschrijving"]) == (200, "Alles", "Anders")
    incomplete = client.put(f"/zaken/api/v1/zaken/{zaak['uuid']}", json={"omschrijving": "x"}, headers=headers)
    assert incomplete.status_code == 400
    listed = client.get("/zaken/api/v1/zaken", headers=headers).json()
    validate("zaken-1.5.1", "PaginatedZaakList", listed)


def test_catalogi_and_documenten_shapes_match_the_spec(serve: Callable[..., httpx.Client]) -> None:
    client = serve()
    headers = {**bearer(), "Host": HOST}
    catalogus = client.get(f"/catalogi/api/v1/catalogussen/{CATALOGUS_UUID}", headers=headers).json()
    validate("catalogi-1.3.1", "Catalogus", catalogus)
    zaaktype = client.get(local(zaaktype_url()), headers=headers)
    validate("catalogi-1.3.1", "ZaakType", zaaktype.json())
    assert zaaktype.headers["api-version"] == "1.3.1"
    iotype = client.get(local(iotype_url()), headers=headers).json()
    validate("catalogi-1.3.1", "InformatieObjectType", iotype)
    filtered = client.get("/catalogi/api/v1/zaaktypen", params={"catalogus": catalogus["url"]}, headers=headers)
    assert [z["url"] for z in filtered.json()["results"]] == [zaaktype_url()]
    elsewhere = client.get("/catalogi/api/v1/zaaktypen", params={"catalogus": "http://x/c/1"}, headers=headers)
    assert elsewhere.json()["count"] == 0


def test_pagination_links_are_absolute_and_keep_filters(serve: Callable[..., httpx.Client]) -> None:
    client = serve(page_size=2)
    for _ in range(5):
        create_zaak(client)
    create_zaak(client, bronorganisatie="000000000")
    headers = {**bearer(), **CRS, "Host": HOST}
    base = f"http://{HOST}/zaken/api/v1/zaken"
    first = client.get("/zaken/api/v1/zaken", params={"bronorganisatie": RSIN}, headers=headers).json()
    assert (first["count"], len(first["results"]), first["previous"]) == (5, 2, None)
    assert first["next"] == f"{base}?bronorganisatie={RSIN}&page=2"
    second = client.get(local(first["next"]), headers=headers).json()
    assert second["previous"] == f"{base}?bronorganisatie={RSIN}"
    third = client.get("/zaken/api/v1/zaken", params={"bronorganisatie": RSIN, "page": 3}, headers=headers)
    assert (len(third.json()["results"]), third.json()["next"]) == (1, None)
    assert client.get("/zaken/api/v1/zaken?page=4", headers=headers).status_code == 404
    assert client.get("/zaken/api/v1/zaken", params={"zaaktype": zaaktype_url()}, headers=headers).json()["count"] == 6
    search = client.post("/zaken/api/v1/zaken/_zoek", json={"bronorganisatie": "000000000"}, headers=headers)
    assert (search.status_code, search.json()["count"]) == (200, 1)
    assert search.headers["content-crs"] == "EPSG:4326"


def test_audittrail_records_the_user_of_each_token(serve: Callable[..., httpx.Client]) -> None:
    client = serve()
    alice = bearer(user_id="alice", user_representation="Alice A.")
    bob = {"Authorization": f"Bearer {token(secret=OTHER_SECRET, client_id=OTHER, iss=OTHER, user_id='bob')}"}
    zaak = create_zaak(client, headers=alice)
    headers = {**bob, **CRS, "Host": HOST, "X-Audit-Toelichting": "correctie"}
    client.patch(f"/zaken/api/v1/zaken/{zaak['uuid']}", json={"omschrijving": "x"}, headers=headers)
    trail = client.get(f"/zaken/api/v1/zaken/{zaak['uuid']}/audittrail", headers={**alice, "Host": HOST}).json()
    assert [(e["actie"], e["applicatieWeergave"], e["gebruikersId"], e["gebruikersWeergave"]) for e in trail] == [
        ("create", CLIENT, "alice", "Alice A."),
        ("partial_update", OTHER, "bob", ""),
    ]
    # As in Open Zaak: the Applicatie's UUID (not the client_id), the component in capitals, bron - identificatie.
    assert trail[0]["applicatieId"] != trail[1]["applicatieId"]
    assert all(re.fullmatch(r"[0-9a-f-]{36}", e["applicatieId"]) for e in trail)
    assert trail[0]["bron"] == "ZRC"
    assert trail[0]["resourceWeergave"] == f"{RSIN} - {zaak['identificatie']}"
    assert trail[1]["toelichting"] == "correctie"
    assert trail[1]["wijzigingen"]["nieuw"]["omschrijving"] == "x"
    assert trail[1]["hoofdObject"] == zaak["url"]
    # Open Zaak writes `bron` in capitals, outside the enum of its own document; the rest validates.
    validate("zaken-1.5.1", "AuditTrail", trail[1] | {"bron": "zrc"})


def test_documents_download_with_headers_and_etag(serve: Callable[..., httpx.Client]) -> None:
    client = serve()
    headers = {**bearer(), "Host": HOST}
    content = b"%PDF-1.4 sandbox\n" * 100
    document = {
        "bronorganisatie": RSIN,
        "creatiedatum": "2024-05-01",
        "titel": "Brief",
        "auteur": "Sandbox",
        "taal": "nld",
        "bestandsnaam": "brief.pdf",
        "formaat": "application/pdf",
        "inhoud": base64.b64encode(content).decode(),
        "informatieobjecttype": iotype_url(),
    }
    created = client.post("/documenten/api/v1/enkelvoudiginformatieobjecten", json=document, headers=headers)
    assert created.status_code == 201, created.text
    body = created.json()
    validate("documenten-1.4.2", "EnkelvoudigInformatieObjectCreateLock", body)
    assert created.headers["location"] == body["url"]
    assert body["inhoud"] == f"{body['url']}/download?versie=1"
    assert body["inhoud"].startswith(f"http://{HOST}/documenten/api/v1/enkelvoudiginformatieobjecten/")
    assert body["bestandsomvang"] == len(content)
    read = client.get(local(body["url"]), headers=headers)
    validate("documenten-1.4.2", "EnkelvoudigInformatieObject", read.json())
    assert read.headers["api-version"] == "1.4.2"

    download = client.get(local(body["inhoud"]), headers=headers)
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-length"] == str(len(content))
    # Named after the stored file, as Open Zaak does, not after bestandsnaam.
    assert re.fullmatch(r'attachment; filename="[0-9a-f-]{36}\.bin"', download.headers["content-disposition"])
    etag = download.headers["etag"]
    cached = client.get(local(body["inhoud"]), headers={**headers, "If-None-Match": etag})
    assert (cached.status_code, cached.content, cached.headers["etag"]) == (304, b"", etag)
    stale = client.get(local(body["inhoud"]), headers={**headers, "If-None-Match": '"x"'})
    assert stale.status_code == 200

    empty = client.post(
        "/documenten/api/v1/enkelvoudiginformatieobjecten", json=document | {"inhoud": None}, headers=headers
    ).json()
    assert empty["inhoud"] is None
    assert client.get(local(empty["url"]) + "/download", headers=headers).status_code == 204


def test_document_validation(serve: Callable[..., httpx.Client]) -> None:
    client = serve()
    headers = {**bearer(), "Host": HOST}
    document = {"bronorganisatie": RSIN, "creatiedatum": "2024-05-01", "titel": "t", "auteur": "a", "taal": "nld"}
    cases = [
        (document | {"informatieobjecttype": iotype_url("http://elders")}, "informatieobjecttype", "unknown-service"),
        (document | {"informatieobjecttype": iotype_url(), "inhoud": "***"}, "inhoud", "invalid"),
        (document, "informatieobjecttype", "required"),
    ]
    for body, name, code in cases:
        response = client.post("/documenten/api/v1/enkelvoudiginformatieobjecten", json=body, headers=headers)
        assert response.status_code == 400
        assert [(p["name"], p["code"]) for p in response.json()["invalidParams"]] == [(name, code)]


def test_paths_roots_and_methods(serve: Callable[..., httpx.Client]) -> None:
    client = serve()
    headers = {**bearer(), **CRS, "Host": HOST}
    roots = {"/catalogi/api/v1/": "1.3.1", "/zaken/api/v1/": "1.5.1", "/documenten/api/v1/": "1.4.2"}
    for root, version in roots.items():
        response = client.get(root, headers=headers)
        assert (response.status_code, response.headers["api-version"]) == (200, version)
        assert all(url.startswith(f"http://{HOST}{root}") for url in response.json().values())
    for wrong in ("/zaken/api/v1/zaken/", "/catalogi/api/v1/zaaktypen/", "/zaken/api/v1", "/zaken/api/v1/zaken/123"):
        response = client.get(wrong, headers=headers, follow_redirects=False)
        assert response.status_code == 404, wrong
        if not wrong.endswith("/123"):  # no route: Django's HTML page, not a problem
            assert response.headers["content-type"].startswith("text/html"), wrong
    not_allowed = client.delete("/catalogi/api/v1/zaaktypen", headers=headers)
    assert (not_allowed.status_code, not_allowed.json()["code"]) == (405, "method_not_allowed")


def test_request_journal_shows_claims_never_tokens(serve: Callable[..., httpx.Client]) -> None:
    client = serve()
    raw = token(user_id="alice")
    client.get("/catalogi/api/v1/zaaktypen?x=1", headers={"Authorization": f"Bearer {raw}", "X-Trace": "a"})
    client.get("/catalogi/api/v1/zaaktypen", headers={"Authorization": "Basic c2VjcmV0OnNlY3JldA=="})
    seen = client.get("/_sandbox/requests")
    assert seen.status_code == 200
    first, second = seen.json()
    assert (first["method"], first["path"], first["query"], first["status"]) == (
        "GET",
        "/catalogi/api/v1/zaaktypen",
        "x=1",
        200,
    )
    assert first["headers"]["x-trace"] == "a"
    assert first["headers"]["authorization"]["header"] == {"alg": "HS256", "typ": "JWT"}
    assert first["headers"]["authorization"]["claims"]["user_id"] == "alice"
    assert second["headers"]["authorization"] == {"scheme": "Basic"}
    assert raw not in seen.text
    assert raw.split(".")[2] not in seen.text
    assert "c2VjcmV0OnNlY3JldA" not in seen.text
    assert client.delete("/_sandbox/requests").status_code == 204
    assert client.get("/_sandbox/requests").json() == []


@pytest.fixture
def sandbox_process() -> Iterator[tuple[int, list[str]]]:
    """`python -m zgw_sandbox` on a port the OS picks; yields (port, lines of output so far)."""
    env = {**os.environ, "SANDBOX_CLIENTS": f"{OTHER}={OTHER_SECRET}"}
    command = [sys.executable, "-m", "zgw_sandbox", "--port", "0", "--client", f"{CLIENT}={SECRET}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    output: list[str] = []
    stdout = process.stdout
    assert stdout is not None
    threading.Thread(target=lambda: output.extend(iter(stdout.readline, "")), daemon=True).start()

    def announced() -> re.Match[str] | None:
        assert process.poll() is None, "".join(output)
        return re.search(r"running on http://127\.0\.0\.1:(\d+)", "".join(output))

    try:
        wait_until(announced, 20)
        match = announced()
        assert match is not None
        yield int(match.group(1)), output
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_module_serves_clients_from_arguments_and_environment(sandbox_process: tuple[int, list[str]]) -> None:
    port, output = sandbox_process
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5, trust_env=False) as client:
        for client_id, secret in ((CLIENT, SECRET), (OTHER, OTHER_SECRET)):
            auth = {"Authorization": f"Bearer {token(secret=secret, client_id=client_id, iat=int(time.time()))}"}
            listed = client.get("/catalogi/api/v1/catalogussen", headers=auth)
            assert (listed.status_code, listed.json()["count"]) == (200, 1)
    text = "".join(output)
    assert CLIENT in text and OTHER in text
    assert SECRET not in text and OTHER_SECRET not in text


def test_media_types_are_negotiated_first_and_download_errors_are_binary(serve: Callable[..., httpx.Client]) -> None:
    """As Open Zaak renders them: a 406 for an Accept the view cannot render comes before authentication, and
    the download route answers its errors with its binary renderer (no JSON, no `code`)."""
    client = serve()
    headers = {**bearer(), "Host": HOST}
    problem_json = {"Accept": "application/problem+json"}
    refused = client.get("/catalogi/api/v1/catalogussen", headers=problem_json)  # no token either
    assert (refused.status_code, refused.json()["code"]) == (406, "not_acceptable")
    assert (
        client.get("/catalogi/api/v1/catalogussen", headers={**headers, "Accept": "application/*"}).status_code == 200
    )

    document = {
        "bronorganisatie": RSIN,
        "creatiedatum": "2024-05-01",
        "titel": "t",
        "auteur": "a",
        "taal": "nld",
        "informatieobjecttype": iotype_url(),
        "inhoud": base64.b64encode(b"inhoud").decode(),
    }
    created = client.post("/documenten/api/v1/enkelvoudiginformatieobjecten", json=document, headers=headers).json()
    download = local(created["inhoud"])
    binary = (b"application/octet-stream", "application/octet-stream")
    for status, extra in [
        (403, {"Authorization": "Bearer garbage"}),
        (406, {"Accept": "application/json"}),
        (404, {}),
    ]:
        path = download.replace("versie=1", "versie=2") if status == 404 else download
        answer = client.get(path, headers={**headers, **extra})
        assert (answer.status_code, (answer.content, answer.headers["content-type"])) == (status, binary)
    assert client.get(download, headers=headers).content == b"inhoud"


def test_detail_reads_carry_an_etag_and_answer_304(serve: Callable[..., httpx.Client]) -> None:
    client = serve()
    zaak = create_zaak(client)
    headers = {**bearer(), **CRS, "Host": HOST}
    read = client.get(local(zaak["url"]), headers=headers)
    etag = read.headers["etag"]
    cached = client.get(local(zaak["url"]), headers={**headers, "If-None-Match": etag})
    assert (cached.status_code, cached.content, cached.headers["etag"]) == (304, b"", etag)
    client.patch(local(zaak["url"]), json={"omschrijving": "gewijzigd"}, headers=headers)
    changed = client.get(local(zaak["url"]), headers={**headers, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    catalogus = client.get(f"/catalogi/api/v1/catalogussen/{CATALOGUS_UUID}", headers=headers)
    assert catalogus.headers["etag"]
