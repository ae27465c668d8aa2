"""A tagged workload for fault tests of `tiffin up`: every request is accounted for at the end.

Each request asks the test upstream to echo its own tag, streamed or not; its outcome is one of
`ok` (200 with exactly its own answer, a stream ended by [DONE]), `refused` (an OpenAI-shaped error status,
never 500), `stream_error` (a stream under way ended by an error event) or `broken` (anything else: a 500,
a wrong answer, a transport error, no answer within the deadline), which no test accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.e2e.conftest import sse_events, write_deployment
from tests.faults.edge_support import tagged

CLIENT_TIMEOUT_S = 150.0
RETRY_AFTER_S = 1.0


@dataclass(frozen=True)
class Outcome:
    """What one tagged request got."""

    tag: str
    stream: bool
    kind: str
    """ok, refused, stream_error or broken."""
    status: int
    detail: str = ""


def deployment(folder: Path, name: str = "chat", warm: bool = True) -> Path:
    """A deployment of the test upstream (one API server, one runner; kept warm unless `warm` is False), open."""
    replicas = 1 if warm else 0
    return write_deployment(folder, name, api={"min_replicas": replicas, "concurrency": 4},
                            runner={"min_replicas": replicas, "concurrency": 4},
                            limits={"wait_timeout_s": 90, "upstream_timeout_s": 60})  # fmt: skip


async def one(session: aiohttp.ClientSession, url: str, tag: str, stream: bool, delay_s: float = 0.0) -> Outcome:
    """Send one tagged request and classify what came back."""
    want = f"echo: {tag}"
    try:
        async with session.post(f"{url}/v1/chat/completions", json=tagged("chat", tag, stream, delay_s)) as resp:
            raw = await resp.read()
            if resp.status != 200:
                try:
                    error = json.loads(raw)["error"]
                    shaped = isinstance(error["message"], str)
                except (ValueError, KeyError, TypeError):
                    shaped = False
                kind = "refused" if shaped and resp.status != 500 else "broken"
                return Outcome(tag, stream, kind, resp.status, raw[:200].decode(errors="replace"))
            if not stream:
                text = json.loads(raw)["choices"][0]["message"]["content"]
                return Outcome(tag, stream, "ok" if text == want else "broken", 200, text)
            events = sse_events(raw)
            if any("error" in e for e in events):
                return Outcome(tag, stream, "stream_error", 200, json.dumps([e for e in events if "error" in e]))
            text = "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", []))
            done = raw.rstrip().endswith(b"data: [DONE]")
            return Outcome(tag, stream, "ok" if text == want and done else "broken", 200, text)
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
        return Outcome(tag, stream, "broken", 0, repr(exc))


def session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S))


def launch(
    http: aiohttp.ClientSession, url: str, prefix: str, count: int, delay_s: float = 0.0
) -> list[asyncio.Task[Outcome]]:
    """`count` concurrent requests, every other one streamed, tagged `prefix-N`."""
    return [asyncio.create_task(one(http, url, f"{prefix}-{n}", n % 2 == 1, delay_s)) for n in range(count)]


async def settle(tasks: list[asyncio.Task[Outcome]]) -> list[Outcome]:
    return list(await asyncio.gather(*tasks))


def account(outcomes: list[Outcome], allowed: set[str]) -> Counter[str]:
    """Every request has exactly one outcome among `allowed` (never `broken`); returns the counts by kind."""
    kinds = Counter(o.kind for o in outcomes)
    bad = [o for o in outcomes if o.kind not in allowed]
    assert not bad, f"{len(bad)} unaccounted of {len(outcomes)} ({dict(kinds)}): {bad[:5]}"
    assert len({o.tag for o in outcomes}) == len(outcomes)
    return kinds


async def retry_failed(http: aiohttp.ClientSession, url: str, outcomes: list[Outcome]) -> None:
    """Every request that did not succeed succeeds when sent again now, by a client that honours Retry-After."""
    again = await asyncio.gather(*(_retried(http, url, o) for o in outcomes if o.kind != "ok"))
    assert all(o.kind == "ok" for o in again), [o for o in again if o.kind != "ok"][:5]


async def _retried(http: aiohttp.ClientSession, url: str, first: Outcome, attempts: int = 5) -> Outcome:
    outcome = first
    for n in range(attempts):
        outcome = await one(http, url, f"{first.tag}-retry{n}", first.stream)
        if outcome.kind != "refused" or outcome.status != 503:
            return outcome
        await asyncio.sleep(RETRY_AFTER_S)  # as its Retry-After asks: a client's pause, not a synchronisation
    return outcome


def pids_mentioning(*markers: str) -> list[int]:
    """Live processes whose command line, environment or working folder holds one of `markers` (a config or state
    path; redis-server rewrites its command line, but works in its data folder)."""
    wanted = [m.encode() for m in markers]
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(proc / "cwd").encode()
            text = (proc / "cmdline").read_bytes() + b"\0" + (proc / "environ").read_bytes() + b"\0" + cwd
            if (proc / "stat").read_text().split(")")[-1].split()[0] == "Z":
                continue  # a zombie holds nothing; its parent (a test's Popen) reaps it
        except OSError:
            continue
        if any(m in text for m in wanted):
            found.append(int(proc.name))
    return found


def kill_all(pids: list[int]) -> None:
    """Clean up after a failed test: SIGKILL what it left behind."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
