"""docker-compose.yml's services as real processes on this machine (no container engine here): each platform
service's command and environment, with its volumes mapped to folders and its ports moved to free ones, starts
the component; its health check command passes; the interceptor serves HTTPS with the certificate `tls-init`
made, trusted through the CA beside it."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import ROOT
from tests.procs import Proc
from tiffin.local.ports import free_port
from tiffin.local.redis_server import EmbeddedRedis

DEADLINE_S = 60.0
PORTS = ("8080", "9090", "9091", "8000")  # every port a platform service listens on or checks


class Host:
    """Interpolation, volumes and ports of the compose file, mapped onto this machine."""

    def __init__(self, redis_url: str, tmp: Path) -> None:
        self.compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        self.redis_url = redis_url
        self.ports = {port: str(free_port()) for port in PORTS}
        self.volumes = {"tls": tmp / "tls"}
        self.volumes["tls"].mkdir()

    def interpolate(self, value: str) -> str:
        """${VAR:-default} and ${VAR:?error} as compose reads them, with no variable set."""
        value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
        return re.sub(r"\$\{\w+:\?[^}]*\}", "unset", value)

    def local(self, service: str, value: str) -> str:
        value = self.interpolate(value)
        for volume in self.compose["services"][service].get("volumes", []):
            source, target = volume.split(":")[:2]
            folder = ROOT / source if source.startswith(".") else self.volumes[source]
            value = value.replace(target, str(folder))
        for port, mapped in self.ports.items():
            value = re.sub(rf"(?<![\d.]){port}(?!\d)", mapped, value)
        return value

    def env(self, service: str) -> dict[str, str]:
        env = {k: self.local(service, str(v)) for k, v in self.compose["services"][service]["environment"].items()}
        env["REDIS_URL"] = self.redis_url  # compose's points at the `redis` service
        return env

    def command(self, service: str) -> list[str]:
        command = [self.local(service, part) for part in self.compose["services"][service]["command"]]
        assert command[0] in ("python", "python3")
        return [sys.executable, *command[1:]]

    def healthy(self, service: str, env: dict[str, str]) -> bool:
        test = self.compose["services"][service]["healthcheck"]["test"]
        assert test[0] == "CMD", "only exec-form health checks run the same here"
        argv = [self.local(service, part) for part in test[1:]]
        argv[0] = sys.executable if argv[0] in ("python", "python3") else argv[0]
        done = subprocess.run(argv, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=30)
        return done.returncode == 0


@pytest.fixture
def host(redis_server: EmbeddedRedis, tmp_path: Path) -> Host:
    return Host(redis_server.url, tmp_path)


def start(host: Host, service: str, tmp: Path) -> tuple[Proc, dict[str, str]]:
    env = host.env(service)
    return Proc(service, host.command(service), env, tmp), env


def wait_healthy(host: Host, service: str, proc: Proc, env: dict[str, str]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        assert proc.alive(), f"{service} exited with {proc.popen.returncode}:\n{proc.log()[-4000:]}"
        if host.healthy(service, env):
            return
        time.sleep(0.3)  # a health check command is all compose has too
    raise AssertionError(f"{service} never passed its health check:\n{proc.log()[-4000:]}")


def test_tls_init_then_the_interceptor_serves_https_its_clients_can_verify(host: Host, tmp_path: Path) -> None:
    init = subprocess.run(host.command("tls-init"), env={"PYTHONPATH": str(ROOT)}, capture_output=True, timeout=60)
    assert init.returncode == 0, init.stderr.decode()
    ca = host.volumes["tls"] / "ca.pem"
    assert ca.is_file() and (host.volumes["tls"] / "server.pem").is_file()
    proc, env = start(host, "interceptor", tmp_path)
    try:
        wait_healthy(host, "interceptor", proc, env)
        context = ssl.create_default_context(cafile=str(ca))
        url = f"https://127.0.0.1:{host.ports['8080']}/v1/models"
        with pytest.raises(urllib.error.HTTPError) as keyless:
            urllib.request.urlopen(url, timeout=5, context=context)
        with keyless.value as answer:
            assert answer.code == 401  # verified TLS, then the API key check
    finally:
        assert proc.stop(timeout_s=75) == 0, proc.log()[-4000:]


@pytest.mark.parametrize("service", ["scaler", "api"])
def test_the_service_starts_and_passes_its_health_check(host: Host, service: str, tmp_path: Path) -> None:
    proc, env = start(host, service, tmp_path)
    try:
        assert not host.healthy(service, env), "the check passed before anything listened"
        wait_healthy(host, service, proc, env)
    finally:
        assert proc.stop(timeout_s=30) == 0, proc.log()[-4000:]


def test_the_proxy_reaches_its_api_server_on_loopback(host: Host, tmp_path: Path) -> None:
    api, api_env = start(host, "api", tmp_path)
    proxy, _ = start(host, "proxy", tmp_path)
    try:
        wait_healthy(host, "api", api, api_env)
        deadline = time.monotonic() + DEADLINE_S
        while '"consuming"' not in proxy.log() and time.monotonic() < deadline:
            assert proxy.alive(), proxy.log()[-4000:]
            time.sleep(0.3)  # the proxy logs `consuming` once its API server's /health answers
        assert '"consuming"' in proxy.log(), proxy.log()[-4000:]
    finally:
        proxy.stop(timeout_s=30)
        api.stop(timeout_s=30)
