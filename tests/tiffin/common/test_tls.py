"""The certificate store: real TLS handshakes to a real listener, SNI, live renewal, refusals, bad files."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.tiffin.certs import Authority, cert_pem, handshake, key_pem, leaf, listening, replace, unverified, write_pair
from tiffin.contracts.exceptions import TLSError
from tiffin.tls import CertificateStore, CertPair, load_pair, pairs_from

DEADLINE_S = 30.0


async def test_sni_picks_the_certificate_that_covers_the_requested_host(tmp_path: Path) -> None:
    ca = Authority.make()
    first = ca.issue(["a.example", "*.wild.example"])
    second = ca.issue(["b.example", "10.1.2.3"])
    exact = ca.issue(["api.wild.example"])
    store = CertificateStore.load([
        write_pair(tmp_path, "a", *first), write_pair(tmp_path, "b", *second), write_pair(tmp_path, "api", *exact),
    ])  # fmt: skip
    client = ca.trust()
    async with listening(store.context) as port:
        assert (await handshake(port, client, "a.example")).serial == first[0].serial_number
        assert (await handshake(port, client, "B.Example")).serial == second[0].serial_number
        assert (await handshake(port, client, "x.wild.example")).serial == first[0].serial_number
        # An exact name beats a wildcard that comes earlier.
        assert (await handshake(port, client, "api.wild.example")).serial == exact[0].serial_number
        # A name no pair covers, and a client sending no SNI at all, get the first pair.
        assert (await handshake(port, unverified(), "c.example")).serial == first[0].serial_number
        assert (await handshake(port, unverified(), None)).serial == first[0].serial_number
    # A wildcard stands for one whole label only, and IP addresses match IP entries only.
    assert store.choose("deep.x.wild.example").serial == first[0].serial_number
    assert store.choose("10.1.2.3").serial == second[0].serial_number


async def test_the_listener_speaks_tls_1_2_and_1_3_with_alpn_http_1_1(tmp_path: Path) -> None:
    ca = Authority.make()
    store = CertificateStore.load([write_pair(tmp_path, "a", *ca.issue(["localhost"]))])
    async with listening(store.context) as port:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            client = ca.trust()
            client.maximum_version = version
            client.set_alpn_protocols(["h2", "http/1.1"])
            seen = await handshake(port, client, "localhost")
            assert (seen.version, seen.alpn) == (version.name.replace("_", "."), "http/1.1")


def _old_client(maximum: ssl.TLSVersion) -> ssl.SSLContext:
    """A client able to speak TLS 1.0/1.1 (OpenSSL allows them only at security level 0)."""
    context = unverified()
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = maximum
    return context


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls_1_1_and_below_are_refused(tmp_path: Path) -> None:
    ca = Authority.make()
    pair = write_pair(tmp_path, "a", *ca.issue(["localhost"]))
    # Control: a server that allows old versions completes the very same client's TLS 1.1 handshake.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.set_ciphers("ALL:@SECLEVEL=0")
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.load_cert_chain(pair.cert_file, pair.key_file)
    async with listening(permissive) as port:
        assert (await handshake(port, _old_client(ssl.TLSVersion.TLSv1_1), None)).version == "TLSv1.1"

    store = CertificateStore.load([pair])
    async with listening(store.context) as port:
        for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                await handshake(port, _old_client(old), None)
        assert (await handshake(port, _old_client(ssl.TLSVersion.TLSv1_2), None)).version == "TLSv1.2"


async def _served_serial(port: int, client: ssl.SSLContext, name: str) -> int:
    return (await handshake(port, client, name)).serial


async def test_a_renewed_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    ca = Authority.make()
    old = ca.issue(["localhost"])
    pair = write_pair(tmp_path, "site", *old)
    store = CertificateStore.load([pair])
    stop = asyncio.Event()
    watcher = asyncio.create_task(store.watch(0.05, stop))
    try:
        async with listening(store.context) as port:
            client = ca.trust()
            assert await _served_serial(port, client, "localhost") == old[0].serial_number
            new = ca.issue(["localhost"])
            write_pair(tmp_path, "site", *new)  # key first, then certificate, each replaced atomically
            async with asyncio.timeout(DEADLINE_S):
                while await _served_serial(port, client, "localhost") != new[0].serial_number:
                    await asyncio.sleep(0.05)  # polling handshakes: the renewal is only observable this way
    finally:
        stop.set()
        await watcher


async def test_a_renewal_that_fails_to_load_keeps_serving_the_previous_certificate(tmp_path: Path) -> None:
    ca = Authority.make()
    old = ca.issue(["localhost"])
    pair = write_pair(tmp_path, "site", *old)
    store = CertificateStore.load([pair])
    client = ca.trust()
    new_cert, new_key = ca.issue(["localhost"])
    broken = {
        "half-written certificate": lambda: replace(pair.cert_file, cert_pem(new_cert)[:200]),
        "key not matching": lambda: replace(pair.key_file, key_pem(ca.issue(["localhost"])[1])),
        "empty certificate": lambda: replace(pair.cert_file, b""),
        "missing key": lambda: pair.key_file.unlink(),
    }
    async with listening(store.context) as port:
        for what, breakage in broken.items():
            write_pair(tmp_path, "site", *old)
            store.refresh()
            breakage()
            with capture_logs() as logs:
                assert store.refresh() == 0, what
                assert store.refresh() == 0, what  # still broken: no second warning for the same files
            assert [e["event"] for e in logs] == ["tls_reload_failed"], what
            assert str(pair.cert_file) in logs[0]["cert_file"]
            assert await _served_serial(port, client, "localhost") == old[0].serial_number, what
        # Once the files are whole again, the renewal is served.
        write_pair(tmp_path, "site", new_cert, new_key)
        with capture_logs() as logs:
            assert store.refresh() == 1
        assert [e["event"] for e in logs] == ["tls_reloaded"]
        assert await _served_serial(port, client, "localhost") == new_cert.serial_number


def _pair_with(tmp_path: Path, cert: bytes, key: bytes) -> CertPair:
    pair = CertPair(tmp_path / "cert.pem", tmp_path / "key.pem")
    pair.cert_file.write_bytes(cert)
    pair.key_file.write_bytes(key)
    return pair


def test_a_bad_start_configuration_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    ca = Authority.make()
    cert, key = ca.issue(["localhost"])
    other_key = ca.issue(["localhost"])[1]
    good_cert, good_key = cert_pem(cert), key_pem(key)
    cases = {
        "cannot read the certificate file": (tmp_path / "absent.pem", None, None),
        "no PEM certificate in it": (None, b"not a certificate", good_key),
        "not a valid PEM certificate chain": (
            None,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            good_key,
        ),
        "no PEM private key in it": (None, good_cert, b"garbage"),
        "does not belong to the certificate": (None, good_cert, key_pem(other_key)),
        "the private key is encrypted": (None, good_cert, key_pem(key, password=b"secret")),
        "must come first": (None, ca.pem() + good_cert, good_key),
    }
    for message, (path, cert_bytes, key_bytes) in cases.items():
        if path is not None:
            pair = CertPair(path, tmp_path / "key.pem")
            named = path
        else:
            assert cert_bytes is not None and key_bytes is not None
            pair = _pair_with(tmp_path, cert_bytes, key_bytes)
            named = pair.key_file if "key" in message or "belong" in message else pair.cert_file
        with pytest.raises(TLSError) as caught:
            CertificateStore.load([pair])
        assert message in str(caught.value), (message, str(caught.value))
        assert str(named) in str(caught.value), (message, str(caught.value))
    with pytest.raises(TLSError, match="2 certificate file"):
        pairs_from([tmp_path / "a.pem", tmp_path / "b.pem"], [tmp_path / "a-key.pem"], "TIFFIN_TLS_CERT_FILES")


def test_a_chain_with_an_intermediate_loads_leaf_first(tmp_path: Path) -> None:
    root = Authority.make("root")
    intermediate_cert, intermediate_key = root.issue(["intermediate"])
    cert, key = leaf(intermediate_cert, intermediate_key, ["site.example"])
    loaded = load_pair(write_pair(tmp_path, "chain", cert, key, intermediate_cert))
    assert loaded.hosts == ["site.example"]
    assert loaded.serial == cert.serial_number


def test_a_key_readable_by_others_is_warned_about(tmp_path: Path) -> None:
    pair = write_pair(tmp_path, "site", *Authority.make().issue(["localhost"]))
    pair.key_file.chmod(0o644)
    with capture_logs() as logs:
        CertificateStore.load([pair])
    assert [e["mode"] for e in logs if e["event"] == "tls_key_readable_by_others"] == ["644"]
    pair.key_file.chmod(0o600)
    with capture_logs() as logs:
        CertificateStore.load([pair])
    assert [e["event"] for e in logs] == ["tls_certificate"]
