"""What must change in an Autorisaties API so that its Applicaties match the config: the plan.

Pure: `wanted(config, api)` and a list of Applicaties as the API holds them go in, a list of changes comes
out, and `render` prints it like a terraform plan. `autorisaties.py` reads and writes the API.

Matching is by client id: an Applicatie that holds one of a credential's client ids (current or next) is
that credential's Applicatie, and is updated to the config's client ids, label and autorisaties - which is
how a rotation's old client id leaves it. Deleting needs `prune`, and touches only Applicaties the config
owns: every client id in them is named in the config, or their label carries the gateway's prefix (the
gateway made them). The Applicatie of the API's own admin client is never deleted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gateway.config.grants import Row, grant_rows
from gateway.config.loading import Config
from gateway.config.sections import CallerConfig, Credentials

LABEL_PREFIX = "zgw-gateway: "
TYPE_FIELD = {"zrc": "zaaktype", "drc": "informatieobjecttype", "brc": "besluittype"}
CONFIDENTIAL_FIELD = "maxVertrouwelijkheidaanduiding"


class ProvisionError(Exception):
    """Provisioning cannot go on; the message names the key or the API, never a secret."""


@dataclass(frozen=True)
class Applicatie:
    label: str
    client_ids: frozenset[str]
    all: bool
    rows: frozenset[Row]
    url: str | None = None  # None until the API made it

    def same_as(self, other: Applicatie) -> bool:
        return (self.label, self.client_ids, self.all, self.rows) == (
            other.label,
            other.client_ids,
            other.all,
            other.rows,
        )

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Applicatie:
        rows = frozenset(
            (
                str(a.get("component", "")),
                frozenset(a.get("scopes") or ()),
                str(a.get(TYPE_FIELD.get(str(a.get("component")), ""), "") or ""),
                str(a.get(CONFIDENTIAL_FIELD) or ""),
            )
            for a in data.get("autorisaties") or ()
        )
        return cls(
            label=str(data.get("label", "")),
            client_ids=frozenset(data.get("clientIds") or ()),
            all=bool(data.get("heeftAlleAutorisaties")),
            rows=rows,
            url=data.get("url"),
        )

    def to_api(self) -> dict[str, Any]:
        autorisaties = []
        for component, scopes, type_url, vertrouwelijkheid in sorted(self.rows, key=_row_key):
            item: dict[str, Any] = {"component": component, "scopes": sorted(scopes)}
            if component in TYPE_FIELD and type_url:
                item[TYPE_FIELD[component]] = type_url
            if vertrouwelijkheid:
                item[CONFIDENTIAL_FIELD] = vertrouwelijkheid
            autorisaties.append(item)
        return {
            "clientIds": sorted(self.client_ids),
            "label": self.label,
            "heeftAlleAutorisaties": self.all,
            "autorisaties": autorisaties,
        }


Action = Literal["create", "update", "delete", "keep"]  # keep: would be deleted with --prune


@dataclass(frozen=True)
class Change:
    action: Action
    want: Applicatie | None
    have: Applicatie | None


def _row_key(row: Row) -> tuple[str, list[str], str, str]:
    return (row[0], sorted(row[1]), row[2], row[3])


def credential_entries(caller: CallerConfig, held: set[str]) -> list[tuple[str, str, CallerConfig | Credentials]]:
    """(label, key path, credentials) of each credential a caller uses for a component in `held`."""
    out: list[tuple[str, str, CallerConfig | Credentials]] = []
    if any(c in held and c not in caller.credentials for c in caller.components):
        out.append((caller.name, "", caller))
    for component, creds in caller.credentials.items():
        if component in held:
            out.append((f"{caller.name} ({component})", f".credentials.{component}", creds))
    return out


def wanted(config: Config, api_name: str) -> list[Applicatie]:
    """The Applicaties the config asks of one Autorisaties API: one per credential with autorisaties."""
    held = set(config.autorisaties_apis[api_name].components)
    by_id: dict[str, tuple[str, Applicatie]] = {}
    for i, caller in enumerate(config.callers):
        for label, key, creds in credential_entries(caller, held):
            if creds.autorisaties is None:
                continue
            ids = {creds.client_id} | ({creds.next.client_id} if creds.next else set())
            app = Applicatie(
                label=(LABEL_PREFIX + label)[:100],
                client_ids=frozenset(ids),
                all=creds.autorisaties == "all",
                rows=grant_rows(creds.autorisaties),
            )
            seen = by_id.get(creds.client_id)
            if seen is not None and (seen[1].all, seen[1].rows) != (app.all, app.rows):
                raise ProvisionError(
                    f"callers[{i}]{key}.autorisaties: client_id '{creds.client_id}' has other autorisaties "
                    f"at {seen[0]}; one client id has one Applicatie"
                )
            if seen is None:
                by_id[creds.client_id] = (f"callers[{i}]{key}", app)
    return [app for _, app in by_id.values()]


def owned_client_ids(config: Config) -> frozenset[str]:
    """Every client id a caller or credential names, current and next."""
    ids: set[str] = set()
    for caller in config.callers:
        every: list[CallerConfig | Credentials] = [caller, *caller.credentials.values()]
        for creds in every:
            ids.add(creds.client_id)
            if creds.next is not None:
                ids.add(creds.next.client_id)
    return frozenset(ids)


def plan(
    want: list[Applicatie],
    have: list[Applicatie],
    *,
    owned: frozenset[str],
    protected: frozenset[str],
    prune: bool,
) -> list[Change]:
    """The changes that make `have` match `want`, in the order to apply them: deletes, updates, creates."""
    matched: set[int] = set()
    updates: list[Change] = []
    creates: list[Change] = []
    for w in want:
        candidates = [i for i, h in enumerate(have) if i not in matched and h.client_ids & w.client_ids]
        if not candidates:
            creates.append(Change("create", w, None))
            continue
        best = max(candidates, key=lambda i: (len(have[i].client_ids & w.client_ids), have[i].label == w.label, -i))
        matched.add(best)
        if not have[best].same_as(w):
            updates.append(Change("update", w, have[best]))
    deletes = [
        Change("delete" if prune else "keep", None, h)
        for i, h in enumerate(have)
        if i not in matched
        and not h.client_ids & protected
        and (h.label.startswith(LABEL_PREFIX) or (h.client_ids and h.client_ids <= owned))
    ]
    return deletes + updates + creates


def _row_text(row: Row) -> str:
    component, scopes, type_url, vertrouwelijkheid = row
    text = f"{component} [{', '.join(sorted(scopes))}]"
    if type_url:
        text += f" {TYPE_FIELD.get(component, 'type')}={type_url}"
    if vertrouwelijkheid:
        text += f" max={vertrouwelijkheid}"
    return text


def _ids(app: Applicatie) -> str:
    return ", ".join(sorted(app.client_ids)) or "(none)"


def _describe(app: Applicatie, sign: str) -> list[str]:
    lines = [f"      clientIds: {_ids(app)}", f"      heeftAlleAutorisaties: {str(app.all).lower()}"]
    lines += [f"      {sign} {_row_text(r)}" for r in sorted(app.rows, key=_row_key)]
    return lines


def _diff(want: Applicatie, have: Applicatie) -> list[str]:
    lines = []
    if want.label != have.label:
        lines.append(f"      label: {have.label!r} -> {want.label!r}")
    if want.client_ids != have.client_ids:
        lines.append(f"      clientIds: {_ids(have)} -> {_ids(want)}")
    if want.all != have.all:
        lines.append(f"      heeftAlleAutorisaties: {str(have.all).lower()} -> {str(want.all).lower()}")
    lines += [f"      - {_row_text(r)}" for r in sorted(have.rows - want.rows, key=_row_key)]
    lines += [f"      + {_row_text(r)}" for r in sorted(want.rows - have.rows, key=_row_key)]
    return lines


def render(api_name: str, url: str, changes: list[Change]) -> list[str]:
    """The plan of one API as lines, like a terraform plan."""
    lines = [f"Autorisaties API {api_name} ({url}):"]
    for c in changes:
        if c.action == "create" and c.want:
            lines += [f"  + create {c.want.label}", *_describe(c.want, "+")]
        elif c.action == "update" and c.want and c.have:
            lines += [f"  ~ update {c.have.label} ({c.have.url})", *_diff(c.want, c.have)]
        elif c.action == "delete" and c.have:
            lines += [f"  - delete {c.have.label} ({c.have.url})", *_describe(c.have, "-")]
        elif c.have:
            lines.append(f"  ! not in the config: {c.have.label} ({c.have.url}), clientIds {_ids(c.have)}")
            lines.append("      kept; `zgw-gateway provision --apply --prune` deletes it")
    return lines + no_changes(changes)


@dataclass(frozen=True)
class Noun:
    """What a plan changes, in the words of its summary line."""

    one: str
    many: str
    where: str  # what matches the config when nothing changes
    tag: str = ""  # after the counts


APPLICATIES = Noun("Applicatie", "Applicaties", "the Autorisaties APIs")
ABONNEMENTEN = Noun("abonnement", "abonnementen", "the abonnementen", " (abonnementen)")


class HasAction(Protocol):
    @property
    def action(self) -> Action: ...


def no_changes(changes: Sequence[HasAction]) -> list[str]:
    """The plan's last line when it holds nothing; kept items have lines of their own."""
    return [] if changes else ["  no changes"]


def summary(changes: Sequence[HasAction], applied: bool = False, noun: Noun = APPLICATIES) -> str:
    """The line under all plans: what they change (or changed), and what they keep that the config lacks."""
    n = Counter(c.action for c in changes)
    kept = ""
    if n["keep"]:
        it = (noun.one, "it") if n["keep"] == 1 else (noun.many, "them")
        kept = f"{n['keep']} {it[0]} not in the config, kept (`provision --apply --prune` deletes {it[1]})"
    if not (n["create"] or n["update"] or n["delete"]):
        return f"No changes: {kept}." if kept else f"No changes: {noun.where} match the config."
    if applied:
        text = f"Applied: {n['create']} created, {n['update']} updated, {n['delete']} deleted{noun.tag}"
    else:
        text = f"Plan: {n['create']} to create, {n['update']} to update, {n['delete']} to delete{noun.tag}"
    return f"{text}; {kept}." if kept else f"{text}."
