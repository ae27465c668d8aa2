"""The interceptor's certificates: several pairs, SNI to choose among them, renewed files picked up live."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import Sequence
from pathlib import Path

import structlog

from tiffin.contracts.exceptions import TLSError
from tiffin.tls.pair import CertPair, LoadedPair, digest_of, load_pair, read_pair, server_context

log = structlog.get_logger("tiffin.tls")

EXPIRY_WARNING = dt.timedelta(days=14)


class CertificateStore:
    """Serves each TLS connection the certificate that covers the name it asked for (SNI).

    `context` is the one the listener uses; its SNI callback hands every handshake the current context of
    the chosen pair, so a renewal reaches new connections without touching the listener.
    """

    def __init__(self, loaded: Sequence[LoadedPair]) -> None:
        if not loaded:
            raise TLSError("no certificate configured")
        self._pairs = list(loaded)
        self._failed: dict[int, str] = {}
        self.reload_failures: dict[Path, int] = {}
        """Per certificate file: renewed versions that could not be loaded (each counted once)."""
        # The listener's context holds no certificate: the callback switches every handshake (SNI or none) to
        # the chosen pair's context before OpenSSL picks a certificate.
        self.context = server_context()
        self.context.sni_callback = self._on_client_hello

    @classmethod
    def load(cls, pairs: Sequence[CertPair]) -> CertificateStore:
        """Load every pair or fail with a `TLSError` naming the file: a bad start configuration starts nothing."""
        loaded = [load_pair(p) for p in pairs]
        for item in loaded:
            _note(item, "tls_certificate")
            _warn_if_readable_by_others(item.pair)
        return cls(loaded)

    @property
    def pairs(self) -> list[LoadedPair]:
        return list(self._pairs)

    def choose(self, server_name: str | None) -> LoadedPair:
        """The first pair covering `server_name` exactly, else the first covering it by a wildcard, else the
        first pair (also for clients that send no SNI)."""
        pairs = self._pairs
        if server_name:
            scored = [(p.match(server_name), -i, p) for i, p in enumerate(pairs)]
            best = max(scored, key=lambda s: (s[0], s[1]))
            if best[0] > 0:
                return best[2]
        return pairs[0]

    def _on_client_hello(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
        conn.context = self.choose(server_name).context

    def refresh(self) -> int:
        """Re-read every pair's files; load the ones whose bytes changed. A pair that fails to load keeps its
        previous certificate (and warns once per broken version). Returns how many pairs were replaced."""
        pairs, replaced = list(self._pairs), 0
        for index, current in enumerate(pairs):
            try:
                seen = digest_of(*read_pair(current.pair))
            except TLSError as exc:
                self._warn_once(index, f"unreadable:{exc}", current, exc)
                continue
            if seen == current.digest:
                self._failed.pop(index, None)
                continue
            if self._failed.get(index) == seen:
                continue  # the same broken files as last time: already said so
            try:
                renewed = load_pair(current.pair)
            except TLSError as exc:
                self._warn_once(index, seen, current, exc)
                continue
            self._failed.pop(index, None)
            pairs[index] = renewed
            replaced += 1
            _note(renewed, "tls_reloaded")
        if replaced:
            self._pairs = pairs  # one assignment: a handshake sees the old list or the new one
        return replaced

    def _warn_once(self, index: int, version: str, current: LoadedPair, exc: TLSError) -> None:
        if self._failed.get(index) == version:
            return
        self._failed[index] = version
        cert_file = current.pair.cert_file
        self.reload_failures[cert_file] = self.reload_failures.get(cert_file, 0) + 1
        log.warning(
            "tls_reload_failed", error=str(exc), cert_file=str(current.pair.cert_file),
            keeping_serial=f"{current.serial:x}", keeping_not_after=current.not_after.isoformat(),
        )  # fmt: skip

    async def watch(self, every_s: float, stop: asyncio.Event) -> None:
        """Every `every_s` until `stop`, pick up renewed files (file reads and parsing run off the event loop)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            if stop.is_set():
                return
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:  # a renewal must never take the edge down; the old certificates keep serving
                log.exception("tls_refresh_error")


def _warn_if_readable_by_others(pair: CertPair) -> None:
    with contextlib.suppress(OSError):  # gone since it was read: the next refresh says so
        mode = pair.key_file.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("tls_key_readable_by_others", key_file=str(pair.key_file), mode=f"{mode:o}",
                        advice="make the key file readable by its owner only (chmod 600)")  # fmt: skip


def _note(item: LoadedPair, event: str) -> None:
    left = item.not_after - dt.datetime.now(dt.UTC)
    fields = {"cert_file": str(item.pair.cert_file), "hosts": item.hosts, "serial": f"{item.serial:x}",
              "not_after": item.not_after.isoformat(), "days_left": left.days}  # fmt: skip
    if left <= EXPIRY_WARNING:
        log.warning(f"{event}_expiring" if left.total_seconds() > 0 else f"{event}_expired", **fields)
    else:
        log.info(event, **fields)
