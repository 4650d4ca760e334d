"""The sections of config.yaml, one pydantic model each: listen, token, components, callers and the rest.

Frozen, `extra=forbid`, and every check that concerns one section alone; what spans sections (names that
refer to components, ambiguous rewrites) is checked by `config.Config`, which also loads the file.
Secrets appear only as references (`{env: NAME}` / `{file: PATH}`); resolving them is `secrets.py`'s job.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.config.grants import Grant
from gateway.config.values import (
    API_KEY_HINT,
    DOCUMENT_BODY_BYTES,
    JSON_BODY_BYTES,
    SECRET_HINT,
    Network,
    a_reference,
    base_url,
    is_documenten,
    plain_url,
)
from gateway.zgw import Crs

HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")
# The first path segment of the gateway's own endpoints on the proxy port; no component prefix may take it.
RESERVED_SEGMENT = "-"
METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
CALLER_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"  # a metric label, and a segment of the notification endpoint


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(Model):
    """Where a secret lives: an environment variable or a file (a mounted Kubernetes Secret)."""

    env: str | None = Field(default=None, min_length=1)
    file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _reference(cls, data: Any) -> Any:
        return a_reference(data, SECRET_HINT)

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError(f"give exactly one of {SECRET_HINT}")
        return self

    def describe(self) -> str:
        """A printable name of the reference, never the value."""
        return f"env:{self.env}" if self.env is not None else f"file:{self.file}"


class ApiKeyRef(Model):
    """An API key: a reference to the key, or the hex SHA-256 of the key so the config holds no key."""

    env: str | None = Field(default=None, min_length=1)
    file: Path | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")

    @model_validator(mode="before")
    @classmethod
    def _reference(cls, data: Any) -> Any:
        return a_reference(data, API_KEY_HINT)

    @model_validator(mode="after")
    def _exactly_one(self) -> ApiKeyRef:
        if sum(v is not None for v in (self.env, self.file, self.sha256)) != 1:
            raise ValueError(f"give exactly one of {API_KEY_HINT}")
        return self

    def secret_ref(self) -> SecretRef | None:
        if self.sha256 is not None:
            return None
        return SecretRef(env=self.env, file=self.file)


# Open Notificaties probes a new abonnement's callback with a notification on this kanaal (nrc/api/validators.py).
PROBE_KANAAL = "test"


class TLSListen(Model):
    cert_file: Path
    key_file: Path


class Listen(Model):
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)
    tls: TLSListen | None = None


class Admin(Model):
    host: str = "0.0.0.0"
    port: int = Field(default=9100, ge=1, le=65535)


class TokenConfig(Model):
    # Open Zaak rejects a token once now - iat >= JWT_EXPIRY (3600 s by default); stay well below it.
    lifetime: int = Field(default=300, ge=30, le=3000)
    clock_skew: int = Field(default=30, ge=0, le=300)
    refresh_margin: int = Field(default=30, ge=0, le=600)
    include_exp: bool = True

    # Field validators rather than a model validator, so that the error names the key.
    @field_validator("clock_skew")
    @classmethod
    def _skew(cls, v: int, info: ValidationInfo) -> int:
        lifetime = info.data.get("lifetime")
        if lifetime is not None and lifetime + v >= 3600:
            raise ValueError("lifetime + clock_skew must stay below the servers' JWT_EXPIRY of 3600 s")
        return v

    @field_validator("refresh_margin")
    @classmethod
    def _margin(cls, v: int, info: ValidationInfo) -> int:
        lifetime = info.data.get("lifetime")
        if lifetime is not None and v >= lifetime:
            raise ValueError("must be smaller than lifetime")
        return v


class TimeoutsConfig(Model):
    connect: float = Field(default=5.0, gt=0, le=300)
    read: float = Field(default=60.0, gt=0, le=3600)
    write: float = Field(default=60.0, gt=0, le=3600)
    pool: float = Field(default=5.0, gt=0, le=60)
    total: float = Field(default=300.0, gt=0, le=86400)


class UpstreamTLS(Model):
    verify: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> UpstreamTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class Component(Model):
    prefix: str
    upstream: str
    crs: Crs | None = None
    timeouts: TimeoutsConfig = TimeoutsConfig()
    tls: UpstreamTLS = UpstreamTLS()
    # Default: DOCUMENT_BODY_BYTES when the upstream is a Documenten API, else JSON_BODY_BYTES (_body_limit).
    max_body_bytes: int = Field(default=JSON_BODY_BYTES, ge=0)
    max_connections: int = Field(default=100, ge=1, le=10000)
    max_in_flight: int = Field(default=1000, ge=1, le=100000)
    max_response_head_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    max_response_headers: int = Field(default=100, ge=8, le=10000)
    rewrite_urls: bool = False
    host: Literal["upstream", "public"] = "upstream"

    @model_validator(mode="before")
    @classmethod
    def _body_limit(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_body_bytes" not in data and is_documenten(data.get("upstream")):
            return {**data, "max_body_bytes": DOCUMENT_BODY_BYTES}
        return data

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", v) or re.search(r"/\.{1,2}(/|$)", v):
            raise ValueError("must start with '/', have no trailing slash and only plain path segments")
        if v.split("/")[1] == RESERVED_SEGMENT:
            raise ValueError(
                f"'/{RESERVED_SEGMENT}/' is the gateway's own (notification endpoints); choose another prefix"
            )
        return v

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, v: str) -> str:
        return base_url(v)


class User(Model):
    id: str = Field(default="", max_length=255)
    representation: str = Field(default="", max_length=255)
    from_headers: bool = False


class ClientCredentials(Model):
    client_id: str = Field(min_length=1, max_length=50)
    secret: SecretRef


class Credentials(ClientCredentials):  # callers[].credentials.<component>
    next: ClientCredentials | None = None  # registered beside these while a secret rotates (README: Rotating a secret)
    autorisaties: Grant | None = None  # what `provision` registers for this client_id


class RateLimit(Model):
    rate: float = Field(gt=0, description="requests per second")
    burst: int = Field(ge=1)


class Kanaal(Model):
    """One kanaal of an abonnement, with the filters Open Notificaties applies (Notificaties API `kanalen`)."""

    naam: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,49}$")
    filters: dict[Annotated[str, Field(min_length=1, max_length=100)], Annotated[str, Field(max_length=1000)]] = {}

    @field_validator("naam")
    @classmethod
    def _not_the_probe(cls, v: str) -> str:
        if v == PROBE_KANAAL:
            raise ValueError(f"'{PROBE_KANAAL}' is the kanaal of Open Notificaties' callback probe")
        return v


class ApiKeyHeader(Model):
    """An API key the legacy receiver expects in a header of its own."""

    header: str = Field(default="X-API-Key", pattern=HEADER_NAME.pattern)
    value: SecretRef


class BasicCredentials(Model):
    username: str = Field(min_length=1, max_length=200, pattern=r"^[^:]*$")
    password: SecretRef


class Notifications(Model):
    """A caller's inbound notifications: what Open Notificaties sends to the gateway on its behalf, and where
    the gateway relays them (README: Notifications to legacy systems)."""

    auth: SecretRef  # the abonnement's `auth`: the Authorization value Open Notificaties sends, exactly
    deliver_to: Annotated[str, AfterValidator(plain_url)]
    api_key: ApiKeyHeader | None = None
    basic: BasicCredentials | None = None
    timeout: float = Field(default=8.0, gt=0, le=60)  # Open Notificaties gives a delivery 10 s
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    tls: UpstreamTLS = UpstreamTLS()
    kanalen: list[Kanaal] = Field(default=[], max_length=50)

    @model_validator(mode="after")
    def _one_credential(self) -> Notifications:
        if self.api_key is not None and self.basic is not None:
            raise ValueError("give at most one of 'api_key' or 'basic' for the receiver")
        names = [k.naam for k in self.kanalen]
        if len(names) != len(set(names)):
            raise ValueError("each kanaal may appear once in 'kanalen' (put several filters in one entry)")
        return self


class CallerConfig(Model):
    name: str = Field(pattern=f"^{CALLER_NAME}$")
    api_keys: list[ApiKeyRef] = []
    networks: list[Network] = []
    cert_subjects: list[str] = []
    client_id: str = Field(min_length=1, max_length=50)
    secret: SecretRef
    next: ClientCredentials | None = None  # registered beside these while a secret rotates
    autorisaties: Grant | None = None
    credentials: dict[str, Credentials] = {}
    user: User = User()
    components: list[str] = Field(min_length=1)
    methods: list[str] | None = None
    rate_limit: RateLimit | None = None
    notifications: Notifications | None = None

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        bad = [m for m in v if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; use upper case names from {sorted(METHODS)}")
        return v

    @model_validator(mode="after")
    def _identifiable(self) -> CallerConfig:
        if not (self.api_keys or self.networks or self.cert_subjects):
            raise ValueError("needs at least one of api_keys, networks or cert_subjects")
        for name in self.credentials:
            if name not in self.components:
                raise ValueError(f"credentials for '{name}', which is not in this caller's components")
        return self


class Identity(Model):
    """Which request headers carry identity. Forwarded ones count only from trusted proxies."""

    api_key_header: str = "X-API-Key"
    cert_subject_header: str = "X-SSL-Client-S-DN"
    user_id_header: str = "X-ZGW-User-Id"
    user_representation_header: str = "X-ZGW-User-Representation"

    @field_validator("*")
    @classmethod
    def _header(cls, v: str) -> str:
        if not HEADER_NAME.match(v):
            raise ValueError("must be a header name of letters, digits and '-'")
        return v


class Limits(Model):
    max_header_bytes: int = Field(default=16384, ge=1024, le=1024 * 1024)
    max_in_flight: int = Field(default=2000, ge=1, le=100000)
    header_read_timeout: float = Field(default=10.0, gt=0, le=300)
    body_read_timeout: float = Field(default=30.0, gt=0, le=3600)


class Retry(Model):
    # One retry, only when it is safe (see proxy.forward); the total deadline bounds retry plus first try.
    enabled: bool = True


class CircuitBreakerConfig(Model):
    enabled: bool = True
    failure_threshold: int = Field(default=5, ge=1, le=1000)
    open_seconds: float = Field(default=10.0, gt=0, le=3600)


class Log(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    access: bool = True
    headers: list[str] = []

    @field_validator("headers")
    @classmethod
    def _header_names(cls, v: list[str]) -> list[str]:
        # Headers that carry credentials are refused by Config, which knows the identity headers.
        bad = [h for h in v if not HEADER_NAME.match(h)]
        if bad:
            raise ValueError(f"these are not header names: {bad}")
        return [h.lower() for h in v]


class Shutdown(Model):
    drain_seconds: float = Field(default=5.0, ge=0, le=600)
    timeout_seconds: float = Field(default=30.0, ge=0, le=3600)


class Secrets(Model):
    poll_seconds: float = Field(default=2.0, ge=0.1, le=3600)


class Tracing(Model):
    otlp_endpoint: str | None = None
    service_name: str = "zgw-gateway"


class AutorisatiesApi(Model):
    """An Autorisaties API where `provision` registers the callers' autorisaties, with an admin client."""

    url: Annotated[str, AfterValidator(base_url)]
    client_id: str = Field(min_length=1, max_length=50)
    secret: SecretRef
    components: list[str] = Field(min_length=1)  # the gateway components whose rights it holds
    tls: UpstreamTLS = UpstreamTLS()
    timeout: float = Field(default=10.0, gt=0, le=300)


class NotificatiesApi(Model):
    """The Notificaties API where `provision` registers the callers' abonnementen, with a client that may
    (`notificaties.consumeren`)."""

    url: Annotated[str, AfterValidator(base_url)]
    client_id: str = Field(min_length=1, max_length=50)
    secret: SecretRef
    # How Open Notificaties reaches the gateway's proxy port; public_url when not set.
    callback_url: Annotated[str, AfterValidator(base_url)] | None = None
    tls: UpstreamTLS = UpstreamTLS()
    # Creating an abonnement waits for Open Notificaties' two probes of the gateway.
    timeout: float = Field(default=30.0, gt=0, le=300)
