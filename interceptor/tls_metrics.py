"""The served certificates on /metrics: when each expires, and how many renewals failed to load."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from interceptor import metrics
from tiffin.tls import CertificateStore


class CertificateCollector:
    """Read at scrape time from the store, so a renewal shows at once (alert on expiry minus now)."""

    def __init__(self, store: CertificateStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "tiffin_tls_certificate_expiry_timestamp_seconds",
            "When each served certificate expires (Unix time), by certificate file.", labels=["cert_file"],
        )  # fmt: skip
        failures = CounterMetricFamily(
            "tiffin_tls_reload_failures",
            "Renewed certificate files that could not be loaded (the previous certificate kept serving).",
            labels=["cert_file"],
        )
        for pair in self.store.pairs:
            name = str(pair.pair.cert_file)
            expiry.add_metric([name], pair.not_after.timestamp())
            failures.add_metric([name], self.store.reload_failures.get(pair.pair.cert_file, 0))
        yield expiry
        yield failures


def register(store: CertificateStore, registry: CollectorRegistry = metrics.REGISTRY) -> None:
    """Expose the store's certificates on the interceptor's registry."""
    registry.register(CertificateCollector(store))
