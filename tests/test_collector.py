"""The cyclic collector on a timer (gateway/dataplane/server.py), and the premise it rests on.

The premise: the gateway's requests leave no cyclic garbage. The gateway app in this process (under uvicorn,
tests/servers.py) in front of a real upstream on loopback and a refused port; after warm-up the collector
is switched off and told to keep what it finds, mixed traffic runs (answers, an upstream 500, a refused
key, a body, a refused connection, an open circuit, an unknown path), then one pass: nothing it found may
be the gateway's own (its objects, coroutines or frames).

The timer: driven by an injected sleep that returns when the test says a second has passed; the passes it
made are what gc.callbacks saw.
"""

from __future__ import annotations

import asyncio
import gc
import types
import weakref
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

from gateway.dataplane import server

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


class _Node:
    def __init__(self) -> None:
        self.me = self


def test_on_a_timer_the_collector_frees_a_cycle_each_second_and_walks_every_generation_once_a_minute() -> None:
    passes: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            passes.append(info["generation"])

    async def main() -> int:
        seconds: asyncio.Queue[None] = asyncio.Queue()
        asleep: asyncio.Queue[float] = asyncio.Queue()

        async def sleep(delay: float) -> None:
            asleep.put_nowait(delay)
            await seconds.get()

        async def one_second() -> None:
            seconds.put_nowait(None)
            await asleep.get()  # the pass is made before the next sleep

        async def timed() -> int:
            assert not gc.isenabled()
            assert await asleep.get() == 1.0
            assert passes == []
            cycle = _Node()
            freed = weakref.ref(cycle)
            del cycle
            assert freed() is not None  # the automatic passes are off
            await one_second()
            assert freed() is None and passes == [0]
            for _ in range(59):
                await one_second()
            assert passes == [0] * 59 + [2]
            return 7

        return await server.with_timed_collector(timed(), sleep)

    gc.collect()
    gc.callbacks.append(seen)
    try:
        assert asyncio.run(main()) == 7
        assert gc.isenabled()
    finally:
        gc.callbacks.remove(seen)
        gc.enable()


def test_the_timer_stops_and_the_collector_counts_again_when_the_gateway_ends_in_an_error() -> None:
    async def failing() -> int:
        raise RuntimeError("the listener failed")

    async def main() -> list[asyncio.Task[object]]:
        with pytest.raises(RuntimeError):
            await server.with_timed_collector(failing())
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    try:
        assert asyncio.run(main()) == []
        assert gc.isenabled()
    finally:
        gc.enable()
