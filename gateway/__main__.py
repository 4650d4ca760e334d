"""`python -m gateway` is the `zgw-gateway` command."""

from gateway.cli import main

raise SystemExit(main())
