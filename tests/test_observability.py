"""deploy/prometheus alert rules and scrape configuration, the deploy/grafana dashboard and its provisioning,
and compose's lab profile that starts Prometheus, Grafana and Jaeger: `promtool check rules` and `promtool
check config` accept them, the dashboard has the structure Grafana imports, every metric either names is
one a service exports (or Prometheus's own `up`), every KPI the issue names is on the dashboard, and the
compose services mount what exists. No Prometheus, Grafana, Jaeger or Docker engine runs here (none is a
Debian package on this machine's list but promtool's `prometheus`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "lazaretto-alerts.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "lazaretto-overview.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
COMPOSE_FILE = ROOT / "docker-compose.yml"
# Metrics the rules use before a service exports them (the rule fires once it does).
TO_COME: set[str] = set()
# The KPIs and technical signals, each a metric the dashboard must show.
KPIS = {
    "lazaretto_policy_alert_to_garden_seconds",  # first alert to garden in effect
    "lazaretto_policy_releases_total",  # self-release rate (by="subscriber" of all)
    "lazaretto_policy_repeat_cases_total",  # recidivism within 30 days
    "lazaretto_policy_cases_opened_total",
    "lazaretto_policy_cases_needing_operator",
    "lazaretto_policy_held_cases",
    "lazaretto_policy_breaker_tripped",
    "lazaretto_policy_breaker_trips_total",
    "lazaretto_cmts_resets_total",  # resets per CMTS by outcome
    "lazaretto_dead_letter_messages",  # DLQ depth per queue
    "lazaretto_ready",
}
SERVICE_PORTS = {
    "policy": 8400,
    "provisioner": 8300,
    "cmts-agent": 8500,
    "portal": 8080,
    "detector-snort": 8100,
    "detector-smtp": 8200,
}
PROMETHEUS_OWN = {"up"}
# What the issue asks the alerts to cover, by alert name.
REQUIRED_ALERTS = {
    "LazarettoServiceDown",  # a service not ready
    "LazarettoDeadLettersGrowing",  # DLQ growing
    "LazarettoCmtsResetsFailing",  # resets failing on a CMTS
    "LazarettoBreakerTripped",  # breaker tripped
}
_SUFFIXES = ("_bucket", "_count", "_sum")


def exported_metrics() -> set[str]:
    """Metric names declared with prometheus_client in the services and the core library."""
    names: set[str] = set()
    sources = [*ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("libs/lazaretto-core/src/**/*.py")]
    declared = re.compile(r"(?:Counter|Gauge|Histogram|Summary)\(\s*\"(lazaretto_[a-z0-9_]+)\"", re.S)
    for path in sources:
        for name in declared.findall(path.read_text()):
            names.add(name)
            if name.endswith("_total"):
                names.add(name.removesuffix("_total"))
    return names


def metrics_in(expr: str) -> set[str]:
    found = set()
    for name in re.findall(r"\b(lazaretto_[a-z0-9_]+)\b", expr):
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and not name.endswith("_total"):
                name = name.removesuffix(suffix)
                break
        found.add(name)
    if re.search(r"\bup\s*\{", expr):
        found.add("up")
    return found


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool missing: deploy/bin/install-deps installs Debian's prometheus"
    command = [promtool, "check", "rules", str(RULES)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_the_alerts_cover_what_operators_must_hear_about() -> None:
    alerts = {rule["alert"]: rule for rule in rules()}
    assert set(alerts) >= REQUIRED_ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name


def test_the_rules_and_the_dashboard_use_metrics_that_exist() -> None:
    exported = exported_metrics()
    assert "lazaretto_cmts_reset_attempts_total" in exported  # the scan finds the services' metrics
    used = {name for rule in rules() for name in metrics_in(rule["expr"])}
    dashboard = json.loads(DASHBOARD.read_text())
    used |= {name for p in dashboard["panels"] for t in p["targets"] for name in metrics_in(t["expr"])}
    unknown = used - exported - PROMETHEUS_OWN - TO_COME
    assert not unknown, f"metrics no service exports: {sorted(unknown)}"
    assert used >= TO_COME  # nothing listed here that nobody waits for
    assert not (TO_COME & exported), "exported now: remove it from TO_COME"
    assert exported >= KPIS


def test_every_kpi_is_on_the_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    shown = {name for p in dashboard["panels"] for t in p["targets"] for name in metrics_in(t["expr"])}
    assert shown >= KPIS, sorted(KPIS - shown)


def test_histograms_name_their_unit() -> None:
    # (prometheus_client itself exposes every counter as <name>_total.)
    sources = [*ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("libs/lazaretto-core/src/**/*.py")]
    declared = re.compile(r"(Histogram)\(\s*\"(lazaretto_[a-z0-9_]+)\"", re.S)
    found = [match for path in sources for match in declared.findall(path.read_text())]
    assert ("Histogram", "lazaretto_policy_alert_to_garden_seconds") in found
    for _, name in found:
        # Durations in the base unit; a histogram of a count (observations per batch) has no unit to name.
        assert name.endswith("_seconds") or name in COUNT_HISTOGRAMS, name


# Histograms of how many things, not how long: Prometheus' naming puts no unit suffix on a pure count.
COUNT_HISTOGRAMS = {"lazaretto_policy_observation_batch_size"}


def test_prometheus_scrapes_every_service_under_the_job_names_the_rules_use() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None
    done = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == [RULES.name]
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert jobs == {f"lazaretto-{name}": [f"{name}:{port}"] for name, port in SERVICE_PORTS.items()}
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    for name, port in SERVICE_PORTS.items():
        assert compose["services"][name]["environment"]["LAZARETTO_HTTP_PORT"] == str(port), name


def test_compose_lab_profile_starts_prometheus_grafana_and_jaeger_provisioned() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    prometheus, grafana, jaeger = services["prometheus"], services["grafana"], services["jaeger"]
    for service in (prometheus, grafana, jaeger):
        assert service["profiles"] == ["lab"]
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"])
    # Prometheus reads this repository's configuration and rules
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    # Grafana gets the data source and the dashboard provider, and the dashboard where the provider looks
    mounts = {m.split(":")[0]: m.split(":")[1] for m in grafana["volumes"]}
    assert mounts["./deploy/grafana/provisioning/datasources"] == "/etc/grafana/provisioning/datasources"
    assert mounts["./deploy/grafana/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "lazaretto.yml").read_text())["providers"][0]
    dashboard_path = provider["options"]["path"]
    assert mounts["./deploy/grafana/lazaretto-overview.json"] == f"{dashboard_path}/{DASHBOARD.name}"
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "lazaretto.yml").read_text())["datasources"]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    for host in mounts:
        assert (ROOT / host).exists(), host
    # Jaeger takes OTLP over HTTP, where the services send spans when the endpoint is set
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    for name in SERVICE_PORTS:
        assert (
            services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}"
        )
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=" in (ROOT / "deploy" / "compose" / "env.example").read_text()


def test_the_dashboard_has_the_structure_grafana_imports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "lazaretto-overview"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        assert p["type"] in {"timeseries", "stat"}, p["title"]
        assert set(p["gridPos"]) == {"x", "y", "w", "h"}
        assert p["gridPos"]["x"] >= 0
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["datasource"]["uid"] == "${datasource}"
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
    # What the issue names: resets per CMTS by outcome, dead letters, the self-release rate.
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert "sum by (cmts, outcome) (increase(lazaretto_cmts_resets_total" in exprs
    assert "max by (queue) (lazaretto_dead_letter_messages)" in exprs
    assert 'lazaretto_policy_releases_total{by="subscriber"}' in exprs
    assert 'outcome="dead_lettered"' in exprs
