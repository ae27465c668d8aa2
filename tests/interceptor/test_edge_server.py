"""The listener's process-level pieces: the open-file limit, the derived connection cap, quiet accept errors."""

from __future__ import annotations

import asyncio
import errno
import resource
from dataclasses import replace
from typing import Any

import pytest

from interceptor.config import EdgeSettings
from interceptor.server import RefusalLog, _quiet_accept_errors, connection_cap, raise_open_file_limit
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
