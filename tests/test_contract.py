"""Contract: what the gateway sends upstream satisfies the official ZGW OpenAPI documents.

Prism (`@stoplight/prism-cli`, installed by scripts/install-tools) mocks each API from specs/ (the official documents)
with `--errors`: a request that violates the document - a missing required `Accept-Crs`/`Content-Crs`
header, no bearer token, a body that does not match the schema - gets 4xx instead of 200. The caller sends
plain requests; only the gateway's work makes them valid.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import API_KEY, base_config
from servers import ROOT, SPECS, GatewayProcess, free_port, wait_until

PRISM = ROOT / ".cache" / "tools" / "prism" / "node_modules" / ".bin" / "prism"
KEY = {"X-API-Key": API_KEY}
# The newest releases in specs/. Catalogi is not here: Prism 5.14 fails on the Catalogi documents'
# references into `#/paths` ("Invalid reference token: paths") and answers 500 to every request.
APIS = {"zaken": "zaken-1.7.0.yaml", "documenten": "documenten-1.7.0.yaml"}
OK = {"Prefer": "code=200"}  # Prism answers the documented 200 example when the request is valid


def _local(node: Any) -> Any:
    """The document with references to other files made permissive (Prism cannot fetch them here)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            return {} if not ref.startswith("#") else {"$ref": ref}  # siblings of $ref are ignored by OpenAPI 3.0
        return {k: _local(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_local(v) for v in node]
    return node


@pytest.fixture(scope="module")
def prism(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if not PRISM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"prism is required in CI and missing at {PRISM}: scripts/install-tools installs it")
        pytest.skip(f"prism is not installed ({PRISM.relative_to(ROOT)}): run scripts/install-tools (needs npm)")
    workdir = tmp_path_factory.mktemp("prism")
    procs: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    try:
        for name, spec in APIS.items():
            doc = _local(yaml.safe_load((SPECS / spec).read_text()))
            path = workdir / f"{name}.json"
            path.write_text(json.dumps(doc))
            port = free_port()
            log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
            procs.append(
                subprocess.Popen(
                    [str(PRISM), "mock", "--errors", "-h", "127.0.0.1", "-p", str(port), str(path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            urls[name] = f"http://127.0.0.1:{port}"
        for name, url in urls.items():
            log_file = workdir / f"{name}.log"
            wait_until(lambda f=log_file: b"Prism is listening" in f.read_bytes(), 60, 0.2)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def contract_gateway(prism: dict[str, str], gateway_factory: Callable[..., GatewayProcess]) -> GatewayProcess:
    # Prism routes on the document's paths (`/zaken`), so each component's upstream is the mock's root.
    config = base_config("http://127.0.0.1:9")
    for name, url in prism.items():
        config["components"][name]["upstream"] = url
    return gateway_factory(config)


def test_plain_requests_become_valid_zaken_requests(contract_gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=contract_gateway.url, headers={**KEY, **OK}, timeout=20) as client:
        listed = client.get("/zaken/api/v1/zaken")
        assert listed.status_code == 200, listed.text
        created = client.post(
            "/zaken/api/v1/zaken",
            json={
                "bronorganisatie": "517439943",
                "verantwoordelijkeOrganisatie": "517439943",
                "startdatum": "2026-11-28",
                "zaaktype": "https://openzaak.gemeente.example/catalogi/api/v1/zaaktypen/"
                "5e7c2b9d-3f1a-4c8e-8d2b-7a6f4e1c9b02",
            },
            headers={"Prefer": "code=201"},
        )
        assert created.status_code == 201, created.text
        searched = client.post("/zaken/api/v1/zaken/_zoek", json={"bronorganisatie": "517439943"})
        assert searched.status_code == 200, searched.text


def test_documenten_requests_are_valid(contract_gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=contract_gateway.url, headers={**KEY, **OK}, timeout=20) as client:
        listed = client.get("/documenten/api/v1/enkelvoudiginformatieobjecten")
        assert listed.status_code == 200, listed.text
        # No CRS headers on the Documenten API: its document declares none, and the gateway adds none.
        assert client.get("/documenten/api/v1/gebruiksrechten").status_code == 200


def test_the_contract_check_notices_what_the_gateway_would_otherwise_add(
    prism: dict[str, str], gateway_factory: Callable[..., GatewayProcess]
) -> None:
    """The mock really checks: without the gateway's CRS headers, or without a token, the request is refused."""
    direct = httpx.get(prism["zaken"] + "/zaken", headers={"Authorization": "Bearer x", **OK}, timeout=20)
    assert direct.status_code in (400, 422), direct.text
    no_token = httpx.get(
        prism["zaken"] + "/zaken", headers={"Accept-Crs": "EPSG:4326", "Content-Crs": "EPSG:4326", **OK}, timeout=20
    )
    assert no_token.status_code == 401
    config = base_config("http://127.0.0.1:9")
    config["components"]["zaken"]["upstream"] = prism["zaken"]
    del config["components"]["zaken"]["crs"]
    without_crs = gateway_factory(config)
    refused = httpx.get(without_crs.url + "/zaken/api/v1/zaken", headers={**KEY, **OK}, timeout=20)
    assert refused.status_code in (400, 422), refused.text


def test_specs_are_where_the_contract_expects_them() -> None:
    missing = [spec for spec in APIS.values() if not (SPECS / spec).exists()]
    assert not missing, missing
    assert all(isinstance(yaml.safe_load(Path(SPECS / spec).read_text()), dict) for spec in APIS.values())
