"""`zgw-gateway demo`, the first command of the README and of docs/getting-started.md: the gateway in front
of the sandbox upstream, answering a caller that sends only the demo API key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from tests.servers import ROOT, free_port, wait_until


def _ready(admin: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{admin}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_demo_serves_the_sandbox_to_a_caller_with_the_demo_key(tmp_path: Path) -> None:
    # The built-in demo config on free ports: the fixed 8000/8001/9100 may be taken on a shared machine.
    port, admin, sandbox = free_port(), free_port(), free_port()
    text = (ROOT / "gateway" / "demo.yaml").read_text()
    text = text.replace("127.0.0.1:8001", f"127.0.0.1:{sandbox}").replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    config = yaml.safe_load(text)
    config["listen"]["port"], config["admin"]["port"] = port, admin
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
    cmd = [sys.executable, "-m", "gateway", "demo", "--config", str(tmp_path / "demo.yaml")]
    with (tmp_path / "demo.log").open("wb") as log:
        proc = subprocess.Popen([*cmd, "--sandbox-port", str(sandbox)], stdout=log, stderr=log, env=env)
    try:
        wait_until(lambda: _ready(admin) or proc.poll() is not None, 30)
        assert proc.poll() is None, (tmp_path / "demo.log").read_text()
        key = {"X-API-Key": "demo-key"}
        zaken = httpx.get(f"http://127.0.0.1:{port}/zaken/api/v1/zaken", headers=key, timeout=10)
        assert zaken.status_code == 200, zaken.text
        assert httpx.get(f"http://127.0.0.1:{port}/zaken/api/v1/zaken", timeout=10).status_code == 401
        catalogussen = httpx.get(f"http://127.0.0.1:{port}/catalogi/api/v1/catalogussen", headers=key, timeout=10)
        assert catalogussen.status_code == 200
        assert f"http://127.0.0.1:{port}/catalogi/api/v1/" in catalogussen.text  # rewritten to the gateway's URLs
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
