"""`tiffin up` as a user runs it: what it prints, that it serves, that it stops everything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import openai

from tests.e2e.conftest import write_deployment
from tests.e2e.up import Up
from tests.procs import ROOT
from tiffin.common.redact import safe_url
from tiffin.local.redis_server import EmbeddedRedis, password_of


def test_up_serves_then_stops_every_process_on_sigterm(tmp_path: Path) -> None:
    config = write_deployment(tmp_path, "echo", require_api_key=True)
    up = Up([config], tmp_path / "state")
    try:
        up.wait_for_line("ready: echo", timeout_s=120)
        out = up.proc.log()
        assert f"interceptor https://127.0.0.1:{up.port}/v1" in out
        assert "redis       embedded" in out
        with openai.OpenAI(base_url=up.url + "/v1", api_key=up.api_key("echo"), max_retries=0, timeout=30,
                           http_client=openai.DefaultHttpxClient(verify=up.ssl_context())) as client:  # fmt: skip
            reply = client.completions.create(model="echo", prompt="from the cli")
        assert reply.choices[0].text == "echo: from the cli"
    finally:
        code = up.proc.stop(timeout_s=90)
    assert code == 0
    assert "stopped" in up.proc.log().splitlines()[-1]
    # Nothing outlives `tiffin up`: no component process still names this config.
    left = subprocess.run(["pgrep", "-f", str(config)], capture_output=True, text=True).stdout.split()
    assert left == []
    # What tiffin keeps (logs, Redis's data with prompts and answers, its password, private keys) is owner-only
    # (certificates are public, but sit in the owner-only state folder too), and the Redis password is in no log
    # and nothing printed.
    state = tmp_path / "state"
    password = password_of(state / "redis")
    assert state.stat().st_mode & 0o777 == 0o700
    for path in state.rglob("*"):
        if path.name not in ("ca.pem", "server.pem", "server.lock"):
            assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others: {oct(path.stat().st_mode)}"
        if path.is_file() and path.name not in ("password", "redis.conf"):
            assert password.encode() not in path.read_bytes(), path
    assert password not in up.proc.log()
    assert (tmp_path / "state" / "redis" / "appendonly.aof").exists()
    assert {p.name for p in (tmp_path / "state" / "logs").iterdir()} >= {"interceptor.log", "echo-runner-1.log"}


def test_up_with_a_bad_file_names_the_problem_and_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: ok\nmodel: smollm2\nlimits:\n  max_queue: -1\n")
    result = subprocess.run([sys.executable, "-m", "tiffin", "up", str(bad), "--state-dir", str(tmp_path / "state")],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert f"{bad}: limits.max_queue: Input should be greater than or equal to 1" in result.stderr
    assert "nothing was started" in result.stderr
    assert not (tmp_path / "state").exists()


def test_up_uses_an_external_redis_when_redis_url_is_set(tmp_path: Path) -> None:
    external = EmbeddedRedis(tmp_path / "external-redis")
    external.start()
    config = write_deployment(tmp_path, "echo", require_api_key=True)
    up = Up([config], tmp_path / "state", env={"REDIS_URL": external.url})
    try:
        up.wait_for_line("ready: echo", timeout_s=120)
        assert f"redis       external, {safe_url(external.url)}" in up.proc.log()
        assert external.password not in up.proc.log()
        with openai.OpenAI(base_url=up.url + "/v1", api_key=up.api_key("echo"), max_retries=0, timeout=30,
                           http_client=openai.DefaultHttpxClient(verify=up.ssl_context())) as client:  # fmt: skip
            assert client.completions.create(model="echo", prompt="elsewhere").choices[0].text == "echo: elsewhere"
    finally:
        assert up.proc.stop(timeout_s=90) == 0
        external.stop()
    assert not (tmp_path / "state" / "redis").exists()  # no embedded Redis was started
