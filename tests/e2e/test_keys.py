"""API keys as a user meets them: `tiffin up` shows a first key once, `tiffin keys` works with and without tiffin
running, a running tiffin honours new and revoked keys, and no key is ever written to a log or to Redis's files."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai

from tests.e2e.conftest import write_deployment
from tests.e2e.up import Up
from tests.procs import ROOT
from tiffin.local.redis_server import SERVER_FILE

KEY = re.compile(r"tfn_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


def keys_cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tiffin", "keys", *args, "--state-dir", str(state)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip


def client(up: Up, key: str) -> openai.OpenAI:
    """An openai client verifying tiffin's certificate against its local CA (close it after use)."""
    return openai.OpenAI(base_url=up.url + "/v1", api_key=key, max_retries=0, timeout=30,
                         http_client=openai.DefaultHttpxClient(verify=up.ssl_context()))  # fmt: skip


def answers(up: Up, key: str) -> bool:
    """Whether a completion with `key` is served (False on 401)."""
    with client(up, key) as openai_client:
        try:
            return openai_client.completions.create(model="echo", prompt="hi").choices[0].text == "echo: hi"
        except openai.AuthenticationError:
            return False


def eventually(what: str, check: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)  # another process's state; no event to await


def send_raw(port: int, data: bytes) -> bytes:
    """Send bytes as they are and return the start of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        return sock.recv(1024)


def files_holding(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def secret_of(key: str) -> str:
    return key.split("_", 2)[2]


def test_keys_cli_without_tiffin_running_uses_the_state_folders_redis_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"

    made = keys_cli(state, "create", "echo", "--name", "ci", "--concurrency", "2")

    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert KEY.fullmatch(key)  # stdout holds the key alone: KEY=$(tiffin keys create echo) works
    key_id = key.split("_")[1]
    assert f"created API key {key_id} ('ci') for echo" in made.stderr
    assert "WARNING: no deployment named 'echo' has run with this state yet" in made.stderr
    assert "shown only now" in made.stderr
    assert f"{state} held no tiffin state yet" in made.stderr
    assert not (state / "redis" / SERVER_FILE).exists()  # the Redis it started is stopped again
    assert subprocess.run(["pgrep", "-f", str(state)], capture_output=True).stdout == b""

    listed = keys_cli(state, "list")
    assert listed.returncode == 0
    assert re.search(rf"^{key_id}\s+echo\s+ci\s+\S+ \S+\s+-\s+concurrency 2$", listed.stdout, re.M), listed.stdout
    [as_json] = json.loads(keys_cli(state, "list", "--json").stdout)
    assert as_json["id"] == key_id and as_json["limits"]["concurrency"] == 2
    assert secret_of(key) not in listed.stdout + json.dumps(as_json)
    assert files_holding(state, secret_of(key)) == []  # Redis's append-only file holds the hash only
    assert files_holding(state, key_id)  # ... but does hold the key

    revoked = keys_cli(state, "revoke", key_id)
    assert revoked.returncode == 0 and f"revoked {key_id}" in revoked.stderr
    again = keys_cli(state, "revoke", key_id)
    assert again.returncode == 1 and "no API key with id" in again.stderr
    assert "no API keys" in keys_cli(state, "list").stderr
    # A mistyped state folder is not silently made for a listing or a revocation.
    for args in (["list"], ["revoke", key_id]):
        typo = keys_cli(tmp_path / "stat", *args)
        assert typo.returncode == 1 and "no tiffin state in" in typo.stderr
    assert not (tmp_path / "stat").exists()


def test_keys_create_refuses_bad_names_and_checks_against_a_config(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_deployment(tmp_path, "echo", require_api_key=True)

    bad = keys_cli(state, "create", "Not_A_Name")
    assert bad.returncode == 2 and "not a deployment name" in bad.stderr and bad.stdout == ""
    unknown = keys_cli(state, "create", "ehco", "--config", str(config))
    assert unknown.returncode == 2 and "no deployment named ehco" in unknown.stderr and unknown.stdout == ""
    known = keys_cli(state, "create", "echo", "--config", str(config))
    assert known.returncode == 0 and KEY.fullmatch(known.stdout.strip())
    assert "WARNING" not in known.stderr


def test_tiffin_up_shows_a_first_key_once_and_honours_keys_made_and_revoked_while_it_runs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_deployment(tmp_path, "echo", require_api_key=True)
    up = Up([config], state)
    try:
        up.wait_for_line("ready: echo", timeout_s=120)
        first = up.api_key("echo")
        # The printed try: line works as printed, in a shell.
        try_line = up.wait_for_line("try:   curl", timeout_s=10).split("try:", 1)[1]
        assert f'-H "Authorization: Bearer {first}"' in try_line
        tried = subprocess.run(["bash", "-c", try_line], capture_output=True, text=True, timeout=60)
        assert json.loads(tried.stdout)["choices"][0]["message"]["content"] == "echo: Hello!", tried.stderr
        assert answers(up, first)
        assert not answers(up, "unused")
        server = json.loads((state / "redis" / SERVER_FILE).read_text())

        made = keys_cli(state, "create", "echo", "--name", "second")
        assert made.returncode == 0, made.stderr
        assert "WARNING" not in made.stderr  # the running tiffin has served echo
        second = made.stdout.strip()
        eventually("the new key is served", lambda: answers(up, second))
        assert json.loads((state / "redis" / SERVER_FILE).read_text()) == server  # it used the running Redis

        listed = keys_cli(state, "list").stdout
        first_id, second_id = first.split("_")[1], second.split("_")[1]
        [first_row] = [line for line in listed.splitlines() if line.startswith(first_id)]
        assert "first run of tiffin up" in first_row and re.search(r"\d\dZ\s+\d{4}-", first_row)  # last used
        assert keys_cli(state, "revoke", second_id).returncode == 0
        eventually("the revoked key is refused", lambda: not answers(up, second))
        assert answers(up, first)
        # Broken requests quoting the key, which HTTP parsers like to repeat in their errors.
        for raw in (f"Authorization: Bearer {first}\x01broken", f"Authorization: Bearer {first}{'x' * 9000}",
                    f"Authorization : Bearer {first}", f"X-Other: {first}"):  # fmt: skip
            send_raw(up.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + raw.encode() +
                     b"\r\nContent-Length: 2\r\n\r\n{}")  # fmt: skip
    finally:
        assert up.proc.stop(timeout_s=90) == 0
    first_output = up.proc.log()

    # A second run on the same state: no new key, no key printed, and the first key still opens echo.
    up.proc.log_path.rename(tmp_path / "first-run.log")
    again = Up([config], state)
    try:
        again.wait_for_line("ready: echo", timeout_s=120)
        out = again.proc.log()
        assert "shown only now" not in out and KEY.search(out) is None
        assert f"echo: 1 API key(s) exist; `tiffin keys create echo --state-dir {state}`" in out
        # Its try: line takes the key from the environment, as the user keeps it.
        try_line = again.wait_for_line("try:   curl", timeout_s=10).split("try:", 1)[1]
        assert '-H "Authorization: Bearer $TIFFIN_API_KEY"' in try_line
        tried = subprocess.run(["bash", "-c", try_line], capture_output=True, text=True, timeout=60,
                               env={**os.environ, "TIFFIN_API_KEY": first})  # fmt: skip
        assert json.loads(tried.stdout)["choices"][0]["message"]["content"] == "echo: Hello!", tried.stderr
        assert answers(again, first)
    finally:
        assert again.proc.stop(timeout_s=90) == 0

    # The key was shown on the terminal once; no log file and no Redis file of the stack holds it.
    assert first_output.count(first) == 2  # the key line and the ready-to-paste curl line
    for key in (first, second):
        assert files_holding(state, secret_of(key)) == []
    request_lines = [json.loads(line) for line in (state / "logs" / "interceptor.log").read_text().splitlines()
                     if '"event": "request"' in line]  # fmt: skip
    assert {line.get("key_id") for line in request_lines} >= {first_id, second_id}


def test_an_open_deployment_is_announced_as_open(tmp_path: Path) -> None:
    up = Up([write_deployment(tmp_path, "echo")], tmp_path / "state")
    try:
        up.wait_for_line("ready: echo", timeout_s=120)
        out = up.proc.log()
        assert f"WARNING: echo is open (auth.require_api_key: false): anyone who can reach 127.0.0.1:{up.port}" in out
        assert KEY.search(out) is None
        assert answers(up, "anything")
    finally:
        assert up.proc.stop(timeout_s=90) == 0
