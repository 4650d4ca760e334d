"""The real Open Zaak of scripts/openzaak, for tests: started once per session, stopped by PID at the end."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from gateway.tokens import mint

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "openzaak"


def script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("openzaak_script", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@dataclass
class OpenZaak:
    state: dict[str, Any]
    module: ModuleType

    @property
    def url(self) -> str:
        return str(self.state["openzaak"]["url"])

    def setup_configuration(self, yaml_file: Path, env: dict[str, str]) -> None:
        """Open Zaak's own `manage.py setup_configuration`, with `env` added to its environment."""
        m = self.module
        result = subprocess.run(
            [str(m.VENV / "bin" / "python"), "src/manage.py", "setup_configuration", "--yaml-file", str(yaml_file)],
            cwd=m.SRC,
            env=m.openzaak_env(self.state, **env),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    def applicaties(self, credentials: tuple[str, str]) -> list[dict[str, Any]]:
        token = mint(
            credentials[0],
            credentials[1],
            user_id="",
            user_representation="",
            now=time.time(),
            lifetime=300,
            clock_skew=30,
            include_exp=True,
        )
        found: list[dict[str, Any]] = []
        url: str | None = f"{self.url}/autorisaties/api/v1/applicaties"
        while url:
            page = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
            found += page["results"]
            url = page.get("next")
        return found


@pytest.fixture(scope="session", name="openzaak")
def openzaak_fixture() -> Iterator[OpenZaak]:
    module = script()
    installed = module.STATE.exists() and json.loads(module.STATE.read_text()).get("installed")
    if not installed:
        if os.environ.get("CI"):
            pytest.fail("Open Zaak is not installed: .ci/run must run scripts/openzaak install")
        pytest.skip("Open Zaak is not installed here: run scripts/openzaak install")
    subprocess.run([str(SCRIPT), "start"], check=True, timeout=600)
    try:
        yield OpenZaak(json.loads(module.STATE.read_text()), module)
    finally:
        subprocess.run([str(SCRIPT), "stop"], check=False, timeout=120)
