"""TLS for the public edge: certificate pairs, the SNI-choosing store that picks up renewals, a local CA."""

from __future__ import annotations

from tiffin.tls.pair import CertPair, LoadedPair, load_pair, pairs_from, server_context
from tiffin.tls.store import CertificateStore

__all__ = ["CertPair", "CertificateStore", "LoadedPair", "load_pair", "pairs_from", "server_context"]
