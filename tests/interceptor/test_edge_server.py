"""The listener's process-level pieces: open-file limit, connection cap, quiet accept errors, TLS handshake deadline."""

from __future__ import annotations

import asyncio
import datetime
import errno
import ipaddress
import resource
import ssl
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from interceptor.config import EdgeSettings
from interceptor.middleware import client_of, edge_middleware, on_prepare
from interceptor.server import (
    ConnectionLimits,
    RefusalLog,
    _quiet_accept_errors,
    connection_cap,
    raise_open_file_limit,
    start_public,
)
from tests.interceptor.rawhttp import closed_by_peer
from tests.interceptor.test_edge_http import rejected


def test_the_open_file_soft_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard > 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        limit = raise_open_file_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
        assert limit == hard or hard == resource.RLIM_INFINITY
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize(
    ("configured", "open_files", "cap"),
    [(0, 1024, 64), (0, 20_000, 9400), (0, 1_048_576, 16_384), (500, 20_000, 500)],
)
def test_the_connection_cap_stays_well_below_the_open_file_limit(configured: int, open_files: int, cap: int) -> None:
    assert connection_cap(replace(EdgeSettings(), max_connections=configured), open_files) == cap


async def test_running_out_of_files_on_accept_is_counted_not_logged_per_connection() -> None:
    refusals = RefusalLog(interval_s=60)
    handler = _quiet_accept_errors(refusals)
    loop = asyncio.get_running_loop()
    passed_on: list[dict[str, Any]] = []
    loop.default_exception_handler = passed_on.append  # type: ignore[method-assign]
    try:
        before = rejected("out_of_files")
        out_of_files = {"message": "socket.accept() out of system resource", "exception": OSError(errno.EMFILE, "x")}
        for _ in range(100):
            handler(loop, out_of_files)
        handler(loop, {"message": "something else", "exception": ValueError("not ours")})
    finally:
        del loop.default_exception_handler  # type: ignore[method-assign]
        refusals.close()
    assert rejected("out_of_files") == before + 100
    assert [c["message"] for c in passed_on] == ["something else"]  # anything else still reaches the default


def self_signed(folder: Path) -> ssl.SSLContext:
    """A server context with a throwaway certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


async def test_over_tls_the_edge_serves_and_a_handshake_that_never_comes_is_cut(tmp_path: Path) -> None:
    app = web.Application(middlewares=[edge_middleware])
    app.on_response_prepare.append(on_prepare)

    async def echo_forwarding(request: web.Request) -> web.Response:
        return web.json_response(client_of(request).headers)

    app.router.add_get("/", echo_forwarding)
    settings = replace(EdgeSettings(), header_timeout_s=0.5)
    runner = await start_public(app, "127.0.0.1", 0, self_signed(tmp_path), settings)
    port = runner.addresses[0][1]
    try:
        client_context = ssl.create_default_context(cafile=tmp_path / "cert.pem")
        async with aiohttp.ClientSession() as http, http.get(f"https://127.0.0.1:{port}/", ssl=client_context) as resp:
            assert resp.status == 200
            assert resp.headers["Server"] == "tiffin"
            assert (await resp.json())["x-forwarded-proto"] == "https"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # plain TCP: no ClientHello, ever
        assert await closed_by_peer(reader) == b""
        writer.close()
    finally:
        await runner.cleanup()


def test_the_per_client_cap_counts_an_ipv6_host_by_its_64() -> None:
    limits = ConnectionLimits(replace(EdgeSettings(), max_connections_per_client=2), total=100)
    assert limits.admit("2001:db8::1") is None
    assert limits.admit("2001:db8::ffff:2") is None
    assert limits.admit("2001:db8::3") == "client_connections"  # same /64
    assert limits.admit("2001:db8:0:1::1") is None  # another /64
    assert limits.admit("::ffff:192.0.2.1") is None
    assert limits.admit("192.0.2.1") is None
    assert limits.admit("192.0.2.1") == "client_connections"  # IPv4-mapped counts as the IPv4 address
    limits.release("2001:db8::1")
    assert limits.admit("2001:db8::4") is None
