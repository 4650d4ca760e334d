"""The config's autorisaties, the plan (a pure function of the config and the API's Applicaties), its
rendering, and Open Zaak's setup_configuration YAML."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml

from gateway.config.loading import ConfigError, parse
from gateway.controlplane.openzaak_setup import emit, env_name
from gateway.controlplane.provision import (
    Applicatie,
    Change,
    ProvisionError,
    owned_client_ids,
    plan,
    render,
    summary,
    wanted,
)

ZT = "https://oz.example/catalogi/api/v1/zaaktypen/"
AC = "https://oz.example/autorisaties/api/v1"


def config_data() -> dict[str, Any]:
    return {
        "components": {
            "zaken": {"prefix": "/zaken/api/v1", "upstream": "https://oz.example/zaken/api/v1", "crs": "EPSG:4326"},
            "catalogi": {"prefix": "/catalogi/api/v1", "upstream": "https://oz.example/catalogi/api/v1"},
            "documenten": {"prefix": "/documenten/api/v1", "upstream": "https://dms.example/documenten/api/v1"},
        },
        "callers": [
            {
                "name": "legacy-dms",
                "api_keys": [{"env": "K1"}],
                "client_id": "legacy-dms-1",
                "secret": {"env": "S1"},
                "autorisaties": "all",
                "credentials": {"documenten": {"client_id": "legacy-dms-dms", "secret": {"file": "/run/dms"}}},
                "components": ["zaken", "catalogi", "documenten"],
            },
            {
                "name": "bi",
                "api_keys": [{"env": "K2"}],
                "client_id": "bi-1",
                "secret": {"file": "/run/bi"},
                "next": {"client_id": "bi-2", "secret": {"file": "/run/bi-next"}},
                "autorisaties": [
                    {
                        "component": "zrc",
                        "scopes": ["zaken.lezen"],
                        "zaaktypen": [ZT + "1", ZT + "2"],
                        "max_vertrouwelijkheidaanduiding": "zaakvertrouwelijk",
                    },
                    {"component": "ztc", "scopes": ["catalogi.lezen"]},
                ],
                "components": ["zaken", "catalogi"],
            },
        ],
        "autorisaties_apis": {
            "openzaak": {
                "url": AC,
                "client_id": "gw-admin",
                "secret": {"env": "ADMIN"},
                "components": ["zaken", "catalogi"],
            }
        },
    }


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data)
    return info.value.errors


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        (
            ("callers", 0, "autorisaties"),
            "alles",
            "callers[0].autorisaties: must be 'all' (heeftAlleAutorisaties) or a non-empty list of autorisaties",
        ),
        (("callers", 0, "autorisaties"), [], "callers[0].autorisaties: must be 'all'"),
        (("callers", 1, "autorisaties", 0, "component"), "zaken", "callers[1].autorisaties[0].component: Input"),
        (
            ("callers", 1, "autorisaties", 0, "zaaktypen"),
            [],
            "callers[1].autorisaties[0]: component 'zrc' with zaken.* scopes needs 'zaaktypen'",
        ),
        (
            ("callers", 1, "autorisaties", 0, "max_vertrouwelijkheidaanduiding"),
            None,
            "callers[1].autorisaties[0]: component 'zrc' needs 'max_vertrouwelijkheidaanduiding'",
        ),
        (
            ("callers", 1, "autorisaties", 1, "zaaktypen"),
            [ZT + "1"],
            "callers[1].autorisaties[1]: 'zaaktypen' does not apply to component 'ztc'",
        ),
        (
            ("callers", 1, "autorisaties", 0, "zaaktypen"),
            ["zaaktype-1"],
            "callers[1].autorisaties[0].zaaktypen[0]: must be an absolute http:// or https:// URL",
        ),
        (("callers", 1, "autorisaties", 1, "scope"), ["x"], "callers[1].autorisaties[1].scope: unknown key"),
        (
            ("callers", 1, "next", "client_id"),
            "bi-1",
            "callers[1].next.client_id: must differ from the current client_id",
        ),
        (("callers", 0, "credentials", "documenten", "next"), {"client_id": "x"}, "next.secret: Field required"),
        (("autorisaties_apis", "openzaak", "url"), "oz.example", "autorisaties_apis.openzaak.url: must be"),
        (
            ("autorisaties_apis", "openzaak", "components"),
            ["zaken", "besluiten"],
            "autorisaties_apis.openzaak.components[1]: no component named 'besluiten'",
        ),
        (("autorisaties_apis", "openzaak", "secret"), {"value": "x"}, "autorisaties_apis.openzaak.secret.value"),
    ],
)
def test_bad_autorisaties_keys_are_named(path: tuple[Any, ...], value: Any, error: str) -> None:
    data = config_data()
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    assert any(e.startswith(error) or error in e for e in errors_of(data)), errors_of(data)


def test_a_component_in_two_autorisaties_apis_is_an_error() -> None:
    data = config_data()
    data["autorisaties_apis"]["other"] = {**data["autorisaties_apis"]["openzaak"], "components": ["catalogi"]}
    assert errors_of(data) == [
        "autorisaties_apis.other.components[0]: 'catalogi' is already in autorisaties_apis.openzaak"
    ]


def test_wanted_holds_one_applicatie_per_credential_of_the_apis_components() -> None:
    apps = {a.label: a for a in wanted(parse(config_data()), "openzaak")}
    # legacy-dms's documenten credentials belong to another vendor's component: not in this API
    assert set(apps) == {"zgw-gateway: legacy-dms", "zgw-gateway: bi"}
    assert apps["zgw-gateway: legacy-dms"].all and not apps["zgw-gateway: legacy-dms"].rows
    bi = apps["zgw-gateway: bi"]
    assert bi.client_ids == {"bi-1", "bi-2"}
    assert sorted(bi.to_api()["autorisaties"], key=str) == sorted(
        [
            {
                "component": "zrc",
                "scopes": ["zaken.lezen"],
                "zaaktype": ZT + "1",
                "maxVertrouwelijkheidaanduiding": "zaakvertrouwelijk",
            },
            {
                "component": "zrc",
                "scopes": ["zaken.lezen"],
                "zaaktype": ZT + "2",
                "maxVertrouwelijkheidaanduiding": "zaakvertrouwelijk",
            },
            {"component": "ztc", "scopes": ["catalogi.lezen"]},
        ],
        key=str,
    )
    assert Applicatie.from_api({**bi.to_api(), "url": AC + "/applicaties/1"}).same_as(bi)


def test_a_client_id_with_two_different_grants_is_refused() -> None:
    data = config_data()
    data["callers"][1]["client_id"] = "legacy-dms-1"
    data["callers"][1]["next"] = None
    with pytest.raises(ProvisionError, match=r"callers\[1\]\.autorisaties: client_id 'legacy-dms-1' has other"):
        wanted(parse(data), "openzaak")


def test_callers_without_autorisaties_are_left_alone() -> None:
    data = config_data()
    del data["callers"][0]["autorisaties"]
    assert [a.label for a in wanted(parse(data), "openzaak")] == ["zgw-gateway: bi"]


def app(label: str, *ids: str, all: bool = True, url: str | None = None) -> Applicatie:
    rows = frozenset() if all else frozenset({("ztc", frozenset({"catalogi.lezen"}), "", "")})
    return Applicatie(label=label, client_ids=frozenset(ids), all=all, rows=rows, url=url)


A = app("zgw-gateway: a", "a1")
A_ROTATING = app("zgw-gateway: a", "a1", "a2")
A_SWITCHED = app("zgw-gateway: a", "a2")
B = app("zgw-gateway: b", "b1", all=False)
ADMIN = app("admin", "admin", url="u/admin")
OWNED = frozenset({"a1", "a2", "b1"})


def have(*apps: Applicatie) -> list[Applicatie]:
    return [dataclasses.replace(a, url=a.url or f"u/{i}") for i, a in enumerate(apps)]


@pytest.mark.parametrize(
    ("want", "existing", "prune", "expected"),
    [
        ([A, B], [ADMIN], False, [("create", "zgw-gateway: a"), ("create", "zgw-gateway: b")]),
        ([A, B], have(ADMIN, A, B), False, []),
        # rotation: the next client id joins, then the old one leaves - both updates, never a delete
        ([A_ROTATING], have(A), False, [("update", "zgw-gateway: a")]),
        ([A_SWITCHED], have(A_ROTATING), False, [("update", "zgw-gateway: a")]),
        # rights changed
        ([app("zgw-gateway: b", "b1")], have(B), False, [("update", "zgw-gateway: b")]),
        # a caller left the config: its Applicatie (gateway label) is kept unless pruning
        ([A], have(A, B), False, [("keep", "zgw-gateway: b")]),
        ([A], have(A, B), True, [("delete", "zgw-gateway: b")]),
        # somebody else's Applicatie: never touched, even with prune
        ([A], have(A, app("Open Notificaties", "on-1")), True, []),
        # the admin's Applicatie is protected even when it carries the gateway's label
        ([A], have(A, app("zgw-gateway: admin", "admin")), True, []),
        # an Applicatie of owned client ids without the label: the config owns it
        ([A], have(A, app("hand-made", "b1")), True, [("delete", "hand-made")]),
        # two Applicaties hold one credential's ids: the better match is updated, the other pruned
        ([A_ROTATING], have(app("x", "a2"), A), True, [("delete", "x"), ("update", "zgw-gateway: a")]),
    ],
)
def test_plan(want: list[Applicatie], existing: list[Applicatie], prune: bool, expected: list[tuple[str, str]]) -> None:
    changes = plan(want, existing, owned=OWNED, protected=frozenset({"admin"}), prune=prune)
    assert [(c.action, (c.have or c.want).label) for c in changes if (c.have or c.want)] == expected


def test_a_second_plan_after_applying_the_first_is_empty() -> None:
    want = wanted(parse(config_data()), "openzaak")
    first = plan(want, [ADMIN], owned=OWNED, protected=frozenset({"admin"}), prune=True)
    applied = [ADMIN] + [dataclasses.replace(c.want, url=f"u/{i}") for i, c in enumerate(first) if c.want]
    assert plan(want, applied, owned=OWNED, protected=frozenset({"admin"}), prune=True) == []


def test_render_reads_like_a_plan() -> None:
    want = wanted(parse(config_data()), "openzaak")
    old_bi = Applicatie(
        label="zgw-gateway: bi",
        client_ids=frozenset({"bi-1"}),
        all=False,
        rows=frozenset({("zrc", frozenset({"zaken.lezen"}), ZT + "1", "openbaar")}),
        url=AC + "/applicaties/7",
    )
    changes = plan(want, [old_bi], owned=OWNED, protected=frozenset(), prune=False)
    text = "\n".join(render("openzaak", AC, changes))
    assert text.splitlines()[0] == f"Autorisaties API openzaak ({AC}):"
    assert f"  ~ update zgw-gateway: bi ({AC}/applicaties/7)" in text
    assert "      clientIds: bi-1 -> bi-1, bi-2" in text
    assert f"      - zrc [zaken.lezen] zaaktype={ZT}1 max=openbaar" in text
    assert f"      + zrc [zaken.lezen] zaaktype={ZT}2 max=zaakvertrouwelijk" in text
    assert "  + create zgw-gateway: legacy-dms" in text and "      heeftAlleAutorisaties: true" in text
    assert summary(changes) == "Plan: 1 to create, 1 to update, 0 to delete."
    assert summary([]) == "No changes: the Autorisaties APIs match the config."


def test_a_plan_that_keeps_applicaties_says_so_in_its_summary() -> None:
    kept = plan([A], have(A, B, app("zgw-gateway: c", "c1")), owned=OWNED, protected=frozenset(), prune=False)
    assert [c.action for c in kept] == ["keep", "keep"]
    assert "  no changes" not in render("openzaak", AC, kept)
    assert summary(kept) == (
        "No changes: 2 Applicaties not in the config, kept (`provision --apply --prune` deletes them)."
    )
    assert summary([*kept, Change("create", A, None)], applied=True) == (
        "Applied: 1 created, 0 updated, 0 deleted; "
        "2 Applicaties not in the config, kept (`provision --apply --prune` deletes them)."
    )


def test_owned_client_ids_are_every_current_and_next_id() -> None:
    assert owned_client_ids(parse(config_data())) == {"legacy-dms-1", "legacy-dms-dms", "bi-1", "bi-2"}


def test_emit_open_zaak_names_every_secret_by_environment_variable_never_by_value() -> None:
    text = emit(parse(config_data()), "openzaak")
    data = yaml.safe_load(text)
    items = {i["identifier"]: i["secret"] for i in data["vng_api_common_credentials"]["items"]}
    # the admin, legacy-dms's Open Zaak credentials, bi's current and next; not the DMS vendor's
    assert items == {
        "gw-admin": {"value_from": {"env": "ADMIN"}},
        "legacy-dms-1": {"value_from": {"env": "S1"}},
        "bi-1": {"value_from": {"env": "ZGW_SECRET_BI_1"}},
        "bi-2": {"value_from": {"env": "ZGW_SECRET_BI_2"}},
    }
    assert '#   ZGW_SECRET_BI_2  (bi-2: export ZGW_SECRET_BI_2="$(cat /run/bi-next)")' in text
    (admin,) = data["vng_api_common_applicaties"]["items"]
    assert admin["client_ids"] == ["gw-admin"] and admin["heeft_alle_autorisaties"] is True
    assert data["vng_api_common_credentials_config_enable"] and data["vng_api_common_applicaties_config_enable"]
    assert emit(parse(config_data()), "openzaak") == text  # same uuid every time: loading again updates


def test_env_names_for_file_secrets_are_shell_safe() -> None:
    data = config_data()
    ref = parse(data).callers[1].secret
    assert env_name("bi.reporting-Xy12_ab", ref) == "ZGW_SECRET_BI_REPORTING_XY12_AB"
