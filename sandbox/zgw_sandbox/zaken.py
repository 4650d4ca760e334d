"""What does the sandbox's Zaken API do? Zaken CRUD, search and audit trail, with Open Zaak's CRS rules."""

from __future__ import annotations

import re
import uuid
from datetime import date
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zgw_sandbox import catalogi
from zgw_sandbox.web import Api, Call, Local, Problem, detail_response, endpoint, param, render

VERSION = "1.5.1"
PREFIX = "/zaken/api/v1"
VERTROUWELIJKHEID = (
    "openbaar",
    "beperkt_openbaar",
    "intern",
    "zaakvertrouwelijk",
    "vertrouwelijk",
    "confidentieel",
    "geheim",
    "zeer_geheim",
)
REQUIRED = ("bronorganisatie", "verantwoordelijkeOrganisatie", "startdatum", "zaaktype")
RSINS = ("bronorganisatie", "verantwoordelijkeOrganisatie")
DATES = (
    "startdatum",
    "registratiedatum",
    "einddatumGepland",
    "uiterlijkeEinddatumAfdoening",
    "publicatiedatum",
)
TEXTS = {"identificatie": 40, "omschrijving": 80, "toelichting": 1000, "opdrachtgevendeOrganisatie": 9}
ACTIONS = {
    "POST": ("create", "Object aangemaakt", 201),
    "PUT": ("update", "Object bijgewerkt", 200),
    "PATCH": ("partial_update", "Object deels bijgewerkt", 200),
}


def rsin_error(value: Any) -> str | None:
    """Open Zaak's validate_rsin: nine digits passing the elfproef."""
    if not isinstance(value, str) or not value.isdigit():
        return "only-digits"
    if len(value) != 9:
        return "invalid-length"
    total = sum(int(digit) * weight for digit, weight in zip(value[:8], range(9, 1, -1), strict=True))
    return None if (total - int(value[8])) % 11 == 0 else "invalid"


def timestamp(call: Call) -> str:
    return call.now.isoformat().replace("+00:00", "Z")


def field_errors(body: dict[str, Any], partial: bool) -> list[dict[str, str]]:
    """Open Zaak's validation messages for the fields the sandbox checks."""
    errors = [param(name, "required", "Dit veld is vereist.") for name in REQUIRED if name not in body and not partial]
    for name in RSINS:
        if name in body and (code := rsin_error(body[name])):
            errors.append(param(name, code, "Ongeldig RSIN."))
    for name in DATES:
        if name in body and not is_date(body[name]) and not (body[name] is None and name != "startdatum"):
            errors.append(param(name, "invalid", "Datum heeft het verkeerde formaat."))
    for name, limit in TEXTS.items():
        if name in body and (not isinstance(body[name], str) or len(body[name]) > limit):
            errors.append(param(name, "max_length", f"Zorg ervoor dat dit veld niet meer dan {limit} tekens bevat."))
    if body.get("vertrouwelijkheidaanduiding", "openbaar") not in VERTROUWELIJKHEID:
        errors.append(param("vertrouwelijkheidaanduiding", "invalid_choice", "Ongeldige keuze."))
    return errors


def is_date(value: Any) -> bool:
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


class Zaken:
    def __init__(self, api: Api, catalogus: catalogi.Catalogi) -> None:
        self.api = api
        self.catalogi = catalogus
        self.zaken: dict[uuid.UUID, dict[str, Any]] = {}
        self.audit: dict[uuid.UUID, list[dict[str, Any]]] = {}
        self.sequence = 0

    def routes(self) -> list[Route]:
        def route(path: str, handler: Any, methods: list[str], crs: bool = True) -> Route:
            return Route(PREFIX + path, endpoint(self.api, VERSION, handler, crs=crs), methods=methods)

        return [
            route("/", self.root, ["GET"], crs=False),
            route("/zaken", self.list, ["GET"]),
            route("/zaken", self.create, ["POST"]),
            route("/zaken/_zoek", self.search, ["POST"]),
            route("/zaken/{uuid:uuid}", self.read, ["GET"]),
            route("/zaken/{uuid:uuid}", self.update, ["PUT", "PATCH"]),
            route("/zaken/{uuid:uuid}", self.delete, ["DELETE"]),
            route("/zaken/{uuid:uuid}/audittrail", self.audittrail, ["GET"], crs=False),
        ]

    async def root(self, call: Call) -> Response:
        return JSONResponse({"zaken": call.url(f"{PREFIX}/zaken")})

    def find(self, call: Call) -> tuple[uuid.UUID, dict[str, Any]]:
        key: uuid.UUID = call.request.path_params["uuid"]
        if key not in self.zaken:
            raise Problem.not_found()
        return key, self.zaken[key]

    def matching(self, call: Call, filters: dict[str, Any]) -> list[dict[str, Any]]:
        def keep(zaak: dict[str, Any]) -> bool:
            rendered = render(zaak, call.base)
            for name, wanted in filters.items():
                field, _, lookup = name.partition("__")
                if field not in ("zaaktype", "bronorganisatie", "identificatie", "uuid"):
                    continue
                values = wanted.split(",") if lookup == "in" and isinstance(wanted, str) else wanted
                if lookup == "in" and rendered[field] not in values:
                    return False
                if not lookup and rendered[field] != wanted:
                    return False
            return True

        return [zaak for zaak in self.zaken.values() if keep(zaak)]

    async def list(self, call: Call) -> Response:
        return JSONResponse(self.api.paginate(call, self.matching(call, dict(call.request.query_params))))

    async def search(self, call: Call) -> Response:
        body = await call.json()
        if not isinstance(body, dict):
            raise Problem.invalid([param("nonFieldErrors", "invalid", "Ongeldige data.")])
        return JSONResponse(self.api.paginate(call, self.matching(call, body)))

    async def read(self, call: Call) -> Response:
        return detail_response(call, render(self.find(call)[1], call.base))

    async def create(self, call: Call) -> Response:
        fields = self.validate(call, await call.json(), existing=None, partial=False)
        key = uuid.uuid4()
        if not fields.get("identificatie"):
            self.sequence += 1
            fields["identificatie"] = f"ZAAK-{call.now.year}-{self.sequence:010d}"
        zaaktype = self.catalogi.data["zaaktypen"][uuid.UUID(fields["zaaktype"].rsplit("/", 1)[1])]
        zaak = self.blank(key, call) | fields | {"laatstGemuteerd": timestamp(call)}
        zaak.setdefault("vertrouwelijkheidaanduiding", zaaktype["vertrouwelijkheidaanduiding"])
        self.zaken[key] = zaak
        self.audit[key] = []
        self.record(call, key, None, zaak)
        url = call.url(zaak["url"])
        return JSONResponse(render(zaak, call.base), status_code=201, headers={"Location": url})

    async def update(self, call: Call) -> Response:
        key, old = self.find(call)
        partial = call.request.method == "PATCH"
        fields = self.validate(call, await call.json(), existing=old, partial=partial)
        self.zaken[key] = new = old | fields | {"laatstGemuteerd": timestamp(call)}
        self.record(call, key, old, new)
        return JSONResponse(render(new, call.base))

    async def delete(self, call: Call) -> Response:
        key, _ = self.find(call)
        del self.zaken[key]
        del self.audit[key]  # Open Zaak deletes the audit trail with its hoofdobject
        return Response(status_code=204)

    async def audittrail(self, call: Call) -> Response:
        key, _ = self.find(call)
        return JSONResponse(self.audit[key])

    def blank(self, key: uuid.UUID, call: Call) -> dict[str, Any]:
        template: dict[str, Any] = self.catalogi.data["zaak"]
        url = Local(f"{PREFIX}/zaken/{key}")
        return {"url": url, "uuid": str(key), "registratiedatum": call.now.date().isoformat()} | template

    def validate(self, call: Call, body: Any, *, existing: dict[str, Any] | None, partial: bool) -> dict[str, Any]:
        """The writable fields the sandbox knows; unknown fields are ignored, as DRF does."""
        if not isinstance(body, dict):
            raise Problem.invalid([param("nonFieldErrors", "invalid", "Ongeldige data.")])
        errors = field_errors(body, partial)
        if errors:
            raise Problem.invalid(errors)
        fields = {name: body[name] for name in (*RSINS, *DATES, *TEXTS, "vertrouwelijkheidaanduiding") if name in body}
        if "zaaktype" in body:
            zaaktypen = self.catalogi.data["zaaktypen"]
            prefix = f"{catalogi.PREFIX}/zaaktypen"
            fields["zaaktype"] = call.resolve("zaaktype", body["zaaktype"], prefix, zaaktypen.__contains__)
        self.unique(
            fields.get("identificatie"),
            fields.get("bronorganisatie", (existing or {}).get("bronorganisatie")),
            existing,
        )
        return fields

    def unique(self, identificatie: Any, bron: Any, existing: dict[str, Any] | None) -> None:
        for zaak in self.zaken.values():
            clash = zaak["identificatie"] == identificatie and zaak["bronorganisatie"] == bron
            if identificatie and clash and zaak is not existing:
                reason = "Deze identificatie bestaat al binnen de bronorganisatie."
                raise Problem.invalid([param("identificatie", "identificatie-niet-uniek", reason)])

    def record(self, call: Call, key: uuid.UUID, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        """An audit trail entry, carrying the user claims of the token that made the change.

        Open Zaak names the Applicatie (its UUID and label), not the client_id; the sandbox has no Applicaties,
        so a UUID derived from the client_id and the client_id as label stand in."""
        actie, weergave, status = ACTIONS[call.request.method]
        url = call.url(new["url"])
        self.audit[key].append(
            {
                "uuid": str(uuid.uuid4()),
                "bron": "ZRC",
                "applicatieId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox:{call.identity.client_id}")),
                "applicatieWeergave": call.identity.client_id,
                "gebruikersId": call.identity.user_id,
                "gebruikersWeergave": call.identity.user_representation,
                "actie": actie,
                "actieWeergave": weergave,
                "resultaat": status,
                "hoofdObject": url,
                "resource": "zaak",
                "resourceUrl": url,
                "toelichting": call.request.headers.get("x-audit-toelichting", ""),
                "resourceWeergave": f"{new['bronorganisatie']} - {new['identificatie']}",
                "aanmaakdatum": timestamp(call),
                "wijzigingen": {
                    "oud": render(old, call.base) if old is not None else None,
                    "nieuw": render(new, call.base),
                },
            }
        )
