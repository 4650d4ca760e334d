"""Does the chart's values.schema.json describe `config` exactly as gateway.config.loading validates it?

The chart's own keys are written by hand in values.schema.json; the `config` part (definition `Config`
and the definitions it refers to) is generated from the pydantic models and their words
(gateway/config/schema.py, the source of `zgw-gateway config-schema`), so a wrong type or an unknown
key under `config:` fails `helm install` just as `zgw-gateway check-config` would.

    uv run python scripts/chart_schema.py          # rewrite the generated part
    uv run python scripts/chart_schema.py --check  # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.config.schema import config_schema

SCHEMA = Path(__file__).resolve().parent.parent / "helm" / "zgw-gateway" / "values.schema.json"
# Hand-written definitions carry this prefix; every other definition is generated.
CHART_PREFIX = "chart."
# Formats every JSON Schema validator knows; pydantic's own ("path", "ipv4network", ...) are dropped.
STANDARD_FORMATS = frozenset({"date-time", "date", "time", "email", "hostname", "ipv4", "ipv6", "uri", "uuid"})


def _clean(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            # Only schema keywords have string values here; properties that happen to be named
            # "title" or "format" (log.format) hold a schema object and are kept.
            if isinstance(value, str) and (key == "title" or (key == "format" and value not in STANDARD_FORMATS)):
                continue
            if key == "$ref" and isinstance(value, str):
                value = value.replace("#/$defs/", "#/definitions/")
            out[key] = _clean(value)
        return out
    if isinstance(node, list):
        return [_clean(item) for item in node]
    return node


def config_definitions() -> dict[str, Any]:
    """The draft-07 definitions for the gateway config, `Config` being the top level."""
    generated = config_schema()
    del generated["$schema"]
    definitions = {name: _clean(d) for name, d in generated.pop("$defs", {}).items()}
    top = _clean(generated)
    top["description"] = "The gateway's config.yaml; listen/admin host and port are set from .Values.ports."
    definitions["Config"] = top
    return dict(sorted(definitions.items()))


def render(current: dict[str, Any]) -> dict[str, Any]:
    """`current` with its generated definitions replaced by fresh ones."""
    kept = {k: v for k, v in current.get("definitions", {}).items() if k.startswith(CHART_PREFIX)}
    updated = dict(current)
    updated["definitions"] = {**kept, **config_definitions()}
    return updated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the file is up to date")
    args = parser.parse_args(argv)
    current = json.loads(SCHEMA.read_text(encoding="utf-8"))
    text = json.dumps(render(current), indent=2) + "\n"
    if args.check:
        if SCHEMA.read_text(encoding="utf-8") != text:
            print(f"{SCHEMA}: out of date; run scripts/chart_schema.py", file=sys.stderr)
            return 1
        return 0
    SCHEMA.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
