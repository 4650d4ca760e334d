"""`python -m gateway` is the `zgw-gateway` command."""

from .cli import main

raise SystemExit(main())
