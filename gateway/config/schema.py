"""The JSON Schema of config.yaml, every key described: `zgw-gateway config-schema` prints it.

The models (sections.py, grants.py, loading.py) give the keys, types, bounds and defaults; the words are here,
one entry per key, so the models stay readable and the reference (docs/configuration.md, generated from this
schema by scripts/config_reference.py), the committed docs/config.schema.json and the chart's
values.schema.json all say the same. A key without words, or words for a key that does not exist, is an
error when the schema is made. The schema checks types, bounds and unknown keys; what spans sections (a
caller naming a component that does not exist) only `zgw-gateway check-config` finds.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel

from gateway.config import sections as s
from gateway.config.grants import Autorisatie
from gateway.config.loading import Config

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_SECRET = "where the secret is: `{env: NAME}` or `{file: PATH}`, never the value"
_TLS = "TLS towards this server: the CA to trust, and a client certificate for mutual TLS"

# Per model: "" is the section's own description (it replaces the class docstring), then one entry per field.
DESCRIPTIONS: dict[type[BaseModel], dict[str, str]] = {
    Config: {
        "": "zgw-gateway's config.yaml. Unknown keys are errors; secrets appear only as references.",
        "public_url": "The URL callers use: the target of URL rewriting and the `X-Forwarded-Host` sent upstream. "
        "Scheme, host and port only, no path.",
        "trusted_proxies": "CIDRs whose `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Request-ID` and "
        "certificate-subject header count. List the ingress controller's own address only: it must be the one "
        "peer that verified the client certificate.",
        "components": "The ZGW APIs behind the gateway, by name (lower case letters, digits, `_`, `-`).",
        "callers": "The legacy systems that may call, and the ZGW credentials the gateway uses for each.",
        "autorisaties_apis": "Autorisaties APIs where `zgw-gateway provision` registers the callers' `autorisaties` "
        "(and `doctor` checks the admin client), by name.",
    },
    s.Listen: {
        "": "The proxy port callers use.",
        "host": "Address to listen on.",
        "port": "Port to listen on.",
    },
    s.TLSListen: {
        "": "TLS on the proxy port, when no ingress in front terminates it.",
        "cert_file": "PEM certificate chain.",
        "key_file": "PEM private key.",
    },
    s.Admin: {
        "": "The admin port: `/metrics`, `/-/healthy`, `/-/ready`; never on the proxy port.",
        "host": "Address to listen on.",
        "port": "Port to listen on.",
    },
    s.TokenConfig: {
        "": "The ZGW JWTs the gateway mints (HS256, per client_id and end user, cached).",
        "lifetime": "Seconds a token is used; `lifetime + clock_skew` must stay under the servers' JWT_EXPIRY "
        "(3600 s).",
        "clock_skew": "Seconds `iat` is back-dated, for servers whose clock runs behind.",
        "refresh_margin": "Seconds before a cached token expires that a new one is minted; less than `lifetime`.",
        "include_exp": "Send an `exp` claim (some vendors require one).",
    },
    s.Identity: {
        "": "The request headers that carry identity. Forwarded ones count only from `trusted_proxies`.",
        "api_key_header": "Header with a caller's API key (the HTTP Basic password is read too). Never sent "
        "upstream, never logged.",
        "cert_subject_header": "Header with the client certificate's subject, set by a trusted ingress after it "
        "verified the certificate.",
        "user_id_header": "Header with the end user's id; read only for callers with `user.from_headers`.",
        "user_representation_header": "Header with the end user's name; read only for callers with "
        "`user.from_headers`.",
    },
    s.Limits: {
        "": "Bounds on what callers may send and hold.",
        "max_header_bytes": "Largest request head in bytes, the request line included; larger: 431, and a request "
        "target alone beyond it: 414; no upstream call. More than 100 header fields get a bare 431 from granian, "
        "which has no setting for it.",
        "max_in_flight": "Requests in flight across all components, each counted from its admission while its body "
        "is read too; beyond it: 503 `overloaded` with `Retry-After`.",
        "header_read_timeout": "Seconds to receive the request headers (slowloris); then the connection is cut.",
        "body_read_timeout": "Seconds between two chunks of a request body; then 408.",
    },
    s.Retry: {
        "": "At most one retry, only when it is safe (the request never left, an idempotent request met a reset, "
        "or the upstream said the token expired).",
        "enabled": "Retry at all.",
    },
    s.CircuitBreakerConfig: {
        "": "A circuit breaker per component: 503 `circuit-open` while open.",
        "enabled": "Use circuit breakers.",
        "failure_threshold": "Consecutive failures that open the circuit.",
        "open_seconds": "Seconds the circuit stays open before one probe request is let through.",
    },
    s.Log: {
        "": "Log lines on stdout: one access line per request, plus start, reload and shutdown events.",
        "level": "Lowest level written. Access lines are info lines: `warning` or `error` drops them "
        "(`check-config` and `serve` warn).",
        "format": "`json` for machines, `console` for people.",
        "access": "Write one access line per request.",
        "headers": "Request headers added to access lines (an allow-list). A header that carries a credential "
        "cannot be listed: Authorization, Proxy-Authorization, Cookie, `identity.api_key_header`, and "
        "`identity.cert_subject_header` when callers are identified by it.",
    },
    s.Shutdown: {
        "": "What SIGTERM does: `/-/ready` turns 503 at once, the gateway serves `drain_seconds` more, then finishes "
        "what is in flight.",
        "drain_seconds": "Seconds to keep serving after SIGTERM, so the Service stops sending traffic.",
        "timeout_seconds": "Seconds in-flight requests get to finish after the listeners close.",
    },
    s.Secrets: {
        "": "Re-reading secrets and the config file.",
        "poll_seconds": "How often secret files and the config file are checked for changes.",
    },
    s.Tracing: {
        "": "Optional OpenTelemetry export (needs the `otel` extra); off when `otlp_endpoint` is null.",
        "otlp_endpoint": "OTLP/HTTP collector URL; `/v1/traces` is added when missing. One span per request.",
        "service_name": "`service.name` of the exported spans.",
    },
    s.Component: {
        "": "One ZGW API behind the gateway.",
        "prefix": "Path on the gateway: starts with `/`, no trailing slash, plain segments; `/-/` is the gateway's "
        "own. The longest matching prefix wins.",
        "upstream": "Base URL of the API the prefix maps to (http or https, no query, fragment or user info).",
        "crs": "`EPSG:4326`: add `Accept-Crs` / `Content-Crs` when the caller sent none (the Zaken API).",
        "timeouts": "Timeouts towards this upstream, in seconds.",
        "tls": "TLS towards this upstream.",
        "max_body_bytes": "Largest request body; larger: 413 (before any upstream I/O when Content-Length says so). "
        "Default 16 MiB; 4 GiB + 64 MiB for a Documenten API (an upstream path with `/documenten/api/`).",
        "max_connections": "Requests to this upstream at once, and so its keep-alive connections (per replica); "
        "the others wait their turn.",
        "max_in_flight": "Requests in flight to this component, counted from admission; beyond it: 503.",
        "max_response_head_bytes": "Largest answer head (1xx heads included) and trailers; beyond it: 502 "
        "`upstream-bad-response`.",
        "max_response_headers": "Most header fields in an answer head or trailers; beyond it: 502 "
        "`upstream-bad-response`.",
        "rewrite_urls": "Rewrite upstream URLs to public ones in JSON answers, `Location` and `Content-Location`, "
        "and back in JSON request bodies and query values (recommended).",
        "host": "`Host` sent upstream: `upstream` (its own name; the public one goes in `X-Forwarded-Host`) or "
        "`public` (public_url's host).",
    },
    s.TimeoutsConfig: {
        "": "Timeouts towards one upstream, in seconds.",
        "connect": "To open a connection (TLS included).",
        "read": "Silence between two pieces of the answer.",
        "write": "How long the upstream may take to accept more of an upload.",
        "pool": "Wait for a turn when max_connections requests are upstream.",
        "total": "The whole wait for the upstream's answer head (a turn, connect, headers, a retry included); "
        "bodies stream on regardless.",
    },
    s.UpstreamTLS: {
        "": _TLS + ".",
        "verify": "Verify the server's certificate. Turn off only for tests.",
        "ca_file": "PEM file of the CA(s) to trust instead of the system's (PKIoverheid, an internal CA).",
        "cert_file": "Client certificate for mutual TLS; goes with `key_file`.",
        "key_file": "Private key of `cert_file`.",
    },
    s.CallerConfig: {
        "": "A legacy system: how the gateway recognises it (`api_keys`, `networks` or `cert_subjects`; at least "
        "one), and its ZGW credentials. An API key is tried first, then a certificate subject from a trusted "
        "proxy, then the most specific network.",
        "name": "The caller's name, in metrics, access lines and `/-/notifications/NAME`.",
        "api_keys": "API keys the caller sends in `identity.api_key_header` or as the HTTP Basic password.",
        "networks": "CIDRs the caller's requests come from.",
        "cert_subjects": "Client certificate subjects, as the trusted ingress writes them in "
        "`identity.cert_subject_header`.",
        "client_id": "The ZGW client id of the tokens (`zgw-gateway credentials new LABEL` makes one).",
        "secret": "The ZGW client secret: " + _SECRET + ".",
        "next": "Credentials registered beside the current ones while the secret rotates; the gateway keeps "
        "sending the current ones.",
        "autorisaties": "What `zgw-gateway provision` registers for `client_id`: `all` (heeftAlleAutorisaties) or "
        "a list of autorisaties. Callers without it are left alone.",
        "credentials": "Other credentials for some components (another vendor), by component name.",
        "user": "The end user in the tokens (`user_id`, `user_representation`), for the servers' audit trail.",
        "components": "The components the caller may use; others: 403 `forbidden-component`.",
        "methods": "HTTP methods the caller may use (upper case), e.g. `[GET, HEAD]` for read-only; others: 403 "
        "`forbidden-method`. Null: all.",
        "rate_limit": "A token bucket per caller and replica; beyond it: 429 with `Retry-After`.",
        "notifications": "Where the caller's notifications go, and which kanalen it subscribes to.",
    },
    s.ApiKeyRef: {
        "": "An API key: a reference to it, or the hex SHA-256 of the key so the config holds no key. Exactly one.",
        "env": "Environment variable holding the key.",
        "file": "File holding the key; re-read when it changes.",
        "sha256": "Hex SHA-256 digest of the key.",
    },
    s.SecretRef: {
        "": "Where a secret lives. Exactly one of `env` and `file`.",
        "env": "Environment variable holding the secret.",
        "file": "File holding the secret (a mounted Kubernetes Secret); re-read when it changes.",
    },
    s.ClientCredentials: {
        "": "A ZGW client id and its secret; as `next`: the credentials registered beside the current ones while "
        "a secret rotates (the client id differs from the current one).",
        "client_id": "The ZGW client id.",
        "secret": "Its secret: " + _SECRET + ".",
    },
    s.Credentials: {
        "": "A component's own ZGW credentials, instead of the caller's.",
        "client_id": "The ZGW client id for this component.",
        "secret": "Its secret: " + _SECRET + ".",
        "next": "Credentials registered beside these while the secret rotates.",
        "autorisaties": "What `provision` registers for this client id: `all` or a list of autorisaties.",
    },
    Autorisatie: {
        "": "Scopes on one ZGW component, for some zaak-, informatieobject- or besluittypen.",
        "component": "The ZGW component: zrc, ztc, drc, brc, ac, nrc (cmc, kc, vrc).",
        "scopes": "Scopes, e.g. `zaken.lezen`.",
        "zaaktypen": "zrc: the zaaktypen (the Catalogi API's own URLs); one autorisatie each.",
        "informatieobjecttypen": "drc: the informatieobjecttypen (URLs).",
        "besluittypen": "brc: the besluittypen (URLs).",
        "max_vertrouwelijkheidaanduiding": "zrc and drc: the highest confidentiality the caller may see.",
    },
    s.User: {
        "": "The end user in the caller's tokens.",
        "id": "`user_id` claim.",
        "representation": "`user_representation` claim.",
        "from_headers": "Take the end user from `identity.user_id_header` and `user_representation_header` when "
        "the caller sends them.",
    },
    s.RateLimit: {
        "": "A token bucket.",
        "rate": "Requests per second.",
        "burst": "Requests allowed at once.",
    },
    s.Notifications: {
        "": "A caller's notifications: Open Notificaties POSTs them to `/-/notifications/NAME` on the proxy port, "
        "the gateway checks `auth` and relays them to `deliver_to`.",
        "auth": "The abonnement's `auth`: the Authorization value Open Notificaties sends, exactly; "
        + _SECRET
        + ". Make it long and random.",
        "deliver_to": "The legacy receiver's URL: a plain POST of the JSON.",
        "api_key": "An API key the receiver expects; or `basic`, or neither.",
        "basic": "HTTP Basic credentials the receiver expects; or `api_key`, or neither.",
        "timeout": "Seconds the receiver gets; Open Notificaties waits 10 s for the gateway.",
        "max_body_bytes": "Largest notification body; larger: 413.",
        "tls": "TLS towards an https receiver.",
        "kanalen": "The abonnement `provision` registers: kanalen with filters.",
    },
    s.ApiKeyHeader: {
        "": "An API key the legacy receiver expects in a header of its own.",
        "header": "Header name.",
        "value": "The key: " + _SECRET + ".",
    },
    s.BasicCredentials: {
        "": "HTTP Basic credentials for the legacy receiver.",
        "username": "User name (no `:`).",
        "password": "Password: " + _SECRET + ".",
    },
    s.Kanaal: {
        "": "One kanaal of the abonnement, with the filters Open Notificaties applies.",
        "naam": "The kanaal, e.g. `zaken`; not `test` (Open Notificaties' probe).",
        "filters": "Kenmerk filters, e.g. `{bronorganisatie: '517439943'}`.",
    },
    s.AutorisatiesApi: {
        "": "An Autorisaties API where `provision` registers the callers' autorisaties, with an admin client.",
        "url": "The API's base URL, e.g. `https://openzaak.example/autorisaties/api/v1`.",
        "client_id": "The admin client's ZGW client id.",
        "secret": "The admin client's secret: " + _SECRET + ".",
        "components": "The gateway components whose rights this API holds (each in one API only).",
        "tls": _TLS + ".",
        "timeout": "Seconds per request.",
    },
    s.NotificatiesApi: {
        "": "The Notificaties API where `provision` registers the callers' abonnementen; its client needs "
        "`notificaties.consumeren` (nrc).",
        "url": "The API's base URL.",
        "client_id": "The client's ZGW client id.",
        "secret": "The client's secret: " + _SECRET + ".",
        "callback_url": "How Open Notificaties reaches the gateway's proxy port; `public_url` when null.",
        "tls": _TLS + ".",
        "timeout": "Seconds per request; creating an abonnement waits for Open Notificaties' two probes of the "
        "gateway.",
    },
}


def _describe(node: dict[str, Any], model: type[BaseModel], models: dict[str, type[BaseModel]]) -> None:
    words = DESCRIPTIONS.get(model, {})
    props = node.get("properties", {})
    # A key whose value is a section of its own may go without words: the section's words describe it.
    missing = {k for k in props if k not in words and _section(props[k]) not in models}
    unknown = set(words) - set(props) - {""}
    if missing or unknown or "" not in words:
        raise ValueError(
            f"{model.__name__}: no words for the section or for keys {sorted(missing)}; "
            f"words for no key {sorted(unknown)} (gateway/config/schema.py)"
        )
    node["description"] = words[""]
    for name, prop in props.items():
        prop["description"] = words.get(name) or DESCRIPTIONS[models[_section(prop)]][""]


def _section(prop: dict[str, Any]) -> str:
    """The definition a property refers to, directly or as the one alternative to null; else ""."""
    refs = [p["$ref"] for p in [prop, *prop.get("anyOf", [])] if "$ref" in p]
    return refs[0].rsplit("/", 1)[-1] if len(refs) == 1 else ""


def _models(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from `model`, by the name pydantic gives its schema definition."""
    found = {model.__name__: model}
    for field in model.model_fields.values():
        for sub in _model_types(field.annotation):
            if sub.__name__ not in found:
                found.update(_models(sub))
    return found


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _model_types(arg)]


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of config.yaml."""
    schema = Config.model_json_schema(mode="validation")
    models = _models(Config)
    for name, node in schema.get("$defs", {}).items():
        _describe(node, models[name], models)
    _describe(schema, Config, models)
    return {"$schema": DIALECT, **schema}
