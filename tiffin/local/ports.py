"""Ports for servers `tiffin up` starts (and tests): which are free, and a fresh one to bind."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def port_free(host: str, port: int) -> bool:
    """True unless something listens on the port; a previous run's TIME_WAIT sockets do not count."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        # As the listener itself will bind (asyncio sets SO_REUSEADDR): only a live socket makes this fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return low, high


def _port_pool() -> range | None:
    low, high = _ephemeral_range()
    if low - 10000 >= 4096:
        return range(10000, low)
    if 65536 - (high + 1) >= 4096:
        return range(high + 1, 65536)
    return None


def free_port() -> int:
    """A loopback port with no listener, for a server about to start.

    Chosen outside the kernel's ephemeral range: a port that `bind(0)` hands out is released before the server
    binds it, and meanwhile any outgoing connection may take it as its local port (seen under load in CI).
    """
    pool = _port_pool()
    for port in random.sample(pool, 1000) if pool is not None else ():
        if port not in _handed_out and port_free("127.0.0.1", port):
            _handed_out.add(port)
            return port
    with socket.socket() as sock:  # no room outside the ephemeral range, or all tried ports taken
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen
