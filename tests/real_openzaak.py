"""A real Open Zaak 1.30.0 for the end-to-end tests: started with `scripts/openzaak`, its clients, gateways in front.

`scripts/openzaak install` (CI runs it in `.ci/run`) leaves Open Zaak ready to start; `stand_up()` starts what
is not running and says what it started, so the session stops only that. Where Open Zaak cannot be stood up
the tests skip with the reason, except under CI=true, where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import jwt
import pytest
from servers import ROOT, free_port, wait_until

SCRIPT = ROOT / "scripts" / "openzaak"
STATE = Path(os.environ.get("OPENZAAK_HOME") or ROOT / ".cache" / "openzaak") / "state.json"
# Open Zaak's API roots; the gateway uses the same prefixes, so a path reads the same on both.
COMPONENTS = {
    "zaken": "/zaken/api/v1",
    "catalogi": "/catalogi/api/v1",
    "documenten": "/documenten/api/v1",
    "besluiten": "/besluiten/api/v1",
    "autorisaties": "/autorisaties/api/v1",
    # Open Zaak's problem `type` URLs point at its /ref/fouten/ pages: routed and rewritten like the APIs.
    "ref": "/ref",
}
API_KEYS = {
    "legacy-dms": "oz-test-api-key-4b6d8f0a2c4e6a8c0e2b4d6f8a0c2e4b",
    "no-rights": "oz-test-no-rights-key-7c9e1a3b5d7f9b1d3f5a7c9e1b3d5f7a",
    "wrong-secret": "oz-test-wrong-secret-key-2e4a6c8e0b2d4f6a8c0e2a4c6e8b0d2f",
}
# gateway caller -> Open Zaak client (state.json `clients`)
CALLERS = {"legacy-dms": "gateway", "no-rights": "no_rights", "wrong-secret": "gateway"}
WRONG_SECRET = "not-the-secret-open-zaak-has-5e7a9c1e3b5d7f9a1c3e"


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"Open Zaak is required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class OpenZaak:
    """A running Open Zaak, as `scripts/openzaak` recorded it in state.json."""

    state: dict[str, Any]
    started: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.state["openzaak"]["url"])

    @property
    def selectielijst(self) -> str:
        return str(self.state["selectielijst"]["url"])

    def client(self, name: str) -> dict[str, str]:
        return dict(self.state["clients"][name])

    def token(self, name: str = "gateway", iat: int | None = None) -> str:
        """A ZGW token minted here, for talking to Open Zaak without the gateway."""
        client = self.client(name)
        claims = {
            "iss": client["client_id"],
            "iat": int(time.time()) if iat is None else iat,
            "client_id": client["client_id"],
            "user_id": "",
            "user_representation": "",
        }
        return jwt.encode(claims, client["secret"], algorithm="HS256")

    def direct(self, base: str | None = None, name: str = "gateway") -> httpx.Client:
        """A client that reaches Open Zaak (or another instance at `base`) without the gateway."""
        headers = {"Authorization": f"Bearer {self.token(name)}", "Accept-Crs": "EPSG:4326"}
        return httpx.Client(base_url=base or self.url, headers=headers, timeout=60)

    def secrets(self) -> list[str]:
        return [c["secret"] for c in self.state["clients"].values()]


def stand_up() -> OpenZaak:
    """`scripts/openzaak start`; skips (or fails under CI) with the reason when it cannot."""
    if not STATE.exists() or not json.loads(STATE.read_text()).get("installed"):
        unavailable("Open Zaak is not installed: run `scripts/openzaak install` (about 2 minutes, once)")
    try:
        result = subprocess.run([SCRIPT, "start"], capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        unavailable("`scripts/openzaak start` did not finish in 600 s")
    if result.returncode != 0:
        unavailable(f"`scripts/openzaak start` failed: {result.stderr.strip()[-2000:]}")
    started = json.loads(result.stdout)["started"]
    return OpenZaak(json.loads(STATE.read_text()), started)


def tear_down(openzaak: OpenZaak) -> None:
    if openzaak.started:
        subprocess.run([SCRIPT, "stop", *openzaak.started], capture_output=True, timeout=120, check=False)


@contextlib.contextmanager
def second_instance(**env: str) -> Iterator[str]:
    """Another Open Zaak on the same database (`scripts/openzaak serve`), e.g. with another JWT_EXPIRY; its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [str(SCRIPT), "serve", "--port", str(port)] + [f"--env={k}={v}" for k, v in env.items()]
    log = STATE.parent / "log" / f"openzaak-{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is None and answers(url + "/zaken/api/v1/"), 120, 0.25)
        yield url
    finally:
        proc.terminate()  # uwsgi --die-on-term: the master stops its workers
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True


def gateway_config(openzaak: OpenZaak, upstream: str, mode: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A gateway in front of Open Zaak at `upstream`, `rewrite` (rewrite_urls) or `public` (host: public), and
    the environment holding its callers' API keys and secrets."""
    from conftest import base_config

    config = base_config(upstream)
    config["components"] = {}
    for name, prefix in COMPONENTS.items():
        component: dict[str, Any] = {"prefix": prefix, "upstream": upstream + prefix}
        component.update({"rewrite_urls": True} if mode == "rewrite" else {"host": "public"})
        if name == "zaken":
            component["crs"] = "EPSG:4326"
        config["components"][name] = component
    config["callers"], env = [], {}
    for name, client_name in CALLERS.items():
        client = openzaak.client(client_name)
        var = name.upper().replace("-", "_")
        env[f"OZ_{var}_KEY"] = API_KEYS[name]
        env[f"OZ_{var}_SECRET"] = WRONG_SECRET if name == "wrong-secret" else client["secret"]
        config["callers"].append(
            {
                "name": name,
                "api_keys": [{"env": f"OZ_{var}_KEY"}],
                "client_id": client["client_id"],
                "secret": {"env": f"OZ_{var}_SECRET"},
                "components": list(COMPONENTS),
            }
        )
    config["callers"][0]["user"] = {"id": "", "representation": "Legacy DMS", "from_headers": True}
    return config, env
