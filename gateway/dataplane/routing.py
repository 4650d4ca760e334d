"""Which component a request path belongs to, and the upstream URL it goes to.

Matching works on the raw path as the caller sent it, so what reaches the upstream is byte for byte what
was matched. Paths that could mean something else after decoding (`%2F`, `%2e%2e`, `..`, `//`, `;`, NUL,
backslash) are refused before matching: a caller can never climb out of its component's prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from gateway.config.loading import Config
from gateway.config.sections import Component
from gateway.dataplane.metrics import GaugeValue
from gateway.http1.pool import Pool

# RFC 3986 pchar minus ';' (path parameters are read differently by different servers) and minus the
# encodings of '/', '\', '.', NUL and control bytes, which would change the path's meaning once decoded.
_SEGMENT = rb"(?:[A-Za-z0-9\-._~!$&'()*+,=:@]|%(?![0-1][0-9A-Fa-f]|2[EeFf]|5[Cc]|7[Ff])[0-9A-Fa-f]{2})*"
_SAFE_PATH = re.compile(rb"(?:/" + _SEGMENT + rb")*/?")
# What _SEGMENT allows unencoded, and '/': a path of these alone is safe once '//' and dot segments are out.
_PLAIN = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,=:@/"
_DOT_SEGMENT = re.compile(rb"/\.{1,2}(?:/|$)")
_RESOURCE_NAME = re.compile(r"[a-z_-]+")


def is_safe_path(raw_path: bytes) -> bool:
    """True when the raw path has no tricks: no empty, dot or encoded-slash segments."""
    # find, not `in`: `b"//" in path` first tries b"//" as an integer and formats a TypeError (issue 23).
    if not raw_path.startswith(b"/") or raw_path.find(b"//") >= 0:
        return False
    if raw_path.find(b"/.") >= 0 and _DOT_SEGMENT.search(raw_path):
        return False
    if not raw_path.translate(None, _PLAIN):  # plain characters and slashes only, the common case: checked in C
        return True
    return _SAFE_PATH.fullmatch(raw_path) is not None


@dataclass(slots=True)
class Route:
    """One component: where it lives on the gateway and where it goes upstream."""

    name: str
    component: Component
    prefix: bytes
    upstream_path: bytes  # the upstream base path, no trailing slash
    upstream_host: str  # what Host says upstream when the host mode is 'upstream'
    upstream_hostname: str  # where to connect
    upstream_port: int
    public_host: str
    resources: frozenset[str] = field(default_factory=frozenset)
    pool: Pool = field(init=False)  # set by runtime.Runtime, which keeps pools across reloads
    in_flight_gauge: GaugeValue = field(init=False)  # set by runtime.Runtime with the pool
    # Precomputed for the hot path: the Host header sent upstream (the server builds its URLs from it:
    # docs/zgw.md, "Absolute URLs"), X-Forwarded-Host, the CRS value; and the settings a request reads,
    # as plain attributes (a pydantic model's attribute read costs several times as much, issue 23).
    host_header: bytes = b""
    public_host_header: bytes = b""
    crs: bytes | None = None
    rewrite_urls: bool = False
    total_timeout: float = 0.0
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        comp = self.component
        self.host_header = (self.upstream_host if comp.host == "upstream" else self.public_host).encode()
        self.public_host_header = self.public_host.encode()
        self.crs = comp.crs.encode() if comp.crs else None
        self.rewrite_urls, self.total_timeout = comp.rewrite_urls, comp.timeouts.total
        self.max_in_flight = comp.max_in_flight

    def upstream_target(self, raw_path: bytes, query: bytes) -> bytes:
        """The upstream request target (path and query) for a matched raw path and raw query string."""
        target = self.upstream_path + raw_path[len(self.prefix) :] or b"/"
        return target + b"?" + query if query else target

    def resource(self, raw_path: bytes) -> str:
        """The resource name for metrics and logs: the first path segment after the prefix.

        Bounded: a name that looks like an id, or any name not seen in this component's resource list,
        is folded into 'other' (ids and free text would make label sets unbounded).
        """
        rest = raw_path[len(self.prefix) :]
        if rest in (b"", b"/"):
            return "root"
        if rest[:1] != b"/":
            return "other"
        name = rest[1:].partition(b"/")[0].decode("ascii", "replace")
        if self.resources:  # every known name is a _RESOURCE_NAME: no pattern to match per request
            return name if name in self.resources else "other"
        return name if _RESOURCE_NAME.fullmatch(name) else "other"


class RouteTable:
    """Longest-prefix match from the caller's path to a Route, compiled once per config."""

    def __init__(self, config: Config) -> None:
        public_host = urlsplit(config.public_url).netloc
        routes = []
        for name, comp in config.components.items():
            parts = urlsplit(comp.upstream)
            routes.append(
                Route(
                    name=name,
                    component=comp,
                    prefix=comp.prefix.encode(),
                    upstream_path=parts.path.rstrip("/").encode(),
                    upstream_host=parts.netloc,
                    upstream_hostname=parts.hostname or "",
                    upstream_port=parts.port or (443 if parts.scheme == "https" else 80),
                    public_host=public_host,
                    resources=KNOWN_RESOURCES,
                )
            )
        self.routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)

    def match(self, raw_path: bytes) -> Route | None:
        for route in self.routes:
            prefix = route.prefix
            if raw_path.startswith(prefix) and (len(raw_path) == len(prefix) or raw_path[len(prefix)] == 47):
                return route
        return None


# Resource names of the ZGW APIs (the collection paths of their OpenAPI documents, docs/zgw.md "References"),
# the bounded label set for metrics. Anything else becomes 'other'.
KNOWN_RESOURCES = frozenset(
    {
        # Zaken
        "zaken", "statussen", "zaakobjecten", "zaakinformatieobjecten", "zaakeigenschappen", "rollen",
        "resultaten", "klantcontacten", "zaakcontactmomenten", "zaakverzoeken", "zaakbesluiten",
        "audittrail", "_zoek", "zaaknotities", "substatussen", "reserveer_zaaknummer",
        # Catalogi
        "catalogussen", "zaaktypen", "statustypen", "roltypen", "resultaattypen", "eigenschappen",
        "informatieobjecttypen", "besluittypen", "zaaktype-informatieobjecttypen", "zaakobjecttypen",
        # Documenten
        "enkelvoudiginformatieobjecten", "objectinformatieobjecten", "gebruiksrechten",
        "verzendingen", "bestandsdelen",
        # Besluiten
        "besluiten", "besluitinformatieobjecten",
        # Autorisaties
        "applicaties",
        # Notificaties
        "kanaal", "abonnement", "notificaties", "cloudevents",
    }
)  # fmt: skip
