"""An interceptor started with an empty deployments folder (an empty cluster: the controller's ConfigMap has no
keys yet) runs, is ready, and answers every model with the OpenAI-shaped 404 `model_not_found`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from tests.procs import Proc
from tiffin.local.ports import free_port
from tiffin.local.redis_server import EmbeddedRedis


def _call(url: str, body: bytes | None = None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, json.loads(refused.read())


def test_an_empty_folder_starts_and_every_model_is_not_found(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    folder = tmp_path / "deployments"
    folder.mkdir()
    port, admin = free_port(), free_port()
    env = {"REDIS_URL": redis_server.url, "TIFFIN_CONFIG": str(folder), "TIFFIN_PLAIN_HTTP": "1",
           "TIFFIN_PORT": str(port), "TIFFIN_ADMIN_PORT": str(admin), "TIFFIN_DRAIN_TIMEOUT_S": "5"}  # fmt: skip
    proc = Proc.module("interceptor-empty", "interceptor", env, tmp_path)
    try:
        proc.wait_http(f"http://127.0.0.1:{admin}/readyz")
        body = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}).encode()
        status, answer = _call(f"http://127.0.0.1:{port}/v1/chat/completions", body)
        assert status == 404
        error = answer["error"]
        assert isinstance(error, dict)
        assert error["code"] == "model_not_found"
        assert "'smollm2'" in error["message"]
        status, listed = _call(f"http://127.0.0.1:{port}/v1/models")
        assert (status, listed) == (200, {"object": "list", "data": []})
        assert "no_deployments" in proc.log()
    finally:
        code = proc.stop()
    assert code == 0, proc.log()[-4000:]


def test_a_missing_folder_is_still_refused(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    env = {"REDIS_URL": redis_server.url, "TIFFIN_CONFIG": str(tmp_path / "absent"), "TIFFIN_PLAIN_HTTP": "1",
           "TIFFIN_PORT": str(free_port()), "TIFFIN_ADMIN_PORT": str(free_port())}  # fmt: skip
    proc = Proc.module("interceptor-absent", "interceptor", env, tmp_path)
    proc.popen.wait(timeout=60)
    assert proc.stop() != 0
    assert "no such file or folder" in proc.log()
