"""What does the sandbox's Catalogi API hold? A read-only catalogus, zaaktype and informatieobjecttype.

The records, and the defaults of new zaken and documents, live in `seed.json`; a string there that starts
with `/` is a reference to this server and is rendered as an absolute URL.
"""

from __future__ import annotations

import json
import uuid
from importlib import resources
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zgw_sandbox.web import Api, Call, Local, Problem, detail_response, endpoint, render

VERSION = "1.3.1"
PREFIX = "/catalogi/api/v1"
CATALOGUS_UUID = uuid.UUID("2f0a5c1e-6b5e-4a5f-9a4e-1c7d8b3e0a01")
ZAAKTYPE_UUID = uuid.UUID("5e7c2b9d-3f1a-4c8e-8d2b-7a6f4e1c9b02")
INFORMATIEOBJECTTYPE_UUID = uuid.UUID("9c4d1e7f-2a3b-4d5c-b6e7-8f9a0b1c2d03")
COLLECTIONS = ("catalogussen", "zaaktypen", "informatieobjecttypen")


def _localise(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("/"):
        return Local(value)
    if isinstance(value, dict):
        return {key: _localise(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_localise(item) for item in value]
    return value


def seed() -> dict[str, Any]:
    """A fresh copy of seed.json: records keyed by UUID per collection, plus templates."""
    text = resources.files(__package__).joinpath("seed.json").read_text(encoding="utf-8")
    data: dict[str, Any] = _localise(json.loads(text))
    for collection in COLLECTIONS:
        data[collection] = {uuid.UUID(key): record for key, record in data[collection].items()}
    return data


class Catalogi:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.data = seed()

    def routes(self) -> list[Route]:
        api, routes = self.api, [Route(f"{PREFIX}/", endpoint(self.api, VERSION, self.root))]
        for name in COLLECTIONS:
            routes += [
                Route(f"{PREFIX}/{name}", endpoint(api, VERSION, self.lister(name))),
                Route(f"{PREFIX}/{name}/{{uuid:uuid}}", endpoint(api, VERSION, self.reader(name))),
            ]
        return routes

    async def root(self, call: Call) -> Response:
        return JSONResponse({name: call.url(f"{PREFIX}/{name}") for name in COLLECTIONS})

    def lister(self, collection: str) -> Any:
        async def handle(call: Call) -> Response:
            items = list(self.data[collection].values())
            catalogus = call.request.query_params.get("catalogus")
            if catalogus is not None and collection != "catalogussen":
                items = [item for item in items if call.url(item["catalogus"]) == catalogus]
            return JSONResponse(self.api.paginate(call, items))

        return handle

    def reader(self, collection: str) -> Any:
        async def handle(call: Call) -> Response:
            item = self.data[collection].get(call.request.path_params["uuid"])
            if item is None:
                raise Problem.not_found()
            return detail_response(call, render(item, call.base))

        return handle
