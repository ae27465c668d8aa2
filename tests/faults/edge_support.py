"""A tagged workload for fault tests at the edge: every request says who it is, and is accounted for at the end.

Each request's message is its tag, so its answer (`echo: TAG`) shows it reached the right client, and the test
upstream records the tag (`tiffin_test.key`), so the runner's arrivals show how often it ran.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.conftest import Stack, make_stack

CHAT = "/v1/chat/completions"
INCOMPLETE = "incomplete_body"
"""The `error` of a result whose body was cut short (how a plain answer broken after its head ends)."""


@dataclass(frozen=True)
class Result:
    """How one tagged request ended, as its client saw it."""

    tag: str
    stream: bool
    status: int
    content: str | None = None
    """The answer's text (joined from the deltas of a stream)."""
    error: str | None = None
    """The error code: of the error body, or of the error event that ended a stream."""
    retry_after: str | None = None
    request_id: str | None = None
    """The edge's X-Request-Id, which names the request in the interceptor's log."""

    @property
    def correct(self) -> bool:
        return self.status == 200 and self.error is None and self.content == f"echo: {self.tag}"


def tagged(model: str, tag: str, stream: bool, delay_s: float = 0.0) -> dict[str, Any]:
    """A request whose answer and arrival name `tag`; `delay_s` paces the test upstream's words."""
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": tag}],
            "tiffin_test": {"key": tag, "delay_s": delay_s}}  # fmt: skip


async def send(
    session: aiohttp.ClientSession, url: str, model: str, tag: str, stream: bool, delay_s: float = 0.0
) -> Result:
    """One tagged request, read to its end; what it got back, never an exception for an HTTP-level answer."""
    async with session.post(url + CHAT, json=tagged(model, tag, stream, delay_s)) as resp:
        status, retry_after, rid = resp.status, resp.headers.get("Retry-After"), resp.headers.get("X-Request-Id")
        try:
            raw = await resp.read()
        except aiohttp.ClientPayloadError:
            # A plain answer cut short after its head: the edge closes the connection without the last chunk.
            return Result(tag, stream, status, error=INCOMPLETE, request_id=rid)
    if status != 200:
        code = json.loads(raw)["error"]["code"]
        return Result(tag, stream, status, error=code, retry_after=retry_after, request_id=rid)
    if not stream:
        content = json.loads(raw)["choices"][0]["message"]["content"]
        return Result(tag, stream, status, content=content, request_id=rid)
    pieces, error = [], None
    for block in raw.decode().split("\n\n"):
        if not block.startswith("data: ") or block == "data: [DONE]":
            continue
        event = json.loads(block.removeprefix("data: "))
        if "error" in event:
            error = event["error"]["code"]
            continue
        pieces.extend(c["delta"].get("content", "") for c in event["choices"])
    return Result(tag, stream, status, content="".join(pieces), error=error, request_id=rid)


def account(results: list[Result], tags: list[str]) -> list[Result]:
    """Every tag has exactly one result; returns those that are not a correct answer (for the test to judge)."""
    seen = Counter(r.tag for r in results)
    assert set(seen) == set(tags) and all(n == 1 for n in seen.values()), "a request is missing or answered twice"
    return [r for r in results if not r.correct]


async def arrivals(session: aiohttp.ClientSession, runner_port: int) -> Counter[str]:
    """How many times the test upstream behind `runner_port` received each tag."""
    async with session.get(f"http://127.0.0.1:{runner_port}/_test/arrivals") as resp:
        return Counter(a["key"] for a in await resp.json() if a.get("key"))


def peak_rss_mib(pid: int) -> float:
    """A live process's peak resident set size (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


@contextmanager
def stack_of(folder: Path, configs: list[Path]) -> Iterator[Stack]:
    """The e2e `Stack` (its own Redis, real processes), every process stopped at the end."""
    stack = make_stack(folder, configs)
    try:
        yield stack
    finally:
        stack.stop()


def request_lines(log: str) -> dict[str, dict[str, Any]]:
    """The interceptor's `request` log lines (from its log file's text), by request id."""
    lines = (json.loads(line) for line in log.splitlines() if line.startswith("{"))
    return {line["request_id"]: line for line in lines if line.get("event") == "request"}
