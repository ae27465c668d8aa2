"""HTTPS at the edge, as a user meets it: `tiffin up` with its local CA, with certificates of one's own, with
plain HTTP asked for, and an interceptor that refuses to start without a TLS decision."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest
from cryptography import x509

from tests.e2e.conftest import write_deployment
from tests.e2e.up import Up
from tests.procs import ROOT
from tests.tiffin.certs import Authority, write_pair

LOCAL_CA_FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem")


def printed(up: Up, marker: str) -> str:
    """The text of the one line `tiffin up` printed containing `marker` (without the `tiffin:` prefix)."""
    [line] = [line for line in up.proc.log().splitlines() if marker in line]
    return line.split("tiffin:", 1)[1].strip()


def openai_client_as_printed(line: str, base_url: str) -> openai.OpenAI:
    """Build the client exactly as `tiffin up` printed it: its imports, then its `http_client=` expression."""
    call, _, imports = line.partition("   (")
    namespace: dict[str, object] = {}
    exec(imports.rstrip(")"), namespace)  # the printed imports: "import ssl; from openai import ..."
    tree = ast.parse(call, mode="eval").body
    assert isinstance(tree, ast.Call) and ast.unparse(tree.func) == "OpenAI"
    [keyword] = [k for k in tree.keywords if k.arg == "http_client"]
    http_client = eval(compile(ast.Expression(keyword.value), "<printed>", "eval"), namespace)
    client_class = namespace["OpenAI"]
    assert client_class is openai.OpenAI
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30, http_client=http_client)


def test_up_serves_https_with_its_local_ca_and_clients_verify_it_as_printed(tmp_path: Path) -> None:
    config = write_deployment(tmp_path, "echo")
    state = tmp_path / "state"
    up = Up([config], state)
    try:
        up.wait_for_line("ready: echo", timeout_s=120)
        endpoint = f"https://127.0.0.1:{up.port}/v1"
        assert f"interceptor {endpoint}" in up.proc.log()
        assert f"ready: echo at {endpoint}" in up.proc.log()
        ca_line = printed(up, "tls         local CA")
        assert "new: made once, reused on later runs" in ca_line
        match = re.search(r"local CA (\S+) \(", ca_line)
        assert match and Path(match.group(1)) == up.ca

        # curl, exactly as printed.
        # As a shell runs it (the key comes from the environment; this deployment is open, so any value does).
        env = {**os.environ, "TIFFIN_API_KEY": "any"}
        curl = subprocess.run(["bash", "-c", printed(up, "/v1/models")], capture_output=True, text=True, timeout=60,
                              env=env)  # fmt: skip
        assert curl.returncode == 0, curl.stderr
        assert [m["id"] for m in json.loads(curl.stdout)["data"]] == ["echo"]

        # The openai client, built with the printed http_client, certificate verification on.
        with openai_client_as_printed(printed(up, "OpenAI(..., http_client="), endpoint) as client:
            assert client.completions.create(model="echo", prompt="over tls").choices[0].text == "echo: over tls"

        # SSL_CERT_FILE=... python your_client.py, as printed: a client with default settings trusts the CA.
        your_client = tmp_path / "your_client.py"
        your_client.write_text(
            "from openai import OpenAI\n"
            f"client = OpenAI(base_url={endpoint!r}, api_key='unused', max_retries=0, timeout=30)\n"
            "print(client.completions.create(model='echo', prompt='by env').choices[0].text)\n"
        )
        words = shlex.split(printed(up, "SSL_CERT_FILE=").split("   (")[0])
        assert words[1:] == ["python", "your_client.py"]
        name, _, value = words[0].partition("=")
        run = subprocess.run([sys.executable, "your_client.py"], cwd=tmp_path, env={**os.environ, name: value},
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.stdout.strip() == "echo: by env", run.stderr

        # Without trusting the CA, verification fails: nothing falls back to an unverified connection.
        with (
            openai.OpenAI(base_url=endpoint, api_key="unused", max_retries=0, timeout=30) as stranger,
            pytest.raises(openai.APIConnectionError) as refused,
        ):
            stranger.models.list()
        assert "certificate verify failed" in str(refused.value.__cause__)
    finally:
        assert up.proc.stop(timeout_s=90) == 0
    made = {name: (state / "tls" / name).read_bytes() for name in LOCAL_CA_FILES}

    # A second `tiffin up` on the same state folder reuses the CA and the server certificate, byte for byte.
    again = Up([config], state, name="tiffin-up-again")
    try:
        again.wait_for_line("ready: echo", timeout_s=120)
        assert "(reused; made on the first run)" in printed(again, "tls         local CA")
        assert {name: (state / "tls" / name).read_bytes() for name in LOCAL_CA_FILES} == made
        with openai.OpenAI(base_url=again.url + "/v1", api_key="unused", max_retries=0, timeout=30,
                           http_client=openai.DefaultHttpxClient(verify=again.ssl_context())) as client:  # fmt: skip
            assert client.completions.create(model="echo", prompt="again").choices[0].text == "echo: again"
    finally:
        assert again.proc.stop(timeout_s=90) == 0


def test_up_with_plain_http_warns_and_serves_http(tmp_path: Path) -> None:
    up = Up([write_deployment(tmp_path, "echo")], tmp_path / "state", args=["--plain-http"])
    try:
        up.wait_for_line("ready: echo", timeout_s=120)
        warning = printed(up, "WARNING     plain HTTP")
        assert "plain HTTP" in warning and "unencrypted" in warning and "TLS-terminating proxy" in warning
        assert f"interceptor http://127.0.0.1:{up.port}/v1" in up.proc.log()
        with urllib.request.urlopen(f"http://127.0.0.1:{up.port}/v1/models", timeout=30) as resp:
            assert [m["id"] for m in json.load(resp)["data"]] == ["echo"]
    finally:
        assert up.proc.stop(timeout_s=90) == 0
    assert not (tmp_path / "state" / "tls").exists()


def peer_serial(port: int, client: ssl.SSLContext, server_name: str) -> int:
    """A real handshake to the interceptor: the serial number of the certificate it presented."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, client.wrap_socket(
        raw, server_hostname=server_name
    ) as tls:  # fmt: skip
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


def test_up_serves_its_own_certificates_by_sni_and_picks_up_a_renewal(tmp_path: Path) -> None:
    ca = Authority.make()
    (certs := tmp_path / "certs").mkdir()
    a, b = ca.issue(["a.test", "127.0.0.1"]), ca.issue(["b.test"])
    pair_a, pair_b = write_pair(certs, "a", *a), write_pair(certs, "b", *b)
    args = ["--tls-cert", str(pair_a.cert_file), "--tls-key", str(pair_a.key_file),
            "--tls-cert", str(pair_b.cert_file), "--tls-key", str(pair_b.key_file)]  # fmt: skip
    up = Up([write_deployment(tmp_path, "echo")], tmp_path / "state", env={"TIFFIN_TLS_RELOAD_S": "0.2"}, args=args)
    try:
        up.wait_for_line("ready: echo", timeout_s=120)
        assert f"certificate {pair_b.cert_file} for b.test" in up.proc.log()
        assert not (tmp_path / "state" / "tls").exists()  # no local CA when certificates are given
        client = ca.trust()
        assert peer_serial(up.port, client, "a.test") == a[0].serial_number
        assert peer_serial(up.port, client, "b.test") == b[0].serial_number
        with urllib.request.urlopen(f"https://127.0.0.1:{up.port}/v1/models", timeout=30, context=client) as resp:
            assert resp.status == 200

        renewed = ca.issue(["b.test"])
        write_pair(certs, "b", *renewed)
        deadline = time.monotonic() + 60
        while peer_serial(up.port, client, "b.test") != renewed[0].serial_number:
            assert time.monotonic() < deadline, "the renewed certificate was never served"
            time.sleep(0.1)  # only handshakes show which certificate is served
        assert peer_serial(up.port, client, "a.test") == a[0].serial_number
    finally:
        assert up.proc.stop(timeout_s=90) == 0


def test_up_with_an_unusable_certificate_names_it_and_starts_nothing(tmp_path: Path) -> None:
    config = write_deployment(tmp_path, "echo")
    missing = tmp_path / "missing.pem"
    for flags, expected in [
        (["--tls-cert", str(missing), "--tls-key", str(tmp_path / "key.pem")], f"{missing}: cannot read"),
        (["--tls-cert", str(missing)], "1 certificate file(s) and 0 key file(s)"),
        (["--plain-http", "--tls-cert", str(missing), "--tls-key", str(missing)], "exclude each other"),
    ]:
        result = subprocess.run([sys.executable, "-m", "tiffin", "up", str(config), "--state-dir",
                                 str(tmp_path / "state"), *flags], capture_output=True, text=True, cwd=ROOT,
                                timeout=60)  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "nothing was started" in result.stderr and expected in result.stderr, result.stderr
        assert not (tmp_path / "state").exists()


def test_the_interceptor_refuses_to_start_without_a_tls_decision_or_with_a_bad_certificate(tmp_path: Path) -> None:
    config = write_deployment(tmp_path, "echo")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIFFIN_")}
    base = {**clean, "PYTHONPATH": str(ROOT), "TIFFIN_CONFIG": str(config), "REDIS_URL": "redis://127.0.0.1:9/0"}
    neither = subprocess.run([sys.executable, "-m", "interceptor"], env=base, capture_output=True, text=True,
                             cwd=ROOT, timeout=60)  # fmt: skip
    assert neither.returncode == 1
    assert "TIFFIN_TLS_CERT_FILES" in neither.stderr and "TIFFIN_PLAIN_HTTP=1" in neither.stderr

    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    env = {**base, "TIFFIN_TLS_CERT_FILES": str(broken), "TIFFIN_TLS_KEY_FILES": str(broken)}
    bad = subprocess.run([sys.executable, "-m", "interceptor"], env=env, capture_output=True, text=True, cwd=ROOT,
                         timeout=60)  # fmt: skip
    assert bad.returncode == 1
    assert re.search(rf"invalid TLS configuration, nothing was started: {re.escape(str(broken))}: ", bad.stderr)
    assert "listening" not in bad.stdout
