"""What the deployment's PromQL (Grafana dashboard, Prometheus alerts) refers to: metric names,
label matchers and grouping labels, checked against the metrics the services define."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "avl.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

# The diagnostics worker's counters the dashboard must show (deploy/README.md, "Monitoring").
# name -> label names.
PLANNED = {"avl_diagnostic_verdicts_total": ("verdict",), "avl_tickets_opened_total": ("category",)}
# Labels Prometheus adds to every series, and the histogram bucket label.
TARGET_LABELS = {"instance", "job", "host", "deployment"}

_SELECTOR = re.compile(r"\b(avl_[a-z_]+|up)\b\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@dataclass
class Selector:
    metric: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)  # (label, op, value)


def parse(expr: str) -> tuple[list[Selector], set[str]]:
    """The series selectors of ``expr`` and the labels it groups by."""
    selectors = [Selector(m.group(1), _MATCHER.findall(m.group(2) or "")) for m in _SELECTOR.finditer(expr)]
    grouping = {label.strip() for g in _GROUPING.findall(expr) for label in g.split(",") if label.strip()}
    return selectors, grouping


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expression) of every target in the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(rule["alert"], str(rule["expr"])) for group in rules["groups"] for rule in group["rules"]]


def defined_metrics() -> dict[str, tuple[str, ...]]:
    """Sample name -> label names, for every metric of ingest/metrics.py and diagnostics/metrics.py."""
    from prometheus_client.metrics import MetricWrapperBase

    from diagnostics import metrics as diagnostics_metrics
    from ingest import metrics as ingest_metrics

    out: dict[str, tuple[str, ...]] = dict(PLANNED)
    for obj in [*vars(ingest_metrics).values(), *vars(diagnostics_metrics).values()]:
        if not isinstance(obj, MetricWrapperBase):
            continue
        (family,) = obj.describe()
        labels = tuple(obj._labelnames)  # noqa: SLF001 - no public accessor
        if family.type == "counter":
            out[f"{family.name}_total"] = labels
        elif family.type == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                out[f"{family.name}{suffix}"] = (*labels, "le") if suffix == "_bucket" else labels
        else:
            out[family.name] = labels
    return out
