"""Which build the suite ran against (issue 23). scripts/test runs the suite twice: interpreted, then with
the compiled build (scripts/compile) first on PYTHONPATH and ZGW_GATEWAY_EXPECT_COMPILED=1. Each run checks
it imported what it claims, here and in a gateway process started as tests/servers.py starts one."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPECT_COMPILED = os.environ.get("ZGW_GATEWAY_EXPECT_COMPILED") == "1"


def compiled_modules() -> list[str]:
    """The modules the mypyc hook in pyproject.toml compiles: its include folders less its exclusions."""
    hook = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    hook = hook["hooks"]["mypyc"]
    excluded = set(hook["exclude"])
    modules = []
    for folder in hook["include"]:
        for path in sorted((ROOT / folder.lstrip("/")).glob("*.py")):
            relative = "/" + path.relative_to(ROOT).as_posix()
            if path.name not in excluded and relative not in excluded:
                modules.append(relative[1:-3].replace("/", "."))
    return modules


def is_extension(filename: str) -> bool:
    return filename.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_the_hook_compiles_the_request_path() -> None:
    modules = compiled_modules()
    assert {"gateway.dataplane.app", "gateway.dataplane.exchange", "gateway.dataplane.routing"} <= set(modules)
    # proxy.py relays bodies: compiled, a 1 GiB download ran at a third of its interpreted speed (issue 23)
    assert not {"gateway.dataplane.server", "gateway.dataplane.proxy"} & set(modules)


def test_this_run_imported_the_build_it_claims() -> None:
    for name in compiled_modules():
        filename = importlib.import_module(name).__file__ or ""
        assert is_extension(filename) == EXPECT_COMPILED, (name, filename)
        # Interpreted, the code is the source tree's (an edit is what runs), never a stale build.
        assert EXPECT_COMPILED or Path(filename).is_relative_to(ROOT / "gateway"), filename


def test_a_gateway_process_imports_the_same_build(tmp_path: Path) -> None:
    # As tests/servers.py starts the gateway: this interpreter, this environment, a scratch directory.
    probe = "import gateway.dataplane.app as a, gateway.dataplane.exchange as e; print(a.__file__); print(e.__file__)"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, check=True
    )
    files = result.stdout.split()
    assert len(files) == 2
    assert all(is_extension(f) == EXPECT_COMPILED for f in files), files
