"""The local CA of a first `tiffin up`: made once, reused byte for byte, re-issuing only the server certificate."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.tiffin.certs import handshake, leaf, listening, write_pair
from tiffin.tls import CertificateStore, CertPair
from tiffin.tls.edge import keep_local_tls_fresh
from tiffin.tls.localca import (
    CA_FILE,
    CA_KEY_FILE,
    CERT_FILE,
    KEY_FILE,
    LOOPBACK,
    ensure_local_tls,
    hosts_for,
    machine_names,
)

FILES = (CA_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in FILES}


def test_the_ca_is_made_once_and_reused_byte_for_byte(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "tls"
    first = ensure_local_tls(folder, hosts_for("127.0.0.1"))
    assert (first.ca_made, first.issued) == ("first run", "first run")
    made = snapshot(folder)
    second = ensure_local_tls(folder, hosts_for("127.0.0.1"))
    assert (second.ca_made, second.issued) == (None, None)
    assert snapshot(folder) == made
    # Keys are owner-only, and so is the folder.
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / CA_KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / KEY_FILE).stat().st_mode) == 0o600


async def test_the_server_certificate_verifies_for_localhost_and_both_loopback_addresses(tmp_path: Path) -> None:
    local = ensure_local_tls(tmp_path / "tls", hosts_for("127.0.0.1"))
    store = CertificateStore.load([CertPair(local.cert_file, local.key_file)])
    client = ssl.create_default_context(cafile=local.ca_file)  # verification and host name checks on
    async with listening(store.context, "127.0.0.1") as port:
        await handshake(port, client, "localhost")
        await handshake(port, client, "127.0.0.1")
    async with listening(store.context, "::1") as port:
        await handshake(port, client, "::1", host="::1")
        with pytest.raises(ssl.SSLCertVerificationError):
            await handshake(port, client, "elsewhere.example", host="::1")


def test_a_certificate_near_expiry_is_reissued_by_the_same_ca(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    first = ensure_local_tls(folder, hosts_for("127.0.0.1"))
    before = snapshot(folder)
    later = first.not_after - dt.timedelta(days=10)
    renewed = ensure_local_tls(folder, hosts_for("127.0.0.1"), now=later)
    assert renewed.ca_made is None
    assert renewed.issued is not None and "expires on" in renewed.issued
    after = snapshot(folder)
    assert (after[CA_FILE], after[CA_KEY_FILE]) == (before[CA_FILE], before[CA_KEY_FILE])
    assert after[CERT_FILE] != before[CERT_FILE]
    cert = x509.load_pem_x509_certificate(after[CERT_FILE])
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(after[CA_FILE]))
    assert cert.not_valid_after_utc > first.not_after


def test_a_new_local_host_is_covered_by_a_certificate_from_the_same_ca(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    ensure_local_tls(folder, hosts_for("127.0.0.1"))
    ca = (folder / CA_FILE).read_bytes()
    for host in ("192.168.1.20", "box.local", "fd00::5"):
        local = ensure_local_tls(folder, hosts_for(host))
        assert local.ca_made is None, host
        assert local.issued is not None and host in local.issued
        assert (folder / CA_FILE).read_bytes() == ca
    # A public name is outside what the CA may vouch for: a new CA is made, and the reason says why.
    public = ensure_local_tls(folder, hosts_for("gateway.example.com"))
    assert public.ca_made is not None and "gateway.example.com" in public.ca_made
    assert (folder / CA_FILE).read_bytes() != ca


def test_a_wildcard_listen_address_adds_this_machines_name_but_never_a_new_ca(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    assert hosts_for("0.0.0.0") == hosts_for("::") == ["localhost", "127.0.0.1", "::1"]
    assert machine_names("0.0.0.0") == [socket.gethostname().lower()]
    assert machine_names("127.0.0.1") == []
    local = ensure_local_tls(folder, hosts_for("0.0.0.0"), if_permitted=machine_names("0.0.0.0"))
    assert local.hosts == [*LOOPBACK, socket.gethostname().lower()]  # the CA permits the name it was made on
    ca = (folder / CA_FILE).read_bytes()
    # A container restarted under another host name keeps its CA; the new name is left out.
    again = ensure_local_tls(folder, hosts_for("0.0.0.0"), if_permitted=["renamed-container-7f3a.example"])
    assert (again.ca_made, again.hosts) == (None, LOOPBACK)
    assert (folder / CA_FILE).read_bytes() == ca


async def test_trusting_the_local_ca_cannot_be_abused_for_other_sites(tmp_path: Path) -> None:
    """Even with the CA's key, a certificate for a public name fails verification (name constraint)."""
    local = ensure_local_tls(tmp_path / "tls", hosts_for("127.0.0.1"))
    ca_cert = x509.load_pem_x509_certificate(local.ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key((local.folder / CA_KEY_FILE).read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    forged = write_pair(tmp_path, "forged", *leaf(ca_cert, ca_key, ["bank.example", "127.0.0.1"]))
    store = CertificateStore.load([forged])
    client = ssl.create_default_context(cafile=local.ca_file)
    async with listening(store.context) as port:
        with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"):
            await handshake(port, client, "bank.example")


async def test_a_running_tiffin_up_reissues_its_certificate_before_it_expires(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    first = ensure_local_tls(folder, hosts_for("127.0.0.1"))
    ca = (folder / CA_FILE).read_bytes()
    stop, said = asyncio.Event(), []

    def say(line: str) -> None:
        said.append(line)
        stop.set()  # the first thing it has to say ends the loop

    later = first.not_after - dt.timedelta(days=10)  # a clock ten days before the certificate runs out
    await asyncio.wait_for(keep_local_tls_fresh(tmp_path, "127.0.0.1", stop, say, period_s=0.01, clock=lambda: later),
                           timeout=60)  # fmt: skip
    assert len(said) == 1 and "re-issued" in said[0], said
    cert = x509.load_pem_x509_certificate((folder / CERT_FILE).read_bytes())
    assert cert.not_valid_after_utc > first.not_after
    assert (folder / CA_FILE).read_bytes() == ca  # clients keep trusting the same CA


async def test_a_fresh_certificate_is_left_alone_while_tiffin_up_runs(tmp_path: Path) -> None:
    ensure_local_tls(tmp_path / "tls", hosts_for("127.0.0.1"))
    before = snapshot(tmp_path / "tls")
    stop, checks, said = asyncio.Event(), [], []

    def clock() -> dt.datetime:
        checks.append(1)
        if len(checks) == 3:
            stop.set()
        return dt.datetime.now(dt.UTC)

    await asyncio.wait_for(keep_local_tls_fresh(tmp_path, "127.0.0.1", stop, said.append, period_s=0.01, clock=clock),
                           timeout=60)  # fmt: skip
    assert len(checks) >= 3 and said == []
    assert snapshot(tmp_path / "tls") == before
