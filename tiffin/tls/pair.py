"""One certificate chain and its key: read from PEM files, checked, and made into a server `ssl.SSLContext`."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from tiffin.contracts.exceptions import TLSError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Mozilla's "intermediate" TLS 1.2 suites: forward secrecy and AEAD only. TLS 1.3 suites are OpenSSL's own
# (all AEAD) and are not affected by this list.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])  # fmt: skip
ALPN = ["http/1.1"]

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY = b"PRIVATE KEY-----"


def server_context() -> ssl.SSLContext:
    """A server-side context with tiffin's settings and no certificate yet: TLS 1.2 minimum, ALPN http/1.1."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.set_alpn_protocols(ALPN)
    # Client-initiated renegotiation (TLS 1.2) only costs the server CPU; compression leaks secrets (CRIME).
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


@dataclass(frozen=True)
class CertPair:
    """Where a certificate chain (leaf first, then intermediates) and its private key live."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class LoadedPair:
    """A pair as it was loaded: its context, the names its leaf certificate covers, and a digest of the files."""

    pair: CertPair
    context: ssl.SSLContext
    dns_names: tuple[str, ...]
    """Lower-case DNS names of the leaf's subjectAltName, wildcards kept as `*.example.com`."""
    ip_addresses: tuple[IPAddress, ...]
    not_after: dt.datetime
    serial: int
    digest: str
    """sha256 over both files' bytes: what the watcher compares to notice a renewal."""

    @property
    def hosts(self) -> list[str]:
        """Every name and address this certificate is valid for (for logs and `tiffin up`)."""
        return [*self.dns_names, *map(str, self.ip_addresses)]

    def match(self, server_name: str) -> int:
        """How well the certificate covers `server_name`: 2 exactly, 1 by a wildcard, 0 not at all."""
        name = server_name.strip().rstrip(".").lower()
        try:
            address = ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            pass
        else:
            return 2 if address in self.ip_addresses else 0
        if name in self.dns_names:
            return 2
        first, _, rest = name.partition(".")
        # A wildcard stands for exactly one whole left-most label (RFC 6125 6.4.3), never for an IP address.
        if first and rest and f"*.{rest}" in self.dns_names:
            return 1
        return 0


def digest_of(cert_pem: bytes, key_pem: bytes) -> str:
    return hashlib.sha256(len(cert_pem).to_bytes(8, "big") + cert_pem + key_pem).hexdigest()


def read_pair(pair: CertPair) -> tuple[bytes, bytes]:
    """Both files' bytes; a missing or unreadable file is a `TLSError` naming it."""
    return _read(pair.cert_file, "certificate"), _read(pair.key_file, "private key")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSError(f"{path}: cannot read the {what} file: {exc.strerror or exc}") from exc


def _refuse_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and hang a server; say what to do instead.
    raise TLSError("the private key is encrypted; give tiffin an unencrypted key file readable only by its user")


def _certificates(pair: CertPair, data: bytes) -> list[x509.Certificate]:
    if _PEM_CERT not in data:
        raise TLSError(f"{pair.cert_file}: no PEM certificate in it (expected '-----BEGIN CERTIFICATE-----')")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TLSError(f"{pair.cert_file}: not a valid PEM certificate chain ({exc})") from exc


def _private_key(pair: CertPair, data: bytes) -> bytes:
    """The key's public half (DER), to compare with the certificate's."""
    if _PEM_KEY not in data:
        raise TLSError(f"{pair.key_file}: no PEM private key in it (expected '-----BEGIN ... PRIVATE KEY-----')")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography's way of saying "encrypted, and no password given"
        raise TLSError(f"{pair.key_file}: the private key is encrypted; tiffin needs an unencrypted key") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TLSError(f"{pair.key_file}: not a valid PEM private key ({exc})") from exc
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _public(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_pair(pair: CertPair) -> LoadedPair:
    """Read, check and load a pair; any problem is a `TLSError` that names the file and says what is wrong."""
    cert_pem, key_pem = read_pair(pair)
    chain = _certificates(pair, cert_pem)
    public = _private_key(pair, key_pem)
    leaf = chain[0]
    if _public(leaf) != public:
        if any(_public(c) == public for c in chain[1:]):
            raise TLSError(f"{pair.cert_file}: the server's own certificate must come first, then intermediates")
        raise TLSError(f"{pair.key_file}: this private key does not belong to the certificate in {pair.cert_file}")
    context = server_context()
    try:
        context.load_cert_chain(pair.cert_file, pair.key_file, password=_refuse_password)
    except ssl.SSLError as exc:
        raise TLSError(f"{pair.cert_file}, {pair.key_file}: OpenSSL refused the pair ({exc.reason or exc})") from exc
    except OSError as exc:
        raise TLSError(f"{pair.cert_file}, {pair.key_file}: cannot load the pair ({exc})") from exc
    # OpenSSL read the files again: only bytes that stayed the same throughout describe what it loaded.
    if read_pair(pair) != (cert_pem, key_pem):
        raise TLSError(f"{pair.cert_file}, {pair.key_file}: the files changed while they were being loaded")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = tuple(n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName))
        ips = tuple(a for a in san.get_values_for_type(x509.IPAddress) if not isinstance(a, IPNetwork))
    except x509.ExtensionNotFound:
        dns_names, ips = (), ()
    return LoadedPair(
        pair=pair, context=context, dns_names=dns_names, ip_addresses=ips, not_after=leaf.not_valid_after_utc,
        serial=leaf.serial_number, digest=digest_of(cert_pem, key_pem),
    )  # fmt: skip


def pairs_from(cert_files: list[Path], key_files: list[Path], source: str) -> list[CertPair]:
    """Pair up certificate and key files given in two parallel lists (`source` names where they came from)."""
    if len(cert_files) != len(key_files):
        raise TLSError(
            f"{source}: {len(cert_files)} certificate file(s) and {len(key_files)} key file(s); "
            "they go in pairs, the n-th key for the n-th certificate"
        )
    return [CertPair(c, k) for c, k in zip(cert_files, key_files, strict=True)]
