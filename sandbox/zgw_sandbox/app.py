"""How is the sandbox assembled? The three APIs, Django-like host checking, and a test-only request journal.

`/_sandbox/requests` is for tests only: it lists what the sandbox received (GET) or forgets it (DELETE),
needs no token, and shows a JWT only as its decoded header and claims, never the token itself.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zgw_sandbox.auth import Authenticator, bearer_token
from zgw_sandbox.catalogi import Catalogi
from zgw_sandbox.documenten import Documenten
from zgw_sandbox.web import Api, Problem, host_allowed, problem_response, request_host
from zgw_sandbox.zaken import Zaken

JOURNAL_SIZE = 1000
TEST_PREFIX = "/_sandbox/"


def describe_authorization(value: str) -> dict[str, Any]:
    token = bearer_token(value)
    if token is None:
        return {"scheme": value.split(" ", 1)[0]}
    try:
        return {
            "scheme": "Bearer",
            "header": jwt.get_unverified_header(token),
            "claims": jwt.decode(token, options={"verify_signature": False}),
        }
    except jwt.PyJWTError:
        return {"scheme": "Bearer", "error": "undecodable"}


class Gate:
    """ASGI middleware: journals every ZGW request, then refuses hosts Django would refuse (400)."""

    def __init__(
        self, app: ASGIApp, journal: deque[dict[str, Any]], allowed_hosts: list[str] | None, use_xfh: bool
    ) -> None:
        self.app, self.journal, self.allowed_hosts, self.use_xfh = app, journal, allowed_hosts, use_xfh

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(TEST_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        described: dict[str, Any] = {}
        for raw_name, raw_value in headers.raw:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            shown: Any = describe_authorization(value) if name == "authorization" else value
            described[name] = f"{described[name]}, {shown}" if name in described else shown
        entry: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode("latin-1"),
            "headers": described,
            "status": None,
        }
        self.journal.append(entry)

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        if not host_allowed(request_host(headers, scope, self.use_xfh), self.allowed_hosts):
            # django.core.handlers.exception: DisallowedHost -> the plain 400 page
            response: ASGIApp = HTMLResponse("<h1>Bad Request (400)</h1>", status_code=400)
            await response(scope, receive, send_and_note)
            return
        await self.app(scope, receive, send_and_note)


def create_sandbox_app(
    clients: Mapping[str, str],
    *,
    jwt_expiry: int = 3600,
    time_leeway: int = 0,
    clock: Callable[[], float] = time.time,
    page_size: int = 100,
    allowed_hosts: Sequence[str] | None = None,
    use_x_forwarded_host: bool = False,
) -> Starlette:
    """An in-memory ZGW server (Catalogi, Zaken, Documenten) that authenticates like Open Zaak 1.30."""
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    auth = Authenticator(clients, jwt_expiry=jwt_expiry, time_leeway=time_leeway, clock=clock)
    api = Api(auth=auth, clock=clock, page_size=page_size, use_x_forwarded_host=use_x_forwarded_host)
    catalogi = Catalogi(api)
    journal: deque[dict[str, Any]] = deque(maxlen=JOURNAL_SIZE)

    async def requests_seen(request: Request) -> Response:
        if request.method == "DELETE":
            journal.clear()
            return Response(status_code=204)
        return JSONResponse(list(journal))

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status != 405:
            # A path no API route matches gets Django's HTML page, not a problem (a wrong trailing slash too).
            return HTMLResponse("<h1>Not Found</h1><p>The requested resource was not found on this server.</p>", 404)
        error = Problem(405, "MethodNotAllowed", "method_not_allowed", f'Methode "{request.method}" niet toegestaan.')
        return problem_response(api.base(request), error, headers=getattr(exc, "headers", None))

    routes = [
        *catalogi.routes(),
        *Zaken(api, catalogi).routes(),
        *Documenten(api, catalogi).routes(),
        Route(f"{TEST_PREFIX}requests", requests_seen, methods=["GET", "DELETE"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    # Open Zaak answers 404 to a wrong trailing slash; it does not redirect.
    app.router.redirect_slashes = False
    hosts = list(allowed_hosts) if allowed_hosts is not None else None
    app.add_middleware(Gate, journal=journal, allowed_hosts=hosts, use_xfh=use_x_forwarded_host)
    return app
