"""`tiffin up` can start again at once after a stop: only a live listener makes its port 'in use'."""

from __future__ import annotations

import socket

from tiffin.local.up import _port_free


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
    assert _port_free("127.0.0.1", port)


def test_a_port_with_a_live_listener_is_in_use() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not _port_free("127.0.0.1", listener.getsockname()[1])
