"""The YAML for Open Zaak's `manage.py setup_configuration`: the gateway's client ids and their secrets.

A JWT secret reaches Open Zaak only through its admin, `setup_configuration` or its database - the
Autorisaties API cannot set one. This file holds, for one Autorisaties API of the config, the JWT secret
of every client id the gateway uses for its components (current and next) and of the API's admin client,
plus the admin's Applicatie with all rights so that `zgw-gateway provision` can do the rest.

It never holds a secret value: each secret is `value_from: {env: NAME}` (django-setup-configuration's
own reference, read when the command runs). A `{env}` secret keeps its variable name; a `{file}` secret
gets a name made from its client id, and the header says how to fill it from the file.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import yaml

from gateway.config.loading import Config
from gateway.config.sections import SecretRef
from gateway.controlplane.provision import LABEL_PREFIX, ProvisionError, credential_entries

# The admin's Applicatie keeps one uuid across runs, so loading the file again updates it in place.
UUID_NAMESPACE = uuid.UUID("8f1d2c3b-5a6e-4f70-9b8c-1d2e3f405162")


def env_name(client_id: str, ref: SecretRef) -> str:
    if ref.env is not None:
        return ref.env
    return "ZGW_SECRET_" + re.sub(r"[^A-Z0-9]+", "_", client_id.upper()).strip("_")


def secrets_for(config: Config, api_name: str) -> dict[str, SecretRef]:
    """client id -> secret reference, for every client id that must be known where `api_name` is."""
    api = config.autorisaties_apis[api_name]
    held = set(api.components)
    found: dict[str, SecretRef] = {api.client_id: api.secret}
    for caller in config.callers:
        for _, _, creds in credential_entries(caller, held):
            found.setdefault(creds.client_id, creds.secret)
            if creds.next is not None:
                found.setdefault(creds.next.client_id, creds.next.secret)
    return found


def emit(config: Config, api_name: str) -> str:
    """The setup_configuration YAML for one Autorisaties API of the config, header comments included."""
    if api_name not in config.autorisaties_apis:
        raise ProvisionError(f"no autorisaties_apis.{api_name} in the config")
    api = config.autorisaties_apis[api_name]
    refs = secrets_for(config, api_name)
    header = [
        f"# Open Zaak setup_configuration for zgw-gateway (autorisaties_apis.{api_name}, {api.url}).",
        "# Load it with: src/manage.py setup_configuration --yaml-file THIS_FILE",
        "# with these environment variables holding the secrets (values are never written here):",
    ]
    for client_id, ref in refs.items():
        name = env_name(client_id, ref)
        source = f'export {name}="$(cat {ref.file})"' if ref.file is not None else "as the gateway has it"
        header.append(f"#   {name}  ({client_id}: {source})")
    admin_label = f"{LABEL_PREFIX}{api_name} admin"
    document: dict[str, Any] = {
        "vng_api_common_credentials_config_enable": True,
        "vng_api_common_credentials": {
            "items": [
                {"identifier": client_id, "secret": {"value_from": {"env": env_name(client_id, ref)}}}
                for client_id, ref in refs.items()
            ]
        },
        "vng_api_common_applicaties_config_enable": True,
        "vng_api_common_applicaties": {
            "items": [
                {
                    "uuid": str(uuid.uuid5(UUID_NAMESPACE, f"{api.url} {api.client_id}")),
                    "client_ids": [api.client_id],
                    "label": admin_label[:100],
                    "heeft_alle_autorisaties": True,
                }
            ]
        },
    }
    return "\n".join(header) + "\n" + yaml.safe_dump(document, sort_keys=False)
