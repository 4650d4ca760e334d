"""The `zgw-gateway` command: serve, check-config, demo, token, credentials new, provision, doctor, config-schema.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad config.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets as pysecrets
import string
import sys
import time
from importlib import resources

import jwt

from gateway import __version__
from gateway.config.loading import Config, ConfigError, load
from gateway.config.schema import config_schema
from gateway.config.secrets import SecretStore
from gateway.dataplane import logs, server
from gateway.dataplane.app import create_app
from gateway.dataplane.tokens import mint

DEFAULT_CONFIG = "config.yaml"
CONFIG_HELP = f"the gateway's config file (default: $ZGW_GATEWAY_CONFIG, else {DEFAULT_CONFIG})"
DEMO_ENV = {
    # Demo values only: the demo config points at these, and the sandbox upstream knows the client.
    "DEMO_API_KEY": "demo-key",
    "DEMO_ZGW_SECRET": "demo-secret-for-the-sandbox-only-change-me",
}
DEMO_CLIENT = "demo-client-Xy12AbCd"


def _config_path(arg: str | None) -> str:
    return arg or os.environ.get("ZGW_GATEWAY_CONFIG") or DEFAULT_CONFIG


def _load_or_exit(path: str) -> Config:
    try:
        return load(path)
    except ConfigError as exc:
        print(f"zgw-gateway: invalid configuration in {path}:", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    config = _load_or_exit(path)
    logs.setup(config.log.level, config.log.format)
    for warning in config.warnings():
        logging.getLogger("zgw_gateway.config").warning(warning, extra={"event": "config_warning"})
    app = create_app(config, config_path=path)
    return server.run(app)


def cmd_check_config(args: argparse.Namespace) -> int:
    path = _config_path(args.file)
    config = _load_or_exit(path)
    problems: list[str] = []
    if not args.no_secrets:
        store = SecretStore(config.secret_refs())
        problems = [
            f"{key}: {ref.describe()}: {why}" for key, ref in config.secret_keys() if (why := store.problem(ref))
        ]
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    if problems:
        print(
            f"zgw-gateway: {path}: {len(problems)} secret(s) not readable: set them where the gateway runs, "
            "or check the file alone with --no-secrets",
            file=sys.stderr,
        )
        return 2
    warnings = config.warnings()
    for warning in warnings:
        print(f"  warning: {warning}", file=sys.stderr)
    counts = f"{len(config.components)} components, {len(config.callers)} callers"
    print(f"{path}: ok ({counts}" + (f", {len(warnings)} warning(s))" if warnings else ")"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The gateway on 127.0.0.1:8000 (admin 9100) in front of the sandbox upstream on 127.0.0.1:8001."""
    try:
        from zgw_sandbox import create_sandbox_app  # the dev group's package: never in the wheel or the image
    except ImportError:
        print(
            "zgw-gateway: the demo needs the sandbox upstream, a development package: run it from a checkout "
            "with `uv run zgw-gateway demo`",
            file=sys.stderr,
        )
        return 2

    for key, value in DEMO_ENV.items():
        os.environ.setdefault(key, value)
    path = args.config or str(resources.files("gateway").joinpath("demo.yaml"))
    config = _load_or_exit(path)
    sandbox_url = f"http://127.0.0.1:{args.sandbox_port}/"
    if not any(c.upstream.startswith(sandbox_url) for c in config.components.values()):
        print(
            f"zgw-gateway: --sandbox-port {args.sandbox_port}: no component of {path} has its upstream at "
            f"{sandbox_url}; give a --config whose upstreams point at the sandbox's port",
            file=sys.stderr,
        )
        return 2
    logs.setup(config.log.level, "console")
    sandbox = create_sandbox_app({DEMO_CLIENT: os.environ["DEMO_ZGW_SECRET"]})
    app = create_app(config, config_path=path)
    print(demo_banner(config, args.sandbox_port), flush=True)
    return server.run(app, extra=[("sandbox", sandbox, "127.0.0.1", args.sandbox_port)])


def demo_banner(config: Config, sandbox_port: int) -> str:
    gateway = f"http://{config.listen.host}:{config.listen.port}"
    # The demo's own key is printed; a key of the operator's is not (it is a secret).
    key = "demo-key" if os.environ.get("DEMO_API_KEY") == DEMO_ENV["DEMO_API_KEY"] else "$DEMO_API_KEY"
    return (
        f"zgw-gateway demo: gateway {gateway}, admin http://{config.admin.host}:{config.admin.port}/metrics, "
        f"sandbox upstream http://127.0.0.1:{sandbox_port}\n"
        f'  try: curl -H "X-API-Key: {key}" {gateway}/zaken/api/v1/zaken'
    )


def cmd_token(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    config = _load_or_exit(path)
    caller = next((c for c in config.callers if c.name == args.caller), None)
    if caller is None:
        print(f"zgw-gateway: no caller named '{args.caller}' in {path}", file=sys.stderr)
        return 2
    if args.component not in caller.components:
        print(f"zgw-gateway: caller '{args.caller}' may not use component '{args.component}'", file=sys.stderr)
        return 2
    creds = caller.credentials.get(args.component)
    client_id, ref = (creds.client_id, creds.secret) if creds else (caller.client_id, caller.secret)
    secret = SecretStore([ref]).get(ref)
    if secret is None:
        print(f"zgw-gateway: secret {ref.describe()} is not readable", file=sys.stderr)
        return 1
    token = mint(
        client_id,
        secret,
        config.token,
        user_id=caller.user.id,
        user_representation=caller.user.representation,
        now=time.time(),
    )
    print(token)
    print("\nheader:", json.dumps(jwt.get_unverified_header(token), indent=2))
    print("claims:", json.dumps(jwt.decode(token, options={"verify_signature": False}), indent=2))
    return 0


def cmd_credentials_new(args: argparse.Namespace) -> int:
    """A client_id `LABEL-<12 random characters>` and a strong secret, like the VNG token tool makes."""
    alphabet = string.ascii_letters + string.digits
    suffix = "".join(pysecrets.choice(alphabet) for _ in range(12))
    client_id = f"{args.label}-{suffix}"
    if len(client_id) > 50 or not args.label.replace("-", "").replace("_", "").isalnum():
        print(
            "zgw-gateway: the label must be letters, digits, '-' or '_', at most 37 characters",
            file=sys.stderr,
        )
        return 2
    print(f"client_id: {client_id}")
    print(f"secret:    {pysecrets.token_urlsafe(32)}")
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    from gateway.controlplane import abonnementen, autorisaties, openzaak_setup
    from gateway.controlplane.provision import ProvisionError

    config = _load_or_exit(_config_path(args.config))
    if args.emit and (args.apply or args.prune):
        print("zgw-gateway: --emit prints a file; it does not go with --apply or --prune", file=sys.stderr)
        return 2
    try:
        if args.emit:
            names = autorisaties.api_names(config, args.api)
            if len(names) > 1:
                raise ProvisionError(f"--emit needs --api, one of: {', '.join(names)}")
            print(openzaak_setup.emit(config, names[0]), end="")
            return 0
        for warning in config.warnings():
            print(f"zgw-gateway: warning: {warning}", file=sys.stderr)
        if not (config.autorisaties_apis or config.notificaties_api or args.api):
            raise ProvisionError(
                "nothing to provision: add autorisaties_apis (for the callers' autorisaties) or notificaties_api "
                "(for their abonnementen) to the config"
            )
        if config.autorisaties_apis or args.api:
            for line in autorisaties.provision(config, args.api, apply=args.apply, prune=args.prune):
                print(line, flush=True)
        if config.notificaties_api is not None and args.api is None:
            for line in abonnementen.provision(config, apply=args.apply, prune=args.prune):
                print(line, flush=True)
    except ProvisionError as exc:
        print(f"zgw-gateway: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from gateway.controlplane import doctor

    checks = doctor.run(_load_or_exit(_config_path(args.config)))
    if args.json:
        print(json.dumps(doctor.as_json(checks), indent=2))
    else:
        print(doctor.table(checks))
    return 0 if all(c.ok for c in checks) else 1


def cmd_config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_schema(), indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zgw-gateway", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--version", action="version", version=f"zgw-gateway {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", help=CONFIG_HELP)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("check-config", help="validate a config file without serving")
    s.add_argument("file", nargs="?", help=CONFIG_HELP)
    s.add_argument("--no-secrets", action="store_true", help="do not check that secrets are readable")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("demo", help="the gateway in front of the built-in sandbox upstream")
    s.add_argument("--config", help="config file (default: the built-in demo config)")
    s.add_argument("--sandbox-port", type=int, default=8001, help="the sandbox upstream's port (default: 8001)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("token", help="print a fresh ZGW JWT for a caller and component, decoded")
    s.add_argument("--config", help=CONFIG_HELP)
    s.add_argument("--caller", required=True, help="the caller's name (callers[].name in the config)")
    s.add_argument(
        "--component", required=True, help="a component of that caller (components.NAME), whose credentials sign"
    )
    s.set_defaults(func=cmd_token)

    s = sub.add_parser("credentials", help="make ZGW client credentials")
    creds = s.add_subparsers(dest="action", required=True)
    n = creds.add_parser("new", help="a new client_id and secret")
    n.add_argument("label", help="a readable label, e.g. the system's name")
    n.set_defaults(func=cmd_credentials_new)

    s = sub.add_parser(
        "provision", help="register the callers' autorisaties (Autorisaties APIs) and abonnementen (Notificaties API)"
    )
    s.add_argument("--config", help=CONFIG_HELP)
    s.add_argument("--apply", action="store_true", help="make the changes (default: only print the plan)")
    s.add_argument("--prune", action="store_true", help="also delete Applicaties the config owns but no longer has")
    s.add_argument("--api", help="only this entry of autorisaties_apis (abonnementen are left alone)")
    s.add_argument("--emit", choices=["open-zaak"], help="print Open Zaak's setup_configuration YAML instead")
    s.set_defaults(func=cmd_provision)

    s = sub.add_parser("doctor", help="check every caller's credentials against the live upstreams")
    s.add_argument("--config", help=CONFIG_HELP)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("config-schema", help="print the JSON Schema of config.yaml, every key described")
    s.set_defaults(func=cmd_config_schema)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
