"""`render`: every manifest of the examples is valid for Kubernetes (strict) and KEDA, and carries the YAML's values.

Validation uses the real schemas: Kubernetes' own (kubernetes-validate, strict: unknown fields are errors) and
KEDA's ScaledObject CRD as KEDA publishes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate
from redis.asyncio import Redis

from tests.kube.schemas import errors, keda_scaledobject_validator
from tests.procs import ROOT
from tiffin.contracts import keys
from tiffin.contracts.config import Deployment, load_deployments
from tiffin.contracts.demand import read_demand
from tiffin.contracts.queue import now_ms
from tiffin.kube.render import COOLDOWN_S, RENDERED_KINDS, Platform, RenderError, labels, render, selector

EXAMPLES = [ROOT / "examples" / "smollm2.yaml", ROOT / "examples" / "kubernetes" / "qwen-gpu.yaml"]
# The oldest release still common in managed clusters, and the newest kubernetes-validate knows.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
CUSTOM_KINDS = {"ScaledObject"}

Manifest = dict[str, Any]


def load(path: Path) -> Deployment:
    [deployment] = load_deployments([path], check_models=False)
    return deployment


def rendered(path: Path, platform: Platform | None = None) -> list[Manifest]:
    return render(load(path), platform or Platform(), path.read_text())


def by_kind(objects: list[Manifest], kind: str, name: str) -> Manifest:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def containers(deployment: Manifest) -> dict[str, Manifest]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def env_of(container: Manifest) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_kubernetes_schemas_strictly(example: Path, version: str) -> None:
    objects = rendered(example)
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)  # raises ValidationError naming the field
    assert {o["kind"] for o in objects} >= {"ConfigMap", "Service", "Deployment", "ScaledObject"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_scaled_objects_validate_against_kedas_crd(example: Path) -> None:
    validator = keda_scaledobject_validator()
    scaled = [o for o in rendered(example) if o["kind"] == "ScaledObject"]

    assert [o["metadata"]["name"] for o in scaled] == [f"{load(example).name}-api", f"{load(example).name}-runner"]
    for obj in scaled:
        assert errors(validator, obj) == []


def test_kedas_schema_catches_a_broken_scaled_object() -> None:
    """The check above can fail: KEDA's schema refuses a trigger without metadata and a negative minimum."""
    obj = by_kind(rendered(EXAMPLES[0]), "ScaledObject", "smollm2-api")
    del obj["spec"]["triggers"][0]["metadata"]
    obj["spec"]["minReplicaCount"] = -1

    problems = errors(keda_scaledobject_validator(), obj)

    assert any("metadata" in p for p in problems), problems
    assert any(p.startswith("spec.minReplicaCount") for p in problems), problems


def test_kubernetes_validation_catches_an_unknown_field() -> None:
    obj = by_kind(rendered(EXAMPLES[0]), "Deployment", "smollm2-runner")
    obj["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_object_carries_the_labels_the_controller_prunes_by(example: Path) -> None:
    dep = load(example)
    platform = Platform(namespace="llms")
    for obj in render(dep, platform, example.read_text()):
        meta = obj["metadata"]
        assert meta["namespace"] == "llms"
        assert meta["labels"].items() >= labels(dep.name).items(), obj["kind"]
        component = meta["labels"].get("app.kubernetes.io/component")
        assert (obj["apiVersion"], obj["kind"]) in {(v, k) for v, k, _ in RENDERED_KINDS}  # the controller lists these
        if obj["kind"] in ("Deployment", "Service", "NetworkPolicy", "ScaledObject", "PersistentVolumeClaim"):
            assert component in ("api", "runner"), meta
            assert meta["name"].endswith(f"-{component}") or obj["kind"] == "PersistentVolumeClaim"


def test_scaled_objects_carry_the_yamls_scaling() -> None:
    dep = load(EXAMPLES[1])
    platform = Platform(scaler_address="scaler.example:9090")
    objects = render(dep, platform, EXAMPLES[1].read_text())
    for component in ("api", "runner"):
        spec = by_kind(objects, "ScaledObject", f"qwen-{component}")["spec"]
        section = dep.component(component)
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"qwen-{component}"}
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (section.min_replicas, section.max_replicas)
        # The idle period (600 s in the file) is the scaler's to apply, not KEDA's: see the test below.
        assert spec["cooldownPeriod"] == COOLDOWN_S
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 120
        assert spec["triggers"] == [
            {
                "type": "external-push",
                "metadata": {"scalerAddress": "scaler.example:9090", "deployment": "qwen", "component": component},
            }
        ]


def test_defaults_scale_both_components_to_zero() -> None:
    objects = rendered(EXAMPLES[0])
    for component in ("api", "runner"):
        assert by_kind(objects, "ScaledObject", f"smollm2-{component}")["spec"]["minReplicaCount"] == 0
    for obj in objects:
        if obj["kind"] == "Deployment":
            assert "replicas" not in obj["spec"]  # KEDA's HPA is the one writer of replica counts


def test_gpu_runner_asks_for_its_gpus_on_the_named_gpu_type_with_its_tolerations() -> None:
    objects = rendered(EXAMPLES[1])
    pod = by_kind(objects, "Deployment", "qwen-runner")["spec"]["template"]["spec"]
    runner = containers(by_kind(objects, "Deployment", "qwen-runner"))["runner"]

    assert runner["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert runner["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert runner["resources"]["requests"]["memory"] == "24Gi"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-spot": "true", "nvidia.com/gpu.product": "NVIDIA-L4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
            "effect": "NoSchedule"} in pod["tolerations"]  # fmt: skip
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"] == {"claimName": "tiffin-models"}
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]  # an existing claim is not made


def test_cpu_runner_asks_for_no_gpu_and_gets_its_own_model_cache_claim() -> None:
    objects = rendered(EXAMPLES[0])
    runner = containers(by_kind(objects, "Deployment", "smollm2-runner"))["runner"]
    claim = by_kind(objects, "PersistentVolumeClaim", "smollm2-models")

    assert "nvidia.com/gpu" not in runner["resources"]["limits"]
    assert "nodeSelector" not in by_kind(objects, "Deployment", "smollm2-runner")["spec"]["template"]["spec"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert {"name": "models", "mountPath": "/models"} in runner["volumeMounts"]
    assert env_of(runner)["TIFFIN_CACHE_DIR"] == "/models"
    assert env_of(runner)["VLLM_CACHE_ROOT"].startswith("/models/")  # compiled kernels outlive the pod too


def test_runner_is_ready_on_vllms_health_and_may_take_its_whole_startup_timeout() -> None:
    for example in EXAMPLES:
        dep = load(example)
        runner = containers(by_kind(rendered(example), "Deployment", f"{dep.name}-runner"))["runner"]
        port = runner["ports"][0]
        assert (port["name"], port["containerPort"]) == ("http", int(env_of(runner)["TIFFIN_RUNNER_PORT"]))
        assert runner["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        startup = runner["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] > dep.runner.startup_timeout_s
        assert env_of(runner)["TIFFIN_RUNNER_URL"] == f"http://$(POD_IP):{port['containerPort']}"
        assert runner["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"  # defined before its use


def test_grace_periods_outlast_the_drain_timeouts() -> None:
    objects = rendered(EXAMPLES[0])
    api = by_kind(objects, "Deployment", "smollm2-api")["spec"]["template"]["spec"]
    runner = by_kind(objects, "Deployment", "smollm2-runner")["spec"]["template"]["spec"]
    proxy_drain = float(
        env_of(containers(by_kind(objects, "Deployment", "smollm2-api"))["proxy"])["TIFFIN_DRAIN_TIMEOUT_S"]
    )
    runner_drain = float(env_of(runner["containers"][0])["TIFFIN_RUNNER_DRAIN_TIMEOUT_S"])

    # The API server's shutdown (about 30 s) follows the proxy's drain; the engine's stop (30 s) the runner's.
    assert api["terminationGracePeriodSeconds"] > proxy_drain + 30
    assert runner["terminationGracePeriodSeconds"] > runner_drain + 30


def test_api_server_waits_for_its_proxy_to_drain_before_stopping() -> None:
    deployment = by_kind(rendered(EXAMPLES[0]), "Deployment", "smollm2-api")
    pod = deployment["spec"]["template"]["spec"]
    api, proxy = containers(deployment)["api"], containers(deployment)["proxy"]

    assert pod["shareProcessNamespace"] is True
    hook = api["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[:2] == ["python3", "-c"]
    compile(hook[2], "preStop", "exec")  # valid Python
    assert proxy["command"] == ["python3", "-m", "proxy"]  # what the hook looks for in /proc/*/cmdline
    assert env_of(proxy)["TIFFIN_UPSTREAM_URL"] == f"http://127.0.0.1:{api['ports'][0]['containerPort']}"
    assert "TIFFIN_REPLICA_ID" not in env_of(proxy)  # a restarted proxy takes a fresh consumer name


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_pod_and_container_is_locked_down(example: Path) -> None:
    for obj in rendered(example):
        if obj["kind"] != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        writable = {v["name"] for v in pod["volumes"] if "emptyDir" in v or "persistentVolumeClaim" in v}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["runAsNonRoot"] is True
            assert {"requests", "limits"} <= container["resources"].keys()
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/tmp"] in writable and env_of(container)["HOME"] == "/tmp"
            if container["name"] != "proxy":  # the proxy has no listener to probe (it exits when it fails)
                assert {"startupProbe", "readinessProbe", "livenessProbe"} <= container.keys()


def test_configmap_is_read_by_the_components_as_they_read_it_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mounted YAML, with each container's own environment, loads in the API server's and the proxy's code,
    though the model folder is on the cluster's volume and not here."""
    from proxy.config import ProxySettings
    from runtime.config import ApiSettings

    objects = rendered(EXAMPLES[1])
    config = by_kind(objects, "ConfigMap", "qwen-config")
    path = tmp_path / "deployment.yaml"
    path.write_text(config["data"]["deployment.yaml"])
    api_deployment = by_kind(objects, "Deployment", "qwen-api")
    for name, container in containers(api_deployment).items():
        env = env_of(container)
        assert env["TIFFIN_CONFIG"] == "/etc/tiffin/deployment.yaml"
        assert {"name": "config", "mountPath": "/etc/tiffin", "readOnly": True} in container["volumeMounts"]
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("TIFFIN_CONFIG", str(path))
        if name == "api":
            assert ApiSettings.from_env().deployment == load(EXAMPLES[1])
        else:
            assert ProxySettings.from_env().deployment == "qwen"
            [dep] = load_deployments(ProxySettings.from_env().config_paths)
            assert dep.name == "qwen"


def test_without_source_text_the_configmap_holds_the_deployment_itself(tmp_path: Path) -> None:
    """The controller's case: it has the resource's spec, not a file."""
    dep = load(EXAMPLES[1])
    text = by_kind(render(dep, Platform()), "ConfigMap", "qwen-config")["data"]["deployment.yaml"]
    path = tmp_path / "qwen.yaml"
    path.write_text(text)

    assert load(path) == dep


def test_a_changed_yaml_rolls_the_pods() -> None:
    dep = load(EXAMPLES[0])
    text = EXAMPLES[0].read_text()
    before = by_kind(render(dep, Platform(), text), "Deployment", "smollm2-api")["spec"]["template"]["metadata"]
    after = by_kind(render(dep, Platform(), text + "\n# edited\n"), "Deployment", "smollm2-api")["spec"]["template"]

    assert before["annotations"] != after["metadata"]["annotations"]


def test_platform_images_and_overrides() -> None:
    platform = Platform(image="registry.example/tiffin/platform:9", runner_image="registry.example/tiffin/runner:9")
    objects = rendered(EXAMPLES[0], platform)
    assert {c["image"] for c in containers(by_kind(objects, "Deployment", "smollm2-api")).values()} == {platform.image}
    assert containers(by_kind(objects, "Deployment", "smollm2-runner"))["runner"]["image"] == platform.runner_image

    data = yaml.safe_load(EXAMPLES[0].read_text())
    data["kubernetes"] = {"runner": {"image": "mine/vllm:1"}, "api": {"resources": {"requests": {"memory": "2Gi"}}}}
    dep = Deployment.model_validate(data)
    objects = render(dep, platform)
    assert containers(by_kind(objects, "Deployment", "smollm2-runner"))["runner"]["image"] == "mine/vllm:1"
    api = containers(by_kind(objects, "Deployment", "smollm2-api"))["api"]["resources"]
    # A request above tiffin's default limit lifts the limit with it, or Kubernetes would refuse the pod.
    assert api["requests"]["memory"] == api["limits"]["memory"] == "2Gi"


def _deployment(**overrides: Any) -> Deployment:
    data: dict[str, Any] = {"name": "llm", "model": "smollm2", **overrides}
    return Deployment.model_validate(data)


@pytest.mark.parametrize(
    ("deployment", "source", "problem"),
    [
        (_deployment(name="a" * 57), None, "name: '" + "a" * 57 + "' has 57 characters; on Kubernetes at most 56"),
        (_deployment(model="models/llama"), None, "model: 'models/llama' is a relative folder"),
        (_deployment(), "name: llm\nmodel: ./llama\n", "model: './llama' is a relative folder"),
        (_deployment(runner={"gpus": 1, "gpu_type": "NVIDIA L4"}), None, "runner.gpu_type: 'NVIDIA L4' is not a valid"),
        (_deployment(runner={"gpu_type": "nvidia-l4"}), None, "runner.gpu_type: set while runner.gpus is 0"),
        (_deployment(scaling={"scale_down_window_s": 7200}), None, "scaling.scale_down_window_s: 7200 is above 3600"),
    ],
)
def test_what_cannot_run_on_kubernetes_is_refused_naming_the_field(
    deployment: Deployment, source: str | None, problem: str
) -> None:
    with pytest.raises(RenderError) as caught:
        render(deployment, Platform(), source)
    [line] = caught.value.problems
    assert line.startswith(problem), line


def test_the_cooldown_is_short_and_fixed_because_the_scaler_applies_the_idle_period() -> None:
    # KEDA counts cooldownPeriod from the scaler's last `active`, which already lasts idle_period_s after the last
    # request: back to zero must take one idle period (as under `tiffin up`), not two.
    for idle in (0, 0.5, 300, 3600):
        objects = render(_deployment(scaling={"idle_period_s": idle, "scale_down_window_s": 1.2}), Platform())
        spec = by_kind(objects, "ScaledObject", "llm-runner")["spec"]
        assert spec["cooldownPeriod"] == COOLDOWN_S
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 2
    # Short: within a couple of KEDA's polls of the scaler saying idle.
    assert 2 * Platform().polling_interval_s >= COOLDOWN_S


async def test_the_scaler_stays_active_for_the_idle_period_after_the_last_request(redis: Redis) -> None:
    deployment = _deployment(scaling={"idle_period_s": 300})
    await redis.set(keys.activity(deployment.name), now_ms() - 10_000)
    assert (await read_demand(redis, deployment)).active(deployment.scaling.idle_period_s)
    await redis.set(keys.activity(deployment.name), now_ms() - 301_000)
    assert not (await read_demand(redis, deployment)).active(deployment.scaling.idle_period_s)


def test_only_the_deployments_api_servers_reach_its_runners() -> None:
    """Neither the API server nor vLLM asks for a key: other pods must not reach them around the interceptor."""
    objects = rendered(EXAMPLES[0])
    runner = by_kind(objects, "NetworkPolicy", "smollm2-runner")["spec"]
    api = by_kind(objects, "NetworkPolicy", "smollm2-api")["spec"]

    assert runner["podSelector"]["matchLabels"] == selector("smollm2", "runner")
    assert runner["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": selector("smollm2", "api")}}],
         "ports": [{"port": "http", "protocol": "TCP"}]}
    ]  # fmt: skip
    assert api["podSelector"]["matchLabels"] == selector("smollm2", "api")
    assert (api["policyTypes"], api["ingress"]) == (["Ingress"], [])  # its proxy calls it inside the pod


def test_a_metrics_namespace_may_scrape_both_components() -> None:
    objects = rendered(EXAMPLES[0], Platform(metrics_namespace="monitoring"))
    scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}, "podSelector": {}}
    for component in ("api", "runner"):
        [rule] = by_kind(objects, "NetworkPolicy", f"smollm2-{component}")["spec"]["ingress"]
        assert scraper in rule["from"]
