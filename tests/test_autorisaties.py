"""The Autorisaties API client over loopback: pagination, the token kept on the API's host, clear errors;
and the `provision` command's own failures. The real Open Zaak is in test_openzaak_provision.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from servers import ThreadServer, free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.cli import main
from gateway.config.loading import parse
from gateway.controlplane.autorisaties import provision
from gateway.controlplane.provision import ProvisionError

ADMIN_SECRET = "admin-secret-for-the-fake-autorisaties-api-0123"


class FakeAutorisaties:
    """An Autorisaties API in memory, two Applicaties a page, that checks the admin's token."""

    def __init__(self) -> None:
        self.applicaties: dict[str, dict[str, Any]] = {}
        self.next_override: str | None = None
        self.seen_tokens: list[str] = []

    def app(self) -> Starlette:
        async def collection(request: Request) -> Response:
            if (denied := self._auth(request)) is not None:
                return denied
            base = f"{request.url.scheme}://{request.url.netloc}/autorisaties/api/v1/applicaties"
            if request.method == "POST":
                uuid = f"a{len(self.applicaties)}"
                self.applicaties[uuid] = {**(await request.json()), "url": f"{base}/{uuid}"}
                return JSONResponse(self.applicaties[uuid], status_code=201)
            page = int(request.query_params.get("page", "1"))
            items = list(self.applicaties.values())
            more = len(items) > page * 2
            nxt = self.next_override or f"{base}?page={page + 1}"
            body = {"count": len(items), "next": nxt if more else None, "results": items[(page - 1) * 2 : page * 2]}
            return JSONResponse(body)

        async def item(request: Request) -> Response:
            if (denied := self._auth(request)) is not None:
                return denied
            uuid = request.path_params["uuid"]
            if request.method == "DELETE":
                del self.applicaties[uuid]
                return Response(status_code=204)
            self.applicaties[uuid] = {**(await request.json()), "url": self.applicaties[uuid]["url"]}
            return JSONResponse(self.applicaties[uuid])

        return Starlette(
            routes=[
                Route("/autorisaties/api/v1/applicaties", collection, methods=["GET", "POST"]),
                Route("/autorisaties/api/v1/applicaties/{uuid}", item, methods=["PUT", "DELETE"]),
            ]
        )

    def _auth(self, request: Request) -> Response | None:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        self.seen_tokens.append(token)
        try:
            jwt.decode(token, ADMIN_SECRET, algorithms=["HS256"])
        except jwt.PyJWTError:
            return JSONResponse({"code": "invalid-jwt-signature", "status": 403}, status_code=403)
        return None


@pytest.fixture
def fake() -> Iterator[tuple[FakeAutorisaties, str]]:
    api = FakeAutorisaties()
    with ThreadServer(api.app()) as server:
        yield api, server.url


def config_for(url: str, callers: int = 5) -> dict[str, Any]:
    return {
        "components": {"catalogi": {"prefix": "/catalogi/api/v1", "upstream": f"{url}/catalogi/api/v1"}},
        "callers": [
            {
                "name": f"caller-{i}",
                "api_keys": [{"sha256": f"{i:064x}"}],
                "client_id": f"caller-{i}-id",
                "secret": {"env": "UNUSED"},
                "autorisaties": [{"component": "ztc", "scopes": ["catalogi.lezen"]}],
                "components": ["catalogi"],
            }
            for i in range(callers)
        ],
        "autorisaties_apis": {
            "fake": {
                "url": f"{url}/autorisaties/api/v1",
                "client_id": "gw-admin",
                "secret": {"env": "ADMIN_SECRET"},
                "components": ["catalogi"],
            }
        },
    }


ENV = {"ADMIN_SECRET": ADMIN_SECRET}


def test_create_then_every_page_is_read_and_nothing_changes(fake: tuple[FakeAutorisaties, str]) -> None:
    api, url = fake
    config = parse(config_for(url))
    created = provision(config, None, apply=True, prune=False, environ=ENV)
    assert created[-1] == "Applied: 5 created, 0 updated, 0 deleted."
    assert len(api.applicaties) == 5
    # five Applicaties are three pages: a plan that missed one would create it again
    assert provision(config, None, apply=False, prune=False, environ=ENV)[-1] == (
        "No changes: the Autorisaties APIs match the config."
    )
    fewer = parse(config_for(url, callers=3))
    assert (
        provision(fewer, None, apply=True, prune=True, environ=ENV)[-1] == "Applied: 0 created, 0 updated, 2 deleted."
    )
    assert sorted(a["clientIds"][0] for a in api.applicaties.values()) == ["caller-0-id", "caller-1-id", "caller-2-id"]


def test_the_admin_token_never_leaves_the_apis_host(fake: tuple[FakeAutorisaties, str]) -> None:
    api, url = fake
    config = parse(config_for(url))
    provision(config, None, apply=True, prune=False, environ=ENV)
    elsewhere = f"http://127.0.0.1:{free_port()}/autorisaties/api/v1/applicaties?page=2"
    api.next_override = elsewhere
    with pytest.raises(ProvisionError, match=r"is not under .*; the admin token is not sent there"):
        provision(config, None, apply=False, prune=False, environ=ENV)


def test_a_wrong_admin_secret_is_named_without_the_secret(fake: tuple[FakeAutorisaties, str]) -> None:
    _, url = fake
    wrong = "wrong-admin-secret-of-at-least-32-bytes"
    with pytest.raises(ProvisionError) as info:
        provision(parse(config_for(url)), None, apply=False, prune=False, environ={"ADMIN_SECRET": wrong})
    message = str(info.value)
    assert message.startswith("autorisaties_apis.fake: GET /autorisaties/api/v1/applicaties: answered 403")
    assert "secret mismatch for the admin client" in message and wrong not in message


def run(tmp_path: Path, data: dict[str, Any], *args: str) -> int:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return main([*args, "--config", str(path)])


def test_provision_command_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    data = config_for(url)
    assert run(tmp_path, data, "provision") == 1  # ADMIN_SECRET is not set here
    assert "autorisaties_apis.fake.secret: env:ADMIN_SECRET is not readable" in capsys.readouterr().err
    assert run(tmp_path, data, "provision", "--emit", "open-zaak", "--apply") == 2
    capsys.readouterr()
    del data["autorisaties_apis"]
    assert run(tmp_path, data, "provision") == 1
    assert capsys.readouterr().err == (
        "zgw-gateway: nothing to provision: add autorisaties_apis (for the callers' autorisaties) or "
        "notificaties_api (for their abonnementen) to the config\n"
    )


def test_provision_of_an_unreachable_api_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ADMIN_SECRET", ADMIN_SECRET)
    assert run(tmp_path, config_for(f"http://127.0.0.1:{free_port()}"), "provision") == 1
    err = capsys.readouterr().err
    assert "autorisaties_apis.fake: GET /autorisaties/api/v1/applicaties: unreachable: cannot connect" in err
    assert ADMIN_SECRET not in err
