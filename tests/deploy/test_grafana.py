"""deploy/grafana/tiffin.json: a well-formed dashboard whose every query reads a metric tiffin exports."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from interceptor import gauges, metrics
from tests.deploy.manifests import DEPLOY, kustomize

DASHBOARD = DEPLOY / "grafana" / "tiffin.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
# Every panel of issue 10, by a word of its title.
PANELS = ["State per deployment", "ready vs desired", "Requests/s", "Queue wait vs upstream", "Cold starts",
          "Cold start p50", "phases", "Queue depth", "Oldest waiting", "Rejected"]  # fmt: skip


def exported(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry's metrics produce (a counter's _total, a histogram's _bucket...)."""
    families = {f.name: f.type for f in registry.collect()}
    # The gauges read from Redis at scrape time come from a collector made per scrape: the same one, empty.
    families.update(gauges.families())
    return {name + suffix for name, kind in families.items() for suffix in SUFFIXES[kind]}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]


def test_panel_ids_are_unique_and_every_panel_has_a_place(dashboard: dict[str, Any]) -> None:
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    boxes = []
    for panel in panels:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in ("x", "y", "w", "h")), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        boxes.append((panel["title"], grid))
    for (a, ga), (b, gb) in itertools.combinations(boxes, 2):
        overlap_x = ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
        overlap_y = ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"]
        assert not (overlap_x and overlap_y), f"panels {a!r} and {b!r} overlap"


def test_queries_use_the_datasource_and_deployment_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["deployment"]["datasource"]["uid"] == "${datasource}"
    assert variables["deployment"]["includeAll"] and variables["deployment"]["multi"]
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            if "gpu_runners" not in target["expr"]:  # the one metric without a deployment label
                assert 'deployment=~"$deployment"' in target["expr"], panel["title"]


def test_every_queried_metric_is_one_tiffin_exports(dashboard: dict[str, Any]) -> None:
    names = exported(metrics.REGISTRY)
    queried = {
        name
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
        for name in re.findall(r"\btiffin_[a-z0-9_]+", target["expr"])
    }
    queried |= set(re.findall(r"\btiffin_[a-z0-9_]+", json.dumps(dashboard["templating"])))
    assert queried, "the dashboard queries nothing"
    assert not queried - names, f"metrics tiffin does not export: {sorted(queried - names)}"


def test_the_metric_check_would_catch_a_typo() -> None:
    assert "tiffin_requests_total" in exported(metrics.REGISTRY)
    assert "tiffin_request_total" not in exported(metrics.REGISTRY)
    assert "tiffin_queue_wait_seconds_bucket" in exported(metrics.REGISTRY)


def test_the_panels_of_issue_10_are_there(dashboard: dict[str, Any]) -> None:
    titles = [p["title"] for p in all_panels(dashboard)]
    for wanted in PANELS:
        assert any(wanted.lower() in t.lower() for t in titles), f"no panel for {wanted!r}: {titles}"


def test_it_ships_as_a_configmap_for_grafanas_sidecar(dashboard: dict[str, Any]) -> None:
    (configmap,) = kustomize(DEPLOY / "grafana")
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["tiffin.json"]) == dashboard
