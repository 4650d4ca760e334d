"""What does the sandbox's Documenten API do? Informatieobjecten: base64 `inhoud` in, binary download out."""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zgw_sandbox import catalogi
from zgw_sandbox.web import Api, Call, Local, Problem, detail_response, endpoint, etag_matches, param, render
from zgw_sandbox.zaken import VERTROUWELIJKHEID, is_date, rsin_error

VERSION = "1.4.2"  # Open Zaak 1.30's Documenten API
PREFIX = "/documenten/api/v1"
COLLECTION = f"{PREFIX}/enkelvoudiginformatieobjecten"
TEXTS = {"titel": (1, 200), "auteur": (1, 200), "taal": (3, 3), "identificatie": (0, 40)}
REQUIRED = ("bronorganisatie", "creatiedatum", "titel", "auteur", "taal", "informatieobjecttype")
READ_ONLY = ("versie", "locked", "bestandsdelen", "inhoud", "bestandsomvang")
OPTIONAL_TEXTS = {"bestandsnaam": 255, "formaat": 255, "beschrijving": 1000}


class Documenten:
    def __init__(self, api: Api, catalogus: catalogi.Catalogi) -> None:
        self.api = api
        self.catalogi = catalogus
        self.objects: dict[uuid.UUID, dict[str, Any]] = {}
        self.contents: dict[uuid.UUID, bytes | None] = {}
        # Open Zaak's download is named after the stored file, `<uuid>.bin`, not after `bestandsnaam`.
        self.stored_names: dict[uuid.UUID, str] = {}

    def routes(self) -> list[Route]:
        def route(path: str, handler: Any, methods: list[str]) -> Route:
            return Route(PREFIX + path, endpoint(self.api, VERSION, handler), methods=methods)

        return [
            route("/", self.root, ["GET"]),
            route("/enkelvoudiginformatieobjecten", self.list, ["GET"]),
            route("/enkelvoudiginformatieobjecten", self.create, ["POST"]),
            route("/enkelvoudiginformatieobjecten/{uuid:uuid}", self.read, ["GET"]),
            Route(
                f"{COLLECTION}/{{uuid:uuid}}/download",
                endpoint(self.api, VERSION, self.download, binary=True),
                methods=["GET"],
            ),
        ]

    async def root(self, call: Call) -> Response:
        return JSONResponse({"enkelvoudiginformatieobjecten": call.url(COLLECTION)})

    def find(self, call: Call) -> tuple[uuid.UUID, dict[str, Any]]:
        key: uuid.UUID = call.request.path_params["uuid"]
        if key not in self.objects:
            raise Problem.not_found()
        return key, self.objects[key]

    async def list(self, call: Call) -> Response:
        items = list(self.objects.values())
        bron = call.request.query_params.get("bronorganisatie")
        if bron is not None:
            items = [item for item in items if item["bronorganisatie"] == bron]
        return JSONResponse(self.api.paginate(call, items))

    async def read(self, call: Call) -> Response:
        return detail_response(call, render(self.find(call)[1], call.base))

    async def create(self, call: Call) -> Response:
        body = await call.json()
        fields, content = self.validate(call, body)
        key = uuid.uuid4()
        iotype = self.catalogi.data["informatieobjecttypen"][uuid.UUID(fields["informatieobjecttype"][-36:])]
        template: dict[str, Any] = self.catalogi.data["enkelvoudiginformatieobject"]
        given = {name: fields[name] for name in template if name in fields and name not in READ_ONLY}
        self.objects[key] = record = {
            "url": Local(f"{COLLECTION}/{key}"),
            **template,
            **{name: fields[name] for name in REQUIRED},
            **given,
            "identificatie": fields.get("identificatie") or str(key),
            "vertrouwelijkheidaanduiding": fields.get("vertrouwelijkheidaanduiding")
            or iotype["vertrouwelijkheidaanduiding"],
            "beginRegistratie": call.now.isoformat().replace("+00:00", "Z"),
            # Open Zaak links the content of one version, not whatever is newest.
            "inhoud": Local(f"{COLLECTION}/{key}/download?versie=1") if content is not None else None,
            "bestandsomvang": len(content) if content is not None else None,
        }
        self.contents[key] = content
        self.stored_names[key] = f"{uuid.uuid4()}.bin"
        headers = {"Location": call.url(record["url"])}
        return JSONResponse(render(record, call.base) | {"lock": ""}, status_code=201, headers=headers)

    def validate(self, call: Call, body: Any) -> tuple[dict[str, Any], bytes | None]:
        if not isinstance(body, dict):
            raise Problem.invalid([param("nonFieldErrors", "invalid", "Ongeldige data.")])
        errors = []
        for name in REQUIRED:
            if name not in body:
                errors.append(param(name, "required", "Dit veld is vereist."))
        if "bronorganisatie" in body and (code := rsin_error(body["bronorganisatie"])):
            errors.append(param("bronorganisatie", code, "Ongeldig RSIN."))
        if "creatiedatum" in body and not is_date(body["creatiedatum"]):
            errors.append(param("creatiedatum", "invalid", "Datum heeft het verkeerde formaat."))
        for name, (low, high) in TEXTS.items():
            value = body.get(name, "x" * low)
            if not isinstance(value, str) or not low <= len(value) <= high:
                errors.append(param(name, "invalid", f"Tussen {low} en {high} tekens."))
        for name, limit in OPTIONAL_TEXTS.items():
            if not isinstance(body.get(name, ""), str) or len(body.get(name, "")) > limit:
                errors.append(param(name, "max_length", f"Hoogstens {limit} tekens."))
        if body.get("vertrouwelijkheidaanduiding", "openbaar") not in VERTROUWELIJKHEID:
            errors.append(param("vertrouwelijkheidaanduiding", "invalid_choice", "Ongeldige keuze."))
        content = None
        if body.get("inhoud") is not None:
            try:
                content = base64.b64decode(body["inhoud"], validate=True)
            except (binascii.Error, TypeError, ValueError):
                errors.append(param("inhoud", "invalid", "Het bestand is geen geldige base64."))
        if errors:
            raise Problem.invalid(errors)
        prefix = f"{catalogi.PREFIX}/informatieobjecttypen"
        iotypes = self.catalogi.data["informatieobjecttypen"]
        fields = dict(body)
        fields["informatieobjecttype"] = call.resolve(
            "informatieobjecttype", body["informatieobjecttype"], prefix, iotypes.__contains__
        )
        return fields, content

    async def download(self, call: Call) -> Response:
        key, _ = self.find(call)
        versie = call.request.query_params.get("versie", "1")
        if versie != "1":
            raise Problem.not_found()
        content = self.contents[key]
        if content is None:
            return Response(status_code=204)
        etag = f'"{hashlib.sha256(content).hexdigest()[:32]}"'
        headers = {"ETag": etag}
        if etag_matches(call.request.headers.get("if-none-match", ""), etag):
            return Response(status_code=304, headers=headers)
        headers["Content-Disposition"] = f'attachment; filename="{self.stored_names[key]}"'
        return Response(content, media_type="application/octet-stream", headers=headers)
