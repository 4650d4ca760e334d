"""Links that keep working: the sandbox under another host name than the gateway, rewriting on."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import API_KEY, SANDBOX_CLIENTS, base_config
from servers import GatewayProcess, ThreadServer, rss, sandbox_process
from zgw_sandbox import INFORMATIEOBJECTTYPE_UUID, ZAAKTYPE_UUID

KEY = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def far_sandbox() -> Iterator[str]:
    """The sandbox on 127.0.0.2: a different host than the gateway's 127.0.0.1."""
    with sandbox_process(SANDBOX_CLIENTS, page_size=2, host="127.0.0.2") as url:
        yield url


@pytest.fixture
def rewriting_gateway(far_sandbox: str, gateway_factory: Callable[..., GatewayProcess]) -> GatewayProcess:
    config = base_config(far_sandbox)
    for component in config["components"].values():
        component["rewrite_urls"] = True
    return gateway_factory(config)


def urls_in(value: Any) -> Iterator[str]:
    if isinstance(value, str) and value.startswith("http"):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from urls_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from urls_in(item)


def test_every_link_points_at_the_gateway_and_can_be_followed(
    rewriting_gateway: GatewayProcess, far_sandbox: str
) -> None:
    gw = rewriting_gateway
    public_zaaktype = f"{gw.url}/catalogi/api/v1/zaaktypen/{ZAAKTYPE_UUID}"
    with httpx.Client(headers=KEY, timeout=10) as client:
        created = []
        for n in range(3):  # more than one page (the sandbox pages by 2)
            response = client.post(
                f"{gw.url}/zaken/api/v1/zaken",
                json={
                    "bronorganisatie": "517439943",
                    "verantwoordelijkeOrganisatie": "517439943",
                    "startdatum": "2026-11-28",
                    "zaaktype": public_zaaktype,  # the public URL goes back upstream in the upstream's form
                    "omschrijving": f"zaak {n}",
                },
            )
            assert response.status_code == 201, response.text
            assert response.headers["location"].startswith(gw.url + "/zaken/api/v1/zaken/")
            assert response.json()["zaaktype"] == public_zaaktype
            created.append(response)
        followed = client.get(created[0].headers["location"])
        assert followed.status_code == 200
        assert followed.json()["url"] == created[0].headers["location"]

        page = client.get(f"{gw.url}/zaken/api/v1/zaken").json()
        assert page["next"].startswith(gw.url + "/zaken/api/v1/zaken?")
        second = client.get(page["next"])
        assert second.status_code == 200
        assert second.json()["previous"].startswith(gw.url)

        everything = [page, client.get(f"{gw.url}/catalogi/api/v1/catalogussen").json(), followed.json()]
        links = {url for doc in everything for url in urls_in(doc)}
        assert links, "expected links in the answers"
        assert not [url for url in links if far_sandbox in url]
        for url in sorted(links):
            assert url.startswith(gw.url), url
            assert client.get(url).status_code == 200, url

        # Query values carrying URLs are rewritten to the upstream's form too.
        filtered = client.get(f"{gw.url}/zaken/api/v1/zaken", params={"zaaktype": public_zaaktype}).json()
        assert filtered["count"] >= 3


def test_document_download_through_its_inhoud_link(rewriting_gateway: GatewayProcess) -> None:
    gw = rewriting_gateway
    content = bytes(range(256)) * 64
    with httpx.Client(headers=KEY, timeout=10) as client:
        document = client.post(
            f"{gw.url}/documenten/api/v1/enkelvoudiginformatieobjecten",
            json={
                "bronorganisatie": "517439943",
                "creatiedatum": "2026-11-28",
                "titel": "Bijlage",
                "auteur": "Legacy DMS",
                "taal": "nld",
                "informatieobjecttype": f"{gw.url}/catalogi/api/v1/informatieobjecttypen/{INFORMATIEOBJECTTYPE_UUID}",
                "bestandsnaam": "bijlage.bin",
                "inhoud": base64.b64encode(content).decode(),
            },
        )
        assert document.status_code == 201, document.text
        inhoud = document.json()["inhoud"]
        assert inhoud.startswith(gw.url + "/documenten/api/v1/")
        download = client.get(inhoud)
        assert download.status_code == 200
        assert download.content == content  # binary bodies are never touched


def test_without_rewriting_links_point_upstream(
    far_sandbox: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    gw = gateway_factory(base_config(far_sandbox))
    body = httpx.get(f"{gw.url}/catalogi/api/v1/catalogussen", headers=KEY).json()
    assert all(url.startswith(far_sandbox) for url in urls_in(body))


def test_host_public_mode_lets_the_upstream_build_public_urls(
    far_sandbox: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    config = base_config(far_sandbox)
    config["components"]["catalogi"]["host"] = "public"
    gw = gateway_factory(config)
    body = httpx.get(f"{gw.url}/catalogi/api/v1/catalogussen", headers=KEY).json()
    links = list(urls_in(body))
    assert links and all(url.startswith(gw.url) for url in links), json.dumps(body)


def test_a_50_mb_json_document_is_rewritten_both_ways_in_bounded_memory(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """A 50 MB base64 `inhoud` with links, up and down through a rewriting gateway: links rewritten, RSS flat."""
    inhoud = base64.b64encode(bytes(range(256)) * (150 * 1024)).decode()[: 50 * 1024 * 1024]
    seen: dict[str, Any] = {}

    def document(base: str) -> bytes:
        return json.dumps(
            {"url": f"{base}/documenten/api/v1/enkelvoudiginformatieobjecten/1", "inhoud": inhoud,
             "links": [f"{base}/zaken/api/v1/zaken/{n}" for n in range(100)]}
        ).encode()  # fmt: skip

    async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        base = f"http://{dict(scope['headers'])[b'host'].decode()}"
        if scope["method"] == "POST":
            size, tail, hits = 0, b"", 0
            while True:
                message = await receive()
                chunk = tail + message.get("body", b"")
                hits += chunk.count(base.encode())
                tail = chunk[-200:]
                hits -= tail.count(base.encode())
                size += len(message.get("body", b""))
                if not message.get("more_body"):
                    hits += tail.count(base.encode())
                    break
            seen.update(size=size, hits=hits)
            await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = document(base)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(0, len(body), 1024 * 1024):
            await send({"type": "http.response.body", "body": body[i : i + 1024 * 1024], "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    with ThreadServer(upstream) as up:
        config = base_config(up.url)
        for component in config["components"].values():
            component["rewrite_urls"] = True
        gw = gateway_factory(config)
        assert gw.proc is not None
        before = rss(gw.proc.pid)
        peak = [before]
        url = f"{gw.url}/documenten/api/v1/enkelvoudiginformatieobjecten/1"
        received = bytearray()
        with httpx.stream("GET", url, headers=KEY, timeout=60) as response:
            assert response.status_code == 200
            for part in response.iter_bytes(1024 * 1024):
                received += part
                peak[0] = max(peak[0], rss(gw.proc.pid))
        answer = json.loads(received)
        assert answer["inhoud"] == inhoud
        assert answer["url"].startswith(gw.url) and all(link.startswith(gw.url) for link in answer["links"])

        def upload() -> Any:
            body = document(gw.url)
            for i in range(0, len(body), 1024 * 1024):
                peak[0] = max(peak[0], rss(gw.proc.pid))  # type: ignore[union-attr]
                yield body[i : i + 1024 * 1024]

        posted = httpx.post(
            f"{gw.url}/documenten/api/v1/enkelvoudiginformatieobjecten",
            content=upload(),
            headers={**KEY, "Content-Type": "application/json"},
            timeout=60,
        )
        assert posted.status_code == 201
        assert seen["hits"] == 101  # every public link reached the upstream in the upstream's form
    growth_mb = (peak[0] - before) / 1e6
    print(f"gateway RSS growth while rewriting 50 MB down and up: {growth_mb:.1f} MB")
    assert growth_mb < 50, f"gateway RSS grew {growth_mb:.1f} MB rewriting a 50 MB document"
