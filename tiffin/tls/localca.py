"""A local certificate authority for `tiffin up` without a certificate of its own.

Made once in `STATE_DIR/tls/` and reused, so a client that trusts `ca.pem` keeps trusting tiffin across runs
and re-issued server certificates. The CA carries a name constraint: it can vouch only for loopback, private
and link-local addresses, names under `localhost`, `local`, `internal`, `lan` and `home.arpa`, this machine's
host name and the hosts it was first made for. Trusting it (or even its key leaking) cannot be abused to
impersonate a public site, while a changed `--host` on a local network is still served by the same CA.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tiffin.contracts.exceptions import TLSError

CA_FILE, CA_KEY_FILE = "ca.pem", "ca-key.pem"
CERT_FILE, KEY_FILE = "server.pem", "server-key.pem"
LOOPBACK = ["localhost", "127.0.0.1", "::1"]
CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=397)  # the longest any browser accepts for a server certificate
RENEW_BEFORE = dt.timedelta(days=30)
# A DNS subtree also covers every name under it (RFC 5280 4.2.1.10): "local" permits "box.local".
_LOCAL_NAMES = ["localhost", "local", "internal", "lan", "home.arpa"]
_LOCAL_NETWORKS = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
                   "fc00::/7", "fe80::/10"]  # fmt: skip


def _local_subtrees() -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in [*_LOCAL_NAMES, socket.gethostname().lower()]]
    return names + [x509.IPAddress(ipaddress.ip_network(n)) for n in _LOCAL_NETWORKS]


@dataclass(frozen=True)
class LocalTLS:
    """The files `tiffin up` serves and tells clients to trust, and what this run had to make."""

    folder: Path
    ca_file: Path
    cert_file: Path
    key_file: Path
    hosts: list[str]
    ca_made: str | None
    """Why a CA was made this run (None: the existing one was reused)."""
    issued: str | None
    """Why the server certificate was (re-)issued this run (None: the existing one was reused)."""
    not_after: dt.datetime


def _wildcard(listen_host: str) -> bool:
    return listen_host.strip("[]") in ("", "0.0.0.0", "::")


def hosts_for(listen_host: str) -> list[str]:
    """The names the server certificate must cover: loopback, plus the listen address if it is another one."""
    hosts = list(LOOPBACK)
    extra = listen_host.strip("[]").lower()
    if not _wildcard(listen_host) and extra not in hosts:
        hosts.append(extra)
    return hosts


def machine_names(listen_host: str) -> list[str]:
    """For a wildcard listen address, this machine's host name: covered when the CA permits it, never a reason
    for a new CA (a container's host name changes with every start)."""
    return [socket.gethostname().lower()] if _wildcard(listen_host) else []


def ensure_local_tls(
    folder: Path, hosts: Sequence[str], now: dt.datetime | None = None, *, if_permitted: Sequence[str] = ()
) -> LocalTLS:
    """Reuse or make the CA and a server certificate covering `hosts` (and those of `if_permitted` that the CA
    may vouch for) in `folder`, keys owner-only."""
    now = now or dt.datetime.now(dt.UTC)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    with _locked(folder):
        ca_made = None
        ca = _load_ca(folder)
        if ca is None:
            ca_made = "first run" if not (folder / CA_FILE).exists() else f"{folder / CA_FILE} could not be used"
        elif ca[0].not_valid_after_utc - now < RENEW_BEFORE:
            ca_made = f"the previous CA expires on {ca[0].not_valid_after_utc:%Y-%m-%d}"
        elif outside := [h for h in hosts if not _permitted(ca[0], h)]:
            ca_made = f"the previous CA may not vouch for {', '.join(outside)}"
        if ca_made is not None:
            ca = _make_ca(hosts, now)
            _write(folder / CA_KEY_FILE, _key_pem(ca[1]), private=True)
            _write(folder / CA_FILE, ca[0].public_bytes(serialization.Encoding.PEM), private=False)
        assert ca is not None
        hosts = [*hosts, *(h for h in if_permitted if h not in hosts and _permitted(ca[0], h))]
        issued = _reissue_reason(folder, ca[0], hosts, now)
        if issued is not None:
            cert, key = _issue(ca, hosts, now)
            _write(folder / KEY_FILE, _key_pem(key), private=True)
            _write(folder / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), private=False)
        server = x509.load_pem_x509_certificate((folder / CERT_FILE).read_bytes())
    return LocalTLS(folder, folder / CA_FILE, folder / CERT_FILE, folder / KEY_FILE, list(hosts), ca_made, issued,
                    server.not_valid_after_utc)  # fmt: skip


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Two `tiffin up` on one state folder must not make two CAs."""
    with (folder / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Write atomically; a private file is owner-only from its first byte (never briefly world-readable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate((folder / CA_FILE).read_bytes())
        key = serialization.load_pem_private_key((folder / CA_KEY_FILE).read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or _spki(key.public_key()) != _spki(cert.public_key()):
        return None
    return cert, key


def _spki(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _subtree(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_network(host))  # a single address: /32 or /128
    except ValueError:
        return x509.DNSName(host)


def _within(subtrees: Sequence[x509.GeneralName], host: str) -> bool:
    """Whether `host` falls inside one of the name-constraint `subtrees`."""
    name = _general_name(host)
    for tree in subtrees:
        if isinstance(name, x509.IPAddress) and isinstance(tree, x509.IPAddress):
            network = tree.value
            if isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network) and name.value in network:
                return True
        elif (
            isinstance(name, x509.DNSName)
            and isinstance(tree, x509.DNSName)
            and (name.value == tree.value or name.value.endswith("." + tree.value))
        ):
            return True
    return False


def _permitted(ca: x509.Certificate, host: str) -> bool:
    """Whether the CA's name constraint lets it vouch for `host`."""
    try:
        constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return True
    return _within(constraints.permitted_subtrees or [], host)


def _make_ca(hosts: Sequence[str], now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    local = _local_subtrees()
    extra = [_subtree(h) for h in hosts if not _within(local, h)]
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tiffin"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"tiffin local CA ({socket.gethostname()[:40]}, {now:%Y-%m-%d})"),
    ])  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        # path_length 0: it signs server certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.NameConstraints([*local, *extra], None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signatures only (ECDSA); a CA also signs certificates and revocation lists."""
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], hosts: Sequence[str], now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate for `hosts`, signed by `ca` (also used by tests to make certificates)."""
    ca_cert, ca_key = ca
    outside = [h for h in hosts if not _permitted(ca_cert, h)]
    if outside:
        raise TLSError(f"the local CA may not vouch for {', '.join(outside)}")
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _reissue_reason(folder: Path, ca: x509.Certificate, hosts: Sequence[str], now: dt.datetime) -> str | None:
    """Why the server certificate in `folder` cannot be reused as it is (None: it can)."""
    try:
        cert = x509.load_pem_x509_certificate((folder / CERT_FILE).read_bytes())
        key = serialization.load_pem_private_key((folder / KEY_FILE).read_bytes(), password=None)
    except FileNotFoundError:
        return "first run"
    except (OSError, ValueError, TypeError):
        return "the previous one could not be read"
    if _spki(key.public_key()) != _spki(cert.public_key()):
        return "the previous key did not match it"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "a new local CA was made"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return f"the previous one expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    if cert.not_valid_before_utc > now:
        return "the previous one is not valid yet (clock change)"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "the previous one names no hosts"
    missing = [h for h in hosts if _general_name(h) not in san]
    if missing:
        return f"it must now also cover {', '.join(missing)}"
    return None
