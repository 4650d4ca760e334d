"""TLS on both sides: verified upstreams (own CA bundle, client certificates) and the gateway's own listener."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from conftest import API_KEY, base_config
from servers import GatewayProcess, ThreadServer

KEY = {"X-API-Key": API_KEY}


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    peer_cert = scope.get("extensions", {}).get("tls", {}).get("client_cert_name") or ""
    body = b'{"ok": true}'
    headers = [(b"content-type", b"application/json"), (b"x-peer-cert", peer_cert.encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("legacy-dms.gemeente.example")
    other_ca = trustme.CA()
    paths = {
        "ca": d / "ca.pem",
        "other_ca": d / "other-ca.pem",
        "server_chain": d / "server.pem",
        "server_key": d / "server.key",
        "client_chain": d / "client.pem",
        "client_key": d / "client.key",
    }
    ca.cert_pem.write_to_path(paths["ca"])
    other_ca.cert_pem.write_to_path(paths["other_ca"])
    server.private_key_pem.write_to_path(paths["server_key"])
    client.private_key_pem.write_to_path(paths["client_key"])
    for blob in server.cert_chain_pems:
        blob.write_to_path(paths["server_chain"], append=True)
    for blob in client.cert_chain_pems:
        blob.write_to_path(paths["client_chain"], append=True)
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture
def tls_upstream(pki: dict[str, str]) -> Iterator[ThreadServer]:
    with ThreadServer(hello, ssl_certfile=pki["server_chain"], ssl_keyfile=pki["server_key"]) as server:
        yield server


def _config(upstream: str, tls: dict[str, Any] | None) -> dict[str, Any]:
    config = base_config(upstream)
    if tls is not None:
        config["components"]["catalogi"]["tls"] = tls
    return config


def test_upstream_verified_with_the_components_ca_bundle(
    tls_upstream: ThreadServer, pki: dict[str, str], gateway_factory: Callable[..., GatewayProcess]
) -> None:
    gw = gateway_factory(_config(tls_upstream.url, {"ca_file": pki["ca"]}))
    response = httpx.get(gw.url + "/catalogi/api/v1/catalogussen", headers=KEY)
    assert response.status_code == 200
    assert response.json() == {"ok": True}


@pytest.mark.parametrize("tls", [None, "other_ca"])
def test_unverifiable_upstream_certificate_is_502_upstream_tls(
    tls: str | None, tls_upstream: ThreadServer, pki: dict[str, str], gateway_factory: Callable[..., GatewayProcess]
) -> None:
    gw = gateway_factory(_config(tls_upstream.url, {"ca_file": pki[tls]} if tls else None))
    response = httpx.get(gw.url + "/catalogi/api/v1/catalogussen", headers=KEY)
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "upstream-tls"


def test_client_certificate_for_mtls_upstreams(
    pki: dict[str, str], gateway_factory: Callable[..., GatewayProcess]
) -> None:
    with ThreadServer(
        hello, ssl_certfile=pki["server_chain"], ssl_keyfile=pki["server_key"], ssl_ca_certs=pki["ca"]
    ) as upstream:
        without = gateway_factory(_config(upstream.url, {"ca_file": pki["ca"]}))
        assert httpx.get(without.url + "/catalogi/api/v1/catalogussen", headers=KEY).status_code == 502
        tls = {"ca_file": pki["ca"], "cert_file": pki["client_chain"], "key_file": pki["client_key"]}
        with_cert = gateway_factory(_config(upstream.url, tls))
        response = httpx.get(with_cert.url + "/catalogi/api/v1/catalogussen", headers=KEY)
        assert response.status_code == 200


def test_gateway_listener_serves_tls(
    sandbox: str, pki: dict[str, str], gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    config = base_config(sandbox)
    config["listen"]["tls"] = {"cert_file": pki["server_chain"], "key_file": pki["server_key"]}
    gw = gateway_factory(config)
    response = httpx.get(
        gw.url + "/catalogi/api/v1/catalogussen", headers=KEY, verify=ssl.create_default_context(cafile=pki["ca"])
    )
    assert gw.url.startswith("https://")
    assert response.status_code == 200
