"""The served certificates on /metrics: expiry time and failed renewals, read from the store at scrape time."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from interceptor.tls_metrics import register
from tests.tiffin.certs import Authority, replace, write_pair
from tiffin.tls import CertificateStore


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    text = generate_latest(registry).decode()
    return {(s.name, s.labels["cert_file"]): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_expiry_and_failed_renewals_are_exposed_per_certificate(tmp_path: Path) -> None:
    ca = Authority.make()
    cert, key = ca.issue(["localhost"], days=20)
    pair = write_pair(tmp_path, "site", cert, key)
    store = CertificateStore.load([pair])
    registry = CollectorRegistry()
    register(store, registry)
    name = str(pair.cert_file)
    assert samples(registry) == {
        ("tiffin_tls_certificate_expiry_timestamp_seconds", name): cert.not_valid_after_utc.timestamp(),
        ("tiffin_tls_reload_failures_total", name): 0.0,
    }

    replace(pair.cert_file, b"-----BEGIN CERTIFICATE-----\nhalf")
    store.refresh()
    assert samples(registry)[("tiffin_tls_reload_failures_total", name)] == 1.0

    renewed, renewed_key = ca.issue(["localhost"], days=90)
    write_pair(tmp_path, "site", renewed, renewed_key)
    assert store.refresh() == 1
    expiry = samples(registry)[("tiffin_tls_certificate_expiry_timestamp_seconds", name)]
    assert expiry == renewed.not_valid_after_utc.timestamp()
