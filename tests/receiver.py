"""A plain legacy receiver for notifications: POSTs with its own API key (or Basic credentials) are recorded.

It knows nothing of ZGW: no JWT, no Open Notificaties. `status` sets what it answers; `hold` makes it wait
until released (a receiver that hangs). Runs under uvicorn in a thread (servers.ThreadServer).
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, str]
    at: float  # time.time() when it arrived


@dataclass
class LegacyReceiver:
    api_key: str | None = None
    basic: tuple[str, str] | None = None
    status: int = 204
    received: list[Received] = field(default_factory=list)
    refused: int = 0  # requests without the receiver's own credential
    hold: threading.Event | None = None
    arrived: threading.Event = field(default_factory=threading.Event)

    def authorised(self, headers: dict[str, str]) -> bool:
        if self.api_key is not None:
            return headers.get("x-api-key") == self.api_key
        if self.basic is not None:
            expected = base64.b64encode(f"{self.basic[0]}:{self.basic[1]}".encode()).decode()
            return headers.get("authorization") == f"Basic {expected}"
        return True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.hold is not None:
            self.arrived.set()
            while not self.hold.is_set():  # a hung receiver, until the test releases it
                await asyncio.sleep(0.01)
        status = self.status
        if not self.authorised(headers):
            self.refused += 1
            status = 401
        elif status < 300:
            self.received.append(Received(orjson.loads(b"".join(chunks)), headers, time.time()))
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
