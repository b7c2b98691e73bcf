"""What operators deploy: Prometheus rules (checked and unit-tested with Debian's
promtool), Alertmanager's configuration (amtool), and that every rule reads metrics the
workers export and links to a runbook in the README."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.metrics import ForwarderMetrics, Metrics, exported_names

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))


def tool(name: str) -> str:
    # Not a skip: CI installs Debian's prometheus and prometheus-alertmanager (.ci/run).
    path = shutil.which(name)
    assert path, f"{name} is missing: apt-get install prometheus prometheus-alertmanager"
    return path


def run(*args: str, cwd: Path = PROMETHEUS) -> str:
    result = subprocess.run(args, capture_output=True, text=True, cwd=cwd, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def rules() -> list[dict[str, Any]]:
    return [
        r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]
    ]


def test_promtool_checks_the_config_and_the_rules() -> None:
    run(tool("promtool"), "check", "config", "prometheus.yml")
    out = run(tool("promtool"), "check", "rules", *(str(f) for f in RULE_FILES))
    assert "SUCCESS" in out


def test_promtool_unit_tests_pass_and_cover_every_alerting_rule() -> None:
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    run(tool("promtool"), "test", "rules", *(str(t) for t in tests))
    tested = {
        case["alertname"]
        for t in tests
        for test in yaml.safe_load(t.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {r["alert"] for r in rules() if "alert" in r} == tested


def test_every_alert_has_for_severity_summary_and_a_runbook_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", readme, re.M)
    }
    for rule in (r for r in rules() if "alert" in r):
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"{rule['alert']}: no README heading for #{anchor}"


def test_rules_read_only_metrics_the_workers_export() -> None:
    exported = exported_names(Metrics().registry) | {"up"}
    exported |= exported_names(ForwarderMetrics().registry)  # the alerts forwarder's
    recorded = {r["record"] for r in rules() if "record" in r}
    for rule in rules():
        for name in re.findall(
            r"\b(citystreams[a-z0-9_:]*|up)\b(?=\s*[{\[)]|\s*$|\s*[<>=!])", rule["expr"]
        ):
            assert name in exported | recorded, f"{rule.get('alert') or rule.get('record')}: {name}"


def test_alertmanager_config_routes_by_severity() -> None:
    config = DEPLOY / "alertmanager" / "alertmanager.yml"
    run(tool("amtool"), "check-config", str(config))
    for labels, receiver in (
        (["severity=critical", "component=city", "district=Mitte"], "on-call"),
        (["severity=warning", "component=pipeline"], "operations-centre"),
        (["severity=info"], "log-only"),
    ):
        out = run(tool("amtool"), "config", "routes", "test", f"--config.file={config}", *labels)
        assert out.strip().splitlines()[0] == receiver, (labels, out)


def test_alertmanager_routes_and_inhibits_forwarded_episodes() -> None:
    config = DEPLOY / "alertmanager" / "alertmanager.yml"
    episode = ["alert_id=b7c1e2f04a9d4c1e", "device_id=dui-mitte-gs017-r12-air", "site=gs017"]
    for labels, receiver in (
        (["alertname=classroom_co2_critical", "severity=critical", *episode], "on-call"),
        (["alertname=classroom_co2_high", "severity=warning", *episode], "operations-centre"),
    ):
        out = run(tool("amtool"), "config", "routes", "test", f"--config.file={config}", *labels)
        assert out.strip().splitlines()[0] == receiver, (labels, out)
    inhibit = yaml.safe_load(config.read_text())["inhibit_rules"]
    # Critical before warning within a site, for episodes only (they carry alert_id).
    assert {
        "source_matchers": ['severity="critical"', 'alert_id=~".+"'],
        "target_matchers": ['severity="warning"', 'alert_id=~".+"'],
        "equal": ["district", "site"],
    } in inhibit


def test_the_forwarder_runs_in_compose_and_kubernetes_with_its_alertmanager() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    forwarder = compose["services"]["alerts-forwarder"]
    assert forwarder["command"] == ["alerts", "forward"]
    assert forwarder["environment"]["CITYSTREAMS_ALERTMANAGER_URL"] == "http://alertmanager:9093"
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "forwarder.yaml").read_text()))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 1  # one member of its consumer group
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["alerts", "forward"]
    scrape = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    assert "alerts-forwarder:9109" in str(scrape)
    source = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "alertmanager.yml").read_text()
    )["datasources"][0]
    assert (source["type"], source["uid"]) == ("alertmanager", "alertmanager")


def test_the_open_alerts_dashboard_lists_alertmanagers_alerts() -> None:
    from streams.tools.dashboards import open_alerts

    board = open_alerts()
    (alertlist,) = [p for p in board["panels"] if p["type"] == "alertlist"]
    assert alertlist["datasource"]["uid"] == "alertmanager"
    assert alertlist["options"]["alertInstanceLabelFilter"] == '{alert_id=~".+"}'
    assert board["title"] == "citystreams / Open alerts"


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_every_deploy_yaml_is_well_formed(path: Path) -> None:
    assert list(yaml.safe_load_all(path.read_text()))


def test_committed_dashboards_are_what_the_code_generates() -> None:
    from streams.tools.dashboards import DASHBOARDS, render

    folder = DEPLOY / "grafana" / "dashboards"
    assert sorted(p.name for p in folder.glob("*.json")) == sorted(DASHBOARDS)
    for name, build in DASHBOARDS.items():
        assert (folder / name).read_bytes() == render(build), (
            f"{name} is stale: python -m streams.tools.dashboards deploy/grafana/dashboards"
        )


def test_dashboards_read_only_metrics_that_exist() -> None:
    from streams.tools.dashboards import DASHBOARDS, expressions

    exported = exported_names(Metrics().registry) | {"up"}
    exported |= exported_names(ForwarderMetrics().registry)
    recorded = {r["record"] for r in rules() if "record" in r}
    seen = set()
    for build in DASHBOARDS.values():
        for expr in expressions(build()):
            bare = re.sub(r'"[^"]*"', '""', expr)  # label values are not metric names
            for name in re.findall(r"\b((?:citystreams|process)[a-z0-9_:]*|up)\b(?!\s*\()", bare):
                assert name in exported | recorded, name
                seen.add(name)
    assert len(seen) >= 15


def images(doc: Any) -> list[str]:
    if isinstance(doc, dict):
        found = [v for k, v in doc.items() if k == "image" and isinstance(v, str)]
        return found + [i for v in doc.values() for i in images(v)]
    if isinstance(doc, list):
        return [i for v in doc for i in images(v)]
    return []


def test_compose_file_follows_the_compose_specification() -> None:
    import importlib.util
    import json

    import jsonschema

    # The compose-spec JSON schema as vendored by check-jsonschema (a test dependency);
    # found without importing that package, whose CLI needs a newer click than faust's.
    spec = importlib.util.find_spec("check_jsonschema")
    assert spec is not None and spec.submodule_search_locations
    vendor = Path(next(iter(spec.submodule_search_locations))) / "builtin_schemas" / "vendor"
    schema = json.loads((vendor / "compose-spec.json").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [e.message for e in validator.iter_errors(compose)]
    assert errors == []
    # Everything the stack mounts exists.
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source


CRDS = {"Kafka", "KafkaNodePool", "ServiceMonitor"}


def test_kubernetes_manifests_validate_against_the_kubernetes_schemas() -> None:
    import kubernetes_validate

    kinds = set()
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kinds.add(doc["kind"])
            if doc["kind"] in CRDS:  # custom resources: no schema in Kubernetes itself
                assert doc["apiVersion"] and doc["metadata"]["name"] and doc["spec"]
                continue
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
    assert {"Deployment", "Service", "ConfigMap", "Kafka", "ServiceMonitor"} <= kinds


def test_every_image_is_pinned_and_ours_is_this_version() -> None:
    from streams import __version__

    docs = [yaml.safe_load((DEPLOY / "compose.yaml").read_text())]
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += list(yaml.safe_load_all(path.read_text()))
    found = [i for d in docs for i in images(d)]
    assert found
    for image in found:
        assert re.search(r":v?\d+\.\d+\.\d+$", image), f"{image} is not pinned to a version"
        if "citystreams/citystreams" in image:
            assert image.endswith(f":{__version__}"), image
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM \S+:\d+\.\d+\.\d+", dockerfile, re.M)
