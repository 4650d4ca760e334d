"""How does the sandbox answer like Open Zaak? Problem bodies, absolute URLs, CRS headers, pagination.

Every ZGW endpoint goes through `endpoint()`: negotiate the media type, authenticate, check CRS, run the
handler, stamp `API-version` (and `Content-Crs` on the Zaken API, errors included).
Stored records hold `Local` paths instead of URLs; `render()` turns them into absolute URLs built from the
scheme and Host of the current request, which is how Open Zaak's serializers behave.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from zgw_sandbox.auth import Authenticator, AuthError, Identity

CRS = "EPSG:4326"
_HOST_RE = re.compile(r"^([a-z0-9.-]+|\[[a-f0-9]*:[a-f0-9.:]+\])(:[0-9]+)?$")  # django.http.request

TITLES = {
    "PermissionDenied": "Je hebt geen toestemming om deze actie uit te voeren.",
    "NotFound": "Niet gevonden.",
    "ValidationError": "Ongeldige invoer.",
    "PreconditionFailed": "Voorwaarde is niet vervuld",
    "NotAcceptable": "Kan niet voldoen aan de opgegeven Accept header.",
    "MethodNotAllowed": "Methode niet toegestaan.",
    "ParseError": "Ongeldig samengestelde request.",
}


class Local(str):
    """A reference to a resource of this server, stored as its path; rendered as an absolute URL."""


class Problem(Exception):
    """An error answered in the problem shape of commonground-api-common."""

    def __init__(
        self,
        status: int,
        exception: str,
        code: str,
        detail: str,
        invalid_params: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.exception, self.code, self.detail = status, exception, code, detail
        self.invalid_params = invalid_params

    @classmethod
    def not_found(cls, detail: str = "Niet gevonden.") -> Problem:
        return cls(404, "NotFound", "not_found", detail)

    @classmethod
    def invalid(cls, params: list[dict[str, str]]) -> Problem:
        return cls(400, "ValidationError", "invalid", "Ongeldige invoer.", params)


def param(name: str, code: str, reason: str) -> dict[str, str]:
    return {"name": name, "code": code, "reason": reason}


def request_host(headers: Headers, scope: Mapping[str, Any], use_x_forwarded_host: bool) -> str:
    """django HttpRequest._get_raw_host: X-Forwarded-Host (only when enabled), Host, else the server."""
    if use_x_forwarded_host and "x-forwarded-host" in headers:
        return headers["x-forwarded-host"]
    if "host" in headers:
        return headers["host"]
    server_host, server_port = scope.get("server") or ("localhost", 80)
    default_port = 443 if scope.get("scheme") == "https" else 80
    return server_host if server_port == default_port else f"{server_host}:{server_port}"


def host_allowed(host: str, allowed_hosts: list[str] | None) -> bool:
    """django.http.request.validate_host, with `None` meaning `['*']`; the syntax is checked regardless."""
    host = host.lower()
    if not _HOST_RE.match(host):
        return False
    if allowed_hosts is None:
        return True
    domain = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    for pattern in (p.lower() for p in allowed_hosts):
        if pattern == "*" or pattern == domain:
            return True
        if pattern.startswith(".") and (domain.endswith(pattern) or domain == pattern[1:]):
            return True
    return False


def request_base(request: Request, use_x_forwarded_host: bool) -> str:
    scheme = request.url.scheme
    proto = request.headers.get("x-forwarded-proto")
    if use_x_forwarded_host and proto is not None:
        # SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
        scheme = "https" if proto.split(",", 1)[0].strip() == "https" else "http"
    return f"{scheme}://{request_host(request.headers, request.scope, use_x_forwarded_host)}"


def render(value: Any, base: str) -> Any:
    if isinstance(value, Local):
        return base + value
    if isinstance(value, dict):
        return {key: render(item, base) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, base) for item in value]
    return value


def etag_matches(header: str, etag: str) -> bool:
    """RFC 9110 If-None-Match: weak comparison, `*` matches any current representation."""
    candidates = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in candidates or etag in candidates


def detail_response(call: Call, body: Any) -> Response:
    """One resource, with an ETag as Open Zaak sends on every detail read; a matching If-None-Match gets 304."""
    response = JSONResponse(body)
    etag = f'"{hashlib.md5(response.body, usedforsecurity=False).hexdigest()}"'
    if etag_matches(call.request.headers.get("if-none-match", ""), etag):
        return Response(status_code=304, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return response


def accepts(accept: str | None, media_type: str) -> bool:
    """DRF's content negotiation: does the Accept header admit `media_type` (the only one the view renders)?"""
    if not accept:
        return True
    kind = media_type.split("/", 1)[0]
    for item in accept.split(","):
        wanted, *params = (part.strip() for part in item.split(";"))
        if any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params):
            continue
        if wanted in ("*/*", f"{kind}/*", media_type):
            return True
    return False


def problem_response(base: str, exc: Problem, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"{base}/ref/fouten/{exc.exception}/",
        "code": exc.code,
        "title": TITLES.get(exc.exception, exc.exception),
        "status": exc.status,
        "detail": exc.detail,
        "instance": f"urn:uuid:{uuid.uuid4()}",
    }
    if exc.invalid_params is not None:
        body["invalidParams"] = exc.invalid_params
    # Open Zaak labels problems application/json, not application/problem+json as the specs say.
    return JSONResponse(body, status_code=exc.status, headers=headers)


@dataclass(frozen=True)
class Call:
    """One authenticated request, as the resource handlers see it."""

    request: Request
    identity: Identity
    base: str
    now: datetime

    def url(self, path: str) -> str:
        return self.base + path

    async def json(self) -> Any:
        try:
            return await self.request.json()
        except ValueError:
            raise Problem(400, "ParseError", "parse_error", "JSON parse error") from None

    def resolve(self, name: str, value: Any, prefix: str, exists: Callable[[uuid.UUID], bool]) -> Local:
        """A URL in a request body that must point at a resource of this server (Open Zaak's FK fields)."""
        if not isinstance(value, str) or not value:
            raise Problem.invalid([param(name, "invalid", "Voer een geldige URL in.")])
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise Problem.invalid([param(name, "bad-url", "De URL is ongeldig.")])
        if f"{parts.scheme}://{parts.netloc}" != self.base:
            raise Problem.invalid([param(name, "unknown-service", "De service voor deze URL is niet bekend.")])
        head, _, tail = parts.path.rpartition("/")
        try:
            key = uuid.UUID(tail)
        except ValueError:
            key = None
        if head != prefix or key is None or parts.query:
            raise Problem.invalid([param(name, "bad-url", "De URL is ongeldig.")])
        if not exists(key):
            raise Problem.invalid([param(name, "does_not_exist", "Het object bestaat niet.")])
        return Local(parts.path)


@dataclass
class Api:
    """What every endpoint of one sandbox shares."""

    auth: Authenticator
    clock: Callable[[], float]
    page_size: int
    use_x_forwarded_host: bool

    def base(self, request: Request) -> str:
        return request_base(request, self.use_x_forwarded_host)

    def paginate(self, call: Call, items: list[dict[str, Any]]) -> dict[str, Any]:
        """DRF PageNumberPagination: `?page=N`, links keep the other query parameters, sorted."""
        raw = call.request.query_params.get("page", "1")
        page = int(raw) if raw.isdigit() else 0
        pages = max(1, -(-len(items) // self.page_size))
        if not 1 <= page <= pages:
            raise Problem.not_found("Ongeldige pagina.")

        def link(number: int) -> str:
            query = [(k, v) for k, v in call.request.query_params.multi_items() if k != "page"]
            if number > 1:
                query.append(("page", str(number)))
            qs = urlencode(sorted(query))
            return call.url(call.request.url.path) + (f"?{qs}" if qs else "")

        start = (page - 1) * self.page_size
        return {
            "count": len(items),
            "next": link(page + 1) if page < pages else None,
            "previous": link(page - 1) if page > 1 else None,
            "results": render(items[start : start + self.page_size], call.base),
        }


Handler = Callable[[Call], Awaitable[Response]]


def check_crs(request: Request) -> None:
    """Open Zaak's GeoMixin: Accept-Crs on all but DELETE, Content-Crs on writes, only EPSG:4326."""
    method = request.method
    wanted = [("Accept-Crs", method != "DELETE"), ("Content-Crs", method in ("POST", "PUT", "PATCH"))]
    for header, required in wanted:
        value = request.headers.get(header)
        if value is None:
            if required:
                raise Problem(412, "PreconditionFailed", "precondition_failed", f"'{header}' header ontbreekt")
        elif value != CRS:
            raise Problem(406, "NotAcceptable", "not_acceptable", f"CRS '{value}' is niet ondersteund")


def binary_problem(exc: Problem) -> Response:
    # Open Zaak renders errors of its download route with the binary renderer, which writes its own media type
    # as the body: no JSON, no `code`.
    return Response(b"application/octet-stream", status_code=exc.status, media_type="application/octet-stream")


def endpoint(
    api: Api, version: str, handler: Handler, *, crs: bool = False, binary: bool = False
) -> Callable[[Request], Any]:
    """`binary`: the handler answers application/octet-stream, and so do its errors."""
    media_type = "application/octet-stream" if binary else "application/json"

    async def run(request: Request) -> Response:
        base = api.base(request)
        try:
            # DRF negotiates the media type before it authenticates.
            if not accepts(request.headers.get("accept"), media_type):
                detail = TITLES["NotAcceptable"]
                raise Problem(406, "NotAcceptable", "not_acceptable", detail)
            try:
                identity = api.auth.authenticate(request.headers.get("authorization"))
            except AuthError as exc:
                raise Problem(403, "PermissionDenied", exc.code, exc.detail) from None
            if crs:
                check_crs(request)
            now = datetime.fromtimestamp(api.clock(), tz=UTC)
            response = await handler(Call(request, identity, base, now))
        except Problem as exc:
            response = binary_problem(exc) if binary else problem_response(base, exc)
        if crs:
            response.headers["Content-Crs"] = CRS  # on errors too, as Open Zaak's Zaken viewsets do
        response.headers["API-version"] = version
        return response

    return run
