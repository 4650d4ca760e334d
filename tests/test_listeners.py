"""One gateway per address: a second process refuses a port another one listens on (issue 20, point 2)."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import API_KEY, GATEWAY_ENV, base_config
from servers import GatewayProcess, free_port

from gateway.dataplane.server import taken


@pytest.mark.parametrize("shared", ["listen", "admin"])
def test_a_second_gateway_on_a_taken_port_exits_non_zero_naming_it_and_the_first_keeps_serving(
    sandbox: str, gateway_factory: Callable[..., GatewayProcess], tmp_path: Path, shared: str
) -> None:
    first = gateway_factory(base_config(sandbox))
    config = copy.deepcopy(first.config)
    other = "admin" if shared == "listen" else "listen"
    config[other]["port"] = free_port()  # only `shared` is taken
    second = GatewayProcess(config, tmp_path / "second", env=GATEWAY_ENV)
    second.workdir.mkdir()
    second.write_config()
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(second.config_path)],
        capture_output=True,
        text=True,
        env={**os.environ, **GATEWAY_ENV},
        timeout=30,
    )
    code, logs = run.returncode, run.stdout + run.stderr
    assert code == 1
    port = first.port if shared == "listen" else first.admin_port
    assert f"{shared} 127.0.0.1:{port}: cannot listen: another process listens on it" in logs
    assert f"{other} 127.0.0.1" not in logs

    for _ in range(20):  # every connection still reaches the first (no second process shares the port)
        r = httpx.get(first.url + "/zaken/api/v1/zaken", headers={"X-API-Key": API_KEY})
        assert r.status_code == 200
    assert httpx.get(first.admin_url + "/-/ready").status_code == 200


def test_a_port_held_by_a_reuseport_listener_is_taken_and_a_free_one_is_not() -> None:
    with socket.socket() as holder:
        # How granian binds: SO_REUSEPORT, which lets another SO_REUSEPORT socket share the port silently.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert taken([("admin", "127.0.0.1", port)]) == [
            f"admin 127.0.0.1:{port}: cannot listen: another process listens on it"
        ]
    assert taken([("listen", "127.0.0.1", port)]) == []
