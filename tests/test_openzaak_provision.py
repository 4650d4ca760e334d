"""The three provisioning steps against the real Open Zaak 1.30.0 (scripts/openzaak): credentials, then
`provision --emit open-zaak` loaded with setup_configuration and `provision --apply`, then `doctor` and
calls through the gateway; the faults doctor names; and a secret rotation under load with 0 failures."""

from __future__ import annotations

import importlib.machinery
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from real_openzaak import SCRIPT, OpenZaak, stand_up, tear_down
from servers import GatewayProcess, free_port, metric_value, wait_until

from gateway.config.sections import TokenConfig
from gateway.dataplane.tokens import mint

pytestmark = pytest.mark.openzaak

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"full": "oz-full-key-" + secrets.token_hex(8), "reader": "oz-reader-key-" + secrets.token_hex(8)}


@pytest.fixture(scope="session")
def openzaak() -> Iterator[OpenZaak]:
    oz = stand_up()
    yield oz
    tear_down(oz)


def openzaak_script() -> ModuleType:
    """scripts/openzaak as a module, for its environment of Open Zaak's manage.py."""
    loader = importlib.machinery.SourceFileLoader("openzaak_script", str(SCRIPT))
    module = ModuleType(loader.name)
    module.__file__ = str(SCRIPT)
    loader.exec_module(module)
    return module


def setup_configuration(oz: OpenZaak, yaml_file: Path, env: dict[str, str]) -> None:
    """Open Zaak's own `manage.py setup_configuration`, with the secrets in its environment."""
    script = openzaak_script()
    result = subprocess.run(
        [str(script.VENV / "bin" / "python"), "src/manage.py", "setup_configuration", "--yaml-file", str(yaml_file)],
        cwd=script.SRC,
        env=script.openzaak_env(oz.state, **env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def applicaties(oz: OpenZaak, client: tuple[str, str]) -> list[dict[str, Any]]:
    token = mint(*client, TokenConfig(), user_id="", user_representation="", now=time.time())
    found: list[dict[str, Any]] = []
    url: str | None = f"{oz.url}/autorisaties/api/v1/applicaties"
    while url:
        page = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
        found += page["results"]
        url = page.get("next")
    return found


def new_credentials(label: str) -> tuple[str, str]:
    """What `zgw-gateway credentials new LABEL` prints: a client id and a secret."""
    out = run_cli("credentials", "new", label).stdout.splitlines()
    return out[0].split()[-1], out[1].split()[-1]


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"zgw-gateway {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


class Setup:
    """A gateway config for the real Open Zaak, its secret files, and the commands run on it."""

    def __init__(self, oz: OpenZaak, workdir: Path) -> None:
        self.oz = oz
        self.workdir = workdir
        self.path = workdir / "gateway.yaml"  # where GatewayProcess keeps its config
        self.admin = new_credentials("gw-admin")
        self.full = new_credentials("full")
        self.reader = new_credentials("reader")
        base = oz.url
        components = {
            name: {"prefix": f"/{name}/api/v1", "upstream": f"{base}/{name}/api/v1"}
            for name in ("zaken", "catalogi", "besluiten")
        }
        components["zaken"]["crs"] = "EPSG:4326"
        self.config: dict[str, Any] = {
            "listen": {"host": "127.0.0.1", "port": free_port()},
            "admin": {"host": "127.0.0.1", "port": free_port()},
            "secrets": {"poll_seconds": 0.2},
            "shutdown": {"drain_seconds": 0.1, "timeout_seconds": 5},
            "components": components,
            "callers": [
                {
                    "name": "full",
                    "api_keys": [{"env": "OZ_FULL_KEY"}],
                    "client_id": self.full[0],
                    "secret": {"file": str(self.secret_file(*self.full))},
                    "autorisaties": "all",
                    "components": ["zaken", "catalogi", "besluiten"],
                },
                {
                    "name": "reader",
                    "api_keys": [{"env": "OZ_READER_KEY"}],
                    "client_id": self.reader[0],
                    "secret": {"env": "OZ_READER_SECRET"},
                    "autorisaties": [{"component": "ztc", "scopes": ["catalogi.lezen"]}],
                    "components": ["catalogi"],
                },
            ],
            "autorisaties_apis": {
                "openzaak": {
                    "url": f"{base}/autorisaties/api/v1",
                    "client_id": self.admin[0],
                    "secret": {"file": str(self.secret_file(*self.admin))},
                    "components": ["zaken", "catalogi", "besluiten"],
                }
            },
        }
        self.env = {"OZ_READER_SECRET": self.reader[1], "OZ_FULL_KEY": KEYS["full"], "OZ_READER_KEY": KEYS["reader"]}

    def secret_file(self, client_id: str, secret: str) -> Path:
        path = self.workdir / "secrets" / client_id
        path.parent.mkdir(exist_ok=True)
        path.write_text(secret + "\n")
        return path

    def write(self, config: dict[str, Any] | None = None) -> Path:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config or self.config, sort_keys=False))
        tmp.replace(self.path)  # one rename: a reloading gateway never reads half a file
        return self.path

    def cli(
        self, *args: str, config: dict[str, Any] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        path = self.write(config) if config is not None else self.path
        return run_cli(*args, "--config", str(path), env=self.env, check=check)

    def register_secrets(self) -> None:
        """`provision --emit open-zaak`, loaded by Open Zaak's setup_configuration with the secrets in its env."""
        emitted = self.cli("provision", "--emit", "open-zaak").stdout
        assert not any(s in emitted for s in (self.admin[1], self.full[1], self.reader[1]))
        data = yaml.safe_load(emitted)
        values = {}
        for item in data["vng_api_common_credentials"]["items"]:
            name = item["secret"]["value_from"]["env"]
            ref = next(line for line in emitted.splitlines() if line.startswith(f"#   {name}  "))
            values[name] = self._secret_value(ref)
        yaml_file = self.workdir / "openzaak-setup.yaml"
        yaml_file.write_text(emitted)
        setup_configuration(self.oz, yaml_file, values)

    def _secret_value(self, header_line: str) -> str:
        # "#   NAME  (client-id: export NAME="$(cat PATH)")" or "(client-id: as the gateway has it)"
        if "$(cat " in header_line:
            return Path(header_line.split("$(cat ", 1)[1].split(")")[0]).read_text().strip()
        return self.env[header_line.split()[1]]


@pytest.fixture
def setup(openzaak: OpenZaak, tmp_path: Path) -> Setup:
    s = Setup(openzaak, tmp_path)
    s.write()
    return s


@pytest.fixture
def gateway_for() -> Iterator[Callable[[Setup], GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(s: Setup) -> GatewayProcess:
        gw = GatewayProcess(s.config, s.workdir, env=s.env)  # the same dict and file as the test's
        assert gw.config_path == s.path
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        gw.stop()


def kept(plan: str) -> str:
    """The summary's words for the gateway's Applicaties this config does not name: those that earlier tests
    left in this Open Zaak (its database outlives a test session, and `scripts/test` runs the suite twice).
    The plan lists each on a line of its own and keeps them; "" when there are none, as on a fresh install."""
    n = sum(line.startswith("  ! not in the config: ") for line in plan.splitlines())
    if not n:
        return ""
    noun, it = ("Applicatie", "it") if n == 1 else ("Applicaties", "them")
    return f"{n} {noun} not in the config, kept (`provision --apply --prune` deletes {it})"


@pytest.mark.timeout(400)  # Open Zaak's setup_configuration starts Django each time
def test_provision_creates_the_configs_applicaties_then_no_changes_then_calls_work(
    setup: Setup, gateway_for: Callable[[Setup], GatewayProcess]
) -> None:
    setup.register_secrets()
    plan = setup.cli("provision").stdout
    assert "  + create zgw-gateway: full" in plan and "  + create zgw-gateway: reader" in plan
    assert "      + ztc [catalogi.lezen]" in plan
    others = kept(plan)
    tail = f"; {others}." if others else "."
    assert plan.splitlines()[-1] == "Plan: 2 to create, 0 to update, 0 to delete" + tail

    applied = setup.cli("provision", "--apply").stdout
    assert applied.splitlines()[-1] == "Applied: 2 created, 0 updated, 0 deleted" + tail
    again = setup.cli("provision").stdout
    assert kept(again) == others and "+ create" not in again and "~ update" not in again
    assert again.splitlines()[-1] == (
        f"No changes: {others}." if others else "No changes: the Autorisaties APIs match the config."
    )

    doctor = setup.cli("doctor", "--json")
    assert {(r["caller"], r["component"], r["result"]) for r in json.loads(doctor.stdout)} == {
        ("full", "zaken", "ok"),
        ("full", "catalogi", "ok"),
        ("full", "besluiten", "ok"),
        ("reader", "catalogi", "ok"),
        ("-", "autorisaties_apis.openzaak", "ok"),
    }

    gw = gateway_for(setup)
    for key, path in [
        ("full", "/zaken/api/v1/zaken"),
        ("full", "/besluiten/api/v1/besluiten"),
        ("reader", "/catalogi/api/v1/catalogussen"),
    ]:
        response = httpx.get(gw.url + path, headers={"X-API-Key": KEYS[key]}, timeout=30)
        assert response.status_code == 200, (path, response.text)


@pytest.mark.timeout(400)  # Open Zaak's setup_configuration starts Django each time
def test_doctor_names_each_fault(setup: Setup) -> None:
    setup.register_secrets()
    setup.cli("provision", "--apply")
    broken = yaml.safe_load(yaml.safe_dump(setup.config))
    broken["callers"][1]["components"] = ["catalogi", "zaken"]  # reader has no rights on zaken
    broken["components"]["besluiten"]["upstream"] = f"http://127.0.0.1:{free_port()}/besluiten/api/v1"
    del broken["components"]["zaken"]["crs"]
    unknown_id, _ = new_credentials("unregistered")
    broken["callers"].append(
        {
            **broken["callers"][1],
            "name": "stranger",
            "client_id": unknown_id,
            "api_keys": [{"sha256": "a" * 64}],
            "components": ["catalogi"],
        }
    )
    setup.env["OZ_READER_SECRET"] = "a-secret-open-zaak-does-not-know-0123456789"
    result = setup.cli("doctor", "--json", config=broken, check=False)
    assert result.returncode == 1
    found = {(r["caller"], r["component"]): (r["result"], r["detail"]) for r in json.loads(result.stdout)}
    assert found["full", "zaken"] == ("CRS", "412 precondition_failed")
    assert found["full", "besluiten"][0] == "not reachable"
    assert found["full", "catalogi"] == ("ok", "200")
    assert found["reader", "catalogi"] == ("secret mismatch", "403 invalid-jwt-signature")
    assert found["stranger", "catalogi"] == ("unknown client", "403 invalid-client-identifier")

    setup.env["OZ_READER_SECRET"] = setup.reader[1]
    rights = setup.cli("doctor", config=broken, check=False).stdout
    print(rights)
    row = next(line for line in rights.splitlines() if line.startswith("reader") and " zaken " in line)
    assert row.split()[-4:] == ["no", "rights", "403", "permission_denied"]
    assert "fix: grant " + setup.reader[0] + " rights on zaken: callers[1].autorisaties" in rights
    for secret in (setup.admin[1], setup.full[1], setup.reader[1]):
        assert secret not in result.stdout + result.stderr + rights


@pytest.mark.timeout(400)  # Open Zaak's setup_configuration starts Django each time
def test_rotation_under_load_has_no_failed_request(
    setup: Setup, gateway_for: Callable[[Setup], GatewayProcess]
) -> None:
    setup.register_secrets()
    setup.cli("provision", "--apply")
    gw = gateway_for(setup)
    stop = threading.Event()
    statuses: Counter[int | str] = Counter()
    lock = threading.Lock()

    def traffic() -> None:
        with httpx.Client(base_url=gw.url, headers={"X-API-Key": KEYS["full"]}, timeout=30) as client:
            for n in range(5000):  # bounded; the test stops it much earlier
                if stop.is_set():
                    return
                path = "/zaken/api/v1/zaken" if n % 2 else "/catalogi/api/v1/catalogussen"
                try:
                    status: int | str = client.get(path).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with lock:
                    statuses[status] += 1

    def served() -> int:
        with lock:
            return sum(statuses.values())

    def reloads() -> float:
        return metric_value(gw.metrics(), "zgw_gateway_config_reloads_total", result="success")

    def more_traffic(count: int = 40) -> None:
        target = served() + count
        wait_until(lambda: served() >= target, 60)

    with ThreadPoolExecutor(max_workers=3) as pool:
        for _ in range(3):
            pool.submit(traffic)
        more_traffic()
        old_id = setup.full[0]
        # 1. the next credentials beside the current ones; provision registers both, doctor checks both
        next_id, next_secret = new_credentials("full")
        setup.config["callers"][0]["next"] = {
            "client_id": next_id,
            "secret": {"file": str(setup.secret_file(next_id, next_secret))},
        }
        before = reloads()
        setup.write()
        wait_until(lambda: reloads() > before, 15)
        setup.register_secrets()
        assert (
            "clientIds: " + old_id + " -> " + ", ".join(sorted([old_id, next_id]))
            in setup.cli("provision", "--apply").stdout
        )
        checks = json.loads(setup.cli("doctor", "--json").stdout)
        assert {r["credentials"] for r in checks if r["caller"] == "full" and r["ok"]} == {"current", "next"}
        more_traffic()
        # 2. the switch: the next credentials become the current ones, picked up by reload
        caller = setup.config["callers"][0]
        caller["client_id"], caller["secret"] = next_id, caller.pop("next")["secret"]
        before = reloads()
        setup.write()
        wait_until(lambda: reloads() > before, 15)
        more_traffic()
        # 3. the next provision removes the old client id
        assert (
            "clientIds: " + ", ".join(sorted([old_id, next_id])) + " -> " + next_id
            in setup.cli("provision", "--apply").stdout
        )
        more_traffic(100)
        stop.set()
    assert set(statuses) == {200}, statuses
    assert "No changes" in setup.cli("provision").stdout
    assert [a["clientIds"] for a in applicaties(setup.oz, setup.admin) if {old_id, next_id} & set(a["clientIds"])] == [
        [next_id]
    ]
    print(f"rotation under load: {statuses}")
