"""A workload of tagged requests against a stack with two of each replica, and its accounting at the end.

Every request carries a unique tag (the test upstream's `tiffin_test.key`, and the message it echoes), so the
client's answer and the runners' own records (`/_test/arrivals`, `/_test/completions`) can be matched up.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis

from tests.e2e.conftest import Stack, sse_events, wait_until, write_deployment
from tests.faults.edge_support import tagged
from tiffin.contracts import keys

DEPLOYMENT = "echo"
REQUEST_TIMEOUT_S = 120


@dataclass
class Pair:
    """Two of each replica: runners, API servers, and a proxy beside each API server."""

    stack: Stack
    runner_ports: dict[str, int]
    api_ports: dict[str, int]

    def proxy_name(self, api: str) -> str:
        return f"{api}-proxy"

    def start_proxy(self, api: str, registered: int) -> None:
        """Start the proxy of API server `api` (left out by `start_pair`), and wait until `registered` api replicas
        are registered, this one among them."""
        self.stack.start_proxy(DEPLOYMENT, api, self.api_ports[api])
        wait_registered(self.stack, {"api": registered})


def start_pair(
    stack_factory: Any, tmp_path: Path, proxies: tuple[str, ...] = ("echo-api-1", "echo-api-2"), **proxy_env: str
) -> Pair:
    """A stack for deployment `echo` with two runners, two API servers, the proxies of those named in `proxies`
    (with `proxy_env` added to their environment; `Pair.start_proxy` starts the others), and one interceptor."""
    stack: Stack = stack_factory([write_deployment(tmp_path, DEPLOYMENT)])
    runner_ports: dict[str, int] = {}
    for name in ("echo-runner-1", "echo-runner-2"):
        _, runner_ports[name] = stack.start_runner(DEPLOYMENT, name)
    for name, port in runner_ports.items():
        stack.procs[name].wait_http(f"http://127.0.0.1:{port}/health", timeout_s=60)
    api_ports: dict[str, int] = {}
    for name in ("echo-api-1", "echo-api-2"):
        _, api_ports[name] = stack.start_api(DEPLOYMENT, name)
        if name in proxies:
            stack.start_proxy(DEPLOYMENT, name, api_ports[name], **proxy_env)
    stack.start_interceptor()
    wait_registered(stack, {"runner": 2, "api": len(proxies)})
    return Pair(stack, runner_ports, api_ports)


def wait_registered(stack: Stack, counts: dict[str, int]) -> None:
    """Wait until each component has exactly that many replicas registered (an api replica registers through its
    proxy)."""
    client = redis.Redis.from_url(stack.redis_url)
    try:
        for component, count in counts.items():
            wait_until(f"{count} {component} replicas registered",
                       lambda c=component, n=count: client.zcard(keys.replicas(DEPLOYMENT, c)) == n, 60)  # fmt: skip
    finally:
        client.close()


@dataclass
class Result:
    """What one tagged request's client saw."""

    tag: str
    stream: bool
    status: int = 0
    text: str = ""
    error: dict[str, Any] | None = None
    first_event: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False
    """A stream that ended with `data: [DONE]`, or a non-streamed answer read whole."""
    ended_at: float = 0.0
    """time.monotonic() when its reply ended (reported, never asserted)."""

    @property
    def expected(self) -> str:
        return f"echo: {self.tag}"

    @property
    def correct(self) -> bool:
        return self.status == 200 and self.error is None and self.done and self.text == self.expected


def held_by(stack: Stack, consumer: str) -> list[tuple[str, bool]]:
    """(tag, streamed) of the requests the proxy `consumer` holds (pending for it in the queue)."""
    client = redis.Redis.from_url(stack.redis_url)
    try:
        queue = keys.queue(DEPLOYMENT)
        pending: Any = client.xpending_range(queue, keys.GROUP, min="-", max="+", count=1000, consumername=consumer)
        held = []
        for item in pending:
            entries: Any = client.xrange(queue, item["message_id"], item["message_id"])
            for _id, fields in entries:
                body = json.loads(fields[b"body"])
                held.append((body["tiffin_test"]["key"], bool(body.get("stream"))))
        return held
    finally:
        client.close()


async def until_holds_both(stack: Stack, consumer: str) -> None:
    """Wait until the proxy `consumer` holds a streamed and a non-streamed request of the workload."""
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        while len({streamed for _tag, streamed in await asyncio.to_thread(held_by, stack, consumer)}) < 2:
            await asyncio.sleep(0.05)  # observing another process's queue: no event to await


async def until_runner_busy_with_both(session: aiohttp.ClientSession, port: int, prefix: str) -> None:
    """Wait until the runner on `port` is in the middle of a streamed and a non-streamed request of the workload
    (arrived, not yet completed)."""
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        while True:
            arrived = await runner_records(session, [port], "arrivals")
            completed = await runner_records(session, [port], "completions")
            running = [tag for tag in arrived if tag.startswith(prefix + "-") and tag not in completed]
            if len({int(tag.rsplit("-", 1)[1]) % 2 == 0 for tag in running}) == 2:
                return
            await asyncio.sleep(0.05)  # observing another process: no event to await


def report_endings(results: list[Result], since: float) -> None:
    """Print how long after the fault the streams it broke ended (for the record; timings are never asserted)."""
    broken = [r.ended_at - since for r in results if r.stream and not r.correct]
    if broken:
        print(f"broken streams ended {min(broken):.1f}-{max(broken):.1f} s after the fault")


async def send(session: aiohttp.ClientSession, url: str, result: Result, delay_s: float) -> Result:
    """One request, read to its end; what it saw goes into `result`."""
    try:
        return await _send(session, url, result, delay_s)
    finally:
        result.ended_at = time.monotonic()


async def _send(session: aiohttp.ClientSession, url: str, result: Result, delay_s: float) -> Result:
    body = tagged(DEPLOYMENT, result.tag, result.stream, delay_s)
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        async with session.post(url + "/v1/chat/completions", json=body) as resp:
            result.status = resp.status
            if not result.stream:
                raw = await resp.read()
                data = json.loads(raw)
                if "error" in data:
                    result.error = data["error"]
                else:
                    result.text, result.done = data["choices"][0]["message"]["content"], True
                return result
            raw = b""
            async for block in _blocks(resp):
                raw += block
                result.first_event.set()
            events = sse_events(raw)
            errors = [e["error"] for e in events if "error" in e]
            result.error = errors[-1] if errors else None
            result.text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if "choices" in e)
            result.done = raw.endswith(b"data: [DONE]\n\n")
            return result


async def _blocks(resp: aiohttp.ClientResponse) -> Any:
    while True:
        try:
            block = await resp.content.readuntil(b"\n\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                yield exc.partial
            return
        if not block:
            return
        yield block


@dataclass
class Workload:
    """`count` concurrent tagged requests, every other one streamed, started together."""

    session: aiohttp.ClientSession
    url: str
    prefix: str
    count: int = 16
    delay_s: float = 0.5
    """Before each streamed chunk (4 events per stream), and 4 times this before a non-streamed answer."""
    results: list[Result] = field(default_factory=list)
    tasks: list[asyncio.Task[Result]] = field(default_factory=list)

    def start(self) -> None:
        for i in range(self.count):
            result = Result(f"{self.prefix}-{i}", stream=i % 2 == 0)
            self.results.append(result)
            delay = self.delay_s if result.stream else self.delay_s * 4  # both kinds run about as long
            self.tasks.append(asyncio.create_task(send(self.session, self.url, result, delay)))

    async def streams_under_way(self, at_least: int) -> None:
        """Wait until `at_least` streams have had their first event (reply bytes reached those clients)."""
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            while sum(r.first_event.is_set() for r in self.results if r.stream) < at_least:
                waiters = [asyncio.create_task(r.first_event.wait()) for r in self.results if r.stream]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()

    async def finish(self) -> list[Result]:
        """Every request's outcome (none may hang or raise)."""
        return list(await asyncio.gather(*self.tasks))


async def runner_records(session: aiohttp.ClientSession, ports: list[int], what: str) -> dict[str, list[float]]:
    """Tag -> times, across runners, of `what` ('arrivals' or 'completions'); a killed runner's are lost."""
    out: dict[str, list[float]] = {}
    for port in ports:
        try:
            async with session.get(f"http://127.0.0.1:{port}/_test/{what}") as resp:
                for record in await resp.json():
                    if record.get("key"):
                        out.setdefault(record["key"], []).append(record["at"])
        except aiohttp.ClientConnectionError:
            continue  # that runner was killed
    return out


async def account(pair: Pair, session: aiohttp.ClientSession, results: list[Result], survivors: list[int]) -> None:
    """Every request answered correctly once, or (a stream under way) ended with an error event and then served
    by a retry; and no request a runner completed ever reached a runner again."""
    unexplained = []
    for result in results:
        if result.correct:
            continue
        if result.stream and result.status == 200 and result.error is not None and not result.done:
            assert result.text == result.expected[: len(result.text)], f"{result.tag}: a broken stream said {result}"
            continue  # a clear error event ended a stream under way; retried below
        unexplained.append(result)
    assert not unexplained, f"requests neither answered nor ended with an error event: {unexplained}"
    # A retry of every stream that ended with an error succeeds.
    broken = [r for r in results if not r.correct]
    retries = [Result(r.tag + "-retry", stream=r.stream) for r in broken]
    await asyncio.gather(*(send(session, pair.stack.url, r, 0) for r in retries))
    assert all(r.correct for r in retries), f"retries: {retries}"

    codes = [r.error.get("code") for r in broken if r.error]
    print(f"{len(results)} requests: {sum(r.correct for r in results)} answered correctly, "
          f"{len(broken)} streams ended with an error event {codes}, each retried correctly")  # fmt: skip
    arrivals = await runner_records(session, survivors, "arrivals")
    twice = {tag: len(at) for tag, at in arrivals.items() if len(at) > 1}
    print(f"reached a runner more than once (first run aborted, no byte to the client): {twice}")
    completions = await runner_records(session, survivors, "completions")
    for tag, done_at in completions.items():
        assert len(done_at) == 1, f"{tag} ran to completion {len(done_at)} times"
        assert all(at <= done_at[0] for at in arrivals.get(tag, [])), f"{tag} reached a runner after completing"
    # A correct non-streamed answer came from the one run a survivor completed (a killed runner's records are
    # gone with it, so only survivors are checked: an answer it completed must not have been re-run elsewhere).
    for result in results:
        if result.correct and not result.stream and len(survivors) == len(pair.runner_ports):
            assert len(completions.get(result.tag, [])) == 1, f"{result.tag} answered without one completed run"
