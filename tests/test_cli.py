"""The zgw-gateway command (gateway.cli): check-config, credentials new, token."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from servers import free_port

from gateway.cli import main

ROOT = Path(__file__).resolve().parent.parent
SECRET = "cli-test-zgw-secret-4e6a8c0b2d4f6a8c"
OVERRIDE_SECRET = "cli-test-ztc-secret-1b3d5f7a9c0e2b4d"


def config_data(tmp_path: Path) -> dict[str, Any]:
    return {
        "token": {"lifetime": 600, "clock_skew": 20},
        "components": {
            "zaken": {"prefix": "/zaken/api/v1", "upstream": "http://127.0.0.1:9/zaken/api/v1", "crs": "EPSG:4326"},
            "catalogi": {"prefix": "/catalogi/api/v1", "upstream": "http://127.0.0.1:9/catalogi/api/v1"},
            "besluiten": {"prefix": "/besluiten/api/v1", "upstream": "http://127.0.0.1:9/besluiten/api/v1"},
        },
        "callers": [
            {
                "name": "dms",
                "networks": ["127.0.0.0/8"],
                "client_id": "dms-Ab12Cd34Ef56",
                "secret": {"env": "CLI_TEST_SECRET"},
                "credentials": {
                    "catalogi": {"client_id": "dms-ztc-Zz99", "secret": {"file": str(tmp_path / "ztc-secret")}}
                },
                "user": {"id": "u-42", "representation": "Document Management"},
                "components": ["zaken", "catalogi"],
            }
        ],
    }


def write(tmp_path: Path, data: dict[str, Any], name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("CLI_TEST_SECRET", SECRET)
    monkeypatch.delenv("ZGW_GATEWAY_CONFIG", raising=False)
    (tmp_path / "ztc-secret").write_text(OVERRIDE_SECRET + "\n", encoding="utf-8")
    return write(tmp_path, config_data(tmp_path))


def run_module(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "ZGW_GATEWAY_CONFIG"}
    environ.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_accepts_a_good_file(env: Path) -> None:
    result = run_module("check-config", str(env), extra_env={"CLI_TEST_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{env}: ok (3 components, 1 callers)"
    assert SECRET not in result.stdout + result.stderr


def test_check_config_lists_the_key_paths_of_a_bad_file(tmp_path: Path) -> None:
    data = config_data(tmp_path)
    data["listen"] = {"prot": 8000}
    data["callers"][0]["components"].append("documenten")
    path = write(tmp_path, data)
    result = run_module("check-config", str(path))
    assert result.returncode == 2
    assert "listen.prot: unknown key" in result.stderr
    assert result.stdout == ""


def test_check_config_reports_a_cross_reference_by_key_path(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(env.read_text(encoding="utf-8"))
    data["callers"][0]["components"].append("documenten")
    bad = write(env.parent, data, "bad.yaml")
    with pytest.raises(SystemExit) as info:
        main(["check-config", str(bad)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "  callers[0].components[2]: no component named 'documenten'" in err.splitlines()


def test_check_config_names_a_missing_secret(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CLI_TEST_SECRET")
    assert main(["check-config", str(env)]) == 2
    captured = capsys.readouterr()
    assert "env:CLI_TEST_SECRET" in captured.err
    assert "1 secret(s) not readable" in captured.err
    assert OVERRIDE_SECRET not in captured.out + captured.err


def test_check_config_no_secrets_skips_the_secrets(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CLI_TEST_SECRET")
    assert main(["check-config", "--no-secrets", str(env)]) == 0
    assert capsys.readouterr().out.startswith(f"{env}: ok")


def test_check_config_reads_the_path_from_the_environment(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ZGW_GATEWAY_CONFIG", str(env))
    assert main(["check-config"]) == 0
    assert capsys.readouterr().out.startswith(f"{env}: ok")


def test_check_config_of_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check-config", str(tmp_path / "absent.yaml")])
    assert info.value.code == 2
    assert "cannot read the file" in capsys.readouterr().err


def test_credentials_new_prints_a_client_id_and_a_strong_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["credentials", "new", "my-dms"]) == 0
    first = capsys.readouterr().out
    assert main(["credentials", "new", "my-dms"]) == 0
    second = capsys.readouterr().out
    client_id = re.search(r"^client_id: (\S+)$", first, re.M)
    secret = re.search(r"^secret: +(\S+)$", first, re.M)
    assert client_id and secret
    assert re.fullmatch(r"my-dms-[A-Za-z0-9]{12}", client_id.group(1))
    assert len(secret.group(1)) >= 32
    assert first != second


@pytest.mark.parametrize("label", ["", "my dms", "dms/1", "x" * 38])
def test_credentials_new_refuses_a_bad_label(label: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["credentials", "new", label]) == 2
    assert capsys.readouterr().out == ""


def _printed_token(out: str) -> str:
    token = out.splitlines()[0]
    assert token.count(".") == 2
    return token


def test_token_prints_a_jwt_for_the_caller_and_component(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--config", str(env), "--caller", "dms", "--component", "zaken"]) == 0
    captured = capsys.readouterr()
    token = _printed_token(captured.out)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    assert set(claims) == {"iss", "iat", "client_id", "user_id", "user_representation", "exp"}
    assert claims["iss"] == claims["client_id"] == "dms-Ab12Cd34Ef56"
    assert claims["user_id"] == "u-42"
    assert claims["user_representation"] == "Document Management"
    assert claims["exp"] - claims["iat"] == 600 + 20
    assert '"client_id": "dms-Ab12Cd34Ef56"' in captured.out
    assert SECRET not in captured.out + captured.err


def test_token_uses_per_component_credentials(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--config", str(env), "--caller", "dms", "--component", "catalogi"]) == 0
    captured = capsys.readouterr()
    claims = jwt.decode(_printed_token(captured.out), OVERRIDE_SECRET, algorithms=["HS256"])
    assert claims["client_id"] == "dms-ztc-Zz99"
    assert OVERRIDE_SECRET not in captured.out + captured.err


def test_token_for_an_unknown_caller_exits_2(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--config", str(env), "--caller", "nobody", "--component", "zaken"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no caller named 'nobody'" in captured.err


def test_token_for_a_component_the_caller_may_not_use_exits_2(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--config", str(env), "--caller", "dms", "--component", "besluiten"]) == 2
    assert capsys.readouterr().out == ""


def test_token_with_an_unreadable_secret_names_the_reference(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CLI_TEST_SECRET")
    assert main(["token", "--config", str(env), "--caller", "dms", "--component", "zaken"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "env:CLI_TEST_SECRET" in captured.err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_demo_prints_the_ports_of_its_config(tmp_path: Path) -> None:
    demo = yaml.safe_load((ROOT / "gateway" / "demo.yaml").read_text(encoding="utf-8"))
    port, admin, sandbox = free_port(), free_port(), free_port()
    demo["listen"]["port"], demo["admin"]["port"] = port, admin
    for component in demo["components"].values():
        component["upstream"] = component["upstream"].replace(":8001/", f":{sandbox}/")
    path = write(tmp_path, demo, "demo.yaml")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
    argv = [sys.executable, "-m", "gateway", "demo", "--config", str(path), "--sandbox-port", str(sandbox)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline(), proc.stdout.readline()]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert banner == [
        f"zgw-gateway demo: gateway http://127.0.0.1:{port}, admin http://127.0.0.1:{admin}/metrics, "
        f"sandbox upstream http://127.0.0.1:{sandbox}\n",
        f'  try: curl -H "X-API-Key: demo-key" http://127.0.0.1:{port}/zaken/api/v1/zaken\n',
    ]


@pytest.mark.parametrize("command", ["token", "doctor", "provision", "serve", "check-config"])
def test_the_help_of_a_command_explains_the_config_file(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "the gateway's config file (default: $ZGW_GATEWAY_CONFIG, else config.yaml)" in text
    if command == "token":
        assert "--caller CALLER the caller's name (callers[].name in the config)" in text
        assert "--component COMPONENT a component of that caller (components.NAME), whose credentials sign" in text


def test_demo_refuses_a_sandbox_port_no_component_points_at(capsys: pytest.CaptureFixture[str]) -> None:
    sandbox = free_port()
    assert main(["demo", "--sandbox-port", str(sandbox)]) == 2
    err = capsys.readouterr().err
    assert f"--sandbox-port {sandbox}: no component of " in err
    assert f"has its upstream at http://127.0.0.1:{sandbox}/; give a --config whose upstreams point at" in err
