"""`tiffin up` can start again at once after a stop: only a live listener makes its port 'in use'."""

from __future__ import annotations

import socket
from pathlib import Path

from tiffin.local.ports import free_port, port_free


def _time_wait_port() -> int:
    """A port whose listener is gone but whose closed connection sits in TIME_WAIT (server closed first)."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port: int = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the side that closes first keeps TIME_WAIT on the listening port
        client.recv(1)
        client.close()
    return port


def test_a_port_left_in_time_wait_by_a_stopped_run_is_free() -> None:
    port = _time_wait_port()
    with socket.socket() as plain:  # what the old check did: a bind without SO_REUSEADDR fails here
        try:
            plain.bind(("127.0.0.1", port))
            in_time_wait = False
        except OSError:
            in_time_wait = True
    assert in_time_wait, "the test did not manage to leave the port in TIME_WAIT"
    assert port_free("127.0.0.1", port)


def test_a_port_with_a_live_listener_is_in_use() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not port_free("127.0.0.1", listener.getsockname()[1])


def test_free_ports_are_outside_the_ephemeral_range_and_never_repeat() -> None:
    # A port from the ephemeral range can be taken by any outgoing connection before its server binds it.
    low, high = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(not low <= port <= high for port in ports)
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", ports[-1]))  # the port is free for the server it was chosen for
