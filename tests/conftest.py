"""Shared fixtures: the sandbox upstream and gateway processes on 127.0.0.1, with known test credentials."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import GatewayProcess, free_port, sandbox_process

CLIENT_ID = "gw-tests-Q7pLx2Vb9TrE"
SECRET = "zgw-test-secret-3f9c1a7e5b2d4c6e8a0f1b3d5e7a9c1e"
OTHER_CLIENT_ID = "gw-tests-other-K3mN8sPq4WzY"
OTHER_SECRET = "zgw-test-secret-other-8e2b4d6f0a1c3e5b7d9f2a4c6e8b0d1f"
API_KEY = "gw-test-api-key-6d1f3b5a7c9e2d4f6a8c0e1b3d5f7a9c"
READONLY_KEY = "gw-test-readonly-key-2a4c6e8b0d1f3a5c7e9b1d3f5a7c9e0b"
SANDBOX_CLIENTS = {CLIENT_ID: SECRET, OTHER_CLIENT_ID: OTHER_SECRET}
GATEWAY_ENV = {
    "TEST_API_KEY": API_KEY,
    "TEST_READONLY_KEY": READONLY_KEY,
    "TEST_ZGW_SECRET": SECRET,
    "TEST_OTHER_SECRET": OTHER_SECRET,
}
ALL_SECRETS = [SECRET, OTHER_SECRET, API_KEY, READONLY_KEY]


def base_config(upstream: str, **overrides: Any) -> dict[str, Any]:
    """A gateway config in front of `upstream` (the sandbox), with a full caller and a read-only one."""
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "public_url": "http://127.0.0.1:0",
        "token": {"lifetime": 300, "clock_skew": 30},
        "secrets": {"poll_seconds": 0.2},
        "shutdown": {"drain_seconds": 0.2, "timeout_seconds": 5},
        "components": {
            "zaken": {"prefix": "/zaken/api/v1", "upstream": f"{upstream}/zaken/api/v1", "crs": "EPSG:4326"},
            "catalogi": {"prefix": "/catalogi/api/v1", "upstream": f"{upstream}/catalogi/api/v1"},
            "documenten": {"prefix": "/documenten/api/v1", "upstream": f"{upstream}/documenten/api/v1"},
        },
        "callers": [
            {
                "name": "legacy-dms",
                "api_keys": [{"env": "TEST_API_KEY"}],
                "client_id": CLIENT_ID,
                "secret": {"env": "TEST_ZGW_SECRET"},
                "user": {"id": "", "representation": "Legacy DMS", "from_headers": True},
                "components": ["zaken", "catalogi", "documenten"],
            },
            {
                "name": "reporting",
                "api_keys": [{"env": "TEST_READONLY_KEY"}],
                "client_id": OTHER_CLIENT_ID,
                "secret": {"env": "TEST_OTHER_SECRET"},
                "components": ["zaken"],
                "methods": ["GET", "HEAD"],
            },
        ],
    }
    config["public_url"] = f"http://127.0.0.1:{config['listen']['port']}"
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture(scope="session")
def sandbox() -> Iterator[str]:
    """The sandbox upstream (strict like Open Zaak), shared by the session; its base URL."""
    with sandbox_process(SANDBOX_CLIENTS, page_size=2) as url:
        yield url


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateways from config dicts; every one is stopped at the end of the test."""
    started: list[GatewayProcess] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None, wait_ready: bool = True) -> GatewayProcess:
        workdir = tmp_path / f"gw{len(started)}"
        workdir.mkdir()
        gw = GatewayProcess(copy.deepcopy(config), workdir, env={**GATEWAY_ENV, **(env or {})})
        started.append(gw)
        return gw.start(wait_ready=wait_ready)

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(sandbox: str, gateway_factory: Callable[..., GatewayProcess]) -> GatewayProcess:
    """A gateway in front of the sandbox with the base config."""
    return gateway_factory(base_config(sandbox))
