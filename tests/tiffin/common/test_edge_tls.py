"""How `tiffin up` decides its public listener's TLS: flags, then environment, else the local CA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiffin.certs import Authority, write_pair
from tiffin.common.addresses import url_host
from tiffin.contracts.exceptions import TLSError
from tiffin.tls.edge import plan_edge_tls


@pytest.fixture(autouse=True)
def no_tls_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TIFFIN_TLS_CERT_FILES", "TIFFIN_TLS_KEY_FILES", "TIFFIN_PLAIN_HTTP"):
        monkeypatch.delenv(name, raising=False)


def test_url_hosts_are_what_a_client_can_connect_to() -> None:
    assert url_host("127.0.0.1") == "127.0.0.1"
    assert url_host("0.0.0.0") == url_host("::") == "127.0.0.1"
    assert url_host("::1") == url_host("[::1]") == "[::1]"
    assert url_host("api.example") == "api.example"


def test_without_certificates_the_local_ca_is_used_and_explained(tmp_path: Path) -> None:
    plan = plan_edge_tls([], [], False, tmp_path / "state", "127.0.0.1")
    tls = tmp_path / "state" / "tls"
    assert plan.scheme == "https" and plan.ca_file == tls / "ca.pem"
    assert plan.env == {"TIFFIN_TLS_CERT_FILES": str(tls / "server.pem"),
                        "TIFFIN_TLS_KEY_FILES": str(tls / "server-key.pem"), "TIFFIN_PLAIN_HTTP": "0"}  # fmt: skip
    text = "\n".join(plan.notes)
    assert f'curl --cacert {tls / "ca.pem"} -H "Authorization: Bearer $TIFFIN_API_KEY" {{url}}/v1/models' in text
    assert f"SSL_CERT_FILE={tls / 'ca.pem'} python your_client.py" in text
    assert f'DefaultHttpxClient(verify=ssl.create_default_context(cafile="{tls / "ca.pem"}"))' in text
    assert plan.curl_flag() == f"--cacert {tls / 'ca.pem'} "


def test_paths_inside_the_current_folder_are_printed_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    plan = plan_edge_tls([], [], False, tmp_path / ".state", "localhost")
    assert plan.notes[0].startswith("tls         local CA .state/tls/ca.pem (new: made once")


def test_plain_http_only_when_asked_and_never_with_certificates(tmp_path: Path) -> None:
    plan = plan_edge_tls([], [], True, tmp_path / "state", "127.0.0.1")
    assert (plan.scheme, plan.env["TIFFIN_PLAIN_HTTP"], plan.ca_file) == ("http", "1", None)
    assert "unencrypted" in plan.notes[0]
    assert not (tmp_path / "state").exists()
    with pytest.raises(TLSError, match="exclude each other"):
        plan_edge_tls([tmp_path / "c.pem"], [tmp_path / "k.pem"], True, tmp_path / "state", "127.0.0.1")


def test_certificates_from_flags_or_environment_are_checked_and_passed_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = Authority.make()
    a, b = write_pair(tmp_path, "a", *ca.issue(["a.test"])), write_pair(tmp_path, "b", *ca.issue(["*.b.test"]))
    plan = plan_edge_tls([a.cert_file, b.cert_file], [a.key_file, b.key_file], False, tmp_path / "state", "0.0.0.0")
    assert plan.env["TIFFIN_TLS_CERT_FILES"] == f"{a.cert_file}{os.pathsep}{b.cert_file}"
    assert plan.env["TIFFIN_TLS_KEY_FILES"] == f"{a.key_file}{os.pathsep}{b.key_file}"
    assert plan.names == ["a.test", "*.b.test"] and plan.ca_file is None
    assert "(until " in plan.notes[0]
    assert not (tmp_path / "state").exists()  # no local CA when certificates are given

    monkeypatch.setenv("TIFFIN_TLS_CERT_FILES", str(b.cert_file))
    monkeypatch.setenv("TIFFIN_TLS_KEY_FILES", str(a.key_file))
    with pytest.raises(TLSError, match="does not belong to the certificate"):
        plan_edge_tls([], [], False, tmp_path / "state", "127.0.0.1")
    monkeypatch.setenv("TIFFIN_TLS_KEY_FILES", str(b.key_file))
    assert plan_edge_tls([], [], False, tmp_path / "state", "127.0.0.1").names == ["*.b.test"]


def test_a_certificate_close_to_expiry_is_pointed_out(tmp_path: Path) -> None:
    pair = write_pair(tmp_path, "soon", *Authority.make().issue(["soon.test"], days=5))
    [note] = plan_edge_tls([pair.cert_file], [pair.key_file], False, tmp_path / "state", "127.0.0.1").notes
    assert "EXPIRES in 4 days" in note or "EXPIRES in 5 days" in note


def test_a_state_folder_that_cannot_hold_the_local_ca_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file, not a folder")
    with pytest.raises(TLSError, match="cannot keep the local CA there"):
        plan_edge_tls([], [], False, tmp_path / "state", "127.0.0.1")
