"""What the operator asked for: config.yaml loaded and validated into typed, frozen objects.

Validation happens once, at start and on reload. Every error names the key path the way an operator
reads it (`callers[0].secret: ...`). The sections are the models of `settings.py`; `Config` is the whole,
with the checks that span sections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from gateway.config.sections import (
    Admin,
    AutorisatiesApi,
    CallerConfig,
    CircuitBreakerConfig,
    Component,
    Credentials,
    Identity,
    Limits,
    Listen,
    Log,
    Model,
    NotificatiesApi,
    Retry,
    SecretRef,
    Secrets,
    Shutdown,
    TokenConfig,
    Tracing,
)
from gateway.config.urls import base_mappings
from gateway.config.values import Network


class ConfigError(Exception):
    """The configuration is not usable; `errors` are messages that each start with a key path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class Config(Model):
    listen: Listen = Listen()
    admin: Admin = Admin()
    public_url: str = "http://127.0.0.1:8000"
    trusted_proxies: list[Network] = []
    token: TokenConfig = TokenConfig()
    identity: Identity = Identity()
    limits: Limits = Limits()
    retry: Retry = Retry()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    log: Log = Log()
    shutdown: Shutdown = Shutdown()
    secrets: Secrets = Secrets()
    tracing: Tracing = Tracing()
    components: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")], Component] = Field(min_length=1)
    callers: list[CallerConfig] = []
    autorisaties_apis: dict[str, AutorisatiesApi] = {}
    notificaties_api: NotificatiesApi | None = None

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError("must be an absolute http(s) URL without a path, e.g. http://gateway.intern:8000")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _references(self) -> Config:
        errors: list[str] = []
        prefixes: dict[str, str] = {}
        for name, comp in self.components.items():
            if comp.prefix in prefixes:
                errors.append(f"components.{name}.prefix: same prefix as components.{prefixes[comp.prefix]}")
            prefixes[comp.prefix] = name
        names: set[str] = set()
        for i, caller in enumerate(self.callers):
            if caller.name in names:
                errors.append(f"callers[{i}].name: '{caller.name}' is used by another caller")
            names.add(caller.name)
            for j, comp_name in enumerate(caller.components):
                if comp_name not in self.components:
                    errors.append(f"callers[{i}].components[{j}]: no component named '{comp_name}'")
            pairs: list[tuple[str, CallerConfig | Credentials]] = [("", caller)]
            pairs += [(f".credentials.{n}", c) for n, c in caller.credentials.items()]
            for key, creds in pairs:
                if creds.next is not None and creds.next.client_id == creds.client_id:
                    errors.append(f"callers[{i}]{key}.next.client_id: must differ from the current client_id")
        errors.extend(self._autorisaties_api_errors())
        errors.extend(self._logged_credentials())
        rewritten = {name: comp for name, comp in self.components.items() if comp.rewrite_urls}
        if rewritten:
            try:
                base_mappings([(c.upstream, self.public_url + c.prefix) for c in rewritten.values()])
            except ValueError as exc:
                errors.append(f"components ({', '.join(sorted(rewritten))}).rewrite_urls: {exc}")
        if errors:
            # Not a ValueError: pydantic would file these under the top level; each names its own key.
            raise ConfigError(errors)
        return self

    def _autorisaties_api_errors(self) -> list[str]:
        errors: list[str] = []
        holder: dict[str, str] = {}
        for name, api in self.autorisaties_apis.items():
            for j, comp_name in enumerate(api.components):
                key = f"autorisaties_apis.{name}.components[{j}]"
                if comp_name not in self.components:
                    errors.append(f"{key}: no component named '{comp_name}'")
                elif comp_name in holder:
                    errors.append(f"{key}: '{comp_name}' is already in autorisaties_apis.{holder[comp_name]}")
                holder.setdefault(comp_name, name)
        return errors

    def _logged_credentials(self) -> list[str]:
        """log.headers entries that carry a credential: they would land in every access line (issue 20)."""
        why = {
            "authorization": "it carries the caller's credentials (the API key as a Basic password)",
            "proxy-authorization": "it carries credentials",
            "cookie": "it carries session credentials",
            self.identity.api_key_header.lower(): "it is identity.api_key_header: it carries the API key",
        }
        if self.trusted_proxies and any(c.cert_subjects for c in self.callers):
            # From a trusted proxy the subject alone identifies a caller (callers[].cert_subjects).
            why[self.identity.cert_subject_header.lower()] = (
                "it is identity.cert_subject_header, and callers are identified by it"
            )
        return [
            f"log.headers[{i}]: '{name}' cannot be logged: {why[name]}"
            for i, name in enumerate(self.log.headers)
            if name in why
        ]

    def secret_keys(self) -> list[tuple[str, SecretRef]]:
        """Every secret the gateway itself reads, with the key that names it: API keys, ZGW client secrets,
        the notifications' secrets."""
        found: list[tuple[str, SecretRef]] = []
        for i, caller in enumerate(self.callers):
            at = f"callers[{i}]"
            found += [(f"{at}.api_keys[{j}]", r) for j, k in enumerate(caller.api_keys) if (r := k.secret_ref())]
            found.append((f"{at}.secret", caller.secret))
            found += [(f"{at}.credentials.{name}.secret", c.secret) for name, c in caller.credentials.items()]
            if (n := caller.notifications) is not None:
                found.append((f"{at}.notifications.auth", n.auth))
                if n.api_key is not None:
                    found.append((f"{at}.notifications.api_key.value", n.api_key.value))
                if n.basic is not None:
                    found.append((f"{at}.notifications.basic.password", n.basic.password))
        return found

    def secret_refs(self) -> list[SecretRef]:
        return list(dict.fromkeys(ref for _, ref in self.secret_keys()))

    def warnings(self) -> list[str]:
        """What loads but does not do what the operator wrote: `check-config` prints these, `serve` logs them,
        `provision` prints them (issue 22). Warnings, not errors: each config still serves requests."""
        found: list[str] = []
        if self.log.access and self.log.level in ("warning", "error"):
            found.append(
                f"log.access: access lines are written at level info, so log.level {self.log.level} drops every "
                "one of them: set log.level: info to keep them, or log.access: false to say so"
            )
        if self.notificaties_api is None:
            found += [
                f"callers[{i}].notifications.kanalen: `provision` registers these in the notificaties_api, and "
                "the config has none: add notificaties_api (url, client_id, secret), or remove kanalen when the "
                "abonnement is registered by hand"
                for i, caller in enumerate(self.callers)
                if caller.notifications is not None and caller.notifications.kanalen
            ]
        return found

    def callback_base(self) -> str:
        """Where Open Notificaties reaches the gateway's proxy port."""
        api = self.notificaties_api
        return api.callback_url if api is not None and api.callback_url else self.public_url


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("["):
            # pydantic's marker for an invalid mapping key (the key itself is already in the path), or a
            # bracketed union tag (grants.Grant)
            continue
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def parse(data: Any, source: str = "config") -> Config:
    """Validate a parsed YAML document; raise ConfigError with messages that name the keys."""
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of keys"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors(include_url=False, include_input=False):
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            errors.append(f"{_key_path(err['loc'])}: {msg}")
        raise ConfigError(sorted(set(errors))) from None


def load(path: str | Path) -> Config:
    """Read and validate a config file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the file ({exc.strerror})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{path}: not valid YAML{where}"]) from None
    return parse(data, str(path))
