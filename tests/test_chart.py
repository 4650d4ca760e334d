"""The Helm chart, rendered by the real helm binary: security, probes, rollouts, schema, config and rules.

helm comes from scripts/fetch-helm (.cache/bin/helm) or PATH. Without it these tests are skipped locally
and fail under CI=true, so a CI run can never pass by skipping them.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "zgw-gateway"
SCENARIOS = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))
NAMESPACE = "zgw"


def _tool(name: str, cached: Path | None = None) -> str:
    found = str(cached) if cached is not None and cached.exists() else shutil.which(name)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{name} is required in CI (scripts/fetch-helm installs helm; Debian 'prometheus' promtool)")
    pytest.skip(f"{name} not found: run scripts/install-tools (helm via scripts/fetch-helm; promtool: as root)")


@pytest.fixture(scope="module")
def helm() -> str:
    return _tool("helm", ROOT / ".cache" / "bin" / "helm")


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def render(helm: str, *args: str, chart: Path = CHART) -> list[dict[str, Any]]:
    proc = run_helm(helm, "template", "zgw", str(chart), "--namespace", NAMESPACE, *args)
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def scenario_args(name: str) -> list[str]:
    return [] if name == "default" else ["-f", str(CHART / "ci" / f"{name}-values.yaml")]


def one(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["gateway"]
    return dict(containers[0])


def rendered_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {}))
    return dict(yaml.safe_load(cm["data"]["config.yaml"]))


def test_helm_lint_strict_passes_for_default_and_every_scenario(helm: str) -> None:
    for name in ["default", *SCENARIOS]:
        proc = run_helm(helm, "lint", "--strict", str(CHART), *scenario_args(name), check=False)
        assert proc.returncode == 0, f"{name}: {proc.stdout}{proc.stderr}"


def test_scenarios_exist_for_the_optional_features() -> None:
    assert {"production", "created-secret", "custom-ports"} <= set(SCENARIOS)


def test_default_renders_core_objects_and_no_optional_ones(helm: str) -> None:
    kinds = sorted(d["kind"] for d in render(helm))
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]


def test_production_renders_every_optional_object(helm: str) -> None:
    kinds = {d["kind"] for d in render(helm, *scenario_args("production"))}
    assert {
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
    } <= kinds
    assert "Secret" not in kinds  # existingSecret: the chart never holds production secrets


@pytest.mark.parametrize("scenario", ["default", *SCENARIOS])
def test_pods_run_restricted(helm: str, scenario: str) -> None:
    docs = render(helm, *scenario_args(scenario))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    sc = container(docs)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for sa in (d for d in docs if d["kind"] == "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m for m in container(docs)["volumeMounts"]}
    assert "/tmp" in mounts
    assert all(m.get("readOnly") for path, m in mounts.items() if path != "/tmp")
    assert all("subPath" not in m for m in mounts.values())  # subPath mounts never see updates


def test_run_as_user_is_the_images_uid(helm: str) -> None:
    uid = re.search(r"^ARG UID=(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert uid is not None
    docs = render(helm)
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid[1])
    assert container(docs)["securityContext"]["runAsUser"] == int(uid[1])


@pytest.mark.parametrize("scenario", ["default", *SCENARIOS])
def test_probes_ports_and_service_agree(helm: str, scenario: str) -> None:
    docs = render(helm, *scenario_args(scenario))
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert set(ports) == {"http", "admin"}
    assert c["startupProbe"]["httpGet"] == {"path": "/-/healthy", "port": "admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "admin"}
    config = rendered_config(docs)
    assert config["listen"]["port"] == ports["http"]
    assert config["admin"]["port"] == ports["admin"]
    service = one(docs, "Service")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"http": "http", "admin": "admin"}
    assert c["args"] == ["serve", "--config", "/etc/zgw-gateway/config.yaml"]


def test_custom_ports_reach_config_container_and_service(helm: str) -> None:
    docs = render(helm, *scenario_args("custom-ports"))
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports == {"http": 8080, "admin": 9090}
    config = rendered_config(docs)
    assert (config["listen"]["port"], config["admin"]["port"]) == (8080, 9090)
    assert {p["name"]: p["port"] for p in one(docs, "Service")["spec"]["ports"]} == {"http": 80, "admin": 9090}


@pytest.mark.parametrize("scenario", ["default", *SCENARIOS])
def test_shutdown_fits_in_the_grace_period(helm: str, scenario: str) -> None:
    docs = render(helm, *scenario_args(scenario))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    pre_stop = container(docs)["lifecycle"]["preStop"]
    wait = pre_stop["sleep"]["seconds"] if "sleep" in pre_stop else int(pre_stop["exec"]["command"][-1])
    shutdown = rendered_config(docs)["shutdown"]
    assert wait > 0
    assert wait + shutdown["drain_seconds"] + shutdown["timeout_seconds"] < pod["terminationGracePeriodSeconds"]


def test_a_shutdown_budget_beyond_the_grace_period_is_refused(helm: str) -> None:
    proc = run_helm(
        helm,
        "template",
        "zgw",
        str(CHART),
        "--set",
        "preStopSeconds=20",
        "--set",
        "terminationGracePeriodSeconds=30",
        check=False,
    )
    assert proc.returncode != 0
    assert "must be below terminationGracePeriodSeconds" in proc.stderr


def test_prestop_uses_sleep_action_on_new_and_exec_on_old_clusters(helm: str) -> None:
    new = container(render(helm, "--kube-version", "1.32.0"))["lifecycle"]["preStop"]
    old = container(render(helm, "--kube-version", "1.28.0"))["lifecycle"]["preStop"]
    assert new == {"sleep": {"seconds": 5}}
    assert old == {"exec": {"command": ["sleep", "5"]}}


def _annotations(docs: list[dict[str, Any]]) -> dict[str, str]:
    return dict(one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"])


def test_config_checksum_rolls_pods_only_when_the_config_changes(helm: str) -> None:
    base = _annotations(render(helm))["checksum/config"]
    other_config = _annotations(render(helm, "--set", "config.token.lifetime=600"))["checksum/config"]
    other_replicas = _annotations(render(helm, "--set", "replicaCount=5"))["checksum/config"]
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert other_config != base
    assert other_replicas == base


def test_secret_checksum_follows_chart_owned_secret_values(helm: str) -> None:
    args = scenario_args("created-secret")
    base = _annotations(render(helm, *args))
    rotated = _annotations(render(helm, *args, "--set", "secret.values.TESTER_ZGW_SECRET=rotated-0123456789"))
    assert re.fullmatch(r"[0-9a-f]{64}", base["checksum/secret"])
    assert rotated["checksum/secret"] != base["checksum/secret"]
    assert rotated["checksum/config"] == base["checksum/config"]
    # An existing Secret is invisible to helm; the gateway re-reads the mounted files instead.
    assert "checksum/secret" not in _annotations(render(helm, *scenario_args("production")))


def test_created_secret_is_mounted_and_exposed_as_env(helm: str) -> None:
    docs = render(helm, *scenario_args("created-secret"))
    secret = one(docs, "Secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    values = yaml.safe_load((CHART / "ci" / "created-secret-values.yaml").read_text())["secret"]["values"]
    assert decoded == values
    c = container(docs)
    assert c["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == secret["metadata"]["name"]


def test_existing_secret_is_mounted_as_files(helm: str) -> None:
    docs = render(helm, *scenario_args("production"))
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "zgw-gateway-credentials"
    mounts = {m["name"]: m for m in container(docs)["volumeMounts"]}
    assert mounts["secrets"]["mountPath"] == "/var/run/secrets/zgw"
    assert "envFrom" not in container(docs)
    config = rendered_config(docs)
    files = [c["secret"]["file"] for c in config["callers"]]
    assert files and all(f.startswith("/var/run/secrets/zgw/") for f in files)


@pytest.mark.parametrize("scenario", ["default", *SCENARIOS])
def test_rendered_config_passes_check_config(helm: str, scenario: str, tmp_path: Path) -> None:
    docs = render(helm, *scenario_args(scenario))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(rendered_config(docs)))
    env = {k: v for k, v in os.environ.items() if k != "ZGW_GATEWAY_CONFIG"}
    secrets = [d for d in docs if d["kind"] == "Secret"]
    if secrets:
        # The chart-created Secret reaches the pod as environment variables: check them for real.
        env.update({k: base64.b64decode(v).decode() for k, v in secrets[0]["data"].items()})
        cmd = [sys.executable, "-m", "gateway", "check-config", str(path)]
    else:
        # Files under /var/run/secrets exist only in the pod.
        cmd = [sys.executable, "-m", "gateway", "check-config", "--no-secrets", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_check_config_rejects_what_the_chart_would_render_wrongly(helm: str, tmp_path: Path) -> None:
    docs = render(helm, *scenario_args("created-secret"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(rendered_config(docs)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESTER_")}
    cmd = [sys.executable, "-m", "gateway", "check-config", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert proc.returncode != 0  # the secrets are missing from the environment
    assert "TESTER_ZGW_SECRET" in proc.stderr


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("replicaCount=two", "replicaCount"),
        ("replicas=3", "replicas"),
        ("config.components.zaken.prefx=/x", "prefx"),
        ("config.token.lifetime=soon", "config.token.lifetime"),
        ("config.listen.prot=8000", "prot"),
        ("securityContext.readOnlyRootFilesystem=false", "securityContext.readOnlyRootFilesystem"),
        ("securityContext.allowPrivilegeEscalation=true", "securityContext.allowPrivilegeEscalation"),
        ("podSecurityContext.runAsNonRoot=false", "podSecurityContext.runAsNonRoot"),
        ("image.digest=latest", "image.digest"),
        ("ports.admin=70000", "ports.admin"),
        ("networkPolicy.egress.upstreams[0].ports[0]=443", "networkPolicy.egress.upstreams"),
    ],
)
def test_schema_rejects_wrong_types_and_unknown_keys(helm: str, setting: str, named: str) -> None:
    proc = run_helm(helm, "template", "zgw", str(CHART), "--set", setting, check=False)
    assert proc.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert named in proc.stderr


def test_values_schema_config_part_is_generated_from_gateway_config() -> None:
    spec = importlib.util.spec_from_file_location("chart_schema", ROOT / "scripts" / "chart_schema.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = json.loads((CHART / "values.schema.json").read_text())
    assert module.render(current) == current, "run: uv run python scripts/chart_schema.py"


def test_every_top_level_value_is_documented_where_it_is_defined() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        if re.match(r"^[A-Za-z]\w*:", line):
            above = next((p for p in reversed(lines[:i]) if p.strip()), "")
            if not above.startswith("#"):
                undocumented.append(line.split(":")[0])
    schema = json.loads((CHART / "values.schema.json").read_text())
    # Groups whose children carry the comments.
    groups = {
        "image",
        "secret",
        "serviceAccount",
        "probes",
        "service",
        "autoscaling",
        "podDisruptionBudget",
        "metrics",
        "dashboards",
        "networkPolicy",
    }
    assert sorted(set(undocumented) - groups) == []
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])


def test_hpa_scales_on_cpu_and_the_custom_metric(helm: str) -> None:
    docs = render(helm, *scenario_args("production"))
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "zgw_gateway_in_flight_requests"
    assert "replicas" not in one(docs, "Deployment")["spec"]  # the HPA owns the replica count


def test_pdb_is_on_by_default_and_selects_the_pods(helm: str) -> None:
    docs = render(helm)
    pdb = one(docs, "PodDisruptionBudget")
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_network_policy_allows_listed_namespaces_upstreams_and_dns(helm: str) -> None:
    docs = render(helm, *scenario_args("production"))
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    proxy_rule, metrics_rule = policy["ingress"]
    sources = [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in proxy_rule["from"]]
    assert sources == ["ingress-nginx", "zaakafhandeling"]
    assert proxy_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert metrics_rule["ports"] == [{"port": "admin", "protocol": "TCP"}]
    dns, by_cidr, by_namespace = policy["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert by_cidr == {"to": [{"ipBlock": {"cidr": "192.0.2.10/32"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
    assert by_namespace["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "opennotificaties"
    }


def test_service_monitor_scrapes_the_admin_port(helm: str) -> None:
    docs = render(helm, *scenario_args("production"))
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "admin"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= one(docs, "Service")["metadata"]["labels"].items()


def test_dashboard_configmap_carries_the_sidecar_label_and_the_dashboard(helm: str) -> None:
    docs = render(helm, *scenario_args("production"))
    cm = one(docs, "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["zgw-gateway.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "zgw-gateway.json").read_text())
    assert dashboard["uid"] == "zgw-gateway"


def _promql(docs: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for group in one(docs, "PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]
    dashboard = json.loads((CHART / "dashboards" / "zgw-gateway.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "5m")
            for var in ("namespace", "component", "caller"):
                expr = expr.replace(f"${var}", ".*")
            yield f"dashboard:panel_{panel['id']}_{target['refId']}", expr


def test_alert_rules_and_dashboard_queries_pass_promtool(helm: str, tmp_path: Path) -> None:
    promtool = _tool("promtool")
    docs = render(helm, *scenario_args("production"))
    alerts = one(docs, "PrometheusRule")["spec"]["groups"]
    queries = [{"record": name, "expr": expr} for name, expr in _promql(docs) if name.startswith("dashboard:")]
    assert len(queries) >= 20
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": [*alerts, {"name": "dashboard", "rules": queries}]}))
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(queries) + sum(len(g['rules']) for g in alerts)} rules found" in proc.stdout


def test_promql_uses_only_metrics_the_gateway_exports(helm: str) -> None:
    from prometheus_client import CollectorRegistry

    from gateway.dataplane.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry)
    exported: set[str] = set()
    for family in registry.collect():
        exported.update(sample.name for sample in family.samples)
        # Labelled families have no samples before their first use: count the family name itself.
        exported.add(family.name)
        if family.type == "counter":
            exported.add(f"{family.name}_total")
        if family.type == "histogram":
            exported.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    used: set[str] = set()
    for _, expr in _promql(render(helm, *scenario_args("production"))):
        used.update(re.findall(r"\bzgw_gateway_[a-z_]+", expr))
    assert used, "no zgw_gateway_ metric in the rules and dashboard"
    assert sorted(used - exported) == []


def _notes(helm: str, tmp_path: Path, *args: str) -> str:
    # helm template does not render NOTES.txt; a copy of the chart renders it through tpl.
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "notes.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n'
    )
    docs = render(helm, *args, "--show-only", "templates/zz-notes.yaml", chart=chart)
    return str(docs[0]["data"]["notes"])


def test_notes_show_how_to_call_and_where_metrics_are(helm: str, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path, *scenario_args("custom-ports"))
    assert "http://zgw.zgw.svc:80" in notes
    assert 'curl -H "X-Gateway-Key: ' in notes
    assert "http://127.0.0.1:9090/metrics" in notes
    assert "WARNING" not in notes


def test_notes_warn_about_a_secret_created_from_values(helm: str, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path, *scenario_args("created-secret"))
    assert "WARNING: the chart created Secret" in notes
    assert "existingSecret" in notes
    for value in yaml.safe_load((CHART / "ci" / "created-secret-values.yaml").read_text())["secret"]["values"].values():
        assert value not in notes


def test_image_reference_prefers_the_digest(helm: str) -> None:
    digest = "sha256:" + hashlib.sha256(b"image").hexdigest()
    image = container(render(helm, "--set", f"image.digest={digest}", "--set", "image.tag=9.9.9"))["image"]
    assert image == f"zgw-gateway@{digest}"
    assert (
        container(render(helm))["image"]
        == "zgw-gateway:" + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    )
