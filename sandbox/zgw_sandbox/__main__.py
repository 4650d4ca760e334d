"""How is the sandbox run on its own? `python -m zgw_sandbox --port 8001 --client id=secret`.

Clients come from `--client id=secret` (repeatable) and from SANDBOX_CLIENTS="id1=secret1,id2=secret2".
Only client ids are printed, never secrets.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import uvicorn

from zgw_sandbox.app import create_sandbox_app


def parse_client(text: str) -> tuple[str, str]:
    client_id, sep, secret = text.partition("=")
    if not sep or not client_id.strip() or not secret:
        raise argparse.ArgumentTypeError("expected CLIENT_ID=SECRET")
    return client_id.strip(), secret


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zgw_sandbox",
        description="A strict in-memory ZGW server (Catalogi, Zaken, Documenten) that authenticates like Open Zaak.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--client", type=parse_client, action="append", default=[], metavar="ID=SECRET")
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--use-x-forwarded-host", action="store_true")
    args = parser.parse_args(argv)

    clients: dict[str, str] = {}
    env = os.environ.get("SANDBOX_CLIENTS", "")
    try:
        for item in filter(None, (part.strip() for part in env.split(","))):
            client_id, secret = parse_client(item)
            clients[client_id] = secret
    except argparse.ArgumentTypeError:
        parser.error("SANDBOX_CLIENTS: expected id1=secret1,id2=secret2")
    clients.update(dict(args.client))
    if not clients:
        parser.error("no clients: pass --client ID=SECRET or set SANDBOX_CLIENTS")
    if args.page_size < 1:
        parser.error("--page-size must be at least 1")

    app = create_sandbox_app(clients, page_size=args.page_size, use_x_forwarded_host=args.use_x_forwarded_host)
    print(f"sandbox clients: {', '.join(sorted(clients))}", file=sys.stderr, flush=True)
    # proxy_headers off: uvicorn would otherwise take the scheme from X-Forwarded-Proto of loopback
    # peers, which Open Zaak only honours with USE_X_FORWARDED_HOST; the app decides that itself.
    uvicorn.run(app, host=args.host, port=args.port, proxy_headers=False, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
