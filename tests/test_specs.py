"""The official OpenAPI documents in specs/ are the published ones: every file is listed in specs/SOURCES.md with
its SHA-256, and the licence beside them is the EUPL 1.2."""

from __future__ import annotations

import hashlib
import re

from servers import SPECS


def test_every_document_is_listed_with_its_sha256() -> None:
    sources = (SPECS / "SOURCES.md").read_text()
    listed = dict(re.findall(r"^\| `([^`]+\.yaml)` \|.*\| `([0-9a-f]{64})` \|$", sources, re.M))
    present = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in SPECS.glob("*.yaml")}
    assert present == listed


def test_the_licence_is_the_eupl_1_2() -> None:
    assert (SPECS / "LICENCE").read_text().startswith("EUROPEAN UNION PUBLIC LICENCE v. 1.2\n")
