"""The docs site's generated parts, and the config schema against every example config in the repository.

`zgw-gateway config-schema` prints the JSON Schema of config.yaml; docs/config.schema.json and the reference
page docs/configuration.md are made from it by scripts/config_reference.py (issue 22).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.config.loading import ConfigError, parse
from gateway.config.schema import config_schema

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "zgw-gateway"


def _script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _validator(excerpt: bool = False) -> jsonschema.protocols.Validator:
    schema = config_schema()
    if excerpt:
        # A block in the docs shows some top-level keys only; within each key it must be complete.
        schema.pop("required")
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)  # type: ignore[no-any-return]


def _errors(data: Any, excerpt: bool = False) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(excerpt).iter_errors(data)]


def test_config_schema_command_prints_the_committed_schema() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "config-schema"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    committed = (ROOT / "docs" / "config.schema.json").read_text(encoding="utf-8")
    assert proc.stdout == committed, "run: uv run python scripts/config_reference.py"
    assert json.loads(proc.stdout)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_reference_page_and_schema_file_are_what_the_generator_makes() -> None:
    for path, text in _script("config_reference").outputs().items():
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: uv run python scripts/config_reference.py"


def test_reference_page_describes_every_key_of_every_section() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    schema = config_schema()
    for name, node in [("Config", schema), *schema["$defs"].items()]:
        assert node["description"], name
        for key, prop in node["properties"].items():
            assert prop["description"], f"{name}.{key}"
            assert f"| `{key}` | " in page, f"{name}.{key}"
    assert page.count("{#") == len(schema["$defs"])


def test_config_yaml_names_the_schema_for_editors_on_its_first_line() -> None:
    first = (ROOT / "config.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=docs/config.schema.json"


def _chart_configs() -> list[tuple[str, Any]]:
    files = [CHART / "values.yaml", *sorted((CHART / "ci").glob("*.yaml"))]
    return [(str(f.relative_to(ROOT)), yaml.safe_load(f.read_text())["config"]) for f in files]


def _bench_config(tmp: Path) -> Any:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import procs  # bench/procs.py: how the benchmarks configure the gateway
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return yaml.safe_load(procs.gateway_conf(tmp, 18000, 19100, 18001, rewrite=True).read_text())


def test_every_example_config_validates_against_the_schema(tmp_path: Path) -> None:
    examples = [
        ("config.yaml", yaml.safe_load((ROOT / "config.yaml").read_text())),
        ("gateway/demo.yaml", yaml.safe_load((ROOT / "gateway" / "demo.yaml").read_text())),
        *_chart_configs(),
        ("bench/procs.py", _bench_config(tmp_path)),
    ]
    assert len(examples) >= 6
    for name, data in examples:
        assert _errors(data) == [], name
        parse(data, name)  # and check-config agrees


def _doc_blocks() -> list[tuple[str, Any]]:
    blocks = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, text in enumerate(re.findall(r"^```yaml\n(.*?)^```", path.read_text(), re.S | re.M)):
            data = yaml.safe_load(text)
            if isinstance(data, dict):
                blocks.append((f"{path.relative_to(ROOT)} yaml block {i}", data))
    return blocks


def test_every_config_block_in_the_docs_validates_against_the_schema() -> None:
    blocks = _doc_blocks()
    assert len(blocks) >= 3
    for name, data in blocks:
        assert _errors(data, excerpt=True) == [], name


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"components": {"z": {"prefix": "/z", "upstream": "http://u"}}, "listen": {"prot": 8000}}, "listen"),
        ({"components": {"z": {"prefix": "/z", "upstream": "http://u", "max_connections": 0}}}, "components.z"),
        ({"components": {"z": {"prefix": "/z", "upstream": "http://u"}}, "token": {"lifetime": "300s"}}, "token"),
        ({"components": {}}, "components"),
        ({"components": {"z": {"prefix": "/z"}}}, "components.z"),
        ({"components": {"z": {"prefix": "/z", "upstream": "http://u"}}, "log": {"format": "xml"}}, "log.format"),
    ],
)
def test_the_schema_refuses_what_check_config_refuses(data: dict[str, Any], key: str) -> None:
    errors = _errors(data)
    assert errors, data
    assert any(e.startswith(key) for e in errors), errors
    with pytest.raises(ConfigError):
        parse(data)


def test_the_observability_page_names_every_metric_the_gateway_exports() -> None:
    from prometheus_client import CollectorRegistry

    from gateway.dataplane.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry).prepare(["legacy-dms"], ["zaken"])
    page = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")
    families = [(m.name, m.type) for m in registry.collect()]
    assert len(families) >= 20
    for name, kind in families:
        short = name.removeprefix("zgw_gateway_") + {"counter": "_total", "info": "_info"}.get(kind, "")
        assert f"`{short}`" in page, name
