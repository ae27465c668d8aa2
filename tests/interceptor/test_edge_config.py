"""The edge's settings from TIFFIN_* environment variables: documented defaults, and clear errors."""

from __future__ import annotations

import ipaddress

import pytest

from interceptor.config import EdgeSettings


def test_defaults_without_any_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TIFFIN_MAX_URL_BYTES", "TIFFIN_TRUSTED_PROXIES", "TIFFIN_HEADER_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    assert EdgeSettings.from_env() == EdgeSettings()


def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "TIFFIN_MAX_URL_BYTES": "2048", "TIFFIN_MAX_HEADER_BYTES": "4096", "TIFFIN_MAX_HEADERS": "50",
        "TIFFIN_HEADER_TIMEOUT_S": "5", "TIFFIN_BODY_TIMEOUT_S": "20", "TIFFIN_KEEPALIVE_TIMEOUT_S": "30",
        "TIFFIN_WRITE_TIMEOUT_S": "15", "TIFFIN_REPLY_BUFFER_BYTES": "262144", "TIFFIN_MAX_CONNECTIONS": "1000",
        "TIFFIN_MAX_CONNECTIONS_PER_CLIENT": "10", "TIFFIN_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.7 ::1",
    }  # fmt: skip
    for name, value in values.items():
        monkeypatch.setenv(name, value)

    settings = EdgeSettings.from_env()

    assert (settings.max_url_bytes, settings.max_header_bytes, settings.max_headers) == (2048, 4096, 50)
    assert (settings.header_timeout_s, settings.body_timeout_s, settings.keepalive_timeout_s) == (5, 20, 30)
    assert (settings.write_timeout_s, settings.reply_buffer_bytes) == (15, 262144)
    assert (settings.max_connections, settings.max_connections_per_client) == (1000, 10)
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.7/32"), ipaddress.ip_network("::1/128")
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value"),
    [("TIFFIN_TRUSTED_PROXIES", "10.0.0.0/8, not-an-address"), ("TIFFIN_HEADER_TIMEOUT_S", "0"),
     ("TIFFIN_MAX_URL_BYTES", "12"), ("TIFFIN_REPLY_BUFFER_BYTES", "lots")],
)  # fmt: skip
def test_a_bad_value_stops_the_start_with_its_name(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=name):
        EdgeSettings.from_env()
