"""The layout in docs/development.md is the tree: every module of gateway/ is listed, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def listed() -> set[str]:
    text = (ROOT / "docs" / "development.md").read_text()
    block = text.split("```\ngateway/", 1)[1].split("```", 1)[0]
    found: set[str] = set()
    package = ""
    for line in block.splitlines():
        m = re.match(r"^(  |    )(\S+)", line)
        if not m:
            continue
        name = m.group(2)
        if len(m.group(1)) == 2:
            package = name if name.endswith("/") else ""
            if not name.endswith("/"):
                found.add(name)
        else:
            found.add(package + name)
    return found


def test_the_documented_layout_names_every_module_and_only_those() -> None:
    tree = {
        str(p.relative_to(ROOT / "gateway"))
        for p in (ROOT / "gateway").rglob("*")
        if p.suffix in (".py", ".yaml")
        and p.name not in ("__init__.py", "__main__.py")
        and "__pycache__" not in p.parts
    }
    assert listed() == tree
