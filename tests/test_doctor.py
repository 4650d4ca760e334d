"""`zgw-gateway doctor` against real servers on 127.0.0.1: the sandbox (authenticates like Open Zaak),
behind TLS or not, and a port where nothing listens. The real Open Zaak's `permission_denied` is in
test_openzaak_provision.py."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from conftest import CLIENT_ID, GATEWAY_ENV, OTHER_CLIENT_ID, SANDBOX_CLIENTS, SECRET, base_config
from servers import ThreadServer, free_port
from zgw_sandbox import create_sandbox_app

from gateway.cli import main
from gateway.config.loading import parse
from gateway.controlplane import doctor


def checks_of(config: dict[str, Any], environ: dict[str, str] | None = None) -> dict[tuple[str, str, str], Any]:
    found = doctor.run(parse(config), environ={**GATEWAY_ENV, **(environ or {})})
    return {(c.caller, c.component, c.credentials): c for c in found}


def test_a_good_config_is_ok_for_every_caller_and_component(sandbox: str) -> None:
    checks = checks_of(base_config(sandbox))
    assert len(checks) == 4
    assert {c.result for c in checks.values()} == {"ok"}
    assert checks["legacy-dms", "zaken", "current"].client_id == CLIENT_ID


def test_a_wrong_secret_is_a_secret_mismatch_with_its_fix(sandbox: str) -> None:
    checks = checks_of(base_config(sandbox), {"TEST_OTHER_SECRET": "not-the-registered-secret-of-32-bytes"})
    bad = checks["reporting", "zaken", "current"]
    assert (bad.result, bad.detail) == ("secret mismatch", "403 invalid-jwt-signature")
    assert "env:TEST_OTHER_SECRET" in bad.fix and OTHER_CLIENT_ID in bad.fix
    assert checks["legacy-dms", "zaken", "current"].result == "ok"


def test_an_unregistered_client_and_an_unreadable_secret(sandbox: str) -> None:
    config = base_config(sandbox)
    config["callers"][1]["client_id"] = "never-registered-Ab12"
    config["callers"][0]["next"] = {"client_id": "legacy-next-Cd34", "secret": {"env": "UNSET_NEXT_SECRET"}}
    checks = checks_of(config)
    assert checks["reporting", "zaken", "current"].result == "unknown client"
    assert "provision --emit open-zaak" in checks["reporting", "zaken", "current"].fix
    nxt = checks["legacy-dms", "catalogi", "next"]
    assert (nxt.result, nxt.client_id) == ("secret unreadable", "legacy-next-Cd34")


def test_an_unreachable_upstream_and_a_missing_crs(sandbox: str) -> None:
    config = base_config(sandbox)
    config["components"]["catalogi"]["upstream"] = f"http://127.0.0.1:{free_port()}/catalogi/api/v1"
    del config["components"]["zaken"]["crs"]
    checks = checks_of(config)
    down = checks["legacy-dms", "catalogi", "current"]
    assert down.result == "not reachable" and "components.catalogi" in down.fix
    crs = checks["legacy-dms", "zaken", "current"]
    assert (crs.result, crs.detail) == ("CRS", "412 precondition_failed")
    assert crs.fix == "set components.zaken.crs: EPSG:4326 (the upstream demands CRS headers)"
    assert checks["legacy-dms", "documenten", "current"].result == "ok"


@pytest.fixture(scope="module")
def tls_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(d / "ca.pem")
    cert.private_key_pem.write_to_path(d / "key.pem")
    for blob in cert.cert_chain_pems:
        blob.write_to_path(d / "chain.pem", append=True)
    app = create_sandbox_app(SANDBOX_CLIENTS)
    with ThreadServer(app, ssl_certfile=str(d / "chain.pem"), ssl_keyfile=str(d / "key.pem")) as server:
        yield server.url, str(d / "ca.pem")


def test_tls_an_untrusted_certificate_and_then_the_ca_file(tls_sandbox: tuple[str, str]) -> None:
    url, ca_file = tls_sandbox
    config = base_config(url)
    bad = checks_of(config)["legacy-dms", "catalogi", "current"]
    assert bad.result == "TLS" and "certificate not trusted" in bad.detail
    assert "components.catalogi.tls.ca_file" in bad.fix
    for comp in config["components"].values():
        comp["tls"] = {"ca_file": ca_file}
    assert {c.result for c in checks_of(config).values()} == {"ok"}


def test_the_command_prints_a_table_and_exits_1_on_a_fault(
    sandbox: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in GATEWAY_ENV.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(sandbox)))
    assert main(["doctor", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "4 ok, 0 failed" in out and "fix:" not in out

    monkeypatch.setenv("TEST_ZGW_SECRET", "wrong-secret-for-the-test-of-32-bytes")
    assert main(["doctor", "--config", str(path), "--json"]) == 1
    out = capsys.readouterr().out
    rows = json.loads(out)
    assert [r["result"] for r in rows if not r["ok"]] == ["secret mismatch"] * 3
    assert SECRET not in out and "wrong-secret-for-the-test-of-32-bytes" not in out and "Bearer" not in out


def test_an_upstream_that_never_answers_is_a_timeout(sandbox: str) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        config = base_config(sandbox)
        config["components"]["catalogi"]["upstream"] = f"http://127.0.0.1:{silent.getsockname()[1]}/catalogi/api/v1"
        config["components"]["catalogi"]["timeouts"] = {"read": 0.5}
        check = checks_of(config)["legacy-dms", "catalogi", "current"]
    assert (check.result, check.detail) == ("timeout", "no answer in time (ReadTimeout)")
    assert "components.catalogi.timeouts" in check.fix
