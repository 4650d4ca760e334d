"""Abonnementen from the config (gateway.controlplane.abonnementen): the plan, applying it, idempotence, prune, doctor.

A fake Notificaties API (httpx.MockTransport) holds abonnementen as Open Notificaties shows them: `auth` is
write-only. tests/test_opennotificaties.py does the same against the real Open Notificaties.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest
from conftest import base_config

from gateway.config.loading import parse
from gateway.controlplane import abonnementen, doctor
from gateway.controlplane.provision import ProvisionError

NRC = "http://nrc.test/api/v1"
AUTH = "Token first-auth-value-of-the-abonnement"
ENV = {
    "NRC_SECRET": "nrc-client-secret-value-of-32-bytes-at-least",
    "NOTIFY_AUTH": AUTH,
    "TEST_ZGW_SECRET": "s",
    "TEST_OTHER_SECRET": "s",
}


class FakeNotificaties:
    """The abonnement resource of a Notificaties API, in memory; refuses what Open Notificaties would."""

    def __init__(self, refuse_with: str | None = None, answer: tuple[int, dict[str, Any]] | None = None) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.auth: dict[str, str] = {}
        self.calls: list[str] = []
        self.refuse_with = refuse_with
        self.answer = answer  # to a POST or PUT, instead of saving it

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(f"{request.method} {request.url.path}")
        assert request.headers["authorization"].startswith("Bearer ")
        if request.method == "GET":
            return httpx.Response(200, json=list(self.items.values()))
        if request.method == "DELETE":
            del self.items[str(request.url)]
            return httpx.Response(204)
        if self.refuse_with:
            return httpx.Response(400, json={"code": self.refuse_with, "invalidParams": []})
        if self.answer:
            return httpx.Response(self.answer[0], json=self.answer[1])
        body = json.loads(request.content)
        url = str(request.url) if request.method == "PUT" else f"{NRC}/abonnement/{len(self.auth) + 1}"
        self.auth[url] = body.pop("auth")
        self.items[url] = {"url": url, **body}
        return httpx.Response(201 if request.method == "POST" else 200, json=self.items[url])


def config(**notifications: Any) -> dict[str, Any]:
    cfg = base_config("http://openzaak.test", public_url="http://gateway.test:8000")
    cfg["notificaties_api"] = {"url": NRC, "client_id": "gw-nrc-Ab12", "secret": {"env": "NRC_SECRET"}}
    cfg["callers"][0]["notifications"] = {
        "auth": {"env": "NOTIFY_AUTH"},
        "deliver_to": "http://dms.intern/notify",
        "kanalen": [{"naam": "zaken", "filters": {"bronorganisatie": "517439943"}}],
        **notifications,
    }
    return cfg


def provision(fake: FakeNotificaties, cfg: dict[str, Any], env: dict[str, str] = ENV, **flags: bool) -> list[str]:
    flags = {"apply": False, "prune": False, **flags}
    return abonnementen.provision(
        parse(cfg), apply=flags["apply"], prune=flags["prune"], environ=env, transport=httpx.MockTransport(fake)
    )


def test_an_abonnement_is_created_then_nothing_changes() -> None:
    fake = FakeNotificaties()
    cfg = config()
    plan = provision(fake, cfg)
    assert plan[-1] == "Plan: 1 to create, 0 to update, 0 to delete (abonnementen)."
    assert fake.items == {}
    applied = provision(fake, cfg, apply=True)
    assert applied[-1] == "Applied: 1 created, 0 updated, 0 deleted (abonnementen)."
    [made] = fake.items.values()
    endpoint = "http://gateway.test:8000/-/notifications/legacy-dms"
    assert made["callbackUrl"] == f"{endpoint}?auth={abonnementen.fingerprint(AUTH)}"
    assert made["kanalen"] == [{"naam": "zaken", "filters": {"bronorganisatie": "517439943"}}]
    assert list(fake.auth.values()) == [AUTH]
    assert provision(fake, cfg, apply=True)[-1] == "No changes: the abonnementen match the config."
    assert AUTH not in "\n".join(plan + applied)
    assert abonnementen.fingerprint(AUTH) != abonnementen.fingerprint(AUTH + "x")
    assert AUTH[6:14] not in abonnementen.fingerprint(AUTH)


def test_a_new_auth_value_or_other_kanalen_update_the_same_abonnement() -> None:
    fake = FakeNotificaties()
    provision(fake, config(), apply=True)
    [url] = fake.items
    rotated = provision(fake, config(), {**ENV, "NOTIFY_AUTH": "Token second-auth-value"}, apply=True)
    assert "Applied: 0 created, 1 updated, 0 deleted (abonnementen)." in rotated
    assert fake.auth[url] == "Token second-auth-value"
    kanalen = [{"naam": "zaken"}, {"naam": "documenten", "filters": {"bronorganisatie": "1"}}]
    changed = provision(fake, config(kanalen=kanalen), apply=True)
    assert any(line.strip().startswith("+ kanaal documenten") for line in changed), changed
    assert [k["naam"] for k in fake.items[url]["kanalen"]] == ["documenten", "zaken"]
    assert list(fake.items) == [url]


def test_the_gateways_abonnementen_no_longer_wanted_go_only_with_prune() -> None:
    fake = FakeNotificaties()
    provision(fake, config(), apply=True)
    fake.items["http://other/abonnement/9"] = {"url": "http://other/abonnement/9", "callbackUrl": "http://crm/hook"}
    gone = config()
    del gone["callers"][0]["notifications"]
    kept = provision(fake, gone, apply=True)
    assert any("not in the config" in line for line in kept) and len(fake.items) == 2
    pruned = provision(fake, gone, apply=True, prune=True)
    assert pruned[-1] == "Applied: 0 created, 0 updated, 1 deleted (abonnementen)."
    assert list(fake.items) == ["http://other/abonnement/9"]  # another system's abonnement is never touched


def test_a_refused_probe_names_its_cause_and_an_unreadable_auth_its_key() -> None:
    with pytest.raises(ProvisionError, match=r"invalid-callback-url .*reload the gateway"):
        provision(FakeNotificaties(refuse_with="invalid-callback-url"), config(), apply=True)
    with pytest.raises(ProvisionError, match=r"callers\[0\].notifications.auth: env:NOTIFY_AUTH is not readable"):
        provision(FakeNotificaties(), config(), {k: v for k, v in ENV.items() if k != "NOTIFY_AUTH"})
    without = config()
    del without["notificaties_api"]
    with pytest.raises(ProvisionError, match="no notificaties_api"):
        provision(FakeNotificaties(), without)


WHERE = "notificaties_api: POST /api/v1/abonnement: "
# Open Notificaties' answers (nrc/api/serializers.py, validators.py), with the invalidParams they carry.
REFUSALS = [
    (
        "unknown kanaal",
        400,
        {
            "code": "invalid",
            "invalidParams": [
                {"name": "kanalen", "code": "invalid", "reason": "Kanaal met deze naam bestaat niet."},
            ],
        },
        "answered 400 invalid: kanalen: Kanaal met deze naam bestaat niet. (code invalid)",
    ),
    (
        "misspelt filter",
        400,
        {
            "code": "invalid",
            "invalidParams": [
                {
                    "name": "filters",
                    "code": "inconsistent-abonnement-filters",
                    "reason": "abonnement filters aren't consistent with kanaal filters",
                },
            ],
        },
        "answered 400 invalid: filters: abonnement filters aren't consistent with kanaal filters "
        "(code inconsistent-abonnement-filters)",
    ),
    (
        "the auth value echoed",
        400,
        {"code": "invalid", "invalidParams": [{"name": "auth", "code": "invalid", "reason": f"not {AUTH}"}]},
        "answered 400 invalid: auth: not (hidden) (code invalid)",
    ),
    (
        "no rights",
        403,
        {"code": "permission_denied"},
        "answered 403 permission_denied (no rights for notificaties_api.client_id: register it in Open "
        "Notificaties, with notificaties.consumeren)",
    ),
    (
        "the probe cannot reach the gateway",
        500,
        {"code": "error", "title": "Er is een serverfout opgetreden."},
        "answered 500 error (Open Notificaties probes the callback URL http://gateway.test:8000/-/notifications/ "
        "before it saves an abonnement: the gateway must be serving this config and reachable from Open "
        "Notificaties there; notificaties_api.callback_url sets that URL)",
    ),
]


@pytest.mark.parametrize(("status", "body", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_a_refusal_is_relayed_in_the_servers_words_with_what_to_do(
    status: int, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(ProvisionError) as info:
        provision(FakeNotificaties(answer=(status, body)), config(), apply=True)
    assert str(info.value) == WHERE + message


def test_a_plan_that_keeps_an_abonnement_says_so_in_its_summary() -> None:
    fake = FakeNotificaties()
    provision(fake, config(), apply=True)
    gone = config()
    del gone["callers"][0]["notifications"]
    plan = provision(fake, gone)
    assert "  no changes" not in plan
    assert plan[-1] == "No changes: 1 abonnement not in the config, kept (`provision --apply --prune` deletes it)."
    both = config(kanalen=[{"naam": "besluiten"}])
    both["callers"][1]["notifications"] = both["callers"][0]["notifications"]
    del both["callers"][0]["notifications"]
    assert provision(fake, both)[-1] == (
        "Plan: 1 to create, 0 to update, 0 to delete (abonnementen); "
        "1 abonnement not in the config, kept (`provision --apply --prune` deletes it)."
    )


def abonnement_checks(fake: FakeNotificaties, cfg: dict[str, Any], env: dict[str, str] = ENV) -> list[doctor.Check]:
    return doctor.abonnement_checks(parse(cfg), env, httpx.MockTransport(fake))


def test_doctor_sees_a_missing_a_stale_and_a_matching_abonnement() -> None:
    fake = FakeNotificaties()
    [missing] = abonnement_checks(fake, config())
    assert (missing.result, missing.ok) == ("no abonnement", False)
    assert "provision --apply" in missing.fix
    provision(fake, config(), apply=True)
    [good] = abonnement_checks(fake, config())
    assert (good.result, good.ok, good.credentials) == ("ok", True, "abonnement")
    [stale] = abonnement_checks(fake, config(), {**ENV, "NOTIFY_AUTH": "Token rotated-but-not-provisioned"})
    assert stale.result == "stale auth"
    [other] = abonnement_checks(fake, config(kanalen=[{"naam": "besluiten"}]))
    assert other.result == "kanalen differ"
    [item] = fake.items.values()
    fake.items["http://nrc.test/api/v1/abonnement/99"] = copy.deepcopy(item) | {"url": "x"}
    [twice] = abonnement_checks(fake, config())
    assert twice.result == "duplicate"


def test_the_callback_base_is_where_open_notificaties_reaches_the_gateway() -> None:
    fake = FakeNotificaties()
    cfg = config()
    cfg["notificaties_api"]["callback_url"] = "https://zgw-gateway.intern.svc:8443"
    provision(fake, cfg, apply=True)
    [made] = fake.items.values()
    assert made["callbackUrl"].startswith("https://zgw-gateway.intern.svc:8443/-/notifications/legacy-dms?auth=")
