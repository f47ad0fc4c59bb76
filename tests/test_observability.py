"""deploy/prometheus alert rules and the deploy/grafana dashboard: `promtool check rules` accepts the rules,
the dashboard has the structure Grafana imports, and every metric either names is one a service exports
today (or Prometheus's own `up`), apart from those listed as still to come. No Prometheus or Grafana runs
here (neither is a Debian package on this machine's list but promtool's `prometheus`)."""

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
DASHBOARD = ROOT / "deploy" / "grafana" / "lazaretto-overview.json"
# Metrics the rules use before a service exports them (the rule fires once it does).
TO_COME = {"lazaretto_policy_breaker_tripped"}
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
    # What the issue names: breaker trips still to come; resets per CMTS and dead letters are there.
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert "lazaretto_cmts_reset_attempts_total" in exprs
    assert 'outcome="dead_lettered"' in exprs
