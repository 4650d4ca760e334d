"""What the operator reads about a bad or doubtful config (issue 22): each line names the key, the reason and
the fix. A table of configs and the exact lines they produce, then `check-config` as the operator runs it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import base_config
from servers import GatewayProcess

from gateway.cli import main
from gateway.config.loading import ConfigError, parse
from gateway.config.values import DOCUMENT_BODY_BYTES, JSON_BODY_BYTES

LITERAL = "a-literal-secret-value-4f1c9e"
SECRET_FIX = (
    "write where the secret lives, not the secret itself: {env: NAME} (an environment variable) or "
    "{file: PATH} (a file, e.g. a mounted Kubernetes Secret)"
)
API_KEY_FIX = (
    "write where the secret lives, not the secret itself: {env: NAME}, {file: PATH} or {sha256: HEX} "
    "(the hex SHA-256 of the key)"
)


def data() -> dict[str, Any]:
    return {
        "components": {
            "zaken": {"prefix": "/zaken/api/v1", "upstream": "http://openzaak.test/zaken/api/v1"},
            "catalogi": {"prefix": "/catalogi/api/v1", "upstream": "http://openzaak.test/catalogi/api/v1"},
        },
        "callers": [
            {
                "name": "legacy-dms",
                "api_keys": [{"env": "MSG_DMS_API_KEY"}],
                "client_id": "legacy-dms-Ab12",
                "secret": {"env": "MSG_DMS_SECRET"},
                "components": ["zaken", "catalogi"],
            }
        ],
    }


def caller(c: dict[str, Any]) -> dict[str, Any]:
    callers: list[dict[str, Any]] = c["callers"]
    return callers[0]


def notifications(**extra: Any) -> dict[str, Any]:
    return {"auth": {"env": "MSG_AUTH"}, "deliver_to": "http://dms.intern/notify", **extra}


Edit = Callable[[dict[str, Any]], object]

ERRORS: list[tuple[str, Edit, str]] = [
    ("literal secret", lambda c: caller(c).update(secret=LITERAL), f"callers[0].secret: {SECRET_FIX}"),
    (
        "literal api key",
        lambda c: caller(c).update(api_keys=[LITERAL]),
        f"callers[0].api_keys[0]: {API_KEY_FIX}",
    ),
    (
        "literal next secret",
        lambda c: caller(c).update(next={"client_id": "legacy-dms-Cd34", "secret": LITERAL}),
        f"callers[0].next.secret: {SECRET_FIX}",
    ),
    (
        "literal credentials secret",
        lambda c: caller(c).update(credentials={"catalogi": {"client_id": "ztc-1", "secret": LITERAL}}),
        f"callers[0].credentials.catalogi.secret: {SECRET_FIX}",
    ),
    (
        "literal next secret of credentials",
        lambda c: caller(c).update(
            credentials={
                "catalogi": {
                    "client_id": "ztc-1",
                    "secret": {"env": "X"},
                    "next": {"client_id": "ztc-2", "secret": LITERAL},
                }
            }
        ),
        f"callers[0].credentials.catalogi.next.secret: {SECRET_FIX}",
    ),
    (
        "literal notifications auth",
        lambda c: caller(c).update(notifications=notifications(auth=LITERAL)),
        f"callers[0].notifications.auth: {SECRET_FIX}",
    ),
    (
        "literal receiver api key",
        lambda c: caller(c).update(notifications=notifications(api_key={"value": LITERAL})),
        f"callers[0].notifications.api_key.value: {SECRET_FIX}",
    ),
    (
        "literal receiver password",
        lambda c: caller(c).update(notifications=notifications(basic={"username": "gw", "password": LITERAL})),
        f"callers[0].notifications.basic.password: {SECRET_FIX}",
    ),
    (
        "literal autorisaties admin secret",
        lambda c: c.update(
            autorisaties_apis={
                "openzaak": {
                    "url": "http://openzaak.test/autorisaties/api/v1",
                    "client_id": "gw-admin",
                    "secret": LITERAL,
                    "components": ["zaken"],
                }
            }
        ),
        f"autorisaties_apis.openzaak.secret: {SECRET_FIX}",
    ),
    (
        "literal notificaties secret",
        lambda c: c.update(
            notificaties_api={"url": "http://nrc.test/api/v1", "client_id": "gw-nrc", "secret": LITERAL}
        ),
        f"notificaties_api.secret: {SECRET_FIX}",
    ),
    (
        "both env and file",
        lambda c: caller(c).update(secret={"env": "A", "file": "/run/secrets/a"}),
        "callers[0].secret: give exactly one of {env: NAME} (an environment variable) or {file: PATH} "
        "(a file, e.g. a mounted Kubernetes Secret)",
    ),
    (
        "an api key of no kind",
        lambda c: caller(c).update(api_keys=[{}]),
        "callers[0].api_keys[0]: give exactly one of {env: NAME}, {file: PATH} or {sha256: HEX} "
        "(the hex SHA-256 of the key)",
    ),
]


@pytest.mark.parametrize(("edit", "line"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_a_bad_config_gets_one_line_naming_the_key_the_reason_and_the_fix(edit: Edit, line: str) -> None:
    config = data()
    edit(config)
    with pytest.raises(ConfigError) as info:
        parse(config)
    assert info.value.errors == [line]
    assert LITERAL not in str(info.value)


LOG_WARNING = (
    "log.access: access lines are written at level info, so log.level {level} drops every one of them: "
    "set log.level: info to keep them, or log.access: false to say so"
)
KANALEN_WARNING = (
    "callers[0].notifications.kanalen: `provision` registers these in the notificaties_api, and the config "
    "has none: add notificaties_api (url, client_id, secret), or remove kanalen when the abonnement is "
    "registered by hand"
)
WARNINGS: list[tuple[str, Edit, list[str]]] = [
    ("nothing doubtful", lambda c: None, []),
    ("access lines at warning", lambda c: c.update(log={"level": "warning", "access": True}), [LOG_WARNING]),
    ("access lines at error", lambda c: c.update(log={"level": "error"}), [LOG_WARNING.format(level="error")]),
    ("no access lines asked", lambda c: c.update(log={"level": "warning", "access": False}), []),
    (
        "kanalen without notificaties_api",
        lambda c: caller(c).update(notifications=notifications(kanalen=[{"naam": "zaken"}])),
        [KANALEN_WARNING],
    ),
    (
        "notifications registered by hand",
        lambda c: caller(c).update(notifications=notifications()),
        [],
    ),
]


@pytest.mark.parametrize(("edit", "lines"), [w[1:] for w in WARNINGS], ids=[w[0] for w in WARNINGS])
def test_a_config_that_loads_but_does_not_do_what_it_says_gets_a_warning(edit: Edit, lines: list[str]) -> None:
    config = data()
    edit(config)
    assert parse(config).warnings() == [line.replace("{level}", "warning") for line in lines]


def test_only_a_documenten_api_takes_document_sized_bodies_by_default() -> None:
    config = data()
    config["components"]["documenten"] = {
        "prefix": "/documenten/api/v1",
        "upstream": "https://dms.leverancier.example/documenten/api/v1",
    }
    config["components"]["besluiten"] = {
        "prefix": "/besluiten/api/v1",
        "upstream": "http://openzaak.test/besluiten/api/v1",
        "max_body_bytes": 1000,
    }
    components = parse(config).components
    assert components["documenten"].max_body_bytes == DOCUMENT_BODY_BYTES == 4 * 1024**3 + 64 * 1024**2
    assert components["zaken"].max_body_bytes == components["catalogi"].max_body_bytes == JSON_BODY_BYTES
    assert JSON_BODY_BYTES == 16 * 1024**2
    assert components["besluiten"].max_body_bytes == 1000  # what the operator wrote wins


def write(tmp_path: Path, config: dict[str, Any]) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


def test_check_config_names_an_unreadable_secret_by_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MSG_DMS_API_KEY", raising=False)
    monkeypatch.setenv("MSG_DMS_SECRET", LITERAL)
    config = data()
    caller(config)["notifications"] = notifications(basic={"username": "gw", "password": {"file": "/nonexistent"}})
    monkeypatch.setenv("MSG_AUTH", "Token x")
    path = write(tmp_path, config)
    assert main(["check-config", path]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "  callers[0].api_keys[0]: env:MSG_DMS_API_KEY: the environment variable is not set or empty",
        "  callers[0].notifications.basic.password: file:/nonexistent: cannot read the file (No such file or "
        "directory)",
        f"zgw-gateway: {path}: 2 secret(s) not readable: set them where the gateway runs, or check the file "
        "alone with --no-secrets",
    ]
    assert LITERAL not in captured.err


def test_check_config_prints_the_warnings_and_still_says_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = data()
    config["log"] = {"level": "warning", "access": True}
    caller(config)["notifications"] = notifications(kanalen=[{"naam": "zaken"}])
    path = write(tmp_path, config)
    assert main(["check-config", "--no-secrets", path]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"  warning: {LOG_WARNING.format(level='warning')}",
        f"  warning: {KANALEN_WARNING}",
    ]
    assert captured.out == f"{path}: ok (2 components, 1 callers, 2 warning(s))\n"


def test_provision_names_notificaties_api_for_kanalen_without_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = data()
    caller(config)["notifications"] = notifications(kanalen=[{"naam": "zaken"}])
    assert main(["provision", "--config", write(tmp_path, config)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"zgw-gateway: warning: {KANALEN_WARNING}",
        "zgw-gateway: nothing to provision: add autorisaties_apis (for the callers' autorisaties) or "
        "notificaties_api (for their abonnementen) to the config",
    ]


def test_serve_logs_the_warnings_at_start(gateway_factory: Callable[..., GatewayProcess]) -> None:
    config = base_config("http://127.0.0.1:9")
    config["log"] = {"level": "warning"}
    gw = gateway_factory(config)
    lines = [json.loads(line) for line in gw.log_lines() if line.startswith("{")]
    warnings = [line for line in lines if line.get("event") == "config_warning"]
    assert [(w["level"], w["msg"]) for w in warnings] == [("warning", LOG_WARNING.format(level="warning"))]
