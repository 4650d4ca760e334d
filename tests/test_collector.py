"""The gateway's requests leave no cyclic garbage, which gateway/dataplane/server.py's collector threshold
relies on: with the youngest generation collected only every 50,000 net container allocations, a cycle made
per request would wait that long to be freed.

The gateway app in this process (under uvicorn, tests/servers.py) in front of a real upstream on loopback and
a refused port; after warm-up the collector is switched off and told to keep what it finds, mixed traffic
runs (answers, an upstream 500, a refused key, a body, a refused connection, an open circuit, an unknown
path), then one pass: nothing it found may be the gateway's own (its objects, coroutines or frames).
"""

from __future__ import annotations

import gc
import types
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import API_KEY, GATEWAY_ENV, base_config
from servers import ManualClock, ThreadServer, free_port, gateway_in_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

KEY = {"X-API-Key": API_KEY}


async def _answer(request: Request) -> JSONResponse:
    body = await request.body()
    status = 500 if request.url.path.endswith("/boom") else 200
    return JSONResponse({"count": 0, "results": [], "got": len(body)}, status)


def _gateways(obj: Any) -> bool:
    """Whether a collected object is the gateway's: an instance of its classes, or its code's frame or coroutine."""
    code = getattr(obj, "f_code", None) or getattr(obj, "cr_code", None) or getattr(obj, "ag_code", None)
    if isinstance(obj, types.FrameType | types.CoroutineType | types.AsyncGeneratorType) and code is not None:
        return "/gateway/" in code.co_filename
    return type(obj).__module__.startswith("gateway.")


@pytest.fixture
def collector_keeps_what_it_finds() -> Iterator[None]:
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def _traffic(client: httpx.Client, zaken: str, dead: str) -> None:
    for _ in range(20):
        assert client.get(zaken + "/zaken", headers=KEY).status_code == 200
        assert client.get(zaken + "/boom", headers=KEY).status_code == 500
        assert client.post(zaken + "/zaken", headers=KEY, content=b"x" * 70_000).status_code == 200
        assert client.get(zaken + "/zaken", headers={"X-API-Key": "not-a-key"}).status_code == 401
        assert client.get(dead + "/informatieobjecttypen", headers=KEY).status_code in (502, 503)
        assert client.get(zaken.rsplit("/zaken/", 1)[0] + "/nowhere", headers=KEY).status_code == 404


def test_answered_and_failed_requests_leave_no_cyclic_garbage(request: pytest.FixtureRequest) -> None:
    with ThreadServer(Starlette(routes=[Route("/{path:path}", _answer, methods=["GET", "POST"])])) as up:
        config = base_config(up.url)
        config["components"]["catalogi"]["upstream"] = f"http://127.0.0.1:{free_port()}/catalogi/api/v1"
        with gateway_in_thread(config, ManualClock(), GATEWAY_ENV) as (gw_url, _), httpx.Client(timeout=10) as client:
            zaken, dead = gw_url + "/zaken/api/v1", gw_url + "/catalogi/api/v1"
            _traffic(client, zaken, dead)  # warm-up: the token, the pools, the open circuit
            request.getfixturevalue("collector_keeps_what_it_finds")
            _traffic(client, zaken, dead)
            gc.collect()
            ours = sorted({type(obj).__qualname__ for obj in gc.garbage if _gateways(obj)})
    assert ours == []
