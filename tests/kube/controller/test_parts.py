"""The controller's pure parts: spec validation messages, REST paths, conditions, settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tiffin.contracts.exceptions import ConfigError
from tiffin.kube.controller import reconcile
from tiffin.kube.controller.conditions import Counts, condition, status_body
from tiffin.kube.controller.config import ControllerSettings
from tiffin.kube.controller.kubeapi import Resource, plural
from tiffin.kube.controller.reconcile import InvalidSpec, deployment_of, manifests
from tiffin.kube.render import Platform


def resource(name: str, spec: object) -> dict[str, object]:
    return {"metadata": {"name": name}, "spec": spec}


def test_the_resource_name_is_the_deployment_name_and_the_yaml_round_trips() -> None:
    deployment, source = deployment_of(resource("smol", {"model": "smollm2", "name": "ignored"}))
    assert deployment.name == "smol"
    assert source.startswith("name: smol\nmodel: smollm2\n")


@pytest.mark.parametrize(
    ("name", "spec", "problem"),
    [
        ("smol", {"model": "smollm2", "runner": {"min_replicas": 3, "max_replicas": 2}}, "spec.runner: "),
        ("smol", {"model": "smollm2", "limits": {"max_queue": 0}}, "spec.limits.max_queue: "),
        ("smol", {"model": "smollm2", "routing": {"hosts": "x"}}, "spec.routing.hosts: "),
        ("smol", {}, "spec.model: "),
        ("Smol_1", {"model": "smollm2"}, "metadata.name: must be 1-63 lowercase"),
        ("smol", ["model"], "spec: must be a mapping"),
    ],
)
def test_an_invalid_spec_names_the_field(name: str, spec: object, problem: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        deployment_of(resource(name, spec))
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_what_render_refuses_is_reported_as_spec_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> list[dict[str, object]]:  # stands in for a render that finds Kubernetes problems
        raise ConfigError(["model: 'models/x' is a relative folder", "name: too long"])

    monkeypatch.setattr(reconcile, "render", refuse)
    with pytest.raises(InvalidSpec) as caught:
        manifests(resource("smol", {"model": "smollm2"}), Platform())
    assert caught.value.problems == ["spec.model: 'models/x' is a relative folder", "metadata.name: too long"]


def test_rest_paths_of_core_and_grouped_kinds() -> None:
    assert (
        Resource.of({"apiVersion": "v1", "kind": "ConfigMap"}, "ns").path("a") == "/api/v1/namespaces/ns/configmaps/a"
    )
    scaled = Resource.of(
        {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"namespace": "x"}}, "y"
    )
    assert scaled.path() == "/apis/keda.sh/v1alpha1/namespaces/x/scaledobjects"
    assert [plural(k) for k in ("Ingress", "NetworkPolicy", "Service", "Deployment")] == [
        "ingresses", "networkpolicies", "services", "deployments"]  # fmt: skip


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    first = condition("Applied", True, "Applied", "7 objects applied", 1, [])
    again = condition("Applied", True, "Applied", "7 objects applied", 2, [first | {"lastTransitionTime": "then"}])
    flipped = condition("Applied", False, "InvalidSpec", "spec.x: bad", 3, [again])
    assert again["lastTransitionTime"] == "then"
    assert flipped["lastTransitionTime"] != "then" and flipped["status"] == "False"


def test_ready_follows_applied_and_the_replicas() -> None:
    applied = condition("Applied", True, "Applied", "ok", 1, [])
    refused = condition("Applied", False, "InvalidSpec", "spec.model: required", 1, [])
    at_zero = {"api": Counts(0, 0), "runner": Counts(0, 0)}
    waking = {"api": Counts(1, 1), "runner": Counts(1, 0)}

    def ready(app: dict[str, object], counts: dict[str, Counts]) -> tuple[object, object]:
        body = status_body(1, app, counts, [])  # type: ignore[arg-type]
        cond = body["conditions"][1]
        return cond["status"], cond["reason"]

    assert ready(applied, at_zero) == ("True", "ScaledToZero")
    assert ready(applied, waking) == ("False", "ReplicasStarting")
    assert ready(applied, {"api": Counts(2, 2), "runner": Counts(1, 1)}) == ("True", "ReplicasReady")
    assert ready(refused, at_zero) == ("False", "InvalidSpec")
    assert ready(applied, {}) == ("False", "WorkloadsMissing")


def test_settings_refuse_a_renew_period_not_below_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIFFIN_LEASE_DURATION_S", "5")
    monkeypatch.setenv("TIFFIN_LEASE_RENEW_S", "5")
    with pytest.raises(SystemExit, match="TIFFIN_LEASE_RENEW_S=5 must be below TIFFIN_LEASE_DURATION_S=5"):
        ControllerSettings.from_env()
    monkeypatch.setenv("TIFFIN_LEASE_RENEW_S", "2")
    monkeypatch.setenv("TIFFIN_NAMESPACE", "models")
    monkeypatch.setenv("TIFFIN_RUNNER_IMAGE", "example/runner:1")
    settings = ControllerSettings.from_env()
    assert (settings.namespace, settings.platform.namespace) == ("models", "models")
    assert settings.platform.runner_image == "example/runner:1"


CRD_FILE = Path(__file__).parents[3] / "deploy" / "base" / "crds" / "tiffindeployments.tiffin.io.yaml"


def test_the_status_written_fits_the_crd_s_status_schema() -> None:
    if not CRD_FILE.exists():
        pytest.skip(f"{CRD_FILE} is not in this checkout (the render branch generates it)")
    import jsonschema  # the test extra's (with the CRD tests); imported here so the skip above needs neither

    crd = yaml.safe_load(CRD_FILE.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    applied = condition("Applied", True, "Applied", "7 objects applied", 3, [])
    body = status_body(3, applied, {"api": Counts(0, 0), "runner": Counts(1, 0)}, [])
    jsonschema.validate(body, schema, format_checker=jsonschema.FormatChecker())
    assert "status" in version.get("subresources", {}), "the controller writes status through the subresource"
