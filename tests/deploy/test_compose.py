"""docker-compose.yml: valid against the Compose specification's own JSON schema, and the platform it describes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.manifests import ROOT, reference

COMPOSE = ROOT / "docker-compose.yml"
VENDORED = ROOT / "tests" / "reference" / "compose" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_the_vendored_schema_is_the_compose_specs_file() -> None:
    shared = reference("compose/compose-spec.json")
    if shared is None:
        pytest.skip("no shared/reference/compose/compose-spec.json beside or above this checkout")
    assert VENDORED.read_bytes() == shared.read_bytes()


def test_the_compose_file_validates_against_the_compose_schema(compose: dict[str, Any]) -> None:
    schema = yaml.safe_load(VENDORED.read_text())
    jsonschema.validate(compose, schema, cls=jsonschema.Draft7Validator)


def test_the_schema_check_can_fail(compose: dict[str, Any]) -> None:
    schema = yaml.safe_load(VENDORED.read_text())
    broken = {**compose, "services": {**compose["services"], "redis": {**compose["services"]["redis"], "imagex": 1}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft7Validator)


def test_the_platform_is_all_there_on_the_same_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "scaler", "interceptor", "api", "proxy", "runner-gpu", "runner-cpu"} <= set(services)
    for name in ("scaler", "interceptor", "api", "proxy", "tls-init"):
        assert services[name]["image"] == "tiffin/platform:0.1.0", name
    assert services["runner-gpu"]["image"] == "tiffin/runner:0.1.0"
    assert services["runner-gpu"]["profiles"] == ["gpu"] and services["runner-cpu"]["profiles"] == ["cpu"]
    (device,) = services["runner-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    # The proxy reaches its API server on loopback, as a sidecar in a pod does.
    assert services["proxy"]["network_mode"] == "service:api"
    assert services["proxy"]["environment"]["TIFFIN_UPSTREAM_URL"] == "http://127.0.0.1:8000"


def test_redis_is_append_only_on_a_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.startswith("redis-data:/data") for v in redis["volumes"])
    assert "redis-data" in compose["volumes"]


def test_every_long_running_service_is_checked_and_locked_down(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in {"tls-init", "proxy"}:
            continue  # a one-shot job; the proxy has no listener of its own (it shares the API server's)
        assert "test" in service["healthcheck"], name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name


def test_every_mounted_path_and_build_file_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_dir(), f"{name}: {source}"
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file(), name
    deployment = compose["services"]["api"]["environment"]["TIFFIN_CONFIG"].rsplit("/", 1)[1]
    assert Path(ROOT / "examples" / deployment.split(":-")[-1].rstrip("}")).is_file()
