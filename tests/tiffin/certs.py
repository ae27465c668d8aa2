"""Certificates for TLS tests, made here with `cryptography` (independent of the code under test), and real
TLS handshakes against a real listener."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tiffin.tls import CertPair

NOW = dt.datetime.now(dt.UTC)


@dataclass
class Authority:
    """A test CA (no name constraint): signs leaves for any name."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def make(cls, name: str = "test CA") -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        return cls(cert, key)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, names: list[str], days: int = 30) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A leaf for `names` (DNS names, wildcards or IP addresses) and its key."""
        return leaf(self.cert, self.key, names, days)

    def trust(self) -> ssl.SSLContext:
        """A client context trusting only this CA, verification on."""
        return ssl.create_default_context(cadata=self.pem().decode())


def leaf(
    issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey, names: list[str], days: int = 30
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(issuer.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )  # fmt: skip
    return cert, key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def replace(path: Path, data: bytes) -> None:
    """Write `path` atomically, as a certificate manager renewing it does."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_pair(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, *chain: x509.Certificate
) -> CertPair:
    pair = CertPair(folder / f"{name}.pem", folder / f"{name}-key.pem")
    replace(pair.cert_file, b"".join(cert_pem(c) for c in (cert, *chain)))
    replace(pair.key_file, key_pem(key))
    return pair


@asynccontextmanager
async def listening(context: ssl.SSLContext, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """A real TLS listener on a free port that answers b'ok' and closes; yields the port."""

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, host, 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Handshake:
    serial: int
    version: str | None
    alpn: str | None


async def handshake(port: int, client: ssl.SSLContext, server_name: str | None, host: str = "127.0.0.1") -> Handshake:
    """Connect, complete a TLS handshake (SNI `server_name`), read the answer; what the server presented."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=client, server_hostname=server_name or ""), 30
    )
    try:
        assert await asyncio.wait_for(reader.read(), 30) == b"ok"
        tls = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True)
        return Handshake(x509.load_der_x509_certificate(der).serial_number, tls.version(), tls.selected_alpn_protocol())
    finally:
        writer.close()


def unverified() -> ssl.SSLContext:
    """A client that accepts any certificate (to see which one is presented for names it does not cover)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
