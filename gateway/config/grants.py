"""What the ZGW side must grant a client: the `autorisaties` of a caller or credential in config.yaml.

Either `all` (the Applicatie's `heeftAlleAutorisaties`) or a list of autorisaties as the Autorisaties API
knows them (docs/zgw.md, "Autorisaties"). One config entry may name several zaaktypen; the API holds one
Autorisatie per type, so `rows()` expands them. Type URLs are the upstream's own (what the Autorisaties API
stores), not the gateway's public URLs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, model_validator

ZgwComponent = Literal["ac", "nrc", "zrc", "ztc", "drc", "brc", "cmc", "kc", "vrc"]
Vertrouwelijkheid = Literal[
    "openbaar",
    "beperkt_openbaar",
    "intern",
    "zaakvertrouwelijk",
    "vertrouwelijk",
    "confidentieel",
    "geheim",
    "zeer_geheim",
]
# Which type list belongs to which component, and the scope prefix that makes it required
# (vng_api_common.authorizations.validators.AutorisatieValidator).
TYPED = {
    "zrc": ("zaaktypen", "zaken."),
    "drc": ("informatieobjecttypen", "documenten."),
    "brc": ("besluittypen", "besluiten."),
}
CONFIDENTIAL = frozenset({"zrc", "drc"})

# One Autorisatie as the API compares it: component, scopes, type URL, max vertrouwelijkheidaanduiding.
Row = tuple[str, frozenset[str], str, str]


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


Url = Annotated[str, Field(max_length=1000), AfterValidator(_url)]


class Autorisatie(BaseModel):
    """Scopes on one component, for some zaak-, informatieobject- or besluittypen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    component: ZgwComponent
    scopes: tuple[Annotated[str, Field(min_length=1, max_length=100)], ...] = Field(min_length=1)
    zaaktypen: tuple[Url, ...] = ()
    informatieobjecttypen: tuple[Url, ...] = ()
    besluittypen: tuple[Url, ...] = ()
    max_vertrouwelijkheidaanduiding: Vertrouwelijkheid | None = None

    @model_validator(mode="after")
    def _fits_the_component(self) -> Autorisatie:
        own = TYPED.get(self.component, ("", ""))
        for name, _ in TYPED.values():
            if name != own[0] and getattr(self, name):
                raise ValueError(f"'{name}' does not apply to component '{self.component}'")
        if self.max_vertrouwelijkheidaanduiding and self.component not in CONFIDENTIAL:
            raise ValueError(f"'max_vertrouwelijkheidaanduiding' does not apply to component '{self.component}'")
        if own[0] and any(s.startswith(own[1]) for s in self.scopes):
            if not getattr(self, own[0]):
                raise ValueError(f"component '{self.component}' with {own[1]}* scopes needs '{own[0]}'")
            if self.component in CONFIDENTIAL and not self.max_vertrouwelijkheidaanduiding:
                raise ValueError(f"component '{self.component}' needs 'max_vertrouwelijkheidaanduiding'")
        return self

    def rows(self) -> list[Row]:
        types: tuple[str, ...] = getattr(self, TYPED[self.component][0]) if self.component in TYPED else ()
        scopes = frozenset(self.scopes)
        vertrouwelijkheid = self.max_vertrouwelijkheidaanduiding or ""
        return [(self.component, scopes, t, vertrouwelijkheid) for t in types or ("",)]


def _shape(value: Any) -> Any:
    if value == "all" or (isinstance(value, list | tuple) and value):
        return value
    raise ValueError("must be 'all' (heeftAlleAutorisaties) or a non-empty list of autorisaties")


def _branch(value: Any) -> str:
    return "[all]" if value == "all" else "[list]"


# The tags are in brackets so that config._key_path leaves them out of the key path of an error.
Grant = Annotated[
    Annotated[Literal["all"], Tag("[all]")] | Annotated[tuple[Autorisatie, ...], Tag("[list]")],
    Discriminator(_branch),
    BeforeValidator(_shape),
]


def grant_rows(grant: Literal["all"] | tuple[Autorisatie, ...]) -> frozenset[Row]:
    """The Autorisatie rows a grant asks for; none for `all`."""
    if grant == "all":
        return frozenset()
    return frozenset(row for autorisatie in grant for row in autorisatie.rows())
