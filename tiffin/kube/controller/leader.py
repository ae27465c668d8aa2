"""One leader at a time: a coordination.k8s.io/v1 Lease, renewed by its holder, taken over after it expires.

As in client-go's leader election, a candidate judges expiry by its own clock: the lease has expired when its
record (holder, renewTime) has not changed for leaseDurationSeconds since this process first saw it, so clocks
that disagree between nodes cannot make two leaders. Writes carry the resourceVersion they read, so of two
candidates racing for an expired lease one gets 409 Conflict and stays passive.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from tiffin.common.backoff import Backoff
from tiffin.kube.controller.kubeapi import KubeApi, KubeApiError, Resource

log = structlog.get_logger("tiffin.kube.controller.leader")

Work = Callable[[asyncio.Event], Awaitable[None]]
"""What the leader runs; it must return soon after the event it is given is set (leadership lost, or stop)."""


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for the Lease `name` in `namespace` and runs the work only while holding it."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        identity: str,
        lease_duration_s: float = 15.0,
        renew_period_s: float = 5.0,
    ) -> None:
        if renew_period_s >= lease_duration_s:
            raise ValueError("the renew period must be shorter than the lease duration")
        self.api = api
        self.resource = Resource("coordination.k8s.io/v1", "leases", namespace)
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_period_s = renew_period_s
        self.is_leader = False
        self._observed: tuple[Any, Any] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0  # monotonic time it was first seen
        self._backoff = Backoff("leader election", dependency="kubernetes")

    async def run(self, work: Work, stop: asyncio.Event) -> None:
        """Until `stop`: win the lease, run `work` while renewing it, stop the work if the lease is lost."""
        while not stop.is_set():
            if not await self._campaign(stop):
                return
            log.info("leading", identity=self.identity, lease=self.name)
            term = asyncio.Event()
            renewing = asyncio.create_task(self._renew(term, stop), name="lease-renew")
            try:
                await work(term)
            finally:
                term.set()
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
                self.is_leader = False
            if stop.is_set():
                await self._release()
            else:
                log.warning("leadership_lost", identity=self.identity, lease=self.name)

    async def _campaign(self, stop: asyncio.Event) -> bool:
        """Wait until this process holds the lease (True) or `stop` is set (False)."""
        while not stop.is_set():
            try:
                if await self._try_acquire():
                    self._backoff.succeeded()
                    return True
                self._backoff.succeeded()
            except KubeApiError as exc:
                await self._backoff.failed(exc, stop)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.renew_period_s)  # the retry period; stop cuts it short
        return False

    async def _renew(self, term: asyncio.Event, stop: asyncio.Event) -> None:
        last_renewed = time.monotonic()
        # Give up a little before the lease can expire in another candidate's eyes (client-go's renewDeadline).
        deadline_s = self.lease_duration_s - self.renew_period_s / 2
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.renew_period_s)
            if stop.is_set():
                break
            try:
                if await self._try_acquire():
                    last_renewed = time.monotonic()
                    continue
                log.warning("lease_taken", identity=self.identity)
            except KubeApiError as exc:
                log.warning("lease_renew_failed", identity=self.identity, error=str(exc))
                if time.monotonic() - last_renewed < deadline_s:
                    continue
            break
        term.set()  # stopping, or the lease is lost: the work ends either way

    async def _try_acquire(self) -> bool:
        """One attempt to take or renew the lease; True when this process holds it afterwards."""
        lease = await self.api.get(self.resource, self.name)
        now = _micro_time()
        mine = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration_s)),
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": 0,
        }
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.resource.namespace}, "spec": mine}  # fmt: skip
            return await self._write("POST", self.resource.path(), body)
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration_s)
        if holder and holder != self.identity and time.monotonic() - self._observed_at < duration:
            self.is_leader = False
            return False
        if holder == self.identity:
            mine["acquireTime"] = spec.get("acquireTime") or now
            mine["leaseTransitions"] = int(spec.get("leaseTransitions") or 0)
        else:
            mine["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        body = {**lease, "spec": mine}
        return await self._write("PUT", self.resource.path(self.name), body)

    async def _write(self, method: str, path: str, body: dict[str, Any]) -> bool:
        try:
            written = await self.api.request(method, path, body=body)
        except KubeApiError as exc:
            if exc.status == 409:  # another candidate wrote first (AlreadyExists or a stale resourceVersion)
                self.is_leader = False
                return False
            raise
        spec = written.get("spec") or {}
        self._observed, self._observed_at = (spec.get("holderIdentity"), spec.get("renewTime")), time.monotonic()
        self.is_leader = True
        return True

    async def _release(self) -> None:
        """On a clean stop, hand the lease over at once instead of making the next leader wait for expiry."""
        try:
            lease = await self.api.get(self.resource, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": _micro_time()}
            await self.api.request("PUT", self.resource.path(self.name), body={**lease, "spec": spec})
            log.info("lease_released", identity=self.identity)
        except KubeApiError as exc:
            log.warning("lease_release_failed", identity=self.identity, error=str(exc))
