"""Loading and validating config.yaml (gateway.config.loading): every error names its key path."""

from __future__ import annotations

import copy
import datetime
import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.loading import Config, ConfigError, load, parse

SHA = "a" * 64


def valid() -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 8000},
        "admin": {"host": "127.0.0.1", "port": 9100},
        "public_url": "http://gw.intern:8000",
        "trusted_proxies": ["10.0.0.0/8", "fd00::/8"],
        "token": {"lifetime": 300, "clock_skew": 30, "refresh_margin": 30},
        "components": {
            "zaken": {
                "prefix": "/zaken/api/v1",
                "upstream": "https://openzaak.example.nl/zaken/api/v1/",
                "crs": "EPSG:4326",
            },
            "catalogi": {"prefix": "/catalogi/api/v1", "upstream": "https://openzaak.example.nl/catalogi/api/v1"},
        },
        "callers": [
            {
                "name": "legacy-dms",
                "api_keys": [{"env": "LEGACY_DMS_API_KEY"}, {"sha256": SHA}],
                "networks": ["10.1.2.0/24"],
                "client_id": "legacy-dms-Xy12",
                "secret": {"env": "ZGW_SECRET_LEGACY_DMS"},
                "user": {"id": "", "representation": "Legacy DMS"},
                "components": ["zaken", "catalogi"],
            },
            {
                "name": "bi",
                "cert_subjects": ["CN=bi,O=Gemeente"],
                "client_id": "bi-Ab12",
                "secret": {"file": "/var/run/secrets/zgw/bi"},
                "components": ["catalogi"],
            },
        ],
    }


def errors_of(mutate: Callable[[dict[str, Any]], object]) -> list[str]:
    data = valid()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse(data)
    assert info.value.errors, "a ConfigError must carry at least one message"
    return info.value.errors


def _key_header(d: dict[str, Any], name: str) -> None:
    d["identity"] = {"api_key_header": name}


def _no_cert_callers(d: dict[str, Any]) -> None:
    d["callers"].pop(1)


@pytest.mark.parametrize(
    ("setup", "logged", "refused"),
    [
        (None, ["Authorization"], "carries the caller's credentials"),
        (None, ["proxy-authorization"], "carries credentials"),
        (None, ["X-Request-ID", "COOKIE"], "carries session credentials"),
        (None, ["X-API-Key"], "it is identity.api_key_header"),
        (lambda d: _key_header(d, "X-Gateway-Key"), ["x-gateway-key"], "it is identity.api_key_header"),
        # a caller is identified by certificate subject, through the trusted proxies
        (None, ["X-SSL-Client-S-DN"], "it is identity.cert_subject_header, and callers are identified by it"),
        (lambda d: _key_header(d, "X-Gateway-Key"), ["X-Api-Key"], None),  # no longer the key header
        (_no_cert_callers, ["X-SSL-Client-S-DN"], None),  # no caller is identified by it
        (lambda d: d.update(trusted_proxies=[]), ["X-SSL-Client-S-DN"], None),  # it never counts
        (None, ["X-Request-ID", "User-Agent", "X-ZGW-User-Id"], None),
    ],
)
def test_log_headers_refuse_every_header_that_carries_a_credential(
    setup: Callable[[dict[str, Any]], None] | None, logged: list[str], refused: str | None
) -> None:
    data = valid()
    if setup is not None:
        setup(data)
    data["log"] = {"headers": logged}
    if refused is None:
        assert parse(data).log.headers == [h.lower() for h in logged]
        return
    with pytest.raises(ConfigError) as info:
        parse(data)
    index = len(logged) - 1
    [error] = info.value.errors
    assert error.startswith(f"log.headers[{index}]: '{logged[index].lower()}' cannot be logged: "), error
    assert refused in error


def test_a_valid_config_loads_into_typed_objects() -> None:
    config = parse(valid())
    assert isinstance(config, Config)
    assert config.listen.port == 8000
    assert config.trusted_proxies == [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
    assert config.components["zaken"].upstream == "https://openzaak.example.nl/zaken/api/v1"
    assert config.components["zaken"].crs == "EPSG:4326"
    assert config.components["catalogi"].crs is None
    assert config.callers[0].networks == [ipaddress.ip_network("10.1.2.0/24")]
    assert config.callers[1].secret.describe() == "file:/var/run/secrets/zgw/bi"
    assert [r.describe() for r in config.secret_refs()] == [
        "env:LEGACY_DMS_API_KEY",
        "env:ZGW_SECRET_LEGACY_DMS",
        "file:/var/run/secrets/zgw/bi",
    ]


def test_the_objects_are_frozen() -> None:
    config = parse(valid())
    with pytest.raises(ValueError):
        config.listen.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["listen"].update(prot=8000), "listen.prot: unknown key"),
        (lambda d: d.update(listn={}), "listn: unknown key"),
        (lambda d: d["callers"][0].update(secrt={"env": "X"}), "callers[0].secrt: unknown key"),
        (lambda d: d["callers"][0]["secret"].update(file="/x"), "callers[0].secret: "),
        (lambda d: d["callers"][0].update(secret="plain-text-secret"), "callers[0].secret: "),
        (lambda d: d["callers"][0].pop("secret"), "callers[0].secret: "),
        (lambda d: d["components"]["zaken"].update(upstream="ftp://oz/zaken"), "components.zaken.upstream: "),
        (lambda d: d["components"]["zaken"].update(upstream="openzaak/zaken"), "components.zaken.upstream: "),
        (lambda d: d["components"]["zaken"].update(upstream="https://oz/z?x=1"), "components.zaken.upstream: "),
        (lambda d: d["components"]["zaken"].update(prefix="/zaken/api/v1/"), "components.zaken.prefix: "),
        (lambda d: d["components"]["zaken"].update(prefix="zaken/api/v1"), "components.zaken.prefix: "),
        (lambda d: d["components"]["zaken"].update(prefix="/zaken/../v1"), "components.zaken.prefix: "),
        (lambda d: d["components"]["zaken"].update(crs="EPSG:28992"), "components.zaken.crs: "),
        (lambda d: d["listen"].update(port=0), "listen.port: "),
        (lambda d: d["admin"].update(port=65536), "admin.port: "),
        (lambda d: d.update(trusted_proxies=["10.0.0.0/33"]), "trusted_proxies[0]: "),
        (lambda d: d.update(trusted_proxies=["10.0.0.0/8", "nonsense"]), "trusted_proxies[1]: "),
        (lambda d: d["callers"][0].update(networks=["10.1.2.1/24"]), "callers[0].networks[0]: "),
        (lambda d: d["callers"][0].update(networks=[24]), "callers[0].networks[0]: "),
        (lambda d: d["token"].update(lifetime=3590), "token.lifetime: "),
        (lambda d: d["token"].update(lifetime=100, refresh_margin=100), "token.refresh_margin: "),
        (lambda d: d["token"].update(clock_skew=301), "token.clock_skew: "),
        (lambda d: d["callers"][1]["components"].append("besluiten"), "callers[1].components[1]: "),
        (lambda d: d["callers"][1].update(name="legacy-dms"), "callers[1].name: "),
        (lambda d: d["components"]["catalogi"].update(prefix="/zaken/api/v1"), "components."),
        (lambda d: d["callers"][0]["api_keys"].append({"sha256": "abc"}), "callers[0].api_keys[2].sha256: "),
        (lambda d: d["callers"][0]["api_keys"].append({"sha256": "g" * 64}), "callers[0].api_keys[2].sha256: "),
        (lambda d: d["callers"][0]["api_keys"].append({"env": "A", "sha256": SHA}), "callers[0].api_keys[2]: "),
        (lambda d: d.update(log={"headers": ["Authorization"]}), "log.headers[0]: "),
        (lambda d: d.update(log={"headers": ["X-Request-ID", "cookie"]}), "log.headers[1]: "),
        (lambda d: d.update(log={"headers": ["X Request"]}), "log.headers: "),
        (lambda d: d["callers"][0].update(methods=["get"]), "callers[0].methods: "),
        (lambda d: d["callers"][0].update(client_id="x" * 51), "callers[0].client_id: "),
        (lambda d: d.update(public_url="http://gw.intern:8000/base"), "public_url: "),
        (lambda d: d.update(components={}), "components: "),
        (lambda d: d["components"].update(Zaken2=d["components"].pop("catalogi")), "components.Zaken2: "),
    ],
)
def test_each_error_names_its_key_path(mutate: Callable[[dict[str, Any]], object], expected: str) -> None:
    errors = errors_of(mutate)
    assert any(e.startswith(expected) for e in errors), errors
    # pydantic internals (union member names, validator reprs) never leak into what the operator reads.
    for e in errors:
        path = e.split(": ", 1)[0]
        assert "function" not in path and "lax-or-strict" not in path and "(top level)" not in path, e


def test_a_bad_cidr_gives_one_readable_message() -> None:
    errors = errors_of(lambda d: d["callers"][0].update(networks=["10.1.2.0/24", "10.1.2.0/33"]))
    assert len(errors) == 1
    assert errors[0].startswith("callers[0].networks[1]: must be a network in CIDR notation")


def test_an_unknown_component_names_the_caller_and_the_component() -> None:
    errors = errors_of(lambda d: d["callers"][0]["components"].append("besluiten"))
    assert errors == ["callers[0].components[2]: no component named 'besluiten'"]


def test_duplicate_caller_names_name_the_second_caller() -> None:
    errors = errors_of(lambda d: d["callers"][1].update(name="legacy-dms"))
    assert errors == ["callers[1].name: 'legacy-dms' is used by another caller"]


def test_duplicate_prefixes_name_both_components() -> None:
    errors = errors_of(lambda d: d["components"]["catalogi"].update(prefix="/zaken/api/v1"))
    assert errors == ["components.catalogi.prefix: same prefix as components.zaken"]


def test_several_errors_are_all_reported() -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["listen"]["port"] = 0
        d["listen"]["prot"] = 1
        d["components"]["zaken"]["upstream"] = "ftp://x"

    errors = errors_of(mutate)
    assert [e.split(":", 1)[0] for e in errors] == ["components.zaken.upstream", "listen.port", "listen.prot"]


def test_the_token_limits_stay_below_the_servers_expiry() -> None:
    data = valid()
    data["token"] = {"lifetime": 3000, "clock_skew": 300, "refresh_margin": 600}
    assert parse(data).token.lifetime + parse(data).token.clock_skew < 3600
    for lifetime, skew in [(3570, 30), (3600, 0), (3001, 0)]:
        data["token"] = {"lifetime": lifetime, "clock_skew": skew}
        with pytest.raises(ConfigError) as info:
            parse(data)
        assert any(e.startswith("token.lifetime: ") for e in info.value.errors), info.value.errors


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("listen:\n  host: 127.0.0.1\n  port: [8000\ncomponents: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    (message,) = info.value.errors
    assert message.startswith(f"{path}: not valid YAML at line ")
    line = int(message.split("at line ", 1)[1].split(",")[0])
    assert 3 <= line <= 4


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "", "42\n"])
def test_a_top_level_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.errors == [f"{path}: the top level must be a mapping of keys"]


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "absent.yaml")
    assert info.value.errors[0].startswith(f"{tmp_path / 'absent.yaml'}: cannot read the file")


def test_a_config_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "components:\n"
        "  zaken: {prefix: /zaken/api/v1, upstream: 'http://127.0.0.1:8001/zaken/api/v1', crs: EPSG:4326}\n"
        "callers:\n"
        "  - name: dms\n"
        "    networks: [127.0.0.0/8]\n"
        "    client_id: dms-x\n"
        "    secret: {env: S}\n"
        "    components: [zaken]\n",
        encoding="utf-8",
    )
    config = load(path)
    assert config.callers[0].name == "dms"
    assert config.listen.port == 8000


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.sampled_from(["", "/", "/x/", "EPSG:4326", "10.0.0.0/8", "::/0", "http://", "env", "file", "sha256"])
    | st.dates()
    | st.datetimes(timezones=st.none() | st.just(datetime.UTC))
    | st.binary(max_size=8)
)
keys = (
    st.sampled_from(["env", "file", "sha256", "prefix", "upstream", "port", "name", "str", "[key]", "__class__"])
    | st.text(max_size=8)
    | st.integers(-3, 3)
    | st.none()
    | st.booleans()
)
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)


def _containers(node: Any, out: list[Any]) -> list[Any]:
    if isinstance(node, dict | list):
        out.append(node)
        for child in node.values() if isinstance(node, dict) else node:
            _containers(child, out)
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_parse_returns_a_config_or_raises_config_error(data: st.DataObject) -> None:
    doc = copy.deepcopy(valid())
    for _ in range(data.draw(st.integers(1, 4))):
        target = data.draw(st.sampled_from(_containers(doc, [])))
        value = data.draw(documents)
        if isinstance(target, dict):
            if target and data.draw(st.booleans()):
                target[data.draw(st.sampled_from(sorted(target, key=repr)))] = value
            else:
                target[data.draw(keys)] = value
        elif target and data.draw(st.booleans()):
            target[data.draw(st.integers(0, len(target) - 1))] = value
        else:
            target.append(value)
    try:
        config = parse(doc)
    except ConfigError as exc:
        assert exc.errors
        assert all(isinstance(e, str) and ": " in e for e in exc.errors)
    else:
        assert isinstance(config, Config)


@settings(max_examples=50, deadline=None)
@given(doc=documents)
def test_parse_of_any_document_returns_a_config_or_raises_config_error(doc: Any) -> None:
    with pytest.raises(ConfigError):
        parse(doc)  # no random document has the required 'components'
